"""The README documents every recipe key of the project's dataclasses and opens with the set-up commands."""

from __future__ import annotations

import dataclasses

from conftest import ROOT
from transformers import TrainingArguments

from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_opens_with_make_demo_and_make_test():
    setup = README.index("## Set up")
    assert (
        README.index("make demo", setup) < README.index("make test", setup) < README.index("## Command line")
    )


def test_every_project_key_is_documented():
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    keys = [f.name for cls in (ModelArguments, DataArguments) for f in dataclasses.fields(cls)]
    keys += [f.name for f in dataclasses.fields(FinetuneTrainingArguments) if f.name not in base]
    missing = [k for k in keys if f"`{k}`" not in README]
    assert not missing, f"README lacks recipe keys: {missing}"
    assert len(keys) >= 25


def test_every_command_is_documented():
    from hf_finetune.cli import COMMANDS

    for command in COMMANDS:
        assert f"hf-finetune {command}" in README
