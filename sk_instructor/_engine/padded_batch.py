"""One batch of token ids laid out for the encoder, the same in inference and in training.

Rows are padded on the right. The encoder sees every token of a row, its instruction included;
the pooling mask leaves the first ``instruction_lengths[i]`` tokens of row ``i`` out
(INSTRUCTOR's masking, see ``instructor-numerics.md``). Only the token ids and two numbers per
row travel to the device; the masks are built there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .stages import Features

__all__ = ["padded_batch"]


def padded_batch(
    input_ids: Sequence[Sequence[int]],
    instruction_lengths: Sequence[int] | np.ndarray,
    *,
    pad_token_id: int,
    to_device: Callable[[torch.Tensor], torch.Tensor],
    pad_to: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Features:
    """The features of one batch: ``input_ids``, ``attention_mask`` and ``pooling_mask``.

    Parameters
    ----------
    input_ids : sequence of sequences of int
        Each row's token ids, instruction first, at most the window long.
    instruction_lengths : sequence of int
        How many of each row's first tokens are its instruction's.
    pad_token_id : int
        The tokenizer's padding id.
    to_device : callable
        Moves a CPU tensor to the encoder's device.
    pad_to : callable or None, default=None
        Maps the longest row's length to the width to pad to (the fast T5 forward's multiples
        of 8); ``None`` pads to the longest row.

    Returns
    -------
    dict
        ``attention_mask`` is ``None`` when no row is padded (batches are length-sorted, so
        this is common): the encoder then needs no mask.

    Examples
    --------
    >>> features = padded_batch([[5, 6, 7], [5, 8]], [1, 1], pad_token_id=0, to_device=lambda t: t)
    >>> features["input_ids"].tolist()
    [[5, 6, 7], [5, 8, 0]]
    >>> features["pooling_mask"].tolist()
    [[False, True, True], [False, True, False]]
    """
    lengths = np.fromiter((len(row_ids) for row_ids in input_ids), np.int64, len(input_ids))
    width = int(lengths.max())
    if pad_to is not None:
        width = int(pad_to(np.array([width]))[0])
    ids = np.full((len(input_ids), width), pad_token_id, dtype=np.int64)
    for row, row_ids in enumerate(input_ids):
        ids[row, : len(row_ids)] = row_ids
    ids_t, lengths_t, skipped_t = (
        to_device(torch.from_numpy(array))
        for array in (ids, lengths, np.asarray(instruction_lengths, dtype=np.int64))
    )
    positions = torch.arange(width, device=ids_t.device)
    attention = positions[None, :] < lengths_t[:, None]
    return {
        "input_ids": ids_t,
        "attention_mask": attention if lengths.min() < width else None,
        "pooling_mask": attention & (positions[None, :] >= skipped_t[:, None]),
    }
