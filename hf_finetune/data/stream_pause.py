"""``datasets``' pause when a stream stops, taken off the thread that reads the stream.

When the reader threads of a shuffled stream from ``datasets``' parquet builder stop (its shards read to the end,
or the stream closed early; a Hub dataset: parquet files named by ``train_file`` are read without pyarrow's
threads, :mod:`hf_finetune.data.streaming`), ``datasets`` sleeps ``datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN`` (5 s) in the reading thread, so that a
process ending just after a scan does not end while pyarrow's threads still run (apache/arrow#45214). Paid by the
training loop, that is 5 s of training lost per pass and per stop.

Here the stream is read with that pause set to 0 (:func:`read_without_pause`, only while a read runs), and every
pass that ends or is stopped is handed to :func:`close_in_background`: a thread that closes the stream's generator
and then waits out the whole pause, measured from the stop. The threads are not daemons: the interpreter waits for
them before it exits, so pyarrow's threads still get their time; :func:`join_closers` waits for them sooner.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import datasets

__all__ = ["close_in_background", "join_closers", "read_without_pause"]

_closers: list[threading.Thread] = []
_lock = threading.Lock()
_held: list[float] = []  # the pause set aside by each read in progress (reads of several streams may nest)


def read_without_pause(rows: Iterator, count: int | None) -> list:
    """The next ``count`` items of ``rows`` (all when None), with ``datasets``' pause at a stop set to 0 while
    they are read; whoever stops the stream must then call :func:`close_in_background` on it."""
    with _lock:
        _held.append(datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN)
        datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    try:
        return list(itertools.islice(rows, count))
    finally:
        with _lock:
            datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = _held.pop()


def _pause_seconds() -> float:
    """``datasets``' pause: the one set aside by the outermost read in progress, else the configured one."""
    with _lock:
        return float(_held[0] if _held else datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN)


def _close_then_pause(close, seconds: float) -> None:
    started = time.monotonic()
    if close is not None:
        close()
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))


def close_in_background(iterator) -> None:
    """Close ``iterator`` (a stream's generator, read to its end or no longer read) in a non-daemon thread that
    then sleeps the rest of ``datasets``' pause (``SLEEP_TIME_ON_THREADS_SHUTDOWN``), counted from now."""
    seconds = _pause_seconds()
    thread = threading.Thread(
        target=_close_then_pause,
        args=(getattr(iterator, "close", None), seconds),
        name="hf-finetune-stream-close",
    )
    with _lock:
        _closers[:] = [t for t in _closers if t.is_alive()]
        _closers.append(thread)
    thread.start()


def join_closers(timeout: float | None = None) -> int:
    """Wait for the streams being closed in the background; the number still closing after ``timeout``."""
    with _lock:
        pending = list(_closers)
    for thread in pending:
        thread.join(timeout)
    with _lock:
        _closers[:] = [t for t in _closers if t.is_alive()]
        return len(_closers)
