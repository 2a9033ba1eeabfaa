"""InstructorVectorizer as a scikit-learn estimator: parameters, instruction, fitted state,
output containers, tags, cloning, persistence, progress bar and the model card's row form.

Reference vectors come from ``reference_instructor.ReferenceInstructor``, which shares no code
with sk_instructor (plain transformers, one text at a time, masks built by hand).
"""

from __future__ import annotations

import io
import pickle
import sys

import joblib
import numpy as np
import pandas as pd
import polars as pl
import pytest
from checkpoints import build_t5_checkpoint
from numpy.testing import assert_allclose
from reference_instructor import ReferenceInstructor
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import get_tags
from sklearn.utils._param_validation import InvalidParameterError

from sk_instructor import InstructorVectorizer
from sk_instructor._engine.registry import loaded_models

TEXTS = [
    "Parton energy loss in QCD matter",
    "The Federal Reserve raised its benchmark interest rate.",
    "Scientists discovered a new species of frog in the rain forest.",
]
# The tiny checkpoint's 2_Dense projects to 16 dimensions.
TINY_DIM = 16


@pytest.fixture(scope="module")
def reference(tiny_t5_path):
    return ReferenceInstructor(tiny_t5_path)


def reference_matrix(reference, instruction, texts):
    return np.stack([reference.embed(instruction, text) for text in texts])


# -- parameters ------------------------------------------------------------------------------


def test_init_stores_parameters_and_loads_nothing(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("__init__ must not load a model")

    monkeypatch.setattr("sk_instructor._engine.registry.get_model", forbidden)
    vectorizer = InstructorVectorizer(
        "no/such-model", domain="Science", text_type="title", batch_size=0, dtype="float8"
    )
    params = vectorizer.get_params()
    assert params["model"] == "no/such-model"
    # Invalid values are stored as given: validation happens at fit, as in sklearn.
    assert params["batch_size"] == 0
    assert params["dtype"] == "float8"
    assert not [name for name in vars(vectorizer) if name.endswith("_")]


def test_default_parameters_match_the_issue():
    params = InstructorVectorizer().get_params()
    assert params["template"] == "Represent the {domain} {text_type} for {objective}: "
    assert params["text_type"] == "sentence"
    assert params["instruction"] is None
    assert params["domain"] is None
    assert params["objective"] is None
    assert params["max_seq_length"] is None
    assert params["normalize"] is True
    assert params["missing"] == "error"
    assert params["show_progress_bar"] is None


@pytest.mark.parametrize(
    ("domain", "text_type", "objective", "expected"),
    [
        ("Science", "title", None, "Represent the Science title: "),
        (None, "sentence", None, "Represent the sentence: "),
        (None, "sentence", "classification", "Represent the sentence for classification: "),
        ("Medicine", "sentence", "clustering", "Represent the Medicine sentence for clustering: "),
        (
            "Wikipedia",
            "question",
            "retrieving supporting documents",
            "Represent the Wikipedia question for retrieving supporting documents: ",
        ),
    ],
)
def test_template_drops_absent_domain_or_objective_cleanly(
    tiny_t5_path, domain, text_type, objective, expected
):
    vectorizer = InstructorVectorizer(
        tiny_t5_path, domain=domain, text_type=text_type, objective=objective
    ).fit(TEXTS)
    assert vectorizer.instruction_ == expected


def test_instruction_wins_over_the_template(tiny_t5_path):
    vectorizer = InstructorVectorizer(
        tiny_t5_path, instruction="Represent the Financial statement: ", domain="Science"
    ).fit(TEXTS)
    assert vectorizer.instruction_ == "Represent the Financial statement: "


def test_custom_template_is_filled(tiny_t5_path):
    vectorizer = InstructorVectorizer(
        tiny_t5_path, template="Encode this {domain} {text_type}: ", domain="legal"
    ).fit(TEXTS)
    assert vectorizer.instruction_ == "Encode this legal sentence: "


def test_vectors_are_the_texts_embedded_under_the_resolved_instruction(tiny_t5_path, reference):
    vectorizer = InstructorVectorizer(tiny_t5_path, domain="Science", text_type="title")
    vectors = vectorizer.fit_transform(TEXTS)
    expected = reference_matrix(reference, "Represent the Science title: ", TEXTS)
    assert_allclose(vectors, expected, atol=1e-5)


def test_parameter_changes_after_fit_need_a_refit(tiny_t5_path, reference):
    vectorizer = InstructorVectorizer(tiny_t5_path, domain="Science").fit(TEXTS)
    vectorizer.set_params(domain="Medicine")
    # Like every sklearn estimator: the fitted state is what fit resolved.
    assert vectorizer.instruction_ == "Represent the Science sentence: "
    vectorizer.fit(TEXTS)
    assert_allclose(
        vectorizer.transform(TEXTS),
        reference_matrix(reference, "Represent the Medicine sentence: ", TEXTS),
        atol=1e-5,
    )


def test_max_seq_length_defaults_to_the_checkpoint_and_can_be_lowered(tiny_t5_path):
    long_text = " ".join(TEXTS * 6)  # far past the tiny checkpoint's 64 tokens
    with pytest.warns(UserWarning, match="max_seq_length=64"):
        default = InstructorVectorizer(tiny_t5_path).fit_transform([long_text])
    expected = ReferenceInstructor(tiny_t5_path).embed("Represent the sentence: ", long_text)
    assert_allclose(default[0], expected, atol=1e-5)
    with pytest.warns(UserWarning, match="max_seq_length=12"):
        short = InstructorVectorizer(tiny_t5_path, max_seq_length=12).fit_transform([long_text])
    expected = ReferenceInstructor(tiny_t5_path, max_len=12).embed(
        "Represent the sentence: ", long_text
    )
    assert_allclose(short[0], expected, atol=1e-5)


def test_engine_parameters_reach_the_registry_and_the_encoder(tiny_t5_path, monkeypatch):
    import os

    from checkpoints import add_to_hub_cache

    from sk_instructor._engine import registry as _registry

    # A revision pins a hub commit (a local folder refuses one): the tiny model as a hub model
    # in the suite's offline cache, pinned to its commit.
    commit = add_to_hub_cache(
        os.environ["HF_HUB_CACHE"], "sk-instructor-tests/tiny-t5", tiny_t5_path
    )
    registry_calls = []
    encode_calls = []
    real_get_model = _registry.get_model

    def spy_get_model(model, **kwargs):
        registry_calls.append((model, kwargs))
        engine = real_get_model(model, device=kwargs["device"])
        original_encode = engine.encode

        def spy_encode(instructions, texts, **encode_kwargs):
            encode_calls.append(encode_kwargs)
            return original_encode(instructions, texts, **encode_kwargs)

        monkeypatch.setattr(engine, "encode", spy_encode)
        return engine

    monkeypatch.setattr(_registry, "get_model", spy_get_model)
    vectorizer = InstructorVectorizer(
        "sk-instructor-tests/tiny-t5",
        revision=commit.name,
        local_files_only=True,
        dtype="float32",
        compile=True,
        device="cpu",
        batch_size=2,
        max_seq_length=64,
        normalize=False,
        cache=None,
    )
    vectorizer.fit_transform(TEXTS)
    model, kwargs = registry_calls[-1]
    assert model == "sk-instructor-tests/tiny-t5"
    assert kwargs == {
        "revision": commit.name,
        "device": "cpu",
        "dtype": "float32",
        "local_files_only": True,
        "compile": True,
        "backend": "torch",
    }
    assert encode_calls[-1]["batch_size"] == 2
    assert encode_calls[-1]["max_seq_length"] == 64
    assert encode_calls[-1]["normalize"] is False
    assert encode_calls[-1]["cache"] is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("batch_size", 0),
        ("batch_size", 2.5),
        ("dtype", "float8"),
        ("compile", "yes"),
        ("backend", "onnx"),
        ("max_seq_length", 1),
        ("normalize", "yes"),
        ("missing", "drop"),
        ("show_progress_bar", "auto"),
        ("model", 3),
        ("template", None),
        ("instruction", 5),
        ("domain", ["Science"]),
        ("local_files_only", "no"),
        ("cache", 3),
    ],
)
def test_invalid_parameters_fail_at_fit_with_sklearn_validation_errors(tiny_t5_path, name, value):
    vectorizer = InstructorVectorizer(tiny_t5_path).set_params(**{name: value})
    with pytest.raises(InvalidParameterError, match=f"The '{name}' parameter"):
        vectorizer.fit(TEXTS)


def test_template_with_an_unknown_placeholder_fails_at_fit_naming_it(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path, template="Represent the {topic} {text_type}: ")
    with pytest.raises(ValueError, match=r"\{topic\}"):
        vectorizer.fit(TEXTS)


def test_template_needing_a_text_type_fails_at_fit_without_one(tiny_t5_path):
    with pytest.raises(ValueError, match="text_type is required"):
        InstructorVectorizer(tiny_t5_path, text_type=None).fit(TEXTS)


def test_unknown_device_fails_at_fit_naming_it(tiny_t5_path):
    with pytest.raises(ValueError, match="device='tpu'"):
        InstructorVectorizer(tiny_t5_path, device="tpu").fit(TEXTS)


# -- fitted attributes -------------------------------------------------------------------------


def test_fitted_attributes(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path, domain="Science", text_type="title")
    assert vectorizer.fit(TEXTS) is vectorizer
    assert vectorizer.instruction_ == "Represent the Science title: "
    assert vectorizer.embedding_dim_ == TINY_DIM
    assert vectorizer.n_features_in_ == 1
    assert vectorizer.device_ == "cpu"
    assert not hasattr(vectorizer, "feature_names_in_")


@pytest.mark.parametrize("frame", [pd.DataFrame, pl.DataFrame])
def test_feature_names_in_recorded_when_fitted_on_a_dataframe(tiny_t5_path, frame):
    vectorizer = InstructorVectorizer(tiny_t5_path).fit(frame({"title": TEXTS}))
    assert list(vectorizer.feature_names_in_) == ["title"]
    assert vectorizer.n_features_in_ == 1
    # Refitting on a plain list forgets the name, as sklearn estimators do.
    vectorizer.fit(TEXTS)
    assert not hasattr(vectorizer, "feature_names_in_")


def test_transform_on_another_column_name_fails_like_sklearn(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path).fit(pd.DataFrame({"title": TEXTS}))
    with pytest.raises(ValueError, match="feature names should match"):
        vectorizer.transform(pd.DataFrame({"abstract": TEXTS}))


def test_transform_without_names_after_fitting_with_names_warns_like_sklearn(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path).fit(pd.DataFrame({"title": TEXTS}))
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        vectorizer.transform(np.asarray(TEXTS, dtype=object).reshape(-1, 1))


@pytest.mark.parametrize("method", ["transform", "get_feature_names_out"])
def test_use_before_fit_raises_not_fitted_error(tiny_t5_path, method):
    vectorizer = InstructorVectorizer(tiny_t5_path)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        if method == "transform":
            vectorizer.transform(TEXTS)
        else:
            vectorizer.get_feature_names_out()


# -- output ------------------------------------------------------------------------------------


def test_output_is_float32_and_unit_length_by_default(tiny_t5_path):
    vectors = InstructorVectorizer(tiny_t5_path).fit_transform(TEXTS)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(TEXTS), TINY_DIM)
    assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_normalize_false_keeps_the_direction_and_drops_unit_length(tiny_t5_path):
    normalized = InstructorVectorizer(tiny_t5_path).fit_transform(TEXTS)
    raw = InstructorVectorizer(tiny_t5_path, normalize=False).fit_transform(TEXTS)
    norms = np.linalg.norm(raw, axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)
    assert_allclose(raw / norms[:, None], normalized, atol=1e-5)


def test_fit_transform_equals_fit_then_transform(tiny_t5_path):
    first = InstructorVectorizer(tiny_t5_path).fit_transform(TEXTS)
    second = InstructorVectorizer(tiny_t5_path).fit(TEXTS).transform(TEXTS)
    assert_allclose(first, second, atol=1e-6)


def test_get_feature_names_out_names_each_dimension(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path).fit(pd.DataFrame({"title": TEXTS}))
    names = vectorizer.get_feature_names_out()
    assert list(names) == [f"instructorvectorizer{i}" for i in range(TINY_DIM)]
    assert list(vectorizer.get_feature_names_out(["title"])) == list(names)
    with pytest.raises(ValueError, match="input_features is not equal to feature_names_in_"):
        vectorizer.get_feature_names_out(["abstract"])


@pytest.mark.parametrize("input_kind", ["series", "frame"])
def test_set_output_pandas_keeps_the_input_index(tiny_t5_path, input_kind):
    index = pd.Index(["a", "b", "c"], name="doc_id")
    X = pd.Series(TEXTS, index=index, name="title")
    if input_kind == "frame":
        X = X.to_frame()
    vectorizer = InstructorVectorizer(tiny_t5_path).set_output(transform="pandas")
    for output in (vectorizer.fit_transform(X), vectorizer.transform(X)):
        assert isinstance(output, pd.DataFrame)
        assert output.index.equals(index)
        assert list(output.columns) == list(vectorizer.get_feature_names_out())
        assert_allclose(output.to_numpy(), vectorizer.set_output(transform="default").transform(X))
        vectorizer.set_output(transform="pandas")


def test_set_output_polars(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path).set_output(transform="polars")
    output = vectorizer.fit_transform(pl.Series("title", TEXTS))
    assert isinstance(output, pl.DataFrame)
    assert output.shape == (len(TEXTS), TINY_DIM)
    assert output.columns == list(vectorizer.get_feature_names_out())


# -- tags --------------------------------------------------------------------------------------


def test_tags_declare_a_text_transformer():
    tags = get_tags(InstructorVectorizer())
    assert tags.input_tags.string
    assert tags.input_tags.one_d_array
    # Left True on purpose: with two_d_array=False sklearn's estimator checks skip everything.
    assert tags.input_tags.two_d_array
    assert not tags.input_tags.sparse
    assert tags.transformer_tags is not None
    assert tags.transformer_tags.preserves_dtype == ["float32"]
    assert tags.requires_fit
    assert not tags.target_tags.required


def test_allow_nan_tag_follows_the_missing_parameter():
    assert not get_tags(InstructorVectorizer()).input_tags.allow_nan
    assert get_tags(InstructorVectorizer(missing="zero")).input_tags.allow_nan
    assert get_tags(InstructorVectorizer(missing="empty")).input_tags.allow_nan


# -- clone, params, shared model ----------------------------------------------------------------


def test_clone_get_params_and_set_params(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path, domain="Science", batch_size=8).fit(TEXTS)
    copy = clone(vectorizer)
    assert copy.get_params() == vectorizer.get_params()
    assert not hasattr(copy, "embedding_dim_")
    assert copy.set_params(objective="retrieval", batch_size=4) is copy
    assert copy.get_params()["objective"] == "retrieval"
    assert vectorizer.get_params()["objective"] is None
    with pytest.raises(ValueError, match="Invalid parameter 'colour'"):
        copy.set_params(colour="blue")


def test_two_clones_share_one_loaded_model(tmp_path):
    folder = build_t5_checkpoint(tmp_path / "fresh")  # never loaded before in this process
    first = InstructorVectorizer(folder)
    second = clone(first)
    before = len(loaded_models())
    first.fit(TEXTS)
    second.fit(TEXTS)
    assert len(loaded_models()) == before + 1
    assert first._encoder().load() is second._encoder().load()


# -- persistence -------------------------------------------------------------------------------


@pytest.mark.parametrize("library", ["pickle", "joblib"])
def test_pickles_store_no_weights_and_work_after_loading(tiny_t5_path, tmp_path, library):
    vectorizer = InstructorVectorizer(tiny_t5_path, domain="Science").fit(TEXTS)
    expected = vectorizer.transform(TEXTS)
    path = tmp_path / "vectorizer.pkl"
    if library == "pickle":
        path.write_bytes(pickle.dumps(vectorizer))
        loaded = pickle.loads(path.read_bytes())
    else:
        joblib.dump(vectorizer, path)
        loaded = joblib.load(path)
    assert path.stat().st_size < 100_000
    assert loaded.instruction_ == "Represent the Science sentence: "
    assert_allclose(loaded.transform(TEXTS), expected, atol=1e-6)


def test_vectorizer_fitted_on_a_gpu_loads_on_a_cpu_only_machine(tiny_t5_path, monkeypatch):
    import torch

    vectorizer = InstructorVectorizer(tiny_t5_path).fit(TEXTS)
    expected = vectorizer.transform(TEXTS)
    vectorizer.device_ = "cuda"  # as recorded by a fit on a GPU machine
    payload = pickle.dumps(vectorizer)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="ran on 'cuda'.*using 'cpu'"):
        loaded = pickle.loads(payload)
    assert loaded.device_ == "cpu"
    assert_allclose(loaded.transform(TEXTS), expected, atol=1e-6)


# -- progress bar ------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _many_texts(n):
    return [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(n)]


def test_progress_bar_shown_when_asked(tiny_t5_path, capsys):
    InstructorVectorizer(tiny_t5_path, show_progress_bar=True).fit_transform(TEXTS)
    assert "Embedding" in capsys.readouterr().err


def test_progress_bar_by_default_on_a_terminal_for_large_inputs(tiny_t5_path, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    InstructorVectorizer(tiny_t5_path).fit_transform(_many_texts(300))
    assert "Embedding" in terminal.getvalue()
    assert "300" in terminal.getvalue()


def _pretend_jupyter(monkeypatch) -> io.StringIO:
    """Run as in a Jupyter kernel (stderr is no terminal there); returns the stderr stream."""
    import types

    kernel = types.SimpleNamespace(config={"IPKernelApp": {}})
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: kernel
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    return err


def test_progress_bar_by_default_in_a_notebook_as_text_without_ipywidgets(
    tiny_t5_path, monkeypatch
):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "ipywidgets" else real_find_spec(name, *args),
    )
    err = _pretend_jupyter(monkeypatch)
    InstructorVectorizer(tiny_t5_path).fit_transform(_many_texts(300))
    assert "Embedding" in err.getvalue() and "/300 texts" in err.getvalue()


def test_progress_bar_in_a_notebook_with_ipywidgets_is_a_widget(monkeypatch):
    from tqdm.notebook import tqdm as notebook_tqdm

    from sk_instructor._progress import Progress

    _pretend_jupyter(monkeypatch)
    with Progress(n_rows=2, total_work=10, show=True, noun="texts") as bar:
        assert isinstance(bar._bar, notebook_tqdm)


def test_progress_rate_and_time_left_are_by_text_length_longest_first():
    from sk_instructor._progress import Progress

    with Progress(n_rows=3, total_work=111, show=False) as bar:
        piece = bar.piece(np.array([1, 100, 10]))
        piece.update(1)  # the engine encodes the longest text first
        assert (bar.rows_done, bar.work_done) == (1, 100)


@pytest.mark.parametrize(
    ("stream", "n_texts", "show"),
    [(_Terminal, 10, None), (io.StringIO, 300, None), (_Terminal, 300, False)],
    ids=["terminal-small-input", "not-a-terminal", "turned-off"],
)
def test_progress_bar_hidden(tiny_t5_path, monkeypatch, stream, n_texts, show):
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    InstructorVectorizer(tiny_t5_path, show_progress_bar=show).fit_transform(_many_texts(n_texts))
    assert err.getvalue() == ""


# -- the model card's row form -------------------------------------------------------------------


def test_model_card_three_element_rows_use_their_own_instructions(tiny_t5_path, reference):
    rows = [
        ["Represent the Science title: ", TEXTS[0], 0],
        ["Represent the Financial statement: ", TEXTS[1], 1],
        ["Represent the sentence: ", TEXTS[2], 0],
    ]
    vectorizer = InstructorVectorizer(tiny_t5_path, per_row_instructions=True).fit(rows)
    vectors = vectorizer.transform(rows)
    expected = np.stack([reference.embed(row[0], row[1]) for row in rows])
    assert_allclose(vectors, expected, atol=1e-5)
    # The flag is ignored, as InstructorEmbedding 1.0.1 does; the two-element form is the same.
    flipped = [[instruction, text, 1 - flag] for instruction, text, flag in rows]
    assert_allclose(vectorizer.transform(flipped), vectors, atol=1e-6)
    assert_allclose(vectorizer.transform([row[:2] for row in rows]), vectors, atol=1e-6)


# -- documentation -----------------------------------------------------------------------------


def test_docstring_documents_every_parameter_and_attribute():
    doc = InstructorVectorizer.__doc__
    for section in ("Parameters", "Attributes", "See Also", "Examples"):
        assert f"\n    {section}\n    {'-' * len(section)}\n" in doc
    for name in InstructorVectorizer().get_params():
        assert f"\n    {name} : " in doc, name
    for name in ("instruction_", "embedding_dim_", "n_features_in_", "feature_names_in_"):
        assert f"\n    {name} : " in doc, name


def test_max_seq_length_beyond_the_encoder_fails_at_fit(minilm_path):
    vectorizer = InstructorVectorizer(minilm_path, device="cpu", max_seq_length=1000)
    with pytest.raises(ValueError, match="max_seq_length=1000 exceeds the 512 positions"):
        vectorizer.fit(["a text"])
