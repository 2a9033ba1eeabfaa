"""One loaded model per checkpoint, revision, device, dtype, encoder forward and backend per
process.

Estimators never hold a model: each call asks here, through the engine's entry, by its
parameters. Clones made by GridSearchCV, unpickled estimators and every other component share
the loaded weights, and pickles stay small. A local folder whose files changed since it was
loaded is loaded again.

The registry keeps the most recently used models only (:data:`MAX_LOADED_MODELS_ENV`, default
4): loading a fifth lets the least recently used go, its memory freed once no call still uses
it. :func:`clear_loaded_models` lets every model go at once.

Every call that asks for a model also applies ``$SK_INSTRUCTOR_NUM_THREADS`` (torch's CPU
threads, process-wide; see ``device.apply_num_threads``) when it is set, so a value set before a
``fit`` or ``transform`` holds while it encodes; unset, torch's own setting
(``torch.set_num_threads``, one thread per core by default) is left alone.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from .._warnings import warn
from .checkpoint import resolve_model
from .device import NUM_THREADS_ENV, apply_num_threads, resolve_device
from .environment import positive_int_from_env
from .model import EmbeddingModel

__all__ = [
    "MAX_LOADED_MODELS_ENV",
    "NUM_THREADS_ENV",
    "clear_loaded_models",
    "get_model",
    "loaded_models",
]

# The environment variable that bounds the models kept loaded (a positive integer).
MAX_LOADED_MODELS_ENV = "SK_INSTRUCTOR_MAX_LOADED_MODELS"
_DEFAULT_MAX_LOADED_MODELS = 4

# Least recently used first.
_MODELS: OrderedDict[tuple, EmbeddingModel] = OrderedDict()
_LOCKS: dict[tuple, threading.Lock] = {}
_GUARD = threading.Lock()
# Set in a child forked after models were loaded: torch's thread pool did not survive the fork,
# so the child stays on one thread whatever $SK_INSTRUCTOR_NUM_THREADS says.
_FORKED_AFTER_LOADING = False


def get_model(
    model: str | os.PathLike[str],
    *,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    local_files_only: bool = False,
    compile: bool = False,
    implementation: str = "auto",
    backend: str = "torch",
) -> EmbeddingModel:
    """Return the shared :class:`EmbeddingModel`, loading it on first use.

    ``compile`` and ``backend`` are the user's parameters (``_params.py``); ``implementation``
    (``"auto"``,
    ``"fast"``, ``"transformers"``, see ``device.resolve_implementation``) is for tests and
    benchmarks that force one encoder forward.

    Applies ``$SK_INSTRUCTOR_NUM_THREADS`` when set (a ValueError naming it refuses a value that
    is not a positive integer, before anything loads).
    """
    _warn_if_forked_after_loading()
    apply_num_threads(limit=1 if _FORKED_AFTER_LOADING else None)
    resolved_device = resolve_device(device, backend)
    name = os.fspath(model)
    local = Path(name).expanduser()
    if local.is_dir():
        name = str(local.resolve())
    key = (name, revision, resolved_device, dtype, implementation, bool(compile), backend)
    loaded = _MODELS.get(key)
    # A local folder saved over (a fine-tune written to the same place) is loaded again: a
    # model is served only while its files still hold the weights that were loaded.
    if loaded is not None and loaded.is_current():
        with _GUARD:
            if key in _MODELS:
                _MODELS.move_to_end(key)
        return loaded
    with _GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    # A per-key lock: two threads asking for the same model load it once, while a different
    # model can load at the same time.
    with lock:
        loaded = _MODELS.get(key)
        if loaded is None or not loaded.is_current():
            resolved = resolve_model(name, revision=revision, local_files_only=local_files_only)
            loaded = EmbeddingModel(
                resolved,
                device=resolved_device,
                dtype=dtype,
                implementation=implementation,
                compile=bool(compile),
                backend=backend,
            )
            with _GUARD:
                _MODELS[key] = loaded
                _MODELS.move_to_end(key)
                limit = max_loaded_models()
                while len(_MODELS) > limit:
                    # Dropped from the registry only: a call holding it finishes with it.
                    evicted, _ = _MODELS.popitem(last=False)
                    _LOCKS.pop(evicted, None)
    return loaded


def max_loaded_models() -> int:
    """How many models the registry keeps: ``$SK_INSTRUCTOR_MAX_LOADED_MODELS``, default 4."""
    limit = positive_int_from_env(
        MAX_LOADED_MODELS_ENV,
        meaning="models kept loaded",
        advice="e.g. 1 keeps only the model in use",
    )
    return _DEFAULT_MAX_LOADED_MODELS if limit is None else limit


def loaded_models() -> list[EmbeddingModel]:
    """The models loaded in this process (for tests and diagnostics)."""
    return list(_MODELS.values())


def _after_fork_in_child() -> None:
    # torch's CPU thread pool does not survive fork: a child forked after the parent has run a
    # model would hang in its first parallel operation. One thread has no pool to hang on, so
    # the child embeds (more slowly) instead of hanging; spawn or forkserver workers are fast.
    # The warning waits for the child's first get_model: libraries fork helpers that never embed
    # (OpenVINO's telemetry does), and those have nothing to be told.
    global _FORKED_AFTER_LOADING
    if _MODELS:
        _FORKED_AFTER_LOADING = True
        torch.set_num_threads(1)


def _warn_if_forked_after_loading() -> None:
    if _FORKED_AFTER_LOADING:
        warn(
            "this process was forked from one that had loaded a model; torch's thread pool "
            "does not survive fork, so embedding runs on one thread here. Start workers with "
            "the 'spawn' or 'forkserver' method (joblib's default does) for full speed.",
            RuntimeWarning,
            cause="forked after loading a model",
        )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def clear_loaded_models() -> None:
    """Forget every loaded model, freeing its memory once no one else holds it."""
    with _GUARD:
        _MODELS.clear()
        _LOCKS.clear()
