"""The three config dataclasses a recipe YAML (or the command line) fills, parsed together by
:func:`hf_finetune.config.parser.parse_train_args` through transformers' ``HfArgumentParser``:

* :class:`ModelArguments` (:mod:`hf_finetune.config.model`): the checkpoint, and how its classifier starts the
  new head (:mod:`hf_finetune.config.label_mapping`);
* :class:`DataArguments` (:mod:`hf_finetune.config.data`): where the images come from and how they are prepared;
* :class:`FinetuneTrainingArguments`: ``transformers.TrainingArguments`` with fine-tuning defaults
  (:mod:`hf_finetune.config.base`) and one dataclass per feature group, each in its own module with its keys
  and their checks: head and freezing (:mod:`~hf_finetune.config.head`), LoRA (:mod:`~hf_finetune.config.lora`),
  regularization (:mod:`~hf_finetune.config.regularization`), class balance (:mod:`~hf_finetune.config.balance`),
  speed (:mod:`~hf_finetune.config.speed`) and the output folder (:mod:`~hf_finetune.config.resume`).

The recipe stays one flat mapping: every key is a field of one of the three classes. Every field has
``metadata={"help": ...}``; a bad value raises :class:`~hf_finetune.errors.ConfigError` naming the key, the value
and the fix, when the class is built. Checks across groups live in :mod:`hf_finetune.config.checks`. The speed
keys' ``auto`` values stay unset here; they are chosen when the run is built
(:func:`hf_finetune.runtime.speed_plan.resolve_speed`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from hf_finetune.config.balance import BalanceArguments
from hf_finetune.config.base import FinetuneBaseConfig
from hf_finetune.config.checks import check_evaluation_keys, check_lora_keys, check_precision, check_schedules
from hf_finetune.config.data import AUGMENTATIONS, DataArguments
from hf_finetune.config.head import BATCHNORM_MODES, UNFREEZE_SCHEDULES, HeadArguments
from hf_finetune.config.lora import LoraArguments
from hf_finetune.config.metrics import MetricsArguments
from hf_finetune.config.model import ModelArguments
from hf_finetune.config.path_checks import check_writable_dir
from hf_finetune.config.ranges import check_recipe_values
from hf_finetune.config.regularization import RegularizationArguments
from hf_finetune.config.resume import NEVER_ALLOWED, ResumeArguments
from hf_finetune.config.speed import AUTO_KEYS, SpeedArguments, machine_checks_deferred
from hf_finetune.errors import ConfigError, suggest

__all__ = [
    "ModelArguments",
    "DataArguments",
    "FinetuneTrainingArguments",
    "FEATURE_GROUPS",
    "check_allowed_changes",
    "deepspeed_backend_on_cpu",
    "AUGMENTATIONS",
    "BATCHNORM_MODES",
    "UNFREEZE_SCHEDULES",
    "AUTO_KEYS",
]

# The feature groups of FinetuneTrainingArguments, in the order their keys appear in --help.
FEATURE_GROUPS = (
    ResumeArguments,
    SpeedArguments,
    HeadArguments,
    LoraArguments,
    RegularizationArguments,
    BalanceArguments,
    MetricsArguments,
)


# The bases are listed in reverse of FEATURE_GROUPS: a dataclass takes its fields from its bases last one
# first, so transformers' keys come first, then each group's in the order above.
@dataclass
class FinetuneTrainingArguments(
    MetricsArguments,
    BalanceArguments,
    RegularizationArguments,
    LoraArguments,
    HeadArguments,
    SpeedArguments,
    ResumeArguments,
    FinetuneBaseConfig,
):
    """``TrainingArguments`` with fine-tuning defaults and the fine-tuning options.

    One class for the Python API and the parser (``FinetuneTrainingArguments(output_dir=..., lora_r=8,
    mixup_alpha=0.2)``), composed of transformers' keys with fine-tuning defaults
    (:class:`~hf_finetune.config.base.FinetuneBaseConfig`) and the feature groups in :data:`FEATURE_GROUPS`.
    """

    def __post_init__(self):
        check_recipe_values(self)  # types and ranges of every numeric key (config.ranges.RANGES)
        if self.output_dir is not None:  # "", a path under a file, an unwritable parent: before any work
            check_writable_dir(self.output_dir, "output_dir")
        self.check_head()
        check_schedules(self)
        self.check_training()
        check_precision(self)
        self.check_regularization()
        self.check_balance()
        self.check_metrics()
        self.check_early_stopping()
        check_evaluation_keys(self)
        self.check_speed()
        self.check_freeze_patterns()
        check_lora_keys(self)  # lora_r, lora_alpha, lora_dropout, lora_target_modules and their combinations
        self.resume_allow_changes = check_allowed_changes(self.resume_allow_changes)
        deepspeed_backend_on_cpu(self)  # DeepSpeed without a GPU: gloo, before the devices are set up
        try:
            with machine_checks_deferred(self):  # what the run resolves for the machine is checked then
                super().__post_init__()
        except ConfigError:
            raise
        except (ValueError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"training arguments: {first}") from None


def deepspeed_backend_on_cpu(training_args) -> bool:
    """Under a DeepSpeed launch (``ACCELERATE_USE_DEEPSPEED``) where no GPU is visible, the ranks talk over gloo
    (``ddp_backend``, unless the recipe names one); True when it set it. accelerate 1.16's ``PartialState``
    knows no backend for a CPU-only torch: DeepSpeed's CPU accelerator would still join the ranks, but each
    would count itself as process 0 of 1 and write the output folder (docs/distributed.md, DeepSpeed)."""
    import torch

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true" or training_args.ddp_backend:
        return False
    if torch.cuda.is_available():
        return False
    training_args.ddp_backend = "gloo"
    return True


def check_allowed_changes(keys: Any) -> list[str]:
    """``resume_allow_changes`` as a list of known recipe keys; a key that names the model is refused."""

    keys = [keys] if isinstance(keys, str) else list(keys or [])
    known = {
        f.name for cls in (ModelArguments, DataArguments, FinetuneTrainingArguments) for f in fields(cls)
    }
    for key in keys:
        if key in NEVER_ALLOWED:
            raise ConfigError(
                f"resume_allow_changes: got {key!r}; a checkpoint holds that model's weights, so it cannot "
                "change on --resume: train the other model into a new folder with --output_dir NEW"
            )
        if key not in known:
            raise ConfigError(
                f"resume_allow_changes: unknown key {key!r}{suggest(str(key), known)}; expected recipe keys "
                "such as num_train_epochs"
            )
    return keys
