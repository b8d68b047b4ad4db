"""Class balance key: what a run does about classes with very different numbers of training images.

* ``class_balance``: a weighted loss, a balanced sampler, nothing, or auto (chosen from the training counts when
  the data is loaded).

Applied by :mod:`hf_finetune.training.imbalance`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_finetune.config.ranges import require

__all__ = ["BalanceArguments", "CLASS_BALANCE_MODES"]

CLASS_BALANCE_MODES = ("auto", "none", "weighted_loss", "sampler")


@dataclass
class BalanceArguments:
    """Class imbalance: a weighted loss or a balanced sampler."""

    class_balance: str = field(
        default="auto",
        metadata={
            "help": "Class imbalance: weighted_loss (cross-entropy weighted n / (k * count) per class), sampler "
            "(draw training images with probability 1 / count of their class), none, or auto (weighted_loss "
            "when the largest training class has more than 3x the images of the smallest, else none).",
            "choices": list(CLASS_BALANCE_MODES),
        },
    )

    def check_balance(self) -> None:
        require(
            self.class_balance in CLASS_BALANCE_MODES,
            "class_balance",
            self.class_balance,
            f"one of {list(CLASS_BALANCE_MODES)}",
        )
