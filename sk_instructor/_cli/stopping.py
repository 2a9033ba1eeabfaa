"""Stopping a run from outside: SIGTERM stops it the way Ctrl-C does."""

from __future__ import annotations

import signal
from typing import Any

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "Terminated",
    "exit_code",
    "how_stopped",
    "raise_on_sigterm",
]

EXIT_INTERRUPTED = 130  # the shell's convention for a process stopped by SIGINT
EXIT_TERMINATED = 143  # ... and by SIGTERM


class Terminated(Exception):
    """SIGTERM arrived: stop like Ctrl-C does (the committed parts are already safe)."""


def raise_on_sigterm() -> Any:
    """Make SIGTERM raise :class:`Terminated`; returns the handler to restore (None when
    not possible: outside the main thread, e.g. ``main()`` called from a worker thread)."""

    def stop(signum: int, frame: Any) -> None:
        raise Terminated

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        return None


def exit_code(stop: BaseException) -> int:
    """The exit code of a run stopped by ``stop`` (KeyboardInterrupt or :class:`Terminated`)."""
    return EXIT_INTERRUPTED if isinstance(stop, KeyboardInterrupt) else EXIT_TERMINATED


def how_stopped(stop: BaseException) -> str:
    """``"interrupted"`` (Ctrl-C) or ``"terminated"`` (SIGTERM), as the error line says it."""
    return "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
