"""Checkpoints on disk: which ``checkpoint-N`` folder to resume from, what each records, and whether a
folder holds a finished model."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from safetensors import safe_open
from transformers import PreTrainedModel

from hf_finetune.errors import ConfigError
from hf_finetune.models.weights_check import check_safetensors_files

__all__ = [
    "CHECKPOINT_RECIPE",
    "FINAL_WEIGHTS",
    "is_finished_model_dir",
    "last_checkpoint",
    "resolve_resume",
    "write_checkpoint_recipe",
    "later_checkpoints",
    "load_renamed_checkpoint",
]

logger = logging.getLogger("hf_finetune")

CHECKPOINT_RECIPE = (
    "hf_finetune_recipe.json"  # in each checkpoint-N: the recipe and labels it was trained with
)
FINAL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def load_renamed_checkpoint(model, folder: str | Path) -> bool:
    """Load the weights of checkpoint ``folder`` into ``model`` when it is a transformers model whose files name
    its tensors otherwise; True when it did (False: nothing done, the Trainer's own load applies).

    transformers 5 saves some families (ViT, DeiT, DINOv2, CLIP, ...) in their former tensor layout and converts
    them back in ``from_pretrained``; the Trainer's best-model and resume loads read the file with a non-strict
    ``load_state_dict`` and skip that conversion, which would leave every renamed tensor (the whole encoder) as it
    was, with a warning only. Here the checkpoint goes through ``from_pretrained`` and is copied in strictly."""
    bare = getattr(model, "module", model)
    weights = Path(folder) / FINAL_WEIGHTS[0]
    if not isinstance(bare, PreTrainedModel) or not weights.is_file():
        return False
    with safe_open(str(weights), framework="pt") as handle:
        saved = set(handle.keys())
    if saved <= set(bare.state_dict()):
        return False
    loaded = type(bare).from_pretrained(str(folder), config=bare.config)
    bare.load_state_dict(loaded.state_dict(), strict=True)
    logger.info(
        "loaded %s through from_pretrained: its files name the tensors in transformers' former layout", folder
    )
    return True


def is_finished_model_dir(path: str | Path) -> bool:
    """True when ``path`` holds a complete saved model (config and weights)."""
    path = Path(path)
    return (path / "config.json").is_file() and any((path / name).is_file() for name in FINAL_WEIGHTS)


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The complete ``checkpoint-N`` folder with the highest N in ``output_dir`` (None if there is none).

    Complete means it holds ``trainer_state.json``, the last file a checkpoint gets; checkpoints are also
    written under another name and renamed (:class:`hf_finetune.training.trainer.FinetuneTrainer`)."""
    out = Path(output_dir)
    if not out.is_dir():
        return None
    steps = []
    for path in out.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / "trainer_state.json").is_file():
            steps.append((int(match.group(1)), path))
    return str(max(steps)[1]) if steps else None


def resolve_resume(training_args) -> str | None:
    value = training_args.resume_from_checkpoint
    if value in (None, "", "false", "False"):
        return None
    if str(value).lower() in ("last", "true", "latest"):
        out = training_args.output_dir
        last = last_checkpoint(out)
        if last is None:
            raise ConfigError(
                f"resume_from_checkpoint: no complete checkpoint-* folder in {out} to resume from"
            )
        logger.info("resuming from %s", last)
        value = last
    elif not os.path.isdir(value):
        raise ConfigError(
            f"resume_from_checkpoint: {value} does not exist; expected a checkpoint-* folder or 'last'"
        )
    fix = "resume from an earlier checkpoint-* folder with --resume_from_checkpoint PATH, or delete this one"
    check_safetensors_files(value, "resume_from_checkpoint", fix)  # a truncated checkpoint is one line
    return value


def write_checkpoint_recipe(checkpoint: str | Path, recipe: dict[str, Any]) -> None:
    """Record in ``checkpoint`` the recipe and labels it was trained with (compared on ``--resume``)."""
    (Path(checkpoint) / CHECKPOINT_RECIPE).write_text(json.dumps(recipe, indent=1), encoding="utf-8")


def later_checkpoints(run_dir: str | Path, checkpoint: str | Path) -> list[str]:
    """The ``checkpoint-N`` folders of ``run_dir`` with a higher step than ``checkpoint``'s."""
    match = _CHECKPOINT.fullmatch(Path(checkpoint).name)
    step = int(match.group(1)) if match else -1
    found = [
        (int(m.group(1)), p.name) for p in Path(run_dir).iterdir() if (m := _CHECKPOINT.fullmatch(p.name))
    ]
    return [name for n, name in sorted(found) if n > step]
