"""scikit-learn's estimator checks on InstructorVectorizer (tiny random T5 checkpoint).

How sklearn 1.9 picks checks and what it feeds them (``sklearn/utils/estimator_checks.py``):

- ``_yield_all_checks`` returns nothing at all unless ``input_tags.two_d_array`` is True, so
  declaring a text vectorizer ``two_d_array=False`` (as sklearn's own CountVectorizer does)
  silently skips every check. InstructorVectorizer does accept 2-D input, a single text column
  ``(n, 1)``, so its tags say ``two_d_array=True`` and every check is yielded.
- The data is always random numbers. ``input_tags.string=True`` does not make any check feed
  text; it only changes ``check_dtype_object`` (which then expects an object array of floats
  to be fitted without error). ``one_d_array=True`` (also true: a 1-D array of texts is the
  natural input) makes ``_enforce_estimator_tags_X`` pass ``X[:, 0]``, after which several
  checks index ``X[:, j]`` on their own 1-D data and crash before reaching the estimator.
- Numbers must be refused with a TypeError naming the row, so every check that needs a
  successful fit on those random numbers cannot pass. They are listed below, each with its
  reason *and the failure that reason predicts* (exception type, message, and the module it is
  raised in). A listed check is run and must fail exactly that way: a check that starts
  passing, or fails for another reason (a real bug hidden behind an expected failure), fails
  the test. This is stricter than ``xfail_strict``, which accepts any exception.

To still run those behavioural checks (fit idempotence, pickling, subset and order invariance,
pipeline consistency...) against real text, the second test runs the whole suite on the
vectorizer behind a converter that spells each number out in words, exactly what the error
message tells a user with numbers to do. It is a Pipeline, so sklearn's checks of that run
also see Pipeline's own behaviour; the one Pipeline quirk is listed there.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import estimator_checks_generator

from sk_instructor import InstructorVectorizer

# parametrize_with_checks needs the estimator at collection time; the folder exists from now on
# and the checkpoint is written into it before the first check runs (the model loads lazily).
CHECKS_MODEL = Path(tempfile.mkdtemp(prefix="sk_instructor_checks_"))


@pytest.fixture(scope="module", autouse=True)
def _tiny_checkpoint_for_the_checks():
    from checkpoints import build_t5_checkpoint

    build_t5_checkpoint(CHECKS_MODEL)
    yield
    shutil.rmtree(CHECKS_MODEL, ignore_errors=True)


@dataclass(frozen=True)
class ExpectedFailure:
    """Why a check cannot pass, and the failure that reason predicts."""

    reason: str
    error: type[BaseException] | tuple[type[BaseException], ...]
    match: str  # searched in the message of the error or of the error it was raised from
    raised_in: str  # part of the path of the innermost frame of the traceback


_NUMBERS = ExpectedFailure(
    "fits random floats; numbers are not text and are refused with a TypeError naming the row",
    TypeError,
    r"X row \d+ is (float|complex) .*, not text",
    "sk_instructor/_input.py",
)
_ONE_D = ExpectedFailure(
    "the check treats the 1-D data it built for a one_d_array estimator as 2-D (X[:, j] or "
    "n, d = X.shape fails inside the check), and would then fit random floats",
    (IndexError, ValueError),
    r"too many indices for array: array is 1-dimensional|not enough values to unpack",
    "sklearn/utils/estimator_checks.py",
)

# One entry per check that cannot apply to a text transformer, and why.
DIRECT_EXPECTED_FAILURES = {
    "check_fit_score_takes_y": _NUMBERS,
    "check_estimators_overwrite_params": _NUMBERS,
    "check_dont_overwrite_parameters": _ONE_D,
    "check_estimators_fit_returns_self": _NUMBERS,
    "check_readonly_memmap_input": _NUMBERS,
    "check_n_features_in_after_fitting": _NUMBERS,
    "check_positive_only_tag_during_fit": ExpectedFailure(
        _NUMBERS.reason + " (negative or not); the check reports it as an AssertionError",
        AssertionError,
        _NUMBERS.match,
        "sklearn/utils/estimator_checks.py",
    ),
    "check_estimators_dtypes": _NUMBERS,
    "check_complex_data": ExpectedFailure(
        "complex numbers are not text: refused with the TypeError every non-text value gets, "
        "not the ValueError the check expects",
        TypeError,
        r"X row 0 is complex",
        "sk_instructor/_input.py",
    ),
    "check_dtype_object": ExpectedFailure(
        "with string=True it expects an object array of floats to fit; floats are not text",
        TypeError,
        _NUMBERS.match,
        "sk_instructor/_input.py",
    ),
    "check_pipeline_consistency": _NUMBERS,
    "check_estimators_nan_inf": ExpectedFailure(
        "its NaN/inf arrays are 3 float columns, refused for their shape before any NaN is "
        "seen (a NaN text is refused as missing elsewhere); it also needs a fit on floats",
        AssertionError,
        r"X has 3 columns .* embeds one text column",
        "sklearn/utils/_testing.py",
    ),
    "check_estimator_sparse_array": ExpectedFailure(
        "sklearn cannot build its 2-D sparse formats from the 1-D data of a one_d_array "
        "estimator (ValueError in the check); sparse input itself is refused naming 'sparse'",
        ValueError,
        r"Cannot convert a 1d sparse array",
        "scipy/sparse",
    ),
    "check_estimators_pickle": _NUMBERS,
    "check_f_contiguous_array_estimator": _ONE_D,
    "check_transformer_data_not_an_array": _ONE_D,
    "check_transformer_general": _ONE_D,
    "check_transformer_preserve_dtypes": ExpectedFailure(
        _NUMBERS.reason + " (float32 output is checked elsewhere)",
        TypeError,
        _NUMBERS.match,
        "sk_instructor/_input.py",
    ),
    "check_methods_sample_order_invariance": _ONE_D,
    "check_methods_subset_invariance": _ONE_D,
    "check_fit2d_1sample": _ONE_D,
    "check_fit2d_1feature": _ONE_D,
    "check_dict_unchanged": _ONE_D,
    "check_fit_idempotent": _NUMBERS,
    "check_fit_check_is_fitted": _NUMBERS,
    "check_n_features_in": _NUMBERS,
    "check_fit1d": ExpectedFailure(
        "a 1-D array is the natural container of texts and is accepted; the check wants it "
        "refused with a ValueError, and feeds floats, which are refused as not text",
        TypeError,
        _NUMBERS.match,
        "sk_instructor/_input.py",
    ),
    "check_fit2d_predict1d": _ONE_D,
}


def _check_name(check) -> str:
    return getattr(check, "func", check).__name__


def _check_id(check) -> str:
    keywords = getattr(check, "keywords", {})
    arguments = ",".join(f"{name}={value}" for name, value in keywords.items())
    return f"{_check_name(check)}({arguments})" if arguments else _check_name(check)


def _checks_of(estimator) -> list:
    """sklearn's checks for ``estimator`` as pytest parameters, named after each check."""
    return [
        pytest.param(copy, check, id=_check_id(check))
        for copy, check in estimator_checks_generator(estimator, legacy=True, mark=None)
    ]


def run_check(estimator, check, expected_failures: dict[str, ExpectedFailure]) -> None:
    """Run ``check``; if it is listed, it must fail exactly as its reason predicts."""
    expected = expected_failures.get(_check_name(check))
    if expected is None:
        check(estimator)
        return
    with pytest.raises(expected.error) as failure:
        check(estimator)
    error = failure.value
    messages = [str(error), str(error.__cause__ or error.__context__ or "")]
    assert any(re.search(expected.match, message) for message in messages), (
        f"{_check_name(check)} failed, but not for the listed reason ({expected.reason}): "
        f"{type(error).__name__}: {error}"
    )
    innermost = Path(failure.traceback[-1].path).as_posix()
    assert expected.raised_in in innermost, (
        f"{_check_name(check)} failed in {innermost}, not in {expected.raised_in}"
    )


@pytest.mark.parametrize(
    ("estimator", "check"), _checks_of(InstructorVectorizer(model=str(CHECKS_MODEL)))
)
def test_sklearn_estimator_checks(estimator, check):
    run_check(estimator, check, DIRECT_EXPECTED_FAILURES)


def test_every_listed_failure_is_a_check_sklearn_still_runs():
    names = {
        _check_name(check)
        for _, check in estimator_checks_generator(
            InstructorVectorizer(model=str(CHECKS_MODEL)), legacy=True, mark=None
        )
    }
    assert set(DIRECT_EXPECTED_FAILURES) <= names, set(DIRECT_EXPECTED_FAILURES) - names


# -- the same checks on text: numbers spelled out, as a user converting them would --------------

# Words the tiny checkpoint's tokenizer knows, so that different numbers give different texts
# (its vocabulary has no digits: "0.548" and "0.731" would both be unknown tokens).
_DIGIT_WORDS = np.asarray("science title river fox dark matter market frog station rate".split())


class NumbersAsWords:
    """One text per row: every value's sign and first decimals spelled out as words.

    A class rather than a function so that the test ids (built from the repr) stay stable.
    """

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return np.asarray([" ".join(map(self._spell, row)) for row in X], dtype=object)

    @staticmethod
    def _spell(value: float) -> str:
        digits = f"{abs(value):.4f}".replace(".", "")
        words = " ".join(_DIGIT_WORDS[int(digit)] for digit in digits)
        return ("minus " if value < 0 else "") + words

    def __repr__(self) -> str:
        return "NumbersAsWords()"


numbers_as_words = NumbersAsWords()


_PIPELINE_QUIRK = ExpectedFailure(
    "Pipeline fits its steps in place, so its 'steps' parameter holds fitted estimators "
    "after fit (Pipeline's design, not the vectorizer's)",
    AssertionError,
    r"\bsteps\b",
    "sklearn/utils/estimator_checks.py",
)
CONVERTED_EXPECTED_FAILURES = {
    "check_estimators_overwrite_params": _PIPELINE_QUIRK,
    "check_dont_overwrite_parameters": _PIPELINE_QUIRK,
}


@pytest.mark.parametrize(
    ("estimator", "check"),
    _checks_of(
        make_pipeline(
            FunctionTransformer(numbers_as_words, validate=True),
            # Ten spelled-out columns run past the checkpoint's 64 tokens: no truncation here.
            InstructorVectorizer(model=str(CHECKS_MODEL), max_seq_length=512),
        )
    ),
)
def test_sklearn_estimator_checks_on_text_converted_from_numbers(estimator, check):
    run_check(estimator, check, CONVERTED_EXPECTED_FAILURES)


def test_converted_texts_differ_row_by_row():
    rng = np.random.RandomState(0)
    texts = numbers_as_words(rng.uniform(size=(20, 3)))
    assert len(set(texts)) == 20
    # -0.5 -> "0.5000" -> digits 0, 5, 0, 0, 0
    expected = "minus science matter science science science"
    assert numbers_as_words(np.asarray([[-0.5]]))[0] == expected
