"""Classification metrics computed with numpy alone (no metric script is fetched from the Hub).

The numbers match scikit-learn's conventions exactly: macro averages run over all ``num_classes``
classes (``labels=range(num_classes)``), and a precision, recall or F1 whose denominator is zero
is 0.0 (``zero_division=0``). Top-k ties are broken by the lower class index (stable sort).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from hf_finetune.inference.extra_metrics import extra_metric_values, load_extra_metrics
from hf_finetune.inference.multi_label_metrics import multi_label_metrics

if TYPE_CHECKING:
    from transformers import EvalPrediction

__all__ = [
    "TOP_K",
    "confusion_matrix",
    "classification_metrics",
    "per_class_report",
    "build_compute_metrics",
    "first_array",
]

logger = logging.getLogger(__name__)

#: The k of the top-k accuracy; it is reported only when there are more than ``TOP_K`` classes.
TOP_K = 5


def _check_inputs(logits: Any, labels: Any, num_classes: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Return ``(logits, labels, num_classes)`` as a 2-D float array, a 1-D int array and an int."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (samples, classes), got shape {logits.shape}")
    labels = labels.reshape(-1)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits but {labels.shape[0]} labels")
    if labels.shape[0] == 0:
        raise ValueError("cannot compute metrics on zero samples")
    if num_classes is None:
        num_classes = int(logits.shape[1])
    elif num_classes != logits.shape[1]:
        raise ValueError(f"num_classes={num_classes} but logits have {logits.shape[1]} columns")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError("labels must be integer class indices")
        labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"label {int(bad)} is outside 0..{num_classes - 1}")
    return logits, labels.astype(np.int64), num_classes


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts; rows are true classes, columns predicted ones."""
    flat = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise division that gives 0.0 where the denominator is 0 (sklearn's zero_division=0)."""
    numerator = numerator.astype(np.float64)
    denominator = denominator.astype(np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    true_positive = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    false_positive = predicted - true_positive
    false_negative = support - true_positive
    return {
        "precision": _safe_divide(true_positive, predicted),
        "recall": _safe_divide(true_positive, support),
        "f1": _safe_divide(2 * true_positive, 2 * true_positive + false_positive + false_negative),
        "support": support,
    }


def _top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose label is among the ``k`` highest logits (ties: lower index first)."""
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def _summary(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[dict[str, float], np.ndarray]:
    """The summary metrics and the confusion matrix."""
    predicted = np.argmax(logits, axis=1)  # the first maximum, like a stable argsort
    matrix = confusion_matrix(predicted, labels, num_classes)
    scores = _per_class_scores(matrix)
    summary = {
        "accuracy": float(np.mean(predicted == labels)),
        "macro_f1": float(np.mean(scores["f1"])),
    }
    if num_classes > TOP_K:
        summary[f"top{TOP_K}_accuracy"] = _top_k_accuracy(logits, labels, TOP_K)
    return summary, matrix


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, num_classes: int | None = None
) -> dict[str, float]:
    """Return ``accuracy``, ``macro_f1`` and, with more than 5 classes, ``top5_accuracy``.

    ``logits`` is ``(samples, classes)`` (any monotone scores will do); ``labels`` holds class
    indices. ``num_classes`` defaults to the number of logit columns and must equal it when given.
    """
    logits, labels, num_classes = _check_inputs(logits, labels, num_classes)
    summary, _ = _summary(logits, labels, num_classes)
    return summary


def per_class_report(logits: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Per-class precision/recall/F1/support, the confusion matrix and the summary metrics.

    Returns ``{"per_class": {name: {"precision", "recall", "f1", "support"}},
    "confusion_matrix": [[int]] (rows true, columns predicted), "accuracy", "macro_f1", ...}``.
    """
    names = [str(name) for name in label_names]
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"label names must be unique; repeated: {duplicates}")
    logits, labels, num_classes = _check_inputs(logits, labels, len(names))
    summary, matrix = _summary(logits, labels, num_classes)
    scores = _per_class_scores(matrix)
    per_class = {
        name: {
            "precision": float(scores["precision"][index]),
            "recall": float(scores["recall"][index]),
            "f1": float(scores["f1"][index]),
            "support": int(scores["support"][index]),
        }
        for index, name in enumerate(names)
    }
    return {"per_class": per_class, "confusion_matrix": matrix.tolist(), **summary}


def first_array(value: Any) -> np.ndarray:
    """Trainer may hand over a tuple (logits, hidden states, ...); the first entry is what we need."""
    while isinstance(value, (tuple, list)):
        if not value:
            raise ValueError("empty predictions or labels tuple")
        value = value[0]
    if hasattr(value, "detach"):  # a torch tensor slipped through
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def build_compute_metrics(
    num_classes: int, metrics: list[str] | None = None, multi_label: bool = False
) -> Callable[[EvalPrediction], dict[str, float]]:
    """Return a ``compute_metrics`` function for :class:`transformers.Trainer`.

    ``metrics``: the ``metrics`` recipe key, ``evaluate`` metric names or paths (``NAME:CONFIG`` for a config),
    loaded here (a :class:`~hf_finetune.errors.ConfigError` when one cannot be, or cannot take the data's labels)
    and computed after the built-in ones (:mod:`hf_finetune.inference.extra_metrics`).

    ``multi_label``: the labels are ``(N, K)`` multi-hot rows and the built-in metrics are
    :func:`~hf_finetune.inference.multi_label_metrics.multi_label_metrics` (``map``, ``map_micro``, ``f1_micro``,
    ``f1_macro``, ``exact_match``) at the threshold 0.5 for every class: during training the thresholds are not
    chosen yet (they are fitted on the validation split at the end), so the F1s and the exact match of the
    evaluations are those at 0.5, and ``map`` (which needs no threshold) is the one to choose the model by."""

    modules = load_extra_metrics(metrics, multi_label=multi_label)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = first_array(prediction.predictions)
        labels = first_array(prediction.label_ids)
        if multi_label:
            if logits.ndim != 2 or logits.shape[1] != num_classes:
                raise ValueError(f"num_classes={num_classes} but logits have shape {logits.shape}")
            values = multi_label_metrics(logits, labels)
        else:
            values = classification_metrics(logits, labels, num_classes)
        if modules:
            values.update(extra_metric_values(modules, logits, labels, multi_label=multi_label))
        return values

    return compute_metrics
