"""The speed keys' ``auto`` values, chosen for this machine when a run is built.

:func:`resolve_speed` takes the parsed training arguments, in which every speed key a recipe left unset (or
``auto``) is still unset (:mod:`hf_finetune.config.speed`), and returns a copy with a value for each, recording
every choice and why in the run's :class:`~hf_finetune.runtime.plan.RunPlan`. The parsed arguments are not
changed. The rules (the machine's facts come from :mod:`hf_finetune.runtime.performance`, called through the
module so that a test can stand in for the machine):

* ``bf16``: on where the device computes bfloat16 (off with ``fp16``); with bf16 on a CPU, ``use_cpu``, which
  transformers needs to accept bf16 without a GPU;
* ``keep_freed_memory``: on when training on a CPU under glibc (an explicit ``true`` elsewhere is an error);
* the loader: workers from the CPUs per process (``LOCAL_WORLD_SIZE`` processes share the machine), prefetch
  4 on an accelerator, pinned memory with a GPU, persistent workers whenever there are workers;
* ``channels_last``: off on a GPU (on a CPU it is chosen from the model once it is loaded);
* ``normalize_on_device``: on; ``cache_images``: on when training on a GPU.

The keys chosen from the model (``channels_last`` on a CPU, ``tune_*``, ``static_same_padding``,
``feature_cache``) stay unset here; :mod:`hf_finetune.run` decides them once the model is loaded.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from hf_finetune.config.speed import resolving
from hf_finetune.errors import ConfigError
from hf_finetune.runtime import performance
from hf_finetune.runtime.plan import RunPlan

__all__ = ["resolve_speed", "speed_choices"]


def resolve_speed(training_args: Any, plan: RunPlan) -> Any:
    """A copy of ``training_args`` with the speed keys' ``auto`` values chosen for this machine, each choice
    recorded (and logged) in ``plan``. ``training_args`` is returned itself when nothing is left to choose (it
    was resolved already, or every speed key was given)."""
    values = speed_choices(training_args, plan)
    if not values:
        return training_args
    plan.log(values)
    try:
        with resolving():  # transformers checks the resolved values in full
            return dataclasses.replace(training_args, **values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:  # a plain TrainingArguments raises transformers' own errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"training arguments: {first}") from None


def speed_choices(training_args: Any, plan: RunPlan) -> dict[str, Any]:
    """The values :func:`resolve_speed` sets, by key; each is recorded in ``plan`` with why."""
    kind = performance.device_kind(getattr(training_args, "use_cpu", False))
    values: dict[str, Any] = {}
    _precision(training_args, kind, plan, values)
    _freed_memory(training_args, kind, plan, values)
    _loader(training_args, kind, plan, values)
    _data_path(training_args, kind, plan, values)
    return values


def _choose(values: dict[str, Any], plan: RunPlan, key: str, value: Any, why: str) -> None:
    values[key] = plan.record(key, value, why)


def _precision(args: Any, kind: str, plan: RunPlan, values: dict[str, Any]) -> None:
    bf16 = getattr(args, "bf16", False)
    if bf16 is None:
        if args.fp16:
            bf16 = False
            _choose(values, plan, "bf16", bf16, "fp16 is on")
        else:
            bf16, why = performance.bf16_supported(kind)
            _choose(values, plan, "bf16", bf16, why)
    if bf16 and kind == "cpu" and not args.use_cpu:
        why = "bf16 without a GPU: transformers accepts it only with use_cpu"
        _choose(values, plan, "use_cpu", True, why)


def _freed_memory(args: Any, kind: str, plan: RunPlan, values: dict[str, Any]) -> None:
    wanted = getattr(args, "keep_freed_memory", False)
    if wanted is False:
        return
    glibc = performance.glibc_malloc_available()
    if wanted and not glibc:
        raise ConfigError(
            "keep_freed_memory: got True; expected false or auto: it sets glibc's malloc, and this process's "
            "C library is not glibc"
        )
    if wanted is not None:
        return
    if kind == "cpu" and glibc:
        why = "CPU training: each step's activations reuse freed pages instead of new page faults"
    else:
        why = "not training on a CPU" if kind != "cpu" else "the C library is not glibc"
    _choose(values, plan, "keep_freed_memory", kind == "cpu" and glibc, why)


def _loader(args: Any, kind: str, plan: RunPlan, values: dict[str, Any]) -> None:
    workers = getattr(args, "dataloader_num_workers", 0)
    if workers is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        settings = performance.loader_settings(kind, local_processes=local)
        workers = settings["num_workers"]
        _choose(values, plan, "dataloader_num_workers", workers, settings["reason"])
        if settings["prefetch_factor"] is not None and args.dataloader_prefetch_factor is None:
            why = "accelerator training: batches prepared ahead by each worker"
            _choose(values, plan, "dataloader_prefetch_factor", settings["prefetch_factor"], why)
    if args.dataloader_pin_memory is None:
        if kind == "cuda":
            why = "CUDA training: page-locked batches copy to the GPU faster"
        else:
            why = "not training on a CUDA GPU"
        _choose(values, plan, "dataloader_pin_memory", kind == "cuda", why)
    if args.dataloader_persistent_workers is None:
        why = "there are loader workers" if workers > 0 else "no loader workers"
        _choose(values, plan, "dataloader_persistent_workers", workers > 0, why)


def _data_path(args: Any, kind: str, plan: RunPlan, values: dict[str, Any]) -> None:
    if getattr(args, "channels_last", False) is None and kind != "cpu":
        # bench/gpu_check.sh: NHWC ran slower on a GPU for these networks, both the model alone and the run
        _choose(values, plan, "channels_last", False, "on a GPU NHWC was slower for these networks")
    if getattr(args, "normalize_on_device", False) is None:
        why = "8-bit batches from the loader, converted to float and normalised on the training device"
        _choose(values, plan, "normalize_on_device", True, why)
    if getattr(args, "cache_images", False) is None:
        if kind == "cuda":
            why = "GPU training: decoding would be the bottleneck"
        else:
            why = "CPU training: decoding is a few percent of a step"
        _choose(values, plan, "cache_images", kind == "cuda", why)
