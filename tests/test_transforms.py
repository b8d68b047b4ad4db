"""Preprocessing from the checkpoint: transformers processors and timm data configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED_MODELS, requires_shared
from PIL import Image
from transformers import ConvNextImageProcessor, MobileNetV2ImageProcessor, ViTImageProcessor

from hf_finetune.data.transforms import apply_image_size, build_transforms, data_config_from_processor


def test_shortest_edge_and_crop():
    processor = MobileNetV2ImageProcessor(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}
    )
    config = data_config_from_processor(processor)
    assert config["input_size"] == (3, 224, 224)
    assert config["crop_pct"] == pytest.approx(224 / 256)
    assert config["interpolation"] == "bilinear"


def test_vit_and_convnext_styles():
    vit = data_config_from_processor(ViTImageProcessor(size={"height": 384, "width": 384}))
    assert vit["input_size"] == (3, 384, 384) and vit["crop_pct"] == 1.0
    convnext = data_config_from_processor(ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875))
    assert convnext["input_size"] == (3, 224, 224) and convnext["crop_pct"] == 0.875
    assert data_config_from_processor(ViTImageProcessor(), image_size=96)["input_size"] == (3, 96, 96)


def test_eval_transform_matches_the_processor():
    """Our evaluation transform gives the same tensor as the checkpoint's own processor (PIL backend)."""
    processor = MobileNetV2ImageProcessor(
        size={"shortest_edge": 73},
        crop_size={"height": 64, "width": 64},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, size=(90, 120, 3), dtype=np.uint8))
    _, eval_t = build_transforms(data_config_from_processor(processor))
    ours = eval_t(image)
    theirs = torch.as_tensor(processor(image, return_tensors="np")["pixel_values"][0])
    assert ours.shape == theirs.shape == (3, 64, 64)
    assert (ours - theirs).abs().mean() < 0.02


def test_train_transform_augments_and_keeps_size():
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    train_t, eval_t = build_transforms(data_config_from_processor(processor), "rrc_flip", 0.25, 0.5)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 60, 3), dtype=np.uint8))
    a, b = train_t(image), train_t(image)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    assert torch.equal(eval_t(image), eval_t(image))
    none_t, _ = build_transforms(data_config_from_processor(processor), "none")
    assert torch.equal(none_t(image), eval_t(image))


def test_apply_image_size_updates_saved_preprocessing():
    processor = MobileNetV2ImageProcessor(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}
    )

    class Cfg:
        pretrained_cfg = {"input_size": [3, 224, 224]}

    cfg = Cfg()
    apply_image_size(processor, cfg, 128)
    assert processor.crop_size == {"height": 128, "width": 128}
    assert processor.size == {"shortest_edge": round(128 / (224 / 256))}
    assert cfg.pretrained_cfg["input_size"] == [3, 128, 128]


@requires_shared
def test_timm_data_config_is_used():
    from hf_finetune.models.loading import load_image_processor

    processor = load_image_processor(str(SHARED_MODELS / "timm-tf_efficientnet_lite0"))
    config = data_config_from_processor(processor)
    assert config["input_size"] == (3, 224, 224) and config["crop_pct"] == 0.875
    assert config["interpolation"] == "bicubic" and tuple(config["mean"]) == (0.5, 0.5, 0.5)


# --- normalize_on_device: 8-bit batches, normalised where they train ------------------------------------


def _photos(n: int = 8) -> list[Image.Image]:
    """Photos of varied size and content: the hotdog photos of ../shared when there, else seeded noise."""
    from conftest import SHARED

    files = sorted((SHARED / "data" / "hotdog" / "train").glob("*/*.jpg"))[:n]
    if files:
        return [Image.open(f).convert("RGB") for f in files]
    rng = np.random.default_rng(0)
    sizes = [(37, 50), (120, 90), (64, 64), (300, 200), (5, 7), (224, 224), (81, 173), (256, 255)][:n]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.mark.parametrize("augmentation", ["rrc_flip", "flip", "none"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_uint8_batches_normalised_on_the_device_equal_per_image_normalisation(augmentation, channels_last):
    """The 8-bit transform + PixelNormalizer gives the float32 batch ToTensor + Normalize give, bit for bit, for
    training (the same random crops and flips: same seeds) and evaluation, in either memory format."""
    import random

    from hf_finetune.data.transforms import PixelNormalizer, ToUint8Tensor, collate_images, split_normalize

    config = {
        "input_size": (3, 96, 96),
        "interpolation": "bicubic",
        "crop_pct": 0.875,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    images = _photos()
    for transform in build_transforms(config, augmentation):
        uint8, normalizer = split_normalize(transform)
        assert isinstance(normalizer, PixelNormalizer) and isinstance(uint8.transforms[-1], ToUint8Tensor)

        def batch(t):
            random.seed(3)  # timm's random-resized-crop draws from `random`, the flip from torch
            torch.manual_seed(3)
            rows = [{"pixel_values": t(image), "labels": 0} for image in images]
            return collate_images(rows, channels_last=channels_last)["pixel_values"]

        reference, eight_bit = batch(transform), batch(uint8)
        assert eight_bit.dtype == torch.uint8 and eight_bit.nbytes * 4 == reference.nbytes
        out = normalizer(eight_bit)
        assert out.dtype == torch.float32 and torch.equal(out, reference)
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert normalizer(reference) is reference  # float input passes through


def test_split_normalize_leaves_other_transforms_alone():
    """Only a transform ending in ToTensor + Normalize is split; anything else keeps normalising per image."""
    import torchvision.transforms as T

    from hf_finetune.data.transforms import PixelNormalizer, ToUint8Tensor, split_normalize

    normalize = T.Normalize((0.5,) * 3, (0.5,) * 3)
    assert split_normalize(T.Compose([T.Resize(8), T.ToTensor()])) is None
    assert split_normalize(T.Compose([T.ToTensor(), normalize, T.RandomErasing()])) is None
    assert split_normalize(T.ToTensor()) is None
    nested = T.Compose([T.RandomHorizontalFlip(), T.Compose([T.ToTensor(), normalize])])
    uint8, normalizer = split_normalize(nested)
    assert [type(t) for t in uint8.transforms] == [T.RandomHorizontalFlip, ToUint8Tensor]
    assert normalizer.mean.tolist() == [0.5] * 3
    with pytest.raises(ValueError, match="std .* has a zero"):
        PixelNormalizer((0.5,) * 3, (0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="got a 'F' image; expected an 8-bit RGB or L image"):
        ToUint8Tensor()(Image.new("F", (4, 4)))
    gray = ToUint8Tensor()(Image.new("L", (5, 3), 7))
    assert gray.shape == (1, 3, 5) and gray.dtype == torch.uint8 and int(gray.sum()) == 7 * 15


# --- timm augmentations: auto_augment, random_erasing, color_jitter ---------------------------------------


def _step_names(transform) -> list[str]:
    return [type(step).__name__ for step in transform.transforms]


def test_timm_augmentations_are_in_the_training_transform():
    """Each key puts timm's own op in the training transform, in timm's order, and nothing in evaluation."""
    config = data_config_from_processor(ViTImageProcessor(size={"height": 48, "width": 48}))
    plain, evaluate = build_transforms(config)
    assert not {"RandAugment", "AugMixAugment", "AutoAugment", "RandomErasing", "ColorJitter"} & set(
        _step_names(plain)
    )
    rand, evaluate2 = build_transforms(config, auto_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25)
    names = _step_names(rand)
    assert names.index("RandomHorizontalFlip") < names.index("RandAugment") < names.index("Normalize")
    assert names[-1] == "RandomErasing" and rand.transforms[-1].probability == 0.25
    assert rand.transforms[names.index("RandAugment")].ops[0].magnitude == 9
    assert _step_names(evaluate2) == _step_names(evaluate)
    assert "AugMixAugment" in _step_names(build_transforms(config, auto_augment="augmix-m5-w4-d2")[0])
    assert "AutoAugment" in _step_names(build_transforms(config, auto_augment="original")[0])
    jitter = build_transforms(config, color_jitter=0.3)[0]
    assert jitter.transforms[_step_names(jitter).index("ColorJitter")].brightness == (0.7, 1.3)
    image = Image.fromarray(np.random.default_rng(5).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    for transform in (rand, jitter, build_transforms(config, auto_augment="augmix-m5-w4-d2")[0]):
        assert transform(image).shape == (3, 48, 48)  # a squash model's crops keep its size


def test_bad_augmentation_keys_are_one_line_config_errors():
    from hf_finetune.config.data import DataArguments
    from hf_finetune.errors import ConfigError

    ok = DataArguments(
        train_dir="x", auto_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25, color_jitter=0.4
    )
    assert (ok.auto_augment, ok.random_erasing, ok.color_jitter) == ("rand-m9-mstd0.5-inc1", 0.25, 0.4)
    assert DataArguments(train_dir="x", auto_augment="none").auto_augment is None
    for kwargs, message in [
        (
            {"auto_augment": "trivialaugment"},
            "auto_augment: got 'trivialaugment'; expected a timm .*Unknown AA",
        ),
        ({"auto_augment": "rand-zz9"}, "auto_augment: got 'rand-zz9'; .*Unknown RandAugment config section"),
        ({"auto_augment": "rand-m9", "augmentation": "flip"}, "auto_augment: .*rrc_flip only"),
        ({"random_erasing": 1.5}, "random_erasing: got 1.5; expected .*probability"),
        ({"random_erasing": 0.2, "augmentation": "none"}, "random_erasing: .*rrc_flip only"),
        ({"color_jitter": -0.1}, "color_jitter: got -0.1"),
        ({"color_jitter": "lots"}, "color_jitter: got 'lots'; expected a number"),
    ]:
        with pytest.raises(ConfigError, match=message) as caught:
            DataArguments(train_dir="x", **kwargs)
        assert "\n" not in str(caught.value)
