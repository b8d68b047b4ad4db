"""Loading the images and labels to fine-tune on, from an image folder, a CSV/JSONL file or a dataset.

Whatever the source, :func:`load_image_dataset` returns a :class:`LoadedData` whose ``DatasetDict``
has splits ``train``, ``validation`` (and ``test`` when the source has one), each with exactly two
columns: ``image`` (a ``datasets.Image(decode=False)`` feature: each row holds ``{"path", "bytes"}``; local
files stay paths and nothing is decoded here, nor when a row is read: the batch transform decodes, through
:func:`hf_finetune.data.image_check.open_image`, and skips a file that fails) and ``label``
(``datasets.ClassLabel(names=labels)``), with the same features in every split.

Every file of an image folder or CSV/JSONL file is checked before training, from its header
(:mod:`hf_finetune.data.image_check`): bad ones are skipped, and listed in ``LoadedData.bad_files`` (and, by a
training run, in ``OUTPUT/bad_images.json``); with ``strict: true`` the first one is a
:class:`~hf_finetune.errors.DataError`. A class whose every file is bad is a ``DataError`` naming it.

Labels of every split are matched to the train labels by *name*; a validation class unknown to
train, or a train class missing from validation, is a :class:`~hf_finetune.errors.DataError`
rather than a silently wrong score. When the source has no validation split, a stratified, seeded
share of train (``train_val_split``) is held out.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from hf_finetune.config.arguments import DataArguments
from hf_finetune.config.path_checks import entry_is_file, utf8_name
from hf_finetune.data.image_check import (
    REPORT_NAME,
    check_image_files,
    reset_decode_failures,
    summarize_reasons,
)
from hf_finetune.data.images import IMAGE_EXTENSIONS, is_image_file
from hf_finetune.errors import DataError, suggest

__all__ = ["LoadedData", "load_image_dataset", "label_counts", "label_column", "stratified_split_indices"]

logger = logging.getLogger(__name__)

IMAGE_COLUMN_NAMES = ("image", "img", "picture", "photo", "path", "file", "filepath", "image_path")
LABEL_COLUMN_NAMES = ("label", "labels", "target", "class", "category", "fine_label")
VALIDATION_SPLIT_NAMES = ("validation", "val", "valid", "test")
TABLE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json"}

# One split of a local source before it becomes a Dataset: image paths and their label names.
_Rows = tuple[list[str], list[str]]
# Files the up-front check skipped: (path, reason), in the order they were found.
_Bad = list[tuple[str, str]]


@dataclass
class LoadedData:
    """The splits to fine-tune on, their class names and where they came from."""

    dataset: datasets.DatasetDict
    labels: list[str]
    source: str
    bad_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) skipped by the check

    def bad_files_summary(self) -> str | None:
        """One line: how many files the up-front check skipped and why; ``None`` when none."""
        if not self.bad_files:
            return None
        reasons = summarize_reasons(reason for _, reason in self.bad_files)
        path, reason = self.bad_files[0]
        return (
            f"skipped {len(self.bad_files)} bad image file{'s' if len(self.bad_files) != 1 else ''} "
            f"({reasons}; e.g. {path}: {reason}); a training run lists them in OUTPUT/{REPORT_NAME}"
        )

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
        if self.bad_files:
            lines.append(
                f"  skipped: {len(self.bad_files)} bad image files "
                f"({summarize_reasons(reason for _, reason in self.bad_files)})"
            )
        return "\n".join(lines)


def label_column(dataset: datasets.Dataset) -> np.ndarray:
    """The ``label`` column (label ids) as one numpy array (one Arrow read, not a Python loop over rows)."""
    return np.asarray(_column_values(dataset, "label", numpy=True), dtype=np.int64)


def _column_values(dataset: datasets.Dataset, column: str, numpy: bool = False) -> Any:
    """Every value of one column as a Python list (or numpy array), read as one Arrow table: indexing a
    ``Dataset`` by column name iterates row by row through its formatter (seconds per 100,000 rows)."""
    values = dataset.select_columns([column]).with_format("arrow")[:].column(column)
    return values.to_numpy() if numpy else values.to_pylist()


def label_counts(dataset: datasets.Dataset) -> dict[str, int]:
    """Images per class name of a split, in label-id order (classes without images count 0)."""
    names = dataset.features["label"].names
    counts = (
        np.bincount(label_column(dataset), minlength=len(names)) if len(dataset) else np.zeros(len(names))
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
    ``data_args.strict`` also becomes this process's policy for images that fail while decoding
    (:func:`hf_finetune.data.image_check.set_strict`); the decode failures recorded so far are forgotten.
    """
    strict = bool(getattr(data_args, "strict", False))
    reset_decode_failures(strict=strict)
    bad: _Bad = []
    if data_args.dataset_name is not None:
        splits, labels, source = _from_dataset(data_args, cache_dir)
    else:
        splits, labels, source = _from_local(data_args, cache_dir, bad, strict)
    bad = list(dict(bad).items())  # a folder scanned twice (train_dir also validation_dir) lists a file once

    if "validation" not in splits:
        train_idx, val_idx = stratified_split_indices(
            label_column(splits["train"]), data_args.train_val_split, seed, labels
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
    data = LoadedData(datasets.DatasetDict({name: splits[name] for name in order}), labels, source, bad)
    line = data.bad_files_summary()
    if line:
        logger.warning("%s", line)
    return data


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

    def key(name: str) -> tuple[int, int, str]:  # ASCII digits only: int() refuses '²' and '--1'
        return (0, int(name), name) if re.fullmatch(r"-?[0-9]+", name) else (1, 0, name)

    return sorted(names, key=key)


def _name_key(name: str) -> str:
    """What two class names must differ in to be told apart: Unicode NFC form, case, surrounding spaces."""
    return unicodedata.normalize("NFC", name).casefold().strip()


def _check_case_collisions(names: Sequence[str], where: str) -> None:
    """Two class names that are the same after NFC normalisation, case folding and stripping surrounding
    whitespace (``Cat`` and ``cat``; ``café`` written with U+00E9 and with e + U+0301; ``cat`` and ``cat ``)
    are an error naming both."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(_name_key(name), name)
        if other != name:
            if other.casefold() == name.casefold():
                how = "differ only in case"
            else:
                how = "are one name once case-folded, stripped of surrounding spaces and NFC-normalised"
                if other.casefold().strip() != name.casefold().strip():  # Unicode forms: show code points
                    how += f" ({ascii(other)} and {ascii(name)})"
            raise DataError(
                f"{where}: class names {other!r} and {name!r} {how}; rename one so they are "
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
    return datasets.Features(
        {"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=labels)}
    )


# --- image folders and CSV/JSONL files --------------------------------------------------------------


def _from_local(
    data_args: DataArguments, cache_dir: str | None, bad: _Bad, strict: bool = False
) -> tuple[dict[str, datasets.Dataset], list[str], str]:
    """The splits of an image folder or CSV/JSONL file; files the up-front check refuses are skipped and
    appended to ``bad`` (``strict``: the first is an error instead)."""
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
            rows["train"] = _scan_folder(root / "train", "train_dir", bad, strict)
            for name in ("val", "validation"):
                if data_args.validation_dir is None and (root / name).is_dir():
                    rows["validation"] = _scan_folder(root / name, "train_dir", bad, strict)
                    found.append(f"{name}/")
                    break
            if (root / "test").is_dir():
                rows["test"] = _scan_folder(root / "test", "train_dir", bad, strict)
                found.append("test/")
            source = f"image folder {root} ({', '.join(found)})"
        else:
            rows["train"] = _scan_folder(root, "train_dir", bad, strict)
            source = f"image folder {root}"
    else:
        path = _existing(
            data_args.train_file, "train_file", "a CSV or JSONL file of (image path, label) rows"
        )
        rows["train"] = _read_table(path, "train_file", data_args, cache_dir, bad, strict)
        source = f"{_table_kind(path, 'train_file')} file {path}"

    if data_args.validation_dir is not None and data_args.validation_file is not None:
        raise DataError("validation_dir/validation_file: both are set; expected at most one of them")
    if data_args.validation_dir is not None:
        folder = _existing(data_args.validation_dir, "validation_dir", "a folder of CLASS/*.jpg")
        rows["validation"] = _scan_folder(folder, "validation_dir", bad, strict)
        source += f", validation folder {folder}"
    elif data_args.validation_file is not None:
        path = _existing(
            data_args.validation_file, "validation_file", "a CSV or JSONL file of (image path, label) rows"
        )
        rows["validation"] = _read_table(path, "validation_file", data_args, cache_dir, bad, strict)
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


def _files_under(folder: Path, key: str = "train_dir") -> list[str]:
    """Every file under ``folder``, recursively, sorted as paths (by their parts); hidden files and
    folders (a name starting with ``.``) are left out, and symbolic links to folders are not followed.
    ``os.scandir`` reads the file type with the name: no ``stat`` per file. A name that is not UTF-8 or a
    symbolic-link loop is a :class:`DataError` naming it (:mod:`hf_finetune.config.path_checks`)."""
    found: list[str] = []
    pending = [str(folder)]
    while pending:
        current = pending.pop()
        try:
            entries = os.scandir(current)
        except OSError as err:  # a folder the process may not read
            raise DataError(f"{key}: cannot read the folder {current}: {err.strerror or err}") from None
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(utf8_name(entry.path, key))
                elif entry_is_file(entry, key):
                    found.append(utf8_name(entry.path, key))
    found.sort(key=lambda path: path.split(os.sep))
    return found


def _bad_file(key: str, where: str, path: str, reason: str) -> DataError:
    return DataError(
        f"{key}: {where}{path}: {reason} (strict: true refuses bad image files; without it they are "
        "skipped and listed)"
    )


def _scan_folder(root: Path, key: str, bad: _Bad | None = None, strict: bool = False) -> _Rows:
    """(paths, class names) of ``root/CLASS/**/*``, sorted; hidden files and folders skipped. Every other
    file is checked (:func:`hf_finetune.data.image_check.check_image_file`): bad ones are skipped and appended
    to ``bad``, or, with ``strict``, the first is an error. A class folder left without images is an error
    naming it."""
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
    for folder in classes:
        utf8_name(str(folder), key)  # a class name must be text
    _check_case_collisions([folder.name for folder in classes], f"{key}: {root}")
    per_class = [(folder, _files_under(folder, key)) for folder in classes]
    for folder, files in per_class:
        if not files:
            raise DataError(
                f"{key}: class folder {folder} has no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
    reasons = iter(check_image_files([path for _, files in per_class for path in files]))
    paths: list[str] = []
    names: list[str] = []
    for folder, files in per_class:
        kept = []
        skipped: _Bad = []
        for path in files:
            reason = next(reasons)
            if reason is None:
                kept.append(path)
            elif strict:
                raise _bad_file(key, "", path, reason)
            else:
                skipped.append((path, reason))
        if bad is not None:
            bad.extend(skipped)
        if not kept:
            path, reason = skipped[0]
            raise DataError(
                f"{key}: class folder {folder} has no images it can use: all {len(files)} files are bad "
                f"({summarize_reasons(r for _, r in skipped)}; e.g. {Path(path).name}: {reason}); "
                "add images or remove the folder"
            )
        paths.extend(kept)
        names.extend([folder.name] * len(kept))
    return paths, names


def _table_kind(path: Path, key: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise DataError(f"{key}: {path} has extension {suffix!r}; expected a .csv, .json or .jsonl file")
    return "CSV" if suffix == ".csv" else "JSONL"


def _read_table(
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
    if not path.is_file():
        raise DataError(
            f"{key}: {path} is not a file; expected a CSV or JSONL file of (image path, label) rows"
        )
    builder = TABLE_FORMATS.get(path.suffix.lower())
    _table_kind(path, key)
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
    image_column, label_column = _find_columns(table.features, data_args, f"{key} {path}")
    folder = path.parent
    paths: list[str] = []
    names: list[str] = []
    images, labels = _column_values(table, image_column), _column_values(table, label_column)
    for row, (image, label) in enumerate(zip(images, labels, strict=True), start=1):
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
    kept_paths: list[str] = []
    kept_names: list[str] = []
    skipped: dict[str, list[tuple[str, str]]] = {}
    for row, (file, name, reason) in enumerate(zip(paths, names, check_image_files(paths), strict=True), 1):
        if reason is None:
            kept_paths.append(file)
            kept_names.append(name)
        elif strict:
            raise _bad_file(key, f"{path} row {row}: image ", file, reason)
        else:
            skipped.setdefault(name, []).append((file, reason))
    if bad is not None:
        bad.extend(entry for entries in skipped.values() for entry in entries)
    emptied = _sorted_names(set(skipped) - set(kept_names))
    if emptied:
        name = emptied[0]
        file, reason = skipped[name][0]
        raise DataError(
            f"{key}: {path}: class {name!r} has no images it can use: all {len(skipped[name])} of its files "
            f"are bad ({summarize_reasons(r for _, r in skipped[name])}; e.g. {file}: {reason})"
            + (f"; so are all files of {emptied[1:]}" if len(emptied) > 1 else "")
        )
    return kept_paths, kept_names


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
        if (local / "state.json").is_file():  # one Dataset written by save_to_disk: its rows are train
            raw = datasets.DatasetDict({"train": datasets.load_from_disk(str(local))})
            source += " (one split, saved with save_to_disk)"
        else:
            raw = datasets.load_dataset(name, data_args.dataset_config_name, cache_dir=cache_dir)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
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
        labels = _sorted_names(
            {n for n in map(_label_name, _column_values(chosen["train"], label_column)) if n is not None}
        )
    _check_case_collisions(labels, source)
    features = _features(labels)

    splits: dict[str, datasets.Dataset] = {}
    for split, dataset in chosen.items():
        where = f"{source} split {dataset.split if dataset.split is not None else split!s}"
        for column in (image_column, label_column):
            if column not in dataset.features:
                raise DataError(f"{where}: column {column!r} not found; columns: {list(dataset.features)}")
        ids = _label_ids(dataset, label_column, labels, split, where)
        unlabeled = sum(
            1 for i in (_column_values(dataset, label_column) if ids is None else ids) if i is None or i < 0
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
            feature.names[i] if i is not None and i >= 0 else None for i in _column_values(dataset, column)
        ]
    else:
        _check_label_feature(feature, column, where)
        values = [_label_name(v) for v in _column_values(dataset, column)]
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
        image_paths = [_resolve(v, root) for v in _column_values(out, image_column)]
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
