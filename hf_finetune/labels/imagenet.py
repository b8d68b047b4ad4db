"""ImageNet-1k as a source classifier: its synset ids, names and WordNet definitions (timm's bundled data), and
whether a classifier's labels are ImageNet-1k's (with or without a ``background`` row 0). The larger sets
(ImageNet-12k, -21k/22k) are in :mod:`hf_finetune.labels.label_sets`."""

from __future__ import annotations

import re
from collections.abc import Sequence

from hf_finetune.labels.label_sets import BACKGROUND, label_set, recognize_label_set

__all__ = ["BACKGROUND", "SYNSET_RE", "imagenet_classes", "imagenet_offset"]

SYNSET_RE = re.compile(r"^n\d{8}$")  # a WordNet synset id (n07697537)


def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(synsets, descriptions, definitions) of ImageNet-1k from timm's bundled WordNet data."""

    known = label_set("imagenet-1k")
    return known.synsets, known.descriptions, known.definitions


def imagenet_offset(source_labels: Sequence[str]) -> int | None:
    """0 or 1 when ``source_labels`` are ImageNet-1k (1: row 0 is ``background``), else ``None``.

    Labels are compared after normalization with timm's names (or synset ids); at least 95% must agree,
    since checkpoints spell a few classes differently.
    """
    known = recognize_label_set(source_labels)
    return known.offset if known is not None and known.label_set.name == "imagenet-1k" else None
