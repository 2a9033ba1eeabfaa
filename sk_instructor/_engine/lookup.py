"""The first step of every encoding: distinct pairs, their cache keys, what the cache holds.

Kept apart from the model, and free of torch, because it needs nothing but the checkpoint's
description: when the cache holds every vector asked for (a warm start, a second process on
the same disk cache), the answer is complete here and the model is never loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .._cache import EmbeddingCache
    from .._cache.keys import KeySettings

__all__ = ["CacheLookup"]


class CacheLookup:
    """The distinct (instruction, text) pairs of a call and the vectors the cache has for them.

    The instruction and the stripped text fully determine the model input, so identical pairs
    (whitespace around a text included) are looked up, and later encoded, once.

    Parameters
    ----------
    instructions, texts : sequence of str
        One instruction per text.
    embedding_dim : int
        The width of a vector; a cached row of another width is a miss.
    cache : EmbeddingCache or None
        Where to look (one counted lookup); ``None``: every pair is to be encoded.
    settings : KeySettings or None
        How to key the pairs (needed with a cache).
    progress : object with ``update(n)`` or None
        Advanced by the rows whose vector was found.

    Attributes
    ----------
    pairs : list of (str, str)
        The distinct pairs, texts stripped.
    inverse : ndarray of int
        For each input row, its pair.
    counts : ndarray of int
        Input rows per pair.
    vectors : ndarray of shape (n_pairs, embedding_dim), float32
        The vectors found; zero rows for the others, until they are encoded.
    keys : list of str or None
        The cache key of each pair (with a cache).
    todo : ndarray of int
        The pairs to encode.
    """

    def __init__(
        self,
        instructions: Sequence[str],
        texts: Sequence[str],
        *,
        embedding_dim: int,
        cache: EmbeddingCache | None = None,
        settings: KeySettings | None = None,
        progress: Any = None,
    ) -> None:
        if len(instructions) != len(texts):
            raise ValueError(
                f"{len(instructions)} instructions for {len(texts)} texts: give one per text."
            )
        unique: dict[tuple[str, str], int] = {}
        self.inverse = np.empty(len(texts), dtype=np.int64)
        for row, (instruction, text) in enumerate(zip(instructions, texts, strict=True)):
            self.inverse[row] = unique.setdefault((instruction, text.strip()), len(unique))
        self.pairs = list(unique)
        self.counts = np.bincount(self.inverse, minlength=len(self.pairs))
        self.vectors = np.zeros((len(self.pairs), embedding_dim), dtype=np.float32)
        self.settings = settings
        self.cache = cache
        self.keys: list[str] | None = None
        self.todo = np.arange(len(self.pairs))
        if cache is not None and self.pairs:
            self.keys = settings.keys(self.pairs)
            found = cache.get_many(self.keys, dim=embedding_dim)
            hit = np.array([vector is not None for vector in found], dtype=bool)
            for position in np.flatnonzero(hit):
                self.vectors[position] = found[position]
            self.todo = np.flatnonzero(~hit)
            if progress is not None and hit.any():
                progress.update(int(self.counts[hit].sum()))

    def fill(self, pairs: np.ndarray, vectors: Sequence[np.ndarray], progress: Any = None) -> None:
        """Take the vectors of ``pairs`` read later (another process encoded them meanwhile):
        they are no longer to encode, and ``progress`` advances by their rows."""
        if not len(pairs):
            return
        self.vectors[pairs] = np.stack(vectors)
        self.todo = np.setdiff1d(self.todo, pairs, assume_unique=True)
        if progress is not None:
            progress.update(int(self.counts[pairs].sum()))

    @property
    def complete(self) -> bool:
        """Whether every pair has its vector."""
        return len(self.todo) == 0

    def result(self) -> np.ndarray:
        """The vector of every input row, in input order."""
        return self.vectors[self.inverse]
