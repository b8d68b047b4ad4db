"""The architecture families ``tests/test_families.py`` covers, as tiny random checkpoints, and the page
``docs/families.md`` generated from them.

``python -m tests.families_table --write`` rewrites the page; ``tests/test_families.py`` fails while it is
stale. Each family is built from a tiny random config (transformers) or the smallest timm variant
(``timm.create_model(..., pretrained=False)``, saved with ``timm.models.save_for_hf`` and label names),
with 7 named source labels, so label mapping has rows to copy.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import SOURCE_LABELS  # the tiny checkpoints' source labels, shared with the other tests

__all__ = ["Family", "FAMILIES", "EXCLUDED", "build_checkpoint", "render_table", "main"]

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "families.md"


# Checked for every family by tests/test_families.py (the columns of the table).
CHECKS = [
    "trains (2 steps)",
    "head found, re-initialised",
    "label mapping copies rows",
    "freeze_layers 1",
    "gradual unfreezing, layer_decay",
    "LoRA targets",
    "FSDP wrap class",
    "reloads, same logits",
]


@dataclass
class Family:
    """One row of the table: ``name`` (the test id), ``source`` (transformers or timm), what it is built from,
    the image size it is tested at, and notes on special handling."""

    name: str
    source: str
    built_from: str
    image_size: int = 32
    config: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def _t(name, cls, image_size=32, note="", **config) -> Family:
    return Family(name, "transformers", cls, image_size, config, note)


def _timm(name, arch, image_size=32, note="", **model_args) -> Family:
    return Family(name, "timm", arch, image_size, model_args, note)


_VIT = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, patch_size=8)

FAMILIES: list[Family] = [
    _t("vit", "ViTForImageClassification", image_size=32, **_VIT),
    _t("deit", "DeiTForImageClassification", **_VIT),
    _t(
        "deit-distilled",
        "DeiTForImageClassificationWithTeacher",
        note="both heads trained on the labels, loss = mean of the two cross-entropies",
        **_VIT,
    ),
    _t("beit", "BeitForImageClassification", use_mean_pooling=True, **_VIT),
    _t("data2vec-vision", "Data2VecVisionForImageClassification", use_mean_pooling=True, **_VIT),
    _t("dinov2", "Dinov2ForImageClassification", **_VIT),
    _t("dinov2-registers", "Dinov2WithRegistersForImageClassification", num_register_tokens=2, **_VIT),
    _t("convnext", "ConvNextForImageClassification", num_stages=2, hidden_sizes=[8, 16], depths=[1, 1]),
    _t("convnextv2", "ConvNextV2ForImageClassification", num_stages=2, hidden_sizes=[8, 16], depths=[1, 1]),
    _t(
        "swin",
        "SwinForImageClassification",
        embed_dim=8,
        depths=[1, 2],
        num_heads=[1, 2],
        window_size=4,
        patch_size=4,
    ),
    _t(
        "swinv2",
        "Swinv2ForImageClassification",
        embed_dim=8,
        depths=[1, 1, 1],
        num_heads=[1, 2, 2],
        window_size=4,
        patch_size=4,
    ),
    _t(
        "resnet",
        "ResNetForImageClassification",
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
    ),
    _t(
        "regnet",
        "RegNetForImageClassification",
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 2],
        groups_width=8,
    ),
    _t(
        "efficientnet",
        "EfficientNetForImageClassification",
        width_coefficient=0.1,
        depth_coefficient=0.1,
        hidden_dim=128,
    ),
    _t("mobilenet_v1", "MobileNetV1ForImageClassification", depth_multiplier=0.25, min_depth=4),
    _t("mobilenet_v2", "MobileNetV2ForImageClassification", depth_multiplier=0.25, min_depth=4),
    _t(
        "mobilevit",
        "MobileViTForImageClassification",
        hidden_sizes=[16, 16, 16],
        neck_hidden_sizes=[8, 8, 8, 8, 8, 8, 16],
        num_attention_heads=2,
        patch_size=2,
    ),
    _t(
        "levit",
        "LevitForImageClassificationWithTeacher",
        image_size=64,
        note="the distilled (with-teacher) head pair, trained like DeiT's; image 64 (LeViT downsamples by 64)",
        hidden_sizes=[16, 24, 32],
        num_attention_heads=[1, 2, 2],
        depths=[1, 1, 1],
        key_dim=[8, 8, 8],
        mlp_ratio=[2, 2, 2],
        attention_ratio=[2, 2, 2],
    ),
    _t(
        "pvt_v2",
        "PvtV2ForImageClassification",
        hidden_sizes=[8, 16, 16, 16],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        mlp_ratios=[2, 2, 2, 2],
    ),
    _t(
        "hiera",
        "HieraForImageClassification",
        image_size=64,
        note="image 64 (the patch stride and mask-unit grid need it)",
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 1],
        patch_stride=[4, 4],
        query_stride=[2, 2],
        masked_unit_size=[8, 8],
        num_query_pool=1,
        mlp_ratio=2.0,
    ),
    _t("clip", "CLIPForImageClassification", **_VIT),
    _t("siglip", "SiglipForImageClassification", **_VIT),
    _timm("timm-resnet", "resnet18"),
    _timm("timm-convnext", "convnext_atto"),
    _timm("timm-vit", "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3),
    _timm(
        "timm-deit",
        "deit_tiny_distilled_patch16_224",
        note="two heads (head, head_dist): timm averages them",
        img_size=32,
        patch_size=8,
        depth=3,
    ),
    _timm("timm-eva", "eva02_tiny_patch14_224", image_size=28, img_size=28, depth=3),
    _timm("timm-efficientnet", "efficientnet_b0"),
    _timm("timm-mobilenetv3", "mobilenetv3_small_050"),
    _timm("timm-mobilenetv4", "mobilenetv4_conv_small_035"),
    _timm("timm-efficientvit", "efficientvit_b0", note="the classifier is the last Linear of a Sequential"),
    _timm("timm-fastvit", "fastvit_t8"),
    _timm("timm-regnet", "regnety_002"),
]

# Families that cannot work here, with the reason (one line each, also in the table).
EXCLUDED: dict[str, str] = {}


def _tiny_transformers(family: Family):
    import transformers

    model_class = getattr(transformers, family.built_from)
    config_class = model_class.config_class
    labels = dict(
        id2label=dict(enumerate(SOURCE_LABELS)), label2id={n: i for i, n in enumerate(SOURCE_LABELS)}
    )
    if family.name in ("clip", "siglip"):
        text = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
        vision = dict(family.config, image_size=family.image_size)
        config = config_class(text_config=text, vision_config=vision, **labels)
    elif family.name == "hiera":
        size = [family.image_size, family.image_size]
        config = config_class(image_size=size, num_channels=3, **family.config, **labels)
    else:
        config = config_class(image_size=family.image_size, num_channels=3, **family.config, **labels)
    return model_class(config).eval()


def _processor_for(model_type: str, image_size: int):
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or IMAGE_PROCESSOR_MAPPING_NAMES["dinov2"]
    processor = getattr(transformers, names["torchvision"])()
    for key in ("size", "crop_size"):
        value = getattr(processor, key, None)
        if not value:
            continue
        value = dict(value)
        if "shortest_edge" in value:
            setattr(processor, key, {"shortest_edge": image_size})
        else:
            setattr(processor, key, {"height": image_size, "width": image_size})
    return processor


def build_checkpoint(family: Family, path: Path) -> Path:
    """Save ``family``'s tiny random checkpoint (weights, config, image processor) into ``path``."""
    import torch

    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    if family.source == "timm":
        import timm

        model_args = dict(family.config, num_classes=len(SOURCE_LABELS))
        model = timm.create_model(family.built_from, pretrained=False, **model_args).eval()
        size = family.image_size
        model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, size, size), crop_pct=1.0)
        timm.models.save_for_hf(
            model,
            str(path),
            model_config={"label_names": SOURCE_LABELS},
            model_args=model_args,
            safe_serialization=True,
        )
        return path
    model = _tiny_transformers(family)
    model.save_pretrained(path)
    _processor_for(model.config.model_type, family.image_size).save_pretrained(path)
    return path


def render_table() -> str:
    """The Markdown page: one line per family, what the test checks, and every exclusion with its reason."""
    lines = [
        "# Architecture families",
        "",
        "Generated by `python -m tests.families_table --write` from what `tests/test_families.py` checks on a",
        "tiny random checkpoint of each family; the test fails while this page is stale.",
        "",
        "For every family marked yes, the test: fine-tunes 2 steps through the Python API at the checkpoint's own",
        "image size; finds the head and re-initialises it for the new labels; copies a matched label's classifier",
        "row bit for bit; freezes the stem and first block only with `freeze_layers: 1` (fewer than half the",
        "tensors); finds more than one block for gradual unfreezing and `layer_decay`; finds LoRA target layers",
        "and the FSDP wrap class; and reloads the saved folder through `pipeline()` (and `timm.create_model` for",
        "timm) with the trained model's logits.",
        "",
        "| family | source | built from | image size | supported | notes |",
        "|---|---|---|---|---|---|",
    ]
    for family in FAMILIES:
        excluded = EXCLUDED.get(family.name)
        supported = f"no: {excluded}" if excluded else "yes"
        lines.append(
            f"| {family.name} | {family.source} | `{family.built_from}` | {family.image_size} | {supported} | "
            f"{family.note} |"
        )
    lines += [
        "",
        "Backbone-only checkpoints (a `ViTModel` or `Dinov2Model` save, a `CLIPVisionModel` or",
        "`SiglipVisionModel` vision tower) load with a new head: the run report says the head is new and why",
        "(see [how a run works](how-a-run-works.md)).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    text = render_table()
    if "--write" in argv:
        PAGE.write_text(text)
        print(f"wrote {PAGE.relative_to(ROOT)}")
        return 0
    stale = not PAGE.is_file() or PAGE.read_text() != text
    print(json.dumps({"page": str(PAGE.relative_to(ROOT)), "stale": stale}))
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
