"""The canvas and the text helpers every report figure shares (:mod:`hf_finetune.inference.reports`,
:mod:`hf_finetune.inference.precision_recall`).

matplotlib is imported inside :func:`new_figure` and draws on its Agg canvas (no pyplot, no display, no global
backend switch)."""

from __future__ import annotations

__all__ = ["DPI", "new_figure", "short_name"]

DPI = 100


def new_figure(width: float, height: float):
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches at :data:`DPI`, with its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def short_name(name: str, limit: int = 24) -> str:
    """``name`` cut to ``limit`` characters, an ellipsis last when it was cut."""
    name = str(name)
    return name if len(name) <= limit else name[: limit - 1] + "…"
