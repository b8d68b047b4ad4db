"""The evaluation transform makes the pixels the checkpoint's own image processor makes (what ``predict`` and
``pipeline()`` use), for every family, on real non-square photos and on a synthetic one.

Each family's processor is built here with its Hub checkpoint's settings (no download). The processors are
transformers' default (torchvision) backend; the evaluation transform resizes PIL images (timm's
``create_transform``), so the two differ only by resampling rounding: uint8 bicubic/bilinear output that
differs by one level here and there (1/255 / std after normalisation). Bounds measured on the 50 hotdog
validation photos (149..224 x 224, portrait and landscape) with transformers 5.24, torchvision 0.29, timm 1.0:
the worst family's mean |diff| was 0.00007, its max 0.0350 (two uint8 levels of a bicubic resize / std 0.225;
timm checkpoints and EfficientNet 0 exactly); the bounds below are those with headroom.
before this module the mean |diff| was 0.25 for ViT/Swin, 0.26 DeiT/BEiT/SigLIP, 0.40 LeViT, 0.57 PVTv2,
0.68 EfficientNet, 0.09 MobileViT.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image

from hf_finetune.data.transforms import build_transforms, data_config_from_processor, split_normalize

IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
HALF = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
CLIP = {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
CONVNEXT = {"size": {"shortest_edge": 224}, "crop_pct": 0.875, "resample": 3, **IMAGENET}
BIT = {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "resample": 3, **IMAGENET}
MOBILENET = {
    "size": {"shortest_edge": 256},
    "crop_size": {"height": 224, "width": 224},
    "resample": 2,
    **HALF,
}

# family -> (transformers image processor class, the settings of a typical Hub checkpoint of it)
FAMILIES = {
    "vit": ("ViTImageProcessor", {"size": {"height": 224, "width": 224}, "resample": 2, **HALF}),
    "deit": (
        "DeiTImageProcessor",
        {"size": {"height": 256, "width": 256}, "crop_size": {"height": 224, "width": 224}, "resample": 3},
    ),
    "beit": ("BeitImageProcessor", {"size": {"height": 224, "width": 224}, "do_center_crop": False, **HALF}),
    "data2vec-vision": (
        "BeitImageProcessor",
        {"size": {"height": 224, "width": 224}, "do_center_crop": False, "resample": 2, **HALF},
    ),
    "dinov2": ("BitImageProcessor", BIT),
    "convnext": ("ConvNextImageProcessor", CONVNEXT),
    "convnext-384": ("ConvNextImageProcessor", {**CONVNEXT, "size": {"shortest_edge": 384}}),
    "convnextv2": ("ConvNextImageProcessor", CONVNEXT),
    "swin": ("ViTImageProcessor", {"size": {"height": 224, "width": 224}, "resample": 3, **IMAGENET}),
    "swinv2": ("ViTImageProcessor", {"size": {"height": 256, "width": 256}, "resample": 3, **IMAGENET}),
    "resnet": ("ConvNextImageProcessor", CONVNEXT),
    "regnet": ("ConvNextImageProcessor", {**CONVNEXT, "resample": 2}),
    "efficientnet": (
        "EfficientNetImageProcessor",
        {
            "size": {"height": 224, "width": 224},
            "resample": 0,
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.47853944, 0.4732864, 0.47434163],
            "include_top": True,
        },
    ),
    "efficientnet-offset": (
        "EfficientNetImageProcessor",
        {"size": {"height": 240, "width": 240}, "rescale_offset": True, "include_top": False, **HALF},
    ),
    "mobilenet_v1": ("MobileNetV1ImageProcessor", MOBILENET),
    "mobilenet_v2": ("MobileNetV2ImageProcessor", MOBILENET),
    "mobilevit": (
        "MobileViTImageProcessor",
        {"size": {"shortest_edge": 288}, "crop_size": {"height": 256, "width": 256}, "resample": 2},
    ),
    "levit": (
        "LevitImageProcessor",
        {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}},
    ),
    "pvt_v2": ("PvtImageProcessor", {"size": {"height": 224, "width": 224}, "resample": 2, **IMAGENET}),
    "hiera": ("BitImageProcessor", BIT),
    "clip": ("CLIPImageProcessor", {"size": {"shortest_edge": 224}, "crop_size": 224, "resample": 3, **CLIP}),
    "siglip": ("SiglipImageProcessor", {"size": {"height": 224, "width": 224}, "resample": 3, **HALF}),
    "timm-vit": ("timm", "vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
    "timm-squash": ("timm", "coat_lite_medium_384.in1k"),
    "timm-resnet": ("timm", "resnet18.a1_in1k"),
}
# mean and max |diff| allowed after normalisation (measured, see the module docstring)
MEAN_BOUND, MAX_BOUND = 0.0005, 0.04


def make_processor(family: str):
    import transformers

    name, settings = FAMILIES[family]
    if name == "timm":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(settings).to_dict()
        return transformers.TimmWrapperImageProcessor(pretrained_cfg=cfg, architecture=cfg["architecture"])
    return getattr(transformers, name)(**settings)


def diff(processor, images) -> tuple[float, float]:
    """(mean, max) |eval transform - processor| over ``images``, after checking the shapes agree."""
    _, eval_transform = build_transforms(data_config_from_processor(processor), augmentation="none")
    ours = torch.stack([eval_transform(image) for image in images])
    theirs = torch.as_tensor(np.asarray(processor(images=images, return_tensors="pt")["pixel_values"]))
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    gap = (ours - theirs.to(ours.dtype)).abs()
    return float(gap.mean()), float(gap.max())


def hotdog_photos(count: int = 50, distinct: bool = False) -> list:
    """The first ``count`` hotdog validation photos (with ``distinct``: one of each size)."""
    files = sorted((SHARED_DATA / "hotdog" / "val").glob("*/*.jpg"))
    if not files:
        pytest.skip(f"no photos at {SHARED_DATA / 'hotdog' / 'val'} (see ../shared/README.md)")
    photos = [Image.open(path).convert("RGB") for path in files]
    if distinct:
        photos = list({photo.size: photo for photo in reversed(photos)}.values())
    return photos[:count]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_eval_transform_equals_the_processor_on_real_photos(family):
    photos = hotdog_photos(8, distinct=True)  # the sizes of all 50 (the bounds hold on all 50, see __main__)
    assert (
        any(p.size[0] > p.size[1] for p in photos)
        and any(p.size[0] != p.size[1] for p in photos)
        and len({p.size for p in photos}) > 1
    )
    mean, worst = diff(make_processor(family), photos)
    assert mean < MEAN_BOUND and worst < MAX_BOUND, (family, mean, worst)


@pytest.mark.parametrize(
    "family", ["vit", "deit", "efficientnet", "mobilevit", "levit", "convnext-384", "timm-vit"]
)
def test_synthetic_non_square_image(family):
    """Runs without ../shared: a smooth 97 x 61 image (smooth, so resampling rounding stays small)."""
    y, x = np.mgrid[0:61, 0:97]
    image = np.stack([x * 2.5, y * 4.0, (x + y) * 1.5], axis=-1).clip(0, 255).astype(np.uint8)
    mean, worst = diff(make_processor(family), [Image.fromarray(image)])
    assert mean < MEAN_BOUND and worst < MAX_BOUND, (family, mean, worst)


@pytest.mark.parametrize("family", ["vit", "deit", "levit", "convnext", "clip", "mobilevit", "efficientnet"])
def test_at_another_image_size_the_saved_processor_still_agrees(family):
    """``image_size: 96``: the processor saved with the model (``apply_image_size``) preprocesses as training's
    evaluation transform at 96 px."""
    from hf_finetune.data.transforms import apply_image_size

    processor = make_processor(family)
    config = data_config_from_processor(processor, 96)
    apply_image_size(processor, object(), 96)
    assert data_config_from_processor(processor)["input_size"] == config["input_size"] == (3, 96, 96)
    _, eval_transform = build_transforms(config, augmentation="none")
    y, x = np.mgrid[0:61, 0:97]
    image = Image.fromarray(np.stack([x * 2.5, y * 4.0, (x + y) * 1.5], -1).clip(0, 255).astype(np.uint8))
    theirs = torch.as_tensor(np.asarray(processor(images=[image], return_tensors="pt")["pixel_values"]))[0]
    ours = eval_transform(image)
    assert ours.shape == theirs.shape == (3, 96, 96)
    assert float((ours - theirs).abs().mean()) < MEAN_BOUND * 4, family


def test_bgr_and_offset_survive_the_uint8_split_and_training():
    """MobileViT's BGR order and EfficientNet's offset/include_top normalisation are in the training transform
    too, and in the uint8 + on-device normalisation split, bit for bit."""
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (70, 90, 3), dtype=np.uint8))
    for family in ("mobilevit", "efficientnet"):
        config = data_config_from_processor(make_processor(family))
        train, evaluate = build_transforms(config, "rrc_flip", crop_scale_min=1.0, hflip_prob=0.0)
        uint8_part, normalizer = split_normalize(evaluate)
        assert torch.equal(normalizer(uint8_part(image).unsqueeze(0))[0], evaluate(image))
        assert train(image).shape == evaluate(image).shape
    mobilevit = data_config_from_processor(make_processor("mobilevit"))
    assert mobilevit["channel_order"] == "bgr"
    flat = Image.new("RGB", (40, 30), (200, 100, 10))
    train, evaluate = build_transforms(mobilevit, "rrc_flip")
    for transform in (train, evaluate):
        assert transform(flat)[:, 5, 5].mul(255).round().tolist() == [10.0, 100.0, 200.0]


if __name__ == "__main__":  # the measurement behind the bounds: python tests/test_processor_parity.py
    import sys

    sys.path.insert(0, "tests")
    photos = hotdog_photos()
    print(sorted({p.size for p in photos}))
    for name in sorted(FAMILIES):
        mean, worst = diff(make_processor(name), photos)
        print(f"{name:20s} mean {mean:.5f} max {worst:.5f}")
