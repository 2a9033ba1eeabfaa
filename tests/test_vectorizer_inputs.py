"""What InstructorVectorizer accepts as input, what it refuses, and how it treats missing values.

Every container must give the same vectors as a plain list, and those equal the independent
reference (``reference_instructor``) embedded under the default instruction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose
from reference_instructor import ReferenceInstructor
from sklearn.base import clone
from sklearn.feature_extraction.text import TfidfVectorizer

from sk_instructor import InstructorVectorizer

TEXTS = [
    "Parton energy loss in QCD matter",
    "The Federal Reserve raised its benchmark interest rate.",
    "Scientists discovered a new species of frog in the rain forest.",
    "Where is the nearest train station?",
]
DEFAULT_INSTRUCTION = "Represent the sentence: "


@pytest.fixture(scope="module")
def reference(tiny_t5_path):
    return ReferenceInstructor(tiny_t5_path)


@pytest.fixture(scope="module")
def expected(reference):
    return np.stack([reference.embed(DEFAULT_INSTRUCTION, text) for text in TEXTS])


@pytest.fixture
def vectorizer(tiny_t5_path):
    return InstructorVectorizer(tiny_t5_path)


CONTAINERS = {
    "list": lambda texts: list(texts),
    "tuple": lambda texts: tuple(texts),
    "generator": lambda texts: (text for text in texts),
    "numpy-str": lambda texts: np.asarray(texts),
    "numpy-object": lambda texts: np.asarray(texts, dtype=object),
    "numpy-column": lambda texts: np.asarray(texts, dtype=object).reshape(-1, 1),
    "pandas-series": lambda texts: pd.Series(texts, index=[10, 20, 30, 40]),
    "pandas-series-object": lambda texts: pd.Series(texts, dtype=object),
    "pandas-frame": lambda texts: pd.DataFrame({"title": texts}),
    "polars-series": lambda texts: pl.Series("title", texts),
    "polars-frame": lambda texts: pl.DataFrame({"title": texts}),
    "pyarrow-array": lambda texts: pa.array(texts),
}


@pytest.mark.parametrize("make", CONTAINERS.values(), ids=CONTAINERS.keys())
def test_every_container_gives_the_reference_vectors(vectorizer, expected, make):
    assert_allclose(vectorizer.fit_transform(make(TEXTS)), expected, atol=1e-5)
    assert_allclose(vectorizer.transform(make(TEXTS)), expected, atol=1e-5)


@pytest.mark.parametrize("text", ["one text", b"one text"], ids=["str", "bytes"])
@pytest.mark.parametrize("method", ["fit", "transform"])
def test_a_bare_string_is_rejected_like_sklearn_text_vectorizers(vectorizer, text, method):
    if isinstance(text, str):
        # sklearn's own text vectorizers refuse a str with this message (bytes slip through
        # theirs, to be iterated as integers; ours refuses them too).
        with pytest.raises(ValueError, match="Iterable over raw text documents expected"):
            TfidfVectorizer().fit([text] * 2).transform(text)
    if method == "transform":
        vectorizer.fit(TEXTS)
    with pytest.raises(ValueError, match=r"Iterable over raw text documents expected.*\[text\]"):
        getattr(vectorizer, method)(text)


@pytest.mark.parametrize("frame", [pd.DataFrame, pl.DataFrame])
def test_a_frame_with_several_columns_is_rejected_pointing_to_column_transformer(vectorizer, frame):
    X = frame({"title": TEXTS, "abstract": TEXTS})
    with pytest.raises(ValueError, match=r"2 columns \['title', 'abstract'\].*ColumnTransformer"):
        vectorizer.fit(X)


def test_an_array_with_several_columns_is_rejected_naming_its_shape(vectorizer):
    X = np.asarray([TEXTS, TEXTS], dtype=object).T
    with pytest.raises(ValueError, match=r"2 columns \(shape=\(4, 2\)\)"):
        vectorizer.fit(X)


def test_an_array_with_no_column_is_rejected_like_sklearn(vectorizer):
    with pytest.raises(ValueError, match=r"0 feature\(s\) \(shape=\(3, 0\)\)"):
        vectorizer.fit(np.empty((3, 0), dtype=object))


def test_a_three_dimensional_array_is_rejected(vectorizer):
    with pytest.raises(ValueError, match=r"shape \(2, 1, 2\)"):
        vectorizer.fit(np.asarray([[TEXTS[:2]], [TEXTS[2:]]], dtype=object))


def test_sparse_input_is_rejected_saying_sparse(vectorizer):
    with pytest.raises(TypeError, match="sparse input is not supported"):
        vectorizer.fit(sp.csr_matrix(np.ones((3, 1))))


@pytest.mark.parametrize("X", [set(TEXTS), dict.fromkeys(TEXTS)], ids=["set", "dict"])
def test_unordered_containers_are_rejected(vectorizer, X):
    with pytest.raises(TypeError, match="no row order"):
        vectorizer.fit(X)


def test_fit_needs_at_least_one_text(vectorizer):
    with pytest.raises(ValueError, match=r"0 sample\(s\)"):
        vectorizer.fit([])


def test_transform_of_no_text_is_an_empty_matrix(vectorizer):
    output = vectorizer.fit(TEXTS).transform([])
    assert output.shape == (0, vectorizer.embedding_dim_)
    assert output.dtype == np.float32


# -- non-text values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (3, "int 3"),
        (2.5, "float 2.5"),
        (np.int64(7), "int64"),
        (True, "bool True"),
        ({"a": 1}, "dict"),
    ],
)
@pytest.mark.parametrize("method", ["fit", "transform"])
def test_non_text_values_raise_a_type_error_naming_the_row(vectorizer, value, shown, method):
    X = [TEXTS[0], TEXTS[1], value]
    if method == "transform":
        vectorizer.fit(TEXTS)
    with pytest.raises(TypeError, match=rf"X row 2 is {shown}.*not text.*astype\(str\)"):
        getattr(vectorizer, method)(X)


def test_bytes_raise_a_type_error_saying_to_decode(vectorizer):
    with pytest.raises(TypeError, match=r"X row 1 is bytes b'abc'.*decode"):
        vectorizer.fit([TEXTS[0], b"abc"])


def test_type_error_names_the_pandas_label_too(vectorizer):
    X = pd.Series([TEXTS[0], 42], index=["doc-a", "doc-b"], dtype=object)
    with pytest.raises(TypeError, match=r"X row 1 \(index label 'doc-b'\) is int 42"):
        vectorizer.fit(X)


def test_numbers_work_once_the_user_converts_them(vectorizer, reference):
    numbers = pd.Series([1, 22, 333])
    vectors = vectorizer.fit_transform(numbers.astype(str))
    expected = np.stack([reference.embed(DEFAULT_INSTRUCTION, str(n)) for n in numbers])
    assert_allclose(vectors, expected, atol=1e-5)


# -- missing values ----------------------------------------------------------------------------

MISSING_MARKERS = {
    "None": None,
    "nan": float("nan"),
    "numpy-nan": np.float32("nan"),
    "pd.NA": pd.NA,
}


def _with_missing(marker):
    """TEXTS with rows 1 and 3 missing."""
    return [TEXTS[0], marker, TEXTS[2], marker]


@pytest.mark.parametrize("marker", MISSING_MARKERS.values(), ids=MISSING_MARKERS.keys())
@pytest.mark.parametrize("method", ["fit", "transform"])
def test_missing_error_raises_naming_the_row_positions(vectorizer, marker, method):
    X = _with_missing(marker)
    if method == "transform":
        vectorizer.fit(TEXTS)
        with pytest.raises(ValueError, match=r"missing values .* at row position\(s\) \[1, 3\]"):
            vectorizer.transform(X)
    else:
        for fit in (vectorizer.fit, vectorizer.fit_transform):
            with pytest.raises(
                ValueError, match=r"missing values .* at row position\(s\) \[1, 3\]"
            ):
                fit(X)


def test_missing_error_names_pandas_labels_too(vectorizer):
    X = pd.Series([TEXTS[0], None, TEXTS[2]], index=["a", "b", "c"])
    vectorizer.fit(TEXTS)
    with pytest.raises(ValueError, match=r"row position\(s\) \[1\] \(index label\(s\) \['b'\]\)"):
        vectorizer.transform(X)


def test_missing_error_summarises_long_lists(vectorizer):
    vectorizer.fit(TEXTS)
    with pytest.raises(ValueError, match=r"\[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] and 5 more"):
        vectorizer.transform([None] * 15)


CONTAINERS_WITH_MISSING = {
    "list-None": lambda: _with_missing(None),
    "numpy-object-nan": lambda: np.asarray(_with_missing(np.nan), dtype=object),
    "pandas-str-dtype": lambda: pd.Series(_with_missing(None), dtype="string"),
    "pandas-default": lambda: pd.Series(_with_missing(None)),
    "polars-null": lambda: pl.Series("title", _with_missing(None)),
    "pandas-frame": lambda: pd.DataFrame({"title": _with_missing(pd.NA)}),
}


@pytest.mark.parametrize("make", CONTAINERS_WITH_MISSING.values(), ids=CONTAINERS_WITH_MISSING)
def test_missing_zero_gives_zero_vectors_for_those_rows(tiny_t5_path, expected, make):
    vectors = InstructorVectorizer(tiny_t5_path, missing="zero").fit_transform(make())
    assert_allclose(vectors[[1, 3]], 0.0)
    assert_allclose(vectors[[0, 2]], expected[[0, 2]], atol=1e-5)


@pytest.mark.parametrize("make", CONTAINERS_WITH_MISSING.values(), ids=CONTAINERS_WITH_MISSING)
def test_missing_empty_embeds_the_empty_string(tiny_t5_path, reference, expected, make):
    vectors = InstructorVectorizer(tiny_t5_path, missing="empty").fit_transform(make())
    empty = reference.embed(DEFAULT_INSTRUCTION, "")
    assert_allclose(vectors[[1, 3]], np.stack([empty, empty]), atol=1e-5)
    assert_allclose(vectors[[0, 2]], expected[[0, 2]], atol=1e-5)


def test_missing_zero_when_every_row_is_missing(tiny_t5_path):
    vectorizer = InstructorVectorizer(tiny_t5_path, missing="zero").fit(TEXTS)
    assert_allclose(vectorizer.transform([None, np.nan]), np.zeros((2, 16)))


def test_missing_text_in_model_card_rows_follows_the_missing_parameter(tiny_t5_path, reference):
    rows = [["Represent the title: ", TEXTS[0]], ["Represent the title: ", None]]
    with pytest.raises(ValueError, match=r"row position\(s\) \[1\]"):
        InstructorVectorizer(tiny_t5_path, per_row_instructions=True).fit_transform(rows)
    vectors = InstructorVectorizer(
        tiny_t5_path, missing="zero", per_row_instructions=True
    ).fit_transform(rows)
    assert_allclose(vectors[0], reference.embed("Represent the title: ", TEXTS[0]), atol=1e-5)
    assert_allclose(vectors[1], 0.0)


def test_mixing_model_card_rows_and_plain_texts_is_rejected_naming_the_row(vectorizer):
    mixed = [TEXTS[0], ["Represent the title: ", TEXTS[1]]]
    with pytest.raises(TypeError, match=r"X row 1 is list.*only with per_row_instructions=True"):
        vectorizer.fit(mixed)
    with pytest.raises(TypeError, match=r"X row 0 is str.*not an \[instruction, text\] row"):
        clone(vectorizer).set_params(per_row_instructions=True).fit(mixed)
