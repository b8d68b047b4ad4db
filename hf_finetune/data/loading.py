"""Loading the images and labels to fine-tune on, from an image folder, data files or a dataset.

Whatever the source, :func:`load_image_dataset` returns a :class:`LoadedData` whose ``DatasetDict``
has splits ``train``, ``validation`` (and ``test`` when the source has one), each with exactly two
columns: ``image`` (a ``datasets.Image(decode=False)`` feature: each row holds ``{"path", "bytes"}``; local
files stay paths and nothing is decoded here, nor when a row is read: the batch transform decodes, through
:func:`hf_finetune.data.image_check.open_image`, and skips a file that fails) and ``label``
(``datasets.ClassLabel(names=labels)``), with the same features in every split. The sources are read by
:mod:`hf_finetune.data.folders`, :mod:`hf_finetune.data.tables` and :mod:`hf_finetune.data.hub_dataset`; a
``train_file``/``validation_file``/``test_file`` of any format (CSV, JSONL, parquet, Arrow, WebDataset tar
shards, a ``save_to_disk`` folder; a file, glob or folder) by :mod:`hf_finetune.data.file_splits`.

Every file of an image folder or CSV/JSONL file is checked before training, from its header
(:mod:`hf_finetune.data.image_check`): bad ones are skipped, and listed in ``LoadedData.bad_files`` (and, by a
training run, in ``OUTPUT/bad_images.json``); with ``strict: true`` the first one is a
:class:`~hf_finetune.errors.DataError`. A class whose every file is bad is a ``DataError`` naming it.

Labels of every split are matched to the train labels by *name*; a validation class unknown to
train, or a train class missing from validation, is a :class:`~hf_finetune.errors.DataError`
rather than a silently wrong score. When the source has no validation split, a stratified, seeded
share of train (``train_val_split``) is held out.

Multi-label data (``problem_type: multi_label``, or ``auto`` finding a list or a ``label_separator`` in a label
column; :mod:`hf_finetune.data.label_sets`) ends with a multi-hot ``label``
(:func:`hf_finetune.data.multi_label.multi_hot_features`). There a validation or test row naming a class train
lacks is an error naming the file and row, a train class without a positive in validation is only warned, and
the hold-out is a seeded iterative stratification (:func:`hf_finetune.data.label_sets.multi_label_split_indices`). An image
folder may hold a labels file (``metadata.csv``/``metadata.jsonl`` with a ``file_name`` column) in place of
class folders, as may each of its ``train/``, ``val/`` and ``test/`` subfolders.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from hf_finetune.config.arguments import DataArguments
from hf_finetune.data.class_names import check_case_collisions, check_split_labels, sorted_names
from hf_finetune.data.columns import contract_features
from hf_finetune.data.file_splits import FileSplit, open_file_split, splits_with_images
from hf_finetune.data.folders import metadata_file, scan_folder
from hf_finetune.data.hub_dataset import hub_dataset_splits
from hf_finetune.data.image_check import REPORT_NAME, reset_decode_failures, summarize_reasons
from hf_finetune.data.label_sets import (
    choose_multi_label,
    multi_hot_rows,
    multi_label_split_indices,
    warn_classes_without_positives,
)
from hf_finetune.data.multi_label import is_multi_label, multi_hot_column, multi_hot_features
from hf_finetune.data.splits import label_column, label_counts, stratified_split_indices
from hf_finetune.data.tables import LabelTable, open_table, table_label_sets, table_rows
from hf_finetune.errors import DataError

__all__ = ["LoadedData", "load_image_dataset"]

logger = logging.getLogger(__name__)

# One split of a local source before it becomes a Dataset: image paths and their label names.
_Rows = tuple[list[str], list[str]]
# Files the up-front check skipped: (path, reason), in the order they were found.
_Bad = list[tuple[str, str]]
# One split of a local source before its rows are read: a folder of class folders (and its recipe key), or an
# opened labels file (several for a glob), or a dataset holding its images (parquet, Arrow, WebDataset...).
_Pending = tuple[Path, str] | FileSplit


@dataclass
class LoadedData:
    """The splits to fine-tune on, their class names and where they came from."""

    dataset: datasets.DatasetDict
    labels: list[str]
    source: str
    bad_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) skipped by the check

    @property
    def multi_label(self) -> bool:
        """Whether the splits are multi-label (a multi-hot ``label`` column)."""
        return is_multi_label(self.dataset["train"])

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
        kind = " (multi-label; per class: the images holding it)" if self.multi_label else ""
        lines = [f"{len(self.labels)} classes{kind} from {self.source}"]
        for split, dataset in self.dataset.items():
            counts = label_counts(dataset, self.labels)
            per_image = ""
            if self.multi_label:
                mean = sum(counts.values()) / len(dataset) if len(dataset) else 0.0
                per_image = f", {mean:.2f} labels per image"
            if len(counts) <= 10:
                detail = ", ".join(f"{name} {count}" for name, count in counts.items())
            else:
                low = min(counts, key=counts.__getitem__)
                high = max(counts, key=counts.__getitem__)
                detail = f"per class {counts[low]} ({low}) to {counts[high]} ({high})"
            lines.append(f"  {split}: {len(dataset)} images{per_image} ({detail})")
        if self.bad_files:
            lines.append(
                f"  skipped: {len(self.bad_files)} bad image files "
                f"({summarize_reasons(reason for _, reason in self.bad_files)})"
            )
        return "\n".join(lines)


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
        splits, labels, source = hub_dataset_splits(data_args, cache_dir)
    else:
        splits, labels, source = _from_local(data_args, cache_dir, bad, strict)
    bad = list(dict(bad).items())  # a folder scanned twice (train_dir also validation_dir) lists a file once

    multi = is_multi_label(splits["train"])
    if "validation" not in splits:
        if multi:
            train_idx, val_idx = multi_label_split_indices(
                multi_hot_column(splits["train"]), data_args.train_val_split, seed
            )
            how = "iterative stratification"
        else:
            train_idx, val_idx = stratified_split_indices(
                label_column(splits["train"]), data_args.train_val_split, seed, labels
            )
            how = "stratified"
        splits["validation"] = splits["train"].select(val_idx)
        splits["train"] = splits["train"].select(train_idx)
        source += f"; validation: {data_args.train_val_split:.0%} of train held out ({how}, seed {seed})"
    if len(splits["validation"]) == 0:
        raise DataError(
            f"{source}: no validation images ("
            + ("train has a single image" if multi else "every class has a single image")
            + "); add images or a validation split"
        )

    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None and limit < len(splits[split]):
            splits[split] = splits[split].shuffle(seed=seed).select(range(limit))
    if multi:
        warn_classes_without_positives("validation", multi_hot_column(splits["validation"]), labels)

    order = [name for name in ("train", "validation", "test") if name in splits]
    data = LoadedData(datasets.DatasetDict({name: splits[name] for name in order}), labels, source, bad)
    line = data.bad_files_summary()
    if line:
        logger.warning("%s", line)
    return data


def _from_local(
    data_args: DataArguments, cache_dir: str | None, bad: _Bad, strict: bool = False
) -> tuple[dict[str, datasets.Dataset], list[str], str]:
    """The splits of an image folder or CSV/JSONL file; files the up-front check refuses are skipped and
    appended to ``bad`` (``strict``: the first is an error instead)."""
    pending, source, roots = _local_sources(data_args, cache_dir)
    if any(isinstance(item, datasets.Dataset) for item in pending.values()):
        return splits_with_images(pending, roots, data_args, source)
    tables = [t for item in pending.values() for t in (item if isinstance(item, list) else [item])]
    tables = [item for item in tables if isinstance(item, LabelTable)]
    separator = data_args.label_separator
    if choose_multi_label(data_args.problem_type, [table_label_sets(table, separator) for table in tables]):
        return _multi_label_splits(pending, source, data_args, bad, strict)
    rows = {split: _read(item, data_args, bad, strict) for split, item in pending.items()}

    labels = sorted_names(set(rows["train"][1]))
    check_case_collisions(labels, source)
    features = contract_features(labels)
    ids = {name: index for index, name in enumerate(labels)}
    splits = {}
    for split, (paths, names) in rows.items():
        if split != "train":
            check_split_labels(split, set(names), labels, source)
        splits[split] = datasets.Dataset.from_dict(
            {"image": paths, "label": [ids[name] for name in names]}, features=features
        )
    return splits, labels, source


def _local_sources(
    data_args: DataArguments, cache_dir: str | None
) -> tuple[dict[str, _Pending], str, dict[str, Path]]:
    """Each split of an image folder or data files, before its rows are read, the source's description and
    each split's folder. A folder holding a labels file (``metadata.csv``/``metadata.jsonl``) is read as that
    file; a data file, glob or folder by :func:`hf_finetune.data.file_splits.open_file_split`."""
    pending: dict[str, _Pending] = {}
    roots: dict[str, Path] = {}

    def folder(path: Path, key: str) -> _Pending:
        labels_file = metadata_file(path, key) if path.is_dir() else None
        return (path, key) if labels_file is None else open_table(labels_file, key, data_args, cache_dir)

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
            pending["train"] = folder(root / "train", "train_dir")
            for name in ("val", "validation"):
                if data_args.validation_dir is None and (root / name).is_dir():
                    pending["validation"] = folder(root / name, "train_dir")
                    found.append(f"{name}/")
                    break
            if (root / "test").is_dir():
                pending["test"] = folder(root / "test", "train_dir")
                found.append("test/")
            source = f"image folder {root} ({', '.join(found)})"
        else:
            pending["train"] = folder(root, "train_dir")
            source = f"image folder {root}"
    else:
        pending["train"], source, roots["train"] = open_file_split(
            str(data_args.train_file), "train_file", data_args, cache_dir
        )

    if data_args.validation_dir is not None and data_args.validation_file is not None:
        raise DataError("validation_dir/validation_file: both are set; expected at most one of them")
    if data_args.validation_dir is not None:
        path = _existing(data_args.validation_dir, "validation_dir", "a folder of CLASS/*.jpg")
        pending["validation"] = folder(path, "validation_dir")
        source += f", validation folder {path}"
    for key, split in (("validation_file", "validation"), ("test_file", "test")):
        value = getattr(data_args, key)
        if value is not None:
            pending[split], described, roots[split] = open_file_split(str(value), key, data_args, cache_dir)
            single = isinstance(pending[split], LabelTable)
            source += f", {split} file {pending[split].path}" if single else f", {split}: {described}"
    for split, item in pending.items():
        if split not in roots:  # an image folder, or its labels file
            roots[split] = item[0] if isinstance(item, tuple) else item.path.parent
    return pending, source, roots


def _read(
    item: _Pending,
    data_args: DataArguments,
    bad: _Bad,
    strict: bool,
    multi_label: bool = False,
    known: list[str] | None = None,
) -> tuple[list[str], list]:
    """The rows of one pending split (names, or tuples of names when ``multi_label``)."""
    if isinstance(item, list):  # a glob of CSV/JSONL files: their rows in file order
        parts = [_read(table, data_args, bad, strict, multi_label, known) for table in item]
        return [p for paths, _ in parts for p in paths], [n for _, names in parts for n in names]
    if isinstance(item, LabelTable):
        return table_rows(item, data_args, bad, strict, multi_label, known)
    paths, names = scan_folder(*item, bad, strict)
    return (paths, [(name,) for name in names]) if multi_label else (paths, names)


def _multi_label_splits(
    pending: dict[str, _Pending], source: str, data_args: DataArguments, bad: _Bad, strict: bool
) -> tuple[dict[str, datasets.Dataset], list[str], str]:
    """The multi-hot splits of a local source: the classes are train's; a validation/test row naming another
    is an error naming its file and row."""
    rows = {"train": _read(pending["train"], data_args, bad, strict, multi_label=True)}
    labels = sorted_names({name for names in rows["train"][1] for name in names})
    if not labels:
        raise DataError(f"{source}: no train image has a label; expected at least one class")
    check_case_collisions(labels, source)
    for split, item in pending.items():
        if split != "train":
            rows[split] = _read(item, data_args, bad, strict, multi_label=True, known=labels)
    features = multi_hot_features(labels)
    splits = {}
    for split, (paths, sets) in rows.items():
        hot = multi_hot_rows(sets, labels, f"{source} split {split}")
        splits[split] = datasets.Dataset.from_dict({"image": paths, "label": hot}, features=features)
    return splits, labels, source


def _existing(value: str | None, key: str, expected: str) -> Path:
    path = Path(os.path.expanduser(str(value))).resolve()
    if not path.exists():
        raise DataError(f"{key}: {path} does not exist; expected {expected}")
    return path
