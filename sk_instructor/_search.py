"""Exact cosine nearest-neighbour search over a large corpus in bounded memory.

:func:`cosine_kneighbors` returns what
``NearestNeighbors(metric="cosine", algorithm="brute").fit(corpus).kneighbors(queries)`` returns,
without ever holding the ``n_queries x n_docs`` distance matrix: the corpus is read in blocks
of rows, each block of at most ``query_chunk x corpus_chunk`` distances is reduced to its best
``n_neighbors`` with :func:`numpy.argpartition`, and a running top-k per query is merged block
after block. (``query_chunk`` and ``corpus_chunk`` are the retriever's parameter names.)

Measured against scikit-learn on 1M x 384 float32 unit rows in a memmap
(``benchmarks/search_vs_sklearn.py``): the same neighbours; 17.7-18.0 s against 20.9-27.8 s for
1,000 queries, and 96 MiB of extra memory against 1.98 GiB (scikit-learn's cosine routes
normalize a copy of the whole corpus for every batch of queries). Kept for that, and for what
scikit-learn lacks: the grouped search of long-text windows and ties broken by index.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.preprocessing import normalize
from sklearn.utils import check_array

__all__ = ["cosine_kneighbors", "grouped_cosine_kneighbors"]

# An index larger than any real one, so that the "no candidate yet" slots sort last on ties.
_NO_INDEX = np.iinfo(np.intp).max


def _validate_inputs(
    queries: ArrayLike, corpus: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    """Check both matrices and pick the dtype the distances are computed in.

    Like ``sklearn.metrics.pairwise.check_pairwise_arrays``: float32 only when both inputs are
    float32, float64 otherwise. The cast itself happens block by block, so a float32 corpus is
    never copied whole into float64.
    """
    queries = check_array(queries, dtype=[np.float64, np.float32], input_name="queries")
    corpus = check_array(corpus, dtype=[np.float64, np.float32], input_name="corpus")
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"queries has {queries.shape[1]} features per row but corpus has "
            f"{corpus.shape[1]}; both must be embeddings of the same dimension."
        )
    both_float32 = queries.dtype == np.float32 and corpus.dtype == np.float32
    dtype = np.dtype(np.float32 if both_float32 else np.float64)
    return queries, corpus, dtype


def _check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"Expected {name} > 0. Got {value}")
    return int(value)


def _blocks(n_rows: int, block_rows: int) -> Iterator[slice]:
    for start in range(0, n_rows, block_rows):
        yield slice(start, min(start + block_rows, n_rows))


# At most this many times corpus_chunk rows per block, however few the queries: a block's rows
# are copied when they are normalized or cast, so its size in bytes grows with them.
_MAX_BLOCK_GROWTH = 8


def _corpus_block_rows(n_queries: int, query_chunk: int, corpus_chunk: int) -> int:
    """Corpus rows per block. Fewer queries than ``query_chunk`` take more corpus rows per
    block (up to 8 times more), within the same ``query_chunk x corpus_chunk`` distances: one
    query against 8,192 rows at a time spent its time in 123 small matrix products over 1M
    rows (0.42 s against 1.71 s with 65,536, measured by benchmarks/search_vs_sklearn.py)."""
    growth = min(_MAX_BLOCK_GROWTH, max(1, query_chunk // max(n_queries, 1)))
    return corpus_chunk * growth


def _unit_rows(rows: np.ndarray, dtype: np.dtype, already_normalized: bool) -> np.ndarray:
    """L2-normalize rows exactly as sklearn's ``cosine_similarity`` does.

    Calling sklearn's own ``normalize`` keeps the results bit-identical to sklearn's, including
    its convention for zero rows (left at zero, so their cosine similarity with anything is 0 and
    their cosine distance 1).
    """
    rows = rows.astype(dtype, copy=False)
    if already_normalized:
        return rows
    return normalize(rows, norm="l2", copy=True)


def _block_distances(query_rows: np.ndarray, corpus_rows: np.ndarray) -> np.ndarray:
    """Cosine distances ``1 - q @ c.T`` between unit rows, clipped to [0, 2] like sklearn."""
    distances = query_rows @ corpus_rows.T
    np.negative(distances, out=distances)
    distances += 1
    np.clip(distances, 0.0, 2.0, out=distances)
    return distances


def _block_top_k(distances: np.ndarray, k: int) -> np.ndarray:
    """Column positions of the ``k`` smallest distances per row, lower position first on ties.

    ``argpartition`` picks an arbitrary subset among values equal to the k-th smallest; the rows
    where that matters (more than ``k`` values at or below it) are redone so that the lowest
    positions among the tied values win.
    """
    n_rows, n_cols = distances.shape
    if k >= n_cols:
        return np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
    partition = np.argpartition(distances, k - 1, axis=1)
    top = partition[:, :k]
    kth_value = np.take_along_axis(distances, partition[:, k - 1 : k], axis=1)
    n_at_or_below = np.count_nonzero(distances <= kth_value, axis=1)
    for row in np.flatnonzero(n_at_or_below > k):
        below = np.flatnonzero(distances[row] < kth_value[row, 0])
        tied = np.flatnonzero(distances[row] == kth_value[row, 0])
        top[row] = np.concatenate([below, tied[: k - below.size]])
    return top


def _merge_top_k(
    best_distances: np.ndarray,
    best_indices: np.ndarray,
    new_distances: np.ndarray,
    new_indices: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``k`` best of two candidate sets per row, sorted by (distance, index)."""
    distances = np.concatenate([best_distances, new_distances], axis=1)
    indices = np.concatenate([best_indices, new_indices], axis=1)
    # lexsort sorts by the last key first: distance, then the lower corpus index on ties.
    order = np.lexsort((indices, distances), axis=1)[:, :k]
    return (
        np.take_along_axis(distances, order, axis=1),
        np.take_along_axis(indices, order, axis=1),
    )


def cosine_kneighbors(
    queries: ArrayLike,
    corpus: ArrayLike,
    n_neighbors: int,
    *,
    query_chunk: int = 512,
    corpus_chunk: int = 8192,
    corpus_is_normalized: bool = False,
    return_distance: bool = True,
) -> tuple[NDArray[np.floating], NDArray[np.intp]] | NDArray[np.intp]:
    """Exact cosine k-nearest neighbours of ``queries`` in ``corpus``, block by block.

    Returns the same arrays as
    ``NearestNeighbors(metric="cosine", algorithm="brute").fit(corpus).kneighbors(queries,
    n_neighbors)``: cosine distances (``1 - cosine similarity``, clipped to [0, 2]) in
    increasing order and the corpus row of each. Memory beyond the inputs and the outputs is
    ``O(query_chunk x corpus_chunk)`` (one block of distances and its ``argpartition``), never
    ``n_queries x n_docs``.

    Parameters
    ----------
    queries : array-like of shape (n_queries, n_features)
        Query embeddings. Sparse input is not supported.
    corpus : array-like of shape (n_docs, n_features)
        Corpus embeddings; may be a :class:`numpy.memmap`, which is then read block by block.
    n_neighbors : int
        Number of neighbours per query, ``1 <= n_neighbors <= n_docs``.
    query_chunk : int, default=512
        Queries per block.
    corpus_chunk : int, default=8192
        Corpus rows per block. A float32 block of the defaults takes 16 MiB.
    corpus_is_normalized : bool, default=False
        Trust that the corpus rows already have unit L2 norm (or are zero) and skip normalizing
        them; queries are always normalized. Distances then match sklearn's to rounding only.
    return_distance : bool, default=True
        Whether to return the distances along with the indices.

    Returns
    -------
    distances : ndarray of shape (n_queries, n_neighbors)
        Cosine distances, increasing along each row. Only returned if ``return_distance``. The
        dtype follows sklearn: float32 when both inputs are float32, float64 otherwise.
    indices : ndarray of shape (n_queries, n_neighbors), dtype intp
        Corpus rows of the neighbours.

    Raises
    ------
    ValueError
        If ``n_neighbors`` is below 1 or above ``n_docs`` (sklearn's messages), if the inputs
        differ in their number of features, or contain NaN or infinity.

    Notes
    -----
    Ties are broken by the lower corpus index, whatever the block sizes. sklearn's brute-force
    search makes no such promise: it orders each row with ``argpartition`` and a non-stable
    ``argsort``, so among exactly equal distances its order is arbitrary. Distances and untied
    indices agree with sklearn's. A zero vector, query or corpus row, has cosine distance 1 to
    everything, as in sklearn.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_instructor._search import cosine_kneighbors
    >>> corpus = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    >>> distances, indices = cosine_kneighbors([[2.0, 0.1]], corpus, 2, corpus_chunk=3)
    >>> indices
    array([[0, 2]])
    >>> distances.round(3)
    array([[0.001, 0.258]])
    """
    queries, corpus, dtype = _validate_inputs(queries, corpus)
    n_neighbors = _check_positive_int(n_neighbors, "n_neighbors")
    query_chunk = _check_positive_int(query_chunk, "query_chunk")
    corpus_chunk = _check_positive_int(corpus_chunk, "corpus_chunk")
    n_queries, n_docs = queries.shape[0], corpus.shape[0]
    if n_neighbors > n_docs:
        raise ValueError(
            "Expected n_neighbors <= n_samples_fit, but n_neighbors = "
            f"{n_neighbors}, n_samples_fit = {n_docs}, n_samples = {n_queries}"
        )

    best_distances = np.full((n_queries, n_neighbors), np.inf, dtype=dtype)
    best_indices = np.full((n_queries, n_neighbors), _NO_INDEX, dtype=np.intp)
    # Corpus blocks outside, queries inside: each corpus row is read (from disk, for a memmap)
    # and normalized once; re-normalizing a block of queries per corpus block costs
    # 1/corpus_block of the matrix product.
    corpus_block = _corpus_block_rows(n_queries, query_chunk, corpus_chunk)
    for corpus_rows in _blocks(n_docs, corpus_block):
        unit_corpus = _unit_rows(corpus[corpus_rows], dtype, corpus_is_normalized)
        for query_rows in _blocks(n_queries, query_chunk):
            unit_queries = _unit_rows(queries[query_rows], dtype, already_normalized=False)
            distances = _block_distances(unit_queries, unit_corpus)
            top = _block_top_k(distances, n_neighbors)
            best_distances[query_rows], best_indices[query_rows] = _merge_top_k(
                best_distances[query_rows],
                best_indices[query_rows],
                np.take_along_axis(distances, top, axis=1),
                top + corpus_rows.start,
                n_neighbors,
            )
    if return_distance:
        return best_distances, best_indices
    return best_indices


def grouped_cosine_kneighbors(
    queries: ArrayLike,
    corpus: ArrayLike,
    groups: ArrayLike,
    n_neighbors: int,
    *,
    query_chunk: int = 512,
    corpus_chunk: int = 8192,
    corpus_is_normalized: bool = False,
    return_distance: bool = True,
) -> tuple[NDArray[np.floating], NDArray[np.intp]] | NDArray[np.intp]:
    """Exact k nearest *groups* of corpus rows, a group being as near as its nearest row.

    The search of a corpus of documents cut into windows: row ``i`` of ``corpus`` is a window
    of document ``groups[i]``, and a document's cosine distance to a query is the smallest
    distance of its windows (its best window: max over windows of the cosine similarity). Each
    document appears at most once per query. With one row per group this is
    :func:`cosine_kneighbors`, to the bit.

    Parameters
    ----------
    queries : array-like of shape (n_queries, n_features)
        Query embeddings.
    corpus : array-like of shape (n_rows, n_features)
        Row embeddings (windows), grouped: the rows of a group are consecutive.
    groups : array-like of int, shape (n_rows,)
        The group of each row: non-decreasing from 0, every group ``0 .. n_groups - 1`` with at
        least one row.
    n_neighbors : int
        Groups per query, ``1 <= n_neighbors <= n_groups``.
    query_chunk : int, default=512
        Queries per block.
    corpus_chunk : int, default=8192
        Corpus rows per block. Blocks end at group boundaries; a group larger than this is
        read in blocks of this size on its own.
    corpus_is_normalized : bool, default=False
        Trust that the corpus rows have unit L2 norm (or are zero).
    return_distance : bool, default=True
        Whether to return the distances along with the indices.

    Returns
    -------
    distances : ndarray of shape (n_queries, n_neighbors)
        Each group's smallest cosine distance, increasing along each row; float32 when both
        inputs are float32. Only returned if ``return_distance``.
    indices : ndarray of shape (n_queries, n_neighbors), dtype intp
        The groups. Exactly equal distances go to the lower group.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_instructor._search import grouped_cosine_kneighbors
    >>> corpus = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    >>> distances, indices = grouped_cosine_kneighbors([[0.0, 2.0]], corpus, [0, 0, 1, 2], 2)
    >>> indices
    array([[0, 1]])
    >>> distances.round(3)
    array([[0. , 0.2]])
    """
    queries, corpus, dtype = _validate_inputs(queries, corpus)
    n_neighbors = _check_positive_int(n_neighbors, "n_neighbors")
    query_chunk = _check_positive_int(query_chunk, "query_chunk")
    corpus_chunk = _check_positive_int(corpus_chunk, "corpus_chunk")
    bounds = _group_bounds(groups, corpus.shape[0])
    n_queries, n_groups = queries.shape[0], len(bounds) - 1
    if n_neighbors > n_groups:
        raise ValueError(
            "Expected n_neighbors <= n_samples_fit, but n_neighbors = "
            f"{n_neighbors}, n_samples_fit = {n_groups}, n_samples = {n_queries}"
        )

    best_distances = np.full((n_queries, n_neighbors), np.inf, dtype=dtype)
    best_indices = np.full((n_queries, n_neighbors), _NO_INDEX, dtype=np.intp)

    def merge(query_rows: slice, distances: np.ndarray, first_group: int) -> None:
        top = _block_top_k(distances, n_neighbors)
        best_distances[query_rows], best_indices[query_rows] = _merge_top_k(
            best_distances[query_rows],
            best_indices[query_rows],
            np.take_along_axis(distances, top, axis=1),
            top + first_group,
            n_neighbors,
        )

    for first, last in _group_blocks(bounds, corpus_chunk):
        start, stop = int(bounds[first]), int(bounds[last])
        if stop - start <= corpus_chunk:
            unit_corpus = _unit_rows(corpus[start:stop], dtype, corpus_is_normalized)
            local = bounds[first:last] - start
            for query_rows in _blocks(n_queries, query_chunk):
                unit_queries = _unit_rows(queries[query_rows], dtype, already_normalized=False)
                distances = _block_distances(unit_queries, unit_corpus)
                merge(query_rows, np.minimum.reduceat(distances, local, axis=1), first)
            continue
        # One group larger than a block: its nearest row, block after block.
        nearest = np.full((n_queries, 1), np.inf, dtype=dtype)
        for rows in _blocks(stop - start, corpus_chunk):
            unit_corpus = _unit_rows(
                corpus[start + rows.start : start + rows.stop], dtype, corpus_is_normalized
            )
            for query_rows in _blocks(n_queries, query_chunk):
                unit_queries = _unit_rows(queries[query_rows], dtype, already_normalized=False)
                distances = _block_distances(unit_queries, unit_corpus)
                np.minimum(
                    nearest[query_rows],
                    distances.min(axis=1, keepdims=True),
                    out=nearest[query_rows],
                )
        for query_rows in _blocks(n_queries, query_chunk):
            merge(query_rows, nearest[query_rows], first)
    if return_distance:
        return best_distances, best_indices
    return best_indices


def _group_bounds(groups: ArrayLike, n_rows: int) -> np.ndarray:
    """Row where each group starts, plus ``n_rows`` at the end; checks the grouping."""
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != n_rows:
        raise ValueError(
            f"groups must give one group per corpus row: {n_rows} rows, groups of shape "
            f"{groups.shape}."
        )
    if n_rows == 0 or not np.issubdtype(groups.dtype, np.integer):
        raise ValueError("groups must be a non-empty array of integers.")
    steps = np.diff(groups)
    if groups[0] != 0 or ((steps != 0) & (steps != 1)).any():
        raise ValueError(
            "groups must be non-decreasing from 0 with no group left out (0, 0, 1, 2, 2, ...)."
        )
    return np.append(np.flatnonzero(np.r_[True, steps != 0]), n_rows)


def _group_blocks(bounds: np.ndarray, corpus_chunk: int) -> Iterator[tuple[int, int]]:
    """Consecutive groups ``[first, last)`` of at most ``corpus_chunk`` rows in all, or one
    group alone when it is larger."""
    n_groups = len(bounds) - 1
    first = 0
    while first < n_groups:
        last = int(np.searchsorted(bounds, bounds[first] + corpus_chunk, side="right")) - 1
        last = min(max(last, first + 1), n_groups)
        yield first, last
        first = last
