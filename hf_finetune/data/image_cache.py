"""``cache_images``: decode and resize every image once, into memory-mapped Arrow files.

Each epoch otherwise decodes every file again and resizes it from its full size. With the cache, one pass
(before training) writes 8-bit RGB pixels to ``<split>.arrow`` files with ``datasets`` (batch by batch: memory
stays flat, and the files are memory-mapped, never loaded whole), one folder per process
(:func:`cache_folder`): ``output_dir/.image-cache/rank<i>``, or under ``image_cache_dir`` when that key is set;
removed at the end of the run (:meth:`ImageCache.remove`), and when the run fails:

* validation, and training with ``augmentation: flip`` or ``none``: the deterministic part of the
  validation transform (resize, centre crop) is done once; what is left per epoch is ``ToTensor`` and
  ``Normalize`` (plus the flip). The validation tensors are bit for bit those of the uncached path.
* training with ``rrc_flip``: the image is kept as decoded when its short side is at most
  ``train_side_limit`` (the size below which random-resized-crop's smallest crop would have to be upsampled
  for the model's input); larger images are downscaled to that side once. Random-resized-crop then runs
  on it every epoch as before; for images within the limit the result is bit for bit the uncached one.

Before anything is written, the free space where the cache goes is checked against an estimate of the decoded
size (:func:`estimate_cache_bytes`) with a margin (:func:`cache_fits`); when it is short, no cache is made, one
log line says why, and the run decodes images on the fly.

An image that fails to decode is left out of the cache (logged and reported as
:func:`hf_finetune.data.image_check.record_decode_failure` says; under ``strict: true`` it is an error).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
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

__all__ = [
    "CACHE_DIR",
    "ImageCache",
    "split_transform",
    "train_side_limit",
    "cache_root",
    "cache_folder",
    "estimate_cache_bytes",
    "cache_fits",
    "build_image_cache",
]

CACHE_DIR = ".image-cache"
SPACE_MARGIN = 1.25  # the estimate times this, plus SPACE_RESERVE, must be free
SPACE_RESERVE = 256 * 2**20  # bytes left free on the disk beyond the cache
ROW_OVERHEAD = 64  # Arrow bytes per cached row beyond its pixels (offsets, height, width, label)
HEADER_SAMPLE = 64  # images whose header is read to estimate the training split's kept size (rrc_flip)

logger = logging.getLogger("hf_finetune")


def cache_root(output_dir: str | Path, image_cache_dir: str | Path | None) -> Path:
    """The folder that holds every process's cache of one run: ``output_dir/.image-cache`` by default; with
    ``image_cache_dir``, ``image_cache_dir/.image-cache-<hash of the output folder>`` (two runs that share the
    location do not share a cache). The run removes it at its end and when it fails."""
    if image_cache_dir is None or str(image_cache_dir) == "":
        return Path(output_dir) / CACHE_DIR
    tag = hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:10]
    return Path(image_cache_dir) / f"{CACHE_DIR}-{tag}"


def cache_folder(output_dir: str | Path, image_cache_dir: str | Path | None, process_index: int) -> Path:
    """One process's cache folder: ``<cache_root>/rank<process_index>``."""
    return cache_root(output_dir, image_cache_dir) / f"rank{process_index}"


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
        parent = self.folder.parent
        if parent.name.startswith(CACHE_DIR) and parent.is_dir() and not any(parent.iterdir()):
            with contextlib.suppress(OSError):  # another rank may remove it first
                parent.rmdir()  # the last rank's folder gone: the cache folder goes too


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


def _header_size(value: Any) -> tuple[int, int] | None:
    """``(width, height)`` from an image's header (a path, ``{"path", "bytes"}`` or a PIL image); None when it
    cannot be read (the decoder reports such files when it meets them)."""
    if isinstance(value, Image.Image):
        return value.size
    try:
        if isinstance(value, dict):
            source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value.get("path")
        else:
            source = value
        with Image.open(source) as opened:
            return opened.size
    except Exception:  # noqa: BLE001 - an unreadable file only leaves the sample
        return None


def _kept_bytes(dataset, limit: int) -> float:
    """Mean bytes of an image kept at most ``limit`` pixels on its short side (rrc_flip's training cache), from
    the headers of up to HEADER_SAMPLE images spread over the split."""
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), HEADER_SAMPLE)).round().astype(int))
    sizes = [_header_size(dataset[int(i)]["image"]) for i in picks]
    kept = []
    for width, height in (s for s in sizes if s is not None):
        scale = min(1.0, limit / max(1, min(width, height)))
        kept.append(3 * max(1, round(width * scale)) * max(1, round(height * scale)))
    return sum(kept) / len(kept) if kept else 3.0 * limit * limit


def estimate_cache_bytes(
    splits: dict[str, Any], data_config: dict[str, Any], augmentation: str, crop_scale_min: float
) -> int:
    """Bytes the cache of ``splits["train"]`` and ``splits["validation"]`` will take: the validation crop
    (``input_size``) per image, and for training the same, or with ``rrc_flip`` the image kept no larger than
    :func:`train_side_limit` (mean over a sample of headers); plus ROW_OVERHEAD per row."""
    _, height, width = (int(v) for v in data_config["input_size"])
    crop = 3 * height * width
    total = 0.0
    for name in ("train", "validation"):
        dataset = splits[name]
        if len(dataset) == 0:
            continue
        per_image = crop
        if name == "train" and augmentation == "rrc_flip":
            per_image = _kept_bytes(dataset, train_side_limit(width, crop_scale_min))
        total += len(dataset) * (per_image + ROW_OVERHEAD)
    return int(total)


def _existing(folder: Path) -> Path:
    """The folder, or its nearest ancestor that exists (where the cache's disk can be asked)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def cache_fits(estimate: int, folder: str | Path, copies: int | None = None) -> bool:
    """Whether ``copies`` caches of ``estimate`` bytes (unset: one per process of this machine, the launcher's
    ``LOCAL_WORLD_SIZE``) fit on the disk that holds ``folder``, with a margin (SPACE_MARGIN times, plus
    SPACE_RESERVE left free); when they do not, one log line says so (needed, free, where) and that images are
    decoded on the fly."""
    if copies is None:
        copies = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    where = _existing(Path(folder).absolute())
    free = shutil.disk_usage(where).free
    needed = int(estimate * max(1, copies) * SPACE_MARGIN) + SPACE_RESERVE
    if needed <= free:
        return True
    logger.warning(
        "cache_images: not enough free space, images are decoded on the fly instead: the decoded copy needs "
        "about %.1f MiB (%.1f MiB estimated x %d process(es), +%d%%, +%d MiB kept free) and %s has %.1f MiB free "
        "(image_cache_dir puts the cache elsewhere)",
        needed / 2**20,
        estimate / 2**20,
        max(1, copies),
        round((SPACE_MARGIN - 1) * 100),
        SPACE_RESERVE // 2**20,
        where,
        free / 2**20,
    )
    return False


def build_image_cache(
    splits: dict[str, Any],
    data_config: dict[str, Any],
    augmentation: str,
    crop_scale_min: float,
    hflip_prob: float,
    train_transform,
    eval_transform,
    folder: str | Path,
    copies: int | None = None,
) -> ImageCache | None:
    """Cache ``splits["train"]`` and ``splits["validation"]`` (image datasets) under ``folder``; None, with
    nothing written, when the disk there lacks the space (:func:`cache_fits`; ``copies``: the processes of this
    machine that each write a cache there)."""

    folder = Path(folder)
    estimate = estimate_cache_bytes(splits, data_config, augmentation, crop_scale_min)
    if not cache_fits(estimate, folder, copies):
        return None
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
