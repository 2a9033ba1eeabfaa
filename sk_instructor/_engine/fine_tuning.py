"""Fine-tuning a checkpoint on labelled texts: where the tuned copy goes and when to train.

The estimator hands :func:`fine_tune` the base model's settings, the instruction, the texts and
their class codes; this module decides the folder of the tuned checkpoint, whether an identical
fit already left a complete one there, and writes the new one atomically. The training itself
(torch) is in :mod:`.training`, imported only when there is something to train.

The default folder is named by a hash of everything the weights depend on: the base weights'
fingerprint, the instruction, the token limit, the training settings and seed, the device kind
and precision it trains in, and the texts and their classes. A second fit of the same content
(a GridSearchCV refitting the same fold, a benchmark run twice) finds the checkpoint and does
not train again; any difference gives another folder. The tuned folder has its own fingerprint
(:mod:`.identity`), so cache keys never serve a base model's vectors for tuned weights.

No torch at the top of this module: the engine's entry re-exports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import struct
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import resolve_model, summarize
from .device import resolve_device
from .identity import fingerprint_folder

__all__ = [
    "FINE_TUNED_DIR_ENV",
    "LOSSES",
    "MARKER",
    "FineTuneResult",
    "TrainingSettings",
    "default_output_root",
    "fine_tune",
    "fine_tune_key",
    "training_precision",
]

#: Environment variable naming the folder under which default output folders are made.
FINE_TUNED_DIR_ENV = "SK_INSTRUCTOR_FINE_TUNED_DIR"
#: The losses :class:`TrainingSettings` knows.
LOSSES = ("cosine", "contrastive")
#: The file, inside a tuned folder, that records how it was made. Hidden: it is not part of the
#: weights' fingerprint (see :mod:`.identity`), and sentence-transformers ignores it.
MARKER = ".sk_instructor_fine_tune.json"
# Bump when training changes what the same settings produce, so that old folders stop matching.
RECIPE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """How to train: the estimator's training parameters, the seed drawn for the fit.

    Attributes
    ----------
    pairs_per_text : int
        Pairs drawn per training text and epoch, alternately with a text of its own class
        (label 1) and of another class (label 0).
    epochs : int
        Passes over the pairs (drawn anew each epoch).
    learning_rate : float
        Peak AdamW learning rate, reached after a linear warm-up over the first tenth of the
        steps, then decreased linearly to zero.
    batch_size : int
        Pairs per optimisation step.
    loss : {"cosine", "contrastive"}
        ``"cosine"``: squared error between the pair's cosine similarity and its label
        (SetFit's default). ``"contrastive"``: the contrastive loss on the cosine distance,
        margin 0.5 (sentence-transformers' ContrastiveLoss).
    seed : int
        Seeds the pairs, their order, the dropout and anything else random in training.
    """

    pairs_per_text: int = 20
    epochs: int = 1
    learning_rate: float = 2e-5
    batch_size: int = 16
    loss: str = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}.")
        for name in ("pairs_per_text", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}.")
        if not float(self.learning_rate) > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}.")


@dataclasses.dataclass(frozen=True)
class FineTuneResult:
    """What a fine-tuning left: the folder and what it says about itself.

    Attributes
    ----------
    path : Path
        The tuned checkpoint, sentence-transformers layout.
    fingerprint : str
        Its weights' fingerprint (what cache keys record).
    base_fingerprint : str
        The fingerprint of the weights it started from.
    n_pairs : int
        Pairs trained on, all epochs together.
    n_steps : int
        Optimisation steps.
    epoch_losses : tuple of float
        The mean training loss of each epoch.
    reused : bool
        True when an identical fit had already left the folder and nothing was trained.
    """

    path: Path
    fingerprint: str
    base_fingerprint: str
    n_pairs: int
    n_steps: int
    epoch_losses: tuple[float, ...]
    reused: bool = False


def default_output_root() -> Path:
    """Where default output folders are made: ``$SK_INSTRUCTOR_FINE_TUNED_DIR``, else
    ``sk_instructor/fine_tuned`` under ``$XDG_CACHE_HOME`` (``~/.cache`` when unset)."""
    configured = os.environ.get(FINE_TUNED_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
    return Path(cache_home).expanduser() / "sk_instructor" / "fine_tuned"


def training_precision(device: str, dtype: str) -> str:
    """The precision training computes in: float32, except on CUDA, where the forward runs
    under bfloat16 autocast (weights and optimizer state stay float32) unless
    ``dtype="float32"`` was asked for."""
    if device.split(":")[0] == "cuda" and dtype != "float32":
        return "bfloat16"
    return "float32"


def _field(raw: bytes) -> bytes:
    # Length-prefixed, so that no two sequences of fields share an encoding.
    return struct.pack("<Q", len(raw)) + raw


def fine_tune_key(
    *,
    base_fingerprint: str,
    instruction: str,
    max_seq_length: int,
    training: TrainingSettings,
    device_kind: str,
    precision: str,
    texts: Sequence[str],
    codes: np.ndarray,
) -> str:
    """The hash naming a fit's content: everything the tuned weights depend on.

    Class codes, not label values, count: relabelling ``{"neg", "pos"}`` as ``{0, 1}`` draws
    the same pairs and trains the same weights.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_instructor._engine.fine_tuning import TrainingSettings, fine_tune_key
    >>> key = fine_tune_key(
    ...     base_fingerprint="hub:org/model@abc", instruction="Represent the review: ",
    ...     max_seq_length=512, training=TrainingSettings(seed=0), device_kind="cpu",
    ...     precision="float32", texts=["good", "bad"], codes=np.array([1, 0]),
    ... )
    >>> len(key)
    64
    """
    digest = hashlib.sha256(b"sk_instructor/fine-tune\x00")
    digest.update(struct.pack("<I", RECIPE_VERSION))
    described = {
        "base": base_fingerprint,
        "instruction": instruction,
        "max_seq_length": int(max_seq_length),
        "training": dataclasses.asdict(training),
        "device": device_kind,
        "precision": precision,
    }
    digest.update(_field(json.dumps(described, sort_keys=True).encode("utf-8")))
    digest.update(struct.pack("<Q", len(texts)))
    for text in texts:
        digest.update(_field(text.encode("utf-8", "surrogatepass")))
    digest.update(_field(np.asarray(codes, dtype="<i8").tobytes()))
    return digest.hexdigest()


def fine_tune(
    *,
    model: str | os.PathLike[str],
    instruction: str,
    texts: Sequence[str],
    codes: np.ndarray,
    training: TrainingSettings,
    revision: str | None = None,
    local_files_only: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    max_seq_length: int | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    show_progress_bar: bool | None = None,
) -> FineTuneResult:
    """Fine-tune ``model`` on ``texts`` and their class ``codes`` under ``instruction``.

    The encoder and its Dense stages are trained on pairs of texts (:mod:`.training`), each
    text read as ``instruction + text`` and pooled without the instruction's tokens, exactly
    as the engine embeds it. The tuned checkpoint, in the sentence-transformers layout of the
    input, is written to ``output_dir``, else to a folder named by :func:`fine_tune_key`
    under :func:`default_output_root`, where a complete checkpoint of the same content is
    used as it is.

    Raises
    ------
    ValueError
        ``output_dir`` is a folder holding other files (it is never overwritten), fewer than
        two classes or a class with one text, or an instruction leaving no room for text.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if len(codes) != len(texts):
        raise ValueError(f"{len(texts)} texts for {len(codes)} class codes.")
    resolved = resolve_model(model, revision=revision, local_files_only=local_files_only)
    base_fingerprint = resolved.current_fingerprint()
    summary = summarize(resolved.folder, base_fingerprint)
    device = resolve_device(device)
    precision = training_precision(device, dtype)
    max_len = int(max_seq_length or summary.max_seq_length)
    key = fine_tune_key(
        base_fingerprint=base_fingerprint,
        instruction=instruction,
        max_seq_length=max_len,
        training=training,
        device_kind=device.split(":")[0],
        precision=precision,
        texts=texts,
        codes=codes,
    )
    if output_dir is None:
        target = default_output_root() / f"ft-{key[:24]}"
        finished = _finished(target, key)
        if finished is not None:
            return finished
    else:
        target = Path(os.fspath(output_dir)).expanduser()
        _check_writable_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)

    from . import training as trainer  # torch: only now that there is something to train

    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        run = trainer.train_and_save(
            resolved.folder,
            staging,
            device=device,
            precision=precision,
            instruction=instruction,
            texts=list(texts),
            codes=codes,
            max_seq_length=max_len,
            training=training,
            show_progress_bar=show_progress_bar,
        )
        fingerprint = fingerprint_folder(staging)
        record = {
            "key": key,
            "fingerprint": fingerprint,
            "base_model": os.fspath(model),
            "base_revision": revision,
            "base_fingerprint": base_fingerprint,
            "instruction": instruction,
            "max_seq_length": max_len,
            "training": dataclasses.asdict(training),
            "device": device,
            "precision": precision,
            "n_texts": len(texts),
            "n_classes": len(np.unique(codes)),
            "n_pairs": run.n_pairs,
            "n_steps": run.n_steps,
            "epoch_losses": list(run.epoch_losses),
        }
        (staging / MARKER).write_text(json.dumps(record, indent=2), encoding="utf-8")
        placed = _put_in_place(staging, target, key, replace=output_dir is not None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not placed:  # an identical fit of another process was there first: it is used
        finished = _finished(target, key)
        if finished is not None:
            return finished
    return FineTuneResult(
        path=target.resolve(),
        fingerprint=fingerprint_folder(target),
        base_fingerprint=base_fingerprint,
        n_pairs=run.n_pairs,
        n_steps=run.n_steps,
        epoch_losses=tuple(run.epoch_losses),
    )


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The record a fine-tuning left in ``folder``, or None (none there, or unreadable)."""
    try:
        record = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _finished(target: Path, key: str) -> FineTuneResult | None:
    """The result recorded in ``target`` when it holds a complete fit of ``key`` whose files
    still hold the weights it wrote."""
    record = read_marker(target)
    if record is None or record.get("key") != key:
        return None
    try:
        fingerprint = fingerprint_folder(target)
    except (OSError, ValueError):
        return None
    if fingerprint != record.get("fingerprint"):
        return None  # edited since: trained again (and replaced)
    return FineTuneResult(
        path=target.resolve(),
        fingerprint=fingerprint,
        base_fingerprint=str(record.get("base_fingerprint")),
        n_pairs=int(record.get("n_pairs", 0)),
        n_steps=int(record.get("n_steps", 0)),
        epoch_losses=tuple(float(value) for value in record.get("epoch_losses", ())),
        reused=True,
    )


def _check_writable_target(target: Path) -> None:
    """Refuse an ``output_dir`` that is a file, or a folder holding anything but an earlier
    fine-tuning: its files are never deleted."""
    if not target.exists():
        return
    if not target.is_dir():
        raise ValueError(f"output_dir={os.fspath(target)!r} is a file, not a folder.")
    if any(target.iterdir()) and read_marker(target) is None:
        raise ValueError(
            f"output_dir={os.fspath(target)!r} is a folder holding other files; a fine-tuned "
            f"checkpoint replaces only an empty folder or an earlier fine-tuning's. Give a new "
            f"or empty folder."
        )


def _put_in_place(staging: Path, target: Path, key: str, *, replace: bool) -> bool:
    """Move the finished ``staging`` folder to ``target`` in one rename.

    A folder already there is replaced when ``replace`` (an explicit ``output_dir``: it was
    checked to be empty or an earlier fine-tuning), through a rename aside, so that the target
    is never half-written. Without ``replace`` (a content-named folder), one left by an
    identical fit of another process is kept, and an incomplete or edited one replaced.
    Returns whether ``staging`` was put in place.
    """
    if target.exists() and not replace and _finished(target, key) is not None:
        return False
    aside = None
    if target.exists():
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        else:
            aside = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
            os.replace(target, aside)
    try:
        os.replace(staging, target)
    except OSError:
        # Another process put its folder there between our checks: keep it if it is complete.
        if _finished(target, key) is None:
            raise
        return False
    finally:
        if aside is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(aside)
    return True
