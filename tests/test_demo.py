"""The demo that ``make demo`` runs: it works offline end to end and its numbers are sane.

The real all-MiniLM-L6-v2 on real text, on the demo's hidden ``--quick`` sample (40 posts, 45
articles, 3 folds) so that the test takes well under a minute on two cores.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"
sys.path.insert(0, str(DEMO.parent))
import demo  # noqa: E402  (examples/demo.py: the demo ships beside the package, not in it)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """(exit status, output folder, printed text) of one quick demo run, shared by the tests."""
    out = tmp_path_factory.mktemp("demo_out")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = demo.main(["--out", str(out), "--quick"])
    return status, out, printed.getvalue()


@pytest.mark.slow
def test_demo_writes_report_and_figures(quick_run):
    status, out, _ = quick_run
    assert status == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert {"classification", "grid_search", "clustering", "retrieval", "figures"} <= set(report)
    assert report["embedding_dim"] == 384
    for figure in ("grid_search.png", "clustering_pca.png"):
        path = out / figure
        assert str(path) in report["figures"]
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert path.stat().st_size > 10_000  # a real picture, not an empty canvas


@pytest.mark.slow
def test_demo_numbers_are_sane(quick_run):
    _, out, _ = quick_run
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))

    classification = report["classification"]
    # Two balanced groups: chance is 0.5, and both methods separate religion from space well.
    assert classification["chance_accuracy"] == pytest.approx(0.5)
    assert classification["instructor_accuracy"] > 0.75
    assert classification["tfidf_accuracy"] > 0.75

    grid = report["grid_search"]
    assert len(grid["candidates"]) == 4
    instructions = [candidate["instruction"] for candidate in grid["candidates"]]
    assert "" in instructions
    assert classification["instruction"] in instructions
    assert grid["best_instruction"] in instructions
    assert all(0.5 < candidate["cv_accuracy"] <= 1.0 for candidate in grid["candidates"])
    assert grid["best_cv_accuracy"] == max(c["cv_accuracy"] for c in grid["candidates"])
    # The cache promise: every new (instruction, post) pair is encoded exactly once, however
    # many folds and refits look it up.
    cache = grid["cache"]
    assert cache["texts_encoded"] == cache["distinct_new_pairs"] > 0
    assert cache["lookups"] > 3 * cache["texts_encoded"]

    clustering = report["clustering"]
    assert clustering["adjusted_rand_index"] > 0.2
    assert clustering["no_instruction_adjusted_rand_index"] > 0.2
    assert -0.5 <= clustering["tfidf_adjusted_rand_index"] <= 1.0

    retrieval = report["retrieval"]
    assert retrieval["n_queries"] == retrieval["n_documents"] > 40
    metrics = retrieval["instructor"]
    # Random ranking over ~45 documents gives MRR@10 about 0.07 and recall@10 about 0.22.
    assert metrics["mrr@10"] > 0.4
    assert metrics["recall@10"] > 0.6
    assert metrics["recall@1"] <= metrics["mrr@10"] <= metrics["recall@10"] <= 1.0


@pytest.mark.slow
def test_demo_prints_progress_and_the_report(quick_run):
    _, out, printed = quick_run
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in printed
    for heading in ("1. Classification", "2. GridSearchCV", "3. Clustering", "4. Retrieval"):
        assert heading in printed
    assert str(out / "report.json") in printed


def test_missing_optional_dependency_gives_a_one_line_hint(monkeypatch, tmp_path, capsys):
    real_importable = demo._importable
    monkeypatch.setattr(
        demo, "_importable", lambda module: module != "gensim" and real_importable(module)
    )
    assert demo.main(["--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "pip install gensim" in error
    assert not (tmp_path / "out").exists()


def test_demo_runs_as_a_script_and_hides_the_quick_flag():
    result = subprocess.run(
        [sys.executable, str(DEMO), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--out" in result.stdout
    assert "--quick" not in result.stdout
