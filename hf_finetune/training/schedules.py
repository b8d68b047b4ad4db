"""Freezing schedules: probe then fine-tune (``probe_epochs``) and gradual unfreezing (``unfreeze_schedule``).

:class:`FreezeSchedule` is a ``TrainerCallback``; at the start of every epoch it sets ``requires_grad`` from
the epoch number alone (so a resumed run gets the same state), and logs the change when there is one.
Epochs are counted from 1; ``P`` is ``probe_epochs``, the body's blocks are those of
:func:`hf_finetune.models.freezing.body_layout`, ``B`` of them:

* epochs 1..P (LP-FT, Kumar et al. 2022): only the head trains;
* ``unfreeze_schedule: none``: from epoch P+1 the body trains as far as ``freeze_layers`` /
  ``freeze_patterns`` allow;
* ``unfreeze_schedule: gradual`` (ULMFiT): epoch P+k trains the head and the top k blocks, i.e. the body
  trainable as with ``freeze_layers: B - k``: epoch P+1 the last block and what follows it (final norm,
  conv head), each further epoch the next block down, the stem with the first block at epoch P+B.

What ``freeze_layers`` / ``freeze_patterns`` froze is never unfrozen. The optimizer holds every parameter
the schedule will unfreeze from the start (:class:`hf_finetune.training.trainer.FinetuneTrainer`'s
``optimizer_names``): while held frozen they get no gradient, and AdamW leaves a parameter without gradient
untouched (no update, no weight decay, no state). They join the learning-rate schedule where it is when they
unfreeze (with the default cosine decay, below the peak).

BatchNorm: during the probe phase every BatchNorm layer of the body runs on its running statistics (the
head learns on the pretrained features, which stay the same, buffers included); with gradual unfreezing the
BatchNorm layers of the blocks not reached yet do too. Once unfrozen, a layer follows ``batchnorm``.

Multi-process training is refused: DDP fixes the set of parameters it synchronises when it wraps the model.
"""

from __future__ import annotations

import logging
import math
import types

from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerCallback

from hf_finetune.errors import ConfigError
from hf_finetune.models.freezing import body_layout
from hf_finetune.models.heads import head_parameter_names

__all__ = ["FreezeSchedule", "apply_body_warmup", "build_freeze_schedule"]

logger = logging.getLogger(__name__)


def _scheduled_train(self: nn.Module, mode: bool = True) -> nn.Module:
    # A BatchNorm layer the schedule holds frozen: evaluation mode (running statistics) whatever is asked.
    return nn.Module.train(self, mode and not self._hf_schedule_hold)


class FreezeSchedule(TrainerCallback):
    """Which parameters train in which epoch; applied at ``on_epoch_begin``.

    ``trainable``: the parameters the recipe's own freezing leaves trainable (head included); the schedule
    only ever freezes a subset of them. ``head_names``: the head's parameters (always trainable).
    """

    def __init__(
        self,
        model: nn.Module,
        trainable: list[str],
        probe_epochs: int = 0,
        unfreeze: str = "none",
        head_names: list[str] | None = None,
    ):
        self.model = model
        self.trainable = list(trainable)
        self.probe_epochs = int(probe_epochs)
        self.unfreeze = unfreeze
        self.head = set(head_names if head_names is not None else head_parameter_names(model))
        self.units = self._units(model) if unfreeze == "gradual" else []
        layout = body_layout(model)
        self._where = {n: "stem" for n in layout.stem}
        self._where.update({n: "after the last block" for n in layout.rest})
        self._where.update({n: block for block, names in layout.blocks for n in names})
        self.current: frozenset[str] | None = None
        self.history: list[tuple[int, list[str]]] = []  # (epoch from 1, names unfrozen then)
        self._norms = [
            (name, module)
            for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
        ]

    def _units(self, model: nn.Module) -> list[list[str]]:
        """The body's blocks top first; the first holds what follows the last block, the last the stem."""
        layout = body_layout(model)
        body = [n for n, _ in model.named_parameters() if n not in self.head]
        if not layout.blocks:
            logger.warning(
                "unfreeze_schedule gradual: no block structure found in %s; the body unfreezes at once",
                type(model).__name__,
            )
            return [body]
        units = [list(names) for _, names in reversed(layout.blocks)]
        units[0] = list(layout.rest) + units[0]
        placed = {n for unit in units for n in unit}
        units[-1] = units[-1] + [n for n in body if n not in placed]  # the stem (and any stray tensor)
        return units

    @property
    def optimizer_names(self) -> list[str]:
        """Every parameter that trains at some point: in the optimizer from the start."""
        return list(self.trainable)

    def unit_names(self) -> list[str]:
        """Block names of the gradual units, top first (for logs and tests)."""
        return [name for name, _ in reversed(body_layout(self.model).blocks)]

    def trainable_at(self, epoch: int) -> set[str]:
        """Names trainable during ``epoch`` (counted from 1)."""
        allowed = set(self.trainable)
        if epoch <= self.probe_epochs:
            return allowed & self.head
        if self.unfreeze != "gradual":
            return allowed
        k = epoch - self.probe_epochs
        names = set(self.head)
        for unit in self.units[:k]:
            names.update(unit)
        return allowed & names

    def apply(self, epoch: int) -> list[str]:
        """Set ``requires_grad`` and the BatchNorm modes for ``epoch`` (from 1); returns the names that became
        trainable (in model order), logging the change."""
        wanted = self.trainable_at(epoch)
        if self.current == wanted:
            return []
        previous = self.current
        named = dict(self.model.named_parameters())
        for name in self.trainable:
            named[name].requires_grad_(name in wanted)
        self._hold_batchnorm(epoch, wanted)
        self.current = frozenset(wanted)
        unfrozen = [n for n in named if n in wanted and (previous is None or n not in previous)]
        held = [n for n in self.trainable if n not in wanted]
        if previous is not None:
            self.history.append((epoch, unfrozen))
        if epoch <= self.probe_epochs:
            span = "epoch 1" if self.probe_epochs == 1 else f"epochs 1-{self.probe_epochs}"
            what = f"probe phase ({span}): only the head trains ({len(wanted)} tensors)"
        elif not held:
            what = f"the body is unfrozen: {len(wanted)} tensors train"
        else:
            what = f"{len(wanted)} tensors train, {len(held)} wait (gradual unfreezing)"
        body = [n for n in unfrozen if n not in self.head]
        blocks = list(dict.fromkeys(self._where.get(n, "body") for n in body))
        logger.info(
            "freezing schedule, epoch %d: %s%s",
            epoch,
            what,
            f"; unfrozen now: {len(body)} tensors ({', '.join(blocks)})"
            if previous is not None and body
            else "",
        )
        return unfrozen

    def _hold_batchnorm(self, epoch: int, wanted: set[str]) -> None:
        waiting = set(self.trainable) - wanted
        probe = epoch <= self.probe_epochs
        for name, module in self._norms:
            if "train" in module.__dict__ and not hasattr(module, "_hf_schedule_hold"):
                continue  # batchnorm: freeze already keeps it on running statistics
            weight = f"{name}.weight" if name else "weight"
            if weight in self.head:
                continue
            hold = probe or weight in waiting
            if not hasattr(module, "_hf_schedule_hold"):
                module.train = types.MethodType(_scheduled_train, module)
            module._hf_schedule_hold = hold
            module.train(module.training)

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the number of epochs done (fractional when resuming mid-epoch).
        self.apply(int(math.floor((state.epoch or 0.0) + 1e-6)) + 1)


def build_freeze_schedule(model: nn.Module, training_args, trainable: list[str], head_names=None):
    """The schedule the recipe asks for (``probe_epochs``, ``unfreeze_schedule``), applied for epoch 1;
    ``None`` without one."""
    probe = int(getattr(training_args, "probe_epochs", 0) or 0)
    unfreeze = getattr(training_args, "unfreeze_schedule", "none") or "none"
    if probe == 0 and unfreeze == "none":
        return None
    if getattr(training_args, "lora_r", 0) > 0:
        raise ConfigError(
            f"probe_epochs/unfreeze_schedule: got probe_epochs {probe}, unfreeze_schedule {unfreeze!r} with "
            f"lora_r {training_args.lora_r}; expected no freezing schedule with LoRA (the adapter decides what "
            "trains)"
        )
    if training_args.world_size > 1:
        raise ConfigError(
            f"probe_epochs/unfreeze_schedule: got probe_epochs {probe}, unfreeze_schedule {unfreeze!r} with "
            f"{training_args.world_size} processes; expected one process (DDP fixes the parameters it "
            "synchronises when it wraps the model)"
        )
    schedule = FreezeSchedule(model, trainable, probe, unfreeze, head_names)
    if unfreeze == "gradual":
        logger.info(
            "unfreeze_schedule gradual: blocks unfrozen top first, one per epoch from epoch %d: %s (what "
            "freeze_layers/freeze_patterns froze stays frozen)",
            probe + 1,
            ", ".join(schedule.unit_names()) or "the whole body at once",
        )
    schedule.apply(1)
    return schedule


def apply_body_warmup(scheduler, warmup_steps: int) -> list[str]:
    """``body_warmup_epochs``: multiply the learning rate of every body group of ``scheduler``'s optimizer by
    ``min(1, step / warmup_steps)``; the head groups (named ``head*`` by
    :func:`hf_finetune.training.trainer.parameter_groups`) keep their schedule. Returns the names of the groups warmed up.

    ``scheduler`` is the ``LambdaLR`` that ``transformers.get_scheduler`` builds; its lambdas are wrapped, so
    a resumed run (which restores ``last_epoch``) continues on the same curve.
    """

    if not isinstance(scheduler, LambdaLR):
        raise ConfigError(
            f"body_warmup_epochs: the learning-rate scheduler is a {type(scheduler).__name__}; expected the "
            "LambdaLR of a step-wise lr_scheduler_type such as cosine or linear"
        )
    warmup_steps = max(1, int(warmup_steps))
    warmed = []
    for i, group in enumerate(scheduler.optimizer.param_groups):
        name = group.get("name")
        if name is None or name.startswith("head"):
            continue
        inner = scheduler.lr_lambdas[i]
        scheduler.lr_lambdas[i] = lambda step, inner=inner: inner(step) * min(1.0, step / warmup_steps)
        group["lr"] = scheduler.base_lrs[i] * scheduler.lr_lambdas[i](scheduler.last_epoch)
        warmed.append(name)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    return warmed
