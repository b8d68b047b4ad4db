"""The labels of a stream: which classes it has (from its features, or the recipe's ``labels:``), and each
example's label turned into a class id (or a multi-hot row) as it streams past.

A stream is never read ahead of training, so its classes cannot be collected from its rows: a ``ClassLabel``
label feature (or a sequence of ``ClassLabel``) names them, else the recipe's ``labels:`` list does. A label
outside the declared classes is a :class:`~hf_finetune.errors.DataError` naming the sample (its ``__key__``, its
image path, or its row in this process's stream) and the label, raised when the example is reached.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np

from hf_finetune.data.class_names import check_case_collisions, label_name
from hf_finetune.data.columns import contract_features
from hf_finetune.data.multi_label import multi_hot_features
from hf_finetune.errors import DataError

__all__ = ["KEY_COLUMN", "StreamLabels", "stream_labels"]

KEY_COLUMN = "key"  # the name of each example in messages (its __key__, image path or row)


def _inner(feature: Any) -> Any:
    if isinstance(feature, (datasets.Sequence, datasets.LargeList)):
        return feature.feature
    if isinstance(feature, list) and feature:
        return feature[0]
    return None


def stream_labels(
    feature: Any, declared: list[str] | None, column: str, where: str
) -> tuple[list[str], bool]:
    """(the class names, whether the stream is multi-label) from the label ``feature`` or ``declared`` (the
    recipe's ``labels:``); neither is a one-line :class:`DataError`, as is a ``labels:`` list that differs from
    the feature's names."""
    inner = _inner(feature)
    multi = inner is not None
    named = feature if isinstance(feature, datasets.ClassLabel) else inner
    if isinstance(named, datasets.ClassLabel):
        names = list(named.names)
        if declared is not None and list(declared) != names:
            raise DataError(
                f"labels: {declared} differs from the ClassLabel names of column {column!r} of {where}: {names}; "
                "remove labels: or list the same names in the same order"
            )
    elif declared is not None:
        names = list(declared)
    else:
        raise DataError(
            f"{where}: the label column {column!r} is {feature!r}, not a ClassLabel, and the recipe has no labels: "
            "list; a stream is not read before training, so name its classes (labels: [cat, dog, ...])"
        )
    check_case_collisions(names, where)
    return names, multi


class StreamLabels:
    """A batched ``IterableDataset.map`` function: the raw image and label columns -> the contract's ``image``
    (undecoded, named by the sample when it has no path), ``label`` (a class id, or a multi-hot row) and
    ``key``. Picklable, so a loader process can run it."""

    def __init__(
        self,
        labels: list[str],
        multi: bool,
        image_column: str,
        label_column: str,
        where: str,
        feature: Any = None,
    ):
        self.labels = labels
        named = feature if isinstance(feature, datasets.ClassLabel) else _inner(feature)
        # A split's own ClassLabel ids are matched to the classes by name (its names may be ordered otherwise)
        self.own_names = list(named.names) if isinstance(named, datasets.ClassLabel) else None
        self.multi = multi
        self.image_column = image_column
        self.label_column = label_column
        self.where = where
        self.ids = {name: index for index, name in enumerate(labels)}

    def features(self) -> datasets.Features:
        base = multi_hot_features(self.labels) if self.multi else contract_features(self.labels)
        return datasets.Features({**base, KEY_COLUMN: datasets.Value("string")})

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        keys = [self._key(batch, row, index) for row, index in enumerate(indices)]
        images = []
        for image, key in zip(batch[self.image_column], keys, strict=True):
            if isinstance(image, dict) and not image.get("path"):
                image = {"bytes": image.get("bytes"), "path": key}
            images.append(image)
        labels = [self._label(value, key) for value, key in zip(batch[self.label_column], keys, strict=True)]
        return {"image": images, "label": labels, KEY_COLUMN: keys}

    def _key(self, batch: dict[str, list], row: int, index: int) -> str:
        if "__key__" in batch and batch["__key__"][row] is not None:
            url = batch.get("__url__", [None] * (row + 1))[row]
            return f"{batch['__key__'][row]}" + (f" ({url})" if url else "")
        image = batch[self.image_column][row]
        path = image.get("path") if isinstance(image, dict) else image if isinstance(image, str) else None
        return str(path) if path else f"row {index} of this process's stream"

    def _label(self, value: Any, key: str) -> Any:
        if self.multi:
            if value is None or isinstance(value, (str, int)):
                value = [] if value is None else [value]
            row = np.zeros(len(self.labels), dtype=np.float32)
            for item in value:
                row[self._id(item, key)] = 1.0
            return row.tolist()
        return self._id(value, key)

    def _id(self, value: Any, key: str) -> int:
        if (
            self.own_names is not None
            and isinstance(value, (int, np.integer))
            and 0 <= value < len(self.own_names)
        ):
            value = self.own_names[int(value)]
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if 0 <= int(value) < len(self.labels):
                return int(value)
            found = f"class id {int(value)}" if int(value) >= 0 else "no label (-1)"
        else:
            name = label_name(value)
            if name in self.ids:
                return self.ids[name]
            found = f"label {name!r}" if name is not None else "no label"
        shown = ", ".join(self.labels[:10]) + (", ..." if len(self.labels) > 10 else "")
        raise DataError(
            f"{self.where}: sample {key}: {found} is not one of the {len(self.labels)} declared classes ({shown})"
        )
