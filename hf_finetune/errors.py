"""The error hierarchy. Every error a user can fix derives from :class:`HfFinetuneError`.

The CLI prints such an error as one line (no traceback) and exits with status 2.
Messages name the file, key or label at fault, the bad value, and what was expected.
"""

from __future__ import annotations

import difflib
import signal
from collections.abc import Iterable

__all__ = [
    "HfFinetuneError",
    "ConfigError",
    "DataError",
    "ModelLoadError",
    "HubError",
    "CheckpointWriteError",
    "TrainingInterrupted",
    "FinalSaveInterrupted",
    "suggest",
]


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


class CheckpointWriteError(HfFinetuneError):
    """A checkpoint or the final model could not be written (a full disk, a file-size limit, a failed
    write); the previous checkpoint is intact."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after finishing its step and writing a checkpoint.

    Not an :class:`HfFinetuneError`: the CLI exits with 128 + the signal's number (130, 143)."""

    def __init__(self, signum: int, step: int, max_steps: int, checkpoint: str | None):

        self.signum, self.step, self.max_steps, self.checkpoint = signum, step, max_steps, checkpoint
        name = signal.Signals(signum).name
        where = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint was written"
        super().__init__(f"interrupted by {name} after step {step} of {max_steps}; {where}")


class FinalSaveInterrupted(TrainingInterrupted):
    """A stop signal arrived after the last step, while the final model was evaluated and written: that write
    was abandoned (the output folder does not pass for a finished model) and the checkpoints are intact."""

    def __init__(self, signum: int, max_steps: int, checkpoint: str | None):

        super().__init__(signum, max_steps, max_steps, checkpoint)
        where = (
            f"the checkpoints are intact (the newest: {checkpoint})"
            if checkpoint
            else "no checkpoint was written (save_strategy: no), so the run must be repeated"
        )
        self.args = (
            f"interrupted by {signal.Signals(signum).name} after all {max_steps} steps, while the final model "
            f"was being written; it was not written, {where}",
        )


def suggest(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" (did you mean 'x'?)"`` for the nearest names among ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(word), list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
