r"""Test-time augmentation's effect on saved models: accuracy (or mAP), mean log-loss and seconds of each
``--tta`` on one split, the models one after another, each mode one after another.

    python bench/tta.py --data ../shared/data/hotdog --models outputs/a outputs/b [--output bench/results/tta.json]
    python bench/tta.py --data mosaics/train.csv --validation_file mosaics/validation.csv \
        --test_file mosaics/test.csv --split test --models outputs/c

Seconds are the wall time of :func:`hf_finetune.inference.evaluation.predict_split` (data, model load and every
forward pass), as ``hf-finetune eval`` spends them, minus the report files and the process start. The raw results
and the machine (``bench/machine.py``) go to ``--output``; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from hf_finetune.config.arguments import DataArguments  # noqa: E402
from hf_finetune.inference.evaluation import predict_split  # noqa: E402
from hf_finetune.inference.multi_label_metrics import multi_label_metrics  # noqa: E402

MODES = ("none", "hflip", "multicrop")


def score(predictions) -> dict[str, float]:
    """accuracy and mean cross-entropy (single-label), or map and mean binary cross-entropy (multi-label)."""
    logits = predictions.logits.astype(np.float64)
    if predictions.multi_label:
        targets = predictions.labels.astype(np.float64)
        bce = np.logaddexp(0, logits) - targets * logits
        metrics = multi_label_metrics(logits, targets, predictions.thresholds)
        return {
            "map": metrics["map"],
            "f1_micro": metrics["f1_micro"],  # at the model's thresholds, as hf-finetune eval reports it
            "log_loss": float(bce.sum(axis=1).mean()),
        }
    log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    labels = predictions.labels
    return {
        "accuracy": float((logits.argmax(axis=1) == labels).mean()),
        "log_loss": float(-log_p[np.arange(len(labels)), labels].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", required=True, help="an image folder (train_dir), or a CSV/JSONL (train_file)"
    )
    parser.add_argument("--validation_file", default=None, help="with a train_file --data")
    parser.add_argument("--test_file", default=None, help="with a train_file --data (then --split test)")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--output", default="bench/results/tta.json")
    args = parser.parse_args()
    if Path(args.data).is_dir():
        data_args = DataArguments(train_dir=args.data)
    else:
        data_args = DataArguments(
            train_file=args.data, validation_file=args.validation_file, test_file=args.test_file
        )
    rows = []
    for model in args.models:
        for mode in MODES:
            start = time.perf_counter()
            predictions = predict_split(model, data_args, args.split, tta=mode)
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "model": model,
                    "tta": mode,
                    "images": len(predictions.rows),
                    "seconds": seconds,
                    **score(predictions),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(
        json.dumps({"machine": describe(), "data": args.data, "rows": rows}, indent=2)
    )
    metric = "map" if "map" in rows[0] else "accuracy"
    print(f"| model | --tta | images | {metric} | log-loss | seconds |\n|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {Path(row['model']).name} | {row['tta']} | {row['images']} | {row[metric]:.3f} | "
            f"{row['log_loss']:.4f} | {row['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
