"""The in-process embedding cache: least recently used out first, bounded in bytes."""

from __future__ import annotations

import numbers
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from cachetools import LRUCache

from .base import EmbeddingCache

__all__ = ["MemoryCache", "default_memory_cache"]

_DEFAULT_MAX_BYTES = 512 * 2**20


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
    >>> from sk_instructor import MemoryCache
    >>> cache = MemoryCache(max_bytes=2**20)
    >>> cache.put_many(["k1", "k2"], np.ones((2, 4), dtype=np.float32))
    >>> [v is None for v in cache.get_many(["k1", "k3"])]
    [False, True]
    >>> cache.stats()
    CacheStats(hits=1, misses=1, encoded=0, entries=2, nbytes=32)
    """

    def __init__(self, max_bytes: int = _DEFAULT_MAX_BYTES) -> None:
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
        self._entries: LRUCache = LRUCache(maxsize=self.max_bytes, getsizeof=_nbytes)
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

    def _lookup(self, keys: list[str]) -> list[np.ndarray | None]:
        # ``get`` marks a found key as the most recently used.
        return [self._entries.get(key) for key in keys]

    def _store(self, keys: list[str], vectors: np.ndarray) -> None:
        # Copy rows before touching the cache so that a failure (MemoryError) cannot leave half
        # of the batch stored; each row gets its own buffer so that the batch array is not kept
        # alive by views.
        stored = [
            (key, row.copy())
            for key, row in zip(keys, vectors, strict=True)
            if row.nbytes <= self.max_bytes  # a vector larger than the whole bound is not kept
        ]
        for key, row in stored:
            row.flags.writeable = False
            self._entries[key] = row

    def _size(self) -> tuple[int, int]:
        return len(self._entries), int(self._entries.currsize)


def _nbytes(vector: np.ndarray) -> int:
    return vector.nbytes


_DEFAULT_MEMORY_CACHE: MemoryCache | None = None
_DEFAULT_LOCK = threading.Lock()


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
    >>> from sk_instructor import default_memory_cache
    >>> default_memory_cache() is default_memory_cache()
    True
    """
    global _DEFAULT_MEMORY_CACHE
    if _DEFAULT_MEMORY_CACHE is None:
        with _DEFAULT_LOCK:
            if _DEFAULT_MEMORY_CACHE is None:
                created = MemoryCache()
                created._is_process_default = True
                _DEFAULT_MEMORY_CACHE = created
    return _DEFAULT_MEMORY_CACHE
