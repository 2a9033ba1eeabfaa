"""Finding a checkpoint and reading its sentence-transformers layout.

A published INSTRUCTOR model is a folder (locally or on the Hugging Face hub) whose
``modules.json`` lists the stages of the embedding pipeline, each in a subfolder (see
``stages/``). This module only locates the folder, validates the listing and reads JSON
files; each stage loads its own folder. It imports neither torch nor transformers.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import CheckpointError, ModelNotFoundError

__all__ = [
    "MAX_JSON_BYTES",
    "ResolvedModel",
    "StageSpec",
    "inside",
    "read_json",
    "read_stages",
    "regular_file",
    "resolve_model",
]

# No configuration file of a checkpoint comes near this (a sharded index of a large model is a
# few hundred KB); a larger one is not a config, and reading it could exhaust memory.
MAX_JSON_BYTES = 16 * 2**20

# The last component of the dotted ``type`` in modules.json decides the stage. Both
# sentence-transformers' names and InstructorEmbedding's own subclasses appear in published files.
_STAGE_KINDS = {
    "Transformer": "transformer",
    "INSTRUCTOR_Transformer": "transformer",
    "Pooling": "pooling",
    "INSTRUCTOR_Pooling": "pooling",
    "Dense": "dense",
    "Normalize": "normalize",
}
_TRUSTED_PACKAGES = ("sentence_transformers", "InstructorEmbedding")

# Files a hub download never needs: other frameworks' weights and exports.
_HUB_IGNORE_PATTERNS = [
    "*.h5",
    "*.ot",
    "*.msgpack",
    "*.onnx",
    "onnx/*",
    "openvino/*",
    "tf_model*",
    "flax_model*",
    "rust_model*",
    "coreml/*",
]


@dataclass(frozen=True)
class StageSpec:
    """One entry of ``modules.json``: the stage kind and the folder holding its files."""

    kind: str
    folder: Path


@dataclass(frozen=True)
class ResolvedModel:
    """A checkpoint found on disk.

    ``fingerprint`` names the weights for cache keys: ``hub:<id>@<commit>`` for hub models (the
    snapshot folder's commit hash), or ``None`` for a local folder, whose fingerprint is computed
    from its files when they are loaded.
    """

    folder: Path
    fingerprint: str | None


def regular_file(path: Path, *, what: str) -> os.stat_result:
    """Stat ``path`` (following links) and refuse anything but a regular file.

    A FIFO would block the reader forever and a device (``/dev/zero``) never ends, so no file
    of a checkpoint is opened before this says it is a plain file.
    """
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{what}: required file {path} is missing.") from None
    except OSError as exc:
        raise CheckpointError(f"{what}: cannot read {path} ({exc.strerror}).") from None
    if not stat.S_ISREG(status.st_mode):
        raise CheckpointError(
            f"{what}: {path} is not a regular file ({_file_kind(status.st_mode)}); a checkpoint "
            f"is made of regular files only."
        )
    return status


def read_json(path: Path, *, what: str) -> Any:
    """Read a JSON file of a checkpoint, turning a missing, non-regular, oversized or malformed
    file into a CheckpointError naming it."""
    status = regular_file(path, what=what)
    if status.st_size > MAX_JSON_BYTES:
        raise CheckpointError(
            f"{what}: {path} is too large for a configuration file ({status.st_size:,} bytes; "
            f"at most {MAX_JSON_BYTES:,})."
        )
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what}: {path} is not valid JSON ({exc}).") from None


def inside(folder: Path, name: str, *, what: str) -> Path:
    """The file ``name`` of ``folder``, refusing a name that leads outside it.

    Names come from the checkpoint's own files (``modules.json`` paths, a sharded index's
    ``weight_map``), so an absolute name or one through ``..`` could make us read any file of
    the machine, which the fingerprint of the folder would not cover either.
    """
    if not isinstance(name, str) or os.path.isabs(name) or ".." in Path(name).parts:
        raise CheckpointError(
            f"{what}: {name!r} leads outside the checkpoint folder {folder}; only paths inside "
            f"it are read."
        )
    return folder / name


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a plain file"


def read_stages(folder: Path) -> list[StageSpec]:
    """Validate ``modules.json`` and return its stages in order.

    Only the four stage types of the published checkpoints are known. Anything else (a custom
    module, a class from another package) is refused by name: loading it would mean importing
    and running code that came with the checkpoint.
    """
    path = folder / "modules.json"
    entries = read_json(path, what="sentence-transformers checkpoint")
    if not isinstance(entries, list) or not entries:
        raise CheckpointError(f"{path} must hold a non-empty JSON list of modules.")
    stages = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise CheckpointError(f"{path}: entry {position} has no 'type' string.")
        type_name = entry["type"]
        package, _, class_name = type_name.rpartition(".")
        kind = _STAGE_KINDS.get(class_name)
        if kind is None or not package.startswith(_TRUSTED_PACKAGES):
            raise CheckpointError(
                f"{path}: entry {position} has unknown module type {type_name!r}; supported "
                f"types are sentence-transformers' Transformer, Pooling, Dense and Normalize."
            )
        stage_folder = inside(folder, entry.get("path", ""), what=f"{path}, entry {position}")
        # A stage folder that is a link out of the checkpoint would be read, but not covered
        # by the folder's fingerprint.
        real_root, real = os.path.realpath(folder), os.path.realpath(stage_folder)
        if os.path.commonpath([real_root, real]) != real_root:
            raise CheckpointError(
                f"{path}, entry {position}: {stage_folder} is a link to {real}, outside the "
                f"checkpoint folder; only folders inside it are read."
            )
        stages.append(StageSpec(kind=kind, folder=stage_folder))
    kinds = [stage.kind for stage in stages]
    if kinds[0] != "transformer" or kinds.count("transformer") != 1:
        raise CheckpointError(f"{path}: the first and only Transformer stage must come first.")
    if "pooling" not in kinds:
        raise CheckpointError(f"{path}: a Pooling stage is required to get one vector per text.")
    return stages


def resolve_model(
    model: str | os.PathLike[str],
    *,
    revision: str | None = None,
    local_files_only: bool = False,
    cache_folder: str | None = None,
) -> ResolvedModel:
    """Find a checkpoint folder: an existing local folder, or a hub id through huggingface_hub.

    Hub downloads go through ``huggingface_hub.snapshot_download`` so that its cache, ``revision``
    pins, ``HF_HUB_OFFLINE`` and tokens work as users expect; ``local_files_only=True`` only
    reads that cache.
    """
    path = Path(os.fspath(model)).expanduser()
    if path.is_dir():
        return ResolvedModel(folder=path.resolve(), fingerprint=None)
    text = os.fspath(model)
    if text.startswith((".", "/", "~")) or os.sep in text.replace("/", "") or text.count("/") > 1:
        raise ModelNotFoundError(f"model={text!r} looks like a folder path, but no such folder.")
    return _download_from_hub(
        text, revision=revision, local_files_only=local_files_only, cache_folder=cache_folder
    )


def _download_from_hub(
    repo_id: str, *, revision: str | None, local_files_only: bool, cache_folder: str | None
) -> ResolvedModel:
    import huggingface_hub
    from huggingface_hub import errors

    # Each refusal below says what happened and what to do; the chain of network errors behind
    # it (httpcore, httpx, huggingface_hub) would bury that under four tracebacks.
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            local_files_only=local_files_only,
            cache_dir=cache_folder,
            ignore_patterns=_HUB_IGNORE_PATTERNS,
        )
    except errors.GatedRepoError:
        raise ModelNotFoundError(
            f"model={repo_id!r} is gated on the Hugging Face hub: accept its terms on the hub and "
            f"log in (`hf auth login` or HF_TOKEN)."
        ) from None
    except errors.RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"model={repo_id!r} was not found on the Hugging Face hub (wrong id, or a private "
            f"repository you have no access to), and it is not a local folder; to use a model "
            f"on disk, pass the path of its folder."
        ) from None
    except errors.RevisionNotFoundError:
        raise ModelNotFoundError(
            f"model={repo_id!r} has no revision {revision!r} on the Hugging Face hub."
        ) from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, OSError) as exc:
        # LocalEntryNotFoundError is what an offline machine (no network, HF_HUB_OFFLINE=1 or
        # local_files_only=True) gets when the model is not in the cache yet.
        raise ModelNotFoundError(
            f"model={repo_id!r} is not in the local Hugging Face cache and could not be "
            f"downloaded ({type(exc).__name__}). Connect to the internet once so it can be cached "
            f"(and unset HF_HUB_OFFLINE / local_files_only), or pass the path of a local folder "
            f"holding the checkpoint."
        ) from None
    folder_path = Path(folder)
    commit = folder_path.name  # snapshots/<commit hash>/
    return ResolvedModel(folder=folder_path, fingerprint=f"hub:{repo_id}@{commit}")
