"""This rank's training stream as the Trainer's dataset: a ``torch.utils.data.IterableDataset`` over the rank's own
``datasets`` stream (:mod:`hf_finetune.data.streaming`) that decodes and transforms each batch with the map-style
batch transform (:func:`hf_finetune.data.transforms.make_batch_transform`: an image that fails to decode is
skipped, counted and reported), in threads, one chunk ahead of the one being trained on; the stream's raw rows
are read in a thread of their own, one more chunk ahead.

* An epoch is exactly ``length`` examples (the same on every rank) when the size is known (``SizedRankStream``,
  which has a ``len``); otherwise the stream is read pass after pass (``set_epoch`` between passes) and the
  Trainer stops at ``max_steps``.
* ``set_epoch(n)`` reshuffles (the seeded shard order and buffer of epoch ``n``); ``resume_at(n)`` makes the next
  pass start ``n`` examples into it, skipping raw rows without decoding them: the order is replayed from its
  seed, so a resumed run sees exactly what an uninterrupted one would
  (:mod:`hf_finetune.training.stream_state`).
* A shard that turns out missing or truncated while streaming is one :class:`~hf_finetune.errors.DataError`
  naming it.
* A pass that ends (its ``length`` reached, or the stream's end) or is stopped (``max_steps``) is closed in a
  thread of its own, where ``datasets``' pause when a parquet stream stops is waited out beside training
  (:mod:`hf_finetune.data.stream_pause`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from hf_finetune.data.file_sources import read_error
from hf_finetune.data.stream_pause import close_in_background, read_without_pause
from hf_finetune.errors import DataError, HfFinetuneError

__all__ = ["RankStream", "SizedRankStream", "rank_stream"]


class RankStream(torch.utils.data.IterableDataset):
    """This rank's stream, transformed batch by batch (``chunk`` examples) in ``threads`` threads."""

    own_rank_stream = True  # the Trainer's loader must not split it again (training/stream_state.py)

    def __init__(
        self, stream, transform: Callable, chunk: int, threads: int = 1, length: int | None = None, where=None
    ):
        self.stream = stream
        self.transform = transform
        self.chunk = max(1, int(chunk))
        self.threads = max(0, int(threads))
        self.length = length
        self.where = where  # the Stream it reads (to name a shard that fails), or None
        self.epoch = 0
        self.skip = 0
        self._last_good: dict | None = None  # the last example whose image decoded (see _whole)

    @property
    def features(self):
        return self.stream.features

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, examples: int) -> None:
        """The next pass starts ``examples`` raw examples in (read, not decoded)."""
        self.skip = int(examples)

    def _passes(self) -> Iterator[dict]:
        if self.length is not None:
            yield from self._pass(self.epoch, self.length)
            return
        for epoch in itertools.count(self.epoch):
            yield from self._pass(epoch, None)

    def _pass(self, epoch: int, length: int | None) -> Iterator[dict]:
        """One pass over the stream (``length`` examples, or until it ends), read by :meth:`__iter__` without
        ``datasets``' pause at its stop, closed in the background when it ends or is stopped."""
        self.stream.set_epoch(epoch)
        rows = iter(self.stream)
        try:
            yield from itertools.islice(rows, length)
        finally:
            close_in_background(rows)

    def __iter__(self) -> Iterator[dict]:
        skip, self.skip = self.skip, 0
        rows = itertools.islice(self._raw(), skip, None)
        if self.threads == 0:
            yield from self._inline(rows)
            return
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(self.threads) as pool:
            reading = reader.submit(read_without_pause, rows, self.chunk)  # raw rows, read beside training
            pending = None  # the chunk being decoded while the one before it trains
            while True:
                chunk = reading.result()
                if chunk:
                    reading = reader.submit(read_without_pause, rows, self.chunk)
                submitted = self._submit(pool, chunk) if chunk else None
                if pending is not None:
                    size, futures = pending
                    yield from self._whole(list(self._in_order(size, [f.result() for f in futures])))
                if submitted is None:
                    return
                pending = (len(chunk), submitted)

    def _inline(self, rows: Iterator[dict]) -> Iterator[dict]:
        """Read and transform in the training thread, one chunk at a time: where every core computes (no loader
        worker), a thread decoding beside the compute threads would contend with them for the cores."""
        while chunk := read_without_pause(rows, self.chunk):
            yield from self._whole(list(self._in_order(len(chunk), [self._transform(chunk)])))

    def _whole(self, examples: list[dict]) -> list[dict]:
        """A chunk (one training batch: ``chunk`` is the batch size, and a resume skips whole batches) whose images
        all failed to decode takes the last good image and label, as a map-style batch does
        (:func:`hf_finetune.data.transforms.make_batch_transform`); a part of a chunk decides nothing alone."""
        good = [e for e in examples if e.get("pixel_values") is not None]
        if good:
            self._last_good = good[-1]
        elif examples and "pixel_values" in examples[0] and self._last_good is not None:
            keep = {k: v for k, v in self._last_good.items() if k in ("pixel_values", "labels")}
            examples = [{**example, **keep} for example in examples]
        return examples

    def _submit(self, pool, chunk: list[dict]) -> list:
        """The chunk split among the threads (every ``threads``-th example each), submitted."""
        count = min(self.threads, len(chunk))
        return [pool.submit(self._transform, chunk[i::count]) for i in range(count)]

    @staticmethod
    def _in_order(size: int, parts: list[dict]) -> Iterator[dict]:
        """The transformed examples of one chunk (``parts``: every ``len(parts)``-th example each), in the stream's
        order."""
        for i in range(size):
            part = parts[i % len(parts)]
            yield {name: values[i // len(parts)] for name, values in part.items()}

    def _raw(self) -> Iterator[dict]:
        try:
            yield from self._passes()
        except HfFinetuneError:
            raise
        except Exception as err:  # a shard missing or truncated since the run started
            if self.where is not None and self.where.source is not None:
                raise read_error(self.where.source, self.where.key, err) from None
            where = self.where.where if self.where is not None else "the stream"
            raise DataError(f"{where}: could not be read ({type(err).__name__}: {err})") from None

    def _transform(self, rows: list[dict]) -> dict[str, list]:
        batch = {name: [row[name] for row in rows] for name in rows[0]}
        out = self.transform(batch)
        out["key"] = batch["key"]
        return out


class SizedRankStream(RankStream):
    """A :class:`RankStream` whose epochs have a known number of examples (``num_train_epochs`` works)."""

    def __len__(self) -> int:
        return self.length


def rank_stream(stream, transform: Callable, chunk: int, threads: int, length: int | None, where: Any = None):
    """A :class:`SizedRankStream` when ``length`` is known, else a :class:`RankStream`."""
    kind = RankStream if length is None else SizedRankStream
    return kind(stream, transform, chunk, threads, length, where)
