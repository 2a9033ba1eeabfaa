"""Why pyarrow could not read a JSON Lines file: the first line it cannot take, described.

pyarrow's JSON reader says "in row N" counting from its current block, and stops at a value
whose type differs from the first block's; this finds the line itself, once the reader failed.
A compressed file is read decompressed, so that its lines are those of the plain file.
"""

from __future__ import annotations

import json
from pathlib import Path

from .input_file import DECOMPRESSION_ERRORS, compressed_hint, open_binary

__all__ = ["json_problem"]


def json_problem(path: Path, columns: list[str], *, compression: str | None = None) -> str | None:
    """The first line of a JSON Lines file that pyarrow's reader cannot take, described.

    Lines that are not JSON objects, and values of ``columns`` whose JSON type differs from the
    first line's that has one (whole numbers may follow decimals, not the reverse). Only called
    once the reader has failed; None when nothing found explains the failure.

    Parameters
    ----------
    path : Path
        The JSON Lines file.
    columns : list of str
        The columns read, whose values must keep one JSON type.
    compression : {"gzip", "bz2", "zstd"} or None, default=None
        How the file is compressed; its lines are counted decompressed.

    Returns
    -------
    str or None
        ``"line N ..."``, or None.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sk_instructor._cli.jsonl_checks import json_problem
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
    >>> _ = path.write_text('{"id": 1.5}\\n{"id": 2}\\n{"id": "3"}\\n')
    >>> json_problem(path, ["id"])
    "line 3 has a string in column 'id' where line 1 has a decimal number; every value ..."
    """
    try:
        return _first_problem(path, columns, compression)
    except DECOMPRESSION_ERRORS:
        return None  # the reader's own error says it


def _first_problem(path: Path, columns: list[str], compression: str | None) -> str | None:
    first: dict[str, tuple[str, int]] = {}
    with open_binary(path, compression) as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except UnicodeDecodeError as exc:
                # A compressed file named as a plain one is not UTF-8 from its first byte.
                hint = "" if compression else compressed_hint(path)
                return f"line {number} is not UTF-8 (byte 0x{raw[exc.start]:02x}){hint}"
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
