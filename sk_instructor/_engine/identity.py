"""What identifies a set of weights: the one place that says which weights a vector came from.

Cache keys, the command line's resume manifest and output metadata all record a fingerprint;
each is made here and nowhere else:

* a hub model is named by its snapshot's commit, ``hub:<id>@<commit>`` (a commit never
  changes, so neither do its files);
* a local folder by what its files hold, ``folder:<sha256>`` (:func:`fingerprint_folder`).

No torch here: a warm start keys its lookups without loading anything.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import threading
import time
from pathlib import Path
from typing import BinaryIO

from .._exceptions import CheckpointError

__all__ = ["FINGERPRINT_VERSION", "current_fingerprint", "fingerprint_folder", "hub_fingerprint"]

# Bump when the folder fingerprint's recipe changes, so that old fingerprints (and keys) stop
# matching.
FINGERPRINT_VERSION = 1


def _bytes_field(raw: bytes) -> bytes:
    # Length-prefixed so that no two field sequences share an encoding ("a"+"bc" != "ab"+"c").
    return struct.pack("<Q", len(raw)) + raw


def hub_fingerprint(repo_id: str, commit: str) -> str:
    """The fingerprint of a hub snapshot: its repository and commit.

    Examples
    --------
    >>> hub_fingerprint("hkunlp/instructor-large", "0" * 40)
    'hub:hkunlp/instructor-large@0000000000000000000000000000000000000000'
    """
    return f"hub:{repo_id}@{commit}"


def current_fingerprint(folder: Path, hub: str | None) -> str:
    """The fingerprint of a checkpoint's weights as they are now: ``hub`` (a snapshot's, which
    never changes) when given, else what ``folder``'s files hold."""
    return hub if hub is not None else fingerprint_folder(folder)


# Files below this size are hashed in full. Hashing a 1.3 GB weight file in full costs
# seconds at every process start, so larger files are identified by sampling instead.
FULL_HASH_LIMIT = 64 * 2**20
_SAMPLE_BYTES = 2**20
_READ_CHUNK = 2**20
# A file modified this recently may be modified again within the file system's timestamp
# granularity without its (size, mtime) changing, so its fingerprint is not memoized (the
# "racy clean" problem git also guards against).
_RACY_WINDOW_NS = 2 * 10**9

# resolved folder -> (stat signature of every file, fingerprint); one entry per folder.
_MEMO: dict[str, tuple[tuple[tuple[object, ...], ...], str]] = {}
_MEMO_LOCK = threading.Lock()


def _is_skipped(name: str) -> bool:
    # Hidden files cover .git, .gitattributes and editor or download leftovers; the model card
    # does not change a single weight.
    return name.startswith(".") or name.lower() == "readme.md"


def _model_files(root: Path) -> list[tuple[str, str, os.stat_result]]:
    """Return ``(relative posix path, absolute path, stat)`` of every file that counts.

    Hub snapshots are made of links into a blob store beside the snapshot, so a link to a file
    is followed wherever it leads (the loader reads the same target). A link to a folder is
    followed only inside the model folder: one leading elsewhere (``/usr``) is not part of the
    model, and a loop is walked once. A broken link holds nothing the loader could read and is
    left out. Anything but a regular file (a FIFO, a device) is refused: reading it could block
    forever, or never end.
    """

    def raise_error(error: OSError) -> None:
        # Skipping an unreadable subfolder would silently leave its files out of the fingerprint.
        raise error

    real_root = os.path.realpath(root)
    files = []
    seen_folders = set()
    for folder, subfolders, names in os.walk(root, onerror=raise_error, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_folders or os.path.commonpath([real, real_root]) != real_root:
            subfolders[:] = []
            continue
        seen_folders.add(real)
        subfolders[:] = sorted(name for name in subfolders if not _is_skipped(name))
        for name in names:
            if _is_skipped(name):
                continue
            absolute = os.path.join(folder, name)
            try:
                status = os.stat(absolute)
            except OSError:  # a broken link, or a loop of links
                continue
            if not stat.S_ISREG(status.st_mode):
                raise CheckpointError(
                    f"{absolute} is not a regular file; a model folder holds regular files "
                    f"only (reading a FIFO or a device could block forever)."
                )
            relative = Path(os.path.relpath(absolute, root)).as_posix()
            files.append((relative, absolute, status))
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


def _file_digest(path: str, status: os.stat_result) -> bytes:
    size = status.st_size
    with open(path, "rb") as handle:
        if size < FULL_HASH_LIMIT:
            return b"full:" + _sha256_of_range(handle, 0, size)
        # A fine-tune can rewrite only middle tensors and keep the size, the header (first
        # MiB) and the last tensors, so the modification time is part of the fingerprint too:
        # touching a large weight file costs a cache miss, never a wrong vector.
        head = _sha256_of_range(handle, 0, _SAMPLE_BYTES)
        tail = _sha256_of_range(handle, max(0, size - _SAMPLE_BYTES), _SAMPLE_BYTES)
    return b"sampled:" + struct.pack("<QQ", size, status.st_mtime_ns) + head + tail


def fingerprint_folder(path: str | os.PathLike[str]) -> str:
    """Return the fingerprint of a local model folder: what its files hold.

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
    CheckpointError
        If the folder holds no file that counts, or something other than regular files (a
        FIFO, a device).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sk_instructor._engine.identity import fingerprint_folder
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
        raise CheckpointError(
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
        digest.update(_bytes_field(relative.encode("utf-8", "surrogateescape")))
        digest.update(_bytes_field(_file_digest(absolute, status)))
    fingerprint = f"folder:{digest.hexdigest()}"

    newest = max(status.st_mtime_ns for _, _, status in files)
    if time.time_ns() - newest > _RACY_WINDOW_NS:
        with _MEMO_LOCK:
            _MEMO[str(root)] = (signature, fingerprint)
    return fingerprint
