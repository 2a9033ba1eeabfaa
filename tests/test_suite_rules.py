"""Rules the test suite keeps so that a test fails when its subject is broken.

Each rule was once broken somewhere in the suite and hid a failure; they are checked on the
source of every test module, so that a new test cannot bring the fault back.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

TESTS = Path(__file__).parent
TEST_MODULES = sorted(TESTS.glob("*.py"))

# scikit-learn's model-selection helpers that turn an exception in a fit into a score of NaN
# (and a warning) unless error_score="raise": a grid whose every fit fails would still "pass".
_SWALLOWING_CALLS = {
    "GridSearchCV",
    "RandomizedSearchCV",
    "HalvingGridSearchCV",
    "HalvingRandomSearchCV",
    "cross_val_score",
    "cross_validate",
    "validation_curve",
    "learning_curve",
    "permutation_test_score",
}


def _calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _called_name(call: ast.Call) -> str:
    function = call.func
    if isinstance(function, ast.Attribute):
        return function.attr
    return function.id if isinstance(function, ast.Name) else ""


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.name}:{node.lineno}"


def test_every_search_and_cross_validation_raises_on_a_failed_fit():
    swallowing = [
        _where(path, call)
        for path in TEST_MODULES
        for call in _calls(path)
        if _called_name(call) in _SWALLOWING_CALLS
        and not any(
            keyword.arg == "error_score"
            and isinstance(keyword.value, ast.Constant)
            and keyword.value.value == "raise"
            for keyword in call.keywords
        )
    ]
    assert not swallowing, f'pass error_score="raise" at {swallowing}'


def _modules_of_the_test_extra() -> set[str]:
    """Top-level import names of every distribution the ``[test]`` extra installs."""
    requirements = [
        Requirement(line) for line in importlib.metadata.requires("sk-instructor") or ()
    ]
    test_distributions = {
        re.sub(r"[-_.]+", "-", requirement.name).lower()
        for requirement in requirements
        if requirement.marker is not None and requirement.marker.evaluate({"extra": "test"})
    }
    return {
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if any(re.sub(r"[-_.]+", "-", name).lower() in test_distributions for name in distributions)
    }


def test_the_test_extra_is_found_by_this_check():
    # Guards the next test: an empty set would let every importorskip through.
    assert {"sentence_transformers", "ray", "gensim", "pyarrow"} <= _modules_of_the_test_extra()


def test_no_test_skips_when_a_package_of_the_test_extra_is_missing():
    # A broken install of the [test] extra must fail the suite, not quietly shrink it.
    provided = _modules_of_the_test_extra()
    skipping = [
        f"{_where(path, call)} ({call.args[0].value})"
        for path in TEST_MODULES
        for call in _calls(path)
        if _called_name(call) == "importorskip"
        and call.args
        and isinstance(call.args[0], ast.Constant)
        and call.args[0].value.split(".")[0] in provided
    ]
    skipping += [  # a name this check cannot read could be any package
        f"{_where(path, call)} ({ast.unparse(call.args[0])})"
        for path in TEST_MODULES
        for call in _calls(path)
        if _called_name(call) == "importorskip"
        and call.args
        and not isinstance(call.args[0], ast.Constant)
    ]
    assert not skipping, f"import these plainly, the [test] extra installs them: {skipping}"


def _xfail_marks(path: Path) -> list[ast.Call]:
    return [
        call
        for call in _calls(path)
        if isinstance(call.func, ast.Attribute)
        and call.func.attr == "xfail"
        and ast.unparse(call.func).endswith("mark.xfail")
    ]


def test_every_expected_failure_is_strict_and_says_why():
    loose = [
        _where(path, mark)
        for path in TEST_MODULES
        for mark in _xfail_marks(path)
        if not {"strict", "reason"} <= {keyword.arg for keyword in mark.keywords}
    ]
    assert not loose, f"give strict=True and a reason at {loose}"


@pytest.mark.parametrize(
    "path", [path for path in TEST_MODULES if path != Path(__file__)], ids=lambda path: path.name
)
def test_no_test_times_itself(path):
    # Durations depend on the machine and its load: timings live in benchmarks/.
    source = path.read_text(encoding="utf-8")
    assert not re.search(r"\b(perf_counter|process_time|thread_time)\b", source), path.name


def test_the_tiny_checkpoint_is_the_same_every_time_it_is_built(tmp_path):
    # Every session builds its random checkpoints afresh. A builder that gave different files
    # on each call (tokenizers' Unigram trainer orders equal-scored pieces by a randomly seeded
    # hash map: "D" became token 55, 56, 57 or 58) made a test pass or fail by the session's
    # draw, not by the code under test.
    from checkpoints import build_t5_checkpoint

    first, second = (build_t5_checkpoint(tmp_path / name) for name in ("first", "second"))
    files = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(second) for path in second.rglob("*") if path.is_file())
    differing = [
        str(name) for name in files if (first / name).read_bytes() != (second / name).read_bytes()
    ]
    assert differing == []
