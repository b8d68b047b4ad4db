"""``image_size`` other than the checkpoint's (issue 23, point 3): ViT-family position embeddings are interpolated
once when the run prepares the model (hf_finetune/models/position_embeddings.py).

On tiny random checkpoints of transformers ViT, DeiT, DINOv2 with registers, CLIP, SigLIP, Swin (absolute and
window-only), BEiT (relative position bias) and timm vit_tiny / deit_tiny_distilled:
* at the checkpoint's own size nothing changes: every tensor and the logits are equal bit for bit;
* the resized model equals what transformers' own ``interpolate_pos_encoding=True`` (and timm's
  ``dynamic_img_size``) computes at the new size: bicubic, class and distillation tokens kept;
* at a new size the model trains 2 steps, is saved, and ``pipeline()`` (and ``timm.create_model``) reloads it
  with the trained model's logits;
* LeViT and Hiera are refused in one line naming image_size, the family and the size that works (exit 2).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import SOURCE_LABELS

from hf_finetune import DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_finetune.errors import ConfigError
from hf_finetune.models.loading import load_source_config
from hf_finetune.models.position_embeddings import resize_position_embeddings

LABELS = ["cat", "dog", "zebra"]
VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32)
TOWER = dict(VIT, patch_size=8)
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
SWIN = dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)


def _labels():
    return dict(id2label=dict(enumerate(SOURCE_LABELS)), label2id={n: i for i, n in enumerate(SOURCE_LABELS)})


def _hf_model(family: str):
    """A random transformers classifier of ``family`` (checkpoint size 32 px, 64 px for LeViT and Hiera)."""
    import transformers as t

    built = {
        "vit": lambda: t.ViTForImageClassification(t.ViTConfig(**TOWER, **_labels())),
        "deit": lambda: t.DeiTForImageClassification(t.DeiTConfig(**TOWER, **_labels())),
        "dinov2": lambda: t.Dinov2ForImageClassification(t.Dinov2Config(**TOWER, **_labels())),
        "dinov2_registers": lambda: t.Dinov2WithRegistersForImageClassification(
            t.Dinov2WithRegistersConfig(**TOWER, num_register_tokens=2, **_labels())
        ),
        "clip": lambda: t.CLIPForImageClassification(
            t.CLIPConfig(vision_config=TOWER, text_config=TEXT, **_labels())
        ),
        "siglip": lambda: t.SiglipForImageClassification(
            t.SiglipConfig(vision_config=TOWER, text_config=TEXT, **_labels())
        ),
        "swin_absolute": lambda: t.SwinForImageClassification(
            t.SwinConfig(**SWIN, use_absolute_embeddings=True, **_labels())
        ),
        "swin": lambda: t.SwinForImageClassification(t.SwinConfig(**SWIN, **_labels())),
        "beit": lambda: t.BeitForImageClassification(
            t.BeitConfig(**TOWER, use_relative_position_bias=True, **_labels())
        ),
        "levit": lambda: t.LevitForImageClassification(
            t.LevitConfig(
                image_size=64,
                hidden_sizes=[16, 32, 48],
                num_attention_heads=[1, 2, 3],
                depths=[1, 1, 1],
                key_dim=[8, 8, 8],
                **_labels(),
            )
        ),
        "hiera": lambda: t.HieraForImageClassification(
            t.HieraConfig(
                image_size=[64, 64],
                patch_size=[7, 7],
                patch_stride=[4, 4],
                embed_dim=16,
                depths=[1, 1],
                num_heads=[1, 2],
                query_stride=[2, 2],
                masked_unit_size=[4, 4],
                num_query_pool=1,
                **_labels(),
            )
        ),
    }[family]
    torch.manual_seed(0)
    return built().eval()


def _timm_model(name: str, folder=None):
    """A random timm ``name`` with one block, at its own 224 px, saved as ``timm.models.save_for_hf`` writes it
    (into ``folder`` when given) and loaded through transformers' TimmWrapper."""
    import tempfile

    import timm
    from transformers import AutoModelForImageClassification

    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=len(SOURCE_LABELS), **TIMM_ARGS[name]).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = folder or tmp
        timm.models.save_for_hf(
            net,
            str(path),
            model_config={"label_names": SOURCE_LABELS},
            model_args=TIMM_ARGS[name],
            safe_serialization=True,
        )
        config = load_source_config(str(path))  # drops the num_classes save_for_hf repeats in model_args
        return AutoModelForImageClassification.from_pretrained(str(path), config=config).eval()


HF_RESIZED = ["vit", "deit", "dinov2", "dinov2_registers", "clip", "siglip", "swin_absolute"]
HF_AS_IS = ["swin", "beit"]  # Swin pads to whole windows; BEiT interpolates at each forward pass
# one block each; timm Swin has no position table: set_input_size sets its windows and relative position tables
TIMM_ARGS = {
    "vit_tiny_patch16_224": {"depth": 1},
    "deit_tiny_distilled_patch16_224": {"depth": 1},
    "swin_tiny_patch4_window7_224": {"depths": (1, 1, 1, 1), "embed_dim": 32, "num_heads": (1, 2, 2, 4)},
}
TIMM = list(TIMM_ARGS)


def _logits(model, side: int, seed: int = 1) -> torch.Tensor:
    pixels = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(pixel_values=pixels).logits


def _own_side(model) -> int:
    if hasattr(model, "timm_model"):
        return 224
    size = getattr(model.config, "vision_config", model.config).image_size
    return size[0] if isinstance(size, (list, tuple)) else size


@pytest.mark.parametrize("family", HF_RESIZED + HF_AS_IS + ["levit", "hiera"] + TIMM)
def test_own_size_leaves_the_model_bit_for_bit(family):
    model = _timm_model(family) if family in TIMM else _hf_model(family)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_config = model.config.to_dict()
    side = _own_side(model)
    before = _logits(model, side)
    assert resize_position_embeddings(model, None) is None
    assert resize_position_embeddings(model, side) is None
    assert torch.equal(_logits(model, side), before)
    after_state = model.state_dict()
    assert after_state.keys() == before_state.keys()
    assert all(torch.equal(after_state[k], v) for k, v in before_state.items())
    assert model.config.to_dict() == before_config


@pytest.mark.parametrize("family", HF_RESIZED)
def test_resize_once_equals_transformers_interpolation(family):
    """The resized table at 48 px gives the logits transformers computes by interpolating at each forward pass
    (DINOv2 with registers interpolates by a scale factor there: equal within 1e-3); the class and distillation
    rows are the checkpoint's own; the parameter object and its requires_grad are kept."""
    model = _hf_model(family)
    reference = copy.deepcopy(model)
    param = next(p for n, p in model.named_parameters() if "position_embedding" in n)
    param.requires_grad_(False)
    old = param.detach().clone()
    line = resize_position_embeddings(model, 48)
    assert "interpolated once (bicubic)" in line
    assert param is next(p for n, p in model.named_parameters() if "position_embedding" in n)
    assert not param.requires_grad
    config = getattr(model.config, "vision_config", model.config)
    assert config.image_size == 48
    patch = config.patch_size
    prefix = old.shape[-2] - (32 // patch) ** 2
    assert param.shape[-2] == prefix + (48 // patch) ** 2
    assert torch.equal(param.detach()[..., :prefix, :], old[..., :prefix, :])  # class / distillation rows
    with torch.no_grad():
        pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
        expected = reference(pixel_values=pixels, interpolate_pos_encoding=True).logits
    tolerance = 1e-3 if family == "dinov2_registers" else 0.0
    assert (_logits(model, 48) - expected).abs().max().item() <= tolerance


@pytest.mark.parametrize("name", TIMM[:2])
def test_timm_resize_equals_timm_dynamic_size(name):
    """timm's set_input_size at 64 px gives the logits of the same weights with ``dynamic_img_size`` (timm
    resampling at each forward pass); the class (and distillation) rows are kept; model_args carry img_size."""
    import timm

    model = _timm_model(name)
    dynamic = timm.create_model(
        name, pretrained=False, num_classes=len(SOURCE_LABELS), depth=1, dynamic_img_size=True
    )
    dynamic.load_state_dict(model.timm_model.state_dict())
    dynamic.eval()
    prefix = model.timm_model.num_prefix_tokens
    old = model.timm_model.pos_embed.detach().clone()
    assert "set_input_size" in resize_position_embeddings(model, 64)
    assert model.config.model_args["img_size"] == 64 and model.config.model_args["depth"] == 1
    assert model.timm_model.pos_embed.shape[1] == prefix + 16
    assert torch.equal(model.timm_model.pos_embed.detach()[:, :prefix], old[:, :prefix])
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=pixels).logits, dynamic(pixels), atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", HF_AS_IS)
def test_window_and_relative_bias_models_run_at_a_new_size_as_they_are(family):
    """transformers Swin (windows only) pads to whole windows and BEiT interpolates its relative position bias at
    each forward pass: nothing is changed (same tensors, same config) and the model runs at 48 and 40 px."""
    model = _hf_model(family)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for side in (48, 40):
        assert resize_position_embeddings(model, side) is None
        assert tuple(_logits(model, side).shape) == (2, len(SOURCE_LABELS))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model.config.image_size == 32


def test_timm_model_that_would_not_rebuild_is_refused(monkeypatch):
    """Without the window sizes passed, timm's set_input_size scales Swin's windows with the grid, which
    ``timm.create_model(img_size=...)`` does not: the saved folder would compute other outputs, so it is refused
    in one line rather than saved."""
    model = _timm_model("swin_tiny_patch4_window7_224")
    original = model.timm_model.set_input_size

    def scaling_windows(img_size=None, window_size=None, **kwargs):  # the window sizes asked for are dropped
        original(img_size=img_size, **kwargs)

    monkeypatch.setattr(model.timm_model, "set_input_size", scaling_windows)
    with pytest.raises(ConfigError) as info:
        resize_position_embeddings(model, 64)
    message = str(info.value)
    assert "\n" not in message and message.startswith("image_size: got 64; timm swin_tiny_patch4_window7_224")
    assert "set_input_size" in message and "it works at 224 px only" in message


@pytest.mark.parametrize("family", ["levit", "hiera"])
def test_fixed_size_families_are_refused_in_one_line(family):
    model = _hf_model(family)
    with pytest.raises(ConfigError) as info:
        resize_position_embeddings(model, 80)
    message = str(info.value)
    assert "\n" not in message
    assert (
        message.startswith("image_size: got 80; ") and family in message and "works at 64 px only" in message
    )


# --- end to end: train 2 steps at a new size, save, reload ----------------------------------------------------

QUICK = dict(
    max_steps=2,
    per_device_train_batch_size=4,
    eval_strategy="no",
    save_strategy="no",
    load_best_model_at_end=False,
    eval_on_start=False,
    report_to="none",
    dataloader_num_workers=0,
    bf16=False,
    seed=3,
)
E2E = ["vit", "deit", "dinov2_registers", "clip", "siglip", "swin_absolute", "beit", *TIMM]


def _checkpoint(family: str, folder):
    """``family`` saved into ``folder`` with a 32 px image processor (a timm one with timm's config)."""
    from transformers import ViTImageProcessor

    if family in TIMM:
        _timm_model(family, folder)
        return folder
    _hf_model(family).save_pretrained(folder)
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)
    return folder


class _KeepTrained:
    """A copy of the model as training ends (after the trainer's last step)."""

    model = None

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = copy.deepcopy(model).eval()


@pytest.mark.parametrize("family", E2E)
def test_new_size_trains_saves_and_reloads(family, tiny_image_folder, tmp_path):
    """At 48 px (64 px for timm's 224 px models) the model trains 2 steps; the saved folder has the resized table
    and size; pipeline() (and timm.create_model) give the trained model's logits on the validation photos."""
    from PIL import Image
    from transformers import TrainerCallback, pipeline

    from hf_finetune.run.train import main

    side = 64 if family in TIMM else 48
    source = _checkpoint(family, tmp_path / "source")
    keep = type("KeepTrained", (_KeepTrained, TrainerCallback), {})()
    out = tmp_path / "out"
    main(
        ModelArguments(model_name_or_path=str(source)),
        DataArguments(train_dir=str(tiny_image_folder / "train"), image_size=side),
        FinetuneTrainingArguments(output_dir=str(out), **QUICK),
        callbacks=[keep],
    )
    config = json.loads((out / "config.json").read_text())
    if family in TIMM:
        assert config["model_args"]["img_size"] == side
        assert list(config["pretrained_cfg"]["input_size"]) == [3, side, side]
    elif family != "beit":  # BEiT keeps its size and interpolates at each forward pass
        assert config.get("vision_config", config)["image_size"] == side
    images = [Image.open(p).convert("RGB") for p in sorted((tiny_image_folder / "val").glob("*/*.png"))[:4]]
    classifier = pipeline("image-classification", model=str(out), device="cpu")
    pixels = classifier.image_processor(images, return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[-2:]) == (side, side)
    trained = keep.model.float()
    for image, one in zip(images, pixels, strict=True):
        with torch.no_grad():
            expected = trained(pixel_values=one[None]).logits[0]
        scores = classifier(image, top_k=len(LABELS), function_to_apply="none")
        got = torch.tensor([next(s["score"] for s in scores if s["label"] == label) for label in LABELS])
        assert torch.equal(got, expected), (got, expected)
    if family in TIMM:
        import timm

        net = timm.create_model("local-dir:" + str(out), pretrained=True).eval()
        with torch.no_grad():
            assert torch.equal(net(pixels), trained(pixel_values=pixels).logits)


@pytest.mark.parametrize("family", ["levit", "hiera"])
def test_cli_refuses_a_fixed_size_family_in_one_line(family, tiny_image_folder, tmp_path, capsys):
    """``hf-finetune train --image_size 80`` on LeViT / Hiera (64 px checkpoints): exit 2, one line naming
    image_size, the family and 64 px, no traceback, no model written."""
    from hf_finetune import cli

    source = _checkpoint(family, tmp_path / "source")
    out = tmp_path / "out"
    argv = ["train", "--model_name_or_path", source, "--train_dir", tiny_image_folder / "train"]
    argv += [
        "--image_size",
        "80",
        "--output_dir",
        out,
        "--report_to",
        "none",
        "--dataloader_num_workers",
        "0",
    ]
    capsys.readouterr()
    assert cli.main([str(a) for a in argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith("hf-finetune: error: image_size: got 80; ")
    assert family in lines[0] and "it works at 64 px only" in lines[0]
    assert not out.exists()  # refused before the output folder is made
