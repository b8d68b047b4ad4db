"""CSV and JSONL files of (image path, label) rows: read as text, every row checked, every image file checked up
front (a file the check refuses is skipped and listed, or, with ``strict``, is an error).

A file is opened once (:func:`open_table`); whether its label column names sets of classes is read from it
(:func:`table_label_sets`) before its rows are made (:func:`table_rows`): one class name per row, or, for
multi-label data, a tuple of names per row (:func:`hf_finetune.data.label_sets.label_set`)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from hf_finetune.config.arguments import DataArguments
from hf_finetune.data.class_names import label_name, sorted_names
from hf_finetune.data.columns import column_values, find_columns
from hf_finetune.data.image_check import check_image_files, strict_refusal, summarize_reasons
from hf_finetune.data.label_sets import label_set, multi_hot_rows, several_labels_row
from hf_finetune.errors import DataError

__all__ = [
    "TABLE_FORMATS",
    "LabelTable",
    "table_kind",
    "open_table",
    "table_label_sets",
    "table_rows",
    "table_from_dataset",
    "read_table",
]

TABLE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json"}

# One split of a local source before it becomes a Dataset: image paths and their label names (a tuple of names
# per row for multi-label data).
_Rows = tuple[list[str], list]
# Files the up-front check skipped: (path, reason), in the order they were found.
_Bad = list[tuple[str, str]]


def table_kind(path: Path, key: str) -> str:
    """``CSV`` or ``JSONL``, from the file's extension; another extension is an error."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise DataError(f"{key}: {path} has extension {suffix!r}; expected a .csv, .json or .jsonl file")
    return "CSV" if suffix == ".csv" else "JSONL"


def read_table(
    path: Path,
    key: str,
    data_args: DataArguments,
    cache_dir: str | None,
    bad: _Bad | None = None,
    strict: bool = False,
) -> _Rows:
    """(absolute image paths, label names) of a CSV/JSONL file, every row checked: a row without a path
    or label, or naming a file that does not exist, is an error naming the row; a file the image check
    refuses is skipped and appended to ``bad`` (``strict``: an error); a class all of whose files are bad
    is an error naming it."""
    return table_rows(open_table(path, key, data_args, cache_dir), data_args, bad, strict)


@dataclass
class LabelTable:
    """A CSV/JSONL file read, with its image and label columns found and their values."""

    path: Path
    key: str
    image_column: str
    label_column: str
    images: list
    labels: list
    folder: Path | None = None  # where relative image paths are read from; the file's folder when None


def open_table(path: Path, key: str, data_args: DataArguments, cache_dir: str | None) -> LabelTable:
    """Read a CSV/JSONL file and find its image and label columns (an unreadable or empty file is an error)."""
    return table_from_dataset(_load_table(path, key, cache_dir), path, key, data_args)


def table_from_dataset(
    table: datasets.Dataset, path: Path, key: str, data_args: DataArguments, folder: Path | None = None
) -> LabelTable:
    """The image and label columns of rows already read from ``path`` (any format ``datasets`` reads) whose
    image column holds paths, relative ones read from ``folder`` (``path``'s folder when ``None``)."""
    image_column, label_column = find_columns(table.features, data_args, f"{key} {path}")
    images, labels = column_values(table, image_column), column_values(table, label_column)
    return LabelTable(path, key, image_column, label_column, images, labels, folder)


def table_label_sets(table: LabelTable, separator: str) -> tuple[str, int | None, object]:
    """(the file, the index of its first row naming a set of classes or ``None``, that row's label), for
    :func:`hf_finetune.data.label_sets.choose_multi_label`."""
    row = several_labels_row(table.labels, separator)
    return f"{table.key}: {table.path}", row, (table.labels[row] if row is not None else None)


def table_rows(
    table: LabelTable,
    data_args: DataArguments,
    bad: _Bad | None = None,
    strict: bool = False,
    multi_label: bool = False,
    known: list[str] | None = None,
) -> _Rows:
    """The rows of an opened file, as :func:`read_table` returns them; with ``multi_label`` each row's labels are
    a tuple of names (empty: an image with no class), checked against ``known`` (the train classes) if given."""
    paths, names = _table_rows(table, data_args, multi_label)
    if multi_label and known is not None:
        multi_hot_rows(names, known, f"{table.key}: {table.path}")
    return _keep_good_files(paths, names, table.path, table.key, bad, strict)


def _load_table(path: Path, key: str, cache_dir: str | None) -> datasets.Dataset:
    """The rows of a CSV/JSONL file as a Dataset (a CSV's columns read as text); an unreadable or empty file
    is an error."""
    if not path.is_file():
        raise DataError(
            f"{key}: {path} is not a file; expected a CSV or JSONL file of (image path, label) rows"
        )
    builder = TABLE_FORMATS.get(path.suffix.lower())
    table_kind(path, key)
    kwargs: dict[str, Any] = {}
    if builder == "csv":
        # Read every column as text, so labels such as "007" or "1" stay as written.
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), None)
        except UnicodeDecodeError as err:
            raise DataError(
                f"{key}: {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                "save it as UTF-8"
            ) from None
        if not header:
            raise DataError(f"{key}: {path} is empty; expected a header row and (image path, label) rows")
        kwargs["features"] = datasets.Features({name: datasets.Value("string") for name in header})
    try:
        table = datasets.load_dataset(
            builder, data_files={"train": str(path)}, cache_dir=cache_dir, **kwargs
        )["train"]
    except (datasets.exceptions.DatasetGenerationError, ValueError) as err:
        cause = err.__cause__ or err
        raise DataError(
            f"{key}: {path} could not be read as {builder.upper()}: {str(cause).splitlines()[0]}"
        ) from None
    if len(table) == 0:
        raise DataError(f"{key}: {path} has no rows; expected (image path, label) rows")
    return table


def _table_rows(table: LabelTable, data_args: DataArguments, multi_label: bool) -> _Rows:
    """(absolute image paths, label names) of every row; relative paths are read from the file's folder. A row
    without a path or (single-label) label, or naming a file that does not exist, is an error naming the row."""
    path, key, image_column, label_column = table.path, table.key, table.image_column, table.label_column
    folder = table.folder if table.folder is not None else path.parent
    paths: list[str] = []
    names: list = []
    for row, (image, label) in enumerate(zip(table.images, table.labels, strict=True), start=1):
        where = f"{key}: {path} row {row}"
        if image is None or str(image).strip() == "":
            raise DataError(f"{where}: empty image path in column {image_column!r}")
        name = label_set(label, data_args.label_separator, where) if multi_label else label_name(label)
        if name is None:
            raise DataError(f"{where}: empty label in column {label_column!r} (image {image!r})")
        file = Path(os.path.expanduser(str(image).strip()))
        file = file if file.is_absolute() else folder / file
        if not file.is_file():
            raise DataError(f"{where}: image {str(image)!r} does not exist (looked for {file})")
        paths.append(str(file))
        names.append(name)
    return paths, names


def _keep_good_files(
    paths: list[str], names: list, path: Path, key: str, bad: _Bad | None, strict: bool
) -> _Rows:
    """The rows whose image file passes the up-front check; the others are appended to ``bad`` (``strict``:
    the first is an error). A class left without images is an error naming it."""
    kept_paths: list[str] = []
    kept_names: list = []
    kept_classes: set[str] = set()
    skipped: dict[str, list[tuple[str, str]]] = {}
    skipped_files: list[tuple[str, str]] = []
    for row, (file, name, reason) in enumerate(zip(paths, names, check_image_files(paths), strict=True), 1):
        classes = (name,) if isinstance(name, str) else name
        if reason is None:
            kept_paths.append(file)
            kept_names.append(name)
            kept_classes.update(classes)
        elif strict:
            raise strict_refusal(key, f"{path} row {row}: image ", file, reason)
        else:
            skipped_files.append((file, reason))
            for one in classes:
                skipped.setdefault(one, []).append((file, reason))
    if bad is not None:  # single-label: listed class by class; multi-label: in file order
        single = all(isinstance(name, str) for name in names)
        bad.extend([entry for entries in skipped.values() for entry in entries] if single else skipped_files)
    emptied = sorted_names(set(skipped) - kept_classes)
    if emptied:
        name = emptied[0]
        file, reason = skipped[name][0]
        raise DataError(
            f"{key}: {path}: class {name!r} has no images it can use: all {len(skipped[name])} of its files "
            f"are bad ({summarize_reasons(r for _, r in skipped[name])}; e.g. {file}: {reason})"
            + (f"; so are all files of {emptied[1:]}" if len(emptied) > 1 else "")
        )
    return kept_paths, kept_names
