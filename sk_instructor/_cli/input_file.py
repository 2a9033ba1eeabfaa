"""An opened input file (:class:`TableInput`), and what a scan of it found (:class:`InputSummary`).

Each format reads its file its own way (:mod:`~sk_instructor._cli.csv_input`,
:mod:`~sk_instructor._cli.dataset_input`); all give record batches of the columns read, and
are scanned whole before any vector is computed. A CSV, TSV or JSON Lines file may be
compressed (gzip, bzip2 or Zstandard, named by its last suffix): :func:`open_binary` and
:func:`arrow_stream` read it decompressed, and :func:`compression_problem` says what to do
when it is not compressed as its name says.
"""

from __future__ import annotations

import bz2
import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc

from .errors import InputError, one_line
from .row_reader import text_lengths

__all__ = [
    "COMPRESSIONS",
    "DECOMPRESSION_ERRORS",
    "FORMAT_NAMES",
    "InputSummary",
    "TableInput",
    "arrow_stream",
    "compressed_hint",
    "compression_problem",
    "open_binary",
    "sniff_compression",
]

# How messages name each format.
FORMAT_NAMES = {"csv": "CSV", "tsv": "TSV", "parquet": "Parquet", "jsonl": "JSON Lines"}

# File name endings -> compression (pyarrow's codec names); the suffix before says the format.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
# How messages name each compression, and the first bytes of its data.
_COMPRESSION_NAMES = {"gzip": "gzip", "bz2": "bzip2", "zstd": "Zstandard"}
_MAGIC = {"gzip": b"\x1f\x8b", "bz2": b"BZh", "zstd": b"\x28\xb5\x2f\xfd"}
_SUFFIXES = {compression: suffix for suffix, compression in COMPRESSIONS.items()}

# What reading data that is not compressed as said, or cut short, raises: Python's modules
# (gzip.BadGzipFile and bz2's "Invalid data stream" are OSErrors, a cut stream an EOFError,
# damaged deflate data zlib.error) and pyarrow's streams (OSError).
DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error)


def open_binary(path: Path, compression: str | None) -> BinaryIO:
    """Open ``path`` for reading bytes, decompressed when ``compression`` is given.

    gzip and bzip2 are read with Python's own modules, Zstandard through pyarrow's codec (the
    standard library has none before Python 3.14). Nothing is read yet: data that is not
    compressed as said raises one of :data:`DECOMPRESSION_ERRORS` at the first read.

    Parameters
    ----------
    path : Path
        The file.
    compression : {"gzip", "bz2", "zstd"} or None
        How its bytes are compressed; None reads them as they are.

    Returns
    -------
    binary file object
        Buffered, so that its lines can be iterated.

    Examples
    --------
    >>> import gzip, tempfile, pathlib
    >>> from sk_instructor._cli.input_file import open_binary
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.csv.gz"
    >>> _ = path.write_bytes(gzip.compress(b"text\\nDark matter\\n"))
    >>> with open_binary(path, "gzip") as handle:
    ...     handle.readlines()
    [b'text\\n', b'Dark matter\\n']
    """
    if compression is None:
        return open(path, "rb")
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    return io.BufferedReader(arrow_stream(path, compression))


def arrow_stream(path: Path, compression: str | None) -> pa.NativeFile:
    """``path`` as a pyarrow input stream, decompressed when ``compression`` is given.

    The compression is always said, never guessed from the name by pyarrow: a plain file is
    read as it is.

    Parameters
    ----------
    path : Path
        The file.
    compression : {"gzip", "bz2", "zstd"} or None
        How its bytes are compressed; None reads them as they are.

    Returns
    -------
    pyarrow.NativeFile
        An input stream; data not compressed as said raises OSError when read.
    """
    return pa.input_stream(str(path), compression=compression)


def compression_problem(
    path: Path, compression: str, format_name: str, error: BaseException
) -> str:
    """The error line for a file whose data is not compressed as its name says, or is cut
    short.

    Parameters
    ----------
    path : Path
        The file.
    compression : {"gzip", "bz2", "zstd"}
        The compression its name says.
    format_name : str
        The format as messages name it (``"CSV"``).
    error : BaseException
        What reading it raised (one of :data:`DECOMPRESSION_ERRORS`).

    Returns
    -------
    str
        One line naming the file, what went wrong and what to do.

    Examples
    --------
    >>> from pathlib import Path
    >>> from sk_instructor._cli.input_file import compression_problem
    >>> compression_problem(Path("rows.csv.gz"), "gzip", "CSV", OSError("Not a gzipped file"))
    'could not read rows.csv.gz as gzip-compressed CSV: Not a gzipped file; a name ending in ...'
    """
    name, suffix = _COMPRESSION_NAMES[compression], _SUFFIXES[compression]
    if isinstance(error, EOFError) or "runcated" in str(error):
        advice = "the file ends before its compressed data does; it was cut short, copy it again"
    elif sniff_compression(path) == compression:
        advice = f"its {name} data is damaged; copy it again"
    else:
        advice = (
            f"a name ending in {suffix} says the file is {name}-compressed, and it is not; "
            f"rename it without {suffix} if it is plain text"
        )
    return f"could not read {path} as {name}-compressed {format_name}: {one_line(error)}; {advice}"


def sniff_compression(path: Path) -> str | None:
    """The compression the first bytes of ``path`` show.

    Parameters
    ----------
    path : Path
        The file.

    Returns
    -------
    {"gzip", "bz2", "zstd"} or None
        None when its first bytes are none of these formats' (or it cannot be read).
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return None
    return next((kind for kind, magic in _MAGIC.items() if head.startswith(magic)), None)


def compressed_hint(path: Path) -> str:
    """What to say of a compressed file named as a plain one (which is not UTF-8).

    Parameters
    ----------
    path : Path
        A file read as plain text.

    Returns
    -------
    str
        ``"; it is gzip-compressed: name it rows.csv.gz ..."`` when its first bytes show a
        compression, else ``""``.
    """
    compression = sniff_compression(path)
    if compression is None:
        return ""
    return (
        f"; it is {_COMPRESSION_NAMES[compression]}-compressed: name it "
        f"{path.name}{_SUFFIXES[compression]} to have it read decompressed"
    )


@dataclass
class InputSummary:
    """What :meth:`TableInput.scan` found in the whole file.

    Attributes
    ----------
    n_rows : int
        Rows (records; a CSV header and blank lines are not rows).
    n_missing : int
        Rows whose text is missing (null). Always 0 for CSV: an empty field is the empty string.
    missing_rows : list of int
        The first missing rows, counting from 0.
    text_chars : int
        Characters of text in all rows, each text counted up to the ``char_cap`` of the scan.
    """

    n_rows: int = 0
    n_missing: int = 0
    missing_rows: list[int] = field(default_factory=list)
    text_chars: int = 0


class TableInput:
    """An opened input file: where it is, how to read it, and what it holds.

    Attributes
    ----------
    path : Path
        The input file.
    format : {"csv", "tsv", "parquet", "jsonl"}
        How it is read.
    column : str
        The text column.
    id_column : str or None
        The column copied to the output next to each vector.
    compression : {"gzip", "bz2", "zstd"} or None
        How the file's bytes are compressed (CSV, TSV and JSON Lines only).
    names : list of str
        Every column of the file, in file order.
    """

    def __init__(
        self,
        path: Path,
        file_format: str,
        column: str,
        id_column: str | None,
        compression: str | None = None,
    ) -> None:
        self.path = path
        self.format = file_format
        self.column = column
        self.id_column = id_column
        self.compression = compression
        self.names: list[str] = []

    @property
    def format_name(self) -> str:
        """The format as messages name it (``"JSON Lines"``)."""
        return FORMAT_NAMES[self.format]

    @property
    def columns(self) -> list[str]:
        """The columns read: the id column first, then the text column."""
        return [self.id_column, self.column] if self.id_column else [self.column]

    def text_type(self) -> pa.DataType:
        """The Arrow type of the text column."""
        return pa.string()

    def scan(self, *, char_cap: int | None = None, missing_limit: int = 5) -> InputSummary:
        """Read the whole file once: count rows, find missing texts, raise any problem.

        Parameters
        ----------
        char_cap : int or None, default=None
            Count at most this many characters per text in :attr:`InputSummary.text_chars`.
        missing_limit : int, default=5
            How many missing rows to list.

        Raises
        ------
        InputError
            The file is malformed (naming the line), or has no rows.
        """
        summary = InputSummary()
        for batch in self.batches():
            text = batch.column(len(self.columns) - 1)
            if text.null_count:
                summary.n_missing += text.null_count
                wanted = missing_limit - len(summary.missing_rows)
                if wanted > 0:
                    rows = pc.indices_nonzero(pc.is_null(text)).to_pylist()[:wanted]
                    summary.missing_rows += [summary.n_rows + row for row in rows]
            summary.text_chars += int(text_lengths(text, char_cap).sum())
            summary.n_rows += batch.num_rows
        if summary.n_rows == 0:
            raise InputError(f"{self.path} has no rows")
        return summary

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Record batches of :attr:`columns`, in file order (some may be empty)."""
        raise NotImplementedError
