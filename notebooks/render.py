"""Run every notebook here top to bottom and save it with its outputs, so that its figures
show wherever it is browsed (GitHub, nbviewer) without running it.

    python notebooks/render.py          # all five, a few minutes on two cores

Each runs in a fresh kernel of this interpreter, offline, in a scratch working directory, as
tests/test_notebooks.py runs them, but on all of its data (the test runs them on a fifth).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def render(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as workdir:
        NotebookClient(
            notebook,
            kernel_name="python3",
            timeout=600,
            resources={"metadata": {"path": workdir}},
        ).execute()
    nbformat.write(notebook, path)
    print(f"rendered {path.name}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # All of the data, never the test suite's sample (see tests/test_notebooks.py).
    os.environ.pop("SK_INSTRUCTOR_NOTEBOOK_STEP", None)
    for notebook_path in (
        sorted(HERE.glob("*.ipynb")) if len(sys.argv) < 2 else map(Path, sys.argv[1:])
    ):
        render(notebook_path)
