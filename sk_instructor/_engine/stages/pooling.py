"""The Pooling stage (``1_Pooling/config.json``): token vectors to one vector per text.

The pooling mask is the attention mask with the instruction's tokens zeroed (see
``tokenization.py``), so every mode below ignores the instruction while the encoder still saw
it. Pooling runs in float32 whatever the encoder's dtype, so bfloat16 sums do not lose precision.
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
        hidden = features["token_embeddings"].float()
        mask = features["pooling_mask"]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        outputs = []
        for mode in self.modes:
            if mode == "cls":
                outputs.append(hidden[:, 0])
            elif mode == "max":
                outputs.append(hidden.masked_fill(weights == 0, -1e9).max(dim=1).values)
            elif mode in ("mean", "mean_sqrt_len_tokens"):
                summed = (hidden * weights).sum(dim=1)
                count = weights.sum(dim=1).clamp(min=1e-9)
                outputs.append(summed / (count if mode == "mean" else count.sqrt()))
            elif mode == "weightedmean":
                positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device)
                position_weights = weights * positions.view(1, -1, 1).to(hidden.dtype)
                summed = (hidden * position_weights).sum(dim=1)
                outputs.append(summed / position_weights.sum(dim=1).clamp(min=1e-9))
            else:  # lasttoken: the last position the mask keeps (right padding)
                positions = torch.arange(hidden.shape[1], device=hidden.device)
                last = (mask.long() * positions).argmax(dim=1)
                outputs.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        features["sentence_embedding"] = torch.cat(outputs, dim=1)
        return features
