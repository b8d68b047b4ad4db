"""``hf-finetune predict EXPORT --onnx``: an ONNX export (:mod:`hf_finetune.export.onnx_export`) run with
onnxruntime, numpy and PIL alone: neither torch nor transformers is imported, no PyTorch model is built.

The preprocessing is the one written beside the graph (resize with PIL's resampling filter, or torchvision's
arithmetic where the image processor runs on transformers' torchvision backend, :mod:`hf_finetune.export.resize`; centre crop with the
processor's offset rounding, ``pixel / 255``, ``(x - mean) / std``), the same arithmetic as the checkpoint's
image processor; the records, skips and warnings are ``predict``'s (:mod:`hf_finetune.inference.predictions`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hf_finetune.data.image_check import BadImageError, open_image, summarize_reasons
from hf_finetune.errors import ConfigError, DataError
from hf_finetune.export.resize import torchvision_resize
from hf_finetune.inference.predictions import (
    apply_scores,
    iter_image_files,
    prediction_record,
    show_progress,
    skip_file,
    usable_files,
)

__all__ = ["EXPORT_CONFIG", "GRAPH_NAME", "OnnxClassifier", "find_export", "predict_onnx", "preprocess_image"]

logger = logging.getLogger("hf_finetune.inference.predict")

GRAPH_NAME = "model.onnx"
EXPORT_CONFIG = "onnx_export.json"
_KEYS = ("graph", "input", "preprocessing", "labels", "scores")


def find_export(path: str | Path, key: str = "MODEL") -> Path:
    """The export folder: ``path`` itself when it holds :data:`EXPORT_CONFIG`, else ``path/onnx`` (where
    ``hf-finetune export`` writes by default); :class:`ConfigError` when neither does."""
    path = Path(path)
    for folder in (path, path / "onnx"):
        if (folder / EXPORT_CONFIG).is_file():
            return folder
    if not path.exists():
        raise ConfigError(
            f"{key}: {path} does not exist; expected an ONNX export folder (hf-finetune export)"
        )
    raise ConfigError(
        f"{key}: {path} holds no ONNX export ({EXPORT_CONFIG} neither there nor in {path / 'onnx'}); "
        f"write one with `hf-finetune export {path} --format onnx`"
    )


def preprocess_image(image: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """``(3, H, W)`` float32: an RGB PIL image resized, centre-cropped and normalised as ``spec`` says (the
    ``preprocessing`` of :data:`EXPORT_CONFIG`)."""
    width, height = image.size
    resize = spec["resize"]
    if "shortest_edge" in resize:  # the short side to this size, the long side int()-truncated in proportion
        short = int(resize["shortest_edge"])
        size = (
            (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
        )
    else:
        size = (int(resize["width"]), int(resize["height"]))
    if spec.get("resize_backend") == "torchvision":  # transformers' torchvision backend: its uint8 arithmetic
        pixels = np.asarray(image, dtype=np.uint8)
        if size != image.size:
            pixels = torchvision_resize(pixels, (size[1], size[0]), str(spec["resample"]))
    else:  # PIL's Image.resize: timm's transforms and transformers' PIL backend
        pixels = np.asarray(
            image.resize(size, Image.Resampling[str(spec["resample"]).upper()])
            if size != image.size
            else image
        )
    crop_h, crop_w = int(spec["crop"]["height"]), int(spec["crop"]["width"])
    if spec.get("crop_offset") == "floor":  # transformers' image processors
        top, left = (size[1] - crop_h) // 2, (size[0] - crop_w) // 2
    else:  # torchvision's CenterCrop (timm): rounded half to even
        top, left = int(round((size[1] - crop_h) / 2.0)), int(round((size[0] - crop_w) / 2.0))
    pixels = pixels[top : top + crop_h, left : left + crop_w].astype(np.float32)
    if spec.get("channel_order") == "bgr":
        pixels = pixels[..., ::-1]
    pixels = pixels / np.float32(1.0 / float(spec["rescale_factor"]))
    mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


class OnnxClassifier:
    """An export folder loaded: its description (``config``), label names, score function, thresholds (multi-label
    models) and an onnxruntime CPU session."""

    def __init__(self, folder: str | Path):
        self.folder = find_export(folder)
        path = self.folder / EXPORT_CONFIG
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: cannot be read as JSON ({err}); export the model again") from None
        missing = [k for k in _KEYS if not isinstance(config, dict) or k not in config]
        if missing:
            raise ConfigError(f"{path}: no {', '.join(missing)}; export the model again")
        graph = self.folder / str(config["graph"])
        if not graph.is_file():
            raise ConfigError(f"{path}: the graph {graph} is missing; export the model again")
        try:
            import onnxruntime
        except ImportError as err:
            raise ConfigError(
                f"predict --onnx needs onnxruntime ({err}); pip install 'hf-finetune[onnx]'"
            ) from None
        self.config = config
        self.labels = [str(label) for label in config["labels"]]
        self.function = str(config["scores"])
        self.thresholds = config.get("thresholds")
        self.session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        self.input_name = str(config["input"].get("name", "pixel_values"))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """``(N, K)`` logits of a ``(N, 3, H, W)`` float32 batch."""
        return self.session.run(None, {self.input_name: batch})[0]

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """``(N, K)`` probabilities (softmax, sigmoid, or the raw values, as the exported model's predict gives)."""
        return apply_scores(self.logits(batch), self.function)


def predict_onnx(
    export: str | Path,
    paths: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 32,
    progress: bool | None = None,
    strict: bool = False,
    classifier: OnnxClassifier | None = None,
) -> list[dict]:
    """:func:`hf_finetune.inference.predict.predict_images` on an ONNX export: the same records (``path``,
    ``labels`` for a multi-label model, ``predictions``), skips and ``strict`` refusals, in file order.
    ``classifier``: an :class:`OnnxClassifier` of ``export`` already loaded."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    files = iter_image_files(paths)
    if not files:
        shown = ", ".join(repr(str(p)) for p in ([paths] if isinstance(paths, (str, Path)) else paths))
        raise DataError(f"no image files found in {shown or 'the given paths'}")
    found = len(files)
    files, bad = usable_files(files, strict)
    classifier = classifier or OnnxClassifier(export)
    spec = classifier.config["preprocessing"]
    top_k = min(top_k, len(classifier.labels))
    bar = None
    if show_progress(progress, len(files)):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="predict", unit="img", file=sys.stderr)
    records: list[dict] = []
    for start in range(0, len(files), batch_size):
        loaded = []
        for file in files[start : start + batch_size]:
            try:
                loaded.append((file, preprocess_image(open_image(file), spec)))
            except BadImageError as err:
                skip_file(file, err.reason, strict, bad)
        if loaded:
            scores = classifier.scores(np.stack([pixels for _, pixels in loaded]))
            records.extend(
                prediction_record(file, row, classifier.labels, classifier.thresholds, top_k)
                for (file, _), row in zip(loaded, scores, strict=True)
            )
        if bar is not None:
            bar.update(len(files[start : start + batch_size]))
    if bar is not None:
        bar.close()
    if bad:
        logger.warning(
            "skipped %d unusable of %d image files (%s)", len(bad), found, summarize_reasons(bad.values())
        )
    logger.info("predicted %d images in %d batches (ONNX)", len(records), math.ceil(len(files) / batch_size))
    return records
