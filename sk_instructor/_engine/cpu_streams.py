"""Batches encoded side by side on the CPU: several *streams*, each a thread running whole
batches with its share of torch's threads.

Why: torch runs an operation on its threads in lock step, each taking a slice and all meeting
at the end. When another process takes one of the cores, the thread that loses its core holds
the others up at every meeting, hundreds of times per batch. On a 2-core machine with one core
kept busy, two threads in lock step were *slower* than one (all-MiniLM-L6-v2, float32: 63.9
texts/s at 2 threads, 104.0 at 1). Two streams of one thread share no meeting: each runs at the
speed of the core it has, and together they use what the other process leaves (129.1 texts/s),
while on an idle machine they match or beat the lock step (209.3 against 192.0 texts/s;
bfloat16: 549.4 against 542.7 idle, 360.8 against 156.9 busy). Figures:
``benchmarks/cpu_runtimes.py --loads idle,busy``, README "Speed on a CPU".

The layout (:func:`plan_layout`): as many streams as torch has threads, but no more than there
are batches to run, the threads shared out between them; so a call with a single batch still
gets every thread, and ``torch.set_num_threads`` (or ``$SK_INSTRUCTOR_NUM_THREADS``) still
bounds the cores used in all. ``$SK_INSTRUCTOR_CPU_STREAMS`` caps the streams (1: one batch at
a time on every thread, the layout before streams).

torch's thread count is process-wide: :func:`cpu_layout` sets the per-stream count for the
time of an encode and puts the user's back after it, also on errors. Encodes running at once in
one process share the layout the first of them chose, and the stream threads, which are started
once per process and kept (see ``_POOLS``: threads ended per encode made forked children hang).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch

from .environment import positive_int_from_env

__all__ = [
    "STREAMS_ENV",
    "StreamLayout",
    "cpu_layout",
    "current_layout",
    "plan_layout",
    "run_in_streams",
    "streams_from_env",
]

# The environment variable that caps the streams of a CPU encode (a positive integer).
STREAMS_ENV = "SK_INSTRUCTOR_CPU_STREAMS"

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class StreamLayout:
    """How a CPU encode runs: ``streams`` batches at once, each on ``threads`` torch threads."""

    streams: int
    threads: int


def plan_layout(total_threads: int, n_batches: int, max_streams: int | None = None) -> StreamLayout:
    """One stream per thread, at most one per batch (and at most ``max_streams``), the threads
    shared out equally.

    Examples
    --------
    >>> plan_layout(2, 17)
    StreamLayout(streams=2, threads=1)
    >>> plan_layout(2, 1)
    StreamLayout(streams=1, threads=2)
    >>> plan_layout(16, 4)
    StreamLayout(streams=4, threads=4)
    >>> plan_layout(8, 100, max_streams=1)
    StreamLayout(streams=1, threads=8)
    """
    total_threads = max(int(total_threads), 1)
    streams = min(total_threads, max(int(n_batches), 1))
    if max_streams is not None:
        streams = min(streams, max_streams)
    return StreamLayout(streams=streams, threads=max(total_threads // streams, 1))


def streams_from_env() -> int | None:
    """``$SK_INSTRUCTOR_CPU_STREAMS`` as a positive integer, or ``None`` when unset or empty; a
    ValueError naming the variable refuses anything else."""
    return positive_int_from_env(
        STREAMS_ENV,
        meaning="the most batches a CPU encode runs at once",
        advice="1 runs one batch at a time on every thread; unset it for one per thread",
    )


# The encodes running now, the layout the first of them chose and torch's thread count before
# it, to put back when the last one ends.
_GUARD = threading.Lock()
_active = 0
_layout: StreamLayout | None = None
_threads_before: int | None = None


@contextmanager
def cpu_layout(n_batches: int, *, allow_streams: bool = True) -> Iterator[StreamLayout]:
    """Run a CPU encode of ``n_batches`` batches under the layout planned for it: torch's
    threads are set to the per-stream count inside, and put back when the last encode running
    at once ends (errors included).

    ``allow_streams=False`` (a compiled encoder: inductor's code keeps the thread count it was
    compiled at) keeps one stream on every thread.
    """
    global _active, _layout, _threads_before
    with _GUARD:
        if _active == 0:
            max_streams = streams_from_env() if allow_streams else 1
            _threads_before = torch.get_num_threads()
            _layout = plan_layout(_threads_before, n_batches, max_streams)
            if _layout.threads != _threads_before:
                torch.set_num_threads(_layout.threads)
            layout = _layout
        else:
            # Another encode set the threads: share its layout rather than change them under it.
            streams = min(_layout.streams, max(n_batches, 1)) if allow_streams else 1
            layout = StreamLayout(streams=streams, threads=_layout.threads)
        _active += 1
    try:
        yield layout
    finally:
        with _GUARD:
            _active -= 1
            if _active == 0:
                if torch.get_num_threads() != _threads_before:
                    torch.set_num_threads(_threads_before)
                _layout = _threads_before = None


def current_layout() -> StreamLayout:
    """The layout of the CPU encodes running now; outside one, a single stream on torch's
    threads. (The OpenVINO backend compiles its model for it.)"""
    layout = _layout
    if layout is None:
        return StreamLayout(streams=1, threads=torch.get_num_threads())
    return layout


def run_in_streams(function: Callable[[T], R], items: Iterable[T], streams: int) -> Iterator[R]:
    """``function(item)`` for each item, in order, computed ``streams`` at a time in threads.

    Results come back in the order of ``items`` (the caller stores them as they come). When a
    call fails, or the caller stops reading, the calls not started are cancelled and the
    running ones waited for before the error goes on: no batch of this encode runs after it.
    Each call runs in inference mode (torch's grad mode is per thread).

    The threads are the process's streams (:func:`_stream_pool`), started once and kept, not
    started and ended per encode.
    """
    items = list(items)
    if streams <= 1 or len(items) <= 1:
        for item in items:
            yield function(item)
        return

    def call(item: T) -> R:
        with torch.inference_mode():
            return function(item)

    futures = [_stream_pool(streams).submit(call, item) for item in items]
    try:
        for future in futures:
            yield future.result()
    finally:
        for future in futures:
            future.cancel()
        wait(futures)


# The stream threads, one pool per stream count met, kept for the life of the process. A thread
# that ends takes per-thread state of the math libraries with it (MKL's GEMM buffers among
# them) in destructors that run after Python has let the thread go: a fork at that moment left
# the child spinning forever on MKL's allocator lock (2 of 40 forks after encodes that started
# and ended their threads). Threads kept for good never end during an encode or a fork.
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_GUARD = threading.Lock()


def _stream_pool(streams: int) -> ThreadPoolExecutor:
    """The pool of ``streams`` threads, started on first use. Encodes running at once share it,
    so together they run at most ``streams`` batches at a time."""
    with _POOLS_GUARD:
        pool = _POOLS.get(streams)
        if pool is None:
            pool = _POOLS[streams] = ThreadPoolExecutor(
                max_workers=streams, thread_name_prefix=f"sk-instructor-stream-{streams}"
            )
        return pool


def _after_fork_in_child() -> None:
    # A child forked during an encode has none of its threads: it starts with no encode running
    # (torch's threads are the registry's business after a fork).
    # The stream threads are not in the child either: its pools start afresh on first use.
    global _GUARD, _POOLS_GUARD, _active, _layout, _threads_before
    _GUARD = threading.Lock()
    _POOLS_GUARD = threading.Lock()
    _POOLS.clear()
    _active = 0
    _layout = _threads_before = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
