"""Where the time of a training step goes, measured in one process (a script, not a timed test).

One model and dataset (default: MobileNetV2 on the CIFAR-10 split of bench/throughput.py), built exactly as
`hf-finetune train` builds it (``build_trainer`` with the project's defaults for this machine; --set passes
extra recipe flags), on the device the run would use, timed four ways in turn:

* loader         the Trainer's own training DataLoader (its workers, pinning, image cache), every batch moved
                 to the device (and normalised there: normalize_on_device), and nothing else;
* ceiling        forward, backward, gradient clipping and the optimizer on one batch already on the device
                 (bench/throughput.py's compute ceiling);
* loader + step  the same step fed from that DataLoader, in a plain loop (no Trainer);
* trainer        ``trainer.train()`` for as many steps, timed by a callback at every optimizer step.

Each part runs --warmup steps, then --steps timed ones; --repeats rounds of the four, and the medians. The
differences say what the data pipeline costs when it is not hidden behind the step (loader + step - ceiling)
and what the Trainer's own per-step work costs (trainer - loader + step). On a CPU the arithmetic dominates;
on a GPU, where a step of these networks takes milliseconds, the per-step work around it is what shows.

Per model: images/s of each part, its ratio to the ceiling, FLOPs a trained image (3 x a forward counted by
torch) and MFU against the device's dense bf16 peak (bench/throughput.py GPU_PEAK_BF16, with its source).
--configs measures several models and batches in this one process (``--configs gpu``: the GPU check's,
bench/gpu_bench.py BREAKDOWN); --json sets the key "breakdown" of that file, row by row; --smoke runs tiny
random models of the same families on tiny generated images on the CPU.

    .venv/bin/python bench/step_breakdown.py [--model mobilenet_v2] [--data cifar10] [--steps 20]
        [--repeats 2] [--set bf16=false ...] [--json out.json]
    python bench/step_breakdown.py --configs gpu --steps 20 --warmup 5 --repeats 1 --json results.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench  # noqa: E402  (bench/gpu_bench.py: the GPU check's models, sizes and results file)
import throughput  # noqa: E402  (bench/throughput.py: the data, the recipe flags, the step timer, FLOPs)

PARTS = ("loader", "ceiling", "loader + step", "trainer")


def build(model: Path, train: Path, val: Path, batch: int, steps: int, extra: list[str]):
    """The trainer `hf-finetune train` would build for ``model`` on these folders, and its step timer."""
    from hf_finetune.config.parser import parse_train_args
    from hf_finetune.run.train import build_trainer

    out = Path(tempfile.mkdtemp(prefix="hf-finetune-breakdown-"))
    argv = throughput._project_argv(model, train, val, out, steps, batch, 42) + extra
    model_args, data_args, training_args = parse_train_args(argv)
    timer = throughput.step_timer()
    trainer, _, _ = build_trainer(model_args, data_args, training_args, callbacks=[timer])
    return trainer, timer


class Parts:
    """The four ways of stepping, sharing one trainer (its model, optimizer groups and DataLoader)."""

    def __init__(self, trainer, timer):
        import torch

        self.torch = torch
        self.trainer, self.timer = trainer, timer
        self.args = trainer.args
        self.device = self.args.device
        self.cuda = self.device.type == "cuda"
        self.net = trainer.model.to(self.device)
        self.loader = trainer.get_train_dataloader()
        self.batches = iter(self.loader)
        self.resident = self.to_device(self.next_batch())
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = trainer.create_optimizer()

    def next_batch(self):
        try:
            return next(self.batches)
        except StopIteration:  # the end of an epoch: start the next one, as the Trainer does
            self.batches = iter(self.loader)
            return next(self.batches)

    def to_device(self, batch):
        """The batch on the device as the Trainer prepares it (normalize_on_device: normalised there)."""
        return self.trainer.prepare_batch(batch)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def step(self, batch):
        torch = self.torch
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(self.args.bf16)):
            loss = self.net(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.args.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def timed(self, part: str, warmup: int, steps: int) -> float:
        """Seconds per step of ``part``, after ``warmup`` untimed steps."""
        if part == "trainer":
            return self.trainer_seconds(warmup, steps)
        self.net.train()
        for i in range(warmup + steps):
            if i == warmup:
                self.sync()
                start = time.perf_counter()
            if part == "loader":
                self.to_device(self.next_batch())
            elif part == "ceiling":
                self.step(self.resident)
            else:
                self.step(self.to_device(self.next_batch()))
        self.sync()
        return (time.perf_counter() - start) / steps

    def trainer_seconds(self, warmup: int, steps: int) -> float:
        trainer = self.trainer
        trainer.args.max_steps = warmup + steps
        trainer.optimizer = trainer.lr_scheduler = None  # train() builds its own, as in a run
        self.timer.steps.clear()
        self.timer.images.clear()
        trainer.train()
        times = self.timer.steps
        return (times[-1] - times[warmup - 1]) / (len(times) - warmup)


def measure(model: str, batch: int, data: str, args, workdir: Path) -> dict:
    """The four parts for one model and batch (``args.repeats`` rounds; medians), FLOPs and MFU, in this
    process; the GPU memory it held is given back before the next."""
    import torch

    checkpoint = gpu_bench.checkpoint(model, workdir / "models", args.smoke)
    train, val = gpu_bench.data_folders(data, workdir, args.smoke)
    extra = list(args.extra) + (gpu_bench.SMOKE_FLAGS if args.smoke else [])
    trainer, timer = build(checkpoint, train, val, batch, args.warmup + args.steps, extra)
    parts = Parts(trainer, timer)
    device_type = parts.device.type
    flops = throughput.step_flops_per_image(parts.net, parts.resident, device_type, bool(parts.args.bf16))
    seconds: dict[str, list[float]] = {part: [] for part in PARTS}
    for _ in range(args.repeats):  # rounds of all four, so a slow minute of the machine hits each
        for part in PARTS:
            seconds[part].append(parts.timed(part, args.warmup, args.steps))
    median = {part: statistics.median(values) for part, values in seconds.items()}
    peak = throughput.peak_flops(device_type)
    a = trainer.args
    row = {
        "model": model,
        "batch": batch,
        "data": data,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "device": torch.cuda.get_device_name(0) if device_type == "cuda" else "cpu",
        "settings": {
            key: getattr(a, key, None)
            for key in (
                "bf16",
                "dataloader_num_workers",
                "dataloader_pin_memory",
                "dataloader_persistent_workers",
                "cache_images",
                "normalize_on_device",
                "channels_last",
                "torch_compile",
            )
        },
        "seconds": seconds,
        "median": median,
        "images_per_second": {part: batch / s for part, s in median.items()},
        "over_ceiling": {part: median["ceiling"] / s for part, s in median.items()},
        "flops_per_image": flops,
        "peak_flops": peak,
        "mfu": {part: batch / s * flops / peak for part, s in median.items()} if peak else None,
    }
    del parts, trainer, timer
    row["gpu_peak_mib"] = gpu_bench.free_memory()
    return row


def render(row: dict) -> str:
    """One model's table, as the breakdown prints it."""
    median, batch = row["median"], row["batch"]
    lines = [
        f"\n{row['model']} on {row['data']}, batch {batch}, {row['steps']} timed steps after {row['warmup']}, "
        f"{row['repeats']} rounds; device {row['device']}; "
        + ", ".join(f"{k} {v}" for k, v in row["settings"].items()),
        "",
        "| part | ms per step (median) | rounds (ms) | images/s | / ceiling's images/s | MFU |",
        "|---|---|---|---|---|---|",
    ]
    for part in PARTS:
        rounds = " / ".join(f"{1000 * s:.1f}" for s in row["seconds"][part])
        mfu = f"{row['mfu'][part]:.1%}" if row["mfu"] else "n/a"
        lines.append(
            f"| {part} | {1000 * median[part]:.1f} | {rounds} | {batch / median[part]:.1f} | "
            f"{row['over_ceiling'][part]:.2f} | {mfu} |"
        )
    pipeline = median["loader + step"] - median["ceiling"]
    own = median["trainer"] - median["loader + step"]
    lines.append(
        f"\ndata pipeline not hidden behind the step: {1000 * pipeline:.1f} ms a step; the Trainer's own "
        f"per-step work: {1000 * own:.1f} ms a step; {row['flops_per_image'] / 1e9:.2f} GFLOP a trained image "
        "(3 x the forward's, counted by torch)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    models = [*throughput.MODELS, *gpu_bench.RANDOM_MODELS]
    parser.add_argument("--model", default="mobilenet_v2", choices=models)
    parser.add_argument("--data", default="cifar10", choices=["hotdog", "cifar10"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        metavar="MODEL:BATCH",
        help="several models and batches in this one process (instead of --model/--batch); 'gpu': "
        "bench/gpu_bench.py BREAKDOWN, the GPU check's sizes",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=throughput.WARMUP_STEPS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra recipe flags")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny models and data on the CPU (a wiring check)"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--json", type=Path, default=None, help="sets 'breakdown' in this JSON (kept otherwise)"
    )
    args = parser.parse_args()
    configs = [(args.model, args.batch)]
    if args.configs == ["gpu"]:
        configs = list(gpu_bench.BREAKDOWN)
    elif args.configs:
        configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs]
    for model, _ in configs:
        if model not in models:
            parser.error(f"--configs: unknown model {model!r}; one of {models}")
        if not args.smoke and model in throughput.MODELS and not throughput.MODELS[model].is_dir():
            raise SystemExit(f"needs the checkpoints of ../shared: missing {throughput.MODELS[model]}")
    import logging

    import torch

    if args.smoke:
        torch.set_num_threads(1)  # tiny models on a shared CPU: threads only wait for each other
    logging.getLogger("hf_finetune").setLevel(logging.WARNING)
    args.extra = [part for item in args.set for part in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hf-finetune-bench-"))
    rows = []
    for model, batch in configs:  # each row written as soon as it is measured
        rows.append(measure(model, batch, args.data, args, workdir))
        print(render(rows[-1]), flush=True)
        gpu_bench.update_results(args.json, "breakdown", rows)
    print("\n| model | batch | loader img/s | ceiling img/s | loader + step img/s | trainer img/s | "
          "trainer / ceiling | GFLOP/image | MFU ceiling | MFU trainer |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ips, mfu = row["images_per_second"], row["mfu"]
        shown = [f"{mfu[p]:.1%}" if mfu else "n/a" for p in ("ceiling", "trainer")]
        print(
            f"| {row['model']} | {row['batch']} | {ips['loader']:.0f} | {ips['ceiling']:.0f} | "
            f"{ips['loader + step']:.0f} | {ips['trainer']:.0f} | {row['over_ceiling']['trainer']:.2f} | "
            f"{row['flops_per_image'] / 1e9:.2f} | {shown[0]} | {shown[1]} |"
        )


if __name__ == "__main__":
    main()
