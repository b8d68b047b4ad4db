"""The documents: a short README that opens with the set-up commands and carries the measured headline table,
a recipe-keys page generated from the dataclasses (stale is a failure), links and paths that resolve, every
benchmark script described in bench/README.md, and no narration of earlier work outside the CHANGELOG."""

from __future__ import annotations

import dataclasses
import glob
import re
import unicodedata
from pathlib import Path

from conftest import ROOT
from transformers import TrainingArguments

from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_finetune.config.reference import REGENERATE, render_recipe_keys

README = (ROOT / "README.md").read_text(encoding="utf-8")
RECIPE_KEYS = ROOT / "docs" / "recipe-keys.md"
BENCH_README = ROOT / "bench" / "README.md"
# The pages whose links and code paths must resolve; the CHANGELOG names old paths on purpose.
PAGES = [
    ROOT / "README.md",
    BENCH_README,
    ROOT / "recipes" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]


def _between(text: str, marker: str) -> str:
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    assert start in text and end in text, f"markers {start} ... {end} missing"
    return text[text.index(start) + len(start) : text.index(end)]


def _rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("|---")
    ]


def test_readme_opens_with_make_demo_and_make_test():
    setup = README.index("## Set up")
    assert (
        README.index("make demo", setup) < README.index("make test", setup) < README.index("## Command line")
    )


def test_readme_is_a_five_minute_guide():
    lines = README.count("\n")
    assert lines <= 200, f"README.md has {lines} lines; move detail to a docs/ page"
    for page in (
        "how-a-run-works",
        "label-mapping",
        "speed",
        "reliability",
        "distributed",
        "hub",
        "recipe-keys",
    ):
        assert f"docs/{page}.md" in README, f"README does not link docs/{page}.md"
    assert "bench/README.md" in README


def test_recipe_keys_page_is_current():
    page = RECIPE_KEYS.read_text(encoding="utf-8") if RECIPE_KEYS.exists() else ""
    assert page == render_recipe_keys(), f"docs/recipe-keys.md is stale: regenerate it with `{REGENERATE}`"


def test_every_project_key_is_documented():
    page = RECIPE_KEYS.read_text(encoding="utf-8")
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    keys = [f.name for cls in (ModelArguments, DataArguments) for f in dataclasses.fields(cls)]
    keys += [f.name for f in dataclasses.fields(FinetuneTrainingArguments) if f.name not in base]
    missing = [k for k in keys if f"| `{k}` |" not in page]
    assert not missing, f"docs/recipe-keys.md lacks recipe keys: {missing}"
    assert len(keys) >= 25


def test_every_command_is_documented():
    from hf_finetune.cli.commands import COMMANDS

    for command in COMMANDS:
        assert f"hf-finetune {command}" in README


# The headline table's rows and columns, as bench/defaults_table.py names them.
_HEADLINE_MODELS = {
    "MobileNetV2 (transformers)": "mobilenet_v2",
    "EfficientNet-Lite0 (timm)": "efficientnet_lite0",
}
_HEADLINE_DATA = {
    "hotdog": "hotdog",
    "CIFAR-10 60/20": "cifar10-split",
    "digits": "digits (image_size 64) (augmentation none)",
    "CIFAR-10 800/200": "cifar10-8k",
}


def test_readme_headline_table_is_the_measured_one():
    """Each cell of the README's headline table is the saved model's accuracy and the probe floor of the row
    bench/defaults_table.py wrote to bench/results/."""
    measured = {}
    for name in ("defaults_table-defaults.md", "defaults_table-defaults-8k.md"):
        for row in _rows((ROOT / "bench" / "results" / name).read_text(encoding="utf-8")):
            if row[0] != "model":
                measured[row[0], row[1]] = (row[5], row[6])
    header, *body = _rows(_between(README, "HEADLINE_TABLE"))
    data = [next(v for k, v in _HEADLINE_DATA.items() if column.startswith(k)) for column in header[1:]]
    assert len(body) == len(_HEADLINE_MODELS)
    checked = 0
    for row in body:
        model = _HEADLINE_MODELS[row[0]]
        for cell, dataset in zip(row[1:], data, strict=True):
            if cell == "not run":
                assert (model, dataset) not in measured
                continue
            saved, probe = (part.strip() for part in cell.replace(" (one seed)", "").split(" / "))
            assert measured[model, dataset] == (saved, probe), (model, dataset, cell)
            checked += 1
    assert checked >= 7


def test_bench_readme_describes_every_benchmark():
    page = BENCH_README.read_text(encoding="utf-8")
    scripts = sorted(p.name for p in (ROOT / "bench").iterdir() if p.suffix in (".py", ".sh"))
    missing = [s for s in scripts if f"bench/{s}" not in page]
    assert not missing, f"bench/README.md says nothing of {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = unicodedata.normalize("NFC", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


def test_links_and_anchors_resolve():
    broken = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


_PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*(\.\w+)?$")  # NAME.yaml, MODEL: a placeholder, not a path


def _module_text(dotted: str) -> str | None:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:end])
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                rest = parts[end:]
                text = path.read_text(encoding="utf-8")
                return text if not rest or re.search(rf"\b{re.escape(rest[0])}\b", text) else None
    return None


def test_code_paths_in_the_documents_exist():
    """Every repository path (hf_finetune/..., tests/..., bench/...) and every hf_finetune.module.name the
    pages mention exists, so a move of a module shows here."""
    missing = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for path in re.findall(
            r"(?<![\w/.\-])(?:hf_finetune|tests|bench|recipes|docs)/[\w/.*\-]*[\w*]", text
        ):
            if any(_PLACEHOLDER.match(part) for part in path.split("/")):
                continue
            if not glob.glob(str(ROOT / path)):
                missing.append(f"{page.relative_to(ROOT)}: {path}")
        for dotted in re.findall(r"(?<![\w/.])hf_finetune(?:\.[A-Za-z_]\w*)+", text):
            if _module_text(dotted) is None:
                missing.append(f"{page.relative_to(ROOT)}: {dotted}")
    assert not missing, missing


_NARRATION = re.compile(
    r"\b(this round|previous round|earlier round|last round|previously|we changed|we now|"
    r"the invocation before|the previous defaults|not yet understood)\b",
    re.I,
)


def test_no_page_narrates_earlier_work():
    """What changed belongs to CHANGELOG.md; docs/defaults.md keeps the before/after table issue 19 asks for."""
    found = []
    for page in PAGES:
        if page.name == "defaults.md":
            continue
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if _NARRATION.search(line):
                found.append(f"{page.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, found


def test_changelog_new_import_paths_exist():
    """Point 7 of issue 21: where an old import path went, the CHANGELOG says, and the new path is there."""
    rows = _rows(_between((ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), "MOVED_MODULES"))
    new_paths = [row[1].strip("`") for row in rows if row[1].startswith("`hf_finetune.")]
    assert len(new_paths) >= 40
    missing = [path for path in new_paths if _module_text(path) is None]
    assert not missing, f"CHANGELOG.md names import paths that do not exist: {missing}"


_MEASURED = re.compile(
    r"bench/|measured|\b\d+(\.\d+)?(-\d+(\.\d+)?)?x (faster|slower)\b|\btook\b|images/s", re.I
)


def test_help_strings_state_the_rule_not_measured_figures():
    base = {f.name: f.metadata.get("help") for f in dataclasses.fields(TrainingArguments)}
    found = [
        f"{f.name}: {f.metadata['help']}"
        for cls in (ModelArguments, DataArguments, FinetuneTrainingArguments)
        for f in dataclasses.fields(cls)
        if f.metadata.get("help") != base.get(f.name) and _MEASURED.search(f.metadata.get("help", ""))
    ]
    assert not found, found
