"""Ranking metrics against hand-computed values, and the retrieval scorer in GridSearchCV."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from sklearn.base import BaseEstimator
from sklearn.metrics import ndcg_score
from sklearn.model_selection import GridSearchCV, KFold

from sk_instructor.metrics import make_retrieval_scorer, mrr_at_k, ndcg_at_k, recall_at_k

METRICS = [recall_at_k, mrr_at_k, ndcg_at_k]


# ------------------------------------------------------------------------------------------
# recall@k
# ------------------------------------------------------------------------------------------


def test_recall_with_several_relevant_ids():
    # 2 of the 3 relevant ids (3 and 1) are in the top 4.
    assert recall_at_k([{1, 2, 3}], [[3, 9, 1, 8]], k=4) == pytest.approx(2 / 3)


def test_recall_counts_only_the_top_k():
    assert recall_at_k([{1, 2, 3}], [[3, 9, 1, 8]], k=1) == pytest.approx(1 / 3)


def test_recall_is_averaged_over_queries():
    # query 0 finds 1 of 2, query 1 finds its only id: (1/2 + 1) / 2.
    assert recall_at_k([[4, 5], 7], [[4, 0, 1], [2, 7, 3]], k=3) == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------
# MRR@k
# ------------------------------------------------------------------------------------------


def test_mrr_found_at_rank_one():
    assert mrr_at_k([5], [[5, 1, 2]], k=3) == 1.0


def test_mrr_found_at_rank_three():
    assert mrr_at_k([5], [[0, 1, 5]], k=3) == pytest.approx(1 / 3)


def test_mrr_uses_the_first_of_several_relevant_ids():
    assert mrr_at_k([{5, 7}], [[0, 7, 5]], k=3) == pytest.approx(1 / 2)


def test_mrr_ignores_a_hit_beyond_k():
    assert mrr_at_k([7], [[0, 1, 2, 7]], k=3) == 0.0


def test_mrr_is_averaged_over_queries():
    assert mrr_at_k([5, 5], [[5, 1, 2], [0, 1, 5]], k=3) == pytest.approx((1 + 1 / 3) / 2)


# ------------------------------------------------------------------------------------------
# nDCG@k
# ------------------------------------------------------------------------------------------


def test_ndcg_with_two_relevant_documents_by_hand():
    # Relevant at ranks 2 and 4: DCG = 1/log2(3) + 1/log2(5).
    # Ideal: both at ranks 1 and 2: IDCG = 1/log2(2) + 1/log2(3).
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k([{"a", "b"}], [["x", "a", "y", "b"]], k=4) == pytest.approx(dcg / idcg)


def test_ndcg_ideal_ranking_is_capped_at_k():
    # 3 relevant ids but k=2: the ideal ranking holds only 2, and ranks 1-2 are both relevant.
    assert ndcg_at_k([{0, 1, 2}], [[0, 1, 5]], k=2) == pytest.approx(1.0)


def test_ndcg_perfect_ranking_is_one():
    assert ndcg_at_k([[2, 0]], [[0, 2, 1]], k=3) == pytest.approx(1.0)


def test_ndcg_matches_sklearn_ndcg_score_on_random_rankings():
    rng = np.random.default_rng(0)
    n_queries, n_docs, k = 25, 30, 7
    rankings = np.array([rng.permutation(n_docs) for _ in range(n_queries)])
    relevance = rng.random((n_queries, n_docs)) < 0.2
    relevance[:, 0] = True  # every query has at least one relevant document
    # sklearn scores documents; a document's score is how early our ranking puts it.
    scores = np.empty((n_queries, n_docs))
    np.put_along_axis(scores, rankings, np.arange(n_docs, 0, -1), axis=1)
    relevant = [np.flatnonzero(row) for row in relevance]
    expected = ndcg_score(relevance.astype(float), scores, k=k)
    assert ndcg_at_k(relevant, rankings, k=k) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------
# Shared behaviour
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_nothing_found_scores_zero(metric):
    assert metric([{8, 9}, 7], [[0, 1, 2], [3, 4, 5]], k=3) == 0.0


@pytest.mark.parametrize(
    "relevant",
    [3, np.int64(3), [3], (3,), {3}, frozenset({3}), np.array([3]), np.array(3)],
    ids=["int", "np.int64", "list", "tuple", "set", "frozenset", "array", "0-d array"],
)
def test_relevant_may_be_an_id_or_any_collection(relevant):
    assert mrr_at_k([relevant], np.array([[1, 3, 2]]), k=3) == pytest.approx(1 / 2)


def test_relevant_as_2d_array_gives_each_query_several_ids():
    assert recall_at_k(np.array([[0, 1], [2, 3]]), [[0, 9], [9, 9]], k=2) == pytest.approx(0.25)


def test_string_ids_are_single_ids_not_collections_of_characters():
    assert recall_at_k(["doc-1"], [["doc-1", "doc-2"]], k=2) == 1.0


def test_an_id_retrieved_twice_counts_once():
    # relevant {3, 4}, top-2 is [3, 3]: one relevant document found, at rank 1 only.
    assert recall_at_k([{3, 4}], [[3, 3]], k=2) == pytest.approx(1 / 2)
    assert ndcg_at_k([{3, 4}], [[3, 3]], k=2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


@pytest.mark.parametrize("metric", METRICS)
def test_length_mismatch_names_both_sizes(metric):
    with pytest.raises(ValueError, match="relevant has 2 entries but retrieved has 3 rows"):
        metric([1, 2], [[1], [2], [3]], k=1)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_is_rejected(metric, k):
    with pytest.raises(ValueError, match=f"k must be >= 1, got k={k}"):
        metric([1], [[1]], k=k)


@pytest.mark.parametrize("metric", METRICS)
def test_fewer_retrieved_than_k_is_rejected(metric):
    with pytest.raises(ValueError, match="retrieved has 2 ids per query, fewer than k=3"):
        metric([1], [[1, 2]], k=3)


def test_one_dimensional_retrieved_is_rejected():
    with pytest.raises(ValueError, match="retrieved must be 2-D"):
        recall_at_k([1, 2], [1, 2], k=1)


def test_empty_relevant_set_names_the_query():
    with pytest.raises(ValueError, match=r"relevant\[1\] is empty"):
        recall_at_k([{1}, set()], [[1], [2]], k=1)


def test_unhashable_relevant_ids_name_the_query():
    with pytest.raises(TypeError, match=r"relevant\[0\]"):
        recall_at_k([[[1, 2]]], [[1]], k=1)


# ------------------------------------------------------------------------------------------
# make_retrieval_scorer
# ------------------------------------------------------------------------------------------


class _FixedRetriever:
    """Returns a fixed ranking and records how it was called."""

    def __init__(self, ranking):
        self.ranking = np.asarray(ranking)
        self.calls = []

    def kneighbors(self, X, n_neighbors=None, return_distance=True):
        self.calls.append((list(X), n_neighbors, return_distance))
        return self.ranking[:, :n_neighbors]


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        # query 0: relevant 2 at rank 2; query 1: relevant {0, 1} at ranks 3 and 1.
        ("mrr", (1 / 2 + 1) / 2),
        ("recall", (1 + 2 / 2) / 2),
        (
            "ndcg",
            ((1 / math.log2(3)) / 1 + (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))) / 2,
        ),
    ],
)
def test_scorer_computes_metric_from_kneighbors(metric, expected):
    retriever = _FixedRetriever([[0, 2, 1, 3], [1, 3, 0, 2]])
    scorer = make_retrieval_scorer(metric, k=3)
    score = scorer(retriever, ["q0", "q1"], [2, {0, 1}])
    assert score == pytest.approx(expected)
    assert retriever.calls == [(["q0", "q1"], 3, False)]


def test_scorer_unknown_metric_lists_the_choices():
    with pytest.raises(ValueError, match=r"\['mrr', 'ndcg', 'recall'\].*'map'"):
        make_retrieval_scorer("map")


def test_scorer_rejects_k_below_one():
    with pytest.raises(ValueError, match="k must be >= 1"):
        make_retrieval_scorer("mrr", k=0)


def test_scorer_pickles_and_has_a_readable_repr():
    scorer = make_retrieval_scorer("ndcg", k=5)
    assert repr(pickle.loads(pickle.dumps(scorer))) == "make_retrieval_scorer(metric='ndcg', k=5)"


class _ShiftRetriever(BaseEstimator):
    """Toy retriever: query q ranks documents q + shift, q + shift + 1, ... (mod n_docs)."""

    def __init__(self, shift=0, n_docs=10):
        self.shift = shift
        self.n_docs = n_docs

    def fit(self, X, y=None):
        self.n_docs_ = self.n_docs
        return self

    def kneighbors(self, X, n_neighbors=None, return_distance=True):
        queries = np.asarray(X).ravel()
        ranking = (queries[:, None] + self.shift + np.arange(n_neighbors)) % self.n_docs_
        if return_distance:
            return np.zeros(ranking.shape), ranking
        return ranking


def test_scorer_drives_grid_search_with_the_standard_api():
    # Query i's relevant document is i. shift=0 puts it at rank 1 (MRR 1), shift=-2 at rank 3
    # (MRR 1/3), shift=5 at rank 6, outside the top 3 (MRR 0).
    queries = np.arange(10).reshape(-1, 1)
    relevant = [{i} for i in range(10)]
    search = GridSearchCV(
        _ShiftRetriever(),
        param_grid={"shift": [5, -2, 0]},
        scoring=make_retrieval_scorer("mrr", k=3),
        cv=KFold(n_splits=2),
        error_score="raise",
    )
    search.fit(queries, relevant)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], [0.0, 1 / 3, 1.0])
    assert search.best_params_ == {"shift": 0}
