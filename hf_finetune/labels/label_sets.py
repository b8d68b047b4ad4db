"""The ImageNet label sets timm knows (ImageNet-1k, -12k, -21k/22k and their variants) as source classifiers: each
set's WordNet synset ids, names and definitions, and which set (if any) a classifier's labels are.

A checkpoint's labels are recognised by their count (the set's size, or one more with a ``background`` row 0)
and their text: at least 95% of them must equal the set's names (timm's WordNet lemmas, as transformers'
``TimmWrapperConfig`` fills them for a timm config without ``label_names``, or as ``facebook/convnext-*-22k``
spell them) or its synset ids (``n01440764``, as ``timm`` writes ``label_names``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from timm.data import ImageNetInfo

from hf_finetune.labels.names import normalize_label

__all__ = ["BACKGROUND", "SET_SIZES", "LabelSet", "KnownLabels", "label_set", "recognize_label_set"]

BACKGROUND = "background"  # row 0 of 1001-way checkpoints
# timm's subset names by number of classes (timm.data.imagenet_info); tests/test_label_sets.py checks the sizes
SET_SIZES = {
    1000: "imagenet-1k",
    11221: "imagenet-21k-miil",  # the MIIL subset of fall11
    11821: "imagenet-12k",  # timm's 12k subset of fall11 (``*.in12k`` tags)
    21841: "imagenet-22k",  # fall11 (``*.in22k`` tags)
    21842: "imagenet-22k-ms",  # Microsoft's order: the ImageNet-1k classes first
    21843: "imagenet-21k-goog",  # Google's ImageNet-21k (two classes more than fall11)
}
_MIN_AGREEMENT = 0.95


@dataclass(frozen=True)
class LabelSet:
    """One of timm's ImageNet label sets: per class, its synset id, name (lemmas) and WordNet definition."""

    name: str
    synsets: tuple[str, ...]
    descriptions: tuple[str, ...]
    definitions: tuple[str, ...]


@dataclass(frozen=True)
class KnownLabels:
    """A classifier's labels recognised as ``label_set``; row ``i + offset`` is the set's class ``i``."""

    label_set: LabelSet
    offset: int  # 1 when row 0 is ``background``


@functools.cache
def label_set(name: str) -> LabelSet:
    """The label set ``name`` (one of :data:`SET_SIZES`' values) from timm's bundled WordNet data."""

    info = ImageNetInfo(name)
    synsets = tuple(info.label_names())
    descriptions = tuple(info.label_name_to_description(s) for s in synsets)
    definitions = tuple(info._definitions.get(s, "") for s in synsets)
    return LabelSet(name, synsets, descriptions, definitions)


@functools.cache
def _normalized(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    known = label_set(name)
    return tuple(normalize_label(d) for d in known.descriptions), known.synsets


def _agreement(labels: Sequence[str], name: str) -> int:
    descriptions, synsets = _normalized(name)
    return sum(normalize_label(s) in (d, y) for s, d, y in zip(labels, descriptions, synsets, strict=True))


def recognize_label_set(source_labels: Sequence[str]) -> KnownLabels | None:
    """The known label set ``source_labels`` are (by names or synset ids, 95% agreeing), else ``None``.

    With a ``background`` row 0 the rest must be the set. When two sets fit the count (22k with background
    and 22k-ms both have 21842 rows) the one with more agreeing labels wins.
    """
    labels = [str(s) for s in source_labels]
    n = len(labels)
    found: list[tuple[int, KnownLabels]] = []
    if n in SET_SIZES:
        found.append((_agreement(labels, SET_SIZES[n]), KnownLabels(label_set(SET_SIZES[n]), 0)))
    if n - 1 in SET_SIZES and labels and normalize_label(labels[0]) == BACKGROUND:
        name = SET_SIZES[n - 1]
        found.append((_agreement(labels[1:], name), KnownLabels(label_set(name), 1)))
    found = [(same, known) for same, known in found if same >= _MIN_AGREEMENT * (n - known.offset)]
    return max(found, key=lambda item: item[0])[1] if found else None
