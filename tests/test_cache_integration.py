"""The embedding cache seen from the estimators: one encoder pass per distinct text."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline

from sk_instructor import InstructorVectorizer
from sk_instructor._cache import DiskCache, MemoryCache
from sk_instructor._engine.registry import get_model

TEXTS = [
    f"{topic} sentence number {k} about {topic}" for topic in ("cats", "stocks") for k in range(15)
]
LABELS = [0] * 15 + [1] * 15
INSTRUCTIONS = [
    "Represent the sentence for classification: ",
    "Represent the Science sentence: ",
    "Represent the Financial statement for classification: ",
]


def grid_search(model, cache, n_jobs: int = 1) -> GridSearchCV:
    """The search of these tests (3 instructions x 2 C x 3 folds + refit), fitted."""
    pipeline = Pipeline(
        [
            ("vectorizer", InstructorVectorizer(model, device="cpu", cache=cache)),
            ("classifier", LogisticRegression()),
        ]
    )
    search = GridSearchCV(
        pipeline,
        {"vectorizer__instruction": INSTRUCTIONS, "classifier__C": [0.1, 10.0]},
        cv=KFold(3, shuffle=True, random_state=0),
        n_jobs=n_jobs,
        error_score="raise",
    )
    return search.fit(TEXTS, LABELS)


def test_grid_search_encodes_each_distinct_instruction_text_pair_once(tiny_t5_path):
    cache = MemoryCache()
    grid_search(tiny_t5_path, cache)
    # 3 instructions x 30 texts, whatever the folds, grid points and the final refit do.
    assert cache.stats().encoded == len(INSTRUCTIONS) * len(TEXTS)
    assert cache.stats().hits > 0


def test_without_cache_the_same_search_encodes_much_more(tiny_t5_path):
    model = get_model(tiny_t5_path, device="cpu")
    before = model.n_encoded
    pipeline = Pipeline(
        [
            ("vectorizer", InstructorVectorizer(tiny_t5_path, device="cpu", cache=None)),
            ("classifier", LogisticRegression()),
        ]
    )
    GridSearchCV(
        pipeline, {"vectorizer__instruction": INSTRUCTIONS[:1]}, cv=3, error_score="raise"
    ).fit(TEXTS, LABELS)
    # Every fold embeds its train and test texts again, plus the refit.
    assert model.n_encoded - before == 3 * len(TEXTS) + len(TEXTS)


def test_cached_vectors_equal_fresh_ones(tiny_t5_path):
    cache = MemoryCache()
    fresh = InstructorVectorizer(tiny_t5_path, device="cpu", cache=None).fit_transform(TEXTS)
    cached_vectorizer = InstructorVectorizer(tiny_t5_path, device="cpu", cache=cache)
    first = cached_vectorizer.fit_transform(TEXTS)
    second = cached_vectorizer.transform(TEXTS)
    np.testing.assert_array_equal(first, fresh)
    np.testing.assert_array_equal(second, fresh)
    assert cache.stats().hits == len(TEXTS)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other weights"},
        {"instruction": "Represent the Science title: "},
        {"max_seq_length": 10},
        {"normalize": False},
        {"dtype": "bfloat16"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_entry_written_under_other_settings_is_never_served(
    tmp_path, tiny_t5_path, tiny_t5_safetensors_path, change
):
    cache = DiskCache(tmp_path / "cache")
    base = {"model": tiny_t5_path, "device": "cpu", "instruction": "Represent the sentence: "}
    InstructorVectorizer(**base, cache=cache).fit_transform(TEXTS)
    changed = dict(base, **change)
    if change.get("model") == "other weights":
        changed["model"] = tiny_t5_safetensors_path
    expected = InstructorVectorizer(**changed, cache=None).fit_transform(TEXTS)
    cache.reset_stats()
    got = InstructorVectorizer(**changed, cache=cache).fit_transform(TEXTS)
    assert cache.stats().hits == 0 and cache.stats().encoded == len(TEXTS)
    np.testing.assert_array_equal(got, expected)


def test_editing_a_local_checkpoint_invalidates_its_entries(tmp_path):
    import torch
    from checkpoints import build_t5_checkpoint

    from sk_instructor._engine.registry import clear_loaded_models

    folder = build_t5_checkpoint(tmp_path / "model")
    cache = DiskCache(tmp_path / "cache")
    InstructorVectorizer(folder, device="cpu", cache=cache).fit_transform(TEXTS[:5])
    dense_file = folder / "2_Dense" / "pytorch_model.bin"
    state = torch.load(dense_file, weights_only=True)
    torch.save({"linear.weight": state["linear.weight"] * -1.0}, dense_file)
    clear_loaded_models()
    cache.reset_stats()
    InstructorVectorizer(folder, device="cpu", cache=cache).fit_transform(TEXTS[:5])
    assert cache.stats().hits == 0


_WORKER = textwrap.dedent(
    """
    import json, sys
    from sk_instructor import InstructorVectorizer
    from sk_instructor._cache import DiskCache
    model, cache_path, start, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    texts = [f"text {k} " + "word " * (k % 7) for k in range(start, stop)]
    cache = DiskCache(cache_path)
    vectorizer = InstructorVectorizer(model, device="cpu", cache=cache)
    if sys.argv[5:] == ["--wait"]:
        # Load the model, say so, and write only once told to: the writes then overlap.
        vectorizer.fit(texts)
        print("ready", flush=True)
        sys.stdin.readline()
    before = cache.stats().encoded  # the counters add up every process's work
    vectors = vectorizer.fit_transform(texts)
    encoded = cache.stats().encoded - before
    print(json.dumps({"encoded": encoded, "sum": float(vectors.sum())}))
    """
)


def _texts(start, stop):
    return [f"text {k} " + "word " * (k % 7) for k in range(start, stop)]


def _run_worker(model, cache_path, start, stop, *, wait=False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(model), str(cache_path), str(start), str(stop)]
        + (["--wait"] if wait else []),
        stdin=subprocess.PIPE if wait else None,
        stdout=subprocess.PIPE,
        text=True,
    )


def _result(process: subprocess.Popen) -> dict:
    import json

    out, _ = process.communicate(timeout=240)
    assert process.returncode == 0
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_disk_cache_is_shared_by_later_and_concurrent_processes(tmp_path, tiny_t5_path):
    cache_path = tmp_path / "shared-cache"
    # Two processes write overlapping ranges at the same time: a worker and this one, whose
    # model is loaded already. The worker loads its model first, then both write at once.
    worker = _run_worker(tiny_t5_path, cache_path, 0, 120, wait=True)
    try:
        assert worker.stdout.readline().strip() == "ready"
        here = DiskCache(cache_path)
        worker.stdin.write("go\n")
        worker.stdin.flush()
        before = here.stats().encoded
        InstructorVectorizer(tiny_t5_path, device="cpu", cache=here).fit_transform(_texts(60, 180))
        encoded_here = here.stats().encoded - before
        here.close()
        results = [_result(worker), {"encoded": encoded_here}]
    finally:
        worker.kill()  # a no-op once it has exited; stops it if an assertion failed first
        worker.wait()
    assert all(result["encoded"] > 0 for result in results)
    # ...and a later process finds every one of their 180 texts: it encodes nothing.
    later = _result(_run_worker(tiny_t5_path, cache_path, 0, 180))
    assert later["encoded"] == 0
    expected = InstructorVectorizer(tiny_t5_path, device="cpu", cache=None).fit_transform(
        _texts(0, 180)
    )
    assert later["sum"] == pytest.approx(float(expected.sum()), abs=1e-3)


def test_truncated_store_is_rebuilt_with_a_warning(tmp_path, tiny_t5_path):
    cache_path = tmp_path / "cache"
    writer = DiskCache(cache_path)
    InstructorVectorizer(tiny_t5_path, device="cpu", cache=writer).fit_transform(TEXTS)
    writer.close()  # as if the writing process had ended
    database = next(cache_path.glob("*.sqlite3"))
    database.write_bytes(database.read_bytes()[: database.stat().st_size // 2])
    expected = InstructorVectorizer(tiny_t5_path, device="cpu", cache=None).fit_transform(TEXTS)
    with pytest.warns(RuntimeWarning, match="sqlite3"):
        rebuilt = DiskCache(cache_path, max_bytes=None)
        got = InstructorVectorizer(tiny_t5_path, device="cpu", cache=rebuilt).fit_transform(TEXTS)
    np.testing.assert_array_equal(got, expected)


def test_failure_mid_transform_leaves_the_cache_consistent(tiny_t5_path, monkeypatch):
    from sk_instructor._engine.checkpoint import resolve_model
    from sk_instructor._engine.entry import Encoder, EncodingSettings
    from sk_instructor._engine.model import EmbeddingModel

    model = EmbeddingModel(resolve_model(tiny_t5_path), device="cpu")
    keys = Encoder(EncodingSettings(model=tiny_t5_path, device="cpu"))._keys()  # the entry's
    cache = MemoryCache()
    texts = [f"row {k} " + "x " * k for k in range(40)]
    expected = model.encode([""] * 40, texts)
    real_encoder, widths = model.transformer.encoder, []

    def recording_encoder(**kwargs):
        widths.append(kwargs["input_ids"].shape[1])
        return real_encoder(**kwargs)

    # Batches of 8 rows of distinct lengths are read longest first; on the CPU several run at
    # once (cpu_streams), so the third batch is told by its width, not by the order of calls.
    monkeypatch.setattr(model.transformer, "encoder", recording_encoder)
    model.encode([""] * 40, texts, batch_size=8)
    third_width = sorted(widths, reverse=True)[2]

    def failing_encoder(**kwargs):
        if kwargs["input_ids"].shape[1] == third_width:
            raise RuntimeError("simulated failure in the third batch")
        return real_encoder(**kwargs)

    monkeypatch.setattr(model.transformer, "encoder", failing_encoder)
    with pytest.raises(RuntimeError, match="third batch"):
        model.encode([""] * 40, texts, cache=cache, keys=keys, batch_size=8)
    stored = cache.stats().entries
    assert stored == 16  # the two batches finished before the failure, nothing partial
    monkeypatch.setattr(model.transformer, "encoder", real_encoder)
    got = model.encode([""] * 40, texts, cache=cache, keys=keys, batch_size=8)
    np.testing.assert_allclose(got, expected, atol=1e-6)  # other batches: float32 rounding
    assert cache.stats().hits == stored
