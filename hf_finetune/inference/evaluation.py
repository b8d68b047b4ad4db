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
from hf_finetune.data.transforms import as_rgb, build_transforms, data_config_from_processor
from hf_finetune.errors import DataError, suggest
from hf_finetune.escaping import terminal_text
from hf_finetune.inference.metrics import per_class_report
from hf_finetune.inference.predict import load_for_inference
from hf_finetune.inference.reports import write_eval_reports
from hf_finetune.labels.model_labels import data_to_model_rows, distinct_label_names

__all__ = ["SplitPredictions", "predict_split", "evaluate_model", "format_report"]

logger = logging.getLogger(__name__)


@dataclass
class SplitPredictions:
    """A model's logits on every readable image of one split, in the split's row order."""

    logits: np.ndarray  # (images, model classes), float32
    labels: np.ndarray  # the true class of each image, as an index into ``label_names``
    label_names: list[str]  # the model's labels (the logits' columns)
    images: list[Any]  # each image as the dataset holds it (a path or ``{"path", "bytes"}``)
    rows: np.ndarray  # each image's row in the split (a file that failed to decode has none)

    @property
    def names(self) -> list[str]:
        """A name per image: its path, or its size for an image held as bytes without one."""

        return [image_name(image) for image in self.images]


def predict_split(
    model_name_or_path: str, data_args, split: str = "validation", batch_size: int = 64, seed: int = 42
) -> SplitPredictions:
    """Load ``split`` exactly as training does, match its labels to the model's by name, and run every image
    through the model's evaluation transform. A file training's header check refuses (not an image, a
    decompression bomb, an aspect ratio beyond 50:1) is left out before anything is decoded, and one that
    fails to decode is skipped, each with a warning naming it (both are errors under ``strict``)."""

    data = load_image_dataset(data_args, seed=seed)  # training's header check: bad files are left out
    for path, reason in data.bad_files:  # the summary names one; each gets its line, as predict's do
        logger.warning("skipped image %s: %s", path, reason)
    if split not in data.dataset:
        raise DataError(
            f"split: {split!r} is not in the data; available: {sorted(data.dataset)}{suggest(split, data.dataset)}"
        )
    model, processor = load_for_inference(model_name_or_path)
    model_labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    # by name, then by synonym/plural/synset as training's label mapping; a class matching none is one line
    remap = np.array(data_to_model_rows(data.labels, model_labels, str(model_name_or_path)))
    data_config = data_config_from_processor(processor)
    _, eval_transform = build_transforms(data_config, augmentation="none")
    raw = data.dataset[split]

    def collate(rows: list[int]) -> tuple[list[int], list[Any], list[int], Any]:
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
            labels.append(int(label))
            pixels.append(eval_transform(rgb))
        return kept, images, labels, torch.stack(pixels) if pixels else None

    loader = torch.utils.data.DataLoader(range(len(raw)), batch_size=batch_size, collate_fn=collate)
    parameter = next(model.parameters())
    logits, labels, images, rows = [], [], [], []
    with torch.inference_mode():
        for kept, batch_images, batch_labels, pixel_values in loader:
            if pixel_values is None:
                continue
            out = model(pixel_values=pixel_values.to(parameter.device, dtype=parameter.dtype))
            logits.append(out.logits.float().cpu().numpy())
            labels.append(remap[np.asarray(batch_labels, dtype=np.int64)])
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
    )


def evaluate_model(
    model_name_or_path: str,
    data_args,
    split: str = "validation",
    batch_size: int = 64,
    seed: int = 42,
    output_dir: str | None = None,
    reports: bool = True,
) -> dict[str, Any]:
    """Evaluate a saved classifier on ``split``; returns (and writes to ``output_dir/metrics.json``) the
    summary metrics, per-class precision/recall/F1/support and the confusion matrix.

    With ``output_dir`` and ``reports``, also writes ``confusion_matrix.png``, ``most_confused.csv`` and
    ``top_losses.png`` there (:func:`hf_finetune.inference.reports.write_eval_reports`)."""

    predictions = predict_split(model_name_or_path, data_args, split, batch_size, seed)
    report = per_class_report(predictions.logits, predictions.labels, predictions.label_names)
    report["split"] = split
    report["num_images"] = int(len(predictions.labels))
    report["model"] = str(model_name_or_path)
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        if reports:
            write_eval_reports(
                out, predictions.logits, predictions.labels, predictions.label_names, predictions.images
            )
    return report


def format_report(report: dict[str, Any], max_classes: int = 30) -> str:
    """A compact terminal table: summary line, then precision/recall/F1/support per class (class names with
    control characters shown escaped: :func:`hf_finetune.escaping.terminal_text`)."""
    summary = ", ".join(
        f"{k} {report[k]:.4f}" for k in ("accuracy", "top5_accuracy", "macro_f1") if k in report
    )
    lines = [f"{report.get('split', '')}: {report.get('num_images', '?')} images; {summary}"]
    per_class = [(terminal_text(name), row) for name, row in report.get("per_class", {}).items()]
    width = max([len("class")] + [len(n) for n, _ in per_class])
    lines.append(f"{'class':<{width}}  precision  recall     f1  support")
    for i, (name, row) in enumerate(per_class):
        if i == max_classes:
            lines.append(f"... {len(per_class) - max_classes} more classes in metrics.json")
            break
        lines.append(
            f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:5.4f}  {int(row['support']):7d}"
        )
    return "\n".join(lines)
