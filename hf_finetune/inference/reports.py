"""Reports a person looks at: the confusion matrix, the most confused pairs, the worst images and the
training curves of a run.

``hf-finetune eval`` writes :data:`CONFUSION_MATRIX_NAME`, :data:`MOST_CONFUSED_NAME` and
:data:`TOP_LOSSES_NAME` beside its ``metrics.json`` (:func:`write_eval_reports`); training writes
:data:`TRAINING_CURVES_NAME` and the confusion matrix of its final validation evaluation into the output
folder (:func:`write_training_figures`), and the model card shows both. A multi-label evaluation draws
:data:`PRECISION_RECALL_NAME` (:mod:`hf_finetune.inference.precision_recall`) in place of both confusion files.

The numbers plotted come from functions that return them (:func:`normalized_confusion`,
:func:`most_confused`, :func:`per_image_losses`, :func:`training_curves`), so they can be checked apart from
the pictures. matplotlib is imported inside the plotting functions and draws on its Agg canvas (no pyplot,
no display, no global backend switch). Label names and file names are drawn as plain text
(:data:`hf_finetune.escaping.PLAIN_TEXT`: a label such as ``$\\foo{$`` is not read as math text), and the
CSV's label cells cannot start a spreadsheet formula (:func:`hf_finetune.escaping.csv_cell`).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf_finetune.data.image_check import image_name, open_image
from hf_finetune.escaping import PLAIN_TEXT, csv_cell
from hf_finetune.inference.figures import new_figure as _figure
from hf_finetune.inference.figures import short_name as _short
from hf_finetune.inference.metrics import confusion_matrix
from hf_finetune.inference.precision_recall import (
    PRECISION_RECALL_NAME,
    PrecisionRecallFigure,
    plot_precision_recall,
)

__all__ = [
    "CONFUSION_MATRIX_NAME",
    "MOST_CONFUSED_NAME",
    "TOP_LOSSES_NAME",
    "TRAINING_CURVES_NAME",
    "TRAINING_FIGURES",
    "PRECISION_RECALL_NAME",
    "PrecisionRecallFigure",
    "plot_precision_recall",
    "normalized_confusion",
    "most_confused",
    "write_most_confused",
    "is_multi_hot",
    "per_image_losses",
    "training_curves",
    "best_epoch",
    "plot_confusion_matrix",
    "plot_top_losses",
    "plot_training_curves",
    "write_eval_reports",
    "write_training_figures",
]

logger = logging.getLogger(__name__)

CONFUSION_MATRIX_NAME = "confusion_matrix.png"
MOST_CONFUSED_NAME = "most_confused.csv"
TOP_LOSSES_NAME = "top_losses.png"
TRAINING_CURVES_NAME = "training_curves.png"
#: The figures training writes into its output folder (a multi-label run: the precision-recall curves in place
#: of the confusion matrix).
TRAINING_FIGURES = (TRAINING_CURVES_NAME, CONFUSION_MATRIX_NAME, PRECISION_RECALL_NAME)

MAX_TICK_LABELS = 40  # more classes than this: every k-th tick label is shown
MAX_ANNOTATED = 20  # up to this many classes, each cell shows its share


# ------------------------------------------------------------------------------------------------ numbers
def normalized_confusion(matrix: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(normalised, order)``: the confusion matrix (rows true, columns predicted) with each row divided by
    its true class's count (a class without images keeps a row of zeros), rows and columns both reordered by
    ``order``: the classes by recall, lowest first (ties: the lower class index first). The diagonal of the
    result is the recall of each class in that order."""
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {counts.shape}")
    support = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)
    order = np.argsort(np.diag(normalised), kind="stable")
    return normalised[np.ix_(order, order)], order


def most_confused(matrix: Any, label_names: Sequence[str]) -> list[dict[str, Any]]:
    """The off-diagonal cells with at least one image, largest count first (ties: larger share, then class
    order): ``{"true", "predicted", "count", "share"}``, share = count / images of the true class."""
    counts = np.asarray(matrix, dtype=np.int64)
    support = counts.sum(axis=1)
    rows = [
        (int(counts[t, p]), float(counts[t, p] / support[t]), t, p)
        for t, p in zip(*np.nonzero(counts), strict=True)
        if t != p
    ]
    rows.sort(key=lambda r: (-r[0], -r[1], r[2], r[3]))
    return [
        {"true": str(label_names[t]), "predicted": str(label_names[p]), "count": n, "share": share}
        for n, share, t, p in rows
    ]


def write_most_confused(matrix: Any, label_names: Sequence[str], path: str | Path) -> Path:
    """Write :func:`most_confused` as CSV (``true,predicted,count,share``; share rounded to 6 places); a
    label starting with ``=``, ``+``, ``-`` or ``@`` gets a leading ``'`` (:func:`~hf_finetune.escaping.csv_cell`)."""
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true", "predicted", "count", "share"])
        for row in most_confused(matrix, label_names):
            writer.writerow(
                [csv_cell(row["true"]), csv_cell(row["predicted"]), row["count"], f"{row['share']:.6f}"]
            )
    return path


def is_multi_hot(logits: Any, labels: Any) -> bool:
    """Whether ``labels`` are multi-hot rows (N, K) beside (N, K) ``logits``, K > 1 (a multi-label evaluation),
    rather than one class index per image."""
    labels, shape = np.asarray(labels), np.shape(logits)
    return labels.ndim == 2 and labels.shape == tuple(shape) and labels.shape[1] > 1


def per_image_losses(logits: Any, labels: Any) -> dict[str, np.ndarray]:
    """Per image: ``loss`` (cross-entropy of the true class, natural log), ``predicted`` (argmax),
    ``probability`` (softmax probability of the predicted class) and ``true_probability``; float64.

    Multi-hot ``labels`` (N, K) (:func:`is_multi_hot`): ``loss`` is the binary cross-entropy of the sigmoid
    outputs summed over the K classes (the image's share of ``BCEWithLogitsLoss`` times K), ``probabilities``
    (N, K) the sigmoid outputs, ``predicted`` / ``probability`` the highest-scoring class and its probability,
    ``true_probability`` the lowest probability among the image's classes (1.0 for an image without any)."""
    if is_multi_hot(logits, labels):
        return _multi_label_losses(np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64))
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    predicted = np.argmax(logits, axis=1)
    return {
        "loss": -log_probs[rows, labels],
        "predicted": predicted,
        "probability": np.exp(log_probs[rows, predicted]),
        "true_probability": np.exp(log_probs[rows, labels]),
    }


def _multi_label_losses(logits: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    # log(1 + exp(-|x|)) form: no overflow for large logits of either sign
    bce = np.maximum(logits, 0.0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    predicted = np.argmax(logits, axis=1)
    true_probability = np.where(targets > 0.5, probabilities, 1.0).min(axis=1)
    return {
        "loss": bce.sum(axis=1),
        "probabilities": probabilities,
        "predicted": predicted,
        "probability": probabilities[np.arange(len(logits)), predicted],
        "true_probability": true_probability,
    }


def training_curves(log_history: Sequence[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """``{series: [(epoch, value), ...]}`` from ``trainer.state.log_history``: ``loss`` (the training loss
    at each logging step) and every ``eval_*`` number of the evaluations (epoch 0 included), up to the end of
    training (the re-evaluation after it is left out). Runtimes and speeds are left out."""
    skip = ("runtime", "per_second", "samples", "steps")
    curves: dict[str, list[tuple[float, float]]] = {}
    for entry in log_history:
        if "train_runtime" in entry:
            break
        epoch = entry.get("epoch")
        if epoch is None:
            continue
        for key, value in entry.items():
            wanted = key == "loss" or (key.startswith("eval_") and not key.endswith(skip))
            if wanted and isinstance(value, (int, float)) and not isinstance(value, bool):
                curves.setdefault(key, []).append((float(epoch), float(value)))
    return curves


def best_epoch(
    log_history: Sequence[dict[str, Any]],
    metric: str | None = "accuracy",
    greater_is_better: bool | None = None,
) -> tuple[float, float] | None:
    """``(epoch, value)`` of the evaluation with the best ``metric`` during training (the first one on a
    tie), or None when no evaluation recorded it. ``greater_is_better`` defaults as transformers' does:
    True unless the metric is a loss."""
    name = metric or "loss"
    key = name if name.startswith("eval_") else f"eval_{name}"
    if greater_is_better is None:
        greater_is_better = not name.endswith("loss")
    points = training_curves(log_history).get(key, [])
    if not points:
        return None
    sign = 1.0 if greater_is_better else -1.0
    best = max(range(len(points)), key=lambda i: (sign * points[i][1], -i))
    return points[best]


# -------------------------------------------------------------------------------------------------- plots
def plot_confusion_matrix(
    matrix: Any, label_names: Sequence[str], path: str | Path, title: str | None = None
) -> Path:
    """Draw :func:`normalized_confusion` of ``matrix`` as a heat map into ``path`` (PNG).

    Rows are true classes, columns predicted ones, both in the same order (lowest recall first), so the
    diagonal is each class's recall. With more than :data:`MAX_TICK_LABELS` classes every k-th tick is
    labelled; up to :data:`MAX_ANNOTATED` classes each cell with images shows its share."""
    normalised, order = normalized_confusion(matrix)
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(order)
    names = [_short(label_names[i]) for i in order]
    side = float(np.clip(3.5 + 0.13 * n, 6.0, 16.0))
    figure = _figure(side + 1.2, side)
    ax = figure.add_subplot()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    step = max(1, math.ceil(n / MAX_TICK_LABELS))
    ticks = np.arange(0, n, step)
    fontsize = 9 if n <= MAX_TICK_LABELS else 7
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=fontsize, **PLAIN_TEXT)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=fontsize, **PLAIN_TEXT)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (sorted by recall, lowest first)")
    if n <= MAX_ANNOTATED:
        for r in range(n):
            for c in range(n):
                if counts[order[r], order[c]]:
                    value = normalised[r, c]
                    ax.text(
                        c,
                        r,
                        f"{value:.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if value > 0.5 else "black",
                    )
    total, correct = int(counts.sum()), int(np.trace(counts))
    accuracy = correct / total if total else 0.0
    shown = "" if step == 1 else f"; 1 class in {step} labelled"
    ax.set_title(
        title or f"confusion matrix, {total} images, accuracy {accuracy:.4f}{shown}",
        fontsize=10,
        **PLAIN_TEXT,
    )
    path = Path(path)
    figure.savefig(path)
    return path


def plot_top_losses(
    images: Sequence[Any],
    labels: Any,
    logits: Any,
    label_names: Sequence[str],
    path: str | Path,
    k: int = 16,
    columns: int = 4,
    thresholds: Any = None,
) -> Path:
    """A grid of the ``k`` images with the highest loss into ``path`` (PNG); each title gives the true class,
    the predicted class with its probability, and the loss with the probability of the true class.

    Multi-hot ``labels`` (:func:`is_multi_hot`): the loss is the image's binary cross-entropy summed over the
    classes; each title gives the true classes and the predicted ones (sigmoid probability at least the
    class's entry of ``thresholds``, 0.5 each without them), highest first.

    ``images`` are what the dataset's image column holds (paths, ``{"path", "bytes"}`` or PIL images); an
    image that cannot be opened is drawn as an empty tile with its reason."""

    multi = is_multi_hot(logits, labels)
    scores = per_image_losses(logits, labels)
    labels = np.asarray(labels, dtype=np.float64) if multi else np.asarray(labels, dtype=np.int64).reshape(-1)
    cut = np.full(len(label_names), 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    worst = np.argsort(-scores["loss"], kind="stable")[: max(1, min(k, len(labels)))]
    columns = max(1, min(columns, len(worst)))
    rows = math.ceil(len(worst) / columns)
    figure = _figure(3.0 * columns, 3.4 * rows)
    for slot, index in enumerate(worst):
        ax = figure.add_subplot(rows, columns, slot + 1)
        ax.set_axis_off()
        try:
            picture = open_image(images[index])
            picture.thumbnail((256, 256))
            ax.imshow(np.asarray(picture))
        except Exception as err:  # an unreadable file must not cost the report
            reason = _short(f"{type(err).__name__}: {err}", 40)
            ax.text(0.5, 0.5, reason, ha="center", fontsize=7, **PLAIN_TEXT)
        title, right = (
            _multi_label_title(scores, labels, index, label_names, cut)
            if multi
            else _single_label_title(scores, labels, index, label_names)
        )
        ax.set_title(title, fontsize=8, color="black" if right else "darkred", **PLAIN_TEXT)
        ax.text(
            0.0,
            -0.02,
            _short(Path(image_name(images[index])).name, 36),
            transform=ax.transAxes,
            fontsize=6,
            va="top",
            **PLAIN_TEXT,
        )
    figure.suptitle(f"the {len(worst)} validation images with the highest loss, highest first", fontsize=10)
    path = Path(path)
    figure.savefig(path)
    return path


def _single_label_title(scores, labels, index, label_names) -> tuple[str, bool]:
    true, predicted = int(labels[index]), int(scores["predicted"][index])
    title = (
        f"true: {_short(label_names[true], 20)}\n"
        f"pred: {_short(label_names[predicted], 20)} ({scores['probability'][index]:.2f})\n"
        f"loss {scores['loss'][index]:.2f}, p(true) {scores['true_probability'][index]:.2f}"
    )
    return title, true == predicted


def _multi_label_title(scores, labels, index, label_names, thresholds) -> tuple[str, bool]:
    probabilities = scores["probabilities"][index]
    truth = labels[index] > 0.5
    called = probabilities >= thresholds
    by_score = np.argsort(-probabilities, kind="stable")

    def names(mask) -> str:
        chosen = [_short(label_names[c], 12) for c in by_score if mask[c]]
        text = ", ".join(chosen[:3]) + (f" +{len(chosen) - 3}" if len(chosen) > 3 else "")
        return text or "(none)"

    title = f"true: {names(truth)}\npred: {names(called)}\nloss {scores['loss'][index]:.2f}"
    return title, bool(np.array_equal(truth, called))


_METRIC_NAMES = {
    "eval_accuracy": "accuracy",
    "eval_top5_accuracy": "top-5 accuracy",
    "eval_macro_f1": "macro F1",
    "eval_map": "mAP",
    "eval_map_micro": "micro mAP",
    "eval_f1_micro": "micro F1",
}


def plot_training_curves(
    log_history: Sequence[dict[str, Any]],
    path: str | Path,
    metric: str | None = "accuracy",
    greater_is_better: bool | None = None,
) -> Path | None:
    """Training loss (each logging step) and validation loss on the left, validation metrics per epoch on the
    right, the best epoch by ``metric`` marked; into ``path`` (PNG). None (nothing written) when the history
    holds neither a training loss nor an evaluation."""
    curves = training_curves(log_history)
    if not curves:
        return None
    figure = _figure(11.0, 4.2)
    loss_ax, metric_ax = figure.subplots(1, 2)
    # markers: a run with a single logging step has one training-loss point, which a line alone would hide
    for key, label, style in (("loss", "training loss", ".-"), ("eval_loss", "validation loss", "o-")):
        if key in curves:
            x, y = zip(*curves[key], strict=True)
            loss_ax.plot(x, y, style, label=label, markersize=4)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss")
    loss_ax.legend(fontsize=8)
    loss_ax.grid(alpha=0.3)
    plotted = False
    for key, label in _METRIC_NAMES.items():
        if key in curves:
            x, y = zip(*curves[key], strict=True)
            metric_ax.plot(x, y, "o-", label=label, markersize=4)
            plotted = True
    best = best_epoch(log_history, metric, greater_is_better)
    if best is not None:
        metric_ax.axvline(best[0], color="grey", linestyle="--", linewidth=1, label=f"best epoch {best[0]:g}")
    metric_ax.set_xlabel("epoch")
    metric_ax.set_ylabel("validation")
    metric_ax.set_title("validation metrics per epoch (epoch 0: before training)")
    if plotted:
        metric_ax.set_ylim(-0.02, 1.02)
        metric_ax.legend(fontsize=8)
    else:
        metric_ax.text(0.5, 0.5, "no validation metrics recorded", ha="center", transform=metric_ax.transAxes)
    metric_ax.grid(alpha=0.3)
    path = Path(path)
    figure.savefig(path)
    return path


# ---------------------------------------------------------------------------------------------- bundles
def write_eval_reports(
    folder: str | Path,
    logits: Any,
    labels: Any,
    label_names: Sequence[str],
    images: Sequence[Any],
    top_k: int = 16,
    thresholds: Any = None,
) -> list[Path]:
    """Write the confusion matrix, the most confused pairs and the worst images of one evaluation into
    ``folder``; returns the files written. ``labels`` index ``label_names`` (the logits' columns).

    A multi-label evaluation (``labels`` multi-hot (N, K), :func:`is_multi_hot`) writes
    :data:`PRECISION_RECALL_NAME` (one curve per class of the sigmoid outputs) and the worst images by summed
    binary cross-entropy (predicted: the classes at or above ``thresholds``, 0.5 each without them); no
    confusion matrix and no most-confused pairs."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    logits = np.asarray(logits)
    if is_multi_hot(logits, labels):
        targets = np.asarray(labels, dtype=np.float64)
        probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        pr = plot_precision_recall(probabilities, targets, label_names, folder / PRECISION_RECALL_NAME)
        losses = folder / TOP_LOSSES_NAME
        return [
            pr.path,
            plot_top_losses(images, targets, logits, label_names, losses, k=top_k, thresholds=thresholds),
        ]
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    matrix = confusion_matrix(np.argmax(logits, axis=1), labels, len(label_names))
    return [
        plot_confusion_matrix(matrix, label_names, folder / CONFUSION_MATRIX_NAME),
        write_most_confused(matrix, label_names, folder / MOST_CONFUSED_NAME),
        plot_top_losses(images, labels, logits, label_names, folder / TOP_LOSSES_NAME, k=top_k),
    ]


def write_training_figures(
    folder: str | Path,
    log_history: Sequence[dict[str, Any]],
    eval_report: dict[str, Any] | None,
    label_names: Sequence[str],
    metric: str | None = "accuracy",
    greater_is_better: bool | None = None,
    probabilities: Any = None,
    targets: Any = None,
) -> list[str]:
    """Write :data:`TRAINING_CURVES_NAME` and, from the final evaluation's report
    (:func:`hf_finetune.inference.metrics.per_class_report`), :data:`CONFUSION_MATRIX_NAME` into ``folder``; returns
    the names written. A multi-label run (``probabilities`` and multi-hot ``targets`` (N, K) of the final
    evaluation given) writes :data:`PRECISION_RECALL_NAME` in place of the confusion matrix. A figure that
    fails is logged and left out: a plot must never cost the model."""
    written = []
    folder = Path(folder)
    jobs = [
        (
            TRAINING_CURVES_NAME,
            lambda: plot_training_curves(
                log_history, folder / TRAINING_CURVES_NAME, metric, greater_is_better
            ),
        )
    ]
    if eval_report is not None and eval_report.get("confusion_matrix"):
        jobs.append(
            (
                CONFUSION_MATRIX_NAME,
                lambda: plot_confusion_matrix(
                    eval_report["confusion_matrix"], label_names, folder / CONFUSION_MATRIX_NAME
                ),
            )
        )
    if probabilities is not None and targets is not None:
        jobs.append(
            (
                PRECISION_RECALL_NAME,
                lambda: plot_precision_recall(
                    probabilities, targets, label_names, folder / PRECISION_RECALL_NAME
                ),
            )
        )
    for name, job in jobs:
        try:
            if job() is not None:
                written.append(name)
        except Exception as err:
            logger.warning("%s not written (%s: %s)", name, type(err).__name__, err)
    return written
