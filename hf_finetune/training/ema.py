"""``ema_decay``: an exponential moving average of the weights, with timm's ``ModelEmaV3``.

* :class:`EmaCallback` updates it after every optimizer step (``on_step_end``, with the global step, so
  ``ModelEmaV3`` copies the live weights at step 1 and averages from there);
* evaluation uses the EMA weights when ``ema_eval`` (they are copied into the model for the evaluation and the
  live weights copied back after: :meth:`WeightEma.swapped_in`), and the best checkpoint is chosen by them;
* each checkpoint holds the EMA's state in ``ema.safetensors``; ``--resume`` and the best-model restore at the
  end load it (a checkpoint without it restarts the average from the checkpoint's live weights, with a warning):
  the restore is :meth:`EmaCallback.on_train_end`, the resume the Trainer's ``_load_from_checkpoint``
  (:mod:`hf_finetune.training.private_hooks` says why);
* ``ema_save``: the final model is the EMA weights (:meth:`WeightEma.copy_into` before the save).

Parameters and floating-point buffers (BatchNorm running statistics) are averaged; integer buffers are copied.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
from safetensors.torch import load_model, save_model
from timm.utils.model_ema import ModelEmaV3
from torch import nn
from transformers import TrainerCallback
from transformers.modeling_utils import unwrap_model

__all__ = ["WeightEma", "EmaCallback", "EMA_WEIGHTS_NAME"]

EMA_WEIGHTS_NAME = "ema.safetensors"

logger = logging.getLogger(__name__)


class WeightEma:
    """timm's ``ModelEmaV3`` of ``model`` (a copy on the model's device), with the Trainer-side operations."""

    def __init__(self, model: nn.Module, decay: float):

        self.decay = float(decay)
        self.ema = ModelEmaV3(model, decay=self.decay)

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def update(self, model: nn.Module, step: int) -> None:
        self.ema.update(model, step=step)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.ema.module.state_dict()

    def copy_into(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the EMA's (same layout, in place)."""
        with torch.no_grad():
            for live, ema in zip(model.state_dict().values(), self.state_dict().values(), strict=True):
                live.copy_(ema)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module, active: bool = True) -> Iterator[None]:
        """Within the block ``model`` holds the EMA weights (when ``active``); its own come back after."""
        if not active:
            yield
            return
        saved = {name: value.detach().clone() for name, value in model.state_dict().items()}
        self.copy_into(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in model.state_dict().items():
                    value.copy_(saved[name])

    def save(self, folder: str) -> None:

        save_model(self.ema.module, os.path.join(folder, EMA_WEIGHTS_NAME))

    def load_or_reset(self, folder: str, model: nn.Module) -> bool:
        """Load the EMA saved in checkpoint ``folder``; without one, restart it from ``model``'s weights."""
        path = os.path.join(folder, EMA_WEIGHTS_NAME)
        if os.path.isfile(path):
            load_model(self.ema.module, path, device=str(next(self.ema.module.parameters()).device))
            logger.info("ema: loaded the weight average from %s", path)
            return True
        logger.warning(
            "ema: %s has no %s; the weight average restarts from its weights", folder, EMA_WEIGHTS_NAME
        )
        with torch.no_grad():
            for ema, live in zip(self.state_dict().values(), model.state_dict().values(), strict=True):
                ema.copy_(live)
        return False


class EmaCallback(TrainerCallback):
    """Update ``ema`` from the model after every optimizer step; at the end of training, when the Trainer
    restored the best checkpoint's weights (``load_best_model_at_end``), load that checkpoint's EMA too."""

    def __init__(self, ema: WeightEma):
        self.ema = ema
        self.best_checkpoint: str | None = None  # the Trainer's best checkpoint as training left it

    def on_train_begin(self, args, state, control, **kwargs):
        self.best_checkpoint = state.best_model_checkpoint  # a resumed run's, from its trainer_state.json

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.ema.update(getattr(model, "module", model), step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        # Recorded here, not read at on_train_end: a callback before this one may change it there
        # (StartingPointCallback clears it when the starting point is kept).
        self.best_checkpoint = state.best_model_checkpoint

    def on_train_end(self, args, state, control, model=None, **kwargs):
        # The Trainer loaded the best checkpoint's weights just before on_train_end, on the same condition.
        if args.load_best_model_at_end and self.best_checkpoint and model is not None:
            self.ema.load_or_reset(self.best_checkpoint, unwrap_model(model))
