"""``hf-finetune export MODEL_DIR --format onnx [--output DIR] [--opset N] [--quantize int8] [--overwrite]``: a
finished model as an ONNX graph with its preprocessing, labels and thresholds beside it
(:mod:`hf_finetune.export.onnx_export`); ``hf-finetune predict DIR IMAGES --onnx`` runs it.

The model folder and the output are checked before torch is imported: a folder that is not a finished model, an
output that exists (without ``--overwrite``, or one that is not an export at all) is one line and exit 2.
``--help`` imports nothing heavy."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_finetune.cli.arguments import COMMANDS, LightParser
from hf_finetune.errors import ConfigError
from hf_finetune.export.checks import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, check_finished_model, check_output
from hf_finetune.run.lock import check_unlocked

__all__ = ["build_parser", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = LightParser(
        prog="hf-finetune export",
        description=COMMANDS["export"]
        + ". Writes model.onnx (input pixel_values, a dynamic batch axis; output "
        "logits) and onnx_export.json (resize, crop, resample, mean/std, label names, problem type, multi-label "
        "thresholds) into a new folder; run it with `hf-finetune predict DIR IMAGES --onnx`. Needs the onnx "
        "extra: pip install 'hf-finetune[onnx]'.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="the output folder of a finished run")
    parser.add_argument("--format", required=True, choices=("onnx",), help="the export format: onnx")
    parser.add_argument(
        "--output", default=None, metavar="DIR", help="a new folder for the export (default: MODEL_DIR/onnx)"
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (default {DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="int8 dynamic quantisation of the graph (onnxruntime quantize_dynamic: int8 weights)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export in --output (never another folder)",
    )
    return parser


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise ConfigError(f"--opset: got {args.opset}; expected an integer from {MIN_OPSET} to {MAX_OPSET}")
    model_dir = check_finished_model(args.model_dir)
    output = check_output(model_dir / "onnx" if args.output is None else Path(args.output), args.overwrite)
    check_unlocked(model_dir, "MODEL_DIR")  # a run writing there: the export would mix two models
    from hf_finetune.export.onnx_export import export_onnx

    folder = export_onnx(
        model_dir, output, opset=args.opset, quantize=args.quantize, overwrite=args.overwrite
    )
    print(f"run it with: hf-finetune predict {folder} IMAGES --onnx")
    return 0
