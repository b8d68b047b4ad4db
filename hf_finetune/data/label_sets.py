"""Multi-label rows: a raw label value read as a set of class names, whether a label column holds sets (the
``problem_type: auto`` decision), the multi-hot rows of a split checked against the train classes, and the
seeded validation hold-out of a multi-label train split.

A label value names a set of classes when it is a list (a JSONL list, a Hub ``List``/``Sequence`` feature) or text
holding ``label_separator`` (``hotdog;food``). Each name is stripped; repeated names in one row are merged; an
empty value (``[]``, an empty CSV cell, ``None``) is an image with no class (a row of zeros). An empty name inside
a list (``a;;b``, ``["a", ""]``) and a list element holding the separator (``["hot;dog"]``) are errors naming the
row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np

from hf_finetune.data.class_names import label_name, sorted_names
from hf_finetune.errors import DataError, suggest

__all__ = [
    "is_list_feature",
    "label_set",
    "several_labels_row",
    "choose_multi_label",
    "multi_hot_rows",
    "warn_classes_without_positives",
    "multi_label_split_indices",
]

logger = logging.getLogger(__name__)


def is_list_feature(feature: Any) -> bool:
    """Whether a label feature holds a list per row (``List``/``Sequence``/``LargeList``, of any values)."""
    return isinstance(feature, (datasets.Sequence, datasets.List, datasets.LargeList, list))


def label_set(value: Any, separator: str, where: str) -> tuple[str, ...]:
    """The class names of one raw label value, stripped, merged, sorted (:func:`sorted_names`); ``()`` for an
    empty value. ``where`` (file and row) starts the one-line error of a bad value."""
    if value is None or (isinstance(value, float) and value != value):
        return ()
    if isinstance(value, (list, tuple)):
        names = []
        for element in value:
            name = label_name(element)
            if name is None:
                raise DataError(f"{where}: empty class name in the label list {list(value)!r}")
            if separator and separator in name:
                raise DataError(
                    f"{where}: class name {name!r} in the label list {list(value)!r} contains the label_separator "
                    f"{separator!r}; rename the class, or set label_separator to another character"
                )
            names.append(name)
        return tuple(sorted_names(set(names)))
    text = str(value) if not isinstance(value, str) else value
    if separator and separator in text:
        parts = [part.strip() for part in text.split(separator)]
        if any(not part for part in parts):
            raise DataError(
                f"{where}: empty class name in the label {text!r} (split at {separator!r}); "
                "expected names separated by one separator each"
            )
        return tuple(sorted_names(set(parts)))
    name = label_name(value)
    return () if name is None else (name,)


def several_labels_row(values: Sequence[Any], separator: str) -> int | None:
    """The index of the first value naming several classes (a list of two or more, or text holding the
    separator), else of the first list value; ``None`` when every value is one plain label."""
    first_list = None
    for index, value in enumerate(values):
        if isinstance(value, (list, tuple)):
            if len(value) >= 2:
                return index
            first_list = index if first_list is None else first_list
        elif isinstance(value, str) and separator and separator in value:
            return index
    return first_list


def choose_multi_label(problem_type: str, found: Sequence[tuple[str, int | None, Any]]) -> bool:
    """Whether the source is multi-label. ``found`` holds, per labelled file or split, (its name, the index of
    its first row naming a set of classes or ``None``, that row's value). ``auto``: multi-label when any has
    one; ``single_label`` with one is an error naming the file/split and the row."""
    if problem_type == "multi_label":
        return True
    hit = next(((where, row, value) for where, row, value in found if row is not None), None)
    if hit is None:
        return False
    if problem_type == "single_label":
        where, row, value = hit
        raise DataError(
            f"{where} row {row + 1}: label {value!r} names a set of classes, but problem_type is single_label; "
            "set problem_type: multi_label (or auto) to train on sets of classes"
        )
    return True


def multi_hot_rows(
    sets: Sequence[tuple[str, ...]], labels: Sequence[str], where: str, rows: Sequence[int] | None = None
) -> list[list[float]]:
    """The multi-hot row of every set of names; a name not among ``labels`` (the train classes) is an error
    naming ``where`` and the row (``rows[i]``, else ``i + 1``)."""
    index = {name: i for i, name in enumerate(labels)}
    out = np.zeros((len(sets), len(labels)), dtype=np.float32)
    for position, names in enumerate(sets):
        for name in names:
            column = index.get(name)
            if column is None:
                row = rows[position] if rows is not None else position + 1
                shown = list(labels) if len(labels) <= 20 else f"{len(labels)} classes"
                raise DataError(
                    f"{where} row {row}: class {name!r} is not among the train classes {shown}"
                    f"{suggest(name, labels)}; every class must have training images"
                )
            out[position, column] = 1.0
    return out.tolist()


def warn_classes_without_positives(split: str, multi_hot: np.ndarray, labels: Sequence[str]) -> list[str]:
    """Warn (and return) the classes no image of a multi-label split holds: their AP is not defined there and
    mAP skips them."""
    counts = multi_hot.sum(axis=0) if len(multi_hot) else np.zeros(len(labels))
    missing = [name for name, count in zip(labels, counts, strict=True) if count == 0]
    if missing:
        logger.warning(
            "%s: %d of %d classes have no positive image (%s); their AP is not defined there and mAP skips them",
            split,
            len(missing),
            len(labels),
            ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else ""),
        )
    return missing


def multi_label_split_indices(hot: np.ndarray, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) row indices of a multi-label train split (``hot``: its ``(rows, K)`` multi-hot rows), by
    seeded iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011): the rarest class first, each of its
    rows goes to the side that still wants most of that class. ``round(rows * fraction)`` rows are held out (at
    least 1, at most ``rows - 1``); a class with n >= 2 images wants ``round(n * fraction)`` of them held out, at
    least 1 and at most n - 1, as the single-label hold-out does. Both lists come back sorted."""
    hot = np.asarray(hot, dtype=bool).reshape(len(hot), -1)
    rows = len(hot)
    if rows < 2:
        return list(range(rows)), []
    count = min(max(1, round(rows * fraction)), rows - 1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(rows)
    positives = hot.sum(axis=0)
    held = np.where(positives >= 2, np.clip(np.round(positives * fraction), 1, positives - 1), 0)
    desired = np.stack([positives - held, held]).astype(np.float64)  # side 0: train, side 1: held out
    total = np.array([rows - count, count], dtype=np.float64)
    side = np.full(rows, -1)
    for _ in range(hot.shape[1]):
        open_rows = order[side[order] < 0]
        left = hot[open_rows].sum(axis=0)
        if not left.any():
            break
        label = int(np.argmin(np.where(left > 0, left, np.iinfo(np.int64).max)))
        for row in open_rows[hot[open_rows, label]]:
            wants = desired[:, label]
            if wants[0] != wants[1]:
                target = int(np.argmax(wants))
            else:
                target = int(np.argmax(total)) if total[0] != total[1] else int(rng.integers(2))
            side[row] = target
            desired[target] -= hot[row]
            total[target] -= 1
    for row in order[side[order] < 0]:  # images without a class fill the sides
        target = int(np.argmax(total))
        side[row] = target
        total[target] -= 1
    _balance(side, hot, order, count)
    return sorted(np.flatnonzero(side == 0).tolist()), sorted(np.flatnonzero(side == 1).tolist())


def _balance(side: np.ndarray, hot: np.ndarray, order: np.ndarray, count: int) -> None:
    """Move rows between the sides until exactly ``count`` are held out: first those that are not the last
    positive of a class on their side, then those with fewest classes, in seeded order."""
    extra = int((side == 1).sum()) - count
    if extra == 0:
        return
    source = 1 if extra > 0 else 0
    candidates = order[side[order] == source]
    on_side = hot[side == source].sum(axis=0)
    last = (hot[candidates] & (on_side == 1)).any(axis=1)
    ranked = np.lexsort((np.arange(len(candidates)), hot[candidates].sum(axis=1), last))
    side[candidates[ranked[: abs(extra)]]] = 1 - source
