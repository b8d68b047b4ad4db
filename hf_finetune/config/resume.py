"""Output folder keys: what a run may do to a folder that already holds a run.

* ``overwrite_output_dir``: start over in it (the earlier run's files are deleted, the user's are kept);
* ``resume_allow_changes``: on ``--resume``, the recipe keys that may differ from the checkpoint's.

Which keys are compared on ``--resume`` (:data:`CORE_KEYS`), which may always change (:data:`ALWAYS_ALLOWED`)
and which never (:data:`NEVER_ALLOWED`) are fixed here; :mod:`hf_finetune.run.output_dir` applies them.
``resume_allow_changes`` is checked against every recipe key by
:func:`hf_finetune.config.arguments.check_allowed_changes`, which knows them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ResumeArguments", "ALWAYS_ALLOWED", "NEVER_ALLOWED", "CORE_KEYS"]

# Compared on --resume whether given or not (with every key either run gave explicitly).
CORE_KEYS = (
    "model_name_or_path", "model_revision", "label_mapping", "label_merge", "dataset_name",
    "dataset_config_name", "train_dir", "validation_dir", "train_file", "validation_file", "train_split",
    "validation_split", "train_val_split", "max_train_samples", "image_size", "augmentation", "learning_rate",
    "head_lr_multiplier", "weight_decay", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps", "seed", "freeze_layers",
    "freeze_patterns", "layer_decay", "lora_r",
)  # fmt: skip
# Keys that may change on --resume: where the run writes and reports, and how fast it computes the same steps.
ALWAYS_ALLOWED = frozenset(
    {
        "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "resume_allow_changes", "logging_steps",
        "logging_strategy", "logging_first_step", "logging_dir", "disable_tqdm", "report_to", "run_name",
        "per_device_eval_batch_size", "save_total_limit", "push_to_hub", "hub_model_id", "hub_private_repo",
        "hub_revision", "hub_strategy", "cache_dir", "bf16", "channels_last", "tune_depthwise_precision",
        "tune_inplace_activations", "static_same_padding", "keep_freed_memory", "dataloader_num_workers",
        "dataloader_persistent_workers", "dataloader_pin_memory", "cache_images", "normalize_on_device",
        "image_cache_dir", "metrics", "threshold", "test_file",
    }
)  # fmt: skip
NEVER_ALLOWED = {"model_name_or_path", "model_revision"}  # a checkpoint holds that model's weights


@dataclass
class ResumeArguments:
    """An output folder that holds a run: start over in it, or resume it with some keys changed."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow a fresh run into an output_dir that holds an earlier run (its model and checkpoints "
            "are deleted first) or files of the user's (they are kept: a run never replaces or deletes a file "
            "it did not write, and is refused when it would write one of the same name)."
        },
    )
    resume_allow_changes: list[str] = field(
        default_factory=list,
        metadata={
            "help": "On --resume, the recipe keys that may differ from the checkpoint's recipe (e.g. "
            "num_train_epochs to train longer); any other difference, and other labels, refuse to resume. "
            "model_name_or_path can never change."
        },
    )
