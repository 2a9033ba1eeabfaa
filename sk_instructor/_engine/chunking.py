"""Texts longer than the window, split into overlapping chunks (``long_text="chunk"``).

INSTRUCTOR reads at most ``max_seq_length`` tokens, instruction included. In chunk mode, a text
whose ``instruction + text`` is longer (decided exactly as the truncating path decides to cut
it) is split into windows of its tokens. Each window becomes a substring of the text: an
ordinary text, embedded under the row's instruction as the model was trained to read a text,
with the same cache key rule, deduplication and token-budgeted batching as any other. A text
that fits is one chunk, itself, and takes the truncating path's exact route.

How a text is split (:func:`split_text`):

1. its tokens are counted alone (no special tokens), with their character offsets;
2. a window holds ``max_seq_length - special tokens - instruction tokens`` text tokens
   (:func:`text_window`), and consecutive windows share ``overlap`` tokens (at most half a
   window, so that every window moves on by at least half its length);
3. a window that would end inside a word ends before that word instead, and a window that
   would start inside a word starts at its beginning (a substring that starts mid-word
   tokenizes differently from the same tokens in context), unless that moves the boundary back
   by more than an eighth of a window (a URL, a base64 blob): such a word is cut between two
   of its tokens;
4. each window is the substring from its first token's start to its last token's end. It is
   tokenized again with the instruction, exactly as it will be encoded, and shrunk until it
   fits (a substring can tokenize differently at its edges than inside the whole text).

The chunk vectors of a row are then averaged, weighted by the text tokens of each chunk
(:meth:`ChunkedEmbeddings.pool`), or kept apart for a search that ranks a document by its best
chunk.

This module needs the tokenizer, not torch: it imports numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .tokenization import Tokenizer

__all__ = [
    "DEFAULT_CHUNK_OVERLAP",
    "Chunk",
    "ChunkPlan",
    "ChunkedEmbeddings",
    "RowProgress",
    "plan_chunks",
    "split_text",
    "text_window",
]

#: Tokens shared by consecutive windows: a sentence cut by one window boundary is read whole
#: by one of the two windows when it is shorter than this (most are; see benchmarks/long_text.py).
DEFAULT_CHUNK_OVERLAP = 32
# Unique pairs checked for their length per tokenizer call: bounds the memory of token ids.
_BLOCK_SIZE = 8192
# Chunks pooled at a time: bounds the float64 copy that the weighted mean is computed in.
_POOL_BLOCK_CHUNKS = 65536


@dataclass(frozen=True)
class Chunk:
    """One window of a text: its substring and the range of the text's tokens it holds."""

    text: str
    start: int  # first token, counted in the tokens of the whole text alone
    stop: int  # one past the last token

    @property
    def n_tokens(self) -> int:
        return self.stop - self.start


@dataclass
class ChunkPlan:
    """The chunks of a list of (instruction, text) rows, row after row, in reading order."""

    instructions: list[str]
    texts: list[str]
    owners: np.ndarray  # the input row of each chunk, non-decreasing, every row at least once
    weights: np.ndarray  # text tokens of each chunk of a split text; 1 for a text kept whole
    n_split: int  # rows split into several chunks


@dataclass
class ChunkedEmbeddings:
    """Chunk vectors and the row each belongs to (``owners``, non-decreasing, every row of
    ``range(n_rows)`` at least once), with the weight of each chunk in its row's mean."""

    vectors: np.ndarray
    owners: np.ndarray
    weights: np.ndarray
    n_rows: int

    def pool(self, *, normalize: bool) -> np.ndarray:
        """One vector per row: the weighted mean of its chunks, unit length if ``normalize``.

        A row of one chunk gets that chunk's vector bit for bit: a text that fits the window is
        embedded exactly as in truncate mode. The mean is computed in float64.
        """
        starts = _group_starts(self.owners, self.n_rows)
        ends = np.append(starts[1:], len(self.owners))
        pooled = self.vectors[starts].copy()
        lo = 0
        while lo < self.n_rows:
            # Rows lo..hi-1 hold at most _POOL_BLOCK_CHUNKS chunks (or are one row).
            hi = int(np.searchsorted(ends, starts[lo] + _POOL_BLOCK_CHUNKS, side="right"))
            hi = max(hi, lo + 1)
            split = np.flatnonzero(ends[lo:hi] - starts[lo:hi] > 1)
            if split.size:
                first, last = starts[lo], ends[hi - 1]
                weights = self.weights[first:last].astype(np.float64)
                local = starts[lo:hi] - first
                sums = np.add.reduceat(self.vectors[first:last] * weights[:, None], local, axis=0)
                means = sums[split] / np.add.reduceat(weights, local)[split, None]
                if normalize:
                    norms = np.linalg.norm(means, axis=1, keepdims=True)
                    means = np.divide(means, norms, out=np.zeros_like(means), where=norms > 0)
                pooled[lo + split] = means
            lo = hi
        return pooled


class RowProgress:
    """A progress bar counted in input rows, advanced by an encoder that counts chunks.

    The bar moves by the share of the chunks encoded: ``n_rows * chunks done / n_chunks``
    rounded down, so that it reaches ``n_rows`` exactly when the last chunk is done.
    """

    def __init__(self, progress: Any, n_chunks: int, n_rows: int) -> None:
        self._progress = progress
        self._n_chunks = max(n_chunks, 1)
        self._n_rows = n_rows
        self._chunks_done = 0
        self._rows_shown = 0

    def update(self, n: int) -> None:
        self._chunks_done += n
        rows = self._n_rows * self._chunks_done // self._n_chunks
        if rows > self._rows_shown:
            self._progress.update(rows - self._rows_shown)
            self._rows_shown = rows


def text_window(tokenizer: Tokenizer, instruction: str, max_seq_length: int) -> int:
    """Text tokens a chunk holds under ``instruction``: the window less the special tokens and
    the instruction's tokens. ValueError when the instruction leaves no room for text."""
    n_instruction = tokenizer.count_tokens(instruction.strip())
    taken = n_instruction + tokenizer.n_special_tokens
    window = max_seq_length - taken
    if window < 1:
        shown = instruction if len(instruction) <= 80 else instruction[:77] + "..."
        raise ValueError(
            f"the instruction takes {taken} of the {max_seq_length} tokens of max_seq_length "
            f"(special tokens included), leaving none for the text, so long_text='chunk' "
            f"cannot split texts under it; shorten the instruction or raise max_seq_length "
            f"(instruction: {shown!r})."
        )
    return window


def split_text(
    tokenizer: Tokenizer,
    instruction: str,
    text: str,
    max_seq_length: int,
    overlap: int,
    *,
    window: int | None = None,
) -> list[Chunk]:
    """Split ``text`` into overlapping chunks that each fit ``max_seq_length`` with
    ``instruction`` (the rules are in the module's docstring).

    A text of at most one window gives one chunk. The chunks cover every token of the text, in
    order; each chunk's text is the substring of the text (as the tokenizer reads it:
    lower-cased where the checkpoint says so) between its first and last token, stripped.
    """
    if window is None:
        window = text_window(tokenizer, instruction, max_seq_length)
    prepared, offsets, word_start = tokenizer.text_tokens(text.strip())
    n_tokens = len(offsets)
    if n_tokens == 0:
        return [Chunk(prepared, 0, 0)]
    # word_begin[i]: the first token of the word that token i belongs to.
    word_begin = np.maximum.accumulate(np.where(word_start, np.arange(n_tokens), 0))

    def substring(start: int, stop: int) -> str:
        return prepared[offsets[start, 0] : offsets[stop - 1, 1]].strip()

    def windows(start: int, size: int) -> list[tuple[int, int]]:
        spans = []
        shared = min(overlap, size // 2)
        slack = size // 8
        while True:
            stop = min(start + size, n_tokens)
            if stop < n_tokens:
                begin = int(word_begin[stop])
                if start < begin and stop - begin <= slack:
                    stop = begin
            spans.append((start, stop))
            if stop >= n_tokens:
                return spans
            following = max(stop - shared, start + 1)
            begin = int(word_begin[following])
            if start < begin and following - begin <= slack:
                following = begin
            start = following

    chunks: list[Chunk] = []
    spans = windows(0, window)
    while spans:
        texts = [substring(start, stop) for start, stop in spans]
        too_long = tokenizer.overflowing([instruction] * len(spans), texts, max_seq_length)
        if not too_long.any():
            chunks += [Chunk(t, start, stop) for t, (start, stop) in zip(texts, spans, strict=True)]
            break
        first_bad = int(np.argmax(too_long))
        chunks += [
            Chunk(t, start, stop)
            for t, (start, stop) in zip(texts[:first_bad], spans[:first_bad], strict=True)
        ]
        start, stop = spans[first_bad]
        # Shrink by 1, 2, 4... tokens until the chunk fits; one token that still does not fit
        # (a tokenizer that merges it with the instruction into more tokens than the window)
        # is left to the encoder, which truncates it with its usual warning.
        step = 1
        fits = False
        while stop - start > 1 and not fits:
            stop = max(start + 1, stop - step)
            fits = not tokenizer.overflowing(
                [instruction], [substring(start, stop)], max_seq_length
            )[0]
            step *= 2
        chunks.append(Chunk(substring(start, stop), start, stop))
        if not fits:
            # Nothing shorter helps: keep the rest as planned rather than shrink window after
            # window (one tokenizer call each) to the same end.
            rest = windows(stop, window)
            chunks += [Chunk(substring(a, b), a, b) for a, b in rest]
            break
        if stop >= n_tokens:
            break
        # What made this window too long (the junction with the instruction, say) most likely
        # recurs: the windows after it are as short, so they are rarely checked twice.
        window = stop - start
        following = max(stop - min(overlap, window // 2), start + 1)
        spans = windows(following, window)
    return chunks


def plan_chunks(
    tokenizer: Tokenizer,
    instructions: list[str],
    texts: list[str],
    max_seq_length: int,
    overlap: int,
) -> ChunkPlan:
    """The chunks of each row: the text itself when ``instruction + text`` fits
    ``max_seq_length``, else its :func:`split_text` chunks.

    Identical (instruction, stripped text) rows are split once. Raises ValueError when an
    instruction leaves no room for text, whether or not its texts need splitting (they would
    otherwise be truncated to nothing).
    """
    windows = {
        instruction: text_window(tokenizer, instruction, max_seq_length)
        for instruction in dict.fromkeys(instructions)
    }
    unique: dict[tuple[str, str], int] = {}
    inverse = np.empty(len(texts), dtype=np.int64)
    for row, (instruction, text) in enumerate(zip(instructions, texts, strict=True)):
        inverse[row] = unique.setdefault((instruction, text.strip()), len(unique))
    pairs = list(unique)
    too_long = np.zeros(len(pairs), dtype=bool)
    for first in range(0, len(pairs), _BLOCK_SIZE):
        block = pairs[first : first + _BLOCK_SIZE]
        too_long[first : first + len(block)] = tokenizer.overflowing(
            [instruction for instruction, _ in block], [text for _, text in block], max_seq_length
        )
    splits = {
        int(index): split_text(
            tokenizer,
            pairs[index][0],
            pairs[index][1],
            max_seq_length,
            overlap,
            window=windows[pairs[index][0]],
        )
        for index in np.flatnonzero(too_long)
    }
    chunk_instructions: list[str] = []
    chunk_texts: list[str] = []
    owners: list[int] = []
    weights: list[int] = []
    n_split = 0
    for row, index in enumerate(inverse):
        chunks = splits.get(int(index))
        if chunks is None:
            chunk_instructions.append(instructions[row])
            chunk_texts.append(texts[row])
            owners.append(row)
            weights.append(1)
            continue
        n_split += len(chunks) > 1
        chunk_instructions += [instructions[row]] * len(chunks)
        chunk_texts += [chunk.text for chunk in chunks]
        owners += [row] * len(chunks)
        weights += [max(chunk.n_tokens, 1) for chunk in chunks]
    return ChunkPlan(
        instructions=chunk_instructions,
        texts=chunk_texts,
        owners=np.asarray(owners, dtype=np.intp),
        weights=np.asarray(weights, dtype=np.int64),
        n_split=n_split,
    )


def _group_starts(owners: np.ndarray, n_rows: int) -> np.ndarray:
    """Position of each row's first chunk; checks that owners run 0, 0, 1, 2, 2, ... n_rows - 1."""
    owners = np.asarray(owners)
    if len(owners) == 0:
        if n_rows:
            raise ValueError(f"no chunks for {n_rows} rows")
        return np.zeros(0, dtype=np.intp)
    steps = np.diff(owners)
    if owners[0] != 0 or owners[-1] != n_rows - 1 or ((steps != 0) & (steps != 1)).any():
        raise ValueError(
            "chunk owners must run through 0 .. n_rows - 1 in order, each at least once"
        )
    return np.flatnonzero(np.r_[True, steps != 0])
