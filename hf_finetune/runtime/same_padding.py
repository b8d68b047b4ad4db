"""TensorFlow "SAME" padding done by the convolution: transformers' MobileNets (``config.tf_padding``) pad every
convolution's input with ``F.pad``, a plain copy of the activation where the padding is static; stride-1 layers
are given that padding as the convolution's own, bit for bit the same outputs."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["static_same_padding"]


def _tf_padded_conv_layers(model) -> list[tuple[str, Any]]:
    """Layers that pad their convolution's input TensorFlow-style ("SAME") in their forward: transformers'
    MobileNet V1/V2 layers (``config.tf_padding``, the convolution in ``.convolution``)."""

    return [
        (name, module)
        for name, module in model.named_modules()
        if getattr(getattr(module, "config", None), "tf_padding", False) is True
        and isinstance(getattr(module, "convolution", None), nn.Conv2d)
    ]


def _static_same_pad(conv) -> tuple[int, int] | None:
    """The padding that TensorFlow's "SAME" gives ``conv`` on every input size, when there is one: stride 1
    and an odd (dilated) kernel pad ``(k - 1) * dilation / 2`` on each side (timm's ``is_static_pad``)."""
    if tuple(conv.stride) != (1, 1) or tuple(conv.padding) != (0, 0):
        return None
    pads = []
    for kernel, dilation in zip(conv.kernel_size, conv.dilation, strict=True):
        total = (kernel - 1) * dilation
        if total % 2:
            return None
        pads.append(total // 2)
    return pads[0], pads[1]


def static_same_padding(model) -> list[str]:
    """Let the convolutions do the TensorFlow "SAME" padding that transformers' MobileNets do with ``F.pad``.

    With ``config.tf_padding`` (MobileNet V1/V2 checkpoints converted from TensorFlow) every convolution layer
    pads its input with ``F.pad`` before the convolution, 1x1 convolutions included, where the padding is zero
    and ``F.pad`` is a plain copy of the activation, forward and backward. For a stride-1 convolution that
    padding is the same on every input size, so it can be the convolution's own (``padding=(k - 1) / 2``) and
    the layer skips ``F.pad``: it is given a copy of the config with ``tf_padding`` off (the model's config,
    the one saved, keeps it on) and its convolution the static padding. Strided layers keep their input-size
    dependent padding. The outputs are the same bit for bit; this is checked on one layer of each class, on a
    random input, before any layer is changed, and nothing is changed if they differ. Weights are untouched.
    Returns the names of the layers changed."""

    layers = [(n, m, _static_same_pad(m.convolution)) for n, m in _tf_padded_conv_layers(model)]
    layers = [(n, m, pad) for n, m, pad in layers if pad is not None]
    if not layers:
        return []
    views: dict[int, Any] = {}  # id(config) -> its copy with tf_padding off

    def convert(module, pad):
        config = module.config
        if id(config) not in views:
            views[id(config)] = copy.copy(config)
            views[id(config)].tf_padding = False
        module.config = views[id(config)]
        module.convolution.padding = pad

    checked: set[type] = set()
    for _, module, pad in layers:
        if type(module) in checked:
            continue
        checked.add(type(module))
        conv, original = module.convolution, module.config
        x = torch.randn(2, conv.in_channels, 9, 10, generator=torch.Generator().manual_seed(0))
        x = x.to(device=conv.weight.device, dtype=conv.weight.dtype)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                expected = module(x)
                convert(module, pad)
                got = module(x)
        finally:
            module.config, conv.padding = original, (0, 0)
            module.train(was_training)
        if got.shape != expected.shape or not torch.equal(got, expected):
            return []
    for _, module, pad in layers:
        convert(module, pad)
    return [name for name, _, _ in layers]
