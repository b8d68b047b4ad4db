"""Opt-in data-driven head initialisation: rows chosen and weighted from the pretrained model's predictions."""

from __future__ import annotations

import math

import numpy as np
import torch
from conftest import SOURCE_LABELS
from torch import nn

from hf_finetune import DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_finetune.labels.matching import match_labels
from hf_finetune.models.head_init import data_driven_rows
from hf_finetune.models.heads import copy_source_rows
from hf_finetune.run.train import build_trainer


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


# ------------------------------------------------------------------------------------ bias calibration
def test_bias_shift_is_the_penalised_maximum_likelihood():
    from hf_finetune.models.head_init import fit_bias_shift

    torch.manual_seed(0)
    z = torch.randn(300, 4) * 2
    z[:, 1] += 3.0  # a source prior that over-predicts class 1
    y = torch.randint(0, 4, (300,))
    y[y == 3] = 0  # class 3 never occurs: it gets no shift
    d = fit_bias_shift(z, y)
    assert d[3] == 0.0
    assert (
        float(d[1] - (d[0] + d[2]) / 2) < -1.0
    )  # the over-predicted class is pushed down, relative to the others
    # optimality: mean softmax minus label frequency plus the prior's gradient is zero for the present classes
    p = (z.double() + d).softmax(1).mean(0)
    freq = torch.bincount(y, minlength=4).double() / len(y)
    grad = p - freq + d / (4.0 * len(y))
    torch.testing.assert_close(grad[:3], torch.zeros(3, dtype=torch.double), atol=1e-6, rtol=0)
    loss = torch.nn.functional.cross_entropy
    assert float(loss(z.double() + d, y)) < float(loss(z.double(), y)) - 0.1


def test_calibration_moves_only_the_biases(tiny_hf_checkpoint, tiny_image_folder, tmp_path):
    from hf_finetune.data.loading import load_image_dataset
    from hf_finetune.data.transforms import build_transforms, data_config_from_processor
    from hf_finetune.models.head_init import calibrate_head_bias
    from hf_finetune.models.loading import load_model_for_labels

    data = load_image_dataset(DataArguments(train_dir=str(tiny_image_folder), image_size=32), seed=0)
    loaded = load_model_for_labels(str(tiny_hf_checkpoint), data.labels)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    loaded.model.train()
    _, eval_t = build_transforms(data_config_from_processor(loaded.processor, 32))
    result = calibrate_head_bias(loaded.model, data.dataset["train"], eval_t, data.labels, per_class=5)
    assert result is not None and result.images == 15
    after = loaded.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["classifier.1.bias"]
    shift = torch.tensor([result.shift[name] for name in data.labels])
    torch.testing.assert_close(after["classifier.1.bias"] - before["classifier.1.bias"], shift)
    assert result.loss_after < result.loss_before
    assert loaded.model.training  # the train/eval mode the model came in with


def test_calibration_is_on_by_default_and_reported(tiny_hf_checkpoint, tiny_image_folder, tmp_path):
    """cat and dog reuse source rows, so the biases are fitted; the weights stay the source rows bit for bit."""
    from safetensors.torch import load_file

    source = load_file(str(tiny_hf_checkpoint / "model.safetensors"))
    runs = {}
    for on in (True, False):
        _, loaded, _ = build_trainer(
            ModelArguments(model_name_or_path=str(tiny_hf_checkpoint), label_bias_from_data=on),
            DataArguments(train_dir=str(tiny_image_folder), image_size=32),
            FinetuneTrainingArguments(output_dir=str(tmp_path / str(on)), disable_tqdm=True),
        )
        runs[on] = loaded
        weight = loaded.model.classifier[1].weight.detach()
        for t, name in ((0, "cat"), (1, "dog")):
            assert torch.equal(weight[t], source["classifier.1.weight"][SOURCE_LABELS.index(name)])
    on, off = runs[True], runs[False]
    report = on.mapping.to_dict()["bias_calibration"]
    assert report["images"] == 36 and set(report["shift"]) == {"cat", "dog", "zebra"}
    assert report["loss_after"] < report["loss_before"]
    assert "bias_calibration" not in off.mapping.to_dict()
    # the uncalibrated run keeps the source bias of reused rows; the calibrated one adds exactly the shift
    cat = SOURCE_LABELS.index("cat")
    assert torch.equal(off.model.classifier[1].bias[0].detach(), source["classifier.1.bias"][cat])
    torch.testing.assert_close(
        on.model.classifier[1].bias[0].detach(),
        source["classifier.1.bias"][cat] + report["shift"]["cat"],
    )
    assert "biases fitted on 36 training images" in on.mapping.table()
    # the JSON round trip keeps it
    from hf_finetune.labels.report import LabelMappingReport

    assert LabelMappingReport.from_dict(on.mapping.to_dict()).bias_calibration == report


def test_a_fresh_head_is_not_calibrated(tiny_hf_checkpoint, tiny_image_folder, tmp_path):
    _, loaded, _ = build_trainer(
        ModelArguments(model_name_or_path=str(tiny_hf_checkpoint), label_mapping="none"),
        DataArguments(train_dir=str(tiny_image_folder), image_size=32),
        FinetuneTrainingArguments(output_dir=str(tmp_path / "o"), disable_tqdm=True),
    )
    assert loaded.mapping is None or loaded.mapping.bias_calibration is None
