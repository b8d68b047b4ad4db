"""Three transformers messages a user can do nothing about, kept out of what a run prints, and only those.

Each filter sits on the one logger that emits its message and drops a record only when the message is that
one (and, for the first two, only in the case where it says nothing the run does not already say):

* the weight-loading report (``... LOAD REPORT ...``, a table of ``MISMATCH | Reinit due to size mismatch``
  rows) when every row is a size mismatch: that is the classifier re-initialised for the new labels, which
  the run's own ``re-initialised tensors: ...`` line already reports. A report with missing, unexpected or
  converted keys still prints;
* ``Requested torchvision backend is not available. Falling back to pil backend.``, when torchvision is
  installed: transformers says it for a processor that only has a PIL implementation (timm checkpoints),
  which is not about torchvision at all. Without torchvision the message stays;
* ``The `save_pretrained` method is disabled for TimmWrapperImageProcessor ...``: saving a timm model writes
  its preprocessing into ``config.json`` on purpose (timm's own format); nothing is lost.

:func:`quiet_known_noise` installs the filters once per process; it is called by the CLI and by
:func:`hf_finetune.run.train.main`.
"""

from __future__ import annotations

import importlib.util
import logging
import re

__all__ = ["quiet_known_noise", "NOISE_LOGGERS"]

_LOAD_REPORT_LOGGERS = (
    "transformers.modeling_utils",  # from_pretrained's report
    "transformers.modeling_layers",
)
_BACKEND_LOGGER = "transformers.models.auto.image_processing_auto"
_TIMM_PROCESSOR_LOGGER = "transformers.models.timm_wrapper.image_processing_timm_wrapper"
NOISE_LOGGERS = (*_LOAD_REPORT_LOGGERS, _BACKEND_LOGGER, _TIMM_PROCESSOR_LOGGER)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NOTE = re.compile(r"^- ([A-Z]+):", re.MULTILINE)


def _message(record: logging.LogRecord) -> str:
    try:
        return _ANSI.sub("", record.getMessage())
    except Exception:  # a record whose arguments do not format: not ours to judge
        return ""


class _MismatchOnlyLoadReport(logging.Filter):
    """Drops a loading report whose only kind of row is MISMATCH (the head re-initialised for new labels)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = _message(record)
        if "LOAD REPORT" not in text:
            return True
        kinds = set(_NOTE.findall(text.partition("Notes:")[2]))
        return kinds != {"MISMATCH"}


class _TorchvisionFallback(logging.Filter):
    """Drops the PIL fallback notice while torchvision is installed (it then concerns a PIL-only processor)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = _message(record)
        if not text.startswith("Requested torchvision backend is not available. Falling back to pil"):
            return True
        return importlib.util.find_spec("torchvision") is None


class _TimmProcessorSave(logging.Filter):
    """Drops the notice that TimmWrapperImageProcessor.save_pretrained does nothing (by design)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _message(record).startswith(
            "The `save_pretrained` method is disabled for TimmWrapperImageProcessor"
        )


_FILTERS = (
    *((name, _MismatchOnlyLoadReport) for name in _LOAD_REPORT_LOGGERS),
    (_BACKEND_LOGGER, _TorchvisionFallback),
    (_TIMM_PROCESSOR_LOGGER, _TimmProcessorSave),
)


def quiet_known_noise() -> None:
    """Install the three filters on their loggers (once: calling again adds nothing)."""
    for name, kind in _FILTERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
