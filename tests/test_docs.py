"""Every example in every docstring runs, as written, on the suite's offline hub cache.

The examples name real models (``"hkunlp/instructor-large"``); the fixture ``hub_models`` puts
models under those names in the suite's own Hugging Face cache, where huggingface_hub finds
them without a network.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import warnings

import pytest

import sk_instructor

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(sk_instructor.__path__, prefix="sk_instructor.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name, hub_models):
    module = importlib.import_module(module_name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(module, module_name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


@pytest.mark.parametrize("name", [name for name in sk_instructor.__all__ if name[0] != "_"])
def test_public_examples_import_only_public_names(name):
    # The docstrings of a public class or function and of its methods.
    for test in doctest.DocTestFinder().find(getattr(sk_instructor, name), name):
        for example in test.examples:
            assert "sk_instructor._" not in example.source, (test.name, example.source)
