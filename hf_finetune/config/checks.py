"""The checks across feature groups, in one place.

Each feature group checks its own keys (``HeadArguments.check_head``, ``LoraArguments.check_lora``, ...); a rule
that ties keys of two groups, or a group's key to one of transformers', is here:

* :func:`check_schedules`: when the body trains (``probe_epochs``, ``unfreeze_schedule``,
  ``body_warmup_epochs``) against LoRA, ``freeze_layers: -1``, the learning-rate schedule and the epochs;
* :func:`check_precision`: ``bf16`` with ``fp16``;
* :func:`check_evaluation_keys`: ``label_smoothing_factor``, and what early stopping needs of the evaluation
  keys;
* :func:`check_lora_keys`: the LoRA keys, and LoRA with freezing, BatchNorm and the feature cache.

Each takes the whole config (:class:`~hf_finetune.config.arguments.FinetuneTrainingArguments`, or any object
with its keys) and raises a :class:`~hf_finetune.errors.ConfigError` naming the key, the value and the fix.
"""

from __future__ import annotations

from typing import Any

from hf_finetune.config.lora import LoraArguments
from hf_finetune.config.ranges import require
from hf_finetune.errors import ConfigError

__all__ = ["check_schedules", "check_precision", "check_evaluation_keys", "check_lora_keys"]


def _value(setting: Any) -> str:
    return str(getattr(setting, "value", setting))


def check_schedules(args: Any) -> None:
    """``body_warmup_epochs`` with what already holds the body back (a probe phase, a gradual unfreezing, LoRA),
    with ``reduce_lr_on_plateau`` and with a frozen body; a schedule needs a body that unfreezes, within the
    epochs. An unset ``body_warmup_epochs`` where a warm-up cannot apply is 0; otherwise it stays unset until
    the model is loaded (the rows reused decide it)."""
    scheduled = args.probe_epochs > 0 or args.unfreeze_schedule != "none"
    plateau = _value(args.lr_scheduler_type) == "reduce_lr_on_plateau"
    held = scheduled or args.lora_r > 0  # the body is held back already
    if args.body_warmup_epochs is None and (held or plateau or args.freeze_layers == -1):
        args.body_warmup_epochs = 0.0
    require(
        args.body_warmup_epochs is None
        or (isinstance(args.body_warmup_epochs, (int, float)) and args.body_warmup_epochs >= 0),
        "body_warmup_epochs",
        args.body_warmup_epochs,
        "a number of epochs >= 0 (0: off)",
    )
    warmup = args.body_warmup_epochs or 0
    require(
        not (held and warmup > 0),
        "body_warmup_epochs",
        args.body_warmup_epochs,
        "0 together with probe_epochs, unfreeze_schedule gradual or LoRA (they hold the body back already)",
    )
    require(
        not (warmup > 0 and plateau),
        "body_warmup_epochs",
        args.body_warmup_epochs,
        "0 with lr_scheduler_type reduce_lr_on_plateau (the warm-up multiplies a step-wise schedule)",
    )
    require(
        not (scheduled and args.freeze_layers == -1),
        "probe_epochs/unfreeze_schedule",
        {"probe_epochs": args.probe_epochs, "unfreeze_schedule": args.unfreeze_schedule},
        "no schedule with freeze_layers: -1 (the body never unfreezes)",
    )
    require(
        args.max_steps > 0 or args.probe_epochs < args.num_train_epochs,
        "probe_epochs",
        args.probe_epochs,
        f"fewer than num_train_epochs ({args.num_train_epochs:g}), so that the body unfreezes",
    )


def check_precision(args: Any) -> None:
    """At most one mixed-precision mode (an unset ``bf16`` is chosen later, never together with ``fp16``)."""
    require(not (args.bf16 and args.fp16), "bf16/fp16", "both true", "at most one mixed-precision mode")


def check_evaluation_keys(args: Any) -> None:
    """transformers' ``label_smoothing_factor`` (it works with mixup's targets), and early stopping: it watches
    the evaluations and restores the best checkpoint after the stop."""
    require(
        0.0 <= args.label_smoothing_factor < 1.0,
        "label_smoothing_factor",
        args.label_smoothing_factor,
        "a number in [0, 1)",
    )
    if args.early_stopping_patience is None:
        return
    require(
        _value(args.eval_strategy) != "no",
        "eval_strategy",
        "no",
        "epoch or steps when early_stopping_patience is set (it watches the evaluations)",
    )
    require(
        bool(args.load_best_model_at_end) and bool(args.metric_for_best_model),
        "load_best_model_at_end",
        args.load_best_model_at_end,
        "true, with a metric_for_best_model, when early_stopping_patience is set (the best checkpoint is "
        "the one restored after the stop)",
    )


def check_lora_keys(args: Any) -> None:
    """``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_target_modules`` (:meth:`LoraArguments.check_lora`), and
    LoRA with ``freeze_layers: -1``, ``batchnorm: train`` and ``feature_cache: true``, which it cannot go with."""
    LoraArguments.check_lora(args)
    r = args.lora_r
    if r == 0:
        return
    if args.freeze_layers == -1:
        raise ConfigError(
            f"lora_r: got {r} with freeze_layers -1 (the whole body frozen): no layer is left for an adapter; "
            "expected freeze_layers >= 0 with LoRA, or lora_r 0 for a linear probe"
        )
    if args.batchnorm == "train":
        raise ConfigError(
            f"batchnorm: got 'train' with lora_r {r}; expected auto or freeze: the adapter does not hold "
            "BatchNorm statistics, so with LoRA they stay as pretrained"
        )
    if args.feature_cache is True:
        raise ConfigError(
            f"feature_cache: got True with lora_r {r}; expected false or auto: the adapters train the body, "
            "so its features change every step"
        )
