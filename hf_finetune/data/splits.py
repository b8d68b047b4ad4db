"""The classes of a split: its label ids, its images per class, and the stratified, seeded hold-out that makes a
validation split when the source has none."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import datasets
import numpy as np

from hf_finetune.data.columns import column_values
from hf_finetune.data.multi_label import is_multi_label, positive_counts

__all__ = ["label_column", "label_counts", "stratified_split_indices"]

logger = logging.getLogger(__name__)


def label_column(dataset: datasets.Dataset) -> np.ndarray:
    """The ``label`` column (label ids) as one numpy array (one Arrow read, not a Python loop over rows)."""
    return np.asarray(column_values(dataset, "label", numpy=True), dtype=np.int64)


def label_counts(dataset: datasets.Dataset, names: Sequence[str] | None = None) -> dict[str, int]:
    """Images per class name of a split, in label-id order (classes without images count 0). For a multi-label
    split, the images holding each class (its positives); its class names are ``names`` (a multi-hot column
    carries none: ``"0"``, ``"1"``, ... without them)."""
    if is_multi_label(dataset):
        positives = positive_counts(dataset)
        names = list(names) if names is not None else [str(i) for i in range(len(positives))]
        return {name: int(count) for name, count in zip(names, positives, strict=True)}
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
