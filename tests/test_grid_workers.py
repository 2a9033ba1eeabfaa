"""GridSearchCV at any n_jobs: each distinct (model, instruction, text) encoded once per search.

Processes sharing a disk cache claim the keys they are about to encode; the others wait for
those keys instead of encoding them, and take over the claims of a process that died. Reading
the cache never writes to it. Worker processes of a search with the default ``cache="memory"``
share their vectors through a disk tier that lives as long as the process that started them.

The claim protocol is exercised from real separate processes (the cache layer alone, without
torch, so that a process starts in a fraction of a second), synchronised by what they print or
the files they write, never by sleeping; deadlines are hang guards only.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from test_cache_integration import INSTRUCTIONS, TEXTS, grid_search

from sk_instructor import InstructorVectorizer
from sk_instructor._cache import DiskCache, MemoryCache
from sk_instructor._cache.coordination import encode_once

REPO_ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD = 600  # seconds: only ever reached when something hangs

# The cache layer in a process of its own, without sk_instructor/__init__.py and its imports.
LOAD_CACHE_MODULE = f"""
import sys, types
_package = types.ModuleType("sk_instructor")
_package.__path__ = [{str(REPO_ROOT / "sk_instructor")!r}]
sys.modules["sk_instructor"] = _package
from sk_instructor._cache import DiskCache
from sk_instructor._cache.coordination import encode_once
"""

# Gets the vectors of keys [start, stop) through encode_once, as the engine does: "encoding"
# key-i gives expected_vector(i). Options: --go waits for a line on stdin before starting;
# --hold blocks forever in its first encoding, after writing the file named next; --mark FILE
# writes FILE when it first waits for key-0 (held by another process).
CLAIMANT = (
    LOAD_CACHE_MODULE
    + """
import json, sys
import numpy as np

path, start, stop, dim, block = sys.argv[1], *map(int, sys.argv[2:6])
options = sys.argv[6:]
if "--go" in options:
    sys.stdin.readline()

def expected(i):
    return np.arange(dim, dtype=np.float32) + np.float32(i) * 1000

class Marking(DiskCache):
    def wait_for(self, keys):
        if "--mark" in options and "key-0" in keys:
            open(options[options.index("--mark") + 1], "w").close()
        return super().wait_for(keys)

cache = Marking(path)
keys = [f"key-{i}" for i in range(start, stop)]
encoded, found, calls = [], [], []

def encode(positions):
    calls.append(1)
    if "--hold" in options and len(calls) == 1:
        open(options[options.index("--hold") + 1], "w").close()
        sys.stdin.readline()  # never answered: this process is killed holding its claims
    vectors = np.stack([expected(start + int(p)) for p in positions])
    cache.put_many([keys[p] for p in positions], vectors)
    cache.record_encoded(len(positions))
    encoded.extend(int(p) for p in positions)

def accept(positions, vectors):
    for p, vector in zip(positions, vectors):
        assert np.array_equal(vector, expected(start + int(p))), p
    found.extend(int(p) for p in positions)

encode_once(cache, keys, dim=dim, encode=encode, found=accept, block=block)
assert sorted(encoded + found) == list(range(stop - start)), "every key exactly once"
print(json.dumps({"encoded": len(encoded), "found": len(found)}), flush=True)
"""
)


def expected_vector(index: int, dim: int) -> np.ndarray:
    return np.arange(dim, dtype=np.float32) + np.float32(index) * 1000


def python_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def start_claimant(folder, start, stop, *options, dim=16, block=50) -> subprocess.Popen:
    arguments = [folder, start, stop, dim, block, *options]
    return subprocess.Popen(
        [sys.executable, "-c", CLAIMANT, *map(str, arguments)],
        env=python_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result_of(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=HANG_GUARD)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def wait_for_file(path: Path, *processes: subprocess.Popen) -> None:
    """Wait until ``path`` exists; fail at once if one of ``processes`` ended meanwhile."""
    import time

    deadline = time.monotonic() + HANG_GUARD
    while not path.exists():
        for process in processes:
            if process.poll() is not None:
                pytest.fail(f"a claimant ended early:\n{process.communicate()[1]}")
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def assert_holds_every_key(folder, count: int, dim: int) -> None:
    cache = DiskCache(folder)
    found = cache.get_many([f"key-{i}" for i in range(count)])
    for index, vector in enumerate(found):
        np.testing.assert_array_equal(vector, expected_vector(index, dim))
    cache.close()


def claims_left(folder) -> int:
    raw = sqlite3.connect(Path(folder) / "embeddings.sqlite3")
    try:
        return raw.execute("SELECT count(*) FROM claims").fetchone()[0]
    finally:
        raw.close()


# -- exactly once across processes ------------------------------------------------------------


def test_three_processes_on_overlapping_keys_encode_each_key_once(tmp_path):
    ranges = [(0, 600), (200, 800), (400, 1000)]
    claimants = [start_claimant(tmp_path, start, stop, "--go") for start, stop in ranges]
    for claimant in claimants:  # every one is up and waiting: release them together
        claimant.stdin.write("go\n")
        claimant.stdin.flush()
    results = [result_of(claimant) for claimant in claimants]

    assert sum(result["encoded"] for result in results) == 1000
    stats = DiskCache(tmp_path).stats()
    assert (stats.encoded, stats.entries) == (1000, 1000)
    assert_holds_every_key(tmp_path, 1000, dim=16)
    assert claims_left(tmp_path) == 0


def test_the_claims_of_a_killed_process_are_taken_over_and_nothing_is_lost(tmp_path):
    holding, waiting = tmp_path / "holding", [tmp_path / "a-waits", tmp_path / "b-waits"]
    store = tmp_path / "store"
    # The first process claims keys 0-99 and is stopped in the middle of encoding them.
    holder = start_claimant(store, 0, 300, "--hold", holding, block=100)
    try:
        wait_for_file(holding, holder)
        # Two more want keys 0-299: they share 100-299 and then wait for the holder's keys.
        others = [start_claimant(store, 0, 300, "--mark", mark, block=40) for mark in waiting]
        for mark in waiting:
            wait_for_file(mark, *others)
        holder.send_signal(signal.SIGKILL)  # out of memory, say: no exit path runs
        holder.communicate(timeout=HANG_GUARD)
        assert holder.returncode == -signal.SIGKILL
        results = [result_of(process) for process in others]
    finally:
        holder.kill()  # a no-op once it has ended
        holder.wait()

    assert sum(result["encoded"] for result in results) == 300
    assert DiskCache(store).stats().encoded == 300  # the holder stored (and counted) nothing
    assert_holds_every_key(store, 300, dim=16)
    assert claims_left(store) == 0
    owners = Path(f"{store / 'embeddings.sqlite3'}-owners")
    assert not any(owners.glob(f"{holder.pid}-*")), "the dead owner's lock file is removed"


def test_claims_are_released_when_encoding_raises(tmp_path):
    cache = DiskCache(tmp_path)
    keys = [f"key-{i}" for i in range(10)]

    def failing(positions):
        raise RuntimeError("the encoder failed")

    with pytest.raises(RuntimeError, match="encoder failed"):
        encode_once(cache, keys, dim=4, encode=failing, found=None, block=None)
    assert claims_left(tmp_path) == 0
    other = DiskCache(tmp_path / "embeddings.sqlite3")  # another object, as in another process
    assert other.claim(keys) == keys
    other.release(keys)
    cache.close()
    other.close()


def test_a_process_claims_nothing_another_live_process_holds(tmp_path):
    first, second = DiskCache(tmp_path), DiskCache(tmp_path / "embeddings.sqlite3")
    keys = [f"key-{i}" for i in range(6)]
    assert first.claim(keys, limit=4) == keys[:4]
    assert second.claim(keys) == keys[4:]
    assert second.claim(keys) == []  # all held (by second itself, too: another thread's)
    first.put_many(keys[:2], np.ones((2, 4), np.float32))  # stored: no longer claimed
    assert second.wait_for(keys) == keys[:2]
    first.release(keys[:4])  # the other two, unstored, are free to claim again
    assert second.wait_for(keys) == keys[:4]
    assert second.claim(keys) == keys[:4]  # stored or not: the claimant reads them first
    second.release(keys)
    first.close()
    second.close()


def test_memory_and_custom_caches_grant_every_claim():
    cache = MemoryCache()
    keys = ["a", "b", "c"]
    assert cache.claim(keys, limit=1) == keys
    assert cache.wait_for(keys) == keys
    cache.release(keys)


def test_a_failing_transform_leaves_no_claim_behind(tiny_t5_path, tmp_path, monkeypatch):
    from sk_instructor._engine.model import EmbeddingModel

    texts = [f"row {k} " + "x " * (k % 9) for k in range(40)]
    cache = DiskCache(tmp_path)
    real_forward, calls = EmbeddingModel._forward, []

    def failing_forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure in the second batch")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(EmbeddingModel, "_forward", failing_forward)
    vectorizer = InstructorVectorizer(tiny_t5_path, device="cpu", cache=cache, batch_size=8)
    with pytest.raises(RuntimeError, match="second batch"):
        vectorizer.fit_transform(texts)
    assert claims_left(tmp_path) == 0
    monkeypatch.setattr(EmbeddingModel, "_forward", real_forward)
    vectorizer.fit_transform(texts)
    assert cache.stats().encoded == 40  # 8 before the failure, the other 32 after
    cache.close()


# -- reading never writes ---------------------------------------------------------------------


def test_a_read_proceeds_while_another_connection_holds_the_write_lock(tmp_path):
    cache = DiskCache(tmp_path, timeout=0.05)
    cache.put_many(["key-0"], expected_vector(0, 8)[None])
    blocker = sqlite3.connect(cache.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock however long the reader waits
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a lookup that had to write would warn here
            found = cache.get_many(["key-0", "key-1"])
            assert cache.stats().hits == 1 and cache.stats().misses == 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    np.testing.assert_array_equal(found[0], expected_vector(0, 8))
    # The counts are written with this process's next write.
    cache.put_many(["key-2"], expected_vector(2, 8)[None])
    raw = sqlite3.connect(cache.path)
    assert raw.execute("SELECT hits, misses FROM usage").fetchone() == (1, 1)
    raw.close()
    cache.close()


def test_a_store_of_this_version_without_a_claims_table_gets_one(tmp_path):
    cache = DiskCache(tmp_path)
    cache.put_many(["key-0"], expected_vector(0, 4)[None])
    cache.close()
    raw = sqlite3.connect(cache.path)
    raw.execute("DROP TABLE claims")  # as a store written by sk_instructor 0.2 has it
    raw.commit()
    raw.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # added in place, not rebuilt
        reopened = DiskCache(tmp_path)
        assert reopened.claim(["key-1"]) == ["key-1"]
        assert reopened.get_many(["key-0"])[0] is not None
    reopened.release(["key-1"])
    reopened.close()


# -- GridSearchCV with workers ----------------------------------------------------------------
# The search and its data are those of test_cache_integration (one process, one cache).


def scores(search: GridSearchCV) -> dict:
    return {
        name: values.tolist() if isinstance(values, np.ndarray) else values
        for name, values in search.cv_results_.items()
        if "time" not in name  # durations differ from run to run
    }


@pytest.mark.slow
def test_grid_search_with_two_workers_encodes_each_pair_once(tiny_t5_path, tmp_path):
    alone = DiskCache(tmp_path / "one-process")
    reference = grid_search(tiny_t5_path, alone, n_jobs=1)
    shared = DiskCache(tmp_path / "two-workers")
    search = grid_search(tiny_t5_path, shared, n_jobs=2)

    distinct = len(INSTRUCTIONS) * len(TEXTS)
    assert alone.stats().encoded == distinct
    assert shared.stats().encoded == distinct
    assert scores(search) == scores(reference)
    assert search.best_params_ == reference.best_params_
    assert claims_left(tmp_path / "two-workers") == 0


_DEFAULT_CACHE_SEARCH = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[2])
    from test_grid_workers import grid_search, INSTRUCTIONS, TEXTS
    from sk_instructor import default_memory_cache
    from sk_instructor._cache import memory

    search = grid_search(sys.argv[1], "memory", n_jobs=2)
    print(json.dumps({
        "encoded": default_memory_cache().stats().encoded,
        "folder": str(memory._FOLDER_FOR_WORKERS[1]),
        "best": search.best_score_,
    }))
    """
)


@pytest.mark.slow
def test_workers_of_a_search_share_the_default_memory_cache(tiny_t5_path):
    # In a process of its own: the search shares this process's default cache with its
    # workers through a temporary folder, removed when the process exits.
    tests = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-c", _DEFAULT_CACHE_SEARCH, str(tiny_t5_path), str(tests)],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["encoded"] == len(INSTRUCTIONS) * len(TEXTS)
    assert not Path(result["folder"]).exists(), "the workers' folder outlived the search process"


def test_a_live_process_that_stopped_is_waited_for_only_so_long(tmp_path, monkeypatch):
    from sk_instructor._cache import disk

    stuck, waiting = DiskCache(tmp_path), DiskCache(tmp_path / "embeddings.sqlite3")
    keys = [f"key-{i}" for i in range(3)]
    assert stuck.claim(keys) == keys  # and never stores or releases them
    monkeypatch.setattr(disk, "_CLAIM_WAIT", -1.0)  # the deadline has passed at the first look
    with pytest.warns(RuntimeWarning, match="has not encoded; encoding them here"):
        assert waiting.wait_for(keys) == keys
    assert waiting.claim(keys) == keys  # taken over
    waiting.release(keys)
    stuck.close()
    waiting.close()


def test_a_worker_loading_a_model_onto_an_accelerator_says_so(monkeypatch):
    import multiprocessing

    from sk_instructor._engine import entry

    entry._warn_if_a_worker_on_an_accelerator("cpu", "model")  # a CPU: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entry._warn_if_a_worker_on_an_accelerator("cuda:0", "model")  # not a worker
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())  # a pool's worker
    with pytest.warns(RuntimeWarning, match="loads its own copy of 'model' onto cuda:0"):
        entry._warn_if_a_worker_on_an_accelerator("cuda:0", "model")


def test_a_vectorizer_unpickled_outside_a_worker_leaves_the_default_cache_alone(tiny_t5_path):
    import pickle

    from sk_instructor import default_memory_cache

    vectorizer = InstructorVectorizer(tiny_t5_path, cache="memory")
    pid, folder = vectorizer.__getstate__()["_sk_instructor_workers_folder"]
    assert pid == os.getpid() and Path(folder).is_dir()  # made for the workers, removed at exit
    restored = pickle.loads(pickle.dumps(vectorizer))  # this process: not a worker of itself
    assert "_sk_instructor_workers_folder" not in vars(restored)
    assert restored.get_params() == vectorizer.get_params()
    assert not default_memory_cache().shared  # until a worker stores a vector in the folder
    assert (
        "_sk_instructor_workers_folder"
        not in InstructorVectorizer(tiny_t5_path, cache=None).__getstate__()
    )
