"""One split given as ``train_file``/``validation_file``/``test_file``: a file, a glob or a folder of any format
:func:`hf_finetune.data.data_files.data_source` knows, opened before its rows are read.

A split whose image column holds paths (a CSV/JSONL file, or a parquet/Arrow file of paths) is a
:class:`~hf_finetune.data.tables.LabelTable` (several for a glob of CSV/JSONL files, each file's relative paths
read from its folder), read as today: every row and image file checked up front. A split whose image column holds
the images (a ``datasets.Image`` feature or ``{bytes, path}`` structs: parquet, Arrow, WebDataset, ``save_to_disk``)
is a ``Dataset``; then every split is reduced to the contract as a dataset is
(:func:`hf_finetune.data.hub_dataset.dataset_splits`), and an image that fails is skipped when it is decoded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import datasets

from hf_finetune.config.arguments import DataArguments
from hf_finetune.data.columns import find_columns
from hf_finetune.data.data_files import DataSource, data_source, describe_source
from hf_finetune.data.file_sources import load_source
from hf_finetune.data.hub_dataset import dataset_splits
from hf_finetune.data.tables import TABLE_FORMATS, LabelTable, open_table, table_from_dataset, table_kind
from hf_finetune.errors import DataError

__all__ = ["FileSplit", "open_file_split", "splits_with_images"]

# One split read from train_file/validation_file/test_file before its rows are read.
FileSplit = LabelTable | list[LabelTable] | datasets.Dataset


def open_file_split(
    value: str, key: str, data_args: DataArguments, cache_dir: str | None
) -> tuple[FileSplit, str, Path]:
    """(the split, a description of where it came from, the folder its relative image paths are read from)."""
    found = data_source(value, key)
    if found.builder == "imagefolder":
        raise DataError(
            f"{key}: {found.folder} is a folder of images; give it as train_dir or validation_dir, "
            "or give a data file"
        )
    first = Path(found.data_files[0])
    folder = first if found.builder == "disk" else first.parent
    if found.builder in ("csv", "json") and all(
        Path(p).suffix.lower() in TABLE_FORMATS for p in found.data_files
    ):
        tables = [open_table(Path(p), key, data_args, cache_dir) for p in found.data_files]
        if len(tables) == 1:
            return tables[0], f"{table_kind(first, key)} file {first}", folder
        return tables, describe_source(found, value), folder
    description = describe_source(found, value)
    loaded = load_source(found, key, cache_dir, data_args.label_column_name)
    if isinstance(loaded, datasets.DatasetDict):
        raise DataError(
            f"{key}: {found.folder} holds several splits saved with save_to_disk ({list(loaded)}); "
            "give it as dataset_name, or give one split's folder"
        )
    if len(loaded) == 0:
        raise DataError(f"{key}: {description} has no rows; expected (image, label) rows")
    image_column, _ = find_columns(loaded.features, data_args, f"{key} {description}")
    if _holds_images(loaded.features[image_column]):
        return loaded, description, folder
    if found.builder == "disk" or len({Path(p).parent for p in found.data_files}) == 1:
        return table_from_dataset(loaded, first, key, data_args, folder), description, folder
    # files of paths in several folders: each file's relative paths are read from its own folder
    tables = []
    for path in found.data_files:
        rows = load_source(DataSource(found.builder, [path]), key, cache_dir, data_args.label_column_name)
        tables.append(table_from_dataset(rows, Path(path), key, data_args))
    return tables, description, folder


def splits_with_images(
    pending: dict[str, FileSplit], roots: dict[str, Path], data_args: DataArguments, source: str
) -> tuple[dict[str, datasets.Dataset], list[str], str]:
    """The contract splits when some split holds its images. Each split's own image and label columns are
    found (a WebDataset's ``png`` beside a parquet file's ``image``) and named ``image`` and ``label``; a split
    of paths joins as a dataset of (absolute path, label) rows."""
    chosen: dict[str, datasets.Dataset] = {}
    for split, item in pending.items():
        if isinstance(item, datasets.Dataset):
            image, label = find_columns(item.features, data_args, f"{source} split {split}")
            item = item.select_columns([image, label])
            chosen[split] = item.rename_columns(
                {old: new for old, new in ((image, "image"), (label, "label"))}
            )
            continue
        tables = item if isinstance(item, list) else [item]
        if not all(isinstance(t, LabelTable) for t in tables):
            raise DataError(f"{source}: split {split} is an image folder; expected a data file")
        rows: dict[str, list] = {"image": [], "label": []}
        for table in tables:
            base = table.folder if table.folder is not None else table.path.parent
            rows["image"] += [
                None if p is None else str(base / Path(str(p)).expanduser()) for p in table.images
            ]
            rows["label"] += table.labels
        chosen[split] = datasets.Dataset.from_dict(rows)
    named = dataclasses.replace(data_args, image_column_name="image", label_column_name="label")
    return dataset_splits(chosen, named, source, roots)


def _holds_images(feature: object) -> bool:
    """Whether a column holds the images themselves: an ``Image`` feature or ``{bytes, path}`` structs."""
    if isinstance(feature, datasets.Image):
        return True
    return isinstance(feature, dict) and "bytes" in feature
