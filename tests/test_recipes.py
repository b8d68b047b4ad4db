"""Every shipped recipe parses, and every recipe folder's README gives its launch line."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import ROOT, requires_shared

from hf_finetune.config.parser import parse_train_args

RECIPES_DIR = ROOT / "recipes"
RECIPES = sorted(
    p for p in RECIPES_DIR.rglob("*.yaml") if "accelerate_configs" not in p.relative_to(RECIPES_DIR).parts
)
IDS = [str(p.relative_to(ROOT)) for p in RECIPES]


def test_at_least_one_recipe_exists():
    assert RECIPES, f"no recipes/**/*.yaml under {RECIPES_DIR}"


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_recipe_parses(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)  # ../shared paths inside recipes are relative to the repo root
    rel = recipe.relative_to(ROOT).as_posix()
    raw = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    assert isinstance(raw, dict) and raw, f"{rel} is not a non-empty mapping"
    parsed = parse_train_args([rel])
    model_args, data_args, training_args = parsed
    assert model_args.model_name_or_path == raw["model_name_or_path"]
    sources = {
        k: getattr(data_args, k) for k in ("dataset_name", "train_dir", "train_file") if getattr(data_args, k)
    }
    assert len(sources) == 1
    assert set(parsed.explicit) == set(raw)  # every key of the file is recorded, none is lost
    if "output_dir" in raw:
        assert training_args.output_dir == raw["output_dir"]


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_recipe_folder_readme_has_launch_line(recipe):
    readme = recipe.parent / "README.md"
    rel = recipe.relative_to(ROOT).as_posix()
    assert readme.is_file(), f"{readme.relative_to(ROOT)} is missing; it must give `hf-finetune train {rel}`"
    text = readme.read_text(encoding="utf-8")
    assert f"hf-finetune train {rel}" in text, (
        f"{readme.relative_to(ROOT)} lacks the launch line `hf-finetune train {rel}`"
    )
    # and its accelerate launch line, with a config of recipes/accelerate_configs that exists
    launches = re.findall(
        r"accelerate launch --config_file (recipes/accelerate_configs/\S+\.yaml) -m hf_finetune train (\S+)",
        text,
    )
    assert launches, f"{readme.relative_to(ROOT)} lacks an `accelerate launch --config_file ...` line"
    for config, recipe_path in launches:
        assert (ROOT / config).is_file(), f"{readme.relative_to(ROOT)} names {config}, which does not exist"
        assert (ROOT / recipe_path).is_file(), f"{readme.relative_to(ROOT)} names {recipe_path}"


@requires_shared
@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_recipe_shared_paths_exist(recipe, monkeypatch):
    """Where ../shared is present, the checkpoints and data a recipe names there exist."""
    monkeypatch.chdir(ROOT)
    raw = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    shared_paths = {k: v for k, v in raw.items() if isinstance(v, str) and v.startswith("../shared/")}
    for key, value in shared_paths.items():
        resolved = (ROOT / value).resolve()
        assert resolved.exists(), f"{recipe.relative_to(ROOT)}: {key} {value} does not exist"


# Recipes that start from a Hugging Face Hub id (tests cannot download: their keys and values are checked)
HUB_RECIPES = {
    "recipes/vit/hotdog/config_full.yaml": "google/vit-base-patch16-224",
    "recipes/convnext/hotdog/config_full.yaml": "facebook/convnext-tiny-224",
    "recipes/convnext/cifar10/config_in22k.yaml": "timm/convnext_tiny.fb_in22k",
}


@pytest.mark.parametrize("rel", sorted(HUB_RECIPES))
def test_hub_recipe_values(rel, monkeypatch):
    """Each Hub recipe names its checkpoint by Hub id (not a local path) and every value of the file arrives in
    the parsed arguments unchanged (numbers as numbers)."""
    monkeypatch.chdir(ROOT)
    raw = yaml.safe_load((ROOT / rel).read_text(encoding="utf-8"))
    parsed = parse_train_args([rel])
    assert parsed[0].model_name_or_path == HUB_RECIPES[rel]
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", HUB_RECIPES[rel]) and not (ROOT / HUB_RECIPES[rel]).exists()
    for key, value in raw.items():
        holders = [args for args in parsed[:3] if hasattr(args, key)]
        assert holders, f"{rel}: {key} is in no argument dataclass"
        got = getattr(holders[0], key)
        assert got == value and type(got) is type(value), f"{rel}: {key} = {got!r}, the file says {value!r}"
    assert 0 < parsed[2].layer_decay < 1 and parsed[2].num_train_epochs >= 1
