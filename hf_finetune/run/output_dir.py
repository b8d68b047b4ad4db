"""What a training run may do to its output folder, checked before anything is loaded or written.

* One run per folder: the run holds the folder's lock from start to end (:mod:`hf_finetune.run.lock`).
* The folder is not inside the training data (the run's figures would be read back as training images).
* A fresh run never mixes with an earlier one: a folder holding a finished model or the checkpoints of an
  unfinished run is refused, unless ``overwrite_output_dir``, which then deletes that earlier run's files first.
* Files that were in the folder before hf-finetune first wrote into it are listed as ``kept`` in
  ``OUTPUT/.hf-finetune-run.json`` and never replaced or deleted by any run: a non-empty folder holding no run
  is refused unless ``overwrite_output_dir``, and even then when a run would write a file of the same name.
* ``--resume`` continues the same recipe only: each checkpoint records the recipe and labels it was trained
  with (``checkpoint-N/hf_finetune_recipe.json``); a key that differs is refused in one line, unless it is
  listed in ``resume_allow_changes``.
"""

from __future__ import annotations

import contextlib
import enum
import fnmatch
import json
import logging
import os
import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hf_finetune.config.arguments import check_allowed_changes  # the key checks live with the config
from hf_finetune.config.parser import RESUME_FLAG
from hf_finetune.config.resume import ALWAYS_ALLOWED, CORE_KEYS, NEVER_ALLOWED  # noqa: F401
from hf_finetune.errors import ConfigError
from hf_finetune.run.lock import LOCK_ENV, LOCK_NAME, lock_delegated, output_lock
from hf_finetune.training.checkpoints import (
    CHECKPOINT_RECIPE,
    is_finished_model_dir,
    last_checkpoint,
    later_checkpoints,
    resolve_resume,
    write_checkpoint_recipe,
)

__all__ = [
    "RECORD_NAME",
    "CHECKPOINT_RECIPE",
    "ALWAYS_ALLOWED",
    "RunFolder",
    "run_folder",
    "check_output_location",
    "check_allowed_changes",
    "write_checkpoint_recipe",
    "later_checkpoints",
    "resume_hint",
]

logger = logging.getLogger("hf_finetune")

RECORD_NAME = ".hf-finetune-run.json"  # the files a run found in the folder ("kept": never touched)

# Names a run writes (or deletes) in its output folder.
RUN_NAMES = frozenset(
    {
        "README.md", "config.json", "preprocessor_config.json", "recipe.yaml", "labels.json",
        "label_mapping.json", "eval_per_class.json", "training_curves.png", "confusion_matrix.png",
        "trainer_state.json", "all_results.json", "train_results.json", "eval_results.json", "training_args.bin",
        "bad_images.json", "adapter", "runs", ".final-partial", ".partial-checkpoints", ".feature-cache",
        ".image-cache", "run_plan.json",
        "test_results.json",
    }
)  # fmt: skip
RUN_PATTERNS = (
    "checkpoint-*",
    "model*.safetensors",
    "model*.safetensors.index.json",
    "*_config.json",
    "*.bin",
)
RUN_PATTERNS += ("eval_*",)  # `hf-finetune eval MODEL` writes its report into MODEL/eval_<split>

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def _is_run_name(name: str) -> bool:
    return name in RUN_NAMES or any(fnmatch.fnmatchcase(name, p) for p in RUN_PATTERNS)


def _names(names: list[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    return json.loads(json.dumps(value, default=lambda v: getattr(v, "value", str(v))))


def check_output_location(training_args, data_args) -> Path:
    """The output folder as a path: not a file, not inside the training data. Warns when validation_dir is
    train_dir (the validation images are then training images)."""
    out = Path(training_args.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} is a file; expected a folder to write the model into")
    where = out.resolve()
    for key in ("train_dir", "validation_dir", "dataset_name"):
        value = getattr(data_args, key, None)
        if (
            value
            and Path(value).is_dir()
            and (where == Path(value).resolve() or Path(value).resolve() in where.parents)
        ):
            raise ConfigError(
                f"output_dir: {out} is inside {key} {value}; the run's own files (figures, checkpoints) would be "
                f"read as training images by the next run; choose a folder outside {value}"
            )
    train, validation = getattr(data_args, "train_dir", None), getattr(data_args, "validation_dir", None)
    if train and validation and Path(train).resolve() == Path(validation).resolve():
        logger.warning(
            "validation_dir is train_dir (%s): the model is validated on its own training images, so the "
            "validation metrics (and the best checkpoint chosen by them) overstate how it does on new images",
            validation,
        )
    return out


def recipe_values(*args) -> dict[str, Any]:
    """Every key of the three config dataclasses with its value (tokens left out), as JSON would store it."""
    values = {}
    for obj in args:
        for f in fields(obj):
            if f.init and "token" not in f.name:
                values[f.name] = _jsonable(getattr(obj, f.name, None))
    return values


def resume_hint(checkpoint: str | None, command: str) -> str:
    """What to add to ``command`` to continue an interrupted run: ``--resume`` (the newest checkpoint), or
    ``--resume_from_checkpoint CHECKPOINT`` when the folder holds a later checkpoint of another branch, which
    ``--resume`` would pick (the run had resumed from an older checkpoint than the newest)."""

    if checkpoint and later_checkpoints(Path(checkpoint).parent, checkpoint):
        return f" --resume_from_checkpoint {shlex.quote(str(checkpoint))}"
    return "" if RESUME_FLAG in command.split() else f" {RESUME_FLAG}"


@dataclass
class RunFolder:
    """The output folder of this run: what it found there, and the recipe of the checkpoint it resumes."""

    out: Path
    values: dict[str, Any]  # this run's recipe, before the model is loaded
    explicit: dict[str, Any]
    allowed: list[str] = field(default_factory=list)  # resume_allow_changes
    resume: str | None = None
    kept: list[str] = field(default_factory=list)
    resumed_recipe: dict[str, Any] | None = None
    created_record: bool = False

    def checkpoint_recipe(self, labels: list[str]) -> dict[str, Any]:
        """What each checkpoint of this run records (:func:`write_checkpoint_recipe`)."""
        return {"explicit": self.explicit, "values": self.values, "labels": list(labels)}

    def prepare(self, overwrite: bool) -> None:
        """Refuse a folder this run must not write into; under ``overwrite`` delete the earlier run's files."""
        entries = sorted(n for n in os.listdir(self.out) if n not in (LOCK_NAME, RECORD_NAME))
        record = _read_record(self.out)
        legacy = record is None and _looks_like_a_run(self.out, entries)  # written before the record existed
        recorded = set((record or {}).get("kept", []))
        self.kept = [
            n for n in entries if n in recorded or not ((record is not None or legacy) and _is_run_name(n))
        ]
        ours = [n for n in entries if n not in self.kept]
        _refuse_if_unsafe(
            self.out,
            ours,
            self.kept,
            foreign=record is None and not legacy,
            overwrite=overwrite,
            resuming=self.resume is not None,
        )
        if overwrite and self.resume is None and ours:
            for name in ours:
                path = self.out / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            logger.info(
                "overwrite_output_dir: deleted the earlier run's files in %s: %s", self.out, _names(ours)
            )
        if record is None or set(self.kept) != recorded:
            (self.out / RECORD_NAME).write_text(
                json.dumps({"kept": self.kept}, indent=1) + "\n", encoding="utf-8"
            )
            self.created_record = record is None

    def compare_recipe(self) -> None:
        """Refuse to resume a checkpoint trained with other settings (one line naming every key that differs)."""
        path = Path(self.resume) / CHECKPOINT_RECIPE
        if not path.is_file():
            logger.warning("resume_from_checkpoint: %s records no recipe (written by an earlier version): its "
                           "settings are not compared with this run's", self.resume)  # fmt: skip
            return
        self.resumed_recipe = json.loads(path.read_text(encoding="utf-8"))
        before = self.resumed_recipe.get("values", {})
        keys = set(CORE_KEYS) | set(self.resumed_recipe.get("explicit") or {}) | set(self.explicit)
        keys -= ALWAYS_ALLOWED | set(self.allowed)
        differ = [k for k in sorted(keys) if k in before and k in self.values and before[k] != self.values[k]]
        if differ:
            changes = ", ".join(f"{k} {before[k]!r} -> {self.values[k]!r}" for k in differ)
            raise ConfigError(
                f"resume_from_checkpoint: {self.resume} was trained with other settings ({changes}); resume with "
                f"the checkpoint's settings (recorded in {path}), allow the change with --resume_allow_changes "
                f"{' '.join(differ)}, or start a new run with --output_dir NEW"
            )

    def check_labels(self, labels: list[str]) -> None:
        """Refuse to resume a checkpoint trained on other labels than the data's."""
        before = (self.resumed_recipe or {}).get("labels")
        if before is None or list(before) == list(labels):
            return
        added, missing = [x for x in labels if x not in before], [x for x in before if x not in labels]
        detail = "; ".join(
            p
            for p in (
                f"new: {_names(added)}" if added else "",
                f"missing: {_names(missing)}" if missing else "",
            )
            if p
        )
        raise ConfigError(
            f"resume_from_checkpoint: {self.resume} was trained on other labels ({detail or 'the same labels in another order'}); "
            "resume with the data it was trained on, or start a new run with --output_dir NEW"
        )  # fmt: skip

    def close(self) -> None:
        """Remove the record again when this run created it and wrote nothing that stayed."""
        if self.created_record and set(os.listdir(self.out)) - {LOCK_NAME, RECORD_NAME} <= set(self.kept):
            (self.out / RECORD_NAME).unlink(missing_ok=True)


def _read_record(out: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((out / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _looks_like_a_run(out: Path, entries: list[str]) -> bool:
    finished = is_finished_model_dir(out) and {"recipe.yaml", "labels.json"} <= set(entries)
    return finished or last_checkpoint(out) is not None


def _refuse_if_unsafe(
    out: Path, ours: list[str], kept: list[str], foreign: bool, overwrite: bool, resuming: bool
):
    if not overwrite and not resuming:
        if "config.json" in ours and is_finished_model_dir(out):
            raise ConfigError(
                f"output_dir: {out} already holds a fine-tuned model; train into a new folder with --output_dir "
                "NEW, or pass --overwrite_output_dir true to replace it"
            )
        checkpoints = sorted(
            (n for n in ours if _CHECKPOINT.fullmatch(n)), key=lambda n: int(n.split("-")[1])
        )
        if checkpoints:
            raise ConfigError(
                f"output_dir: {out} holds the checkpoints of an earlier run that did not finish "
                f"({_names(checkpoints)}); continue that run with --resume, start a new run into a new folder with "
                "--output_dir NEW, or pass --overwrite_output_dir true to delete them"
            )
    if foreign and kept and not overwrite:
        raise ConfigError(
            f"output_dir: {out} is not empty and holds no hf-finetune run ({_names(kept)}); train into a new or "
            "empty folder with --output_dir NEW, or pass --overwrite_output_dir true to write beside these files "
            "(they are never replaced or deleted)"
        )
    clash = [n for n in kept if _is_run_name(n)]
    if clash:
        raise ConfigError(
            f"output_dir: {out} holds {_names(clash)}, which hf-finetune did not write and a run writes files of "
            "these names; move them away or train into another folder with --output_dir NEW "
            "(overwrite_output_dir never replaces files hf-finetune did not write)"
        )


@contextlib.contextmanager
def run_folder(
    model_args, data_args, training_args, explicit=None, delegate: bool = False
) -> Iterator[RunFolder]:
    """Check and lock the output folder for the run in the block; ``delegate``: the block launches the ranks
    (they then neither lock nor prepare the folder)."""
    out = check_output_location(training_args, data_args)
    folder = RunFolder(
        out=out,
        values=recipe_values(model_args, data_args, training_args),
        explicit=_jsonable(dict(explicit or {})),
        allowed=list(getattr(training_args, "resume_allow_changes", None) or []),
    )
    if lock_delegated(out):  # the launching process (or rank 0) locked and checked the folder
        folder.resume = resolve_resume(training_args)
        if folder.resume is not None:
            folder.compare_recipe()
        yield folder
        return
    existed = out.exists()
    try:
        with output_lock(out):
            try:
                folder.resume = resolve_resume(training_args)
                folder.prepare(bool(training_args.overwrite_output_dir))
                if folder.resume is not None:
                    folder.compare_recipe()
                if delegate:
                    os.environ[LOCK_ENV] = str(out.resolve())
                yield folder
            finally:
                if delegate:
                    os.environ.pop(LOCK_ENV, None)
                folder.close()
    finally:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refused or failed run leaves no folder behind
