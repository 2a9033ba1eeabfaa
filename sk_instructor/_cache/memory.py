"""The in-process embedding cache: least recently used out first, bounded in bytes.

The process's default cache (``cache="memory"``) is also shared with the worker processes a
parallel run starts (``GridSearchCV(n_jobs=2)``, ``cross_validate(n_jobs=-1)``, a
multiprocessing pool): a vectorizer pickled for a worker carries where this process's workers
share their vectors (:func:`folder_for_workers`), and a worker that unpickles it, a child of
this process, adds that folder to its default cache as a disk tier (:func:`join_parent`). The
workers then coordinate through it as processes sharing a :class:`DiskCache` do, so each
distinct text is encoded once for the whole run, and this process reads their vectors there
too (the refit of a search encodes nothing again). The folder lives in the system's temporary
folder and is removed when this process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import numbers
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cachetools import LRUCache

from .base import EmbeddingCache
from .disk import DiskCache, _shared_disk_cache

__all__ = ["MemoryCache", "default_memory_cache", "folder_for_workers", "join_parent"]

_DEFAULT_MAX_BYTES = 512 * 2**20


class MemoryCache(EmbeddingCache):
    """In-process embedding cache, least recently used first out, bounded in bytes.

    By default every estimator in a process shares one instance
    (:func:`default_memory_cache`), and ``sklearn.base.clone`` / ``copy.deepcopy`` return the
    same object, so all the clones a grid search makes share their vectors.

    Pickling gives a fresh, EMPTY cache with the same bound: vectors never travel inside a
    pickled estimator. The process-wide default cache unpickles as the receiving process's
    own default cache, which worker processes of a parallel run share with the process that
    started them through a disk tier in a temporary folder (see the module's description):
    ``GridSearchCV(n_jobs=2)`` with ``cache="memory"`` encodes each distinct text once.

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
        # The disk cache shared with the processes of a parallel run, and whether it is used
        # only once its file exists (the starting process: its workers create it).
        self._tier: tuple[DiskCache, bool] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_bytes={self.max_bytes})"

    def __reduce__(self) -> tuple[Callable[..., MemoryCache], tuple[Any, ...]]:
        if self._is_process_default:
            return default_memory_cache, ()
        return type(self), (self.max_bytes,)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            tier = self._shared_tier()
            if tier is not None:
                tier.clear()

    # -- the tier shared with the processes of a parallel run --------------------------------

    @property
    def shared(self) -> bool:
        """Whether this process shares the cache with the processes of a parallel run now."""
        return self._shared_tier() is not None

    def claim(self, keys: Sequence[str], *, limit: int | None = None) -> list[str]:
        tier = self._shared_tier()
        return super().claim(keys, limit=limit) if tier is None else tier.claim(keys, limit=limit)

    def release(self, keys: Sequence[str]) -> None:
        tier = self._shared_tier()
        if tier is None:
            super().release(keys)
        else:
            tier.release(keys)

    def wait_for(self, keys: Sequence[str]) -> list[str]:
        tier = self._shared_tier()
        return super().wait_for(keys) if tier is None else tier.wait_for(keys)

    def _share(self, folder: str | os.PathLike[str], *, once_created: bool) -> None:
        """Use the disk cache in ``folder`` as a tier below this one; ``once_created``: only
        once its file exists (another process creates it)."""
        tier = _shared_disk_cache(folder, self.max_bytes)
        tier._makes_folder = False  # made by the process that started the run (see above)
        with self._lock:
            if self._tier is None or self._tier[0] is not tier:
                self._tier = (tier, once_created)

    def _shared_tier(self) -> DiskCache | None:
        tier = self._tier
        if tier is None:
            return None
        cache, once_created = tier
        if once_created:
            if not cache.path.exists():
                return None
            self._tier = (cache, False)  # created: used from now on
        return cache

    # -- EmbeddingCache hooks --------------------------------------------------------------

    def _lookup(self, keys: list[str]) -> list[np.ndarray | None]:
        # ``get`` marks a found key as the most recently used.
        found = [self._entries.get(key) for key in keys]
        tier = self._shared_tier()
        missing = [position for position, vector in enumerate(found) if vector is None]
        if tier is not None and missing:
            # Counted once, here: the tier's counters are this cache's (see _count).
            below = tier.get_many([keys[position] for position in missing], count=False)
            for position, vector in zip(missing, below, strict=True):
                if vector is not None:
                    found[position] = vector
                    if vector.nbytes <= self.max_bytes:
                        self._entries[keys[position]] = vector
        return found

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
        tier = self._shared_tier()
        if tier is not None:
            tier.put_many(keys, vectors)

    def _size(self) -> tuple[int, int]:
        return len(self._entries), int(self._entries.currsize)

    def _count(
        self, *, hits: int = 0, misses: int = 0, encoded: int = 0, reset: bool = False
    ) -> None:
        # Shared, the counts go to the tier's file: the starting process reads its workers'.
        tier = self._shared_tier()
        if reset:
            super()._count(reset=True)
            if tier is not None:
                tier.reset_stats()
        if tier is None:
            super()._count(hits=hits, misses=misses, encoded=encoded)
        elif hits or misses or encoded:
            with tier._lock:
                tier._count(hits=hits, misses=misses, encoded=encoded)

    def _counters(self) -> tuple[int, int, int]:
        counters = super()._counters()
        tier = self._shared_tier()
        if tier is None:
            return counters
        with tier._lock:
            shared = tier._counters()
        return tuple(a + b for a, b in zip(counters, shared, strict=True))


def _nbytes(vector: np.ndarray) -> int:
    return vector.nbytes


_DEFAULT_MEMORY_CACHE: MemoryCache | None = None
_DEFAULT_LOCK = threading.Lock()


# This process's folder for the disk tier its workers share: (pid that chose it, folder).
_FOLDER_FOR_WORKERS: tuple[int, Path] | None = None
# The folder of the process that started this one, when this one is its worker: (pid, folder).
_JOINED_FOLDER: tuple[int, str] | None = None


def folder_for_workers() -> tuple[int, str]:
    """Where the worker processes this process starts share its default cache: ``(this
    process's id, a folder)``, carried by the estimators pickled for them.

    The first call makes a new folder in the system's temporary folder, arranges for its
    removal when this process exits, and has the default cache of this process read what its
    workers store there (once the first of them has stored a vector).
    """
    global _FOLDER_FOR_WORKERS
    with _DEFAULT_LOCK:
        joined = _JOINED_FOLDER
        if joined is not None and joined[0] == os.getpid():
            # A worker itself: its own workers share the folder it shares.
            return joined
        if _FOLDER_FOR_WORKERS is None or _FOLDER_FOR_WORKERS[0] != os.getpid():
            folder = Path(tempfile.gettempdir()) / (
                f"sk-instructor-workers-{os.getpid()}-{secrets.token_hex(4)}"
            )
            # Made here, once: a worker never makes it again once this process removed it.
            with contextlib.suppress(OSError):  # unusable: each worker warns and goes on alone
                folder.mkdir(mode=0o700)
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            _FOLDER_FOR_WORKERS = (os.getpid(), folder)
        pid, folder = _FOLDER_FOR_WORKERS
    default_memory_cache()._share(folder, once_created=True)
    return pid, str(folder)


def join_parent(origin: tuple[int, str]) -> None:
    """Called where an estimator that carries ``origin`` (:func:`folder_for_workers`) is
    unpickled: in a worker process that ``origin``'s process started, the default cache shares
    its folder. Anywhere else (the same process, a later session, another machine) nothing
    changes: the default cache is the process's own."""
    global _JOINED_FOLDER
    pid, folder = origin
    if os.getpid() == pid or os.getppid() != pid:
        return
    import multiprocessing

    if multiprocessing.parent_process() is None:  # a child, but not a worker of a pool
        return
    with _DEFAULT_LOCK:
        _JOINED_FOLDER = (os.getpid(), str(folder))
    default_memory_cache()._share(folder, once_created=False)


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
