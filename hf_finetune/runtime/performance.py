"""Fast defaults, chosen from the machine and the model when the recipe leaves them unset.

* ``bf16`` (mixed precision, autocast): on where the hardware computes bfloat16 natively: CUDA GPUs that
  support it, and CPUs with AVX512-BF16 or AMX. ``bf16: false`` turns it off.
* ``channels_last``: convolutional networks run NHWC, which oneDNN (CPU) and cuDNN (GPU) convolutions are
  fastest in; chosen when most of the body's weights are 2-D convolutions.
* DataLoader workers: on a GPU the data pipeline is the bottleneck, so up to 8 workers with pinned memory,
  persistent workers and a deeper prefetch; on a CPU the model's arithmetic needs the cores, so workers only
  get the logical CPUs that the compute threads leave free.
* ``tune_depthwise_precision``: with bf16 on a CPU, the depthwise convolutions that oneDNN runs faster in
  fp32 than in bf16 (timed per shape before training) run in fp32 (:mod:`hf_finetune.runtime.tuning`).
* ``tune_inplace_activations``: with bf16 on a CPU, the in-place activations (timm's) that run faster out of
  place (timed per shape before training) run out of place (:mod:`hf_finetune.runtime.tuning`).
* ``static_same_padding``: transformers' MobileNets pad stride-1 convolutions inside the convolution instead
  of copying every activation through ``F.pad`` first (:mod:`hf_finetune.runtime.same_padding`).
* ``keep_freed_memory``: on a CPU under glibc, freed memory stays in the process (``mallopt``), so the large
  activation tensors of every step reuse pages instead of being mapped and page-faulted in again.

``bench/throughput.py`` measures each of them against the transformers example recipe.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

import torch
from torch import nn

__all__ = [
    "device_kind",
    "cpu_supports_bf16",
    "bf16_supported",
    "loader_settings",
    "conv_weight_fraction",
    "channels_last_breaks",
    "wants_channels_last",
    "glibc_malloc_available",
    "keep_freed_memory",
]


def device_kind(use_cpu: bool = False) -> str:
    """``cuda``, ``cpu`` or ``other`` (an accelerator this module has no defaults for)."""

    if use_cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    for name in ("xpu", "mps", "npu", "mlu", "hpu"):
        backend = getattr(torch, name, None) or getattr(torch.backends, name, None)
        try:
            if backend is not None and backend.is_available():
                return "other"
        except Exception:  # a backend module without is_available, or one that fails to initialise
            continue
    return "cpu"


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX tiles)."""

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        check = getattr(torch.cpu, name, None)
        try:
            if check is not None and check():
                return True
        except Exception:
            continue
    return False


def bf16_supported(kind: str) -> tuple[bool, str]:
    """Whether ``bf16: auto`` turns bfloat16 autocast on for a device ``kind`` (:func:`device_kind`), and why."""
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, f"{torch.cuda.get_device_name(0)} computes bfloat16"
        return False, f"{torch.cuda.get_device_name(0)} has no bfloat16 arithmetic"
    if kind == "cpu":
        if cpu_supports_bf16():
            return True, "the CPU has AVX512-BF16/AMX"
        return False, "the CPU has no AVX512-BF16/AMX (bfloat16 would be emulated, slower than fp32)"
    return False, "no bfloat16 default for this accelerator"


def loader_settings(
    kind: str,
    cpu_count: int | None = None,
    compute_threads: int | None = None,
    local_processes: int = 1,
) -> dict[str, Any]:
    """DataLoader settings for a device ``kind`` (``cuda``, ``cpu``, ``other``) on this machine.

    Returns ``num_workers``, ``persistent_workers``, ``prefetch_factor`` (``None``: torch's default) and
    ``reason``. ``cpu_count`` defaults to the CPUs this process may use, ``compute_threads`` to torch's
    intra-op threads; both are split between ``local_processes`` processes on the machine.
    """
    if cpu_count is None:
        cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_processes = max(1, local_processes)
    per_process = max(1, cpu_count // local_processes)
    if kind == "cpu":
        if compute_threads is None:
            compute_threads = torch.get_num_threads()
        free = max(0, per_process - compute_threads)
        workers = min(4, free)
        reason = (
            f"CPU training: {per_process} CPUs per process, {compute_threads} compute threads -> "
            f"{workers} loader workers"
        )
        return {
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "prefetch_factor": None,
            "reason": reason,
        }
    workers = max(1, min(8, per_process - 1))
    return {
        "num_workers": workers,
        "persistent_workers": True,
        "prefetch_factor": 4,
        "reason": f"accelerator training: {per_process} CPUs per process -> {workers} loader workers",
    }


def conv_weight_fraction(model) -> float:
    """The share of the model's weights held by 2-D convolutions."""

    total = conv = 0
    for module in model.modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        total += own
        if isinstance(module, nn.Conv2d):
            conv += own
    return conv / total if total else 0.0


def wants_channels_last(model) -> bool:
    """``channels_last: auto``: NHWC pays off when most weights are 2-D convolutions (CNNs, not ViTs)."""
    return conv_weight_fraction(model) >= 0.5


def channels_last_breaks(model, device_type: str) -> str | None:
    """Why ``channels_last: auto`` must stay off for ``model`` on ``device_type``, or ``None``.

    torch's CPU kernels without AVX-512 (AVX2) corrupt the heap in the backward pass of timm's FastViT in NHWC:
    ``fastvit_t8`` at 64 px, batch 4, two steps, with timm and torch alone, ends in a segmentation fault or
    "double free or corruption" (torch 2.14.1, a 2-core AMD EPYC); contiguous (NCHW) tensors train."""
    if device_type != "cpu" or "AVX512" in str(torch.backends.cpu.get_cpu_capability()):
        return None
    if any(type(module).__module__.startswith("timm.models.fastvit") for module in model.modules()):
        return "torch's AVX2 CPU kernels corrupt memory in FastViT's NHWC backward pass"
    return None


# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def _glibc():
    """The running process's C library when it is glibc (it has ``mallopt``), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc if hasattr(libc, "mallopt") else None
    except (OSError, AttributeError):  # musl, or no symbols in the main program
        return None


def glibc_malloc_available() -> bool:
    """Whether :func:`keep_freed_memory` can act here (Linux with glibc)."""
    return _glibc() is not None


def keep_freed_memory() -> bool:
    """Keep memory that the process frees, for its next allocations, instead of returning it to the OS.

    glibc serves every allocation above ``M_MMAP_THRESHOLD`` (128 KiB, rising with use to at most 32 MiB) with a
    fresh ``mmap`` and gives it back with ``munmap`` when freed. A CNN's activations at batch 32 are such blocks (MobileNetV2's first
    expansion: 32 x 96 x 112 x 112 floats, 154 MB), so every training step maps its activations anew and the
    kernel zero-fills them page by page on first touch: on a 2-core CPU 130-165 thousand page faults a step
    and a third of MobileNetV2's step time (0.968 s a step without this, 0.657 s with it). ``M_MMAP_MAX = 0`` serves them from the
    heap and ``M_TRIM_THRESHOLD = -1`` (see mallopt(3)) never shrinks it, so the pages of one step are reused by
    the next: what jemalloc or tcmalloc preloaded would do, without a preload. The cost: the process keeps
    what it freed until it exits, and fragmentation raises its peak (MobileNetV2 on CIFAR-10, 60 steps with 3
    evaluations: peak RSS 3209 MiB against 2648). Process-wide, and inherited by forked loader workers.
    Returns whether it took effect (``False`` off glibc)."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
