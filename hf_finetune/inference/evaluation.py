"""Metrics of a saved model on one split of a dataset (``hf-finetune eval``).

The split is loaded exactly as training loads it (same sources, same seeded split), its labels are matched
to the model's labels by name (or synonym, plural, synset id: :mod:`hf_finetune.labels.model_labels`), and the
images go through the model's evaluation transform.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_finetune.data.image_check import BadImageError, image_name, record_decode_failure
from hf_finetune.data.loading import load_image_dataset
from hf_finetune.data.multi_label import MULTI_LABEL_PROBLEM_TYPE, is_multi_label
from hf_finetune.data.transforms import as_rgb, build_transforms, data_config_from_processor
from hf_finetune.errors import DataError, suggest
from hf_finetune.escaping import terminal_text
from hf_finetune.inference.metrics import per_class_report
from hf_finetune.inference.multi_label_metrics import multi_label_report
from hf_finetune.inference.predict import load_for_inference, model_thresholds
from hf_finetune.inference.reports import write_eval_reports
from hf_finetune.inference.tta import (
    MultiCrop,
    check_tta,
    combine_views,
    expand_views,
    probabilities_to_logits,
)
from hf_finetune.labels.model_labels import data_to_model_rows, distinct_label_names

__all__ = ["SplitPredictions", "predict_split", "evaluate_model", "format_report"]

logger = logging.getLogger(__name__)

_SINGLE_KEYS = ("accuracy", "top5_accuracy", "macro_f1")


@dataclass
class SplitPredictions:
    """A model's logits on every readable image of one split, in the split's row order."""

    logits: (
        np.ndarray
    )  # (images, model classes), float32 (with TTA: the logits of the averaged probabilities)
    labels: (
        np.ndarray
    )  # single-label: each image's class, an index into ``label_names``; multi-label: (images,
    # model classes) multi-hot float32, columns as ``label_names``
    label_names: list[str]  # the model's labels (the logits' columns)
    images: list[Any]  # each image as the dataset holds it (a path or ``{"path", "bytes"}``)
    rows: np.ndarray  # each image's row in the split (a file that failed to decode has none)
    thresholds: np.ndarray | None = (
        None  # multi-label: each model class's threshold (config.label_thresholds)
    )

    @property
    def names(self) -> list[str]:
        """A name per image: its path, or its size for an image held as bytes without one."""

        return [image_name(image) for image in self.images]

    @property
    def multi_label(self) -> bool:
        """Whether ``labels`` are multi-hot rows (a multi-label model, or multi-label data)."""
        return self.labels.ndim == 2


def _model_targets(labels: list[Any], remap: np.ndarray, num_model: int, multi_label: bool) -> np.ndarray:
    """The true labels of a batch in the model's columns: class indices, or (multi-label) multi-hot rows, from
    the data's class indices or multi-hot rows (data class j is model column ``remap[j]``)."""
    if not multi_label:
        return remap[np.asarray(labels, dtype=np.int64)]
    targets = np.zeros((len(labels), num_model), dtype=np.float32)
    for index, label in enumerate(labels):
        if isinstance(label, (list, tuple, np.ndarray)):  # a multi-hot row of the data's classes
            np.maximum.at(targets[index], remap, np.asarray(label, dtype=np.float32))
        else:  # single-label data scored by a multi-label model: one positive
            targets[index, remap[int(label)]] = 1.0
    return targets


def predict_split(
    model_name_or_path: str,
    data_args,
    split: str = "validation",
    batch_size: int = 64,
    seed: int = 42,
    tta: str = "none",
) -> SplitPredictions:
    """Load ``split`` exactly as training does, match its labels to the model's by name, and run every image
    through the model's evaluation transform. A file training's header check refuses (not an image, a
    decompression bomb, an aspect ratio beyond 50:1) is left out before anything is decoded, and one that
    fails to decode is skipped, each with a warning naming it (both are errors under ``strict``).

    Multi-label data (multi-hot ``label``) or a multi-label model gives multi-hot ``labels`` in the model's
    columns. ``tta`` (:mod:`hf_finetune.inference.tta`): the logits are those of the views' mean probability."""

    check_tta(tta)
    data = load_image_dataset(data_args, seed=seed)  # training's header check: bad files are left out
    for path, reason in data.bad_files:  # the summary names one; each gets its line, as predict's do
        logger.warning("skipped image %s: %s", path, reason)
    if split not in data.dataset:
        raise DataError(
            f"split: {split!r} is not in the data; available: {sorted(data.dataset)}{suggest(split, data.dataset)}"
        )
    model, processor = load_for_inference(model_name_or_path)
    config = model.config
    model_labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    # by name, then by synonym/plural/synset as training's label mapping; a class matching none is one line
    remap = np.array(data_to_model_rows(data.labels, model_labels, str(model_name_or_path)))
    raw = data.dataset[split]
    model_multi = getattr(config, "problem_type", None) == MULTI_LABEL_PROBLEM_TYPE
    multi_label = model_multi or is_multi_label(raw)
    function = "sigmoid" if model_multi else "softmax"
    data_config = data_config_from_processor(processor)
    _, transform = build_transforms(data_config, augmentation="none")
    if tta == "multicrop":
        transform = MultiCrop(data_config)

    def collate(rows: list[int]) -> tuple[list[int], list[Any], list[Any], Any]:
        batch = raw[rows]
        kept, images, labels, pixels = [], [], [], []
        for row, image, label in zip(rows, batch["image"], batch["label"], strict=True):
            try:
                rgb = as_rgb(image)
            except BadImageError as err:
                record_decode_failure(err)
                continue
            kept.append(row)
            images.append(image)
            labels.append(label)
            pixels.append(transform(rgb))
        return kept, images, labels, torch.stack(pixels) if pixels else None

    loader = torch.utils.data.DataLoader(range(len(raw)), batch_size=batch_size, collate_fn=collate)
    parameter = next(model.parameters())
    logits, labels, images, rows = [], [], [], []
    with torch.inference_mode():
        for kept, batch_images, batch_labels, pixel_values in loader:
            if pixel_values is None:
                continue
            inputs = expand_views(pixel_values, tta).to(parameter.device, dtype=parameter.dtype)
            out = model(pixel_values=inputs)["logits"].float().cpu().numpy()
            if tta != "none":
                out = probabilities_to_logits(combine_views(out, tta, function), function)
            logits.append(out)
            labels.append(_model_targets(batch_labels, remap, len(model_labels), multi_label))
            images.extend(batch_images)
            rows.extend(kept)
    if not rows:
        raise DataError(f"split {split!r}: no image could be decoded")
    return SplitPredictions(
        logits=np.concatenate(logits),
        labels=np.concatenate(labels),
        label_names=distinct_label_names(model_labels),  # ImageNet's two "crane": "crane [134]", ...
        images=images,
        rows=np.asarray(rows, dtype=np.int64),
        thresholds=model_thresholds(config) if multi_label else None,
    )


def evaluate_model(
    model_name_or_path: str,
    data_args,
    split: str = "validation",
    batch_size: int = 64,
    seed: int = 42,
    output_dir: str | None = None,
    reports: bool = True,
    tta: str = "none",
) -> dict[str, Any]:
    """Evaluate a saved classifier on ``split``; returns (and writes to ``output_dir/metrics.json``) the
    summary metrics, per-class precision/recall/F1/support and the confusion matrix. A multi-label evaluation
    (:attr:`SplitPredictions.multi_label`) reports :func:`multi_label_report` instead: mAP, F1 and exact match at
    the model's thresholds (``config.label_thresholds``, 0.5 without), per-class AP/precision/recall/F1.

    With ``output_dir`` and ``reports``, also writes ``confusion_matrix.png``, ``most_confused.csv`` and
    ``top_losses.png`` there (multi-label: ``precision_recall.png`` and ``top_losses.png``;
    :func:`hf_finetune.inference.reports.write_eval_reports`). ``tta``: :mod:`hf_finetune.inference.tta`."""

    predictions = predict_split(model_name_or_path, data_args, split, batch_size, seed, tta=tta)
    if predictions.multi_label:
        report = multi_label_report(
            predictions.logits, predictions.labels, predictions.label_names, predictions.thresholds
        )
    else:
        report = per_class_report(predictions.logits, predictions.labels, predictions.label_names)
    report["split"] = split
    report["num_images"] = int(len(predictions.labels))
    report["model"] = str(model_name_or_path)
    report["tta"] = tta
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        if reports:
            extra = {"thresholds": predictions.thresholds} if predictions.multi_label else {}
            write_eval_reports(
                out,
                predictions.logits,
                predictions.labels,
                predictions.label_names,
                predictions.images,
                **extra,
            )
    return report


def format_report(report: dict[str, Any], max_classes: int = 30) -> str:
    """A compact terminal table: summary line, then precision/recall/F1/support per class (multi-label: mAP,
    F1 and exact match, then AP/precision/recall/F1/support/threshold per class); class names with control
    characters shown escaped (:func:`hf_finetune.escaping.terminal_text`)."""
    multi_label = bool(report.get("multi_label"))
    keys = ("map", "map_micro", "f1_micro", "f1_macro", "exact_match") if multi_label else _SINGLE_KEYS
    summary = ", ".join(f"{k} {report[k]:.4f}" for k in keys if k in report)
    tta = f" (tta {report['tta']})" if report.get("tta", "none") != "none" else ""
    lines = [f"{report.get('split', '')}: {report.get('num_images', '?')} images{tta}; {summary}"]
    per_class = [(terminal_text(name), row) for name, row in report.get("per_class", {}).items()]
    width = max([len("class")] + [len(n) for n, _ in per_class])
    ap_head = "      ap" if multi_label else ""
    tail = "  threshold" if multi_label else ""
    lines.append(f"{'class':<{width}}{ap_head}  precision  recall     f1  support{tail}")
    for i, (name, row) in enumerate(per_class):
        if i == max_classes:
            lines.append(f"... {len(per_class) - max_classes} more classes in metrics.json")
            break
        ap = f"  {row['ap']:6.4f}" if multi_label else ""
        line = (
            f"{name:<{width}}{ap}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:5.4f}"
            f"  {int(row['support']):7d}"
        )
        lines.append(line + (f"  {row['threshold']:9.4f}" if multi_label else ""))
    return "\n".join(lines)
