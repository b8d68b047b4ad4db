"""What a user gets with no settings: validation accuracy by epoch of the bare `hf-finetune train` command (a
script, not a test).

Every run is `hf-finetune train --model_name_or_path M --train_dir T --validation_dir V --output_dir O
--num_train_epochs E --seed S` in its own process, with nothing else unless ``--set`` adds flags (the table's
title then names them). For each model and data set it prints the mean over the seeds (and the range) of the
validation accuracy at epoch 0 (before any step), after each epoch, and of the saved model, plus a linear-probe
floor: a logistic regression (scikit-learn, default C) on the frozen pretrained network's pooled features of the
same training images (validation transform, no augmentation), scored on the same validation images.

Data (all real photos or scans from ../shared and scikit-learn):
* ``hotdog``        -- ../shared/data/hotdog train/ (100 + 100) and val/ (25 + 25);
* ``cifar10-split`` -- a seeded split of ../shared/data/cifar10-test, 60 training and 20 validation photos a class;
* ``digits``        -- scikit-learn's 1,797 handwritten digits as the demo writes them (80/20 split), at the
                       demo's ``image_size`` 64 (8x8 scans; the table names the setting);
* ``cifar10-8k``    -- a seeded split of ../shared/data/cifar10-test, 800 training and 200 validation a class.

    python bench/defaults_table.py [--models mobilenet_v2 efficientnet_lite0] [--datasets hotdog ...]
        [--seeds 0 1 2 3 4] [--epochs DATASET=N ...] [--set KEY=VALUE ...] [--no-probe] [--name NAME]

Results go to bench/results/defaults_table-NAME.json (one entry per run, written as each run ends, so an
interrupted table resumes where it stopped) and bench/results/defaults_table-NAME.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # bench/machine.py: the machine, saved with the results

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HF_FINETUNE_SHARED", ROOT.parent / "shared"))
RESULTS = ROOT / "bench" / "results"
MODELS = {
    "mobilenet_v2": SHARED / "models" / "hf-mobilenet_v2_1.0_224",
    "efficientnet_lite0": SHARED / "models" / "timm-tf_efficientnet_lite0",
}
DATASETS = ("hotdog", "cifar10-split", "digits", "cifar10-8k")
EPOCHS = {"hotdog": 3, "cifar10-split": 3, "digits": 2, "cifar10-8k": 3}
CIFAR_SPLITS = {"cifar10-split": (60, 20), "cifar10-8k": (800, 200)}  # training, validation photos a class
# The settings a data set's runs add, named in the table: the demo's, for 8x8 digit scans (64 px, no augmentation).
DATA_FLAGS = {"digits": ["--image_size", "64", "--augmentation", "none"]}


def prepare_data(name: str, workdir: Path) -> tuple[Path, Path]:
    """(training folder, validation folder) of data set ``name``; built under ``workdir`` when needed."""
    if name == "hotdog":
        return SHARED / "data" / "hotdog" / "train", SHARED / "data" / "hotdog" / "val"
    if name == "digits":
        from hf_finetune.demo.assets import export_digits

        root = export_digits(workdir / "digits")
        return root / "train", root / "val"
    sys.path.insert(0, str(ROOT / "bench"))
    from throughput import prepare_data as split_cifar10  # the same seeded symlinked split

    return split_cifar10("cifar10", workdir, *CIFAR_SPLITS[name])


def run_finetune(
    model: str, train: Path, val: Path, epochs: int, seed: int, flags: list[str], out: Path
) -> dict:
    """One bare `hf-finetune train` in its own process: validation accuracy by epoch and of the saved model."""
    command = [
        sys.executable, "-m", "hf_finetune", "train",
        "--model_name_or_path", str(MODELS[model]),
        "--train_dir", str(train),
        "--validation_dir", str(val),
        "--output_dir", str(out),
        "--num_train_epochs", str(epochs),
        "--seed", str(seed),
        *flags,
    ]  # fmt: skip
    started = time.time()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.time() - started
    if completed.returncode != 0:
        tail = "\n".join((completed.stdout + completed.stderr).strip().splitlines()[-8:])
        return {"failed": tail, "seconds": seconds}
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    by_epoch = {}
    for entry in history:
        if "eval_accuracy" in entry and "epoch" in entry:
            by_epoch.setdefault(round(float(entry["epoch"]), 3), entry["eval_accuracy"])
    saved = json.loads((out / "eval_results.json").read_text())["eval_accuracy"]
    return {
        "by_epoch": [by_epoch[e] for e in sorted(by_epoch)],
        "saved": saved,
        "seconds": seconds,
    }


def linear_probe(model: str, train: Path, val: Path) -> float:
    """Validation accuracy of a logistic regression on the frozen pretrained network's pooled features."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from hf_finetune.config.arguments import DataArguments
    from hf_finetune.data.loading import load_image_dataset
    from hf_finetune.data.transforms import build_transforms, data_config_from_processor
    from hf_finetune.models.loading import load_model_for_labels
    from hf_finetune.training.feature_cache import extract_features, feature_head

    torch.manual_seed(0)
    data = load_image_dataset(DataArguments(train_dir=str(train), validation_dir=str(val)), seed=0)
    loaded = load_model_for_labels(str(MODELS[model]), data.labels, label_mapping="none")
    _, head = feature_head(loaded.model)
    _, eval_transform = build_transforms(data_config_from_processor(loaded.processor, None))

    def features(split: str):
        rows = list(extract_features(loaded.model, head, data.dataset[split], eval_transform, device="cpu"))
        return np.concatenate([f for f, _ in rows]), np.concatenate([labels for _, labels in rows])

    x_train, y_train = features("train")
    x_val, y_val = features("validation")
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(max_iter=2000).fit(scaler.transform(x_train), y_train)
    return float((probe.predict(scaler.transform(x_val)) == y_val).mean())


def _stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.2f}-{max(values):.2f})"


def render(results: dict, title: str) -> str:
    """The markdown table: one row per model and data set."""
    lines = [
        f"### {title}",
        "",
        "| model | data | seeds | epoch 0 | epochs 1.. (mean (range)) | saved model | probe floor | below epoch 0 | s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted({k.rsplit("/", 1)[0] for k in results["runs"]}):
        model, data = key.split("/")
        flags = DATA_FLAGS.get(data, [])
        shown = data + "".join(
            f" ({f.lstrip('-')} {v})" for f, v in zip(flags[::2], flags[1::2], strict=True)
        )
        runs = [v for k, v in results["runs"].items() if k.rsplit("/", 1)[0] == key and "by_epoch" in v]
        failed = sum(1 for k, v in results["runs"].items() if k.rsplit("/", 1)[0] == key and "failed" in v)
        if not runs:
            lines.append(f"| {model} | {shown} | 0 ({failed} failed) | | | | | | |")
            continue
        epochs = max(len(r["by_epoch"]) for r in runs)
        columns = [[r["by_epoch"][e] for r in runs if len(r["by_epoch"]) > e] for e in range(epochs)]
        later = " / ".join(_stats(c) for c in columns[1:])
        below = sum(1 for r in runs if r["saved"] < r["by_epoch"][0] - 1e-9)
        probe = results["probe"].get(key)
        seconds = statistics.mean(r["seconds"] for r in runs)
        seeds = f"{len(runs)}" + (f" ({failed} failed)" if failed else "")
        probe_text = f"{probe:.3f}" if probe is not None else ""
        lines.append(
            f"| {model} | {shown} | {seeds} | {_stats(columns[0])} | {later} | {_stats([r['saved'] for r in runs])} "
            f"| {probe_text} | {below} | {seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", nargs="*", default=[], help="DATASET=N, overriding the per-set default")
    parser.add_argument("--set", nargs="*", default=[], help="KEY=VALUE flags added to every run (named)")
    parser.add_argument("--no-probe", action="store_true", help="skip the logistic-regression floor")
    parser.add_argument("--name", default=None, help="results file name (default: from --set, or 'defaults')")
    parser.add_argument(
        "--workdir", default=None, help="where the data splits and outputs go (default: temp)"
    )
    args = parser.parse_args()

    epochs = dict(EPOCHS)
    for item in args.epochs:
        key, _, value = item.partition("=")
        epochs[key] = int(value)
    flags = []
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        flags += [f"--{key}", value]
    name = args.name or ("defaults" if not args.set else "_".join(s.replace("=", "-") for s in args.set))
    title = "defaults" if not args.set else "defaults + " + ", ".join(args.set)
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"defaults_table-{name}.json"
    results = (
        json.loads(json_path.read_text())
        if json_path.exists()
        else {"set": args.set, "runs": {}, "probe": {}}
    )
    results["machine"] = describe()  # the machine of the latest runs written into this file
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="defaults-table-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for data in args.datasets:
        train, val = prepare_data(data, workdir)
        for model in args.models:
            if not args.no_probe and f"{model}/{data}" not in results["probe"]:
                results["probe"][f"{model}/{data}"] = linear_probe(model, train, val)
                print(f"{model} {data} probe: {results['probe'][f'{model}/{data}']:.4f}", flush=True)
                json_path.write_text(json.dumps(results, indent=1))
            for seed in args.seeds:
                key = f"{model}/{data}/{seed}"
                if key in results["runs"] and "by_epoch" in results["runs"][key]:
                    continue
                out = workdir / "runs" / name / key.replace("/", "-")  # one folder per table and run
                shutil.rmtree(out, ignore_errors=True)
                run = run_finetune(
                    model, train, val, epochs[data], seed, DATA_FLAGS.get(data, []) + flags, out
                )
                shutil.rmtree(out, ignore_errors=True)
                run["epochs"] = epochs[data]
                results["runs"][key] = run
                json_path.write_text(json.dumps(results, indent=1))
                shown = (
                    run.get("failed")
                    or f"{run['by_epoch']} saved {run['saved']:.4f} ({run['seconds']:.0f} s)"
                )
                print(f"{model} {data} seed {seed}: {shown}", flush=True)
    table = render(results, title)
    (RESULTS / f"defaults_table-{name}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
