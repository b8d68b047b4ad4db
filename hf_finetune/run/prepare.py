"""The loaded model made ready to train: its BatchNorm and freezing policy, this machine's speed settings, its
preprocessing, and the head rows chosen or calibrated from the training data."""

from __future__ import annotations

import logging

import torch

from hf_finetune.data.multi_label import is_multi_label
from hf_finetune.data.transforms import apply_image_size, build_transforms, data_config_from_processor
from hf_finetune.errors import ConfigError
from hf_finetune.labels.matching import match_labels
from hf_finetune.models.freezing import configure_batchnorm, freeze_parameters
from hf_finetune.models.head_init import calibrate_head_bias, data_driven_rows, source_probabilities_per_class
from hf_finetune.models.heads import copy_source_rows
from hf_finetune.models.position_embeddings import resize_position_embeddings
from hf_finetune.models.zero_shot import scale_to_training_images
from hf_finetune.runtime import performance, same_padding, tuning
from hf_finetune.runtime.launch import deepspeed_launch, fsdp_launch
from hf_finetune.runtime.plan import RunPlan

__all__ = ["lora_on", "prepare_model", "preprocessing", "head_from_data"]

logger = logging.getLogger("hf_finetune")

# The speed helpers are called through their modules (``tuning.x``), so that a test patching one is heard.


def lora_on(training_args) -> bool:
    """``lora_r > 0``: peft wraps the model once its head is ready."""
    return getattr(training_args, "lora_r", 0) > 0


def prepare_model(model, training_args, plan: RunPlan):
    """BatchNorm policy, frozen parameters, padding and memory format; returns ``(freeze, channels_last)``.

    ``plan``: the run's :class:`~hf_finetune.runtime.plan.RunPlan`, where choices made here are recorded."""

    # an adapter holds no BatchNorm statistics: frozen
    for line in configure_batchnorm(model, "freeze" if lora_on(training_args) else training_args.batchnorm):
        logger.info("%s", line)
    freeze = freeze_parameters(model, training_args.freeze_layers, training_args.freeze_patterns)
    logger.info("%s", freeze.describe())
    _static_same_padding(model, training_args)
    channels_last = _apply_channels_last(model, training_args)
    return freeze, channels_last


def preprocessing(loaded, data_args, training_args, channels_last: bool):
    """The processor's image size and normalisation, the training augmentation; ``(data_config, train_transform,
    eval_transform)``. With bf16 on a CPU the model is timed at that input size first (:func:`_tune_for_cpu_bf16`)."""

    data_config = data_config_from_processor(loaded.processor, data_args.image_size)
    apply_image_size(loaded.processor, loaded.model.config, data_args.image_size)
    resize_position_embeddings(loaded.model, data_args.image_size)  # once, before any forward pass
    _tune_for_cpu_bf16(loaded.model, training_args, data_config, channels_last)
    train_transform, eval_transform = build_transforms(
        data_config,
        data_args.augmentation,
        data_args.crop_scale_min,
        data_args.hflip_prob,
        data_args.auto_augment,
        data_args.random_erasing,
        data_args.color_jitter,
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
    return data_config, train_transform, eval_transform


def head_from_data(loaded, data, eval_transform, model_args, training_args) -> None:
    """``label_init_from_data`` (rows chosen from the pretrained model's predictions) and ``label_bias_from_data``
    (the reused head's biases fitted to the training data's classes)."""

    autocast = _autocast_dtype(training_args)
    if model_args.label_init_from_data and is_multi_label(data.dataset["train"]):
        raise ConfigError(
            "label_init_from_data: true averages the source softmax over each target class's images, which "
            "multi-label data does not have; set it to false (label mapping and label_bias_from_data still apply)"
        )
    if model_args.label_init_from_data and loaded.source_head is not None:
        _init_rows_from_data(loaded, data, eval_transform, model_args.label_merge, autocast)
    scale_to_training_images(
        loaded, data.dataset["train"], eval_transform, training_args.device
    )  # CLIP/SigLIP
    if model_args.label_bias_from_data and loaded.mapping is not None and loaded.mapping.reused:
        _calibrate_bias(loaded, data, eval_transform, training_args.device, autocast)


def _apply_channels_last(model, training_args) -> bool:
    """``channels_last``: NHWC weights (inputs are made NHWC by the collator); unset means chosen from the
    model (:func:`hf_finetune.runtime.performance.wants_channels_last`)."""

    wanted = training_args.channels_last
    if wanted is None and fsdp_launch():  # FSDP2 shards contiguous parameters only
        wanted = False
        logger.info("channels_last: off (auto: FSDP shards contiguous parameters only)")
    elif wanted is None and deepspeed_launch():  # its first broadcast views each weight as bytes
        wanted = False
        logger.info("channels_last: off (auto: DeepSpeed broadcasts contiguous parameters only)")
    elif wanted is None and (reason := performance.channels_last_breaks(model, training_args.device.type)):
        wanted = False
        logger.info("channels_last: off (auto: %s)", reason)
    elif wanted is None:
        wanted = performance.wants_channels_last(model)
        logger.info(
            "channels_last: %s (auto: %.0f%% of the weights are 2-D convolutions)",
            "on" if wanted else "off",
            100 * performance.conv_weight_fraction(model),
        )
    if wanted:
        model.to(memory_format=torch.channels_last)
    return bool(wanted)


def _tune_for_cpu_bf16(model, training_args, data_config, channels_last: bool) -> None:
    """With bf16 autocast on a CPU, time layers both ways before training and keep the faster way:
    ``tune_depthwise_precision`` runs in fp32 the depthwise convolutions that are faster there
    (:func:`hf_finetune.runtime.tuning.tune_depthwise_precision`), ``tune_inplace_activations`` runs out of place
    the in-place activations that are faster so (:func:`hf_finetune.runtime.tuning.tune_inplace_activations`)."""

    on_cpu_bf16 = bool(training_args.bf16) and performance.device_kind(training_args.use_cpu) == "cpu"
    side = int(data_config["input_size"][-1])
    shape = (min(8, training_args.per_device_train_batch_size), 3, side, side)
    tuners = {
        "tune_depthwise_precision": (
            tuning.tune_depthwise_precision,
            "%d depthwise convolutions run in fp32, faster than bf16 on this CPU (forward+backward of a "
            "%d-image batch: %.0f ms in bf16, %.0f ms in fp32; timed once per machine and shape, kept in "
            + str(tuning.tuning_cache_path()).replace("%", "%%")
            + ")",
        ),
        "tune_inplace_activations": (
            tuning.tune_inplace_activations,
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
    of with ``F.pad`` (:func:`hf_finetune.runtime.same_padding.static_same_padding`)."""

    wanted = training_args.static_same_padding
    if wanted is False:
        return
    changed = same_padding.static_same_padding(model)
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
