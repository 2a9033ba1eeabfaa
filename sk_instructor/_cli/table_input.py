"""Reading the command line's input file: CSV, TSV, Parquet or JSON Lines, in exact-size chunks.

Only the text column (and the id column, when asked for) is read, in batches, so that files
larger than memory stream through. Every problem with the file (missing, unreadable, wrong
column, no rows) is raised as :class:`InputError` with a message that fits on one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["INPUT_FORMATS", "InputError", "TableInput", "open_table_input", "require_pyarrow"]

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
# Rows per batch asked from the Parquet reader; chunks are then cut to their exact size.
_PARQUET_BATCH_ROWS = 8192
# Bytes per block of the CSV and JSON readers (pyarrow's default is 1 MiB).
_TEXT_BLOCK_BYTES = 4 * 2**20

PYARROW_HINT = (
    'the command line reads and writes files with pyarrow: pip install "sk-instructor[parquet]"'
)


class InputError(ValueError):
    """The input file cannot be used as given; the message is one line meant for a user."""


def require_pyarrow() -> Any:
    """Import pyarrow or raise :class:`InputError` naming the extra that installs it."""
    try:
        import pyarrow
    except ImportError:
        raise InputError(PYARROW_HINT) from None
    return pyarrow


def one_line(error: BaseException, limit: int = 300) -> str:
    """``str(error)`` on one line (pyarrow's CSV errors quote the offending row over several)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
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
    n_rows : int or None
        Rows in the file, when known without reading it all (Parquet) or after
        :meth:`find_missing` scanned it; ``None`` otherwise.
    """

    path: Path
    format: str
    column: str
    id_column: str | None
    n_rows: int | None = None

    @property
    def columns(self) -> list[str]:
        """The columns read: the id column first, then the text column."""
        return [self.id_column, self.column] if self.id_column else [self.column]

    def chunks(self, chunk_size: int) -> Iterator[Any]:
        """Yield ``pyarrow.Table`` chunks of exactly ``chunk_size`` rows (the last may be
        shorter) holding :attr:`columns`, in file order."""
        pa = require_pyarrow()
        pending: list[Any] = []
        n_pending = 0
        for batch in self._batches():
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
        header excluded); records :attr:`n_rows` on the way. CSV text is never missing: an
        empty field reads as the empty string.
        """
        import pyarrow.compute as pc

        n_missing, first_rows, offset = 0, [], 0
        for batch in self._batches(columns=[self.column]):
            nulls = batch.column(0).null_count
            if nulls:
                n_missing += nulls
                if len(first_rows) < limit:
                    positions = pc.indices_nonzero(pc.is_null(batch.column(0))).to_pylist()
                    first_rows += [offset + p for p in positions[: limit - len(first_rows)]]
            offset += batch.num_rows
        self.n_rows = offset
        return n_missing, first_rows

    def _batches(self, columns: list[str] | None = None) -> Iterator[Any]:
        columns = columns or self.columns
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                with pq.ParquetFile(self.path) as parquet:
                    yield from parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns)
            elif self.format == "jsonl":
                yield from _select(_open_json(self.path), columns)
            else:
                yield from _open_csv(self.path, self.format, columns=columns, text=self.column)
        except (OSError, ValueError, _arrow_error()) as exc:
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
        One-line reason: no such file, unknown format, unreadable, column absent or not text.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sk_instructor._cli.table_input import open_table_input
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "titles.csv"
    >>> _ = path.write_text("id,title\\n1,Dark matter\\n2,Parton energy loss\\n")
    >>> table_input = open_table_input(path, column="title", id_column="id")
    >>> [chunk.num_rows for chunk in table_input.chunks(chunk_size=1)]
    [1, 1]
    """
    pa = require_pyarrow()
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
        schema, n_rows = _read_schema(path, file_format)
    except (OSError, ValueError, _arrow_error()) as exc:
        kind = {"jsonl": "JSON Lines", "parquet": "Parquet"}.get(file_format, file_format.upper())
        raise InputError(f"could not read {path} as {kind}: {one_line(exc)}") from exc
    names = list(schema.names)
    for role, name in (("text", column), ("id", id_column)):
        if name is not None and name not in names:
            shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
            raise InputError(f"{path} has no {role} column {name!r}; its columns are {shown}")
    text_type = schema.field(column).type
    if pa.types.is_dictionary(text_type):
        text_type = text_type.value_type
    is_text = (
        pa.types.is_string(text_type)
        or pa.types.is_large_string(text_type)
        or getattr(pa.types, "is_string_view", lambda _: False)(text_type)
        or pa.types.is_null(text_type)
    )
    if not is_text and file_format not in ("csv", "tsv"):
        raise InputError(
            f"column {column!r} of {path} holds {text_type} values, not text; choose the text "
            f"column with --column"
        )
    if n_rows == 0:
        raise InputError(f"{path} has no rows")
    return TableInput(path, file_format, column, id_column, n_rows)


def _arrow_error() -> type[Exception]:
    import pyarrow as pa

    return pa.ArrowException


def _read_schema(path: Path, file_format: str) -> tuple[Any, int | None]:
    if file_format == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as parquet:
            return parquet.schema_arrow, parquet.metadata.num_rows
    if file_format == "jsonl":
        return _open_json(path).schema, None
    return _open_csv(path, file_format).schema, None


def _open_csv(path: Path, file_format: str, *, columns=None, text: str | None = None):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    # The text column is read as text even where it looks like numbers; empty fields stay
    # empty strings (pyarrow's default for string columns), never missing.
    convert = pcsv.ConvertOptions(
        include_columns=columns or [],
        column_types={text: pa.string()} if text else {},
    )
    return pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=_TEXT_BLOCK_BYTES),
        parse_options=pcsv.ParseOptions(delimiter="\t" if file_format == "tsv" else ","),
        convert_options=convert,
    )


def _open_json(path: Path):
    import pyarrow.json as pjson

    options = pjson.ReadOptions(block_size=_TEXT_BLOCK_BYTES)
    if hasattr(pjson, "open_json"):
        return pjson.open_json(path, read_options=options)
    # pyarrow < 19 has no streaming JSON reader: read the whole file, hand out its batches.
    return pjson.read_json(path, read_options=options).to_reader()


def _select(batches, columns: list[str]) -> Iterator[Any]:
    import pyarrow as pa

    for batch in batches:
        yield pa.RecordBatch.from_arrays(
            [batch.column(name) for name in columns], names=list(columns)
        )
