"""When the command line commits: every ``--chunk-size`` rows or ``--commit-seconds``, whichever
comes first, so that an interrupt never loses more than about that long of work.

Rows are embedded in *pieces*, one encoder call each, and the pieces done since the last commit
wait in a :class:`PendingPart`; a commit writes them as one *part* of the output
(:mod:`~sk_instructor._cli.output_parts`). :class:`CommitSchedule` sizes the pieces from the
speed measured so far, to take about a quarter of the commit interval each (a commit is then at
most about 1.25 intervals after the previous one, whatever the speed of the model and the length
of the texts), and says when the pending rows are due.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["CommitSchedule", "PendingPart"]

# Rows of the first piece, before any speed is known; later pieces grow at most this factor at
# a time, so that one fast piece (say of short texts) cannot make the next one far too long.
FIRST_PIECE_ROWS = 16
_GROWTH = 4
# A piece takes about this fraction of the commit interval.
_PIECE_FRACTION = 0.25


class CommitSchedule:
    """Piece sizes and commit times for one run.

    Parameters
    ----------
    part_rows : int
        Commit at least every ``part_rows`` rows (``--chunk-size``; a part never holds more).
    commit_seconds : float
        Commit at least every ``commit_seconds`` of work; 0 commits after every piece.
    clock : callable
        Seconds, monotonic (``time.monotonic``; tests pass a fake one).

    Examples
    --------
    >>> from sk_instructor._cli.commits import CommitSchedule
    >>> now = [0.0]
    >>> schedule = CommitSchedule(part_rows=1000, commit_seconds=30, clock=lambda: now[0])
    >>> schedule.piece_rows(n_pending=0)
    16
    >>> now[0] += 1.0  # 16 rows in a second: a piece of 7.5 s would hold 120 rows
    >>> schedule.piece_done(16, seconds=1.0)
    >>> schedule.piece_rows(n_pending=16), schedule.commit_due(n_pending=16)
    (64, False)
    >>> now[0] += 30.0
    >>> schedule.commit_due(n_pending=80)
    True
    """

    def __init__(self, part_rows: int, commit_seconds: float, clock: Callable[[], float]) -> None:
        self.part_rows = part_rows
        self.commit_seconds = commit_seconds
        self._clock = clock
        self._rows = FIRST_PIECE_ROWS
        self._last_commit = clock()

    def piece_rows(self, n_pending: int) -> int:
        """Rows of the next piece, given ``n_pending`` rows already waiting for a commit."""
        return max(1, min(self._rows, self.part_rows - n_pending))

    def piece_done(self, n_rows: int, seconds: float) -> None:
        """Record that a piece of ``n_rows`` took ``seconds``; sizes the next one."""
        if seconds <= 0:
            wanted = _GROWTH * n_rows
        else:
            wanted = int(n_rows / seconds * self.commit_seconds * _PIECE_FRACTION)
        self._rows = max(1, min(wanted, _GROWTH * max(n_rows, 1), self.part_rows))

    def commit_due(self, n_pending: int) -> bool:
        """Whether the ``n_pending`` rows waiting should be committed now."""
        if n_pending == 0:
            return False
        waited = self._clock() - self._last_commit
        return n_pending >= self.part_rows or waited >= self.commit_seconds

    def committed(self) -> None:
        """Record that the pending rows were just committed."""
        self._last_commit = self._clock()


class PendingPart:
    """Rows embedded since the last commit, from input row ``first_row`` on.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_instructor._cli.commits import PendingPart
    >>> pending = PendingPart(first_row=10)
    >>> pending.add(None, np.zeros((3, 2), dtype=np.float32))
    >>> pending.add(None, np.ones((2, 2), dtype=np.float32))
    >>> pending.first_row, pending.n_rows
    (10, 5)
    """

    def __init__(self, first_row: int) -> None:
        # (first row, pieces) in one attribute, replaced in one assignment by commit(): a
        # Ctrl-C can never leave the rows committed but the first row not moved on.
        self._state: tuple[int, list[tuple[Any, np.ndarray]]] = (first_row, [])

    @property
    def first_row(self) -> int:
        return self._state[0]

    @property
    def n_rows(self) -> int:
        return sum(len(vectors) for _, vectors in self._state[1])

    def add(self, ids: pa.ChunkedArray | None, vectors: np.ndarray) -> None:
        """Append the ids (or None) and vectors of the next piece of rows."""
        # One append: a Ctrl-C between two statements never leaves ids without their vectors.
        self._state[1].append((ids, vectors))

    def commit(self, parts: Any, *, embedding_column: str, id_column: str | None) -> int:
        """Write the pending rows as one part of ``parts`` (an OutputParts); returns rows.

        Safe to call again after an interruption or a failed write inside it (Ctrl-C, a full
        disk): the part is written whole under the same name, or not at all, and the rows stay
        pending until it is. A full disk raises
        :class:`~sk_instructor._cli.output_parts.OutputWriteError`, naming the part's file.
        """
        first_row, pieces = self._state
        if not pieces:
            return 0
        vectors = np.concatenate([vectors for _, vectors in pieces])
        ids = None
        if id_column is not None:
            arrays = [array for piece_ids, _ in pieces for array in piece_ids.chunks]
            ids = pa.chunked_array(arrays, type=pieces[0][0].type)
        parts.write_part(
            first_row, vectors, embedding_column=embedding_column, ids=ids, id_column=id_column
        )
        self._state = (first_row + len(vectors), [])
        return len(vectors)
