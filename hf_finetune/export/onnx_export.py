"""``hf-finetune export MODEL_DIR --format onnx``: a finished model as an ONNX graph, with what running it needs.

The graph is traced by PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it honours
the requested opset (7-20) and names an operator that opset lacks (``UnsupportedOperatorError``), it writes one
self-contained ``model.onnx``, and it exports these image classifiers in about a third of the time of the dynamo
exporter (which exports at opset 18 whatever is asked, leaving the graph at 18 when it cannot convert it down).
Input ``pixel_values`` ``(batch, 3, H, W)`` float32, output ``logits`` ``(batch, K)``; the batch axis is dynamic.

Beside the graph, :data:`EXPORT_CONFIG` holds the preprocessing (resize, resample, centre crop and its rounding,
rescale, mean/std, channel order), read from the saved image processor exactly as ``hf-finetune predict`` and the
evaluation transform use it (:func:`hf_finetune.data.transforms.data_config_from_processor`), the label names as
predict prints them, the problem type, the score function and, for a multi-label model, each class's threshold
(``config.json`` ``label_thresholds``). ``config.json`` and ``preprocessor_config.json`` are copied as they are.

Everything is written into a hidden folder beside the output and moved into place at the end, so a failed or
interrupted export never leaves a folder that looks complete; an existing export is replaced only with
``overwrite``, and a folder that is not an export never. ``quantize="int8"``: the graph's linear layers are int8
dynamic-quantised by onnxruntime (``quantize_dynamic``: int8 weights, activations quantised on the fly).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_finetune.data.multi_label import MULTI_LABEL_PROBLEM_TYPE
from hf_finetune.data.transforms import data_config_from_processor
from hf_finetune.errors import ConfigError
from hf_finetune.export.checks import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, check_finished_model, check_output
from hf_finetune.export.onnx_predict import EXPORT_CONFIG, GRAPH_NAME
from hf_finetune.export.resize import TORCHVISION_KERNELS
from hf_finetune.inference.predict import load_for_inference, model_thresholds, score_function
from hf_finetune.labels.model_labels import distinct_label_names

__all__ = [
    "QUANTIZE_CHOICES",
    "export_onnx",
    "preprocessing_spec",
]

logger = logging.getLogger("hf_finetune")

QUANTIZE_CHOICES = ("int8",)
QUANTIZED_OPS = ("MatMul", "Gemm")
COPIED = ("config.json", "preprocessor_config.json")
#: An fp32 graph whose logits differ from PyTorch's by more than this (plus the same fraction of the largest
#: logit) on the check batch is refused.
CHECK_TOLERANCE = 1e-3


def preprocessing_spec(data_config: dict[str, Any], backend: str = "pil") -> dict[str, Any]:
    """What turns an RGB image into the graph's input, from a timm-style data config (the evaluation transform's):
    resize (the short side to ``size / crop_pct``, or, ``squash``, both sides; ``backend``: whose arithmetic,
    ``pil`` or ``torchvision``), centre crop, ``pixel / 255``, ``(x - mean) / std``, in this channel order. A crop
    mode or resampling this cannot express is a :class:`ConfigError`."""
    _, height, width = (int(v) for v in data_config["input_size"])
    crop_pct = float(data_config.get("crop_pct") or 0.875)
    mode = data_config.get("crop_mode") or "center"
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    if mode not in ("center", "squash") or crop_pct > 1.0 or (mode == "center" and scale[0] != scale[1]):
        raise ConfigError(
            f"the image processor's preprocessing (crop_mode {mode!r}, crop_pct {crop_pct}, input {height}x{width}) "
            "has no ONNX export preprocessing; supported: a centre crop of a square input (crop_pct <= 1) or "
            "crop_mode 'squash'"
        )
    resample = str(data_config.get("interpolation") or "bilinear")
    if backend == "torchvision" and resample not in TORCHVISION_KERNELS:
        raise ConfigError(
            f"the image processor resizes with {resample!r} on transformers' torchvision backend; the ONNX export "
            f"preprocessing repeats only {', '.join(TORCHVISION_KERNELS)} there"
        )
    resize = {"shortest_edge": scale[0]} if mode == "center" else {"height": scale[0], "width": scale[1]}
    return {
        "resize": resize,
        "resize_backend": backend,
        "resample": resample,
        "crop": {"height": height, "width": width},
        "crop_offset": "floor" if data_config.get("crop_rounding") == "floor" else "round",
        "rescale_factor": 1 / 255,
        "mean": [float(v) for v in data_config["mean"]],
        "std": [float(v) for v in data_config["std"]],
        "channel_order": data_config.get("channel_order", "rgb"),
    }


class _LogitsOnly(torch.nn.Module):
    """``pixel_values -> logits``: the graph's one input and one output."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values)["logits"]


def _unsupported(err: Exception, opset: int) -> ConfigError:
    """One line naming the operator the opset lacks (and the opset that has it, when the exporter says)."""
    text = str(err)
    op = re.search(r"operator '([^']+)'", text)
    needed = re.search(r"added in (?:opset |version )(\d+)", text)
    hint = f"; it needs opset {needed.group(1)} or later (--opset {needed.group(1)})" if needed else ""
    name = op.group(1) if op else text.strip().splitlines()[0][:200]
    return ConfigError(f"cannot export to ONNX: operator {name} is not supported at opset {opset}{hint}")


@contextlib.contextmanager
def _quiet_stderr():
    """The TorchScript exporter prints its whole graph from C++ when an operator fails; keep it off stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _export_graph(
    model: torch.nn.Module, path: Path, opset: int, input_size: tuple[int, int, int]
) -> tuple[float, float]:
    """Trace ``model`` into ``path``; return (the largest |logit| difference to PyTorch on a batch of 2, the
    largest |logit|)."""
    wrapper = _LogitsOnly(model).eval()
    sample = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    try:
        with warnings.catch_warnings(), _quiet_stderr(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings, every time
            torch.onnx.export(
                wrapper,
                (sample,),
                str(path),
                dynamo=False,
                verbose=False,
                opset_version=opset,
                input_names=["pixel_values"],
                output_names=["logits"],
                dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
            )
    except torch.onnx.errors.UnsupportedOperatorError as err:
        raise _unsupported(err, opset) from None
    except (torch.onnx.errors.OnnxExporterError, torch.onnx.errors.SymbolicValueError) as err:
        raise ConfigError(
            f"cannot export to ONNX at opset {opset}: {str(err).strip().splitlines()[0]}"
        ) from None
    with torch.no_grad():
        expected = wrapper(sample).numpy()
    return _max_diff(path, sample.numpy(), expected), float(np.abs(expected).max())


def _max_diff(path: Path, sample: np.ndarray, expected: np.ndarray) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"pixel_values": sample})[0]
    return float(np.abs(got.astype(np.float64) - expected).max())


def _quantize(fp32: Path, int8: Path) -> None:
    """int8 dynamic quantisation (onnxruntime) of the linear layers (:data:`QUANTIZED_OPS`): int8 weights,
    activations quantised at run time, as ``torch.ao.quantization.quantize_dynamic`` covers ``nn.Linear``.
    Convolutions stay float32: onnxruntime's dynamic ``ConvInteger`` was 4-9x slower than the float graph on
    MobileNetV2 and changed its top-1 on most hotdog photos (``bench/onnx_int8.py``, docs/export.md)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger("root")  # onnxruntime.quantization logs its advice through the root logger
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS))
    finally:
        quiet.setLevel(level)


def export_onnx(
    model_dir: str | Path,
    output: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Export the finished model in ``model_dir`` to ``output`` (default ``MODEL_DIR/onnx``): :data:`GRAPH_NAME`,
    :data:`EXPORT_CONFIG` and copies of ``config.json`` / ``preprocessor_config.json``. Returns the folder.

    Bad input is one :class:`ConfigError` before anything is written: not a finished model, an opset outside
    7-20, an unknown ``quantize``, an ``output`` that exists (see :func:`check_output`); an operator the opset
    lacks is one naming it, with nothing left behind."""
    model_dir = check_finished_model(model_dir)
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset: got {opset!r}; expected an integer from {MIN_OPSET} to {MAX_OPSET}")
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"quantize: got {quantize!r}; expected one of {', '.join(QUANTIZE_CHOICES)}")
    output = check_output(model_dir / "onnx" if output is None else Path(output), overwrite)
    model, processor = load_for_inference(model_dir, device="cpu")
    model.float()
    description = _describe(model, processor, opset, quantize)
    created = [parent for parent in output.parents if not parent.exists()]  # removed again on failure
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        _write_export(model, model_dir, description, staging, quantize)
        _move_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in created:  # deepest first; only folders this export made, and only when empty
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    logger.info("exported %s to %s (opset %d%s)", model_dir, output, opset, ", int8" if quantize else "")
    return output


def _write_export(
    model: torch.nn.Module, model_dir: Path, description: dict[str, Any], staging: Path, quantize: str | None
) -> None:
    """The export's files, into ``staging``: the graph (checked against PyTorch), its description, the copies."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the export private
    input_size = tuple(description["input"]["shape"][1:])
    graph = staging / (GRAPH_NAME if quantize is None else "model.fp32.onnx")
    diff, scale = _export_graph(model, graph, description["opset"], input_size)
    tolerance = CHECK_TOLERANCE * (1.0 + scale)
    if diff > tolerance:
        raise ConfigError(f"the ONNX graph's logits differ from PyTorch's by {diff:.3g} (> {tolerance:.3g})")
    description["check"] = {"fp32_max_abs_logit_diff": diff}
    if quantize == "int8":
        _quantize(graph, staging / GRAPH_NAME)
        graph.unlink()
    for name in COPIED:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, staging / name)
    (staging / EXPORT_CONFIG).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")


def _describe(model: Any, processor: Any, opset: int, quantize: str | None) -> dict[str, Any]:
    """The content of :data:`EXPORT_CONFIG` (the check figures are added after the export)."""
    config = model.config
    data_config = data_config_from_processor(processor)
    backend = (
        "torchvision" if any(c.__name__ == "TorchvisionBackend" for c in type(processor).__mro__) else "pil"
    )
    preprocessing = preprocessing_spec(data_config, backend)
    names = {int(index): str(label) for index, label in config.id2label.items()}
    labels = distinct_label_names([names[i] for i in sorted(names)])  # as predict shows them: "crane [134]"
    problem_type = getattr(config, "problem_type", None)
    description: dict[str, Any] = {
        "format": "onnx",
        "graph": GRAPH_NAME,
        "opset": opset,
        "exporter": f"torch.onnx.export (TorchScript, dynamo=False), torch {torch.__version__}",
        "quantize": quantize,
        "input": {
            "name": "pixel_values",
            "shape": ["batch", 3, *preprocessing["crop"].values()],
            "dtype": "float32",
        },
        "output": {"name": "logits", "shape": ["batch", len(labels)]},
        "preprocessing": preprocessing,
        "labels": labels,
        "problem_type": problem_type,
        "scores": score_function(config),  # the pipeline's function_to_apply, as predict uses it
    }
    if problem_type == MULTI_LABEL_PROBLEM_TYPE:
        description["thresholds"] = [float(v) for v in model_thresholds(config)]
    return description


def _move_into_place(staging: Path, output: Path) -> None:
    """``staging`` becomes ``output``; an earlier export there (checked by :func:`check_output`) goes last."""
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
        os.replace(output, old / output.name)
        os.replace(staging, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, output)
