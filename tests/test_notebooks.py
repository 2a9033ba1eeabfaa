"""The example notebooks run top to bottom offline, and are committed with their outputs.

Each notebook is executed with nbclient in a fresh kernel of *this* interpreter (the venv's), in
a scratch working directory, so that a notebook that only works with state from someone's
session, or with a package missing from the venv, fails here. It runs on a fifth of its data
(``SK_INSTRUCTOR_NOTEBOOK_STEP``, read by its first cell): every cell runs as it does on all of
it, in a fraction of the time; ``notebooks/render.py`` runs them on all of it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_quickstart",
    "02_clustering",
    "03_retrieval",
    "04_dataframes",
    "05_fine_tuning",
]
# Per cell: the slowest cells embed a few hundred texts or fine-tune MiniLM on 16 (05); generous
# for busy CI machines.
CELL_TIMEOUT_S = 600
# Every fifth post or article: still both newsgroups, and enough of each for 5-fold CV.
SAMPLE_STEP = "5"


def test_the_five_notebooks_are_there():
    assert [path.stem for path in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_committed_with_the_outputs_of_one_clean_run(path):
    """So that its figures show wherever it is browsed; ``python notebooks/render.py`` makes
    them (and ``test_notebook_runs_without_errors`` runs each one again)."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    # Run top to bottom, once, in one fresh kernel.
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), (
        f"{path.name}: run it again with python notebooks/render.py"
    )
    outputs = [output for cell in code for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs), "no figure"
    assert notebook.metadata.kernelspec.name == "python3"
    assert "widgets" not in notebook.metadata


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch) -> str:
    """The name of a kernel that runs this very interpreter.

    A ``python3`` kernel spec elsewhere on the machine (the user's or the system's Jupyter) may
    point at another Python without sk_instructor; one written here, first on JUPYTER_PATH,
    wins over them all.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (sk_instructor tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # The kernel inherits the environment: no hub access, no tokenizer fork warnings, and the
    # notebooks' sample of their data.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("SK_INSTRUCTOR_NOTEBOOK_STEP", SAMPLE_STEP)
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
    return "python3"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_without_errors(path, venv_kernel, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    client = NotebookClient(
        notebook,
        kernel_name=venv_kernel,
        timeout=CELL_TIMEOUT_S,
        # The kernel's working directory: the notebooks must not rely on the repository's.
        resources={"metadata": {"path": str(workdir)}},
    )
    # Raises CellExecutionError, with the failing cell and its traceback, on the first error.
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
    # Every notebook has at least one plot: it reached the end and drew it.
    assert any(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    ), f"{path.name} drew no figure"
