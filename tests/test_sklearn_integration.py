"""InstructorVectorizer inside scikit-learn: Pipeline, ColumnTransformer, cross-validation and
grid search (searched values must reach the encoder, in this process and in loky workers), and
on real weights (all-MiniLM-L6-v2) real semantics on real labelled text from gensim's test data.

Expected vectors come from ``reference_instructor.ReferenceInstructor`` (tiny T5) and from
sentence-transformers (MiniLM), which share no code with sk_instructor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from numpy.testing import assert_allclose
from reference_instructor import ReferenceInstructor
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold, cross_val_score
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline, make_pipeline

from sk_instructor import InstructorRetriever, InstructorVectorizer
from sk_instructor._engine.model import EmbeddingModel

TEXTS = [
    "Parton energy loss in QCD matter",
    "Dark matter in the chiral phase transition",
    "Scientists discovered a new species of frog",
    "Patients with diabetes should monitor their blood sugar",
    "The stock market fell sharply after the tariffs",
    "The Federal Reserve raised its benchmark interest rate",
    "Where is the nearest train station?",
    "How do I get to the airport?",
    "A quick brown fox jumps over the lazy dog",
    "Wearable person tracking in multi-floor environments",
    "The river bank near the rain forest",
    "Represent the quick brown fox",
]
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1])


@pytest.fixture(scope="module")
def references(tiny_t5_path, tiny_t5_safetensors_path):
    """Independent references for both tiny checkpoints, by resolved folder."""
    return {
        Path(path).resolve(): ReferenceInstructor(path)
        for path in (tiny_t5_path, tiny_t5_safetensors_path)
    }


def reference_matrix(reference, instruction, texts):
    return np.stack([reference.embed(instruction, text) for text in texts])


# -- Pipeline with classifiers, clusterers, neighbours --------------------------------------------


def test_pipeline_with_logistic_regression_learns_from_the_embeddings(tiny_t5_path, references):
    # C=1 keeps the fit well posed: with 12 separable points and a weak penalty the optimum runs
    # off towards infinity, and lbfgs stops wherever float32 rounding of the inputs (1e-7,
    # CPU-dependent) happens to leave it, which made an earlier C=100 version of this test flaky.
    settings = dict(C=1.0, tol=1e-8, max_iter=1000)
    pipeline = make_pipeline(
        InstructorVectorizer(tiny_t5_path, domain="Science"), LogisticRegression(**settings)
    )
    pipeline.fit(TEXTS, LABELS)
    features = reference_matrix(
        references[Path(tiny_t5_path).resolve()], "Represent the Science sentence: ", TEXTS
    )
    assert_allclose(pipeline[:-1].transform(TEXTS), features, atol=1e-5)
    # The classifier saw the reference embeddings: it decides as one fitted on them does. The
    # tolerances are 10x what 1e-5 noise on the features moves a float32 lbfgs fit.
    direct = LogisticRegression(**settings).fit(features, LABELS)
    assert_allclose(pipeline[-1].coef_, direct.coef_, atol=2e-3)
    assert_allclose(pipeline.predict_proba(TEXTS), direct.predict_proba(features), atol=2e-4)
    assert (pipeline.predict(TEXTS) == direct.predict(features)).all()


def test_pipeline_with_kmeans_clusters_the_embeddings(tiny_t5_path, references):
    pipeline = make_pipeline(
        InstructorVectorizer(tiny_t5_path, objective="clustering"),
        KMeans(n_clusters=3, n_init=5, random_state=0),
    )
    labels = pipeline.fit_predict(TEXTS)
    features = reference_matrix(
        references[Path(tiny_t5_path).resolve()], "Represent the sentence for clustering: ", TEXTS
    )
    direct = KMeans(n_clusters=3, n_init=5, random_state=0).fit(features)
    assert adjusted_rand_score(labels, direct.labels_) == pytest.approx(1.0)
    assert pipeline.transform(TEXTS).shape == (len(TEXTS), 3)


def test_nearest_neighbors_on_embeddings_match_brute_force_cosine(tiny_t5_path, references):
    vectorizer = InstructorVectorizer(tiny_t5_path, text_type="document")
    pipeline = make_pipeline(vectorizer, NearestNeighbors(n_neighbors=3, metric="cosine"))
    pipeline.fit(TEXTS)
    queries = ["energy loss of partons", "interest rate of the reserve"]
    distances, indices = pipeline[-1].kneighbors(pipeline[:-1].transform(queries))

    reference = references[Path(tiny_t5_path).resolve()]
    corpus = reference_matrix(reference, "Represent the document: ", TEXTS)
    query_vectors = reference_matrix(reference, "Represent the document: ", queries)
    similarity = query_vectors @ corpus.T
    assert_allclose(indices, np.argsort(-similarity, axis=1)[:, :3])
    assert_allclose(distances, 1 - np.sort(similarity, axis=1)[:, ::-1][:, :3], atol=1e-5)


def test_cross_val_score_fits_a_clone_per_fold(tiny_t5_path):
    pipeline = make_pipeline(InstructorVectorizer(tiny_t5_path), LogisticRegression())
    scores = cross_val_score(pipeline, TEXTS, LABELS, cv=StratifiedKFold(3), error_score="raise")
    assert scores.shape == (3,)
    assert np.all((scores >= 0) & (scores <= 1))
    assert not hasattr(pipeline[0], "embedding_dim_")  # the original stays unfitted


# -- ColumnTransformer: one vectorizer, one instruction per text column ---------------------------

TITLE_INSTRUCTION = "Represent the Science title: "
ABSTRACT_INSTRUCTION = "Represent the Science document for retrieval: "


def _papers(frame):
    return frame({"title": TEXTS[:6], "abstract": TEXTS[6:], "year": list(range(2000, 2006))})


def _column_transformer(model):
    return ColumnTransformer(
        [
            ("title", InstructorVectorizer(model, instruction=TITLE_INSTRUCTION), "title"),
            (
                "abstract",
                InstructorVectorizer(model, instruction=ABSTRACT_INSTRUCTION),
                ["abstract"],
            ),
        ],
        remainder="drop",
    )


@pytest.mark.parametrize("frame", [pd.DataFrame, pl.DataFrame], ids=["pandas", "polars"])
def test_column_transformer_embeds_each_text_column_under_its_own_instruction(
    tiny_t5_path, references, frame
):
    papers = _papers(frame)
    output = _column_transformer(tiny_t5_path).fit_transform(papers)
    reference = references[Path(tiny_t5_path).resolve()]
    assert output.shape == (6, 32)
    assert_allclose(
        output[:, :16], reference_matrix(reference, TITLE_INSTRUCTION, TEXTS[:6]), atol=1e-5
    )
    assert_allclose(
        output[:, 16:], reference_matrix(reference, ABSTRACT_INSTRUCTION, TEXTS[6:]), atol=1e-5
    )


def test_column_transformer_names_and_pandas_output(tiny_t5_path):
    papers = _papers(pd.DataFrame).set_axis([f"paper-{i}" for i in range(6)])
    transformer = _column_transformer(tiny_t5_path).set_output(transform="pandas")
    output = transformer.fit_transform(papers)
    assert list(output.columns[:2]) == [
        "title__instructorvectorizer0",
        "title__instructorvectorizer1",
    ]
    assert output.columns[16] == "abstract__instructorvectorizer0"
    assert output.index.equals(papers.index)
    assert list(transformer.named_transformers_["abstract"].feature_names_in_) == ["abstract"]


def test_column_transformer_in_a_pipeline_with_a_classifier(tiny_t5_path):
    papers = _papers(pd.DataFrame)
    pipeline = make_pipeline(_column_transformer(tiny_t5_path), LogisticRegression())
    pipeline.fit(papers, LABELS[:6])
    assert pipeline.predict(papers).shape == (6,)
    assert pipeline[-1].coef_.shape == (1, 32)


# -- GridSearchCV: every searched value reaches the encoder ---------------------------------------


def _grid(model_a, model_b):
    return [
        {
            "vectorizer__domain": ["Science", "Medicine"],
            "vectorizer__objective": [None, "clustering"],
        },
        {"vectorizer__instruction": ["Represent the title: ", "Represent the question: "]},
        {"vectorizer__model": [model_a, model_b]},
    ]


def _expected_encoder_input(params, default_model):
    """(model folder, instruction) each candidate must encode with, written out by hand."""
    model = Path(params.get("vectorizer__model", default_model)).resolve()
    if "vectorizer__instruction" in params:
        return model, params["vectorizer__instruction"]
    if "vectorizer__domain" in params:
        domain, objective = params["vectorizer__domain"], params["vectorizer__objective"]
        suffix = "" if objective is None else f" for {objective}"
        return model, f"Represent the {domain} sentence{suffix}: "
    return model, "Represent the sentence: "


def embedding_sum(estimator, X, y):
    """A scorer that reports the embeddings themselves: distinct for distinct encoder inputs."""
    return float(estimator.named_steps["vectorizer"].transform(X).astype(np.float64).sum())


def _run_grid_search(tiny_t5_path, tiny_t5_safetensors_path, n_jobs):
    # No cache: every searched value must reach the encoder itself, not an earlier test's vector.
    pipeline = Pipeline(
        [
            ("vectorizer", InstructorVectorizer(tiny_t5_path, cache=None)),
            ("classifier", LogisticRegression()),
        ]
    )
    search = GridSearchCV(
        pipeline,
        _grid(str(tiny_t5_path), str(tiny_t5_safetensors_path)),
        scoring={"accuracy": "accuracy", "embedding_sum": embedding_sum},
        refit="accuracy",
        cv=KFold(2),
        n_jobs=n_jobs,
        error_score="raise",
    )
    return search.fit(TEXTS, LABELS)


def _assert_scores_come_from_the_searched_values(search, default_model, references):
    folds = list(KFold(2).split(TEXTS))
    seen = []
    for candidate, params in enumerate(search.cv_results_["params"]):
        model, instruction = _expected_encoder_input(params, default_model)
        for fold, (_, test) in enumerate(folds):
            expected = reference_matrix(
                references[model], instruction, [TEXTS[i] for i in test]
            ).sum()
            observed = search.cv_results_[f"split{fold}_test_embedding_sum"][candidate]
            assert observed == pytest.approx(expected, abs=1e-4), (params, fold)
            seen.append(round(observed, 3))
    # Eight candidates, two folds: sixteen different embeddings sums.
    assert len(set(seen)) == len(seen) == 16


def test_grid_search_values_reach_the_encoder_in_process(
    tiny_t5_path, tiny_t5_safetensors_path, references, monkeypatch
):
    calls = []
    original = EmbeddingModel.encode

    def spy(self, instructions, texts, **kwargs):
        calls.extend(
            (Path(self._resolved.folder).resolve(), instruction) for instruction in instructions
        )
        return original(self, instructions, texts, **kwargs)

    monkeypatch.setattr(EmbeddingModel, "encode", spy)
    search = _run_grid_search(tiny_t5_path, tiny_t5_safetensors_path, n_jobs=1)

    expected = {_expected_encoder_input(p, tiny_t5_path) for p in search.cv_results_["params"]}
    assert len(expected) == 8
    assert expected <= set(calls)
    _assert_scores_come_from_the_searched_values(search, tiny_t5_path, references)
    assert search.best_estimator_.named_steps["vectorizer"].instruction_ in {i for _, i in expected}


@pytest.mark.slow
def test_grid_search_values_reach_the_encoder_in_two_worker_processes(
    tiny_t5_path, tiny_t5_safetensors_path, references
):
    # Workers are separate processes (loky): no spy reaches them, so the proof is the scores,
    # which are sums of the embeddings each worker computed.
    import sys

    import cloudpickle

    # The scorer travels by value: each worker then imports sk_instructor and torch, not this
    # module and all it imports (seconds per worker).
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        search = _run_grid_search(tiny_t5_path, tiny_t5_safetensors_path, n_jobs=2)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    _assert_scores_come_from_the_searched_values(search, tiny_t5_path, references)


# -- real weights, real text -----------------------------------------------------------------------


def test_minilm_vectorizer_equals_sentence_transformers_with_the_prompt_left_out_of_pooling(
    minilm_path, st_encode_prompt_excluded
):
    instruction = "Represent the Science sentence: "
    texts = TEXTS[:4]
    vectors = InstructorVectorizer(minilm_path, instruction=instruction).fit_transform(texts)
    expected = st_encode_prompt_excluded(texts, instruction)
    assert_allclose(vectors, expected, atol=1e-5)


@pytest.mark.slow
def test_minilm_logistic_regression_beats_chance_on_movie_review_polarity(minilm_path):
    from sk_instructor.datasets import load_polarity

    sentences, labels = load_polarity(return_X_y=True)
    pipeline = make_pipeline(
        InstructorVectorizer(
            minilm_path,
            instruction="Represent the review for classifying sentiment as positive or negative: ",
        ),
        LogisticRegression(max_iter=1000),
    )
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    accuracy = cross_val_score(pipeline, sentences, labels, cv=cv, error_score="raise").mean()
    chance = cross_val_score(DummyClassifier(), sentences, labels, cv=cv, error_score="raise")
    chance = chance.mean()
    assert chance == pytest.approx(0.5)
    print(f"polarity: accuracy {accuracy:.3f}, chance {chance:.3f}")
    assert accuracy >= chance + 0.15, accuracy


@pytest.mark.slow
def test_minilm_kmeans_separates_atheism_from_space_posts(minilm_path):
    from sk_instructor.datasets import load_mini_newsgroups

    posts, topics = load_mini_newsgroups(return_X_y=True)  # headers (and group names) removed
    pipeline = make_pipeline(
        InstructorVectorizer(
            minilm_path, instruction="Represent the post for clustering: ", max_seq_length=128
        ),
        KMeans(n_clusters=2, n_init=10, random_state=0),
    )
    with pytest.warns(UserWarning, match="were truncated"):  # posts run past 128 tokens
        clusters = pipeline.fit_predict(posts)
    agreement = max(np.mean(clusters == topics), np.mean(clusters != topics))
    print(f"newsgroups: cluster/topic agreement {agreement:.3f}")
    assert agreement >= 0.85, agreement
    assert adjusted_rand_score(topics, clusters) >= 0.5


def test_minilm_nearest_neighbors_retrieve_the_paraphrase(minilm_path):
    documents = [
        "The central bank raised interest rates to fight inflation.",
        "A new species of frog was found in the Amazon rain forest.",
        "The football team won the championship final on Sunday.",
        "Regular exercise lowers the risk of heart disease.",
    ]
    queries = [
        "Which animal did biologists discover in the jungle?",
        "Why did the Fed increase borrowing costs?",
        "Who won the cup match?",
        "How does working out help your heart?",
    ]
    document_vectorizer = InstructorVectorizer(minilm_path, text_type="document").fit(documents)
    query_vectorizer = InstructorVectorizer(minilm_path, text_type="question").fit(queries)
    neighbours = NearestNeighbors(n_neighbors=1, metric="cosine").fit(
        document_vectorizer.transform(documents)
    )
    _, indices = neighbours.kneighbors(query_vectorizer.transform(queries))
    assert indices[:, 0].tolist() == [1, 0, 2, 3]


@pytest.mark.parametrize("estimator_class", [InstructorVectorizer, InstructorRetriever])
def test_the_input_tags_say_what_each_estimator_accepts(tiny_t5_path, estimator_class):
    estimator = estimator_class(tiny_t5_path, cache=None)
    tags = estimator.__sklearn_tags__().input_tags
    texts = ["Dark matter", "quick brown fox", "energy loss"]
    assert tags.string and tags.one_d_array and tags.two_d_array
    assert not (tags.sparse or tags.categorical or tags.dict or tags.pairwise)
    one_column = [texts, pd.DataFrame({"text": texts}), np.array(texts, dtype=object)[:, None]]
    for X in one_column:  # 1-D, and 2-D of one column
        estimator.fit(X)
    with pytest.raises(ValueError):  # numbers are no texts
        estimator.fit(np.arange(6.0).reshape(3, 2))
    assert not tags.allow_nan  # missing="error" by default
    assert estimator.set_params(missing="zero").__sklearn_tags__().input_tags.allow_nan
