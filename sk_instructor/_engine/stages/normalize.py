"""The Normalize stage (``3_Normalize``): unit L2 length, so dot products are cosines."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch.nn.functional as F

if TYPE_CHECKING:
    from . import Features, LoadSettings

__all__ = ["Normalize"]


class Normalize:
    """Scale each row to unit length; an all-zero row stays zero instead of becoming NaN."""

    def __init__(self, width: int | None = None) -> None:
        self.output_dim = width

    @classmethod
    def load(cls, folder: Path, *, input_dim: int | None, settings: LoadSettings) -> Normalize:
        """The stage has no files: the folder may be empty or absent."""
        return cls(input_dim)

    def __call__(self, features: Features) -> Features:
        features["sentence_embedding"] = F.normalize(features["sentence_embedding"], p=2.0, dim=1)
        return features
