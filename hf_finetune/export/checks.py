"""The checks ``hf-finetune export`` makes before anything heavy is imported: the model folder is a finished
model, the output folder may be written. Light: no torch, no transformers."""

from __future__ import annotations

import json
from pathlib import Path

from hf_finetune.config.path_checks import FINISHED_MODEL, check_model_folder
from hf_finetune.errors import ConfigError
from hf_finetune.export.onnx_predict import EXPORT_CONFIG
from hf_finetune.models.weights_check import check_safetensors_files

__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "check_finished_model", "check_output"]

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 7, 20  # what the TorchScript-based exporter can write


def check_finished_model(model_dir: str | Path, key: str = "MODEL_DIR") -> Path:
    """The folder of a finished model (``config.json`` and whole safetensors weights); :class:`ConfigError`
    naming what is missing otherwise."""
    path = check_model_folder(model_dir, key)
    check_safetensors_files(path, key, fix="the model folder is damaged; train or copy it again")
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"{key}: {path / 'config.json'} is not valid JSON ({err}); {FINISHED_MODEL}"
        ) from None
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
