"""The embedding cache's storage layer: keys, in-memory and on-disk stores, model fingerprints.

Each test is named after the promise it checks; the on-disk store is exercised from real
separate processes, since that is how GridSearchCV(n_jobs=2) workers and later sessions use it.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import BaseEstimator, clone

from sk_instructor._cache import (
    CacheStats,
    DiskCache,
    EmbeddingCache,
    MemoryCache,
    default_memory_cache,
    make_key,
    resolve_cache,
)
from sk_instructor._cache import keys as cache_keys
from sk_instructor._engine import identity
from sk_instructor._engine.identity import fingerprint_folder

REPO_ROOT = Path(__file__).resolve().parents[1]

KEY_FIELDS = {
    "model_fingerprint": "hub:hkunlp/instructor-base@" + "0" * 40,
    "instruction": "Represent the sentence:",
    "max_seq_length": 512,
    "dtype": "float32",
    "normalize": True,
    "pooling": "mean",
    "text": "hello world",
}


def expected_vector(index: int, dim: int) -> np.ndarray:
    """The vector every test writer stores under ``key-{index}``: checkable by any reader."""
    return np.arange(dim, dtype=np.float32) + np.float32(index) * 1000


def batch(indices: range | list[int], dim: int) -> tuple[list[str], np.ndarray]:
    indices = list(indices)
    return [f"key-{i}" for i in indices], np.stack([expected_vector(i, dim) for i in indices])


# Code run in separate Python processes. It imports the _cache subpackage without running
# sk_instructor/__init__.py (the cache needs only numpy, cachetools and the standard library), so
# that a process starts in a fraction of a second, without the package's heavier imports.
LOAD_CACHE_MODULE = f"""
import sys, types
_package = types.ModuleType("sk_instructor")
_package.__path__ = [{str(REPO_ROOT / "sk_instructor")!r}]
sys.modules["sk_instructor"] = _package
from sk_instructor._cache import DiskCache
"""

WRITER = (
    LOAD_CACHE_MODULE
    + """
import sys
import numpy as np

path, start, stop, batch_size, dim = sys.argv[1], *map(int, sys.argv[2:6])
if "--wait-for-go" in sys.argv[6:]:  # lets a test start several writers at the same moment
    sys.stdin.readline()
cache = DiskCache(path)
for low in range(start, stop, batch_size):
    ids = range(low, min(low + batch_size, stop))
    vectors = np.stack([np.arange(dim, dtype=np.float32) + np.float32(i) * 1000 for i in ids])
    cache.put_many([f"key-{i}" for i in ids], vectors)
    if low == start:
        print("first batch stored", flush=True)
if "--never-exit" in sys.argv[6:]:  # a writer to kill: it cannot finish before the test kills it
    sys.stdin.readline()
"""
)

READER = (
    LOAD_CACHE_MODULE
    + """
import sys
import numpy as np

path, count, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
found = DiskCache(path).get_many([f"key-{i}" for i in range(count)])
good = sum(
    v is not None and np.array_equal(v, np.arange(dim, dtype=np.float32) + np.float32(i) * 1000)
    for i, v in enumerate(found)
)
print(good)
"""
)


def python_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def run_python(code: str, *args: object, timeout: float = 600) -> str:  # a hang guard only
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"subprocess failed:\n{result.stderr}"
    return result.stdout


def start_writers_together(folder, starts, span: int, batch_size: int, dim: int):
    """Start one WRITER per start and release them at the same moment, once all are up."""
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                *map(str, (folder, start, start + span, batch_size, dim)),
                "--wait-for-go",
            ],
            env=python_env(),
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for start in starts
    ]
    for writer in writers:  # every one is up and waiting: release them together
        writer.stdin.write("go\n")
        writer.stdin.flush()
    return writers


class EstimatorWithCache(BaseEstimator):
    """The smallest sklearn estimator with a ``cache`` parameter, as the vectorizer has."""

    def __init__(self, cache="memory"):
        self.cache = cache


@pytest.fixture
def disk_cache(tmp_path: Path):
    cache = DiskCache(tmp_path / "store")
    yield cache
    cache.close()


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def test_key_is_a_hex_sha256():
    key = make_key(**KEY_FIELDS)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert make_key(**KEY_FIELDS) == key


@pytest.mark.parametrize(
    ("field", "other_value"),
    [
        ("model_fingerprint", "hub:hkunlp/instructor-large@" + "0" * 40),
        ("instruction", "Represent the document:"),
        ("instruction", ""),
        ("max_seq_length", 256),
        ("dtype", "float16"),
        ("normalize", False),
        ("pooling", "cls"),
        ("text", "hello world "),
    ],
)
def test_key_changes_when_any_field_changes(field, other_value):
    assert make_key(**{**KEY_FIELDS, field: other_value}) != make_key(**KEY_FIELDS)


def test_key_has_no_field_concatenation_ambiguity():
    split_one = make_key(**{**KEY_FIELDS, "instruction": "a", "text": "bc"})
    split_two = make_key(**{**KEY_FIELDS, "instruction": "ab", "text": "c"})
    assert split_one != split_two
    assert make_key(**{**KEY_FIELDS, "dtype": "float3", "pooling": "2mean"}) != make_key(
        **{**KEY_FIELDS, "dtype": "float32", "pooling": "mean"}
    )


@settings(max_examples=50, deadline=None)
@given(
    first=st.tuples(st.text(max_size=8), st.text(max_size=8)),
    second=st.tuples(st.text(max_size=8), st.text(max_size=8)),
)
def test_key_is_equal_exactly_when_instruction_and_text_are(first, second):
    def key(pair):
        return make_key(**{**KEY_FIELDS, "instruction": pair[0], "text": pair[1]})

    assert (key(first) == key(second)) == (first == second)


def test_key_accepts_lone_surrogates_in_text():
    assert make_key(**{**KEY_FIELDS, "text": "\udcff"}) != make_key(**{**KEY_FIELDS, "text": ""})


def test_key_changes_with_the_format_version(monkeypatch):
    before = make_key(**KEY_FIELDS)
    monkeypatch.setattr(cache_keys, "CACHE_FORMAT_VERSION", cache_keys.CACHE_FORMAT_VERSION + 1)
    cache_keys._key_prefix.cache_clear()
    try:
        assert make_key(**KEY_FIELDS) != before
    finally:
        cache_keys._key_prefix.cache_clear()


@pytest.mark.parametrize(
    ("field", "bad_value", "error"),
    [
        ("text", None, TypeError),
        ("instruction", b"bytes", TypeError),
        ("max_seq_length", 0, TypeError),
        ("max_seq_length", True, TypeError),
        ("normalize", "yes", TypeError),
        ("model_fingerprint", "", ValueError),
    ],
)
def test_key_rejects_wrong_field_types_naming_the_field(field, bad_value, error):
    with pytest.raises(error, match=field):
        make_key(**{**KEY_FIELDS, field: bad_value})


# --------------------------------------------------------------------------------------------
# Interface shared by both stores
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "disk"])
def any_cache(request, tmp_path):
    if request.param == "memory":
        yield MemoryCache()
    else:
        cache = DiskCache(tmp_path)
        yield cache
        cache.close()


def test_round_trip_returns_read_only_float32_vectors(any_cache):
    keys, vectors = batch(range(3), dim=5)
    any_cache.put_many(keys, vectors)
    vectors[0, 0] = -1  # the cache holds a copy
    found = any_cache.get_many([*keys, "missing"])
    assert found[3] is None
    for index, vector in enumerate(found[:3]):
        assert vector.dtype == np.float32
        assert vector.shape == (5,)
        assert not vector.flags.writeable
        np.testing.assert_array_equal(vector, expected_vector(index, 5))


def test_stats_count_hits_misses_and_encoded(any_cache):
    keys, vectors = batch(range(4), dim=8)
    assert any_cache.get_many(keys) == [None] * 4
    any_cache.record_encoded(4)
    any_cache.put_many(keys, vectors)
    any_cache.get_many([*keys[:2], keys[0], "missing"])
    assert any_cache.stats() == CacheStats(hits=3, misses=5, encoded=4, entries=4, nbytes=4 * 8 * 4)
    assert any_cache.stats().hit_rate == pytest.approx(3 / 8)
    any_cache.reset_stats()
    assert any_cache.stats() == CacheStats(0, 0, 0, entries=4, nbytes=128)
    any_cache.clear()
    assert any_cache.stats() == CacheStats(0, 0, 0, entries=0, nbytes=0)
    assert any_cache.get_many(keys) == [None] * 4


def test_put_many_last_row_wins_for_a_repeated_key(any_cache):
    vectors = np.stack([expected_vector(1, 3), expected_vector(2, 3)])
    any_cache.put_many(["same", "same"], vectors)
    np.testing.assert_array_equal(any_cache.get_many(["same"])[0], expected_vector(2, 3))
    assert any_cache.stats().entries == 1


def test_put_many_overwrites_an_existing_key(any_cache):
    any_cache.put_many(["k"], expected_vector(1, 3)[None])
    any_cache.put_many(["k"], expected_vector(2, 4)[None])
    np.testing.assert_array_equal(any_cache.get_many(["k"])[0], expected_vector(2, 4))
    assert any_cache.stats().nbytes == 16


def test_empty_calls_are_no_ops(any_cache):
    assert any_cache.get_many([]) == []
    any_cache.put_many([], np.empty((0, 4), dtype=np.float32))
    assert any_cache.stats() == CacheStats(0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("keys", "vectors", "error", "message"),
    [
        (["a"], np.ones((1, 3), dtype=np.float64), TypeError, "float32"),
        (["a"], np.ones(3, dtype=np.float32), ValueError, "2-D"),
        (["a", "b"], np.ones((3, 3), dtype=np.float32), ValueError, "2 keys but 3 rows"),
        ("ab", np.ones((2, 3), dtype=np.float32), TypeError, "sequence of str"),
        ([1], np.ones((1, 3), dtype=np.float32), TypeError, "must be a str"),
        (["a"], [[1.0, 2.0]], TypeError, "numpy.ndarray"),
        (["a"], np.ones((1, 0), dtype=np.float32), ValueError, "0 columns"),
    ],
)
def test_put_many_rejects_bad_input_saying_what_was_wrong(any_cache, keys, vectors, error, message):
    with pytest.raises(error, match=message):
        any_cache.put_many(keys, vectors)
    assert any_cache.stats().entries == 0


def test_get_many_rejects_a_bare_string(any_cache):
    with pytest.raises(TypeError, match="sequence of str"):
        any_cache.get_many("key")


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_record_encoded_rejects_anything_but_a_count(any_cache, bad):
    with pytest.raises(ValueError, match="record_encoded"):
        any_cache.record_encoded(bad)


def test_embedding_cache_is_abstract():
    with pytest.raises(TypeError):
        EmbeddingCache()


# --------------------------------------------------------------------------------------------
# MemoryCache
# --------------------------------------------------------------------------------------------


def test_memory_cache_evicts_least_recently_used_by_bytes():
    row_bytes = 4 * 4
    cache = MemoryCache(max_bytes=3 * row_bytes)
    cache.put_many(*batch(range(3), dim=4))
    cache.get_many(["key-0"])  # key-1 is now the least recently used
    cache.put_many(*batch([3], dim=4))
    found = cache.get_many([f"key-{i}" for i in range(4)])
    assert [vector is not None for vector in found] == [True, False, True, True]
    assert cache.stats().nbytes == 3 * row_bytes
    assert cache.stats().entries == 3


def test_memory_cache_bound_counts_bytes_not_entries():
    cache = MemoryCache(max_bytes=100)
    cache.put_many(*batch([0], dim=20))  # 80 bytes
    cache.put_many(*batch([1], dim=5))  # 20 bytes: both fit exactly
    assert cache.stats().entries == 2
    cache.put_many(*batch([2], dim=2))  # 8 more bytes: the 80-byte vector goes
    assert [v is not None for v in cache.get_many(["key-0", "key-1", "key-2"])] == [
        False,
        True,
        True,
    ]


def test_memory_cache_does_not_store_a_vector_larger_than_the_bound():
    cache = MemoryCache(max_bytes=64)
    cache.put_many(*batch([0], dim=4))
    cache.put_many(*batch([1, 2], dim=32))  # 128 bytes each
    assert cache.get_many(["key-0", "key-1", "key-2"])[1:] == [None, None]
    assert cache.stats().entries == 1, "an oversized vector must not evict the others"


@pytest.mark.parametrize("bad", [-1, 1.5, "512MB", None])
def test_memory_cache_rejects_a_bad_bound(bad):
    with pytest.raises(ValueError, match="max_bytes"):
        MemoryCache(max_bytes=bad)


def test_memory_cache_is_thread_safe():
    cache = MemoryCache(max_bytes=200 * 16 * 4)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            rng = np.random.default_rng(seed)
            for _ in range(150):
                ids = rng.integers(0, 400, size=8).tolist()
                cache.put_many(*batch(ids, dim=16))
                for index, vector in zip(
                    ids, cache.get_many([f"key-{i}" for i in ids]), strict=True
                ):
                    if vector is not None:
                        np.testing.assert_array_equal(vector, expected_vector(index, 16))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    stats = cache.stats()
    assert stats.hits + stats.misses == 8 * 150 * 8
    assert stats.nbytes <= cache.max_bytes
    assert stats.nbytes == stats.entries * 16 * 4


# --------------------------------------------------------------------------------------------
# Sharing through clone, deepcopy and pickle
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_clone_and_deepcopy_share_the_cache_object(kind, tmp_path):
    cache = MemoryCache() if kind == "memory" else DiskCache(tmp_path)
    estimator = EstimatorWithCache(cache=cache)
    assert clone(estimator).cache is cache
    assert clone(clone(estimator)).cache is cache
    assert copy.deepcopy(estimator).cache is cache
    assert copy.copy(cache) is cache


def test_pickled_estimator_is_small_and_its_memory_cache_arrives_empty():
    cache = MemoryCache(max_bytes=64 * 2**20)
    cache.put_many(*batch(range(3000), dim=768))  # about 9 MB of vectors
    payload = pickle.dumps(EstimatorWithCache(cache=cache))
    assert len(payload) < 100_000
    restored = pickle.loads(payload).cache
    assert isinstance(restored, MemoryCache)
    assert restored is not cache
    assert restored.max_bytes == cache.max_bytes
    assert restored.stats().entries == 0
    assert cache.stats().entries == 3000


def test_default_memory_cache_unpickles_as_the_process_default():
    shared = default_memory_cache()
    assert default_memory_cache() is shared
    assert pickle.loads(pickle.dumps(shared)) is shared
    assert resolve_cache("memory") is shared


def test_disk_cache_pickles_as_its_path_and_settings(tmp_path):
    cache = resolve_cache(tmp_path)
    cache.put_many(*batch(range(200), dim=64))
    payload = pickle.dumps(EstimatorWithCache(cache=cache))
    assert len(payload) < 2_000
    assert pickle.loads(payload).cache is cache, "unpickling in a process reuses its DiskCache"
    bounded = DiskCache(tmp_path / "bounded", max_bytes=1000, timeout=5)
    restored = pickle.loads(pickle.dumps(bounded))
    assert (restored.path, restored.max_bytes, restored.timeout) == (bounded.path, 1000, 5.0)
    cache.close()


@pytest.mark.slow  # the child imports the whole package to unpickle
def test_disk_cache_unpickled_in_another_process_reads_the_same_file(tmp_path):
    cache = DiskCache(tmp_path)
    cache.put_many(*batch(range(10), dim=4))
    code = (
        "import pickle, sys\n"
        "cache = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
        "print(sum(v is not None for v in cache.get_many([f'key-{i}' for i in range(10)])))\n"
    )
    assert run_python(code, pickle.dumps(cache).hex()).strip() == "10"
    cache.close()


# --------------------------------------------------------------------------------------------
# resolve_cache
# --------------------------------------------------------------------------------------------


def test_resolve_cache_maps_every_accepted_value(tmp_path, monkeypatch):
    assert resolve_cache("memory") is default_memory_cache()
    assert resolve_cache(None) is None
    own = MemoryCache(max_bytes=10)
    assert resolve_cache(own) is own
    on_disk = resolve_cache(str(tmp_path / "store"))
    assert isinstance(on_disk, DiskCache)
    assert on_disk.path == tmp_path / "store" / "embeddings.sqlite3"
    monkeypatch.chdir(tmp_path)
    assert resolve_cache(Path("store")) is on_disk, "one DiskCache per absolute path"
    assert resolve_cache("store") is on_disk


@pytest.mark.parametrize("bad", [3, b"store", True, ["memory"]])
def test_resolve_cache_rejects_other_values_naming_the_parameter(bad):
    with pytest.raises(TypeError, match=r"cache must be 'memory', None, a directory path"):
        resolve_cache(bad)


def test_resolve_cache_rejects_an_empty_path():
    with pytest.raises(ValueError, match="cache must be"):
        resolve_cache("")


# --------------------------------------------------------------------------------------------
# DiskCache
# --------------------------------------------------------------------------------------------


def test_disk_cache_path_is_a_directory_unless_it_names_a_database_file(tmp_path):
    assert DiskCache(tmp_path / "a").path == tmp_path / "a" / "embeddings.sqlite3"
    assert DiskCache(tmp_path / "b.sqlite3").path == tmp_path / "b.sqlite3"
    existing = tmp_path / "existing-file"
    existing.touch()
    assert DiskCache(existing).path == existing
    assert not (tmp_path / "a").exists(), "nothing is created before first use"
    cache = DiskCache(tmp_path / "deep" / "er")
    cache.put_many(*batch([0], dim=2))
    assert (tmp_path / "deep" / "er" / "embeddings.sqlite3").is_file()
    cache.close()


def test_disk_cache_round_trips_across_two_processes(tmp_path):
    run_python(WRITER, tmp_path, 0, 300, 50, 32)
    assert run_python(READER, tmp_path, 300, 32).strip() == "300"
    # Entries survive for later sessions, this one included.
    found = DiskCache(tmp_path).get_many([f"key-{i}" for i in range(300)])
    assert all(vector is not None for vector in found)


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    writers = start_writers_together(tmp_path, (0, 2000), 2000, batch_size=20, dim=64)
    for writer in writers:
        _, stderr = writer.communicate(timeout=600)  # a hang guard only
        assert writer.returncode == 0, stderr
    assert run_python(READER, tmp_path, 4000, 64).strip() == "4000"
    cache = DiskCache(tmp_path)
    assert cache.stats().entries == 4000
    cache.close()


@pytest.mark.slow
def test_a_writer_killed_mid_write_never_leaves_a_partial_entry(tmp_path):
    dim, batch_size = 4096, 32  # 512 KiB per transaction, so kills land inside one
    attempts, span = 5, 20_000  # each writer owns keys [attempt * span, (attempt + 1) * span)
    rng = np.random.default_rng(0)
    for attempt in range(attempts):
        writer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(tmp_path),
                str(attempt * span),
                str((attempt + 1) * span),
                str(batch_size),
                str(dim),
                "--never-exit",
            ],
            env=python_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout.readline().strip() == "first batch stored"
        # Killed at a random moment: most likely inside a transaction, possibly between two or
        # (on a fast machine, or a slow test) once all are stored. Every assertion below holds
        # whatever the moment.
        time.sleep(rng.uniform(0.0, 0.3))
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=600)  # a hang guard only
        assert writer.returncode == -signal.SIGKILL

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no damage may be detected
        cache = DiskCache(tmp_path)
        stored = 0
        for attempt in range(attempts):
            ids = range(attempt * span, (attempt + 1) * span)
            found = cache.get_many([f"key-{i}" for i in ids])
            present = np.array([vector is not None for vector in found])
            # Writers store batches in order, so what survives is a prefix of whole batches.
            count = int(present.sum())
            assert count % batch_size == 0, "a batch was stored partially"
            assert present[:count].all() and not present[count:].any()
            for index, vector in zip(ids[:count], found[:count], strict=True):
                np.testing.assert_array_equal(vector, expected_vector(index, dim))
            stored += count
        assert stored >= attempts * batch_size
        assert cache.stats().entries == stored
        cache.close()
    raw = sqlite3.connect(cache.path)
    assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert raw.execute(
        "SELECT count(*) FROM embeddings WHERE length(vector) != 4 * dim"
    ).fetchone() == (0,)
    raw.close()


def _fill_and_close(folder: Path, count: int = 600, dim: int = 64) -> Path:
    cache = DiskCache(folder)
    cache.put_many(*batch(range(count), dim=dim))
    cache.close()  # the last connection folds the write-ahead log into the file
    assert not Path(f"{cache.path}-wal").exists()
    return cache.path


@pytest.mark.parametrize("check_on_open", [True, False])
def test_a_truncated_store_is_rebuilt_with_a_warning(tmp_path, check_on_open):
    database = _fill_and_close(tmp_path)
    with open(database, "r+b") as handle:
        handle.truncate(database.stat().st_size // 2)
    cache = DiskCache(tmp_path, check_on_open=check_on_open)
    keys, vectors = batch(range(600), dim=64)
    with pytest.warns(RuntimeWarning, match=re.escape(str(database))):
        found = cache.get_many(keys)
    for index, vector in enumerate(found):  # whatever is served is intact
        if vector is not None:
            np.testing.assert_array_equal(vector, expected_vector(index, 64))
    cache.put_many(keys, vectors)
    assert all(vector is not None for vector in cache.get_many(keys))
    assert Path(f"{database}.corrupt").is_file()
    cache.close()


def test_a_garbage_store_is_rebuilt_with_a_warning(tmp_path):
    database = tmp_path / "embeddings.sqlite3"
    database.write_bytes(np.random.default_rng(0).bytes(50_000))
    cache = DiskCache(tmp_path)
    with pytest.warns(RuntimeWarning, match=re.escape(str(database))):
        assert cache.get_many(["key-0"]) == [None]
    cache.put_many(*batch([0], dim=4))
    np.testing.assert_array_equal(cache.get_many(["key-0"])[0], expected_vector(0, 4))
    cache.close()


def test_a_store_rebuilt_by_another_process_is_the_one_written_to_next(tmp_path):
    # Two GridSearchCV workers on one store: the first holds a connection open, the file is
    # damaged and the second moves it aside and starts afresh. The first must then write
    # into the new store, not into the file moved aside (lost) or its write-ahead log.
    database = _fill_and_close(tmp_path, count=3)
    holder = DiskCache(tmp_path)
    assert holder.get_many(["key-0"])[0] is not None  # its connection is open now
    with open(database, "r+b") as handle:  # the header is overwritten: not a database any more
        handle.write(b"\x00" * 100)
    other = DiskCache(tmp_path)
    with pytest.warns(RuntimeWarning, match="was damaged"):
        assert other.get_many(["key-0"]) == [None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the store is sound: nothing to warn about
        holder.put_many(*batch([10, 11], dim=64))
        other.put_many(*batch([12], dim=64))
        assert all(vector is not None for vector in holder.get_many(["key-10", "key-12"]))
        assert all(vector is not None for vector in other.get_many(["key-10", "key-11"]))
    holder.close()
    other.close()
    assert run_python(READER, tmp_path, 13, 64).strip() == "3"  # keys 10, 11 and 12
    assert Path(f"{database}.corrupt").is_file()


def test_two_processes_finding_the_same_garbage_store_rebuild_it_once(tmp_path):
    # The start of GridSearchCV(n_jobs=2): both workers open a damaged store at once.
    database = tmp_path / "embeddings.sqlite3"
    database.write_bytes(np.random.default_rng(1).bytes(50_000))
    writers = start_writers_together(tmp_path, (0, 500), 500, batch_size=50, dim=16)
    warned = []
    for writer in writers:
        _, stderr = writer.communicate(timeout=600)  # a hang guard only
        assert writer.returncode == 0, stderr
        warned.append("RuntimeWarning" in stderr and str(database) in stderr)
    assert any(warned)
    assert run_python(READER, tmp_path, 1000, 16).strip() == "1000"


def test_a_store_of_another_schema_version_is_rebuilt_with_a_warning(tmp_path):
    database = tmp_path / "embeddings.sqlite3"
    raw = sqlite3.connect(database)
    raw.execute("CREATE TABLE embeddings (key TEXT, something_else BLOB)")
    raw.execute("PRAGMA user_version = 99")
    raw.commit()
    raw.close()
    cache = DiskCache(tmp_path)
    with pytest.warns(RuntimeWarning, match="schema version 99"):
        cache.put_many(*batch([0], dim=4))
    assert cache.get_many(["key-0"])[0] is not None
    cache.close()


def test_a_stored_row_of_the_wrong_size_or_checksum_is_never_served(disk_cache):
    keys, vectors = batch(range(4), dim=16)
    disk_cache.put_many(keys, vectors)
    raw = sqlite3.connect(disk_cache.path)
    raw.execute("UPDATE embeddings SET vector = substr(vector, 1, 20) WHERE key = 'key-0'")
    raw.execute("UPDATE embeddings SET dim = 15 WHERE key = 'key-1'")
    (blob,) = raw.execute("SELECT vector FROM embeddings WHERE key = 'key-2'").fetchone()
    flipped = bytes([blob[0] ^ 0x01]) + blob[1:]
    raw.execute("UPDATE embeddings SET vector = ? WHERE key = 'key-2'", (flipped,))
    raw.commit()
    raw.close()

    with pytest.warns(RuntimeWarning, match="ignored 3 damaged entries"):
        found = disk_cache.get_many(keys)
    assert found[:3] == [None, None, None]
    np.testing.assert_array_equal(found[3], expected_vector(3, 16))
    assert disk_cache.stats().misses == 3

    disk_cache.put_many(keys[:3], vectors[:3])  # storing again repairs them
    for index, vector in enumerate(disk_cache.get_many(keys)):
        np.testing.assert_array_equal(vector, expected_vector(index, 16))
    assert disk_cache.stats().entries == 4


def test_disk_cache_max_bytes_evicts_the_oldest_entries(tmp_path):
    cache = DiskCache(tmp_path, max_bytes=10 * 64)  # ten 16-dim vectors
    for low in range(0, 15, 5):
        cache.put_many(*batch(range(low, low + 5), dim=16))
    present = [vector is not None for vector in cache.get_many([f"key-{i}" for i in range(15)])]
    assert present == [False] * 5 + [True] * 10
    assert cache.stats().nbytes == 10 * 64
    cache.put_many(*batch([99], dim=1000))  # larger than the bound: not stored
    assert cache.get_many(["key-99"]) == [None]
    assert cache.stats().entries == 10
    cache.close()


def test_disk_cache_survives_a_locked_database_with_a_warning(tmp_path):
    _fill_and_close(tmp_path, count=3)
    blocker = sqlite3.connect(tmp_path / "embeddings.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        # However long it waits, the blocker holds its lock: the outcome does not depend on speed.
        cache = DiskCache(tmp_path, timeout=0.05)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a lookup never writes: it has nothing to wait for
            assert cache.get_many(["key-0"])[0] is not None, "readers do not wait for a writer"
        with pytest.warns(RuntimeWarning, match="could not write 1 vectors"):
            cache.put_many(*batch([7], dim=64))
        with warnings.catch_warnings(record=True) as caught:  # skipped again: the same cause,
            warnings.simplefilter("always")  # the lock, is warned about once
            cache.put_many(*batch([8], dim=64))
        assert caught == []
        assert cache.get_many(["key-7"])[0] is None
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    cache.put_many(*batch([7], dim=64))
    assert cache.get_many(["key-7"])[0] is not None
    cache.close()


def test_disk_cache_is_thread_safe(disk_cache):
    errors: list[BaseException] = []

    def work(thread_index: int) -> None:
        try:
            for round_index in range(30):
                low = thread_index * 1000 + round_index * 10
                disk_cache.put_many(*batch(range(low, low + 10), dim=8))
                ids = list(range(low - 5, low + 10))
                for index, vector in zip(
                    ids, disk_cache.get_many([f"key-{i}" for i in ids]), strict=True
                ):
                    if index >= low:
                        np.testing.assert_array_equal(vector, expected_vector(index, 8))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert disk_cache.stats().entries == 6 * 30 * 10


def _put_in_child(cache: DiskCache) -> None:
    cache.put_many(*batch([42], dim=4))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs os.fork")
def test_disk_cache_opens_its_own_connection_after_fork(disk_cache):
    disk_cache.put_many(*batch([1], dim=4))  # the parent's connection is open now
    child = multiprocessing.get_context("fork").Process(target=_put_in_child, args=(disk_cache,))
    child.start()
    child.join(timeout=600)  # a hang guard only
    assert child.exitcode == 0
    found = disk_cache.get_many(["key-1", "key-42"])
    np.testing.assert_array_equal(found[1], expected_vector(42, 4))


def test_disk_cache_rejects_bad_settings(tmp_path):
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        DiskCache(3)
    with pytest.raises(ValueError, match="max_bytes"):
        DiskCache(tmp_path, max_bytes=-5)
    with pytest.raises(ValueError, match="timeout"):
        DiskCache(tmp_path, timeout=-1)


# --------------------------------------------------------------------------------------------
# Model fingerprints
# --------------------------------------------------------------------------------------------


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "instructor-tiny"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "2_Dense").mkdir()
    (folder / ".git").mkdir()
    (folder / "config.json").write_text('{"d_model": 8}')
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "modules.json").write_text("[]")
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 512}')
    (folder / "model.safetensors").write_bytes(b"\x00" * 4096)
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (folder / "2_Dense" / "model.safetensors").write_bytes(b"\x01" * 1024)
    (folder / "README.md").write_text("# model card")
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (folder / ".gitattributes").write_text("*.bin filter=lfs")
    return folder


def _fingerprint_fresh(folder: Path) -> str:
    identity._MEMO.clear()
    return fingerprint_folder(folder)


def test_fingerprint_is_stable_and_ignores_readme_and_hidden_files(model_folder):
    first = fingerprint_folder(model_folder)
    assert re.fullmatch(r"folder:[0-9a-f]{64}", first)
    assert fingerprint_folder(str(model_folder)) == first
    (model_folder / "README.md").write_text("# a longer model card")
    (model_folder / ".git" / "HEAD").write_text("ref: refs/heads/other")
    (model_folder / ".gitattributes").write_text("")
    assert _fingerprint_fresh(model_folder) == first


def test_fingerprint_does_not_depend_on_where_the_folder_is(model_folder, tmp_path):
    first = fingerprint_folder(model_folder)
    moved = tmp_path / "elsewhere"
    model_folder.rename(moved)
    assert _fingerprint_fresh(moved) == first


@pytest.mark.parametrize(
    ("relative", "content"),
    [
        ("config.json", '{"d_model": 9}'),
        ("tokenizer.json", '{"version": "1.1"}'),
        ("1_Pooling/config.json", '{"pooling_mode_cls_token": true}'),
        ("model.safetensors", "\x00" * 4095 + "\x01"),
        ("2_Dense/model.safetensors", "\x02" * 1024),
        ("new_file.txt", "added"),
    ],
)
def test_fingerprint_changes_when_a_config_or_weight_file_changes(model_folder, relative, content):
    before = fingerprint_folder(model_folder)
    (model_folder / relative).write_bytes(content.encode("latin-1"))
    assert _fingerprint_fresh(model_folder) != before


def test_fingerprint_changes_when_a_file_is_renamed(model_folder):
    before = fingerprint_folder(model_folder)
    (model_folder / "tokenizer.json").rename(model_folder / "tokenizer_config.json")
    assert _fingerprint_fresh(model_folder) != before


def test_fingerprint_samples_large_weight_files(model_folder, monkeypatch):
    monkeypatch.setattr(identity, "FULL_HASH_LIMIT", 8 * 2**20)
    weights = model_folder / "pytorch_model.bin"
    with open(weights, "wb") as handle:  # sparse: costs no disk
        handle.truncate(8 * 2**20)
    base = _fingerprint_fresh(model_folder)

    def edit(offset: int) -> str:
        status = weights.stat()
        with open(weights, "r+b") as handle:
            handle.seek(offset)
            handle.write(b"\x07")
        os.utime(weights, ns=(status.st_atime_ns, status.st_mtime_ns))  # hide the edit
        return _fingerprint_fresh(model_folder)

    assert edit(10) != base, "first MiB is hashed"
    head_edited = _fingerprint_fresh(model_folder)
    assert edit(8 * 2**20 - 10) != head_edited, "last MiB is hashed"
    tail_edited = _fingerprint_fresh(model_folder)
    status = weights.stat()
    os.utime(weights, ns=(status.st_atime_ns, status.st_mtime_ns + 1))
    assert _fingerprint_fresh(model_folder) != tail_edited, "modification time counts"


def test_fingerprint_is_memoized_until_a_file_changes(model_folder, monkeypatch):
    old = time.time_ns() - 60 * 10**9  # outside the window where timestamps are too coarse
    for path in model_folder.rglob("*"):
        os.utime(path, ns=(old, old))
    first = _fingerprint_fresh(model_folder)
    hashed: list[str] = []
    original = identity._file_digest

    def counting(path, status):
        hashed.append(path)
        return original(path, status)

    monkeypatch.setattr(identity, "_file_digest", counting)
    assert fingerprint_folder(model_folder) == first
    assert hashed == [], "a second call must not read the files again"
    (model_folder / "config.json").write_text('{"d_model": 10}')
    assert fingerprint_folder(model_folder) != first
    assert hashed


def test_fingerprint_of_recently_written_files_is_not_memoized(model_folder, monkeypatch):
    # The files were written just now: within the window however slowly this test gets here.
    monkeypatch.setattr(identity, "_RACY_WINDOW_NS", 3600 * 10**9)
    fingerprint_folder(model_folder)
    hashed: list[str] = []
    original = identity._file_digest
    monkeypatch.setattr(
        identity,
        "_file_digest",
        lambda path, status: hashed.append(path) or original(path, status),
    )
    fingerprint_folder(model_folder)
    assert hashed


def test_fingerprint_follows_hub_snapshot_symlinks(model_folder, tmp_path):
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).symlink_to(model_folder / name)
    before = fingerprint_folder(snapshot)
    (model_folder / "config.json").write_text('{"d_model": 11}')
    assert _fingerprint_fresh(snapshot) != before


def test_fingerprint_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-model"):
        fingerprint_folder(tmp_path / "missing-model")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match=r"file\.bin"):
        fingerprint_folder(tmp_path / "file.bin")
    (tmp_path / "only-readme").mkdir()
    (tmp_path / "only-readme" / "README.md").write_text("card")
    with pytest.raises(ValueError, match="only-readme"):
        fingerprint_folder(tmp_path / "only-readme")


_LOOK_UP = (
    LOAD_CACHE_MODULE
    + """
import sys
cache = DiskCache(sys.argv[1])
cache.get_many(["key-0", "key-1", "absent"])
cache.record_encoded(1)
"""
)


def test_disk_cache_counters_add_up_across_processes(tmp_path):
    DiskCache(tmp_path).put_many(*batch([0, 1], dim=8))
    run_python(_LOOK_UP, tmp_path)
    run_python(_LOOK_UP, tmp_path)
    stats = DiskCache(tmp_path).stats()  # a new object, as in a third process
    assert (stats.hits, stats.misses, stats.encoded, stats.entries) == (4, 2, 2, 2)
    DiskCache(tmp_path).reset_stats()
    assert DiskCache(tmp_path).stats().hits == 0


def test_a_store_written_by_0_1_is_upgraded_in_place(tmp_path):
    # The schema sk_instructor 0.1.0 wrote: no counters in the usage table.
    import zlib

    vector = expected_vector(0, 4)
    blob = vector.astype("<f4").tobytes()
    connection = sqlite3.connect(tmp_path / "embeddings.sqlite3")
    connection.executescript(
        f"""
        PRAGMA journal_mode=WAL;
        CREATE TABLE embeddings (key TEXT PRIMARY KEY, dim INTEGER NOT NULL,
                                 crc INTEGER NOT NULL, vector BLOB NOT NULL);
        CREATE TABLE usage (id INTEGER PRIMARY KEY CHECK (id = 0), entries INTEGER NOT NULL,
                            nbytes INTEGER NOT NULL);
        INSERT INTO usage VALUES (0, 1, 16);
        INSERT INTO embeddings VALUES ('key-0', 4, {zlib.crc32(blob)}, x'{blob.hex()}');
        PRAGMA user_version = 1;
        """
    )
    connection.close()
    cache = DiskCache(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # upgraded, not rebuilt
        (found,) = cache.get_many(["key-0"])
    np.testing.assert_array_equal(found, vector)
    assert cache.stats() == CacheStats(hits=1, misses=0, encoded=0, entries=1, nbytes=16)
