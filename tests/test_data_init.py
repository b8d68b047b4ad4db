"""Opt-in data-driven head initialisation: rows chosen and weighted from the pretrained model's predictions."""

from __future__ import annotations

import math

import numpy as np
import torch
from conftest import SOURCE_LABELS
from torch import nn

from hf_finetune import DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_finetune.data_init import data_driven_rows
from hf_finetune.heads import copy_source_rows
from hf_finetune.labels import match_labels
from hf_finetune.train import build_trainer


def test_weighted_row_is_the_logsumexp_expansion():
    torch.manual_seed(0)
    source = nn.Linear(6, 4)
    head = {"weight": source.weight.detach().clone(), "bias": source.bias.detach().clone()}
    a = [0.7, 0.2, 0.1]
    target = nn.Linear(6, 1)
    copy_source_rows(target, head, [(0, [0, 2, 3], a)])
    x = torch.randn(50, 6)
    with torch.no_grad():
        z = source(x)[:, [0, 2, 3]]
        expected = (z * torch.tensor(a)).sum(1) - sum(p * math.log(p) for p in a)
        torch.testing.assert_close(target(x)[:, 0], expected, rtol=1e-5, atol=1e-5)
        # never above the exact log-sum-exp (Gibbs' inequality), equal where the softmax of z equals a
        assert bool((target(x)[:, 0] <= torch.logsumexp(z, 1) + 1e-5).all())
    # uniform weights reproduce the mean + log n rule
    uniform, plain = nn.Linear(6, 1), nn.Linear(6, 1)
    copy_source_rows(uniform, head, [(0, [1, 2], [0.5, 0.5])])
    copy_source_rows(plain, head, [(0, [1, 2])])
    torch.testing.assert_close(uniform.weight, plain.weight)
    torch.testing.assert_close(uniform.bias, plain.bias)


def test_unmatched_targets_get_the_rows_the_model_predicts():
    report = match_labels(["cat", "zebra"], SOURCE_LABELS)
    assert [m.kind for m in report.matches] == ["exact", "none"]
    probs = {0: np.full(7, 1 / 7), 1: np.array([0.05, 0.6, 0.05, 0.05, 0.2, 0.03, 0.02])}
    rows = data_driven_rows(report, probs, SOURCE_LABELS, mass=0.75, max_rows=3)
    zebra = report.matches[1]
    assert zebra.kind == "data" and zebra.source_indices == [1, 4]
    assert len(rows) == 1 and rows[0][:2] == (1, [1, 4])
    np.testing.assert_allclose(rows[0][2], [0.75, 0.25])
    assert "0.80" in zebra.note  # the probability mass held by the chosen rows


def test_label_init_from_data_end_to_end(tiny_hf_checkpoint, tiny_image_folder, tmp_path):
    trainer, loaded, _ = build_trainer(
        ModelArguments(model_name_or_path=str(tiny_hf_checkpoint), label_init_from_data=True),
        DataArguments(train_dir=str(tiny_image_folder), image_size=32),
        FinetuneTrainingArguments(output_dir=str(tmp_path / "o"), disable_tqdm=True),
    )
    kinds = {m.target: m.kind for m in loaded.mapping.matches}
    assert kinds == {"cat": "exact", "dog": "exact", "zebra": "data"}
    zebra = loaded.mapping.matches[2]
    assert 1 <= len(zebra.source_indices) <= 10
    weight = loaded.model.classifier[1].weight
    source_w = loaded.source_head["classifier.1.weight"]
    assert torch.equal(weight[0], source_w[SOURCE_LABELS.index("cat")])
    assert not torch.equal(weight[2], torch.zeros_like(weight[2]))
    assert torch.isfinite(torch.tensor(trainer.evaluate()["eval_loss"]))
