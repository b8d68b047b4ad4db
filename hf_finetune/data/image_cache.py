"""``cache_images``: decode and resize every image once, into memory-mapped Arrow files.

Each epoch otherwise decodes every file again and resizes it from its full size. With the cache, one pass
(before training) writes 8-bit RGB pixels to ``output_dir/.image-cache/<split>.arrow`` with ``datasets``
(batch by batch: memory stays flat, and the files are memory-mapped, never loaded whole):

* validation, and training with ``augmentation: flip`` or ``none``: the deterministic part of the
  validation transform (resize, centre crop) is done once; what is left per epoch is ``ToTensor`` and
  ``Normalize`` (plus the flip). The validation tensors are bit for bit those of the uncached path.
* training with ``rrc_flip``: the image is kept as decoded when its short side is at most
  ``train_side_limit`` (the size below which random-resized-crop's smallest crop would have to be upsampled
  for the model's input); larger images are downscaled to that side once. Random-resized-crop then runs
  on it every epoch as before; for images within the limit the result is bit for bit the uncached one.

An image that fails to decode is left out of the cache (logged and reported as
:func:`hf_finetune.data.image_check.record_decode_failure` says; under ``strict: true`` it is an error).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torchvision.transforms as T
from PIL import Image
from timm.data.transforms import str_to_pil_interp

from hf_finetune.data.image_check import BadImageError, record_decode_failure
from hf_finetune.data.transforms import ToUint8Tensor, as_rgb
from hf_finetune.errors import DataError

__all__ = ["CACHE_DIR", "ImageCache", "split_transform", "train_side_limit", "build_image_cache"]

CACHE_DIR = ".image-cache"


def split_transform(transform) -> tuple[Callable, Callable]:
    """``(prepare, finish)`` of a torchvision ``Compose``: the PIL steps before ``ToTensor`` (or
    :class:`~hf_finetune.data.transforms.ToUint8Tensor`), and the rest."""

    def makes_tensor(step) -> bool:  # torchvision's and timm's ToTensor kinds by name, as before; and ours
        return isinstance(step, ToUint8Tensor) or "ToTensor" in type(step).__name__

    steps = list(getattr(transform, "transforms", []))
    index = next((i for i, step in enumerate(steps) if makes_tensor(step)), None)
    if index is None:
        raise ValueError(f"no ToTensor step in {transform}; cannot split it for the image cache")
    return T.Compose(steps[:index]), T.Compose(steps[index:])


def train_side_limit(input_side: int, crop_scale_min: float) -> int:
    """The short side beyond which an image has more pixels than random-resized-crop can use: its smallest
    crop (area ``crop_scale_min``, aspect 3/4) still spans ``input_side`` pixels."""
    return math.ceil(input_side / math.sqrt(crop_scale_min * 0.75))


def _downscale(limit: int, interpolation: str | None) -> Callable:

    resample = str_to_pil_interp(interpolation or "bicubic")

    def apply(image):
        width, height = image.size
        short = min(width, height)
        if short <= limit:
            return image
        scale = limit / short
        return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), resample)

    return apply


@dataclass
class ImageCache:
    """The cached splits, the transforms that finish them per epoch, and what making them cost."""

    train: Any
    validation: Any
    train_transform: Callable
    eval_transform: Callable
    folder: Path
    seconds: float
    nbytes: int

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.folder.parent.name == CACHE_DIR and not any(self.folder.parent.iterdir()):
            self.folder.parent.rmdir()  # the last rank's folder gone: the cache folder goes too


def _cache_split(dataset, prepare: Callable, path: Path, desc: str):

    def encode(batch):
        out: dict[str, list] = {"pixels": [], "height": [], "width": [], "label": []}
        for image, label in zip(batch["image"], batch["label"], strict=True):
            try:
                rgb = as_rgb(image)
            except BadImageError as err:  # left out of the cache: skipped for the whole run
                record_decode_failure(err)
                continue
            array = np.asarray(prepare(rgb), dtype=np.uint8)
            out["pixels"].append(array.tobytes())
            out["height"].append(array.shape[0])
            out["width"].append(array.shape[1])
            out["label"].append(label)
        return out

    features = datasets.Features(
        {
            "pixels": datasets.Value("binary"),
            "height": datasets.Value("int32"),
            "width": datasets.Value("int32"),
            "label": dataset.features["label"],
        }
    )
    cached = dataset.map(
        encode,
        batched=True,
        batch_size=64,
        writer_batch_size=64,
        remove_columns=list(dataset.column_names),
        features=features,
        cache_file_name=str(path),
        load_from_cache_file=False,
        desc=desc,
    )
    if len(cached) == 0 and len(dataset) > 0:
        raise DataError(f"cache_images: not one of the {len(dataset)} images could be decoded ({desc})")
    return cached


def cached_batch_transform(finish: Callable) -> Callable:
    """A ``with_transform`` function for a cached split: raw pixels -> PIL -> ``finish`` -> ``pixel_values``."""

    def apply(batch: dict[str, list]) -> dict[str, list]:
        pixel_values = [
            finish(Image.frombuffer("RGB", (int(w), int(h)), bytes(pixels), "raw", "RGB", 0, 1))
            for pixels, h, w in zip(batch["pixels"], batch["height"], batch["width"], strict=True)
        ]
        out = {"pixel_values": pixel_values}
        if "label" in batch:
            out["labels"] = batch["label"]
        return out

    return apply


def build_image_cache(
    splits: dict[str, Any],
    data_config: dict[str, Any],
    augmentation: str,
    crop_scale_min: float,
    hflip_prob: float,
    train_transform,
    eval_transform,
    folder: str | Path,
) -> ImageCache:
    """Cache ``splits["train"]`` and ``splits["validation"]`` (image datasets) under ``folder``."""

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    eval_prepare, eval_finish = split_transform(eval_transform)
    if augmentation == "rrc_flip":
        side = int(data_config["input_size"][-1])
        train_prepare = _downscale(train_side_limit(side, crop_scale_min), data_config.get("interpolation"))
        train_finish = train_transform
    else:
        train_prepare = eval_prepare
        train_finish = (
            T.Compose([T.RandomHorizontalFlip(hflip_prob), eval_finish])
            if augmentation == "flip"
            else eval_finish
        )
    train = _cache_split(splits["train"], train_prepare, folder / "train.arrow", "caching training images")
    validation = _cache_split(
        splits["validation"], eval_prepare, folder / "validation.arrow", "caching validation images"
    )
    nbytes = sum(p.stat().st_size for p in folder.glob("*.arrow"))
    return ImageCache(
        train=train.with_transform(cached_batch_transform(train_finish)),
        validation=validation.with_transform(cached_batch_transform(eval_finish)),
        train_transform=train_finish,
        eval_transform=eval_finish,
        folder=folder,
        seconds=time.perf_counter() - start,
        nbytes=nbytes,
    )
