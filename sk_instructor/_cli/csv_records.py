"""The records of a CSV or TSV file, read strictly, and what to say when one is malformed.

Python's :mod:`csv` module reads every field as text, in strict mode, so that a malformed file
is an error naming its line instead of a silent merge (pyarrow's reader takes an unterminated
quote to run to the end of the file, guesses column types from the first block and stops
half-way when a later value disagrees, and refuses fields longer than its block). A compressed
file is decompressed as it is read (:func:`~sk_instructor._cli.input_file.open_binary`), so
that its lines, and the errors naming them, are those of the plain file.
"""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

from .errors import InputError, one_line
from .input_file import DECOMPRESSION_ERRORS, compressed_hint, compression_problem, open_binary

__all__ = ["MAX_FIELD_CHARS", "CsvRecords"]

# The longest CSV field read (the csv module's default limit is 131,072 characters).
MAX_FIELD_CHARS = 2**28


class CsvRecords:
    """The records of a CSV file with the line each starts on; blank lines are skipped.

    Every problem is raised as :class:`InputError` naming the line. Used as a context manager,
    which also raises the :mod:`csv` module's (process-wide) field size limit for the duration.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sk_instructor._cli.csv_records import CsvRecords
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "titles.csv"
    >>> _ = path.write_text('id,title\\n\\n1,"Dark\\nmatter"\\n')
    >>> with CsvRecords(path, ",", "CSV") as records:
    ...     records.next(), records.next(), records.next()
    ((1, ['id', 'title']), (3, ['1', 'Dark\\nmatter']), None)
    """

    def __init__(
        self, path: Path, delimiter: str, format_name: str, compression: str | None = None
    ) -> None:
        self.path = path
        self.format_name = format_name
        self.compression = compression
        self._delimiter = delimiter
        self._handle = None
        self._reader = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> CsvRecords:
        self._stack.enter_context(_field_size_limit(MAX_FIELD_CHARS))
        # utf-8-sig: a byte order mark (Excel writes one) is not part of the first column name.
        binary = self._stack.enter_context(open_binary(self.path, self.compression))
        self._handle = self._stack.enter_context(
            io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
        )
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
                raise InputError(_not_utf8(self.path, self.format_name, self.compression)) from exc
            except DECOMPRESSION_ERRORS as exc:
                if self.compression is None:
                    raise
                raise InputError(
                    compression_problem(self.path, self.compression, self.format_name, exc)
                ) from exc
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
            return f"{where} holds a field longer than {MAX_FIELD_CHARS:,} characters"
        return f"{where}: {one_line(error)}"


@contextlib.contextmanager
def _field_size_limit(limit: int):
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _not_utf8(path: Path, format_name: str, compression: str | None = None) -> str:
    """Name the first line of ``path`` that is not UTF-8 (the text reader decodes ahead)."""
    # A compressed file named as a plain one is not UTF-8 from its first byte: say so.
    hint = "" if compression else compressed_hint(path)
    with open_binary(path, compression) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (
                    f"could not read {path} as {format_name}: line {number} is not UTF-8 "
                    f"(byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                    f"{hint or '; save the file as UTF-8'}"
                )
    return f"could not read {path} as {format_name}: it is not UTF-8; save it as UTF-8"
