"""sk_instructor.ray.embed_dataset on a local Ray: same vectors as an in-process transform.

Ray starts once for the module (two CPUs, no dashboard) and is shut down after; starting it and
its actors costs seconds, hence the ``slow`` mark. Each actor loads the model, so the tests of
what one embedding run returns (its rows, its Parquet output, its pandas frame) share one run.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import clone

from sk_instructor import InstructorVectorizer

TEXTS = [
    "Parton energy loss in QCD matter",
    "Dark matter in the early universe",
    "The stock market fell sharply after the announcement",
    "",
    "Scientists discovered a new species of frog",
    "Parton energy loss in QCD matter",
    "Where is the nearest train station?",
] * 6


@pytest.fixture(scope="module")
def local_ray():
    import ray
    import ray.data

    # Ray starts its workers at niceness 15, so any other load on the machine starves them (under
    # a busy loop per core these tests took 9 minutes instead of 30 s); the test's workers run
    # at the test's own priority instead.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_worker_niceness", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def vectorizer(tiny_t5_path):
    return InstructorVectorizer(model=tiny_t5_path, domain="Science", text_type="title", cache=None)


def _in_process(vectorizer: InstructorVectorizer, texts) -> np.ndarray:
    from sklearn.base import clone

    return clone(vectorizer).fit_transform(texts)


def _embeddings_by_id(rows, column: str = "embedding") -> np.ndarray:
    rows = sorted(rows, key=lambda row: row["id"])
    return np.stack([np.asarray(row[column], dtype=np.float32) for row in rows])


@pytest.fixture(scope="module")
def embedded(local_ray, tiny_t5_path, tmp_path_factory):
    """TEXTS and a missing text, read from Parquet (three files, three blocks) and embedded once.

    The cluster recipe of the README, with a local folder standing in for object storage, on
    the default (autoscaling) actor pool, into a column named here. Returns the materialized
    result, the texts, and the in-process transform of the same texts.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sk_instructor.ray import embed_dataset

    texts = [*TEXTS, None]  # a missing text: the vectorizer's missing="zero" must travel
    table = pa.table(
        {"id": range(len(texts)), "title": texts, "year": [2000 + i for i in range(len(texts))]}
    )
    source = tmp_path_factory.mktemp("source")
    for part, start in enumerate(range(0, len(texts), 15)):
        pq.write_table(table.slice(start, 15), source / f"part-{part}.parquet")
    vectorizer = InstructorVectorizer(
        tiny_t5_path, domain="Science", text_type="title", missing="zero", cache=None
    )
    dataset = local_ray.data.read_parquet(str(source))
    result = embed_dataset(
        dataset, vectorizer, "title", output_column="vector", batch_size=8
    ).materialize()
    return result, texts, _in_process(vectorizer, texts)


@pytest.mark.slow
def test_embed_dataset_equals_in_process_transform(embedded):
    dataset, texts, expected = embedded
    rows = dataset.take_all()

    assert len(rows) == len(texts)
    assert sorted(row["id"] for row in rows) == list(range(len(texts)))
    assert all(row["year"] == 2000 + row["id"] for row in rows)  # other columns kept
    assert all(row["title"] == texts[row["id"]] for row in rows)
    vectors = _embeddings_by_id(rows, column="vector")
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-6)
    assert not vectors[-1].any()


@pytest.mark.slow
def test_embedding_column_is_a_fixed_size_float32_list_that_round_trips_parquet(embedded, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    dataset, _, expected = embedded
    dataset.write_parquet(str(tmp_path / "embedded"))

    table = pq.read_table(tmp_path / "embedded")
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 16)
    vectors = _embeddings_by_id(table.to_pylist(), column="vector")
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-6)
    assert not vectors[-1].any()


@pytest.mark.slow
def test_invalid_arguments_fail_on_the_driver(local_ray, vectorizer):
    from sk_instructor.ray import embed_dataset

    dataset = local_ray.data.from_items([{"text": "a"}])
    with pytest.raises(TypeError, match="InstructorVectorizer"):
        embed_dataset(dataset, object(), "text")
    with pytest.raises(TypeError, match=r"ray\.data\.Dataset"):
        embed_dataset([{"text": "a"}], vectorizer, "text")
    with pytest.raises(ValueError, match="dtype"):
        embed_dataset(dataset, vectorizer.set_params(dtype="int8"), "text")
    with pytest.raises(ValueError, match="concurrency"):
        embed_dataset(dataset, vectorizer.set_params(dtype="auto"), "text", concurrency=0)
    with pytest.raises(ValueError, match="replace the text column"):
        embed_dataset(dataset, vectorizer, "text", output_column="text")
    # The schema is read on the driver: a wrong column fails at once, not in an actor.
    with pytest.raises(ValueError, match=r"no column 'title'; its columns are \['text'\]"):
        embed_dataset(dataset, vectorizer, "title")
    with pytest.raises(ValueError, match="per_row_instructions"):
        embed_dataset(dataset, clone(vectorizer).set_params(per_row_instructions=True), "text")


@pytest.mark.slow
def test_to_pandas_rows_stack_into_the_in_process_matrix(embedded):
    dataset, _, expected = embedded
    frame = dataset.to_pandas().sort_values("id")
    # What the docstring says: one vector per row, np.stack makes the matrix.
    np.testing.assert_allclose(np.stack(frame["vector"]), expected, atol=1e-6)


def test_missing_ray_raises_import_error_naming_the_extra(monkeypatch, vectorizer):
    from sk_instructor.ray import embed_dataset

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)

    with pytest.raises(ImportError, match=r"pip install \"sk-instructor\[ray\]\""):
        embed_dataset(None, vectorizer, "text")


def test_importing_the_package_or_the_module_does_not_import_ray():
    code = (
        "import sys, sk_instructor, sk_instructor.ray; "
        "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


_WORDS = "dark matter energy loss parton chiral phase transition quick brown fox river".split()


@pytest.mark.slow
def test_embed_dataset_in_chunk_mode_equals_the_in_process_transform(local_ray, tiny_t5_path):
    from sk_instructor.ray import embed_dataset

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(_WORDS, size=rng.integers(3, 150))) for _ in range(20)]
    vectorizer = InstructorVectorizer(
        tiny_t5_path, domain="Science", long_text="chunk", chunk_overlap=8, cache=None
    )
    items = [{"id": i, "text": text} for i, text in enumerate(texts)]
    dataset = local_ray.data.from_items(items, override_num_blocks=3)

    rows = embed_dataset(dataset, vectorizer, "text", batch_size=6, concurrency=1).take_all()

    rows.sort(key=lambda row: row["id"])
    vectors = np.stack([np.asarray(row["embedding"], dtype=np.float32) for row in rows])
    expected = vectorizer.fit_transform(texts)
    np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-6)
    truncated = InstructorVectorizer(tiny_t5_path, domain="Science", cache=None)
    with pytest.warns(UserWarning, match="truncated"):
        assert not np.allclose(vectors, truncated.fit_transform(texts), atol=1e-3)
