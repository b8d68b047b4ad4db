"""Extra metrics of the ``evaluate`` library (the ``metrics`` recipe key), loaded before training.

:func:`load_extra_metrics` loads each name or local path with ``evaluate.load`` (once per process: the modules
are kept); one that cannot be loaded (offline and not cached, a path with no script) is a
:class:`~hf_finetune.errors.ConfigError`. :func:`extra_metric_values` computes them on an evaluation's logits:

* metrics that take ``predictions`` get the argmax labels; those that take ``prediction_scores`` (``roc_auc``)
  get the softmax probability of class 1 with 2 classes, else the probability matrix;
* a metric whose ``average`` argument defaults to ``"binary"`` (``f1``, ``precision``, ``recall``) gets
  ``average="macro"`` when there are more than 2 classes (its keys then end in ``_macro``: ``f1_macro``); one
  with a ``labels`` argument gets every class (``0..n-1``), so a class absent from the evaluation counts, as in
  the built-in macro F1;
* on multi-label data (:func:`~hf_finetune.inference.metrics.build_compute_metrics` with ``multi_label=True``)
  the references are the multi-hot rows as 0/1 ints; metrics that take ``predictions`` get the multi-hot
  predictions at 0.5 (sigmoid probability >= 0.5: the thresholds are fitted only at the end of training), those
  that take ``prediction_scores`` the sigmoid probabilities ``(N, K)``; ``average="macro"`` (keys ``_macro``)
  replaces a default ``average`` of ``"binary"`` or None (``matthews_correlation``). A metric named without a
  config gets its ``multilabel`` config when that takes multi-hot rows; one that cannot take them is a
  ConfigError. ``NAME:CONFIG`` names the config (``roc_auc:multilabel``, ``roc_auc:multiclass``; see
  :func:`split_metric_spec`);
* every scalar result becomes a key of the metrics dict under its own name; a name the built-in metrics or
  the Trainer already use (``accuracy``, ``loss``, multi-label ``f1_macro``...) gets the prefix ``evaluate_``
  (``eval_evaluate_accuracy``).
  Non-scalar results (``confusion_matrix``'s matrix) are left out with a warning: the run's own confusion
  matrix is in ``eval_per_class.json``.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import numpy as np

from hf_finetune.errors import ConfigError
from hf_finetune.inference.multi_label_metrics import DEFAULT_THRESHOLD, sigmoid

__all__ = [
    "RESERVED",
    "MULTI_LABEL_RESERVED",
    "split_metric_spec",
    "load_extra_metrics",
    "extra_metric_values",
]

logger = logging.getLogger(__name__)

#: Names a result may not take as it is: the built-in metrics' and the Trainer's own keys.
RESERVED = frozenset(
    {"accuracy", "macro_f1", "top5_accuracy", "loss", "runtime", "samples_per_second", "steps_per_second",
     "samples", "epoch", "model_preparation_time"}
)  # fmt: skip
#: The reserved names of a multi-label run: its built-in metrics' keys are others.
MULTI_LABEL_RESERVED = RESERVED | {"map", "map_micro", "f1_micro", "f1_macro", "exact_match"}
_MULTILABEL = "multilabel"
_LOADED: dict[tuple[str, str | None, bool | None], Any] = {}
_WARNED: set[str] = set()


def split_metric_spec(spec: str) -> tuple[str, str | None]:
    """``NAME:CONFIG`` as ``(NAME, CONFIG)``; anything else as ``(spec, None)``.

    The string is split on its last ``:`` only when what follows is a plain identifier (``roc_auc:multilabel``,
    ``../shared/evaluate-metrics/f1:multilabel``) and the whole string is not an existing path, so a path
    holding a ``:`` (``C:\\metrics\\f1``, ``metrics/a:b`` when it exists) is read as a path."""

    head, colon, config = spec.rpartition(":")
    if not colon or not head or not config.isidentifier() or os.path.exists(spec):
        return spec, None
    return head, config


def load_extra_metrics(names: list[str] | None, multi_label: bool | None = None) -> list[Any]:
    """The ``evaluate`` modules of ``names`` (names or local paths, each with an optional ``:CONFIG``), loaded
    once per process.

    ``multi_label``: whether the data are multi-label (None: not known yet, the check before the data load).
    On multi-label data a metric given without a config whose ``multilabel`` config takes multi-hot rows
    (``f1``, ``precision``, ``recall``, ``accuracy``, ``roc_auc``, ``matthews_correlation``...) is loaded with
    that config; a metric that takes one class per image on multi-label data (or multi-hot rows on single-label
    data) is a :class:`~hf_finetune.errors.ConfigError` naming it."""

    modules = []
    for spec in names or []:
        key = (*split_metric_spec(spec), multi_label)
        if key not in _LOADED:
            _LOADED[key] = _load(spec, key[1], multi_label)
        modules.append(_LOADED[key])
    return modules


def _load(spec: str, config: str | None, multi_label: bool | None) -> Any:
    name = split_metric_spec(spec)[0]
    if multi_label and config is None:
        module = _evaluate_load(spec, name, _MULTILABEL)
        if _takes_multi_hot(module):
            return _checked(module, spec, multi_label)
    return _checked(_evaluate_load(spec, name, config), spec, multi_label)


def _evaluate_load(spec: str, name: str, config: str | None) -> Any:
    import evaluate  # heavy (datasets, pandas): only when a run names extra metrics

    try:
        return evaluate.load(name) if config is None else evaluate.load(name, config)
    except Exception as err:  # noqa: BLE001 - evaluate raises FileNotFoundError, ConnectionError, ImportError...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"metrics: cannot load {spec!r} (offline and not cached: {reason}); expected an evaluate metric "
            "name that is cached, or a local path such as ../shared/evaluate-metrics/f1"
        ) from None


def _checked(module, spec: str, multi_label: bool | None) -> Any:
    inputs = _input_names(module)
    if "references" not in inputs or not inputs & {"predictions", "prediction_scores"}:
        raise ConfigError(
            f"metrics: {spec!r} takes {sorted(inputs)}; expected a classification metric that takes "
            "predictions (or prediction_scores) and references"
        )
    if multi_label and not _takes_multi_hot(module):
        raise ConfigError(
            f"metrics: {spec!r} cannot be computed on multi-label data (it takes one class per image and has no "
            "multilabel config); expected a metric such as ../shared/evaluate-metrics/f1 or NAME:multilabel"
        )
    if multi_label is False and _takes_multi_hot(module):
        raise ConfigError(
            f"metrics: {spec!r} takes multi-hot rows (a multilabel config) but the data are single-label; "
            "expected the metric without :multilabel"
        )
    return module


def _is_sequence(feature) -> bool:
    return isinstance(feature, (list, tuple)) or type(feature).__name__ in ("Sequence", "List", "LargeList")


def _takes_multi_hot(module) -> bool:
    """Whether the module takes a row of 0/1 per image as its references (a multilabel config)."""
    features = module.features
    features = features[0] if isinstance(features, list) else features
    return "references" in features and _is_sequence(features["references"])


def _input_names(module) -> set[str]:
    features = module.features
    features = features[0] if isinstance(features, list) else features
    return set(features)


def _keyword_arguments(module, num_classes: int, multi_label: bool) -> tuple[dict[str, Any], str]:
    """The keyword arguments for ``module.compute`` and the suffix of its keys."""

    parameters = inspect.signature(module._compute).parameters
    kwargs: dict[str, Any] = {}
    suffix = ""
    if "labels" in parameters:
        kwargs["labels"] = list(range(num_classes))  # multi-label: the column indices
    average = parameters.get("average")
    if average is not None and average.default == "binary" and (num_classes > 2 or multi_label):
        kwargs["average"], suffix = "macro", "_macro"  # f1, precision, recall
    elif average is not None and average.default is None and multi_label:
        kwargs["average"], suffix = "macro", "_macro"  # matthews_correlation's multilabel config
    if "multi_class" in parameters and num_classes > 2 and not multi_label:
        kwargs["multi_class"] = "ovr"
    return kwargs, suffix


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _inputs(module, logits: np.ndarray, labels: np.ndarray, multi_label: bool) -> dict[str, Any]:
    """``references`` and ``predictions`` (or ``prediction_scores``) as the module takes them."""
    if multi_label:
        references = labels.astype(np.int64).tolist()
        if "predictions" in _input_names(module):
            return {
                "references": references,
                "predictions": (sigmoid(logits) >= DEFAULT_THRESHOLD).astype(int).tolist(),
            }
        return {"references": references, "prediction_scores": sigmoid(logits).tolist()}
    references = labels.reshape(-1).tolist()
    if "predictions" in _input_names(module):
        return {"references": references, "predictions": np.argmax(logits, axis=1).tolist()}
    probabilities = _softmax(logits)
    scores = probabilities[:, 1] if logits.shape[1] == 2 else probabilities
    return {"references": references, "prediction_scores": scores.tolist()}


def extra_metric_values(
    modules: list[Any], logits: np.ndarray, labels: np.ndarray, multi_label: bool = False
) -> dict[str, float]:
    """Each module's scalar results on ``(logits, labels)``, keyed as the module docstring says.

    ``multi_label``: ``labels`` is the ``(N, K)`` multi-hot matrix; see the module docstring for the inputs. A
    metric undefined on this evaluation (``roc_auc`` with a class that has no positive) is ``nan`` where sklearn
    says so with a warning, and left out with a warning where it raises a ValueError (older versions)."""

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels) if multi_label else np.asarray(labels, dtype=np.int64).reshape(-1)
    num_classes = int(logits.shape[1])
    reserved = MULTI_LABEL_RESERVED if multi_label else RESERVED
    values: dict[str, float] = {}
    for module in modules:
        kwargs, suffix = _keyword_arguments(module, num_classes, multi_label)
        try:
            results = module.compute(**_inputs(module, logits, labels, multi_label), **kwargs) or {}
        except ValueError as err:
            _warn_once(
                module.name, "metrics: %s is undefined on this evaluation (%s); left out", module.name, err
            )
            continue
        for key, value in results.items():
            name = f"{key}{suffix}"
            if not np.isscalar(value) and np.ndim(value) != 0:
                _warn_once(name, "metrics: %s's result %r is not a single number; left out", module.name, key)
                continue
            values[f"evaluate_{name}" if name in reserved or name in values else name] = float(value)
    return values


def _warn_once(key: str, message: str, *args) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message, *args)
