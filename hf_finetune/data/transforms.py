"""Image preprocessing taken from the checkpoint, and training augmentation.

The checkpoint decides the preprocessing: timm checkpoints through their data config
(``TimmWrapperImageProcessor.data_config``: input size, crop_pct, interpolation, mean/std), transformers
checkpoints through their image processor (size / crop_size / crop_pct, resample, image_mean/std), which is
translated into the same data-config form. Both are then built by timm's ``create_transform``, so the
evaluation transform is: resize the short side to ``size / crop_pct``, centre-crop ``size``, normalise.

Images are decoded by the batch transform (:func:`make_batch_transform`), through
:func:`hf_finetune.data.image_check.open_image`; a file that fails there is skipped, not fatal (see
:func:`make_batch_transform` and :func:`collate_images`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from timm.data import create_transform

from hf_finetune.data.image_check import BadImageError, open_image, record_decode_failure
from hf_finetune.errors import DataError

__all__ = [
    "data_config_from_processor",
    "build_transforms",
    "make_batch_transform",
    "as_rgb",
    "collate_images",
    "label_tensor",
    "apply_image_size",
    "EnlargeTiny",
    "FlipChannelOrder",
    "FloorCenterCrop",
    "ToUint8Tensor",
    "PixelNormalizer",
    "split_normalize",
]

_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _size_value(size: Any, *keys: str) -> int | None:
    if size is None:
        return None
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        for key in keys:
            if size.get(key):
                return int(size[key])
    for key in keys:
        value = getattr(size, key, None)
        if value:
            return int(value)
    return None


def _rescaled_normalisation(processor: Any) -> tuple[tuple, tuple]:
    """``(mean, std)`` that turn ``pixel / 255`` into what ``processor`` gives: its rescale factor and offset
    (EfficientNet's ``rescale_offset``: ``pixel * factor - 1``), its mean/std and EfficientNet's ``include_top``
    (a second division by the std) are all one affine map per channel, ``(pixel / 255 - mean) / std``."""
    scale = 255.0 * float(getattr(processor, "rescale_factor", 1 / 255) or 1 / 255)
    if getattr(processor, "do_rescale", True) is False:
        scale = 255.0
    offset = 1.0 if getattr(processor, "rescale_offset", False) else 0.0
    if getattr(processor, "do_normalize", True):
        mean = [float(v) for v in (getattr(processor, "image_mean", None) or IMAGENET_MEAN)]
        std = [float(v) for v in (getattr(processor, "image_std", None) or IMAGENET_STD)]
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    if len(mean) == 1:
        mean = mean * 3
    if len(std) == 1:
        std = std * 3
    if getattr(processor, "include_top", False):  # EfficientNet: normalised again by the std alone
        std = [s * s for s in std]
    return tuple((m + offset) / scale for m in mean), tuple(s / scale for s in std)


def _geometry(processor: Any) -> tuple[tuple[int, int], float, str]:
    """``((height, width), crop_pct, crop_mode)`` of a transformers image processor, in timm's terms:
    ``center`` resizes the short side to ``side / crop_pct`` then centre-crops, ``squash`` resizes straight to
    ``(height, width) / crop_pct`` (aspect ratio not kept) then centre-crops."""
    size = getattr(processor, "size", None)
    crop = getattr(processor, "crop_size", None)
    do_crop = bool(getattr(processor, "do_center_crop", False)) and crop is not None
    shortest = _size_value(size, "shortest_edge")
    height, width = _size_value(size, "height"), _size_value(size, "width")
    crop_hw = (_size_value(crop, "height"), _size_value(crop, "width")) if do_crop else (None, None)
    if shortest and type(processor).__name__.startswith(
        "Levit"
    ):  # LeViT resizes to shortest_edge * 256 / 224
        shortest = int((256 / 224) * shortest)
    if crop_hw[0] and shortest:  # short side, then centre crop (MobileNet, CLIP, DINOv2, LeViT, MobileViT)
        crop_pct = _exact_crop_pct(crop_hw[0], crop_hw[0] / shortest, shortest)
        return (crop_hw[0], crop_hw[1] or crop_hw[0]), crop_pct, "center"
    if crop_hw[0] and height:  # straight resize, then centre crop (DeiT, BEiT with its crop)
        crop_pct = _exact_crop_pct(crop_hw[0], crop_hw[0] / height, height)
        return (crop_hw[0], crop_hw[1] or crop_hw[0]), crop_pct, "squash"
    if shortest:  # ConvNeXt-style: shortest_edge is the output size; below 384 through crop_pct
        if shortest < 384 and getattr(processor, "crop_pct", None):
            return (shortest, shortest), float(processor.crop_pct), "center"
        if hasattr(processor, "crop_pct"):  # ConvNeXt at 384 and above: a straight resize
            return (shortest, shortest), 1.0, "squash"
        return (shortest, shortest), 1.0, "center"
    if height:  # ViT-style: resize straight to height x width, no crop
        return (height, width or height), 1.0, "squash"
    return (224, 224), 0.875, "center"


def _exact_crop_pct(side: int, crop_pct: float, resized: int) -> float:
    """``crop_pct`` such that timm's ``floor(side / crop_pct)`` is ``resized`` (not one pixel less)."""
    while math.floor(side / crop_pct) < resized:
        crop_pct = math.nextafter(crop_pct, 0.0)
    return crop_pct


def data_config_from_processor(processor: Any, image_size: int | None = None) -> dict[str, Any]:
    """A timm-style data config (``input_size``, ``crop_pct``, ``crop_mode``, ``interpolation``, ``mean``,
    ``std``, and ``channel_order`` ``"bgr"`` for MobileViT) that :func:`build_transforms` turns into the
    pixels the processor gives."""
    if hasattr(processor, "data_config") and isinstance(processor.data_config, dict):
        config = dict(processor.data_config)
        config["input_size"] = tuple(config.get("input_size", (3, 224, 224)))
    else:
        (height, width), crop_pct, crop_mode = _geometry(processor)
        resample = getattr(processor, "resample", 2)
        resample = int(resample) if resample is not None else 2
        mean, std = _rescaled_normalisation(processor)
        config = {
            "input_size": (3, height, width),
            "crop_pct": crop_pct,
            "crop_mode": crop_mode,
            "interpolation": _PIL_RESAMPLE.get(resample, "bilinear"),
            "mean": mean,
            "std": std,
        }
        if getattr(processor, "do_flip_channel_order", False):
            config["channel_order"] = "bgr"
        if crop_mode == "center" or crop_pct < 1.0:
            config["crop_rounding"] = "floor"  # transformers' centre crop offset: floor, not round
    if image_size is not None:
        config["input_size"] = (3, int(image_size), int(image_size))
    return config


def _img_size(input_size) -> int | tuple[int, int]:
    height, width = int(input_size[-2]), int(input_size[-1])
    return height if height == width else (height, width)


def build_transforms(
    data_config: dict[str, Any],
    augmentation: str = "rrc_flip",
    crop_scale_min: float = 0.6,
    hflip_prob: float = 0.5,
    auto_augment: str | None = None,
    random_erasing: float = 0.0,
    color_jitter: float = 0.0,
) -> tuple[Callable, Callable]:
    """(train transform, eval transform) for PIL images, both ending in a normalised CHW float tensor.

    Both are timm's ``create_transform`` of the same size, interpolation and normalisation (with
    :class:`FlipChannelOrder` before the tensor for a BGR checkpoint); ``auto_augment`` (a timm policy
    string), ``random_erasing`` (its probability) and ``color_jitter`` go to timm's training transform of
    ``rrc_flip``."""

    common = {
        "input_size": _img_size(data_config["input_size"]),
        "interpolation": data_config.get("interpolation", "bilinear"),
        "mean": tuple(data_config["mean"]),
        "std": tuple(data_config["std"]),
    }
    eval_transform = create_transform(
        **common,
        is_training=False,
        crop_pct=data_config.get("crop_pct"),
        crop_mode=data_config.get("crop_mode"),
    )
    if data_config.get("crop_rounding") == "floor":
        eval_transform = T.Compose([_floor_crop(step) for step in _flat_steps(eval_transform)])
    bgr = data_config.get("channel_order") == "bgr"
    if augmentation == "none":
        train_transform = eval_transform
    elif augmentation == "flip":
        train_transform = T.Compose([T.RandomHorizontalFlip(hflip_prob), eval_transform])
    else:
        train_transform = create_transform(
            **common,
            is_training=True,
            scale=(crop_scale_min, 1.0),
            hflip=hflip_prob,
            color_jitter=float(color_jitter) or None,  # 0: no ColorJitter step at all
            auto_augment=auto_augment or None,
            re_prob=float(random_erasing),
        )
        train_transform = T.Compose([EnlargeTiny.for_crop_scale(crop_scale_min), *train_transform.transforms])
    if bgr:
        eval_transform = _with_bgr(eval_transform)
        train_transform = eval_transform if augmentation == "none" else _with_bgr(train_transform)
    return train_transform, eval_transform


def _with_bgr(transform) -> T.Compose:
    """``transform`` with :class:`FlipChannelOrder` inserted before its conversion to a tensor."""
    steps = _flat_steps(transform)
    at = next(
        (i for i, step in enumerate(steps) if isinstance(step, (T.ToTensor, T.PILToTensor, ToUint8Tensor))),
        len(steps),
    )
    return T.Compose([*steps[:at], FlipChannelOrder(), *steps[at:]])


def _floor_crop(step):
    return FloorCenterCrop(step.size) if type(step) is T.CenterCrop else step


class FloorCenterCrop(T.CenterCrop):
    """``CenterCrop`` whose offsets are ``floor((side - crop) / 2)``, as transformers' image processors
    crop (torchvision rounds half to even, one pixel further for an odd margin)."""

    def forward(self, image):
        width, height = image.size if isinstance(image, Image.Image) else (image.shape[-1], image.shape[-2])
        crop_height, crop_width = self.size
        if crop_height > height or crop_width > width:
            return super().forward(image)
        top, left = (height - crop_height) // 2, (width - crop_width) // 2
        return T.functional.crop(image, top, left, crop_height, crop_width)


class FlipChannelOrder:
    """An RGB PIL image with its channels in BGR order (MobileViT's ``do_flip_channel_order``), still a PIL
    image, so the uint8 split (:func:`split_normalize`) keeps working."""

    def __call__(self, image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        red, green, blue = image.split()
        return Image.merge("RGB", (blue, green, red))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EnlargeTiny:
    """Enlarge an image of fewer than ``min_area`` pixels by a whole factor (nearest neighbour: each pixel
    becomes a block), leaving others as they are.

    Random-resized-crop rounds its crop's sides, so on an image of a few pixels (1 x 1, 2 x 2) its smallest
    crops are 0 pixels wide, and the resize of that empty crop is black. Enlarged to
    :meth:`for_crop_scale`'s area, every crop it can draw is at least 1 x 1."""

    def __init__(self, min_area: int):
        self.min_area = int(min_area)

    @classmethod
    def for_crop_scale(cls, crop_scale_min: float, min_ratio: float = 3 / 4) -> EnlargeTiny:
        """The area at which random-resized-crop's smallest crop (``crop_scale_min`` of the area, aspect
        ``min_ratio`` to ``1 / min_ratio``) still has sides of at least 1 pixel."""

        return cls(math.ceil(1.0 / (crop_scale_min * min_ratio)))

    def __call__(self, image):

        width, height = image.size
        if width * height >= self.min_area:
            return image
        factor = math.ceil(math.sqrt(self.min_area / max(1, width * height)))
        return image.resize((width * factor, height * factor), Image.Resampling.NEAREST)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_area={self.min_area})"


class ToUint8Tensor:
    """An 8-bit PIL image (``RGB`` or ``L``) as a ``uint8`` CHW tensor: ``ToTensor`` without the conversion to
    float, a quarter of the bytes to stack, hand between processes, pin and copy to the device."""

    def __call__(self, image):

        if image.mode not in ("RGB", "L"):
            raise ValueError(f"ToUint8Tensor: got a {image.mode!r} image; expected an 8-bit RGB or L image")
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        if tensor.ndim == 2:
            tensor = tensor.unsqueeze(-1)
        return tensor.permute(2, 0, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PixelNormalizer:
    """``uint8`` batches (N, C, H, W) to the float32 tensors ``ToTensor`` + ``Normalize`` make of each image,
    bit for bit: the same operations in the same order (to float32, divide by 255, subtract the mean, divide
    by the std), on a whole batch on the device it trains on. The memory format of the batch is kept
    (channels_last stays channels_last). Tensors that are not ``uint8`` pass through unchanged."""

    def __init__(self, mean, std):

        self.mean = torch.as_tensor(mean, dtype=torch.float32).flatten().clone()
        self.std = torch.as_tensor(std, dtype=torch.float32).flatten().clone()
        if bool((self.std == 0).any()):
            raise ValueError(f"PixelNormalizer: std {self.std.tolist()} has a zero; it divides by it")
        self._on: dict[Any, tuple[Any, Any]] = {}

    def __call__(self, pixels):

        if pixels.dtype != torch.uint8:
            return pixels
        if pixels.device not in self._on:
            self._on[pixels.device] = (
                self.mean.to(pixels.device).view(1, -1, 1, 1),
                self.std.to(pixels.device).view(1, -1, 1, 1),
            )
        mean, std = self._on[pixels.device]
        return pixels.to(torch.float32).div_(255).sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean.tolist()}, std={self.std.tolist()})"


def _flat_steps(transform) -> list:
    steps = getattr(transform, "transforms", None)
    if steps is None or not isinstance(steps, (list, tuple)):
        return [transform]
    return [step for inner in steps for step in _flat_steps(inner)]


def split_normalize(transform) -> tuple[Callable, PixelNormalizer] | None:
    """``(uint8 transform, normalizer)`` for a PIL transform ending in ``ToTensor`` + ``Normalize`` (what
    :func:`build_transforms` makes): the steps before ``ToTensor``, then :class:`ToUint8Tensor`; and the
    :class:`PixelNormalizer` that finishes its batches where they train. ``None`` for any other transform
    (it keeps normalising per image)."""

    steps = _flat_steps(transform)
    if len(steps) < 2:
        return None
    to_tensor, normalize = steps[-2], steps[-1]
    if not (isinstance(to_tensor, T.ToTensor) and type(normalize) is T.Normalize):
        return None
    if any(isinstance(step, (T.ToTensor, T.PILToTensor, ToUint8Tensor)) for step in steps[:-2]):
        return None
    return T.Compose([*steps[:-2], ToUint8Tensor()]), PixelNormalizer(normalize.mean, normalize.std)


def as_rgb(image: Any):
    """An RGB PIL image from what an ``image`` column holds: a path, a PIL image or an undecoded
    ``datasets.Image`` value (``{"path": ..., "bytes": ...}``). A file that cannot be used raises
    :class:`hf_finetune.data.image_check.BadImageError` (a ``DataError``) naming it."""

    return open_image(image)


def make_batch_transform(
    transform: Callable,
    image_column: str = "image",
    label_column: str = "label",
    repeat_failed_batch: bool = True,
) -> Callable:
    """A ``Dataset.with_transform`` function: images (paths or PIL) -> ``pixel_values``, labels -> ``labels``.

    An image that fails to decode is skipped: it is logged and reported
    (:func:`hf_finetune.data.image_check.record_decode_failure`; under ``strict: true`` that raises instead),
    and its ``pixel_values`` are taken from the last good image this transform made (with that image's
    label) when the whole batch failed (unless ``repeat_failed_batch`` is False: a caller that transforms parts
    of a training batch decides for the whole batch), else ``None``, which :func:`collate_images` drops."""

    last_good: list[tuple[Any, Any]] = []  # (pixel values, label) of the last image decoded

    def apply(batch: dict[str, list]) -> dict[str, list]:
        images = batch[image_column]
        labels = list(batch[label_column]) if label_column in batch else None
        pixel_values: list[Any] = []
        for image in images:
            try:
                rgb = as_rgb(image)
            except BadImageError as err:
                record_decode_failure(err)
                pixel_values.append(None)
                continue
            pixel_values.append(transform(rgb))
        good = [i for i, value in enumerate(pixel_values) if value is not None]
        if good:
            last = good[-1]
            last_good[:] = [(pixel_values[last], labels[last] if labels is not None else None)]
        elif (
            repeat_failed_batch and last_good and pixel_values
        ):  # nothing left in this batch: repeat a good image
            value, label = last_good[0]
            pixel_values = [value] * len(pixel_values)
            if labels is not None:
                labels = [label] * len(labels)
        out = {"pixel_values": pixel_values}
        if labels is not None:
            out["labels"] = labels
        return out

    return apply


def collate_images(examples: list[dict], channels_last: bool = False) -> dict[str, Any]:
    """Stack ``pixel_values`` and ``labels`` into a batch for the model (NHWC in memory if ``channels_last``).

    Examples whose image failed to decode (``pixel_values`` ``None``, see :func:`make_batch_transform`) are
    left out; a batch of nothing but such examples is a ``DataError`` naming the cause."""

    kept = [e for e in examples if e.get("pixel_values") is not None]
    if not kept:
        raise DataError(
            f"every image of a batch of {len(examples)} failed to decode and no good image was seen before "
            "it to stand in; see the skipped images logged above"
        )
    examples = kept
    pixel_values = torch.stack([e["pixel_values"] for e in examples])
    if channels_last and pixel_values.ndim == 4:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    batch = {"pixel_values": pixel_values}
    if "labels" in examples[0]:
        batch["labels"] = label_tensor([e["labels"] for e in examples])
    return batch


def label_tensor(labels: list) -> torch.Tensor:
    """A batch's labels as the model takes them: class ids (``long``), or multi-hot rows of a multi-label split
    (``float32``, :mod:`hf_finetune.data.multi_label`)."""
    if labels and isinstance(labels[0], (list, tuple, np.ndarray, torch.Tensor)):
        return torch.as_tensor(np.asarray(labels, dtype=np.float32))
    return torch.tensor([int(label) for label in labels], dtype=torch.long)


def apply_image_size(processor: Any, model_config: Any, image_size: int | None) -> None:
    """Record a training size that differs from the checkpoint's in the processor and config that are saved,
    so ``pipeline()`` and ``timm.create_model`` preprocess the fine-tuned model as it was trained."""
    if image_size is None:
        return
    side = int(image_size)
    if hasattr(processor, "data_config") and isinstance(processor.data_config, dict):
        processor.data_config["input_size"] = (3, side, side)
    else:
        size = getattr(processor, "size", None)
        crop = getattr(processor, "crop_size", None)
        crop_pct = data_config_from_processor(processor)["crop_pct"]
        shortest = _size_value(size, "shortest_edge")
        if crop is not None and getattr(processor, "do_center_crop", False):
            processor.crop_size = {"height": side, "width": side}
            if shortest and type(processor).__name__.startswith(
                "Levit"
            ):  # it scales shortest_edge by 256/224
                processor.size = {
                    "shortest_edge": side * shortest // max(1, _size_value(crop, "height") or side)
                }
            elif shortest:  # timm's resize: floor(side / crop_pct), as training resizes
                processor.size = {"shortest_edge": math.floor(side / crop_pct)}
            else:
                processor.size = {"height": math.floor(side / crop_pct), "width": math.floor(side / crop_pct)}
        elif shortest:
            processor.size = {"shortest_edge": side}
        else:
            processor.size = {"height": side, "width": side}
    pretrained_cfg = getattr(model_config, "pretrained_cfg", None)
    if isinstance(pretrained_cfg, dict):
        pretrained_cfg["input_size"] = [3, side, side]
