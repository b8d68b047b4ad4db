"""The multi-label form of the data contract: a set of classes per image, held as a multi-hot row.

A multi-label split's ``label`` column is ``Sequence(Value("float32"), length=K)`` (K classes, in the order of
``LoadedData.labels``): 1.0 where the image holds the class, 0.0 elsewhere; a row of zeros is an image with no
class (all negatives). The collators stack it into a float ``labels`` tensor, which transformers' models with
``config.problem_type = "multi_label_classification"`` score with binary cross-entropy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import datasets
import numpy as np

from hf_finetune.data.columns import column_values

__all__ = [
    "MULTI_LABEL_PROBLEM_TYPE",
    "multi_hot_features",
    "is_multi_label",
    "multi_hot",
    "multi_hot_column",
    "positive_counts",
]

#: transformers' ``config.problem_type`` of a multi-label classifier (sigmoid outputs, BCE loss).
MULTI_LABEL_PROBLEM_TYPE = "multi_label_classification"


def multi_hot_features(labels: Sequence[str]) -> datasets.Features:
    """The features of every multi-label split: ``image`` (paths and bytes, not decoded) and a multi-hot
    ``label`` of ``len(labels)`` float32 values."""
    return datasets.Features(
        {
            "image": datasets.Image(decode=False),
            "label": datasets.Sequence(datasets.Value("float32"), length=len(labels)),
        }
    )


def is_multi_label(data: Any) -> bool:
    """Whether a dataset (or its features) holds multi-hot labels: its ``label`` feature is a sequence."""
    features = getattr(data, "features", data)
    if features is None or "label" not in features:
        return False
    return isinstance(features["label"], (datasets.Sequence, datasets.LargeList, list))


def multi_hot(ids: Iterable[Iterable[int]], num_labels: int) -> np.ndarray:
    """``(rows, num_labels)`` float32: 1.0 at each row's class ids."""
    rows = [list(row) for row in ids]
    out = np.zeros((len(rows), num_labels), dtype=np.float32)
    for index, row in enumerate(rows):
        out[index, row] = 1.0
    return out


def multi_hot_column(dataset: datasets.Dataset) -> np.ndarray:
    """The ``label`` column of a multi-label split as one ``(rows, K)`` float32 array (one Arrow read)."""
    values = column_values(dataset, "label")
    if not values:
        return np.zeros((0, dataset.features["label"].length), dtype=np.float32)
    return np.asarray(values, dtype=np.float32)


def positive_counts(dataset: datasets.Dataset) -> np.ndarray:
    """Images holding each class, per class (int64), of a multi-label split."""
    return multi_hot_column(dataset).sum(axis=0).astype(np.int64)
