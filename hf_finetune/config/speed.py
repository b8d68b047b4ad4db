"""Speed keys: how fast this machine computes the same training, chosen from the machine and the model.

* ``bf16``: bfloat16 autocast;
* the loader: ``dataloader_num_workers``, ``dataloader_persistent_workers``, ``dataloader_pin_memory``;
* the data path: ``cache_images`` (and where: ``image_cache_dir``), ``normalize_on_device``, ``feature_cache``;
* the model: ``channels_last``, ``static_same_padding``, and with bf16 on a CPU ``tune_depthwise_precision``,
  ``tune_inplace_activations``;
* the process: ``keep_freed_memory``.

Each is unset (``auto``) by default, and the parsed config keeps it unset: the value is chosen when the run is
built, for the machine it runs on, by :func:`hf_finetune.runtime.speed_plan.resolve_speed`, which records each
choice and why in the run's plan and hands the Trainer a resolved copy. Only explicit values (``true``, ``false``,
a count) are checked here. How each choice is made: ``docs/speed.md`` and :mod:`hf_finetune.runtime.performance`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hf_finetune.config.ranges import require
from hf_finetune.errors import ConfigError

__all__ = ["SpeedArguments", "AUTO_KEYS", "resolving", "machine_checks_deferred"]

# Training keys whose unset value means "chosen from the machine and the model"; `auto` spells that out.
AUTO_KEYS = (
    "bf16",
    "channels_last",
    "tune_depthwise_precision",
    "tune_inplace_activations",
    "static_same_padding",
    "keep_freed_memory",
    "dataloader_num_workers",
    "dataloader_persistent_workers",
    "dataloader_pin_memory",
    "cache_images",
    "normalize_on_device",
    "feature_cache",
)

_RESOLVING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "hf_finetune_speed_resolving", default=False
)


@dataclass
class SpeedArguments:
    """Speed: unset (or auto) means chosen for this machine and model when the run is built."""

    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bfloat16 mixed precision (autocast). Unset/auto: on for GPUs with bfloat16 and CPUs with "
            "AVX512-BF16 or AMX; false turns it off."
        },
    )
    channels_last: bool | None = field(
        default=None,
        metadata={
            "help": "Run the model in channels_last (NHWC) memory format. Unset/auto: on a CPU, on when most "
            "weights are 2-D convolutions (CNNs), off otherwise (ViTs); off on a GPU."
        },
    )
    tune_depthwise_precision: bool | None = field(
        default=None,
        metadata={
            "help": "With bf16 on a CPU, time every depthwise convolution shape in bf16 and fp32 once before "
            "training (the timings are kept per machine) and run the ones that are faster in fp32 there "
            "(oneDNN's bf16 depthwise kernels can be slower than fp32 for strided and 5x5 shapes). "
            "Unset/auto: on with bf16 on a CPU."
        },
    )
    tune_inplace_activations: bool | None = field(
        default=None,
        metadata={
            "help": "With bf16 on a CPU, time each in-place activation (timm builds ReLU6, ReLU, SiLU ... in "
            "place) in place and out of place at its shape once before training, and run out of place the "
            "ones faster so. The same function bit for bit. Unset/auto: on with bf16 on a CPU."
        },
    )
    static_same_padding: bool | None = field(
        default=None,
        metadata={
            "help": "transformers' MobileNet V1/V2 (config.tf_padding) pad every convolution's input with "
            "F.pad, 1x1 convolutions included (a copy of the activation); for stride-1 convolutions, where "
            "that padding does not depend on the input size, let the convolution pad instead. Bit-identical "
            "outputs; the saved model is unchanged. Unset/auto: on."
        },
    )
    keep_freed_memory: bool | None = field(
        default=None,
        metadata={
            "help": "glibc only: memory the process frees stays mapped for its next allocations (mallopt "
            "M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1) instead of each step's activations being mapped and "
            "page-faulted in anew. Unset/auto: on when training on a CPU; off on a GPU. The process keeps its "
            "peak memory until it exits."
        },
    )
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "Processes that decode and augment images. Unset/auto: on a GPU up to 8 (with pinned "
            "memory, persistent workers, prefetch 4); on a CPU only the logical CPUs the compute threads "
            "leave free (the model's arithmetic needs the cores)."
        },
    )
    dataloader_persistent_workers: bool | None = field(
        default=None,
        metadata={
            "help": "Keep loader workers alive between epochs. Unset/auto: on whenever there are workers."
        },
    )
    dataloader_pin_memory: bool | None = field(
        default=None,
        metadata={
            "help": "Page-locked batches for faster copies to a GPU. Unset/auto: on with a GPU, off on a CPU."
        },
    )
    cache_images: bool | None = field(
        default=None,
        metadata={
            "help": "Decode and resize every image once into a memory-mapped datasets cache (validation: the "
            "final crop; training: no larger than random-resized-crop needs). Unset/auto: on when training "
            "on a GPU, where the data pipeline is the bottleneck; off on a CPU."
        },
    )
    image_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where cache_images writes its decoded copy of the images (temporary: one folder per "
            "process, removed at the end of the run and when it fails). Unset: OUTPUT_DIR/.image-cache, inside "
            "the output folder; a folder: FOLDER/.image-cache-<hash of the output folder>, and nothing is "
            "written into the output folder. Before writing, the free space there is checked against an "
            "estimate of the decoded size (times 1.25, plus 256 MiB); when short, images are decoded on the fly and one "
            "log line says why."
        },
    )
    normalize_on_device: bool | None = field(
        default=None,
        metadata={
            "help": "The loader hands over 8-bit images (the augmentation's output before ToTensor) and each "
            "batch is converted to float and normalised on the device it trains on: the same float32 "
            "tensors bit for bit, with a quarter of the bytes to stack, pass between processes, pin and copy, "
            "and no per-image float work in the loader. Unset/auto: on."
        },
    )
    feature_cache: bool | None = field(
        default=None,
        metadata={
            "help": "When the whole body is frozen (linear probe), compute its features once (validation "
            "transform, no augmentation) and train the head on them. Unset/auto: on when the whole body is "
            "frozen and one process trains; false keeps augmenting every epoch through the frozen body."
        },
    )

    def check_speed(self) -> None:
        """Explicit speed values from Python callers as the parser gives them (the parser already dropped
        ``auto``): ``"auto"`` is unset, ``"true"``/``"false"`` are booleans, a count in text is an integer."""
        for key in AUTO_KEYS:
            value = getattr(self, key)
            if isinstance(value, str):
                setattr(self, key, _speed_value(key, value))
        workers = self.dataloader_num_workers
        require(
            workers is None or workers >= 0,
            "dataloader_num_workers",
            workers,
            "0 (load in the training process) or a positive count",
        )


def _speed_value(key: str, value: str) -> Any:
    lowered = value.strip().lower()
    if lowered == "auto":
        return None
    if key == "dataloader_num_workers" and lowered.isascii() and lowered.isdigit():
        return int(lowered)
    if key != "dataloader_num_workers" and lowered in ("true", "false", "yes", "no", "1", "0"):
        return lowered in ("true", "yes", "1")
    expected = "a count or auto" if key == "dataloader_num_workers" else "true, false or auto"
    raise ConfigError(f"{key}: got {value!r}; expected {expected}")


@contextlib.contextmanager
def resolving() -> Iterator[None]:
    """While a resolved copy of the arguments is built (:func:`hf_finetune.runtime.speed_plan.resolve_speed`):
    transformers checks every speed value as it is."""
    token = _RESOLVING.set(True)
    try:
        yield
    finally:
        _RESOLVING.reset(token)


@contextlib.contextmanager
def machine_checks_deferred(args: Any) -> Iterator[None]:
    """Around ``TrainingArguments.__post_init__`` of parsed arguments: the checks transformers makes of values the
    run resolves for the machine wait for the resolved copy. An unset ``dataloader_num_workers`` is shown to it as
    0, and an explicit ``bf16`` without ``use_cpu`` as off (on a CPU the resolved copy sets ``use_cpu``, which
    transformers needs to accept bf16 without a GPU); both are given back afterwards, with the mixed precision
    transformers derives from ``bf16``."""
    if _RESOLVING.get():
        yield
        return
    shown: dict[str, Any] = {}
    if args.dataloader_num_workers is None:
        shown["dataloader_num_workers"] = 0
    if args.bf16 and not args.use_cpu:
        shown["bf16"] = False
    given = {key: getattr(args, key) for key in shown}
    for key, value in shown.items():
        setattr(args, key, value)
    try:
        yield
    finally:
        for key, value in given.items():
            setattr(args, key, value)
    if given.get("bf16") and not args.fp16:
        args.mixed_precision = "bf16"
