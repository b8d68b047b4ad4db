"""The error hierarchy. Every error a user can fix derives from :class:`HfFinetuneError`.

The CLI prints such an error as one line (no traceback) and exits with status 2.
Messages name the file, key or label at fault, the bad value, and what was expected.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["HfFinetuneError", "ConfigError", "DataError", "ModelLoadError", "HubError", "suggest"]


class HfFinetuneError(ValueError):
    """Base class of all user-facing errors (bad recipe, bad data, bad checkpoint)."""


class ConfigError(HfFinetuneError):
    """A recipe key or command-line flag is unknown, missing, mistyped or inconsistent."""


class DataError(HfFinetuneError):
    """The data cannot be used: missing paths, empty classes, absent columns, mismatched labels."""


class ModelLoadError(HfFinetuneError):
    """The checkpoint is neither a transformers nor a timm image classifier, or cannot be loaded."""


class HubError(HfFinetuneError):
    """A push to the Hugging Face Hub cannot start (no token, offline mode) or failed (refused, unreachable)."""


def suggest(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" (did you mean 'x'?)"`` for the nearest names among ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(word), list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
