"""``TrainingArguments`` with the defaults a fine-tuning wants, each changed once, as a field with its help.

Changed from transformers' defaults: where the run writes (``output_dir``), 3 epochs, learning rate 1e-4 with
cosine decay and no warm-up, weight decay 0.01, batches of 32 (training) and 64 (evaluation), evaluation and a
checkpoint every epoch with at most 2 kept, the best model (validation accuracy) restored at the end, an
evaluation before the first step (epoch 0: the accuracy before fine-tuning), the loss logged every 10 steps, and
the image column kept. Every other ``TrainingArguments`` key keeps transformers' default and meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from hf_finetune.config.ranges import require
from hf_finetune.errors import ConfigError

__all__ = ["FinetuneBaseConfig", "DEFAULT_OUTPUT_DIR"]

DEFAULT_OUTPUT_DIR = "outputs/hf-finetune"


@dataclass
class FinetuneBaseConfig(TrainingArguments):
    """transformers' training keys, with fine-tuning defaults."""

    output_dir: str | None = field(
        default=DEFAULT_OUTPUT_DIR,
        metadata={"help": "Where the fine-tuned model, its processor, metrics and checkpoints are written."},
    )
    num_train_epochs: float = field(
        default=3.0, metadata={"help": "Number of passes over the training images."}
    )
    learning_rate: float = field(
        default=1e-4,
        metadata={
            "help": "Learning rate of the pretrained body; the new head gets head_lr_multiplier x this."
        },
    )
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay (not applied to norms and biases)."}
    )
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "Learning-rate schedule after warm-up."}
    )
    warmup_steps: float = field(
        default=0,
        metadata={
            "help": "Warm-up length: steps (an integer >= 1) or a ratio of all steps (in [0, 1)); 0 by default: "
            "body_warmup_epochs ramps the pretrained body's rate instead, the head's from the first step."
        },
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(
        default=64, metadata={"help": "Evaluation batch size per device."}
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."})
    save_strategy: str = field(
        default="epoch", metadata={"help": "When to write a checkpoint: no, steps, epoch or best."}
    )
    logging_steps: float = field(
        default=10, metadata={"help": "Log the training loss every this many steps."}
    )
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most this many checkpoints (the best one is always kept)."}
    )
    load_best_model_at_end: bool = field(
        default=True,
        metadata={"help": "Restore the checkpoint with the best metric_for_best_model at the end."},
    )
    metric_for_best_model: str | None = field(
        default="accuracy", metadata={"help": "Validation metric that picks the best checkpoint."}
    )
    eval_on_start: bool = field(
        default=True,
        metadata={"help": "Evaluate before the first step: the accuracy before fine-tuning (epoch 0)."},
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Must stay false: images are transformed on the fly from their column."},
    )

    def check_training(self) -> None:
        """The transformers keys whose bad values would fail late or write where nobody looks."""
        if self.output_dir is None:  # transformers would write into ./trainer_output
            raise ConfigError(
                f"output_dir: got null; expected a folder (leave the key out for {DEFAULT_OUTPUT_DIR})"
            )
        require(self.learning_rate > 0, "learning_rate", self.learning_rate, "a positive number")
        require(self.num_train_epochs > 0, "num_train_epochs", self.num_train_epochs, "a positive number")
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            require(getattr(self, key) > 0, key, getattr(self, key), "a positive integer")
