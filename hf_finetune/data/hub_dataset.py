"""A source named by ``dataset_name``: a dataset on the Hub, or a local dataset folder (``load_dataset``'s or one
written by ``save_to_disk``), reduced to the ``image``/``label`` splits of the data contract."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import datasets

from hf_finetune.config.arguments import DataArguments
from hf_finetune.data.class_names import check_case_collisions, check_split_labels, label_name, sorted_names
from hf_finetune.data.columns import column_values, contract_features, find_columns
from hf_finetune.errors import DataError, suggest

__all__ = ["VALIDATION_SPLIT_NAMES", "hub_dataset_splits"]

logger = logging.getLogger(__name__)

VALIDATION_SPLIT_NAMES = ("validation", "val", "valid", "test")


def hub_dataset_splits(
    data_args: DataArguments, cache_dir: str | None
) -> tuple[dict[str, datasets.Dataset], list[str], str]:
    """(splits, class names, a description of the source) of ``data_args.dataset_name``: its train split, its
    validation split (named, or found by name), and its ``test`` split when it has one that is not used
    otherwise. A test split with unlabelled rows is dropped (warned); another split with them is an error."""
    raw, source, local = _load(data_args, cache_dir)
    chosen = _chosen_splits(raw, data_args, source)
    image_column, label_column = find_columns(chosen["train"].features, data_args, source)
    train_label = chosen["train"].features[label_column]
    if isinstance(train_label, datasets.ClassLabel):
        labels = list(train_label.names)
    else:
        _check_label_feature(train_label, label_column, f"{source} split {data_args.train_split!r}")
        labels = sorted_names(
            {n for n in map(label_name, column_values(chosen["train"], label_column)) if n is not None}
        )
    check_case_collisions(labels, source)
    features = contract_features(labels)

    splits: dict[str, datasets.Dataset] = {}
    for split, dataset in chosen.items():
        where = f"{source} split {dataset.split if dataset.split is not None else split!s}"
        for column in (image_column, label_column):
            if column not in dataset.features:
                raise DataError(f"{where}: column {column!r} not found; columns: {list(dataset.features)}")
        ids = _label_ids(dataset, label_column, labels, split, where)
        unlabeled = sum(
            1 for i in (column_values(dataset, label_column) if ids is None else ids) if i is None or i < 0
        )
        if unlabeled:
            if split == "test":
                logger.warning(
                    "%s: %d of %d rows have no label; test split dropped", where, unlabeled, len(dataset)
                )
                continue
            raise DataError(
                f"{where}: {unlabeled} of {len(dataset)} rows have no label; expected a label on every row"
            )
        splits[split] = _to_contract(dataset, image_column, label_column, ids, features, local)
    return splits, labels, source


def _load(data_args: DataArguments, cache_dir: str | None) -> tuple[datasets.DatasetDict, str, Path]:
    """(every split of the dataset, a description of the source, the local folder it names if any)."""
    name = data_args.dataset_name
    if data_args.validation_dir is not None or data_args.validation_file is not None:
        raise DataError(
            "validation_dir/validation_file: not supported with dataset_name; use validation_split to name "
            "one of its splits"
        )
    local = Path(os.path.expanduser(name))
    source = f"dataset folder {local.resolve()}" if local.is_dir() else f"hub dataset {name}"
    if data_args.dataset_config_name:
        source += f" ({data_args.dataset_config_name})"
    try:
        if (local / "state.json").is_file():  # one Dataset written by save_to_disk: its rows are train
            raw = datasets.DatasetDict({"train": datasets.load_from_disk(str(local))})
            source += " (one split, saved with save_to_disk)"
        else:
            raw = datasets.load_dataset(name, data_args.dataset_config_name, cache_dir=cache_dir)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"dataset_name: could not load {name!r}: {message}") from None
    return raw, source, local


def _chosen_splits(
    raw: datasets.DatasetDict, data_args: DataArguments, source: str
) -> dict[str, datasets.Dataset]:
    """``train``, ``validation`` when named or found, and ``test`` when present and not used otherwise."""
    available = list(raw)

    def split_named(split: str, key: str) -> datasets.Dataset:
        if split not in raw:
            raise DataError(
                f"{key}: {source} has no split {split!r}; splits: {available}{suggest(split, available)}"
            )
        return raw[split]

    chosen = {"train": split_named(data_args.train_split, "train_split")}
    if data_args.validation_split is not None:
        chosen["validation"] = split_named(data_args.validation_split, "validation_split")
        used = {data_args.train_split, data_args.validation_split}
    else:
        found = next((s for s in VALIDATION_SPLIT_NAMES if s in raw and s != data_args.train_split), None)
        if found is not None:
            chosen["validation"] = raw[found]
        used = {data_args.train_split, found}
    if "test" in raw and "test" not in used:
        chosen["test"] = raw["test"]
    return chosen


def _check_label_feature(feature: Any, column: str, where: str) -> None:
    if isinstance(feature, datasets.Value) and (
        feature.dtype in ("string", "large_string", "bool") or feature.dtype.startswith(("int", "uint"))
    ):
        return
    raise DataError(
        f"{where}: label column {column!r} is {feature}; expected one class per image "
        "(a ClassLabel, string or integer column)"
    )


def _label_ids(
    dataset: datasets.Dataset, column: str, labels: list[str], split: str, where: str
) -> list[int] | None:
    """The train label id of every row (-1 where unlabelled), or ``None`` when the column is a
    ClassLabel with exactly the train names (its ids are already right)."""
    feature = dataset.features[column]
    index = {name: i for i, name in enumerate(labels)}
    if isinstance(feature, datasets.ClassLabel):
        if list(feature.names) == labels:
            return None
        values = [
            feature.names[i] if i is not None and i >= 0 else None for i in column_values(dataset, column)
        ]
    else:
        _check_label_feature(feature, column, where)
        values = [label_name(v) for v in column_values(dataset, column)]
    if split != "train":
        check_split_labels(split, {v for v in values if v is not None}, labels, where)
    return [index[v] if v is not None else -1 for v in values]


def _to_contract(
    dataset: datasets.Dataset,
    image_column: str,
    label_column: str,
    ids: list[int] | None,
    features: datasets.Features,
    root: Path,
) -> datasets.Dataset:
    """``dataset`` reduced to ``image``/``label`` with ``features`` (``ids`` replace the labels if given)."""
    out = dataset.select_columns([image_column, label_column])
    if not isinstance(out.features[image_column], datasets.Image):
        image_paths = [_resolve(v, root) for v in column_values(out, image_column)]
        out = out.remove_columns(image_column).add_column(image_column, image_paths)
    if ids is not None:
        out = out.remove_columns(label_column).add_column(label_column, ids)
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
    if renames:
        out = out.rename_columns(renames)
    return out.select_columns(["image", "label"]).cast(features)


def _resolve(value: Any, root: Path) -> str | None:
    """An image path column value; relative paths are read from a local dataset folder."""
    if value is None:
        return None
    path = Path(str(value))
    if not path.is_absolute() and root.is_dir():
        return str(root.resolve() / path)
    return str(value)
