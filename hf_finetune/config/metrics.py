"""Extra metrics key: metrics of the ``evaluate`` library computed beside the built-in ones.

* ``metrics``: ``evaluate`` metric names (cached) or local paths to metric scripts, e.g.
  ``[../shared/evaluate-metrics/matthews_correlation]``; one string is read as a list of one. ``NAME:CONFIG``
  loads a config (``roc_auc:multilabel``; split on the last ``:`` only when an identifier follows and the
  string is not an existing path); on multi-label data a metric's ``multilabel`` config is picked when none is
  given (:func:`hf_finetune.inference.extra_metrics.split_metric_spec`).

* ``threshold``: how a multi-label model's per-class decision thresholds are chosen on the validation split at
  the end of training (``per_class``, ``global``, or one fixed number); saved with the model.

Loaded when the run is built, before training (:func:`hf_finetune.inference.extra_metrics.load_extra_metrics`),
and computed on every evaluation (:func:`hf_finetune.inference.metrics.build_compute_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_finetune.errors import ConfigError

__all__ = ["MetricsArguments", "THRESHOLD_MODES", "check_metric_names", "check_threshold"]

THRESHOLD_MODES = ("per_class", "global")


def check_threshold(value) -> str | float:
    """``threshold`` as ``per_class``, ``global`` or a float in (0, 1) (a number given as text is read)."""

    if isinstance(value, str) and value.strip() in THRESHOLD_MODES:
        return value.strip()
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0.0 < number < 1.0 or isinstance(value, bool):
        raise ConfigError(
            f"threshold: got {value!r}; expected per_class, global or a probability in (0, 1) such as 0.5"
        )
    return number


def check_metric_names(value) -> list[str]:
    """``metrics`` as a list of non-empty strings (one string is a list of one; None is empty)."""

    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)):
        raise ConfigError(
            f"metrics: got {value!r}; expected a list of evaluate metric names or paths, "
            "e.g. [../shared/evaluate-metrics/f1]"
        )
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(
                f"metrics: got the entry {name!r}; expected a non-empty evaluate metric name or path, "
                "e.g. ../shared/evaluate-metrics/f1"
            )
    return [name.strip() for name in names]


@dataclass
class MetricsArguments:
    """Extra metrics from the ``evaluate`` library."""

    metrics: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Extra metrics of the evaluate library, by name (cached, the machine may be offline) or local "
            "path (e.g. ../shared/evaluate-metrics/matthews_correlation), computed on the argmax predictions of "
            "every evaluation and reported as eval_<result> beside the built-in ones (eval_evaluate_<result> "
            "when the name is taken; average=macro, as <result>_macro, for f1, precision and recall with more "
            "than 2 classes). NAME:CONFIG loads a config (roc_auc:multilabel); on multi-label data the "
            "multi-hot predictions at 0.5 or the sigmoid probabilities are scored and a metric's multilabel "
            "config is picked when none is given. A metric that cannot be loaded, or cannot take the data's "
            "labels, stops the run before training."
        },
    )

    threshold: str = field(
        default="per_class",
        metadata={
            "help": "Multi-label models: per_class (each class's threshold maximises its F1 on the validation "
            "split at the end of training; a class with no positive there keeps 0.5), global (one threshold maximising the micro F1 there) or a fixed "
            "probability such as 0.5. Saved with the model (config.json label_thresholds) and used by predict, "
            "eval and the model card; the test split never chooses it."
        },
    )

    def check_metrics(self) -> None:
        self.metrics = check_metric_names(self.metrics)
        self.threshold = check_threshold(self.threshold)
