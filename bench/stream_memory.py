"""Does a streamed run's memory stay flat as the data grows? (a script, not a timed test)

Generates parquet shards of small JPEGs once under --workdir (reused when there; each shard written under a
temporary name and renamed when done): ``n<LARGEST>/train-*.parquet`` (--shard-size images a shard, 32x32 JPEGs
of noise over class-coloured gradients, 10 classes, the ``image``/``label`` features stored in the parquet
metadata), each smaller size as a folder of links to the first shards of the largest, and ``val.parquet``. A
random MobileNetV2 (width 1.0, 2.2M parameters) at 32 px is saved beside them.

For each size, ``python -m hf_finetune train`` trains on ``train_file: n<SIZE>/*.parquet`` with
``streaming: true`` for ``ceil(SIZE / batch)`` steps (every image once, the default batch), in a fresh wrapper
process whose ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is the peak RSS of the largest process of the run's tree
(loader workers included). Also measured: the output folder's size after the run (the model and its reports;
no copy of the data) and the size of the ``datasets`` cache the run was given (``HF_DATASETS_CACHE``, empty
before it). ``--modes map`` measures the map-style run on the same shards the same way. The runs get
``OMP_NUM_THREADS=1`` (``--threads``) and otherwise the defaults.

Target: peak RSS with the largest size at most 1.1x that with the smallest (issue 24, point 4).

    .venv/bin/python bench/stream_memory.py [--sizes 20000 200000] [--modes stream] [--workdir DIR]
        [--json bench/results/stream_memory.json]
"""

from __future__ import annotations

import argparse
import io
import json
import math
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
TARGET = 1.1
CLASSES = [f"class_{c:02d}" for c in range(10)]
SIDE = 32
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "hf_finetune_stream_bench"


def _jpeg(rng, colours, label: int) -> bytes:
    import numpy as np
    from PIL import Image

    t = np.linspace(0.0, 1.0, SIDE, dtype=np.float32)
    ramp = t[None, :, None] if label % 2 else t[:, None, None]
    pixels = colours[label, 0] * (1 - ramp) + colours[label, 1] * ramp
    pixels = pixels + rng.normal(0.0, 40.0, size=(SIDE, SIDE, 3)).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _write_shard(path: Path, count: int, seed: int) -> None:
    """``count`` JPEGs with labels cycling through CLASSES, as a parquet file with datasets' features."""
    import datasets
    import numpy as np

    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(0).integers(0, 256, size=(len(CLASSES), 2, 3)).astype(np.float32)
    labels = [int(v) for v in rng.integers(0, len(CLASSES), size=count)]
    images = [{"bytes": _jpeg(rng, colours, label), "path": None} for label in labels]
    rows = {"image": images, "label": labels}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(partial))
    os.rename(partial, path)


def generate(workdir: Path, sizes: list[int], shard_size: int, val_count: int) -> dict:
    """The shards of the largest size, the smaller sizes as links to its first shards, the validation file;
    returns {"train": {size: folder}, "validation": file, "generate_s": seconds spent now}."""
    largest = max(sizes)
    if any(size % shard_size for size in sizes):
        raise SystemExit(f"every size must be a multiple of --shard-size {shard_size}: {sizes}")
    start = time.perf_counter()
    shards = largest // shard_size
    full = workdir / f"n{largest}"
    full.mkdir(parents=True, exist_ok=True)
    names = [f"train-{i:05d}-of-{shards:05d}.parquet" for i in range(shards)]
    for index, name in enumerate(names):
        if not (full / name).exists():
            _write_shard(full / name, shard_size, seed=1000 + index)
            print(f"  wrote {full / name}", flush=True)
    folders = {largest: full}
    for size in sizes:
        if size == largest:
            continue
        folder = workdir / f"n{size}-of-{largest}"
        folder.mkdir(exist_ok=True)
        for name in names[: size // shard_size]:
            if not (folder / name).exists():
                (folder / name).symlink_to(full / name)
        folders[size] = folder
    validation = workdir / f"val-{val_count}.parquet"
    if not validation.exists():
        _write_shard(validation, val_count, seed=1)
    return {"train": folders, "validation": validation, "generate_s": time.perf_counter() - start}


def make_model(workdir: Path, kind: str) -> Path:
    """A random transformers classifier for 32 px inputs with its image processor, saved once: ``tiny``, a
    ResNet of 8 and 16 channels (6k parameters: the run's time is the data path's), or ``mobilenet_v2``
    (width 1.0, 2.2M parameters)."""
    folder = workdir / f"{kind}-random-32px"
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    import transformers as tf

    torch.manual_seed(0)
    names = {"id2label": dict(enumerate(CLASSES)), "label2id": {name: i for i, name in enumerate(CLASSES)}}
    if kind == "tiny":
        config = tf.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", **names
        )
        tf.ResNetForImageClassification(config).save_pretrained(folder)
    else:
        tf.MobileNetV2ForImageClassification(tf.MobileNetV2Config(image_size=SIDE, **names)).save_pretrained(
            folder
        )
    processor = tf.ConvNextImageProcessor(
        size={"shortest_edge": SIDE}, crop_pct=0.875, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor.save_pretrained(folder)
    return folder


def code_state() -> dict:
    """The commit the runs used and whether hf_finetune/ had changes not committed yet (saved with the results)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.rstrip()

    changed = git("status", "--short", "--", "hf_finetune").splitlines()
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_in_hf_finetune": changed}


def wrap(command: list[str], interval: float = 2.0) -> dict:
    """Run ``command`` (its output to stderr); the peak RSS of the largest process of its tree
    (``getrusage(RUSAGE_CHILDREN).ru_maxrss``: this process runs nothing else), its wall seconds, and the
    command's own RSS every ``interval`` seconds (/proc, Linux), at most 200 samples."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=sys.stderr)
    samples: list[tuple[float, float]] = []
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            samples.append((round(time.perf_counter() - start, 1), round(kib / 1024, 1)))
        except (OSError, StopIteration, ValueError):
            pass
        time.sleep(interval)
    step = max(1, len(samples) // 200)
    return {
        "rc": process.returncode,
        "wall_s": time.perf_counter() - start,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "rss_samples_mib": samples[::step],
    }


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


# ``python -m hf_finetune`` with datasets' pause when a stream's reader threads shut down set first (--shutdown-sleep)
LAUNCH = (
    "import sys, datasets.config; datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = float(sys.argv.pop(1)); "
    "from hf_finetune.cli.commands import main; sys.exit(main())"
)


def train_command(
    model: Path, train: Path, validation: Path, out: Path, streaming: bool, steps: int, extra, sleep=None
):
    """``python -m hf_finetune train ...``; with ``sleep``, the same through LAUNCH."""
    launch = ["-m", "hf_finetune"] if sleep is None else ["-c", LAUNCH, str(sleep)]
    command = [sys.executable, *launch, "train", "--model_name_or_path", str(model)]
    command += ["--train_file", str(train / "*.parquet"), "--validation_file", str(validation)]
    command += ["--output_dir", str(out), "--max_steps", str(steps), "--seed", "0"]
    command += ["--save_strategy", "no", "--eval_strategy", "no", "--eval_on_start", "false"]
    if streaming:
        command += ["--streaming", "true"]
    return command + list(extra)


def measured_run(command: list[str], log: Path, threads: int | None = None) -> dict:
    """Run ``command`` (a training run) in a fresh wrapper process, its own datasets cache and output folder;
    peak RSS of its process tree, wall seconds, the output folder's and the datasets cache's sizes."""
    out = Path(command[command.index("--output_dir") + 1])
    with tempfile.TemporaryDirectory(prefix="stream_bench_hfds_") as hf_cache:
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=hf_cache, PYTHONUNBUFFERED="1")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        with log.open("w") as stream:
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--wrap", *command],
                stdout=subprocess.PIPE,
                stderr=stream,
                text=True,
                env=env,
                cwd=ROOT,
            )
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["datasets_cache_bytes"] = folder_bytes(Path(hf_cache))
    row["peak_rss_mib"] = row.pop("maxrss_kib") / 1024
    row["output_bytes"] = folder_bytes(out) if out.exists() else 0
    row["output_files"] = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    results = out / "train_results.json"
    row["train"] = json.loads(results.read_text()) if results.exists() else {}
    row["log"] = str(log)
    return row


def run_one(data: dict, model: Path, size: int, mode: str, args, workdir: Path, tag: str = "") -> dict:
    batch = args.batch_size
    steps = math.ceil(size / batch)
    out = workdir / "runs" / f"{mode}-{size}{tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = (["--per_device_train_batch_size", str(batch)] if batch != 32 else []) + list(args.train_arg)
    sleep = getattr(args, "shutdown_sleep", None)
    command = train_command(
        model, data["train"][size], data["validation"], out, mode == "stream", steps, extra, sleep
    )
    print(f"{mode} {size}: {' '.join(command[1:])}", flush=True)
    row = measured_run(command, workdir / "runs" / f"{mode}-{size}{tag}.log", args.threads)
    row.update(mode=mode, images=size, steps=steps, batch=batch, command=command[1:])
    print(
        f"  rc {row['rc']}, {row['wall_s']:.0f} s, peak RSS {row['peak_rss_mib']:.0f} MiB, "
        f"output {row['output_bytes'] / 2**20:.1f} MiB, datasets cache {row['datasets_cache_bytes'] / 2**20:.1f} MiB",
        flush=True,
    )
    if not args.keep_output:
        shutil.rmtree(out, ignore_errors=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--modes", nargs="+", choices=["stream", "map"], default=["stream"])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--val-count", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32, help="the project's default")
    parser.add_argument("--model", choices=["tiny", "mobilenet_v2"], default="tiny")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS for the runs (0: unset). On a machine shared with other work, torch's spinning "
        "compute threads slowed a step of the tiny model about 15x at 2 threads; 1 avoids that",
    )
    parser.add_argument(
        "--generate-only", action="store_true", help="write the shards and the model, then stop"
    )
    parser.add_argument("--keep-output", action="store_true", help="keep each run's output folder")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--train-arg", action="append", default=[], help="one more argument for every run")
    parser.add_argument("--tag", default="", help="appended to each run's folder and log name")
    parser.add_argument("--wrap", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # the per-run wrapper
    args = parser.parse_args()
    if args.wrap:
        print(json.dumps(wrap(args.wrap)))
        return 0

    sizes = sorted(set(args.sizes))
    data = generate(args.workdir, sizes, args.shard_size, args.val_count)
    model = make_model(args.workdir, args.model)
    print(f"data in {args.workdir} ({data['generate_s']:.0f} s now), model {model}", flush=True)
    if args.generate_only:
        return 0
    code = code_state()  # before the runs: the code they import
    rows = [
        run_one(data, model, size, mode, args, args.workdir, args.tag)
        for mode in args.modes
        for size in sizes
    ]

    print("\n| mode | images | steps | rc | wall s | train images/s | peak RSS (MiB) | output folder (MiB) "
          "| datasets cache (MiB) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['images']:,} | {row['steps']} | {row['rc']} | {row['wall_s']:.0f} "
            f"| {row['train'].get('train_samples_per_second', float('nan')):.0f} | {row['peak_rss_mib']:.0f} "
            f"| {row['output_bytes'] / 2**20:.1f} | {row['datasets_cache_bytes'] / 2**20:.1f} |"
        )
    summary: dict = {
        "target_ratio": TARGET,
        "threads": args.threads,
        "workdir": str(args.workdir),
        "rows": rows,
    }
    summary["ratios"] = {}
    for mode in args.modes:
        mine = [row for row in rows if row["mode"] == mode and row["rc"] == 0]
        if len(mine) > 1:
            small, large = mine[0], mine[-1]
            ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
            growth = large["peak_rss_mib"] - small["peak_rss_mib"]
            summary["ratios"][mode] = ratio
            summary.setdefault("growth_mib", {})[mode] = growth
            print(
                f"{mode}: peak RSS {large['images']:,}/{small['images']:,} images = {ratio:.3f}x, {growth:+.0f} MiB "
                f"({growth * 1024 / (large['images'] - small['images']):+.3f} KiB per extra image) "
                f"(target <= {TARGET}x: {'PASS' if ratio <= TARGET else 'FAIL'}); output folder "
                f"{large['output_bytes'] / 2**20:.1f} vs {small['output_bytes'] / 2**20:.1f} MiB"
            )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": describe(), "code": code, **summary}, indent=2) + "\n")
    return 0 if all(row["rc"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
