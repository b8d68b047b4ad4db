"""Fast defaults, chosen from the machine and the model when the recipe leaves them unset.

* ``bf16`` (mixed precision, autocast): on where the hardware computes bfloat16 natively: CUDA GPUs that
  support it, and CPUs with AVX512-BF16 or AMX. ``bf16: false`` turns it off.
* ``channels_last``: convolutional networks run NHWC, which oneDNN (CPU) and cuDNN (GPU) convolutions are
  fastest in; chosen when most of the body's weights are 2-D convolutions.
* DataLoader workers: on a GPU the data pipeline is the bottleneck, so up to 8 workers with pinned memory,
  persistent workers and a deeper prefetch; on a CPU the model's arithmetic needs the cores, so workers only
  get the logical CPUs that the compute threads leave free.
* ``tune_depthwise_precision``: with bf16 on a CPU, the depthwise convolutions that oneDNN runs faster in
  fp32 than in bf16 (timed per shape before training) run in fp32.
* ``tune_inplace_activations``: with bf16 on a CPU, the in-place activations (timm's) that run faster out of
  place (timed per shape before training) run out of place.
* ``static_same_padding``: transformers' MobileNets pad stride-1 convolutions inside the convolution instead
  of copying every activation through ``F.pad`` first.
* ``keep_freed_memory``: on a CPU under glibc, freed memory stays in the process (``mallopt``), so the large
  activation tensors of every step reuse pages instead of being mapped and page-faulted in again.

``bench/throughput.py`` measures each of them against the transformers example recipe.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants
from torch import nn

__all__ = [
    "device_kind",
    "cpu_supports_bf16",
    "bf16_supported",
    "loader_settings",
    "conv_weight_fraction",
    "wants_channels_last",
    "tune_depthwise_precision",
    "tune_inplace_activations",
    "static_same_padding",
    "glibc_malloc_available",
    "keep_freed_memory",
    "tuning_cache_path",
    "TUNING_CACHE_ENV",
]

logger = logging.getLogger(__name__)

TUNING_CACHE_ENV = "HF_FINETUNE_TUNING_CACHE"  # the file tune_depthwise_precision keeps its timings in


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


def _depthwise_convs(model) -> list[tuple[str, Any]]:

    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
    ]


def _fp32_forward(self, x):
    """A depthwise convolution that runs in fp32 inside bf16 autocast, its output cast back to bfloat16."""

    with torch.autocast("cpu", enabled=False):
        out = type(self).forward(self, x.float())
    return out.to(torch.bfloat16)


def _input_shapes(
    model, modules: list[tuple[str, Any]], input_shape: tuple[int, ...], channels_last: bool
) -> dict[str, tuple[tuple[int, ...], Any]]:
    """The shape and dtype of the first input of each of ``modules`` (``(name, module)``), found with one forward
    pass of ``model`` at ``input_shape`` under bf16 autocast, in eval mode and without gradients."""

    shapes: dict[str, tuple[tuple[int, ...], Any]] = {}

    def record(name):
        def hook(module, args, out):  # returns None: the output is left alone
            shapes.setdefault(name, (tuple(args[0].shape), args[0].dtype))

        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in modules]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(pixel_values=torch.zeros(input_shape).contiguous(memory_format=memory_format))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return shapes


def tuning_cache_path() -> Path:
    """Where :func:`tune_depthwise_precision` keeps its timings: ``$HF_FINETUNE_TUNING_CACHE``, else
    ``hf_finetune/cpu_tuning.json`` in the Hugging Face cache folder (``$HF_HOME``, ``~/.cache/huggingface``)."""
    explicit = os.environ.get(TUNING_CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()

    return Path(constants.HF_HOME) / "hf_finetune" / "cpu_tuning.json"


def _machine_key() -> str:
    """What the timings depend on besides the layer: the CPU model, torch's version and its thread count."""

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu} | torch {torch.__version__} | {torch.get_num_threads()} threads"


class _TuningCache:
    """Timings of layer shapes on this machine, kept in a JSON file between runs (:func:`tuning_cache_path`).

    A timing decides numerics (which depthwise convolutions run in fp32), so timing again in every run would
    let a noisy minute change the result of the same recipe and seed: the first run on a machine times each
    shape, later runs read the file. A file that cannot be read is timed over; one that cannot be written
    leaves the run as it is (logged)."""

    def __init__(self, path: Path):
        self.path, self.machine, self.changed = path, _machine_key(), False
        self.entries: dict[str, dict[str, list[float]]] = {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                self.entries = {k: v for k, v in data.items() if isinstance(v, dict)}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as err:
            logger.warning("%s: the layer timings could not be read (%s); timing again", path, err)

    def get(self, key: str) -> tuple[float, ...] | None:
        found = self.entries.get(self.machine, {}).get(key)
        return tuple(float(v) for v in found) if isinstance(found, list) else None

    def put(self, key: str, times: tuple[float, ...]) -> None:
        self.entries.setdefault(self.machine, {})[key] = list(times)
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(self.entries, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(partial, self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            logger.warning(
                "%s: the layer timings could not be saved (%s); the next run times again", self.path, err
            )


def tune_depthwise_precision(
    model,
    input_shape: tuple[int, ...],
    channels_last: bool = False,
    reps: int = 3,
    margin: float = 0.9,
    cache: Path | None | bool = True,
) -> list[tuple[str, float, float]]:
    """Under bf16 autocast on a CPU, run in fp32 the depthwise convolutions that are faster there.

    oneDNN's bfloat16 depthwise convolutions are much slower than its fp32 ones for some shapes (strided and
    5x5 kernels: up to 3x in the backward pass on an AVX512-BF16 CPU), while everything else gains from
    bfloat16. Like ``cudnn.benchmark``, each depthwise shape of ``model`` (found with one forward pass at
    ``input_shape``, e.g. ``(8, 3, 224, 224)``) is timed forward + backward in both precisions, and the
    convolutions whose fp32 time is below ``margin`` x their bf16 time get an fp32 forward. The weights and the
    saved model are unchanged. Returns ``(name, bf16 seconds, fp32 seconds)`` of every convolution switched.

    ``cache``: the timings are kept per machine (CPU model, torch version, threads) in a JSON file
    (``True``: :func:`tuning_cache_path`; a path: that file; ``False``/``None``: time every call), so every run
    on a machine makes the same choices for the same shapes; delete the file to time again.
    """

    convs = _depthwise_convs(model)
    if not convs:
        return []
    shapes = _input_shapes(model, convs, input_shape, channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def timed(module, shape, fp32: bool) -> float:
        x = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=memory_format).requires_grad_(True)
        times = []
        for _ in range(reps + 1):
            start = time.perf_counter()
            if fp32:
                with torch.autocast("cpu", enabled=False):
                    y = type(module).forward(module, x.float()).to(torch.bfloat16)
            else:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = type(module).forward(module, x)  # the class's own: timm's Conv2dSame pads first
            y.float().sum().backward()
            times.append(time.perf_counter() - start)
        module.zero_grad(set_to_none=True)
        return statistics.median(times[1:])

    timings = _TuningCache(tuning_cache_path() if cache is True else Path(cache)) if cache else None
    decided: dict[str, tuple[float, ...]] = {}
    switched = []
    for name, module in convs:
        if name not in shapes:
            continue
        shape = shapes[name][0]
        key = (
            f"depthwise {type(module).__name__} input {list(shape)} kernel {list(module.kernel_size)} stride "
            f"{list(module.stride)} padding {module.padding} dilation {list(module.dilation)} "
            f"{'channels_last' if channels_last else 'contiguous'}: bf16, fp32 seconds"
        )
        if key not in decided:
            measured = timings.get(key) if timings is not None else None
            if measured is None:
                measured = (timed(module, shape, False), timed(module, shape, True))
                if timings is not None:
                    timings.put(key, measured)
            decided[key] = measured
        bf16_s, fp32_s = decided[key][:2]
        if fp32_s < margin * bf16_s:
            module.forward = types.MethodType(_fp32_forward, module)
            switched.append((name, bf16_s, fp32_s))
    if timings is not None:
        timings.save()
    return switched


def _inplace_activations(model) -> list[tuple[str, Any]]:
    """Activation modules of ``model`` (torch's ``nn`` activations and timm's) set to run in place."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if getattr(module, "inplace", None) is True
        and type(module).__module__.startswith(("torch.nn.modules.activation", "timm.layers.activations"))
    ]


def tune_inplace_activations(
    model, input_shape: tuple[int, ...], channels_last: bool = False, reps: int = 5, margin: float = 0.9
) -> list[tuple[str, float, float]]:
    """Under bf16 autocast on a CPU, run out of place the in-place activations that are faster so.

    On an AVX512-BF16 CPU (torch 2.14) the in-place bfloat16 kernels of ReLU6, ReLU and Hardswish took about
    twice as long as the same functions writing a new tensor (ReLU6 on 32 x 96 x 112 x 112: 24 against 10.5
    ms), while in float32 in place was the faster one; timm builds its activations in place. Each activation
    class and input shape of ``model`` (found with one forward pass at ``input_shape``) is timed both ways,
    forward with autograd recording as in training, and the modules whose out-of-place time is below
    ``margin`` x their in-place time get ``inplace = False``: the same function, bit for bit, and no weight
    changes. Returns ``(name, in-place seconds, out-of-place seconds)`` of every module switched."""

    activations = _inplace_activations(model)
    if not activations:
        return []
    shapes = _input_shapes(model, activations, input_shape, channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def timed(module, shape, dtype, inplace: bool) -> float:
        base = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format).requires_grad_(True)
        times = []
        module.inplace = inplace
        try:
            for _ in range(reps + 1):
                x = base.clone()  # not a leaf: an in-place activation may write into it
                start = time.perf_counter()
                module(x)
                times.append(time.perf_counter() - start)
        finally:
            module.inplace = True
        return statistics.median(times[1:])

    decided: dict[tuple, tuple[float, float]] = {}
    switched = []
    for name, module in activations:
        if name not in shapes:
            continue
        shape, dtype = shapes[name]
        key = (type(module), shape, dtype, repr(module))
        if key not in decided:
            decided[key] = (timed(module, shape, dtype, True), timed(module, shape, dtype, False))
        inplace_s, out_s = decided[key]
        if out_s < margin * inplace_s:
            switched.append((name, inplace_s, out_s))
    if not switched:
        return []
    # A model that used an activation for its side effect (calling it without taking its result) would
    # compute something else out of place: compare the outputs, and keep everything in place if they differ.
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=memory_format)
    modules = dict(activations)
    expected = _bf16_eval_logits(model, x)
    for name, _, _ in switched:
        modules[name].inplace = False
    if not torch.equal(_bf16_eval_logits(model, x), expected):
        for name, _, _ in switched:
            modules[name].inplace = True
        return []
    return switched


def _bf16_eval_logits(model, x):

    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(pixel_values=x)
    finally:
        model.train(was_training)
    return out["logits"] if isinstance(out, dict) else out[0] if isinstance(out, (tuple, list)) else out


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


# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def _glibc():
    """The running process's C library when it is glibc (it has ``mallopt``), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

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
