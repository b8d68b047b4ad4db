"""Streamed data (``streaming: true``): the training split read while training, through ``datasets``' own
streaming loaders, never in full before the first step.

* Sources: a Hub dataset (``dataset_name``: ``load_dataset(name, split=..., streaming=True)``), and
  ``train_file``/``validation_file`` (or a ``dataset_name`` that is a file spec) given as parquet, arrow or
  WebDataset ``.tar`` shards (a file, a glob or a folder: :func:`hf_finetune.data.data_files.data_source`), read by
  ``load_dataset(builder, data_files=..., streaming=True)`` (parquet files a page at a time instead:
  :func:`_parquet_tables`); a ``save_to_disk`` folder is ``load_from_disk(...).to_iterable_dataset(num_shards=...)``.
* Labels: the label feature's ``ClassLabel`` names (or a sequence of ``ClassLabel``: multi-label), else the
  recipe's ``labels:`` (:mod:`hf_finetune.data.stream_labels`).
* Size: from metadata only (the Hub's ``info.splits``, parquet footers, arrow batch headers, a saved dataset's
  length); unknown for WebDataset shards, where ``max_steps`` must be set.
* Processes: each rank reads its own share (``datasets.distributed.split_dataset_by_node``) after a seeded shuffle
  of the shard order and a seeded buffer (``shuffle_buffer_size``); every rank trains on the same number of
  examples per epoch (:func:`rank_length`), so no rank waits for another at the end of an epoch.
* Validation: read through the same stream once and kept map-style (a ``datasets.Dataset`` in ``datasets``' cache,
  never in the output folder), so that the Trainer's evaluation counts each image exactly once under any number
  of processes (docs/streaming.md says why).
"""

from __future__ import annotations

import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow
import pyarrow.ipc
import pyarrow.parquet
from datasets.distributed import split_dataset_by_node
from datasets.table import table_cast

from hf_finetune.config.arguments import DataArguments
from hf_finetune.data.columns import find_columns
from hf_finetune.data.data_files import DataSource, data_source, describe_source, is_data_spec
from hf_finetune.data.file_sources import read_error, webdataset_label
from hf_finetune.data.hub_dataset import VALIDATION_SPLIT_NAMES
from hf_finetune.data.image_check import reset_decode_failures
from hf_finetune.data.multi_label import is_multi_label
from hf_finetune.data.stream_labels import StreamLabels, stream_labels
from hf_finetune.data.stream_pause import close_in_background, read_without_pause
from hf_finetune.errors import ConfigError, DataError

__all__ = [
    "STREAM_BUILDERS",
    "Stream",
    "StreamedData",
    "load_streamed_data",
    "rank_length",
    "refuse_unstreamable",
]

logger = logging.getLogger(__name__)

STREAM_BUILDERS = ("parquet", "arrow", "webdataset", "disk")
_IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
_BATCH = 100  # rows of a shard read (parquet) and labelled (the contract's map) at a time, per open shard
_PARQUET_BUFFER = 1 << 20  # bytes of a parquet shard read at once (its pages are read through this buffer)
_READ_ERRORS = (OSError, ValueError, EOFError, tarfile.TarError, pyarrow.ArrowException)


@dataclass
class Stream:
    """One split as a stream: ``datasets.IterableDataset`` of raw rows, its size and shard sizes when the metadata
    gives them, where it came from, and the files it reads (to name a missing or truncated one)."""

    dataset: Any
    where: str
    size: int | None = None
    shard_sizes: list[int] | None = None
    source: DataSource | None = None
    key: str = "dataset_name"


@dataclass
class StreamedData:
    """What :func:`load_streamed_data` returns, in the shape of :class:`~hf_finetune.data.loading.LoadedData`:
    ``dataset["train"]`` is this rank's stream (contract columns ``image``, ``label``, ``key``), the other splits
    are map-style; ``train_size``/``rank_size``: examples in all and per rank per epoch (None: unknown)."""

    dataset: dict[str, Any]
    labels: list[str]
    source: str
    train_size: int | None
    rank_size: int | None
    train: Stream | None = None
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    streaming: bool = True

    @property
    def multi_label(self) -> bool:
        return is_multi_label(self.dataset["train"])

    def bad_files_summary(self) -> str | None:
        return None  # nothing is scanned before training; decode failures are reported as they happen

    def summary(self) -> str:
        size = (
            f"{self.train_size} images" if self.train_size is not None else "size unknown from its metadata"
        )
        per_rank = f", {self.rank_size} per process per epoch" if self.rank_size is not None else ""
        lines = [f"{len(self.labels)} classes from {self.source}", f"  train: streamed, {size}{per_rank}"]
        lines += [
            f"  {name}: {len(split)} images (read once)"
            for name, split in self.dataset.items()
            if name != "train"
        ]
        return "\n".join(lines)

    def head_sample(self, count: int) -> datasets.Dataset:
        """The first ``count`` examples of this rank's stream, map-style: what fits the head's rows and biases
        before training (``label_bias_from_data``) without a pass over the data; the stream is closed in the
        background (:func:`~hf_finetune.data.stream_dataset.close_in_background`)."""
        stream = iter(self.dataset["train"])
        rows = read_without_pause(stream, count)
        close_in_background(stream)
        return datasets.Dataset.from_list(rows, features=self.dataset["train"].features)


def load_streamed_data(
    data_args: DataArguments, seed: int = 42, rank: int = 0, world_size: int = 1, cache_dir: str | None = None
) -> StreamedData:
    """The streamed training split of ``data_args`` (this rank's share, shuffled), its validation (and test)
    split read once, and the class names; see the module doc."""
    reset_decode_failures(strict=bool(data_args.strict))
    train = _open(data_args, "train", world_size, cache_dir)
    image_column, label_column = find_columns(train.dataset.features, data_args, train.where)
    labels, multi = stream_labels(
        train.dataset.features[label_column], data_args.labels, label_column, train.where
    )
    contract = {
        "train": _to_contract(train, labels, multi, image_column, label_column),
    }
    for split in ("validation", "test"):
        opened = _open(data_args, split, world_size, cache_dir)
        if opened is None and split == "validation":
            raise DataError(
                "streaming: no validation split; set validation_file (or name a split of dataset_name with "
                "validation_split): holding out a share of a stream would need a pass over it first"
            )
        if opened is not None:
            columns = find_columns(opened.dataset.features, data_args, opened.where)
            limit = data_args.max_eval_samples if split == "validation" else None
            contract[split] = _read_once(_to_contract(opened, labels, multi, *columns), opened, limit)
    stream = contract["train"]
    if data_args.shuffle_buffer_size > 0:
        stream = stream.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
    if world_size > 1:
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    per_rank = rank_length(train.size, train.shard_sizes, train.dataset.n_shards, world_size)
    if data_args.max_train_samples is not None:
        share = max(1, data_args.max_train_samples // world_size)
        per_rank = share if per_rank is None else min(per_rank, share)
    if per_rank is not None and train.size is not None and per_rank * world_size < train.size:
        logger.info(
            "streaming: %d processes train on %d examples each per epoch; %d of the %d are not reached in an epoch "
            "(unequal shares%s)",
            world_size,
            per_rank,
            train.size - per_rank * world_size,
            train.size,
            " or max_train_samples" if data_args.max_train_samples is not None else "",
        )
    return StreamedData(
        {"train": stream, **{k: v for k, v in contract.items() if k != "train"}},
        labels,
        train.where,
        train.size,
        per_rank,
        train=train,
    )


def rank_length(
    size: int | None, shard_sizes: list[int] | None, n_shards: int, world_size: int
) -> int | None:
    """Examples every rank trains on per epoch: the same on all (a rank whose stream ended first would leave the
    others waiting), and no more than the smallest share ``split_dataset_by_node`` can give a rank. Whole shards
    go to each rank when ``world_size`` divides their number (the smallest share is then the smallest shards'
    sum), else every ``world_size``-th example (at least ``size // world_size``). None when unknown."""
    if size is None:
        return None
    if world_size == 1:
        return size
    if n_shards % world_size:
        return size // world_size
    if shard_sizes is None or len(shard_sizes) != n_shards:
        return None
    return sum(sorted(shard_sizes)[: n_shards // world_size])


def _open(data_args: DataArguments, split: str, world_size: int, cache_dir: str | None) -> Stream | None:
    """The raw stream of ``split`` (``train``, ``validation``, ``test``), or None when the source has none."""
    spec_key = {"train": "train_file", "validation": "validation_file", "test": "test_file"}[split]
    spec = getattr(data_args, spec_key)
    name = data_args.dataset_name
    if spec is None and name is not None:
        local = Path(os.path.expanduser(name))
        if local.is_dir() and data_source(name, "dataset_name").builder == "disk":  # its splits, if a dict
            return _open_saved(
                data_source(name, "dataset_name"), "dataset_name", name, world_size, data_args, split
            )
        if is_data_spec(name) and not local.is_dir():  # data files: all of them train
            if split != "train":
                return None
            spec, spec_key = name, "dataset_name"
    if spec is not None:
        found = data_source(str(spec), spec_key)
        if found.builder == "disk":
            return _open_saved(found, spec_key, str(spec), world_size, data_args, split)
        return _open_files(found, spec_key, str(spec), world_size, data_args.label_column_name)
    if name is None:
        return None
    return _open_hub(data_args, split, cache_dir)  # a Hub id, or a local folder datasets lays out in splits


def _open_files(found: DataSource, key: str, spec: str, world_size: int, label_column: str | None) -> Stream:
    """A stream of local shards (or a save_to_disk folder); their sizes from metadata; a missing or truncated
    shard that the metadata reveals is one line naming it."""
    if found.builder not in STREAM_BUILDERS:
        raise DataError(
            f"{key}: {spec} is read by datasets' {found.builder} builder; streaming reads parquet, arrow or "
            "WebDataset .tar shards, a save_to_disk folder or a Hub dataset (set streaming: false for this source)"
        )
    where = f"{key}: {describe_source(found, spec)}"
    sizes = [_shard_size(found.builder, path, key) for path in found.data_files]
    try:
        if found.builder == "parquet":
            dataset = _parquet_stream(found.data_files)
        else:
            dataset = datasets.load_dataset(
                found.builder, data_files={"train": found.data_files}, split="train", streaming=True
            )
    except (*_READ_ERRORS, datasets.exceptions.DatasetGenerationError) as err:
        raise read_error(found, key, err) from None
    if found.builder == "webdataset":
        dataset = webdataset_label(dataset, label_column, where)
        dataset = dataset.cast_column(_image_member(dataset.features, where), datasets.Image(decode=False))
    dataset = _undecoded(dataset)
    known = None if any(s is None for s in sizes) else sizes
    return Stream(dataset, where, sum(known) if known else None, known, found, key)


def _parquet_stream(files: list[str]) -> datasets.IterableDataset:
    """Parquet shards as a ``datasets`` stream of one shard per file, shuffled, interleaved and split by node as
    ``datasets``' parquet builder's would be (an ``ArrowExamplesIterable`` over the file list, as
    ``IterableDataset.from_polars`` builds its own; ``from_generator`` would re-encode every example through the
    features: two thirds of the stream's reading time in a profile), read a few pages at a time
    (:func:`_parquet_tables`); the features are those the first file's schema stores, as the builder takes them."""
    from datasets.iterable_dataset import ArrowExamplesIterable

    features = datasets.Features.from_arrow_schema(pyarrow.parquet.read_schema(files[0]))
    tables = ArrowExamplesIterable(_parquet_tables, kwargs={"files": list(files), "features": features})
    return datasets.IterableDataset(tables, info=datasets.DatasetInfo(features=features))


def _parquet_tables(files: list[str], features: datasets.Features):
    """The rows of ``files`` in order, as tables of ``_BATCH`` rows read through a ``_PARQUET_BUFFER``-byte buffer:
    an open shard holds about one data page and one batch, where pyarrow's dataset scanner (``datasets``' parquet
    builder) holds a whole row group, read and decoded (twice its size; ``datasets`` writes row groups of up to
    100 MB), per open shard. With mimalloc (pyarrow's default pool) the pool returns what this thread freed after
    each batch: ``datasets`` reads each interleaved shard in a thread of its own, and mimalloc kept about 15 MiB a
    thread otherwise (docs/streaming.md); the call takes about 10 us."""
    pool = pyarrow.default_memory_pool()
    release = pool.backend_name == "mimalloc"  # the system pool's would be a malloc_trim of the whole process
    schema = features.arrow_schema
    for index, path in enumerate(files):
        with pyarrow.parquet.ParquetFile(path, buffer_size=_PARQUET_BUFFER, pre_buffer=False) as shard:
            for number, batch in enumerate(shard.iter_batches(batch_size=_BATCH, use_threads=False)):
                yield (index, number), table_cast(pyarrow.Table.from_batches([batch]), schema)
                del batch
                if release:
                    pool.release_unused()


def _open_saved(
    found: DataSource, key: str, spec: str, world_size: int, data_args: DataArguments, split: str
) -> Stream | None:
    """A save_to_disk folder streamed from its Arrow files in ``k * world_size`` shards: one ``Dataset`` (its rows
    are the split asked for), or a ``DatasetDict`` whose splits are chosen as a Hub dataset's are."""
    where = f"{key}: {describe_source(found, spec)}"
    saved = datasets.load_from_disk(found.data_files[0])
    if isinstance(saved, datasets.DatasetDict):
        roles = _split_names(list(saved), data_args)
        if key != "dataset_name":  # a file key names its role: train_file's train split, test_file's test...
            roles = {**roles, "train": data_args.train_split, "test": "test"}
        wanted = roles[split]
        if wanted is None:
            return None
        if wanted not in saved:
            raise DataError(f"{where}: a DatasetDict without a {wanted!r} split ({list(saved)}); name one")
        saved, where = saved[wanted], f"{where} split {wanted}"
    elif key == "dataset_name" and split != "train":
        return None
    shares = [k for k in range(8, 0, -1) if k * world_size <= max(1, len(saved))] or [1]
    k = next((k for k in shares if len(saved) % (k * world_size) == 0), shares[0])  # equal shards when it can
    num_shards = k * world_size if k * world_size <= len(saved) else 1
    base, extra = divmod(len(saved), num_shards)
    sizes = [base + (1 if i < extra else 0) for i in range(num_shards)]
    return Stream(
        _undecoded(saved.to_iterable_dataset(num_shards=num_shards)), where, len(saved), sizes, found, key
    )


def _open_hub(data_args: DataArguments, split: str, cache_dir: str | None) -> Stream | None:
    """A split of a Hub dataset, streamed; the validation split is the one named, else the first of
    ``validation``, ``val``, ``valid``, ``test`` that exists (the test split is ``test`` when not used so)."""
    name, config = data_args.dataset_name, data_args.dataset_config_name
    try:
        splits = datasets.load_dataset(name, config, streaming=True, cache_dir=cache_dir)
    except (*_READ_ERRORS, ConnectionError) as err:
        message = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"dataset_name: could not open {name!r} as a stream: {message}") from None
    wanted = _split_names(list(splits), data_args)[split]
    if wanted is None:
        return None
    if wanted not in splits:
        key = "train_split" if split == "train" else "validation_split"
        raise DataError(f"{key}: {name!r} has no split {wanted!r}; its splits: {list(splits)}")
    dataset = splits[wanted]
    info = dataset.info.splits.get(wanted) if dataset.info.splits else None
    size = int(info.num_examples) if info is not None and info.num_examples else None
    return Stream(_undecoded(dataset), f"hub dataset {name} split {wanted}", size, None, None, "dataset_name")


def _split_names(available: list[str], data_args: DataArguments) -> dict[str, str | None]:
    """The split names a dataset of several splits gives each role: ``train_split``; ``validation_split``, else the
    first of ``validation``, ``val``, ``valid``, ``test`` there; ``test`` when there and not used otherwise."""
    train = data_args.train_split
    found = data_args.validation_split or next(
        (s for s in VALIDATION_SPLIT_NAMES if s in available and s != train), None
    )
    test = "test" if "test" in available and found != "test" and train != "test" else None
    return {"train": train, "validation": found, "test": test}


def _undecoded(dataset):
    """Every image column left undecoded: the batch transform decodes (and skips what fails, counted)."""
    for column, feature in (dataset.features or {}).items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def _image_member(features, where: str) -> str:
    for column, feature in features.items():
        if isinstance(feature, datasets.Image) or column.lower() in _IMAGE_MEMBERS:
            return column
    raise DataError(
        f"{where}: no image member among {list(features)}; expected a .jpg, .png or .webp per sample"
    )


def _shard_size(builder: str, path: str, key: str) -> int | None:
    """Rows in one shard from its metadata (parquet footer, arrow batch headers); None for a tar (a tar's
    header is checked). A missing or unreadable shard is a DataError naming it."""
    if not Path(path).is_file():
        raise DataError(f"{key}: shard {path} does not exist (moved or deleted after it was listed?)")
    try:
        if builder == "parquet":
            return int(pyarrow.parquet.ParquetFile(path).metadata.num_rows)
        if builder == "arrow":
            with pyarrow.memory_map(path) as handle:
                return sum(batch.num_rows for batch in pyarrow.ipc.open_stream(handle))
        with tarfile.open(path) as archive:
            archive.next()
        return None
    except _READ_ERRORS as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"{key}: shard {path} cannot be read ({reason}); truncated or not a {builder} file?"
        ) from None


def _to_contract(opened: Stream, labels: list[str], multi: bool, image_column: str, label_column: str):
    """The raw stream mapped to the contract columns (``image``, ``label``, ``key``) as it streams."""
    for column in (image_column, label_column):
        if column not in opened.dataset.features:
            raise DataError(
                f"{opened.where}: column {column!r} not found; columns: {list(opened.dataset.features)}"
            )
    feature = opened.dataset.features[label_column]
    mapper = StreamLabels(labels, multi, image_column, label_column, opened.where, feature)
    return opened.dataset.map(
        mapper,
        batched=True,
        batch_size=_BATCH,  # datasets' 1000 rows would be held per interleaved shard before the shuffle
        with_indices=True,
        remove_columns=list(opened.dataset.features),
        features=mapper.features(),
    )


def _read_once(stream, opened: Stream, limit: int | None) -> datasets.Dataset:
    """A validation or test stream read once into a map-style ``Dataset`` (in ``datasets``' cache)."""
    if limit is not None:
        stream = stream.take(limit)
    try:
        rows = datasets.Dataset.from_generator(
            _rows, gen_kwargs={"stream": stream, "stamp": _stamp(opened)}, features=stream.features
        )
    except datasets.exceptions.DatasetGenerationError as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        if isinstance(cause, DataError):
            raise cause from None
        if opened.source is not None:
            raise read_error(opened.source, opened.key, cause) from None
        raise DataError(f"{opened.where}: could not be read ({type(cause).__name__}: {cause})") from None
    if len(rows) == 0:
        raise DataError(f"{opened.where}: no examples; expected at least one validation image")
    logger.info("%s: %d examples read once, kept map-style", opened.where, len(rows))
    return rows


def _stamp(opened: Stream) -> str:
    """What ``datasets``' cache key must hold besides the stream: each local file's size and modification time."""
    files = opened.source.data_files if opened.source is not None else []
    stats = [
        (path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in files if os.path.exists(path)
    ]
    return repr(stats)


def _rows(stream, stamp):  # noqa: ARG001 - stamp: the files' sizes and times, so a changed file is read again
    yield from stream


def refuse_unstreamable(model_args, data_args, training_args, chosen=()) -> None:
    """``streaming: true`` with a key that needs the whole training split before the first step is one
    :class:`~hf_finetune.errors.ConfigError` naming it; ``chosen``: the keys whose value an ``auto`` became (the
    run plan's), which a stream simply goes without."""
    if not getattr(data_args, "streaming", False):
        return
    needs_a_pass = {
        "cache_images": (
            getattr(training_args, "cache_images", None) is True,
            "decodes every image into a cache",
        ),
        "feature_cache": (
            getattr(training_args, "feature_cache", None) is True,
            "computes every image's features",
        ),
        "class_balance": (
            getattr(training_args, "class_balance", "auto") in ("weighted_loss", "sampler"),
            "counts every training label (and the sampler needs random access)",
        ),
        "label_init_from_data": (
            bool(getattr(model_args, "label_init_from_data", False)),
            "averages the pretrained predictions over every class's images",
        ),
    }
    for key, (asked, why) in needs_a_pass.items():
        if asked and key not in chosen:
            raise ConfigError(
                f"{key}: cannot be used with streaming: true: it {why} before training, a pass over the whole "
                "stream; unset it or set streaming: false"
            )
