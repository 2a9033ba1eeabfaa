"""The on-disk embedding cache: one SQLite file shared by processes and later sessions.

Everything stored here can be recomputed, so the cache never stops the embedding: a damaged
file is moved aside and started afresh, and a location that cannot be used (read-only, full, a
database stuck past its lock timeout) turns the lookup or the store into a no-op; each with a
warning, once per file and kind of problem (a full disk is said once, not once per batch).

Moving a file aside while another process uses it would lose that process's writes (they go
into the moved file, or into a write-ahead log unlinked under it), so every use of the file holds
a shared lock on a ``-lock`` file beside it and a rebuild holds it exclusively: a process sees
that the file at the path is not the one it opened and opens the new one, and a second process
that found the same damage finds the file already replaced and keeps the new store.

Processes that miss the same keys at the same moment (``GridSearchCV(n_jobs=2)`` workers) do
not both encode them: a ``claims`` table in the same file says which process is encoding which
key (see :meth:`DiskCache.claim`), and whether that process is alive is told by a lock it holds
on a file of its own (``owners.py``). Reading never writes: the hit and miss counts of a process
are kept in the process and written with its next write (a store, a claim), at :meth:`close` and
at exit, so that readers never queue for the write lock.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import numbers
import os
import re
import sqlite3
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .._warnings import warn
from . import owners
from .base import EmbeddingCache, _check_keys

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows, where a file open elsewhere cannot be moved
    fcntl = None  # type: ignore[assignment]

__all__ = ["DiskCache"]

_DEFAULT_DB_NAME = "embeddings.sqlite3"
_DB_SUFFIXES = frozenset({".sqlite3", ".sqlite", ".db"})
# SQLite builds before 3.32 allow at most 999 bound parameters per statement.
_SQL_CHUNK = 900
# Version of the on-disk schema (``PRAGMA user_version``). Version 1 (sk_instructor 0.1) is
# upgraded in place (it lacks the counters); any other is rebuilt rather than misread.
_SCHEMA_VERSION = 2
# Longest a process waits for keys another live process claimed without any of them becoming
# ready: then it encodes them itself (with a warning). A claimant stores its vectors batch by
# batch, so only a process that stopped making progress (stopped, hung) is ever waited for so
# long; a dead one is noticed at once.
_CLAIM_WAIT = 600.0
# Seconds between two looks at the claims while waiting (first 1 ms, doubling up to this).
_CLAIM_POLL = 0.05
# SQLITE_CORRUPT and SQLITE_NOTADB: the file itself is damaged, as opposed to busy or locked.
_CORRUPTION_CODES = frozenset({11, 26})
# SQLITE_FULL, and the errors of the file system: no room left on the disk or in the quota.
_SQLITE_FULL = 13
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS embeddings (
    key TEXT PRIMARY KEY,
    dim INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    entries INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    misses INTEGER NOT NULL DEFAULT 0,
    encoded INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO usage (id, entries, nbytes) VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS embeddings_counted_insert AFTER INSERT ON embeddings BEGIN
    UPDATE usage SET entries = entries + 1, nbytes = nbytes + length(NEW.vector) WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS embeddings_counted_delete AFTER DELETE ON embeddings BEGIN
    UPDATE usage SET entries = entries - 1, nbytes = nbytes - length(OLD.vector) WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS embeddings_counted_update AFTER UPDATE OF vector ON embeddings BEGIN
    UPDATE usage SET nbytes = nbytes + length(NEW.vector) - length(OLD.vector) WHERE id = 0;
END;
PRAGMA user_version = {_SCHEMA_VERSION};
"""
# Keys some process is encoding now: ``owner`` is its token (see owners.py), ``since`` when it
# claimed them (seconds since the epoch, for people reading the file). Added to a store of
# version 2 in place, without changing the version: earlier releases never read this table, and
# they keep reading and writing the file as before.
_CLAIMS = """
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    since REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_by_owner ON claims (owner);
"""
# From version 1: the counters every process adds to, so that stats() reads them anywhere.
_UPGRADE_FROM_1 = f"""
ALTER TABLE usage ADD COLUMN hits INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN misses INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN encoded INTEGER NOT NULL DEFAULT 0;
PRAGMA user_version = {_SCHEMA_VERSION};
"""

# Connections inherited through fork are kept referenced, never closed: SQLite must not touch a
# connection that another process opened (https://sqlite.org/howtocorrupt.html, section 2.6).
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []

_T = TypeVar("_T")


class _Damaged(Exception):
    """The database file is unreadable as a store of this version (raised inside only)."""


class _FoundDamaged(Exception):
    """An operation found the file damaged; ``identity`` says which file it was."""

    def __init__(self, error: BaseException, identity: tuple[int, int] | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.identity = identity


class DiskCache(EmbeddingCache):
    """Embedding cache in a SQLite file, shared by processes and later sessions.

    ``path`` names a directory, created on first use, that holds the database file
    ``embeddings.sqlite3`` (plus SQLite's ``-wal`` / ``-shm`` files and a ``-lock`` file, see
    below). A path that is an existing file, or ends in ``.sqlite3``, ``.sqlite`` or ``.db``,
    is taken as the database file itself.

    Safe for concurrent readers and writers across threads and processes (e.g.
    ``GridSearchCV(n_jobs=2)`` workers): the database runs in WAL mode, so readers never
    wait for writers; writers wait up to ``timeout`` seconds for each other; each
    :meth:`put_many` is one transaction, so a process killed mid-write leaves either the
    whole batch or none of it. Each process opens its own connection on first use (again
    after a fork or unpickling); threads of a process share it under a lock.

    The cache never stops an embedding: every vector in it can be recomputed. A damaged file
    (``sqlite3.DatabaseError``, a failed ``PRAGMA quick_check``, another schema) is moved
    aside to ``<file>.corrupt`` and replaced by an empty store. That happens once however many
    processes find the damage at the same time, and never during another process's read or
    write: each use holds a shared lock on ``<file>-lock`` and a rebuild holds it exclusively;
    a process whose file was moved aside opens the new one at its next call, so no write is
    lost in the file moved aside. A location that cannot be used (a read-only or full disk, a
    database locked past ``timeout``) skips the lookup or the store. Each is said once by a
    ``RuntimeWarning``, and the engine returns correct vectors, just uncached. A stored row
    whose size or checksum does not match is never served: it counts as a miss and the next
    :meth:`put_many` of that key overwrites it.

    Processes that lack the same keys encode each once: the engine claims the keys it is
    about to encode (:meth:`claim`), a process finding them claimed waits for their vectors
    (:meth:`wait_for`) instead of encoding them, and the claims go when the vectors are stored
    or the claimant releases them (:meth:`release`, on every exit path). A claimant that died
    (SIGKILL, out of memory) is noticed at once, by the lock it held on
    ``<file>-owners/<pid>-<random>.lock`` being free, and its keys are claimed again.

    ``copy.deepcopy`` and ``sklearn.base.clone`` return the same object; pickling keeps only
    the path and settings, and unpickling in a process gives that process's shared
    ``DiskCache`` for them. :meth:`stats` describes the file: ``hits``, ``misses`` and
    ``encoded`` add up the calls of every process that used it (``GridSearchCV(n_jobs=2)``
    workers included), ``entries`` and ``nbytes`` what it holds. Lookups never write (readers
    do not wait for each other or for writers): a process's counts reach the file with its next
    write (a store, a claim), at :meth:`close` and at its exit, and :meth:`stats` adds those of
    the calling process not written yet.

    Parameters
    ----------
    path : str or os.PathLike
        Directory of the store, or the database file itself (see above). ``~`` is expanded
        and a relative path is made absolute now, against the current directory.
    max_bytes : int or None, default=None
        Bound on the bytes of stored vectors. ``None``, the default, never evicts: the
        store grows until :meth:`clear` or deletion of the file. When set, the entries
        written longest ago are evicted first (first in, first out: lookups do not refresh
        an entry on disk, so that reading never takes the write lock).
    timeout : float, default=60.0
        Seconds a writer waits for another process's transaction before giving up.
    check_on_open : bool, default=True
        Run ``PRAGMA quick_check`` when a process opens the file. It reads the whole file
        once, about a second per GB; ``False`` skips it and relies on errors seen during
        use to detect damage.

    Attributes
    ----------
    path : pathlib.Path
        The database file.

    See Also
    --------
    MemoryCache : The in-process default.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from sk_instructor import DiskCache
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     writer = DiskCache(folder)
    ...     writer.put_many(["k1"], np.arange(3, dtype=np.float32).reshape(1, 3))
    ...     reader = DiskCache(folder)  # another object, as in another process
    ...     (vector,) = reader.get_many(["k1"])
    ...     writer.close()
    ...     reader.close()
    >>> vector
    array([0., 1., 2.], dtype=float32)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int | None = None,
        timeout: float = 60.0,
        check_on_open: bool = True,
    ) -> None:
        if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"DiskCache: path must be a str or os.PathLike, got {type(path).__name__} {path!r}"
            )
        if not os.fspath(path):
            raise ValueError("DiskCache: path must not be empty")
        if max_bytes is not None and (
            isinstance(max_bytes, (bool, np.bool_))
            or not isinstance(max_bytes, numbers.Integral)
            or max_bytes < 0
        ):
            raise ValueError(
                f"DiskCache: max_bytes must be None or a non-negative int, got {max_bytes!r}"
            )
        if not isinstance(timeout, numbers.Real) or isinstance(timeout, bool) or timeout < 0:
            raise ValueError(f"DiskCache: timeout must be a non-negative number, got {timeout!r}")
        super().__init__()
        self.path = _database_file(path)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.timeout = float(timeout)
        self.check_on_open = bool(check_on_open)
        self._connection: sqlite3.Connection | None = None
        self._connection_pid: int | None = None
        # Which file the connection opened (device, inode): another process may replace it.
        self._connection_file: tuple[int, int] | None = None
        # This process's descriptor of the ``-lock`` file; the finalizer closes it.
        self._lock_file: tuple[int, int, weakref.finalize] | None = None  # fd, pid, finalizer
        # This process's right to claim keys (created on its first claim), and its writes so
        # far: a waiter looks at the claims again when it or another connection wrote.
        self._ownership: owners.Ownership | None = None
        self._writes = 0
        # False for the folder of a parallel run's workers (memory.py): made by the process
        # that started them and removed when it exits, never made again by a worker after that.
        self._makes_folder = True
        _LIVE_DISK_CACHES.add(self)

    def __repr__(self) -> str:
        settings = "".join(
            f", {name}={value!r}"
            for name, value, default in (
                ("max_bytes", self.max_bytes, None),
                ("timeout", self.timeout, 60.0),
                ("check_on_open", self.check_on_open, True),
            )
            if value != default
        )
        return f"{type(self).__name__}({str(self.path)!r}{settings})"

    def __reduce__(self) -> tuple[Callable[..., DiskCache], tuple[Any, ...]]:
        return _shared_disk_cache, (
            str(self.path),
            self.max_bytes,
            self.timeout,
            self.check_on_open,
        )

    # -- public ----------------------------------------------------------------------------

    def clear(self) -> None:
        """Remove every stored vector from the file (for all processes sharing it)."""

        def delete_all(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM embeddings")

        self._write(delete_all, "clear")

    def close(self) -> None:
        """Write this process's counts, release its claims and close its connection; the next
        call opens the file again."""
        with self._lock:
            self._drop_ownership()
            if any(self._local_counters):
                self._write(lambda connection: None, "count lookups in")
            if self._connection is not None and self._connection_pid == os.getpid():
                # Under the lock: closing may fold the write-ahead log into the file and delete
                # it, which must not meet a rebuild replacing the file and its log.
                with contextlib.suppress(OSError):  # else SQLite's own check still protects it
                    with self._file_lock(exclusive=False):
                        self._drop_connection()
            self._drop_connection()
            if self._lock_file is not None:
                self._lock_file[2]()
                self._lock_file = None

    # -- EmbeddingCache hooks --------------------------------------------------------------

    def _lookup(self, keys: list[str]) -> list[np.ndarray | None]:
        positions: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            positions.setdefault(key, []).append(index)
        unique = list(positions)

        def select(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = []
            for start in range(0, len(unique), _SQL_CHUNK):
                chunk = unique[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows += connection.execute(
                    f"SELECT key, dim, crc, vector FROM embeddings WHERE key IN ({marks})", chunk
                ).fetchall()
            return rows

        found: list[np.ndarray | None] = [None] * len(keys)
        damaged = 0
        for key, dim, crc, blob in self._run(select, "read from") or ():
            vector = _decode_vector(dim, crc, blob)
            if vector is None:
                damaged += 1
                continue
            for index in positions.get(key, ()):
                found[index] = vector
        if damaged:
            warn(
                f"ignored {damaged} damaged entries in the embedding cache {self.path}; they "
                f"count as misses and are overwritten when stored again",
                RuntimeWarning,
                cause=("damaged cache entries", str(self.path)),
            )
        return found

    def _store(self, keys: list[str], vectors: np.ndarray) -> None:
        records = [
            (key, *_encode_vector(row))
            for key, row in zip(keys, vectors, strict=True)
            if self.max_bytes is None or row.nbytes <= self.max_bytes
        ]
        if not records:
            return

        def write(connection: sqlite3.Connection) -> None:
            stored = [(record[0],) for record in records]
            # DELETE then INSERT rather than INSERT OR REPLACE, whose implicit delete would
            # not fire the trigger that keeps the usage counts.
            connection.executemany("DELETE FROM embeddings WHERE key = ?", stored)
            connection.executemany(
                "INSERT INTO embeddings (key, dim, crc, vector) VALUES (?, ?, ?, ?)", records
            )
            # A stored key is claimed by nobody any more: whoever waits for it reads it now.
            connection.executemany("DELETE FROM claims WHERE key = ?", stored)
            if self.max_bytes is not None:
                _evict_oldest(connection, self.max_bytes)

        # The count is in the message only: the warning is said once per kind of problem.
        self._write(write, f"write {len(records)} vectors to")

    def _count(
        self, *, hits: int = 0, misses: int = 0, encoded: int = 0, reset: bool = False
    ) -> None:
        # Counted here, in the process, and added to the file's counters (which every process
        # adds to, and any process reads) with this process's next write: a lookup that wrote
        # its counts would be a write transaction, and readers would queue for the lock.
        if reset:

            def zero(connection: sqlite3.Connection) -> None:
                connection.execute(
                    "UPDATE usage SET hits = 0, misses = 0, encoded = 0 WHERE id = 0"
                )

            with self._lock:
                self._local_counters[:] = [0, 0, 0]  # not to be written after the reset
                self._write(zero, "reset the counters of")
        super()._count(hits=hits, misses=misses, encoded=encoded)

    def _counters(self) -> tuple[int, int, int]:
        def read(connection: sqlite3.Connection) -> tuple[int, int, int]:
            return connection.execute(
                "SELECT hits, misses, encoded FROM usage WHERE id = 0"
            ).fetchone()

        stored = self._run(read, "read the counters of") or (0, 0, 0)
        return tuple(int(a) + b for a, b in zip(stored, super()._counters(), strict=True))

    def _size(self) -> tuple[int, int]:
        def read_usage(connection: sqlite3.Connection) -> tuple[int, int]:
            entries, nbytes = connection.execute(
                "SELECT entries, nbytes FROM usage WHERE id = 0"
            ).fetchone()
            return int(entries), int(nbytes)

        return self._run(read_usage, "read the size of") or (0, 0)

    # -- claims: each key encoded by one process ---------------------------------------------

    @property
    def shared(self) -> bool:
        """Always ``True``: other processes may use the file at any moment."""
        return True

    def claim(self, keys: Sequence[str], *, limit: int | None = None) -> list[str]:
        """Claim the keys of ``keys`` no other live process has claimed (at most ``limit``).

        Keys claimed by a process that died are claimed again. Keys stored already may be
        claimed (the caller reads them again first). Where claims cannot be written (a
        read-only or full disk, a lock held past ``timeout``), every key is granted: this
        process encodes them, as it would without coordination.
        """
        wanted = list(dict.fromkeys(_check_keys(keys, "claim")))
        if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
            raise ValueError(f"claim: limit must be None or a positive int, got {limit!r}")
        if not wanted:
            return []
        with self._lock:
            ownership = self._own()
            if ownership is None:
                return wanted[:limit]
            alive: dict[str, bool] = {}

            def take(connection: sqlite3.Connection) -> tuple[list[str], set[str]]:
                holders = _claims_of(connection, wanted)
                free: list[str] = []
                dead: set[str] = set()
                for key in wanted:
                    holder = holders.get(key)
                    if holder is not None:
                        if self._holds(holder, key, ownership, alive):
                            continue
                        if holder != ownership.token:
                            dead.add(holder)
                    free.append(key)
                    if limit is not None and len(free) >= limit:
                        break
                for holder in dead:  # all of a dead process's claims, not only these keys'
                    connection.execute("DELETE FROM claims WHERE owner = ?", (holder,))
                now = time.time()
                connection.executemany(
                    "INSERT OR REPLACE INTO claims (key, owner, since) VALUES (?, ?, ?)",
                    [(key, ownership.token, now) for key in free],
                )
                return free, dead

            taken = self._write(take, "claim keys in")
            if taken is None:
                return wanted[:limit]  # the warning said why: encode them here
            free, dead = taken
            ownership.held.update(free)
        for holder in dead:
            owners.remove_dead(ownership.folder, holder)
        return free

    def release(self, keys: Sequence[str]) -> None:
        """Drop this process's claims on ``keys`` (those stored are dropped already)."""
        keys = _check_keys(keys, "release")
        with self._lock:
            ownership = self._ownership
            if ownership is None or ownership.pid != os.getpid():
                return
            mine = [key for key in dict.fromkeys(keys) if key in ownership.held]
            ownership.held.difference_update(mine)
            if not mine:
                return

            def free(connection: sqlite3.Connection) -> None:
                connection.executemany(
                    "DELETE FROM claims WHERE owner = ? AND key = ?",
                    [(ownership.token, key) for key in mine],
                )

            if self._write(free, "release claims in") is None:
                # Claims left behind by a live process would hold the others up: this one
                # lets its lock go, so that they find its claims a dead process's and take
                # them over. Its next claim starts a new ownership.
                self._drop_ownership(delete=False)

    def wait_for(self, keys: Sequence[str]) -> list[str]:
        """Wait until some of ``keys`` are no longer claimed by a live process; return them.

        Polls the claims (a read, never the write lock), looking again only when something
        was written to the file since, and asks each claimant whether it lives at every look:
        a claimant that died is noticed within ``_CLAIM_POLL`` seconds. Should no key become
        ready for ``_CLAIM_WAIT`` seconds (a claimant stopped, not dead), every key is
        returned, with a warning: this process then encodes them.
        """
        wanted = list(dict.fromkeys(_check_keys(keys, "wait_for")))
        if not wanted:
            return []
        deadline = time.monotonic() + _CLAIM_WAIT
        delay = 0.001
        seen: tuple[int, int] | None = None
        holders: dict[str, str] = {}
        while True:
            with self._lock:
                version = self._run(_data_version, "read the claims in")
                if version is None:
                    return wanted
                if (version, self._writes) != seen:
                    read = self._run(
                        lambda connection: _claims_of(connection, wanted), "read the claims in"
                    )
                    if read is None:
                        return wanted
                    holders, seen = read, (version, self._writes)
                ownership = self._ownership
                if ownership is not None and ownership.pid != os.getpid():
                    ownership = None
                alive: dict[str, bool] = {}
                ready = [
                    key
                    for key in wanted
                    if key not in holders or not self._holds(holders[key], key, ownership, alive)
                ]
            if ready:
                return ready
            if time.monotonic() > deadline:
                self._take_over(wanted)
                warn(
                    f"waited {_CLAIM_WAIT:g} s for {len(wanted)} texts that another process "
                    f"claimed in the embedding cache {self.path} and has not encoded; encoding "
                    f"them here",
                    RuntimeWarning,
                    cause=("claims stalled", str(self.path)),
                )
                return wanted
            time.sleep(delay)
            delay = min(delay * 2, _CLAIM_POLL)

    def _take_over(self, keys: list[str]) -> None:
        """Delete the claims of other processes on ``keys``: they are anyone's to claim now."""
        with self._lock:
            ownership = self._ownership
            mine = ownership.token if ownership is not None else ""

            def delete(connection: sqlite3.Connection) -> None:
                connection.executemany(
                    "DELETE FROM claims WHERE key = ? AND owner != ?",
                    [(key, mine) for key in keys],
                )

            self._write(delete, "release claims in")

    def _holds(
        self,
        holder: str,
        key: str,
        ownership: owners.Ownership | None,
        alive: dict[str, bool],
    ) -> bool:
        """Whether the claim of ``holder`` on ``key`` stands: its process lives (for this
        process's own token: one of its threads is encoding the key)."""
        if ownership is not None and holder == ownership.token:
            return key in ownership.held
        if holder not in alive:
            alive[holder] = owners.is_alive(self._owners_folder(), holder)
        return alive[holder]

    def _make_folder(self) -> None:
        if self._makes_folder:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def _owners_folder(self) -> Path:
        return Path(f"{self.path}-owners")

    def _own(self) -> owners.Ownership | None:
        """This process's ownership, created on its first claim."""
        ownership = self._ownership
        if ownership is None or ownership.pid != os.getpid():
            ownership = self._ownership = owners.Ownership.create(
                self._owners_folder(), parents=self._makes_folder
            )
        return ownership

    def _drop_ownership(self, *, delete: bool = True) -> None:
        """Delete this process's claims (when ``delete``) and let its lock go."""
        ownership = self._ownership
        self._ownership = None
        if ownership is None or ownership.pid != os.getpid():
            return
        if delete and ownership.held:

            def free_all(connection: sqlite3.Connection) -> None:
                connection.execute("DELETE FROM claims WHERE owner = ?", (ownership.token,))

            self._write(free_all, "release claims in")
        ownership.drop()

    # -- the connection ---------------------------------------------------------------------

    def _write(self, operation: Callable[[sqlite3.Connection], _T], doing: str) -> _T | None:
        """Run ``operation`` in one write transaction, with this process's counts not written
        yet; ``None`` when the cache cannot (see :meth:`_run`), the counts then kept here."""
        with self._lock:
            pending = tuple(self._local_counters)

            def transaction(connection: sqlite3.Connection) -> tuple[_T]:
                with _write_transaction(connection):
                    if any(pending):
                        connection.execute(
                            "UPDATE usage SET hits = hits + ?, misses = misses + ?, "
                            "encoded = encoded + ? WHERE id = 0",
                            pending,
                        )
                    return (operation(connection),)

            done = self._run(transaction, doing)
            if done is None:
                return None
            self._writes += 1
            for position, written in enumerate(pending):
                self._local_counters[position] -= written
            return done[0]

    def _run(self, operation: Callable[[sqlite3.Connection], _T], doing: str) -> _T | None:
        """Run ``operation`` on this process's connection; ``None`` when the cache cannot.

        A damaged file is rebuilt once and the operation retried; any other failure (a full or
        read-only disk, a lock held past ``timeout``) is warned about and skipped. The warning
        is said once per file and kind of problem (:func:`_problem`), whatever the operation:
        on a full disk every store and every count fails, batch after batch.
        """
        with self._lock:
            try:
                try:
                    return self._use(operation)
                except _FoundDamaged as damage:
                    self._rebuild(damage)
                return self._use(operation)
            except (sqlite3.Error, OSError, _Damaged, _FoundDamaged) as error:
                warn(
                    f"could not {doing} the embedding cache {self.path} ({error}); the "
                    f"embedding goes on without it",
                    RuntimeWarning,
                    cause=("disk cache", str(self.path), _problem(error)),
                )
                return None

    def _use(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``operation`` under the shared lock: no rebuild moves the file meanwhile."""
        with self._file_lock(exclusive=False):
            try:
                return operation(self._connect())
            except (sqlite3.DatabaseError, _Damaged) as error:
                if not _is_damage(error):
                    raise
                # Still under the lock: the file at the path is the one found damaged.
                damaged = _file_identity(self.path)
                self._drop_connection()
                raise _FoundDamaged(error, damaged) from error

    def _file_lock(self, *, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        """Hold ``<file>-lock``: shared to use the file, exclusive to replace it."""
        if fcntl is None:  # pragma: no cover - Windows refuses to move a file open elsewhere
            return contextlib.nullcontext()
        pid = os.getpid()
        if self._lock_file is None or self._lock_file[1] != pid:
            if self._lock_file is not None:  # inherited through fork: the parent's own lock
                self._lock_file[2]()
                self._lock_file = None
            self._make_folder()
            descriptor = _open_lock_file(f"{self.path}-lock")
            if descriptor is None:
                # A folder this process cannot write in: it cannot move the database aside
                # either, and a process that can creates the lock file first.
                return contextlib.nullcontext()
            finalizer = weakref.finalize(self, os.close, descriptor)
            # Not at exit: the counts are written then (_write_counts_at_exit), under this lock;
            # the system closes the descriptor when the process ends.
            finalizer.atexit = False
            self._lock_file = (descriptor, pid, finalizer)
        return _flock(
            self._lock_file[0], fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, self.timeout
        )

    def _drop_connection(self) -> None:
        if self._connection is not None and self._connection_pid == os.getpid():
            # A file moved aside is closed safely: SQLite sees it moved and leaves the
            # write-ahead log at the path, the new file's, alone.
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
        elif self._connection is not None:  # inherited through fork
            _INHERITED_CONNECTIONS.append(self._connection)
        self._connection = None
        self._connection_pid = None
        self._connection_file = None

    def _connect(self) -> sqlite3.Connection:
        """This process's connection to the file now at the path (the shared lock is held)."""
        if self._connection is not None and self._connection_pid == os.getpid():
            if _file_identity(self.path) == self._connection_file:
                return self._connection
            # Another process moved the file aside (it found it damaged): use the new one.
        self._drop_connection()
        self._make_folder()
        connection = sqlite3.connect(
            self.path,
            timeout=self.timeout,
            isolation_level=None,  # transactions are opened explicitly
            check_same_thread=False,  # shared by this process's threads under a lock
        )
        try:
            self._prepare(connection)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.close()
            raise
        self._connection, self._connection_pid = connection, os.getpid()
        self._connection_file = _file_identity(self.path)
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        # Only takes effect while the file is still empty. A 768-float32 row (3 KiB) would fill
        # most of a default 4 KiB page on its own; 16 KiB pages hold five, so the file is about
        # 10% larger than the vectors instead of 35%.
        connection.execute("PRAGMA page_size = 16384")
        # WAL lets readers proceed while one process writes; it is a property of the file.
        # NORMAL sync is crash-safe for a killed process in WAL mode (only a power loss may drop
        # the latest commits, never tear one).
        mode = _retry_while_locked(
            lambda: connection.execute("PRAGMA journal_mode=WAL").fetchone()[0], self.timeout
        )
        if str(mode).lower() != "wal":
            raise OSError(f"cannot use WAL mode (got {mode!r}); it needs a local file system")
        connection.execute("PRAGMA synchronous=NORMAL")
        if self.check_on_open:
            problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise _Damaged("PRAGMA quick_check: " + "; ".join(map(str, problems[:3])))
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version == _SCHEMA_VERSION and _has_claims_table(connection):
            return
        with _write_transaction(connection):
            # Read again under the write lock: another process may have created it meanwhile.
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            tables = connection.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            ).fetchone()[0]
            if version == _SCHEMA_VERSION:
                _run_script(connection, _CLAIMS)
                return
            if version == 1:
                _run_script(connection, _UPGRADE_FROM_1)
                _run_script(connection, _CLAIMS)
                return
            if version != 0 or tables:
                raise _Damaged(
                    f"schema version {version} with {tables} tables, expected version "
                    f"{_SCHEMA_VERSION} (written by another version of sk_instructor?)"
                )
            _run_script(connection, _SCHEMA)
            _run_script(connection, _CLAIMS)

    def _rebuild(self, damage: _FoundDamaged) -> None:
        """Move the damaged file aside, unless another process has replaced it already."""
        aside = self.path.with_name(self.path.name + ".corrupt")
        with self._file_lock(exclusive=True):  # no process is reading or writing the file
            # Another process that found the same damage may have replaced the file already:
            # the new one is kept, whatever it holds by now.
            if damage.identity is None or _file_identity(self.path) != damage.identity:
                return
            os.replace(self.path, aside)
            # The write-ahead log belongs to the damaged file; left in place, SQLite would
            # replay it into the new, empty one.
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
        warn(
            f"the embedding cache {self.path} was damaged ({damage}); moved it to {aside} and "
            f"started an empty cache",
            RuntimeWarning,
        )


def _problem(error: BaseException) -> str:
    """The kind of problem ``error`` shows, without anything that differs from call to call
    (counts, sizes, page numbers): a warning is said once per kind.

    Examples
    --------
    >>> import errno, sqlite3
    >>> from sk_instructor._cache.disk import _problem
    >>> _problem(OSError(errno.ENOSPC, "No space left on device"))
    'no space left'
    >>> _problem(sqlite3.OperationalError("database or disk is full"))
    'no space left'
    >>> _problem(TimeoutError("the lock to use the file was held for over 60 s"))
    'TimeoutError: the lock to use the file was held for over # s'
    """
    if isinstance(error, (_Damaged, _FoundDamaged)):
        return "damaged"
    if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
        return "no space left"
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(error, sqlite3.Error) and (
        (code is not None and code & 0xFF == _SQLITE_FULL)
        or (code is None and "disk is full" in str(error))  # Python < 3.11 has no codes
    ):
        return "no space left"
    if code is not None:
        return f"{type(error).__name__} {getattr(error, 'sqlite_errorname', code)}"
    if isinstance(error, OSError) and error.errno is not None:
        return f"{type(error).__name__} {errno.errorcode.get(error.errno, error.errno)}"
    # No code to go by: the message, less its numbers.
    return f"{type(error).__name__}: {re.sub(r'[0-9][0-9,.]*', '#', str(error))}"


def _is_damage(error: BaseException) -> bool:
    if isinstance(error, _Damaged):
        return True
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPTION_CODES
    # Python < 3.11 has no error codes; corruption surfaces as the base class itself.
    return type(error) is sqlite3.DatabaseError


def _open_lock_file(path: str) -> int | None:
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        with contextlib.suppress(OSError):
            return os.open(path, flags, 0o666)
    return None


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``, ``None`` when there is none."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


@contextlib.contextmanager
def _flock(descriptor: int, operation: int, timeout: float) -> Iterator[None]:
    # Polled rather than blocking, so that a process stuck holding the lock costs the others
    # ``timeout`` seconds (then a warning), as a stuck SQLite transaction does.
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the lock {'to rebuild' if operation == fcntl.LOCK_EX else 'to use'} "
                    f"the file was held by another process for over {timeout:g} s"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    try:
        yield
    finally:
        fcntl.flock(descriptor, fcntl.LOCK_UN)


def _retry_while_locked(step: Callable[[], _T], timeout: float) -> _T:
    # Changing the journal mode needs an exclusive lock and SQLite does not wait for it with
    # the busy timeout, so two processes opening a new file at once would fail: retry instead.
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            return step()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _encode_vector(row: np.ndarray) -> tuple[int, int, bytes]:
    blob = np.ascontiguousarray(row, dtype="<f4").tobytes()
    return row.shape[0], zlib.crc32(blob), blob


def _decode_vector(dim: object, crc: object, blob: object) -> np.ndarray | None:
    # A row that does not match its own dimension and checksum is never served: SQLite
    # guarantees atomic transactions but not that the bytes on disk stay intact.
    if not isinstance(dim, int) or not isinstance(blob, bytes) or dim <= 0:
        return None
    if len(blob) != 4 * dim or zlib.crc32(blob) != crc:
        return None
    vector = np.frombuffer(blob, dtype="<f4").astype(np.float32, copy=False)
    vector.flags.writeable = False
    return vector


def _run_script(connection: sqlite3.Connection, script: str) -> None:
    # ``executescript`` would COMMIT the surrounding transaction first; statements are run one
    # by one instead so that schema creation stays inside the caller's write transaction.
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            connection.execute(statement)
            statement = ""


@contextlib.contextmanager
def _write_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front: a deferred transaction that later upgrades
    # from read to write can fail with SQLITE_BUSY without waiting for the busy timeout.
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _has_claims_table(connection: sqlite3.Connection) -> bool:
    return bool(
        connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'claims'"
        ).fetchone()[0]
    )


def _claims_of(connection: sqlite3.Connection, keys: list[str]) -> dict[str, str]:
    """The owner of each of ``keys`` that is claimed."""
    holders: dict[str, str] = {}
    for start in range(0, len(keys), _SQL_CHUNK):
        chunk = keys[start : start + _SQL_CHUNK]
        holders.update(
            connection.execute(
                f"SELECT key, owner FROM claims WHERE key IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
        )
    return holders


def _data_version(connection: sqlite3.Connection) -> int:
    # Changes whenever another connection (another process) commits to the file.
    return int(connection.execute("PRAGMA data_version").fetchone()[0])


def _evict_oldest(connection: sqlite3.Connection, max_bytes: int) -> None:
    (nbytes,) = connection.execute("SELECT nbytes FROM usage WHERE id = 0").fetchone()
    excess = int(nbytes) - max_bytes
    if excess <= 0:
        return
    doomed: list[int] = []
    for rowid, size in connection.execute(
        "SELECT rowid, length(vector) FROM embeddings ORDER BY rowid"
    ):
        doomed.append(rowid)
        excess -= size
        if excess <= 0:
            break
    for start in range(0, len(doomed), _SQL_CHUNK):
        chunk = doomed[start : start + _SQL_CHUNK]
        connection.execute(
            f"DELETE FROM embeddings WHERE rowid IN ({','.join('?' * len(chunk))})", chunk
        )


def _database_file(path: str | os.PathLike[str]) -> Path:
    location = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if location.is_file() or location.suffix.lower() in _DB_SUFFIXES:
        return location
    return location / _DEFAULT_DB_NAME


# Every DiskCache of this process: their counts not written yet are written at exit.
_LIVE_DISK_CACHES: weakref.WeakSet[DiskCache] = weakref.WeakSet()


@atexit.register
def _write_counts_at_exit() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nobody is left to act on a warning
        for cache in list(_LIVE_DISK_CACHES):
            if (
                cache._connection_pid in (None, os.getpid())
                and any(cache._local_counters)
                and cache.path.exists()  # not into a store removed meanwhile
            ):
                with contextlib.suppress(Exception):
                    cache._write(lambda connection: None, "count lookups in")


_DISK_CACHES: dict[tuple[str, int | None, float, bool], DiskCache] = {}
_DISK_CACHES_LOCK = threading.Lock()


def _shared_disk_cache(
    path: str | os.PathLike[str],
    max_bytes: int | None = None,
    timeout: float = 60.0,
    check_on_open: bool = True,
) -> DiskCache:
    """The process's one :class:`DiskCache` for a file and settings.

    Every clone and every unpickled copy then shares one connection and one set of counters.
    """
    key = (str(_database_file(path)), max_bytes, float(timeout), bool(check_on_open))
    with _DISK_CACHES_LOCK:
        cache = _DISK_CACHES.get(key)
        if cache is None:
            cache = DiskCache(
                key[0], max_bytes=max_bytes, timeout=timeout, check_on_open=check_on_open
            )
            _DISK_CACHES[key] = cache
        return cache
