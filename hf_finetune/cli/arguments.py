"""The commands' own arguments (beyond the config dataclasses), defined once: the parser a command runs with and
the one its ``--help`` prints (:mod:`hf_finetune.cli.help`) both add them from here. Nothing heavy is imported."""

from __future__ import annotations

import argparse
import re

__all__ = [
    "COMMANDS",
    "MODULE_COMMANDS",
    "LightParser",
    "add_predict_arguments",
    "add_eval_arguments",
    "add_map_labels_arguments",
    "add_push_arguments",
    "add_train_launch_arguments",
    "PUSH_DESCRIPTION",
]

COMMANDS = {
    "train": "fine-tune a pretrained classifier from a recipe YAML and/or --key value flags",
    "predict": "top-k predictions of a model for image files or folders",
    "eval": "metrics of a saved model on a split of a dataset",
    "map-labels": "show which pretrained classifier rows would start each target label, without training",
    "push": "push a finished output folder to the Hugging Face Hub with its model card",
    "export": "export a finished model to ONNX, with its preprocessing and labels beside the graph",
    "app": "a web page (Gradio, on 127.0.0.1) to try a finished model on your own images",
    "search": "search hyperparameters of a recipe with Optuna (Trainer.hyperparameter_search)",
    "lr-find": "a learning-rate range test: the loss over an exponential ramp, and the suggested rate",
}

# Commands that live in a module of their own, hf_finetune/cli/<module>.py, whose ``run(argv) -> int`` parses
# its arguments with a light parser (answering --help before any heavy import) and runs the command.
MODULE_COMMANDS = {"export": "export", "app": "app", "search": "search", "lr-find": "lr_find"}

PUSH_DESCRIPTION = (
    COMMANDS["push"] + ". The token comes from HF_TOKEN or `hf auth login`; it is never "
    "written anywhere. Uploaded: the model (safetensors), its processor, the run's record (recipe.yaml, "
    "labels, results) and a model card (README.md); never checkpoint-* folders or training_args.bin."
)


class LightParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are one-line :class:`~hf_finetune.errors.ConfigError` s, for the
    commands that parse their own arguments (push, export, app, search, lr-find): nothing heavy is imported, so
    their ``--help`` answers at once."""

    def error(self, message: str):
        from hf_finetune.errors import ConfigError

        raise ConfigError(re.sub(r"(--[\w-]+)/--[\w-]+", r"\1", message) + f"; see {self.prog} --help")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="output folder of a fine-tune, or a Hub id")
    parser.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--top-k", "--top_k", type=int, default=5, dest="top_k", help="predictions per image")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=32, dest="batch_size")
    parser.add_argument("--output", help="write predictions to a .csv or .jsonl file")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: for more than 100 images when stderr is a terminal)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse a bad image file (not an image, zero bytes, a decompression bomb, an aspect ratio beyond "
        "50:1, or one that fails to decode) instead of skipping it with a warning",
    )
    _add_tta_argument(parser)
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="run the ONNX export of `hf-finetune export` (MODEL: the export folder, or a model folder holding "
        "one in onnx/) with onnxruntime, numpy and PIL: no torch imported (--device and --tta do not apply)",
    )


def _add_tta_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tta",
        choices=("none", "hflip", "multicrop"),
        default="none",
        help="test-time augmentation, probabilities averaged over the views: hflip (the image and its mirror, "
        "2 passes), multicrop (centre + 4 corner crops, 5 passes)",
    )


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="output folder of a fine-tune, or a Hub id")
    parser.add_argument("--split", default="validation", help="train, validation or test")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=64)
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of the train/validation split (as in training)"
    )
    parser.add_argument(
        "--report_dir",
        "--report-dir",
        default=None,
        help="where metrics.json, confusion_matrix.png, most_confused.csv and top_losses.png are written "
        "(default: MODEL/eval_<split> for a local model)",
    )
    _add_tta_argument(parser)


def add_map_labels_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default=None, help="also write the report as JSON to this file")


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="the output folder of a finished run")
    parser.add_argument(
        "--repo-id", "--repo_id", dest="repo_id", required=True, metavar="ORG/NAME", help="the model repo"
    )
    parser.add_argument(
        "--private",
        action="store_true",
        help="create the repo private (an existing repo keeps its visibility)",
    )
    parser.add_argument(
        "--revision", default=None, metavar="BRANCH", help="branch to push to (default: main)"
    )
    parser.add_argument(
        "--commit-message", "--commit_message", dest="commit_message", default=None, help="the commit message"
    )
    parser.add_argument(
        "--space",
        default=None,
        metavar="ORG/NAME",
        help="also create or update this Gradio Space: an app.py and requirements.txt that load the model repo "
        "(docs/app.md)",
    )


def add_train_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """``train``'s flags that are not recipe keys (read before the recipe is parsed); for its help only."""
    hardware = parser.add_argument_group("hardware")
    hardware.add_argument(
        "--accelerate_config",
        metavar="NAME_OR_PATH",
        help="run under `accelerate launch` with this config: a file, or the name of one in "
        "recipes/accelerate_configs (cpu, cpu_ddp, single_gpu, multi_gpu, ...)",
    )
    for flag in ("num_machines", "num_processes", "machine_rank", "main_process_ip", "main_process_port"):
        hardware.add_argument(f"--{flag}", help="with --accelerate_config: accelerate launch's own flag")
    hardware.add_argument(
        "--mixed_precision", help="with --accelerate_config: no, fp16 or bf16 for the launch"
    )
    hardware.add_argument(
        "--rdzv_timeout",
        metavar="SECONDS",
        help="with --accelerate_config: how long a machine waits for the others (default 600); a machine that "
        "never joins ends the job in one line naming the address (docs/distributed.md)",
    )
    interruptions = parser.add_argument_group("interruptions")
    interruptions.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in output_dir (the same as "
        "--resume_from_checkpoint last). SIGINT (Ctrl-C) or SIGTERM finishes the current step, writes a "
        "checkpoint and exits with 130 or 143.",
    )
