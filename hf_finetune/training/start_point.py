"""The starting point as a candidate for the best model: a fine-tune never ends worse than it started unnoticed.

The evaluation before the first step (``eval_on_start``, epoch 0) scores the pretrained body with its new or
mapped head. When no later evaluation beats it on ``metric_for_best_model`` (ties go to the earlier, as with
``load_best_model_at_end``), :class:`StartingPointCallback` puts that starting state back at the end of
training, so the saved model is the epoch-0 state and the summary says so.

The starting state is a CPU copy of the model's tensors taken when the callback is made (before any step, and
before ``--resume`` loads a checkpoint, so a resumed run keeps the same candidate); its epoch-0 score is read
from the Trainer's log history, which a resumed run restores from its checkpoint.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import TrainerCallback

__all__ = ["StartingPointCallback", "start_evaluation"]

logger = logging.getLogger(__name__)


def start_evaluation(log_history: list[dict[str, Any]], key: str) -> float | None:
    """The value of ``key`` (``eval_accuracy``, say) in the evaluation at step 0, or None when there was none."""
    for entry in log_history:
        if entry.get("step") == 0 and key in entry:
            return float(entry[key])
    return None


class StartingPointCallback(TrainerCallback):
    """Keeps ``model``'s starting tensors and restores them at the end of training when no evaluation during
    training beat the evaluation at step 0. ``restored`` then holds the epoch-0 score."""

    def __init__(self, model: torch.nn.Module):
        self.state_dict = {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}
        self.restored: float | None = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        metric = args.metric_for_best_model
        if not (args.load_best_model_at_end and metric and model is not None):
            return
        key = metric if metric.startswith("eval_") else f"eval_{metric}"
        start = start_evaluation(state.log_history, key)
        later = [float(e[key]) for e in state.log_history if key in e and e.get("step", 0) > 0]
        if start is None or not later:
            return
        greater = args.greater_is_better if args.greater_is_better is not None else not key.endswith("loss")
        best_later = max(later) if greater else min(later)
        if (best_later > start) if greater else (best_later < start):
            return
        model.load_state_dict(self.state_dict)
        state.best_metric = start
        state.best_global_step = 0
        state.best_model_checkpoint = None
        self.restored = start
        logger.info(
            "no epoch beat the starting point (epoch 0, %s %.4f; best later %.4f): the saved model is the "
            "epoch-0 state",
            key.removeprefix("eval_"),
            start,
            best_later,
        )
        self.state_dict = {}
