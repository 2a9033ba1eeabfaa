"""What every embedding cache does: look up and store vectors by key, and count.

The encoding engine asks the cache for the vector of every distinct ``(model, instruction,
settings, text)`` it needs (:meth:`EmbeddingCache.get_many`), encodes only the misses and stores
them back (:meth:`EmbeddingCache.put_many`), then says how many texts it really encoded
(:meth:`EmbeddingCache.record_encoded`). A cache only stores vectors; it never runs a model.

Between the lookup and the store, a cache shared by processes coordinates them
(:meth:`EmbeddingCache.claim`, :meth:`EmbeddingCache.release`, :meth:`EmbeddingCache.wait_for`,
driven by :func:`sk_instructor._cache.coordination.encode_once`): a key is encoded by the one
process that claimed it, the others wait for its vector. A cache of one process grants every
claim, and the engine encodes every miss itself.
"""

from __future__ import annotations

import numbers
import os
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CacheStats", "EmbeddingCache"]


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


class EmbeddingCache(ABC):
    """Abstract store of embedding vectors addressed by keys of :func:`make_key`.

    The engine calls :meth:`get_many` for the keys it needs, encodes the misses, stores them
    with :meth:`put_many` and calls :meth:`record_encoded` with how many texts it encoded. All
    methods are thread-safe.

    To write a store, subclass this and implement ``_lookup``, ``_store``, ``_size`` and
    :meth:`clear` (every call into them holds ``self._lock``), calling ``super().__init__()``.
    Counters live in this object unless the store overrides ``_count`` and ``_counters``
    (:class:`DiskCache` keeps them in its file, shared by every process). A store shared by
    processes also overrides :attr:`shared`, :meth:`claim`, :meth:`release` and
    :meth:`wait_for`, so that each key is encoded by one of them; the defaults coordinate
    nobody (every claim is granted).

    ``copy.deepcopy`` and ``sklearn.base.clone`` return the object itself, so every clone of
    an estimator shares its cache.
    """

    def __init__(self) -> None:
        # Re-entrant so that subclasses may call their own locked helpers.
        self._lock = threading.RLock()
        self._local_counters = [0, 0, 0]  # hits, misses, encoded
        _LIVE_CACHES.add(self)

    # sklearn's ``clone`` deep-copies every parameter that is not an estimator; returning
    # ``self`` is what lets all clones of a vectorizer share one cache (and its counters).
    def __copy__(self) -> EmbeddingCache:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> EmbeddingCache:
        return self

    def get_many(
        self, keys: Sequence[str], *, dim: int | None = None, count: bool = True
    ) -> list[np.ndarray | None]:
        """Look up vectors; count a hit per key found and a miss per key not found.

        Parameters
        ----------
        keys : sequence of str
            Keys from :func:`make_key`; duplicates are allowed and counted each time.
        dim : int or None, default=None
            The length every vector must have. A stored row of another length, or one that
            is not finite, cannot be the engine's: it counts as a miss (and is overwritten
            when the text is encoded again) instead of being served.
        count : bool, default=True
            ``False`` leaves the counters alone: the engine reading again keys it already
            looked up (and counted as misses), once another process has encoded them.

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
            if dim is not None:
                found = [
                    vector
                    if vector is not None and vector.shape == (dim,) and np.isfinite(vector).all()
                    else None
                    for vector in found
                ]
            if count:
                hits = sum(vector is not None for vector in found)
                self._count(hits=hits, misses=len(keys) - hits)
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
            self._count(encoded=int(n))

    # -- coordination between processes (no-ops for a cache of one process) -------------------

    @property
    def shared(self) -> bool:
        """Whether other processes use this store now: their claims then count. ``False``
        here (a cache of one process)."""
        return False

    def claim(self, keys: Sequence[str], *, limit: int | None = None) -> list[str]:
        """Take the right to encode some of ``keys``, so that no other process encodes them.

        The claimed keys are this process's to encode and store (:meth:`put_many`), and to
        :meth:`release` on every exit path. Another process asking for them meanwhile is not
        granted them: it waits (:meth:`wait_for`) and reads the stored vectors.

        Parameters
        ----------
        keys : sequence of str
            Keys the caller lacks.
        limit : int or None, default=None
            Claim at most this many (processes sharing the work then take turns).

        Returns
        -------
        list of str
            The keys claimed, in the order given. This base class, a cache of one process,
            claims every key: there is nobody to share them with, so ``limit`` is moot.
        """
        return list(dict.fromkeys(_check_keys(keys, "claim")))

    def release(self, keys: Sequence[str]) -> None:
        """Give up the claims on ``keys`` this process holds (stored or not): another process
        may then encode those not stored. A no-op here."""
        _check_keys(keys, "release")

    def wait_for(self, keys: Sequence[str]) -> list[str]:
        """Wait until some of ``keys`` are no longer claimed by another live process.

        Returns
        -------
        list of str
            The keys ready: stored by their claimant, or free to claim again (their claimant
            released them unstored, or died). This base class returns every key at once.
        """
        return list(dict.fromkeys(_check_keys(keys, "wait_for")))

    def stats(self) -> CacheStats:
        """Return hits, misses and encoded (counted so far) and entries, nbytes (stored now)."""
        with self._lock:
            hits, misses, encoded = self._counters()
            entries, nbytes = self._size()
            return CacheStats(hits, misses, encoded, entries, nbytes)

    def reset_stats(self) -> None:
        """Set hits, misses and encoded back to zero; stored vectors are kept."""
        with self._lock:
            self._count(reset=True)

    @abstractmethod
    def clear(self) -> None:
        """Remove every stored vector (counters are kept; see :meth:`reset_stats`)."""

    @abstractmethod
    def _lookup(self, keys: list[str]) -> list[np.ndarray | None]: ...

    @abstractmethod
    def _store(self, keys: list[str], vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _size(self) -> tuple[int, int]: ...

    def _count(
        self, *, hits: int = 0, misses: int = 0, encoded: int = 0, reset: bool = False
    ) -> None:
        counters = self._local_counters
        if reset:
            counters[:] = [0, 0, 0]
        counters[0] += hits
        counters[1] += misses
        counters[2] += encoded

    def _counters(self) -> tuple[int, int, int]:
        hits, misses, encoded = self._local_counters
        return hits, misses, encoded


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


def _reset_locks_in_child() -> None:
    # A lock held by another thread at fork time is never released in the child.
    for cache in list(_LIVE_CACHES):
        cache._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_in_child)
