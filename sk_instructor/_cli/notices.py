"""Library warnings during a run: one ``sk-instructor: warning:`` line for each kind."""

from __future__ import annotations

import re
import sys
from typing import Any

from .errors import PROGRAM

__all__ = ["OncePerKindWarnings"]


class OncePerKindWarnings:
    """Show library warnings as one ``sk-instructor: warning:`` line, each kind once.

    The engine warns per call, so per piece of rows: a file of long texts would repeat "N of M
    texts were truncated" for every piece. Messages that differ only in their numbers are one kind.
    Installed as ``warnings.showwarning``.
    """

    def __init__(self) -> None:
        self.seen: set[tuple[type, str]] = set()
        self.progress: Any = None  # the bar, while one is shown

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        kind = (category, re.sub(r"\d[\d,.]*", "#", text))
        if kind in self.seen:
            return
        self.seen.add(kind)
        line = f"{PROGRAM}: warning: {text} (further warnings like this are not shown)"
        if self.progress is not None:
            self.progress.write(line)  # above the bar, which is then drawn again below
        else:
            print(line, file=sys.stderr)
