"""The torch-free half of prediction: which files, their header check, scores from logits, the records and
writing them. ``hf-finetune predict --onnx`` (:mod:`hf_finetune.export.onnx_predict`) runs on these with numpy,
PIL and onnxruntime alone, so it imports neither torch nor transformers; the functions behave as
:mod:`hf_finetune.inference.predict`'s (same skips, same warnings, same records, same files).
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf_finetune.config.path_checks import shown_name
from hf_finetune.data.image_check import check_image_files, summarize_reasons
from hf_finetune.data.images import is_image_file
from hf_finetune.errors import DataError
from hf_finetune.escaping import csv_cell

__all__ = [
    "prediction_record",
    "PREDICTION_FORMATS",
    "PROGRESS_MIN_IMAGES",
    "apply_scores",
    "iter_image_files",
    "labels_above",
    "rank_scores",
    "show_progress",
    "skip_file",
    "usable_files",
    "write_predictions",
]

logger = logging.getLogger("hf_finetune.inference.predict")

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
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.is_file():
            found = [path] if is_image_file(path) else []
            if not found:
                logger.warning("skipping %s: not an image file name (extension %r)", path, path.suffix)
        else:
            raise DataError(f"image path not found: {str(raw)!r}")
        for file in found:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                files.append(file)
    return files


def skip_file(file: Path, reason: str, strict: bool, bad: dict[str, str]) -> None:
    """One bad file: a :class:`DataError` under ``strict``, else one warning line and an entry in ``bad``."""
    if strict:
        raise DataError(f"image {file}: {reason} (without --strict such files are skipped)")
    logger.warning("skipping image %s: %s", file, reason)
    bad[str(file)] = reason


def usable_files(files: list[Path], strict: bool) -> tuple[list[Path], dict[str, str]]:
    """(the files training's header check accepts, ``{path: reason}`` of the others), each refused file
    warned about once (:func:`skip_file`); no file is decoded here."""
    bad: dict[str, str] = {}
    usable = []
    for file, reason in zip(files, check_image_files([str(f) for f in files]), strict=True):
        if reason is None:
            usable.append(file)
        else:
            skip_file(file, reason, strict, bad)
    if not usable:
        raise DataError(
            f"none of the {len(files)} image files can be used ({summarize_reasons(bad.values())}); "
            f"e.g. {next(iter(bad))}: {next(iter(bad.values()))}"
        )
    return usable, bad


def apply_scores(logits: np.ndarray, function: str) -> np.ndarray:
    """``function`` (softmax, sigmoid or none) on the last axis, with the transformers pipeline's numpy
    arithmetic (so single-view scores match the pipeline's bit for bit)."""
    if function == "softmax":
        shifted = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if function == "none":
        return logits
    raise ValueError(f"unknown function_to_apply {function!r}")


def rank_scores(scores: np.ndarray, labels: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    """``[{"label", "score"}]`` sorted by score descending (stable: ties keep the lower index), ``top_k`` at most."""
    ranked = [{"label": labels[index], "score": score.item()} for index, score in enumerate(scores)]
    ranked.sort(key=lambda entry: entry["score"], reverse=True)
    return ranked[:top_k]


def labels_above(scores: np.ndarray, thresholds: Sequence[float], labels: Sequence[str]) -> list[str]:
    """Names of the classes whose score is at least their threshold, highest score first (ties: lower index)."""
    rows = [row for row in range(len(scores)) if scores[row] >= thresholds[row]]
    rows.sort(key=lambda row: -float(scores[row]))
    return [labels[row] for row in rows]


def prediction_record(
    file: Path, scores: np.ndarray, labels: Sequence[str], thresholds: Sequence[float] | None, top_k: int
) -> dict[str, Any]:
    """One image's record: its shown path, the classes at or above their threshold (a multi-label model's), and
    the ``top_k`` ranked predictions."""
    record: dict[str, Any] = {"path": shown_name(file)}  # a name that is not UTF-8 shows its bytes as \\xNN
    if thresholds is not None:
        record["labels"] = labels_above(scores, thresholds, labels)
    record["predictions"] = rank_scores(scores, labels, top_k)
    return record


def show_progress(progress: bool | None, num_images: int, stream: Any = None) -> bool:
    """Whether to show a progress bar: always (True), never (False), or, by default (None), for more than
    :data:`PROGRESS_MIN_IMAGES` images when ``stream`` (stderr) is a terminal."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return num_images > PROGRESS_MIN_IMAGES and bool(isatty and isatty())


def write_predictions(records: list[dict], output: str | Path) -> None:
    """Write ``records`` as CSV (``path,rank,label,score``; rank from 1) or JSON Lines, by extension. For a
    multi-label model's records the CSV has a fifth column, ``above_threshold`` (1 when the label is among the
    record's ``labels``, else 0); labels above their threshold beyond the top-k are only in the JSON Lines. In the
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
            multi_label = any("labels" in record for record in records)
            writer.writerow(["path", "rank", "label", "score"] + (["above_threshold"] if multi_label else []))
            for record in records:
                chosen = set(record.get("labels", ()))
                for rank, entry in enumerate(record["predictions"], start=1):
                    row = [
                        csv_cell(record["path"]),
                        rank,
                        csv_cell(entry["label"]),
                        repr(float(entry["score"])),
                    ]
                    writer.writerow(row + ([int(entry["label"] in chosen)] if multi_label else []))
        else:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    logger.info("wrote %d prediction records to %s", len(records), output)
