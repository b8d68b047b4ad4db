"""What training prints: one progress bar, each evaluation as one line, the metrics once.

transformers' ``Trainer`` installs ``ProgressCallback`` (a training bar, plus a second bar for every evaluation
that interleaves with it in a log file, and each log as a dict) or, under ``disable_tqdm``, ``PrinterCallback``
(each log as a dict, including the end-of-training and final-evaluation metrics that the run's summary prints
again). :class:`RunProgress` takes their place through the Trainer's public callback API
(:func:`use_run_progress`):

* one training bar on stderr (none under ``disable_tqdm``), on the main process only;
* each evaluation during training as one line: ``eval epoch 1 (step 5/5): loss 1.095, accuracy 0.5833, ...``;
* the training loss logs (every ``logging_steps``) as transformers writes them (``{'loss': ..., ...}``);
* nothing after training: the final metrics are the run's summary (and ``train_results.json``,
  ``eval_results.json``, ``all_results.json``), printed once.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

__all__ = ["RunProgress", "use_run_progress", "format_evaluation"]

# Speed figures of an evaluation: the line keeps its runtime only
_SPEED_KEYS = ("_samples_per_second", "_steps_per_second", "_model_preparation_time")


def format_evaluation(metrics: dict[str, Any], epoch: float | None, step: int, max_steps: int) -> str:
    """``eval epoch 1 (step 5/5): loss 1.095, accuracy 0.5833, macro_f1 0.5079 [0.07 s]``."""
    where = f"epoch {round(epoch, 2):g} " if epoch is not None else ""
    where += f"(step {step}/{max_steps})" if step else "(before training)"
    values, runtime = [], None
    for key, value in metrics.items():
        name = key.removeprefix("eval_")
        if name == "runtime":
            runtime = value
        elif key != "epoch" and not key.endswith(_SPEED_KEYS):
            values.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
    line = f"eval {where}: {', '.join(values)}"
    return line + (f" [{runtime:.2f} s]" if isinstance(runtime, (int, float)) else "")


def _format_log(logs: dict[str, Any]) -> str:
    """A training log as transformers' ProgressCallback writes it: ``{'loss': '1.097', 'epoch': '0.4'}``."""
    shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items() if k != "total_flos"}
    return str(shown)


class RunProgress(TrainerCallback):
    """One training bar (unless ``show_bar`` is false), evaluations and loss logs as lines, nothing after
    training. Written from the main process only."""

    def __init__(self, show_bar: bool = True):
        self.show_bar = show_bar
        self.bar = None
        self.training = False
        self._step = 0

    def _write(self, text: str) -> None:
        tqdm.write(text)  # above the bar, which is redrawn below it

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.training = True
        self._step = state.global_step
        if self.show_bar:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self._step)
        self._step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (self.training and state.is_world_process_zero and logs):
            return
        if any(k.startswith("eval_") for k in logs) or "train_runtime" in logs:
            return  # an evaluation is written by on_evaluate; the end-of-training metrics by the summary
        self._write(_format_log(logs))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.training and state.is_world_process_zero and metrics:
            self._write(format_evaluation(metrics, state.epoch, state.global_step, state.max_steps))

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def use_run_progress(trainer) -> RunProgress | None:
    """Replace the Trainer's ``ProgressCallback`` or ``PrinterCallback`` with a :class:`RunProgress` that
    honours ``disable_tqdm`` (no bar, the lines still written). In a notebook (``NotebookProgressCallback``,
    a table that updates in place) the Trainer's choice is kept and None is returned."""
    replaced = [trainer.pop_callback(kind) for kind in (ProgressCallback, PrinterCallback)]
    if not any(replaced):
        return None
    progress = RunProgress(show_bar=not trainer.args.disable_tqdm)
    trainer.add_callback(progress)
    return progress
