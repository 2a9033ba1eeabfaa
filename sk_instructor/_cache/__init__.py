"""The embedding cache: every distinct (weights, instruction, settings, text) embedded once.

A grid search over instructions clones the vectorizer for every fold and grid point, and
without a cache each clone re-encodes the same texts. The engine instead keys every pair
(``keys.py``), asks the store for what it has and encodes only the rest. Two stores:
:class:`MemoryCache` (``memory.py``, in-process, the default) and :class:`DiskCache`
(``disk.py``, SQLite, shared by processes and sessions), both under the protocol of
:class:`EmbeddingCache` (``base.py``); ``resolve.py`` maps the estimators' ``cache``
parameter to one. Nothing here imports torch.
"""

from .base import CacheStats, EmbeddingCache
from .disk import DiskCache
from .disk import _shared_disk_cache as _shared_disk_cache  # see the end of this file
from .keys import CACHE_FORMAT_VERSION, make_key
from .memory import MemoryCache, default_memory_cache
from .resolve import resolve_cache

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

# Pickles written by sk_instructor 0.1.0 name ``sk_instructor._cache._shared_disk_cache`` (a
# DiskCache) and ``sk_instructor._cache.default_memory_cache``: both must keep resolving here.
