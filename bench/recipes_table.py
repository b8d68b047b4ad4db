"""Validation accuracy and wall time of the plain recipe and of each fine-tuning technique (a script, not a test).

Same model, data, budget (epochs, batch, learning rate) and seed for every row; each run in its own process.
Data: ../shared/data/hotdog (its train/ and val/ folders), a seeded 10-class split of
../shared/data/cifar10-test (PER_CLASS_TRAIN + PER_CLASS_VAL images a class, symlinked), and
hotdog-imbalanced (20 of the 100 training hotdogs; validation unchanged) for class_balance. Model:
../shared/models/timm-tf_efficientnet_lite0 (timm, via TimmWrapper) unless --models says otherwise.

    python bench/recipes_table.py [--datasets hotdog cifar10] [--models efficientnet_lite0]
        [--epochs 3] [--techniques plain probe ... | augmentations] [--json results.json]

Prints one table per model and dataset: accuracy before fine-tuning (epoch 0), after, its difference from the
plain recipe, and wall seconds (load + train + evaluate + save).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # bench/machine.py: the machine, saved with the results

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HF_FINETUNE_SHARED", ROOT.parent / "shared"))
MODELS = {
    "efficientnet_lite0": SHARED / "models" / "timm-tf_efficientnet_lite0",
    "mobilenet_v2": SHARED / "models" / "hf-mobilenet_v2_1.0_224",
}
PER_CLASS_TRAIN, PER_CLASS_VAL = 60, 20

AUGMENTATION_FLAGS = ("--auto_augment", "--random_erasing", "--color_jitter")
# name -> recipe flags on top of the plain recipe (hf-finetune train's defaults)
TECHNIQUES = {
    "plain": [],
    "probe-then-fine-tune (probe_epochs 1)": ["--probe_epochs", "1"],
    "gradual unfreezing": ["--unfreeze_schedule", "gradual"],
    "layer-wise LR decay 0.75": ["--layer_decay", "0.75"],
    "label smoothing 0.1": ["--label_smoothing_factor", "0.1"],
    "mixup 0.2 + cutmix 1.0": ["--mixup_alpha", "0.2", "--cutmix_alpha", "1.0"],
    "drop path 0.1": ["--drop_path_rate", "0.1"],
    "EMA 0.9 (21-57 steps in these runs)": ["--ema_decay", "0.9"],
    "freeze_layers 3": ["--freeze_layers", "3"],
    "early stopping (patience 1)": ["--early_stopping_patience", "1"],
    "LoRA r 8": ["--lora_r", "8"],
    "class_balance none": ["--class_balance", "none"],  # plain is auto: weighted loss on hotdog-imbalanced
    # timm's augmentations (issue 23 point 5); --techniques augmentations runs these five and plain
    "RandAugment rand-m9-mstd0.5-inc1": ["--auto_augment", "rand-m9-mstd0.5-inc1"],
    "TrivialAugment-like rand-n1-mstd101": ["--auto_augment", "rand-n1-mstd101"],
    "AugMix augmix-m5-w4-d2": ["--auto_augment", "augmix-m5-w4-d2"],
    "random_erasing 0.25": ["--random_erasing", "0.25"],
    "color_jitter 0.4": ["--color_jitter", "0.4"],
}
AUGMENTATIONS = [name for name, flags in TECHNIQUES.items() if flags and flags[0] in AUGMENTATION_FLAGS]
IMBALANCED_KEEP = 20  # hotdog-imbalanced: 20 of the 100 training hotdogs, against 100 not_hotdogs (5x)


def prepare_data(name: str, workdir: Path) -> Path:
    """An image folder with train/ and val/ subfolders."""
    if name == "hotdog":
        return SHARED / "data" / "hotdog"
    if name == "hotdog-imbalanced":  # the balanced validation folder; a 5x skewed training folder
        root = workdir / "hotdog-imbalanced"
        if not (root / "done").exists():
            rng = random.Random(0)
            for split in ("train", "val"):
                for folder in sorted(p for p in (SHARED / "data" / "hotdog" / split).iterdir() if p.is_dir()):
                    files = sorted(folder.iterdir())
                    if split == "train" and folder.name == "hotdog":
                        files = sorted(rng.sample(files, IMBALANCED_KEEP))
                    target = root / split / folder.name
                    target.mkdir(parents=True, exist_ok=True)
                    for file in files:
                        (target / file.name).symlink_to(file)
            (root / "done").touch()
        return root
    sys.path.insert(0, str(ROOT / "bench"))
    from throughput import prepare_data as split_cifar10  # the same seeded symlinked split

    train, _ = split_cifar10("cifar10", workdir, PER_CLASS_TRAIN, PER_CLASS_VAL)
    return train.parent


def run_one(model: str, data: Path, flags: list[str], args, out: Path) -> dict:
    """One fine-tune in this process; returns its figures."""
    import logging

    from hf_finetune.config.parser import parse_train_args
    from hf_finetune.run.train import main

    logging.getLogger("hf_finetune").setLevel(logging.WARNING)
    argv = [
        "--model_name_or_path", str(MODELS[model]),
        "--train_dir", str(data),
        "--output_dir", str(out),
        "--num_train_epochs", str(args.epochs),
        "--per_device_train_batch_size", str(args.batch),
        "--seed", str(args.seed),
        "--save_total_limit", "1",
        "--report_to", "none",
        "--disable_tqdm", "true",
        *flags,
    ]  # fmt: skip
    started = time.time()
    model_args, data_args, training_args = parse_train_args(argv)
    result = main(model_args, data_args, training_args)
    return {
        "accuracy_before": result.metrics_before.get("eval_accuracy"),
        "accuracy": result.metrics_after["eval_accuracy"],
        "epochs_run": result.train_metrics.get("epoch"),
        "seconds": time.time() - started,
    }


def spawn(model: str, data: str, name: str, args, workdir: Path) -> dict:
    folder = prepare_data(data, workdir)
    out = workdir / f"{model}-{data}-{abs(hash(name)) % 10**8}"
    command = [
        sys.executable, __file__, "--_model", model, "--_data", str(folder), "--_out", str(out),
        "--_flags", json.dumps(TECHNIQUES[name]), "--epochs", str(args.epochs), "--batch", str(args.batch),
        "--seed", str(args.seed),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        tail = "\n".join((completed.stdout + completed.stderr).strip().splitlines()[-12:])
        print(f"  {name}: FAILED\n{tail}", flush=True)
        return {"failed": tail}
    result = json.loads((out / "bench_result.json").read_text())
    print(f"  {model} {data} {name}: {json.dumps({k: round(v, 4) for k, v in result.items()})}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0"], choices=list(MODELS))
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=["hotdog", "cifar10"],
        choices=["hotdog", "cifar10", "hotdog-imbalanced"],
    )
    parser.add_argument(
        "--techniques",
        nargs="+",
        default=[n for n in TECHNIQUES if n not in AUGMENTATIONS],
        choices=[*TECHNIQUES, "augmentations"],
        help="the rows; 'augmentations' stands for timm's auto_augment / random_erasing / color_jitter rows",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    for hidden in ("--_model", "--_data", "--_out", "--_flags"):
        parser.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._model:  # a child run
        out = Path(args._out)
        result = run_one(args._model, Path(args._data), json.loads(args._flags), args, out)
        (out / "bench_result.json").write_text(json.dumps(result))
        return
    missing = [str(MODELS[m]) for m in args.models if not MODELS[m].is_dir()]
    if missing:
        raise SystemExit(f"needs the checkpoints of ../shared: missing {missing}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hf-finetune-recipes-"))
    asked = [n for t in args.techniques for n in (AUGMENTATIONS if t == "augmentations" else [t])]
    names = ["plain", *[n for n in asked if n != "plain"]]
    started = time.time()
    results: dict = {}
    for model in args.models:
        for data in args.datasets:
            rows = {name: spawn(model, data, name, args, workdir) for name in names}
            results[f"{model}/{data}"] = rows
            plain = rows["plain"].get("accuracy")
            print(f"\n{model} on {data}: {args.epochs} epochs, batch {args.batch}, seed {args.seed}\n")
            print("| technique | accuracy epoch 0 | accuracy | vs plain (points) | epochs run | wall s |")
            print("|---|---|---|---|---|---|")
            for name, r in rows.items():
                if "failed" in r:
                    print(f"| {name} | failed | | | | |")
                    continue
                delta = "" if plain is None or name == "plain" else f"{100 * (r['accuracy'] - plain):+.1f}"
                print(
                    f"| {name} | {r['accuracy_before']:.3f} | {r['accuracy']:.3f} | {delta} | "
                    f"{r['epochs_run']:g} | {r['seconds']:.0f} |"
                )
    print(f"\nbench/recipes_table.py took {time.time() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe(), **results}, indent=2))


if __name__ == "__main__":
    main()
