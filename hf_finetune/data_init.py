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
``mean + log n`` rule. Both are written by :func:`hf_finetune.heads.copy_source_rows`, given the weights;
with ``label_merge: balanced`` the ``H(a)`` term is left out, as ``log n`` is there.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from .heads import head_module_names

__all__ = ["source_probabilities_per_class", "data_driven_rows"]

logger = logging.getLogger(__name__)


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
) -> dict[int, np.ndarray]:
    """Mean source-class softmax (over ``per_class`` images) for each target class present in ``raw_dataset``.

    ``raw_dataset`` is a split with ``image`` and ``label`` columns; ``transform`` is the evaluation transform.
    The source logits are computed from the features entering the model's head and the source head tensors,
    so no second model is needed.
    """
    from .transforms import make_batch_transform

    labels = np.asarray(list(raw_dataset["label"]))
    chosen: list[int] = []
    for target in range(num_targets):
        chosen.extend(np.flatnonzero(labels == target)[:per_class].tolist())
    if not chosen:
        return {}
    subset = raw_dataset.select(sorted(chosen)).with_transform(make_batch_transform(transform))
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
        for start in range(0, len(subset), batch_size):
            rows = [subset[i] for i in range(start, min(start + batch_size, len(subset)))]
            rows = [r for r in rows if r["pixel_values"] is not None]  # images that failed to decode
            if not rows:
                continue
            pixels = torch.stack([r["pixel_values"] for r in rows]).to(device)
            model(pixel_values=pixels)
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
            for row, prob in zip(rows, probs, strict=True):
                target = int(row["labels"])
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
