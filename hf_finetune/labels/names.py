"""Label names as they are compared: normalised (case, ``_``/``-``/punctuation), in a compact form without spaces,
split into comma-separated synonyms, and with their singular/plural variants."""

from __future__ import annotations

import re

__all__ = ["normalize_label", "compact", "synonyms", "number_variants", "name_forms"]

_PUNCT_RE = re.compile(r"[^\w\s]|_", re.UNICODE)


def normalize_label(name: str) -> str:
    """Casefold; turn ``_``, ``-`` and other punctuation into spaces; collapse whitespace; strip."""
    return " ".join(_PUNCT_RE.sub(" ", str(name).casefold()).split())


def compact(normalized: str) -> str:
    """A normalized name without its spaces (``hot dog`` -> ``hotdog``)."""
    return normalized.replace(" ", "")


def synonyms(label: str) -> list[str]:
    """Normalized comma-separated synonyms of a source label, first one first, no empties."""
    out: list[str] = []
    for part in str(label).split(","):
        n = normalize_label(part)
        if n and n not in out:
            out.append(n)
    return out


def number_variants(word: str) -> set[str]:
    """Singular/plural variants of ``word`` by simple English rules (the word itself excluded)."""
    out: set[str] = set()
    if not word:
        return out
    if word.endswith("ies") and len(word) > 4:
        out.add(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        out.add(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        out.add(word[:-1])
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        out.add(word[:-1] + "ies")
    if word.endswith(("s", "x", "z", "ch", "sh", "o")):
        out.add(word + "es")
    out.add(word + "s")
    out.discard(word)
    return out


def name_forms(normalized: str) -> set[str]:
    """The normalized name and its compact form."""
    return {normalized, compact(normalized)}
