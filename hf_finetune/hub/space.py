"""The files of a Gradio Space that serves a pushed model: ``app.py`` (from ``templates/space_app.txt``),
``requirements.txt`` and the Space's ``README.md`` (its front matter: ``sdk: gradio``, ``app_file: app.py``).

    space_files("my-org/vit-beans", "my-org/vit-beans-demo")   # hf-finetune push OUT --repo-id ... --space ...

The app loads the model repo by name (transformers' image-classification pipeline, as ``hf-finetune predict``
scores), so the Space follows every later push to that repo. ``requirements.txt`` names the libraries at least
at the versions installed here (timm for a timm-origin model)."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from string import Template
from typing import Any

__all__ = ["SPACE_FILES", "space_requirements", "space_files"]

TEMPLATES = Path(__file__).with_name("templates")
SPACE_FILES = ("README.md", "app.py", "requirements.txt")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package).split("+")[0]
    except metadata.PackageNotFoundError:
        return None


def space_requirements(config: dict[str, Any]) -> list[str]:
    """The Space's pip requirements: transformers, torch, timm for a timm-origin ``config`` (gradio comes with
    the Space's SDK), each at least at the version installed here."""
    packages = ["transformers", "torch"]
    if config.get("model_type") == "timm_wrapper" or "architecture" in config:
        packages.append("timm")
    lines = []
    for package in packages:
        version = _version(package)
        lines.append(f"{package}>={version}" if version else package)
    return lines


def space_files(
    model_repo: str, space_id: str, config: dict[str, Any], revision: str = "main", top_k: int = 5
) -> dict[str, bytes]:
    """``{path in the Space repo: bytes}`` of a Space showing ``model_repo`` at ``revision``; ``config`` is the
    pushed ``config.json``. Both ids are checked Hub repo ids (letters, digits, ``-_.``), so they appear in the
    app's source as plain string literals."""
    title = space_id.split("/")[1]
    app = Template((TEMPLATES / "space_app.txt").read_text(encoding="utf-8")).substitute(
        model_repo=model_repo,
        model_repo_literal=json.dumps(model_repo),
        revision_literal=json.dumps(revision),
        top_k=min(int(top_k), len(config.get("id2label") or {}) or int(top_k)),
        title_literal=json.dumps(title),
        heading_literal=json.dumps(f"# {title}\nThe image classifier {model_repo} on the Hugging Face Hub."),
    )
    gradio = _version("gradio")
    readme = Template((TEMPLATES / "space_readme.md").read_text(encoding="utf-8")).substitute(
        title=title,
        title_yaml=json.dumps(title),
        model_repo=model_repo,
        sdk_version_line=f"sdk_version: {gradio}\n" if gradio else "",
    )
    requirements = "\n".join(space_requirements(config)) + "\n"
    return {
        "README.md": readme.encode("utf-8"),
        "app.py": app.encode("utf-8"),
        "requirements.txt": requirements.encode("utf-8"),
    }
