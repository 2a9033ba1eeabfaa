"""Importing sk_instructor is cheap: torch and transformers load only when a model is needed.

Each check runs in a fresh interpreter, since this test process has long imported torch.
``python -X importtime -c "import sk_instructor"`` shows where the remaining time goes
(scikit-learn, with scipy and pandas, is most of it).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "sentence_transformers")


def _assert_light_after(code: str) -> None:
    check = (
        f"{code}\nimport sys\n"
        f"loaded = [name for name in {HEAVY!r} if name in sys.modules]\n"
        "assert not loaded, f'imported: {loaded}'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    "module", ["sk_instructor", "sk_instructor.metrics", "sk_instructor.datasets"]
)
def test_importing_does_not_load_torch_or_transformers(module):
    _assert_light_after(f"import {module}")


def test_building_and_cloning_an_estimator_does_not_load_torch():
    _assert_light_after(
        "from sklearn.base import clone\n"
        "from sk_instructor import InstructorVectorizer\n"
        "vectorizer = clone(InstructorVectorizer(domain='Science', text_type='title'))\n"
        "vectorizer.get_params()\n"
        "repr(vectorizer)\n"
    )
