"""class_balance: the auto choice, the loss weights, the balanced sampler, on a skewed 40/10/5 image folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image_folder

from hf_finetune import DataArguments, FinetuneTrainingArguments, ModelArguments, finetune
from hf_finetune.run.train import build_trainer
from hf_finetune.training.imbalance import (
    BalancedSampler,
    class_weights,
    decide_class_balance,
    sample_weights,
)

COUNTS = {"many": 40, "some": 10, "few": 5}


@pytest.fixture(scope="module")
def skewed_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("skewed")
    make_image_folder(root / "train", COUNTS, size=(16, 16), seed=3)
    make_image_folder(root / "val", {"many": 3, "some": 3, "few": 3}, size=(16, 16), seed=4)
    return root


def test_weights_follow_the_formula():
    weights = class_weights([40, 10, 5])
    assert weights.tolist() == pytest.approx([55 / 120, 55 / 30, 55 / 15])
    # k counts the classes that have images
    assert class_weights([6, 0, 2]).tolist() == pytest.approx([8 / 12, 0.0, 8 / 4])


@pytest.mark.parametrize(
    ("counts", "mode"), [([40, 10, 5], "weighted_loss"), ([30, 10], "none"), ([31, 10], "weighted_loss")]
)
def test_auto_picks_the_weighted_loss_only_above_3x(counts, mode):
    choice = decide_class_balance("auto", counts)
    assert choice.mode == mode
    assert choice.ratio == pytest.approx(max(counts) / min(counts))
    assert f"{max(counts)}/{min(counts)} = {max(counts) / min(counts):.2f}" in choice.describe()
    assert decide_class_balance("sampler", counts).mode == "sampler"


def test_balanced_sampler_draws_classes_evenly():
    labels = np.repeat([0, 1, 2], [40, 10, 5])
    sampler = BalancedSampler(sample_weights(labels, 3), seed=0)
    drawn = []
    for epoch in range(200):  # 200 epochs x 55 draws
        sampler.set_epoch(epoch)
        drawn.extend(labels[list(sampler)])
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.abs(share - 1 / 3).max() < 0.02  # the images alone: 0.73 / 0.18 / 0.09
    sampler.set_epoch(7)
    first = list(sampler)
    sampler.set_epoch(7)
    assert list(sampler) == first  # seed + epoch decide the draws (a resumed run draws the same)


def _args(folder, out, **training):
    settings = dict(
        per_device_train_batch_size=7,
        num_train_epochs=1,
        seed=0,
        use_cpu=True,
        bf16=False,
        logging_steps=1,
    )
    settings.update(training)
    return (
        DataArguments(train_dir=str(folder), image_size=32),
        FinetuneTrainingArguments(output_dir=str(out), **settings),
    )


def test_trainer_gets_weighted_loss_or_sampler(tiny_hf_checkpoint, skewed_folder, tmp_path):
    model_args = ModelArguments(model_name_or_path=str(tiny_hf_checkpoint))
    data_args, training_args = _args(skewed_folder, tmp_path / "a")
    trainer, _, data = build_trainer(model_args, data_args, training_args)
    labels = data.labels  # sorted class names: few, many, some
    expected = class_weights([COUNTS[name] for name in labels])
    assert trainer.class_balance.mode == "weighted_loss" and trainer.class_balance.ratio == 8.0
    assert torch.equal(trainer.class_weights, expected)
    model = trainer.model.eval()
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 1, 1, 2, 2])
    with torch.no_grad():
        loss = trainer.compute_loss(model, {"pixel_values": x, "labels": y})
        logits = model(pixel_values=x).logits
    assert loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y, weight=expected).item(), rel=1e-5
    )

    data_args, training_args = _args(skewed_folder, tmp_path / "b", class_balance="sampler")
    trainer, _, data = build_trainer(model_args, data_args, training_args)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, BalancedSampler) and trainer.class_weights is None
    train_labels = np.asarray(data.dataset["train"]["label"])
    drawn = []
    for epoch in range(40):
        sampler.set_epoch(epoch)
        drawn.extend(train_labels[list(sampler)])
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.abs(share - 1 / 3).max() < 0.04


def test_sampler_with_mixup_cutmix_and_drop_path_trains_a_timm_model(
    tiny_timm_checkpoint, skewed_folder, tmp_path
):
    """The whole path on a timm model, with an odd last batch (55 images = 6 x 8 + 7) mixed but for one image."""
    data_args, training_args = _args(
        skewed_folder,
        tmp_path / "out",
        class_balance="sampler",
        mixup_alpha=0.4,
        cutmix_alpha=1.0,
        label_smoothing_factor=0.1,
        drop_path_rate=0.1,
        num_train_epochs=2,
        mixup_off_epoch=1,
        per_device_train_batch_size=8,
    )
    result = finetune(ModelArguments(model_name_or_path=str(tiny_timm_checkpoint)), data_args, training_args)
    assert result.class_balance.startswith(
        "class_balance: sampler (largest/smallest training class 40/5 = 8.00"
    )
    assert np.isfinite(result.metrics_after["eval_loss"])
    assert result.train_metrics["epoch"] == pytest.approx(2.0)
