"""Mixup/CutMix targets, label smoothing, drop path, EMA and early stopping, on timm and transformers models."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hf_finetune import DataArguments, FinetuneTrainingArguments, ModelArguments, finetune
from hf_finetune.errors import ConfigError
from hf_finetune.models.drop_path import drop_path_modules
from hf_finetune.models.loading import load_model_for_labels
from hf_finetune.run.train import build_trainer
from hf_finetune.training.ema import EMA_WEIGHTS_NAME, WeightEma
from hf_finetune.training.regularization import (
    build_mixup,
    mix_batch,
    mixing_on,
    soft_target_cross_entropy,
)
from hf_finetune.training.trainer import FinetuneTrainer

LABELS = ["a", "b", "c", "d"]


def _args(tmp_path, **extra):
    base = dict(
        output_dir=str(tmp_path / "out"),
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        eval_on_start=False,
        use_cpu=True,
        bf16=False,
    )
    return FinetuneTrainingArguments(**{**base, **extra})


def _constant_images(n: int, side: int = 8) -> torch.Tensor:
    """Image i is the constant i + 1 (so a mixed image tells its mixing weight)."""
    return torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, side, side).clone()


@pytest.mark.parametrize("n", [8, 9])
def test_mixup_targets_are_lam_and_one_minus_lam(tmp_path, n):
    torch.manual_seed(0)
    import numpy as np

    np.random.seed(0)
    mixup = build_mixup(_args(tmp_path, mixup_alpha=1.0), len(LABELS))
    x = _constant_images(n)
    labels = torch.tensor([i % len(LABELS) for i in range(n)])
    mixed, targets = mix_batch(mixup, x, labels)
    assert targets.shape == (n, len(LABELS))
    assert torch.allclose(targets.sum(dim=1), torch.ones(n))
    even = n - n % 2
    # mixed image i = lam * (i + 1) + (1 - lam) * (even - i): recover lam from the pixels of image 0
    lam = (mixed[0, 0, 0, 0].item() - even) / (1 - even)
    assert 0.0 < lam < 1.0
    for i in range(even):
        j = even - 1 - i
        assert mixed[i].unique().item() == pytest.approx(lam * (i + 1) + (1 - lam) * (j + 1), abs=1e-5)
        expected = torch.zeros(len(LABELS))
        expected[labels[i]] += lam
        expected[labels[j]] += 1 - lam
        assert torch.allclose(targets[i], expected, atol=1e-6)
    if n % 2:  # the odd image out keeps its one-hot target and its pixels
        assert targets[-1].tolist() == [1.0, 0.0, 0.0, 0.0]  # label 8 % 4 = 0
        assert mixed[-1].unique().tolist() == [float(n)]


def test_cutmix_targets_equal_the_pasted_area(tmp_path):
    import numpy as np

    np.random.seed(2)  # a box of 0.47 of the image (seed 1 draws an empty box: lam corrected to 1)
    mixup = build_mixup(_args(tmp_path, cutmix_alpha=1.0, label_smoothing_factor=0.1), len(LABELS))
    x = torch.zeros(4, 3, 16, 16)
    x[2:] = 1.0  # images 2 and 3 are ones: the box they paste into images 1 and 0 shows
    labels = torch.tensor([0, 1, 2, 3])
    mixed, targets = mix_batch(mixup, x, labels)
    pasted = mixed[0, 0].mean().item()  # the fraction of image 0 taken from image 3
    assert 0.0 < pasted < 1.0
    smoothing, k = 0.1, len(LABELS)
    off = smoothing / k
    # timm's target: lam * smoothed one-hot(own) + (1 - lam) * smoothed one-hot(partner), lam = 1 - pasted area
    assert targets[0, 0].item() == pytest.approx(
        (1 - pasted) * (1 - smoothing + off) + pasted * off, abs=1e-6
    )
    assert targets[0, 3].item() == pytest.approx(
        pasted * (1 - smoothing + off) + (1 - pasted) * off, abs=1e-6
    )
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))


def test_mixing_stops_at_mixup_off_epoch(tiny_hf_checkpoint, tmp_path):
    assert mixing_on(2, 1.999) and not mixing_on(2, 2.0) and mixing_on(0, 50.0)
    model = load_model_for_labels(str(tiny_hf_checkpoint), LABELS).model
    trainer = FinetuneTrainer(model=model, args=_args(tmp_path, mixup_alpha=1.0, mixup_off_epoch=1))
    trainer.mixup = build_mixup(trainer.args, len(LABELS))
    seen = []
    model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["pixel_values"].clone()), with_kwargs=True
    )
    x = torch.randn(6, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    model.train()
    trainer.state.epoch = 0.5  # epoch 0: mixed
    trainer.compute_loss(model, {"pixel_values": x.clone(), "labels": labels})
    assert (seen[-1] - x).abs().max() > 1e-3
    trainer.state.epoch = 1.0  # epoch 1 = mixup_off_epoch: not mixed, the model's own cross-entropy
    loss = trainer.compute_loss(model, {"pixel_values": x.clone(), "labels": labels})
    assert torch.equal(seen[-1], x)
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


@pytest.mark.parametrize("checkpoint", ["tiny_hf_checkpoint", "tiny_timm_checkpoint"])
@pytest.mark.parametrize("mixup_alpha", [0.0, 1.0])
def test_label_smoothing_loss_equals_the_formula(checkpoint, mixup_alpha, request, tmp_path):
    """label_smoothing_factor alone goes through transformers' LabelSmoother; with mixup on it is folded into
    Mixup's targets and our soft-target loss: in evaluation (no mixing) both equal the smoothed formula."""
    eps = 0.2
    model = load_model_for_labels(str(request.getfixturevalue(checkpoint)), LABELS).model.eval()
    args = _args(tmp_path, label_smoothing_factor=eps, mixup_alpha=mixup_alpha)
    trainer = FinetuneTrainer(model=model, args=args)
    trainer.mixup = build_mixup(args, len(LABELS))
    torch.manual_seed(0)
    with torch.no_grad():  # timm starts its new head at zero (uniform predictions): give it random rows
        for name, param in model.named_parameters():
            if "classifier" in name:
                param.normal_(0, 1)
    x, labels = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 3, 1])
    with torch.no_grad():
        loss = trainer.compute_loss(model, {"pixel_values": x, "labels": labels.clone()})
        log_p = torch.log_softmax(model(pixel_values=x).logits.float(), dim=-1)
    expected = ((1 - eps) * -log_p.gather(1, labels[:, None]).squeeze(1) + eps * -log_p.mean(dim=1)).mean()
    unsmoothed = torch.nn.functional.nll_loss(log_p, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(loss.item() - unsmoothed.item()) > 1e-4


def test_soft_target_loss_with_weights_equals_weighted_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(7, 3), torch.tensor([0, 0, 0, 1, 1, 2, 2])
    weights = torch.tensor([0.5, 2.0, 3.0])
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    ours = soft_target_cross_entropy(logits, one_hot, weights)
    assert ours.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels, weight=weights).item(), rel=1e-6
    )
    assert soft_target_cross_entropy(logits, one_hot).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6
    )


def test_drop_path_rate_reaches_the_modules(tiny_timm_checkpoint, tiny_hf_checkpoint, tmp_path):
    timm_model = load_model_for_labels(str(tiny_timm_checkpoint), LABELS, drop_path_rate=0.2).model
    rates = drop_path_modules(timm_model)
    # timm's EfficientNet: block i of 5 gets 0.2 * i / 5 (block 0: none)
    assert sorted(round(r, 6) for r in rates.values()) == [0.04, 0.08, 0.12, 0.16]
    assert drop_path_modules(load_model_for_labels(str(tiny_timm_checkpoint), LABELS).model) == {}

    from transformers import ConvNextConfig, ConvNextForImageClassification

    path = tmp_path / "convnext"
    config = ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=2, image_size=32)
    ConvNextForImageClassification(config).save_pretrained(path)
    hf_model = load_model_for_labels(str(path), LABELS, drop_path_rate=0.3).model
    rates = drop_path_modules(hf_model)
    # ConvNeXt: linearly 0 for the first block (an Identity), 0.3 for the last
    assert sorted(round(r, 6) for r in rates.values()) == [0.3]

    with pytest.raises(ConfigError, match="drop_path_rate: got 0.1; .*has no drop path"):
        load_model_for_labels(str(tiny_hf_checkpoint), LABELS, drop_path_rate=0.1)


def test_ema_state_round_trips_through_a_checkpoint_folder(tiny_hf_checkpoint, tmp_path):
    model = load_model_for_labels(str(tiny_hf_checkpoint), LABELS).model
    ema = WeightEma(model, 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, step=5)  # decay 0.9: the average moved a tenth of the way
    weight = "resnet.embedder.embedder.convolution.weight"
    moved = ema.state_dict()[weight].clone()
    assert torch.allclose(moved, model.state_dict()[weight] - 0.9, atol=1e-5)
    ema.save(str(tmp_path))
    fresh = WeightEma(model, 0.9)
    assert fresh.load_or_reset(str(tmp_path), model)
    assert torch.equal(fresh.state_dict()[weight], moved)
    live = model.state_dict()[weight].clone()
    with fresh.swapped_in(model):
        assert torch.equal(model.state_dict()[weight], moved)
    assert torch.equal(model.state_dict()[weight], live)


def _run(checkpoint, data_dir, out, **training):
    settings = dict(
        num_train_epochs=3,
        per_device_train_batch_size=12,
        learning_rate=3e-3,
        seed=3,
        logging_steps=1,
        save_total_limit=5,
        use_cpu=True,
        bf16=False,
    )
    settings.update(training)
    return finetune(
        ModelArguments(model_name_or_path=str(checkpoint)),
        DataArguments(train_dir=str(data_dir), image_size=32),
        FinetuneTrainingArguments(output_dir=str(out), **settings),
    )


@pytest.mark.parametrize(
    ("checkpoint", "ema_save"), [("tiny_hf_checkpoint", True), ("tiny_timm_checkpoint", False)]
)
def test_ema_weights_are_saved_when_ema_save(checkpoint, ema_save, request, tiny_image_folder, tmp_path):
    out = tmp_path / "out"
    result = _run(
        request.getfixturevalue(checkpoint), tiny_image_folder, out, ema_decay=0.6, ema_save=ema_save
    )
    best = result.best_checkpoint
    assert best is not None

    def bare(tensors):  # a timm model's final save is in timm's own layout (no TimmWrapper prefix)
        return {k.removeprefix("timm_model."): v for k, v in tensors.items()}

    ema_raw = load_file(f"{best}/{EMA_WEIGHTS_NAME}")
    floats_raw = [k for k, v in ema_raw.items() if v.is_floating_point()]
    ema = bare(ema_raw)
    live = bare(load_file(f"{best}/model.safetensors"))
    saved = bare(load_file(str(out / "model.safetensors")))
    floats = [k for k, v in live.items() if v.is_floating_point()]
    assert set(saved) == set(ema) == set(live)
    assert max((ema[k] - live[k]).abs().max().item() for k in floats) > 1e-4  # the average is not the weights
    expected = ema if ema_save else live
    assert all(torch.equal(saved[k], expected[k]) for k in saved)  # bit for bit
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert sum("eval_live_accuracy" in entry for entry in history) == 4  # 3 epochs + the final evaluation
    assert result.class_balance.startswith("class_balance: none (auto: largest/smallest training class 12/12")

    # resuming from the checkpoint loads its EMA state into the new trainer's average
    trainer, _, _ = build_trainer(
        ModelArguments(model_name_or_path=str(request.getfixturevalue(checkpoint))),
        DataArguments(train_dir=str(tiny_image_folder), image_size=32),
        FinetuneTrainingArguments(
            output_dir=str(tmp_path / "again"), ema_decay=0.6, use_cpu=True, bf16=False
        ),
    )
    assert not torch.equal(trainer.ema.state_dict()[floats_raw[0]], ema_raw[floats_raw[0]])
    trainer._load_from_checkpoint(best)
    assert all(torch.equal(v, ema_raw[k]) for k, v in trainer.ema.state_dict().items())


def test_early_stopping_stops_when_the_metric_cannot_improve(tiny_hf_checkpoint, tiny_image_folder, tmp_path):
    # lr 1e-12 and frozen BatchNorm statistics: the accuracy stays the same evaluation after evaluation
    result = _run(
        tiny_hf_checkpoint,
        tiny_image_folder,
        tmp_path / "out",
        num_train_epochs=6,
        learning_rate=1e-12,
        batchnorm="freeze",
        early_stopping_patience=1,
    )
    # epoch 1 sets the best (the epoch-0 evaluation is not a best-model candidate); epoch 2 does not improve
    assert result.train_metrics["epoch"] == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="load_best_model_at_end"):
        FinetuneTrainingArguments(
            output_dir=str(tmp_path), early_stopping_patience=2, load_best_model_at_end=False
        )
    with pytest.raises(ConfigError, match="eval_strategy"):
        FinetuneTrainingArguments(
            output_dir=str(tmp_path), early_stopping_patience=2, eval_strategy="no", save_strategy="no"
        )
