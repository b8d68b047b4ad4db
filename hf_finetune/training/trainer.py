"""``FinetuneTrainer``: transformers' Trainer with fine-tuning parameter groups.

* the new head learns ``head_lr_multiplier`` times faster than the pretrained body;
* no weight decay on norms, biases and other 1-D tensors (BatchNorm included, unlike Trainer's default);
* frozen parameters are left out of the optimizer (no state, no update, no gradient computed), except those a
  freezing schedule (``probe_epochs``, ``unfreeze_schedule``) unfreezes later: they are in it from the start;
* ``layer_decay``: the body's learning rate decays layer by layer from the head down
  (:mod:`hf_finetune.training.layer_decay`).

* checkpoints are written under a temporary name (``OUTPUT/.partial-checkpoints/checkpoint-N``) and renamed
  to ``OUTPUT/checkpoint-N`` once complete, so a run killed while saving never leaves a folder that looks
  like a checkpoint; a failed write (a full disk) is one :class:`~hf_finetune.errors.CheckpointWriteError`
  and the previous checkpoints stay as they were.
* Mixup/CutMix, class weights, the balanced sampler and EMA: the hooks of
  :class:`~hf_finetune.training.regularization.RegularizationMixin`.

The Trainer is customised through its public extension points (``create_optimizer``, ``create_scheduler``,
``compute_loss``, ``training_step``, ``prediction_step``, ``evaluate``, callbacks); the private methods still
overridden, and why, are listed in :mod:`hf_finetune.training.private_hooks`.

Everything else (devices, mixed precision, DDP/FSDP/DeepSpeed through accelerate, resuming, best-model
selection, checkpoint rotation) is the Trainer's own.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
from collections.abc import Collection
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from hf_finetune.errors import CheckpointWriteError
from hf_finetune.models.heads import head_parameter_names
from hf_finetune.runtime.launch import fsdp_ready
from hf_finetune.runtime.plan import RunPlan
from hf_finetune.runtime.speed_plan import resolve_speed
from hf_finetune.training.checkpoints import (
    later_checkpoints,
    load_renamed_checkpoint,
    write_checkpoint_recipe,
)
from hf_finetune.training.layer_decay import layer_ids
from hf_finetune.training.progress import use_run_progress
from hf_finetune.training.regularization import RegularizationMixin
from hf_finetune.training.schedules import FreezeSchedule, apply_body_warmup
from hf_finetune.training.stream_state import is_rank_stream, stream_train_dataloader

__all__ = ["FinetuneTrainer", "parameter_groups", "PARTIAL_CHECKPOINTS"]

PARTIAL_CHECKPOINTS = ".partial-checkpoints"  # inside the output folder; holds a checkpoint being written

logger = logging.getLogger(__name__)


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.endswith(".bias")


def parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    head_lr_multiplier: float = 10.0,
    head_names: list[str] | None = None,
    layer_decay: float | None = None,
    include: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: body/head x decay/no-decay, trainable parameters only.

    Each group carries a ``name`` (``body``, ``body_no_decay``, ``head``, ``head_no_decay``) and its ``lr``.
    With ``layer_decay`` the body is split by layer (:func:`hf_finetune.training.layer_decay.layer_ids`): groups
    ``layer00``, ``layer00_no_decay``, ... with ``lr = learning_rate * layer_decay ** (num_layers - layer)``.
    ``include``: names of parameters to put in the optimizer even while frozen (a freezing schedule unfreezes
    them later; until then they get no gradient and the optimizer leaves them and their state untouched).
    """
    head = set(head_names if head_names is not None else head_parameter_names(_unwrap(model)))
    include = set(include or ())
    layers = None
    if layer_decay is not None:
        layers = layer_ids(_unwrap(model), sorted(head))
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        bare = name[len("module.") :] if name.startswith("module.") else name
        if not param.requires_grad and bare not in include:
            continue
        part = "head" if bare in head else "body"
        lr = learning_rate * (head_lr_multiplier if part == "head" else 1.0)
        if part == "body" and layers is not None:
            layer = layers.ids[bare]
            part, lr = f"layer{layer:02d}", learning_rate * layer_decay ** (layers.num_layers - layer)
        key = part + ("_no_decay" if _no_decay(bare, param) else "")
        if key not in groups:
            groups[key] = {
                "name": key,
                "params": [],
                "weight_decay": 0.0 if key.endswith("_no_decay") else weight_decay,
                "lr": lr,
            }
        groups[key]["params"].append(param)
    body_parts = sorted({k.removesuffix("_no_decay") for k in groups} - {"head"}, key=lambda p: (len(p), p))
    order = [p + s for p in [*body_parts, "head"] for s in ("", "_no_decay")]
    return [groups[k] for k in order if k in groups]


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _speed_resolved(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The Trainer's positional and keyword arguments with the training arguments' speed ``auto`` values
    chosen (:func:`~hf_finetune.runtime.speed_plan.resolve_speed`): a trainer built by hand from a fresh
    :class:`~hf_finetune.config.arguments.FinetuneTrainingArguments` trains as ``build_trainer``'s does. Arguments
    already resolved (the run pipeline's) pass through unchanged."""
    if "args" in kwargs and kwargs["args"] is not None:
        return args, {**kwargs, "args": resolve_speed(kwargs["args"], RunPlan())}
    if len(args) > 1 and args[1] is not None:
        return (args[0], resolve_speed(args[1], RunPlan()), *args[2:]), kwargs
    return args, kwargs


class FinetuneTrainer(RegularizationMixin, Trainer):
    """A ``transformers.Trainer`` for fine-tuning a pretrained classifier.

    ``args`` is a :class:`~hf_finetune.config.arguments.FinetuneTrainingArguments` (plain ``TrainingArguments`` work
    too: the head multiplier then defaults to 10). ``head_names`` are the parameter names of the new head;
    by default they are found from the model (:func:`hf_finetune.models.heads.head_parameter_names`).
    ``pixel_normalizer`` (a :class:`~hf_finetune.data.transforms.PixelNormalizer`) turns ``uint8`` ``pixel_values``
    into the model's normalised float input on the device, in training and evaluation alike.
    ``optimizer_names``: parameters to put in the optimizer even while frozen, because something unfreezes them
    later; by default those of the :class:`~hf_finetune.training.schedules.FreezeSchedule` among the callbacks
    (:meth:`parameters_unfrozen_later`). ``checkpoint_recipe``: written into each checkpoint
    (:func:`~hf_finetune.training.checkpoints.write_checkpoint_recipe`). ``feature_cache`` /
    ``image_cache``: the caches this trainer's datasets are read from
    (:class:`~hf_finetune.training.feature_cache.FeatureCache`, :class:`~hf_finetune.data.image_cache.ImageCache`),
    kept for the run to remove when it is done.
    """

    def __init__(
        self,
        *args,
        head_names: list[str] | None = None,
        optimizer_names: list[str] | None = None,
        pixel_normalizer=None,
        checkpoint_recipe: dict[str, Any] | None = None,
        feature_cache=None,
        image_cache=None,
        **kwargs,
    ):
        args, kwargs = _speed_resolved(args, kwargs)
        super().__init__(*args, **kwargs)
        if not self.label_names and self.args.label_names is None:
            # a model whose forward takes no labels (two-head distilled DeiT/LeViT): the batches still carry
            # them, and compute_loss scores both heads (training/regularization.py)
            self.label_names = ["labels"]
        use_run_progress(self)  # one training bar, evaluations as lines (training/progress.py)
        # uint8 pixel_values from the loader -> normalised float on the device (normalize_on_device)
        self.pixel_normalizer = pixel_normalizer
        self.head_names = (
            list(head_names) if head_names is not None else head_parameter_names(_unwrap(self.model))
        )
        self.optimizer_names = list(optimizer_names) if optimizer_names is not None else None
        self.checkpoint_recipe = checkpoint_recipe
        self.feature_cache = feature_cache
        self.image_cache = image_cache
        self.last_saved_checkpoint: str | None = None  # the checkpoint-N folder this run wrote last

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        self.is_fsdp_enabled = fsdp_ready(self.accelerator, self.model)  # FSDP on CPUs too, image models

    def get_train_dataloader(self):
        """A rank's own stream is loaded as it is, never split again (training/stream_state.py)."""
        if is_rank_stream(self.train_dataset):
            return stream_train_dataloader(self)
        return super().get_train_dataloader()

    def parameters_unfrozen_later(self) -> list[str] | None:
        """``optimizer_names`` when given, else every parameter the freezing schedules among the callbacks train
        at some point (in the optimizer from the start); None without either."""
        if self.optimizer_names is not None:
            return self.optimizer_names
        schedules = [cb for cb in self.callback_handler.callbacks if isinstance(cb, FreezeSchedule)]
        if not schedules:
            return None
        return list(dict.fromkeys(name for schedule in schedules for name in schedule.optimizer_names))

    # --- batches: uint8 pixels normalised on the device ---------------------------------------------------

    def normalize_pixels(self, inputs):
        """``inputs`` with ``uint8`` ``pixel_values`` moved to the device and normalised there (a new dict);
        unchanged without a ``pixel_normalizer`` or with float pixels. The Trainer's own device and dtype step
        (``_prepare_inputs``) then treats the float tensor as any other."""
        pixels = inputs.get("pixel_values") if self.pixel_normalizer is not None else None
        if pixels is None or pixels.dtype != torch.uint8:
            return inputs
        inputs = dict(inputs)
        inputs["pixel_values"] = self.pixel_normalizer(pixels.to(self.args.device))
        return inputs

    def prepare_batch(self, inputs):
        """A batch from the loader as the model sees it in ``training_step`` and ``prediction_step``: on the
        device, pixels normalised (for measurements outside ``train()``, as bench/ does)."""
        return self._prepare_inputs(self.normalize_pixels(inputs))

    def training_step(self, model, inputs, num_items_in_batch=None):
        return super().training_step(model, self.normalize_pixels(inputs), num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        return super().prediction_step(
            model, self.normalize_pixels(inputs), prediction_loss_only, ignore_keys
        )

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            multiplier = float(getattr(self.args, "head_lr_multiplier", 10.0))
            layer_decay = getattr(self.args, "layer_decay", None)
            groups = parameter_groups(
                opt_model,
                self.args.learning_rate,
                self.args.weight_decay,
                multiplier,
                self.head_names,
                layer_decay=layer_decay,
                include=self.parameters_unfrozen_later(),
            )
            if layer_decay is not None:
                layers = layer_ids(_unwrap(opt_model), self.head_names)
                logger.info(
                    "layer_decay %g: %d body layers (from %s), lr = learning_rate x %g ** (%d - layer); "
                    "the head is layer %d\n%s",
                    layer_decay,
                    layers.num_layers,
                    layers.source,
                    layer_decay,
                    layers.num_layers,
                    layers.num_layers,
                    "\n".join(layers.describe()),
                )
            if not groups:
                raise ValueError("no trainable parameters: everything is frozen")
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k not in ("params", "model")}
            for group in groups:
                logger.info(
                    "optimizer group %-16s %4d tensors, lr %.2e, weight decay %g",
                    group["name"],
                    len(group["params"]),
                    group["lr"],
                    group["weight_decay"],
                )
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        self._update_steps_per_epoch = values[1]  # for body_warmup_epochs
        return values

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        created = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        epochs = float(getattr(self.args, "body_warmup_epochs", 0) or 0)
        if created and epochs > 0:
            per_epoch = getattr(self, "_update_steps_per_epoch", None) or math.ceil(
                num_training_steps / max(self.args.num_train_epochs, 1)
            )
            steps = max(1, round(epochs * per_epoch))
            warmed = apply_body_warmup(scheduler, steps)
            if warmed:
                logger.info(
                    "body_warmup_epochs %g: the body's learning rate ramps from 0 over %d steps (groups: %s); "
                    "the head trains at its full rate from the first step",
                    epochs,
                    steps,
                    ", ".join(warmed),
                )
        return scheduler

    # --- checkpoints: written under a temporary name, then renamed -------------------------------------------

    def _get_output_dir(self, trial) -> str:
        staging = getattr(self, "_checkpoint_staging", None)
        return staging if staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = self._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staging_root = os.path.join(run_dir, PARTIAL_CHECKPOINTS)
        staging, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        if self.args.should_save and os.path.exists(staging):
            shutil.rmtree(staging)  # left by a run killed while saving
        self._checkpoint_staging = staging_root
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save and os.path.isdir(staging):
                self.save_checkpoint_extras(staging)  # the EMA's state (RegularizationMixin)
        except Exception as err:
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)  # give the space back; earlier ones untouched
                with contextlib.suppress(OSError):
                    os.rmdir(staging_root)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointWriteError(
                f"{final}: the checkpoint could not be written ({type(err).__name__}: {first}); the earlier "
                "checkpoints are intact; free disk space and resume with --resume"
            ) from None
        finally:
            self._checkpoint_staging = None
        self.accelerator.wait_for_everyone()  # sharded (FSDP) checkpoints: every rank has written its part
        if not self.args.should_save:
            return
        if self.state.best_model_checkpoint == staging:  # this checkpoint is the best one so far
            self.state.best_model_checkpoint = final
            self.state.save_to_json(os.path.join(staging, "trainer_state.json"))
        if self.checkpoint_recipe is not None:  # compared with the run that resumes it (output_dir.py)
            write_checkpoint_recipe(staging, self.checkpoint_recipe)
        if os.path.exists(final):  # the same step saved again (end of an epoch after a stop at that step)
            shutil.rmtree(final)
        os.replace(staging, final)
        self.last_saved_checkpoint = final
        if not os.listdir(staging_root):
            os.rmdir(staging_root)
        self._rotate(run_dir, final)

    def _load_best_model(self) -> None:
        # private: the best checkpoint's weights, renamed tensors included (training/checkpoints.py)
        best = self.state.best_model_checkpoint
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or not load_renamed_checkpoint(self.model, best):
            super()._load_best_model()

    def _rotate(self, run_dir: str, newest: str | None = None) -> None:
        """Delete checkpoints beyond ``save_total_limit`` (never the best one), as the Trainer would have; never
        when ``run_dir`` holds checkpoints of later steps than ``newest`` (not this run's: rotation would delete
        the checkpoint just written)."""

        later = later_checkpoints(run_dir, newest) if newest is not None else []
        if later and self.args.save_total_limit:
            logger.warning(
                "checkpoint rotation skipped: %s in %s hold later steps than %s, which this run just wrote",
                ", ".join(later),
                run_dir,
                os.path.basename(newest),
            )
            return
        try:
            from transformers.trainer_utils import rotate_checkpoints
        except ImportError:  # transformers 4.x: a Trainer method
            self._rotate_checkpoints(use_mtime=False, output_dir=run_dir)
            return
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=False,
        )
