"""The command line's own errors: one line each, meant for the user, no traceback."""

from __future__ import annotations

__all__ = ["PROGRAM", "PYARROW_HINT", "InputError", "OutputError", "describe", "one_line"]

PROGRAM = "sk-instructor"

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


def describe(error: BaseException) -> str:
    """The error line of a run that failed with ``error``."""
    if isinstance(error, (InputError, OutputError)):
        return one_line(error, limit=1000)
    if isinstance(error, (ValueError, OSError, TypeError, MemoryError)):
        # Messages of the library (bad parameter, model not found, out of memory) are
        # written for users already; the type only adds noise.
        return f"{one_line(error)} (--verbose shows the traceback)"
    return f"{type(error).__name__}: {one_line(error)} (--verbose shows the traceback)"
