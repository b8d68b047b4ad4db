"""Streamed against map-style training speed on the same data and model, both in one invocation (a script, not a
timed test).

The data and model of ``bench/stream_memory.py`` (parquet shards of 32x32 JPEGs, generated once under --workdir
and reused; a random 32 px classifier, ``tiny`` by default so that the data path, not the model, sets the pace).
``python -m hf_finetune train`` runs on ``train_file: n<SIZE>/*.parquet`` for ``ceil(SIZE / batch)`` steps (every
image once, the default batch), map-style and with ``streaming: true``, in the order map, stream, stream, map
(--repeats 2; an ABBA order, so that a drift of the shared machine's speed weighs on both alike), each in its own
process. Images/s is the Trainer's ``train_samples_per_second`` (steps x batch / the training loop's seconds;
the map-style run's loading pass before training is not in it, its wall seconds are shown beside).

Target: streamed images/s at least 0.9 of map-style (issue 24, point 5).

    .venv/bin/python bench/stream_speed.py [--size 20000] [--repeats 2] [--workdir DIR]
        [--json bench/results/stream_speed.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from machine import describe  # bench/machine.py: the machine, saved with the results
from stream_memory import DEFAULT_WORKDIR, code_state, generate, make_model, run_one

TARGET = 0.9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, default=20_000, help="training images (a multiple of --shard-size)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs, in ABBA order")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--val-count", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32, help="the project's default")
    parser.add_argument("--model", choices=["tiny", "mobilenet_v2"], default="tiny")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS for the runs; 0 (the default) leaves it unset: the project's own choice of compute "
        "threads and loader workers, what a user gets",
    )
    parser.add_argument("--modes", nargs="+", choices=["map", "stream"], default=["map", "stream"])
    parser.add_argument("--keep-output", action="store_true", help="keep each run's output folder")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--train-arg", action="append", default=[], help="one more argument for every run")
    parser.add_argument(
        "--shutdown-sleep",
        type=float,
        help="set datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN (5 s: datasets pauses this long each time a "
        "shuffled parquet stream's reader threads stop; hf_finetune waits it out in a background thread, "
        "hf_finetune/data/stream_pause.py) in every run",
    )
    args = parser.parse_args()

    data = generate(args.workdir, [args.size], args.shard_size, args.val_count)
    model = make_model(args.workdir, args.model)
    order = []
    for repeat in range(args.repeats):
        order += args.modes if repeat % 2 == 0 else list(reversed(args.modes))
    code = code_state()  # before the runs: the code they import
    rows = []
    for index, mode in enumerate(order):
        row = run_one(data, model, args.size, mode, args, args.workdir, tag=f"-{index}")
        row["order"] = index
        rows.append(row)

    print("\n| # | mode | images | steps | rc | train images/s | train s | wall s | peak RSS (MiB) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        train = row["train"]
        print(
            f"| {row['order']} | {row['mode']} | {row['images']:,} | {row['steps']} | {row['rc']} "
            f"| {train.get('train_samples_per_second', float('nan')):.1f} "
            f"| {train.get('train_runtime', float('nan')):.1f} | {row['wall_s']:.0f} | {row['peak_rss_mib']:.0f} |"
        )
    speeds = {
        mode: [
            row["train"]["train_samples_per_second"] for row in rows if row["mode"] == mode and row["rc"] == 0
        ]
        for mode in args.modes
    }
    summary: dict = {"target_ratio": TARGET, "threads": args.threads, "model": args.model, "rows": rows}
    summary["datasets_shutdown_sleep"] = args.shutdown_sleep
    summary["images_per_second"] = {mode: statistics.mean(v) for mode, v in speeds.items() if v}
    if all(speeds.get(mode) for mode in ("map", "stream")):
        ratio = summary["images_per_second"]["stream"] / summary["images_per_second"]["map"]
        summary["ratio"] = ratio
        print(
            f"\nstreamed / map-style images/s: {summary['images_per_second']['stream']:.1f} / "
            f"{summary['images_per_second']['map']:.1f} = {ratio:.3f} (mean of {args.repeats} runs each; "
            f"target >= {TARGET}: {'PASS' if ratio >= TARGET else 'FAIL'})"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": describe(), "code": code, **summary}, indent=2) + "\n")
    return 0 if all(row["rc"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
