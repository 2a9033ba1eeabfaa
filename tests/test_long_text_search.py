"""grouped_cosine_kneighbors: a document is as near as its nearest chunk, against brute force.

The reference is the plain definition computed whole in float64: the full matrix of cosine
similarities, the maximum over each document's chunks, and a stable sort by (distance, index).
"""

from __future__ import annotations

import numpy as np
import pytest

from sk_instructor._search import cosine_kneighbors, grouped_cosine_kneighbors


def _brute_force(queries, corpus, groups, k):
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    norms = np.linalg.norm(corpus, axis=1, keepdims=True)
    unit_c = np.divide(corpus, norms, out=np.zeros_like(corpus), where=norms > 0)
    similarity = unit_q @ unit_c.T
    n_groups = groups.max() + 1
    best = np.full((len(queries), n_groups), -np.inf)
    for row, group in enumerate(groups):
        best[:, group] = np.maximum(best[:, group], similarity[:, row])
    distances = np.clip(1 - best, 0, 2)
    order = np.array([np.lexsort((np.arange(n_groups), row))[:k] for row in distances])
    return np.take_along_axis(distances, order, axis=1), order


def _random_groups(rng, n_groups, max_rows):
    sizes = rng.integers(1, max_rows + 1, size=n_groups)
    return np.repeat(np.arange(n_groups), sizes)


@pytest.mark.parametrize(
    ("corpus_chunk", "query_chunk"), [(8192, 512), (7, 3), (1, 1), (30, 2)], ids=str
)
def test_grouped_search_equals_brute_force_max_over_chunks(corpus_chunk, query_chunk):
    rng = np.random.default_rng(0)
    groups = _random_groups(rng, 40, 6)
    groups = np.concatenate([groups, np.full(25, 40)])  # a group larger than some blocks
    corpus = rng.normal(size=(len(groups), 8))
    queries = rng.normal(size=(13, 8))

    distances, indices = grouped_cosine_kneighbors(
        queries, corpus, groups, 7, corpus_chunk=corpus_chunk, query_chunk=query_chunk
    )

    expected_distances, expected_indices = _brute_force(queries, corpus, groups, 7)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=0, atol=1e-12)
    assert all(len(set(row)) == len(row) for row in indices)  # each document at most once


def test_one_row_per_group_is_cosine_kneighbors_to_the_bit():
    rng = np.random.default_rng(1)
    corpus = rng.normal(size=(50, 6)).astype(np.float32)
    queries = rng.normal(size=(9, 6)).astype(np.float32)

    grouped = grouped_cosine_kneighbors(queries, corpus, np.arange(50), 10, corpus_chunk=8)
    plain = cosine_kneighbors(queries, corpus, 10, corpus_chunk=8)

    for got, expected in zip(grouped, plain, strict=True):
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == expected.dtype


def test_equal_distances_go_to_the_lower_document_whatever_the_blocks():
    # Every document holds the same chunk: all distances tie.
    corpus = np.tile([[1.0, 2.0]], (12, 1))
    groups = np.repeat(np.arange(6), 2)
    for corpus_chunk in (1, 3, 5, 100):
        indices = grouped_cosine_kneighbors(
            [[1.0, 0.0]], corpus, groups, 4, corpus_chunk=corpus_chunk, return_distance=False
        )
        np.testing.assert_array_equal(indices, [[0, 1, 2, 3]])


def test_zero_chunks_are_at_distance_one_as_in_sklearn():
    corpus = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    distances, indices = grouped_cosine_kneighbors([[0.0, 1.0]], corpus, [0, 1, 2], 3)
    np.testing.assert_allclose(distances, [[1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(indices, [[0, 1, 2]])


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([0, 0, 2], "non-decreasing from 0 with no group left out"),
        ([1, 1, 2], "non-decreasing from 0"),
        ([0, 1, 0], "non-decreasing"),
        ([0, 1], "one group per corpus row: 3 rows"),
        ([0.0, 1.0, 1.0], "integers"),
    ],
)
def test_a_bad_grouping_is_refused_saying_what_is_wrong(groups, message):
    with pytest.raises(ValueError, match=message):
        grouped_cosine_kneighbors([[1.0, 0.0]], np.eye(3, 2), groups, 1)


def test_more_neighbours_than_documents_is_refused_in_sklearn_words():
    with pytest.raises(ValueError, match="n_neighbors = 3, n_samples_fit = 2"):
        grouped_cosine_kneighbors([[1.0, 0.0]], np.eye(3, 2), [0, 0, 1], 3)
