"""The stages of a sentence-transformers checkpoint: one module each, one protocol for all.

A checkpoint's ``modules.json`` lists its stages in order, each in a subfolder, and each stage
type below loads its own folder:

=============  =============================================  ===================
stage          folder                                         module
=============  =============================================  ===================
Transformer    ``""`` (root): config, tokenizer, weights,      ``transformer.py``
               ``sentence_bert_config.json``
Pooling        ``1_Pooling/config.json``                      ``pooling.py``
Dense          ``2_Dense/config.json`` + weights              ``dense.py``
Normalize      ``3_Normalize/`` (no files)                    ``normalize.py``
=============  =============================================  ===================

Every stage is built by ``load(folder, input_dim=..., settings=...)`` from its folder and the
width of the stage before it, tells its ``output_dim``, and maps a ``features`` dict to a
``features`` dict, as sentence-transformers' modules do: the Transformer reads ``input_ids``
and ``attention_mask`` and adds ``token_embeddings``; Pooling reads those and the
``pooling_mask`` and adds ``sentence_embedding``; Dense and Normalize replace it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..checkpoint import StageSpec
from .dense import Dense
from .normalize import Normalize
from .pooling import Pooling
from .transformer import Transformer

__all__ = ["STAGE_TYPES", "Features", "LoadSettings", "Stage", "load_stages"]

Features = dict[str, torch.Tensor | None]


@dataclass(frozen=True)
class LoadSettings:
    """What every stage may need to know to load: where it runs, the requested dtype, and for
    the encoder which implementation runs it (see ``device.resolve_implementation``), whether it
    is compiled, and which backend runs its body (``"torch"``, or ``"openvino"``: see
    ``openvino_backend.py``)."""

    device: str
    dtype: str = "auto"
    implementation: str = "auto"
    compile: bool = False
    backend: str = "torch"


class Stage(Protocol):
    """The protocol every stage type follows."""

    output_dim: int

    @classmethod
    def load(cls, folder: Path, *, input_dim: int | None, settings: LoadSettings) -> Stage:
        """Build the stage from its folder; ``input_dim`` is the previous stage's width."""
        ...

    def __call__(self, features: Features) -> Features:
        """Read what the stage needs from ``features`` and add or replace its output."""
        ...


# modules.json stage kinds (see checkpoint.read_stages) -> the type that loads them.
STAGE_TYPES: dict[str, type[Stage]] = {
    "transformer": Transformer,
    "pooling": Pooling,
    "dense": Dense,
    "normalize": Normalize,
}


def load_stages(specs: Sequence[StageSpec], settings: LoadSettings) -> tuple[list[Stage], int]:
    """Load the stages ``specs`` describe (``checkpoint.read_stages``), in order, each fed the
    width of the one before; returns them and the output width of the last."""
    stages: list[Stage] = []
    width = None
    for spec in specs:
        stage = STAGE_TYPES[spec.kind].load(spec.folder, input_dim=width, settings=settings)
        width = stage.output_dim or width
        stages.append(stage)
    return stages, width
