"""What a run returns: :class:`TrainResult`, the metrics before and after, the best epoch and the files saved."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_finetune.hub.model_card import CARD_NAME, PER_CLASS_NAME
from hf_finetune.inference.reports import TRAINING_FIGURES, best_epoch
from hf_finetune.run.test_split import TEST_RESULTS
from hf_finetune.training.checkpoints import FINAL_WEIGHTS
from hf_finetune.training.start_point import StartingPointCallback

__all__ = ["TrainResult", "new_result", "summarize_run"]

#: The figures of the summary lines, in order, when the evaluation has them (single-label, then multi-label).
SUMMARY_METRICS = ("accuracy", "top5_accuracy", "macro_f1", "map", "f1_micro", "f1_macro", "exact_match")


@dataclass
class TrainResult:
    """What a run produced: metrics before and after, where it was saved."""

    output_dir: str
    labels: list[str]
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    train_metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: str | None = None
    reinitialized: list[str] = field(default_factory=list)
    seconds: float = 0.0
    hub_commit_url: str | None = None  # set when push_to_hub pushed the model
    feature_cache_seconds: float | None = None  # time spent computing cached features (linear probe)
    class_balance: str | None = None  # the class_balance choice and the class-size ratio it was made from
    best_epoch: float | None = None  # the epoch whose evaluation scored best on metric_for_best_model
    best_metric: dict[str, float] = field(default_factory=dict)  # {metric name: its value at best_epoch}
    kept_start: bool = False  # no epoch beat the evaluation before training: the saved model is that state
    files: list[str] = field(default_factory=list)  # the main files written into output_dir
    test_metrics: dict[str, float] = field(default_factory=dict)  # the test split, scored once at the end

    def summary(self) -> str:
        def fmt(metrics: dict[str, float]) -> str:
            keys = [k for k in SUMMARY_METRICS if f"eval_{k}" in metrics]
            return ", ".join(f"{k} {metrics[f'eval_{k}']:.4f}" for k in keys) or "n/a"

        lines = [
            f"before fine-tuning (epoch 0): {fmt(self.metrics_before)}",
            f"after fine-tuning:            {fmt(self.metrics_after)}",
        ]
        if self.test_metrics:
            keys = [k for k in SUMMARY_METRICS if f"test_{k}" in self.test_metrics]
            scores = ", ".join(f"{k} {self.test_metrics[f'test_{k}']:.4f}" for k in keys) or "n/a"
            count = int(self.test_metrics.get("test_samples", 0))
            lines.append(f"test split ({count} images, scored once, chose nothing): {scores}")
        if self.best_epoch is not None:
            best = ", ".join(f"validation {k} {v:.4f}" for k, v in self.best_metric.items())
            lines.append(f"best epoch: {self.best_epoch:g}" + (f" ({best})" if best else ""))
        if self.kept_start:
            lines.append(
                "no epoch beat the starting point: the saved model is the epoch-0 state (before any step)"
            )
        time_text = f"time: {self.seconds:.1f} s"
        runtime, speed = (self.train_metrics.get(k) for k in ("train_runtime", "train_samples_per_second"))
        if runtime is not None and speed is not None:
            time_text += f" (training {float(runtime):.1f} s, {float(speed):.1f} images/s)"
        lines.append(time_text)
        if self.train_metrics.get("train_loss") is not None:
            lines.append(f"training loss (mean over the run): {float(self.train_metrics['train_loss']):.4f}")
        saved = f": {', '.join(self.files)}" if self.files else ""
        lines.append(f"model saved to {self.output_dir}{saved}")
        return "\n".join(lines)


def new_result(trainer, loaded, data, out: Path, train_metrics, eval_metrics) -> TrainResult:
    """The result of a trained and evaluated run, before its final save."""

    result = TrainResult(
        output_dir=str(out),
        labels=list(data.labels),
        metrics_before=_first_eval(trainer.state.log_history),
        metrics_after={k: v for k, v in eval_metrics.items()},
        train_metrics=train_metrics,
        best_checkpoint=trainer.state.best_model_checkpoint,
        reinitialized=list(loaded.reinitialized),
    )
    if trainer.class_balance is not None:
        result.class_balance = trainer.class_balance.describe()
    result.kept_start = _starting_point_kept(trainer)
    return result


def _starting_point_kept(trainer) -> bool:

    kept = [c for c in trainer.callback_handler.callbacks if isinstance(c, StartingPointCallback)]
    return bool(kept) and kept[0].restored is not None


def _first_eval(log_history: list[dict[str, Any]]) -> dict[str, float]:
    for entry in log_history:
        if "eval_accuracy" in entry or "eval_map" in entry:
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return {}


def summarize_run(result: TrainResult, trainer, training_args, out: Path) -> None:
    """Fill in the best epoch and the main files written, for :meth:`TrainResult.summary`."""

    metric = trainer.args.metric_for_best_model  # the run's: "map" for multi-label data (run/build.py)
    best = best_epoch(trainer.state.log_history, metric, trainer.args.greater_is_better)
    if best is not None:
        result.best_epoch = best[0]
        result.best_metric = {(metric or "loss").removeprefix("eval_"): best[1]}
    names = (*FINAL_WEIGHTS, "config.json", CARD_NAME, *TRAINING_FIGURES, PER_CLASS_NAME, TEST_RESULTS)
    result.files = [name for name in names if (out / name).is_file()]
    if "tensorboard" in (training_args.report_to or []):  # transformers 5 logs to OUT/runs unless told
        logs = os.environ.get("TENSORBOARD_LOGGING_DIR") or getattr(training_args, "logging_dir", None)
        result.files.append(f"TensorBoard logs in {logs or out / 'runs'}")
