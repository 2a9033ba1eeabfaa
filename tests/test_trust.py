"""Never a wrong vector, never a hang, never a lost row: the classes of fault an adversarial
tester found, each reproduced here.

Loading is checked against hostile model folders (weights replaced on disk, files outside the
folder, FIFOs and devices, absurd configs, non-finite weights), the engine against instructions
that leave no room for text and rows that carry instructions nobody asked for, the cache against
rows it cannot serve and locations it cannot use.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import build_t5_checkpoint
from reference_instructor import ReferenceInstructor
from safetensors.torch import load_file, save_file

from sk_instructor import CheckpointError, DiskCache, InstructorVectorizer, MemoryCache
from sk_instructor._engine.identity import fingerprint_folder
from sk_instructor._engine.registry import clear_loaded_models, get_model

# A hang is a failure too. The limit only guards against one: the slowest test here takes about
# 15 s on a loaded two-core machine, and the limit is far above what a slower one would take.
pytestmark = pytest.mark.timeout(600)

TEXTS = ["Parton energy loss in QCD matter", "Dark matter halos", "A quick brown fox."]
INSTRUCTION = "Represent the Science title: "


def _reference(folder: Path, texts=TEXTS, instruction=INSTRUCTION) -> np.ndarray:
    reference = ReferenceInstructor(folder)
    return np.stack([reference.embed(instruction, text) for text in texts])


def _model(tmp_path: Path, name: str = "model", **options) -> Path:
    return build_t5_checkpoint(tmp_path / name, weights="safetensors", **options)


# -- 1. the weights that made a vector ----------------------------------------------------------
def test_weights_replaced_on_disk_are_used_at_the_next_transform(tmp_path):
    folder = _model(tmp_path, seed=0)
    vectorizer = InstructorVectorizer(folder, instruction=INSTRUCTION, cache=None).fit(TEXTS)
    before = vectorizer.transform(TEXTS)
    build_t5_checkpoint(folder, weights="safetensors", seed=1)  # a fine-tune saved in place
    after = vectorizer.transform(TEXTS)
    np.testing.assert_allclose(after, _reference(folder), atol=1e-5)
    assert not np.allclose(before, after, atol=1e-3)


def test_cached_vectors_are_keyed_by_the_weights_that_computed_them(tmp_path):
    folder = _model(tmp_path, seed=0)
    cache = DiskCache(tmp_path / "cache")
    vectorizer = InstructorVectorizer(folder, instruction=INSTRUCTION, cache=cache).fit(TEXTS)
    build_t5_checkpoint(folder, weights="safetensors", seed=1)  # changed between fit and use
    vectorizer.transform(TEXTS)
    clear_loaded_models()  # as a later process would start
    served = InstructorVectorizer(folder, instruction=INSTRUCTION, cache=cache).fit_transform(TEXTS)
    np.testing.assert_allclose(served, _reference(folder), atol=1e-5)
    cache.close()


def test_weights_saved_over_while_they_load_are_read_again(tmp_path, monkeypatch):
    from sk_instructor._engine import model as engine_model

    folder = _model(tmp_path, seed=0)
    real_load, loads = engine_model._load_stages, []

    def load_while_saved_over(*args, **kwargs):
        stages = real_load(*args, **kwargs)
        if not loads:  # a fine-tune writes the folder while the first load reads it
            build_t5_checkpoint(folder, weights="safetensors", seed=1)
        loads.append(1)
        return stages

    monkeypatch.setattr(engine_model, "_load_stages", load_while_saved_over)
    vectors = InstructorVectorizer(folder, instruction=INSTRUCTION, cache=None).fit_transform(TEXTS)
    assert len(loads) == 2
    np.testing.assert_allclose(vectors, _reference(folder), atol=1e-5)


# -- 2. an instruction that leaves no room for text -----------------------------------------------
@pytest.mark.parametrize(
    ("instruction", "max_seq_length"),
    [("Represent the Science title for " + "retrieval " * 80 + ": ", None), (INSTRUCTION, 4)],
)
def test_an_instruction_that_fills_the_window_is_refused_with_its_token_count(
    tiny_t5_path, instruction, max_seq_length
):
    vectorizer = InstructorVectorizer(
        tiny_t5_path, instruction=instruction, max_seq_length=max_seq_length
    )
    with pytest.raises(ValueError, match=r"instruction takes \d+ of the \d+ tokens"):
        vectorizer.fit(TEXTS)


def test_an_instruction_that_leaves_room_embeds(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path, instruction=INSTRUCTION, max_seq_length=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the texts are truncated
        assert np.isfinite(vectorizer.fit_transform(TEXTS)).all()


# -- 3, 9, 10. what loading reads: files inside the folder, regular, of sane size -----------------
def _shard(folder: Path, target: str) -> Path:
    """Turn model.safetensors into a one-shard checkpoint whose index points at ``target``;
    returns the shard file."""
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    shard = folder / "shard-1.safetensors"
    save_file(state, str(shard))
    index = {"metadata": {}, "weight_map": {name: target for name in state}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return shard


@pytest.mark.parametrize("absolute", [False, True])
def test_a_sharded_index_cannot_point_outside_the_folder(tmp_path, absolute):
    folder = _model(tmp_path)
    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(_shard(folder, str(outside) if absolute else "../outside.safetensors"), outside)
    with pytest.raises(CheckpointError, match="leads outside the checkpoint folder"):
        get_model(folder, device="cpu")


def test_a_fifo_in_the_model_folder_is_refused_without_hanging(tmp_path):
    folder = _model(tmp_path)
    os.mkfifo(folder / "2_Dense" / "notes")
    with pytest.raises(CheckpointError, match=r"notes.*not a regular file"):
        get_model(folder, device="cpu")


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_a_config_that_is_no_regular_file_is_refused_without_hanging(tmp_path, kind):
    folder = _model(tmp_path)
    (folder / "config.json").unlink()
    if kind == "fifo":
        os.mkfifo(folder / "config.json")
    else:
        (folder / "config.json").symlink_to(kind)
    with pytest.raises(CheckpointError, match=r"config\.json.*not a regular file"):
        get_model(folder, device="cpu")


def test_a_json_file_too_large_to_be_a_config_is_refused(tmp_path):
    folder = _model(tmp_path)
    with open(folder / "1_Pooling" / "config.json", "w") as handle:
        handle.write('{"pooling_mode_mean_tokens": true, "pad": "' + "x" * (20 * 2**20) + '"}')
    with pytest.raises(CheckpointError, match="too large"):
        get_model(folder, device="cpu")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_layers", 1_000_000, "describes about"),
        ("d_model", "big", "d_model"),
        ("vocab_size", 10**9, "describes about"),
    ],
)
def test_a_config_that_does_not_match_its_weights_is_refused_before_building(
    tmp_path, field, value, message
):
    folder = _model(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        get_model(folder, device="cpu")


def test_links_leading_outside_the_folder_are_not_walked(tmp_path):
    folder = _model(tmp_path)
    (folder / "system").symlink_to("/usr", target_is_directory=True)
    assert fingerprint_folder(folder) == fingerprint_folder(_copy_without(folder, "system"))


@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_broken_links_are_ignored_alike_with_and_without_a_cache(tmp_path, link):
    folder = _model(tmp_path)
    if link == "dangling":
        (folder / "old-weights.bin").symlink_to(tmp_path / "nothing-here")
    else:
        (folder / "a").symlink_to(folder / "b")
        (folder / "b").symlink_to(folder / "a")
    expected = _reference(folder)
    for cache in (None, MemoryCache()):
        vectorizer = InstructorVectorizer(folder, instruction=INSTRUCTION, cache=cache)
        np.testing.assert_allclose(vectorizer.fit_transform(TEXTS), expected, atol=1e-5)


def _copy_without(folder: Path, name: str) -> Path:
    copy = folder.with_name(folder.name + "-copy")
    shutil.copytree(folder, copy, symlinks=True, ignore=shutil.ignore_patterns(name))
    return copy


# -- 4. weights that cannot give a finite vector --------------------------------------------------
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    folder = _model(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    name = next(name for name in state if "SelfAttention.q" in name)
    state[name][0, 0] = float("nan")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        get_model(folder, device="cpu")


# -- 5. per-row instructions: only when asked for --------------------------------------------------
PAIRS = [["Represent the Science title: ", "Dark matter"], ["Represent the text: ", "A fox"]]


def test_rows_of_two_strings_are_not_read_as_instructions_unless_asked(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path).fit(TEXTS)
    with pytest.raises(TypeError, match=r"row 0 .*per_row_instructions=True"):
        vectorizer.transform(PAIRS)


@pytest.mark.parametrize("container", [list, lambda rows: np.array(rows, dtype=object)])
def test_per_row_instructions_when_asked_for_in_any_container(tiny_t5_path, container):
    vectorizer = InstructorVectorizer(tiny_t5_path, per_row_instructions=True)
    rows = [[*pair, 0] for pair in PAIRS]
    got = vectorizer.fit_transform(container(rows))
    reference = ReferenceInstructor(tiny_t5_path)
    expected = np.stack([reference.embed(instruction, text) for instruction, text in PAIRS])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert vectorizer.instruction_ is None


def test_per_row_instructions_and_a_configured_instruction_conflict(tiny_t5_path):
    vectorizer = InstructorVectorizer(
        tiny_t5_path, per_row_instructions=True, instruction=INSTRUCTION
    )
    with pytest.raises(ValueError, match="per_row_instructions"):
        vectorizer.fit(PAIRS)


# -- 6. cached rows the engine cannot serve ------------------------------------------------------
def test_a_cached_row_of_another_dimension_is_a_miss(tiny_t5_path):
    cache = MemoryCache()
    vectorizer = InstructorVectorizer(tiny_t5_path, instruction=INSTRUCTION, cache=cache)
    expected = vectorizer.fit_transform(TEXTS)
    keys = list(cache._entries)
    cache.put_many(keys, np.ones((len(keys), 5), dtype=np.float32))  # valid, but 5-d
    cache.reset_stats()
    np.testing.assert_allclose(vectorizer.transform(TEXTS), expected, atol=1e-6)
    assert cache.stats().misses == len(TEXTS) and cache.stats().hits == 0


# -- 11. a cache location that cannot be used ---------------------------------------------------
def test_an_unusable_cache_location_warns_and_embeds(tiny_t5_path, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    vectorizer = InstructorVectorizer(
        tiny_t5_path, instruction=INSTRUCTION, cache=blocker / "cache"
    )
    with pytest.warns(RuntimeWarning, match="goes on without it"):
        got = vectorizer.fit_transform(TEXTS)
    np.testing.assert_allclose(got, _reference(tiny_t5_path), atol=1e-5)


# Holds its connection to the store open until the test closes its standard input.
_HOLD_OPEN = """
import sys, numpy as np
sys.path.insert(0, sys.argv[2])
from sk_instructor import DiskCache
cache = DiskCache(sys.argv[1])
cache.put_many(["k"], np.ones((1, 4), dtype=np.float32))
print("written", flush=True)
sys.stdin.read()
"""


def test_a_write_ahead_log_deleted_under_a_running_process_does_not_stop_embedding(
    tiny_t5_path, tmp_path
):
    store = tmp_path / "cache"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_OPEN, str(store), str(Path(__file__).parents[1])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "written"
        (store / "embeddings.sqlite3-wal").unlink()
        vectorizer = InstructorVectorizer(tiny_t5_path, instruction=INSTRUCTION, cache=store)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            got = vectorizer.fit_transform(TEXTS)
        np.testing.assert_allclose(got, _reference(tiny_t5_path), atol=1e-5)
        # The holder held its connection open all along, however long the embedding took.
        holder.communicate("", timeout=300)
        assert holder.returncode == 0
    finally:
        holder.kill()
        holder.wait()


# -- 12. a checkpoint's own max_seq_length ------------------------------------------------------
def test_a_checkpoint_max_seq_length_beyond_its_positions_is_refused_at_load(minilm_path, tmp_path):
    folder = tmp_path / "minilm"
    shutil.copytree(minilm_path, folder, symlinks=True)
    config = folder / "sentence_bert_config.json"
    settings = json.loads(config.read_text())
    settings["max_seq_length"] = 1000
    config.unlink()
    config.write_text(json.dumps(settings))
    with pytest.raises(CheckpointError, match=r"max_seq_length 1000 .* 512 positions"):
        get_model(folder, device="cpu")


# -- 14. fork ------------------------------------------------------------------------------------
def _embed_in_child(vectorizer, results):
    results.put(vectorizer.transform(TEXTS))


def test_a_worker_forked_after_embedding_does_not_hang(tmp_path):
    folder = _model(tmp_path, d_model=128, d_ff=512)
    vectorizer = InstructorVectorizer(folder, instruction=INSTRUCTION, cache=None).fit(TEXTS)
    # Enough work for torch to start its thread pool in this process, which fork cannot copy.
    vectorizer.transform([f"text {k} about rivers and banks" for k in range(300)])
    expected = vectorizer.transform(TEXTS)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_embed_in_child, args=(vectorizer, results))
    child.start()
    # Generous deadlines: they only tell a hang (the child never answers) from a slow machine.
    try:
        got = results.get(timeout=300)
    except queue.Empty:
        got = None
    child.join(300)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert got is not None and not alive, "the forked worker hung"
    np.testing.assert_allclose(got, expected, atol=1e-6)


_FORK_WITHOUT_AND_WITH_A_MODEL = """
import multiprocessing, sys
from sk_instructor._engine.registry import get_model

get_model(sys.argv[1], device="cpu")
fork = multiprocessing.get_context("fork")
for target, kwargs in ((print, {}), (get_model, {"device": "cpu"})):
    child = fork.Process(target=target, args=(sys.argv[1],), kwargs=kwargs)
    child.start()
    child.join(300)
    print("-- next child --", file=sys.stderr, flush=True)
"""


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs os.fork")
def test_only_a_forked_child_that_asks_for_a_model_is_told_it_runs_on_one_thread(tmp_path):
    # Libraries fork helpers of their own (OpenVINO's telemetry does at import): a child that
    # never embeds has nothing to be warned about.
    folder = _model(tmp_path, d_model=128, d_ff=512)
    done = subprocess.run(
        [sys.executable, "-c", _FORK_WITHOUT_AND_WITH_A_MODEL, str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    assert done.returncode == 0, done.stderr
    without_model, with_model, _ = done.stderr.split("-- next child --")
    assert "forked from one that had loaded a model" not in without_model
    assert with_model.count("forked from one that had loaded a model") == 1


# -- 15. a security refusal gives no advice to lower security ---------------------------------
class _Payload:
    def __reduce__(self):
        return (print, ("this would run",))


def test_a_refused_pickle_names_the_global_and_never_suggests_weights_only_false(tmp_path):
    folder = build_t5_checkpoint(tmp_path / "model", weights="bin")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["payload"] = _Payload()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as refusal:
        get_model(folder, device="cpu")
    message = str(refusal.value)
    assert "print" in message
    assert "weights_only" not in message and "trust" not in message.lower()


def test_non_finite_activations_are_an_error_and_never_cached(tiny_t5_path):
    from sk_instructor._engine.checkpoint import resolve_model
    from sk_instructor._engine.entry import Encoder, EncodingSettings
    from sk_instructor._engine.model import EmbeddingModel

    model = EmbeddingModel(resolve_model(tiny_t5_path), device="cpu")
    real_encoder = model.transformer.encoder

    def overflowing_encoder(**kwargs):
        output = real_encoder(**kwargs)
        output.last_hidden_state[0, 0, 0] = float("inf")  # as float16 overflow gives
        return output

    model.transformer.encoder = overflowing_encoder
    cache = MemoryCache()
    keys = Encoder(EncodingSettings(model=tiny_t5_path, device="cpu"))._keys()  # the entry's
    with pytest.raises(FloatingPointError, match="NaN or infinite values for 1 of"):
        model.encode([INSTRUCTION] * 3, TEXTS, cache=cache, keys=keys, batch_size=3)
    assert cache.stats().entries == 0
