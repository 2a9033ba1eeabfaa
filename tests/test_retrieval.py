"""InstructorRetriever: the promises of its docstring, each checked against an independent result.

Mechanics run on the tiny random T5 checkpoint (its vectors mean nothing but are distinct), the
semantics on the real all-MiniLM-L6-v2 against sentence-transformers' own embeddings.
"""

from __future__ import annotations

import io
import pickle
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.neighbors import NearestNeighbors
from sklearn.utils._param_validation import InvalidParameterError

from sk_instructor import InstructionTemplate, InstructorVectorizer
from sk_instructor._cache import MemoryCache
from sk_instructor._engine.registry import get_model
from sk_instructor._retrieval import InstructorRetriever
from sk_instructor.metrics import make_retrieval_scorer

QUERY_INSTRUCTION = "Represent the News question for retrieving supporting documents: "
DOCUMENT_INSTRUCTION = "Represent the News document for retrieval: "

_SUBJECTS = ["The central bank", "A rescue team", "The research group", "Local farmers"]
_VERBS = ["announced", "questioned", "celebrated", "postponed", "reported"]
_OBJECTS = ["new interest rates", "the river flood", "a frog species", "the harvest", "tariffs"]

DOCUMENTS = [
    f"{subject} {verb} {obj} on day {day}."
    for day, (subject, verb, obj) in enumerate(
        (s, v, o) for s in _SUBJECTS for v in _VERBS for o in _OBJECTS[:2]
    )
]  # 40 distinct documents
QUERIES = [
    "Who announced new interest rates?",
    "What happened with the river flood?",
    "Which frog species was found?",
    "Why was the harvest postponed?",
    "Tariffs questioned by farmers",
    "The research group celebrated",
]


def _retriever(model_path, **params) -> InstructorRetriever:
    if "instructions" not in params:
        params.setdefault("query_instruction", QUERY_INSTRUCTION)
        params.setdefault("document_instruction", DOCUMENT_INSTRUCTION)
    return InstructorRetriever(model=model_path, device="cpu", **params)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _brute_force_ranking(queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """Every document per query, by decreasing cosine (stable: lower position first)."""
    similarity = _unit(queries) @ _unit(documents).T
    return np.argsort(-similarity, axis=1, kind="stable")


@pytest.fixture(scope="module")
def fitted(tiny_t5_path) -> InstructorRetriever:
    return _retriever(tiny_t5_path).fit(DOCUMENTS)


def test_kneighbors_equals_sklearn_nearest_neighbors_on_the_same_vectors(fitted):
    query_vectors = fitted.embed_queries(QUERIES)
    reference = NearestNeighbors(n_neighbors=7, metric="cosine", algorithm="brute")
    expected_distances, expected_indices = reference.fit(fitted.document_embeddings_).kneighbors(
        query_vectors
    )

    distances, indices = fitted.kneighbors(QUERIES, n_neighbors=7)

    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, atol=1e-6)
    assert distances.dtype == expected_distances.dtype == np.float32


def test_kneighbors_shapes_dtypes_and_default_n_neighbors(tiny_t5_path):
    retriever = _retriever(tiny_t5_path, n_neighbors=4).fit(DOCUMENTS)
    distances, indices = retriever.kneighbors(QUERIES)
    assert distances.shape == indices.shape == (len(QUERIES), 4)
    assert distances.dtype == np.float32
    assert indices.dtype == np.intp
    assert np.all(np.diff(distances, axis=1) >= 0)
    only_indices = retriever.kneighbors(QUERIES, return_distance=False)
    np.testing.assert_array_equal(only_indices, indices)


def test_fitted_attributes(fitted, tiny_t5_path):
    dim = get_model(tiny_t5_path, device="cpu").embedding_dim
    assert fitted.document_embeddings_.shape == (len(DOCUMENTS), dim)
    assert fitted.document_embeddings_.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fitted.document_embeddings_, axis=1), 1, atol=1e-6)
    assert fitted.n_documents_ == fitted.n_samples_fit_ == len(DOCUMENTS)
    assert fitted.embedding_dim_ == dim
    assert fitted.query_instruction_ == QUERY_INSTRUCTION
    assert fitted.document_instruction_ == DOCUMENT_INSTRUCTION


def test_each_side_is_embedded_under_its_own_instruction(fitted, tiny_t5_path):
    def vectorizer(instruction):
        return InstructorVectorizer(model=tiny_t5_path, device="cpu", instruction=instruction)

    np.testing.assert_allclose(
        fitted.document_embeddings_,
        vectorizer(DOCUMENT_INSTRUCTION).fit_transform(DOCUMENTS),
        atol=1e-6,
    )
    query_vectors = fitted.embed_queries(QUERIES)
    np.testing.assert_allclose(
        query_vectors, vectorizer(QUERY_INSTRUCTION).fit_transform(QUERIES), atol=1e-6
    )
    # Not the document instruction's vectors for the same texts: the instruction matters.
    assert not np.allclose(
        query_vectors, vectorizer(DOCUMENT_INSTRUCTION).fit_transform(QUERIES), atol=1e-3
    )


def test_default_instructions_are_the_model_card_retrieval_pair():
    retriever = InstructorRetriever()
    assert (
        retriever.query_instruction
        == "Represent the Wikipedia question for retrieving supporting documents: "
    )
    assert retriever.document_instruction == "Represent the Wikipedia document for retrieval: "


@pytest.mark.parametrize("form", ["two", "pair"])
def test_no_instruction_embeds_the_plain_text(tiny_t5_path, form):
    if form == "two":
        retriever = _retriever(tiny_t5_path, query_instruction="", document_instruction="")
    else:
        retriever = _retriever(tiny_t5_path, instructions=("", ""))
    retriever.fit(DOCUMENTS)
    plain = InstructorVectorizer(model=tiny_t5_path, device="cpu", instruction="")
    assert retriever.query_instruction_ == retriever.document_instruction_ == ""
    np.testing.assert_allclose(
        retriever.document_embeddings_, plain.fit_transform(DOCUMENTS), atol=1e-6
    )
    np.testing.assert_allclose(
        retriever.embed_queries(QUERIES), plain.fit_transform(QUERIES), atol=1e-6
    )


@pytest.mark.parametrize(("query_chunk", "corpus_chunk"), [(1, 1), (2, 3), (4, 7), (512, 8192)])
def test_chunked_search_equals_brute_force(tiny_t5_path, query_chunk, corpus_chunk):
    retriever = _retriever(tiny_t5_path, query_chunk=query_chunk, corpus_chunk=corpus_chunk)
    retriever.fit(DOCUMENTS)
    query_vectors = retriever.embed_queries(QUERIES)
    ranking = _brute_force_ranking(query_vectors, retriever.document_embeddings_)
    similarity = _unit(query_vectors) @ _unit(retriever.document_embeddings_).T

    distances, indices = retriever.kneighbors(QUERIES, n_neighbors=len(DOCUMENTS))

    np.testing.assert_array_equal(indices, ranking)
    np.testing.assert_allclose(
        distances, 1 - np.take_along_axis(similarity, ranking, axis=1), atol=1e-6
    )


@pytest.mark.slow
def test_search_memory_stays_bounded_by_the_chunks(tiny_t5_path):
    # A large corpus of unit rows stands in for fitted document embeddings; the queries are
    # real embeddings. The full distance matrix would take 100 x 100,000 x 4 bytes = 40 MB.
    retriever = _retriever(tiny_t5_path, query_chunk=32, corpus_chunk=4096).fit(DOCUMENTS)
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((100_000, retriever.embedding_dim_), dtype=np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    retriever.document_embeddings_ = corpus
    retriever.n_documents_ = retriever.n_samples_fit_ = corpus.shape[0]
    queries = [f"query number {i} about the harvest" for i in range(100)]
    retriever.embed_queries(queries)  # warm the cache: measure the search, not the encoding
    full_matrix_bytes = len(queries) * corpus.shape[0] * 4

    tracemalloc.start()
    try:
        indices = retriever.kneighbors(queries, n_neighbors=5, return_distance=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert indices.shape == (100, 5)
    assert peak < full_matrix_bytes / 10
    query_vectors = retriever.embed_queries(queries[:3])
    np.testing.assert_array_equal(indices[:3], _brute_force_ranking(query_vectors, corpus)[:, :5])


def test_works_with_dataframe_columns(fitted, tiny_t5_path):
    frame = pd.DataFrame({"body": DOCUMENTS}, index=[f"doc-{i}" for i in range(len(DOCUMENTS))])
    query_frame = pd.DataFrame({"question": QUERIES}, index=range(100, 100 + len(QUERIES)))
    retriever = _retriever(tiny_t5_path).fit(frame[["body"]])
    np.testing.assert_allclose(retriever.document_embeddings_, fitted.document_embeddings_)

    expected = fitted.kneighbors(QUERIES, n_neighbors=5)
    for queries in (query_frame["question"], query_frame[["question"]]):
        distances, indices = retriever.kneighbors(queries, n_neighbors=5)
        np.testing.assert_array_equal(indices, expected[1])
        np.testing.assert_allclose(distances, expected[0])


def test_n_neighbors_out_of_range_fails_before_embedding_queries(tiny_t5_path):
    retriever = _retriever(tiny_t5_path, cache=None).fit(DOCUMENTS)
    engine = get_model(tiny_t5_path, device="cpu")
    encoded = engine.n_encoded
    with pytest.raises(ValueError, match="n_neighbors = 41, n_samples_fit = 40"):
        retriever.kneighbors(QUERIES, n_neighbors=len(DOCUMENTS) + 1)
    with pytest.raises(ValueError, match="n_neighbors = 0"):
        retriever.kneighbors(QUERIES, n_neighbors=0)
    with pytest.raises(TypeError, match="n_neighbors does not take"):
        retriever.kneighbors(QUERIES, n_neighbors=2.0)
    assert engine.n_encoded == encoded


def test_invalid_parameters_are_rejected_at_fit(tiny_t5_path):
    with pytest.raises(InvalidParameterError, match="n_neighbors"):
        _retriever(tiny_t5_path, n_neighbors=0).fit(DOCUMENTS)
    with pytest.raises(InvalidParameterError, match="corpus_chunk"):
        _retriever(tiny_t5_path, corpus_chunk=0).fit(DOCUMENTS)
    with pytest.raises(InvalidParameterError, match="documents"):
        _retriever(tiny_t5_path, documents=iter(DOCUMENTS)).fit()


def test_fit_without_a_corpus_says_how_to_give_one(tiny_t5_path):
    with pytest.raises(ValueError, match=r"call fit\(documents\), or set the documents"):
        _retriever(tiny_t5_path).fit()


@pytest.mark.parametrize("method", ["kneighbors", "embed_queries"])
def test_use_before_fit_raises_not_fitted(tiny_t5_path, method):
    with pytest.raises(NotFittedError):
        getattr(_retriever(tiny_t5_path), method)(QUERIES)


def test_score_before_fit_raises_not_fitted(tiny_t5_path):
    with pytest.raises(NotFittedError):
        _retriever(tiny_t5_path).score(QUERIES, [0] * len(QUERIES))


def test_missing_documents_as_zero_vectors_are_at_distance_one(tiny_t5_path):
    documents = [*DOCUMENTS[:5], None]
    retriever = _retriever(tiny_t5_path, missing="zero").fit(documents)
    assert not retriever.document_embeddings_[5].any()
    distances, indices = retriever.kneighbors(QUERIES[:2], n_neighbors=6)
    where_missing = indices == 5
    assert where_missing.sum() == 2
    np.testing.assert_allclose(distances[where_missing], 1.0)


def test_missing_documents_raise_by_default_naming_the_row(tiny_t5_path):
    with pytest.raises(ValueError, match=r"row position\(s\) \[2\]"):
        _retriever(tiny_t5_path).fit(["a text", "another text", None])


def _hand_mrr(query_vectors, document_vectors, relevant, k):
    ranking = _brute_force_ranking(query_vectors, document_vectors)
    reciprocal_ranks = []
    for row, doc in zip(ranking, relevant, strict=True):
        rank = int(np.flatnonzero(row == doc)[0]) + 1
        reciprocal_ranks.append(1 / rank if rank <= k else 0.0)
    return float(np.mean(reciprocal_ranks))


def test_score_is_mrr_within_n_neighbors(tiny_t5_path):
    relevant = [0, 3, 7, 12, 25, 39]
    for n_neighbors in (1, 5, 40):
        retriever = _retriever(tiny_t5_path, n_neighbors=n_neighbors).fit(DOCUMENTS)
        expected = _hand_mrr(
            retriever.embed_queries(QUERIES), retriever.document_embeddings_, relevant, n_neighbors
        )
        assert retriever.score(QUERIES, relevant) == pytest.approx(expected)


def test_score_cuts_off_at_the_corpus_size(tiny_t5_path):
    retriever = _retriever(tiny_t5_path, n_neighbors=10).fit(DOCUMENTS[:3])
    expected = _hand_mrr(
        retriever.embed_queries(QUERIES), retriever.document_embeddings_, [0, 1, 2] * 2, 3
    )
    assert retriever.score(QUERIES, [0, 1, 2] * 2) == pytest.approx(expected)


def test_documents_parameter_makes_fit_ignore_the_training_queries(tiny_t5_path, fitted):
    retriever = _retriever(tiny_t5_path, documents=DOCUMENTS).fit(QUERIES, [0] * len(QUERIES))
    assert retriever.n_documents_ == len(DOCUMENTS)
    np.testing.assert_allclose(retriever.document_embeddings_, fitted.document_embeddings_)


# Labelled queries for the grid search: query i is a paraphrase-like view of document
# RELEVANT[i]; with the random tiny model the scores mean nothing, only the mechanics count.
GRID_QUERIES = [
    "central bank rates day 0",
    "rescue team flood",
    "research group frog",
    "farmers harvest postponed",
    "bank questioned tariffs",
    "rescue team reported",
    "farmers celebrated",
    "research announced rates",
    "flood day 13",
]
GRID_RELEVANT = [0, 11, 22, 37, 2, 18, 34, 20, 13]
GRID = {
    "query_instruction": [QUERY_INSTRUCTION, ""],
    "document_instruction": [DOCUMENT_INSTRUCTION, "Represent the sentence: "],
}


def test_grid_search_tunes_the_instructions_with_the_standard_cv_api(tiny_t5_path):
    cache = MemoryCache()
    cv = KFold(n_splits=3)
    search = GridSearchCV(
        _retriever(tiny_t5_path, documents=DOCUMENTS, cache=cache),
        param_grid=GRID,
        scoring=make_retrieval_scorer("mrr", k=5),
        cv=cv,
        error_score="raise",
    )
    search.fit(GRID_QUERIES, GRID_RELEVANT)

    # Each fold score, recomputed by hand: fit on the corpus with the candidate's instructions,
    # rank the held-out queries by brute force, take the reciprocal rank within 5.
    queries = np.asarray(GRID_QUERIES, dtype=object)
    relevant = np.asarray(GRID_RELEVANT)
    for candidate, params in enumerate(search.cv_results_["params"]):
        retriever = _retriever(tiny_t5_path, **params).fit(DOCUMENTS)
        for split, (_, test) in enumerate(cv.split(queries)):
            expected = _hand_mrr(
                retriever.embed_queries(queries[test].tolist()),
                retriever.document_embeddings_,
                relevant[test],
                k=5,
            )
            got = search.cv_results_[f"split{split}_test_score"][candidate]
            assert got == pytest.approx(expected)
    best = int(np.argmax(search.cv_results_["mean_test_score"]))
    assert search.best_params_ == search.cv_results_["params"][best]
    assert search.best_estimator_.n_documents_ == len(DOCUMENTS)


def test_grid_search_embeds_the_corpus_once_per_document_instruction(tiny_t5_path):
    cache = MemoryCache()
    search = GridSearchCV(
        _retriever(tiny_t5_path, documents=DOCUMENTS, cache=cache),
        param_grid=GRID,
        scoring=make_retrieval_scorer("recall", k=5),
        cv=3,
        error_score="raise",
    )
    search.fit(GRID_QUERIES, GRID_RELEVANT)
    # 2 document instructions x 40 documents + 2 query instructions x 9 queries, although the
    # grid fitted 4 candidates x 3 folds + 1 refit = 13 retrievers.
    n_document_instructions = len(GRID["document_instruction"])
    n_query_instructions = len(GRID["query_instruction"])
    assert cache.stats().encoded == (
        n_document_instructions * len(DOCUMENTS) + n_query_instructions * len(GRID_QUERIES)
    )


def test_grid_search_without_scoring_uses_the_score_method(tiny_t5_path):
    retriever = _retriever(tiny_t5_path, documents=DOCUMENTS, n_neighbors=5)
    scores = cross_val_score(
        retriever, GRID_QUERIES, GRID_RELEVANT, cv=KFold(3), error_score="raise"
    )
    mrr5 = cross_val_score(
        retriever,
        GRID_QUERIES,
        GRID_RELEVANT,
        cv=KFold(3),
        scoring=make_retrieval_scorer("mrr", 5),
        error_score="raise",
    )
    np.testing.assert_allclose(scores, mrr5)


def test_clone_keeps_parameters_and_drops_fitted_state(fitted):
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "document_embeddings_")


_ENGINE = {"torch", "transformers", "safetensors", "tokenizers", "openvino"}


def _modules_a_load_imports(payload: bytes) -> set[str]:
    """The modules whose classes or functions unpickling ``payload`` imports."""
    modules: set[str] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            modules.add(module)
            return super().find_class(module, name)

    Recording(io.BytesIO(payload)).load()
    return modules


def test_pickles_without_model_weights(fitted):
    payload = pickle.dumps(fitted)
    # The document embeddings are data and travel; the weights stay in the registry.
    assert len(payload) < fitted.document_embeddings_.nbytes + 10_000
    # No object of torch or transformers in it: the classes a load would import are all
    # numpy's, scikit-learn's, ours. (The bytes b"torch" do occur: backend="torch" is a
    # parameter.)
    assert not {
        module for module in _modules_a_load_imports(payload) if module.split(".")[0] in _ENGINE
    }
    restored = pickle.loads(payload)
    got = restored.kneighbors(QUERIES, n_neighbors=3)
    expected = fitted.kneighbors(QUERIES, n_neighbors=3)
    for got_array, expected_array in zip(got, expected, strict=True):
        np.testing.assert_array_equal(got_array, expected_array)


@pytest.mark.slow
def test_minilm_retrieval_equals_sentence_transformers_and_finds_the_source(
    minilm_path, minilm_sentence_transformer
):
    # Real news: query = the first sentence of an article, document = the rest of it.
    from sk_instructor.datasets import load_lee

    articles = load_lee().documents[:20]
    first_sentences, rests = zip(*(article.split(". ", 1) for article in articles), strict=True)
    retriever = InstructorRetriever(
        model=minilm_path, device="cpu", query_instruction="", document_instruction=""
    ).fit(list(rests))
    distances, indices = retriever.kneighbors(list(first_sentences), n_neighbors=5)

    st = minilm_sentence_transformer
    reference = NearestNeighbors(n_neighbors=5, metric="cosine").fit(st.encode(list(rests)))
    expected_distances, expected_indices = reference.kneighbors(st.encode(list(first_sentences)))
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, atol=1e-5)
    # The semantics: most lead sentences find their own article first.
    assert retriever.score(list(first_sentences), list(range(20))) > 0.8


def test_none_is_not_an_instruction(tiny_t5_path):
    # "" is the one spelling of "no instruction"; None would be ambiguous (no instruction, or
    # the default?), so it is refused rather than guessed.
    with pytest.raises(InvalidParameterError, match="'query_instruction' parameter"):
        _retriever(tiny_t5_path, query_instruction=None).fit(DOCUMENTS)


def test_an_instruction_pair_is_one_parameter(tiny_t5_path):
    pair = InstructionTemplate.retrieval("Science")
    retriever = _retriever(tiny_t5_path, instructions=pair).fit(DOCUMENTS)
    assert (retriever.query_instruction_, retriever.document_instruction_) == pair
    separate = _retriever(
        tiny_t5_path, query_instruction=pair.query, document_instruction=pair.document
    ).fit(DOCUMENTS)
    np.testing.assert_allclose(retriever.document_embeddings_, separate.document_embeddings_)
    search = GridSearchCV(
        InstructorRetriever(tiny_t5_path, device="cpu", documents=DOCUMENTS),
        {"instructions": [pair, InstructionTemplate.retrieval("News")]},
        cv=2,
        error_score="raise",
    ).fit(GRID_QUERIES[:4], GRID_RELEVANT[:4])
    assert search.best_params_["instructions"] in ([pair, InstructionTemplate.retrieval("News")])


def test_a_pair_and_separate_instructions_conflict(tiny_t5_path):
    retriever = _retriever(tiny_t5_path, instructions=("q: ", "d: "), query_instruction="x: ")
    with pytest.raises(ValueError, match="both set"):
        retriever.fit(DOCUMENTS)
