"""``class_balance``: what to do when the training classes have very different numbers of images.

* ``weighted_loss``: cross-entropy weighted per class by ``n / (k * count_c)`` (n images, k classes with
  images): every class then weighs as much in the loss as if all had ``n / k`` images;
* ``sampler``: a :class:`BalancedSampler` draws training images with replacement, each with probability
  proportional to ``1 / count`` of its class, so batches hold the classes about evenly;
* ``none``; ``auto``: ``weighted_loss`` when the largest class has more than :data:`AUTO_RATIO` (3) times the
  images of the smallest, else ``none``.

Multi-label data counts the images holding each class; its weighted loss is binary cross-entropy's ``pos_weight``
(:func:`positive_weights`), and the sampler is not available (an image has several classes).

``auto`` picks the weighted loss rather than the sampler: every image is still seen exactly once per epoch (the
sampler repeats the few images of a small class many times and leaves some of a large class out in each
epoch), the epoch order and ``--resume`` stay the Trainer's own, and it also works on cached features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hf_finetune.errors import ConfigError

__all__ = [
    "AUTO_RATIO",
    "BALANCE_MODES",
    "ClassBalance",
    "decide_class_balance",
    "class_weights",
    "MAX_POS_WEIGHT",
    "positive_weights",
    "sample_weights",
    "BalancedSampler",
]

AUTO_RATIO = 3.0
MAX_POS_WEIGHT = 100.0
BALANCE_MODES = ("auto", "none", "weighted_loss", "sampler")


@dataclass
class ClassBalance:
    """The choice, and the figures it was made from."""

    mode: str  # none | weighted_loss | sampler
    requested: str
    largest: int
    smallest: int

    @property
    def ratio(self) -> float:
        return self.largest / self.smallest if self.smallest else float("inf")

    def describe(self) -> str:
        why = (
            f"auto: largest/smallest training class {self.largest}/{self.smallest} = {self.ratio:.2f}, "
            f"{'above' if self.ratio > AUTO_RATIO else 'not above'} {AUTO_RATIO:g}"
            if self.requested == "auto"
            else f"largest/smallest training class {self.largest}/{self.smallest} = {self.ratio:.2f}"
        )
        return f"class_balance: {self.mode} ({why})"


def decide_class_balance(requested: str, counts: list[int] | np.ndarray) -> ClassBalance:
    """``requested`` (auto|none|weighted_loss|sampler) made concrete for the per-class image ``counts``;
    classes without training images are left out of the ratio."""
    if requested not in BALANCE_MODES:
        raise ConfigError(f"class_balance: got {requested!r}; expected one of {list(BALANCE_MODES)}")
    present = [int(c) for c in counts if int(c) > 0]
    largest, smallest = (max(present), min(present)) if present else (0, 0)
    mode = requested
    if requested == "auto":
        mode = "weighted_loss" if smallest and largest > AUTO_RATIO * smallest else "none"
    return ClassBalance(mode=mode, requested=requested, largest=largest, smallest=smallest)


def class_weights(counts: list[int] | np.ndarray) -> torch.Tensor:
    """``n / (k * count_c)`` per class (k: classes with images); a class without images gets 0."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    n, k = counts.sum(), int(present.sum())
    weights = np.zeros_like(counts)
    weights[present] = n / (k * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def positive_weights(counts: list[int] | np.ndarray, num_images: int) -> torch.Tensor:
    """Multi-label data: BCE's ``pos_weight`` per class, ``negatives / positives`` (each class's positive images
    weigh as much as its negative ones), at most :data:`MAX_POS_WEIGHT`; a class without positives gets 1."""
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.ones_like(counts)
    present = counts > 0
    weights[present] = np.minimum((num_images - counts[present]) / counts[present], MAX_POS_WEIGHT)
    return torch.tensor(weights, dtype=torch.float32)


def sample_weights(labels: np.ndarray, num_classes: int) -> list[float]:
    """Per-image draw weight ``1 / count`` of its class: each class is drawn equally often."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return (1.0 / counts[labels]).tolist()


class BalancedSampler(torch.utils.data.WeightedRandomSampler):
    """``WeightedRandomSampler`` (with replacement, ``len(weights)`` draws an epoch) whose draws depend only on
    ``seed`` and the epoch: every rank draws the same order (each takes its share), and a resumed run draws the
    epochs it has left as the uninterrupted one would (accelerate calls ``set_epoch``)."""

    def __init__(self, weights: list[float], seed: int = 0):
        super().__init__(weights, num_samples=len(weights), replacement=True)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()
