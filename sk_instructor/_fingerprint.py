"""Identity of the weights an embedding was computed with.

The embedding cache keys every vector by a model fingerprint, so that two different
checkpoints never share entries and a checkpoint edited in place stops matching its old
entries. A Hub model is identified by its commit; a local folder by what it contains.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import threading
import time
from pathlib import Path
from typing import BinaryIO

__all__ = ["FINGERPRINT_VERSION", "fingerprint_folder", "hub_fingerprint"]

# Bump when the recipe below changes, so that old fingerprints (and cache keys) stop matching.
FINGERPRINT_VERSION = 1

# Files below this size are hashed in full. Hashing a 1.3 GB weight file in full costs
# seconds at every process start, so larger files are identified by sampling instead.
FULL_HASH_LIMIT = 64 * 2**20
_SAMPLE_BYTES = 2**20
_READ_CHUNK = 2**20
# A file modified this recently may be modified again within the file system's timestamp
# granularity without its (size, mtime) changing, so its fingerprint is not memoized (the
# "racy clean" problem git also guards against).
_RACY_WINDOW_NS = 2 * 10**9

_HUB_COMMIT = re.compile(r"[0-9a-f]{40}")

# resolved folder -> (stat signature of every file, fingerprint); one entry per folder.
_MEMO: dict[str, tuple[tuple[tuple[object, ...], ...], str]] = {}
_MEMO_LOCK = threading.Lock()


def _field(raw: bytes) -> bytes:
    # Length-prefixed so that a path and a digest can never run into each other.
    return struct.pack("<Q", len(raw)) + raw


def _is_skipped(name: str) -> bool:
    # Hidden files cover .git, .gitattributes and editor or download leftovers; the model card
    # does not change a single weight.
    return name.startswith(".") or name.lower() == "readme.md"


def _model_files(root: Path) -> list[tuple[str, str, os.stat_result]]:
    """Return ``(relative posix path, absolute path, stat)`` of every file that counts."""

    def raise_error(error: OSError) -> None:
        # Skipping an unreadable subfolder would silently leave its files out of the identity.
        raise error

    files = []
    seen_folders = set()
    # Hub snapshots are made of symlinks into a blob store, so links are followed; the set
    # of visited real paths stops a link cycle.
    for folder, subfolders, names in os.walk(root, onerror=raise_error, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_folders:
            subfolders[:] = []
            continue
        seen_folders.add(real)
        subfolders[:] = sorted(name for name in subfolders if not _is_skipped(name))
        for name in names:
            if _is_skipped(name):
                continue
            absolute = os.path.join(folder, name)
            relative = Path(os.path.relpath(absolute, root)).as_posix()
            files.append((relative, absolute, os.stat(absolute)))
    files.sort(key=lambda item: item[0])
    return files


def _sha256_of_range(handle: BinaryIO, start: int, length: int) -> bytes:
    digest = hashlib.sha256()
    handle.seek(start)
    remaining = length
    while remaining > 0:
        chunk = handle.read(min(_READ_CHUNK, remaining))
        if not chunk:
            break
        digest.update(chunk)
        remaining -= len(chunk)
    return digest.digest()


def _file_identity(path: str, status: os.stat_result) -> bytes:
    size = status.st_size
    with open(path, "rb") as handle:
        if size < FULL_HASH_LIMIT:
            return b"full:" + _sha256_of_range(handle, 0, size)
        # A fine-tune can rewrite only middle tensors and keep the size, the header (first
        # MiB) and the last tensors, so the modification time is part of the identity too:
        # touching a large weight file costs a cache miss, never a wrong vector.
        head = _sha256_of_range(handle, 0, _SAMPLE_BYTES)
        tail = _sha256_of_range(handle, max(0, size - _SAMPLE_BYTES), _SAMPLE_BYTES)
    return b"sampled:" + struct.pack("<QQ", size, status.st_mtime_ns) + head + tail


def fingerprint_folder(path: str | os.PathLike[str]) -> str:
    """Return the identity of a local model folder.

    Every file counts (relative path and content) except ``README.md`` and hidden files or
    folders (``.git``, ``.gitattributes``, ...). Files under 64 MiB (configs, tokenizer,
    ``modules.json``, ``1_Pooling/``, ``2_Dense/``, small weights) are hashed in full; a
    larger file is identified by its size, modification time and the SHA-256 of its first
    and last MiB, so any change of a config or weight file, or touching a large weight
    file, gives a new fingerprint.

    The result is memoized per process, keyed by the folder and the size and
    modification times of its files: a second call only lists the folder.

    Parameters
    ----------
    path : str or os.PathLike
        The model folder (sentence-transformers layout, or a Hub snapshot folder).

    Returns
    -------
    str
        ``"folder:"`` followed by 64 hexadecimal characters.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    NotADirectoryError
        If ``path`` is not a folder.
    ValueError
        If the folder holds no file that counts.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sk_instructor._fingerprint import fingerprint_folder
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = (pathlib.Path(folder) / "config.json").write_text('{"hidden_size": 8}')
    ...     fingerprint = fingerprint_folder(folder)
    >>> fingerprint.startswith("folder:"), len(fingerprint)
    (True, 71)
    """
    given = os.fspath(path)
    root = Path(given).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"fingerprint_folder: model folder {given!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(
            f"fingerprint_folder: {given!r} is not a folder; expected a local model folder"
        )
    files = _model_files(root)
    if not files:
        raise ValueError(
            f"fingerprint_folder: {str(root)!r} holds no model files (README.md and hidden "
            f"files do not count)"
        )
    # ctime and inode are in the signature only to make the memo stricter: a file replaced
    # by a copy with the same size and preserved mtime still changes its inode and ctime.
    signature = tuple(
        (relative, status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino)
        for relative, _, status in files
    )
    with _MEMO_LOCK:
        memo = _MEMO.get(str(root))
    if memo is not None and memo[0] == signature:
        return memo[1]

    digest = hashlib.sha256(b"sk_instructor/model-folder\x00")
    digest.update(struct.pack("<I", FINGERPRINT_VERSION))
    for relative, absolute, status in files:
        digest.update(_field(relative.encode("utf-8", "surrogateescape")))
        digest.update(_field(_file_identity(absolute, status)))
    fingerprint = f"folder:{digest.hexdigest()}"

    newest = max(status.st_mtime_ns for _, _, status in files)
    if time.time_ns() - newest > _RACY_WINDOW_NS:
        with _MEMO_LOCK:
            _MEMO[str(root)] = (signature, fingerprint)
    return fingerprint


def hub_fingerprint(repo_id: str, commit: str) -> str:
    """Return the identity of a Hugging Face Hub model at one commit.

    Parameters
    ----------
    repo_id : str
        Repository id, e.g. ``"hkunlp/instructor-large"``.
    commit : str
        The full 40-character commit hash the files were downloaded from. A branch or tag
        name (``"main"``) moves, so it cannot identify weights and is refused.

    Returns
    -------
    str
        ``"hub:{repo_id}@{commit}"``.

    Examples
    --------
    >>> from sk_instructor._fingerprint import hub_fingerprint
    >>> hub_fingerprint("hkunlp/instructor-base", "a" * 40)
    'hub:hkunlp/instructor-base@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
    """
    if not isinstance(repo_id, str) or not repo_id or "@" in repo_id:
        raise ValueError(
            f"hub_fingerprint: repo_id must be a non-empty Hub repository id such as "
            f"'hkunlp/instructor-large', got {repo_id!r}"
        )
    if not isinstance(commit, str) or not _HUB_COMMIT.fullmatch(commit.lower()):
        raise ValueError(
            f"hub_fingerprint: commit must be a full 40-character hexadecimal commit hash "
            f"(a branch or tag name moves, so it cannot identify weights), got {commit!r}"
        )
    return f"hub:{repo_id}@{commit.lower()}"
