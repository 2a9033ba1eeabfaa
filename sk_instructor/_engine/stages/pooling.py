"""The Pooling stage (``1_Pooling/config.json``): token vectors to one vector per text.

The pooling mask is the attention mask with the instruction's tokens zeroed (see
``tokenization.py``), so every mode below ignores the instruction while the encoder still saw
it. Pooling reads the token vectors in the encoder's dtype and returns float32: sums and counts
accumulate in float32 (a bfloat16 sum of 512 vectors would round at every step), but pooling
asks for no float32 copy of the ``(batch, length, width)`` tensor: in bfloat16 the masked
product is bfloat16 (exact: the mask is 0 or 1) and the sum converts it as it accumulates. On
CUDA torch's reduction does that value by value; on the CPU it converts a copy first (CPU
batches are ~1,500 tokens). Before, a float32 copy and a float32 product were made: 512 MiB at
the CUDA default of 65,536 tokens x 1,024. The vectors equal those of pooling a float32 copy, up
to the order of the float32 additions (``tests/test_engine_fast_path.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..._exceptions import CheckpointError
from ..checkpoint import pooling_modes

if TYPE_CHECKING:
    from . import Features, LoadSettings

__all__ = ["Pooling"]


class Pooling:
    """Pooling modes applied to the token vectors, concatenated in sentence-transformers' order.

    Parameters
    ----------
    modes : tuple of str
        Among ``cls``, ``max``, ``mean``, ``mean_sqrt_len_tokens``, ``weightedmean`` and
        ``lasttoken``.
    hidden_size : int
        Width of each token vector; the output is ``hidden_size * len(modes)`` wide.
    """

    def __init__(self, modes: tuple[str, ...], hidden_size: int) -> None:
        self.modes = modes
        self.hidden_size = hidden_size
        self.output_dim = hidden_size * len(modes)

    @property
    def description(self) -> str:
        """The modes as one string, e.g. ``"mean"`` or ``"cls+mean"`` (part of cache keys)."""
        return "+".join(self.modes)

    @classmethod
    def load(cls, folder: Path, *, input_dim: int | None, settings: LoadSettings) -> Pooling:
        """Read ``config.json`` of a Pooling stage folder."""
        modes, width = pooling_modes(folder)
        if width is not None and width != input_dim:
            raise CheckpointError(
                f"{folder / 'config.json'}: word_embedding_dimension {width} differs from the "
                f"encoder's {input_dim}."
            )
        return cls(modes, hidden_size=input_dim)

    def __call__(self, features: Features) -> Features:
        hidden = features["token_embeddings"]
        mask = features["pooling_mask"]
        keep = mask.bool().unsqueeze(-1)
        # 0/1 in the encoder's dtype: multiplying by it is exact, and the sums below take
        # float32 accumulators (a bfloat16 tensor's sum with dtype=float32 upcasts each value
        # as it is added, not the tensor).
        weights = keep.to(hidden.dtype)
        count = keep.sum(dim=1, dtype=torch.float32)
        outputs = []
        for mode in self.modes:
            if mode == "cls":
                outputs.append(hidden[:, 0].float())
            elif mode == "max":
                largest = hidden.masked_fill(~keep, -1e9).max(dim=1).values.float()
                # A row with no token kept gets sentence-transformers' fill value, -1e9 in
                # float32 (bfloat16 would round it).
                outputs.append(torch.where(count > 0, largest, -1e9))
            elif mode in ("mean", "mean_sqrt_len_tokens"):
                summed = (hidden * weights).sum(dim=1, dtype=torch.float32)
                divisor = count.clamp(min=1e-9)
                outputs.append(summed / (divisor if mode == "mean" else divisor.sqrt()))
            elif mode == "weightedmean":
                # Positions up to 512 are not all exact in bfloat16: float32 weights (the
                # product is float32; no separate copy of the vectors).
                positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device)
                position_weights = keep * positions.view(1, -1, 1).float()
                summed = (hidden * position_weights).sum(dim=1)
                outputs.append(summed / position_weights.sum(dim=1).clamp(min=1e-9))
            else:  # lasttoken: the last position the mask keeps (right padding)
                positions = torch.arange(hidden.shape[1], device=hidden.device)
                last = (mask.long() * positions).argmax(dim=1)
                rows = torch.arange(hidden.shape[0], device=hidden.device)
                outputs.append(hidden[rows, last].float())
        features["sentence_embedding"] = torch.cat(outputs, dim=1)
        return features
