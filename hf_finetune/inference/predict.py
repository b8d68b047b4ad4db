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
labels are sorted by score (ties keep the lower class index), cut to ``top_k``.
"""

from __future__ import annotations

import csv
import json
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

from hf_finetune.config.path_checks import shown_name
from hf_finetune.data.image_check import BadImageError, check_image_files, open_image, summarize_reasons
from hf_finetune.data.images import is_image_file
from hf_finetune.errors import ConfigError, DataError, ModelLoadError
from hf_finetune.escaping import csv_cell
from hf_finetune.labels.model_labels import distinct_label_names
from hf_finetune.models.loading import load_source_config

__all__ = ["iter_image_files", "load_for_inference", "predict_images", "write_predictions"]

logger = logging.getLogger(__name__)

PREDICTION_FORMATS = (".csv", ".jsonl")
#: With ``progress=None`` a progress bar is shown for more images than this, when stderr is a terminal.
PROGRESS_MIN_IMAGES = 100


def iter_image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand ``paths`` into image files: files in the order given, folders recursively (sorted).

    Only names with an image extension are kept (an explicitly given file without one is skipped
    with a warning); a path given twice is listed once. A missing path raises :class:`DataError`.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    seen: set[Path] = set()

    def add(file: Path) -> None:
        key = file.resolve()
        if key not in seen:
            seen.add(key)
            files.append(file)

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p)):
                add(file)
        elif path.is_file():
            if is_image_file(path):
                add(path)
            else:
                logger.warning("skipping %s: not an image file name (extension %r)", path, path.suffix)
        else:
            raise DataError(f"image path not found: {str(raw)!r}")
    return files


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


def _score_function(config: Any) -> str:
    """The pipeline's default ``function_to_apply`` for this model config."""
    problem_type = getattr(config, "problem_type", None)
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    if problem_type == "single_label_classification" or config.num_labels > 1:
        return "softmax"
    return str(getattr(config, "function_to_apply", "none"))


def _scores(logits: np.ndarray, function: str) -> np.ndarray:
    """Apply ``function`` row-wise, with the pipeline's numpy arithmetic (so scores match bitwise)."""
    if function == "softmax":
        shifted = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if function == "none":
        return logits
    raise ValueError(f"unknown function_to_apply {function!r}")


def _rank(scores: np.ndarray, id2label: dict[int, str], top_k: int) -> list[dict[str, Any]]:
    """``[{"label", "score"}]`` sorted by score descending (stable), at most ``top_k`` entries."""
    ranked = [{"label": id2label[index], "score": score.item()} for index, score in enumerate(scores)]
    ranked.sort(key=lambda entry: entry["score"], reverse=True)
    return ranked[:top_k]


def _forward(model: Any, inputs: list[dict[str, Any]], device: Any) -> np.ndarray:
    """Run preprocessed single-image inputs of one shape as one batch; return float32-or-wider logits."""

    batch = {key: torch.cat([item[key] for item in inputs], dim=0) for key in inputs[0]}
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
) -> list[dict]:
    """Predict the ``top_k`` labels of every image under ``paths``.

    Returns one record per usable image, in file order: ``{"path": str, "predictions":
    [{"label": str, "score": float}, ...]}`` sorted by score descending. A file training would skip
    (:func:`hf_finetune.data.image_check.check_image_file`, from its header, before any decode) or that fails to
    decode is skipped with one warning naming the file and the reason; their count is logged at the end.
    ``strict``: such a file is a :class:`DataError` naming it instead (the header check runs before the
    model loads).

    ``progress``: a progress bar (images) on stderr: always (True), never (False), or, by default (None),
    for more than :data:`PROGRESS_MIN_IMAGES` images when stderr is a terminal.
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    files = iter_image_files(paths)
    if not files:
        shown = ", ".join(repr(str(p)) for p in ([paths] if isinstance(paths, (str, Path)) else paths))
        raise DataError(f"no image files found in {shown or 'the given paths'}")
    found = len(files)
    files, bad = _usable_files(files, strict)

    model, processor = load_for_inference(model_name_or_path, device)
    config = model.config
    function = _score_function(config)
    top_k = min(top_k, int(config.num_labels))
    names = {int(index): str(label) for index, label in config.id2label.items()}
    id2label = dict(enumerate(distinct_label_names([names[i] for i in sorted(names)])))  # "crane [134]"
    model_device = next(model.parameters()).device

    batches = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
    bar = None
    if _show_progress(progress, len(files)):
        bar = tqdm(total=len(files), desc="predict", unit="img", file=sys.stderr)

    records: list[dict] = []
    for batch in batches:
        loaded = _preprocess(batch, processor, strict, bad)
        # Images whose tensors share a shape go through the model together, in file order.
        groups: dict[tuple, list[int]] = {}
        for position, (_, item) in enumerate(loaded):
            groups.setdefault(_shape_key(item), []).append(position)
        logits: list[np.ndarray | None] = [None] * len(loaded)
        for positions in groups.values():
            out = _forward(model, [loaded[p][1] for p in positions], model_device)
            for row, position in enumerate(positions):
                logits[position] = out[row]
        for (file, _), row_logits in zip(loaded, logits, strict=True):
            scores = _scores(row_logits, function)
            path = shown_name(file)  # a name that is not UTF-8 with its bytes as \xNN: printable, writable
            records.append({"path": path, "predictions": _rank(scores, id2label, top_k)})
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


def _skip(file: Path, reason: str, strict: bool, bad: dict[str, str]) -> None:
    """One bad file: a :class:`DataError` under ``strict``, else one warning line and an entry in ``bad``."""
    if strict:
        raise DataError(f"image {file}: {reason} (without --strict such files are skipped)")
    logger.warning("skipping image %s: %s", file, reason)
    bad[str(file)] = reason


def _usable_files(files: list[Path], strict: bool) -> tuple[list[Path], dict[str, str]]:
    """(the files training's header check accepts, ``{path: reason}`` of the others), each refused file
    warned about once (:func:`_skip`); no file is decoded here."""
    bad: dict[str, str] = {}
    usable = []
    for file, reason in zip(files, check_image_files([str(f) for f in files]), strict=True):
        if reason is None:
            usable.append(file)
        else:
            _skip(file, reason, strict, bad)
    if not usable:
        raise DataError(
            f"none of the {len(files)} image files can be used ({summarize_reasons(bad.values())}); "
            f"e.g. {next(iter(bad))}: {next(iter(bad.values()))}"
        )
    return usable, bad


def _preprocess(
    files: list[Path], processor: Any, strict: bool, bad: dict[str, str]
) -> list[tuple[Path, dict[str, Any]]]:
    """``(file, processor inputs)`` of each file that decodes (:func:`open_image`, which checks the size
    from the header again before decoding); a file that does not is skipped (:func:`_skip`)."""
    loaded = []
    for file in files:
        try:
            image = open_image(file)
        except BadImageError as err:
            _skip(file, err.reason, strict, bad)
            continue
        inputs = processor(images=image, return_tensors="pt")
        loaded.append((file, {key: inputs[key] for key in inputs}))
    return loaded


def _show_progress(progress: bool | None, num_images: int, stream: Any = None) -> bool:
    """Whether :func:`predict_images` shows its progress bar (see its ``progress``)."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return num_images > PROGRESS_MIN_IMAGES and bool(isatty and isatty())


def write_predictions(records: list[dict], output: str | Path) -> None:
    """Write ``records`` as CSV (``path,rank,label,score``; rank from 1) or JSON Lines, by extension. In the
    CSV a path or label starting with ``=``, ``+``, ``-`` or ``@`` gets a leading ``'``, so a spreadsheet
    shows it as text instead of running it as a formula (:func:`hf_finetune.escaping.csv_cell`)."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in PREDICTION_FORMATS:
        raise DataError(
            f"cannot write predictions to {str(output)!r}: the extension must be one of "
            f"{', '.join(PREDICTION_FORMATS)}, got {suffix or 'none'!r}"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8", newline="") as handle:
        if suffix == ".csv":
            writer = csv.writer(handle)
            writer.writerow(["path", "rank", "label", "score"])
            for record in records:
                for rank, entry in enumerate(record["predictions"], start=1):
                    score = repr(float(entry["score"]))
                    writer.writerow([csv_cell(record["path"]), rank, csv_cell(entry["label"]), score])
        else:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    logger.info("wrote %d prediction records to %s", len(records), output)
