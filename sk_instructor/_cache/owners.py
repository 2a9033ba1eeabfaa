"""Which processes holding claims on a disk cache are alive: one locked file per process.

A process that claims keys first creates ``<database>-owners/<token>.lock`` and holds an
exclusive ``flock`` on it for as long as it may hold claims. The kernel drops that lock when
the process dies, however it dies (SIGKILL, out of memory): another process that can take a
lock on the file knows at once that the owner is gone, with no timeout and no trust in process
ids, which the system reuses. ``<token>`` is the process id (for people reading the folder)
and random bytes, so a token is never reused.

A file is locked before it gets its final name (it is created under a temporary one and
renamed), so a file seen under its final name and not locked is a dead owner's, and any
process may remove it: :func:`sweep` clears the files of owners that died between claims.

A forked child does not inherit its parent's ownership: the inherited descriptor, which would
keep the parent's lock alive as long as the child lives, is closed in the child at once.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import weakref
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no coordination, each process encodes
    fcntl = None  # type: ignore[assignment]

__all__ = ["Ownership", "is_alive", "remove_dead", "sweep"]

_SUFFIX = ".lock"
_TEMPORARY_SUFFIX = ".new"
# Every ownership of this process, so that a forked child closes the descriptors it inherits.
_LIVE: weakref.WeakSet[Ownership] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


class Ownership:
    """This process's right to claim keys in one cache: its token and the lock that says it is
    alive. ``held`` is the keys it has claimed and not released (any of its threads)."""

    def __init__(self, folder: Path, token: str, descriptor: int) -> None:
        self.folder = folder
        self.token = token
        self.pid = os.getpid()
        self.held: set[str] = set()
        self._descriptor: int | None = descriptor
        self._finalizer = weakref.finalize(
            self, _let_go, descriptor, str(folder / f"{token}{_SUFFIX}")
        )
        with _LIVE_LOCK:
            _LIVE.add(self)

    @classmethod
    def create(cls, folder: Path, *, parents: bool = True) -> Ownership | None:
        """A new ownership in ``folder`` (made if missing, with its ``parents`` if asked);
        ``None`` where lock files cannot be made (no ``fcntl``, a folder this process cannot
        write in): this process then coordinates with nobody."""
        if fcntl is None:  # pragma: no cover
            return None
        try:
            folder.mkdir(parents=parents, exist_ok=True)
            sweep(folder)
            for _ in range(100):
                token = f"{os.getpid()}-{secrets.token_hex(8)}"
                temporary = folder / f"{token}{_TEMPORARY_SUFFIX}"
                descriptor = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    # Another process sweeping may have removed the file before it was locked:
                    # then the rename fails and another name is tried.
                    os.rename(temporary, folder / f"{token}{_SUFFIX}")
                except OSError:
                    os.close(descriptor)
                    continue
                return cls(folder, token, descriptor)
        except OSError:
            return None
        return None  # pragma: no cover - a hundred names taken away one after the other

    def drop(self) -> None:
        """Remove the file and let the lock go: claims left under this token look dead."""
        self._descriptor = None
        self._finalizer()

    def _forget_in_child(self) -> None:
        # The parent's lock: closed here without removing the parent's file.
        self._finalizer.detach()
        if self._descriptor is not None:
            with contextlib.suppress(OSError):
                os.close(self._descriptor)
            self._descriptor = None


def is_alive(folder: Path, token: str) -> bool:
    """Whether the process that owns ``token`` still lives (holds its lock)."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        descriptor = os.open(folder / f"{token}{_SUFFIX}", os.O_RDONLY)
    except FileNotFoundError:
        return False  # never locked under that name, or removed once found dead
    except OSError:
        return True  # cannot tell: the waiter's deadline still bounds the wait
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    finally:
        os.close(descriptor)  # also lets go of the shared lock, when taken
    return False


def remove_dead(folder: Path, token: str) -> None:
    """Remove the file of an owner found dead (its claims deleted first)."""
    with contextlib.suppress(OSError):
        os.unlink(folder / f"{token}{_SUFFIX}")


def sweep(folder: Path) -> None:
    """Remove the files of owners that died (and of creations that never got their name)."""
    if fcntl is None:  # pragma: no cover
        return
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not entry.name.endswith((_SUFFIX, _TEMPORARY_SUFFIX)):
                continue
            with contextlib.suppress(OSError):
                descriptor = os.open(entry.path, os.O_RDONLY)
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os.unlink(entry.path)  # still locked: nobody can be taking this name
                finally:
                    os.close(descriptor)


def _let_go(descriptor: int, path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.close(descriptor)


def _forget_all_in_child() -> None:
    global _LIVE_LOCK
    _LIVE_LOCK = threading.Lock()  # may have been held by another thread at fork time
    for ownership in list(_LIVE):
        ownership._forget_in_child()
    _LIVE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all_in_child)
