"""Every architecture family of ``tests/families_table.py`` on a tiny random checkpoint: it trains 2 steps
through the Python API; the head is found and re-initialised; label mapping copies matched rows bit for bit;
``freeze_layers: 1`` freezes the stem and first block only; gradual unfreezing, ``layer_decay``, LoRA and the
FSDP wrap find more than one block; and the saved folder reloads through ``pipeline()`` (and
``timm.create_model`` for timm) with the trained model's logits. ``docs/families.md`` is generated from the
same table and must be current."""

from __future__ import annotations

import json

import pytest
import torch

from tests.families_table import EXCLUDED, FAMILIES, SOURCE_LABELS, build_checkpoint, render_table

TARGETS = ["cat", "dog", "zebra"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is many times faster than several contending ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)  # cat and dog are source labels (rows 5 and 6), zebra is new


def _check_head_and_mapping(loaded) -> list[str]:
    """The head tensors are found, shaped for the target labels, re-initialised, and the matched labels'
    rows are the source rows bit for bit. Returns the head tensor names."""
    from hf_finetune.models.heads import head_parameter_names

    model = loaded.model
    heads = head_parameter_names(model)
    named = dict(model.named_parameters())
    assert heads and all(named[n].shape[0] == len(TARGETS) for n in heads), heads
    assert set(heads) <= set(loaded.reinitialized), (heads, loaded.reinitialized)
    assert loaded.mapping is not None and [m.target for m in loaded.mapping.reused] == ["cat", "dog"]
    assert set(loaded.source_head) == set(heads)
    for name in heads:
        source, target = loaded.source_head[name], named[name].detach()
        assert source.shape[0] == len(SOURCE_LABELS)
        assert torch.equal(target[0], source[SOURCE_LABELS.index("cat")])
        assert torch.equal(target[1], source[SOURCE_LABELS.index("dog")])
        if name.endswith("weight"):  # the new label's row is freshly drawn, no source row
            assert not any(torch.equal(target[2], row) for row in source)
    return heads


def _check_blocks(model, heads: list[str]) -> None:
    """freeze_layers 1, the freezing schedule, layer_decay, LoRA and the FSDP wrap classes."""
    from hf_finetune.models.freezing import body_layout, freeze_parameters, set_wrap_classes
    from hf_finetune.models.lora import default_target_modules
    from hf_finetune.training.layer_decay import layer_ids
    from hf_finetune.training.schedules import FreezeSchedule

    layout = body_layout(model)
    assert len(layout.blocks) > 1, [b for b, _ in layout.blocks]
    total = len(list(model.parameters()))
    report = freeze_parameters(model, 1)
    assert 0 < len(report.frozen) < total / 2, (len(report.frozen), total)
    assert set(report.frozen) == set(layout.stem) | set(layout.blocks[0][1])
    assert not set(report.frozen) & set(heads)
    for param in model.parameters():
        param.requires_grad_(True)
    schedule = FreezeSchedule(model, [n for n, _ in model.named_parameters()], unfreeze="gradual")
    assert len(schedule.units) > 1 and len(schedule.unit_names()) > 1
    ids = layer_ids(model, heads)
    assert len(set(ids.ids.values())) > 2 and ids.num_layers > 2, ids.describe()
    targets = default_target_modules(model)
    assert targets and not any(t.startswith(tuple(h.rsplit(".", 1)[0] for h in heads)) for t in targets)
    in_blocks = {b for b, _ in layout.blocks if any(t.startswith(b + ".") for t in targets)}
    assert len(in_blocks) > 1, in_blocks
    wrap = set_wrap_classes(model)
    classes = {type(m).__name__ for m in model.modules()}
    assert wrap and set(wrap) <= classes and type(model).__name__ not in wrap, wrap


class _KeepModel:
    """A Trainer callback that keeps the model the Trainer trains (the object the run saves)."""

    def __init__(self):
        from transformers import TrainerCallback

        self.model = None
        keeper = self

        class Keep(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                keeper.model = model

        self.callback = Keep()


def _train(checkpoint, image_folder, image_size: int, out):
    from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
    from hf_finetune.run.train import main

    keep = _KeepModel()
    result = main(
        ModelArguments(model_name_or_path=str(checkpoint)),
        DataArguments(train_dir=str(image_folder), image_size=image_size),
        FinetuneTrainingArguments(
            output_dir=str(out),
            max_steps=2,
            per_device_train_batch_size=4,
            per_device_eval_batch_size=12,
            layer_decay=0.8,
            seed=0,
            load_best_model_at_end=False,  # the saved model is the trained one, even where epoch 0 scored higher
            tune_depthwise_precision=False,
            tune_inplace_activations=False,
            dataloader_num_workers=0,
        ),
        callbacks=[keep.callback],
    )
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert result.labels == TARGETS
    return {name: t.detach().float().clone() for name, t in keep.model.state_dict().items()}


def _check_reload(family, checkpoint, trained: dict, out, image_folder) -> None:
    """pipeline() (and timm.create_model) on the saved folder give the logits of the trained tensors in the
    model as loaded for training (its forward in float32, outside the run's autocast)."""
    from PIL import Image
    from transformers import pipeline

    from hf_finetune.models.heads import head_parameter_names
    from hf_finetune.models.loading import load_model_for_labels

    reference = load_model_for_labels(str(checkpoint), TARGETS, label_mapping="none").model
    start = {n: t.detach().clone() for n, t in reference.state_dict().items()}
    reference.load_state_dict(trained, strict=True)
    reference.eval()
    assert any(not torch.equal(start[n].float(), trained[n]) for n in start if start[n].is_floating_point())
    for name in head_parameter_names(reference):  # every head trained (both of a two-head model)
        assert not torch.equal(start[name].float(), trained[name]), name

    images = [Image.open(p).convert("RGB") for p in sorted((image_folder / "val").rglob("*.png"))[:3]]
    classifier = pipeline("image-classification", model=str(out))
    pixels = classifier.image_processor(images, return_tensors="pt")["pixel_values"]
    assert pixels.shape[-1] == family.image_size
    with torch.no_grad():
        expected = reference(pixel_values=pixels).logits.float()
        reloaded = classifier.model(pixel_values=pixels).logits.float()
    assert torch.allclose(reloaded, expected, atol=1e-5), (reloaded - expected).abs().max()
    scores = classifier(images, top_k=None)
    probs = expected.softmax(-1)
    for row, answer in zip(probs, scores, strict=True):
        got = torch.tensor([next(a["score"] for a in answer if a["label"] == t) for t in TARGETS])
        assert torch.allclose(got, row, atol=1e-5)
    if family.source == "timm":
        import timm

        model = timm.create_model("local-dir:" + str(out), pretrained=True).eval()
        with torch.no_grad():
            assert torch.allclose(model(pixels).float(), expected, atol=1e-5)
        assert model.pretrained_cfg["label_names"] == TARGETS


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_family(family, tiny_image_folder, tmp_path):
    from hf_finetune.models.loading import load_model_for_labels

    if family.name in EXCLUDED:
        pytest.skip(EXCLUDED[family.name])
    checkpoint = build_checkpoint(family, tmp_path / "checkpoint")
    loaded = load_model_for_labels(str(checkpoint), TARGETS, keep_source_head=True)
    heads = _check_head_and_mapping(loaded)
    _check_blocks(loaded.model, heads)
    del loaded
    out = tmp_path / "out"
    trained = _train(checkpoint, tiny_image_folder, family.image_size, out)
    _check_reload(family, checkpoint, trained, out, tiny_image_folder)


@pytest.mark.parametrize("name", ["deit-distilled", "levit"])
def test_two_head_loss_is_the_mean_of_both_heads_cross_entropies(name, tmp_path):
    """DeiT's and LeViT's with-teacher classes compute no loss: the Trainer's loss is the mean of the two heads'
    cross-entropies on the labels (DeiT fine-tuning without a teacher), and evaluation sees the mean logits."""
    from types import SimpleNamespace

    from transformers import AutoModelForImageClassification

    from hf_finetune.training.regularization import RegularizationMixin, computes_own_loss

    family = next(f for f in FAMILIES if f.name == name)
    checkpoint = build_checkpoint(family, tmp_path / "checkpoint")

    model = AutoModelForImageClassification.from_pretrained(checkpoint).eval()
    assert not computes_own_loss(model)
    trainer = SimpleNamespace(
        mixup=None,
        class_weights=None,
        args=SimpleNamespace(label_smoothing_factor=0.0),
        state=SimpleNamespace(epoch=0),
    )
    size = family.image_size
    inputs = {"pixel_values": torch.randn(4, 3, size, size), "labels": torch.tensor([0, 1, 5, 6])}
    with torch.no_grad():
        loss, outputs = RegularizationMixin.compute_loss(trainer, model, inputs, return_outputs=True)
        raw = model(pixel_values=inputs["pixel_values"])
    ce = torch.nn.functional.cross_entropy
    expected = (ce(raw.cls_logits, inputs["labels"]) + ce(raw.distillation_logits, inputs["labels"])) / 2
    assert torch.allclose(loss, expected, atol=1e-6)
    assert list(outputs) == ["logits"] and torch.equal(outputs["logits"], raw.logits)


def test_families_page_is_current():
    from tests.families_table import PAGE

    assert PAGE.read_text() == render_table(), (
        "docs/families.md is stale: python -m tests.families_table --write"
    )


BACKBONES = {
    "vit": ("ViTModel", "ViTConfig", "ViTForImageClassification"),
    "dinov2": ("Dinov2Model", "Dinov2Config", "Dinov2ForImageClassification"),
    "clip-vision": ("CLIPVisionModel", "CLIPVisionConfig", "CLIPForImageClassification"),
    "siglip-vision": ("SiglipVisionModel", "SiglipVisionConfig", "SiglipForImageClassification"),
}


@pytest.mark.parametrize("kind", list(BACKBONES))
def test_backbone_only_checkpoint_loads_with_a_new_head(kind, tmp_path):
    """A body saved without a classification head (ViTModel, Dinov2Model) or a vision tower (CLIPVisionModel,
    SiglipVisionModel) loads as the family's image classifier: every body tensor as saved, a new head for the
    target labels, no label mapping, and the report says the head is new and why."""
    import transformers

    from hf_finetune.models.loading import load_model_for_labels

    body_name, config_name, classifier_name = BACKBONES[kind]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        patch_size=8,
        image_size=32,
    )
    body = getattr(transformers, body_name)(config).eval()
    body.save_pretrained(tmp_path / "body")
    loaded = load_model_for_labels(str(tmp_path / "body"), TARGETS)
    model = loaded.model
    assert type(model).__name__ == classifier_name
    assert model.config.num_labels == 3 and loaded.mapping is None
    saved = body.state_dict()
    named = dict(model.state_dict())
    prefix = "vision_model." if "vision" in kind else model.base_model_prefix + "."
    unused = [k for k in saved if prefix + k not in named]
    assert all(k.startswith(("pooler.", "head.")) for k in unused), unused  # ViT's pooler, SigLIP's probe
    for key in saved:
        if key not in unused:
            assert torch.equal(named[prefix + key], saved[key]), key
    assert loaded.reinitialized and all(named[n].shape[0] == 3 for n in loaded.reinitialized)
    report = loaded.describe()
    assert f"head: new; {tmp_path / 'body'} is a backbone-only checkpoint ({body_name})" in report
    assert "no classification head -> 3 target labels" in report
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(pixel_values=pixels).logits.shape == (2, 3)
