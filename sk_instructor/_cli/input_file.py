"""An opened input file (:class:`TableInput`), and what a scan of it found (:class:`InputSummary`).

Each format reads its file its own way (:mod:`~sk_instructor._cli.csv_input`,
:mod:`~sk_instructor._cli.dataset_input`); all give record batches of the columns read, and
are scanned whole before any vector is computed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from .errors import InputError
from .row_reader import text_lengths

__all__ = ["FORMAT_NAMES", "InputSummary", "TableInput"]

# How messages name each format.
FORMAT_NAMES = {"csv": "CSV", "tsv": "TSV", "parquet": "Parquet", "jsonl": "JSON Lines"}


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
