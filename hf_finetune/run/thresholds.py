"""A multi-label run's decision thresholds: chosen once, on the validation split, by the final model.

After the final evaluation, the ``threshold`` key decides each class's threshold on the validation
predictions (:func:`hf_finetune.inference.multi_label_metrics.fit_thresholds`): ``per_class`` (each class's F1 at
its best), ``global`` (one threshold, the micro F1 at its best) or a fixed probability. They are saved with the
model as ``config.json`` ``label_thresholds`` (``{class name: probability}``), which ``hf-finetune predict`` and
``eval`` and the model card read. The final validation figures (``eval_f1_micro``, ``eval_f1_macro``,
``eval_exact_match``) are then those at the chosen thresholds (optimistic: the thresholds were fitted on those
images), and the test split, when there is one, is scored with them (:mod:`hf_finetune.run.test_split`): its
figures are the honest ones. During training every evaluation uses 0.5 (nothing is chosen yet); the mean
average precision, which picks the best checkpoint, needs no threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from hf_finetune.data.multi_label import is_multi_label
from hf_finetune.inference.metrics import first_array
from hf_finetune.inference.multi_label_metrics import fit_thresholds, multi_label_metrics, sigmoid

__all__ = ["THRESHOLD_KEYS", "choose_thresholds", "with_thresholds"]

logger = logging.getLogger("hf_finetune")

#: The metrics that depend on the thresholds (recomputed once they are chosen).
THRESHOLD_KEYS = ("f1_micro", "f1_macro", "exact_match")


def with_thresholds(compute_metrics: Callable, thresholds: np.ndarray) -> Callable:
    """``compute_metrics`` whose threshold-dependent figures (:data:`THRESHOLD_KEYS`) are computed at
    ``thresholds`` instead of 0.5."""

    def compute(prediction) -> dict[str, float]:
        values = dict(compute_metrics(prediction))
        logits, targets = first_array(prediction.predictions), first_array(prediction.label_ids)
        at = multi_label_metrics(logits, targets, thresholds)
        values.update({key: at[key] for key in THRESHOLD_KEYS if key in at})
        return values

    return compute


def choose_thresholds(trainer, loaded, data, threshold, evaluation) -> dict[str, float] | None:
    """Choose and save a multi-label run's thresholds (see the module doc); None for single-label data.

    ``threshold``: the ``threshold`` key; ``evaluation``: ``(metrics, prediction)`` of the final evaluation, whose
    threshold-dependent metrics are updated in place. The thresholds go into the config of the model that is
    saved, and ``trainer.compute_metrics`` uses them from now on (the test split)."""

    eval_metrics, prediction = evaluation
    if not is_multi_label(data.dataset["train"]) or prediction is None:
        return None
    logits, targets = first_array(prediction.predictions), first_array(prediction.label_ids)
    # rounded as saved, so that the figures below are those a later eval of the saved model computes
    thresholds = np.round(fit_thresholds(sigmoid(logits), targets, threshold), 6)
    chosen = {name: float(t) for name, t in zip(data.labels, thresholds, strict=True)}
    for model in {id(m): m for m in (loaded.model, getattr(trainer.model, "module", trainer.model))}.values():
        model.config.label_thresholds = chosen
    before = {key: eval_metrics.get(f"eval_{key}") for key in THRESHOLD_KEYS}
    after = multi_label_metrics(logits, targets, thresholds)
    for key in THRESHOLD_KEYS:
        if key in after:
            eval_metrics[f"eval_{key}"] = after[key]
    if trainer.compute_metrics is not None:
        trainer.compute_metrics = with_thresholds(trainer.compute_metrics, thresholds)
    if trainer.is_world_process_zero():
        shown = ", ".join(f"{name} {value:.3f}" for name, value in list(chosen.items())[:8])
        more = f" (+{len(chosen) - 8} more)" if len(chosen) > 8 else ""
        logger.info(
            "thresholds (%s, chosen on the validation split, saved as config.json label_thresholds): %s%s; "
            "validation F1 micro %.4f at 0.5 -> %.4f at the thresholds",
            threshold,
            shown,
            more,
            float(before["f1_micro"]) if before["f1_micro"] is not None else float("nan"),
            after["f1_micro"],
        )
    return chosen
