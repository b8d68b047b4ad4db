"""Does reusing the pretrained classifier's rows help? (a script, not a timed test)

Part 1, ../shared/data/hotdog with the real ImageNet MobileNetV2 (transformers) and EfficientNet-Lite0 (timm):
validation accuracy at epochs 0 (before any step), 1, 2, 3 for
  (a) reused rows   -- label_mapping auto: `hotdog` starts from ImageNet's `hotdog, hot dog, red hot` row
                       (the head's biases then fitted on 32 training images a class: label_bias_from_data),
  (b) fresh head    -- label_mapping none: a re-initialised 2-way head,
  (c) from scratch  -- the same architecture with random weights.
Same seeds, data, augmentation, schedule and batch size for all three (from-scratch trains its BatchNorm
statistics, the pretrained runs freeze them). The validation split has 50 images (one image = 0.02), so
every variant runs once per seed (--seeds, default 42 0 1) and the table shows the mean, then the range.

Part 2, ../shared/data/cifar10-test: the zero-shot accuracy of the mapped 10-way head (many-to-one rows:
`dog` from every ImageNet dog breed, ...) on a seeded, stratified subset, against chance (0.10), and the
error of the merged-row formula (mean row + log n) against the exact log-sum-exp of the merged classes'
logits on the same real images; then the epoch-0 accuracy of the whole head as the training pipeline builds
it, for label_merge lse / balanced, for label_init_from_data (rows weighted, and chosen for `deer`, from
the pretrained model's predictions on up to 32 training images per class) and for the default (lse rows, biases
fitted on up to 32 training images per class: label_bias_from_data); the evaluated images are the held-out
split.

    python bench/label_mapping.py [--epochs 3] [--cifar-images 2000] [--models mobilenet_v2 efficientnet_lite0]
                                  [--seeds 42 0 1 2 3] [--set body_warmup_epochs=0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # bench/machine.py: the machine, saved with the results

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = {
    "mobilenet_v2": SHARED / "models" / "hf-mobilenet_v2_1.0_224",
    "efficientnet_lite0": SHARED / "models" / "timm-tf_efficientnet_lite0",
}


def hotdog_curves(
    name: str,
    path: Path,
    epochs: int,
    variant: str,
    workdir: Path,
    seed: int = 42,
    overrides: dict | None = None,
) -> list[float]:
    from transformers import AutoModelForImageClassification

    from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
    from hf_finetune.run.train import build_trainer

    overrides = dict(overrides or {})
    model_keys = {f.name for f in dataclasses.fields(ModelArguments)}
    model_args = ModelArguments(
        model_name_or_path=str(path),
        label_mapping="none" if variant == "fresh" else "auto",
        **{k: overrides.pop(k) for k in list(overrides) if k in model_keys},
    )
    data_args = DataArguments(train_dir=str(SHARED / "data" / "hotdog"))
    training_args = FinetuneTrainingArguments(
        output_dir=str(workdir / f"{name}-{variant}"),
        num_train_epochs=epochs,
        learning_rate=1e-4,
        per_device_train_batch_size=25,
        seed=seed,
        batchnorm="train" if variant == "scratch" else "freeze",
        save_strategy="no",
        load_best_model_at_end=False,
        logging_strategy="no",
        disable_tqdm=True,
        bf16=False,  # fp32 NCHW, as the README's tables were measured (bf16 became the CPU default later)
        channels_last=False,
        **overrides,
    )
    trainer, loaded, _ = build_trainer(model_args, data_args, training_args)
    if variant == "scratch":
        import torch

        torch.manual_seed(seed)
        scratch = AutoModelForImageClassification.from_config(loaded.model.config)
        trainer.model = trainer.model_wrapped = scratch
        trainer.head_names = []  # every parameter is new: one learning rate for all
    trainer.train()
    return [e["eval_accuracy"] for e in trainer.state.log_history if "eval_accuracy" in e]


def cifar_zero_shot(path: Path, images: int, seed: int = 0) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForImageClassification

    from hf_finetune.config.arguments import DataArguments
    from hf_finetune.data.loading import load_image_dataset
    from hf_finetune.data.transforms import (
        build_transforms,
        collate_images,
        data_config_from_processor,
        make_batch_transform,
    )
    from hf_finetune.models.heads import head_parameter_names
    from hf_finetune.models.loading import load_model_for_labels, load_source_config

    fraction = min(0.99, images / 10000)
    data = load_image_dataset(
        DataArguments(train_dir=str(SHARED / "data" / "cifar10-test"), train_val_split=fraction), seed=seed
    )
    loaded = load_model_for_labels(str(path), data.labels)
    model = loaded.model.eval()
    report = loaded.mapping
    source = AutoModelForImageClassification.from_pretrained(
        str(path), config=load_source_config(str(path))
    ).eval()
    _, eval_t = build_transforms(data_config_from_processor(loaded.processor))
    dataset = data.dataset["validation"].with_transform(make_batch_transform(eval_t))
    loader = torch.utils.data.DataLoader(dataset, batch_size=100, collate_fn=collate_images)
    merged_rows = {t: m.source_indices for t, m in enumerate(report.matches) if len(m.source_indices) > 0}
    correct = correct_full = correct_lse = total = 0
    errors = []
    with torch.inference_mode():
        for batch in loader:
            logits = model(pixel_values=batch["pixel_values"]).logits
            source_logits = source(pixel_values=batch["pixel_values"]).logits
            exact = torch.full_like(logits, -math.inf)
            for t, rows in merged_rows.items():
                exact[:, t] = torch.logsumexp(source_logits[:, rows], dim=1)
                errors.append((exact[:, t] - logits[:, t]).abs())
            labels = batch["labels"]
            matched = torch.tensor([t in merged_rows for t in range(len(data.labels))])
            restricted = logits.masked_fill(~matched, -math.inf)
            correct += int((restricted.argmax(1) == labels).sum())
            correct_full += int((logits.argmax(1) == labels).sum())
            correct_lse += int((exact.argmax(1) == labels).sum())
            total += len(labels)
    err = torch.cat(errors)
    return {
        "images": total,
        "zero_shot_accuracy": correct / total,
        "zero_shot_accuracy_full_head": correct_full / total,
        "zero_shot_accuracy_exact_lse": correct_lse / total,
        "chance": 1 / len(data.labels),
        "lse_abs_error_mean": float(err.mean()),
        "lse_abs_error_p95": float(np.percentile(err.numpy(), 95)),
        "rows_per_class": {m.target: (m.kind, len(m.source_indices)) for m in report.matches},
        "head": head_parameter_names(model),
    }


def cifar_variants(path: Path, images: int, seed: int = 0) -> dict[str, float]:
    """Epoch-0 accuracy of the whole 10-way head through the training pipeline, per head-building variant."""
    from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
    from hf_finetune.run.train import build_trainer

    out = {}
    for name, merge, from_data, fit_bias in (
        ("names, lse", "lse", False, False),
        ("names, balanced", "balanced", False, False),
        ("names + data, balanced", "balanced", True, False),
        ("names, lse, biases fitted (the default)", "lse", False, True),
    ):
        trainer, _, _ = build_trainer(
            ModelArguments(
                model_name_or_path=str(path),
                label_merge=merge,
                label_init_from_data=from_data,
                label_bias_from_data=fit_bias,
            ),
            DataArguments(
                train_dir=str(SHARED / "data" / "cifar10-test"), train_val_split=min(0.99, images / 10000)
            ),
            FinetuneTrainingArguments(
                output_dir="unused",
                disable_tqdm=True,
                per_device_eval_batch_size=100,
                seed=seed,
                bf16=False,  # fp32 NCHW, as the README's tables were measured
                channels_last=False,
            ),
        )
        out[name] = trainer.evaluate()["eval_accuracy"]
        print(f"cifar10 {path.name} {name}: {out[name]:.3f}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    parser.add_argument("--cifar-images", type=int, default=2000)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=["reuse", "fresh", "scratch"])
    parser.add_argument("--skip-hotdog", action="store_true")
    parser.add_argument("--skip-cifar", action="store_true")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="recipe keys for every hotdog run, e.g. body_warmup_epochs=0 label_bias_from_data=false "
        "(values parsed as YAML)",
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} (real checkpoints and photos) is absent")
        return 0
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    if overrides:
        print("recipe keys for every hotdog run:", overrides)
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    results: dict = {"hotdog": {}, "cifar10": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_hotdog:
            for name in args.models:
                for variant in args.variants:
                    start = time.time()
                    curves = []
                    for seed in args.seeds:
                        curves.append(
                            hotdog_curves(
                                name, MODELS[name], args.epochs, variant, Path(tmp), seed, overrides
                            )
                        )
                        print(
                            f"hotdog {name:18s} {variant:8s} seed {seed:3d} "
                            + " ".join(f"{a:.2f}" for a in curves[-1]),
                            flush=True,
                        )
                    results["hotdog"][f"{name}/{variant}"] = {
                        "accuracy": [sum(c) / len(c) for c in zip(*curves, strict=True)],
                        "per_seed": dict(zip(args.seeds, curves, strict=True)),
                        "seconds": time.time() - start,
                    }
        for name in [] if args.skip_cifar else args.models:
            results["cifar10"][name] = cifar_zero_shot(MODELS[name], args.cifar_images)
            results["cifar10"][name]["variants"] = cifar_variants(MODELS[name], args.cifar_images)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": describe(), **results}, indent=2))
    print()
    if results["hotdog"]:
        seeds = " ".join(str(s) for s in args.seeds)
        print(f"hotdog validation accuracy, mean over seeds {seeds} (min-max in brackets)")
        header = "| model | variant | " + " | ".join(f"epoch {i}" for i in range(args.epochs + 1)) + " |"
        print(header)
        print("|" + "---|" * (args.epochs + 3))
        for key, value in results["hotdog"].items():
            name, variant = key.split("/")
            per_epoch = list(zip(*value["per_seed"].values(), strict=True))
            cells = [
                f"{m:.3f} ({min(e):.2f}-{max(e):.2f})"
                for m, e in zip(value["accuracy"], per_epoch, strict=True)
            ]
            print(f"| {name} | {variant} | " + " | ".join(cells) + " |")
        print()
    if not results["cifar10"]:
        return 0
    print(
        "| model | CIFAR-10 images | zero-shot, mapped rows | zero-shot, whole 10-way head | "
        "with exact log-sum-exp | chance | mean abs logit error of mean+log n | p95 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results["cifar10"].items():
        print(
            f"| {name} | {r['images']} | {r['zero_shot_accuracy']:.3f} | {r['zero_shot_accuracy_full_head']:.3f} | "
            f"{r['zero_shot_accuracy_exact_lse']:.3f} | "
            f"{r['chance']:.2f} | {r['lse_abs_error_mean']:.3f} | {r['lse_abs_error_p95']:.3f} |"
        )
    print()
    variants = list(next(iter(results["cifar10"].values()))["variants"]) if results["cifar10"] else []
    print("| model | " + " | ".join(f"zero-shot: {v}" for v in variants) + " |")
    print("|---|" + "---|" * len(variants))
    for name, r in results["cifar10"].items():
        print(f"| {name} | " + " | ".join(f"{r['variants'][v]:.3f}" for v in variants) + " |")
    for name, r in results["cifar10"].items():
        rows = ", ".join(f"{t} {k}:{n}" for t, (k, n) in r["rows_per_class"].items())
        print(f"{name} rows per CIFAR-10 class: {rows}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
