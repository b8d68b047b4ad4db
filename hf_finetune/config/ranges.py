"""The allowed range of every numeric recipe key, in one table, and the check that applies it.

:data:`RANGES` maps each numeric key of :class:`~hf_finetune.config.arguments.DataArguments` and
:class:`~hf_finetune.config.arguments.FinetuneTrainingArguments` (including the ``TrainingArguments`` ones a recipe may
set) to its bounds. :func:`check_recipe_values` runs first in their ``__post_init__``: a value of the wrong
type, not finite (``.inf``, ``.nan``), or out of range is a :class:`~hf_finetune.errors.ConfigError` naming
the key, the value and the range; so is a list key holding something other than strings
(``freeze_patterns: [[a]]``). ``None`` (unset) always passes. :func:`require` is the one-line error every other
check raises: each feature group checks its own keys with it, and the checks across groups are in
:mod:`hf_finetune.config.checks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from hf_finetune.errors import ConfigError

__all__ = ["Range", "RANGES", "check_recipe_values", "check_value", "require"]

_BIG = 10**12  # "no practical limit", still finite


@dataclass(frozen=True)
class Range:
    """``low``..``high`` (``low_open``/``high_open``: the bound itself excluded), plus ``extra`` values
    allowed outside it (``-1`` meaning "unset"); ``integer``: whole numbers only; ``expected`` is the
    message's end."""

    low: float
    high: float
    expected: str
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    extra: tuple[int, ...] = ()

    def accepts(self, value: float) -> bool:
        if value in self.extra:
            return True
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


def _count(low: int, high: int, expected: str, extra: tuple[int, ...] = ()) -> Range:
    return Range(low, high, expected, integer=True, extra=extra)


_FRACTION = Range(0.0, 1.0, "a probability in [0, 1]")
_POSITIVE = Range(0.0, _BIG, "a positive number", low_open=True)
_STEPS = Range(0.0, _BIG, "a positive number of steps (below 1: a fraction of the run)", low_open=True)
_EPOCHS = Range(0, 100_000, "a number of epochs from 0 to 100000")
_SEED = _count(0, 2**32 - 1, "a seed from 0 to 4294967295")

RANGES: dict[str, Range] = {
    # DataArguments
    "train_val_split": Range(0.0, 1.0, "a fraction in (0, 1)", low_open=True, high_open=True),
    "max_train_samples": _count(1, _BIG, "a positive integer"),
    "max_eval_samples": _count(1, _BIG, "a positive integer"),
    "image_size": _count(
        16, 2048, "a positive size in pixels, from 16 to 2048 (the side of the square input)"
    ),
    "crop_scale_min": Range(0.0, 1.0, "a fraction in (0, 1]", low_open=True),
    "hflip_prob": _FRACTION,
    "random_erasing": _FRACTION,
    "color_jitter": Range(0.0, 1.0, "a jitter strength from 0 (off) to 1"),
    "shuffle_buffer_size": _count(
        0, 10_000_000, "0 (the stream's own order) or a positive number of examples"
    ),
    # TrainingArguments keys
    "per_device_train_batch_size": _count(1, 65536, "a positive integer"),
    "per_device_eval_batch_size": _count(1, 65536, "a positive integer"),
    "num_train_epochs": Range(0.0, 100_000, "a positive number of epochs, at most 100000", low_open=True),
    "max_steps": _count(
        1, _BIG, "a positive number of steps, or -1 (unset: num_train_epochs decides)", (-1,)
    ),
    "learning_rate": Range(0.0, 100.0, "a positive number", low_open=True),
    "warmup_steps": Range(0.0, _BIG, "a number of steps >= 0 (below 1: a fraction of the run)"),
    "weight_decay": Range(0.0, 100.0, "a number from 0 to 100 (0: no weight decay)"),
    "adam_beta1": Range(0.0, 1.0, "a number in [0, 1)", high_open=True),
    "adam_beta2": Range(0.0, 1.0, "a number in [0, 1)", high_open=True),
    "adam_epsilon": Range(0.0, 1.0, "a small positive number such as 1e-8", low_open=True),
    "gradient_accumulation_steps": _count(1, 65536, "a positive number of batches per optimizer step"),
    "max_grad_norm": Range(0.0, _BIG, "a number >= 0 (0: no clipping)"),
    "label_smoothing_factor": Range(0.0, 1.0, "a number in [0, 1)", high_open=True),
    "neftune_noise_alpha": Range(0.0, _BIG, "a number >= 0"),
    "torch_empty_cache_steps": _count(1, _BIG, "a positive number of steps"),
    "logging_steps": _STEPS,
    "eval_steps": _STEPS,
    "eval_delay": Range(0.0, _BIG, "a number >= 0"),
    "eval_accumulation_steps": _count(1, _BIG, "a positive number of steps"),
    "save_steps": _STEPS,
    "save_total_limit": _count(0, 1_000_000, "a number of checkpoints >= 0 (unset or 0: no limit)"),
    "seed": _SEED,
    "data_seed": _SEED,
    "dataloader_num_workers": _count(0, 1024, "0 (load in the training process) or a positive count"),
    "dataloader_prefetch_factor": _count(1, 1024, "a positive number of batches per worker"),
    "ddp_bucket_cap_mb": _count(1, 1_000_000, "a positive number of megabytes"),
    "ddp_timeout": _count(1, 100_000_000, "a positive number of seconds"),
    "local_rank": _count(0, 65535, "-1 (not distributed) or a process rank >= 0", (-1,)),
    # fine-tuning keys
    "head_lr_multiplier": _POSITIVE,
    "freeze_layers": _count(0, 1_000_000, "-1 (whole body) or a count >= 0", (-1,)),
    "lora_r": _count(0, 65536, "0 (LoRA off) or a positive integer rank"),
    "lora_alpha": Range(0.0, _BIG, "a positive number (unset: 2 x lora_r)", low_open=True),
    "lora_dropout": Range(0.0, 1.0, "a probability in [0, 1)", high_open=True),
    "probe_epochs": _count(0, 100_000, "a number of epochs >= 0 (0: no probe phase)"),
    "body_warmup_epochs": _EPOCHS,
    "layer_decay": Range(0.0, 1.0, "a factor in (0, 1], e.g. 0.75 (unset: off)", low_open=True),
    "mixup_alpha": Range(0.0, 1000.0, "a number >= 0 (0 is off)"),
    "cutmix_alpha": Range(0.0, 1000.0, "a number >= 0 (0 is off)"),
    "mixup_prob": _FRACTION,
    "mixup_switch_prob": _FRACTION,
    "mixup_off_epoch": _count(0, 100_000, "an epoch number >= 0 (0: never switch mixing off)"),
    "drop_path_rate": Range(0.0, 1.0, "a rate in [0, 1) or unset", high_open=True),
    "ema_decay": Range(0.0, 1.0, "a decay in (0, 1) such as 0.999, or unset (no EMA)", True, True),
    "early_stopping_patience": _count(1, 1_000_000, "a count of evaluations >= 1, or unset (off)"),
    "early_stopping_threshold": Range(0.0, _BIG, "a number >= 0"),
}


def require(condition: bool, key: str, value: Any, expected: str) -> None:
    """Unless ``condition``: a :class:`ConfigError` ``KEY: got VALUE; expected EXPECTED``."""
    if not condition:
        raise ConfigError(f"{key}: got {value!r}; expected {expected}")


def _check_number(key: str, value: Any, rule: Range) -> None:
    if isinstance(value, str):  # "auto" and friends are resolved later, by the dataclass
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if rule.integer else "a number"
        raise ConfigError(f"{key}: got {value!r}; expected {kind}: {rule.expected}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: got {value!r}; expected a finite number: {rule.expected}")
    if rule.integer and not float(value).is_integer():
        raise ConfigError(f"{key}: got {value!r}; expected a whole number: {rule.expected}")
    if not rule.accepts(value):
        raise ConfigError(f"{key}: got {value!r}; expected {rule.expected}")


def _check_string_list(key: str, value: Any) -> None:
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{key}: got {value!r}; expected a string or a list of strings, not {item!r}")


def check_value(key: str, value: Any, rule_key: str | None = None) -> None:
    """Check one value (a command's own flag, such as ``eval --seed``) against ``RANGES[rule_key or key]``."""
    if value is not None:
        _check_number(key, value, RANGES[rule_key or key])


def check_recipe_values(config: Any) -> None:
    """Check every numeric field of ``config`` that :data:`RANGES` knows, and every ``list[str]`` field."""
    for spec in fields(config):
        if not spec.init:
            continue
        value = getattr(config, spec.name, None)
        if value is None:
            continue
        if spec.name in RANGES:
            _check_number(spec.name, value, RANGES[spec.name])
        elif "list[str]" in str(spec.type).replace(" ", "").lower():
            _check_string_list(spec.name, value)
