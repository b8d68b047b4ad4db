"""A source named by ``dataset_name``: a dataset on the Hub, a local dataset folder (``load_dataset``'s or one
written by ``save_to_disk``: a ``Dataset`` or a ``DatasetDict``), or a data file or glob
(:mod:`hf_finetune.data.data_files`: its rows are train), reduced to the ``image``/``label`` splits of the data
contract (:func:`dataset_splits`, also used for data files that hold their images).

A label column of lists (``List``/``Sequence`` of ``ClassLabel``, strings or integers), or of text holding
``label_separator``, makes the splits multi-label (multi-hot ``label``; see :mod:`hf_finetune.data.label_sets`).
The classes of a ``Sequence(ClassLabel)`` column are its names, in its order (as for a ``ClassLabel`` column);
otherwise the names found in train, sorted. A row naming a class train lacks is an error naming split and row."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import datasets

from hf_finetune.config.arguments import DataArguments
from hf_finetune.data.class_names import check_case_collisions, check_split_labels, label_name, sorted_names
from hf_finetune.data.columns import column_values, contract_features, find_columns
from hf_finetune.data.data_files import DataSource, data_source, describe_source, is_data_spec
from hf_finetune.data.file_sources import (
    READ_ERRORS,
    check_files,
    load_source,
    quiet_loader_errors,
    read_error,
    unreadable_file,
    webdataset_label,
)
from hf_finetune.data.label_sets import (
    choose_multi_label,
    is_list_feature,
    label_set,
    multi_hot_rows,
    several_labels_row,
)
from hf_finetune.data.multi_label import multi_hot_features
from hf_finetune.errors import DataError, suggest

__all__ = ["VALIDATION_SPLIT_NAMES", "dataset_splits", "hub_dataset_splits"]

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
    return dataset_splits(chosen, data_args, source, {split: local for split in chosen})


def dataset_splits(
    chosen: dict[str, datasets.Dataset], data_args: DataArguments, source: str, roots: dict[str, Path]
) -> tuple[dict[str, datasets.Dataset], list[str], str]:
    """(splits, class names, ``source``) of datasets already loaded, one per split (``train``, ``validation``,
    ``test``): their image and label columns found, labels matched to train's by name, reduced to the
    contract. A relative image path of a split is read from its folder in ``roots``."""
    image_column, label_column = find_columns(chosen["train"].features, data_args, source)
    found = [
        _label_sets_found(d, label_column, data_args.label_separator, source, s) for s, d in chosen.items()
    ]
    if choose_multi_label(data_args.problem_type, found):
        return _multi_label_splits(chosen, image_column, label_column, data_args, source, roots)
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
        splits[split] = _to_contract(dataset, image_column, label_column, ids, features, roots[split])
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
    if is_data_spec(name) and not local.is_dir():  # a data file or a glob of them: all train
        found = data_source(name, "dataset_name")
        loaded = load_source(found, "dataset_name", cache_dir, data_args.label_column_name)
        return (
            datasets.DatasetDict({"train": loaded}),
            describe_source(found, name),
            Path(found.data_files[0]).parent,
        )
    source = f"dataset folder {local.resolve()}" if local.is_dir() else f"hub dataset {name}"
    if data_args.dataset_config_name:
        source += f" ({data_args.dataset_config_name})"
    if _is_saved(local):  # written by save_to_disk: one Dataset (its rows are train) or a DatasetDict
        if data_args.dataset_config_name:
            raise DataError(
                f"dataset_name: {local.resolve()} was written by save_to_disk and has no configurations; "
                f"remove dataset_config_name {data_args.dataset_config_name!r}"
            )
        loaded = load_source(DataSource("disk", [str(local.resolve())]), "dataset_name", cache_dir)
        if isinstance(loaded, datasets.Dataset):
            return (
                datasets.DatasetDict({"train": loaded}),
                source + " (one split, saved with save_to_disk)",
                local,
            )
        return loaded, source + " (saved with save_to_disk)", local
    if local.is_dir():
        _check_data_files(local)
    try:
        with quiet_loader_errors():
            raw = datasets.load_dataset(name, data_args.dataset_config_name, cache_dir=cache_dir)
    except (ConnectionError, *READ_ERRORS) as err:
        if local.is_dir():
            found = data_source(str(local), "dataset_name")
            if unreadable_file(found) is not None:
                raise read_error(found, "dataset_name", err) from None
        cause = err.__cause__ if isinstance(err, datasets.exceptions.DatasetGenerationError) else None
        message = (str(cause or err).strip().splitlines() or [type(cause or err).__name__])[0]
        raise DataError(f"dataset_name: could not load {name!r}: {message}") from None
    if local.is_dir() and all({"__key__", "__url__"} <= set(split.features) for split in raw.values()):
        raw = datasets.DatasetDict(
            {
                n: webdataset_label(d, data_args.label_column_name, f"{source} split {n}")
                for n, d in raw.items()
            }
        )
    return raw, source, local


def _check_data_files(folder: Path) -> None:
    """A data file of a local dataset folder that is missing or cut short is an error naming it, before any
    row is read; a folder ``data_source`` does not know is left to ``load_dataset``."""
    try:
        found = data_source(str(folder), "dataset_name")
    except DataError:
        return
    check_files(found, "dataset_name")


def _is_saved(folder: Path) -> bool:
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


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


def _split_name(dataset: datasets.Dataset, split: str) -> str:
    return str(dataset.split) if dataset.split is not None else split


def _label_sets_found(
    dataset: datasets.Dataset, column: str, separator: str, source: str, split: str
) -> tuple[str, int | None, Any]:
    """(the split, the index of its first row naming a set of classes or ``None``, that row's label)."""
    where = f"{source} split {_split_name(dataset, split)}"
    feature = dataset.features.get(column)
    if feature is None or not (is_list_feature(feature) or _is_text(feature)):
        return where, None, None
    values = column_values(dataset, column)
    row = several_labels_row(values, separator)
    return where, row, (values[row] if row is not None else None)


def _inner(feature: Any) -> Any:
    """The element feature of a list feature; ``None`` for another feature."""
    if not is_list_feature(feature):
        return None
    return feature[0] if isinstance(feature, list) else feature.feature


def _is_text(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _row_sets(dataset: datasets.Dataset, column: str, separator: str, where: str) -> list[tuple[str, ...]]:
    """The set of class names of every row (``()`` for an unlabelled one)."""
    feature = dataset.features[column]
    values = column_values(dataset, column)
    inner = _inner(feature)
    if isinstance(inner, datasets.ClassLabel):
        return [
            tuple(sorted_names({inner.names[i] for i in row if i is not None and i >= 0})) if row else ()
            for row in values
        ]
    if isinstance(feature, datasets.ClassLabel):
        return [(feature.names[i],) if i is not None and i >= 0 else () for i in values]
    return [label_set(value, separator, f"{where} row {row}") for row, value in enumerate(values, 1)]


def _multi_label_splits(
    chosen: dict[str, datasets.Dataset],
    image_column: str,
    label_column: str,
    data_args: DataArguments,
    source: str,
    roots: dict[str, Path],
) -> tuple[dict[str, datasets.Dataset], list[str], str]:
    """The multi-hot splits: the classes of a ``Sequence(ClassLabel)``/``ClassLabel`` train column in its order,
    else the names train holds, sorted; a row of another split naming a class train lacks is an error."""
    train_feature = chosen["train"].features[label_column]
    inner = _inner(train_feature)
    sets: dict[str, list[tuple[str, ...]]] = {}
    for split, dataset in chosen.items():
        where = f"{source} split {_split_name(dataset, split)}"
        for column in (image_column, label_column):
            if column not in dataset.features:
                raise DataError(f"{where}: column {column!r} not found; columns: {list(dataset.features)}")
        sets[split] = _row_sets(dataset, label_column, data_args.label_separator, where)
    if isinstance(inner, datasets.ClassLabel) or isinstance(train_feature, datasets.ClassLabel):
        labels = list((inner if inner is not None else train_feature).names)
    else:
        labels = sorted_names({name for names in sets["train"] for name in names})
    if not labels:
        raise DataError(f"{source}: no train row has a label; expected at least one class")
    check_case_collisions(labels, source)
    features = multi_hot_features(labels)
    splits = {}
    for split, dataset in chosen.items():
        hot = multi_hot_rows(sets[split], labels, f"{source} split {_split_name(dataset, split)}")
        splits[split] = _to_contract(dataset, image_column, label_column, hot, features, roots[split])
    return splits, labels, source


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
