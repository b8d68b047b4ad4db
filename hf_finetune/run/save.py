"""The final save: the output folder only looks like a finished model at the very end.

The final files (weights, processor, ``config.json``, ``recipe.yaml``, ``labels.json``, the label mapping, the
per-class figures ``eval_per_class.json``, the test split's ``test_results.json``, the training figures and the model card ``README.md``) are written into a
hidden staging folder (:data:`STAGING`) and moved into the output folder with the weights file last, so that a crash
at any moment never leaves a folder that looks finished.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError

from hf_finetune.errors import CheckpointWriteError, FinalSaveInterrupted
from hf_finetune.hub.model_card import CARD_NAME, PER_CLASS_NAME, render_model_card
from hf_finetune.hub.push import normalize_timm_config
from hf_finetune.inference import reports
from hf_finetune.inference.metrics import first_array, per_class_report
from hf_finetune.inference.multi_label_metrics import multi_label_report, sigmoid
from hf_finetune.inference.reports import TRAINING_FIGURES
from hf_finetune.models.lora import save_lora
from hf_finetune.run.test_split import TEST_RESULTS
from hf_finetune.training.checkpoints import FINAL_WEIGHTS

__all__ = ["STAGING", "final_model_in_place", "save_run", "save_final"]

logger = logging.getLogger("hf_finetune")

STAGING = ".final-partial"  # the final files are written here, then moved into the output folder


def final_model_in_place(trainer, loaded, training_args, result) -> None:
    """Put the weights to save into ``trainer.model``: the EMA weights (``ema_save``), the whole model when the
    head trained alone on cached features; remove the feature and image caches."""

    if trainer.ema is not None and training_args.ema_save and not result.kept_start:  # the EMA weights
        trainer.ema.copy_into(getattr(trainer.model, "module", trainer.model))
    if trainer.feature_cache is not None:  # the head trained on cached features: save the whole model
        result.feature_cache_seconds = trainer.feature_cache.seconds
        trainer.model = trainer.model_wrapped = loaded.model
        trainer.feature_cache.remove()
    if trainer.image_cache is not None:
        trainer.image_cache.remove()


def save_run(trainer, loaded, data, training_args, data_args, explicit, metrics, prediction) -> None:
    """Save the run: metrics, trainer state and the final model (:func:`save_final`), from the main process;
    under FSDP or DeepSpeed every rank first takes part in gathering the weights.

    ``metrics``: ``{"train": ..., "eval": ..., "test": ...}`` (``test``: empty without a test split); ``prediction``: the final evaluation's, for the per-class figures.
    A failed write is one :class:`~hf_finetune.errors.CheckpointWriteError` (the checkpoints are intact)."""

    out = Path(training_args.output_dir)
    weights_saved = _save_sharded_weights(trainer, out)
    if not trainer.is_world_process_zero():
        return
    for split in ("train", "eval"):  # printed once, by the run's summary (no log_metrics block)
        trainer.save_metrics(split, metrics[split])
    trainer.save_state()
    report, scores = _per_class_report(prediction, list(data.labels), trainer.model)
    try:
        save_final(
            trainer,
            loaded,
            training_args,
            explicit,
            data_args,
            report,
            weights_saved,
            metrics.get("test"),
            scores,
        )
    except FinalSaveInterrupted:
        shutil.rmtree(out / STAGING, ignore_errors=True)
        raise
    except (OSError, RuntimeError, SafetensorError) as err:  # a full disk: the checkpoints are intact
        shutil.rmtree(out / STAGING, ignore_errors=True)
        raise CheckpointWriteError(
            f"{out}: the final model could not be written ({type(err).__name__}: {err}); the "
            "checkpoints are intact; free disk space and rerun with --resume"
        ) from None


def _per_class_report(prediction, labels: list[str], model=None) -> tuple[dict[str, Any] | None, Any]:
    """``(report, scores)``: the per-class figures of the final evaluation (the report ``hf-finetune eval``
    writes), and for a multi-label run ``(sigmoid probabilities, multi-hot targets)`` for the precision-recall
    figure (None otherwise).

    A multi-label run (2-D targets, or the model's ``problem_type`` ``multi_label_classification``) gets
    :func:`~hf_finetune.inference.multi_label_metrics.multi_label_report` at the thresholds of the model's
    ``config.label_thresholds`` (0.5 for a class without one)."""

    if prediction is None:
        return None, None

    logits, targets = first_array(prediction.predictions), first_array(prediction.label_ids)
    config = getattr(getattr(model, "module", model), "config", None)
    if targets.ndim == 2 or getattr(config, "problem_type", None) == "multi_label_classification":
        chosen = getattr(config, "label_thresholds", None) or {}
        thresholds = [float(chosen.get(name, 0.5)) for name in labels]
        report = multi_label_report(logits, targets, labels, thresholds)
        scores = (sigmoid(logits), targets)
    else:
        report, scores = per_class_report(logits, targets, labels), None
    report["split"] = "validation"
    report["num_images"] = int(targets.shape[0])
    return report, scores


def _save_sharded_weights(trainer, out: Path) -> bool:
    """Under FSDP or DeepSpeed the weights are sharded: every rank must take part in gathering them, so
    they are saved into the staging folder by all ranks together (the main process writes the file).
    Returns True when it saved them; under DDP or one process it does nothing (the main process saves)."""
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return False
    staging = out / STAGING
    if trainer.is_world_process_zero():
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    return True


def save_final(
    trainer,
    loaded,
    training_args,
    explicit: dict[str, Any] | None,
    data_args=None,
    eval_report: dict[str, Any] | None = None,
    weights_saved: bool = False,
    test_metrics: dict[str, Any] | None = None,
    eval_scores: tuple[Any, Any] | None = None,
) -> None:
    """Write the final model so that a crash at any moment never leaves a folder that looks finished.

    ``weights_saved``: the weights are already in the staging folder (:func:`_save_sharded_weights`).
    ``eval_scores``: a multi-label run's final evaluation as ``(probabilities, targets)``, (N, K) each: drawn as
    ``precision_recall.png`` in place of the confusion matrix.
    ``test_metrics``: the test split's figures (:mod:`hf_finetune.run.test_split`), staged as
    ``test_results.json`` and moved into place with the rest; none: no such file (an old one goes)."""

    out = Path(training_args.output_dir)
    staging = out / STAGING
    if not weights_saved:
        _save_weights(trainer, loaded, training_args, staging)
    loaded.processor.save_pretrained(str(staging))
    _fix_timm_config(staging / "config.json")
    _write_run_files(staging, loaded, explicit, data_args, eval_report)
    if test_metrics:
        (staging / TEST_RESULTS).write_text(
            json.dumps(test_metrics, indent=4, sort_keys=True) + "\n", "utf-8"
        )
    reports.write_training_figures(  # training_curves.png, confusion_matrix.png (the card shows them)
        staging,
        trainer.state.log_history,
        eval_report,
        loaded.labels,
        trainer.args.metric_for_best_model,  # the run's: map for multi-label data
        trainer.args.greater_is_better,
        *(eval_scores or (None, None)),  # multi-label: precision_recall.png
    )
    # A stale model from an earlier run goes first, with the files of it that this run may not write.
    for name in (
        *FINAL_WEIGHTS,
        "label_mapping.json",
        PER_CLASS_NAME,
        CARD_NAME,
        *TRAINING_FIGURES,
        TEST_RESULTS,
    ):
        if (out / name).exists() and not (staging / name).exists():
            (out / name).unlink()
    shutil.rmtree(out / "adapter", ignore_errors=True)  # a LoRA run's adapter: stale, or replaced below
    _write_model_card(out, staging, training_args.hub_model_id)
    _move_into_place(staging, out)


def _save_weights(trainer, loaded, training_args, staging: Path) -> None:
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    if getattr(training_args, "lora_r", 0) > 0:  # adapter/ (with the head) and the merged model
        save_lora(trainer.model, staging, loaded.name_or_path)
    else:
        trainer.save_model(str(staging))


def _fix_timm_config(config_path: Path) -> None:
    """timm.create_model and TimmWrapper both load the folder (:func:`hf_finetune.hub.push.normalize_timm_config`)."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    fixed = normalize_timm_config(config)
    if fixed != config:
        config_path.write_text(json.dumps(fixed, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_run_files(staging: Path, loaded, explicit, data_args, eval_report) -> None:
    """``recipe.yaml``, ``labels.json``, ``label_mapping.json`` and the per-class figures."""
    recipe = dict(explicit or {})
    (staging / "recipe.yaml").write_text(
        "# The keys this model was trained with; train it again into a new folder with:\n"
        "#   hf-finetune train recipe.yaml --output_dir NEW\n" + yaml.safe_dump(recipe, sort_keys=False),
        encoding="utf-8",
    )
    data_keys = ("dataset_name", "dataset_config_name", "train_dir", "train_file", "validation_split")
    (staging / "labels.json").write_text(
        json.dumps(
            {
                "labels": loaded.labels,
                "source_labels_count": len(loaded.source_labels),
                "reinitialized": loaded.reinitialized,
                "base_model": loaded.name_or_path,
                "data": {k: getattr(data_args, k) for k in data_keys if getattr(data_args, k, None)},
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    if loaded.mapping is not None:
        (staging / "label_mapping.json").write_text(
            json.dumps(loaded.mapping.to_dict(), indent=2), encoding="utf-8"
        )
    if eval_report is not None:
        (staging / PER_CLASS_NAME).write_text(json.dumps(eval_report, indent=2), encoding="utf-8")


def _write_model_card(out: Path, staging: Path, hub_model_id: str | None) -> None:
    """The model card, from the files above and the Trainer's results beside them."""
    try:
        card = render_model_card(out, hub_model_id, extra_dirs=[staging])
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
    except Exception as err:  # a card must never cost the model; `hf-finetune push` renders it again
        logger.warning("model card not written (%s: %s)", type(err).__name__, err)


def _move_into_place(staging: Path, out: Path) -> None:
    """The staged files replace the output folder's, the weights last (the old weights go first)."""
    for path in (out / name for name in FINAL_WEIGHTS):
        if path.exists():
            path.unlink()
    names = sorted(p.name for p in staging.iterdir())
    weights = [n for n in names if n in FINAL_WEIGHTS or n.startswith("model-")]
    for name in [n for n in names if n not in weights] + weights:
        os.replace(staging / name, out / name)
    staging.rmdir()
