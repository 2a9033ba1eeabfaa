"""Storage layer of the embedding cache.

A grid search over instructions clones the vectorizer for every fold and grid point, and
without a cache each clone re-encodes the same texts. The encoding engine instead asks this
layer for the vector of every distinct ``(model, instruction, settings, text)`` it needs,
encodes only the misses and stores them back. This module only stores vectors; it never
runs a model.

The pieces, in the order the engine uses them:

- :func:`make_key` turns one text and everything that shapes its vector into a hex key;
- :func:`resolve_cache` maps the user-facing ``cache`` parameter to an
  :class:`EmbeddingCache` (or ``None`` when caching is off);
- :meth:`EmbeddingCache.get_many` / :meth:`EmbeddingCache.put_many` read and write rows,
  :meth:`EmbeddingCache.record_encoded` counts texts the encoder really ran on, and
  :meth:`EmbeddingCache.stats` reports it all.

Two stores are provided: :class:`MemoryCache` (in-process LRU bounded in bytes, shared by
every estimator in the process by default) and :class:`DiskCache` (SQLite, shared across
processes and sessions).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import numbers
import os
import struct
import sys
import threading
import warnings
import weakref
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

try:  # POSIX only; on other platforms concurrent rebuilds of a corrupt store are not serialized.
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

import sqlite3

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CacheStats",
    "DiskCache",
    "EmbeddingCache",
    "MemoryCache",
    "default_memory_cache",
    "make_key",
    "resolve_cache",
]

# Part of every key: bump it whenever the meaning of a stored vector changes (pooling code,
# precision, layout) so that old entries simply stop matching instead of being served.
CACHE_FORMAT_VERSION = 1

_KEY_DOMAIN = b"sk_instructor/embedding-key\x00"
_DEFAULT_MEMORY_BYTES = 512 * 2**20
_DEFAULT_DB_NAME = "embeddings.sqlite3"
_DB_SUFFIXES = frozenset({".sqlite3", ".sqlite", ".db"})
# SQLite builds before 3.32 allow at most 999 bound parameters per statement.
_SQL_CHUNK = 900
# Version of the on-disk schema (``PRAGMA user_version``); a store written with another
# schema is rebuilt rather than misread.
_SCHEMA_VERSION = 1
# SQLITE_CORRUPT and SQLITE_NOTADB: the file itself is damaged, as opposed to busy or locked.
_CORRUPTION_CODES = frozenset({11, 26})


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def _field(value: str) -> bytes:
    # Length-prefixed so that no two field sequences share an encoding ("a"+"bc" != "ab"+"c").
    # "surrogatepass" keeps the encoding injective for strings holding lone surrogates, which
    # text read from badly decoded files sometimes does.
    raw = value.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw


def _check_text_field(name: str, value: object, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise TypeError(f"make_key: {name} must be a str, got {type(value).__name__} {value!r}")
    if not allow_empty and not value:
        raise ValueError(f"make_key: {name} must be a non-empty str, got ''")
    return str(value)


@functools.lru_cache(maxsize=64)
def _key_prefix(
    model_fingerprint: str,
    instruction: str,
    max_seq_length: int,
    dtype: str,
    normalize: bool,
    pooling: str,
) -> Any:
    # The engine keys thousands of texts under the same settings; hashing the shared prefix
    # once and copying the hash state makes a key cost one short update per text.
    prefix = hashlib.sha256(_KEY_DOMAIN)
    prefix.update(struct.pack("<I", CACHE_FORMAT_VERSION))
    for value in (
        model_fingerprint,
        instruction,
        str(max_seq_length),
        dtype,
        "1" if normalize else "0",
        pooling,
    ):
        prefix.update(_field(value))
    return prefix


def make_key(
    *,
    model_fingerprint: str,
    instruction: str,
    max_seq_length: int,
    dtype: str,
    normalize: bool,
    pooling: str,
    text: str,
) -> str:
    """Return the cache key of one text encoded under the given settings.

    The key is the hex SHA-256 of an unambiguous (length-prefixed) encoding of
    :data:`CACHE_FORMAT_VERSION` and every field, so changing any field, or moving
    characters from one field to the next, gives a different key.

    Parameters
    ----------
    model_fingerprint : str
        Identity of the weights, from :func:`sk_instructor._fingerprint.fingerprint_folder`
        or :func:`sk_instructor._fingerprint.hub_fingerprint`.
    instruction : str
        The instruction prepended to the text (may be empty).
    max_seq_length : int
        Truncation length in tokens.
    dtype : str
        Precision the encoder ran in, e.g. ``"float32"``.
    normalize : bool
        Whether vectors are L2-normalized.
    pooling : str
        Pooling mode, e.g. ``"mean"``.
    text : str
        The text itself.

    Returns
    -------
    str
        64 lowercase hexadecimal characters.

    Examples
    --------
    >>> from sk_instructor._cache import make_key
    >>> key = make_key(model_fingerprint="hub:org/model@" + "0" * 40,
    ...                instruction="Represent the sentence:", max_seq_length=512,
    ...                dtype="float32", normalize=True, pooling="mean", text="hello")
    >>> len(key)
    64
    """
    model_fingerprint = _check_text_field("model_fingerprint", model_fingerprint, allow_empty=False)
    instruction = _check_text_field("instruction", instruction, allow_empty=True)
    dtype = _check_text_field("dtype", dtype, allow_empty=False)
    pooling = _check_text_field("pooling", pooling, allow_empty=False)
    text = _check_text_field("text", text, allow_empty=True)
    if (
        isinstance(max_seq_length, (bool, np.bool_))
        or not isinstance(max_seq_length, numbers.Integral)
        or max_seq_length <= 0
    ):
        raise TypeError(f"make_key: max_seq_length must be a positive int, got {max_seq_length!r}")
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"make_key: normalize must be a bool, got {normalize!r}")
    digest = _key_prefix(
        model_fingerprint, instruction, int(max_seq_length), dtype, bool(normalize), pooling
    ).copy()
    digest.update(_field(text))
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Statistics and the abstract store
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of what a cache did and holds.

    Attributes
    ----------
    hits : int
        Keys :meth:`EmbeddingCache.get_many` found, since creation or the last
        :meth:`EmbeddingCache.reset_stats`.
    misses : int
        Keys it did not find (the engine then encodes them).
    encoded : int
        Texts the encoder actually ran on, as reported by the engine through
        :meth:`EmbeddingCache.record_encoded`.
    entries : int
        Vectors stored now.
    nbytes : int
        Bytes of stored vector data now (keys and bookkeeping are not counted).
    """

    hits: int
    misses: int
    encoded: int
    entries: int
    nbytes: int

    @property
    def hit_rate(self) -> float:
        """Fraction of looked-up keys that were found (``0.0`` before any lookup)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


# Every cache created in this process, so that locks can be re-created in a forked child: a
# lock held by another thread at fork time would otherwise stay locked forever there.
_LIVE_CACHES: weakref.WeakSet[EmbeddingCache] = weakref.WeakSet()


def _check_keys(keys: Sequence[str], where: str) -> list[str]:
    if isinstance(keys, (str, bytes)):
        raise TypeError(f"{where}: keys must be a sequence of str keys, got a single {keys!r}")
    keys = list(keys)
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"{where}: every key must be a str, got {type(key).__name__} {key!r}")
    return keys


def _check_vectors(vectors: np.ndarray, n_keys: int) -> np.ndarray:
    if not isinstance(vectors, np.ndarray):
        raise TypeError(
            f"put_many: vectors must be a 2-D numpy.ndarray of float32, "
            f"got {type(vectors).__name__}"
        )
    if vectors.ndim != 2:
        raise ValueError(
            f"put_many: vectors must be 2-D (one row per key), got shape {vectors.shape}"
        )
    if vectors.dtype != np.float32:
        # Refusing instead of casting keeps a float64/float16 slip in the engine visible.
        raise TypeError(f"put_many: vectors must have dtype float32, got {vectors.dtype}")
    if vectors.shape[0] != n_keys:
        raise ValueError(
            f"put_many: got {n_keys} keys but {vectors.shape[0]} rows of vectors; "
            f"expected one row per key"
        )
    if n_keys and vectors.shape[1] == 0:
        raise ValueError("put_many: vectors have 0 columns; expected at least one")
    return vectors


class EmbeddingCache(ABC):
    """Abstract store of embedding vectors addressed by :func:`make_key` keys.

    The engine calls :meth:`get_many` for the keys it needs, encodes the misses, calls
    :meth:`record_encoded` with how many texts it encoded and stores them with
    :meth:`put_many`. All methods are thread-safe.

    Subclasses implement ``_lookup``, ``_store``, ``_size`` and ``clear`` and call
    ``super().__init__()``; every call into them holds ``self._lock``.

    Observability: ``cache.stats()`` returns a :class:`CacheStats` with ``hits``,
    ``misses`` and ``encoded`` (counted by this object, in this process) and ``entries`` /
    ``nbytes`` (what the store holds now).
    """

    def __init__(self) -> None:
        # Re-entrant so that subclasses may call their own locked helpers.
        self._lock = threading.RLock()
        self._hits = 0
        self._misses = 0
        self._encoded = 0
        _LIVE_CACHES.add(self)

    # sklearn's ``clone`` deep-copies every parameter that is not an estimator; returning
    # ``self`` is what lets all clones of a vectorizer share one cache (and its counters).
    def __copy__(self) -> EmbeddingCache:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> EmbeddingCache:
        return self

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        """Look up vectors; count a hit per key found and a miss per key not found.

        Parameters
        ----------
        keys : sequence of str
            Keys from :func:`make_key`; duplicates are allowed and counted each time.

        Returns
        -------
        list of (numpy.ndarray or None)
            For each key, in order, a read-only 1-D float32 vector or ``None``.
        """
        keys = _check_keys(keys, "get_many")
        if not keys:
            return []
        with self._lock:
            found = self._lookup(keys)
            hits = sum(vector is not None for vector in found)
            self._hits += hits
            self._misses += len(keys) - hits
        return found

    def put_many(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store one vector per key, atomically: all rows or none become visible.

        Parameters
        ----------
        keys : sequence of str
            Keys from :func:`make_key`. If a key repeats, its last row wins.
        vectors : numpy.ndarray of shape (len(keys), dim), dtype float32
            One row per key. The rows are copied; later changes to ``vectors`` do not
            reach the cache.
        """
        keys = _check_keys(keys, "put_many")
        vectors = _check_vectors(vectors, len(keys))
        if not keys:
            return
        # Last row wins for repeated keys, as a dict assignment would.
        rows = dict(zip(keys, range(len(keys)), strict=True))
        if len(rows) < len(keys):
            keys, vectors = list(rows), vectors[list(rows.values())]
        with self._lock:
            self._store(keys, vectors)

    def record_encoded(self, n: int) -> None:
        """Add ``n`` to the count of texts the encoder actually ran on.

        Parameters
        ----------
        n : int
            Non-negative number of texts just encoded.
        """
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"record_encoded: n must be a non-negative int, got {n!r}")
        with self._lock:
            self._encoded += int(n)

    def stats(self) -> CacheStats:
        """Return hits, misses, encoded (counted here) and entries, nbytes (stored now)."""
        with self._lock:
            entries, nbytes = self._size()
            return CacheStats(self._hits, self._misses, self._encoded, entries, nbytes)

    def reset_stats(self) -> None:
        """Set hits, misses and encoded back to zero; stored vectors are kept."""
        with self._lock:
            self._hits = self._misses = self._encoded = 0

    @abstractmethod
    def clear(self) -> None:
        """Remove every stored vector (counters are kept; see :meth:`reset_stats`)."""

    @abstractmethod
    def _lookup(self, keys: list[str]) -> list[np.ndarray | None]: ...

    @abstractmethod
    def _store(self, keys: list[str], vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _size(self) -> tuple[int, int]: ...


# --------------------------------------------------------------------------------------------
# In-process store
# --------------------------------------------------------------------------------------------


class MemoryCache(EmbeddingCache):
    """In-process embedding cache, least recently used first out, bounded in bytes.

    By default every estimator in a process shares one instance
    (:func:`default_memory_cache`), and ``sklearn.base.clone`` / ``copy.deepcopy`` return the
    same object, so all the clones a grid search makes share their vectors.

    Pickling gives a fresh, EMPTY cache with the same bound: vectors never travel inside a
    pickled estimator. The process-wide default cache unpickles as the receiving process's
    own default cache.

    Parameters
    ----------
    max_bytes : int, default=512 * 2**20
        Upper bound on the bytes of stored vectors (a 768-dimensional float32 vector takes
        3 KiB, so the default holds about 170,000). When a store goes over it, the least
        recently used vectors are evicted; a single vector larger than the bound is not
        stored at all. Keys and bookkeeping, roughly 200 bytes per entry, are not counted.

    See Also
    --------
    DiskCache : A store shared across processes and sessions.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_instructor._cache import MemoryCache
    >>> cache = MemoryCache(max_bytes=2**20)
    >>> cache.put_many(["k1", "k2"], np.ones((2, 4), dtype=np.float32))
    >>> [v is None for v in cache.get_many(["k1", "k3"])]
    [False, True]
    >>> cache.stats()
    CacheStats(hits=1, misses=1, encoded=0, entries=2, nbytes=32)
    """

    def __init__(self, max_bytes: int = _DEFAULT_MEMORY_BYTES) -> None:
        if (
            isinstance(max_bytes, (bool, np.bool_))
            or not isinstance(max_bytes, numbers.Integral)
            or max_bytes < 0
        ):
            raise ValueError(
                f"MemoryCache: max_bytes must be a non-negative int, got {max_bytes!r}"
            )
        super().__init__()
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._nbytes = 0
        self._is_process_default = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_bytes={self.max_bytes})"

    def __reduce__(self) -> tuple[Callable[..., MemoryCache], tuple[Any, ...]]:
        if self._is_process_default:
            return default_memory_cache, ()
        return type(self), (self.max_bytes,)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def _lookup(self, keys: list[str]) -> list[np.ndarray | None]:
        found: list[np.ndarray | None] = []
        for key in keys:
            vector = self._entries.get(key)
            if vector is not None:
                self._entries.move_to_end(key)
            found.append(vector)
        return found

    def _store(self, keys: list[str], vectors: np.ndarray) -> None:
        # Copy rows before touching the dict so that a failure (MemoryError) cannot leave
        # half of the batch stored; each row gets its own buffer so that the batch array is
        # not kept alive by views.
        rows = []
        for row in vectors:
            if row.nbytes <= self.max_bytes:
                stored = row.copy()
                stored.flags.writeable = False
                rows.append(stored)
            else:
                rows.append(None)
        for key, stored in zip(keys, rows, strict=True):
            if stored is None:
                continue
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._nbytes -= previous.nbytes
            self._entries[key] = stored
            self._nbytes += stored.nbytes
        while self._nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._nbytes -= evicted.nbytes

    def _size(self) -> tuple[int, int]:
        return len(self._entries), self._nbytes


_DEFAULT_MEMORY_CACHE: MemoryCache | None = None
_MODULE_LOCK = threading.Lock()


def default_memory_cache() -> MemoryCache:
    """Return the process-wide :class:`MemoryCache` (created on first call).

    This is what ``cache="memory"``, the default, resolves to; every estimator in the
    process shares it.

    Returns
    -------
    MemoryCache
        The same object on every call in a given process.

    Examples
    --------
    >>> from sk_instructor._cache import default_memory_cache
    >>> default_memory_cache() is default_memory_cache()
    True
    """
    global _DEFAULT_MEMORY_CACHE
    cache = _DEFAULT_MEMORY_CACHE
    if cache is None:
        with _MODULE_LOCK:
            if _DEFAULT_MEMORY_CACHE is None:
                created = MemoryCache()
                created._is_process_default = True
                _DEFAULT_MEMORY_CACHE = created
            cache = _DEFAULT_MEMORY_CACHE
    return cache


# --------------------------------------------------------------------------------------------
# On-disk store
# --------------------------------------------------------------------------------------------

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS embeddings (
    key TEXT PRIMARY KEY,
    dim INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    entries INTEGER NOT NULL,
    nbytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO usage (id, entries, nbytes) VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS embeddings_counted_insert AFTER INSERT ON embeddings BEGIN
    UPDATE usage SET entries = entries + 1, nbytes = nbytes + length(NEW.vector) WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS embeddings_counted_delete AFTER DELETE ON embeddings BEGIN
    UPDATE usage SET entries = entries - 1, nbytes = nbytes - length(OLD.vector) WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS embeddings_counted_update AFTER UPDATE OF vector ON embeddings BEGIN
    UPDATE usage SET nbytes = nbytes + length(NEW.vector) - length(OLD.vector) WHERE id = 0;
END;
PRAGMA user_version = {_SCHEMA_VERSION};
"""


class _StoreCorrupt(Exception):
    """The database file is damaged (raised inside this module only)."""


def _is_corruption(error: sqlite3.DatabaseError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPTION_CODES
    # Python < 3.11 has no error codes; corruption surfaces as the base class itself.
    return type(error) is sqlite3.DatabaseError


def _encode_vector(row: np.ndarray) -> tuple[int, int, bytes]:
    blob = np.ascontiguousarray(row, dtype="<f4").tobytes()
    return row.shape[0], zlib.crc32(blob), blob


def _decode_vector(dim: object, crc: object, blob: object) -> np.ndarray | None:
    # A row that does not match its own dimension and checksum is never served: SQLite
    # guarantees atomic transactions but not that the bytes on disk stay intact.
    if not isinstance(dim, int) or not isinstance(blob, bytes) or dim <= 0:
        return None
    if len(blob) != 4 * dim or zlib.crc32(blob) != crc:
        return None
    vector = np.frombuffer(blob, dtype="<f4").astype(np.float32, copy=False)
    vector.flags.writeable = False
    return vector


def _chunks(items: list[str], size: int = _SQL_CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# Connections inherited through fork are kept referenced, never closed: closing a SQLite
# handle that another process opened can release that process's locks (POSIX lock semantics).
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []

_T = TypeVar("_T")


class DiskCache(EmbeddingCache):
    """Embedding cache in a SQLite file, shared by processes and later sessions.

    ``path`` names a directory, created on first use, that holds the database file
    ``embeddings.sqlite3`` (plus SQLite's ``-wal`` / ``-shm`` files and a ``.lock`` file
    used when rebuilding). A path that is an existing file, or ends in ``.sqlite3``,
    ``.sqlite`` or ``.db``, is taken as the database file itself.

    Safe for concurrent readers and writers across threads and processes (e.g.
    ``GridSearchCV(n_jobs=2)`` workers): the database runs in WAL mode, so readers never
    wait for writers; writers wait up to ``timeout`` seconds for each other; each
    :meth:`put_many` is one transaction, so a process killed mid-write leaves either the
    whole batch or none of it. Each process opens its own connection on first use (again
    after a fork or unpickling); threads of a process share it under a lock.

    A damaged file (``sqlite3.DatabaseError``, a failed ``PRAGMA quick_check``) is moved
    aside to ``<file>.corrupt`` and replaced by an empty store, with a ``RuntimeWarning``
    naming the file. A stored row whose size or checksum does not match is never served: it
    counts as a miss and the next :meth:`put_many` of that key overwrites it. If the
    database stays locked past ``timeout``, the lookup or store is skipped with a
    ``RuntimeWarning`` (the engine still returns correct vectors, just uncached).

    ``copy.deepcopy`` and ``sklearn.base.clone`` return the same object; pickling keeps only
    the path and settings, and unpickling in a process gives that process's shared
    ``DiskCache`` for them. ``hits``, ``misses`` and ``encoded`` in :meth:`stats` count this
    process's calls; ``entries`` and ``nbytes`` describe the shared file.

    Parameters
    ----------
    path : str or os.PathLike
        Directory of the store, or the database file itself (see above). ``~`` is expanded
        and a relative path is made absolute now, against the current directory.
    max_bytes : int or None, default=None
        Bound on the bytes of stored vectors. ``None``, the default, never evicts: the
        store grows until :meth:`clear` or deletion of the file. When set, the entries
        written longest ago are evicted first (first in, first out: lookups do not refresh
        an entry on disk, so that reading never takes the write lock).
    timeout : float, default=60.0
        Seconds a writer waits for another process's transaction before giving up.
    check_on_open : bool, default=True
        Run ``PRAGMA quick_check`` when a process opens the file. It reads the whole file
        once, about a second per GB; ``False`` skips it and relies on errors seen during
        use to detect damage.

    Attributes
    ----------
    path : pathlib.Path
        The database file.

    See Also
    --------
    MemoryCache : The in-process default.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from sk_instructor._cache import DiskCache
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     writer = DiskCache(folder)
    ...     writer.put_many(["k1"], np.arange(3, dtype=np.float32).reshape(1, 3))
    ...     reader = DiskCache(folder)  # another object, as in another process
    ...     (vector,) = reader.get_many(["k1"])
    ...     writer.close()
    ...     reader.close()
    >>> vector
    array([0., 1., 2.], dtype=float32)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int | None = None,
        timeout: float = 60.0,
        check_on_open: bool = True,
    ) -> None:
        if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"DiskCache: path must be a str or os.PathLike, got {type(path).__name__} {path!r}"
            )
        if not os.fspath(path):
            raise ValueError("DiskCache: path must not be empty")
        if max_bytes is not None and (
            isinstance(max_bytes, (bool, np.bool_))
            or not isinstance(max_bytes, numbers.Integral)
            or max_bytes < 0
        ):
            raise ValueError(
                f"DiskCache: max_bytes must be None or a non-negative int, got {max_bytes!r}"
            )
        if not isinstance(timeout, numbers.Real) or isinstance(timeout, bool) or timeout < 0:
            raise ValueError(f"DiskCache: timeout must be a non-negative number, got {timeout!r}")
        super().__init__()
        self.path = _database_file(path)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.timeout = float(timeout)
        self.check_on_open = bool(check_on_open)
        self._connection: sqlite3.Connection | None = None
        self._connection_pid: int | None = None
        # (st_dev, st_ino) of the file the open connection uses: tells whether another
        # process already replaced a damaged file, so that it is not moved aside twice.
        self._file_identity: tuple[int, int] | None = None

    def __repr__(self) -> str:
        settings = "".join(
            f", {name}={value!r}"
            for name, value, default in (
                ("max_bytes", self.max_bytes, None),
                ("timeout", self.timeout, 60.0),
                ("check_on_open", self.check_on_open, True),
            )
            if value != default
        )
        return f"{type(self).__name__}({str(self.path)!r}{settings})"

    def __reduce__(self) -> tuple[Callable[..., DiskCache], tuple[Any, ...]]:
        return _shared_disk_cache, (
            str(self.path),
            self.max_bytes,
            self.timeout,
            self.check_on_open,
        )

    # -- public ----------------------------------------------------------------------------

    def clear(self) -> None:
        """Remove every stored vector from the file (for all processes sharing it)."""

        def delete_all(connection: sqlite3.Connection) -> None:
            with _write_transaction(connection):
                connection.execute("DELETE FROM embeddings")

        with self._lock:
            self._run(delete_all)

    def close(self) -> None:
        """Close this process's connection; the next call opens the file again."""
        with self._lock:
            if self._connection is not None and self._connection_pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    self._connection.close()
            elif self._connection is not None:
                _INHERITED_CONNECTIONS.append(self._connection)
            self._connection = None
            self._connection_pid = None

    # -- EmbeddingCache hooks --------------------------------------------------------------

    def _lookup(self, keys: list[str]) -> list[np.ndarray | None]:
        positions: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            positions.setdefault(key, []).append(index)
        unique = list(positions)

        def select(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = []
            for chunk in _chunks(unique):
                marks = ",".join("?" * len(chunk))
                rows.extend(
                    connection.execute(
                        f"SELECT key, dim, crc, vector FROM embeddings WHERE key IN ({marks})",
                        chunk,
                    ).fetchall()
                )
            return rows

        found: list[np.ndarray | None] = [None] * len(keys)
        try:
            rows = self._run(select)
        except sqlite3.OperationalError as error:
            self._warn(
                f"could not read from the embedding cache {self.path} ({error}); "
                f"treating {len(unique)} keys as misses"
            )
            return found
        damaged = 0
        for key, dim, crc, blob in rows:
            vector = _decode_vector(dim, crc, blob)
            if vector is None:
                damaged += 1
                continue
            for index in positions.get(key, ()):
                found[index] = vector
        if damaged:
            self._warn(
                f"ignored {damaged} damaged entries in the embedding cache {self.path}; "
                f"they count as misses and are overwritten when stored again"
            )
        return found

    def _store(self, keys: list[str], vectors: np.ndarray) -> None:
        records = [
            (key, *_encode_vector(row))
            for key, row in zip(keys, vectors, strict=True)
            if self.max_bytes is None or row.nbytes <= self.max_bytes
        ]
        if not records:
            return

        def write(connection: sqlite3.Connection) -> None:
            with _write_transaction(connection):
                connection.executemany(
                    "DELETE FROM embeddings WHERE key = ?", [(record[0],) for record in records]
                )
                connection.executemany(
                    "INSERT INTO embeddings (key, dim, crc, vector) VALUES (?, ?, ?, ?)",
                    records,
                )
                if self.max_bytes is not None:
                    _evict_oldest(connection, self.max_bytes)

        try:
            self._run(write)
        except sqlite3.OperationalError as error:
            self._warn(
                f"could not write to the embedding cache {self.path} ({error}); "
                f"{len(records)} vectors were not stored"
            )

    def _size(self) -> tuple[int, int]:
        def read_usage(connection: sqlite3.Connection) -> tuple[int, int]:
            entries, nbytes = connection.execute(
                "SELECT entries, nbytes FROM usage WHERE id = 0"
            ).fetchone()
            return int(entries), int(nbytes)

        return self._run(read_usage)

    # -- connection management -------------------------------------------------------------

    def _warn(self, message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=_caller_outside_this_module())

    def _run(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``operation`` on this process's connection, rebuilding a damaged file once."""
        connection = self._connect()
        try:
            return operation(connection)
        except sqlite3.DatabaseError as error:
            if not _is_corruption(error):
                raise
            self._rebuild(f"{type(error).__name__}: {error}")
        return operation(self._connect())

    def _connect(self) -> sqlite3.Connection:
        pid = os.getpid()
        if self._connection is not None and self._connection_pid == pid:
            return self._connection
        if self._connection is not None:
            _INHERITED_CONNECTIONS.append(self._connection)
        self._connection = None
        try:
            connection = self._open()
        except _StoreCorrupt as damage:
            self._rebuild(str(damage))
            try:
                connection = self._open()
            except _StoreCorrupt as second:
                raise OSError(
                    f"the embedding cache {self.path} is still unreadable after being "
                    f"rebuilt ({second}); delete it or pass another path as cache"
                ) from None
        self._connection = connection
        self._connection_pid = pid
        return connection

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(
                f"cannot create the directory of the embedding cache {self.path}: {error}"
            ) from error
        with _file_lock(self.path, exclusive=False):
            try:
                connection = sqlite3.connect(
                    self.path,
                    timeout=self.timeout,
                    isolation_level=None,  # transactions are opened explicitly
                    check_same_thread=False,  # shared by this process's threads under a lock
                )
            except sqlite3.Error as error:
                raise OSError(f"cannot open the embedding cache {self.path}: {error}") from error
            try:
                self._file_identity = _identity(self.path)
                self._prepare(connection)
            except sqlite3.DatabaseError as error:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()
                if _is_corruption(error):
                    raise _StoreCorrupt(f"{type(error).__name__}: {error}") from None
                raise OSError(f"cannot open the embedding cache {self.path}: {error}") from error
            except _StoreCorrupt:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()
                raise
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        # Only takes effect while the file is still empty. A 768-float32 row (3 KiB) would fill
        # most of a default 4 KiB page on its own; 16 KiB pages hold five, so the file is about
        # 10% larger than the vectors instead of 35%.
        connection.execute("PRAGMA page_size = 16384")
        # WAL lets readers proceed while one process writes; it is a property of the file,
        # so after the first open this is a no-op. NORMAL sync is crash-safe for a killed
        # process in WAL mode (only a power loss may drop the latest commits, never tear one).
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OSError(
                f"cannot put the embedding cache {self.path} in WAL mode (got {mode!r}); "
                f"it needs a local file system"
            )
        connection.execute("PRAGMA synchronous=NORMAL")
        if self.check_on_open:
            problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise _StoreCorrupt("PRAGMA quick_check: " + "; ".join(map(str, problems[:3])))
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version == _SCHEMA_VERSION:
            return
        with _write_transaction(connection):
            # Re-read under the write lock: another process may have created it meanwhile.
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            tables = connection.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            ).fetchone()[0]
            if version != _SCHEMA_VERSION and (version != 0 or tables):
                raise _StoreCorrupt(
                    f"schema version {version} with {tables} tables, expected version "
                    f"{_SCHEMA_VERSION} (written by another version of sk_instructor?)"
                )
            if version != _SCHEMA_VERSION:
                _run_script(connection, _SCHEMA)

    def _rebuild(self, reason: str) -> None:
        """Move a damaged file aside (unless another process did already) and warn."""
        seen = self._file_identity
        self.close()
        with _file_lock(self.path, exclusive=True):
            try:
                current: tuple[int, int] | None = _identity(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and (seen is None or current == seen):
                aside = self.path.with_name(self.path.name + ".corrupt")
                os.replace(self.path, aside)
                # The write-ahead log belongs to the damaged file; left in place, SQLite would
                # replay it into the new, empty one.
                for suffix in ("-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{self.path}{suffix}")
                where = f"moved it to {aside}"
            else:
                where = "it was already moved or replaced (by another process?)"
        warnings.warn(
            f"the embedding cache {self.path} was damaged ({reason}); {where} and started an "
            f"empty cache",
            RuntimeWarning,
            stacklevel=_caller_outside_this_module(),
        )


def _caller_outside_this_module() -> int:
    """The ``stacklevel`` that attributes a warning to the first caller outside this file."""
    # The depth varies (get_many -> _run -> _connect -> _rebuild ...); a warning pointing
    # inside this module would tell the user nothing.
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
        level += 1
    return level


def _run_script(connection: sqlite3.Connection, script: str) -> None:
    # ``executescript`` would COMMIT the surrounding transaction first; statements are run one
    # by one instead so that schema creation stays inside the caller's write transaction.
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            connection.execute(statement)
            statement = ""


@contextlib.contextmanager
def _write_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front: a deferred transaction that later upgrades
    # from read to write can fail with SQLITE_BUSY without waiting for the busy timeout.
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _evict_oldest(connection: sqlite3.Connection, max_bytes: int) -> None:
    (nbytes,) = connection.execute("SELECT nbytes FROM usage WHERE id = 0").fetchone()
    excess = int(nbytes) - max_bytes
    if excess <= 0:
        return
    doomed: list[int] = []
    for rowid, size in connection.execute(
        "SELECT rowid, length(vector) FROM embeddings ORDER BY rowid"
    ):
        doomed.append(rowid)
        excess -= size
        if excess <= 0:
            break
    for start in range(0, len(doomed), _SQL_CHUNK):
        chunk = doomed[start : start + _SQL_CHUNK]
        connection.execute(
            f"DELETE FROM embeddings WHERE rowid IN ({','.join('?' * len(chunk))})", chunk
        )


def _identity(path: Path) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


@contextlib.contextmanager
def _file_lock(database: Path, *, exclusive: bool) -> Iterator[None]:
    """Serialize rebuilding a damaged store against other processes opening it.

    Without it, two workers that find the same damaged file at start-up could each move
    aside the file the other had just created.
    """
    if fcntl is None:
        yield
        return
    with open(f"{database}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _database_file(path: str | os.PathLike[str]) -> Path:
    location = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if location.is_file() or location.suffix.lower() in _DB_SUFFIXES:
        return location
    return location / _DEFAULT_DB_NAME


_DISK_CACHES: dict[tuple[str, int | None, float, bool], DiskCache] = {}


def _shared_disk_cache(
    path: str | os.PathLike[str],
    max_bytes: int | None = None,
    timeout: float = 60.0,
    check_on_open: bool = True,
) -> DiskCache:
    # One object per file and settings in a process, so that every clone, and every
    # unpickled copy, shares one connection and one set of counters.
    key = (str(_database_file(path)), max_bytes, float(timeout), bool(check_on_open))
    with _MODULE_LOCK:
        cache = _DISK_CACHES.get(key)
        if cache is None:
            cache = DiskCache(
                key[0], max_bytes=max_bytes, timeout=timeout, check_on_open=check_on_open
            )
            _DISK_CACHES[key] = cache
        return cache


def resolve_cache(cache: object) -> EmbeddingCache | None:
    """Map the user-facing ``cache`` parameter to a store.

    Parameters
    ----------
    cache : "memory", None, str, os.PathLike or EmbeddingCache
        ``"memory"`` (the default of the estimators): the process-wide
        :func:`default_memory_cache`. ``None``: no caching. Any other str or path: a
        :class:`DiskCache` there, one object per database file in a process so that all
        clones share it. An :class:`EmbeddingCache` instance: itself.

    Returns
    -------
    EmbeddingCache or None

    Raises
    ------
    TypeError
        For any other value.

    Examples
    --------
    >>> from sk_instructor._cache import resolve_cache, default_memory_cache
    >>> resolve_cache("memory") is default_memory_cache()
    True
    >>> resolve_cache(None) is None
    True
    """
    if cache is None:
        return None
    if isinstance(cache, EmbeddingCache):
        return cache
    if isinstance(cache, str) and cache == "memory":
        return default_memory_cache()
    if isinstance(cache, (str, os.PathLike)) and not isinstance(cache, bytes):
        if not os.fspath(cache):
            raise ValueError(
                "cache must be 'memory', None, a directory path for an on-disk cache, or an "
                "EmbeddingCache instance; got the empty string ''"
            )
        return _shared_disk_cache(cache)
    raise TypeError(
        "cache must be 'memory', None, a directory path (str or os.PathLike) for an on-disk "
        f"cache, or an EmbeddingCache instance; got {type(cache).__name__} {cache!r}"
    )


def _reset_locks_in_child() -> None:
    # A lock held by another thread at fork time is never released in the child.
    global _MODULE_LOCK
    _MODULE_LOCK = threading.Lock()
    for cache in list(_LIVE_CACHES):
        cache._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_in_child)
