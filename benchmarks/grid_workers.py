"""GridSearchCV over instructions at n_jobs 1, 2 and 3: texts encoded against distinct pairs.

Part 1, the search. 3 instructions x 2 settings of a costly classifier (gradient boosting, so
that workers pay off) x 3 folds, plus the refit, on real text (paragraphs of the mini 20
Newsgroups posts in gensim's test data, labelled by group) with the real all-MiniLM-L6-v2. Each
configuration runs in a fresh interpreter (its own worker processes, its own default cache),
with a disk cache in a new folder and with the default ``cache="memory"``. Printed per run: the
texts the encoder ran on (the cache's ``encoded``: every process's, workers included) against
the distinct (instruction, text) pairs, and the wall time of ``search.fit`` (the workers'
start and model loading included).

Part 2, readers. One disk cache, then 1 and 4 processes (started together) that each make the
same number of small lookups in it, and 4 again while another process stores batches all
along; printed: each reader's wall and CPU seconds (means). A lookup that wrote (its counts, in
sk_instructor 0.2) was a write transaction: readers queued for the write lock, behind each
other and behind the writer.

    python benchmarks/grid_workers.py                 # both parts, a few minutes on 2 cores
    python benchmarks/grid_workers.py --limit 120     # quicker look
    python benchmarks/grid_workers.py --part readers
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

INSTRUCTIONS = [
    "Represent the sentence for classification: ",
    "Represent the Science document for classification: ",
    "Represent the Religion post for classifying its topic: ",
]


# -- part 1: the search ------------------------------------------------------------------------


def run_one(n_jobs: int, cache_kind: str, limit: int, model: str) -> dict:
    """One search in this (fresh) interpreter; returns its figures."""
    from cache_grid_search import newsgroup_paragraphs
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline

    from sk_instructor import DiskCache, InstructorVectorizer, default_memory_cache

    texts, labels = newsgroup_paragraphs(limit)
    folder = tempfile.mkdtemp(prefix="grid-workers-")
    cache = DiskCache(folder) if cache_kind == "disk" else "memory"
    pipeline = Pipeline(
        [
            ("vectorizer", InstructorVectorizer(model, device="cpu", cache=cache)),
            ("classifier", GradientBoostingClassifier(n_estimators=60, random_state=0)),
        ]
    )
    search = GridSearchCV(
        pipeline,
        {"vectorizer__instruction": INSTRUCTIONS, "classifier__max_depth": [2, 3]},
        cv=StratifiedKFold(3, shuffle=True, random_state=0),
        n_jobs=n_jobs,
        error_score="raise",
    )
    start = time.perf_counter()
    search.fit(texts, labels)
    seconds = time.perf_counter() - start
    stats = cache.stats() if cache_kind == "disk" else default_memory_cache().stats()
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "n_jobs": n_jobs,
        "cache": cache_kind,
        "seconds": seconds,
        "encoded": stats.encoded,
        "distinct": len({(i, t.strip()) for i in INSTRUCTIONS for t in texts}),
        "scores": [round(float(s), 12) for s in search.cv_results_["mean_test_score"]],
    }


def part_search(limit: int, model: str, jobs: list[int], caches: list[str]) -> None:
    print(
        f"== search: {limit} texts x {len(INSTRUCTIONS)} instructions, 2 max_depth, 3 folds "
        f"(+ refit), GradientBoostingClassifier(n_estimators=60), {os.cpu_count()} cores"
    )
    print(f"{'cache':<8}{'n_jobs':>7}{'encoded':>9}{'distinct':>10}{'wasted':>8}{'seconds':>9}")
    reference: dict[str, list[float]] = {}
    for cache_kind in caches:
        for n_jobs in jobs:
            options = ["--limit", str(limit), "--model", model]
            done = subprocess.run(
                [sys.executable, __file__, "--one", str(n_jobs), cache_kind, *options],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(done.stderr)
                raise SystemExit(f"the n_jobs={n_jobs} {cache_kind} run failed")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            wasted = 1 - result["distinct"] / result["encoded"] if result["encoded"] else 0.0
            same = reference.setdefault(cache_kind, result["scores"]) == result["scores"]
            print(
                f"{cache_kind:<8}{n_jobs:>7}{result['encoded']:>9}{result['distinct']:>10}"
                f"{wasted:>8.0%}{result['seconds']:>9.1f}"
                + ("" if same else "   cv scores differ from n_jobs=1!")
            )


# -- part 2: readers -----------------------------------------------------------------------------

_READER = """
import os, sys, time
import numpy as np
from sk_instructor._cache import DiskCache
path, n_lookups, n_keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cache = DiskCache(path)
cache.get_many(["key-0"])  # open the file before the clock starts
rng = np.random.default_rng(os.getpid())
sys.stdin.readline()  # every reader is up: go
wall, cpu = time.perf_counter(), time.process_time()
for _ in range(n_lookups):
    found = cache.get_many([f"key-{i}" for i in rng.integers(0, n_keys, 8)])
    assert all(vector is not None for vector in found)
print(time.perf_counter() - wall, time.process_time() - cpu)
"""


_WRITER = """
import sys
import numpy as np
from sk_instructor._cache import DiskCache
cache = DiskCache(sys.argv[1])
vectors = np.ones((64, 384), np.float32)
print("ready", flush=True)
for batch in range(10**9):  # until killed: stores a batch, then the next
    cache.put_many([f"written-{batch}-{i}" for i in range(64)], vectors)
"""


def part_readers(n_lookups: int, counts: list[int]) -> None:
    import numpy as np

    from sk_instructor import DiskCache

    n_keys, dim = 2000, 384
    folder = tempfile.mkdtemp(prefix="grid-workers-readers-")
    cache = DiskCache(folder)
    vectors = np.random.default_rng(0).standard_normal((n_keys, dim)).astype(np.float32)
    cache.put_many([f"key-{i}" for i in range(n_keys)], vectors)
    cache.close()
    print(
        f"== readers: each makes {n_lookups} lookups of 8 keys in one disk cache "
        f"({n_keys} vectors of {dim}), {os.cpu_count()} cores"
    )
    print(f"{'readers':<13}{'wall s each':>16}{'CPU s each':>19}{'wall / CPU':>12}")
    for count, writing in [(count, False) for count in counts] + [(counts[-1], True)]:
        writer = None
        if writing:  # another process stores batches all along
            writer = subprocess.Popen(
                [sys.executable, "-c", _WRITER, folder], stdout=subprocess.PIPE, text=True
            )
            writer.stdout.readline()
        readers = [
            subprocess.Popen(
                [sys.executable, "-c", _READER, folder, str(n_lookups), str(n_keys)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        for reader in readers:
            reader.stdin.write("go\n")
            reader.stdin.flush()
        figures = [tuple(map(float, reader.communicate()[0].split())) for reader in readers]
        if writer is not None:
            writer.kill()
            writer.wait()
        wall = sum(f[0] for f in figures) / count
        cpu = sum(f[1] for f in figures) / count
        name = f"{count} + a writer" if writing else str(count)
        print(f"{name:<13}{wall:>16.2f}{cpu:>19.2f}{wall / cpu:>12.2f}")
    shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["search", "readers", "both"], default="both")
    parser.add_argument("--limit", type=int, default=300, help="texts in the search")
    parser.add_argument("--model", default="minilm", help="minilm or a model folder")
    parser.add_argument("--jobs", default="1,2,3", help="n_jobs values, comma-separated")
    parser.add_argument("--caches", default="disk,memory", help="disk and/or memory")
    parser.add_argument("--lookups", type=int, default=2000, help="lookups per reader")
    parser.add_argument("--one", nargs=2, metavar=("N_JOBS", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), args.one[1], args.limit, args.model)))
        return
    print(" ".join(sys.argv))
    if args.part in ("search", "both"):
        from _corpus import model_path

        with tempfile.TemporaryDirectory() as work:
            model = str(model_path(args.model, work))
            part_search(
                args.limit, model, [int(n) for n in args.jobs.split(",")], args.caches.split(",")
            )
    if args.part in ("readers", "both"):
        part_readers(args.lookups, [1, 4])


if __name__ == "__main__":
    main()
