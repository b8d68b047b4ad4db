"""Shared fixtures: tiny random checkpoints (transformers-native and timm) and tiny image folders.

Real-weight tests use ../shared (see ../shared/README.md) and skip with a reason where it is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HF_FINETUNE_SHARED", ROOT.parent / "shared"))
SHARED_MODELS = SHARED / "models"
SHARED_DATA = SHARED / "data"

requires_shared = pytest.mark.skipif(
    not (SHARED_MODELS.is_dir() and SHARED_DATA.is_dir()),
    reason=f"real checkpoints and photos not found at {SHARED} (see ../shared/README.md)",
)

SOURCE_LABELS = [
    "tench",
    "goldfish",
    "great white shark",
    "hotdog, hot dog, red hot",
    "ant, emmet, pismire",
    "cat",
    "dog",
]


def run_hf_finetune(
    *args, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: int = 300
) -> subprocess.CompletedProcess:
    """``python -m hf_finetune ARGS`` in a subprocess (offline unless ``env`` says otherwise)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1") if env is None else env
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def make_image_folder(
    root: Path, classes: dict[str, int], size=(40, 32), seed: int = 0, ext: str = "png"
) -> Path:
    """Write ``classes[name]`` images per class under ``root/name/``. Each class has its own colour,
    so a tiny model can learn them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for index, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array(
            [(index * 97) % 256, (index * 53 + 80) % 256, (index * 151 + 160) % 256], dtype=np.float64
        )
        for i in range(count):
            noise = rng.normal(0, 20, size=(size[1], size[0], 3))
            pixels = np.clip(base + noise, 0, 255).astype("uint8")
            Image.fromarray(pixels).save(folder / f"{name.replace(' ', '_')}_{i:03d}.{ext}")
    return root


@pytest.fixture(scope="session")
def tiny_hf_checkpoint(tmp_path_factory) -> Path:
    """A random transformers ResNet image classifier with 7 named source labels and an image processor."""
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_hf")
    config = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        id2label=dict(enumerate(SOURCE_LABELS)),
        label2id={name: i for i, name in enumerate(SOURCE_LABELS)},
    )
    model = ResNetForImageClassification(config).eval()
    model.save_pretrained(path)
    processor = ConvNextImageProcessor(
        size={"shortest_edge": 32}, crop_pct=0.875, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
    )
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_timm_checkpoint(tmp_path_factory) -> Path:
    """A random timm EfficientNet (``test_efficientnet``, 0.1M parameters) saved exactly as ``timm.models.save_for_hf`` writes it, including the
    ``model_args.num_classes`` duplicate that trips transformers' TimmWrapper, with label_names."""
    import timm
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_timm")
    model_args = {"num_classes": len(SOURCE_LABELS)}
    model = timm.create_model("test_efficientnet", pretrained=False, **model_args).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 32, 32), crop_pct=0.875)
    timm.models.save_for_hf(
        model,
        str(path),
        model_config={"label_names": SOURCE_LABELS},
        model_args=model_args,
        safe_serialization=True,
    )
    config = json.loads((path / "config.json").read_text())
    assert config["model_args"]["num_classes"] == len(SOURCE_LABELS)  # the trap is present on purpose
    return path


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory) -> Path:
    """``train/{cat,dog,zebra}/*.png`` (12 each) and ``val/{cat,dog,zebra}/*.png`` (4 each)."""
    root = tmp_path_factory.mktemp("tiny_images")
    make_image_folder(root / "train", {"cat": 12, "dog": 12, "zebra": 12}, seed=1)
    make_image_folder(root / "val", {"cat": 4, "dog": 4, "zebra": 4}, seed=2)
    return root


@pytest.fixture(autouse=True)
def _own_tuning_cache(tmp_path_factory, monkeypatch):
    """Each test times the layers it tunes (tune_depthwise_precision) afresh, into its own file: nothing is read
    from or written to the user's Hugging Face cache."""
    from hf_finetune.runtime.tuning import TUNING_CACHE_ENV

    monkeypatch.setenv(TUNING_CACHE_ENV, str(tmp_path_factory.mktemp("tuning") / "cpu_tuning.json"))


@pytest.fixture(autouse=True)
def _restore_log_handlers():
    """``cli.main`` run in-process attaches a handler to the stream pytest captures for that test; the next
    test must not write to it (it is closed by then)."""
    import logging

    logger = logging.getLogger("hf_finetune")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def streamed_recipe(root, checkpoint, images, **keys):
    """Some of ``tiny_image_folder``'s photos as parquet shards (8 training images of the 3 classes in 2 shards, 4
    validation images in 1; ClassLabel labels), and a streamed recipe over them: 24 px, batches of 4 (2 steps per
    epoch)."""
    import datasets
    import yaml

    names = sorted(p.name for p in (images / "train").iterdir())
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    for split, shards, every in (("train", 2, 5), ("val", 1, 3)):
        paths = sorted((images / split).glob("*/*.png"))[::every]
        rows = [
            {"image": {"bytes": p.read_bytes(), "path": p.name}, "label": names.index(p.parent.name)}
            for p in paths
        ]
        (root / split).mkdir(parents=True)
        for shard in range(shards):
            part = datasets.Dataset.from_list(rows[shard::shards], features=features)
            part.to_parquet(str(root / split / f"part-{shard}.parquet"))
    recipe = {
        "model_name_or_path": str(checkpoint),
        "train_file": str(root / "train" / "*.parquet"),
        "validation_file": str(root / "val"),
        "streaming": True,
        "shuffle_buffer_size": 4,
        "image_size": 24,
        "per_device_train_batch_size": 4,
        "bf16": False,
        "seed": 0,
        "output_dir": str(root / "model"),
        **keys,
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return str(path)
