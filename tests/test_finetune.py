"""InstructorFineTuner: the encoder fine-tuned on labels, as a scikit-learn step.

Every fit trains the tiny random T5 of ``tests/checkpoints.py`` (the published layout) for a
few steps on a dozen texts: the vectors mean nothing, the code path is the real one.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from sk_instructor import InstructorFineTuner, InstructorVectorizer, MemoryCache

TEXTS = [
    "The stock market fell sharply after the announcement",
    "The Federal Reserve raised its benchmark interest rate",
    "Interest rates rise and the market falls",
    "Scientists discovered a new species of frog",
    "A new species in the rain forest",
    "Parton energy loss in QCD matter",
    "Patients with diabetes should monitor their blood sugar",
    "Blood sugar levels daily for patients",
    "Where is the nearest train station",
    "How do I get to the airport",
    "A quick brown fox jumps over the lazy dog",
    "The lazy dog near the river bank",
]
LABELS = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4]
# A few steps that move the tiny model's weights visibly.
FAST = {"pairs_per_text": 4, "learning_rate": 1e-3, "train_batch_size": 8, "cache": None}


@pytest.fixture(autouse=True)
def _fine_tuned_folders_in_tmp(tmp_path, monkeypatch):
    """Default output folders go under this test's tmp_path, never the user's cache."""
    monkeypatch.setenv("SK_INSTRUCTOR_FINE_TUNED_DIR", str(tmp_path / "fine_tuned"))


def _tuner(model, **parameters) -> InstructorFineTuner:
    return InstructorFineTuner(model, **{**FAST, "random_state": 0, **parameters})


def _weights(folder) -> dict:
    folder = Path(folder)
    return {
        **load_file(str(folder / "model.safetensors")),
        **{
            f"dense.{k}": v for k, v in load_file(str(folder / "2_Dense/model.safetensors")).items()
        },
    }


def test_fit_transform_gives_one_vector_per_text_from_a_saved_checkpoint(tiny_t5_path):
    tuner = _tuner(tiny_t5_path, domain="News")
    vectors = tuner.fit(TEXTS, LABELS).transform(TEXTS[:5])
    assert vectors.shape == (5, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert tuner.instruction_ == "Represent the News sentence: "
    assert tuner.embedding_dim_ == 16
    assert tuner.n_training_steps_ == 6  # 12 texts x 4 pairs / 8 pairs per step
    assert tuner.n_training_pairs_ == 48
    assert len(tuner.training_loss_) == 1 and np.isfinite(tuner.training_loss_[0])
    assert tuner.get_feature_names_out()[0] == "instructorfinetuner0"
    # The base checkpoint's layout, the weights written anew in safetensors.
    saved = Path(tuner.model_path_)
    base_files = {
        p.relative_to(tiny_t5_path).as_posix()
        for p in tiny_t5_path.rglob("*")
        if p.is_file() and not p.name.endswith(".bin")
    }
    saved_files = {
        p.relative_to(saved).as_posix()
        for p in saved.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }
    assert saved_files == base_files | {"model.safetensors", "2_Dense/model.safetensors"}
    assert (saved / "3_Normalize").is_dir()
    assert saved.parent == Path(tuner.model_path_).parent  # under SK_INSTRUCTOR_FINE_TUNED_DIR
    assert saved.parent.name == "fine_tuned"


def test_tuned_vectors_differ_from_the_base_and_are_never_served_for_it(tiny_t5_path):
    cache = MemoryCache()
    base = InstructorVectorizer(tiny_t5_path, domain="News", cache=cache).fit_transform(TEXTS)
    assert cache.stats().entries == len(TEXTS)
    tuner = _tuner(tiny_t5_path, domain="News", cache=cache).fit(TEXTS, LABELS)
    cache.reset_stats()
    tuned = tuner.transform(TEXTS)
    # Same texts, same instruction, same cache: every vector was encoded by the tuned weights.
    assert cache.stats().hits == 0 and cache.stats().encoded == len(TEXTS)
    assert np.abs(tuned - base).max() > 1e-2
    fresh = InstructorVectorizer(tuner.model_path_, domain="News", cache=None)
    np.testing.assert_allclose(tuned, fresh.fit_transform(TEXTS), atol=1e-6)
    # A second transform is served from the cache, under the tuned weights' keys.
    cache.reset_stats()
    np.testing.assert_array_equal(tuner.transform(TEXTS), tuned)
    assert cache.stats().hits == len(TEXTS) and cache.stats().encoded == 0


def test_the_checkpoint_loads_in_sentence_transformers_with_the_same_vectors(tiny_t5_path):
    import sentence_transformers

    tuner = _tuner(tiny_t5_path, instruction="").fit(TEXTS, LABELS)
    ours = tuner.transform(TEXTS)
    st = sentence_transformers.SentenceTransformer(tuner.model_path_, device="cpu")
    theirs = st.encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_training_pools_without_the_instructions_tokens_as_inference_does(tiny_t5_path):
    import torch

    from sk_instructor._engine.training import TrainableModel

    instruction = "Represent the Science title: "
    tuner = _tuner(tiny_t5_path, instruction=instruction).fit(TEXTS, LABELS)
    model = TrainableModel(Path(tuner.model_path_), "cpu")
    tokenized = model.tokenizer.tokenize([instruction] * len(TEXTS), TEXTS, 64)
    assert (tokenized.instruction_lengths > 1).all()
    with torch.no_grad():
        trained = model.embed(tokenized.input_ids, tokenized.instruction_lengths).numpy()
        unmasked = model.embed(tokenized.input_ids, np.zeros(len(TEXTS), np.int64)).numpy()
    engine = InstructorVectorizer(
        tuner.model_path_, instruction=instruction, normalize=False, cache=None
    ).fit_transform(TEXTS)
    np.testing.assert_allclose(trained, engine, atol=1e-5)
    assert np.abs(unmasked - engine).max() > 1e-3  # the mask is what makes them equal


def test_the_same_random_state_gives_the_same_weights(tiny_t5_path, tmp_path):
    first = _tuner(tiny_t5_path, output_dir=tmp_path / "a").fit(TEXTS, LABELS)
    second = _tuner(tiny_t5_path, output_dir=tmp_path / "b").fit(TEXTS, LABELS)
    other = _tuner(tiny_t5_path, output_dir=tmp_path / "c", random_state=1).fit(TEXTS, LABELS)
    a, b, c = (_weights(tuner.model_path_) for tuner in (first, second, other))
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name].numpy(), b[name].numpy()), name
    assert any(not np.array_equal(a[name].numpy(), c[name].numpy()) for name in a)
    np.testing.assert_array_equal(first.transform(TEXTS), second.transform(TEXTS))


def test_an_identical_fit_reuses_the_checkpoint_and_other_data_gets_its_own(
    tiny_t5_path, monkeypatch
):
    from sk_instructor._engine import training

    first = _tuner(tiny_t5_path).fit(TEXTS, LABELS)

    def refuse(*args, **kwargs):
        raise AssertionError("trained again")

    with monkeypatch.context() as patched:
        patched.setattr(training, "train_and_save", refuse)
        again = _tuner(tiny_t5_path).fit(TEXTS, LABELS)
    assert again.model_path_ == first.model_path_
    assert again.training_loss_ == first.training_loss_
    relabelled = _tuner(tiny_t5_path).fit(TEXTS, LABELS[::-1])
    assert relabelled.model_path_ != first.model_path_
    # Without a random_state each fit draws its own seed, and so its own folder.
    unseeded = [_tuner(tiny_t5_path, random_state=None).fit(TEXTS, LABELS) for _ in range(2)]
    assert unseeded[0].model_path_ != unseeded[1].model_path_


def test_clone_and_parameters_behave_as_in_any_estimator(tiny_t5_path):
    tuner = _tuner(tiny_t5_path, domain="Movie", epochs=2, loss="contrastive")
    copy = clone(tuner)
    assert copy.get_params() == tuner.get_params()
    assert copy.set_params(epochs=3).epochs == 3 and tuner.epochs == 2
    assert not hasattr(copy, "model_path_")
    with pytest.raises(ValueError, match="'loss' parameter"):
        _tuner(tiny_t5_path, loss="triplet").fit(TEXTS, LABELS)
    with pytest.raises(ValueError, match="'pairs_per_text' parameter"):
        _tuner(tiny_t5_path, pairs_per_text=0).fit(TEXTS, LABELS)


def test_grid_search_fine_tunes_each_fold_on_its_own_training_part(tiny_t5_path, tmp_path):
    pipeline = make_pipeline(_tuner(tiny_t5_path), LogisticRegression(max_iter=200))
    texts, labels = TEXTS[:8], [0, 0, 0, 0, 1, 1, 1, 1]
    search = GridSearchCV(
        pipeline,
        {
            "instructorfinetuner__learning_rate": [1e-4, 1e-3],
            "instructorfinetuner__instruction": ["", "Represent the sentence: "],
        },
        cv=StratifiedKFold(2),
        error_score="raise",
    ).fit(texts, labels)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    # 4 candidates x 2 folds, and the refit: nine fine-tunings, each in its own folder.
    folders = [p for p in (tmp_path / "fine_tuned").iterdir() if not p.name.startswith(".")]
    assert len(folders) == 9
    records = [json.loads((p / ".sk_instructor_fine_tune.json").read_text()) for p in folders]
    assert sorted(record["n_texts"] for record in records) == [4] * 8 + [8]
    assert search.predict(texts).shape == (8,)


@pytest.mark.slow
def test_a_pickled_pipeline_predicts_the_same_in_a_fresh_process(tiny_t5_path, tmp_path):
    pipeline = make_pipeline(_tuner(tiny_t5_path, domain="News"), LogisticRegression())
    pipeline.fit(TEXTS, LABELS)
    expected = pipeline.predict_proba(TEXTS)
    (tmp_path / "pipeline.pkl").write_bytes(pickle.dumps(pipeline))
    (tmp_path / "texts.json").write_text(json.dumps(TEXTS))
    script = (
        "import json, pickle, sys\n"
        "pipeline = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "texts = json.load(open(sys.argv[2]))\n"
        "print(json.dumps(pipeline.predict_proba(texts).tolist()))\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path / "pipeline.pkl"),
            str(tmp_path / "texts.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(json.loads(result.stdout.splitlines()[-1]), expected, atol=1e-6)


def test_a_single_class_is_refused_naming_y_and_the_class(tiny_t5_path):
    with pytest.raises(ValueError, match=r"y has a single class, 'pos'.*at least two classes"):
        _tuner(tiny_t5_path).fit(TEXTS[:4], ["pos"] * 4)


def test_a_class_with_one_example_is_refused_naming_y_and_the_class(tiny_t5_path):
    with pytest.raises(ValueError, match=r"y has 1 example of class 7.*at least 2 texts"):
        _tuner(tiny_t5_path).fit(TEXTS[:5], [0, 0, 1, 1, 7])
    with pytest.raises(ValueError, match=r"requires y"):
        _tuner(tiny_t5_path).fit(TEXTS, None)
    with pytest.raises(ValueError, match=r"12 texts but y has 3 labels"):
        _tuner(tiny_t5_path).fit(TEXTS, [0, 1, 0])


def test_an_output_dir_holding_other_files_is_never_overwritten(tiny_t5_path, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holding other files"):
        _tuner(tiny_t5_path, output_dir=tmp_path / "mine").fit(TEXTS, LABELS)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # An earlier fine-tuning there is replaced, and the new weights are served.
    tuner = _tuner(tiny_t5_path, output_dir=tmp_path / "tuned").fit(TEXTS, LABELS)
    before = tuner.transform(TEXTS[:3])
    tuner.set_params(random_state=5).fit(TEXTS, LABELS)
    assert np.abs(tuner.transform(TEXTS[:3]) - before).max() > 1e-4


def test_a_missing_checkpoint_is_reported_at_transform(tiny_t5_path, tmp_path):
    import shutil

    tuner = _tuner(tiny_t5_path, output_dir=tmp_path / "gone").fit(TEXTS, LABELS)
    shutil.rmtree(tmp_path / "gone")
    with pytest.raises(Exception, match=r"fine-tuned checkpoint of this estimator.*is gone"):
        tuner.transform(TEXTS[:2])


def test_the_progress_bar_counts_training_steps(tiny_t5_path, capsys):
    _tuner(tiny_t5_path, show_progress_bar=True).fit(TEXTS, LABELS)
    assert "Fine-tuning" in capsys.readouterr().err
    _tuner(tiny_t5_path, show_progress_bar=False, random_state=3).fit(TEXTS, LABELS)
    assert "Fine-tuning" not in capsys.readouterr().err


def test_pairs_are_balanced_and_never_pair_a_text_with_itself():
    from sk_instructor._engine.training import sample_pairs

    codes = np.array([0] * 5 + [1] * 2 + [2] * 3)
    first, second, labels = sample_pairs(codes, 6, np.random.default_rng(0))
    assert len(first) == 60 and labels.sum() == 30
    assert (first != second).all()
    assert (codes[first] == codes[second])[labels == 1].all()
    assert (codes[first] != codes[second])[labels == 0].all()


def test_the_cuda_bfloat16_autocast_path_trains_float32_weights(tiny_t5_path):
    # No GPU here: the same code path runs under the CPU's bfloat16 autocast.
    import torch

    from sk_instructor._engine.fine_tuning import TrainingSettings, training_precision
    from sk_instructor._engine.training import TrainableModel, train

    assert training_precision("cuda:0", "auto") == "bfloat16"
    assert training_precision("cuda", "float32") == "float32"
    assert training_precision("cpu", "bfloat16") == "float32"
    model = TrainableModel(tiny_t5_path, "cpu")
    before = {name: tensor.clone() for name, tensor in model.encoder.state_dict().items()}
    run = train(
        model,
        instruction="Represent the sentence: ",
        texts=TEXTS,
        codes=np.array(LABELS),
        max_seq_length=64,
        training=TrainingSettings(pairs_per_text=2, learning_rate=1e-3, batch_size=8),
        precision="bfloat16",
    )
    assert np.isfinite(run.epoch_losses).all()
    after = model.encoder.state_dict()
    assert {tensor.dtype for tensor in after.values()} == {torch.float32}
    assert any(not torch.equal(before[name], after[name]) for name in before)


def test_the_shared_parameters_have_the_vectorizers_defaults_docs_and_constraints():
    import inspect

    from sk_instructor._params import DEFAULTS, ENGINE, INSTRUCTION, PARAMETERS

    signature = inspect.signature(InstructorFineTuner.__init__)
    for name in ("model", *INSTRUCTION, *ENGINE):
        assert signature.parameters[name].default == DEFAULTS[name], name
        assert PARAMETERS[name].numpydoc() in InstructorFineTuner.__doc__, name
        assert InstructorFineTuner._parameter_constraints[name] is PARAMETERS[name].constraints
    assert ".. shared parameters::" not in InstructorFineTuner.__doc__


def test_a_tuner_fitted_on_a_gpu_loads_on_a_cpu_only_machine(tiny_t5_path, monkeypatch):
    import torch

    tuner = _tuner(tiny_t5_path).fit(TEXTS, LABELS)
    expected = tuner.transform(TEXTS)
    tuner.device_ = "cuda"  # as recorded by a fit on a GPU machine
    payload = pickle.dumps(tuner)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="fine-tuner ran on 'cuda'.*using 'cpu'"):
        loaded = pickle.loads(payload)
    assert loaded.device_ == "cpu"
    np.testing.assert_allclose(loaded.transform(TEXTS), expected, atol=1e-6)
