"""What a search leaves: the trials table (``trials.csv``), its plot (``trials.png``) and the best trial written
back into the recipe (``best_recipe.yaml``, ready for ``hf-finetune train``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from hf_finetune.config.parser import RUN_ONLY_KEYS

__all__ = ["write_trials", "write_best_recipe", "plot_trials"]


def write_trials(study, out: Path, metric: str) -> dict[str, Path]:
    """``trials.csv`` (one row per trial: number, the objective as ``eval_<metric>``, state, duration, values,
    and the objective after each epoch) and ``trials.png``; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params"))
    frame = frame.rename(columns={"value": f"eval_{metric}"})
    frame.columns = [c.removeprefix("params_") for c in frame.columns]
    frame["duration"] = [d.total_seconds() if hasattr(d, "total_seconds") else d for d in frame["duration"]]
    frame = frame.rename(columns={"duration": "seconds"})
    frame["per_epoch"] = [
        " ".join(f"{t.intermediate_values[s]:.4f}" for s in sorted(t.intermediate_values))
        for t in study.trials
    ]
    csv = out / "trials.csv"
    frame.to_csv(csv, index=False)
    png = out / "trials.png"
    plot_trials(study, png, metric)
    return {"trials_csv": csv, "trials_plot": png}


def plot_trials(study, path: Path, metric: str) -> None:
    """The objective of each trial against trial number, and against each searched value; pruned trials at
    their last reported value, hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(k for t in study.trials for k in t.params))
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(4 * (1 + len(names)), 3.4), squeeze=False)
    points = [(t, _last_value(t)) for t in study.trials]
    points = [(t, v) for t, v in points if v is not None]
    for ax, name in zip(axes[0], [None, *names], strict=False):
        for trial, value in points:
            x = trial.number if name is None else trial.params.get(name)
            if x is None or isinstance(x, str):
                x = str(x)
            done = trial.state.name == "COMPLETE"
            ax.scatter([x], [value], color="C0", facecolors="C0" if done else "none")
        if name is not None and _log_scale(study, name):
            ax.set_xscale("log")
        ax.set_xlabel("trial" if name is None else name)
        ax.set_ylabel(f"eval_{metric}")
        ax.grid(alpha=0.3)
    axes[0][0].set_title("filled: complete, hollow: pruned", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _last_value(trial) -> float | None:
    if trial.value is not None:
        return float(trial.value)
    steps = sorted(trial.intermediate_values)
    return float(trial.intermediate_values[steps[-1]]) if steps else None


def _log_scale(study, name: str) -> bool:
    for trial in study.trials:
        dist = trial.distributions.get(name)
        if dist is not None:
            return bool(getattr(dist, "log", False))
    return False


def write_best_recipe(base, params: dict[str, Any], path: Path, best, metric: str) -> Path:
    """The recipe the search started from (its keys and the command line's, as ``recipe.yaml`` records them) with
    the best trial's values; ``hf-finetune train`` reads it as it is."""
    recipe = {k: v for k, v in base.explicit.items() if k not in RUN_ONLY_KEYS}
    for key, value in params.items():
        recipe[key] = _plain_number(value)
    header = (
        f"# hf-finetune search: trial {best.number}, eval_{metric} {best.value:.4f}; train it with\n"
        f"#   hf-finetune train {path.name}\n"
    )
    path.write_text(header + yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def _plain_number(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.6g}")
    return value
