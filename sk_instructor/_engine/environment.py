"""The engine's settings read from environment variables.

Each is a positive integer that a user may set around a program they do not control (a
notebook, a CLI run, a joblib worker); one reader, so that every one of them refuses the same
bad values with the same kind of message, naming the variable, before any model loads.
"""

from __future__ import annotations

import os

__all__ = ["positive_int_from_env"]


def positive_int_from_env(name: str, *, meaning: str, advice: str) -> int | None:
    """``$name`` as a positive integer, or ``None`` when it is unset or blank.

    Anything else raises a ValueError that names the variable and its value, says what the
    number means (``meaning``) and what to set instead (``advice``).

    Examples
    --------
    >>> import os
    >>> os.environ["SK_INSTRUCTOR_EXAMPLE"] = " 3 "
    >>> positive_int_from_env("SK_INSTRUCTOR_EXAMPLE", meaning="examples", advice="e.g. 1")
    3
    >>> os.environ["SK_INSTRUCTOR_EXAMPLE"] = "three"
    >>> positive_int_from_env("SK_INSTRUCTOR_EXAMPLE", meaning="examples", advice="e.g. 1")
    Traceback (most recent call last):
    ...
    ValueError: SK_INSTRUCTOR_EXAMPLE='three': expected a positive integer (examples); e.g. 1.
    >>> del os.environ["SK_INSTRUCTOR_EXAMPLE"]
    """
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer ({meaning}); {advice}.")
    return number
