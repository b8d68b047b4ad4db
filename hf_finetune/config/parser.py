"""Recipe YAML + command line -> the three config dataclasses, through transformers' ``HfArgumentParser``.

* ``hf-finetune train [RECIPE.yaml] [--key value ...]``: the recipe is optional; every key is also a flag,
  and flags override the file.
* An unknown key (in the file or as a flag) is an error that names it and suggests the nearest known one.
* A value of the wrong type is an error naming the key, the value and the expected type.
"""

from __future__ import annotations

import argparse
import enum
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from hf_finetune.config.arguments import AUTO_KEYS, DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_finetune.config.safe_yaml import load_yaml
from hf_finetune.errors import ConfigError, suggest

__all__ = [
    "RecipeParser",
    "CommandParser",
    "raise_config_error",
    "parse_train_args",
    "load_recipe",
    "known_keys",
    "ParsedArgs",
]

DATACLASSES = (ModelArguments, DataArguments, FinetuneTrainingArguments)


class ParsedArgs(tuple):
    """(model_args, data_args, training_args) plus the explicitly given keys (recipe + flags)."""

    explicit: dict[str, Any]
    recipe_path: str | None


def known_keys() -> list[str]:
    return [f.name for cls in DATACLASSES for f in fields(cls) if f.init]


def raise_config_error(message: str):
    """argparse's error hook for every hf-finetune command: a :class:`ConfigError` (one line, exit 2 in the
    CLI) instead of a usage dump."""

    message = re.sub(r"argument --([\w]+)(/--[\w-]+)?", r"\1", message)
    # "invalid float value: 'three'" -> "got 'three'; expected a number"
    expected = {"int": "an integer", "float": "a number", "string_to_bool": "true or false"}
    message = re.sub(
        r"invalid (\w+) value: (.+)$",
        lambda m: f"got {m.group(2)}; expected {expected.get(m.group(1), 'a ' + m.group(1))}",
        message,
    )
    raise ConfigError(message)


class RecipeParser(HfArgumentParser):
    """``HfArgumentParser`` whose errors are :class:`ConfigError` (one line, no usage dump, no exit)."""

    def __init__(self, dataclass_types=DATACLASSES, **kwargs):
        kwargs.setdefault("prog", "hf-finetune train")
        kwargs.setdefault("description", "Fine-tune an image classifier from a recipe YAML and/or flags.")
        super().__init__(dataclass_types, **kwargs)

    def error(self, message: str):  # argparse calls this for bad flags and values
        raise_config_error(message)

    def parse_command(self, argv: list[str]) -> tuple:
        """The dataclasses (and a namespace of extra arguments); a flag nobody knows is a ConfigError."""
        *parsed, remaining = self.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if remaining:
            known = [o for action in self._actions for o in action.option_strings]
            flag = next((r for r in remaining if r.startswith("-")), remaining[0])
            raise ConfigError(f"unknown flag or argument {flag!r}{suggest(flag, known)}")
        return tuple(parsed)


class CommandParser(argparse.ArgumentParser):
    """A plain ``argparse`` parser with the same one-line errors, for commands without dataclasses."""

    def error(self, message: str):
        raise_config_error(message)


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe YAML: a flat mapping of known keys. Raises ConfigError naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe: {path} does not exist; expected a YAML file of recipe keys")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"recipe {path}: cannot be read as UTF-8 text ({err})") from None
    data = load_yaml(text, f"recipe {path}")  # bounded: alias bombs and repeated keys are refused
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path}: expected a mapping of keys to values, got a {type(data).__name__}")
    keys = set(known_keys())
    for key, value in data.items():
        if key not in keys:
            raise ConfigError(f"recipe {path}: unknown key {key!r}{suggest(str(key), keys)}")
        if isinstance(value, dict) and key not in _DICT_KEYS:
            raise ConfigError(f"recipe {path}: key {key!r} takes a single value or a list, not a mapping")
    return data


# TrainingArguments fields that accept a mapping (JSON-like values).
_DICT_KEYS = {f.name for f in fields(FinetuneTrainingArguments) if "dict" in str(f.type).lower()} | {
    "label_mapping"
}


# Keys about this invocation, not the recipe: recipe.yaml in the output folder leaves them out.
RUN_ONLY_KEYS = {"resume_from_checkpoint"}


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def _drop_auto_flags(argv: list[str]) -> list[str]:
    """``--bf16 auto`` (or ``--bf16=auto``) is the same as leaving ``--bf16`` out."""
    out: list[str] = []
    skip = False
    for index, token in enumerate(argv):
        if skip:
            skip = False
            continue
        if token.startswith("--"):
            key, _, inline = token[2:].partition("=")
            if key.replace("-", "_") in AUTO_KEYS:
                if inline and _is_auto(inline):
                    continue
                if not inline and index + 1 < len(argv) and _is_auto(argv[index + 1]):
                    skip = True
                    continue
        out.append(token)
    return out


RESUME_FLAG = "--resume"


def _expand_resume(argv: list[str]) -> list[str]:
    """``--resume`` (or ``--resume true``) is ``--resume_from_checkpoint last``: continue from the newest
    complete checkpoint in output_dir; ``--resume false`` is the same as leaving it out."""
    out: list[str] = []
    skip = False
    for index, token in enumerate(argv):
        if skip:
            skip = False
            continue
        key, _, inline = token.partition("=")
        if key != RESUME_FLAG:
            out.append(token)
            continue
        value = inline
        if not inline and index + 1 < len(argv) and not argv[index + 1].startswith("--"):
            value, skip = argv[index + 1], True
        value = value.strip().lower() or "true"
        if value not in ("true", "false", "yes", "no", "1", "0"):
            raise ConfigError(f"--resume: got {value!r}; expected no value, true or false")
        if value in ("true", "yes", "1"):
            out += ["--resume_from_checkpoint", "last"]
    return out


def _flag_keys(argv: list[str]) -> list[str]:
    keys = []
    for token in argv:
        if token.startswith("--"):
            keys.append(token[2:].split("=", 1)[0].replace("-", "_"))
    return keys


def parse_train_args(argv: list[str] | None = None) -> ParsedArgs:
    """Parse ``[RECIPE.yaml] [--key value ...]`` into (model_args, data_args, training_args).

    The result also carries ``explicit``: the keys given in the recipe or as flags, with their final values,
    which is what ``recipe.yaml`` in the output folder records.
    """

    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_path = None
    if argv and not argv[0].startswith("-"):
        recipe_path = argv.pop(0)
    recipe = load_recipe(recipe_path) if recipe_path else {}
    argv = _drop_auto_flags(_expand_resume(argv))
    recipe = {k: v for k, v in recipe.items() if not (k in AUTO_KEYS and _is_auto(v))}

    parser = RecipeParser()
    valid = set(known_keys())
    for key in _flag_keys(argv):
        if key not in valid and key not in ("help", "h"):
            raise ConfigError(f"unknown flag --{key}{suggest(key, valid)}")
    # Recipe values become the parser's defaults, so flags override them; string values are type-checked
    # by argparse, other types by the dataclasses' __post_init__.
    defaults = {}
    list_keys = {f.name for cls in DATACLASSES for f in fields(cls) if "list" in str(f.type).lower()}
    for key, value in recipe.items():
        if isinstance(value, dict):
            import json

            value = json.dumps(value)
        defaults[key] = value
    parser.set_defaults(**defaults)
    for action in parser._actions:
        if action.dest in defaults:
            action.required = False
            default = defaults[action.dest]
            if action.type is int and isinstance(default, float) and default.is_integer():
                defaults[action.dest] = action.default = int(default)  # 8.0 in YAML means 8
            elif action.type is not None and not isinstance(default, str) and default is not None:
                _check_type(action, default, recipe_path, action.dest in list_keys)
    try:
        model_args, data_args, training_args, remaining = parser.parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True
        )
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(first) from None
    if remaining:
        raise ConfigError(
            f"unexpected argument {remaining[0]!r}; flags are --key value, the recipe comes first"
        )
    parsed = ParsedArgs((model_args, data_args, training_args))
    explicit = {}
    by_name = {}
    for obj in parsed:
        for f in fields(obj):
            by_name[f.name] = obj
    for key in list(recipe) + _flag_keys(argv):
        if key in by_name and key not in RUN_ONLY_KEYS:
            value = getattr(by_name[key], key)
            explicit[key] = _plain(value, key)
    parsed.explicit = explicit
    parsed.recipe_path = recipe_path
    return parsed


def _check_type(
    action: argparse.Action, value: Any, recipe_path: str | None, takes_list: bool = False
) -> None:
    """Check a non-string recipe value against the flag's type (argparse only converts strings)."""
    where = f"recipe {recipe_path}: " if recipe_path else ""
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and action.nargs not in ("+", "*") and not takes_list:
        raise ConfigError(f"{where}{action.dest}: got a list {value!r}; expected a single value")
    if action.type is str and not isinstance(value, list) and action.dest not in _TEXT_OR_BOOL_KEYS:
        _check_text(action.dest, value, where)
    for item in values:
        if action.type in (int, float) and (isinstance(item, bool) or not isinstance(item, (int, float))):
            raise ConfigError(f"{where}{action.dest}: got {item!r}; expected a {action.type.__name__}")
        if action.type is int and isinstance(item, float) and not item.is_integer():
            raise ConfigError(f"{where}{action.dest}: got {item!r}; expected an integer")
    if action.choices is not None:
        for item in values:
            if item not in action.choices and str(item) not in [str(c) for c in action.choices]:
                raise ConfigError(
                    f"{where}{action.dest}: got {item!r}; expected one of {[str(c) for c in action.choices]}"
                )


# Text keys that also take true/false (label_mapping: false is none; resume_from_checkpoint: true is last).
_TEXT_OR_BOOL_KEYS = {"label_mapping", "resume_from_checkpoint"}


def _check_text(key: str, value: Any, where: str) -> None:
    """A text key whose YAML value is not text (``train_dir: 12``, ``output_dir: 2024-01-01``, ``eval_strategy:
    no``, ``!!binary``) is refused: argparse leaves it as the int, date, bool or bytes YAML made of it, which
    failed far away with a traceback (or, for ``no``, as 'False is not a valid IntervalStrategy')."""
    if isinstance(value, str):
        return
    kinds = {
        "bool": "boolean",
        "int": "number",
        "float": "number",
        "date": "date",
        "datetime": "date and time",
    }
    kind = kinds.get(type(value).__name__, f"{type(value).__name__} value")
    why = (
        " (YAML reads unquoted yes/no/on/off/true/false as true or false)" if isinstance(value, bool) else ""
    )
    raise ConfigError(
        f"{where}{key}: got {value!r}, which YAML read as a {kind}{why}; expected text: write the value in quotes"
    )


def _plain(value: Any, key: str = "") -> Any:
    """A YAML-safe form of a parsed value (enums to their string values)."""

    if isinstance(value, enum.Enum):
        return value.value
    if key == "label_mapping" and isinstance(value, str) and value.lstrip().startswith("{"):
        import json

        return json.loads(value)  # recorded as the mapping it was given as
    if key == "report_to" and isinstance(value, (list, tuple)) and not value:
        return "none"  # TrainingArguments turns "none" into []
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
