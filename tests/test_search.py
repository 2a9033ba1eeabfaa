"""Chunked exact cosine search against sklearn's brute-force NearestNeighbors."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.metrics.pairwise import cosine_distances
from sklearn.neighbors import NearestNeighbors

from sk_instructor._search import cosine_kneighbors


def _sklearn_kneighbors(queries, corpus, n_neighbors):
    nn = NearestNeighbors(metric="cosine", algorithm="brute").fit(corpus)
    return nn.kneighbors(queries, n_neighbors=n_neighbors)


def _stable_reference(queries, corpus, n_neighbors):
    """Full distance matrix, then a stable sort: ties go to the lower corpus index."""
    distances = cosine_distances(queries, corpus)
    order = np.argsort(distances, axis=1, kind="stable")[:, :n_neighbors]
    return np.take_along_axis(distances, order, axis=1), order


def _sign_vectors(rng, n_rows, n_features=4):
    """Rows of +-1: unit rows are +-0.5, so every cosine is exact and ties are exact."""
    return rng.choice([-1.0, 1.0], size=(n_rows, n_features))


@pytest.fixture(scope="module")
def random_data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(23, 12)), rng.normal(size=(101, 12))


# Chunk sizes that divide nothing (7, 13), degenerate ones (1) and ones larger than the data.
CHUNKS = [(7, 13), (1, 1), (23, 101), (5, 50), (1000, 10_000)]


@pytest.mark.parametrize(("query_chunk", "corpus_chunk"), CHUNKS)
def test_equals_sklearn_brute_force_for_any_chunking(random_data, query_chunk, corpus_chunk):
    queries, corpus = random_data
    expected_distances, expected_indices = _sklearn_kneighbors(queries, corpus, 10)
    distances, indices = cosine_kneighbors(
        queries, corpus, 10, query_chunk=query_chunk, corpus_chunk=corpus_chunk
    )
    assert_array_equal(indices, expected_indices)
    assert_allclose(distances, expected_distances, rtol=0, atol=1e-12)
    assert distances.dtype == expected_distances.dtype == np.float64
    assert indices.dtype == np.intp


def test_one_neighbor(random_data):
    queries, corpus = random_data
    expected_distances, expected_indices = _sklearn_kneighbors(queries, corpus, 1)
    distances, indices = cosine_kneighbors(queries, corpus, 1, corpus_chunk=10)
    assert indices.shape == (23, 1)
    assert_array_equal(indices, expected_indices)
    assert_allclose(distances, expected_distances, rtol=0, atol=1e-12)


def test_all_documents_as_neighbors_gives_the_full_ranking(random_data):
    queries, corpus = random_data
    expected_distances, expected_indices = _sklearn_kneighbors(queries, corpus, len(corpus))
    distances, indices = cosine_kneighbors(queries, corpus, len(corpus), corpus_chunk=17)
    assert_array_equal(indices, expected_indices)
    assert_allclose(distances, expected_distances, rtol=0, atol=1e-12)


def test_float32_inputs_give_float32_like_sklearn():
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(30, 16)).astype(np.float32)
    corpus = rng.normal(size=(200, 16)).astype(np.float32)
    expected_distances, _ = _sklearn_kneighbors(queries, corpus, 5)
    distances, indices = cosine_kneighbors(queries, corpus, 5, query_chunk=8, corpus_chunk=33)
    assert distances.dtype == expected_distances.dtype == np.float32
    assert_allclose(distances, expected_distances, rtol=0, atol=1e-6)
    # Float32 rounding may swap neighbours closer than 1e-6; each returned neighbour must be
    # as near as the float64 truth says.
    truth = cosine_distances(queries.astype(np.float64), corpus.astype(np.float64))
    assert_allclose(np.take_along_axis(truth, indices, axis=1), distances, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("query_dtype", "corpus_dtype"), [("float32", "float64"), ("int64", "float32")]
)
def test_mixed_dtypes_follow_sklearn(query_dtype, corpus_dtype):
    rng = np.random.default_rng(2)
    queries = rng.integers(-5, 6, size=(4, 3)).astype(query_dtype)
    corpus = rng.normal(size=(9, 3)).astype(corpus_dtype)
    expected_distances, _ = _sklearn_kneighbors(queries, corpus, 3)
    distances, _ = cosine_kneighbors(queries, corpus, 3)
    assert distances.dtype == expected_distances.dtype


@pytest.mark.parametrize(("query_chunk", "corpus_chunk"), CHUNKS)
def test_ties_go_to_the_lower_index_for_any_chunking(query_chunk, corpus_chunk):
    rng = np.random.default_rng(3)
    corpus = _sign_vectors(rng, 101)  # only 16 distinct rows: every distance is tied
    queries = _sign_vectors(rng, 23)
    expected_distances, expected_indices = _stable_reference(queries, corpus, 20)
    distances, indices = cosine_kneighbors(
        queries, corpus, 20, query_chunk=query_chunk, corpus_chunk=corpus_chunk
    )
    assert_array_equal(indices, expected_indices)
    assert_array_equal(distances, expected_distances)


def test_ties_agree_with_sklearn_up_to_order_among_equals():
    rng = np.random.default_rng(4)
    corpus, queries = _sign_vectors(rng, 60), _sign_vectors(rng, 10)
    sk_distances, sk_indices = _sklearn_kneighbors(queries, corpus, 15)
    distances, indices = cosine_kneighbors(queries, corpus, 15, corpus_chunk=7)
    assert_array_equal(distances, sk_distances)
    # sklearn orders equal distances arbitrarily; strictly closer neighbours must coincide.
    for row in range(len(queries)):
        strictly_closer = distances[row] < distances[row, -1]
        assert set(indices[row, strictly_closer]) == set(sk_indices[row, strictly_closer])


def test_zero_query_is_at_distance_one_from_everything():
    rng = np.random.default_rng(5)
    corpus = rng.normal(size=(20, 4))
    queries = np.vstack([np.zeros(4), rng.normal(size=4)])
    sk_distances, _ = _sklearn_kneighbors(queries, corpus, 5)
    distances, indices = cosine_kneighbors(queries, corpus, 5, corpus_chunk=3)
    assert_array_equal(distances[0], np.ones(5))
    assert_array_equal(sk_distances[0], np.ones(5))
    assert_array_equal(indices[0], np.arange(5))


def test_zero_corpus_rows_are_at_distance_one():
    rng = np.random.default_rng(6)
    corpus = rng.normal(size=(12, 4))
    corpus[[2, 7]] = 0.0
    queries = rng.normal(size=(3, 4))
    sk_distances, _ = _sklearn_kneighbors(queries, corpus, 12)
    distances, indices = cosine_kneighbors(queries, corpus, 12, corpus_chunk=5)
    assert_allclose(distances, sk_distances, rtol=0, atol=1e-12)
    for row in range(3):
        zero_ranks = np.flatnonzero(np.isin(indices[row], [2, 7]))
        assert_array_equal(distances[row, zero_ranks], [1.0, 1.0])


def test_return_distance_false_returns_the_same_indices(random_data):
    queries, corpus = random_data
    _, indices = cosine_kneighbors(queries, corpus, 4, corpus_chunk=9)
    only_indices = cosine_kneighbors(queries, corpus, 4, corpus_chunk=9, return_distance=False)
    assert isinstance(only_indices, np.ndarray)
    assert_array_equal(only_indices, indices)


def test_prenormalized_corpus_can_skip_normalization(random_data):
    queries, corpus = random_data
    unit_corpus = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    expected_distances, expected_indices = _sklearn_kneighbors(queries, corpus, 6)
    distances, indices = cosine_kneighbors(
        queries, unit_corpus, 6, corpus_chunk=11, corpus_is_normalized=True
    )
    assert_array_equal(indices, expected_indices)
    assert_allclose(distances, expected_distances, rtol=0, atol=1e-12)


def test_memmap_corpus(tmp_path, random_data):
    queries, corpus = random_data
    mapped = np.memmap(tmp_path / "corpus.f64", dtype=np.float64, mode="w+", shape=corpus.shape)
    mapped[:] = corpus
    mapped.flush()
    expected_distances, expected_indices = _sklearn_kneighbors(queries, corpus, 3)
    distances, indices = cosine_kneighbors(queries, mapped, 3, corpus_chunk=20)
    assert_array_equal(indices, expected_indices)
    assert_allclose(distances, expected_distances, rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    n_docs=st.integers(1, 40),
    n_queries=st.integers(1, 8),
)
def test_property_matches_stable_full_sort(data, n_docs, n_queries):
    signs = st.sampled_from([-1.0, 1.0])
    corpus = data.draw(arrays(np.float64, (n_docs, 4), elements=signs))
    queries = data.draw(arrays(np.float64, (n_queries, 4), elements=signs))
    n_neighbors = data.draw(st.integers(1, n_docs))
    query_chunk = data.draw(st.integers(1, 10))
    corpus_chunk = data.draw(st.integers(1, 50))
    expected_distances, expected_indices = _stable_reference(queries, corpus, n_neighbors)
    distances, indices = cosine_kneighbors(
        queries, corpus, n_neighbors, query_chunk=query_chunk, corpus_chunk=corpus_chunk
    )
    assert_array_equal(indices, expected_indices)
    assert_array_equal(distances, expected_distances)


def _sklearn_error(queries, corpus, n_neighbors):
    with pytest.raises(ValueError) as error:
        _sklearn_kneighbors(queries, corpus, n_neighbors)
    return str(error.value)


@pytest.mark.parametrize("n_neighbors", [0, 4])
def test_bad_n_neighbors_raises_sklearns_message(n_neighbors):
    corpus, queries = np.eye(3), np.ones((1, 3))
    expected = _sklearn_error(queries, corpus, n_neighbors)
    with pytest.raises(ValueError) as error:
        cosine_kneighbors(queries, corpus, n_neighbors)
    assert str(error.value) == expected


@pytest.mark.parametrize("name", ["query_chunk", "corpus_chunk"])
def test_chunk_sizes_must_be_positive(name):
    with pytest.raises(ValueError, match=f"Expected {name} > 0"):
        cosine_kneighbors(np.ones((1, 2)), np.ones((2, 2)), 1, **{name: 0})


def test_feature_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match="queries has 3 features per row but corpus has 2"):
        cosine_kneighbors(np.ones((1, 3)), np.ones((2, 2)), 1)


def test_nan_is_rejected_naming_the_input():
    corpus = np.ones((3, 2))
    corpus[1, 0] = np.nan
    with pytest.raises(ValueError, match="corpus contains NaN"):
        cosine_kneighbors(np.ones((1, 2)), corpus, 1)


def test_memory_stays_bounded_by_the_chunks():
    rng = np.random.default_rng(7)
    corpus = rng.standard_normal((200_000, 16), dtype=np.float32)
    queries = rng.standard_normal((64, 16), dtype=np.float32)
    full_matrix_bytes = queries.shape[0] * corpus.shape[0] * 4  # 51.2 MB
    tracemalloc.start()
    try:
        cosine_kneighbors(queries, corpus, 5, query_chunk=32, corpus_chunk=2048)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Blocks of 32 x 2048 need well under 1 MB each; allow 10x slack, still 1/10 of the matrix.
    assert peak < full_matrix_bytes / 10


def test_a_few_queries_read_larger_corpus_blocks_within_the_same_memory_bound():
    # One query takes more corpus rows per block (up to 8 times corpus_chunk, so a block still
    # holds at most query_chunk x corpus_chunk distances), and finds what sklearn finds.
    rng = np.random.default_rng(8)
    corpus = rng.standard_normal((200_000, 16), dtype=np.float32)
    query = rng.standard_normal((1, 16), dtype=np.float32)
    tracemalloc.start()
    try:
        distances, indices = cosine_kneighbors(query, corpus, 5, query_chunk=32, corpus_chunk=2048)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 8 x 2048 rows of 16 floats and their distances: well under 10 MB, whatever the corpus.
    assert peak < 10 * 2**20
    expected = NearestNeighbors(n_neighbors=5, metric="cosine").fit(corpus).kneighbors(query)
    np.testing.assert_array_equal(indices, expected[1])
    np.testing.assert_allclose(distances, expected[0], atol=1e-5)
