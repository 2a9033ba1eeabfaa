"""Exceptions raised by sk_instructor, shared by every component."""

from __future__ import annotations

__all__ = ["CheckpointError", "ModelNotFoundError"]


class CheckpointError(ValueError):
    """A model folder is not a usable sentence-transformers checkpoint.

    The message names the offending file (``modules.json``, a config, a weight file) and what is
    wrong with it: missing, malformed JSON, an unknown stage type, or weights that are not plain
    tensors.
    """


class ModelNotFoundError(OSError):
    """A model could neither be found locally nor downloaded from the Hugging Face hub.

    The message says what was tried and how to fix it (go online once, check the id, log in for
    gated models, or pass a local folder).
    """
