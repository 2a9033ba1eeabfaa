"""CSV and TSV input: the columns asked for, from strictly read records, every field as text.

A compressed file (gzip, bzip2, Zstandard) is read decompressed, line by line, as it streams:
its records, line numbers and errors are those of the plain file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from .csv_records import MAX_FIELD_CHARS, CsvRecords
from .errors import InputError
from .input_file import InputSummary, TableInput

__all__ = ["CsvInput"]

# Rows per batch; pieces are then cut to their exact size.
_BATCH_ROWS = 8192
# A batch is also cut once its texts hold this many characters, so that no string array
# nears its 2 GiB limit (at most 4 bytes per character).
_BATCH_CHARS = 64 * 2**20


class CsvInput(TableInput):
    """CSV and TSV, read with the :mod:`csv` module: strict quoting, every field as text."""

    def __init__(
        self,
        path: Path,
        file_format: str,
        column: str,
        id_column: str | None,
        compression: str | None = None,
    ) -> None:
        super().__init__(path, file_format, column, id_column, compression)
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
        cap = char_cap or MAX_FIELD_CHARS
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
                f"could not read {self.path} as {self.format_name}: line {line} has "
                f"{len(fields)} field(s) where the header (line {self._header_line}) has "
                f"{len(self.names)}"
            )

    def _records(self) -> CsvRecords:
        return CsvRecords(self.path, self._delimiter, self.format_name, self.compression)
