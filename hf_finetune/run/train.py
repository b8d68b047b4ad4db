"""The training entry point: one straight ``main(model_args, data_args, training_args)``.

load data -> load model for its labels -> freeze / BatchNorm policy -> train -> evaluate -> save.

The output folder only looks like a finished model at the very end: checkpoints live in ``checkpoint-*``
subfolders while training, and the final files (the model card ``README.md`` and the per-class validation
figures ``eval_per_class.json`` among them) are written into a hidden temporary folder and moved into place
with the weights file last.

``push_to_hub: true`` (with ``hub_model_id``) pushes that final folder once, at the very end, from the main
process only (:func:`hf_finetune.hub.push.push_to_hub`); transformers' own pushes of every checkpoint are off. The Hub
keys are checked before anything is trained.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from transformers import set_seed

from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_finetune.data import loading
from hf_finetune.data.image_cache import CACHE_DIR as IMAGE_CACHE_DIR
from hf_finetune.data.image_cache import build_image_cache
from hf_finetune.data.image_check import write_bad_image_report
from hf_finetune.data.transforms import (
    apply_image_size,
    build_transforms,
    collate_images,
    data_config_from_processor,
    make_batch_transform,
    split_normalize,
)
from hf_finetune.errors import CheckpointWriteError, FinalSaveInterrupted, TrainingInterrupted
from hf_finetune.hub.model_card import CARD_NAME, PER_CLASS_NAME, render_model_card
from hf_finetune.hub.push import check_hub_arguments, normalize_timm_config
from hf_finetune.inference import reports
from hf_finetune.inference.metrics import build_compute_metrics, per_class_report
from hf_finetune.inference.reports import TRAINING_FIGURES, best_epoch
from hf_finetune.labels.matching import match_labels
from hf_finetune.models.freezing import configure_batchnorm, freeze_parameters
from hf_finetune.models.head_init import calibrate_head_bias, data_driven_rows, source_probabilities_per_class
from hf_finetune.models.heads import copy_source_rows, head_parameter_names
from hf_finetune.models.loading import load_model_for_labels
from hf_finetune.run.output_dir import run_folder
from hf_finetune.runtime.performance import (
    conv_weight_fraction,
    device_kind,
    keep_freed_memory,
    wants_channels_last,
)
from hf_finetune.runtime.same_padding import static_same_padding
from hf_finetune.runtime.tuning import tune_depthwise_precision, tune_inplace_activations, tuning_cache_path
from hf_finetune.training.checkpoints import (
    FINAL_WEIGHTS,
    is_finished_model_dir,
    last_checkpoint,
)
from hf_finetune.training.feature_cache import CACHE_DIR as FEATURE_CACHE_DIR
from hf_finetune.training.feature_cache import (
    HeadOnlyModel,
    build_feature_cache,
    collate_features,
    decide_feature_cache,
    feature_head,
)
from hf_finetune.training.interrupt import GracefulStop, interrupting_final_save
from hf_finetune.training.regularization import configure_regularization, feature_cache_wanted
from hf_finetune.training.schedules import build_freeze_schedule
from hf_finetune.training.start_point import StartingPointCallback
from hf_finetune.training.trainer import FinetuneTrainer

__all__ = ["main", "TrainResult", "is_finished_model_dir", "build_trainer"]

logger = logging.getLogger("hf_finetune")

STAGING = ".final-partial"  # the final files are written here, then moved into the output folder


@dataclass
class TrainResult:
    """What a run produced: metrics before and after, where it was saved."""

    output_dir: str
    labels: list[str]
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    train_metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: str | None = None
    reinitialized: list[str] = field(default_factory=list)
    seconds: float = 0.0
    hub_commit_url: str | None = None  # set when push_to_hub pushed the model
    feature_cache_seconds: float | None = None  # time spent computing cached features (linear probe)
    class_balance: str | None = None  # the class_balance choice and the class-size ratio it was made from
    best_epoch: float | None = None  # the epoch whose evaluation scored best on metric_for_best_model
    best_metric: dict[str, float] = field(default_factory=dict)  # {metric name: its value at best_epoch}
    kept_start: bool = False  # no epoch beat the evaluation before training: the saved model is that state
    files: list[str] = field(default_factory=list)  # the main files written into output_dir

    def summary(self) -> str:
        def fmt(metrics: dict[str, float]) -> str:
            keys = [k for k in ("accuracy", "top5_accuracy", "macro_f1") if f"eval_{k}" in metrics]
            return ", ".join(f"{k} {metrics[f'eval_{k}']:.4f}" for k in keys) or "n/a"

        lines = [
            f"before fine-tuning (epoch 0): {fmt(self.metrics_before)}",
            f"after fine-tuning:            {fmt(self.metrics_after)}",
        ]
        if self.best_epoch is not None:
            best = ", ".join(f"validation {k} {v:.4f}" for k, v in self.best_metric.items())
            lines.append(f"best epoch: {self.best_epoch:g}" + (f" ({best})" if best else ""))
        if self.kept_start:
            lines.append(
                "no epoch beat the starting point: the saved model is the epoch-0 state (before any step)"
            )
        time_text = f"time: {self.seconds:.1f} s"
        runtime, speed = (self.train_metrics.get(k) for k in ("train_runtime", "train_samples_per_second"))
        if runtime is not None and speed is not None:
            time_text += f" (training {float(runtime):.1f} s, {float(speed):.1f} images/s)"
        lines.append(time_text)
        saved = f": {', '.join(self.files)}" if self.files else ""
        lines.append(f"model saved to {self.output_dir}{saved}")
        return "\n".join(lines)


def build_trainer(model_args, data_args, training_args, loaded_data=None, callbacks=None):
    """Load data and model and return ``(trainer, loaded_model, loaded_data)``; nothing is written yet."""

    set_seed(training_args.seed)
    _keep_freed_memory(training_args)
    if model_args.allow_pickle_weights:
        logger.warning(
            "allow_pickle_weights is on: pickle weight files load with torch.load(weights_only=True)"
        )
    if model_args.trust_remote_code:
        logger.warning(
            "trust_remote_code is on: Python code from %s will run on this machine",
            model_args.model_name_or_path,
        )
    data = (
        loaded_data
        if loaded_data is not None
        else loading.load_image_dataset(data_args, seed=training_args.seed)
    )
    logger.info("data: %s\n%s", data.source, data.summary())
    loaded = load_model_for_labels(
        model_args.model_name_or_path,
        data.labels,
        revision=model_args.model_revision,
        cache_dir=model_args.cache_dir,
        trust_remote_code=model_args.trust_remote_code,
        label_mapping=model_args.label_mapping,
        label_merge=model_args.label_merge,
        keep_source_head=model_args.label_init_from_data,
        allow_pickle_weights=model_args.allow_pickle_weights,
        drop_path_rate=getattr(training_args, "drop_path_rate", None),
    )
    logger.info("%s", loaded.describe())
    if loaded.mapping is not None and not model_args.label_init_from_data:
        logger.info("label mapping (source rows that start each target class):\n%s", loaded.mapping.table())
    model = loaded.model
    lora_on = getattr(training_args, "lora_r", 0) > 0  # an adapter holds no BatchNorm statistics: frozen
    for line in configure_batchnorm(model, "freeze" if lora_on else training_args.batchnorm):
        logger.info("%s", line)
    freeze = freeze_parameters(model, training_args.freeze_layers, training_args.freeze_patterns)
    logger.info("%s", freeze.describe())
    _static_same_padding(model, training_args)
    channels_last = _apply_channels_last(model, training_args)
    for key, choice in getattr(training_args, "auto_choices", {}).items():
        logger.info("%s: %s", key, choice)

    data_config = data_config_from_processor(loaded.processor, data_args.image_size)
    apply_image_size(loaded.processor, model.config, data_args.image_size)
    _tune_for_cpu_bf16(model, training_args, data_config, channels_last)
    train_transform, eval_transform = build_transforms(
        data_config, data_args.augmentation, data_args.crop_scale_min, data_args.hflip_prob
    )
    logger.info(
        "preprocessing: %s px, crop_pct %.3f, %s, mean %s, std %s; training augmentation: %s",
        data_config["input_size"][-1],
        data_config.get("crop_pct") or 1.0,
        data_config.get("interpolation"),
        tuple(round(float(v), 4) for v in data_config["mean"]),
        tuple(round(float(v), 4) for v in data_config["std"]),
        data_args.augmentation,
    )
    autocast = _autocast_dtype(training_args)
    if model_args.label_init_from_data and loaded.source_head is not None:
        _init_rows_from_data(loaded, data, eval_transform, model_args.label_merge, autocast)
    if model_args.label_bias_from_data and loaded.mapping is not None and loaded.mapping.reused:
        _calibrate_bias(loaded, data, eval_transform, training_args.device, autocast)
    if training_args.body_warmup_epochs is None:  # unset: on when rows are reused (bench/label_mapping.py)
        reused = loaded.mapping is not None and bool(loaded.mapping.reused)
        training_args.body_warmup_epochs = 1.0 if reused else 0.0
        logger.info(
            "body_warmup_epochs: %s",
            "1 (classifier rows are reused; the head trains at its full rate from step 1)"
            if reused
            else "0 (no classifier row is reused: a fresh head trains the body from step 1)",
        )
    inputs = _training_inputs(
        model,
        data,
        data_args,
        training_args,
        freeze,
        data_config,
        train_transform,
        eval_transform,
        channels_last,
    )
    if lora_on:  # after the head is mapped (and its rows chosen from data): peft wraps the model in place
        from hf_finetune.models.lora import apply_lora

        lora = apply_lora(model, training_args, frozen=freeze.frozen)
        logger.info("%s", lora.describe())
        inputs.model, inputs.head_names = lora.model, lora.head_names
    if training_args.world_size > 1 and training_args.data_seed is None:
        # The sampler's order must be the same on every rank (each takes its own share of it); accelerate
        # seeds it from data_seed, else from the global seed, which differs per rank below.
        training_args.data_seed = training_args.seed
    trainer = FinetuneTrainer(
        model=inputs.model,
        args=training_args,
        train_dataset=inputs.train_dataset,
        eval_dataset=inputs.eval_dataset,
        data_collator=inputs.collator,
        compute_metrics=build_compute_metrics(len(data.labels)),
        processing_class=loaded.processor,
        callbacks=callbacks,
        head_names=inputs.head_names,
        pixel_normalizer=inputs.pixel_normalizer,
    )
    trainer.feature_cache = inputs.feature_cache
    trainer.image_cache = inputs.image_cache
    _keep_starting_point(trainer, inputs.model, training_args)
    configure_regularization(trainer, training_args, len(data.labels))  # mixup, class balance, EMA, stopping

    schedule = build_freeze_schedule(inputs.model, training_args, freeze.trainable, inputs.head_names)
    if schedule is not None:  # the parameters it unfreezes later are in the optimizer from the start
        trainer.optimizer_names = schedule.optimizer_names
        trainer.add_callback(schedule)
    if training_args.world_size > 1:
        logger.info(
            "processes: %d (%s, this is rank %d); per-device batch %d, global batch %d",
            training_args.world_size,
            training_args.distributed_state.distributed_type,
            training_args.process_index,
            training_args.per_device_train_batch_size,
            training_args.per_device_train_batch_size
            * training_args.world_size
            * training_args.gradient_accumulation_steps,
        )
    if training_args.process_index > 0:
        # Every rank built the same model from the same seed (DDP also broadcasts rank 0's weights); the
        # sampler has its own seeded generator, so the data order stays shared. Augmentation draws from
        # the global generators: give each rank its own, derived from the seed, so runs stay reproducible.
        set_seed(training_args.seed + training_args.process_index)
    return trainer, loaded, data


def _keep_starting_point(trainer, model, training_args) -> None:
    """The epoch-0 state is a candidate for the best model (:mod:`hf_finetune.training.start_point`)."""

    if not (training_args.load_best_model_at_end and training_args.eval_on_start):
        return
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        logger.info(
            "the epoch-0 state is not a best-model candidate under FSDP or DeepSpeed (sharded weights)"
        )
        return
    trainer.add_callback(StartingPointCallback(model))


@dataclass
class _TrainingInputs:
    """What the Trainer trains: the model (or the head alone, on cached features), its datasets and collator."""

    model: Any
    train_dataset: Any
    eval_dataset: Any
    collator: Any
    head_names: list[str] | None = None
    feature_cache: Any = None
    image_cache: Any = None
    pixel_normalizer: Any = None  # uint8 batches -> normalised float on the device (normalize_on_device)


def _training_inputs(
    model, data, data_args, training_args, freeze, data_config, train_transform, eval_transform, channels_last
) -> _TrainingInputs:
    """Images transformed on the fly (the default), images decoded once (``cache_images``), or the frozen body's
    features computed once and the head trained alone (``feature_cache``)."""

    splits = {"train": data.dataset["train"], "validation": data.dataset["validation"]}
    use_cache, why = decide_feature_cache(
        feature_cache_wanted(training_args),  # off with mixup/cutmix: mixing needs the images
        model,
        freeze.trainable,
        head_parameter_names(model),
        training_args.world_size,
        scheduled=getattr(training_args, "probe_epochs", 0) > 0
        or getattr(training_args, "unfreeze_schedule", "none") != "none",
    )
    if use_cache or freeze.frozen:
        logger.info("feature_cache: %s", why)
    if use_cache:
        head_name, head = feature_head(model)
        cache = build_feature_cache(
            model,
            head,
            splits,
            eval_transform,
            Path(training_args.output_dir) / FEATURE_CACHE_DIR,
            batch_size=training_args.per_device_eval_batch_size,
            bf16=bool(training_args.bf16),
            channels_last=channels_last,
        )
        logger.info(
            "feature_cache: %d-dimensional features of %d + %d images in %.1f s (validation transform, "
            "BatchNorm running statistics, no augmentation); the head trains on them",
            cache.dim,
            len(cache.datasets["train"]),
            len(cache.datasets["validation"]),
            cache.seconds,
        )
        head_model = HeadOnlyModel(model, head_name, head)
        return _TrainingInputs(
            model=head_model,
            train_dataset=cache.datasets["train"],
            eval_dataset=cache.datasets["validation"],
            collator=collate_features,
            head_names=[n for n, _ in head_model.named_parameters()],
            feature_cache=cache,
        )
    # NHWC batches from the loader pay off on a CPU; on a GPU the first convolution takes NCHW input as it is.
    collator = functools.partial(
        collate_images, channels_last=channels_last and training_args.device.type == "cpu"
    )
    train_transform, eval_transform, normalizer = _uint8_transforms(
        training_args, train_transform, eval_transform
    )
    if training_args.cache_images:
        image_cache = build_image_cache(
            splits,
            data_config,
            data_args.augmentation,
            data_args.crop_scale_min,
            data_args.hflip_prob,
            train_transform,
            eval_transform,
            Path(training_args.output_dir) / IMAGE_CACHE_DIR / f"rank{training_args.process_index}",
        )
        logger.info(
            "cache_images: %d + %d images decoded and resized once in %.1f s (%.0f MiB, memory-mapped)",
            len(image_cache.train),
            len(image_cache.validation),
            image_cache.seconds,
            image_cache.nbytes / 2**20,
        )
        return _TrainingInputs(
            model,
            image_cache.train,
            image_cache.validation,
            collator,
            image_cache=image_cache,
            pixel_normalizer=normalizer,
        )
    return _TrainingInputs(
        model,
        splits["train"].with_transform(make_batch_transform(train_transform)),
        splits["validation"].with_transform(make_batch_transform(eval_transform)),
        collator,
        pixel_normalizer=normalizer,
    )


def _uint8_transforms(training_args, train_transform, eval_transform):
    """``normalize_on_device``: both transforms stop at 8-bit tensors and one
    :class:`~hf_finetune.data.transforms.PixelNormalizer` finishes each batch on the device
    (:func:`hf_finetune.data.transforms.split_normalize`); ``(train, eval, normalizer or None)``."""

    if not getattr(training_args, "normalize_on_device", False):
        return train_transform, eval_transform, None
    train_split, eval_split = split_normalize(train_transform), split_normalize(eval_transform)
    same = (
        train_split is not None
        and eval_split is not None
        and train_split[1].mean.equal(eval_split[1].mean)
        and train_split[1].std.equal(eval_split[1].std)
    )
    if not same:
        logger.info(
            "normalize_on_device: off (the transforms do not both end in ToTensor + Normalize with one "
            "mean and std; the loader normalises each image)"
        )
        return train_transform, eval_transform, None
    logger.info(
        "normalize_on_device: the loader makes 8-bit batches; %s on %s", eval_split[1], training_args.device
    )
    return train_split[0], eval_split[0], eval_split[1]


def _keep_freed_memory(training_args) -> None:
    """``keep_freed_memory``: freed memory stays in the process (:func:`hf_finetune.runtime.performance.keep_freed_memory`);
    before the data and the model are loaded, so that their buffers are served the same way."""
    if not getattr(training_args, "keep_freed_memory", False):
        return

    if not keep_freed_memory():  # glibc was checked with the arguments; this is mallopt saying no
        logger.warning(
            "keep_freed_memory: glibc's mallopt refused the settings; freed memory goes back to the OS"
        )


def _apply_channels_last(model, training_args) -> bool:
    """``channels_last``: NHWC weights (inputs are made NHWC by the collator); unset means chosen from the
    model (:func:`hf_finetune.runtime.performance.wants_channels_last`)."""

    wanted = training_args.channels_last
    if wanted is None:
        wanted = wants_channels_last(model)
        logger.info(
            "channels_last: %s (auto: %.0f%% of the weights are 2-D convolutions)",
            "on" if wanted else "off",
            100 * conv_weight_fraction(model),
        )
    if wanted:
        model.to(memory_format=torch.channels_last)
    return bool(wanted)


def _tune_for_cpu_bf16(model, training_args, data_config, channels_last: bool) -> None:
    """With bf16 autocast on a CPU, time layers both ways before training and keep the faster way:
    ``tune_depthwise_precision`` runs in fp32 the depthwise convolutions that are faster there
    (:func:`hf_finetune.runtime.performance.tune_depthwise_precision`), ``tune_inplace_activations`` runs out of place
    the in-place activations that are faster so (:func:`hf_finetune.runtime.performance.tune_inplace_activations`)."""

    on_cpu_bf16 = bool(training_args.bf16) and device_kind(training_args.use_cpu) == "cpu"
    side = int(data_config["input_size"][-1])
    shape = (min(8, training_args.per_device_train_batch_size), 3, side, side)
    tuners = {
        "tune_depthwise_precision": (
            tune_depthwise_precision,
            "%d depthwise convolutions run in fp32, faster than bf16 on this CPU (forward+backward of a "
            "%d-image batch: %.0f ms in bf16, %.0f ms in fp32; timed once per machine and shape, kept in "
            + str(tuning_cache_path()).replace("%", "%%")
            + ")",
        ),
        "tune_inplace_activations": (
            tune_inplace_activations,
            "%d in-place activations run out of place, faster on this CPU (forward of a %d-image batch: "
            "%.1f ms in place, %.1f ms out of place)",
        ),
    }
    for key, (tune, message) in tuners.items():
        wanted = getattr(training_args, key)
        if wanted is False or not on_cpu_bf16:
            if wanted:
                logger.info("%s: nothing to tune (it applies to bf16 on a CPU)", key)
            continue
        switched = tune(model, shape, channels_last=channels_last)
        if switched:
            before, after = (sum(times[i] for times in switched) for i in (1, 2))
            logger.info(f"{key}: {message}", len(switched), shape[0], 1000 * before, 1000 * after)


def _static_same_padding(model, training_args) -> None:
    """``static_same_padding``: transformers' MobileNets pad stride-1 convolutions in the convolution instead
    of with ``F.pad`` (:func:`hf_finetune.runtime.performance.static_same_padding`)."""

    wanted = training_args.static_same_padding
    if wanted is False:
        return
    changed = static_same_padding(model)
    if changed:
        logger.info(
            "static_same_padding: %d stride-1 convolutions pad in the convolution instead of with F.pad "
            "(TensorFlow SAME padding, bit-identical)",
            len(changed),
        )
    elif wanted:
        logger.info("static_same_padding: nothing to change (no TensorFlow-padded stride-1 convolution)")


def _autocast_dtype(training_args):
    """The dtype the Trainer autocasts to (``bf16``/``fp16``), or None in full precision."""

    if training_args.bf16:
        return torch.bfloat16
    return torch.float16 if training_args.fp16 else None


def _init_rows_from_data(loaded, data, eval_transform, merge: str = "lse", autocast_dtype=None) -> None:
    """``label_init_from_data``: choose/weight source rows from the pretrained model's predictions."""

    if loaded.mapping is None:  # label_mapping none: every target is unmatched
        loaded.mapping = match_labels(loaded.labels, loaded.source_labels, None, auto=False)
    background = {i for i, name in enumerate(loaded.source_labels) if name.strip().lower() == "background"}
    probs = source_probabilities_per_class(
        loaded.model,
        loaded.source_head,
        data.dataset["train"],
        eval_transform,
        len(loaded.labels),
        exclude_rows=background,
        autocast_dtype=autocast_dtype,
    )
    rows = data_driven_rows(loaded.mapping, probs, loaded.source_labels)
    copy_source_rows(loaded.model, loaded.source_head, rows, merge=merge)
    logger.info(
        "label_init_from_data: %d target rows chosen or weighted from the pretrained model's predictions",
        len(rows),
    )
    logger.info("label mapping (source rows that start each target class):\n%s", loaded.mapping.table())


def _calibrate_bias(loaded, data, eval_transform, device, autocast_dtype=None) -> None:
    """``label_bias_from_data``: fit the reused head's biases to the training data's classes."""

    calibration = calibrate_head_bias(
        loaded.model,
        data.dataset["train"],
        eval_transform,
        loaded.labels,
        device=device,
        autocast_dtype=autocast_dtype,
    )
    if calibration is None:
        logger.info("label_bias_from_data: skipped (the head has no bias, or no training image decoded)")
        return
    loaded.mapping.bias_calibration = calibration.to_dict()
    logger.info("%s", calibration.describe())


def _starting_point_kept(trainer) -> bool:

    kept = [c for c in trainer.callback_handler.callbacks if isinstance(c, StartingPointCallback)]
    return bool(kept) and kept[0].restored is not None


def _first_eval(log_history: list[dict[str, Any]]) -> dict[str, float]:
    for entry in log_history:
        if "eval_accuracy" in entry:
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return {}


def _summarize_run(result: TrainResult, trainer, training_args, out: Path) -> None:
    """Fill in the best epoch and the main files written, for :meth:`TrainResult.summary`."""

    metric = training_args.metric_for_best_model
    best = best_epoch(trainer.state.log_history, metric, training_args.greater_is_better)
    if best is not None:
        result.best_epoch = best[0]
        result.best_metric = {(metric or "loss").removeprefix("eval_"): best[1]}
    names = (*FINAL_WEIGHTS, "config.json", CARD_NAME, *TRAINING_FIGURES, PER_CLASS_NAME)
    result.files = [name for name in names if (out / name).is_file()]
    if "tensorboard" in (training_args.report_to or []):  # transformers 5 logs to OUT/runs unless told
        logs = os.environ.get("TENSORBOARD_LOGGING_DIR") or getattr(training_args, "logging_dir", None)
        result.files.append(f"TensorBoard logs in {logs or out / 'runs'}")


def _per_class_report(prediction, labels: list[str]) -> dict[str, Any] | None:
    """The per-class figures of the final evaluation (the report ``hf-finetune eval`` writes)."""

    if prediction is None:
        return None

    def first(value):
        while isinstance(value, (tuple, list)):
            value = value[0]
        return np.asarray(value)

    report = per_class_report(first(prediction.predictions), first(prediction.label_ids), labels)
    report["split"] = "validation"
    report["num_images"] = int(first(prediction.label_ids).reshape(-1).shape[0])
    return report


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


def _save_final(
    trainer,
    loaded,
    training_args,
    explicit: dict[str, Any] | None,
    data_args: DataArguments | None = None,
    eval_report: dict[str, Any] | None = None,
    weights_saved: bool = False,
) -> None:
    """Write the final model so that a crash at any moment never leaves a folder that looks finished.

    ``weights_saved``: the weights are already in the staging folder (:func:`_save_sharded_weights`)."""

    out = Path(training_args.output_dir)
    staging = out / STAGING
    if not weights_saved:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        if getattr(training_args, "lora_r", 0) > 0:  # adapter/ (with the head) and the merged model
            from hf_finetune.models.lora import save_lora

            save_lora(trainer.model, staging, loaded.name_or_path)
        else:
            trainer.save_model(str(staging))
    loaded.processor.save_pretrained(str(staging))
    config_path = staging / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    fixed = normalize_timm_config(config)  # timm.create_model and TimmWrapper both load the folder
    if fixed != config:
        config_path.write_text(json.dumps(fixed, indent=2, sort_keys=True) + "\n", encoding="utf-8")
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
    reports.write_training_figures(  # training_curves.png, confusion_matrix.png (the card shows them)
        staging,
        trainer.state.log_history,
        eval_report,
        loaded.labels,
        training_args.metric_for_best_model,
        training_args.greater_is_better,
    )
    # A stale model from an earlier run goes first, with the files of it that this run may not write.
    for name in (*FINAL_WEIGHTS, "label_mapping.json", PER_CLASS_NAME, CARD_NAME, *TRAINING_FIGURES):
        if (out / name).exists() and not (staging / name).exists():
            (out / name).unlink()
    shutil.rmtree(out / "adapter", ignore_errors=True)  # a LoRA run's adapter: stale, or replaced below
    try:  # the model card, from the files above and the Trainer's results beside them
        card = render_model_card(out, training_args.hub_model_id, extra_dirs=[staging])
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
    except Exception as err:  # a card must never cost the model; `hf-finetune push` renders it again
        logger.warning("model card not written (%s: %s)", type(err).__name__, err)
    for path in (out / name for name in FINAL_WEIGHTS):
        if path.exists():
            path.unlink()
    names = sorted(p.name for p in staging.iterdir())
    weights = [n for n in names if n in FINAL_WEIGHTS or n.startswith("model-")]
    for name in [n for n in names if n not in weights] + weights:
        os.replace(staging / name, out / name)
    staging.rmdir()


@contextlib.contextmanager
def _final_push_only(training_args):
    """transformers' Trainer pushes at its start and at every save when ``push_to_hub`` is set: switch that off
    while training (the finished folder is pushed once, at the end), and give the caller its arguments back."""
    flag = training_args.push_to_hub
    training_args.push_to_hub = False
    try:
        yield
    finally:
        training_args.push_to_hub = flag


def main(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: FinetuneTrainingArguments,
    explicit: dict[str, Any] | None = None,
    callbacks=None,
) -> TrainResult:
    """Fine-tune ``model_args.model_name_or_path`` on the data of ``data_args``; returns a :class:`TrainResult`.

    The output folder is checked and locked for the whole run first (:mod:`hf_finetune.run.output_dir`)."""

    with run_folder(model_args, data_args, training_args, explicit) as folder:
        return _run(model_args, data_args, training_args, explicit, callbacks, folder)


def _run(model_args, data_args, training_args, explicit, callbacks, folder) -> TrainResult:

    start = time.time()
    push_repo = check_hub_arguments(training_args)  # before any training: a bad Hub setting loses nothing
    resume = folder.resume
    out = Path(training_args.output_dir)
    existed = out.exists()
    stopper = GracefulStop()
    with _final_push_only(training_args), contextlib.ExitStack() as final_save:
        try:
            trainer, loaded, data = build_trainer(
                model_args, data_args, training_args, callbacks=[*(callbacks or []), stopper]
            )
            folder.check_labels(data.labels)  # --resume: the labels the checkpoint was trained on
            trainer.checkpoint_recipe = folder.checkpoint_recipe(data.labels)
            write_bad_image_report(out, data)  # OUT/bad_images.json: files skipped by the scan or decoder
            with stopper.handling_signals():
                train_output = trainer.train(resume_from_checkpoint=resume)
            if stopper.stopped_at is not None and stopper.stopped_at < trainer.state.max_steps:
                raise TrainingInterrupted(
                    stopper.signum,
                    stopper.stopped_at,
                    trainer.state.max_steps,
                    trainer.last_saved_checkpoint or last_checkpoint(out),
                )
        except BaseException:
            for cache_dir in (FEATURE_CACHE_DIR, IMAGE_CACHE_DIR):
                shutil.rmtree(out / cache_dir, ignore_errors=True)
            if not existed and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # Trainer may have created it: a bad input or a failure before any write leaves nothing
            raise

        def newest() -> str | None:
            return trainer.last_saved_checkpoint or last_checkpoint(out)

        # a stop signal from here on abandons the final save and says so, in one line
        final_save.enter_context(interrupting_final_save(trainer.state.max_steps, newest))
        train_metrics = dict(train_output.metrics)
        train_metrics["train_samples"] = len(data.dataset["train"])
        captured: dict[str, Any] = {}
        compute_metrics = trainer.compute_metrics
        if compute_metrics is not None:  # keep the final evaluation's logits for the per-class figures

            def capture(prediction):
                captured["prediction"] = prediction
                return compute_metrics(prediction)

            trainer.compute_metrics = capture
        try:
            eval_metrics = trainer.evaluate()
        finally:
            trainer.compute_metrics = compute_metrics
        eval_metrics["eval_samples"] = len(data.dataset["validation"])

        result = TrainResult(
            output_dir=str(out),
            labels=list(data.labels),
            metrics_before=_first_eval(trainer.state.log_history),
            metrics_after={k: v for k, v in eval_metrics.items()},
            train_metrics=train_metrics,
            best_checkpoint=trainer.state.best_model_checkpoint,
            reinitialized=list(loaded.reinitialized),
        )
        if trainer.class_balance is not None:
            result.class_balance = trainer.class_balance.describe()
        result.kept_start = _starting_point_kept(trainer)
        if trainer.ema is not None and training_args.ema_save and not result.kept_start:  # the EMA weights
            trainer.ema.copy_into(getattr(trainer.model, "module", trainer.model))
        if trainer.feature_cache is not None:  # the head trained on cached features: save the whole model
            result.feature_cache_seconds = trainer.feature_cache.seconds
            trainer.model = trainer.model_wrapped = loaded.model
            trainer.feature_cache.remove()
        if trainer.image_cache is not None:
            trainer.image_cache.remove()
        weights_saved = _save_sharded_weights(trainer, out)
        if trainer.is_world_process_zero():
            trainer.log_metrics("train", train_metrics)
            trainer.save_metrics("train", train_metrics)
            trainer.log_metrics("eval", eval_metrics)
            trainer.save_metrics("eval", eval_metrics)
            trainer.save_state()
            report = _per_class_report(captured.get("prediction"), list(data.labels))
            try:
                _save_final(trainer, loaded, training_args, explicit, data_args, report, weights_saved)
            except FinalSaveInterrupted:
                shutil.rmtree(out / STAGING, ignore_errors=True)
                raise
            except (OSError, RuntimeError, SafetensorError) as err:  # a full disk: the checkpoints are intact
                shutil.rmtree(out / STAGING, ignore_errors=True)
                raise CheckpointWriteError(
                    f"{out}: the final model could not be written ({type(err).__name__}: {err}); the "
                    "checkpoints are intact; free disk space and rerun with --resume"
                ) from None
    result.seconds = time.time() - start
    _summarize_run(result, trainer, training_args, out)
    if trainer.is_world_process_zero():
        logger.info("%s", result.summary())
        if push_repo is not None:  # the main process only, once the folder is complete
            from hf_finetune.hub.push import push_to_hub

            pushed = push_to_hub(
                out,
                push_repo,
                private=training_args.hub_private_repo,
                revision=training_args.hub_revision,
            )
            result.hub_commit_url = pushed.commit_url
    return result
