"""Each key encoded once by the processes sharing a cache: the loop the engine runs.

Two ``GridSearchCV(n_jobs=2)`` workers that look up the same texts at the same moment both
miss them. Without coordination both encode them; here each key is encoded by the one process
that claims it (:meth:`EmbeddingCache.claim`), and the other reads the vector once it is stored
(:meth:`EmbeddingCache.wait_for`). The rules that keep it from losing keys or waiting forever:

- a process waits only while it holds no claim, so no two processes wait for each other;
- every claim is released on every exit path (``finally``), and a claim whose process died is
  taken over by the next process that asks (see :class:`DiskCache`);
- a key freed unstored (its claimant failed, or could not store it) is claimed again, by
  whichever process asks first.

Nothing here knows about models: the engine passes what encodes (and stores) and what accepts
vectors found, so that the same loop is tested from processes that import no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .base import EmbeddingCache

__all__ = ["encode_once"]


def encode_once(
    cache: EmbeddingCache,
    keys: Sequence[str],
    *,
    dim: int | None,
    encode: Callable[[np.ndarray], None],
    found: Callable[[np.ndarray, list[np.ndarray]], None] | None,
    block: int | None = None,
) -> None:
    """Get the vector of every one of ``keys`` (distinct, all missing from ``cache`` when the
    caller looked): encoded here if this process claims it, else read once another stored it.

    Parameters
    ----------
    cache : EmbeddingCache
        The cache the keys were looked up in; its claims decide who encodes what. A cache of
        one process grants every claim: everything is encoded here, in one call.
    keys : sequence of str
        Distinct keys.
    dim : int or None
        The width of a vector (a stored row of another width is not served).
    encode : callable(positions)
        Encodes the keys at ``positions`` (an int array into ``keys``) and stores them with
        :meth:`EmbeddingCache.put_many`.
    found : callable(positions, vectors) or None
        Receives the vectors of keys another process (or an earlier call) stored.
    block : int or None, default=None
        Keys claimed at a time: processes wanting the same keys share them out by blocks.
    """
    index = {key: position for position, key in enumerate(keys)}
    todo = list(keys)
    while todo:
        claimed = cache.claim(todo, limit=block)
        if claimed:
            try:
                # Another process may have stored some between the caller's lookup and now.
                missing = _read(cache, claimed, index, dim, found) if cache.shared else claimed
                if missing:
                    encode(np.array([index[key] for key in missing], dtype=np.int64))
            finally:
                cache.release(claimed)
            done = set(claimed)
        else:
            # Every key left is claimed by another live process: this one holds no claim now,
            # so it can wait without holding anyone up.
            ready = cache.wait_for(todo)
            done = set(ready) - set(_read(cache, ready, index, dim, found))
        todo = [key for key in todo if key not in done]


def _read(cache, keys: list[str], index: dict[str, int], dim, found) -> list[str]:
    """Hand ``found`` the stored vectors of ``keys``; returns the keys not stored."""
    if not keys:
        return []
    vectors = cache.get_many(keys, dim=dim, count=False)  # counted when first looked up
    hits = [position for position, vector in enumerate(vectors) if vector is not None]
    if hits and found is not None:
        found(
            np.array([index[keys[position]] for position in hits], dtype=np.int64),
            [vectors[position] for position in hits],
        )
    return [key for key, vector in zip(keys, vectors, strict=True) if vector is None]
