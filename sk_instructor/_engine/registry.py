"""One loaded model per (checkpoint, revision, device, dtype) per process.

Estimators never hold a model: they ask here by their parameters on each call. Clones made by
GridSearchCV, unpickled estimators and every other component share the loaded weights, and
pickles stay small.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .checkpoint import resolve_model
from .device import resolve_device
from .model import EmbeddingModel

__all__ = ["clear_loaded_models", "get_model", "loaded_models"]

_MODELS: dict[tuple, EmbeddingModel] = {}
_LOCKS: dict[tuple, threading.Lock] = {}
_GUARD = threading.Lock()


def get_model(
    model: str | os.PathLike[str],
    *,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    local_files_only: bool = False,
) -> EmbeddingModel:
    """Return the shared :class:`EmbeddingModel`, loading it on first use."""
    resolved_device = resolve_device(device)
    name = os.fspath(model)
    local = Path(name).expanduser()
    if local.is_dir():
        name = str(local.resolve())
    key = (name, revision, resolved_device, dtype)
    loaded = _MODELS.get(key)
    if loaded is not None:
        return loaded
    with _GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    # A per-key lock: two threads asking for the same model load it once, while a different
    # model can load at the same time.
    with lock:
        loaded = _MODELS.get(key)
        if loaded is None:
            resolved = resolve_model(name, revision=revision, local_files_only=local_files_only)
            loaded = EmbeddingModel(resolved, device=resolved_device, dtype=dtype)
            _MODELS[key] = loaded
    return loaded


def loaded_models() -> list[EmbeddingModel]:
    """The models loaded in this process (for tests and diagnostics)."""
    return list(_MODELS.values())


def clear_loaded_models() -> None:
    """Forget every loaded model, freeing its memory once no one else holds it."""
    with _GUARD:
        _MODELS.clear()
        _LOCKS.clear()
