"""Finding and re-initialising a classifier's output layer, data-driven.

The head is found from the model itself, never from a per-architecture list:

* timm models (inside transformers' ``TimmWrapper``) name their classifier module(s) in
  ``pretrained_cfg["classifier"]`` (a name, or several for two-head models such as DeiT-distilled);
* transformers models keep their head outside ``model.base_model``; among those parameters the head
  tensors are the ones whose leading dimension is the number of classes.

In both cases only tensors whose leading dimension equals the number of labels are returned
(a weight ``[num_labels, features]`` and a bias ``[num_labels]`` per head).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "head_parameter_names",
    "head_module_names",
    "reinitialize_head",
    "source_head_tensors",
    "copy_source_rows",
]


def _timm_classifier_prefixes(model: nn.Module) -> list[str] | None:
    timm_model = getattr(model, "timm_model", None)
    if timm_model is None:
        return None
    cfg = getattr(timm_model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier")
    if classifier is None:
        return None
    names = [classifier] if isinstance(classifier, str) else list(classifier)
    return [f"timm_model.{name}" for name in names]


def head_parameter_names(model: nn.Module, num_labels: int | None = None) -> list[str]:
    """Names of the output-layer tensors of ``model`` (parameters whose leading dim is ``num_labels``).

    ``num_labels`` defaults to ``model.config.num_labels``.
    """
    if num_labels is None:
        num_labels = model.config.num_labels
    named = dict(model.named_parameters())
    prefixes = _timm_classifier_prefixes(model)
    if prefixes is not None:
        candidates = [n for n in named if any(n == p or n.startswith(p + ".") for p in prefixes)]
    else:
        base_prefix = getattr(model, "base_model_prefix", "")
        if base_prefix and hasattr(model, base_prefix):
            candidates = [n for n in named if not n.startswith(base_prefix + ".")]
        else:  # a bare model: fall back to every parameter, filtered by shape below
            candidates = list(named)
    names = [n for n in candidates if named[n].ndim >= 1 and named[n].shape[0] == num_labels]
    return sorted(names)


def head_module_names(model: nn.Module, num_labels: int | None = None) -> list[str]:
    """Names of the modules that own the head tensors (e.g. ``classifier`` or ``timm_model.head.fc``)."""
    modules = {name.rsplit(".", 1)[0] for name in head_parameter_names(model, num_labels)}
    return sorted(modules)


@torch.no_grad()
def reinitialize_head(model: nn.Module, num_labels: int | None = None) -> list[str]:
    """Re-initialise the head the way the model initialises it (``model._init_weights``).

    Returns the names of the re-initialised tensors.
    """
    names = head_parameter_names(model, num_labels)
    modules = dict(model.named_modules())
    for module_name in {n.rsplit(".", 1)[0] for n in names}:
        module = modules[module_name]
        # transformers >= 5 skips tensors flagged as loaded from the checkpoint; these must be re-drawn.
        for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if getattr(tensor, "_is_hf_initialized", False):
                tensor._is_hf_initialized = False
        init = getattr(model, "_init_weights", None)
        if init is not None:
            init(module)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return names


def source_head_tensors(model: nn.Module, num_labels: int | None = None) -> dict[str, torch.Tensor]:
    """Copies of the head tensors of a (source) model, keyed by parameter name."""
    named = dict(model.named_parameters())
    return {name: named[name].detach().clone() for name in head_parameter_names(model, num_labels)}


@torch.no_grad()
def copy_source_rows(
    model: nn.Module,
    source_head: dict[str, torch.Tensor],
    rows: list[tuple[int, list[int]] | tuple[int, list[int], list[float]]],
    merge: str = "lse",
) -> list[str]:
    """Start target rows from source rows of the pretrained classifier.

    ``rows`` holds ``(target_row, [source_row, ...])`` pairs, or ``(target_row, [source_row, ...], weights)``
    triples. With one source row, the weight row and the bias are copied bit for bit. With several (one
    target from many source classes), the merged row is built so that its logit approximates the
    log-sum-exp of the merged classes' logits: with weights ``a`` (uniform unless given, summing to 1)::

        w_t = sum_k a_k w_k          b_t = sum_k a_k b_k + H(a),    H(a) = -sum_k a_k log a_k

    the first-order expansion of ``log sum_k exp(z_k)`` where the softmax over the merged logits equals
    ``a``. With uniform weights that is ``mean_k w_k`` and ``mean_k b_k + log n``, i.e.
    ``z_t = mean_k z_k + log n``: exact when the merged logits are equal, otherwise a lower bound of the
    log-sum-exp (Jensen) that is off by at most ``log n``. ``merge="balanced"`` leaves out ``H(a)`` (``log n``):
    the row then approximates ``log mean_k exp(z_k)``, which removes the source's prior in favour of targets
    built from many rows (balanced target classes). Every head tensor is handled (weight and bias, and both
    heads of two-head models such as DeiT-distilled). Returns the names of the tensors written.
    """
    named = dict(model.named_parameters())
    written = []
    for name, source in source_head.items():
        if name not in named:
            continue
        target = named[name]
        is_bias = name.endswith("bias")
        for target_row, source_rows, *given in rows:
            if not source_rows:
                continue
            if len(source_rows) == 1:
                target[target_row].copy_(source[source_rows[0]].to(target.dtype))
                continue
            n = len(source_rows)
            a = torch.tensor(given[0] if given else [1.0 / n] * n, dtype=torch.float64)
            merged = (source[source_rows].to(torch.float64) * a.view(-1, *([1] * (source.ndim - 1)))).sum(0)
            if is_bias and merge == "lse":
                nonzero = a[a > 0]
                merged = merged - (nonzero * nonzero.log()).sum()
            target[target_row].copy_(merged.to(target.dtype))
        written.append(name)
    return written
