"""``hf-finetune export --format onnx`` and ``predict --onnx``: the graph's predictions equal PyTorch predict's
(top-1 on every image, probabilities within 1e-4) for transformers and timm models, single- and multi-label, on
tiny random checkpoints and on a real checkpoint with the real hotdog photos; ``predict --onnx`` imports no torch;
the int8 option; bad input is one line and exit 2 with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SHARED_DATA, SHARED_MODELS, SOURCE_LABELS, make_image_folder, requires_shared

pytest.importorskip("onnxruntime", reason="onnxruntime cannot be imported: pip install 'hf-finetune[onnx]'")

from hf_finetune.cli import commands as cli  # noqa: E402
from hf_finetune.export.onnx_export import export_onnx  # noqa: E402
from hf_finetune.export.onnx_predict import EXPORT_CONFIG, predict_onnx  # noqa: E402
from hf_finetune.export.resize import torchvision_resize  # noqa: E402
from hf_finetune.inference.predict import predict_images  # noqa: E402

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """7 photos-to-be of odd sizes (odd crop margins: the crop offset's rounding matters)."""
    root = tmp_path_factory.mktemp("export_images")
    make_image_folder(root / "a", {"x": 4}, size=(41, 29), seed=3)
    make_image_folder(root / "b", {"y": 3}, size=(30, 47), seed=4, ext="jpg")
    return root


@pytest.fixture(scope="module")
def hf_export(tiny_hf_checkpoint) -> Path:
    return export_onnx(tiny_hf_checkpoint)  # the default place: MODEL_DIR/onnx


def _max_diff(onnx_records: list[dict], torch_records: list[dict]) -> float:
    """Top-1 equal on every image (asserted); the largest probability difference over every label."""
    assert [r["path"] for r in onnx_records] == [r["path"] for r in torch_records]
    assert len(onnx_records) > 0
    worst = 0.0
    for got, expected in zip(onnx_records, torch_records, strict=True):
        assert got["predictions"][0]["label"] == expected["predictions"][0]["label"], got["path"]
        assert got.get("labels") == expected.get("labels")
        scores = {p["label"]: p["score"] for p in got["predictions"]}
        assert set(scores) == {p["label"] for p in expected["predictions"]}
        worst = max(worst, max(abs(scores[p["label"]] - p["score"]) for p in expected["predictions"]))
    return worst


def test_transformers_export_matches_predict_at_any_batch_size(hf_export, tiny_hf_checkpoint, images):
    assert hf_export == tiny_hf_checkpoint / "onnx"
    config = json.loads((hf_export / EXPORT_CONFIG).read_text())
    assert config["labels"] == SOURCE_LABELS
    assert config["problem_type"] is None and config["scores"] == "softmax" and "thresholds" not in config
    assert config["preprocessing"]["crop"] == {"height": 32, "width": 32}
    assert config["preprocessing"]["resize"] == {"shortest_edge": 36}  # ConvNeXt's 32 / crop_pct 0.875
    assert (hf_export / "preprocessor_config.json").is_file() and (hf_export / "config.json").is_file()
    expected = predict_images(tiny_hf_checkpoint, [images], top_k=7, progress=False, device="cpu")
    one = predict_onnx(hf_export, [images], top_k=7, batch_size=1, progress=False)
    five = predict_onnx(hf_export, [images], top_k=7, batch_size=5, progress=False)  # batches of 5 and 2
    assert _max_diff(one, expected) < TOLERANCE
    assert one == five  # the batch axis is dynamic and changes nothing


def test_timm_export_matches_predict(tiny_timm_checkpoint, images, tmp_path):
    out = export_onnx(tiny_timm_checkpoint, tmp_path / "timm_onnx")
    config = json.loads((out / EXPORT_CONFIG).read_text())
    assert config["labels"] == SOURCE_LABELS
    assert config["preprocessing"]["resize_backend"] == "pil"  # timm's transforms resize PIL images
    expected = predict_images(tiny_timm_checkpoint, [images], top_k=3, progress=False, device="cpu")
    assert _max_diff(predict_onnx(out, [images], top_k=3, progress=False), expected) < TOLERANCE


def test_multi_label_export_keeps_problem_type_and_thresholds(tiny_hf_checkpoint, images, tmp_path):
    import torch
    from transformers import AutoImageProcessor, ResNetForImageClassification

    model = ResNetForImageClassification.from_pretrained(tiny_hf_checkpoint)
    with torch.no_grad():  # probabilities near sigmoid(bias): some classes above their threshold, some below
        model.classifier[-1].weight.mul_(1e-3)
        model.classifier[-1].bias.copy_(torch.tensor([3.0, -3.0, 0.2, -0.2, 2.0, -2.0, 0.5]))
    model.config.problem_type = "multi_label_classification"
    model.config.label_thresholds = {"tench": 0.9, "goldfish": 0.01, "great white shark": 0.6}
    model.save_pretrained(tmp_path / "multi")
    AutoImageProcessor.from_pretrained(tiny_hf_checkpoint).save_pretrained(tmp_path / "multi")
    out = export_onnx(tmp_path / "multi", tmp_path / "multi_onnx")
    config = json.loads((out / EXPORT_CONFIG).read_text())
    assert config["problem_type"] == "multi_label_classification" and config["scores"] == "sigmoid"
    assert config["thresholds"] == [0.9, 0.01, 0.6, 0.5, 0.5, 0.5, 0.5]
    expected = predict_images(tmp_path / "multi", [images], top_k=3, progress=False, device="cpu")
    got = predict_onnx(out, [images], top_k=3, progress=False)
    assert _max_diff(got, expected) < TOLERANCE  # also asserts the labels above threshold are the same
    assert got[0]["labels"] == ["tench", "ant, emmet, pismire", "dog", "goldfish"]


def test_predict_onnx_cli_imports_no_torch(hf_export, images, tmp_path):
    output = tmp_path / "preds.jsonl"
    code = (
        "import sys; from hf_finetune.cli.commands import main; "
        f"rc = main(['predict', {str(hf_export)!r}, {str(images)!r}, '--onnx', '--top-k', '2', "
        f"'--output', {str(output)!r}]); "
        "print(rc, 'torch' in sys.modules, any(m.startswith('transformers.models') for m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-3:] == ["0", "False", "False"]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert records == predict_onnx(hf_export, [images], top_k=2, progress=False)


def test_predict_onnx_prints_what_predict_prints(hf_export, tiny_hf_checkpoint, images, capsys):
    assert (
        cli.main(["predict", str(tiny_hf_checkpoint), str(images), "--onnx", "--top-k", "1"]) == 0
    )  # finds onnx/
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(str(images))]
    assert len(lines) == 7 and all(line.split(": ")[1].rsplit(" ", 1)[0] in SOURCE_LABELS for line in lines)
    assert cli.main(["predict", str(hf_export), str(images), "--onnx", "--tta", "hflip"]) == 2
    assert "--tta" in capsys.readouterr().err


def test_int8_export_is_quantised_and_runs(tiny_hf_checkpoint, images, tmp_path):
    import onnx

    out = export_onnx(tiny_hf_checkpoint, tmp_path / "int8", quantize="int8")
    assert json.loads((out / EXPORT_CONFIG).read_text())["quantize"] == "int8"
    assert sorted(p.name for p in out.glob("*.onnx")) == ["model.onnx"]  # the fp32 graph is not left behind
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops  # the linear layer: int8
    assert "Conv" in ops and "ConvInteger" not in ops  # the convolutions: float32
    records = predict_onnx(out, [images], top_k=7, progress=False)
    assert all(abs(sum(p["score"] for p in r["predictions"]) - 1.0) < 1e-5 for r in records)


def test_torchvision_resize_is_torchvisions_to_the_bit():
    import torch
    import torchvision.transforms.v2.functional as F

    rng = np.random.default_rng(0)
    for kernel, mode in (
        ("bilinear", F.InterpolationMode.BILINEAR),
        ("bicubic", F.InterpolationMode.BICUBIC),
    ):
        for shape, size in (((37, 53, 3), (20, 29)), ((40, 31, 3), (73, 57)), ((64, 64, 3), (64, 21))):
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
            expected = (
                F.resize(tensor, list(size), interpolation=mode, antialias=True).permute(1, 2, 0).numpy()
            )
            np.testing.assert_array_equal(torchvision_resize(pixels, size, kernel), expected)


# Bad input: one line, exit 2, nothing written.


def test_folder_that_is_not_a_finished_model_is_one_line(tmp_path, capsys):
    folder = tmp_path / "run"
    (folder / "checkpoint-5").mkdir(parents=True)
    assert cli.main(["export", str(folder), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json" in err and "checkpoint-5" in err
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-5"]


def test_existing_output_is_refused(hf_export, tiny_hf_checkpoint, tmp_path, capsys):
    before = (hf_export / "model.onnx").stat().st_mtime_ns
    assert cli.main(["export", str(tiny_hf_checkpoint), "--format", "onnx"]) == 2  # MODEL_DIR/onnx exists
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and str(hf_export) in err
    assert (hf_export / "model.onnx").stat().st_mtime_ns == before
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert (
        cli.main(
            ["export", str(tiny_hf_checkpoint), "--format", "onnx", "--output", str(other), "--overwrite"]
        )
        == 2
    )
    assert "not an ONNX export" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_unsupported_operator_names_it_and_the_opset(tmp_path, capsys):
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    out = tmp_path / "exports" / "vit"
    assert (
        cli.main(["export", str(tmp_path / "vit"), "--format", "onnx", "--output", str(out), "--opset", "13"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "aten::scaled_dot_product_attention" in err and "opset 13" in err and "--opset 14" in err
    assert not (tmp_path / "exports").exists()  # no export, no half-written folder, not even its parent


@requires_shared
def test_real_checkpoint_on_the_hotdog_photos(tmp_path):
    """A real ImageNet MobileNetV1 (transformers, its processor on the torchvision backend) on 30 real photos."""
    model = SHARED_MODELS / "hf-mobilenet_v1_0.25_128"
    val = SHARED_DATA / "hotdog" / "val"
    photos = sorted((val / "hotdog").glob("*.jpg"))[:15] + sorted((val / "not_hotdog").glob("*.jpg"))[:15]
    out = export_onnx(model, tmp_path / "onnx")
    expected = predict_images(model, photos, top_k=1001, progress=False, device="cpu")
    got = predict_onnx(out, photos, top_k=1001, progress=False)
    assert len(got) == 30
    worst = _max_diff(got, expected)
    print(f"max |p_onnx - p_torch| over 30 photos x 1001 classes: {worst:.2e}")
    assert worst < TOLERANCE
