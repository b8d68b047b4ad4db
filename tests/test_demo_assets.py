"""Tests of :mod:`hf_finetune.demo.assets`: the offline EfficientNet-Lite0 build and the digits export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_MODELS, requires_shared
from PIL import Image

from hf_finetune.demo import assets as demo_assets
from hf_finetune.demo.assets import DIGIT_NAMES, build_efficientnet_lite0, export_digits
from hf_finetune.errors import ConfigError, DataError, ModelLoadError

REFERENCE = SHARED_MODELS / "timm-tf_efficientnet_lite0"

# Measured with the built checkpoint (timm preprocessing, 224 px, bicubic, crop 0.875):
#   china.jpg  top-1 palace (698) p=0.30, then bell cote 442, monastery 663, lakeside 975, boathouse 449
#   flower.jpg top-1 daisy (985) p=0.32, then bee 309, mushroom 947, sea anemone 108, ant 310
PALACE, BELL_COTE, MONASTERY, STUPA, DAISY = 698, 442, 663, 832, 985


@pytest.fixture(scope="module")
def lite0(tmp_path_factory) -> Path:
    return build_efficientnet_lite0(tmp_path_factory.mktemp("lite0") / "timm-tf_efficientnet_lite0")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return export_digits(tmp_path_factory.mktemp("digits") / "digits", val_fraction=0.2, seed=0)


# --------------------------------------------------------------------------- EfficientNet-Lite0


def test_build_writes_hub_layout_with_data_config(lite0: Path) -> None:
    assert sorted(p.name for p in lite0.iterdir()) == ["config.json", "model.safetensors"]
    assert not list(lite0.parent.glob(".*tmp-*")), "temporary folder left behind"
    config = json.loads((lite0 / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0"
    assert config["num_classes"] == 1000
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 224, 224]
    assert cfg["crop_pct"] == 0.875
    assert cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == [0.5, 0.5, 0.5] and cfg["std"] == [0.5, 0.5, 0.5]


@requires_shared
def test_build_equals_shared_reference_bit_for_bit(lite0: Path) -> None:
    from safetensors.torch import load_file

    if not (REFERENCE / "model.safetensors").is_file():
        pytest.skip(f"{REFERENCE} not found")
    built = load_file(str(lite0 / "model.safetensors"))
    reference = load_file(str(REFERENCE / "model.safetensors"))
    assert set(built) == set(reference)
    for key, tensor in reference.items():
        assert built[key].dtype == tensor.dtype, key
        assert torch.equal(built[key], tensor), key
    assert json.loads((lite0 / "config.json").read_text()) == json.loads(
        (REFERENCE / "config.json").read_text()
    )


def test_built_model_recognises_real_photos(lite0: Path) -> None:
    import timm
    from sklearn.datasets import load_sample_image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("local-dir:" + str(lite0), pretrained=True).eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    batch = torch.stack(
        [transform(Image.fromarray(load_sample_image(n))) for n in ("china.jpg", "flower.jpg")]
    )
    with torch.no_grad():
        probs = model(batch).softmax(-1)
    top_p, top_i = probs.topk(5, dim=-1)
    china, flower = top_i.tolist()
    # china.jpg is a Chinese temple: an architecture class of that kind ranks first
    assert china[0] in {PALACE, MONASTERY, BELL_COTE, STUPA}, china
    assert PALACE in china, china
    assert top_p[0, 0] > 0.2, top_p[0]
    # flower.jpg is a close-up of a flower: 'daisy' ranks first with clear confidence
    assert flower[0] == DAISY, flower
    assert top_p[1, 0] > 0.25, top_p[1]


def test_build_second_call_does_not_rebuild(lite0: Path, monkeypatch) -> None:
    weights = lite0 / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt an existing checkpoint")

    monkeypatch.setattr(demo_assets, "_load_source_state_dict", fail)
    assert build_efficientnet_lite0(str(lite0)) == lite0
    assert weights.stat().st_mtime_ns == before


def test_build_refuses_non_empty_incomplete_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="not a complete export"):
        build_efficientnet_lite0(tmp_path)


def test_map_in_order_handles_counters_and_rejects_mismatch() -> None:
    source = {
        "a.weight": torch.ones(2, 3),
        "a.bias": torch.zeros(2),
        "bn.num_batches_tracked": torch.tensor(5),
    }
    target = {"x.weight": torch.empty(2, 3), "x.bias": torch.empty(2)}
    mapped = demo_assets._map_in_order(source, target)
    assert list(mapped) == ["x.weight", "x.bias"] and torch.equal(mapped["x.weight"], torch.ones(2, 3))
    with_counter = dict(target, **{"x.num_batches_tracked": torch.tensor(0)})
    assert (
        demo_assets._map_in_order({"a.weight": torch.ones(2, 3), "a.bias": torch.zeros(2)}, with_counter)[
            "x.num_batches_tracked"
        ].item()
        == 0
    )
    with pytest.raises(ModelLoadError, match="does not line up"):
        demo_assets._map_in_order({"a.weight": torch.ones(3, 2), "a.bias": torch.zeros(2)}, target)
    with pytest.raises(ModelLoadError, match="expects 2"):
        demo_assets._map_in_order({"a.weight": torch.ones(2, 3)}, target)


# --------------------------------------------------------------------------- digits


def test_export_digits_layout_and_split(digits: Path) -> None:
    from sklearn.datasets import load_digits

    target = load_digits().target
    files = sorted(digits.glob("*/*/*.png"))
    assert len(files) == 1797
    assert not list(digits.parent.glob(".*tmp-*")), "temporary folder left behind"
    for split in ("train", "val"):
        assert sorted(p.name for p in (digits / split).iterdir()) == sorted(DIGIT_NAMES)
    for label, name in enumerate(DIGIT_NAMES):
        n_val = len(list((digits / "val" / name).glob("*.png")))
        n_train = len(list((digits / "train" / name).glob("*.png")))
        assert n_train + n_val == int((target == label).sum())
        assert abs(n_val / (n_train + n_val) - 0.2) < 0.02, (name, n_train, n_val)
    indices = [int(p.stem.rsplit("_", 1)[1]) for p in files]
    assert sorted(indices) == list(range(1797))  # each sample exactly once
    for path in files:
        assert path.parent.name == DIGIT_NAMES[target[int(path.stem.rsplit("_", 1)[1])]]


def test_export_digits_pixels_match_sklearn(digits: Path) -> None:
    from sklearn.datasets import load_digits

    images = load_digits().images
    for path in (
        sorted((digits / "train" / "seven").glob("*.png"))[0],
        sorted((digits / "val" / "zero").glob("*.png"))[-1],
    ):
        index = int(path.stem.rsplit("_", 1)[1])
        with Image.open(path) as image:
            assert image.mode == "L" and image.size == (8, 8)
            pixels = np.asarray(image)
        assert np.array_equal(pixels, np.rint(images[index] * 255 / 16).astype(np.uint8))
        assert pixels.max() == 255  # the full 0..255 range is used


def test_export_digits_is_idempotent_and_checks_arguments(digits: Path, tmp_path: Path) -> None:
    some_file = next((digits / "val" / "three").glob("*.png"))
    before = some_file.stat().st_mtime_ns
    assert export_digits(str(digits), val_fraction=0.2, seed=0) == digits
    assert some_file.stat().st_mtime_ns == before
    with pytest.raises(DataError, match="already holds a digits export"):
        export_digits(digits, val_fraction=0.3, seed=0)
    with pytest.raises(ConfigError, match="val_fraction"):
        export_digits(tmp_path / "bad", val_fraction=1.0)
    assert not (tmp_path / "bad").exists()


def test_export_digits_split_is_seeded(tmp_path: Path, digits: Path) -> None:
    other = export_digits(tmp_path / "seed1", val_fraction=0.2, seed=1)
    names = lambda root: sorted(p.name for p in (root / "val").glob("*/*.png"))  # noqa: E731
    assert names(other) != names(digits)
    again = export_digits(tmp_path / "seed0", val_fraction=0.2, seed=0)
    assert names(again) == names(digits)
