"""The parameters shared by every component: one declaration, the same everywhere."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
from reference_instructor import ReferenceInstructor
from sklearn.utils._param_validation import InvalidParameterError

from sk_instructor import InstructorRetriever, InstructorVectorizer, pair_similarity
from sk_instructor._cli.main import _parameters, build_parser
from sk_instructor._params import DEFAULTS, ENGINE, INSTRUCTION, PARAMETERS

RETRIEVER_ENGINE = [name for name in ENGINE if name != "normalize"]
COMPONENTS = [
    (InstructorVectorizer, ["model", *INSTRUCTION, *ENGINE]),
    (InstructorRetriever, RETRIEVER_ENGINE),
    (pair_similarity, RETRIEVER_ENGINE),
]


def _signature(component):
    return inspect.signature(component.__init__ if inspect.isclass(component) else component)


@pytest.mark.parametrize(
    ("component", "names"), COMPONENTS, ids=lambda c: getattr(c, "__name__", "")
)
def test_every_component_takes_the_shared_parameters_with_one_default_and_one_doc(component, names):
    signature = _signature(component)
    for name in names:
        assert signature.parameters[name].default == DEFAULTS[name], name
        assert PARAMETERS[name].numpydoc() in component.__doc__, name
    assert ".. shared parameters::" not in component.__doc__


@pytest.mark.parametrize("estimator", [InstructorVectorizer, InstructorRetriever])
def test_estimators_validate_shared_parameters_with_the_shared_constraints(estimator):
    for name, constraints in estimator._parameter_constraints.items():
        if name in PARAMETERS:
            assert constraints is PARAMETERS[name].constraints, name


def test_the_command_line_has_an_option_for_every_vectorizer_parameter():
    arguments = vars(build_parser().parse_args(["embed", "in.csv", "-o", "out.npy"]))
    for name in ("model", *INSTRUCTION, *ENGINE):
        assert arguments[name] == DEFAULTS[name], name


def test_command_line_values_reach_the_vectorizer_as_parameters(tmp_path, monkeypatch):
    monkeypatch.setattr(InstructorVectorizer, "fit", lambda self, X, y=None: self)
    arguments = build_parser().parse_args(
        [
            *("embed", "in.csv", "-o", "out.npy", "--model", str(tmp_path), "--no-normalize"),
            *("--cache", "none", "--batch-size", "3", "--domain", "Science"),
        ]
    )
    settings = _parameters(arguments)
    assert settings["model"] == str(tmp_path)
    assert settings["normalize"] is False
    assert settings["cache"] is None
    assert settings["batch_size"] == 3
    assert settings["domain"] == "Science"


def test_a_cache_object_that_is_no_embedding_cache_is_refused_at_fit(tiny_t5_path):
    class DuckCache:
        def get_many(self, keys):
            return [None] * len(keys)

        def put_many(self, keys, vectors):
            pass

    vectorizer = InstructorVectorizer(tiny_t5_path, cache=DuckCache())
    with pytest.raises(InvalidParameterError, match=r"'cache' parameter.*EmbeddingCache"):
        vectorizer.fit(["a text"])


def test_template_parts_beside_a_whole_instruction_are_warned_about(tiny_t5_path):
    vectorizer = InstructorVectorizer(
        tiny_t5_path, instruction="Represent the title: ", domain="Physics", objective="search"
    )
    with pytest.warns(UserWarning, match=r"domain='Physics', objective='search' are ignored"):
        vectorizer.fit(["a text"])
    assert vectorizer.instruction_ == "Represent the title: "


def test_a_whole_instruction_alone_is_not_warned_about(tiny_t5_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vectorizer = InstructorVectorizer(tiny_t5_path, instruction="Represent the title: ")
        assert vectorizer.fit(["a text"]).transform(["x"]).shape[0] == 1


def test_pair_similarity_names_itself_in_parameter_errors(tiny_t5_path):
    with pytest.raises(InvalidParameterError, match="'batch_size' parameter of pair_similarity"):
        pair_similarity(["a"], ["b"], model=tiny_t5_path, batch_size=0)
    assert np.isfinite(pair_similarity(["a"], ["b"], model=tiny_t5_path)).all()


def test_a_warning_names_the_users_code_and_is_said_once_per_cause(tiny_t5_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    long_texts = [f"text {k} " + "river bank station " * 30 for k in range(8)]
    search = GridSearchCV(
        make_pipeline(InstructorVectorizer(tiny_t5_path), LogisticRegression()),
        {"logisticregression__C": [0.1, 1.0]},
        cv=2,
        error_score="raise",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search.fit(long_texts, [0, 1] * 4)  # five fits, each truncating
    truncations = [w for w in caught if "truncated" in str(w.message)]
    assert len(truncations) == 1
    assert truncations[0].filename == __file__


def test_the_empty_instruction_means_none_in_every_component(tiny_t5_path, tmp_path):
    from sk_instructor import InstructorRetriever
    from sk_instructor._cli import main

    texts = ["Dark matter halos", "A quick brown fox"]
    plain = InstructorVectorizer(tiny_t5_path, instruction="", cache=None).fit_transform(texts)
    reference = ReferenceInstructor(tiny_t5_path)
    np.testing.assert_allclose(plain, [reference.embed("", text) for text in texts], atol=1e-5)

    retriever = InstructorRetriever(
        tiny_t5_path, query_instruction="", document_instruction="", cache=None
    ).fit(texts)
    np.testing.assert_allclose(retriever.document_embeddings_, plain, atol=1e-6)
    np.testing.assert_allclose(retriever.embed_queries(texts), plain, atol=1e-6)

    similarity = pair_similarity(texts, texts[::-1], model=tiny_t5_path, instruction_a="")
    np.testing.assert_allclose(similarity, np.sum(plain * plain[::-1], axis=1), atol=1e-5)

    source = tmp_path / "texts.csv"
    source.write_text("text\n" + "\n".join(texts) + "\n")
    arguments = ["embed", str(source), "-o", str(tmp_path / "out.npy"), "--instruction", ""]
    assert main([*arguments, "--model", str(tiny_t5_path), "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), plain, atol=1e-6)
