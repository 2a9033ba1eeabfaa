"""Exact cosine k-NN over a memmapped corpus: ``_search.cosine_kneighbors`` against scikit-learn.

Searched: ``--documents`` x ``--dim`` float32 unit rows (Gaussian directions), written once to a
``.npy`` file under ``/tmp`` and opened with ``mmap_mode="r"``, the way a fitted
``InstructorRetriever`` holds its embeddings; queries are ``--queries`` unit rows, ``k`` = 10.
Compared, each called as a user would:

* ``ours``: ``cosine_kneighbors(queries, corpus, k, corpus_is_normalized=True)``, as
  ``InstructorRetriever.kneighbors`` calls it (default ``query_chunk=512, corpus_chunk=8192``);
* ``sklearn NN cosine``: ``NearestNeighbors(metric="cosine", algorithm="brute").fit(corpus)``
  then ``.kneighbors(queries, k)`` (``fit`` untimed);
* ``sklearn chunked``: ``sklearn.metrics.pairwise_distances_chunked(queries, corpus,
  metric="cosine", reduce_func=...)``, the reduce function an ``argpartition`` top-k then a
  stable sort of the k;
* ``sklearn NN euclid``: ``NearestNeighbors(metric="euclidean", algorithm="brute")`` on the
  unit rows (same ranking as cosine, cosine distance = euclidean**2 / 2), which sklearn serves
  with its compiled ``ArgKmin`` reduction instead of ``pairwise_distances_chunked``.

Each (method, query count) runs in a fresh interpreter that first reads every page of the
memmap (so the file is in the page cache and its pages already count in the RSS), builds the
method ("setup": ``fit``, printed apart) and warms it up on one query, then times one call and
records two memory figures for it: the peak RSS growth during the call (``VmHWM`` after
resetting it through ``/proc/self/clear_refs``, with ``getrusage`` as a fallback) and, in a
second call, the peak of numpy's allocations traced by ``tracemalloc`` (which does not see the
C buffers of sklearn's ``ArgKmin``: the RSS column does). Times and memory are medians over
``--repeats`` rounds, the methods taking turns in a rotating order. ``ours`` is loaded from a
copy of ``sk_instructor/_search.py`` taken at the start (its sha1 is printed), so edits made
to the package during a run do not reach it. The indices of every method are checked against
ours: a row counts as agreeing when the neighbour sets are equal, or when they differ only
between neighbours whose exact (float64) distances are within ``--tie-tol`` (a near tie that
float32 rounding may order either way). The machine is shared: only same-run ratios mean much.

    python benchmarks/search_vs_sklearn.py                        # 1,000,000 x 384
    python benchmarks/search_vs_sklearn.py --documents 100000 --repeats 1
    python benchmarks/search_vs_sklearn.py --methods ours "sklearn chunked" --queries 1 100
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

METHODS = ("ours", "sklearn NN cosine", "sklearn chunked", "sklearn NN euclid")
_MiB = 2**20


# --------------------------------------------------------------------------------------------
# The child process: one method, one query count.


def _load_search_module(path: str):
    """``sk_instructor/_search.py`` from the copy the parent took: one version for the whole
    run, without importing the rest of the package."""
    spec = importlib.util.spec_from_file_location("_search_snapshot", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _searcher(method: str, corpus: np.ndarray, k: int, search_module: str):
    """A ``queries -> (distances, indices)`` function for ``method``, its setup done."""
    if method == "ours":
        cosine_kneighbors = _load_search_module(search_module).cosine_kneighbors
        return lambda queries: cosine_kneighbors(queries, corpus, k, corpus_is_normalized=True)
    if method == "sklearn NN cosine":
        from sklearn.neighbors import NearestNeighbors

        index = NearestNeighbors(metric="cosine", algorithm="brute").fit(corpus)
        return lambda queries: index.kneighbors(queries, k)
    if method == "sklearn chunked":
        from sklearn.metrics import pairwise_distances_chunked

        def top_k(distances: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
            indices = np.argpartition(distances, k - 1, axis=1)[:, :k]
            nearest = np.take_along_axis(distances, indices, axis=1)
            order = np.argsort(nearest, axis=1, kind="stable")
            return (
                np.take_along_axis(nearest, order, axis=1),
                np.take_along_axis(indices, order, axis=1),
            )

        def search(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            chunks = list(
                pairwise_distances_chunked(queries, corpus, metric="cosine", reduce_func=top_k)
            )
            return np.vstack([d for d, _ in chunks]), np.vstack([i for _, i in chunks])

        return search
    if method == "sklearn NN euclid":
        from sklearn.neighbors import NearestNeighbors
        from sklearn.preprocessing import normalize

        index = NearestNeighbors(metric="euclidean", algorithm="brute").fit(corpus)

        def search(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            distances, indices = index.kneighbors(normalize(queries), k)
            return distances**2 / 2, indices

        return search
    raise ValueError(f"unknown method {method!r}")


def _rss_high_water_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / _MiB


def _reset_rss_high_water() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _child(
    method: str, corpus_path: str, queries_path: str, k: int, out: str, search_module: str
) -> None:
    # Imports out of the setup figures below.
    for module in ("sklearn.metrics", "sklearn.neighbors", "sklearn.preprocessing"):
        importlib.import_module(module)
    _load_search_module(search_module)

    corpus = np.load(corpus_path, mmap_mode="r")
    queries = np.load(queries_path)
    # Read every page of the memmap: it is then in the page cache and in this process's RSS
    # for every method alike, so the RSS growth below is the memory a method allocates.
    for start in range(0, corpus.shape[0], 65536):
        float(np.asarray(corpus[start : start + 65536]).sum())
    setup_rss = _rss_now_mib()
    setup_started = time.perf_counter()
    search = _searcher(method, corpus, k, search_module)
    setup_seconds = time.perf_counter() - setup_started
    setup_rss = _rss_now_mib() - setup_rss
    search(queries[:1])  # warm up: BLAS threads, lazy imports, first-call paths

    reset = _reset_rss_high_water()
    before = _rss_now_mib() if reset else _rss_high_water_mib()
    started = time.perf_counter()
    distances, indices = search(queries)
    seconds = time.perf_counter() - started
    rss_growth = _rss_high_water_mib() - before
    del distances, indices

    tracemalloc.start()
    distances, indices = search(queries)
    traced_peak = tracemalloc.get_traced_memory()[1] / _MiB
    tracemalloc.stop()

    np.save(out + ".indices.npy", np.asarray(indices))
    np.save(out + ".distances.npy", np.asarray(distances, dtype=np.float64))
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rss_growth_mib": rss_growth,
                "rss_exact": reset,
                "traced_peak_mib": traced_peak,
                "setup_seconds": setup_seconds,
                "setup_rss_mib": setup_rss,
            }
        )
    )


# --------------------------------------------------------------------------------------------
# The parent: data, rounds, agreement, table.


def _write_corpus(path: Path, n_docs: int, dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    corpus = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_docs, dim))
    for start in range(0, n_docs, 65536):
        block = rng.standard_normal((min(65536, n_docs - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        corpus[start : start + len(block)] = block
    corpus.flush()
    del corpus


def _run_child(method: str, corpus: Path, queries: Path, k: int, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", method, str(corpus), str(queries), str(k)]
    search_module = corpus.parent / "_search_snapshot.py"
    result = subprocess.run(
        [*command, str(out), str(search_module)],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _agreement(
    corpus: np.ndarray,
    queries: np.ndarray,
    reference: np.ndarray,
    other: np.ndarray,
    tie_tol: float,
) -> tuple[int, int, int]:
    """Rows with the same index set, rows that differ only by near ties, rows that differ."""
    same = near_tie = differ = 0
    unit_queries = queries.astype(np.float64)
    unit_queries /= np.linalg.norm(unit_queries, axis=1, keepdims=True)
    for row, (ours, theirs) in enumerate(zip(reference, other, strict=True)):
        if set(ours.tolist()) == set(theirs.tolist()):
            same += 1
            continue
        query = unit_queries[row]
        exact = [
            np.sort(1 - corpus[np.sort(ids)].astype(np.float64) @ query) for ids in (ours, theirs)
        ]
        if np.abs(exact[0] - exact[1]).max() <= tie_tol:
            near_tie += 1
        else:
            differ += 1
    return same, near_tie, differ


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians are printed")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--tie-tol", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the .npy files under /tmp")
    args = parser.parse_args(argv)
    print(f"options: {vars(args)}")
    print(f"cpus: {os.cpu_count()}, load average at start: {os.getloadavg()}")

    folder = Path(tempfile.mkdtemp(prefix="search_vs_sklearn_", dir="/tmp"))
    corpus_path = folder / "corpus.npy"
    try:
        source = Path(__file__).resolve().parents[1] / "sk_instructor" / "_search.py"
        shutil.copyfile(source, folder / "_search_snapshot.py")
        digest = hashlib.sha1(source.read_bytes()).hexdigest()[:12]
        print(f"ours: {source} (sha1 {digest}), copied once for the whole run")
        started = time.perf_counter()
        _write_corpus(corpus_path, args.documents, args.dim, args.seed)
        size = corpus_path.stat().st_size / _MiB
        print(f"corpus {corpus_path} ({size:.0f} MiB) in {time.perf_counter() - started:.1f} s")
        rng = np.random.default_rng(args.seed + 1)
        query_paths = {}
        for n_queries in args.queries:
            queries = rng.standard_normal((n_queries, args.dim), dtype=np.float32)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            query_paths[n_queries] = folder / f"queries_{n_queries}.npy"
            np.save(query_paths[n_queries], queries)

        runs: dict[tuple[str, int], list[dict]] = {}
        for repeat in range(args.repeats):
            shift = repeat % len(args.methods)
            order = args.methods[shift:] + args.methods[:shift]
            for n_queries in args.queries:
                for method in order:
                    out = folder / f"{method.replace(' ', '_')}_{n_queries}"
                    run = _run_child(method, corpus_path, query_paths[n_queries], args.k, out)
                    runs.setdefault((method, n_queries), []).append(run)
                    print(
                        f"  round {repeat + 1} {method:18s} {n_queries:5d} queries "
                        f"{run['seconds']:8.3f} s  RSS +{run['rss_growth_mib']:7.1f} MiB  "
                        f"traced {run['traced_peak_mib']:7.1f} MiB  (setup "
                        f"{run['setup_seconds']:.2f} s, +{run['setup_rss_mib']:.0f} MiB)",
                        flush=True,
                    )

        corpus = np.load(corpus_path, mmap_mode="r")
        print()
        print(
            f"{args.documents:,} x {args.dim} float32 memmap, k={args.k}, medians of "
            f"{args.repeats} round(s); memory = growth during the call; setup = fit (untimed "
            "above) and its RSS growth"
        )
        header = (
            f"{'method':18s} {'queries':>7s} {'time s':>9s} {'vs ours':>8s} "
            f"{'peak RSS MiB':>12s} {'numpy peak MiB':>14s} {'setup':>16s}  agreement with ours"
        )
        print(header)
        print("-" * len(header))
        for n_queries in args.queries:
            queries = np.load(query_paths[n_queries])
            ours_seconds = None
            if "ours" in args.methods:
                ours_seconds = statistics.median(r["seconds"] for r in runs["ours", n_queries])
                reference = np.load(folder / f"ours_{n_queries}.indices.npy")
            for method in args.methods:
                results = runs[method, n_queries]
                seconds = statistics.median(r["seconds"] for r in results)
                rss = statistics.median(r["rss_growth_mib"] for r in results)
                traced = statistics.median(r["traced_peak_mib"] for r in results)
                setup_s = statistics.median(r["setup_seconds"] for r in results)
                setup_mib = statistics.median(r["setup_rss_mib"] for r in results)
                setup = f"{setup_s:.2f} s, +{setup_mib:.0f} MiB"
                ratio = f"{seconds / ours_seconds:7.2f}x" if ours_seconds else "       -"
                agreement = "-"
                if ours_seconds is not None and method != "ours":
                    other = np.load(folder / f"{method.replace(' ', '_')}_{n_queries}.indices.npy")
                    same, near, differ = _agreement(corpus, queries, reference, other, args.tie_tol)
                    agreement = f"{same} same, {near} near-tie, {differ} differ"
                print(
                    f"{method:18s} {n_queries:7d} {seconds:9.3f} {ratio:>8s} "
                    f"{rss:12.1f} {traced:14.1f} {setup:>16s}  {agreement}"
                )
        del corpus
        print(f"load average at end: {os.getloadavg()}")
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--child":
        _child(*sys.argv[2:5], int(sys.argv[5]), *sys.argv[6:8])
    else:
        main()
