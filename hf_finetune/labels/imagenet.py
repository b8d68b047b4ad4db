"""ImageNet-1k as a source classifier: its synset ids, names and WordNet definitions (timm's bundled data), and
whether a classifier's labels are ImageNet-1k's (with or without a ``background`` row 0)."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from timm.data import ImageNetInfo

from hf_finetune.labels.names import normalize_label

__all__ = ["BACKGROUND", "SYNSET_RE", "imagenet_classes", "imagenet_offset"]

SYNSET_RE = re.compile(r"^n\d{8}$")  # a WordNet synset id (n07697537)
BACKGROUND = "background"  # row 0 of 1001-way checkpoints
_IMAGENET_MIN_AGREEMENT = 0.95


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(synsets, descriptions, definitions) of ImageNet-1k from timm's bundled WordNet data."""

    info = ImageNetInfo()
    synsets = tuple(info.label_names())
    descriptions = tuple(info.index_to_description(i) for i in range(len(synsets)))
    definitions = tuple(
        info.index_to_description(i, detailed=True)[len(descriptions[i]) + 2 :] for i in range(len(synsets))
    )
    return synsets, descriptions, definitions


def imagenet_offset(source_labels: Sequence[str]) -> int | None:
    """0 or 1 when ``source_labels`` are ImageNet-1k (1: row 0 is ``background``), else ``None``.

    Labels are compared after normalization with timm's names (or synset ids); at least 95% must agree,
    since checkpoints spell a few classes differently.
    """
    n = len(source_labels)
    if n == 1001 and normalize_label(source_labels[0]) == BACKGROUND:
        offset, rest = 1, source_labels[1:]
    elif n == 1000:
        offset, rest = 0, source_labels
    else:
        return None
    synsets, descriptions, _ = imagenet_classes()
    same = sum(
        normalize_label(s) in (normalize_label(d), y)
        for s, d, y in zip(rest, descriptions, synsets, strict=True)
    )
    return offset if same >= _IMAGENET_MIN_AGREEMENT * len(descriptions) else None
