"""Metrics of a saved model on one split of a dataset (``hf-finetune eval``).

The split is loaded exactly as training loads it (same sources, same seeded split), its labels are matched
to the model's labels by name, and the images go through the model's evaluation transform.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, suggest

__all__ = ["evaluate_model", "format_report"]

logger = logging.getLogger(__name__)


def evaluate_model(
    model_name_or_path: str,
    data_args,
    split: str = "validation",
    batch_size: int = 64,
    seed: int = 42,
    output_dir: str | None = None,
) -> dict[str, Any]:
    """Evaluate a saved classifier on ``split``; returns (and writes to ``output_dir/metrics.json``) the
    summary metrics, per-class precision/recall/F1/support and the confusion matrix."""
    import torch

    from .data import load_image_dataset
    from .metrics import per_class_report
    from .predict import load_for_inference
    from .transforms import build_transforms, collate_images, data_config_from_processor, make_batch_transform

    data = load_image_dataset(data_args, seed=seed)
    if split not in data.dataset:
        raise DataError(
            f"split: {split!r} is not in the data; available: {sorted(data.dataset)}{suggest(split, data.dataset)}"
        )
    model, processor = load_for_inference(model_name_or_path)
    model_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    index = {name: i for i, name in enumerate(model_labels)}
    unknown = [name for name in data.labels if name not in index]
    if unknown:
        raise DataError(
            f"labels: {unknown} in the data are not labels of the model {model_name_or_path} "
            f"(its labels: {model_labels[:10]}{' ...' if len(model_labels) > 10 else ''})"
        )
    remap = np.array([index[name] for name in data.labels])
    data_config = data_config_from_processor(processor)
    _, eval_transform = build_transforms(data_config, augmentation="none")
    dataset = data.dataset[split].with_transform(make_batch_transform(eval_transform))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_images)
    device = next(model.parameters()).device
    logits, labels = [], []
    with torch.inference_mode():
        for batch in loader:
            out = model(pixel_values=batch["pixel_values"].to(device, dtype=next(model.parameters()).dtype))
            logits.append(out.logits.float().cpu().numpy())
            labels.append(remap[batch["labels"].numpy()])
    report = per_class_report(np.concatenate(logits), np.concatenate(labels), model_labels)
    report["split"] = split
    report["num_images"] = int(sum(len(x) for x in labels))
    report["model"] = str(model_name_or_path)
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def format_report(report: dict[str, Any], max_classes: int = 30) -> str:
    """A compact terminal table: summary line, then precision/recall/F1/support per class."""
    summary = ", ".join(
        f"{k} {report[k]:.4f}" for k in ("accuracy", "top5_accuracy", "macro_f1") if k in report
    )
    lines = [f"{report.get('split', '')}: {report.get('num_images', '?')} images; {summary}"]
    per_class = report.get("per_class", {})
    width = max([len("class")] + [len(n) for n in per_class])
    lines.append(f"{'class':<{width}}  precision  recall     f1  support")
    for i, (name, row) in enumerate(per_class.items()):
        if i == max_classes:
            lines.append(f"... {len(per_class) - max_classes} more classes in metrics.json")
            break
        lines.append(
            f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:5.4f}  {int(row['support']):7d}"
        )
    return "\n".join(lines)
