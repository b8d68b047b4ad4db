"""Regularisation on the Trainer path: Mixup/CutMix with soft targets, label smoothing, drop path, early stopping.

* **Mixup / CutMix** (``mixup_alpha``, ``cutmix_alpha``, ``mixup_prob``, ``mixup_switch_prob``,
  ``mixup_off_epoch``): timm's :class:`timm.data.Mixup` mixes the *training* batch on the device, inside
  :meth:`RegularizationMixin.compute_loss`; the evaluation batches (and the collator) are untouched. The
  targets become soft, so the loss is computed here (:func:`soft_target_cross_entropy`), the model being
  called without ``labels``. ``label_smoothing_factor`` is then folded into Mixup's ``label_smoothing``.
* **Label smoothing** alone is transformers' own: with ``label_smoothing_factor`` the Trainer takes the labels
  out and applies its ``LabelSmoother`` to the logits (the same target as ``(1 - e) * one_hot + e / K``).
* **Class weights** (:mod:`hf_finetune.training.imbalance`) use the same soft-target loss, weighted per class.
* **Multi-label** (multi-hot float ``labels``, :mod:`hf_finetune.data.multi_label`): the loss is binary
  cross-entropy; Mixup/CutMix mix the multi-hot rows with the images' weights (:class:`MultiHotMixup`), label
  smoothing moves each target to ``(1 - e) y + e / 2``, and class balance is BCE's ``pos_weight``
  (:func:`multi_label_loss`).
* **Two-head distilled models** (DeiT's and LeViT's ``...WithTeacher`` classes, which compute no loss): both
  heads are trained on the labels and the loss is the mean of their two losses, as DeiT fine-tuning without
  a teacher does (:func:`head_logits`); the prediction stays the model's ``logits``, the mean of the heads.
* **Drop path** (``drop_path_rate``) is set when the model loads: :mod:`hf_finetune.models.drop_path`.
* **Early stopping**: transformers' ``EarlyStoppingCallback`` (:func:`early_stopping_callback`).

:class:`RegularizationMixin` carries the Trainer hooks (loss, sampler, EMA evaluation, the EMA's part of a
checkpoint and of a resume); the :class:`~hf_finetune.training.trainer.FinetuneTrainer` inherits it. Every hook
does exactly what ``Trainer`` does when its feature is off.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from transformers import EarlyStoppingCallback
from transformers.modeling_utils import unwrap_model

from hf_finetune.data.multi_label import is_multi_label, positive_counts
from hf_finetune.data.splits import label_column
from hf_finetune.errors import ConfigError
from hf_finetune.training.checkpoints import load_renamed_checkpoint
from hf_finetune.training.ema import EmaCallback, WeightEma
from hf_finetune.training.imbalance import (
    MAX_POS_WEIGHT,
    BalancedSampler,
    class_weights,
    decide_class_balance,
    positive_weights,
    sample_weights,
)

__all__ = [
    "RegularizationMixin",
    "build_mixup",
    "mix_batch",
    "mixing_on",
    "soft_target_cross_entropy",
    "MultiHotMixup",
    "multi_label_loss",
    "head_logits",
    "computes_own_loss",
    "smoothed_targets",
    "early_stopping_callback",
    "feature_cache_wanted",
    "configure_regularization",
]

logger = logging.getLogger(__name__)


# --- Mixup / CutMix ---------------------------------------------------------------------------------------


class MultiHotMixup(Mixup):
    """timm's ``Mixup`` for multi-hot targets: the images are mixed as timm mixes them (``mode="batch"``), and
    the targets with the same weight: ``lam * y + (1 - lam) * y.flip(0)``, smoothed to ``(1 - e) y + e / 2``."""

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = self._mix_batch(x)  # timm's own batch mixing, in place; lam corrected for the CutMix box
        target = target.float()
        mixed = lam * target + (1.0 - lam) * target.flip(0)
        return x, mixed * (1.0 - self.label_smoothing) + self.label_smoothing / 2


def build_mixup(args: Any, num_classes: int, multi_label: bool = False):
    """timm's ``Mixup`` for the recipe's keys (:class:`MultiHotMixup` for ``multi_label``), or None when
    ``mixup_alpha`` and ``cutmix_alpha`` are both 0."""
    mixup_alpha = float(getattr(args, "mixup_alpha", 0.0) or 0.0)
    cutmix_alpha = float(getattr(args, "cutmix_alpha", 0.0) or 0.0)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None

    return (MultiHotMixup if multi_label else Mixup)(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=float(getattr(args, "mixup_prob", 1.0)),
        switch_prob=float(getattr(args, "mixup_switch_prob", 0.5)),
        mode="batch",
        label_smoothing=float(getattr(args, "label_smoothing_factor", 0.0) or 0.0),
        num_classes=num_classes,
    )


def mixing_on(off_epoch: int, epoch: float | None) -> bool:
    """Whether batches are mixed in the epoch ``epoch`` (the Trainer's fractional ``state.epoch``, 0-based),
    timm-style: from epoch ``off_epoch`` on they are not; 0 never switches off."""
    if not off_epoch:
        return True
    return math.floor((epoch or 0.0) + 1e-9) < off_epoch


def smoothed_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with label smoothing: ``1 - s + s / K`` on the label, ``s / K`` elsewhere."""

    return mixup_target(labels, num_classes, lam=1.0, smoothing=smoothing)


def mix_batch(mixup, pixel_values: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a training batch in place with timm's ``Mixup``; returns ``(pixel_values, soft targets)``.

    timm mixes an even number of images (each with its mirror in the reversed batch): with an odd batch (the
    last one of an epoch) the first ``n - 1`` are mixed and the last image keeps its (smoothed) one-hot target.
    """
    n = int(pixel_values.shape[0])
    even = n - n % 2
    if even == n:
        return mixup(pixel_values, labels)
    if labels.is_floating_point():  # multi-hot rows: the odd one out keeps its own (smoothed) targets
        rest = labels[even:].float() * (1.0 - mixup.label_smoothing) + mixup.label_smoothing / 2
    else:
        rest = smoothed_targets(labels[even:], mixup.num_classes, mixup.label_smoothing)
    parts = [rest]
    if even:
        _, mixed = mixup(pixel_values[:even], labels[:even])  # a view: mixed in place
        parts.insert(0, mixed)
    return pixel_values, torch.cat(parts)


def soft_target_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy against soft targets, optionally weighted per class.

    ``sum_i sum_c w_c t_ic (-log p_ic) / sum_i sum_c w_c t_ic``: without weights the mean soft-target
    cross-entropy (timm's ``SoftTargetCrossEntropy``), and with one-hot targets exactly
    ``torch.nn.functional.cross_entropy(logits, labels, weight=w)``."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    targets = targets.to(log_probs.dtype)
    if class_weights is None:
        return -(targets * log_probs).sum(dim=-1).mean()
    weighted = targets * class_weights.to(device=log_probs.device, dtype=log_probs.dtype)
    return -(weighted * log_probs).sum() / weighted.sum()


def multi_label_loss(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy of every (image, class) pair against soft multi-hot ``targets``, averaged over both
    (transformers' ``BCEWithLogitsLoss`` for ``multi_label_classification``); ``pos_weight`` weighs each class's
    positive term (:func:`hf_finetune.training.imbalance.positive_weights`)."""
    if pos_weight is not None:
        pos_weight = pos_weight.to(device=logits.device, dtype=torch.float32)
    return torch.nn.functional.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), pos_weight=pos_weight
    )


def computes_own_loss(model) -> bool:
    """Whether ``model`` (unwrapped from DDP/FSDP and peft) computes a loss from ``labels`` itself: the
    two-head distilled classes (``DeiTForImageClassificationWithTeacher``) take no ``labels``."""
    base = unwrap_model(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return "labels" in inspect.signature(base.forward).parameters


def head_logits(outputs) -> list[torch.Tensor]:
    """The logits each head scores the labels with: ``cls_logits`` and ``distillation_logits`` of a two-head
    distilled model, otherwise ``logits`` alone."""
    if isinstance(outputs, dict):
        heads = [outputs.get(k) for k in ("cls_logits", "distillation_logits")]
        if all(h is not None for h in heads):
            return heads
        return [outputs["logits"]]
    return [outputs[0]]


# --- early stopping ---------------------------------------------------------------------------------------


def early_stopping_callback(args: Any):
    """transformers' ``EarlyStoppingCallback`` for ``early_stopping_patience`` (None when it is unset)."""
    patience = getattr(args, "early_stopping_patience", None)
    if patience is None:
        return None

    return EarlyStoppingCallback(
        early_stopping_patience=int(patience),
        early_stopping_threshold=float(getattr(args, "early_stopping_threshold", 0.0)),
    )


# --- the Trainer hooks ------------------------------------------------------------------------------------


class RegularizationMixin:
    """Trainer hooks for mixing, class weights, the balanced sampler and EMA. Set after construction:

    * ``mixup``: timm ``Mixup`` (None: off); mixing stops from epoch ``args.mixup_off_epoch`` on;
    * ``class_weights``: a tensor of per-class loss weights (None: off); for multi-label data BCE's
      ``pos_weight``;
    * ``sampler_weights``: per-training-image draw weights for the balanced sampler (None: Trainer's sampler);
    * ``ema``: a :class:`hf_finetune.training.ema.WeightEma` (None: off).
    """

    mixup = None
    class_weights: torch.Tensor | None = None
    sampler_weights: list[float] | None = None
    ema = None
    class_balance = None

    # --- loss ---
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mixing = (
            self.mixup is not None
            and model.training
            and mixing_on(getattr(self.args, "mixup_off_epoch", 0), self.state.epoch)
        )
        smoothing = float(getattr(self.args, "label_smoothing_factor", 0.0) or 0.0)
        multi_label = "labels" in inputs and inputs["labels"].is_floating_point()
        two_heads = "labels" in inputs and not computes_own_loss(model)
        own_loss = mixing or self.class_weights is not None or (multi_label and smoothing > 0) or two_heads
        if not own_loss or "labels" not in inputs:
            self.loss_is_scaled_for_ga = None  # the Trainer's own rule
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        num_classes = int(unwrap_model(model).config.num_labels)
        if mixing:
            key = "pixel_values" if "pixel_values" in inputs else unwrap_model(model).main_input_name
            inputs[key], targets = mix_batch(self.mixup, inputs[key], labels)
        elif multi_label:
            targets = labels * (1.0 - smoothing) + smoothing / 2
        else:
            targets = smoothed_targets(labels, num_classes, smoothing)
        outputs = model(**inputs)
        loss_of = multi_label_loss if multi_label else soft_target_cross_entropy
        heads = head_logits(outputs)
        loss = sum(loss_of(logits, targets, self.class_weights) for logits in heads) / len(heads)
        if two_heads and isinstance(outputs, dict):  # evaluation reads the model's prediction only
            outputs = {"logits": outputs["logits"]}
        self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by accumulation steps
        return (loss, outputs) if return_outputs else loss

    # --- sampler ---
    def _get_train_sampler(self, train_dataset=None):
        # private: the sampler has no public hook short of rebuilding the whole loader (private_hooks.py)
        if self.sampler_weights is None:
            return super()._get_train_sampler(train_dataset)

        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return BalancedSampler(self.sampler_weights, seed=seed)

    # --- EMA: evaluation, checkpoints, resume, best model ---
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        if self.ema is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        use_ema = bool(getattr(self.args, "ema_eval", True))
        other = None
        if self.state.global_step > 0:  # before the first step the EMA equals the live weights
            with self.ema.swapped_in(unwrap_model(self.model), not use_ema):
                other = self.evaluation_loop(
                    self.get_eval_dataloader(eval_dataset),
                    description="Evaluation (live weights)" if use_ema else "Evaluation (EMA weights)",
                    ignore_keys=ignore_keys,
                    metric_key_prefix=f"{metric_key_prefix}_{'live' if use_ema else 'ema'}",
                ).metrics
        with self.ema.swapped_in(unwrap_model(self.model), use_ema):
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if other:
            self.log(other)
            metrics.update(other)
        return metrics

    def save_checkpoint_extras(self, folder: str) -> None:
        """Add to the checkpoint being written in ``folder`` what these hooks keep: the EMA's state. Called by
        :class:`~hf_finetune.training.trainer.FinetuneTrainer` on the process that saves, before the checkpoint
        is renamed into place. (The best-model restore at the end loads it back: :class:`EmaCallback`.)"""
        if self.ema is not None:
            self.ema.save(folder)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # private: the only hook given the path of the checkpoint being resumed (private_hooks.py)
        if not load_renamed_checkpoint(model if model is not None else self.model, resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.ema is not None:
            self.ema.load_or_reset(resume_from_checkpoint, unwrap_model(self.model))


def feature_cache_wanted(args: Any) -> bool | None:
    """``feature_cache`` as :func:`hf_finetune.training.feature_cache.decide_feature_cache` should see it: mixing needs the
    images, so with mixup/cutmix on the cache is off (``feature_cache: true`` is then a ConfigError)."""
    wanted = getattr(args, "feature_cache", None)
    if build_mixup(args, 2) is None:
        return wanted
    if wanted:
        raise ConfigError(
            "feature_cache: true cannot be used with mixup_alpha/cutmix_alpha: mixing needs the images; "
            "set feature_cache: false or the alphas to 0"
        )
    return False


def _multi_label_balance(trainer, args: Any, dataset) -> Any:
    """``class_balance`` on multi-label data: the same ``auto`` rule on the positives per class; the weighted
    loss is BCE's ``pos_weight``; the sampler (one class per image) is a ConfigError."""
    requested = getattr(args, "class_balance", "auto")
    if requested == "sampler":
        raise ConfigError(
            "class_balance: sampler draws each image by its one class; multi-label data has several per image: "
            "use weighted_loss (BCE pos_weight), auto or none"
        )
    counts = positive_counts(dataset)
    balance = decide_class_balance(requested, counts)
    logger.info("%s (positives per class)", balance.describe())
    if balance.mode == "weighted_loss":
        trainer.class_weights = positive_weights(counts, len(dataset))
        logger.info(
            "pos_weight negatives / positives per class (at most %g): %s",
            MAX_POS_WEIGHT,
            ", ".join(f"{w:.3f}" for w in trainer.class_weights.tolist()),
        )
    return balance


def configure_regularization(trainer, args: Any, num_classes: int) -> None:
    """Switch on what the recipe asks for on a built trainer: Mixup/CutMix, class balance, EMA, early stopping.

    Each choice is logged; the class-balance choice is also ``trainer.class_balance``."""

    dataset = trainer.train_dataset
    multi_label = is_multi_label(dataset)
    trainer.mixup = build_mixup(args, num_classes, multi_label)
    if trainer.mixup is not None:
        logger.info(
            "mixing: mixup_alpha %g, cutmix_alpha %g, prob %g, switch_prob %g, label smoothing %g, %s",
            args.mixup_alpha,
            args.cutmix_alpha,
            args.mixup_prob,
            args.mixup_switch_prob,
            trainer.mixup.label_smoothing,
            f"off from epoch {args.mixup_off_epoch}" if args.mixup_off_epoch else "every epoch",
        )
    balance = None
    if multi_label:
        balance = _multi_label_balance(trainer, args, dataset)
    elif hasattr(dataset, "select_columns") and "label" in (getattr(dataset, "column_names", None) or []):
        labels = label_column(dataset)  # image folder, image cache or feature cache: one Arrow read
        counts = np.bincount(labels, minlength=num_classes)
        balance = decide_class_balance(getattr(args, "class_balance", "auto"), counts)
        logger.info("%s", balance.describe())
        if balance.mode == "weighted_loss":
            trainer.class_weights = class_weights(counts)
            logger.info(
                "class weights n / (k * count): %s",
                ", ".join(f"{w:.3f}" for w in trainer.class_weights.tolist()),
            )
        elif balance.mode == "sampler":
            trainer.sampler_weights = sample_weights(labels, num_classes)
    elif getattr(args, "class_balance", "auto") not in ("auto", "none"):
        raise ConfigError(
            f"class_balance: got {args.class_balance!r}; the training dataset has no label column to count"
        )
    trainer.class_balance = balance
    decay = getattr(args, "ema_decay", None)
    if decay is not None:
        trainer.ema = WeightEma(unwrap_model(trainer.model), decay)
        trainer.add_callback(EmaCallback(trainer.ema))
        logger.info(
            "ema: decay %g; evaluation with the %s weights; final model: the %s weights",
            decay,
            "EMA" if args.ema_eval else "live",
            "EMA" if args.ema_save else "live",
        )
    stopper = early_stopping_callback(args)
    if stopper is not None:
        trainer.add_callback(stopper)
        logger.info(
            "early stopping: after %d evaluations without an improvement of %s by more than %g",
            stopper.early_stopping_patience,
            args.metric_for_best_model,
            stopper.early_stopping_threshold,
        )
