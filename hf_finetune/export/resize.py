"""torchvision's antialiased resize of a uint8 image, in numpy, to the bit.

transformers' image processors on their torchvision backend (``TorchvisionBackend``, e.g. MobileNetV2's) resize
the uint8 image tensor with ``torchvision.transforms.v2.functional.resize(..., antialias=True)``, whose CPU kernel
is PIL's separable convolution (width first, then height, each pass rounded to uint8) with the weights held as
int16 at a precision chosen per pass, where PIL holds them at 22 bits: a pixel here and there differs from PIL's
``Image.resize`` by one level, which moves the probabilities by up to ~1e-3. :func:`torchvision_resize` repeats
that arithmetic exactly (integers below 2**53, so float64 products and sums are exact), so an ONNX export runs on
the pixels PyTorch predict sees without importing torch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TORCHVISION_KERNELS", "torchvision_resize"]

TORCHVISION_KERNELS = ("bilinear", "bicubic")
_MAX_PRECISION = 22


def _filter(x: np.ndarray, kernel: str) -> np.ndarray:
    """The antialiasing filters: a triangle (bilinear), Keys' cubic with a = -0.5 (bicubic, as PIL)."""
    x = np.abs(x)
    if kernel == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _int_weights(in_size: int, out_size: int, kernel: str) -> tuple[np.ndarray, int]:
    """``(out_size, in_size)`` integer weights (as float64) and their precision in bits, as torch computes them."""
    scale = in_size / out_size
    support = (1.0 if kernel == "bilinear" else 2.0) * max(scale, 1.0)
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = scale * (i + 0.5)
        low = max(int(center - support + 0.5), 0)  # int(): truncation toward zero, as the C++ cast
        high = min(int(center + support + 0.5), in_size)
        taps = _filter((np.arange(low, high) - center + 0.5) * invscale, kernel)
        total = taps.sum()
        weights[i, low:high] = taps / total if total != 0 else taps
    largest = weights.max()
    precision = 0
    while precision < _MAX_PRECISION and int(0.5 + largest * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    return np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5)), precision


def _pass(pixels: np.ndarray, weights: np.ndarray, precision: int, axis: int) -> np.ndarray:
    moved = np.moveaxis(pixels, axis, -1)
    total = moved @ weights.T + (1 << (precision - 1))
    return np.moveaxis(np.clip(np.floor(total / (1 << precision)), 0, 255), -1, axis)


def torchvision_resize(pixels: np.ndarray, size: tuple[int, int], kernel: str) -> np.ndarray:
    """``(H, W, C)`` uint8 -> ``(height, width, C)`` uint8, ``size = (height, width)``, as torchvision's
    antialiased ``resize`` of the same uint8 tensor gives it (``kernel``: bilinear or bicubic)."""
    if kernel not in TORCHVISION_KERNELS:
        raise ValueError(f"torchvision_resize: kernel {kernel!r}; expected one of {TORCHVISION_KERNELS}")
    height, width = size
    out = pixels.astype(np.float64)
    if width != pixels.shape[1]:
        out = _pass(out, *_int_weights(pixels.shape[1], width, kernel), axis=1)
    if height != pixels.shape[0]:
        out = _pass(out, *_int_weights(pixels.shape[0], height, kernel), axis=0)
    return out.astype(np.uint8)
