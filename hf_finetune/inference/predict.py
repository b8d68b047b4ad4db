"""Predicting labels for image files with a saved image classifier, the way the transformers
``image-classification`` pipeline does, but batched and tolerant of unreadable files.

Every file first gets training's check (:func:`hf_finetune.data.image_check.check_image_files`: its header
only, never a decode): a file that is not an image, has zero bytes, declares more pixels than PIL allows
or an aspect ratio beyond 50:1 (a 1 x 30,000 px PNG of 84 bytes would be resized to 224 x 6,720,000 px)
is skipped with one warning naming it and why, or, with ``strict``, refused before the model loads.
The others are read with :func:`hf_finetune.data.image_check.open_image`, preprocessed alone by the
checkpoint's image processor (exactly as the pipeline does), and images whose tensors have the same
shape run through the model together. Scores follow the pipeline's default ``function_to_apply``: softmax for
single-label classifiers, sigmoid for multi-label or one-label ones, raw values for regression;
labels are sorted by score (ties keep the lower class index), cut to ``top_k``. A multi-label model's records
also name every class at or above its threshold (``config.label_thresholds``, 0.5 without). ``tta`` averages
the probabilities of several views of each image (:mod:`hf_finetune.inference.tta`).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hf_finetune.data.image_check import BadImageError, open_image, summarize_reasons
from hf_finetune.data.multi_label import MULTI_LABEL_PROBLEM_TYPE
from hf_finetune.data.transforms import data_config_from_processor
from hf_finetune.errors import ConfigError, DataError, ModelLoadError
from hf_finetune.inference.predictions import (  # the torch-free half, shared with predict --onnx
    PROGRESS_MIN_IMAGES,
    iter_image_files,
    prediction_record,
    show_progress,
    skip_file,
    usable_files,
    write_predictions,
)
from hf_finetune.inference.tta import MultiCrop, check_tta, combine_views, expand_views
from hf_finetune.labels.model_labels import distinct_label_names
from hf_finetune.models.loading import load_source_config

__all__ = [
    "PROGRESS_MIN_IMAGES",
    "iter_image_files",
    "load_for_inference",
    "model_thresholds",
    "predict_images",
    "score_function",
    "write_predictions",
]

logger = logging.getLogger(__name__)

_show_progress = show_progress  # the name tests/test_predict.py imports

#: A multi-label class's threshold when the model's config.json has no ``label_thresholds`` entry for it.
DEFAULT_THRESHOLD = 0.5


def load_for_inference(model_name_or_path: str | Path, device: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, image_processor)`` for inference: eval mode, on ``device``.

    ``device`` defaults to ``"cuda"`` when available, else ``"cpu"``. The weights keep the dtype
    they were saved in (transformers' ``dtype="auto"`` default, as the pipeline does).
    """

    source = str(model_name_or_path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    config = load_source_config(source)  # one-line ModelLoadError for non-checkpoints; repairs timm configs
    try:
        model = AutoModelForImageClassification.from_pretrained(
            source, config=config, trust_remote_code=False
        )
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load an image classifier from {source!r}: {exc}") from exc
    model.to(device)
    model.eval()
    return model, processor


def score_function(config: Any) -> str:
    """The pipeline's default ``function_to_apply`` for this model config."""
    problem_type = getattr(config, "problem_type", None)
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    if problem_type == "single_label_classification" or config.num_labels > 1:
        return "softmax"
    return str(getattr(config, "function_to_apply", "none"))


def _forward(model: Any, inputs: list[dict[str, Any]], device: Any, tta: str = "none") -> np.ndarray:
    """Run preprocessed single-image inputs of one shape as one batch; return float32-or-wider logits,
    ``(images * views, K)`` image by image (:func:`hf_finetune.inference.tta.expand_views`)."""

    batch = {key: torch.cat([item[key] for item in inputs], dim=0) for key in inputs[0]}
    batch["pixel_values"] = expand_views(batch["pixel_values"], tta)
    dtype = getattr(model, "dtype", None)
    for key, value in batch.items():
        if torch.is_floating_point(value) and dtype is not None:
            value = value.to(dtype)
        batch[key] = value.to(device)
    with torch.inference_mode():
        logits = model(**batch)["logits"]
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.to(torch.float32)
    return logits.cpu().numpy()


def model_thresholds(config: Any) -> np.ndarray:
    """``(K,)`` float64: each class's threshold on its sigmoid probability, from ``config.label_thresholds``
    (``{class name: threshold}``, written by training for a multi-label model); 0.5 for a class it does not
    name. A value that is not a number in [0, 1] is a :class:`ModelLoadError` naming the class."""
    saved = getattr(config, "label_thresholds", None) or {}
    if not isinstance(saved, dict):
        raise ModelLoadError(
            f"config.json: label_thresholds must be a {{class name: threshold}} mapping, got {saved!r}"
        )
    names = [str(config.id2label[i]) for i in range(int(config.num_labels))]
    thresholds = np.full(len(names), DEFAULT_THRESHOLD, dtype=np.float64)
    for row, name in enumerate(names):
        value = saved.get(name, DEFAULT_THRESHOLD)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ModelLoadError(
                f"config.json: label_thresholds[{name!r}] must be a probability in [0, 1], got {value!r}"
            )
        thresholds[row] = float(value)
    return thresholds


def _shape_key(item: dict[str, Any]) -> tuple:
    """Per-sample tensor shapes: inputs with equal keys can be concatenated into one batch."""
    return tuple((key, tuple(value.shape[1:])) for key, value in sorted(item.items()))


def predict_images(
    model_name_or_path: str | Path,
    paths: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 32,
    device: str | None = None,
    progress: bool | None = None,
    strict: bool = False,
    tta: str = "none",
    loaded: tuple[Any, Any] | None = None,
) -> list[dict]:
    """Predict the ``top_k`` labels of every image under ``paths``. ``loaded``: the ``(model, processor)``
    :func:`load_for_inference` returned for ``model_name_or_path``, kept by a caller that predicts again.

    Returns one record per usable image, in file order: ``{"path": str, "predictions":
    [{"label": str, "score": float}, ...]}`` sorted by score descending. A multi-label model's records
    (``config.problem_type == "multi_label_classification"``: sigmoid scores) also hold ``"labels"``: every
    class whose probability is at least its threshold (:func:`model_thresholds`), highest score first.
    A file training would skip
    (:func:`hf_finetune.data.image_check.check_image_file`, from its header, before any decode) or that fails to
    decode is skipped with one warning naming the file and the reason; their count is logged at the end.
    ``strict``: such a file is a :class:`DataError` naming it instead (the header check runs before the
    model loads).

    ``tta``: test-time augmentation, ``none``, ``hflip`` or ``multicrop`` (:mod:`hf_finetune.inference.tta`):
    the scores are the mean of the views' probabilities.

    ``progress``: a progress bar (images) on stderr: always (True), never (False), or, by default (None),
    for more than :data:`PROGRESS_MIN_IMAGES` images when stderr is a terminal.
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_tta(tta)
    files = iter_image_files(paths)
    if not files:
        shown = ", ".join(repr(str(p)) for p in ([paths] if isinstance(paths, (str, Path)) else paths))
        raise DataError(f"no image files found in {shown or 'the given paths'}")
    found = len(files)
    files, bad = usable_files(files, strict)

    model, processor = loaded if loaded is not None else load_for_inference(model_name_or_path, device)
    config = model.config
    function = score_function(config)
    multi_label = getattr(config, "problem_type", None) == MULTI_LABEL_PROBLEM_TYPE
    thresholds = model_thresholds(config) if multi_label else None
    top_k = min(top_k, int(config.num_labels))
    names = {int(index): str(label) for index, label in config.id2label.items()}
    id2label = dict(enumerate(distinct_label_names([names[i] for i in sorted(names)])))  # "crane [134]"
    model_device = next(model.parameters()).device
    views = MultiCrop(data_config_from_processor(processor)) if tta == "multicrop" else None

    batches = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
    bar = None
    if show_progress(progress, len(files)):
        bar = tqdm(total=len(files), desc="predict", unit="img", file=sys.stderr)

    records: list[dict] = []
    for batch in batches:
        loaded = _preprocess(batch, processor, strict, bad, views)
        scores = _batch_scores(model, [item for _, item in loaded], model_device, tta, function)
        for (file, _), row_scores in zip(loaded, scores, strict=True):
            records.append(prediction_record(file, row_scores, id2label, thresholds, top_k))
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    if bad:
        logger.warning(
            "skipped %d unusable of %d image files (%s)", len(bad), found, summarize_reasons(bad.values())
        )
    logger.info("predicted %d images in %d batches", len(records), math.ceil(len(files) / batch_size))
    return records


def _batch_scores(model: Any, inputs: list[dict[str, Any]], device: Any, tta: str, function: str) -> list:
    """Each input's scores, in order: inputs whose tensors share a shape go through the model together."""
    groups: dict[tuple, list[int]] = {}
    for position, item in enumerate(inputs):
        groups.setdefault(_shape_key(item), []).append(position)
    scores: list[np.ndarray | None] = [None] * len(inputs)
    for positions in groups.values():
        logits = _forward(model, [inputs[p] for p in positions], device, tta)
        combined = combine_views(logits, tta, function)
        for row, position in enumerate(positions):
            scores[position] = combined[row]
    return scores


def _preprocess(
    files: list[Path], processor: Any, strict: bool, bad: dict[str, str], views: Any = None
) -> list[tuple[Path, dict[str, Any]]]:
    """``(file, processor inputs)`` of each file that decodes (:func:`open_image`, which checks the size
    from the header again before decoding); a file that does not is skipped (:func:`skip_file`). With ``views``
    (:class:`hf_finetune.inference.tta.MultiCrop`) its ``pixel_values`` are the views, ``(1, V, C, H, W)``."""
    loaded = []
    for file in files:
        try:
            image = open_image(file)
        except BadImageError as err:
            skip_file(file, err.reason, strict, bad)
            continue
        if views is not None:
            loaded.append((file, {"pixel_values": views(image.convert("RGB")).unsqueeze(0)}))
            continue
        inputs = processor(images=image, return_tensors="pt")
        loaded.append((file, {key: inputs[key] for key in inputs}))
    return loaded
