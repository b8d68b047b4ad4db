"""The private ``transformers.Trainer`` methods hf_finetune still overrides: why, and the signature each was
written against.

Everything else goes through the Trainer's public extension points: ``compute_loss`` (Mixup/CutMix, class
weights), ``create_optimizer`` and ``create_scheduler`` (parameter groups, layer decay, body warm-up),
``training_step`` and ``prediction_step`` (``uint8`` pixels normalised on the device), ``evaluate`` (the EMA
weights), ``set_initial_training_values`` (steps per epoch), and callbacks (EMA updates and its best-model
restore, freezing schedules, the starting point, early stopping, stop signals).

A private method can change with any transformers release. ``tests/test_trainer_hooks.py`` compares each
recorded signature with the installed Trainer's, and checks that every private Trainer method our classes
override is in :data:`PRIVATE_OVERRIDES`, so an upgrade fails there, with the reason at hand, not deep in a run.
After an upgrade: read the new method, adapt the override, then record the new signature here.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

from transformers import Trainer

__all__ = ["PRIVATE_OVERRIDES", "PrivateOverride", "TRANSFORMERS_VERSION", "signature_mismatches"]

TRANSFORMERS_VERSION = "5.24.0"  # the release the signatures below were read from


class PrivateOverride(NamedTuple):
    owner: str  # the class of ours that overrides it
    signature: str  # str(inspect.signature(transformers.Trainer.<name>)) as written against
    reason: str  # why no public extension point does the job


PRIVATE_OVERRIDES: dict[str, PrivateOverride] = {
    "_get_train_sampler": PrivateOverride(
        owner="hf_finetune.training.regularization.RegularizationMixin",
        signature="(self, train_dataset: torch.utils.data.dataset.Dataset | None = None) "
        "-> torch.utils.data.sampler.Sampler | None",
        reason="class_balance: sampler draws training images by per-class weight (BalancedSampler). The "
        "sampler is the one part of the training loader without a public hook: get_train_dataloader would "
        "have to rebuild the whole loader (collator, workers, pinning, prefetch, seeding, accelerate's "
        "preparation) to change it.",
    ),
    "_get_output_dir": PrivateOverride(
        owner="hf_finetune.training.trainer.FinetuneTrainer",
        signature="(self, trial: 'optuna.Trial | dict[str, Any] | None') -> str",
        reason="Points the Trainer's own checkpoint writing at OUTPUT/.partial-checkpoints while _save_checkpoint "
        "runs, so a checkpoint is complete before it appears as OUTPUT/checkpoint-N. No public setting says "
        "where a checkpoint is written other than output_dir itself.",
    ),
    "_save_checkpoint": PrivateOverride(
        owner="hf_finetune.training.trainer.FinetuneTrainer",
        signature="(self, model: torch.nn.modules.module.Module, "
        "trial: 'optuna.Trial | dict[str, Any] | None') -> None",
        reason="Writes each checkpoint under a temporary name, adds the recipe (hf_finetune_recipe.json) and "
        "the EMA's state (ema.safetensors), renames it into place once complete, then rotates; a failed write "
        "is one CheckpointWriteError and leaves the earlier checkpoints intact. The public on_save callback "
        "runs only after the checkpoint is in place and rotated: too late for any of this.",
    ),
    "_load_from_checkpoint": PrivateOverride(
        owner="hf_finetune.training.regularization.RegularizationMixin",
        signature="(self, resume_from_checkpoint: str, model: torch.nn.modules.module.Module | None = None) "
        "-> None",
        reason="--resume with ema_decay: loads the EMA's state of the checkpoint being resumed, right after "
        "its weights; and loads a checkpoint whose files name the tensors in transformers' former layout "
        "(ViT-family) through from_pretrained, which the Trainer's non-strict load would leave unloaded. No "
        "public hook is given that checkpoint's path (callbacks see args and state only; "
        "args.resume_from_checkpoint may be 'last').",
    ),
    "_load_best_model": PrivateOverride(
        owner="hf_finetune.training.trainer.FinetuneTrainer",
        signature="(self) -> None",
        reason="load_best_model_at_end on a model whose checkpoint files name the tensors in transformers' "
        "former layout (ViT, DeiT, DINOv2, CLIP, ...): the Trainer's non-strict load_state_dict would restore "
        "only the tensors whose names did not change, silently; this loads the checkpoint through "
        "from_pretrained instead. It runs before on_train_end, and no public hook replaces the load.",
    ),
}


def signature_mismatches() -> list[str]:
    """One line per recorded private method whose installed signature differs (or that is gone)."""
    wrong = []
    for name, override in PRIVATE_OVERRIDES.items():
        method = getattr(Trainer, name, None)
        if method is None:
            wrong.append(
                f"Trainer.{name} no longer exists (overridden by {override.owner}: {override.reason})"
            )
            continue
        found = str(inspect.signature(method))
        if found != override.signature:
            wrong.append(
                f"Trainer.{name}{found} (installed) differs from Trainer.{name}{override.signature} "
                f"(transformers {TRANSFORMERS_VERSION}); {override.owner} overrides it: {override.reason}"
            )
    return wrong
