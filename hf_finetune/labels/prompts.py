"""Prompt templates for zero-shot heads (:mod:`hf_finetune.models.zero_shot`): a class name becomes a few
sentences (``a photo of a {}.``) whose text embeddings, averaged, start the class's row.

The default templates (:data:`DEFAULT_TEMPLATES`, kept with the recipe key ``zero_shot_templates`` in
:mod:`hf_finetune.config.model`, which checks them) are seven of the 80 ImageNet templates of the CLIP paper
(Radford et al. 2021, its prompt-engineering notebook), those that describe a plain photograph.
"""

from __future__ import annotations

from collections.abc import Sequence

from hf_finetune.config.model import ZERO_SHOT_TEMPLATES as DEFAULT_TEMPLATES

__all__ = ["DEFAULT_TEMPLATES", "prompt_name", "prompts_for"]


def prompt_name(label: str) -> str:
    """The class name as it goes into a prompt: ``_`` as spaces, whitespace collapsed (``hot_dog`` -> ``hot dog``)."""
    return " ".join(str(label).replace("_", " ").split())


def prompts_for(label: str, templates: Sequence[str]) -> list[str]:
    """One sentence per template for ``label`` (its :func:`prompt_name`)."""
    name = prompt_name(label)
    return [template.format(name) for template in templates]
