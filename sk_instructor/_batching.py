"""Grouping texts into batches by a token budget.

Texts are sorted by token count so that each batch pads to a length close to all its members',
and a batch holds as many texts as fit in ``token_budget`` padded tokens. A fixed count per
batch either wastes padding on long texts or runs tiny matrices on short ones.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_TOKEN_BUDGET", "plan_batches"]

# Padded tokens per batch. On CPU the encoder's throughput is flat from a few hundred tokens up
# and falls for very large batches (cache misses); on accelerators larger batches keep the device
# busy. Measured by benchmarks/token_budget.py.
DEFAULT_TOKEN_BUDGET = {"cpu": 2048, "cuda": 65536, "mps": 16384}


def plan_batches(
    lengths: np.ndarray, *, token_budget: int, max_batch_size: int | None = None
) -> list[np.ndarray]:
    """Split row indices into batches, longest texts first.

    Parameters
    ----------
    lengths : ndarray of int
        Token count of each row.
    token_budget : int
        Upper bound on ``rows * longest row`` of a batch; a single row longer than the budget
        still gets a batch of its own.
    max_batch_size : int or None
        Upper bound on rows per batch, if any.

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
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}.")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        rows = max(token_budget // longest, 1)
        if max_batch_size is not None:
            rows = min(rows, max_batch_size)
        batches.append(order[start : start + rows])
        start += rows
    return batches
