"""Grouping texts into batches by a token budget.

Texts are sorted by token count and cut into batches of neighbours in that order, so that each
batch pads to a length close to all its members'. A batch holds at most ``token_budget`` padded
tokens: a fixed count per batch either wastes padding on long texts or runs tiny matrices on
short ones. Where to cut is chosen to compute the fewest tokens (see :func:`plan_batches`).

The fast T5 encoder pads each batch to a multiple of 8 tokens (:func:`align_lengths`), and when
it is compiled (one graph per width) up to one of a few *buckets* (:func:`bucket_lengths`), so
that a handful of shapes cover every batch; the planner counts the padded widths.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["DEFAULT_TOKEN_BUDGET", "align_lengths", "bucket_lengths", "plan_batches"]

# Padded tokens per batch, per device type. The CPU figure is the best of
# benchmarks/token_budget.py on the project's 2-core machines, quiet and loaded (the runs are
# recorded in benchmarks/README.md); the accelerator figures are starting points that
# benchmarks/gpu_check.sh measures.
DEFAULT_TOKEN_BUDGET = {"cpu": 1536, "cuda": 65536, "mps": 16384}

# The fixed cost of one forward pass (Python, kernel launches, thread start-up), in tokens, as a
# fraction of the budget: a batch is worth cutting off only where it saves more padding than this.
_OVERHEAD_FRACTION = 16

# Padded widths of bucketed batches: multiples of _BUCKET_MIN_STEP up to 8 * _BUCKET_MIN_STEP,
# then _BUCKETS_PER_OCTAVE steps per doubling (8, 16, ..., 64, 80, ..., 128, 160, ..., 512):
# 20 shapes up to 512 tokens. On the benchmark corpus (benchmarks/_corpus.py, 4,000 texts) the
# planner then computes 10.3% padding at a 32,768-token budget against 10.8% unbucketed (the
# planner already trades padding for fewer batches); a step of 16 would give 15.6%, 32 25%.
# (With the GPU's tokenization blocks on the 20,000-pair steady-state set: 12.0% against 10.5%.)
_BUCKET_MIN_STEP = 8
_BUCKETS_PER_OCTAVE = 4


def align_lengths(lengths: np.ndarray | int) -> np.ndarray:
    """``lengths`` rounded up to a multiple of 8: the widths tensor cores and fused attention
    kernels prefer, at a cost of under 8 tokens per row.

    Examples
    --------
    >>> align_lengths(np.array([1, 8, 9, 300])).tolist()
    [8, 8, 16, 304]
    """
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    return -(-lengths // _BUCKET_MIN_STEP) * _BUCKET_MIN_STEP


def bucket_lengths(lengths: np.ndarray | int) -> np.ndarray:
    """The padded width of a batch whose longest row has ``lengths`` tokens.

    The step grows with the length (a quarter of the octave, at least 8 tokens), so the padding
    added is under 8 tokens or under a quarter of the length, and the widths up to 512 take 20
    values.

    Examples
    --------
    >>> bucket_lengths(np.array([1, 8, 9, 64, 65, 129, 300, 512])).tolist()
    [8, 8, 16, 64, 80, 160, 320, 512]
    """
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    # The octave of n - 1, so that each power of two closes its own octave (64 stays 64).
    octave = np.left_shift(1, np.floor(np.log2(np.maximum(lengths - 1, 1))).astype(np.int64))
    step = np.maximum(_BUCKET_MIN_STEP, octave // _BUCKETS_PER_OCTAVE)
    return -(-lengths // step) * step


def plan_batches(
    lengths: np.ndarray,
    *,
    token_budget: int,
    max_batch_size: int | None = None,
    batch_overhead: int | None = None,
    pad_to: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Split row indices into batches of neighbours in length order, longest first.

    Among all such splits whose batches hold at most ``token_budget`` padded tokens, the one
    with the least cost is chosen: each batch costs its padded size (rows x its longest row)
    plus ``batch_overhead`` tokens for the fixed cost of a forward pass (dynamic programming
    over the sorted lengths, O(rows x rows per batch)). Filling every batch up to the budget
    instead would pad short texts to the length of much longer ones wherever lengths spread
    widely, as they do in the tail of real corpora.

    Parameters
    ----------
    lengths : ndarray of int
        Token count of each row.
    token_budget : int
        Upper bound on ``rows * longest row`` of a batch; a single row longer than the budget
        still gets a batch of its own.
    max_batch_size : int or None
        Upper bound on rows per batch, if any.
    batch_overhead : int or None
        Cost of one batch in tokens; ``None``: ``token_budget // 16``.
    pad_to : callable or None
        Maps a batch's longest length to the width it is padded to (e.g. :func:`bucket_lengths`);
        the budget and the cost count that width. ``None``: the longest length itself.

    Returns
    -------
    list of ndarray
        Row indices of each batch. Longest first, so that an out-of-memory error, if any, comes
        at the start rather than after most of the work.

    Examples
    --------
    >>> import numpy as np
    >>> [b.tolist() for b in plan_batches(np.array([3, 10, 4, 9]), token_budget=20)]
    [[1, 3], [2, 0]]
    >>> [b.tolist() for b in plan_batches(np.array([3, 30, 4, 3]), token_budget=120)]
    [[1], [2, 0, 3]]
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}.")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    n_rows = len(order)
    if n_rows == 0:
        return []
    sorted_lengths = np.maximum(lengths[order], 1)
    if pad_to is not None:
        # Monotone in the length, so the rows stay in order; a batch pads to its first row's.
        sorted_lengths = np.maximum(np.asarray(pad_to(sorted_lengths), dtype=np.int64), 1)
    overhead = (
        max(token_budget // _OVERHEAD_FRACTION, 1) if batch_overhead is None else batch_overhead
    )
    # cost[i]: least cost of the first i sorted rows; start[i]: where its last batch begins.
    cost = np.full(n_rows + 1, np.inf)
    cost[0] = 0.0
    start = np.zeros(n_rows + 1, dtype=np.int64)
    for first in range(n_rows):
        longest = int(sorted_lengths[first])
        rows = max(token_budget // longest, 1)
        if max_batch_size is not None:
            rows = min(rows, max_batch_size)
        rows = min(rows, n_rows - first)
        # A batch of rows first .. first + k - 1 pads them all to the first (longest) one.
        candidate = cost[first] + overhead + longest * np.arange(1, rows + 1)
        reached = cost[first + 1 : first + rows + 1]
        better = candidate < reached
        reached[better] = candidate[better]
        start[first + 1 : first + rows + 1][better] = first
    batches: list[np.ndarray] = []
    end = n_rows
    while end > 0:
        begin = int(start[end])
        batches.append(order[begin:end])
        end = begin
    return batches[::-1]
