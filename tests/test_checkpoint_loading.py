"""Loading checkpoints: every published stage and option, and clear refusals of bad folders."""

from __future__ import annotations

import json
import shutil
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import build_t5_checkpoint

from sk_instructor import CheckpointError, ModelNotFoundError
from sk_instructor._engine.checkpoint import resolve_model
from sk_instructor._engine.device import resolve_device, resolve_dtype
from sk_instructor._engine.model import EmbeddingModel
from sk_instructor._engine.registry import get_model

TEXTS = ["The Federal Reserve raised rates.", "A quick brown fox.", "", "word " * 100]


def _load(folder: Path) -> EmbeddingModel:
    return EmbeddingModel(resolve_model(folder), device="cpu")


def _sentence_transformers_reference(folder: Path, texts: list[str]) -> np.ndarray:
    import sentence_transformers

    model = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, convert_to_numpy=True)


# -- every stage option, checked against sentence-transformers on the same folder --------------
@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "mean_sqrt_len_tokens", "lasttoken"])
def test_pooling_modes_match_sentence_transformers(tmp_path, pooling):
    folder = build_t5_checkpoint(tmp_path / pooling, pooling=pooling)
    with pytest.warns(UserWarning, match="truncated"):
        got = _load(folder).encode([""] * len(TEXTS), TEXTS)
    np.testing.assert_allclose(got, _sentence_transformers_reference(folder, TEXTS), atol=1e-5)


def test_dense_with_bias_and_tanh_matches_sentence_transformers(tmp_path):
    folder = build_t5_checkpoint(tmp_path / "tanh")
    dense = folder / "2_Dense"
    config = json.loads((dense / "config.json").read_text())
    config.update(bias=True, activation_function="torch.nn.modules.activation.Tanh")
    (dense / "config.json").write_text(json.dumps(config))
    state = torch.load(dense / "pytorch_model.bin", weights_only=True)
    state["linear.bias"] = torch.randn(config["out_features"])
    torch.save(state, dense / "pytorch_model.bin")
    with pytest.warns(UserWarning, match="truncated"):
        got = _load(folder).encode([""] * len(TEXTS), TEXTS)
    np.testing.assert_allclose(got, _sentence_transformers_reference(folder, TEXTS), atol=1e-5)


def test_checkpoint_without_dense_or_normalize(tmp_path):
    folder = build_t5_checkpoint(tmp_path / "plain")
    modules = json.loads((folder / "modules.json").read_text())[:2]
    (folder / "modules.json").write_text(json.dumps(modules))
    model = _load(folder)
    assert model.embedding_dim == 32
    raw = model.encode(["", ""], TEXTS[:2], normalize=False)
    np.testing.assert_allclose(raw, _sentence_transformers_reference(folder, TEXTS[:2]), atol=1e-5)
    unit = model.encode(["", ""], TEXTS[:2], normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)


# -- refusals --------------------------------------------------------------------------------
_EXECUTED = []


def _mark_executed():  # would run if the pickle below were ever fully unpickled
    _EXECUTED.append(True)
    return torch.zeros(1)


class _Payload:
    def __reduce__(self):
        return (_mark_executed, ())


def test_pickled_bin_with_non_tensor_objects_is_refused(tmp_path):
    folder = build_t5_checkpoint(tmp_path / "evil")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["payload"] = _Payload()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"refusing to load .*pytorch_model\.bin"):
        _load(folder)
    assert not _EXECUTED


def test_unknown_module_type_is_refused_by_name(tmp_path):
    folder = build_t5_checkpoint(tmp_path / "custom")
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 9, "name": "9", "path": "9_X", "type": "evil_pkg.models.Backdoor"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match=r"modules\.json.*evil_pkg\.models\.Backdoor"):
        _load(folder)


@pytest.mark.parametrize(
    ("relative", "damage", "message"),
    [
        ("modules.json", "delete", r"modules\.json is missing"),
        ("modules.json", "garble", r"modules\.json is not valid JSON"),
        ("config.json", "delete", r"config\.json is missing"),
        ("1_Pooling/config.json", "garble", r"1_Pooling/config\.json is not valid JSON"),
        ("2_Dense/config.json", "delete", r"2_Dense/config\.json is missing"),
        ("2_Dense/pytorch_model.bin", "delete", r"no weights .*2_Dense"),
        ("pytorch_model.bin", "truncate", r"cannot read weight file .*pytorch_model\.bin"),
        ("sentence_bert_config.json", "garble", r"sentence_bert_config\.json is not valid JSON"),
    ],
)
def test_damaged_checkpoint_names_the_file(tmp_path, relative, damage, message):
    folder = build_t5_checkpoint(tmp_path / "damaged")
    target = folder / relative
    if damage == "delete":
        target.unlink()
    elif damage == "garble":
        target.write_text("{not json")
    else:
        target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=message):
        _load(folder)


def test_weights_missing_tensors_are_refused(tmp_path):
    folder = build_t5_checkpoint(tmp_path / "partial")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="lack 1 tensor"):
        _load(folder)


def test_loading_never_enables_remote_code(tmp_path, monkeypatch):
    import transformers

    seen = []
    original = transformers.AutoConfig.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    _load(build_t5_checkpoint(tmp_path / "remote"))
    assert seen and all(flag is False for flag in seen)


# -- the hub boundary ----------------------------------------------------------------------------
def test_hub_id_goes_through_snapshot_download_with_revision(tmp_path, monkeypatch, tiny_t5_path):
    import huggingface_hub

    snapshot = tmp_path / "models--org--tiny" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_t5_path, snapshot)
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    resolved = resolve_model("org/tiny", revision="v1", local_files_only=True)
    assert resolved.fingerprint == "hub:org/tiny@0123abcd"
    assert resolved.folder == snapshot
    repo_id, kwargs = calls[0]
    assert repo_id == "org/tiny" and kwargs["revision"] == "v1" and kwargs["local_files_only"]


def test_hub_model_missing_offline_says_how_to_fix_in_one_short_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="Connect to the internet once") as missing:
        resolve_model("hkunlp/instructor-large", local_files_only=True, cache_folder=str(tmp_path))
    assert "path of a local folder" in str(missing.value)
    # One error, not the chain of network errors behind it.
    report = "".join(traceback.format_exception(missing.value))
    assert report.count("Traceback") == 1 and "huggingface_hub.errors" not in report


def test_unknown_hub_id_says_not_found(monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors

    class NotFound(errors.RepositoryNotFoundError):
        def __init__(self):
            Exception.__init__(self, "404 Client Error")

    def fake_snapshot_download(repo_id, **kwargs):
        raise NotFound()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(ModelNotFoundError, match="was not found on the Hugging Face hub"):
        resolve_model("nobody/nothing")


def test_missing_local_folder_is_reported(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        resolve_model(str(tmp_path / "absent"))


# -- devices, precision, sharing -----------------------------------------------------------------
def test_device_resolution():
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto") in ("cpu", "mps")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")
    with pytest.raises(ValueError, match="not a valid torch device"):
        resolve_device("tpu-ish")


def test_auto_dtype_policy():
    assert resolve_dtype("auto", "cpu", "t5") == torch.float32
    assert resolve_dtype("auto", "cuda", "t5") == torch.bfloat16  # float16 overflows T5
    assert resolve_dtype("auto", "cuda", "bert") == torch.float16
    assert resolve_dtype("float32", "cuda", "t5") == torch.float32
    with pytest.raises(ValueError, match="dtype='int8'"):
        resolve_dtype("int8", "cpu", "t5")


def test_model_is_loaded_once_and_shared(tiny_t5_path):
    first = get_model(tiny_t5_path, device="cpu")
    assert get_model(str(tiny_t5_path), device="cpu") is first
    assert get_model(tiny_t5_path, device="cpu", dtype="float32") is not first  # other dtype key
