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

    .venv/bin/python bench/step_breakdown.py [--model mobilenet_v2] [--data cifar10] [--steps 20]
        [--repeats 2] [--set bf16=false ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (bench/throughput.py: the data, the recipe flags, the step timer)
from machine import describe  # bench/machine.py: the machine, saved with the results

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2", choices=list(throughput.MODELS))
    parser.add_argument("--data", default="cifar10", choices=["hotdog", "cifar10"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=throughput.WARMUP_STEPS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra recipe flags")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not throughput.MODELS[args.model].is_dir():
        raise SystemExit(f"needs the checkpoints of ../shared: missing {throughput.MODELS[args.model]}")
    import logging

    logging.getLogger("hf_finetune").setLevel(logging.WARNING)
    extra = [part for item in args.set for part in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hf-finetune-bench-"))
    train, val = throughput.prepare_data(args.data, workdir)
    model = throughput.MODELS[args.model]
    trainer, timer = build(model, train, val, args.batch, args.warmup + args.steps, extra)
    parts = Parts(trainer, timer)
    seconds: dict[str, list[float]] = {part: [] for part in PARTS}
    for _ in range(args.repeats):  # rounds of all four, so a slow minute of the machine hits each
        for part in PARTS:
            seconds[part].append(parts.timed(part, args.warmup, args.steps))
    median = {part: statistics.median(values) for part, values in seconds.items()}
    device = trainer.args.device
    print(
        f"\n{args.model} on {args.data}, batch {args.batch}, {args.steps} timed steps after {args.warmup}, "
        f"{args.repeats} rounds; device {device}; bf16 {trainer.args.bf16}, loader workers "
        f"{trainer.args.dataloader_num_workers}, pin_memory {trainer.args.dataloader_pin_memory}, "
        f"cache_images {trainer.args.cache_images}, normalize_on_device {trainer.args.normalize_on_device}\n"
    )
    print("| part | ms per step (median) | rounds (ms) | images/s | / ceiling's images/s |")
    print("|---|---|---|---|---|")
    for part in PARTS:
        rounds = " / ".join(f"{1000 * s:.1f}" for s in seconds[part])
        print(
            f"| {part} | {1000 * median[part]:.1f} | {rounds} | {args.batch / median[part]:.1f} | "
            f"{median['ceiling'] / median[part]:.2f} |"
        )
    pipeline = median["loader + step"] - median["ceiling"]
    own = median["trainer"] - median["loader + step"]
    print(
        f"\ndata pipeline not hidden behind the step: {1000 * pipeline:.1f} ms a step; the Trainer's own "
        f"per-step work: {1000 * own:.1f} ms a step (the last batch of an epoch can be smaller: hotdog's "
        "every 7th; the loader part counts full batches)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": describe(), "seconds": seconds, "median": median, "device": str(device)}, indent=2
            )
        )


if __name__ == "__main__":
    main()
