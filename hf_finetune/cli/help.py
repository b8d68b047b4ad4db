"""``--help`` of ``train``, ``predict``, ``eval`` and ``map-labels`` without importing transformers or torch.

The recipe keys come from the table generated from the config dataclasses (:mod:`hf_finetune.cli.key_table`),
grouped by the class that declares them; a command's own arguments from :mod:`hf_finetune.cli.arguments`, as
its real parser adds them. ``train --help`` names transformers' own ``TrainingArguments`` keys in one
paragraph; ``train --help-all`` describes each of them too.
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any

from hf_finetune.cli.arguments import (
    COMMANDS,
    add_eval_arguments,
    add_map_labels_arguments,
    add_predict_arguments,
    add_train_launch_arguments,
)
from hf_finetune.cli.key_table_data import TABLE_JSON

__all__ = ["HELP_FLAGS", "wants_help", "command_help", "help_parser"]

HELP_FLAGS = ("-h", "--help", "--help-all")
TRAIN_USAGE = "hf-finetune train [RECIPE.yaml] [--key value ...]"
TRAIN_DESCRIPTION = (
    "Fine-tune an image classifier from a recipe YAML and/or flags. Every key below is also a recipe key "
    "(docs/recipe-keys.md); flags override the file; --key_name may also be written --key-name."
)
# The config dataclasses each command parses (by name; see hf_finetune.config.parser)
_DATACLASSES = {
    "train": ("ModelArguments", "DataArguments", "FinetuneTrainingArguments"),
    "eval": ("DataArguments",),
    "map-labels": ("ModelArguments", "DataArguments"),
    "predict": (),
}


def wants_help(argv: list[str]) -> bool:
    return any(a in HELP_FLAGS for a in argv)


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, list[dict[str, Any]]]:
    return json.loads(TABLE_JSON)


def _add_key(container, key: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"help": key["help"].replace("%", "%%"), "default": argparse.SUPPRESS}
    if key["nargs"] == 0:
        container.add_argument(*key["flags"], action="store_true", **kwargs)
    else:
        container.add_argument(*key["flags"], metavar=key["metavar"], nargs=key["nargs"], **kwargs)


def _add_groups(parser: argparse.ArgumentParser, class_names: tuple[str, ...], full: bool) -> None:
    table = _table()
    for name in class_names:
        for group in table[name]:
            if group["ours"] or full:
                container = parser.add_argument_group(group["title"])
                for key in group["keys"]:
                    _add_key(container, key)
            else:
                flags = [key["flags"][0].removeprefix("--") for key in group["keys"]]
                names = [f for f in flags if f.removeprefix("no_") == f or f.removeprefix("no_") not in flags]
                parser.add_argument_group(
                    f"{len(names)} more keys of transformers' {group['title'].rsplit('(', 1)[-1].rstrip(')')}",
                    description="with transformers' meaning and default; `hf-finetune train --help-all` "
                    "describes each: " + ", ".join(names),
                )


def help_parser(command: str, full: bool = False) -> argparse.ArgumentParser:
    """The parser whose help ``hf-finetune COMMAND --help`` prints (``full``: ``--help-all``)."""
    prog = f"hf-finetune {command}"
    if command == "predict":  # a plain argparse parser, as the command's own
        parser = argparse.ArgumentParser(prog=prog, description=COMMANDS["predict"])
        add_predict_arguments(parser)
        return parser
    if command == "train":
        parser = argparse.ArgumentParser(
            prog=prog, usage=TRAIN_USAGE, description=TRAIN_DESCRIPTION, allow_abbrev=False
        )
        parser.add_argument(
            "--help-all", action="store_true", help="this help, with each of transformers' keys described"
        )
    else:  # eval, map-labels: a RecipeParser of the dataclasses plus the command's own arguments
        parser = argparse.ArgumentParser(
            prog=prog, description=COMMANDS[command], formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
    _add_groups(parser, _DATACLASSES[command], full)
    if command == "train":
        add_train_launch_arguments(parser)
    elif command == "eval":
        add_eval_arguments(parser)
    else:
        add_map_labels_arguments(parser)
    return parser


def command_help(command: str, argv: list[str]) -> int:
    """Print ``command``'s help. ``train`` returns 0; the others exit with 0 as argparse's ``--help`` does."""
    parser = help_parser(command, full="--help-all" in argv)
    parser.print_help()
    if command == "train":
        return 0
    raise SystemExit(0)
