"""The parts of the model card (:mod:`hf_finetune.hub.model_card`) that differ for a multi-label model.

A model is multi-label when its ``config.json`` has transformers' ``problem_type: multi_label_classification``
(or its ``eval_per_class.json`` is a multi-label report). Its card says so: sigmoid outputs, one decision
threshold per class saved as ``config.json``'s ``label_thresholds`` and how they were chosen (the recipe's
``threshold`` key); its headline is the validation mAP, its per-class table has AP, F1, precision, recall,
support and threshold, its usage snippet calls ``pipeline(..., function_to_apply="sigmoid", top_k=None)`` and
applies the thresholds, and its ``model-index`` reports ``mean_average_precision`` (macro) and ``f1`` (micro)
for the validation split and, when the run scored one, the test split (``test_map``, ``test_f1_micro``).
"""

from __future__ import annotations

import math
from typing import Any

from hf_finetune.data.multi_label import MULTI_LABEL_PROBLEM_TYPE
from hf_finetune.escaping import markdown_text

__all__ = [
    "METRICS",
    "is_multi_label",
    "fmt",
    "thresholds_text",
    "per_class_rows",
    "headline",
    "first_limitation",
]

METRICS = (  # (eval key, label in the card, model-index type, model-index name, model-index args)
    ("eval_map", "mAP (macro mean AP)", "mean_average_precision", "mAP", {"average": "macro"}),
    ("eval_map_micro", "micro mAP", None, None, None),
    ("eval_f1_micro", "micro F1", "f1", "Micro F1", {"average": "micro"}),
    ("eval_f1_macro", "macro F1", None, None, None),
    ("eval_exact_match", "exact match", None, None, None),
    ("eval_loss", "loss", None, None, None),
)


def is_multi_label(config: dict[str, Any], per_class: dict[str, Any] | None) -> bool:
    """Whether the folder holds a multi-label model (its config, or its per-class report, says so)."""
    return config.get("problem_type") == MULTI_LABEL_PROBLEM_TYPE or bool(
        (per_class or {}).get("multi_label")
    )


def fmt(value: Any) -> str:
    """A number with 4 decimals; ``-`` for a missing value or nan (the AP of a class without positives)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "-"
    return f"{value:.4f}"


def thresholds_text(config: dict[str, Any], facts: dict[str, Any]) -> str:
    """How the model decides: sigmoid outputs and the thresholds, where they are saved, how they were chosen."""
    text = (
        "This is a **multi-label** classifier: each class gets its own probability (a sigmoid output, trained "
        "with binary cross-entropy), so an image may have none, one or several of the classes. "
    )
    thresholds = config.get("label_thresholds")
    if not isinstance(thresholds, dict) or not thresholds:
        return (
            text + "No thresholds were saved with it: a class is called when its probability is at least 0.5."
        )
    values = [float(v) for v in thresholds.values() if isinstance(v, (int, float))]
    mode = facts.get("threshold", "per_class")
    if mode == "global":
        how = (
            "one threshold for every class, the one that maximised the micro F1 on the validation split "
            "(`threshold: global`)"
        )
    elif isinstance(mode, (int, float)) and not isinstance(mode, bool):
        how = f"fixed at {markdown_text(mode)} for every class by the recipe (`threshold: {markdown_text(mode)}`)"
    else:
        how = (
            "for each class the one that maximised its F1 on the validation split (`threshold: per_class`, "
            "the default; a class without positive validation images kept 0.5)"
        )
    span = f"{min(values):.4f} to {max(values):.4f}" if values else "-"
    return text + (
        f"A class is called when its probability reaches its own threshold: the {len(thresholds)} thresholds "
        f"(from {span}) are saved in `config.json` as `label_thresholds` ({{class: threshold}}), chosen {how}."
    )


def per_class_rows(per_class: dict[str, Any], max_rows: int) -> tuple[list[dict[str, Any]], int]:
    """(the card's per-class rows: class, AP, F1, precision, recall, support, threshold; rows left out)."""
    items = list((per_class.get("per_class") or {}).items())
    rows = [
        {
            "name": markdown_text(name),
            "ap": fmt(row.get("ap")),
            "f1": fmt(row.get("f1")),
            "precision": fmt(row.get("precision")),
            "recall": fmt(row.get("recall")),
            "support": int(row.get("support", 0)),
            "threshold": fmt(row.get("threshold")),
        }
        for name, row in items[:max_rows]
    ]
    return rows, max(0, len(items) - max_rows)


def headline(results: dict[str, Any], before: dict[str, Any]) -> str:
    """``mAP 0.8123, micro F1 0.7012 on N validation images (mAP 0.41 before fine-tuning)`` or ``-``."""
    value = results.get("eval_map")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    text = f"mAP {value:.4f}"
    if isinstance(results.get("eval_f1_micro"), (int, float)):
        text += f", micro F1 {results['eval_f1_micro']:.4f} at the saved thresholds"
    samples = results.get("eval_samples")
    text += f" on {samples} validation images" if samples else ""
    earlier = before.get("eval_map")
    return text + (f" (mAP {earlier:.4f} before fine-tuning)" if isinstance(earlier, (int, float)) else "")


def first_limitation(num_labels: int, facts: dict[str, Any]) -> str:
    """The card's first limitation for a multi-label model (its classes, its thresholds)."""
    text = (
        f"It only knows its {num_labels} classes, each scored on its own: an image of none of them should get "
        "no class, but may get some if it resembles them."
    )
    mode = facts.get("threshold", "per_class")
    if isinstance(mode, (int, float)) and not isinstance(mode, bool):
        return text + f" Its one threshold ({markdown_text(mode)}) was set by hand, not fitted to any data."
    return text + (
        " The thresholds were chosen on the validation split, so the F1 figures at them are optimistic; images "
        "unlike it (another share of each class) may call for other thresholds."
    )
