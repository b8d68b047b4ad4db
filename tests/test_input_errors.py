"""Bad input is one line on stderr and exit status 2, no traceback (issue 20, part B: cases 6-9, 11-13,
15-17 and duplicate YAML keys). One test per case, named after it.

Most run the command in this process (``cli.main``; a traceback would fail the test as an exception);
a few run it as a subprocess, as a user does.
"""

from __future__ import annotations

import pytest
from conftest import run_hf_finetune

QUICK = ["--image_size", "32", "--per_device_train_batch_size", "4", "--max_steps", "1"]
QUICK += ["--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false"]
QUICK += ["--eval_on_start", "false", "--report_to", "none", "--dataloader_num_workers", "0"]


def one_line_error(stderr: str, *fragments: str) -> str:
    """The one line of ``stderr`` (``hf-finetune: error: ...``), checked to hold every fragment."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hf-finetune: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def cli_error(capsys, *args, fragments=()) -> str:
    """Run ``hf-finetune ARGS`` in this process: exit status 2 and one line naming every fragment."""
    from hf_finetune import cli

    capsys.readouterr()
    status = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    assert status == 2, captured.out + captured.err
    return one_line_error(captured.err, *fragments)


def subprocess_error(*args, fragments=()) -> str:
    proc = run_hf_finetune(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    return one_line_error(proc.stderr, *fragments)


# --- case 17 and duplicate keys: the recipe YAML -----------------------------------------------------


def test_yaml_alias_bomb_refused(tmp_path, capsys):
    """Nine levels of nine aliases inside label_mapping: 9**9 strings once expanded (gigabytes as JSON)."""
    lines = ["model_name_or_path: x", "train_dir: x", "label_mapping:", '  l0: &l0 ["lol", "lol", "lol"]']
    for level in range(1, 10):
        lines.append(f"  l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    assert recipe.stat().st_size < 1000
    line = cli_error(capsys, "train", recipe, fragments=(str(recipe), "aliases"))
    assert "100,000" in line
    # the same bound applies to a label-mapping file
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("\n".join(lines[3:]).replace("  ", "", 1).replace("\n  ", "\n") + "\n")
    from hf_finetune.errors import ConfigError
    from hf_finetune.labels import parse_label_mapping

    with pytest.raises(ConfigError, match="label_mapping: .*mapping.yaml: it expands to more than"):
        parse_label_mapping(str(mapping))


def test_duplicate_yaml_keys_refused(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: x\ntrain_dir: x\nlearning_rate: 0.1\nlearning_rate: 0.001\n")
    cli_error(capsys, "train", recipe, fragments=(str(recipe), "'learning_rate'", "twice", "line 4"))
    # a merge key (<<) may still be overridden: that is what it is for
    from hf_finetune.safe_yaml import load_yaml

    assert load_yaml("a: &a {x: 1}\nb:\n  <<: *a\n  x: 2\n", "test") == {"a": {"x": 1}, "b": {"x": 2}}


# --- case 13: numeric recipe values ------------------------------------------------------------------

OUT_OF_RANGE = {
    "num_train_epochs": ".inf",
    "seed": "-1",
    "gradient_accumulation_steps": "0",
    "image_size": "100000",
    "weight_decay": "-1",
    "freeze_patterns": "[[a]]",
    "max_steps": "-5",
    "learning_rate": ".nan",
}


@pytest.mark.parametrize("key, value", list(OUT_OF_RANGE.items()), ids=list(OUT_OF_RANGE))
def test_numeric_recipe_values_out_of_range(tmp_path, capsys, key, value):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: x\ntrain_dir: {tmp_path}\n{key}: {value}\n")
    line = cli_error(capsys, "train", recipe, "--output_dir", tmp_path / "out", fragments=(f"{key}: got",))
    assert line.split(": error: ")[1].startswith(f"{key}: got"), line
    assert not (tmp_path / "out").exists()


def test_every_numeric_key_has_a_range():
    """The one table covers every int/float key of the recipe (a new key without a range fails here)."""
    from dataclasses import fields

    from hf_finetune.config_ranges import RANGES
    from hf_finetune.configs import DataArguments, FinetuneTrainingArguments, ModelArguments

    numeric = {
        spec.name
        for cls in (ModelArguments, DataArguments, FinetuneTrainingArguments)
        for spec in fields(cls)
        if spec.init and any(t in str(spec.type) for t in ("int", "float"))
    }
    assert numeric - set(RANGES) == set()
