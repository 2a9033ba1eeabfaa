"""Reading the command line's input file: CSV, TSV, Parquet or JSON Lines, checked whole first.

CSV and TSV are read with Python's :mod:`csv` module in strict mode, every field as text, so
that a malformed file is an error naming its line instead of a silent merge (pyarrow's reader
takes an unterminated quote to run to the end of the file, guesses column types from the first
block and stops half-way when a later value disagrees, and refuses fields longer than its
block). Parquet and JSON Lines are opened as a ``pyarrow.dataset``. Either way only the text
column (and the id column, when asked for) is kept, in record batches, so that files larger
than memory stream through.

:meth:`TableInput.scan` reads the whole file once before any vector is computed: it counts the
rows (the progress bar's total), finds missing texts, and raises every problem of the file
(malformed CSV row, JSON value of another type, ...) as :class:`InputError`, one line that
names the file and the line. :class:`RowReader` then cuts :meth:`TableInput.batches` into
pieces of the sizes asked.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.json as pjson

from .errors import InputError, one_line

__all__ = [
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
_FORMAT_NAMES = {"csv": "CSV", "tsv": "TSV", "parquet": "Parquet", "jsonl": "JSON Lines"}
# Rows per batch asked from the reader; pieces are then cut to their exact size.
_BATCH_ROWS = 8192
# A CSV batch is also cut once its texts hold this many characters, so that no string array
# nears its 2 GiB limit (at most 4 bytes per character).
_BATCH_CHARS = 64 * 2**20
# The longest CSV field read (the csv module's default limit is 131,072 characters).
_MAX_FIELD_CHARS = 2**28
# Bytes per block of the JSON reader (pyarrow's default is 1 MiB).
_TEXT_BLOCK_BYTES = 4 * 2**20


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
    names : list of str
        Every column of the file, in file order.
    """

    def __init__(self, path: Path, file_format: str, column: str, id_column: str | None) -> None:
        self.path = path
        self.format = file_format
        self.column = column
        self.id_column = id_column
        self.names: list[str] = []

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


class _DatasetInput(TableInput):
    """Parquet and JSON Lines, read as a ``pyarrow.dataset``."""

    def __init__(self, path: Path, file_format: str, column: str, id_column: str | None) -> None:
        super().__init__(path, file_format, column, id_column)
        self._dataset = self._guarded(ds.dataset, str(path), format=_dataset_format(file_format))
        self.names = list(self._dataset.schema.names)

    def text_type(self) -> pa.DataType:
        return self._dataset.schema.field(self.column).type

    def batches(self) -> Iterator[pa.RecordBatch]:
        # The id column is read in the scan too: a JSON value whose type differs from the first
        # block's stops the reader, and that must happen before the first vector, not half-way.
        batches = self._guarded(self._dataset.to_batches, columns=self.columns)
        while True:
            batch = self._guarded(next, batches, None)
            if batch is None:
                return
            yield batch

    def _guarded(self, read, *args, **kwargs):
        try:
            return read(*args, **kwargs)
        except (OSError, ValueError, pa.ArrowException) as exc:
            # ArrowInvalid (a malformed row half-way through the file) is a ValueError. The
            # JSON reader's "in row N" counts from its current block: find the line instead.
            where = _json_problem(self.path, self.columns) if self.format == "jsonl" else None
            reason = where or one_line(exc)
            raise InputError(
                f"could not read {self.path} as {_FORMAT_NAMES[self.format]}: {reason}"
            ) from exc


class _CsvInput(TableInput):
    """CSV and TSV, read with the :mod:`csv` module: strict quoting, every field as text."""

    def __init__(self, path: Path, file_format: str, column: str, id_column: str | None) -> None:
        super().__init__(path, file_format, column, id_column)
        self._delimiter = "\t" if file_format == "tsv" else ","
        with self._records() as records:
            header = records.next()
        if header is None:
            raise InputError(f"{path} has no header line (and no rows)")
        self._header_line, self.names = header
        self._positions: list[int] = []

    def scan(self, *, char_cap: int | None = None, missing_limit: int = 5) -> InputSummary:
        # Faster than the batches: nothing is copied, only counted.
        summary = InputSummary()
        text_position = self._column_positions()[-1]
        cap = char_cap or _MAX_FIELD_CHARS
        with self._records() as records:
            records.next()  # the header
            while (record := records.next()) is not None:
                self._check_width(*record)
                summary.n_rows += 1
                summary.text_chars += min(len(record[1][text_position]), cap)
        if summary.n_rows == 0:
            raise InputError(f"{self.path} has no rows")
        return summary

    def batches(self) -> Iterator[pa.RecordBatch]:
        positions = self._column_positions()
        with self._records() as records:
            records.next()  # the header
            done = False
            while not done:
                values: list[list[str]] = [[] for _ in positions]
                n_chars = 0
                while len(values[-1]) < _BATCH_ROWS and n_chars < _BATCH_CHARS:
                    record = records.next()
                    if record is None:
                        done = True
                        break
                    self._check_width(*record)
                    for column, position in zip(values, positions, strict=True):
                        column.append(record[1][position])
                    n_chars += len(values[-1][-1])
                if values[-1]:
                    arrays = [pa.array(column, type=pa.string()) for column in values]
                    yield pa.RecordBatch.from_arrays(arrays, names=self.columns)

    def _column_positions(self) -> list[int]:
        if not self._positions:
            for name in self.columns:
                if self.names.count(name) > 1:
                    raise InputError(
                        f"{self.path} has {self.names.count(name)} columns named {name!r} "
                        f"(line {self._header_line}); rename them so that the column to read is "
                        f"clear"
                    )
            self._positions = [self.names.index(name) for name in self.columns]
        return self._positions

    def _check_width(self, line: int, fields: list[str]) -> None:
        if len(fields) != len(self.names):
            raise InputError(
                f"could not read {self.path} as {_FORMAT_NAMES[self.format]}: line {line} has "
                f"{len(fields)} field(s) where the header (line {self._header_line}) has "
                f"{len(self.names)}"
            )

    def _records(self) -> _CsvRecords:
        return _CsvRecords(self.path, self._delimiter, _FORMAT_NAMES[self.format])


class _CsvRecords:
    """The records of a CSV file with the line each starts on; blank lines are skipped.

    Every problem is raised as :class:`InputError` naming the line. Used as a context manager,
    which also raises the :mod:`csv` module's (process-wide) field size limit for the duration.
    """

    def __init__(self, path: Path, delimiter: str, format_name: str) -> None:
        self.path = path
        self.format_name = format_name
        self._delimiter = delimiter
        self._handle = None
        self._reader = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _CsvRecords:
        self._stack.enter_context(_field_size_limit(_MAX_FIELD_CHARS))
        # utf-8-sig: a byte order mark (Excel writes one) is not part of the first column name.
        self._handle = self._stack.enter_context(open(self.path, encoding="utf-8-sig", newline=""))
        # strict: a quote that is never closed, or text after a closing quote, is an error.
        self._reader = csv.reader(self._handle, delimiter=self._delimiter, strict=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def next(self) -> tuple[int, list[str]] | None:
        """The next non-blank record as (line it starts on, fields), or None at the end."""
        while True:
            line = self._reader.line_num + 1
            try:
                fields = next(self._reader)
            except StopIteration:
                return None
            except csv.Error as exc:
                raise InputError(self._describe(line, exc)) from exc
            except UnicodeDecodeError as exc:
                raise InputError(_not_utf8(self.path, self.format_name)) from exc
            if fields:
                return line, fields

    def _describe(self, line: int, error: csv.Error) -> str:
        reason = str(error)
        where = f"could not read {self.path} as {self.format_name}: line {line}"
        if reason.startswith("unexpected end of data"):
            return (
                f"{where} opens a quoted field that is never closed (it would run to the end "
                f"of the file); close the quote, or double a quote inside a quoted field"
            )
        if "expected after" in reason:
            return (
                f"{where} has text after the closing quote of a quoted field; a quote inside "
                f'a quoted field must be doubled ("")'
            )
        if reason.startswith("field larger than field limit"):
            return f"{where} holds a field longer than {_MAX_FIELD_CHARS:,} characters"
        return f"{where}: {one_line(error)}"


@contextlib.contextmanager
def _field_size_limit(limit: int):
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _not_utf8(path: Path, format_name: str) -> str:
    """Name the first line of ``path`` that is not UTF-8 (the text reader decodes ahead)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (
                    f"could not read {path} as {format_name}: line {number} is not UTF-8 "
                    f"(byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); save the file "
                    f"as UTF-8"
                )
    return f"could not read {path} as {format_name}: it is not UTF-8; save it as UTF-8"


def _json_problem(path: Path, columns: list[str]) -> str | None:
    """The first line of a JSON Lines file that pyarrow's reader cannot take, described.

    Lines that are not JSON objects, and values of ``columns`` whose JSON type differs from the
    first line's that has one (whole numbers may follow decimals, not the reverse). Only called
    once the reader has failed; None when nothing found explains the failure.
    """
    first: dict[str, tuple[str, int]] = {}
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except UnicodeDecodeError as exc:
                return f"line {number} is not UTF-8 (byte 0x{raw[exc.start]:02x})"
            except json.JSONDecodeError as exc:
                return f"line {number} is not valid JSON: {exc.msg} at column {exc.pos + 1}"
            if not isinstance(record, dict):
                return f"line {number} is not a JSON object"
            for name in columns:
                kind = _json_kind(record.get(name))
                if kind is None:
                    continue
                first_kind, first_line = first.setdefault(name, (kind, number))
                if kind != first_kind and (first_kind, kind) != ("decimal number", "integer"):
                    return (
                        f"line {number} has {_a(kind)} in column {name!r} where line "
                        f"{first_line} has {_a(first_kind)}; every value of a column must have "
                        f"one JSON type"
                    )
    return None


def _json_kind(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "decimal number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aio' else 'a'} {kind}"


def text_lengths(text: pa.Array | pa.ChunkedArray, cap: int | None = None) -> np.ndarray:
    """Characters of each text (0 where missing), at most ``cap`` each, as int64.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from sk_instructor._cli.table_input import text_lengths
    >>> text_lengths(pa.array(["déjà", None, "a long text"]), cap=5).tolist()
    [4, 0, 5]
    """
    if pa.types.is_null(text.type):
        return np.zeros(len(text), dtype=np.int64)
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        text = text.cast(pa.large_string())  # dictionary or string_view
    lengths = pc.utf8_length(text).fill_null(0).to_numpy(zero_copy_only=False)
    lengths = lengths.astype(np.int64, copy=False)
    return lengths if cap is None else np.minimum(lengths, cap)


class RowReader:
    """Cut a stream of record batches into tables of the sizes asked, in order.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from sk_instructor._cli.table_input import RowReader
    >>> batch = pa.record_batch({"text": ["a", "b", "c"]})
    >>> reader = RowReader([batch, batch])
    >>> [reader.take(4).num_rows, reader.take(4).num_rows, reader.take(4)]
    [4, 2, None]
    """

    def __init__(self, batches) -> None:
        self._batches = iter(batches)
        self._pending: list[pa.RecordBatch] = []
        self._n_pending = 0

    def take(self, n_rows: int) -> pa.Table | None:
        """The next ``n_rows`` rows (fewer at the end of the file), or None after the last."""
        while self._n_pending < n_rows:
            batch = next(self._batches, None)
            if batch is None:
                break
            if batch.num_rows:
                self._pending.append(batch)
                self._n_pending += batch.num_rows
        if not self._n_pending:
            return None
        table = pa.Table.from_batches(self._pending)
        rest = table.slice(n_rows)
        self._pending, self._n_pending = rest.to_batches(), rest.num_rows
        return table.slice(0, n_rows)


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
        A ``.csv``, ``.tsv``, ``.parquet`` / ``.pq`` or ``.jsonl`` / ``.ndjson`` file.
    column : str
        The text column; it must hold text (or only missing values).
    id_column : str or None, default=None
        A column to carry to the output; any type (CSV and TSV fields are all text).
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
    opener = _CsvInput if file_format in ("csv", "tsv") else _DatasetInput
    try:
        table_input = opener(path, file_format, column, id_column)
    except OSError as exc:
        raise InputError(f"could not read {path}: {one_line(exc)}") from exc
    names = table_input.names
    for role, name in (("text", column), ("id", id_column)):
        if name is not None and name not in names:
            shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
            raise InputError(f"{path} has no {role} column {name!r}; its columns are {shown}")
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
            f"column {column!r} of {path} holds {text_type} values, not text; choose the text "
            f"column with --column"
        )
    return table_input


def _dataset_format(file_format: str) -> ds.FileFormat:
    if file_format == "parquet":
        return ds.ParquetFileFormat()
    return ds.JsonFileFormat(
        default_fragment_scan_options=ds.JsonFragmentScanOptions(
            read_options=pjson.ReadOptions(block_size=_TEXT_BLOCK_BYTES)
        )
    )
