"""``hf-finetune app MODEL_DIR [--port 7860] [--host 127.0.0.1] [--top-k 5]``: a Gradio page to try a finished
model on one's own images (:mod:`hf_finetune.app`).

The folder and the address are checked before gradio is imported: a missing folder, a folder without a saved
model or a busy ``host:port`` is one line and exit 2. ``--help`` imports nothing heavy."""

from __future__ import annotations

import argparse

from hf_finetune.app.checks import check_model_folder, check_port_free
from hf_finetune.cli.arguments import COMMANDS, LightParser
from hf_finetune.errors import ConfigError

__all__ = ["build_parser", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = LightParser(
        prog="hf-finetune app",
        description=COMMANDS["app"] + ". Upload or drop an image: the top-k labels with their probabilities "
        "(the same as `hf-finetune predict`; a multi-label model also lists every class at or above its "
        "threshold). A second tab shows the run's reports (training curves, confusion matrix, per-class table, "
        "top losses of `hf-finetune eval`) when the folder has them. Needs the app extra: "
        "pip install 'hf-finetune[app]'.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="the output folder of a finished run")
    parser.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)",
    )
    parser.add_argument(
        "--top-k", "--top_k", dest="top_k", type=int, default=5, help="labels shown per image (default 5)"
    )
    return parser


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        raise ConfigError(f"--top-k: {args.top_k} is not a positive number of labels; expected 1 or more")
    check_model_folder(args.model_dir)
    check_port_free(args.host, args.port)
    from hf_finetune.app.page import serve

    serve(args.model_dir, host=args.host, port=args.port, top_k=args.top_k)
    return 0
