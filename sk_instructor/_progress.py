"""Progress bars: texts (or rows) done, with a rate and time left by text length.

The engine sorts the texts of each call longest first, so texts per second start slow and the
time left would start far too long. A bar here counts texts, but advances, and measures its
rate and time left, by *work*: the characters of each text's model input (instruction and text,
the text counted up to about what the model reads), which the encoding cost follows. As the
engine reports texts done, the longest of the call are credited first, the way it encodes them.

In a Jupyter notebook the bar is a widget when ipywidgets is installed, and text otherwise. The
finished bar is drawn once: reaching the end does not redraw it (closing draws it), and a
warning printed once the bar is full closes the bar first instead of redrawing it after.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np
from tqdm import tqdm

__all__ = ["CHARACTERS_PER_TOKEN", "Progress", "in_notebook", "text_work"]

_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {rows} [{elapsed}<{remaining}, {rate_fmt}]"
# A token is rarely longer than 8 characters: past that many per token of the window, a
# text's characters are not read by the model and are not work (a 20 MB text would otherwise
# stall the estimate).
CHARACTERS_PER_TOKEN = 8


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (checked without importing IPython)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def text_work(instructions: list[str], texts: list[str], max_seq_length: int) -> np.ndarray:
    """The work of each text: characters of its model input, the text counted up to about
    what ``max_seq_length`` tokens read."""
    cap = CHARACTERS_PER_TOKEN * max_seq_length
    return np.fromiter(
        (
            len(instruction) + min(len(text), cap)
            for instruction, text in zip(instructions, texts, strict=True)
        ),
        dtype=np.int64,
        count=len(texts),
    )


@cache
def _bar_class(widget: bool) -> type:
    """A tqdm bar of work that shows texts done out of all; a notebook widget if asked."""
    if widget:
        from tqdm.notebook import tqdm as base
    else:
        base = tqdm

    class RowsBar(base):
        def __init__(self, *args: Any, rows: str = "", **kwargs: Any) -> None:
            self.rows = rows  # before tqdm's __init__, which draws the bar
            super().__init__(*args, **kwargs)

        @property
        def format_dict(self) -> dict[str, Any]:
            return {**super().format_dict, "rows": self.rows}

    return RowsBar


class Progress:
    """Rows and work done out of all, shown as a bar on ``file`` when ``show``.

    Parameters
    ----------
    n_rows : int
        Rows (texts) of the input.
    total_work : int
        Work of all rows (see the module's description).
    rows_done, work_done : int, default=0
        Already done (resumed from an earlier run): not counted in the rate.
    show : bool
        Draw the bar; the counts are kept either way.
    file : stream or None, default=None
        Where to draw it; ``sys.stderr`` when None.
    noun : str, default="rows"
        What a row is called on the bar (``"texts"``).
    leave : bool, default=True
        Keep the finished bar on screen.
    """

    def __init__(
        self,
        *,
        n_rows: int,
        total_work: int,
        rows_done: int = 0,
        work_done: int = 0,
        show: bool,
        file: Any = None,
        noun: str = "rows",
        leave: bool = True,
    ) -> None:
        self.n_rows = n_rows
        self.total_work = max(total_work, 1)
        self.rows_done = rows_done
        self.work_done = work_done
        self._noun = noun
        self._file = file if file is not None else sys.stderr
        # A widget in a notebook where ipywidgets can draw one; text everywhere else.
        widget = show and in_notebook() and importlib.util.find_spec("ipywidgets") is not None
        self._bar = _bar_class(widget)(
            total=self.total_work,
            initial=work_done,
            rows=self._rows_text(),
            desc="Embedding",
            unit=" chars",
            unit_scale=True,
            bar_format=_BAR_FORMAT,
            dynamic_ncols=True,
            disable=not show,
            file=self._file,
            leave=leave,
        )
        self._closed = False

    def piece(self, weights: np.ndarray) -> _Piece:
        """What the engine advances while it embeds one piece of rows of these ``weights``."""
        return _Piece(self, weights)

    def advance(self, rows: int, work: int) -> None:
        """Count ``rows`` more rows done, holding ``work`` more work."""
        self.rows_done += rows
        self.work_done += work
        self._bar.rows = self._rows_text()
        if self.rows_done >= self.n_rows:
            # Not drawn now: close() draws the finished bar, and drawing it here as well
            # printed the last line twice wherever stderr is not a terminal.
            self._bar.n = self.work_done
        else:
            self._bar.update(work)

    def write(self, message: str) -> None:
        """Print ``message`` on a line of its own, above the bar while it runs."""
        if not self._closed and self.rows_done >= self.n_rows:
            self.close()  # a finished bar is closed, not drawn again below the message
        if self._closed or self._bar.disable:
            print(message, file=self._file)
        else:
            tqdm.write(message, file=self._file)

    def close(self) -> None:
        """Draw the bar a last time (once) and stop."""
        if not self._closed:
            self._closed = True
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _rows_text(self) -> str:
        return f"{self.rows_done:,}/{self.n_rows:,} {self._noun}"


class _Piece:
    """The progress object handed to the engine for one call: ``update(n)`` for ``n`` more rows
    done, which are credited with the largest weights not yet credited (longest first)."""

    def __init__(self, progress: Progress, weights: np.ndarray) -> None:
        self._progress = progress
        ordered = np.sort(np.asarray(weights, dtype=np.int64))[::-1]
        self._cumulative = np.concatenate([[0], np.cumsum(ordered)])
        self._done = 0

    def update(self, n: int = 1) -> None:
        n = min(int(n), len(self._cumulative) - 1 - self._done)
        if n <= 0:
            return
        work = self._cumulative[self._done + n] - self._cumulative[self._done]
        self._done += n
        self._progress.advance(n, int(work))

    def finish(self) -> None:
        """Count the rows the engine did not report (rows written as zero vectors)."""
        self.update(len(self._cumulative) - 1 - self._done)


# Show a progress bar by default only for inputs at least this large (on a terminal or in a
# notebook).
_PROGRESS_MIN_ROWS = 256
# INSTRUCTOR's window, for the estimate when max_seq_length is not set.
_USUAL_MAX_SEQ_LENGTH = 512


@contextlib.contextmanager
def text_progress(
    show: bool | None,
    instructions: list[str],
    texts: list[str | None],
    max_seq_length: int | None,
    *,
    missing: str = "empty",
    outside: Any = None,
) -> Iterator[Any]:
    """What an estimator's call hands the engine to advance: ``outside`` (a caller's own bar)
    when given, else a bar of its own where one is wanted (``show``; ``None``: for large inputs
    on a terminal or in a Jupyter notebook), else None.

    The bar counts the texts that go through the engine (not the missing ones that
    ``missing="zero"`` turns into zero rows) and is timed in characters: the engine encodes
    the longest texts first.
    """
    if outside is not None:
        yield outside
        return
    encoded = [
        (instruction, text or "")
        for instruction, text in zip(instructions, texts, strict=True)
        if not (text is None and missing == "zero")
    ]
    if show is None:
        show = len(encoded) >= _PROGRESS_MIN_ROWS and (_is_terminal(sys.stderr) or in_notebook())
    if not show:
        yield None
        return
    work = text_work(
        [instruction for instruction, _ in encoded],
        [text for _, text in encoded],
        max_seq_length or _USUAL_MAX_SEQ_LENGTH,
    )
    bar = Progress(
        n_rows=len(encoded), total_work=int(work.sum()), show=True, noun="texts", leave=False
    )
    with bar:
        piece = bar.piece(work)
        yield piece
        piece.finish()


def _is_terminal(stream: Any) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
