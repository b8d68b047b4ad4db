"""Regularization keys: what keeps a fine-tuning from overfitting, and when it stops.

* ``mixup_alpha``, ``cutmix_alpha``, ``mixup_prob``, ``mixup_switch_prob``, ``mixup_off_epoch``: batches mixed
  with themselves (timm's Mixup);
* ``drop_path_rate``: stochastic depth;
* ``ema_decay``, ``ema_eval``, ``ema_save``: an exponential moving average of the weights;
* ``early_stopping_patience``, ``early_stopping_threshold``: stop when the validation metric stops improving.

transformers' ``label_smoothing_factor`` works with them. Applied by :mod:`hf_finetune.training.regularization`
and :mod:`hf_finetune.training.ema`; what early stopping needs of the evaluation keys is checked in
:mod:`hf_finetune.config.checks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_finetune.config.ranges import require

__all__ = ["RegularizationArguments"]


@dataclass
class RegularizationArguments:
    """Mixup and CutMix, drop path, a moving average of the weights, and early stopping."""

    mixup_alpha: float = field(
        default=0.0,
        metadata={
            "help": "Mixup: blend each training batch with itself reversed, by a weight drawn from "
            "Beta(alpha, alpha), and train on the blended soft targets (timm's Mixup); 0 is off."
        },
    )
    cutmix_alpha: float = field(
        default=0.0,
        metadata={
            "help": "CutMix: paste a box of the reversed batch into each training image (area from "
            "Beta(alpha, alpha)); targets weighted by area (timm's Mixup); 0 is off."
        },
    )
    mixup_prob: float = field(
        default=1.0,
        metadata={"help": "Probability that a training batch is mixed at all (mixup or cutmix on)."},
    )
    mixup_switch_prob: float = field(
        default=0.5,
        metadata={"help": "With both mixup and cutmix on: probability that a mixed batch uses cutmix."},
    )
    mixup_off_epoch: int = field(
        default=0,
        metadata={
            "help": "From this epoch on (counted from 0, as timm does) batches are no longer mixed; 0 never "
            "switches mixing off."
        },
    )
    drop_path_rate: float | None = field(
        default=None,
        metadata={
            "help": "Stochastic depth: the drop-path rate of the last block (timm models and transformers "
            "models whose config has drop_path_rate: ConvNeXt, Swin, BEiT, ...); unset keeps the checkpoint's; "
            "a rate above 0 for a model without drop path is an error."
        },
    )
    ema_decay: float | None = field(
        default=None,
        metadata={
            "help": "Keep an exponential moving average of the weights (timm's ModelEmaV3), updated after "
            "every optimizer step with this decay (e.g. 0.999); unset is off. Its state is saved in each "
            "checkpoint (ema.safetensors) and restored on resume."
        },
    )
    ema_eval: bool = field(
        default=True,
        metadata={
            "help": "With ema_decay: evaluate (and pick the best checkpoint) with the EMA weights; the live "
            "weights' metrics are logged beside them as eval_live_*."
        },
    )
    ema_save: bool = field(
        default=True,
        metadata={
            "help": "With ema_decay: the saved final model holds the EMA weights (false: the live ones)."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop training after this many evaluations without improvement of metric_for_best_model "
            "(transformers' EarlyStoppingCallback; needs load_best_model_at_end and an eval_strategy); unset "
            "is off."
        },
    )
    early_stopping_threshold: float = field(
        default=0.0,
        metadata={
            "help": "With early_stopping_patience: the least change of the metric that counts as improvement."
        },
    )

    def check_regularization(self) -> None:
        """Mixup/CutMix, drop path and EMA."""
        for key in ("mixup_alpha", "cutmix_alpha"):
            require(getattr(self, key) >= 0, key, getattr(self, key), "a number >= 0 (0 is off)")
        for key in ("mixup_prob", "mixup_switch_prob"):
            require(0.0 <= getattr(self, key) <= 1.0, key, getattr(self, key), "a probability in [0, 1]")
        require(
            isinstance(self.mixup_off_epoch, int) and self.mixup_off_epoch >= 0,
            "mixup_off_epoch",
            self.mixup_off_epoch,
            "an epoch number >= 0 (0: never switch mixing off)",
        )
        require(
            self.drop_path_rate is None or 0.0 <= self.drop_path_rate < 1.0,
            "drop_path_rate",
            self.drop_path_rate,
            "a rate in [0, 1) or unset",
        )
        require(
            self.ema_decay is None or 0.0 < self.ema_decay < 1.0,
            "ema_decay",
            self.ema_decay,
            "a decay in (0, 1) such as 0.999, or unset (no EMA)",
        )

    def check_early_stopping(self) -> None:
        """Early stopping's own keys (what it needs of the evaluation keys: config.checks)."""
        if self.early_stopping_patience is None:
            return
        require(
            isinstance(self.early_stopping_patience, int) and self.early_stopping_patience >= 1,
            "early_stopping_patience",
            self.early_stopping_patience,
            "a count of evaluations >= 1, or unset (off)",
        )
        require(
            self.early_stopping_threshold >= 0,
            "early_stopping_threshold",
            self.early_stopping_threshold,
            "a number >= 0",
        )
