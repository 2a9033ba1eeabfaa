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
from .identity import current_fingerprint, fingerprint_folder, hub_fingerprint

__all__ = [
    "MAX_JSON_BYTES",
    "CheckpointSummary",
    "ResolvedModel",
    "StageSpec",
    "checkpoint_max_seq_length",
    "inside",
    "pooling_modes",
    "read_json",
    "read_stages",
    "refuse_revision_of_folder",
    "regular_file",
    "resolve_model",
    "summarize",
    "summarize_model",
    "transformer_configs",
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

# Config keys of the Pooling stage, in the order sentence-transformers concatenates its modes.
_POOLING_MODE_KEYS = (
    ("cls", "pooling_mode_cls_token"),
    ("max", "pooling_mode_max_tokens"),
    ("mean", "pooling_mode_mean_tokens"),
    ("mean_sqrt_len_tokens", "pooling_mode_mean_sqrt_len_tokens"),
    ("weightedmean", "pooling_mode_weightedmean_tokens"),
    ("lasttoken", "pooling_mode_lasttoken"),
)
# A tokenizer without a limit says so with a huge model_max_length (transformers' 1e30).
_NO_LIMIT = 1_000_000

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

    ``fingerprint`` names the weights of a hub snapshot (:func:`.identity.hub_fingerprint`);
    ``None`` for a local folder, whose fingerprint is taken from its files each time it is asked
    for (:meth:`current_fingerprint`).
    """

    folder: Path
    fingerprint: str | None

    def current_fingerprint(self) -> str:
        """The fingerprint of the weights the files hold now."""
        return current_fingerprint(self.folder, self.fingerprint)


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


def transformer_configs(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config.json`` and ``sentence_bert_config.json`` of a Transformer stage, validated."""
    config = read_json(folder / "config.json", what="Transformer stage")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise CheckpointError(f"{folder / 'config.json'} has no 'model_type' string.")
    sbert_path = folder / "sentence_bert_config.json"
    sbert = read_json(sbert_path, what="Transformer stage") if sbert_path.exists() else {}
    if not isinstance(sbert, dict):
        raise CheckpointError(f"{sbert_path} must hold a JSON object.")
    max_len = sbert.get("max_seq_length")
    if max_len is not None and (not isinstance(max_len, int) or max_len < 2):
        raise CheckpointError(f"{sbert_path}: max_seq_length must be an integer >= 2.")
    return config, sbert


def checkpoint_max_seq_length(folder: Path) -> int:
    """The token limit a checkpoint declares: ``sentence_bert_config.json``'s, else the least of
    the tokenizer's ``model_max_length`` and the position table, else 512.

    Read from the files alone, so that the cache keys of a model that is not loaded (a warm
    start) and of a loaded one are the same.
    """
    config, sbert = transformer_configs(folder)
    if sbert.get("max_seq_length") is not None:
        return int(sbert["max_seq_length"])
    limits = [config.get("max_position_embeddings")]
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.exists():
        settings = read_json(tokenizer_config, what="tokenizer")
        if isinstance(settings, dict):
            limits.append(settings.get("model_max_length"))
    limits = [
        value
        for value in limits
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _NO_LIMIT
    ]
    return min(limits) if limits else 512


def pooling_modes(folder: Path) -> tuple[tuple[str, ...], int | None]:
    """The modes a Pooling stage folder enables, and its ``word_embedding_dimension``."""
    path = folder / "config.json"
    config = read_json(path, what="Pooling stage")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object.")
    # Newer sentence-transformers versions may write a single "pooling_mode" string instead.
    single = config.get("pooling_mode")
    if isinstance(single, str):
        known = {mode for mode, _ in _POOLING_MODE_KEYS} | {"mean_sqrt_len"}
        if single not in known:
            raise CheckpointError(f"{path}: unknown pooling_mode {single!r}.")
        modes: tuple[str, ...] = ("mean_sqrt_len_tokens" if single == "mean_sqrt_len" else single,)
    else:
        modes = tuple(mode for mode, key in _POOLING_MODE_KEYS if config.get(key))
    if not modes:
        raise CheckpointError(f"{path} enables no pooling mode.")
    width = config.get("word_embedding_dimension")
    return modes, width if isinstance(width, int) else None


@dataclass(frozen=True)
class CheckpointSummary:
    """What a checkpoint's files say about the vectors it gives, read without loading it.

    Attributes
    ----------
    fingerprint : str
        Names the weights (see :class:`ResolvedModel`).
    model_type : str
        ``config.json``'s ``model_type``.
    max_seq_length : int
        The checkpoint's token limit (:func:`checkpoint_max_seq_length`).
    pooling : str
        The pooling modes, e.g. ``"mean"`` or ``"cls+mean"``.
    embedding_dim : int
        The width of a vector: the last Dense stage's ``out_features``, else the pooled width.
    """

    fingerprint: str
    model_type: str
    max_seq_length: int
    pooling: str
    embedding_dim: int


def summarize(folder: Path, fingerprint: str) -> CheckpointSummary:
    """Read a checkpoint's :class:`CheckpointSummary` from its JSON files (no torch)."""
    stages = read_stages(folder)
    config, _ = transformer_configs(stages[0].folder)
    width = next(
        (config[name] for name in ("d_model", "hidden_size", "n_embd", "dim") if name in config),
        None,
    )
    pooling = ""
    for stage in stages[1:]:
        if stage.kind == "pooling":
            modes, declared = pooling_modes(stage.folder)
            pooling = "+".join(modes)
            width = (declared or width or 0) * len(modes)
        elif stage.kind == "dense":
            dense = read_json(stage.folder / "config.json", what="Dense stage")
            width = dense.get("out_features", width) if isinstance(dense, dict) else width
    if not isinstance(width, int) or width < 1:
        raise CheckpointError(f"{folder}: its configs do not say how wide its vectors are.")
    return CheckpointSummary(
        fingerprint=fingerprint,
        model_type=config["model_type"],
        max_seq_length=checkpoint_max_seq_length(stages[0].folder),
        pooling=pooling,
        embedding_dim=width,
    )


# A summary is read once per fingerprint: the fingerprint covers every file it reads (and a
# hub snapshot's commit never changes), so every transform after the first reads no JSON.
_SUMMARIES: dict[str, CheckpointSummary] = {}
# Hub ids already resolved to a snapshot in this process (resolving asks the hub).
_HUB_SNAPSHOTS: dict[tuple[str, str | None], ResolvedModel] = {}


def summarize_model(
    model: str | os.PathLike[str], *, revision: str | None = None, local_files_only: bool = False
) -> CheckpointSummary:
    """The :class:`CheckpointSummary` of a model parameter (a local folder or a hub id).

    A local folder's fingerprint is taken from its files now (memoized while they do not
    change), so a folder saved over is described as it is, not as it was.

    Raises
    ------
    ValueError
        A ``revision`` with a local folder (:func:`refuse_revision_of_folder`).
    """
    name = os.fspath(model)
    local = Path(name).expanduser()
    if local.is_dir():
        folder = local.resolve()
        refuse_revision_of_folder(folder, revision)
        fingerprint = fingerprint_folder(folder)
    else:
        key = (name, revision)
        if key not in _HUB_SNAPSHOTS:
            _HUB_SNAPSHOTS[key] = resolve_model(
                name, revision=revision, local_files_only=local_files_only
            )
        folder, fingerprint = _HUB_SNAPSHOTS[key].folder, _HUB_SNAPSHOTS[key].fingerprint
    if fingerprint not in _SUMMARIES:
        _SUMMARIES[fingerprint] = summarize(folder, fingerprint)
    return _SUMMARIES[fingerprint]


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

    Raises
    ------
    ValueError
        A ``revision`` with a local folder (:func:`refuse_revision_of_folder`).
    ModelNotFoundError
        Neither a local folder nor a model found on the hub or in its cache.
    """
    path = Path(os.fspath(model)).expanduser()
    if path.is_dir():
        folder = path.resolve()
        refuse_revision_of_folder(folder, revision)
        return ResolvedModel(folder=folder, fingerprint=None)
    text = os.fspath(model)
    if text.startswith((".", "/", "~")) or os.sep in text.replace("/", "") or text.count("/") > 1:
        raise ModelNotFoundError(f"model={text!r} looks like a folder path, but no such folder.")
    return _download_from_hub(
        text, revision=revision, local_files_only=local_files_only, cache_folder=cache_folder
    )


def refuse_revision_of_folder(folder: Path, revision: str | None) -> None:
    """Refuse a ``revision`` given with a local folder: it would select nothing.

    A revision picks a commit of a model on the Hugging Face hub; a local folder is read as its
    files are, so the revision would be ignored, and vectors labelled with a revision that did
    not make them.

    Parameters
    ----------
    folder : Path
        The local model folder.
    revision : str or None
        The ``revision`` parameter; None passes.

    Raises
    ------
    ValueError
        ``revision`` is not None, naming it and the folder.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sk_instructor._engine.checkpoint import refuse_revision_of_folder
    >>> refuse_revision_of_folder(Path(tempfile.mkdtemp()), "v1.0")
    Traceback (most recent call last):
    ...
    ValueError: revision='v1.0' was given with model=..., a local folder; ...
    """
    if revision is not None:
        raise ValueError(
            f"revision={revision!r} was given with model={str(folder)!r}, a local folder; a "
            f"revision selects a commit of a model on the Hugging Face hub, and a folder is read "
            f"as its files are: drop revision, or pass the hub id of the model."
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
    return ResolvedModel(folder=folder_path, fingerprint=hub_fingerprint(repo_id, commit))
