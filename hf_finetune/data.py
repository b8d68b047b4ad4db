"""Loading the images and labels to fine-tune on, from an image folder, a CSV/JSONL file or a dataset.

Whatever the source, :func:`load_image_dataset` returns a :class:`LoadedData` whose ``DatasetDict``
has splits ``train``, ``validation`` (and ``test`` when the source has one), each with exactly two
columns: ``image`` (a ``datasets.Image()`` feature; local files stay paths, nothing is decoded here)
and ``label`` (``datasets.ClassLabel(names=labels)``), with the same features in every split.

Labels of every split are matched to the train labels by *name*; a validation class unknown to
train, or a train class missing from validation, is a :class:`~hf_finetune.errors.DataError`
rather than a silently wrong score. When the source has no validation split, a stratified, seeded
share of train (``train_val_split``) is held out.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .configs import DataArguments
from .errors import DataError, suggest
from .images import IMAGE_EXTENSIONS, is_image_file

__all__ = ["LoadedData", "load_image_dataset", "label_counts", "stratified_split_indices"]

logger = logging.getLogger(__name__)

IMAGE_COLUMN_NAMES = ("image", "img", "picture", "photo", "path", "file", "filepath", "image_path")
LABEL_COLUMN_NAMES = ("label", "labels", "target", "class", "category", "fine_label")
VALIDATION_SPLIT_NAMES = ("validation", "val", "valid", "test")
TABLE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json"}

# One split of a local source before it becomes a Dataset: image paths and their label names.
_Rows = tuple[list[str], list[str]]


@dataclass
class LoadedData:
    """The splits to fine-tune on, their class names and where they came from."""

    dataset: datasets.DatasetDict
    labels: list[str]
    source: str

    def summary(self) -> str:
        """A few lines: the source, then the number of images per split and per class."""
        lines = [f"{len(self.labels)} classes from {self.source}"]
        for split, dataset in self.dataset.items():
            counts = label_counts(dataset)
            if len(counts) <= 10:
                detail = ", ".join(f"{name} {count}" for name, count in counts.items())
            else:
                low = min(counts, key=counts.__getitem__)
                high = max(counts, key=counts.__getitem__)
                detail = f"per class {counts[low]} ({low}) to {counts[high]} ({high})"
            lines.append(f"  {split}: {len(dataset)} images ({detail})")
        return "\n".join(lines)


def _label_column(dataset: datasets.Dataset) -> np.ndarray:
    """The ``label`` column as one numpy array (one Arrow read, not a Python loop over rows)."""
    return np.asarray(dataset.with_format("numpy")["label"], dtype=np.int64)


def label_counts(dataset: datasets.Dataset) -> dict[str, int]:
    """Images per class name of a split, in label-id order (classes without images count 0)."""
    names = dataset.features["label"].names
    counts = (
        np.bincount(_label_column(dataset), minlength=len(names)) if len(dataset) else np.zeros(len(names))
    )
    return {name: int(counts[index]) for index, name in enumerate(names)}


def stratified_split_indices(
    label_ids: Sequence[int], fraction: float, seed: int, names: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """Split row indices into (train, held-out) per class, deterministically for ``seed``.

    Each class with n >= 2 rows holds out ``round(n * fraction)`` rows, at least 1 and at most n - 1,
    so every class keeps an image on both sides; a class with a single row stays in train (warned).
    Both index lists come back sorted.
    """
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(label_ids):
        by_class.setdefault(int(label), []).append(index)
    rng = np.random.default_rng(seed)
    train: list[int] = []
    held_out: list[int] = []
    singletons = []
    for label in sorted(by_class):
        indices = by_class[label]
        if len(indices) < 2:
            singletons.append(names[label] if names is not None else str(label))
            train.extend(indices)
            continue
        count = min(max(1, round(len(indices) * fraction)), len(indices) - 1)
        order = rng.permutation(len(indices))
        held_out.extend(indices[i] for i in order[:count])
        train.extend(indices[i] for i in order[count:])
    if singletons:
        logger.warning(
            "classes with a single image stay wholly in train and are not validated: %s", singletons
        )
    return sorted(train), sorted(held_out)


def load_image_dataset(
    data_args: DataArguments, seed: int = 42, *, cache_dir: str | None = None
) -> LoadedData:
    """Load the source named by ``data_args`` into the ``image``/``label`` contract (see the module doc).

    ``seed`` drives the stratified validation hold-out and the ``max_*_samples`` shuffles;
    ``cache_dir`` is where ``datasets`` caches what it reads (its default cache when ``None``).
    """
    if data_args.dataset_name is not None:
        splits, labels, source = _from_dataset(data_args, cache_dir)
    else:
        splits, labels, source = _from_local(data_args, cache_dir)

    if "validation" not in splits:
        train_idx, val_idx = stratified_split_indices(
            _label_column(splits["train"]), data_args.train_val_split, seed, labels
        )
        splits["validation"] = splits["train"].select(val_idx)
        splits["train"] = splits["train"].select(train_idx)
        source += f"; validation: {data_args.train_val_split:.0%} of train held out (stratified, seed {seed})"
    if len(splits["validation"]) == 0:
        raise DataError(
            f"{source}: no validation images (every class has a single image); "
            "add images or a validation split"
        )

    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None and limit < len(splits[split]):
            splits[split] = splits[split].shuffle(seed=seed).select(range(limit))

    order = [name for name in ("train", "validation", "test") if name in splits]
    return LoadedData(datasets.DatasetDict({name: splits[name] for name in order}), labels, source)


# --- labels -------------------------------------------------------------------------------------------


def _label_name(value: Any) -> str | None:
    """The class name of one raw label value (``None`` for a missing one)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return text or None


def _sorted_names(names: set[str]) -> list[str]:
    """Class names sorted; integer names numerically (2 before 10)."""

    def key(name: str) -> tuple[int, int, str]:
        stripped = name.lstrip("-")
        return (0, int(name), name) if stripped.isdigit() else (1, 0, name)

    return sorted(names, key=key)


def _check_case_collisions(names: Sequence[str], where: str) -> None:
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.casefold(), name)
        if other != name:
            raise DataError(
                f"{where}: class names {other!r} and {name!r} differ only in case; rename one so they are "
                "distinct, or merge them"
            )


def _check_split_labels(split: str, present: set[str], train: Sequence[str], where: str) -> None:
    """A split may not have a class train lacks; validation must also have every train class."""
    extra = _sorted_names(present - set(train))
    missing = _sorted_names(set(train) - present) if split == "validation" else []
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"only in {split}: {extra}")
        if missing:
            parts.append(f"only in train: {missing}")
        raise DataError(f"{where}: {split} labels differ from train: " + "; ".join(parts))


def _features(labels: list[str]) -> datasets.Features:
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=labels)})


# --- image folders and CSV/JSONL files --------------------------------------------------------------


def _from_local(
    data_args: DataArguments, cache_dir: str | None
) -> tuple[dict[str, datasets.Dataset], list[str], str]:
    rows: dict[str, _Rows] = {}
    if data_args.train_dir is not None:
        root = _existing(
            data_args.train_dir, "train_dir", "a folder of CLASS/*.jpg or train/ and val/ subfolders"
        )
        if not root.is_dir():
            raise DataError(
                f"train_dir: {root} is not a folder; "
                "expected a folder of CLASS/*.jpg or train/ and val/ subfolders"
            )
        if (root / "train").is_dir():
            found = ["train/"]
            rows["train"] = _scan_folder(root / "train", "train_dir")
            for name in ("val", "validation"):
                if data_args.validation_dir is None and (root / name).is_dir():
                    rows["validation"] = _scan_folder(root / name, "train_dir")
                    found.append(f"{name}/")
                    break
            if (root / "test").is_dir():
                rows["test"] = _scan_folder(root / "test", "train_dir")
                found.append("test/")
            source = f"image folder {root} ({', '.join(found)})"
        else:
            rows["train"] = _scan_folder(root, "train_dir")
            source = f"image folder {root}"
    else:
        path = _existing(
            data_args.train_file, "train_file", "a CSV or JSONL file of (image path, label) rows"
        )
        rows["train"] = _read_table(path, "train_file", data_args, cache_dir)
        source = f"{_table_kind(path, 'train_file')} file {path}"

    if data_args.validation_dir is not None and data_args.validation_file is not None:
        raise DataError("validation_dir/validation_file: both are set; expected at most one of them")
    if data_args.validation_dir is not None:
        folder = _existing(data_args.validation_dir, "validation_dir", "a folder of CLASS/*.jpg")
        rows["validation"] = _scan_folder(folder, "validation_dir")
        source += f", validation folder {folder}"
    elif data_args.validation_file is not None:
        path = _existing(
            data_args.validation_file, "validation_file", "a CSV or JSONL file of (image path, label) rows"
        )
        rows["validation"] = _read_table(path, "validation_file", data_args, cache_dir)
        source += f", validation file {path}"

    labels = _sorted_names(set(rows["train"][1]))
    _check_case_collisions(labels, source)
    features = _features(labels)
    ids = {name: index for index, name in enumerate(labels)}
    splits = {}
    for split, (paths, names) in rows.items():
        if split != "train":
            _check_split_labels(split, set(names), labels, source)
        splits[split] = datasets.Dataset.from_dict(
            {"image": paths, "label": [ids[name] for name in names]}, features=features
        )
    return splits, labels, source


def _existing(value: str | None, key: str, expected: str) -> Path:
    path = Path(os.path.expanduser(str(value))).resolve()
    if not path.exists():
        raise DataError(f"{key}: {path} does not exist; expected {expected}")
    return path


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _scan_folder(root: Path, key: str) -> _Rows:
    """(paths, class names) of ``root/CLASS/**/*.<image ext>``, sorted; hidden files and folders skipped."""
    if not root.is_dir():
        raise DataError(f"{key}: {root} is not a folder; expected a folder of CLASS/*.jpg")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = [p for p in root.iterdir() if p.is_file() and is_image_file(p) and not p.name.startswith(".")]
        if loose:
            raise DataError(
                f"{key}: {root} holds {len(loose)} images but no class folders; expected CLASS/*.jpg, one "
                "subfolder per class"
            )
        raise DataError(f"{key}: {root} contains no images; expected a folder of CLASS/*.jpg")
    paths: list[str] = []
    names: list[str] = []
    for folder in classes:
        files = sorted(
            p for p in folder.rglob("*") if p.is_file() and is_image_file(p) and not _hidden(p, folder)
        )
        if not files:
            raise DataError(
                f"{key}: class folder {folder} has no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        paths.extend(str(p) for p in files)
        names.extend([folder.name] * len(files))
    _check_case_collisions([folder.name for folder in classes], f"{key}: {root}")
    return paths, names


def _table_kind(path: Path, key: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise DataError(f"{key}: {path} has extension {suffix!r}; expected a .csv, .json or .jsonl file")
    return "CSV" if suffix == ".csv" else "JSONL"


def _read_table(path: Path, key: str, data_args: DataArguments, cache_dir: str | None) -> _Rows:
    """(absolute image paths, label names) of a CSV/JSONL file, every row checked."""
    if not path.is_file():
        raise DataError(
            f"{key}: {path} is not a file; expected a CSV or JSONL file of (image path, label) rows"
        )
    builder = TABLE_FORMATS.get(path.suffix.lower())
    _table_kind(path, key)
    kwargs: dict[str, Any] = {}
    if builder == "csv":
        # Read every column as text, so labels such as "007" or "1" stay as written.
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), None)
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
    image_column, label_column = _find_columns(table.features, data_args, f"{key} {path}")
    folder = path.parent
    paths: list[str] = []
    names: list[str] = []
    for row, (image, label) in enumerate(zip(table[image_column], table[label_column], strict=True), start=1):
        where = f"{key}: {path} row {row}"
        if image is None or str(image).strip() == "":
            raise DataError(f"{where}: empty image path in column {image_column!r}")
        name = _label_name(label)
        if name is None:
            raise DataError(f"{where}: empty label in column {label_column!r} (image {image!r})")
        file = Path(os.path.expanduser(str(image).strip()))
        file = file if file.is_absolute() else folder / file
        if not file.is_file():
            raise DataError(f"{where}: image {str(image)!r} does not exist (looked for {file})")
        paths.append(str(file))
        names.append(name)
    return paths, names


# --- datasets from the Hub or a local dataset folder --------------------------------------------------


def _find_columns(features: datasets.Features, data_args: DataArguments, where: str) -> tuple[str, str]:
    """The (image, label) column names: the ones configured, else found by feature type or name."""
    columns = list(features)

    def named(explicit: str | None, key: str, kind: type, candidates: Sequence[str]) -> str:
        if explicit is not None:
            if explicit not in features:
                raise DataError(
                    f"{key}: column {explicit!r} not found in {where}; columns: {columns}"
                    f"{suggest(explicit, columns)}"
                )
            return explicit
        for name, feature in features.items():
            if isinstance(feature, kind):
                return name
        lowered = {name.lower(): name for name in columns}
        for candidate in candidates:
            if candidate in lowered:
                return lowered[candidate]
        raise DataError(
            f"{where}: no {key.split('_')[0]} column found among {columns}; set {key} "
            f"(looked for a {kind.__name__} feature or one of {list(candidates)})"
        )

    image = named(data_args.image_column_name, "image_column_name", datasets.Image, IMAGE_COLUMN_NAMES)
    label = named(data_args.label_column_name, "label_column_name", datasets.ClassLabel, LABEL_COLUMN_NAMES)
    if image == label:
        raise DataError(f"{where}: column {image!r} cannot be both the image and the label column")
    return image, label


def _from_dataset(
    data_args: DataArguments, cache_dir: str | None
) -> tuple[dict[str, datasets.Dataset], list[str], str]:
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
        raw = datasets.load_dataset(name, data_args.dataset_config_name, cache_dir=cache_dir)
    except (FileNotFoundError, ConnectionError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"dataset_name: could not load {name!r}: {message}") from None
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

    image_column, label_column = _find_columns(chosen["train"].features, data_args, source)
    train_label = chosen["train"].features[label_column]
    if isinstance(train_label, datasets.ClassLabel):
        labels = list(train_label.names)
    else:
        _check_label_feature(train_label, label_column, f"{source} split {data_args.train_split!r}")
        labels = _sorted_names({n for n in map(_label_name, chosen["train"][label_column]) if n is not None})
    _check_case_collisions(labels, source)
    features = _features(labels)

    splits: dict[str, datasets.Dataset] = {}
    for split, dataset in chosen.items():
        where = f"{source} split {dataset.split if dataset.split is not None else split!s}"
        for column in (image_column, label_column):
            if column not in dataset.features:
                raise DataError(f"{where}: column {column!r} not found; columns: {list(dataset.features)}")
        ids = _label_ids(dataset, label_column, labels, split, where)
        unlabeled = sum(1 for i in (dataset[label_column] if ids is None else ids) if i is None or i < 0)
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
        values = [feature.names[i] if i is not None and i >= 0 else None for i in dataset[column]]
    else:
        _check_label_feature(feature, column, where)
        values = [_label_name(v) for v in dataset[column]]
    if split != "train":
        _check_split_labels(split, {v for v in values if v is not None}, labels, where)
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
        image_paths = [_resolve(v, root) for v in out[image_column]]
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
