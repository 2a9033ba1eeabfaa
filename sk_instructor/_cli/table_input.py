"""Reading the command line's input file: CSV, TSV, Parquet or JSON Lines, in exact-size chunks.

Every format is opened as a ``pyarrow.dataset``, so that one code path reads them all: only the
text column (and the id column, when asked for) is read, in batches, so that files larger than
memory stream through, and :meth:`TableInput.chunks` cuts the batches into chunks of exactly
the size asked. Every problem with the file (missing, unreadable, wrong column, no rows) is
raised as :class:`InputError` with a message that fits on one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pyarrow.json as pjson

from .errors import InputError, one_line

__all__ = ["INPUT_FORMATS", "TableInput", "open_table_input"]

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
_FORMAT_NAMES = {"csv": "CSV", "tsv": "TSV", "parquet": "Parquet", "jsonl": "JSON Lines"}
# Rows per batch asked from the reader; chunks are then cut to their exact size.
_BATCH_ROWS = 8192
# Bytes per block of the CSV and JSON readers (pyarrow's default is 1 MiB).
_TEXT_BLOCK_BYTES = 4 * 2**20


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
    n_rows : int
        Rows in the file.
    """

    def __init__(self, path: Path, file_format: str, column: str, id_column: str | None) -> None:
        self.path = path
        self.format = file_format
        self.column = column
        self.id_column = id_column
        self._dataset = ds.dataset(str(path), format=_file_format(file_format, column))
        self.n_rows = self._guarded(self._dataset.count_rows)

    @property
    def columns(self) -> list[str]:
        """The columns read: the id column first, then the text column."""
        return [self.id_column, self.column] if self.id_column else [self.column]

    @property
    def schema(self) -> pa.Schema:
        return self._dataset.schema

    def chunks(self, chunk_size: int) -> Iterator[pa.Table]:
        """Yield tables of exactly ``chunk_size`` rows (the last may be shorter) holding
        :attr:`columns`, in file order."""
        pending: list[pa.RecordBatch] = []
        n_pending = 0
        for batch in self._batches(self.columns):
            if batch.num_rows == 0:
                continue
            pending.append(batch)
            n_pending += batch.num_rows
            while n_pending >= chunk_size:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, chunk_size)
                rest = table.slice(chunk_size)
                pending, n_pending = rest.to_batches(), rest.num_rows
        if n_pending:
            yield pa.Table.from_batches(pending)

    def find_missing(self, limit: int = 5) -> tuple[int, list[int]]:
        """Scan the text column for missing values (nulls).

        Returns the number of missing values and the first ``limit`` row numbers (0-based,
        header excluded). CSV text is never missing: an empty field reads as the empty string.
        """
        n_missing, first_rows, offset = 0, [], 0
        for batch in self._batches([self.column]):
            nulls = batch.column(0).null_count
            if nulls:
                n_missing += nulls
                if len(first_rows) < limit:
                    positions = pc.indices_nonzero(pc.is_null(batch.column(0))).to_pylist()
                    first_rows += [offset + p for p in positions[: limit - len(first_rows)]]
            offset += batch.num_rows
        return n_missing, first_rows

    def _batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        batches = self._dataset.to_batches(columns=columns, batch_size=_BATCH_ROWS)
        while True:
            batch = self._guarded(next, batches, None)
            if batch is None:
                return
            yield batch

    def _guarded(self, read, *args):
        try:
            return read(*args)
        except (OSError, ValueError, pa.ArrowException) as exc:
            # ArrowInvalid (a malformed row half-way through the file) is a ValueError.
            raise InputError(f"could not read {self.path}: {one_line(exc)}") from exc


def open_table_input(
    path: str | os.PathLike[str],
    *,
    column: str,
    id_column: str | None = None,
    input_format: str | None = None,
) -> TableInput:
    """Open ``path``, check that it is readable and holds the columns asked for.

    Parameters
    ----------
    path : str or path-like
        A ``.csv``, ``.tsv``, ``.parquet`` / ``.pq`` or ``.jsonl`` / ``.ndjson`` file.
    column : str
        The text column; it must hold text (or only missing values).
    id_column : str or None, default=None
        A column to carry to the output; any type.
    input_format : {"csv", "tsv", "parquet", "jsonl"} or None, default=None
        Overrides the format guessed from the file name.

    Returns
    -------
    TableInput

    Raises
    ------
    InputError
        One-line reason: no such file, unknown format, unreadable, column absent or not text,
        no rows.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sk_instructor._cli.table_input import open_table_input
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "titles.csv"
    >>> _ = path.write_text("id,title\\n1,Dark matter\\n2,Parton energy loss\\n")
    >>> table_input = open_table_input(path, column="title", id_column="id")
    >>> table_input.n_rows, [chunk.num_rows for chunk in table_input.chunks(chunk_size=1)]
    (2, [1, 1])
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a CSV, Parquet or JSON Lines file")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes)")
    file_format = input_format or INPUT_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise InputError(
            f"cannot tell the format of {path} from its name; use a .csv, .tsv, .parquet or "
            f".jsonl file, or pass --input-format"
        )
    try:
        table_input = TableInput(path, file_format, column, id_column)
    except (OSError, ValueError, pa.ArrowException) as exc:
        cause = exc.__cause__ if isinstance(exc, InputError) and exc.__cause__ else exc
        raise InputError(
            f"could not read {path} as {_FORMAT_NAMES[file_format]}: {one_line(cause)}"
        ) from exc
    names = list(table_input.schema.names)
    for role, name in (("text", column), ("id", id_column)):
        if name is not None and name not in names:
            shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
            raise InputError(f"{path} has no {role} column {name!r}; its columns are {shown}")
    text_type = table_input.schema.field(column).type
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
            f"column {column!r} of {path} holds {text_type} values, not text; choose the text "
            f"column with --column"
        )
    if table_input.n_rows == 0:
        raise InputError(f"{path} has no rows")
    return table_input


def _file_format(file_format: str, text_column: str) -> ds.FileFormat:
    if file_format == "parquet":
        return ds.ParquetFileFormat()
    if file_format == "jsonl":
        return ds.JsonFileFormat(
            default_fragment_scan_options=ds.JsonFragmentScanOptions(
                read_options=pjson.ReadOptions(block_size=_TEXT_BLOCK_BYTES)
            )
        )
    # The text column is read as text even where it looks like numbers; empty fields stay
    # empty strings (pyarrow's default for string columns), never missing.
    return ds.CsvFileFormat(
        parse_options=pcsv.ParseOptions(delimiter="\t" if file_format == "tsv" else ","),
        convert_options=pcsv.ConvertOptions(column_types={text_column: pa.string()}),
        read_options=pcsv.ReadOptions(block_size=_TEXT_BLOCK_BYTES),
    )
