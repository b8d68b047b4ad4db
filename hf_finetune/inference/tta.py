"""Test-time augmentation (``--tta``) for ``predict`` and ``eval``: several views of each image go through the
model and their probabilities are averaged.

* ``none``: the image once (the default; results unchanged).
* ``hflip``: the model input and its mirror image (the preprocessed tensor flipped left-right): 2 passes.
* ``multicrop``: the image resized as the evaluation transform resizes it (short side ``size / crop_pct``),
  then the centre crop and the 4 corner crops of ``size``, without mirrors: 5 passes. When the checkpoint's
  processor does not crop (``crop_pct`` 1, e.g. ViT resizes straight to 224 x 224) the short side is resized to
  ``size / 0.875`` instead, so that the corners differ from the centre.

Probabilities are the model's own: softmax for single-label classifiers, sigmoid for multi-label ones (the
transformers pipeline's ``function_to_apply``). ``eval`` reports, as logits, what maps back to the averaged
probabilities: ``log p`` under softmax (softmax(log p) = p), ``log(p / (1 - p))`` under sigmoid, so every
metric computed from the logits (accuracy, loss, mAP, thresholds) is the metric of the averaged probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from hf_finetune.data.transforms import build_transforms
from hf_finetune.errors import ConfigError
from hf_finetune.inference.predictions import apply_scores  # torch-free: predict --onnx uses it too

__all__ = [
    "TTA_MODES",
    "FALLBACK_CROP_PCT",
    "check_tta",
    "num_views",
    "MultiCrop",
    "flip_views",
    "apply_scores",
    "average_probabilities",
    "probabilities_to_logits",
    "expand_views",
    "combine_views",
]

TTA_MODES = ("none", "hflip", "multicrop")
#: multicrop's crop fraction when the checkpoint's own is 1 (no margin to take corners from).
FALLBACK_CROP_PCT = 0.875
_VIEWS = {"none": 1, "hflip": 2, "multicrop": 5}
#: probabilities are clipped to [EPS, 1 - EPS] before log / logit, so a saturated view stays finite.
EPS = 1e-12


def check_tta(tta: str) -> str:
    """``tta`` if it is one of :data:`TTA_MODES`, else a one-line :class:`ConfigError`."""
    if tta not in TTA_MODES:
        raise ConfigError(f"tta: expected one of {', '.join(TTA_MODES)}, got {tta!r}")
    return tta


def num_views(tta: str) -> int:
    """Forward passes per image under ``tta``: 1, 2 (hflip) or 5 (multicrop)."""
    return _VIEWS[check_tta(tta)]


class MultiCrop:
    """PIL image -> ``(5, C, H, W)``: centre, top-left, top-right, bottom-left, bottom-right crops of the image
    resized as the evaluation transform of ``data_config`` resizes it (its normalisation applied to each)."""

    def __init__(self, data_config: dict[str, Any]):
        config = dict(data_config)
        if float(config.get("crop_pct") or 1.0) >= 1.0:
            config["crop_pct"] = FALLBACK_CROP_PCT
        config["crop_mode"] = "center"
        _, eval_transform = build_transforms(config, augmentation="none")
        steps = list(getattr(eval_transform, "transforms", [eval_transform]))
        crops = [i for i, step in enumerate(steps) if isinstance(step, T.CenterCrop)]
        if not crops:
            raise ConfigError(
                f"tta: multicrop needs a resize + centre-crop evaluation transform, got {steps}"
            )
        index = crops[0]
        self.resize = T.Compose(steps[:index])
        self.size = steps[index].size
        self.finish = T.Compose(steps[index + 1 :])

    def __call__(self, image: Any) -> torch.Tensor:
        resized = self.resize(image)
        top_left, top_right, bottom_left, bottom_right, centre = TF.five_crop(resized, list(self.size))
        views = (centre, top_left, top_right, bottom_left, bottom_right)
        return torch.stack([self.finish(view) for view in views])

    def __repr__(self) -> str:
        return f"MultiCrop(resize={self.resize}, size={self.size}, finish={self.finish})"


def flip_views(pixels: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, 2, C, H, W)``: each input and its left-right mirror."""
    return torch.stack([pixels, torch.flip(pixels, dims=[-1])], dim=1)


def average_probabilities(view_logits: np.ndarray, function: str) -> np.ndarray:
    """``(N, V, K)`` logits of V views -> ``(N, K)``: the mean over views of each view's probabilities (float64
    for V > 1; one view is returned as :func:`apply_scores` gives it)."""
    if view_logits.shape[1] == 1:
        return apply_scores(view_logits[:, 0], function)
    return apply_scores(view_logits.astype(np.float64), function).mean(axis=1)


def probabilities_to_logits(probabilities: np.ndarray, function: str) -> np.ndarray:
    """Logits whose ``function`` gives back ``probabilities`` (float32): ``log p`` for softmax, the logit
    ``log(p / (1 - p))`` for sigmoid, the values themselves for none; clipped to [1e-12, 1 - 1e-12]."""
    if function == "none":
        return probabilities.astype(np.float32)
    p = np.clip(probabilities.astype(np.float64), EPS, 1.0 - EPS)
    if function == "softmax":
        return np.log(p).astype(np.float32)
    if function == "sigmoid":
        return (np.log(p) - np.log1p(-p)).astype(np.float32)
    raise ValueError(f"unknown function_to_apply {function!r}")


def expand_views(pixels: torch.Tensor, tta: str) -> torch.Tensor:
    """One batch of model inputs, ``(B * V, C, H, W)``, image by image: ``pixels`` is ``(B, C, H, W)`` (none,
    hflip: the mirror is added here) or ``(B, V, C, H, W)`` (multicrop: the views :class:`MultiCrop` made)."""
    if tta == "hflip":
        pixels = flip_views(pixels)
    return pixels.reshape(-1, *pixels.shape[-3:])


def combine_views(logits: np.ndarray, tta: str, function: str) -> np.ndarray:
    """``(B * V, K)`` logits of :func:`expand_views`' batch -> ``(B, K)`` averaged probabilities."""
    return average_probabilities(logits.reshape(-1, num_views(tta), logits.shape[-1]), function)
