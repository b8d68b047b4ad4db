"""A learning-rate range test, as fastai's ``lr_find``: the learning rate ramps exponentially from ``start_lr``
to ``end_lr`` over ``num_steps`` training steps (at most :data:`MAX_STEPS`), the loss of each step is recorded and
smoothed, and the test stops early once the smoothed loss exceeds :data:`DIVERGE` x its best value.

The ramp sets the body's learning rate (``learning_rate``); every optimizer group keeps its ratio to it (the
head's ``head_lr_multiplier``, ``layer_decay``), as in training. The suggested rate is where the smoothed loss
falls fastest: the steepest negative slope of the smoothed loss against log10(lr), among the steps before its
minimum; with fewer than :data:`MIN_POINTS` such steps, the rate of the minimum divided by 10. Both are reported.

The model's weights (parameters and buffers) are put back as they were afterwards; :func:`find_learning_rate`
builds the run in a temporary folder, so the recipe's output folder is neither created nor changed.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hf_finetune.config.parser import parse_train_args
from hf_finetune.errors import ConfigError
from hf_finetune.run.build import build_trainer
from hf_finetune.search.one_process import refuse_several_processes

__all__ = [
    "DIVERGE",
    "MAX_STEPS",
    "LrFindResult",
    "lr_find",
    "find_learning_rate",
    "suggest_rate",
    "plot_lr_find",
]

MAX_STEPS = 500
DIVERGE = 4.0  # stop when the smoothed loss exceeds this many times its best value
BETA = 0.98  # the smoothing: an exponential moving average of the losses, debiased
MIN_POINTS = 3
SKIP_START = 2  # the first steps' smoothed losses lean on very few losses


@dataclass
class LrFindResult:
    """The learning rates tried, the losses (raw and smoothed), the suggestion (steepest descent) and the rate at
    the minimum / 10, whether the loss diverged before the last step."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float = float("nan")
    minimum_tenth: float = float("nan")
    rule: str = ""
    diverged: bool = False


def check_ramp(start_lr: float, end_lr: float, num_steps: int) -> None:
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--{name}: got {value:g}; expected a positive learning rate")
    if not start_lr < end_lr:
        raise ConfigError(f"--start_lr {start_lr:g} is not below --end_lr {end_lr:g}")
    if not 2 <= num_steps <= MAX_STEPS:
        raise ConfigError(f"--num_steps: got {num_steps}; expected 2 to {MAX_STEPS} steps")


def lr_find(trainer, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100) -> LrFindResult:
    """The range test on ``trainer`` (a built :class:`~hf_finetune.training.trainer.FinetuneTrainer`): its
    optimizer groups, batches, loss and device; its model's weights are put back afterwards."""
    check_ramp(start_lr, end_lr, num_steps)
    # no gradient is shared outside train(): each rank would ramp its own copy
    if trainer.args.world_size > 1:
        raise ConfigError(f"lr_find: the trainer runs on {trainer.args.world_size} processes; expected one")
    model, result = trainer.model, LrFindResult()
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer_before, was_training = trainer.optimizer, model.training
    trainer.optimizer = None
    try:
        optimizer = trainer.create_optimizer()
        ratios = [group["lr"] / trainer.args.learning_rate for group in optimizer.param_groups]
        batches = _cycle(trainer.get_train_dataloader())
        average, best = 0.0, math.inf
        for step in range(num_steps):
            lr = start_lr * (end_lr / start_lr) ** (step / (num_steps - 1))
            for group, ratio in zip(optimizer.param_groups, ratios, strict=False):
                group["lr"] = lr * ratio
            loss = _step(trainer, model, optimizer, next(batches))
            average = BETA * average + (1 - BETA) * loss
            smoothed = average / (1 - BETA ** (step + 1))
            result.lrs.append(lr)
            result.losses.append(loss)
            result.smoothed.append(smoothed)
            if not math.isfinite(smoothed) or (step > SKIP_START and smoothed > DIVERGE * best):
                result.diverged = True
                break
            best = min(best, smoothed)
    finally:
        trainer.optimizer = optimizer_before
        with torch.no_grad():
            model.load_state_dict(saved)
        model.train(was_training)
    result.suggestion, result.minimum_tenth, result.rule = suggest_rate(result.lrs, result.smoothed)
    return result


def _cycle(loader):
    while True:
        yield from loader


def _step(trainer, model, optimizer, batch) -> float:
    model.train()
    inputs = trainer.prepare_batch(batch)
    with trainer.accelerator.autocast():
        loss = trainer.compute_loss(model, inputs)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def suggest_rate(lrs: list[float], smoothed: list[float]) -> tuple[float, float, str]:
    """``(suggestion, minimum / 10, rule)``: the steepest descent of the smoothed loss against log10(lr) before its
    minimum, or the minimum's rate / 10 with too few steps before it (see the module's docstring).

    The slope is a secant over a window of ``max(2, n // 10)`` steps (one step's slope is mostly noise), after
    the first ``n // 10`` steps (a smoothed loss there leans on very few losses); the suggestion is the rate in
    the middle of the steepest window."""
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    if not finite:
        raise ConfigError("lr-find: every loss was infinite or NaN; lower --start_lr")
    low = min(finite, key=lambda i: smoothed[i])
    minimum_tenth = lrs[low] / 10
    width, skip = max(2, len(lrs) // 10), max(SKIP_START, len(lrs) // 10)
    starts = range(skip, low - width + 1)
    if len(starts) < MIN_POINTS:
        return minimum_tenth, minimum_tenth, "minimum / 10 (too few steps before the minimum for a slope)"
    x, y = np.log10(np.array(lrs)), np.array(smoothed)
    slopes = [(y[i + width] - y[i]) / (x[i + width] - x[i]) for i in starts]
    steepest = starts[int(np.argmin(slopes))]
    return (
        float(10 ** ((x[steepest] + x[steepest + width]) / 2)),
        minimum_tenth,
        "steepest descent of the smoothed loss",
    )


def plot_lr_find(result: LrFindResult, path: str | Path) -> None:
    """The loss (raw, faint; smoothed) against the learning rate (log scale), the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses, color="C0", alpha=0.3, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", label="smoothed loss")
    ax.axvline(result.suggestion, color="C3", linestyle="--", label=f"suggested {result.suggestion:.2e}")
    ax.axvline(
        result.minimum_tenth, color="C2", linestyle=":", label=f"minimum / 10 {result.minimum_tenth:.2e}"
    )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (body; the head x head_lr_multiplier)")
    ax.set_ylabel("training loss")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), DIVERGE * min(finite)) * 1.1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def find_learning_rate(
    argv: list[str],
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    plot: str | None = None,
) -> LrFindResult:
    """The range test for a recipe (``[RECIPE.yaml, --key value ...]``): the run is built as ``train`` builds it,
    in a temporary folder (the recipe's ``output_dir`` is never created or changed); the plot saved to ``plot``
    when given."""
    check_ramp(start_lr, end_lr, num_steps)
    refuse_several_processes("lr-find")  # each rank would ramp a copy of its own (one_process.py)
    model_args, data_args, training_args = parse_train_args(list(argv))
    if plot is not None:
        check_plot_path(plot, training_args.output_dir)
    scratch = tempfile.mkdtemp(prefix="hf-finetune-lr-find-")
    try:
        args = parse_train_args(
            [*argv, "--output_dir", scratch, "--report_to", "none", "--push_to_hub", "false"]
        )
        trainer, _, _ = build_trainer(*args)
        result = lr_find(trainer, start_lr, end_lr, num_steps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if plot is not None:
        plot_lr_find(result, plot)
    return result


def check_plot_path(plot: str | Path, output_dir: str) -> None:
    """The plot goes anywhere but into the recipe's output folder (lr-find leaves it untouched), as a PNG."""
    path, out = Path(plot).resolve(), Path(output_dir).resolve()
    if path == out or out in path.parents:
        raise ConfigError(
            f"--plot: {plot} is inside the recipe's output_dir {output_dir}, which lr-find leaves untouched"
        )
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--plot: {plot} has extension {path.suffix or 'none'!r}; expected .png")
    if path.is_dir() or not path.parent.is_dir():
        raise ConfigError(f"--plot: {plot}: expected a file in an existing folder")
