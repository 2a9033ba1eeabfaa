"""Time to embed one long text against its length: linear, not quadratic.

A text far past the window is truncated, and only about a page of it is given to the tokenizer
(whose cost can grow faster than the length); the rest is a scan of the string. The test suite
checks that reason deterministically (tests/test_hostile_input.py,
``test_the_tokenizer_reads_a_page_of_a_long_text_whatever_its_length``); this script times the
result, which a test could not do reliably on a shared machine. Each length is embedded alone
(``long_text="truncate"``, no cache), best of ``--repeats``. Four times the text should take
about four times as long (a quadratic cost would take sixteen), or less where the fixed cost of
a call dominates.

    python benchmarks/long_text_scaling.py                 # all-MiniLM-L6-v2
    python benchmarks/long_text_scaling.py --model t5-tiny --lengths 250000 1000000 4000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> None:
    from _corpus import model_path

    from sk_instructor import InstructorVectorizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="minilm, t5-tiny or a model folder")
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[250_000, 1_000_000], help="characters"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"options: {vars(args)}")

    model = str(model_path(args.model, tempfile.mkdtemp()))
    vectorizer = InstructorVectorizer(model, cache=None).fit(["fit"])
    vectorizer.transform(["warm up the model"])

    def seconds(n_characters: int) -> float:
        text = "alpha beta " * (n_characters // 11)
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "1 of 1 texts were truncated"
                vectorizer.transform([text])
            best = min(best, time.perf_counter() - start)
        return best

    timings = {n: seconds(n) for n in args.lengths}
    shortest = min(timings)
    for n, spent in timings.items():
        growth = spent / timings[shortest]
        print(
            f"{n:>12,} characters  {spent:8.4f} s   x{growth:6.2f} the time of {shortest:,} "
            f"for x{n / shortest:.2f} the length (quadratic: x{(n / shortest) ** 2:.2f})"
        )


if __name__ == "__main__":
    main()
