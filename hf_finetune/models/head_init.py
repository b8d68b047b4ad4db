"""Data-driven head initialisation (opt-in, ``label_init_from_data: true``), in the spirit of Co-Tuning
(You et al., NeurIPS 2020).

Before training, the pretrained model looks at up to ``per_class`` training images of each target class.
Its source-class probabilities, averaged per target class (``p_t``), then

* choose rows for targets that no name matched: the fewest source rows holding at least ``mass`` of ``p_t``
  (at most ``max_rows``), reported as kind ``data``;
* weight the rows of targets matched to several source rows (name matches, complements), instead of weighting
  them equally.

A target row from source rows ``S`` with weights ``a`` (``a = p_t`` restricted to ``S`` and normalised) is::

    w_t = sum_k a_k w_k        b_t = sum_k a_k b_k + H(a),   H(a) = -sum_k a_k log a_k

This is the first-order expansion of ``log sum_{k in S} exp(z_k)`` at the inputs where the within-group
softmax equals ``a``, i.e. at the target class's own images; with equal weights it is the
``mean + log n`` rule. Both are written by :func:`hf_finetune.models.heads.copy_source_rows`, given the weights;
with ``label_merge: balanced`` the ``H(a)`` term is left out, as ``log n`` is there.

Bias calibration (``label_bias_from_data``, on by default when rows are reused): reused rows carry the source's
class prior. A complement such as ``not_hotdog`` (the 999 other ImageNet classes) or a group of many rows starts
with a bias that reflects how often ImageNet predicts those classes, not how often the target data holds them.
:func:`calibrate_head_bias` adds one shift per target class to the head's biases, the maximum a-posteriori
estimate under a N(0, 2^2) prior of::

    delta = argmin_d  mean_i CE(z_i + d, y_i) + |d|^2 / (8 n)

on up to 32 training images per class (``z_i`` the new head's logits, evaluation transform). The weights are not
touched, so the rows' bit-for-bit reuse holds for the weights; only the biases move. It is convex in ``d`` and
solved with L-BFGS in float64.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from hf_finetune.data.multi_label import is_multi_label
from hf_finetune.data.transforms import label_tensor, make_batch_transform
from hf_finetune.models.heads import head_module_names

__all__ = [
    "BiasCalibration",
    "calibrate_head_bias",
    "data_driven_rows",
    "fit_bias_shift",
    "fit_sigmoid_bias_shift",
    "source_probabilities_per_class",
]

logger = logging.getLogger(__name__)


def _per_class_subset(raw_dataset: Any, transform: Any, num_targets: int, per_class: int) -> Any:
    """The first ``per_class`` images of each target class (in split order), transformed; None if empty.

    A multi-label split (multi-hot rows) gives instead a seeded sample of ``per_class * num_targets`` images:
    a sigmoid bias is fitted to how often each class occurs, which a per-class selection would distort."""

    if is_multi_label(raw_dataset):
        count = min(len(raw_dataset), per_class * num_targets)
        chosen = np.random.default_rng(0).permutation(len(raw_dataset))[:count].tolist()
    else:
        labels = np.asarray(list(raw_dataset["label"]))
        chosen = []
        for target in range(num_targets):
            chosen.extend(np.flatnonzero(labels == target)[:per_class].tolist())
    if not chosen:
        return None
    return raw_dataset.select(sorted(chosen)).with_transform(make_batch_transform(transform))


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """The training run's mixed precision (``bf16``/``fp16``), so that these forwards see what training sees."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _batches(subset: Any, batch_size: int):
    """``(pixel_values, labels)`` batches of ``subset``, skipping images that failed to decode."""
    for start in range(0, len(subset), batch_size):
        rows = [subset[i] for i in range(start, min(start + batch_size, len(subset)))]
        rows = [r for r in rows if r["pixel_values"] is not None]
        if rows:
            yield (torch.stack([r["pixel_values"] for r in rows]), label_tensor([r["labels"] for r in rows]))


@torch.no_grad()
def source_probabilities_per_class(
    model: torch.nn.Module,
    source_head: dict[str, torch.Tensor],
    raw_dataset: Any,
    transform: Any,
    num_targets: int,
    per_class: int = 32,
    batch_size: int = 32,
    exclude_rows: set[int] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[int, np.ndarray]:
    """Mean source-class softmax (over ``per_class`` images) for each target class present in ``raw_dataset``.

    ``raw_dataset`` is a split with ``image`` and ``label`` columns; ``transform`` is the evaluation transform.
    The source logits are computed from the features entering the model's head and the source head tensors,
    so no second model is needed.
    """
    subset = _per_class_subset(raw_dataset, transform, num_targets, per_class)
    if subset is None:
        return {}
    modules = dict(model.named_modules())
    head_modules = head_module_names(model)
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        modules[name].register_forward_hook(
            lambda m, args, out, name=name: captured.__setitem__(name, args[0])
        )
        for name in head_modules
    ]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    try:
        for pixels, targets in _batches(subset, batch_size):
            with _autocast(device, autocast_dtype):
                model(pixel_values=pixels.to(device))
            logits = []
            for name in head_modules:
                features = captured[name].flatten(1).float()
                weight = source_head[f"{name}.weight"].to(device).float()
                bias = source_head.get(f"{name}.bias")
                out = features @ weight.flatten(1).T
                logits.append(out + bias.to(device).float() if bias is not None else out)
            source_logits = torch.stack(logits).mean(0)
            if exclude_rows:
                source_logits[:, sorted(exclude_rows)] = -math.inf
            probs = source_logits.softmax(-1).cpu().numpy()
            for target, prob in zip(targets.tolist(), probs, strict=True):
                sums[target] = sums.get(target, 0) + prob
                counts[target] = counts.get(target, 0) + 1
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {t: sums[t] / counts[t] for t in sums}


def data_driven_rows(
    report: Any,
    mean_probs: dict[int, np.ndarray],
    source_labels: list[str],
    mass: float = 0.5,
    max_rows: int = 10,
) -> list[tuple[int, list[int], list[float]]]:
    """(target row, source rows, weights) for every target the data can start; updates ``report`` in place
    (kind ``data`` for unmatched targets, a note for re-weighted groups)."""
    out = []
    for t, match in enumerate(report.matches):
        probs = mean_probs.get(t)
        if probs is None:
            continue
        if match.kind == "none" and "explicit" not in (match.note or ""):
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            count = int(min(max_rows, np.searchsorted(cumulative, mass) + 1))
            rows = [int(i) for i in order[:count]]
            weights = probs[rows] / probs[rows].sum()
            match.source_indices = rows
            match.source_names = [source_labels[i] for i in rows]
            match.kind = "data"
            match.note = (
                f"data: {count} source rows hold {float(probs[rows].sum()):.2f} of the pretrained model's "
                f"probability on this class's images; weights " + ", ".join(f"{w:.2f}" for w in weights)
            )
            out.append((t, rows, [float(w) for w in weights]))
        elif len(match.source_indices) > 1:
            rows = list(match.source_indices)
            group = probs[rows]
            if group.sum() <= 0:
                continue
            weights = group / group.sum()
            top = np.argsort(-weights, kind="stable")[:3]
            match.note = (
                (match.note + "; " if match.note else "")
                + "rows weighted by data (top: "
                + ", ".join(f"{source_labels[rows[i]]} {weights[i]:.2f}" for i in top)
                + ")"
            )
            out.append((t, rows, [float(w) for w in weights]))
    return out


# ------------------------------------------------------------------------------------------ bias calibration
@dataclass
class BiasCalibration:
    """What :func:`calibrate_head_bias` did: the shift added to each target's bias and its effect on the fit."""

    images: int
    shift: dict[str, float]
    loss_before: float
    loss_after: float
    accuracy_before: float
    accuracy_after: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """For ``label_mapping.json``: everything but the (machine-dependent) time."""
        return {k: v for k, v in asdict(self).items() if k != "seconds"}

    def describe(self, show: int = 6) -> str:
        largest = sorted(self.shift.items(), key=lambda kv: -abs(kv[1]))[:show]
        more = len(self.shift) - len(largest)
        return (
            f"label_bias_from_data: head biases fitted on {self.images} training images in {self.seconds:.1f} s; "
            f"their loss {self.loss_before:.3f} -> {self.loss_after:.3f}, accuracy {self.accuracy_before:.3f} -> "
            f"{self.accuracy_after:.3f}; shifts "
            + ", ".join(f"{name} {value:+.2f}" for name, value in largest)
            + (f" (+{more} more)" if more > 0 else "")
        )


def fit_bias_shift(logits: torch.Tensor, labels: torch.Tensor, prior_std: float = 2.0) -> torch.Tensor:
    """The bias shift ``d`` minimising ``mean CE(logits + d, labels) + |d|^2 / (2 prior_std^2 n)``.

    Classes absent from ``labels`` get no shift. Convex in ``d``; L-BFGS in float64.
    """
    z = logits.detach().double().cpu()
    y = labels.detach().long().cpu()
    present = torch.zeros(z.shape[1], dtype=torch.double)
    present[y.unique()] = 1.0
    penalty = 1.0 / (2.0 * prior_std**2 * len(y))
    d = torch.zeros(z.shape[1], dtype=torch.double, requires_grad=True)
    opt = torch.optim.LBFGS(
        [d], max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        shift = d * present
        loss = torch.nn.functional.cross_entropy(z + shift, y) + penalty * (shift**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return (d * present).detach()


def fit_sigmoid_bias_shift(
    logits: torch.Tensor, targets: torch.Tensor, prior_std: float = 10.0
) -> torch.Tensor:
    """The per-class bias shift ``d`` of a sigmoid head minimising
    ``mean_i sum_c BCE(logits_ic + d_c, targets_ic) / C + |d|^2 / (2 prior_std^2 n C)``.

    A reused softmax row's logit has no meaning of its own (softmax ignores a shift shared by all classes);
    under a sigmoid it becomes a probability only once its bias matches how often the class occurs. The prior
    is wide (a softmax logit may need a shift of several units) and keeps a class never seen positive
    finite. Convex in ``d``; L-BFGS in float64."""
    z = logits.detach().double().cpu()
    y = targets.detach().double().cpu()
    penalty = 1.0 / (2.0 * prior_std**2 * len(y) * z.shape[1])
    d = torch.zeros(z.shape[1], dtype=torch.double, requires_grad=True)
    opt = torch.optim.LBFGS(
        [d], max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z + d, y) + penalty * (d**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return d.detach()


def _fit_shift(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The bias shift for logits ``z`` and labels ``y`` (class ids, or multi-hot rows), and the loss and
    accuracy (exact match at 0.5, multi-label) before and after it."""
    if y.is_floating_point():
        shift = fit_sigmoid_bias_shift(z, y)
        loss = torch.nn.functional.binary_cross_entropy_with_logits
        accuracy = lambda s: float(((s > 0).double() == y.double()).all(1).double().mean())  # noqa: E731
        y = y.double()
    else:
        shift = fit_bias_shift(z, y)
        loss = torch.nn.functional.cross_entropy
        accuracy = lambda s: float((s.argmax(1) == y).double().mean())  # noqa: E731
    calibrated = z.double() + shift
    figures = {
        "loss_before": float(loss(z.double(), y)),
        "loss_after": float(loss(calibrated, y)),
        "accuracy_before": accuracy(z.double()),
        "accuracy_after": accuracy(calibrated),
    }
    return shift, figures


@torch.no_grad()
def calibrate_head_bias(
    model: torch.nn.Module,
    raw_dataset: Any,
    transform: Any,
    labels: list[str],
    per_class: int = 32,
    max_images: int = 1024,
    batch_size: int = 32,
    device: Any = None,
    autocast_dtype: torch.dtype | None = None,
) -> BiasCalibration | None:
    """Add to the new head's biases the shift that fits up to ``per_class`` training images per class
    (at most ``max_images`` in all). None, and nothing changed, when the head has no bias or there is no image.
    ``autocast_dtype``: the training run's mixed precision (its layers may expect autocast, e.g. after
    :func:`hf_finetune.runtime.tuning.tune_depthwise_precision`).

    With two heads (e.g. DeiT's distilled one, whose logits are the mean of both) the same shift goes to both.
    On a multi-label split (multi-hot rows) the head is a sigmoid one: each class's bias is fitted on its own to
    a seeded sample of the split with binary cross-entropy (:func:`fit_sigmoid_bias_shift`), and the accuracy
    figures are exact-match ratios at 0.5.
    """
    start = time.perf_counter()
    modules = dict(model.named_modules())
    biases = [getattr(modules[name], "bias", None) for name in head_module_names(model, len(labels))]
    if not biases or any(b is None for b in biases):
        return None
    per_class = max(1, min(per_class, max_images // max(1, len(labels))))
    subset = _per_class_subset(raw_dataset, transform, len(labels), per_class)
    if subset is None:
        return None
    was_training = model.training
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    model.eval().to(device)
    chunks, targets = [], []
    try:
        for pixels, y in _batches(subset, batch_size):
            with _autocast(device, autocast_dtype):
                logits = model(pixel_values=pixels.to(device)).logits
            chunks.append(logits.float().cpu())
            targets.append(y)
    finally:
        model.train(was_training).to(home)
    if not chunks:
        return None
    z, y = torch.cat(chunks), torch.cat(targets)
    shift, figures = _fit_shift(z, y)
    for bias in biases:
        bias.add_(shift.to(bias.device, bias.dtype))
    return BiasCalibration(
        images=len(y),
        shift={name: float(v) for name, v in zip(labels, shift.tolist(), strict=True)},
        seconds=time.perf_counter() - start,
        **figures,
    )
