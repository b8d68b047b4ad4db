"""Measured kernel choices for bf16 on a CPU: each layer shape of the model is timed both ways before training, and
the faster way is kept.

* :func:`tune_depthwise_precision`: the depthwise convolutions that oneDNN runs faster in fp32 than in bf16 run
  in fp32; the timings are kept per machine in a JSON file (:func:`tuning_cache_path`), so every run on a
  machine makes the same choices.
* :func:`tune_inplace_activations`: the in-place activations (timm's) that run faster out of place run out of
  place (the same function, bit for bit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import time
import types
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants
from torch import nn

__all__ = ["tune_depthwise_precision", "tune_inplace_activations", "tuning_cache_path", "TUNING_CACHE_ENV"]

logger = logging.getLogger(__name__)

TUNING_CACHE_ENV = "HF_FINETUNE_TUNING_CACHE"  # the file tune_depthwise_precision keeps its timings in


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
