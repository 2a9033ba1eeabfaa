"""Crash-safe, resumable output for the command line, committed in parts.

Vectors are written in *parts*, each of consecutive input rows, to a work folder next to the
output, ``OUTPUT.parts/``; a part is named by its first row, and holds as many rows as were done
when it was committed (the command line commits every ``--chunk-size`` rows or
``--commit-seconds``, whichever comes first). The part files keep the names that earlier
versions gave them, so that their unfinished runs still resume::

    OUTPUT.parts/
        manifest.json                what is being computed: input signature and vector settings
        chunk-000000000000.parquet   part of input rows [0, n0): ids and vectors
        chunk-000000000640.parquet   part of input rows [640, 640 + n1), where n0 = 640
        .lock                        held while a run works here

Every file is written under a temporary name, flushed to disk and renamed into place
(``os.replace`` is atomic), so a part file either exists whole or not at all, whatever
kills the process (Ctrl-C, SIGKILL, power loss). A later run with the same input and settings
keeps the parts that follow each other from row 0 (:meth:`OutputParts.committed_rows`) and
computes the rest, with parts of any size; a run with another input or other settings refuses
instead of mixing vectors. Once every row is in a part they are assembled into the final file
(again renamed into place) and the work folder is removed.

A full disk (``ENOSPC``, or ``EDQUOT`` for a full quota) raises :class:`OutputWriteError`: one
line naming the file that could not be written and where the committed parts are kept. The
temporary file of the failed write is removed at once, the parts stay, and the same command run
again with space resumes. The final ``.npy`` is written with ordinary writes, never through a
memory map: a store into a memory-mapped page that the disk has no room for kills the process
with SIGBUS, before anything can be reported.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

try:  # POSIX only; elsewhere two runs on the same output are not kept apart.
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

from .errors import OutputError

__all__ = ["MANIFEST_VERSION", "OutputParts", "OutputWriteError", "input_signature"]

# Bump when the layout of the work folder changes, so that old folders are refused clearly.
# 2: parts named by their first row, of any size (1: by their index, of --chunk-size rows).
MANIFEST_VERSION = 2
_IDENTITY_HEAD_BYTES = 2**20
# The names of part files on disk: those of earlier versions, which a run resumes.
_PART_NAME = re.compile(r"chunk-(\d{12,})\.parquet")
_PART_GLOB = "chunk-*.parquet"
# The errors of a file system that has no room left for what is written: the disk, or the
# user's quota, is full.
_NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})

_T = TypeVar("_T")


class OutputWriteError(OutputError, OSError):
    """A file of the output could not be written for lack of space; one line, meant for a user.

    An :class:`OSError` too, with the ``errno`` of the failed write (``ENOSPC`` or ``EDQUOT``)
    and the file that could not be written as ``filename``; its message says "no space left
    on device", names that file and where the committed parts are kept.

    Parameters
    ----------
    message : str
        The whole message, one line.
    error : OSError
        The failed write.
    path : path-like
        The file that could not be written.

    Examples
    --------
    >>> import errno
    >>> from sk_instructor._cli.output_parts import OutputWriteError
    >>> error = OutputWriteError(
    ...     "no space left on device: could not write out.npy",
    ...     OSError(errno.ENOSPC, "No space left on device"),
    ...     "out.npy",
    ... )
    >>> error.errno == errno.ENOSPC, error.filename, str(error)
    (True, 'out.npy', 'no space left on device: could not write out.npy')
    """

    def __init__(self, message: str, error: OSError, path: str | os.PathLike[str]) -> None:
        OSError.__init__(self, error.errno, error.strerror or str(error), os.fspath(path))
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        error = OSError(self.errno, self.strerror)
        return type(self), (self.message, error, self.filename)


def input_signature(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Identify an input file by its size, modification time and the SHA-256 of its first MiB.

    Cheap on files of any size, and any edit that keeps the size and the first MiB also
    changes the modification time.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sk_instructor._cli.output_parts import input_signature
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "texts.csv"
    >>> _ = path.write_text("text\\nhello\\n")
    >>> sorted(input_signature(path))
    ['mtime_ns', 'sha256_first_mib', 'size']
    """
    status = os.stat(path)
    with open(path, "rb") as handle:
        head = hashlib.sha256(handle.read(_IDENTITY_HEAD_BYTES)).hexdigest()
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "sha256_first_mib": head}


class OutputParts:
    """The work folder of one output file: part files, manifest, lock and final assembly.

    Parameters
    ----------
    output : path-like
        The final file, ``.parquet`` or ``.npy``; the work folder is ``OUTPUT.parts``.
    manifest : dict
        JSON-serializable description of what is computed (input signature, everything that
        changes a vector). A run resumes only the work of a run with an equal manifest.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from sk_instructor._cli.output_parts import OutputParts
    >>> output = pathlib.Path(tempfile.mkdtemp()) / "vectors.npy"
    >>> with OutputParts(output, {"settings": "..."}) as parts:
    ...     parts.write_part(0, np.asarray([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    ...     parts.write_part(2, np.asarray([[0.6, 0.8]], dtype=np.float32))
    ...     parts.committed_rows(), parts.assemble(n_rows=3, embedding_column="embedding")
    (3, 3)
    >>> np.load(output).shape
    (3, 2)
    """

    def __init__(
        self, output: str | os.PathLike[str], manifest: dict[str, Any] | None = None
    ) -> None:
        self.output = Path(output)
        self.folder = self.output.with_name(self.output.name + ".parts")
        self.manifest = {"manifest_version": MANIFEST_VERSION, **(manifest or {})}
        self._lock_handle: Any = None

    # -- opening: lock, check or write the manifest ------------------------------------------
    def lock(self) -> OutputParts:
        """Take the work folder's lock (creating the folder), or fail at once.

        The command line takes it before anything slow, and checks whether the output exists
        while holding it: two runs on one output then never both go ahead.

        Raises
        ------
        OutputError
            Another run holds the lock.
        """
        if self._lock_handle is not None:
            return self
        lock_path = self.folder / ".lock"
        for _ in range(100):
            try:
                with self._no_space_reported(lock_path):
                    self.folder.mkdir(exist_ok=True)
                    handle = open(lock_path, "a+b")
            except FileNotFoundError:  # the run that held it removed the folder just now
                continue
            if fcntl is not None:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    handle.close()
                    raise OutputError(
                        f"another sk-instructor run is writing {self.output} (it holds "
                        f"{lock_path}); wait for it to finish"
                    ) from None
            # A run that finishes removes the folder, lock file included: a lock taken on the
            # file it removed between our open and our flock keeps no one out. Take it again.
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(handle.fileno()), os.stat(lock_path)):
                    self._lock_handle = handle
                    self._remove_finished_folders()
                    return self
            handle.close()
        raise OutputError(f"could not take the lock {lock_path}: it keeps being removed")

    def _remove_finished_folders(self) -> None:
        """Remove the work folders of finished runs that were killed while removing them: once
        its output is in place, a run renames its folder aside, then deletes it (see
        :meth:`assemble`); a kill in between left it there for good."""
        for finished in self.folder.parent.glob(f".{self.folder.name}.*.removed"):
            shutil.rmtree(finished, ignore_errors=True)

    def has_work(self) -> bool:
        """Whether the work folder holds an earlier run's work (a manifest or parts)."""
        return (self.folder / "manifest.json").exists() or bool(self.completed_parts())

    def open(self, *, restart: bool = False) -> OutputParts:
        """Take the work folder: lock it, then check that the work found there is resumable.

        Parameters
        ----------
        restart : bool, default=False
            Discard the work of an earlier run instead of resuming or refusing it.

        Raises
        ------
        OutputError
            Another run holds the folder, or it holds work of a different input or settings
            (and ``restart`` is false).
        """
        self.lock()
        manifest_path = self.folder / "manifest.json"
        if restart:
            self._clear()
        elif manifest_path.exists():
            self._check_manifest(manifest_path)
        elif self.completed_parts():
            raise OutputError(
                f"{self.folder} holds parts but no manifest.json, so they cannot be checked; "
                f"pass --restart to discard them"
            )
        for leftover in self.folder.glob(".*.tmp"):
            # Half-written files of a run that was killed: never renamed, so never trusted.
            leftover.unlink()
        self._drop_unchained_parts()
        self._write_atomically(
            manifest_path, lambda handle: handle.write(_json_bytes(self.manifest))
        )
        return self

    def close(self) -> None:
        """Release the lock; part files stay for a later run to resume from.

        A work folder that holds no work (the run stopped before its manifest was written, on
        a bad input say) is removed, so that a failed run leaves nothing behind.
        """
        if self._lock_handle is None:
            return
        if not self.has_work():
            # Removed while still locked; a run waiting on the lock file takes a new one.
            with contextlib.suppress(OSError):
                (self.folder / ".lock").unlink()
                self.folder.rmdir()
        self._release()

    def _release(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def __enter__(self) -> OutputParts:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- parts --------------------------------------------------------------------------------
    def part_path(self, first_row: int) -> Path:
        """Where the part that starts at input row ``first_row`` is kept."""
        return self.folder / f"chunk-{first_row:012d}.parquet"

    def completed_parts(self) -> dict[int, int]:
        """First row -> rows, for every readable part file present."""
        found = {}
        for path in self.folder.glob(_PART_GLOB):
            match = _PART_NAME.fullmatch(path.name)
            if match:
                with contextlib.suppress(OSError, ValueError):
                    found[int(match.group(1))] = pq.read_metadata(path).num_rows
        return found

    def committed_rows(self) -> int:
        """Input rows ``[0, n)`` held by parts that follow each other from row 0: where a run
        resumes."""
        return _chain(self.completed_parts())[0]

    def _drop_unchained_parts(self) -> None:
        # Parts after a gap (a part file lost or unreadable, never after a crash) would be
        # computed again with other boundaries; removed now, they cannot overlap those.
        chained = set(_chain(self.completed_parts())[1])
        for path in self.folder.glob(_PART_GLOB):
            match = _PART_NAME.fullmatch(path.name)
            if not match or int(match.group(1)) not in chained:
                path.unlink()

    def write_part(
        self,
        first_row: int,
        vectors: np.ndarray,
        *,
        embedding_column: str = "embedding",
        ids: Any = None,
        id_column: str | None = None,
    ) -> None:
        """Commit the part of input rows ``[first_row, first_row + len(vectors))``: written to a
        temporary file, synced, renamed into place.

        The part holds ``ids`` (when given) under ``id_column`` and the rows of ``vectors``
        as one ``fixed_size_list<float32>[dim]`` column named ``embedding_column``.
        """
        # A new table: the input's schema metadata (pandas' index description, say)
        # describes the input's columns, not the output's.
        columns = {id_column: ids} if ids is not None else {}
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        columns[embedding_column] = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        table = pa.table(columns)
        # Uncompressed: float vectors hardly compress and the parts are short-lived.
        self._write_atomically(
            self.part_path(first_row),
            lambda handle: pq.write_table(table, handle, compression="none"),
        )

    # -- the end ------------------------------------------------------------------------------
    def assemble(
        self,
        *,
        n_rows: int,
        embedding_column: str,
        column_per_dimension: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> int:
        """Write the parts of rows ``[0, n_rows)`` into the final file, replace it, remove the
        folder.

        Parameters
        ----------
        n_rows : int
            Rows of the input; the parts must hold each exactly once.
        embedding_column : str
            Name of the vector column in the parts (and in a Parquet output).
        column_per_dimension : bool, default=False
            Parquet output: one float32 column ``{embedding_column}_{i}`` per dimension
            instead of one ``fixed_size_list`` column.
        metadata : dict of str to str or None, default=None
            Key-value metadata stored in a Parquet output's schema.

        Returns
        -------
        int
            Rows written.

        Raises
        ------
        OutputWriteError
            The disk is full: the output is not written (nothing is left under its name or
            a temporary one), the parts are kept, and a later call resumes from them.
        """
        committed, first_rows = _chain(self.completed_parts())
        if committed != n_rows:
            raise OutputError(
                f"{self.folder} holds rows [0, {committed}) of {n_rows}; run again to compute "
                f"the rest"
            )
        paths = [self.part_path(first_row) for first_row in first_rows]
        if self.output.suffix.lower() == ".npy":

            def write(handle: Any) -> int:
                return self._write_npy(handle, paths, n_rows, embedding_column)

        else:

            def write(handle: Any) -> int:
                return _write_parquet(
                    handle, paths, embedding_column, column_per_dimension, metadata or {}
                )

        # Assembled in the work folder (on the output's file system), renamed into place.
        n_written = self._write_atomically(
            self.output, write, temporary=self.folder / ".assembled.tmp"
        )
        # Renamed first so that the work folder vanishes at once: one half-deleted by a crash
        # would send the next run back to recompute the parts already removed. Still locked,
        # so that no other run starts on the folder in between (see lock()).
        removed = self.folder.with_name(f".{self.folder.name}.{os.getpid()}.removed")
        os.replace(self.folder, removed)
        self._release()
        shutil.rmtree(removed, ignore_errors=True)
        return n_written

    def _write_npy(self, handle: Any, paths: list[Path], n_rows: int, embedding_column: str) -> int:
        """Write the ``.npy`` file np.save would write: its header, then each part's rows.

        Ordinary buffered writes, never a memory map: on a full disk a write then raises
        ``OSError(ENOSPC)``, where a store into a memory-mapped page would kill the process
        with SIGBUS.
        """
        dim = pq.read_schema(paths[0]).field(embedding_column).type.list_size
        header = {"descr": "<f4", "fortran_order": False, "shape": (n_rows, dim)}
        try:
            np.lib.format.write_array_header_1_0(handle, header)
        except ValueError:  # pragma: no cover - a header over 64 KiB: never for two numbers
            np.lib.format.write_array_header_2_0(handle, header)
        written = 0
        for path in paths:
            vectors = _vectors(pq.read_table(path, columns=[embedding_column]))
            if vectors.shape[1] != dim:
                raise OutputError(
                    f"{path} holds vectors of dimension {vectors.shape[1]}, not {dim}; pass "
                    f"--restart to compute them again"
                )
            handle.write(memoryview(np.ascontiguousarray(vectors, dtype="<f4")).cast("B"))
            written += len(vectors)
        if written != n_rows:  # pragma: no cover - the parts were chained to n_rows above
            raise OutputError(
                f"{self.folder} holds {written} rows, not {n_rows}; pass --restart to compute "
                f"them again"
            )
        return n_rows

    # -- internals ----------------------------------------------------------------------------
    def _check_manifest(self, manifest_path: Path) -> None:
        try:
            found = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            found = None
        if not isinstance(found, dict):
            raise OutputError(f"{manifest_path} is unreadable; pass --restart to start over")
        if found == self.manifest:
            return
        if found.get("manifest_version") != self.manifest["manifest_version"]:
            raise OutputError(
                f"{self.folder} holds an unfinished run of another sk-instructor version, which "
                f"this one cannot resume; pass --restart to discard it"
            )
        labels = []
        for name in _differences(found, self.manifest):
            group, _, key = name.partition(".")
            if group == "input":
                label = "input file"
            elif group == "columns":
                label = f"{key} column"
            else:
                label = (key or group).replace("_", " ")
            if label not in labels:
                labels.append(label)
        raise OutputError(
            f"{self.folder} holds an unfinished run with a different {', '.join(labels)}; "
            f"rerun it with the same input and options to resume, or pass --restart to "
            f"discard it"
        )

    def _clear(self) -> None:
        for path in self.folder.iterdir():
            if path.name != ".lock":
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    def _write_atomically(
        self, path: Path, write: Callable[[Any], _T], *, temporary: Path | None = None
    ) -> _T:
        """Write ``path`` through ``write(handle)``: into a temporary file, synced, renamed into
        place; returns what ``write`` returns. On any failure the temporary file is removed at
        once (on a full disk, that gives back its space) and the final name never holds a
        partial file; a full disk raises :class:`OutputWriteError` naming ``path``."""
        if temporary is None:
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with self._no_space_reported(path):
                with open(temporary, "wb") as handle:
                    result = write(handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, path)
        except BaseException:
            # Ctrl-C mid-write included: the final name never held a partial file.
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        _sync_folder(path.parent)
        return result

    @contextlib.contextmanager
    def _no_space_reported(self, path: Path):
        """Turn a full disk met while writing ``path`` into an :class:`OutputWriteError`."""
        try:
            yield
        except OutputWriteError:
            raise
        except OSError as error:
            if error.errno not in _NO_SPACE:
                raise
            raise self._no_space(error, path) from error

    def _no_space(self, error: OSError, path: Path) -> OutputWriteError:
        reason = "no space left on device"
        if error.errno != errno.ENOSPC:
            reason += f" ({(error.strerror or 'disk quota exceeded').lower()})"
        # Reading what is kept needs no space.
        rows = self.committed_rows() if self.folder.is_dir() else 0
        if rows:
            advice = (
                f"the {rows} rows committed are kept in {self.folder}: free space, then run the "
                f"same command again to resume"
            )
        else:
            advice = "free space, then run the same command again"
        return OutputWriteError(f"{reason}: could not write {path}; {advice}", error, path)


def _write_parquet(
    handle: Any,
    paths: list[Path],
    embedding_column: str,
    column_per_dimension: bool,
    metadata: dict[str, str],
) -> int:
    """Write the parts, in order, as one Parquet file to ``handle``; returns the rows."""
    n_rows = 0
    writer = None
    try:
        for path in paths:
            table = pq.read_table(path)
            if column_per_dimension:
                table = _one_column_per_dimension(table, embedding_column)
            if writer is None:
                schema = table.schema.with_metadata({**(table.schema.metadata or {}), **metadata})
                writer = pq.ParquetWriter(handle, schema)
            writer.write_table(table.cast(writer.schema))
            n_rows += table.num_rows
        writer.close()
        writer = None
    finally:
        if writer is not None:
            # After a failed write (a full disk): the footer cannot be written either, and
            # the first error is the one to report.
            with contextlib.suppress(Exception):
                writer.close()
    return n_rows


def _chain(parts: dict[int, int]) -> tuple[int, list[int]]:
    """Follow parts (first row -> rows) from row 0: (rows covered, first rows in order)."""
    first_rows = []
    row = 0
    while parts.get(row):
        first_rows.append(row)
        row += parts[row]
    return row, first_rows


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _differences(found: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ, e.g. ``['input.size', 'settings.model']``."""
    names = []
    for key in sorted(set(found) | set(wanted)):
        old, new = found.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            names += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            names.append(f"{prefix}{key}")
    return names


def _vectors(table: Any) -> np.ndarray:
    """The ``fixed_size_list<float32>`` column of a one-column table as a 2-D array."""
    column = table.column(0).combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def _one_column_per_dimension(table: Any, embedding_column: str) -> Any:
    position = table.schema.get_field_index(embedding_column)
    vectors = _vectors(table.select([position]))
    table = table.remove_column(position)
    for dimension in range(vectors.shape[1]):
        table = table.append_column(
            f"{embedding_column}_{dimension}", pa.array(vectors[:, dimension])
        )
    return table


def _sync_folder(folder: Path) -> None:
    # A rename is durable only once the folder itself is synced (POSIX); not possible elsewhere.
    if os.name != "posix":  # pragma: no cover
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
