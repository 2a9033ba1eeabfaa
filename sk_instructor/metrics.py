"""Ranking metrics for retrieval with binary relevance, and a scorer for model selection.

``retrieved`` is what ``kneighbors(..., return_distance=False)`` returns: one row per query with
document ids in rank order. ``relevant`` gives, per query, the id or the collection of ids that
count as relevant. Every metric is averaged over the queries.

:func:`make_retrieval_scorer` turns a metric into a scorer for ``GridSearchCV`` /
``cross_val_score``: it asks the fitted retriever for ``k`` neighbours of the held-out queries and
compares them with the held-out relevant ids.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["make_retrieval_scorer", "mrr_at_k", "ndcg_at_k", "recall_at_k"]

RelevantIds = Hashable | Collection[Hashable]


def _as_id_set(entry: Any, query: int) -> frozenset:
    """One query's relevant ids as a set: a lone id, or a set / list / tuple / array of ids."""
    if isinstance(entry, np.ndarray):
        ids = entry.ravel().tolist()
    elif isinstance(entry, np.generic):
        ids = [entry.item()]
    elif isinstance(entry, (str, bytes)) or not isinstance(entry, Iterable):
        ids = [entry]
    else:
        ids = list(entry)
    try:
        id_set = frozenset(ids)
    except TypeError:
        raise TypeError(
            f"relevant[{query}] must be an id or a flat collection of hashable ids, got {entry!r}."
        ) from None
    if not id_set:
        raise ValueError(
            f"relevant[{query}] is empty: every query needs at least one relevant id, or the "
            "metric is undefined for it."
        )
    return id_set


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}.")
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}.")
    return int(k)


def _hits(
    relevant: Sequence[RelevantIds] | ArrayLike, retrieved: ArrayLike, k: int
) -> tuple[np.ndarray, list[frozenset]]:
    """Binary relevance of the top ``k`` retrieved ids, shape (n_queries, k), and the id sets.

    An id retrieved twice in one row counts only at its first rank, so repeating a relevant
    document cannot raise a score.
    """
    k = _check_k(k)
    retrieved = np.asarray(retrieved)
    if retrieved.ndim != 2:
        raise ValueError(
            "retrieved must be 2-D, one row of ranked ids per query (as returned by "
            f"kneighbors(..., return_distance=False)); got an array of shape {retrieved.shape}."
        )
    n_queries, n_ranked = retrieved.shape
    if n_ranked < k:
        raise ValueError(
            f"retrieved has {n_ranked} ids per query, fewer than k={k}; retrieve at least k "
            "neighbours per query."
        )
    if len(relevant) != n_queries:
        raise ValueError(
            f"relevant has {len(relevant)} entries but retrieved has {n_queries} rows; they "
            "must describe the same queries, in the same order."
        )
    relevant_sets = [_as_id_set(entry, query) for query, entry in enumerate(relevant)]
    hits = np.zeros((n_queries, k), dtype=bool)
    for query, (row, ids) in enumerate(zip(retrieved[:, :k].tolist(), relevant_sets, strict=True)):
        seen = set()
        for rank, doc_id in enumerate(row):
            hits[query, rank] = doc_id in ids and doc_id not in seen
            seen.add(doc_id)
    return hits, relevant_sets


def recall_at_k(
    relevant: Sequence[RelevantIds] | ArrayLike, retrieved: ArrayLike, k: int = 10
) -> float:
    """Mean fraction of each query's relevant ids found among its top ``k`` retrieved ids.

    Parameters
    ----------
    relevant : sequence of length n_queries
        Per query, one relevant id or a collection (set, list, tuple, array) of relevant ids.
    retrieved : array-like of shape (n_queries, n_ranked)
        Retrieved ids in rank order, ``n_ranked >= k``.
    k : int, default=10
        Cut-off rank.

    Returns
    -------
    recall : float
        ``mean over queries of |relevant ∩ top k| / |relevant|``.

    Raises
    ------
    ValueError
        If ``k < 1``, if ``retrieved`` is not 2-D or has fewer than ``k`` columns, if the
        number of queries differ, or if a query has no relevant id.

    Examples
    --------
    >>> from sk_instructor.metrics import recall_at_k
    >>> recall_at_k([{0, 3}, 5], [[3, 1, 2], [4, 6, 7]], k=3)
    0.25
    """
    hits, relevant_sets = _hits(relevant, retrieved, k)
    sizes = np.array([len(ids) for ids in relevant_sets], dtype=float)
    return float(np.mean(hits.sum(axis=1) / sizes))


def mrr_at_k(
    relevant: Sequence[RelevantIds] | ArrayLike, retrieved: ArrayLike, k: int = 10
) -> float:
    """Mean reciprocal rank of the first relevant id within the top ``k`` (0 when none).

    Parameters
    ----------
    relevant : sequence of length n_queries
        Per query, one relevant id or a collection (set, list, tuple, array) of relevant ids.
    retrieved : array-like of shape (n_queries, n_ranked)
        Retrieved ids in rank order, ``n_ranked >= k``.
    k : int, default=10
        Cut-off rank.

    Returns
    -------
    mrr : float
        ``mean over queries of 1 / rank of the first relevant id`` (ranks start at 1).

    Raises
    ------
    ValueError
        If ``k < 1``, if ``retrieved`` is not 2-D or has fewer than ``k`` columns, if the
        number of queries differ, or if a query has no relevant id.

    Examples
    --------
    >>> from sk_instructor.metrics import mrr_at_k
    >>> mrr_at_k([7, 7], [[7, 1, 2], [0, 1, 7]], k=3)  # (1/1 + 1/3) / 2
    0.6666666666666666
    """
    hits, _ = _hits(relevant, retrieved, k)
    found = hits.any(axis=1)
    first_rank = hits.argmax(axis=1) + 1
    return float(np.mean(np.where(found, 1.0 / first_rank, 0.0)))


def ndcg_at_k(
    relevant: Sequence[RelevantIds] | ArrayLike, retrieved: ArrayLike, k: int = 10
) -> float:
    """Mean normalized discounted cumulative gain at ``k`` with binary relevance.

    ``DCG@k = sum over ranks r <= k of rel_r / log2(r + 1)``, divided by the DCG of the ideal
    ranking, which puts ``min(|relevant|, k)`` relevant ids first.

    Parameters
    ----------
    relevant : sequence of length n_queries
        Per query, one relevant id or a collection (set, list, tuple, array) of relevant ids.
    retrieved : array-like of shape (n_queries, n_ranked)
        Retrieved ids in rank order, ``n_ranked >= k``.
    k : int, default=10
        Cut-off rank.

    Returns
    -------
    ndcg : float
        Mean over queries, in [0, 1].

    Raises
    ------
    ValueError
        If ``k < 1``, if ``retrieved`` is not 2-D or has fewer than ``k`` columns, if the
        number of queries differ, or if a query has no relevant id.

    Examples
    --------
    >>> from sk_instructor.metrics import ndcg_at_k
    >>> round(ndcg_at_k([{1, 2}], [[0, 1, 2]], k=3), 4)  # (1/log2(3) + 1/2) / (1 + 1/log2(3))
    0.6934
    """
    hits, relevant_sets = _hits(relevant, retrieved, k)
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    dcg = hits @ discounts
    ideal_counts = np.array([min(len(ids), hits.shape[1]) for ids in relevant_sets])
    ideal_dcg = np.cumsum(discounts)[ideal_counts - 1]
    return float(np.mean(dcg / ideal_dcg))


_METRICS: dict[str, Callable[..., float]] = {
    "recall": recall_at_k,
    "mrr": mrr_at_k,
    "ndcg": ndcg_at_k,
}


class _RetrievalScorer:
    """Callable ``scorer(estimator, X_queries, y_relevant)``; a class so that it pickles."""

    def __init__(self, metric: str, k: int) -> None:
        self.metric = metric
        self.k = k

    def __call__(
        self, estimator: Any, X_queries: Any, y_relevant: Sequence[RelevantIds] | ArrayLike
    ) -> float:
        retrieved = estimator.kneighbors(X_queries, n_neighbors=self.k, return_distance=False)
        return _METRICS[self.metric](y_relevant, retrieved, k=self.k)

    def __repr__(self) -> str:
        return f"make_retrieval_scorer(metric={self.metric!r}, k={self.k})"


def make_retrieval_scorer(
    metric: str = "mrr", k: int = 10
) -> Callable[[Any, Any, Sequence[RelevantIds] | ArrayLike], float]:
    """Make a scorer that rates a fitted retriever by a ranking metric at ``k``.

    The scorer calls ``estimator.kneighbors(X_queries, n_neighbors=k, return_distance=False)``
    and returns the metric of those ids against ``y_relevant``; higher is better, as
    ``GridSearchCV`` expects. Pass it as ``scoring=``.

    Parameters
    ----------
    metric : {"mrr", "recall", "ndcg"}, default="mrr"
        :func:`mrr_at_k`, :func:`recall_at_k` or :func:`ndcg_at_k`.
    k : int, default=10
        Cut-off rank, also the number of neighbours requested.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X_queries, y_relevant) -> float``.

    Raises
    ------
    ValueError
        If ``metric`` is unknown or ``k < 1``.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_instructor.metrics import make_retrieval_scorer
    >>> class FixedRetriever:
    ...     def kneighbors(self, X, n_neighbors=None, return_distance=True):
    ...         return np.array([[2, 0, 1], [1, 2, 0]])[:, :n_neighbors]
    >>> scorer = make_retrieval_scorer("mrr", k=2)
    >>> scorer(FixedRetriever(), ["query a", "query b"], [0, 0])  # (1/2 + 0) / 2
    0.25
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}.")
    return _RetrievalScorer(metric, _check_k(k))
