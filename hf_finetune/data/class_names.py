"""Class names: read from raw label values, put in order, and checked (no two names that differ only in case or
Unicode form; every split's classes agree with train's)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from hf_finetune.errors import DataError

__all__ = ["label_name", "sorted_names", "check_case_collisions", "check_split_labels"]


def label_name(value: Any) -> str | None:
    """The class name of one raw label value (``None`` for a missing one)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return text or None


def sorted_names(names: set[str]) -> list[str]:
    """Class names sorted; integer names numerically (2 before 10)."""

    def key(name: str) -> tuple[int, int, str]:  # ASCII digits only: int() refuses '²' and '--1'
        return (0, int(name), name) if re.fullmatch(r"-?[0-9]+", name) else (1, 0, name)

    return sorted(names, key=key)


def _name_key(name: str) -> str:
    """What two class names must differ in to be told apart: Unicode NFC form, case, surrounding spaces."""
    return unicodedata.normalize("NFC", name).casefold().strip()


def check_case_collisions(names: Sequence[str], where: str) -> None:
    """Two class names that are the same after NFC normalisation, case folding and stripping surrounding
    whitespace (``Cat`` and ``cat``; ``café`` written with U+00E9 and with e + U+0301; ``cat`` and ``cat ``)
    are an error naming both."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(_name_key(name), name)
        if other != name:
            if other.casefold() == name.casefold():
                how = "differ only in case"
            else:
                how = "are one name once case-folded, stripped of surrounding spaces and NFC-normalised"
                if other.casefold().strip() != name.casefold().strip():  # Unicode forms: show code points
                    how += f" ({ascii(other)} and {ascii(name)})"
            raise DataError(
                f"{where}: class names {other!r} and {name!r} {how}; rename one so they are "
                "distinct, or merge them"
            )


def check_split_labels(split: str, present: set[str], train: Sequence[str], where: str) -> None:
    """A split may not have a class train lacks; validation must also have every train class."""
    extra = sorted_names(present - set(train))
    missing = sorted_names(set(train) - present) if split == "validation" else []
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"only in {split}: {extra}")
        if missing:
            parts.append(f"only in train: {missing}")
        raise DataError(f"{where}: {split} labels differ from train: " + "; ".join(parts))
