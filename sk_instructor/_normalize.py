"""The Normalize stage (``3_Normalize``): unit L2 length, so dot products are cosines."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["l2_normalize"]


def l2_normalize(vectors: torch.Tensor) -> torch.Tensor:
    """Scale each row to unit length; an all-zero row stays zero instead of becoming NaN."""
    import torch.nn.functional as F

    return F.normalize(vectors, p=2.0, dim=1)
