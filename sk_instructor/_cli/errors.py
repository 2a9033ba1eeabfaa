"""The command line's own errors: one line each, meant for the user, no traceback."""

from __future__ import annotations

__all__ = ["PYARROW_HINT", "InputError", "OutputError", "one_line"]

PYARROW_HINT = (
    'the command line reads and writes files with pyarrow: pip install "sk-instructor[parquet]"'
)


class InputError(ValueError):
    """The input file cannot be used as given; the message is one line meant for a user."""


class OutputError(ValueError):
    """The output cannot be written as asked; the message is one line meant for a user."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """``str(error)`` on one line (pyarrow's CSV errors quote the offending row over several)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
