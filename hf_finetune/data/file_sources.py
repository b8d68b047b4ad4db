"""Reading a data file, glob or folder (:func:`hf_finetune.data.data_files.data_source`) with ``datasets``' own
loaders, not streamed: parquet, Arrow, WebDataset ``.tar`` shards and ``save_to_disk`` folders, into a ``Dataset``
(or, for a saved ``DatasetDict``, its splits).

A WebDataset sample is the tar members sharing a key: its image is the first image member (``jpg``, ``jpeg``,
``png``, ``webp``...), its label, unless ``label_column_name`` names a member (``cls``, ``txt``, or ``json.KEY``
for a key of the ``json`` member): the ``cls`` member (an integer class id), else the ``json`` member's ``label``
(or ``labels``, ``class``...: the names :data:`hf_finetune.data.columns.LABEL_COLUMN_NAMES` lists; a list there
makes the data multi-label), else the ``txt`` member (a class name). That column is renamed ``label``.

A file ``datasets`` cannot read (a truncated parquet or tar, a shard gone missing) is a
:class:`~hf_finetune.errors.DataError` of one line naming the key and the file: when the loader's own error does
not say which file, each file is checked (its parquet footer, its tar members) to find it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow
import pyarrow.ipc
import pyarrow.parquet

from hf_finetune.data.columns import LABEL_COLUMN_NAMES
from hf_finetune.data.data_files import DataSource
from hf_finetune.errors import DataError

__all__ = [
    "READ_ERRORS",
    "WEBDATASET_LABEL_MEMBERS",
    "check_files",
    "load_source",
    "quiet_loader_errors",
    "read_error",
    "tar_end_problem",
    "unreadable_file",
    "webdataset_label",
]

WEBDATASET_LABEL_MEMBERS = ("cls", "json", "txt")
READ_ERRORS = (  # what datasets' loaders raise for a file they cannot read
    OSError,
    ValueError,
    EOFError,
    tarfile.TarError,
    pyarrow.ArrowException,
    datasets.exceptions.DatasetGenerationError,
)


def load_source(
    source: DataSource, key: str, cache_dir: str | None, label_column: str | None = None
) -> datasets.Dataset | datasets.DatasetDict:
    """The rows of ``source`` (a ``DatasetDict`` only for a ``save_to_disk`` folder of one); a WebDataset's label
    member renamed ``label`` (see the module doc; ``label_column`` is the recipe's ``label_column_name``)."""
    with quiet_loader_errors():
        return _load(source, key, cache_dir, label_column)


def _load(
    source: DataSource, key: str, cache_dir: str | None, label_column: str | None
) -> datasets.Dataset | datasets.DatasetDict:
    check_files(
        source, key
    )  # before any row is read (datasets reads a cut tar's first samples without a word)
    try:
        if source.builder == "disk":
            return datasets.load_from_disk(source.data_files[0])
        if source.builder == "imagefolder":
            loaded = datasets.load_dataset("imagefolder", data_dir=source.data_files[0], cache_dir=cache_dir)
            return loaded["train"] if list(loaded) == ["train"] else loaded
        dataset = datasets.load_dataset(
            source.builder, data_files=source.data_files, split="train", cache_dir=cache_dir
        )
    except READ_ERRORS as err:
        raise read_error(source, key, err) from None
    if source.builder == "webdataset":
        return webdataset_label(dataset, label_column, f"{key}: {source.data_files[0]}")
    return dataset


@contextlib.contextmanager
def quiet_loader_errors() -> Iterator[None]:
    """Mute the parquet loader's own log line for a file it cannot read (it raises too, and that error becomes
    one line naming the file)."""
    chatty = logging.getLogger("datasets.packaged_modules.parquet.parquet")
    level = chatty.level
    chatty.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        chatty.setLevel(level)


def read_error(source: DataSource, key: str, err: BaseException) -> DataError:
    """One line naming ``key`` and the file ``datasets`` could not read, and why."""
    cause = (
        err.__cause__
        if isinstance(err, datasets.exceptions.DatasetGenerationError) and err.__cause__
        else err
    )
    message = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    found = unreadable_file(source)
    if found is not None:
        path, why = found
        return DataError(f"{key}: {path} could not be read as {_kind(source.builder)}: {why}")
    where = source.data_files[0] if len(source.data_files) == 1 else f"{len(source.data_files)} files"
    return DataError(f"{key}: {where} could not be read as {_kind(source.builder)}: {message}")


def tar_end_problem(path: str) -> str | None:
    """Why the tar file at ``path`` is cut short, from its size and its last two blocks (a tar ends with two
    512-byte blocks of zeros), or ``None``: a check of two blocks, not of every member."""
    try:
        size = os.path.getsize(path)
        if size % 512 or size < 1024:
            return f"its size ({size} bytes) is not a whole number of 512-byte tar blocks (truncated?)"
        with open(path, "rb") as handle:
            handle.seek(size - 1024)
            if handle.read(1024).strip(b"\0"):
                return "it does not end with a tar end-of-archive marker (truncated?)"
    except OSError as err:
        return f"{err.strerror or err} (moved or deleted after it was listed?)"
    return None


def check_files(source: DataSource, key: str) -> None:
    """A file of ``source`` that is missing, or cut short as far as cheap checks tell (a parquet file's footer,
    an Arrow stream's schema, a tar's last two blocks), is a one-line error naming ``key`` and the file."""
    found = unreadable_file(source, thorough=False)
    if found is not None:
        path, why = found
        raise DataError(f"{key}: {path} could not be read as {_kind(source.builder)}: {why}")


def unreadable_file(source: DataSource, thorough: bool = True) -> tuple[str, str] | None:
    """(the first file of ``source`` that is missing or cannot be read, why), or ``None``. Read: a parquet file's
    footer, an Arrow stream's schema and a tar's last two blocks; ``thorough``: also every Arrow batch and every
    tar member. Other files are only looked for."""
    for path in source.data_files:
        if not Path(path).exists():
            return path, "the file does not exist (moved or deleted after it was listed?)"
        try:
            if source.builder == "parquet":
                pyarrow.parquet.ParquetFile(path).metadata  # noqa: B018 - reading it is the check
            elif source.builder == "arrow":
                with pyarrow.memory_map(path) as handle:
                    reader = pyarrow.ipc.open_stream(handle)
                    if thorough:
                        reader.read_all()
            elif source.builder == "webdataset":
                if tar_end_problem(path) is not None:
                    return path, str(tar_end_problem(path))
                if thorough:
                    _read_members(path)
        except READ_ERRORS as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            return path, f"{reason} (truncated, or not a {_kind(source.builder)} file?)"
    return None


def _read_members(path: str) -> None:
    with tarfile.open(path) as archive:
        for member in archive:
            if member.isfile():
                archive.extractfile(member).read()  # a truncated member fails here


def webdataset_label(dataset: datasets.Dataset, label_column: str | None, where: str) -> datasets.Dataset:
    """``dataset`` with its label member (see the module doc) renamed ``label``; unchanged when
    ``label_column`` (the recipe's ``label_column_name``) is set."""
    columns = list(dataset.features)
    if label_column is not None:  # the recipe names it: only a json member's key needs flattening
        return dataset.flatten() if label_column.startswith("json.") and "json" in columns else dataset
    if "cls" in columns:
        chosen = "cls"
    elif isinstance(dataset.features.get("json"), dict):
        inner = dataset.features["json"]
        lowered = {name.lower(): name for name in inner}
        found = next((lowered[name] for name in LABEL_COLUMN_NAMES if name in lowered), None)
        chosen = f"json.{found}" if found is not None else ("txt" if "txt" in columns else "")
    else:
        chosen = "txt" if "txt" in columns else ""
    if chosen.startswith("json."):
        dataset = dataset.flatten()
    if chosen not in dataset.features:
        raise DataError(
            f"{where}: no label member found among {columns}; expected a .cls, .txt or .json (with a "
            f"'label' key) member per sample, or label_column_name naming one"
        )
    if "label" in dataset.features and chosen != "label":
        dataset = dataset.remove_columns("label")
    return dataset.rename_column(chosen, "label") if chosen != "label" else dataset


def _kind(builder: str) -> str:
    return {"webdataset": "WebDataset tar", "arrow": "Arrow", "csv": "CSV", "json": "JSON"}.get(
        builder, builder
    )
