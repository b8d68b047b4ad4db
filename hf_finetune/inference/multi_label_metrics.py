"""Multi-label metrics and decision thresholds, computed with numpy alone.

A multi-label model scores each class on its own: its logits ``(samples, classes)`` go through a sigmoid, and a
class is predicted for an image when its probability is at least the class's threshold (``probability >=
threshold``; 0.5 unless thresholds were fitted). The targets are the multi-hot matrix ``(samples, classes)`` of
0/1 values (:mod:`hf_finetune.data.multi_label`).

The numbers follow scikit-learn's definitions exactly:

* average precision (AP) per class is ``sklearn.metrics.average_precision_score``: the step-wise sum over the
  distinct scores, highest first, of ``(recall_i - recall_(i-1)) * precision_i`` (tied scores form one step).
  It ranks by the logits; the sigmoid keeps their order (save where it rounds two far-out logits to one float).
  A class without a positive has no AP (``nan``); ``map`` is the mean AP over the classes with at least one
  positive, ``map_micro`` is ``average_precision_score(average="micro")`` (every cell of the matrix one sample);
* ``f1_micro`` and ``f1_macro`` are ``f1_score(average=..., zero_division=0)`` on the predicted multi-hot matrix
  (a macro average over all classes: a class never present nor predicted counts 0);
* ``exact_match`` is ``accuracy_score`` on the multi-hot matrices: the share of images whose predicted set of
  classes is exactly their set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLD",
    "sigmoid",
    "average_precision",
    "fit_thresholds",
    "multi_label_metrics",
    "multi_label_report",
]

#: The threshold of every class of a model whose thresholds were not fitted (and during training).
DEFAULT_THRESHOLD = 0.5


def sigmoid(logits: Any) -> np.ndarray:
    """The logistic function of ``logits`` in float64, without overflow for large negative values."""
    logits = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(logits)
    positive = logits >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-logits[positive]))
    exp = np.exp(logits[~positive])
    out[~positive] = exp / (1.0 + exp)
    return out


def _check(scores: Any, targets: Any, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """``(scores, targets)`` as ``(N, K)`` float64 and bool arrays; a ValueError saying what is wrong."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2:
        raise ValueError(f"{what} must be 2-D (samples, classes), got shape {scores.shape}")
    if targets.shape != scores.shape:
        raise ValueError(
            f"multi-label targets must be a multi-hot matrix of the shape of the {what} {scores.shape}, "
            f"got shape {targets.shape}"
        )
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"cannot compute metrics on {what} of shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{what} hold a value that is not a finite number")
    if not np.all((targets == 0) | (targets == 1)):
        bad = targets[(targets != 0) & (targets != 1)].flat[0]
        raise ValueError(f"multi-label targets must be 0 or 1, got {bad.item()!r}")
    return scores, targets == 1


def _binary_average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """sklearn's ``average_precision_score`` of one class (``nan`` without a positive)."""
    total = int(positive.sum())
    if total == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, positive = scores[order], positive[order]
    last_of_step = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # the end of each run of ties
    true_positives = np.cumsum(positive, dtype=np.float64)[last_of_step]
    precision = true_positives / (last_of_step + 1.0)
    recall = true_positives / total
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision(scores: Any, targets: Any) -> np.ndarray:
    """``(K,)`` float64: each class's AP (sklearn's ``average_precision_score``), ``nan`` where a class has no
    positive. ``scores``: ``(N, K)`` logits or probabilities (only their order counts); ``targets``: multi-hot."""
    scores, positive = _check(scores, targets)
    return np.array([_binary_average_precision(scores[:, k], positive[:, k]) for k in range(scores.shape[1])])


def _check_thresholds(thresholds: Any, num_classes: int) -> np.ndarray:
    if thresholds is None:
        thresholds = DEFAULT_THRESHOLD
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim == 0:
        thresholds = np.full(num_classes, float(thresholds))
    if thresholds.shape != (num_classes,):
        raise ValueError(
            f"thresholds must be one number or {num_classes} (one per class), got {thresholds.shape}"
        )
    if not np.all((thresholds >= 0.0) & (thresholds <= 1.0)):
        raise ValueError(f"thresholds must be probabilities in [0, 1], got {thresholds.tolist()}")
    return thresholds


def _f1(true_positives: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """F1 = 2TP / (predicted + actual), 0.0 where both are 0 (sklearn's ``zero_division=0``)."""
    denominator = (predicted + actual).astype(np.float64)
    out = np.zeros(np.shape(denominator))
    np.divide(2.0 * true_positives, denominator, out=out, where=denominator != 0)
    return out


def _best_threshold(probabilities: np.ndarray, positive: np.ndarray) -> float:
    """The threshold maximising F1 of ``probability >= threshold`` against ``positive`` (flat arrays).

    Candidates: the midpoints between consecutive distinct probabilities, one below the lowest (every sample
    positive), one above the highest (none) and 0.5; together they give every F1 a threshold can reach. Among
    the thresholds of the highest F1, the one closest to 0.5 (the lower one on an exact tie of distance)."""
    actual = int(positive.sum())
    if actual == 0:
        return DEFAULT_THRESHOLD
    distinct = np.unique(probabilities)
    candidates = np.r_[
        (distinct[:-1] + distinct[1:]) / 2.0, distinct[0] / 2.0, (distinct[-1] + 1.0) / 2.0, DEFAULT_THRESHOLD
    ]
    every, positives = np.sort(probabilities), np.sort(probabilities[positive])
    predicted = every.size - np.searchsorted(every, candidates, side="left")
    true_positives = positives.size - np.searchsorted(positives, candidates, side="left")
    f1 = _f1(true_positives, predicted, np.full(candidates.shape, actual))
    best = candidates[f1 == f1.max()]
    distance = np.abs(best - DEFAULT_THRESHOLD)
    return float(np.min(best[distance == distance.min()]))


def fit_thresholds(probabilities: Any, targets: Any, mode: str | float = "per_class") -> np.ndarray:
    """``(K,)`` float64 decision thresholds on sigmoid ``probabilities`` ``(N, K)`` for the multi-hot ``targets``.

    * ``"per_class"``: each class's threshold maximises that class's F1 on these data (see
      :func:`_best_threshold` for the candidates and the tie rule: the highest F1, then closest to 0.5). A class
      without a positive here keeps 0.5: no threshold can be chosen for it;
    * ``"global"``: one threshold for every class, maximising the micro F1 (the same candidates over all cells;
      0.5 when no cell is positive);
    * a number in (0, 1): that threshold for every class.
    """
    probabilities, positive = _check(probabilities, targets, "probabilities")
    if np.any((probabilities < 0.0) | (probabilities > 1.0)):
        raise ValueError("probabilities must lie in [0, 1] (apply sigmoid to the logits first)")
    num_classes = probabilities.shape[1]
    if isinstance(mode, str):
        if mode == "per_class":
            return np.array(
                [_best_threshold(probabilities[:, k], positive[:, k]) for k in range(num_classes)]
            )
        if mode == "global":
            return np.full(num_classes, _best_threshold(probabilities.ravel(), positive.ravel()))
        raise ValueError(f"threshold mode must be 'per_class', 'global' or a number in (0, 1), got {mode!r}")
    if isinstance(mode, bool) or not isinstance(mode, (int, float, np.floating)) or not 0.0 < mode < 1.0:
        raise ValueError(f"threshold mode must be 'per_class', 'global' or a number in (0, 1), got {mode!r}")
    return np.full(num_classes, float(mode))


def _counts(logits: np.ndarray, positive: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    predicted = sigmoid(logits) >= thresholds[None, :]
    return {
        "predicted_matrix": predicted,
        "true_positives": np.sum(predicted & positive, axis=0),
        "predicted": np.sum(predicted, axis=0),
        "support": np.sum(positive, axis=0),
    }


def _summary(logits: np.ndarray, positive: np.ndarray, counts: dict[str, np.ndarray]) -> dict[str, float]:
    ap = np.array([_binary_average_precision(logits[:, k], positive[:, k]) for k in range(logits.shape[1])])
    present = ~np.isnan(ap)
    f1 = _f1(counts["true_positives"], counts["predicted"], counts["support"])
    micro = _f1(counts["true_positives"].sum(), counts["predicted"].sum(), counts["support"].sum())
    return {
        "map": float(np.mean(ap[present])) if present.any() else float("nan"),
        "map_micro": _binary_average_precision(logits.ravel(), positive.ravel()),
        "f1_micro": float(micro),
        "f1_macro": float(np.mean(f1)),
        "exact_match": float(np.mean(np.all(counts["predicted_matrix"] == positive, axis=1))),
        "_ap": ap,
        "_f1": f1,
    }


def multi_label_metrics(logits: Any, targets: Any, thresholds: Any = None) -> dict[str, float]:
    """``{"map", "map_micro", "f1_micro", "f1_macro", "exact_match"}`` of ``(N, K)`` logits against the multi-hot
    ``targets``; the F1s and the exact match at ``thresholds`` (``(K,)`` or one number, on the sigmoid
    probabilities; 0.5 when None). ``map`` is ``nan`` when no class has a positive."""
    logits, positive = _check(logits, targets, "logits")
    counts = _counts(logits, positive, _check_thresholds(thresholds, logits.shape[1]))
    summary = _summary(logits, positive, counts)
    return {key: value for key, value in summary.items() if not key.startswith("_")}


def multi_label_report(
    logits: Any, targets: Any, label_names: Sequence[str], thresholds: Any = None
) -> dict[str, Any]:
    """The multi-label ``eval_per_class.json``: ``{"multi_label": True, "per_class": {name: {"ap", "precision",
    "recall", "f1", "support", "threshold"}}, "map", "map_micro", "f1_micro", "f1_macro", "exact_match",
    "thresholds": [K floats]}``; ``ap`` is ``nan`` for a class without a positive, precision/recall/F1 0.0
    where their denominator is 0."""
    names = [str(name) for name in label_names]
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"label names must be unique; repeated: {duplicates}")
    logits, positive = _check(logits, targets, "logits")
    if len(names) != logits.shape[1]:
        raise ValueError(f"{len(names)} label names but logits have {logits.shape[1]} columns")
    thresholds = _check_thresholds(thresholds, logits.shape[1])
    counts = _counts(logits, positive, thresholds)
    summary = _summary(logits, positive, counts)
    true_positives = counts["true_positives"].astype(np.float64)
    precision = np.divide(
        true_positives, counts["predicted"], out=np.zeros(len(names)), where=counts["predicted"] > 0
    )
    recall = np.divide(
        true_positives, counts["support"], out=np.zeros(len(names)), where=counts["support"] > 0
    )
    per_class = {
        name: {
            "ap": float(summary["_ap"][k]),
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(summary["_f1"][k]),
            "support": int(counts["support"][k]),
            "threshold": float(thresholds[k]),
        }
        for k, name in enumerate(names)
    }
    metrics = {key: value for key, value in summary.items() if not key.startswith("_")}
    return {"multi_label": True, "per_class": per_class, **metrics, "thresholds": thresholds.tolist()}
