"""Parquet and JSON Lines input: only the columns asked for are kept, in record batches, so that
files larger than memory stream through.

Parquet is opened as a ``pyarrow.dataset``. JSON Lines is read with pyarrow's streaming JSON
reader (``pyarrow.json.open_json``) from a stream that decompresses a compressed file as it
goes: the column types come from the first block, as a dataset would take them, and only the
columns asked for are converted (a value of another type in a column not read stops nothing).
The dataset's JSON reader is not used: it takes a file of one line without a final newline for
a row of nulls, and reads a compressed file only when pyarrow knows its suffix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.json as pjson

from .errors import InputError, one_line
from .input_file import DECOMPRESSION_ERRORS, TableInput, arrow_stream, compression_problem
from .jsonl_checks import json_problem

__all__ = ["DatasetInput"]

# Bytes per block of the JSON reader (pyarrow's default is 1 MiB).
_TEXT_BLOCK_BYTES = 4 * 2**20


class DatasetInput(TableInput):
    """Parquet, read as a ``pyarrow.dataset``, and JSON Lines, read as a stream."""

    def __init__(
        self,
        path: Path,
        file_format: str,
        column: str,
        id_column: str | None,
        compression: str | None = None,
    ) -> None:
        super().__init__(path, file_format, column, id_column, compression)
        if file_format == "parquet":
            self._dataset = self._guarded(ds.dataset, str(path), format=ds.ParquetFileFormat())
            self._schema = self._dataset.schema
        else:
            # The first block is read to find the columns and their types.
            stream, reader = self._guarded(self._open_json, None)
            self._schema = reader.schema
            stream.close()
        self.names = list(self._schema.names)

    def text_type(self) -> pa.DataType:
        return self._schema.field(self.column).type

    def batches(self) -> Iterator[pa.RecordBatch]:
        # The id column is read in the scan too: a JSON value whose type differs from the first
        # block's stops the reader, and that must happen before the first vector, not half-way.
        if self.format == "parquet":
            yield from self._read_all(self._guarded(self._dataset.to_batches, columns=self.columns))
            return
        # Only the columns read, with the types of the first block; other fields are skipped.
        read = pa.schema([self._schema.field(name) for name in dict.fromkeys(self.columns)])
        stream, reader = self._guarded(self._open_json, read)
        try:
            for batch in self._read_all(reader):
                arrays = [batch.column(name) for name in self.columns]
                yield pa.RecordBatch.from_arrays(arrays, names=self.columns)
        finally:
            stream.close()

    def _read_all(self, batches) -> Iterator[pa.RecordBatch]:
        batches = iter(batches)
        while True:
            batch = self._guarded(next, batches, None)
            if batch is None:
                return
            yield batch

    def _open_json(self, schema: pa.Schema | None):
        """A (stream, reader) pair over the file, the reader reading ``schema`` only if given."""
        stream = arrow_stream(self.path, self.compression)
        parse_options = pjson.ParseOptions()
        if schema is not None:
            parse_options = pjson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            )
        try:
            reader = pjson.open_json(
                stream,
                read_options=pjson.ReadOptions(block_size=_TEXT_BLOCK_BYTES),
                parse_options=parse_options,
            )
        except BaseException:
            stream.close()
            raise
        return stream, reader

    def _guarded(self, read, *args, **kwargs):
        try:
            return read(*args, **kwargs)
        except (OSError, ValueError, pa.ArrowException) as exc:
            if self.compression is not None and isinstance(exc, DECOMPRESSION_ERRORS):
                # Not compressed as the name says, or cut short (pyarrow's codecs raise OSError;
                # a malformed row is an ArrowInvalid, a ValueError).
                problem = compression_problem(self.path, self.compression, self.format_name, exc)
                raise InputError(problem) from exc
            # ArrowInvalid (a malformed row half-way through the file) is a ValueError. The
            # JSON reader's "in row N" counts from its current block: find the line instead.
            where = None
            if self.format == "jsonl":
                where = json_problem(self.path, self.columns, compression=self.compression)
            reason = where or one_line(exc)
            raise InputError(f"could not read {self.path} as {self.format_name}: {reason}") from exc
