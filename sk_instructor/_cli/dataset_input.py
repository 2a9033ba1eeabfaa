"""Parquet and JSON Lines input, opened as a ``pyarrow.dataset``: only the columns asked for
are read, in record batches, so that files larger than memory stream through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.json as pjson

from .errors import InputError, one_line
from .input_file import TableInput
from .jsonl_checks import json_problem

__all__ = ["DatasetInput"]

# Bytes per block of the JSON reader (pyarrow's default is 1 MiB).
_TEXT_BLOCK_BYTES = 4 * 2**20


class DatasetInput(TableInput):
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
            where = json_problem(self.path, self.columns) if self.format == "jsonl" else None
            reason = where or one_line(exc)
            raise InputError(f"could not read {self.path} as {self.format_name}: {reason}") from exc


def _dataset_format(file_format: str) -> ds.FileFormat:
    if file_format == "parquet":
        return ds.ParquetFileFormat()
    return ds.JsonFileFormat(
        default_fragment_scan_options=ds.JsonFragmentScanOptions(
            read_options=pjson.ReadOptions(block_size=_TEXT_BLOCK_BYTES)
        )
    )
