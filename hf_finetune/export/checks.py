"""The checks ``hf-finetune export`` makes before anything heavy is imported: the model folder is a finished
model, the output folder may be written. Light: no torch, no transformers."""

from __future__ import annotations

import json
from pathlib import Path

from hf_finetune.errors import ConfigError
from hf_finetune.export.onnx_predict import EXPORT_CONFIG
from hf_finetune.models.weights_check import check_safetensors_files

__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "check_finished_model", "check_output"]

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 7, 20  # what the TorchScript-based exporter can write

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
FINISHED = (
    "expected the output folder of a finished `hf-finetune train` run (config.json and model.safetensors)"
)


def check_finished_model(model_dir: str | Path, key: str = "MODEL_DIR") -> Path:
    """The folder of a finished model (``config.json`` and whole safetensors weights); :class:`ConfigError`
    naming what is missing otherwise."""
    path = Path(model_dir)
    if not path.exists():
        raise ConfigError(f"{key}: {path} does not exist; {FINISHED}")
    if not path.is_dir():
        raise ConfigError(f"{key}: {path} is a file; {FINISHED}")
    missing = [name for name in ("config.json",) if not (path / name).is_file()]
    if not any((path / name).is_file() for name in WEIGHTS):
        missing.append("model.safetensors")
    if missing:
        partial = sorted(p.name for p in path.glob("checkpoint-*") if p.is_dir())
        state = f" (only {', '.join(partial)}: the run did not finish)" if partial else ""
        raise ConfigError(f"{key}: {path} has no {' and no '.join(missing)}{state}; {FINISHED}")
    check_safetensors_files(path, key, fix="the model folder is damaged; train or copy it again")
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{key}: {path / 'config.json'} is not valid JSON ({err}); {FINISHED}") from None
    return path


def check_output(output: str | Path, overwrite: bool = False) -> Path:
    """``output`` may be written: it does not exist, or it holds an earlier export and ``overwrite`` is set."""
    path = Path(output)
    if not path.exists() and not path.is_symlink():
        return path
    if not path.is_dir() or not (path / EXPORT_CONFIG).is_file():
        raise ConfigError(
            f"output: {path} exists and is not an ONNX export (no {EXPORT_CONFIG}); choose a new --output folder"
        )
    if not overwrite:
        raise ConfigError(
            f"output: {path} already holds an ONNX export; pass --overwrite to replace it, or choose a new --output"
        )
    return path
