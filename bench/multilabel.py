"""Multi-label on real photos: CIFAR-10 mosaics, the shared MobileNetV2 and EfficientNet-Lite0, mapped head vs fresh.

The data: bench/mosaics.py's 2x2 mosaics of ``../shared/data/cifar10-test`` photos (one set, built once with
``--data-seed``; 600 train / 200 validation / 400 test mosaics unless told otherwise), each labelled with the set
of classes its tiles show. Every run trains with the run's defaults through the Python API
(``hf_finetune.run.train.main`` with only the model, the three CSV files, ``num_train_epochs``, ``seed`` and
``output_dir``; ``problem_type`` left ``auto``), once with ``label_mapping`` left at its default (the CIFAR-10
names mapped to ImageNet rows) and once with ``label_mapping: none`` (a fresh head). From each run: the validation
mAP (``eval_map``, macro mean average precision) at epoch 0 (``eval_on_start``, before any step) and after each
epoch, read from ``trainer_state.json``'s log history, and the test split's mAP after the last epoch
(``test_results.json``, ``test_map``: the final model, scored once).

Prints a table (mean ± standard deviation over seeds per model x mapping) and writes the raw results, with the
machine (bench/machine.py), to ``--json`` (default ``bench/results/multilabel/multilabel.json``), rewritten after
every run so a stopped invocation keeps what it finished.

    python bench/multilabel.py [--models mobilenet_v2 efficientnet_lite0] [--seeds 0 1 2 3 4]
                               [--mapping default none] [--epochs 3] [--train 600 --validation 200 --test 400]
                               [--data-seed 0] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # bench/machine.py: the machine, saved with the results
from mosaics import SOURCE, build_mosaics

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = {
    "mobilenet_v2": SHARED / "models" / "hf-mobilenet_v2_1.0_224",
    "efficientnet_lite0": SHARED / "models" / "timm-tf_efficientnet_lite0",
}
MAPPINGS = ("default", "none")
RESULTS = ROOT / "bench" / "results" / "multilabel" / "multilabel.json"


def curve(log_history: list[dict], key: str = "eval_map") -> dict[int, float]:
    """{epoch: value} of the evaluations in a log history: epoch 0 is the one at step 0 (before any step)."""
    out = {}
    for entry in log_history:
        if key in entry:
            epoch = 0 if entry.get("step") == 0 else round(float(entry.get("epoch", 0)))
            out.setdefault(epoch, float(entry[key]))  # the first: a later one is the final evaluation
    return out


def one_run(model: Path, mapping: str, seed: int, data: Path, epochs: int, workdir: Path) -> dict:
    """Train once with the defaults; the validation mAP per epoch, the test metrics, the seconds."""
    from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
    from hf_finetune.run.train import main

    out = workdir / f"{model.name}-{mapping}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    mapping_key = {"label_mapping": "none"} if mapping == "none" else {}  # else left at its default
    model_args = ModelArguments(model_name_or_path=str(model), **mapping_key)
    start = time.time()
    main(
        model_args,
        DataArguments(
            train_file=str(data / "train.csv"),
            validation_file=str(data / "validation.csv"),
            test_file=str(data / "test.csv"),
        ),
        FinetuneTrainingArguments(output_dir=str(out), num_train_epochs=epochs, seed=seed),
    )
    seconds = time.time() - start
    state = json.loads((out / "trainer_state.json").read_text())
    test = json.loads((out / "test_results.json").read_text())
    config = json.loads((out / "config.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "eval_map": curve(state["log_history"]),
        "test": test,
        "problem_type": config.get("problem_type"),
        "seconds": seconds,
    }


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def table(results: dict, epochs: int) -> str:
    """Markdown: per model x mapping, validation mAP at epochs 0 and 1, test mAP after the last epoch."""
    lines = [
        f"| model | head | seeds | validation mAP, epoch 0 | epoch 1 | test mAP after {epochs} epochs | s a run |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, runs in results.items():
        name, mapping = key.split("/")
        head = (
            "CIFAR-10 names mapped to ImageNet rows"
            if mapping == "default"
            else "fresh (`label_mapping: none`)"
        )
        at = [[r["eval_map"].get(str(e), r["eval_map"].get(e)) for r in runs.values()] for e in (0, 1)]
        tests = [r["test"]["test_map"] for r in runs.values()]
        seconds = statistics.mean(r["seconds"] for r in runs.values())
        cells = [mean_std([v for v in values if v is not None]) for values in at]
        lines.append(
            f"| {name} | {head} | {len(runs)} | {cells[0]} | {cells[1]} | {mean_std(tests)} | {seconds:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--mapping", nargs="+", default=list(MAPPINGS), choices=MAPPINGS)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--validation", type=int, default=200)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--data-seed", type=int, default=0, help="the mosaics' seed (one set for every run)")
    parser.add_argument(
        "--json", type=Path, default=RESULTS, help="the raw results (rewritten after each run)"
    )
    args = parser.parse_args()
    if not (SHARED.is_dir() and SOURCE.is_dir()):
        print(f"skipped: {SHARED} (real checkpoints and photos) is absent")
        return 0
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    sizes = {"train": args.train, "validation": args.validation, "test": args.test}
    report = {"machine": describe(), "data": {"seed": args.data_seed, "sizes": sizes}, "epochs": args.epochs}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mosaics"
        build_mosaics(data, sizes, seed=args.data_seed)
        # seed by seed, so that the first runs are a one-seed look at every model and head
        results = {f"{name}/{mapping}": {} for name in args.models for mapping in args.mapping}
        for seed in args.seeds:
            for key in results:
                name, mapping = key.split("/")
                run = one_run(MODELS[name], mapping, seed, data, args.epochs, Path(tmp))
                results[key][str(seed)] = run
                maps = " ".join(f"{run['eval_map'][e]:.3f}" for e in sorted(run["eval_map"]))
                print(
                    f"{name:18s} {mapping:7s} seed {seed}: validation mAP by epoch {maps}; "
                    f"test mAP {run['test']['test_map']:.3f} ({run['seconds']:.0f} s)",
                    flush=True,
                )
                args.json.write_text(json.dumps({**report, "runs": results}, indent=1) + "\n")
    print()
    print(table(results, args.epochs))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
