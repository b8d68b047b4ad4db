"""Freezing the bottom of the body (found from the structure) and the BatchNorm policy."""

from __future__ import annotations

import copy
import glob

import pytest
import torch
from conftest import SHARED_DATA, SHARED_MODELS, requires_shared
from torch import nn

from hf_finetune.models.freezing import body_layout, configure_batchnorm, freeze_parameters
from hf_finetune.models.heads import head_parameter_names
from hf_finetune.models.loading import load_model_for_labels


@pytest.fixture(params=["tiny_hf_checkpoint", "tiny_timm_checkpoint"])
def model(request):
    return load_model_for_labels(str(request.getfixturevalue(request.param)), ["a", "b", "c"]).model


def test_body_layout_finds_ordered_blocks(model):
    layout = body_layout(model)
    assert len(layout.blocks) >= 2
    head = set(head_parameter_names(model))
    names = [n for block in layout.blocks for n in block[1]]
    assert not head & set(names) and not head & set(layout.stem)
    order = [n for n, _ in model.named_parameters()]
    firsts = [order.index(block[1][0]) for block in layout.blocks]
    assert firsts == sorted(firsts)
    assert layout.stem and all(order.index(n) < firsts[0] for n in layout.stem)


def test_freeze_first_block_and_stem(model):
    layout = body_layout(model)
    report = freeze_parameters(model, freeze_layers=1)
    named = dict(model.named_parameters())
    expected = set(layout.stem) | set(layout.blocks[0][1])
    assert set(report.frozen) == expected
    assert all(not named[n].requires_grad for n in expected)
    assert all(named[n].requires_grad for n in head_parameter_names(model))
    assert all(named[n].requires_grad for n in layout.blocks[1][1])
    assert report.frozen_blocks == [layout.blocks[0][0]]


def test_freeze_whole_body_and_patterns(model):
    report = freeze_parameters(model, freeze_layers=-1)
    assert sorted(report.trainable) == sorted(head_parameter_names(model))
    other = copy.deepcopy(model)
    for p in other.parameters():
        p.requires_grad_(True)
    pattern_report = freeze_parameters(other, patterns=[r"\.bias$"])
    head = set(head_parameter_names(other))
    assert pattern_report.frozen and all(n.endswith(".bias") for n in pattern_report.frozen)
    assert not head & set(pattern_report.frozen)


def test_batchnorm_freeze_keeps_running_statistics(model):
    configure_batchnorm(model, "freeze")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms
    before = [m.running_mean.clone() for m in norms]
    model.train()
    model(pixel_values=torch.randn(4, 3, 32, 32) * 3 + 1)
    assert all(not m.training for m in norms)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms, strict=True))


def test_batchnorm_train_converts_tensorflow_momentum():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.997), nn.BatchNorm2d(4, momentum=0.1)
    )
    changes = configure_batchnorm(net, "train")
    assert net[1].momentum == pytest.approx(0.003) and net[2].momentum == 0.1
    assert len(changes) == 1 and "0.997" in changes[0]
    assert configure_batchnorm(net, "train") == []  # converted once


@requires_shared
def test_mobilenet_momentum_trap_on_real_weights():
    """transformers builds MobileNetV2's BatchNorm with momentum 0.997: in PyTorch's convention two
    training-mode batches replace the pretrained statistics. Measured on real hotdog photos: the untouched
    ImageNet model picks the `hotdog` row for hotdogs (and not for the rest) on 68% of validation images;
    after two training-mode batches with the momentum as loaded it drops and the 1001-way top-1 changes on
    many images; with the momentum corrected (`batchnorm: train`) both stay, and `auto` keeps them frozen."""
    from transformers import AutoModelForImageClassification

    from hf_finetune.data.image_check import load_image
    from hf_finetune.data.transforms import build_transforms, data_config_from_processor
    from hf_finetune.models.loading import load_image_processor

    path = str(SHARED_MODELS / "hf-mobilenet_v2_1.0_224")
    _, eval_t = build_transforms(data_config_from_processor(load_image_processor(path)))
    val = sorted(glob.glob(str(SHARED_DATA / "hotdog" / "val" / "*" / "*.jpg")))
    train = sorted(glob.glob(str(SHARED_DATA / "hotdog" / "train" / "*" / "*.jpg")))[::4][:50]
    xv = torch.stack([eval_t(load_image(p)) for p in val])
    is_hotdog = torch.tensor(["/val/hotdog/" in p for p in val])
    xt = torch.stack([eval_t(load_image(p)) for p in train])  # deterministic: no augmentation

    def predict(m):
        m.eval()
        with torch.no_grad():
            return m(pixel_values=xv).logits.argmax(-1)

    def zero_shot(m):
        top = predict(m) == 935  # ImageNet class 934 + the background row
        return (top == is_hotdog).float().mean().item()

    print("zero-shot hotdog accuracy", end=" ")

    base = AutoModelForImageClassification.from_pretrained(path)
    untouched = zero_shot(base)
    reference = predict(base)
    results, agreement = {}, {}
    for mode in ("as loaded", "train", "auto"):
        m = copy.deepcopy(base)
        if mode != "as loaded":
            configure_batchnorm(m, mode)
        m.train()
        with torch.no_grad():
            for i in range(0, len(xt), 25):
                m(pixel_values=xt[i : i + 25])
        results[mode] = zero_shot(m)
        agreement[mode] = (predict(m) == reference).float().mean().item()
    print(
        f"untouched {untouched:.2f}, as loaded {results['as loaded']:.2f}, corrected {results['train']:.2f}, "
        f"auto (frozen) {results['auto']:.2f}; "
        f"top-1 agreement with the untouched model {agreement}"
    )
    assert untouched >= 0.65
    assert results["train"] >= untouched - 0.02 and agreement["train"] >= 0.95
    assert results["auto"] == untouched and agreement["auto"] == 1.0  # pretrained statistics: frozen
    assert results["as loaded"] < untouched and agreement["as loaded"] <= 0.8


def test_batchnorm_auto_freezes_pretrained_statistics():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.997))
    net[1].running_mean.fill_(0.5)  # statistics a checkpoint brought
    changes = configure_batchnorm(net, "auto")  # no batch size: the policy does not depend on it
    assert any("kept (frozen)" in c for c in changes)
    net.train()
    before = net[1].running_mean.clone()
    net(torch.randn(2, 3, 8, 8) + 5)
    assert not net[1].training and torch.equal(before, net[1].running_mean)
    trained = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    configure_batchnorm(trained, "train")
    trained.train()
    trained(torch.randn(2, 3, 8, 8) + 5)
    assert trained[1].training and not torch.equal(trained[1].running_mean, torch.zeros(4))
