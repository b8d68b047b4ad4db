"""What the Trainer trains on: images transformed on the fly (the default), images decoded once
(``cache_images``), or the frozen body's features computed once and the head trained alone (``feature_cache``)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_finetune.data.image_cache import build_image_cache, cache_folder
from hf_finetune.data.stream_dataset import rank_stream
from hf_finetune.data.transforms import collate_images, make_batch_transform, split_normalize
from hf_finetune.models.heads import head_parameter_names
from hf_finetune.training.feature_cache import CACHE_DIR as FEATURE_CACHE_DIR
from hf_finetune.training.feature_cache import (
    HeadOnlyModel,
    build_feature_cache,
    collate_features,
    decide_feature_cache,
    feature_head,
)
from hf_finetune.training.regularization import feature_cache_wanted

__all__ = ["TrainingInputs", "training_inputs"]

logger = logging.getLogger("hf_finetune")


@dataclass
class TrainingInputs:
    """What the Trainer trains: the model (or the head alone, on cached features), its datasets and collator."""

    model: Any
    train_dataset: Any
    eval_dataset: Any
    collator: Any
    head_names: list[str] | None = None
    feature_cache: Any = None
    image_cache: Any = None
    pixel_normalizer: Any = None  # uint8 batches -> normalised float on the device (normalize_on_device)


def training_inputs(
    model, data, data_args, training_args, freeze, data_config, train_transform, eval_transform, channels_last
) -> TrainingInputs:
    """Images transformed on the fly (the default), images decoded once (``cache_images``), or the frozen body's
    features computed once and the head trained alone (``feature_cache``)."""

    splits = {"train": data.dataset["train"], "validation": data.dataset["validation"]}
    if getattr(data, "streaming", False):
        return _streamed(model, data, training_args, train_transform, eval_transform, channels_last)
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
        return _cached_features(model, splits, training_args, eval_transform, channels_last)
    # NHWC batches from the loader pay off on a CPU; on a GPU the first convolution takes NCHW input as it is.
    collator = functools.partial(
        collate_images, channels_last=channels_last and training_args.device.type == "cpu"
    )
    train_transform, eval_transform, normalizer = _uint8_transforms(
        training_args, train_transform, eval_transform
    )
    image_cache = (
        _image_cache(splits, data_config, data_args, training_args, train_transform, eval_transform)
        if training_args.cache_images
        else None
    )
    if image_cache is not None:  # None: the disk lacked the space (logged); images are decoded on the fly
        return TrainingInputs(
            model,
            image_cache.train,
            image_cache.validation,
            collator,
            image_cache=image_cache,
            pixel_normalizer=normalizer,
        )
    return TrainingInputs(
        model,
        splits["train"].with_transform(make_batch_transform(train_transform)),
        splits["validation"].with_transform(make_batch_transform(eval_transform)),
        collator,
        pixel_normalizer=normalizer,
    )


def _streamed(model, data, training_args, train_transform, eval_transform, channels_last) -> TrainingInputs:
    """``streaming``: this rank's stream, decoded and transformed in threads as it is read
    (:mod:`hf_finetune.data.stream_dataset`); validation map-style, as always. No feature or image cache: both
    need a pass over the data first."""
    collator = functools.partial(
        collate_images, channels_last=channels_last and training_args.device.type == "cpu"
    )
    train_transform, eval_transform, normalizer = _uint8_transforms(
        training_args, train_transform, eval_transform
    )
    threads = max(0, int(training_args.dataloader_num_workers or 0))
    logger.info(
        "streaming: %s per epoch on this process, decoded in %d thread%s; no feature or image cache",
        "unknown examples" if data.rank_size is None else f"{data.rank_size} examples",
        threads,
        "s" if threads != 1 else "",
    )
    train = rank_stream(
        data.dataset["train"],
        make_batch_transform(
            train_transform, repeat_failed_batch=False
        ),  # the stream decides per training batch
        training_args.per_device_train_batch_size,
        threads,
        data.rank_size,
        data.train,
    )
    return TrainingInputs(
        model,
        train,
        data.dataset["validation"].with_transform(make_batch_transform(eval_transform)),
        collator,
        pixel_normalizer=normalizer,
    )


def _cached_features(model, splits, training_args, eval_transform, channels_last: bool) -> TrainingInputs:
    """``feature_cache``: the frozen body's features of both splits computed once; the head trains alone."""

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
    return TrainingInputs(
        model=head_model,
        train_dataset=cache.datasets["train"],
        eval_dataset=cache.datasets["validation"],
        collator=collate_features,
        head_names=[n for n, _ in head_model.named_parameters()],
        feature_cache=cache,
    )


def _image_cache(splits, data_config, data_args, training_args, train_transform, eval_transform):
    """``cache_images``: both splits decoded and resized once, memory-mapped (one cache per process)."""

    image_cache = build_image_cache(
        splits,
        data_config,
        data_args.augmentation,
        data_args.crop_scale_min,
        data_args.hflip_prob,
        train_transform,
        eval_transform,
        cache_folder(
            training_args.output_dir,
            getattr(training_args, "image_cache_dir", None),
            training_args.process_index,
        ),
    )
    if image_cache is None:
        return None
    logger.info(
        "cache_images: %d + %d images decoded and resized once in %.1f s (%.0f MiB, memory-mapped)",
        len(image_cache.train),
        len(image_cache.validation),
        image_cache.seconds,
        image_cache.nbytes / 2**20,
    )
    return image_cache


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
