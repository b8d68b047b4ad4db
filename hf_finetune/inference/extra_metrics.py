"""Extra metrics of the ``evaluate`` library (the ``metrics`` recipe key), loaded before training.

:func:`load_extra_metrics` loads each name or local path with ``evaluate.load`` (once per process: the modules
are kept); one that cannot be loaded (offline and not cached, a path with no script) is a
:class:`~hf_finetune.errors.ConfigError`. :func:`extra_metric_values` computes them on an evaluation's logits:

* metrics that take ``predictions`` get the argmax labels; those that take ``prediction_scores`` (``roc_auc``)
  get the softmax probability of class 1 with 2 classes, else the probability matrix;
* a metric whose ``average`` argument defaults to ``"binary"`` (``f1``, ``precision``, ``recall``) gets
  ``average="macro"`` when there are more than 2 classes (its keys then end in ``_macro``: ``f1_macro``); one with a ``labels`` argument gets every class (``0..n-1``), so a
  class absent from the evaluation counts, as in the built-in macro F1;
* every scalar result becomes a key of the metrics dict under its own name; a name the built-in metrics or
  the Trainer already use (``accuracy``, ``loss``, ...) gets the prefix ``evaluate_`` (``eval_evaluate_accuracy``).
  Non-scalar results (``confusion_matrix``'s matrix) are left out with a warning: the run's own confusion
  matrix is in ``eval_per_class.json``.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import numpy as np

from hf_finetune.errors import ConfigError

__all__ = ["RESERVED", "load_extra_metrics", "extra_metric_values"]

logger = logging.getLogger(__name__)

#: Names a result may not take as it is: the built-in metrics' and the Trainer's own keys.
RESERVED = frozenset(
    {"accuracy", "macro_f1", "top5_accuracy", "loss", "runtime", "samples_per_second", "steps_per_second",
     "samples", "epoch", "model_preparation_time"}
)  # fmt: skip
_LOADED: dict[str, Any] = {}
_WARNED: set[str] = set()


def load_extra_metrics(names: list[str] | None) -> list[Any]:
    """The ``evaluate`` modules of ``names`` (names or local paths), loaded once per process."""

    modules = []
    for name in names or []:
        if name not in _LOADED:
            _LOADED[name] = _load(name)
        modules.append(_LOADED[name])
    return modules


def _load(name: str) -> Any:
    import evaluate  # heavy (datasets, pandas): only when a run names extra metrics

    try:
        module = evaluate.load(name)
    except Exception as err:  # noqa: BLE001 - evaluate raises FileNotFoundError, ConnectionError, ImportError...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"metrics: cannot load {name!r} (offline and not cached: {reason}); expected an evaluate metric "
            "name that is cached, or a local path such as ../shared/evaluate-metrics/f1"
        ) from None
    inputs = _input_names(module)
    if "references" not in inputs or not inputs & {"predictions", "prediction_scores"}:
        raise ConfigError(
            f"metrics: {name!r} takes {sorted(inputs)}; expected a classification metric that takes "
            "predictions (or prediction_scores) and references"
        )
    return module


def _input_names(module) -> set[str]:
    features = module.features
    features = features[0] if isinstance(features, list) else features
    return set(features)


def _keyword_arguments(module, num_classes: int) -> tuple[dict[str, Any], str]:
    """The keyword arguments for ``module.compute`` and the suffix of its keys."""

    parameters = inspect.signature(module._compute).parameters
    kwargs: dict[str, Any] = {}
    suffix = ""
    if "labels" in parameters:
        kwargs["labels"] = list(range(num_classes))
    average = parameters.get("average")
    if average is not None and average.default == "binary" and num_classes > 2:  # f1, precision, recall
        kwargs["average"], suffix = "macro", "_macro"
    if "multi_class" in parameters and num_classes > 2:
        kwargs["multi_class"] = "ovr"
    return kwargs, suffix


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def extra_metric_values(modules: list[Any], logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Each module's scalar results on ``(logits, labels)``, keyed as the module docstring says."""

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    num_classes = int(logits.shape[1])
    values: dict[str, float] = {}
    for module in modules:
        kwargs, suffix = _keyword_arguments(module, num_classes)
        if "predictions" in _input_names(module):
            kwargs["predictions"] = np.argmax(logits, axis=1).tolist()
        else:
            probabilities = _softmax(logits)
            kwargs["prediction_scores"] = (
                probabilities[:, 1] if num_classes == 2 else probabilities
            ).tolist()
        results = module.compute(references=labels.tolist(), **kwargs) or {}
        for key, value in results.items():
            name = f"{key}{suffix}"
            if not np.isscalar(value) and np.ndim(value) != 0:
                if name not in _WARNED:
                    _WARNED.add(name)
                    logger.warning(
                        "metrics: %s's result %r is not a single number; left out", module.name, key
                    )
                continue
            values[f"evaluate_{name}" if name in RESERVED or name in values else name] = float(value)
    return values
