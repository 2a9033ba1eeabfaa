"""The Pooling stage (``1_Pooling/config.json``): token vectors to one vector per text.

The pooling mask is the attention mask with the instruction's tokens zeroed (see
``_tokenization.py``), so every mode below ignores the instruction while the encoder still saw it.
Pooling runs in float32 whatever the encoder's dtype, so bfloat16 sums do not lose precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._checkpoint import read_json
from ._exceptions import CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = ["Pooling", "load_pooling"]

# Config keys in the order sentence-transformers concatenates the modes' outputs.
_MODE_KEYS = (
    ("cls", "pooling_mode_cls_token"),
    ("max", "pooling_mode_max_tokens"),
    ("mean", "pooling_mode_mean_tokens"),
    ("mean_sqrt_len_tokens", "pooling_mode_mean_sqrt_len_tokens"),
    ("weightedmean", "pooling_mode_weightedmean_tokens"),
    ("lasttoken", "pooling_mode_lasttoken"),
)


@dataclass(frozen=True)
class Pooling:
    """Pooling modes applied to the encoder output, concatenated in sentence-transformers' order."""

    modes: tuple[str, ...]
    embedding_dim: int

    @property
    def output_dim(self) -> int:
        return self.embedding_dim * len(self.modes)

    def __call__(self, token_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import torch

        hidden = token_embeddings.float()
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
        return torch.cat(outputs, dim=1)


def load_pooling(folder: Path, *, hidden_size: int) -> Pooling:
    """Read ``config.json`` of a Pooling stage folder."""
    path = folder / "config.json"
    config = read_json(path, what="Pooling stage")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object.")
    # Newer sentence-transformers versions may write a single "pooling_mode" string instead.
    single = config.get("pooling_mode")
    if isinstance(single, str):
        known = {mode for mode, _ in _MODE_KEYS} | {"mean_sqrt_len"}
        if single not in known:
            raise CheckpointError(f"{path}: unknown pooling_mode {single!r}.")
        modes: tuple[str, ...] = ("mean_sqrt_len_tokens" if single == "mean_sqrt_len" else single,)
    else:
        modes = tuple(mode for mode, key in _MODE_KEYS if config.get(key))
    if not modes:
        raise CheckpointError(f"{path} enables no pooling mode.")
    dim = config.get("word_embedding_dimension", hidden_size)
    if dim != hidden_size:
        raise CheckpointError(
            f"{path}: word_embedding_dimension {dim} differs from the encoder's {hidden_size}."
        )
    return Pooling(modes=modes, embedding_dim=hidden_size)
