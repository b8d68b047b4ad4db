"""Does the loader's memory stay flat as the image folder grows? (a script, not a timed test)

Generates image folders CLASS/*.jpg (10 classes, 32-64 px JPEGs of noise over class-coloured gradients) of
each size (default 10,000 and 100,000) under --workdir, reused when complete (each is written under a
temporary name and renamed when done). Then, for each size in a fresh subprocess (so ru_maxrss is that size's
own high-water mark), it measures:

* the scan: ``load_image_dataset(DataArguments(train_dir=FOLDER), seed=42)``, its seconds and images/s, the
  peak RSS after it and the bytes the scanned DatasetDict holds (Arrow tables of paths and labels: no pixels);
* the real pipeline: ``build_trainer`` (MobileNetV1 0.25 at 128 px, batch 64, the scan passed in), --batches
  batches of ``trainer.get_train_dataloader()``, then ``trainer.train()`` for --steps steps; the peak RSS after.

Target: peak RSS with the largest size at most 1.2x that with the smallest, both after the scan and after the
batches and steps (the process peak). Images are decoded per batch, never all at once.

    .venv/bin/python bench/loader_memory.py [--sizes 10000 100000] [--workdir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # bench/machine.py: the machine, saved with the results

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT.parent / "shared" / "models" / "hf-mobilenet_v1_0.25_128"
TARGET = 1.2
MIB = 1024 * 1024


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def generate(folder: Path, count: int, classes: int, seed: int = 0) -> float:
    """Write ``count`` small JPEGs into ``folder``/CLASS/, atomically; returns seconds (0 when reused)."""
    import numpy as np
    from PIL import Image

    if folder.is_dir():
        return 0.0
    for stale in folder.parent.glob(f".{folder.name}.partial-*"):  # an interrupted generation of ours
        shutil.rmtree(stale)
    start = time.perf_counter()
    partial = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(classes, 2, 3)).astype(np.float32)
    for c in range(classes):
        (partial / f"class_{c:02d}").mkdir(parents=True)
    for i in range(count):
        c = i % classes
        h, w = (int(v) for v in rng.integers(32, 65, size=2))
        t = np.linspace(0.0, 1.0, w if c % 2 else h, dtype=np.float32)
        ramp = t[None, :, None] if c % 2 else t[:, None, None]
        pixels = colours[c, 0] * (1 - ramp) + colours[c, 1] * ramp
        pixels = pixels + rng.normal(0.0, 40.0, size=(h, w, 3)).astype(np.float32)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
        image.save(partial / f"class_{c:02d}" / f"{i:06d}.jpg", quality=85)
    os.rename(partial, folder)
    return time.perf_counter() - start


def held_bytes(dataset_dict) -> int:
    """Bytes of the Arrow buffers behind every split, each counted once: the splits share one table of
    paths and labels, and each adds its row selection (``_indices``)."""
    buffers: dict[int, int] = {}
    for split in dataset_dict.values():
        tables = [split.data] + ([split._indices] if split._indices is not None else [])
        for table in tables:
            for column in table.table.columns:
                for chunk in column.chunks:
                    buffers.update((b.address, b.size) for b in chunk.buffers() if b is not None)
    return sum(buffers.values())


def measure(folder: Path, batches: int, steps: int, batch_size: int) -> dict:
    """Run in a fresh process: the scan, then the training pipeline; peak RSS after each."""
    import logging

    import transformers

    from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
    from hf_finetune.data.loading import load_image_dataset
    from hf_finetune.run.train import build_trainer

    transformers.logging.set_verbosity_error()
    logging.getLogger("hf_finetune").setLevel(logging.WARNING)
    result: dict = {"rss_after_imports_mib": peak_rss_mib()}

    data_args = DataArguments(train_dir=str(folder))
    start = time.perf_counter()
    data = load_image_dataset(data_args, seed=42)
    result["scan_s"] = time.perf_counter() - start
    result["rss_after_scan_mib"] = peak_rss_mib()
    result["images"] = sum(len(split) for split in data.dataset.values())
    result["splits"] = {name: len(split) for name, split in data.dataset.items()}
    result["dataset_bytes"] = held_bytes(data.dataset)
    result["dataset_features"] = str(data.dataset["train"].features)

    with tempfile.TemporaryDirectory(prefix="loader_memory_") as out:
        training_args = FinetuneTrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            save_strategy="no",
            eval_strategy="no",
            eval_on_start=False,
            load_best_model_at_end=False,
            report_to=[],
            disable_tqdm=True,
            logging_strategy="no",
        )
        model_args = ModelArguments(model_name_or_path=str(MODEL))
        start = time.perf_counter()
        trainer, _, _ = build_trainer(model_args, data_args, training_args, loaded_data=data)
        result["build_s"] = time.perf_counter() - start
        result["rss_after_build_mib"] = peak_rss_mib()

        start = time.perf_counter()
        seen = 0
        for index, batch in enumerate(trainer.get_train_dataloader()):
            seen += int(batch["pixel_values"].shape[0])
            if index + 1 >= batches:
                break
        result["batches_s"] = time.perf_counter() - start
        result["batch_images"] = seen
        result["rss_after_batches_mib"] = peak_rss_mib()

        start = time.perf_counter()
        trainer.train()
        result["train_s"] = time.perf_counter() - start
        result["train_steps"] = trainer.state.global_step
    result["rss_after_train_mib"] = peak_rss_mib()
    return result


def run_size(folder: Path, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="loader_memory_") as tmp:
        result_path = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--measure", str(folder)]
        command += ["--result", str(result_path), "--batches", str(args.batches), "--steps", str(args.steps)]
        command += ["--batch-size", str(args.batch_size)]
        subprocess.run(command, check=True, cwd=ROOT)
        return json.loads(result_path.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "hf_finetune_loader_memory"
    )
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batches", type=int, default=50, help="dataloader batches iterated per size")
    parser.add_argument("--steps", type=int, default=10, help="trainer.train() steps per size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the per-size subprocess
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure is not None:
        figures = measure(args.measure, args.batches, args.steps, args.batch_size)
        args.result.write_text(json.dumps(figures, indent=2))
        return 0

    sizes = sorted(set(args.sizes))
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in sizes:
        folder = args.workdir / f"images-{size}-c{args.classes}"
        seconds = generate(folder, size, args.classes)
        how = f"generated in {seconds:.1f} s" if seconds else "reused"
        print(f"{size} images in {folder} ({how})", flush=True)
        row = run_size(folder, args)
        row.update(size=size, folder=str(folder), generate_s=seconds)
        rows.append(row)

    print()
    print(
        "| images | scan s | scan images/s | dataset held (KiB) | RSS after imports (MiB) "
        "| peak RSS after scan (MiB) | peak RSS after batches+steps (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['images']} | {row['scan_s']:.2f} | {row['images'] / row['scan_s']:,.0f} "
            f"| {row['dataset_bytes'] / 1024:,.0f} | {row['rss_after_imports_mib']:.0f} "
            f"| {row['rss_after_scan_mib']:.0f} | {row['rss_after_train_mib']:.0f} |"
        )
    summary: dict = {"target_ratio": TARGET, "rows": rows}
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        ratios = {
            key: large[f"rss_after_{key}_mib"] / small[f"rss_after_{key}_mib"] for key in ("scan", "train")
        }
        growth = {
            key: large[f"rss_after_{key}_mib"] - small[f"rss_after_{key}_mib"] for key in ("scan", "train")
        }
        extra = large["images"] - small["images"]
        passed = all(r <= TARGET for r in ratios.values())
        print(
            f"\npeak RSS {large['images']}/{small['images']} images: after scan {ratios['scan']:.3f}x "
            f"(+{growth['scan']:.0f} MiB, {growth['scan'] * 1024 / extra:.2f} KiB per extra image), after batches+steps {ratios['train']:.3f}x "
            f"(+{growth['train']:.0f} MiB); target <= {TARGET}x: {'PASS' if passed else 'FAIL'}"
        )
        summary.update(ratios=ratios, growth_mib=growth, passed=passed)
    for row in rows:
        print(
            f"{row['images']} images: {row['batches_s']:.1f} s for {row['batch_images']} images in batches, "
            f"{row['train_steps']} train steps in {row['train_s']:.1f} s, splits {row['splits']}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": describe(), **summary}, indent=2) + "\n")
    return 0 if summary.get("passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
