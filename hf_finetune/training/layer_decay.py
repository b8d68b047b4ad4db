"""Layer ids for layer-wise learning-rate decay (BEiT, timm's ``param_groups_layer_decay``).

With ``layer_decay: d`` a body parameter of layer ``i`` learns at ``learning_rate * d ** (L - i)``, where
``L`` (:attr:`LayerIds.num_layers`) is the head's layer: the head learns at
``learning_rate * head_lr_multiplier`` (``d ** 0``), the stem (layer 0) at ``learning_rate * d ** L``.

The layers come from the model's structure:

* timm models (``TimmWrapper``'s ``timm_model``) with a ``group_matcher``: the mapping timm's own
  ``param_groups_layer_decay`` uses, ``group_parameters(model, model.group_matcher(coarse=False))``:
  the stem is layer 0, then every block (``blocks.i.j`` for EfficientNet, ``layerI.J`` for ResNet,
  ``blocks.i`` for ViT) is one layer, and the final conv/norm after the last block shares its layer;
* every other model: :func:`hf_finetune.models.freezing.body_layout`: the stem (everything before the first
  block) is layer 0, block ``k`` (1-based, the children of the body's largest ``ModuleList``/``Sequential``:
  ViT's ``encoder.layer.k``, ResNet's ``encoder.stages.k``) is layer ``k``, and what follows the last block
  (final norm, pooler) shares the last block's layer.

In both cases the head's tensors are layer ``L`` = (highest body layer) + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.models import group_parameters
from torch import nn

from hf_finetune.models.freezing import body_layout
from hf_finetune.models.heads import head_parameter_names

__all__ = ["LayerIds", "layer_ids", "layer_lr"]

TIMM_PREFIX = "timm_model."


@dataclass
class LayerIds:
    """``ids``: body parameter name -> layer (0 = stem); ``num_layers``: the head's layer; ``source``: how the
    layers were found (``timm group_matcher`` or ``body_layout``)."""

    ids: dict[str, int]
    num_layers: int
    source: str

    def describe(self) -> list[str]:
        """One line per layer: its id, first tensor and tensor count."""
        first: dict[int, str] = {}
        count: dict[int, int] = {}
        for name, layer in self.ids.items():
            first.setdefault(layer, name)
            count[layer] = count.get(layer, 0) + 1
        return [f"layer {i}: {count[i]} tensors from {first[i]}" for i in sorted(first)]


def layer_lr(learning_rate: float, layer_decay: float, layer: int, num_layers: int) -> float:
    """``learning_rate * layer_decay ** (num_layers - layer)``: the learning rate of a body layer."""
    return learning_rate * layer_decay ** (num_layers - layer)


def _timm_ids(model: nn.Module, head: set[str]) -> dict[str, int] | None:
    timm_model = getattr(model, "timm_model", None)
    if timm_model is None or not hasattr(timm_model, "group_matcher"):
        return None

    try:
        mapping = group_parameters(timm_model, timm_model.group_matcher(coarse=False), reverse=True)
    except NotImplementedError:  # a timm model that declares no grouping
        return None
    ids = {TIMM_PREFIX + name: layer for name, layer in mapping.items() if TIMM_PREFIX + name not in head}
    if len(set(ids.values())) < 2:
        return None
    # Dense ids from 0 in order (the head, unmatched, may have held an id between them).
    dense = {layer: i for i, layer in enumerate(sorted(set(ids.values())))}
    return {name: dense[layer] for name, layer in ids.items()}


def _layout_ids(model: nn.Module, head: set[str]) -> dict[str, int]:
    layout = body_layout(model)
    block_of = {name: k for k, (_, names) in enumerate(layout.blocks, start=1) for name in names}
    ids: dict[str, int] = {}
    current = 0  # the stem until the first block; after a block, its layer (final norms share the last one)
    for name, _ in model.named_parameters():
        if name in head:
            continue
        current = block_of.get(name, current)
        ids[name] = current
    return ids


def layer_ids(model: nn.Module, head_names: list[str] | None = None) -> LayerIds:
    """The layer of every body parameter of ``model`` (names as ``model.named_parameters()`` gives them)."""
    head = set(head_names if head_names is not None else head_parameter_names(model))
    ids = _timm_ids(model, head)
    source = "timm group_matcher"
    if ids is None:
        ids, source = _layout_ids(model, head), "body_layout"
    num_layers = max(ids.values(), default=0) + 1
    return LayerIds(ids=ids, num_layers=num_layers, source=source)
