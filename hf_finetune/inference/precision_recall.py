"""The precision-recall figure of a multi-label evaluation: one curve per class, its average precision (AP) in
the legend; it takes the place of the confusion matrix (``precision_recall.png``).

The numbers drawn come from :func:`precision_recall_curve` (the curve and AP of one class, as scikit-learn's
``precision_recall_curve`` and ``average_precision_score`` compute them), and :func:`plot_precision_recall`
returns what it drew (the classes, their AP, the legend and title texts read back from the figure), so both
can be checked apart from the picture. Above ``max_classes`` classes the figure keeps the classes with the
most positive images and says so in its title.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hf_finetune.escaping import PLAIN_TEXT
from hf_finetune.inference.figures import new_figure, short_name

__all__ = [
    "PRECISION_RECALL_NAME",
    "PrecisionRecallFigure",
    "precision_recall_curve",
    "plot_precision_recall",
]

PRECISION_RECALL_NAME = "precision_recall.png"


@dataclass
class PrecisionRecallFigure:
    """What :func:`plot_precision_recall` drew into ``path``."""

    path: Path
    classes: list[int]  # the class indices drawn, in legend order (most positives first when thinned)
    average_precision: np.ndarray  # (K,) float64, AP of every class (nan: a class without positives)
    legend: list[str]  # the legend's texts, read back from the figure
    title: str


def precision_recall_curve(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """``(precision, recall, ap)`` of one class: ``scores`` (N,) and binary ``targets`` (N,).

    One point per distinct score, highest score first (each point: the images scoring at least that much
    are called positive); AP = sum over the points of (recall - previous recall) x precision, previous recall
    starting at 0 (scikit-learn's ``average_precision_score``). Without positive images: empty curves, nan."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(targets, dtype=np.float64).reshape(-1) > 0.5
    if not positive.any():
        return np.zeros(0), np.zeros(0), float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, positive = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # the last image of each distinct score
    true_positives = np.cumsum(positive)[last].astype(np.float64)
    precision = true_positives / (last + 1)
    recall = true_positives / true_positives[-1]
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return precision, recall, ap


def _shown_classes(counts: np.ndarray, max_classes: int) -> list[int]:
    """Every class, or above ``max_classes`` the ones with the most positives (ties: lower index first)."""
    if len(counts) <= max_classes:
        return list(range(len(counts)))
    return [int(i) for i in np.argsort(-counts, kind="stable")[:max_classes]]


def plot_precision_recall(
    probabilities: Any,
    targets: Any,
    label_names: Sequence[str],
    path: str | Path,
    max_classes: int = 20,
) -> PrecisionRecallFigure:
    """Draw one precision-recall curve per class into ``path`` (PNG), each with its AP in the legend.

    ``probabilities`` (N, K) (sigmoid outputs; any score of the same order gives the same curves) and
    ``targets`` (N, K) multi-hot. Above ``max_classes`` classes only the ``max_classes`` with the most positive
    images are drawn, and the title says so; a class without positives is listed with ``AP n/a``."""
    scores = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(targets, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != truth.shape or scores.shape[1] != len(label_names):
        raise ValueError(
            f"probabilities {scores.shape} and targets {truth.shape} must both be (images, "
            f"{len(label_names)} classes)"
        )
    counts = (truth > 0.5).sum(axis=0)
    curves = [precision_recall_curve(scores[:, k], truth[:, k]) for k in range(scores.shape[1])]
    ap = np.array([c[2] for c in curves], dtype=np.float64)
    shown = _shown_classes(counts, max_classes)
    figure = new_figure(9.0, 6.0)
    ax = figure.add_subplot()
    for slot, k in enumerate(shown):
        name = short_name(label_names[k])
        label = f"{name} (AP {ap[k]:.4f})" if counts[k] else f"{name} (AP n/a, no positives)"
        precision, recall, _ = curves[k]
        colour = f"C{slot % 10}"
        style = "-" if slot < 10 else "--"
        # the curve starts at recall 0, precision 1 (nothing called positive) as scikit-learn's does
        ax.step(
            np.r_[0.0, recall], np.r_[1.0, precision], where="pre", color=colour, linestyle=style, label=label
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    legend = ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    for text in legend.get_texts():
        text.set(**PLAIN_TEXT)
    valid = ap[~np.isnan(ap)]
    mean = (
        f"mAP {valid.mean():.4f} over {len(valid)} classes with positives" if len(valid) else "no positives"
    )
    thinned = (
        f"\nshown: the {len(shown)} of {len(label_names)} classes with the most positive images"
        if len(shown) < len(label_names)
        else ""
    )
    title = f"precision-recall per class, {len(scores)} images, {mean}{thinned}"
    ax.set_title(title, fontsize=10, **PLAIN_TEXT)
    path = Path(path)
    figure.savefig(path)
    return PrecisionRecallFigure(
        path=path,
        classes=shown,
        average_precision=ap,
        legend=[t.get_text() for t in legend.get_texts()],
        title=ax.get_title(),
    )
