"""From the estimators' ``cache`` parameter to a store."""

from __future__ import annotations

import os

from .base import EmbeddingCache
from .disk import _shared_disk_cache
from .memory import default_memory_cache

__all__ = ["resolve_cache"]


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
    >>> from sk_instructor import default_memory_cache
    >>> from sk_instructor._cache import resolve_cache
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
