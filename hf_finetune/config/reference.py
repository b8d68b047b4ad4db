"""The recipe-keys page, docs/recipe-keys.md, generated from the config dataclasses.

Every key a recipe may set is a field of :class:`~hf_finetune.config.arguments.ModelArguments`,
:class:`~hf_finetune.config.arguments.DataArguments` or
:class:`~hf_finetune.config.arguments.FinetuneTrainingArguments`. The page groups the keys by the class that
declares each field (the first class in the method resolution order whose own annotations name it), titled by
that class's docstring, and gives each key's type, allowed range (:data:`hf_finetune.config.ranges.RANGES`),
default and help. Fields of transformers' ``TrainingArguments`` that the project does not redeclare are not
listed one by one; the page points to transformers' documentation for them. A redeclared one shows
transformers' default beside the project's.

Regenerate the page (``tests/test_docs.py`` fails while it is stale)::

    python -m hf_finetune.config.reference --write
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import sys
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_finetune.config.ranges import RANGES

__all__ = ["PAGE", "REGENERATE", "declaring_class", "render_recipe_keys", "main"]

PAGE = Path(__file__).resolve().parents[2] / "docs" / "recipe-keys.md"
REGENERATE = "python -m hf_finetune.config.reference --write"
_TRANSFORMERS_DOCS = (
    "https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments"
)
_TOP_CLASSES = (ModelArguments, DataArguments, FinetuneTrainingArguments)


def declaring_class(cls: type, name: str) -> type:
    """The first class in ``cls``'s MRO whose own annotations declare ``name``."""
    for klass in cls.__mro__:
        if name in inspect.get_annotations(klass):
            return klass
    return cls  # pragma: no cover - every dataclass field is annotated somewhere


def _is_ours(klass: type) -> bool:
    return klass.__module__.split(".")[0] == "hf_finetune"


def _title(klass: type) -> str:
    doc = inspect.getdoc(klass) or ""
    first = doc.strip().splitlines()[0].strip() if doc.strip() else ""
    if not first or first.startswith(f"{klass.__name__}("):  # the docstring dataclass() writes
        return f"`{klass.__name__}`"
    return f"`{klass.__name__}`: {first.replace('``', '`')}"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell: ``|`` escaped everywhere (GitHub's tables need it inside code
    spans too), ``*`` and ``<`` outside code spans."""
    parts = " ".join(str(text).split()).split("`")
    for i in range(0, len(parts), 2):  # the even parts lie outside code spans
        parts[i] = parts[i].replace("*", "\\*").replace("<", "&lt;")
    return "`".join(parts).replace("|", "\\|")


def _value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, (list, tuple)):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{value!r}`"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _type(f: dataclasses.Field, klass: type) -> str:
    # the annotation as the class declares it: HfArgumentParser rewrites ``field.type`` in place once a parser
    # is built (``str | None`` becomes ``str``), so the field's own type depends on what ran before
    declared = inspect.get_annotations(klass).get(f.name, f.type)
    if isinstance(declared, str):  # modules with `from __future__ import annotations`
        kind = declared
    else:
        kind = declared.__name__ if isinstance(declared, type) else str(declared).replace("typing.", "")
    text = f"`{kind}`"
    choices = f.metadata.get("choices")
    if choices:
        text += ": " + ", ".join(f"`{c}`" for c in choices)
    if f.name in RANGES:
        text += f"; {RANGES[f.name].expected}"
    return _cell(text)


def _groups() -> dict[type, list[dataclasses.Field]]:
    """Our fields by declaring class, in the order the classes first appear, each in declaration order."""
    groups: dict[type, list[dataclasses.Field]] = {}
    for top in _TOP_CLASSES:
        for f in dataclasses.fields(top):
            klass = declaring_class(top, f.name)
            if _is_ours(klass):
                groups.setdefault(klass, []).append(f)
    for klass, fields in groups.items():
        order = list(inspect.get_annotations(klass))
        fields.sort(key=lambda f: order.index(f.name))
    return groups


def render_recipe_keys() -> str:
    """The markdown of docs/recipe-keys.md."""
    base = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    lines = [
        "# Recipe keys",
        "",
        f"<!-- Generated from hf_finetune/config/ by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "A recipe is a flat YAML mapping of the keys below; every key is also a command-line flag of",
        "`hf-finetune train` (`--key value`), and flags override the file. The shipped recipes and their launch",
        "lines: [recipes/README.md](../recipes/README.md). Where the default is unset, leaving the key out (or",
        "writing `auto`) lets the run choose; it logs the choice and its reason ([speed.md](speed.md)).",
        "",
        "Every other key of transformers' `TrainingArguments` (`gradient_accumulation_steps`, `torch_compile`,",
        "`report_to`, `seed`, ...) is accepted too, with transformers' meaning and default:",
        f"[transformers' documentation]({_TRANSFORMERS_DOCS}).",
        "Where a table below lists a `TrainingArguments` key, the project sets its own default (transformers' is",
        "given beside it). `hub_token` is refused: the token comes from the environment ([hub.md](hub.md)).",
    ]
    for klass, fields in _groups().items():
        lines += [
            "",
            f"## {_title(klass)}",
            "",
            "| key | type | default | what it does |",
            "|---|---|---|---|",
        ]
        for f in fields:
            default = _value(_default(f))
            if f.name in base:
                default += f" (transformers: {_value(_default(base[f.name]))})"
            help_text = _cell(f.metadata.get("help", ""))
            lines.append(f"| `{f.name}` | {_type(f, klass)} | {_cell(default)} | {help_text} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hf_finetune.config.reference", description="Print (or --write) docs/recipe-keys.md."
    )
    parser.add_argument("--write", action="store_true", help=f"write {PAGE} instead of printing it")
    args = parser.parse_args(argv)
    page = render_recipe_keys()
    if args.write:
        PAGE.write_text(page, encoding="utf-8")
        print(f"wrote {PAGE}")
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
