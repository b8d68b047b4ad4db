"""The reports a finished run's folder holds, for the app's second tab.

Training writes :data:`~hf_finetune.inference.reports.TRAINING_FIGURES` and ``eval_per_class.json`` into the
output folder; ``hf-finetune eval`` writes its figures (the confusion matrix or the precision-recall curves, the
top losses), ``most_confused.csv`` and ``metrics.json`` into ``eval_<split>/`` folders beside them. Files are
only read."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_finetune.inference.reports import (
    CONFUSION_MATRIX_NAME,
    MOST_CONFUSED_NAME,
    PRECISION_RECALL_NAME,
    TOP_LOSSES_NAME,
    TRAINING_CURVES_NAME,
)

__all__ = ["PER_CLASS_FILE", "RunReports", "find_reports", "per_class_table"]

PER_CLASS_FILE = "eval_per_class.json"
EVAL_METRICS_FILE = "metrics.json"
FIGURE_TITLES = {
    TRAINING_CURVES_NAME: "training curves",
    CONFUSION_MATRIX_NAME: "confusion matrix",
    PRECISION_RECALL_NAME: "precision-recall curves",
    TOP_LOSSES_NAME: "top losses",
}
#: The per-class columns shown, in this order, when a row has them.
COLUMNS = ("ap", "f1", "precision", "recall", "support", "threshold")
MOST_CONFUSED_ROWS = 20  # the most confused pairs shown; the rest stay in the CSV


@dataclass
class RunReports:
    """``figures``: ``(title, path)`` in the order shown; ``tables``: ``(title, header, rows)``, the per-class
    metrics first, then the most confused pairs of each ``eval_<split>/`` folder."""

    figures: list[tuple[str, Path]] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.figures or self.tables)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def per_class_table(report: Any) -> tuple[list[str], list[list[Any]]] | None:
    """``(header, rows)`` of a per-class report (``{"per_class": {class: {metric: value}}}``, as training's
    ``eval_per_class.json`` and eval's ``metrics.json`` hold it), numbers to 4 decimals; None without one."""
    per_class = report.get("per_class") if isinstance(report, dict) else None
    if not isinstance(per_class, dict) or not per_class:
        return None
    rows_in = [(str(name), row) for name, row in per_class.items() if isinstance(row, dict)]
    columns = [c for c in COLUMNS if any(c in row for _, row in rows_in)]
    rows = []
    for name, row in rows_in:
        cells: list[Any] = [name]
        for column in columns:
            value = row.get(column)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            cells.append(round(float(value), 4) if number and column != "support" else value)
        rows.append(cells)
    return ["class", *columns], rows


def find_reports(model_dir: str | Path) -> RunReports:
    """The figures and the per-class table of the run in ``model_dir``: its own first, then each
    ``eval_<split>/`` folder's (sorted by name)."""
    folder = Path(model_dir)
    found = RunReports()
    places = [(folder, "")] + [
        (sub, f" ({sub.name})") for sub in sorted(folder.glob("eval_*")) if sub.is_dir()
    ]
    for place, suffix in places:
        for name, title in FIGURE_TITLES.items():
            if (place / name).is_file():
                found.figures.append((title + suffix, place / name))
    for place, name in [(folder, PER_CLASS_FILE)] + [(p, EVAL_METRICS_FILE) for p, _ in places[1:]]:
        table = per_class_table(_read_json(place / name))
        if table is not None:
            where = "validation at the end of training" if place == folder else place.name
            found.tables.append((f"per-class metrics ({where})", *table))
            break
    for place, _ in places[1:]:
        table = _most_confused(place / MOST_CONFUSED_NAME)
        if table is not None:
            found.tables.append((f"most confused pairs ({place.name})", *table))
    return found


def _most_confused(path: Path) -> tuple[list[str], list[list[Any]]] | None:
    """``(header, rows)`` of ``hf-finetune eval``'s ``most_confused.csv`` (its first :data:`MOST_CONFUSED_ROWS`
    rows), None when it is missing, unreadable or lists no pair (no image of the split was misclassified)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return (rows[0], rows[1 : 1 + MOST_CONFUSED_ROWS]) if len(rows) > 1 else None
