"""Fast defaults, chosen from the machine and the model when the recipe leaves them unset.

* ``bf16`` (mixed precision, autocast): on where the hardware computes bfloat16 natively: CUDA GPUs that
  support it, and CPUs with AVX512-BF16 or AMX. ``bf16: false`` turns it off.
* ``channels_last``: convolutional networks run NHWC, which oneDNN (CPU) and cuDNN (GPU) convolutions are
  fastest in; chosen when most of the body's weights are 2-D convolutions.
* DataLoader workers: on a GPU the data pipeline is the bottleneck, so up to 8 workers with pinned memory,
  persistent workers and a deeper prefetch; on a CPU the model's arithmetic needs the cores, so workers only
  get the logical CPUs that the compute threads leave free.

``bench/throughput.py`` measures each of them against the transformers example recipe.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "AUTO",
    "device_kind",
    "cpu_supports_bf16",
    "bf16_supported",
    "loader_settings",
    "conv_weight_fraction",
    "wants_channels_last",
]

AUTO = "auto"


def device_kind(use_cpu: bool = False) -> str:
    """``cuda``, ``cpu`` or ``other`` (an accelerator this module has no defaults for)."""
    import torch

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
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        check = getattr(torch.cpu, name, None)
        try:
            if check is not None and check():
                return True
        except Exception:
            continue
    return False


def bf16_supported(use_cpu: bool = False) -> tuple[bool, str]:
    """Whether ``bf16: auto`` turns bfloat16 autocast on here, and why (for the log)."""
    kind = device_kind(use_cpu)
    if kind == "cuda":
        import torch

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
            import torch

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
    from torch import nn

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
