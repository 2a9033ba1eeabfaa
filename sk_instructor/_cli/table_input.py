"""Reading the command line's input file: CSV, TSV, Parquet or JSON Lines, checked whole first.

:func:`open_table_input` finds the format, opens the file and checks that it holds the columns
asked for. CSV and TSV are read with Python's :mod:`csv` module in strict mode, every field as
text (:mod:`~sk_instructor._cli.csv_input`, :mod:`~sk_instructor._cli.csv_records`); Parquet
is opened as a ``pyarrow.dataset`` and JSON Lines with pyarrow's streaming JSON reader
(:mod:`~sk_instructor._cli.dataset_input`, whose errors :mod:`~sk_instructor._cli.jsonl_checks`
explains). Either way only the text column (and the id column, when asked for) is kept, in
record batches, so that files larger than memory stream through. CSV, TSV and JSON Lines may
be compressed, as the name's last suffix says (``rows.csv.gz``, ``rows.tsv.bz2``,
``rows.jsonl.zst``): they are read decompressed as they stream, and everything else is the same.

:meth:`TableInput.scan` reads the whole file once before any vector is computed: it counts the
rows (the progress bar's total), finds missing texts, and raises every problem of the file
(malformed CSV row, JSON value of another type, ...) as :class:`InputError`, one line that
names the file and the line. :class:`RowReader` then cuts :meth:`TableInput.batches` into
pieces of the sizes asked (:mod:`~sk_instructor._cli.row_reader`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from .csv_input import CsvInput
from .dataset_input import DatasetInput
from .errors import InputError, one_line
from .input_file import COMPRESSIONS, FORMAT_NAMES, InputSummary, TableInput
from .row_reader import RowReader, text_lengths

__all__ = [
    "COMPRESSIONS",
    "INPUT_FORMATS",
    "InputSummary",
    "RowReader",
    "TableInput",
    "open_table_input",
    "text_lengths",
]

# File name endings -> input format; anything else needs --input-format.
INPUT_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


def open_table_input(
    path: str | os.PathLike[str],
    *,
    column: str,
    id_column: str | None = None,
    input_format: str | None = None,
) -> TableInput:
    """Open ``path`` and check that it holds the columns asked for (its rows: :meth:`scan`).

    Parameters
    ----------
    path : str or path-like
        A ``.csv``, ``.tsv``, ``.parquet`` / ``.pq`` or ``.jsonl`` / ``.ndjson`` file; CSV, TSV
        and JSON Lines may be compressed, named with a last suffix ``.gz`` (gzip), ``.bz2``
        (bzip2) or ``.zst`` (Zstandard): ``rows.csv.gz``.
    column : str
        The text column; it must hold text (or only missing values).
    id_column : str or None, default=None
        A column to carry to the output; any type (CSV and TSV fields are all text).
    input_format : {"csv", "tsv", "parquet", "jsonl"} or None, default=None
        Overrides the format guessed from the file name (a compression suffix still says how
        the file is compressed: ``rows.gz`` with ``"jsonl"`` is gzip-compressed JSON Lines).

    Returns
    -------
    TableInput

    Raises
    ------
    InputError
        One-line reason: no such file, unknown format, unreadable, column absent or not text.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sk_instructor._cli.table_input import RowReader, open_table_input
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "titles.csv"
    >>> _ = path.write_text("id,title\\n1,Dark matter\\n2,Parton energy loss\\n")
    >>> table_input = open_table_input(path, column="title", id_column="id")
    >>> table_input.scan().n_rows
    2
    >>> RowReader(table_input.batches()).take(1).to_pylist()
    [{'id': '1', 'title': 'Dark matter'}]
    """
    path = Path(path)
    _check_file(path)
    compression = COMPRESSIONS.get(path.suffix.lower())
    file_format = _file_format(path, input_format, compression)
    opener = CsvInput if file_format in ("csv", "tsv") else DatasetInput
    try:
        table_input = opener(path, file_format, column, id_column, compression)
    except OSError as exc:
        raise InputError(f"could not read {path}: {one_line(exc)}") from exc
    _check_columns(table_input)
    _check_text_type(table_input)
    return table_input


def _check_file(path: Path) -> None:
    """Refuse a path that is no file, or an empty one."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a CSV, Parquet or JSON Lines file")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes)")


def _file_format(path: Path, input_format: str | None, compression: str | None) -> str:
    """The format asked for, else the one the file's name tells (before its compression
    suffix, if any)."""
    named = path.with_suffix("") if compression else path
    file_format = input_format or INPUT_FORMATS.get(named.suffix.lower())
    if file_format is None:
        raise InputError(
            f"cannot tell the format of {path} from its name; use a .csv, .tsv, .parquet or "
            f".jsonl file (CSV, TSV and JSON Lines may be compressed: rows.csv.gz, .bz2, .zst), "
            f"or pass --input-format"
        )
    if compression and file_format == "parquet":
        raise InputError(
            f"cannot read {path}: a {FORMAT_NAMES['parquet']} file is read in place, not "
            f"through a {path.suffix} compression of the whole file (Parquet compresses its "
            f"columns itself); decompress it first"
        )
    return file_format


def _check_columns(table_input: TableInput) -> None:
    """Refuse a file without the text column or the id column asked for."""
    names = table_input.names
    for role, name in (("text", table_input.column), ("id", table_input.id_column)):
        if name is not None and name not in names:
            shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
            raise InputError(
                f"{table_input.path} has no {role} column {name!r}; its columns are {shown}"
            )


def _check_text_type(table_input: TableInput) -> None:
    """Refuse a text column that holds no text (numbers, say)."""
    text_type = table_input.text_type()
    if pa.types.is_dictionary(text_type):
        text_type = text_type.value_type
    is_text = (
        pa.types.is_string(text_type)
        or pa.types.is_large_string(text_type)
        or pa.types.is_string_view(text_type)
        or pa.types.is_null(text_type)
    )
    if not is_text:
        raise InputError(
            f"column {table_input.column!r} of {table_input.path} holds {text_type} values, "
            f"not text; choose the text column with --column"
        )
