"""Which token budget per batch encodes fastest? Measures the engine across budgets.

Runs ``EmbeddingModel.encode`` (cache off, distinct real texts) with each budget in turn, in one
process. The corpus is cut into chunks of a few hundred texts and every budget encodes each chunk
back to back, in a shuffled order: on a shared machine whose load drifts from second to second,
only such closely paired timings compare budgets fairly. The figure that matters is each
budget's speed relative to the fastest on the same chunk, median over chunks and rounds. Also
printed: texts/s and tokens/s (median over rounds of the whole corpus) and the padding each
budget computes.

Usage::

    python benchmarks/token_budget.py        # CPU, all-MiniLM-L6-v2, ~5 min on 2 quiet cores
    python benchmarks/token_budget.py --budgets 512,1024,2048 --rounds 5
    python benchmarks/token_budget.py --device cuda --model t5-large --dtype bfloat16 \\
        --budgets 16384,32768,65536,131072

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

from _corpus import describe, load_corpus, model_path

INSTRUCTION = "Represent the sentence for retrieval: "
DEFAULT_BUDGETS = "256,512,1024,2048,4096,8192,16384"


def padded_tokens(lengths: np.ndarray, budget: int) -> int:
    from sk_instructor._engine.batching import plan_batches

    batches = plan_batches(lengths, token_budget=budget)
    return int(sum(len(batch) * lengths[batch].max() for batch in batches))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="minilm, t5-large, t5-tiny or a folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--n-texts", type=int, default=900)
    parser.add_argument("--chunk-texts", type=int, default=300, help="texts timed back to back")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budgets", default=DEFAULT_BUDGETS)
    parser.add_argument("--corpus-file", help="JSON list of texts (see _corpus.py export)")
    parser.add_argument("--tokenizer-from", help="tokenizer folder for the random T5 models")
    parser.add_argument("--work-dir", default="/tmp/sk_instructor_bench")
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    warnings.simplefilter("ignore")  # truncation warnings: long articles are cut on purpose

    import torch

    from sk_instructor._engine.registry import get_model

    path = model_path(args.model, args.work_dir, tokenizer_from=args.tokenizer_from)
    model = get_model(path, device=args.device, dtype=args.dtype)
    texts = load_corpus(args.n_texts, corpus_file=args.corpus_file)
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

    for budget in budgets:  # warm-up: every batch shape the allocator will see first
        model.encode(instructions[:64], texts[:64], token_budget=budget)
    chunks = [
        slice(start, min(start + args.chunk_texts, len(texts)))
        for start in range(0, len(texts), args.chunk_texts)
    ]
    # seconds[budget index, round, chunk]
    seconds = np.zeros((len(budgets), args.rounds, len(chunks)))
    rng = np.random.default_rng(0)
    for round_index in range(args.rounds):
        for chunk_index, chunk in enumerate(chunks):
            for row in rng.permutation(len(budgets)):
                synchronize()
                start = time.perf_counter()
                model.encode(
                    instructions[chunk], texts[chunk], token_budget=budgets[row], cache=None
                )
                synchronize()
                seconds[row, round_index, chunk_index] = time.perf_counter() - start
        totals = seconds[:, round_index].sum(axis=1)
        print(
            f"round {round_index + 1}/{args.rounds}: fastest {budgets[int(np.argmin(totals))]} "
            f"(load average {os.getloadavg()[0]:.1f})",
            flush=True,
        )

    # Speed relative to the fastest budget on the same chunk of the same round; median of those.
    paired = seconds.min(axis=0, keepdims=True) / seconds
    relative = np.median(paired.reshape(len(budgets), -1), axis=1)
    times = seconds.sum(axis=2)  # (budgets, rounds): the whole corpus
    best = budgets[int(np.argmax(relative))]
    print(
        f"\n{'budget':>7} {'median s':>9} {'texts/s':>8} {'tokens/s':>9} {'padding':>8} "
        f"{'vs best':>8}"
    )
    for row, budget in enumerate(budgets):
        median = float(np.median(times[row]))
        padded = sum(padded_tokens(lengths[chunk], budget) for chunk in chunks)
        padding = padded / n_tokens - 1
        print(
            f"{budget:>7} {median:>9.2f} {len(texts) / median:>8.1f} {n_tokens / median:>9.0f} "
            f"{padding:>7.1%} {relative[row]:>8.3f}"
        )
    print(
        f"\nbest budget: {best} tokens per batch "
        f"(median over {paired[0].size} chunk timings of the speed relative to the fastest "
        f"budget on the same chunk)"
    )


if __name__ == "__main__":
    main()
