"""Freezing the bottom of a network and handling its BatchNorm statistics.

The body's blocks are found from the model's structure, not from a per-architecture list:

* a timm model (``TimmWrapper``'s ``timm_model``) names its stages itself: the ``blocks`` pattern of its
  ``group_matcher(coarse=True)`` (the grouping timm's own layer decay uses): ResNet's ``layer1`` ... ``layer4``,
  RegNet's ``s1`` ... ``s4``, ViT's ``blocks.i``, EfficientNet's ``blocks.i`` stages;
* any other model: the blocks are the children of the largest ``ModuleList``/``Sequential`` inside the body
  (ViT's ``encoder.layer``, MobileNetV2's ``layer``, ResNet's ``encoder.stages``, ...).

Everything of the body that comes before the first block (the stem, embeddings) is frozen with the first
block.
"""

from __future__ import annotations

import logging
import re
import types
from dataclasses import dataclass, field

from torch import nn

from hf_finetune.models.heads import head_parameter_names

__all__ = [
    "BodyLayout",
    "body_layout",
    "block_class_names",
    "set_wrap_classes",
    "freeze_parameters",
    "configure_batchnorm",
    "FreezeReport",
]

logger = logging.getLogger(__name__)


@dataclass
class BodyLayout:
    """The body's stem parameters, then its blocks in order (module name, parameter names)."""

    stem: list[str]
    blocks: list[tuple[str, list[str]]]
    rest: list[str]  # body parameters after the last block (final norms, pre-logits)


@dataclass
class FreezeReport:
    frozen: list[str] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)
    frozen_blocks: list[str] = field(default_factory=list)

    def describe(self) -> str:
        blocks = ", ".join(self.frozen_blocks) if self.frozen_blocks else "none"
        return (
            f"frozen: {len(self.frozen)} tensors (blocks: {blocks}); trainable: {len(self.trainable)} tensors"
        )


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _timm_block_patterns(timm_model: nn.Module) -> list[str]:
    """The regular expressions of a timm model's ``group_matcher(coarse=True)`` that number its blocks."""
    try:
        matcher = timm_model.group_matcher(coarse=True)
    except (NotImplementedError, TypeError):
        return []
    spec = matcher.get("blocks") if isinstance(matcher, dict) else None
    if isinstance(spec, str):
        return [spec]
    if isinstance(
        spec, (list, tuple)
    ):  # [(pattern, None): numbered blocks, (pattern, (99999,)): the final norm]
        return [entry[0] for entry in spec if isinstance(entry, (list, tuple)) and entry[1] is None]
    return []


def _timm_blocks(model: nn.Module, order: list[str]) -> list[tuple[str, list[str]]] | None:
    """The blocks of a timm model from its ``group_matcher`` (module name, parameter names), or None."""
    timm_model = getattr(model, "timm_model", None)
    if timm_model is None or not hasattr(timm_model, "group_matcher"):
        return None
    patterns = [re.compile(p) for p in _timm_block_patterns(timm_model)]
    prefix = "timm_model."
    modules = {n for n, _ in model.named_modules()}
    blocks: dict[int, tuple[str, list[str]]] = {}
    for name in order:
        if not name.startswith(prefix):
            continue
        for pattern in patterns:
            found = pattern.match(name[len(prefix) :])
            if found and found.groups() and found.group(1) is not None and found.group(1).isdigit():
                module_name = prefix + found.group(0).rstrip(".")
                if module_name not in modules:
                    continue
                blocks.setdefault(int(found.group(1)), (module_name, []))[1].append(name)
                break
    return [blocks[k] for k in sorted(blocks)] if len(blocks) >= 2 else None


def _largest_container_blocks(model: nn.Module, head: set[str]) -> list[tuple[str, list[str]]]:
    """The children (with parameters outside the head) of the body's largest ``ModuleList``/``Sequential``."""
    best_name, best_module, best_size = None, None, -1
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        children = [c for c in module.children() if _param_count(c) > 0]
        if len(children) < 2:
            continue
        size = sum(p.numel() for n, p in module.named_parameters(prefix=name) if n not in head)
        if size > best_size:
            best_name, best_module, best_size = name, module, size
    if best_module is None:
        return []
    blocks: list[tuple[str, list[str]]] = []
    for child_name, child in best_module.named_children():
        prefix = f"{best_name}.{child_name}" if best_name else child_name
        names = [f"{prefix}.{n}" for n, _ in child.named_parameters()]
        names = [n for n in names if n not in head]
        if names:
            blocks.append((prefix, names))
    return blocks


def body_layout(model: nn.Module) -> BodyLayout:
    """Find the stem and the ordered blocks of ``model``'s body (head tensors are in none of them)."""
    head = set(head_parameter_names(model))
    order = [n for n, _ in model.named_parameters() if n not in head]
    blocks = _timm_blocks(model, order) or _largest_container_blocks(model, head)
    if not blocks:
        return BodyLayout(stem=[], blocks=[], rest=order)
    in_blocks = {n for _, names in blocks for n in names}
    first_block_index = min(order.index(n) for n in in_blocks) if in_blocks else len(order)
    last_block_index = max(order.index(n) for n in in_blocks) if in_blocks else len(order)
    stem = [n for i, n in enumerate(order) if i < first_block_index and n not in in_blocks]
    rest = [n for i, n in enumerate(order) if i > last_block_index and n not in in_blocks]
    return BodyLayout(stem=stem, blocks=blocks, rest=rest)


def block_class_names(model: nn.Module) -> list[str]:
    """Class names of the body's blocks (:func:`body_layout`), the units FSDP wraps one by one.

    A block that is itself a container (timm EfficientNet's stages are ``Sequential``s of blocks) is
    replaced by its children's classes, so that the wrap is by the block class and not by every container.
    """
    modules = dict(model.named_modules())
    names: list[str] = []
    for block_name, _ in body_layout(model).blocks:
        block = modules[block_name]
        if isinstance(block, (nn.Sequential, nn.ModuleList)):
            units = [c for c in block.children() if _param_count(c) > 0]
        else:
            units = [block]
        for unit in units:
            if type(unit).__name__ not in names:
                names.append(type(unit).__name__)
    return names


def set_wrap_classes(model: nn.Module) -> list[str]:
    """Make ``model._no_split_modules`` the classes of its blocks (:func:`block_class_names`).

    accelerate's FSDP ``TRANSFORMER_BASED_WRAP`` with no class list wraps the classes named by
    ``_no_split_modules``; transformers models name theirs (``ViTLayer``) but some name none
    (MobileNetV2) and timm models through ``TimmWrapper`` name the whole wrapper. Keeps the model's own
    list when the body has no block structure. Returns the list now in place.
    """
    names = block_class_names(model)
    if names:
        model._no_split_modules = names
    return list(getattr(model, "_no_split_modules", None) or [])


def freeze_parameters(
    model: nn.Module, freeze_layers: int = 0, patterns: list[str] | None = None
) -> FreezeReport:
    """Freeze the stem and the first ``freeze_layers`` blocks (``-1``: the whole body), plus parameters whose
    names match any regular expression in ``patterns``. The head always stays trainable."""
    head = set(head_parameter_names(model))
    named = dict(model.named_parameters())
    to_freeze: set[str] = set()
    frozen_blocks: list[str] = []
    if freeze_layers == -1:
        to_freeze.update(n for n in named if n not in head)
        frozen_blocks = ["whole body"]
    elif freeze_layers > 0:
        layout = body_layout(model)
        if not layout.blocks:
            logger.warning(
                "freeze_layers=%d: no block structure found in %s; nothing frozen by count",
                freeze_layers,
                type(model).__name__,
            )
        else:
            if freeze_layers > len(layout.blocks):
                logger.warning(
                    "freeze_layers=%d but the body has %d blocks: freezing all of them",
                    freeze_layers,
                    len(layout.blocks),
                )
            to_freeze.update(layout.stem)
            for block_name, names in layout.blocks[:freeze_layers]:
                to_freeze.update(names)
                frozen_blocks.append(block_name)
    for pattern in patterns or []:
        regex = re.compile(pattern)
        matched = [n for n in named if regex.search(n) and n not in head]
        if not matched:
            logger.warning("freeze_patterns: %r matches no parameter of the body", pattern)
        to_freeze.update(matched)
    for name, param in named.items():
        if name in to_freeze:
            param.requires_grad_(False)
    report = FreezeReport(
        frozen=[n for n in named if not named[n].requires_grad],
        trainable=[n for n in named if named[n].requires_grad],
        frozen_blocks=frozen_blocks,
    )
    return report


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    # BatchNorm with frozen statistics: always evaluate with the running statistics.
    return nn.Module.train(self, False)


def configure_batchnorm(model: nn.Module, mode: str = "auto") -> list[str]:
    """Apply the BatchNorm policy; returns one line per kind of change made.

    * ``auto``: ``freeze``, whatever the batch size. A short fine-tune that trains the statistics evaluates the
      network under running statistics that do not match the batch statistics it learned under
      (``bench/defaults_table.py`` measures both on real photos); a network trained from scratch wants
      ``train``.
    * ``freeze``: BatchNorm layers always run in evaluation mode (running statistics kept; affine weights
      still learn when their parameters are trainable).
    * ``train``: the statistics follow the training batches. Momentum written in TensorFlow's convention
      (``running = m*running + (1-m)*batch``, m close to 1, as transformers' MobileNetV1/V2 build it with
      0.997/0.9997) is converted to PyTorch's (``1 - m``) first; as loaded, every training batch would
      replace the running statistics.
    """
    changes: list[str] = []
    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return changes
    if mode == "auto":
        mode = "freeze"
        changes.append(
            "batchnorm auto: the pretrained statistics are kept (frozen); batchnorm train trains them"
        )
    if mode == "train":
        fixed: dict[float, int] = {}
        for _, module in norms:
            if module.momentum is not None and module.momentum > 0.5:
                fixed[module.momentum] = fixed.get(module.momentum, 0) + 1
                module.momentum = round(1.0 - module.momentum, 10)
        for momentum, count in sorted(fixed.items()):
            changes.append(
                f"BatchNorm momentum {momentum} (TensorFlow convention) -> {round(1 - momentum, 10)} in {count} layers"
            )
        return changes
    if mode == "freeze":
        for _, module in norms:
            module.train = types.MethodType(_frozen_train, module)
            module.eval()
        changes.append(f"BatchNorm statistics frozen in {len(norms)} layers")
    return changes
