"""Head and freezing keys: how fast the new head learns against the pretrained body, and what of the body trains.

* ``head_lr_multiplier``, ``layer_decay``: the learning rate of the head and of each body layer;
* ``freeze_layers``, ``freeze_patterns``: the parts of the body that never train;
* ``batchnorm``: whether BatchNorm running statistics follow the training batches;
* ``probe_epochs``, ``unfreeze_schedule``, ``body_warmup_epochs``: when the body starts to train, and how fast.

Applied by :mod:`hf_finetune.models.freezing`, :mod:`hf_finetune.training.trainer` (parameter groups) and
:mod:`hf_finetune.training.schedules`. How these keys combine with LoRA and the learning-rate schedule is
checked in :mod:`hf_finetune.config.checks`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hf_finetune.config.ranges import require
from hf_finetune.errors import ConfigError

__all__ = ["HeadArguments", "BATCHNORM_MODES", "UNFREEZE_SCHEDULES"]

BATCHNORM_MODES = ("auto", "train", "freeze")
UNFREEZE_SCHEDULES = ("none", "gradual")


@dataclass
class HeadArguments:
    """The head against the body: learning rates, freezing, BatchNorm statistics and when the body trains."""

    head_lr_multiplier: float = field(
        default=10.0,
        metadata={"help": "The re-initialised head learns this many times faster than the pretrained body."},
    )
    freeze_layers: int = field(
        default=0,
        metadata={
            "help": "Freeze the stem and the first N stages/blocks of the body (found from the model's "
            "structure); -1 freezes the whole body (linear probe)."
        },
    )
    freeze_patterns: list[str] = field(
        default_factory=list,
        metadata={"help": "Also freeze parameters whose name matches any of these regular expressions."},
    )
    batchnorm: str = field(
        default="auto",
        metadata={
            "help": "BatchNorm running statistics: auto (freeze, at any batch size; a network trained from scratch "
            "wants train), freeze (keep the pretrained "
            "statistics; affine weights still learn), train (the statistics follow the training batches; momentum "
            "written in TensorFlow's convention, such as transformers' MobileNet 0.997, is converted to "
            "PyTorch's 1-0.997 first).",
            "choices": list(BATCHNORM_MODES),
        },
    )
    probe_epochs: int = field(
        default=0,
        metadata={
            "help": "Probe, then fine-tune (LP-FT): for the first N epochs only the head trains (the body "
            "frozen, its BatchNorm layers on their running statistics), then the body unfreezes to what "
            "freeze_layers/freeze_patterns leave trainable; 0 is off."
        },
    )
    unfreeze_schedule: str = field(
        default="none",
        metadata={
            "help": "none (after probe_epochs the whole trainable body unfreezes at once) or gradual (from the "
            "top: the epoch after the probe, or epoch 1 without one, trains the head and the last block, and "
            "each further epoch unfreezes the next block down, the stem with the first block).",
            "choices": list(UNFREEZE_SCHEDULES),
        },
    )
    body_warmup_epochs: float | None = field(
        default=None,
        metadata={
            "help": "Head first, then the body: the pretrained body's learning rate ramps linearly from 0 over "
            "this many epochs while the head trains at its full rate from the first step (on top of the "
            "learning-rate schedule), so early gradients through a new or still miscalibrated head do not "
            "distort the pretrained features; 0 is off. Unset: 1 when some classifier rows are reused, else 0; "
            "0 with probe_epochs, unfreeze_schedule gradual or LoRA "
            "(they hold the body back already), with lr_scheduler_type reduce_lr_on_plateau and freeze_layers -1. "
            "Used directly, FinetuneTrainer treats unset as 0."
        },
    )
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": "Layer-wise learning-rate decay (BEiT/timm): a body layer i learns at learning_rate x "
            "layer_decay ** (L - i), the stem being layer 0 and the head layer L (at learning_rate x "
            "head_lr_multiplier); e.g. 0.75; unset is off."
        },
    )

    def check_head(self) -> None:
        require(
            self.head_lr_multiplier > 0, "head_lr_multiplier", self.head_lr_multiplier, "a positive number"
        )
        require(
            self.freeze_layers >= -1, "freeze_layers", self.freeze_layers, "-1 (whole body) or a count >= 0"
        )
        require(
            self.batchnorm in BATCHNORM_MODES, "batchnorm", self.batchnorm, f"one of {list(BATCHNORM_MODES)}"
        )
        require(
            isinstance(self.probe_epochs, int) and self.probe_epochs >= 0,
            "probe_epochs",
            self.probe_epochs,
            "a number of epochs >= 0 (0: no probe phase)",
        )
        require(
            self.unfreeze_schedule in UNFREEZE_SCHEDULES,
            "unfreeze_schedule",
            self.unfreeze_schedule,
            f"one of {list(UNFREEZE_SCHEDULES)}",
        )
        require(
            self.layer_decay is None or 0.0 < self.layer_decay <= 1.0,
            "layer_decay",
            self.layer_decay,
            "a factor in (0, 1], e.g. 0.75 (unset: off)",
        )

    def check_freeze_patterns(self) -> None:
        """One pattern given as text is a list of one; each must be a valid regular expression."""
        if isinstance(self.freeze_patterns, str):
            self.freeze_patterns = [self.freeze_patterns]
        for pattern in self.freeze_patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(
                    f"freeze_patterns: {pattern!r} is not a valid regular expression ({err})"
                ) from None
