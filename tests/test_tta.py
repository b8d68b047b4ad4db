"""Tests of test-time augmentation (hf_finetune.inference.tta) in predict and eval: a flip-invariant model scores
the same with hflip, an asymmetric one scores the mean of the two passes, multicrop runs 5 passes on the centre
and corner crops, and eval's logits are those of the averaged probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SOURCE_LABELS, make_image_folder
from PIL import Image
from transformers import ConvNextImageProcessor, PretrainedConfig

from hf_finetune.config.arguments import DataArguments
from hf_finetune.data.image_check import open_image
from hf_finetune.data.transforms import build_transforms, data_config_from_processor
from hf_finetune.errors import ConfigError
from hf_finetune.inference import evaluation, predict
from hf_finetune.inference.evaluation import evaluate_model, predict_split
from hf_finetune.inference.predict import predict_images
from hf_finetune.inference.tta import (
    FALLBACK_CROP_PCT,
    MultiCrop,
    average_probabilities,
    check_tta,
    num_views,
    probabilities_to_logits,
)

PROCESSOR = ConvNextImageProcessor(
    size={"shortest_edge": 32}, crop_pct=0.875, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
)


class ColumnModel(torch.nn.Module):
    """logits[k] = sum over columns x of w[k, x] * (mean of column x over channels and rows) + b[k]: with
    ``symmetric`` weights (w[k, x] = w[k, W-1-x]) its output does not change when the image is mirrored."""

    def __init__(
        self, labels: list[str], width: int = 32, symmetric: bool = False, multi_label: bool = False
    ):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(len(labels), width, generator=generator)
        if symmetric:
            weight = (weight + weight.flip(-1)) / 2
        self.weight = torch.nn.Parameter(weight)
        self.bias = torch.nn.Parameter(torch.linspace(-1.0, 1.0, len(labels)))
        problem_type = "multi_label_classification" if multi_label else "single_label_classification"
        self.config = PretrainedConfig(
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            problem_type=problem_type,
        )
        self.batch_sizes: list[int] = []

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        self.batch_sizes.append(int(pixel_values.shape[0]))
        columns = pixel_values.double().mean(dim=(1, 2))  # (B, W)
        return {"logits": (columns @ self.weight.double().T + self.bias.double()).float()}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """8 images in two classes with a left-right asymmetric gradient, so mirroring changes the column means."""
    root = tmp_path_factory.mktemp("tta_images")
    rng = np.random.default_rng(5)
    for name in ("cat", "dog"):
        (root / name).mkdir()
        for i in range(4):
            ramp = np.linspace(0, 255, 40)[None, :, None] * (1 if name == "cat" else -1) % 256
            pixels = np.clip(ramp + rng.normal(0, 30, size=(36, 40, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _use_model(monkeypatch, model: ColumnModel) -> ColumnModel:
    model.eval()
    monkeypatch.setattr(predict, "load_for_inference", lambda source, device=None: (model, PROCESSOR))
    monkeypatch.setattr(evaluation, "load_for_inference", lambda source, device=None: (model, PROCESSOR))
    return model


def _scores(records: list[dict]) -> list[dict[str, float]]:
    return [{p["label"]: p["score"] for p in record["predictions"]} for record in records]


def _softmax(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), dim=-1).numpy()


def test_check_tta_and_views():
    assert [num_views(mode) for mode in ("none", "hflip", "multicrop")] == [1, 2, 5]
    with pytest.raises(ConfigError, match="tta: expected one of none, hflip, multicrop, got 'vflip'"):
        check_tta("vflip")


def test_flip_invariant_model_scores_the_same_with_hflip(monkeypatch, images):
    model = _use_model(monkeypatch, ColumnModel(["cat", "dog"], symmetric=True))
    plain = _scores(predict_images("fake", [images], top_k=2, progress=False))
    flipped = _scores(predict_images("fake", [images], top_k=2, progress=False, tta="hflip"))
    assert len(plain) == 8
    for one, two in zip(plain, flipped, strict=True):
        assert one == pytest.approx(two, abs=1e-6)
    assert sum(model.batch_sizes[-1:]) == 16  # 8 images x 2 views in one batch


def test_hflip_scores_are_the_mean_of_the_two_passes(monkeypatch, images):
    model = _use_model(monkeypatch, ColumnModel(["cat", "dog", "emu"]))
    records = predict_images("fake", [images], top_k=3, batch_size=4, progress=False, tta="hflip")
    plain = _scores(predict_images("fake", [images], top_k=3, progress=False))
    largest_change = 0.0
    for record, before in zip(records, plain, strict=True):
        pixels = PROCESSOR(images=open_image(record["path"]), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            both = torch.cat([model(pixels)["logits"], model(pixels.flip(-1))["logits"]])
        expected = _softmax(both).mean(axis=0)
        got = {p["label"]: p["score"] for p in record["predictions"]}
        assert [got[name] for name in ("cat", "dog", "emu")] == pytest.approx(expected.tolist(), abs=1e-6)
        largest_change = max(largest_change, max(abs(got[k] - before[k]) for k in got))
    assert largest_change > 0.05  # the mirror really changes this model's output


def test_multicrop_views_are_centre_and_corner_crops():
    config = data_config_from_processor(PROCESSOR)
    crops = MultiCrop(config)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    views = crops(image)
    assert views.shape == (5, 3, 32, 32)
    _, eval_transform = build_transforms(config, augmentation="none")
    assert torch.equal(views[0], eval_transform(image))  # the centre view is eval's own input
    resized = crops.finish(crops.resize(image))  # the whole resized image, normalised
    assert resized.shape[-2:] == (36, 50)  # short side 32 / 0.875 = 36, 70 * 36 / 50 = 50.4
    assert torch.equal(views[1], resized[:, :32, :32]) and torch.equal(views[4], resized[:, -32:, -32:])
    assert torch.equal(views[2], resized[:, :32, -32:]) and torch.equal(views[3], resized[:, -32:, :32])


def test_multicrop_without_margin_resizes_larger():
    config = dict(data_config_from_processor(PROCESSOR), crop_pct=1.0)
    image = Image.new("RGB", (40, 40))
    assert MultiCrop(config).finish(MultiCrop(config).resize(image)).shape[-1] == int(32 / FALLBACK_CROP_PCT)


def test_multicrop_predict_runs_five_passes_and_averages(monkeypatch, images):
    model = _use_model(monkeypatch, ColumnModel(["cat", "dog", "emu"]))
    records = predict_images("fake", [images], top_k=3, batch_size=4, progress=False, tta="multicrop")
    assert model.batch_sizes == [20, 20]  # 4 + 4 images, 5 views each
    crops = MultiCrop(data_config_from_processor(PROCESSOR))
    for record in records:
        with torch.no_grad():
            logits = model(crops(open_image(record["path"]).convert("RGB")))["logits"]
        expected = _softmax(logits).mean(axis=0)
        got = {p["label"]: p["score"] for p in record["predictions"]}
        assert [got[name] for name in ("cat", "dog", "emu")] == pytest.approx(expected.tolist(), abs=1e-6)


def test_logits_of_averaged_probabilities_give_them_back():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(4, 2, 5)).astype(np.float32)
    for function in ("softmax", "sigmoid"):
        mean = average_probabilities(logits, function)
        back = probabilities_to_logits(mean, function)
        if function == "softmax":
            again = np.exp(back) / np.exp(back).sum(axis=1, keepdims=True)
        else:
            again = 1 / (1 + np.exp(-back.astype(np.float64)))
        np.testing.assert_allclose(again, mean, atol=1e-6)
    assert np.isfinite(probabilities_to_logits(np.array([[0.0, 1.0]]), "sigmoid")).all()


@pytest.mark.parametrize("multi_label", [False, True])
def test_eval_hflip_logits_are_those_of_the_mean_probability(monkeypatch, images, multi_label):
    model = _use_model(monkeypatch, ColumnModel(["cat", "dog"], multi_label=multi_label))
    data_args = DataArguments(train_dir=str(images), train_val_split=0.5)
    plain = predict_split("fake", data_args, "validation")
    flipped = predict_split("fake", data_args, "validation", tta="hflip")
    assert flipped.rows.tolist() == plain.rows.tolist() and len(plain.rows) == 4
    _, eval_transform = build_transforms(data_config_from_processor(PROCESSOR), augmentation="none")
    for image, logits in zip(flipped.images, flipped.logits, strict=True):
        pixels = eval_transform(Image.open(image["path"]).convert("RGB"))[None]
        with torch.no_grad():
            both = torch.cat([model(pixels)["logits"], model(pixels.flip(-1))["logits"]]).double()
        if multi_label:
            expected = torch.logit(torch.sigmoid(both).mean(dim=0)).numpy()
        else:
            expected = torch.log(torch.softmax(both, dim=-1).mean(dim=0)).numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-5)
    assert np.abs(flipped.logits - plain.logits).max() > 0.05
    if multi_label:
        assert plain.labels.shape == (4, 2) and set(np.unique(plain.labels)) <= {0.0, 1.0}
    report = evaluate_model("fake", data_args, tta="hflip")
    assert report["tta"] == "hflip" and report["num_images"] == 4


def test_cli_refuses_an_unknown_tta(tiny_hf_checkpoint, tmp_path):
    from conftest import run_hf_finetune

    make_image_folder(tmp_path / "imgs", {"a": 1})
    result = run_hf_finetune("predict", tiny_hf_checkpoint, tmp_path / "imgs", "--tta", "vflip")
    assert result.returncode == 2
    assert "invalid choice: 'vflip'" in result.stderr
    assert SOURCE_LABELS[0] not in result.stdout
