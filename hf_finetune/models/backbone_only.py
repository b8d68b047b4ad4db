"""Backbone-only checkpoints: a body saved without a classification head.

* a ``ViTModel``, ``Dinov2Model``, ``ConvNextModel`` ... save (``config.model_type`` is an image classification
  type, but ``config.architectures`` names no classifier): ``AutoModelForImageClassification`` loads the body
  and draws a new head;
* a vision tower (``CLIPVisionModel``, ``SiglipVisionModel``: ``model_type`` ``clip_vision_model``) or a whole
  contrastive model (``CLIPModel``): it loads as the family's image classifier (``CLIPForImageClassification``)
  built from the checkpoint's vision config, the tower's weights copied into its ``vision_model``.

Either way the head is new, the checkpoint has no label rows to map from, and the run report says so
(:func:`new_head_reason`).
"""

from __future__ import annotations

import logging

from torch import nn
from transformers import AutoModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

from hf_finetune.errors import ModelLoadError

__all__ = [
    "VISION_TOWER_SUFFIX",
    "classifier_config_for_tower",
    "is_vision_tower",
    "new_head_reason",
    "load_vision_tower",
]

logger = logging.getLogger(__name__)

VISION_TOWER_SUFFIX = "_vision_model"  # clip_vision_model, siglip_vision_model, ...


def _classifier_names() -> set[str]:
    names: set[str] = set()
    for value in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def classifier_config_for_tower(config):
    """For a vision tower's config (``clip_vision_model``), the config of the family's image classifier
    (a ``CLIPConfig`` holding it as ``vision_config``); None for any other config."""
    model_type = getattr(config, "model_type", "") or ""
    family = model_type.removesuffix(VISION_TOWER_SUFFIX)
    if family == model_type or family not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return None
    vision = config.to_dict()
    parent = CONFIG_MAPPING[family](vision_config=vision)
    parent.architectures = list(getattr(config, "architectures", None) or [])
    return parent


def is_vision_tower(config) -> bool:
    """Whether ``config`` (made by :func:`classifier_config_for_tower`) is a vision tower's: its architecture is
    the class ``AutoModel`` builds for its ``vision_config`` (``CLIPVisionModel``)."""
    vision_type = getattr(getattr(config, "vision_config", None), "model_type", None)
    tower_class = MODEL_MAPPING_NAMES.get(vision_type or "")
    return bool(tower_class) and tower_class in (getattr(config, "architectures", None) or [])


def new_head_reason(config, name: str) -> str | None:
    """Why the head of ``name`` is new when it is a backbone-only checkpoint (None when it has a classifier)."""
    architectures = list(getattr(config, "architectures", None) or [])
    if not architectures or set(architectures) & _classifier_names():
        return None
    return (
        f"{name} is a backbone-only checkpoint ({', '.join(architectures)}): it has no classification head, so "
        "the head is new, drawn at random for the target labels, and no label rows are mapped"
    )


def _tower_module(model: nn.Module, tower: nn.Module) -> tuple[str, nn.Module]:
    for name, module in model.named_modules():
        if name and type(module) is type(tower):
            return name, module
    raise ModelLoadError(
        f"model_name_or_path: the vision tower {type(tower).__name__} has no place in {type(model).__name__}"
    )


def load_vision_tower(model: nn.Module, name_or_path: str, **kwargs) -> set[str]:
    """Copy the vision tower saved at ``name_or_path`` into the classifier ``model`` (its ``vision_model``);
    returns the names (in ``model``) of the tensors loaded."""
    tower = AutoModel.from_pretrained(name_or_path, **kwargs)
    prefix, module = _tower_module(model, tower)
    result = module.load_state_dict(tower.state_dict(), strict=False)
    if result.missing_keys:
        raise ModelLoadError(
            f"model_name_or_path: {name_or_path} lacks tensors of its vision tower: {', '.join(result.missing_keys[:5])}"
        )
    if result.unexpected_keys:
        logger.info("vision tower tensors the classifier does not use: %s", ", ".join(result.unexpected_keys))
    return {f"{prefix}.{key}" for key in module.state_dict()}
