"""Tests of hf_finetune.inference.predict: parity with transformers' image-classification pipeline, batching,
unreadable files, missing paths and the CSV/JSONL writers."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, SHARED_MODELS, SOURCE_LABELS, make_image_folder, requires_shared

from hf_finetune.errors import DataError
from hf_finetune.inference.predict import (
    iter_image_files,
    load_for_inference,
    predict_images,
    write_predictions,
)


@pytest.fixture(scope="module")
def nested_images(tmp_path_factory) -> Path:
    """7 images of different sizes in nested folders (a/x, a/y, b)."""
    root = tmp_path_factory.mktemp("predict_images")
    make_image_folder(root / "a", {"x": 2, "y": 2}, size=(40, 32), seed=3)
    make_image_folder(root / "b", {"deep": 3}, size=(29, 51), seed=4, ext="jpg")
    return root


@pytest.fixture(scope="module")
def pipeline_top3(tiny_hf_checkpoint):
    from transformers import pipeline

    return pipeline("image-classification", model=str(tiny_hf_checkpoint), top_k=3)


def _assert_same(records: list[dict], expected: list[dict], tolerance: float = 1e-5) -> None:
    assert [r["path"] for r in records] == [e["path"] for e in expected]
    for record, reference in zip(records, expected, strict=True):
        assert [p["label"] for p in record["predictions"]] == [p["label"] for p in reference["predictions"]]
        for got, want in zip(record["predictions"], reference["predictions"], strict=True):
            assert got["score"] == pytest.approx(want["score"], abs=tolerance)


def test_iter_image_files_walks_folders_sorted_and_keeps_given_order(nested_images, tmp_path):
    (nested_images / "a" / "notes.txt").write_text("not an image")
    files = iter_image_files([nested_images / "b", nested_images / "a"])
    assert len(files) == 7
    assert files[:3] == sorted((nested_images / "b").rglob("*.jpg"))
    assert files[3:] == sorted((nested_images / "a").rglob("*.png"))
    single = nested_images / "a" / "x" / "x_000.png"
    assert iter_image_files([single, nested_images / "a"])[0] == single
    assert len(iter_image_files([single, nested_images / "a"])) == 4  # no duplicates


def test_missing_path_raises_data_error_naming_it(nested_images, tiny_hf_checkpoint):
    missing = nested_images / "nowhere"
    with pytest.raises(DataError, match="nowhere"):
        iter_image_files([nested_images, missing])
    with pytest.raises(DataError, match="nowhere"):
        predict_images(tiny_hf_checkpoint, [missing], progress=False)


def test_predictions_equal_the_pipeline(tiny_hf_checkpoint, nested_images, pipeline_top3):
    files = iter_image_files([nested_images])
    records = predict_images(tiny_hf_checkpoint, [nested_images], top_k=3, batch_size=4, progress=False)
    expected = [{"path": str(f), "predictions": pipeline_top3(str(f))} for f in files]
    assert len(records) == 7
    _assert_same(records, expected)
    for record in records:
        scores = [p["score"] for p in record["predictions"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == 3
        assert all(type(s) is float for s in scores)


def test_batch_size_does_not_change_results(tiny_hf_checkpoint, nested_images):
    one = predict_images(tiny_hf_checkpoint, [nested_images], top_k=7, batch_size=1, progress=False)
    seven = predict_images(tiny_hf_checkpoint, [nested_images], top_k=7, batch_size=7, progress=True)
    _assert_same(one, seven, tolerance=1e-6)
    assert all(len(r["predictions"]) == 7 for r in one)


def test_progress_bar_counts_images_on_stderr(tiny_hf_checkpoint, nested_images, capsys):
    predict_images(tiny_hf_checkpoint, [nested_images], batch_size=3, progress=True)
    err = capsys.readouterr().err
    assert "predict" in err and "7/7" in err and "img" in err
    predict_images(tiny_hf_checkpoint, [nested_images], batch_size=3)  # default: captured stderr is no TTY
    assert "7/7" not in capsys.readouterr().err


def test_progress_default_needs_a_terminal_and_more_than_100_images():
    import io

    from hf_finetune.inference.predict import PROGRESS_MIN_IMAGES, _show_progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert PROGRESS_MIN_IMAGES == 100
    assert _show_progress(None, 101, Terminal()) and not _show_progress(None, 100, Terminal())
    assert not _show_progress(None, 10_000, io.StringIO())
    assert _show_progress(True, 1, io.StringIO()) and not _show_progress(False, 10_000, Terminal())


def test_top_k_larger_than_the_labels_is_capped(tiny_hf_checkpoint, nested_images):
    records = predict_images(tiny_hf_checkpoint, [nested_images / "a" / "x"], top_k=50, progress=False)
    assert all(len(r["predictions"]) == 7 for r in records)
    assert sum(p["score"] for p in records[0]["predictions"]) == pytest.approx(1.0, abs=1e-5)


def test_unreadable_file_is_skipped_and_logged(tiny_hf_checkpoint, tmp_path, caplog):
    root = make_image_folder(tmp_path / "imgs", {"cat": 3}, seed=5)
    bad = root / "cat" / "bad.jpg"
    bad.write_text("this is not a JPEG")
    with caplog.at_level(logging.WARNING, logger="hf_finetune.inference.predict"):
        records = predict_images(tiny_hf_checkpoint, [root], top_k=2, batch_size=2, progress=False)
    assert [Path(r["path"]).name for r in records] == ["cat_000.png", "cat_001.png", "cat_002.png"]
    messages = [r.getMessage() for r in caplog.records if r.name == "hf_finetune.inference.predict"]
    assert any("bad.jpg" in m and "not an image" in m for m in messages), messages
    assert any("skipped 1 unusable of 4 image files (1 not an image)" in m for m in messages), messages


def test_predict_eval_refuse_huge_thin_png(tiny_hf_checkpoint, tmp_path, caplog, monkeypatch, capsys):
    """Issue 20, case 18: an 84-byte 1 x 30000 PNG took ``predict`` to 5.7 GB (the processor resizes its
    short side to the model's size) and a 1 x 60000 one crashed it. ``predict`` and ``eval`` now apply
    training's image check to the header before decoding: the file is skipped with one warning line naming
    it and why, and never decoded; ``--strict`` refuses it in one line before the model loads."""
    from PIL import Image, ImageFile

    from hf_finetune import cli
    from hf_finetune.config.arguments import DataArguments
    from hf_finetune.inference.evaluation import evaluate_model

    root = make_image_folder(tmp_path / "data", {"cat": 3, "dog": 3}, size=(40, 32), seed=6)
    thin = {root / "cat" / "thin.png": (1, 30000), root / "dog" / "thinner.png": (60000, 1)}
    for path, size in thin.items():
        Image.new("L", size).save(path, optimize=True)
        assert path.stat().st_size < 200  # a few bytes on disk, gigabytes once resized
    decoded: list[str] = []
    original_load = ImageFile.ImageFile.load

    def load(self):
        decoded.append(str(getattr(self, "filename", "")))
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)

    with caplog.at_level(logging.WARNING):
        records = predict_images(tiny_hf_checkpoint, [root], top_k=1, progress=False)
    names = sorted(Path(r["path"]).name for r in records)
    assert names == [f"{c}_{i:03d}.png" for c in ("cat", "dog") for i in range(3)]
    for path in thin:
        lines = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
        assert len(lines) == 1 and "extreme aspect ratio" in lines[0], lines
        assert str(path) not in decoded
    summary = "skipped 2 unusable of 8 image files (2 extreme aspect ratio)"
    assert any(summary in r.getMessage() for r in caplog.records)

    # eval: the same files in the data folder are skipped, each named in a warning, and never decoded
    decoded.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        report = evaluate_model(
            str(tiny_hf_checkpoint),
            DataArguments(train_dir=str(root), train_val_split=0.5),
            output_dir=str(tmp_path / "eval"),
        )
    assert report["num_images"] > 0 and decoded  # the usable validation images were decoded
    for path in thin:
        assert str(path) not in decoded
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"skipped image {path}")]
        assert len(lines) == 1 and "extreme aspect ratio" in lines[0], lines
    with pytest.raises(DataError, match="extreme aspect ratio"):
        evaluate_model(str(tiny_hf_checkpoint), DataArguments(train_dir=str(root), strict=True))

    # --strict: one line, exit 2, before the model is loaded
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad file was refused")

    monkeypatch.setattr("hf_finetune.inference.predict.load_for_inference", no_model)
    capsys.readouterr()  # the weight-loading progress bars of the runs above
    assert cli.main(["predict", str(tiny_hf_checkpoint), str(root), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hf-finetune: error: image {root / 'cat' / 'thin.png'}: "), (
        err
    )
    assert "extreme aspect ratio (1 x 30000 pixels" in err[0]


def test_load_for_inference_returns_an_eval_model(tiny_hf_checkpoint):
    model, processor = load_for_inference(tiny_hf_checkpoint, device="cpu")
    assert not model.training
    assert model.config.num_labels == 7
    assert hasattr(processor, "preprocess")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_write_predictions_round_trip(tmp_path, suffix):
    records = [
        {
            "path": "/x/a.png",
            "predictions": [{"label": "cat", "score": 0.7}, {"label": "dog, hound", "score": 0.2}],
        },
        {"path": "/x/b, c.jpg", "predictions": [{"label": "dog, hound", "score": 0.123456789012345}]},
    ]
    output = tmp_path / "sub" / f"preds{suffix}"
    write_predictions(records, output)
    if suffix == ".jsonl":
        back = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    else:
        with output.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert list(rows[0]) == ["path", "rank", "label", "score"]
        back: list[dict] = []
        for row in rows:
            if row["rank"] == "1":
                back.append({"path": row["path"], "predictions": []})
            assert int(row["rank"]) == len(back[-1]["predictions"]) + 1
            back[-1]["predictions"].append({"label": row["label"], "score": float(row["score"])})
    assert back == records


def test_write_predictions_rejects_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="preds.txt"):
        write_predictions([], tmp_path / "preds.txt")


@requires_shared
def test_real_mobilenet_matches_pipeline_top5():
    from transformers import pipeline

    model_dir = SHARED_MODELS / "hf-mobilenet_v2_1.0_224"
    files = sorted((SHARED_DATA / "hotdog" / "val" / "hotdog").glob("*.jpg"))[:6]
    assert len(files) == 6
    records = predict_images(model_dir, files, top_k=5, batch_size=4, progress=False)
    classifier = pipeline("image-classification", model=str(model_dir))
    expected = [{"path": str(f), "predictions": classifier(str(f))} for f in files]
    assert all(len(e["predictions"]) == 5 for e in expected)  # the pipeline's default top_k
    _assert_same(records, expected)


def test_predict_loads_a_timm_checkpoint_with_the_save_for_hf_trap(tiny_timm_checkpoint, tmp_path):
    """The raw timm folder (model_args repeats num_classes) loads through the same repaired config as training."""
    make_image_folder(tmp_path / "imgs", {"a": 2}, size=(32, 32), seed=5)
    records = predict_images(tiny_timm_checkpoint, [tmp_path / "imgs"], top_k=2, progress=False)
    assert len(records) == 2
    assert all(len(r["predictions"]) == 2 for r in records)
    assert {p["label"] for r in records for p in r["predictions"]} <= set(SOURCE_LABELS)


# A multi-label model: sigmoid scores, and every label at or above its threshold.

MULTI_BIAS = [3.0, -3.0, 0.2, -0.2, 2.0, -2.0, 0.5]  # sigmoid: .953 .047 .550 .450 .881 .119 .622
MULTI_THRESHOLDS = {"tench": 0.9, "goldfish": 0.01, "great white shark": 0.6}  # the others: 0.5


@pytest.fixture(scope="module")
def multi_label_checkpoint(tiny_hf_checkpoint, tmp_path_factory) -> Path:
    """The tiny ResNet as a multi-label model: classifier weights scaled by 1e-3 and the biases above, so each
    class's probability stays within 0.01 of sigmoid(bias) on any image; thresholds for three classes."""
    import torch
    from transformers import AutoImageProcessor, ResNetForImageClassification

    path = tmp_path_factory.mktemp("tiny_multi_label")
    model = ResNetForImageClassification.from_pretrained(tiny_hf_checkpoint)
    linear = model.classifier[-1]
    with torch.no_grad():
        linear.weight.mul_(1e-3)
        linear.bias.copy_(torch.tensor(MULTI_BIAS))
    model.config.problem_type = "multi_label_classification"
    model.config.label_thresholds = MULTI_THRESHOLDS
    model.save_pretrained(path)
    AutoImageProcessor.from_pretrained(tiny_hf_checkpoint).save_pretrained(path)
    return path


def test_multi_label_predict_names_the_labels_above_their_thresholds(multi_label_checkpoint, nested_images):
    from transformers import pipeline

    records = predict_images(multi_label_checkpoint, [nested_images], top_k=3, batch_size=4, progress=False)
    assert len(records) == 7
    classifier = pipeline(
        "image-classification", model=str(multi_label_checkpoint), function_to_apply="sigmoid", top_k=None
    )
    for record in records:
        assert list(record) == ["path", "labels", "predictions"]
        # tench .953 >= .9, ant .881 >= .5, dog .622 >= .5, goldfish .047 >= .01; shark .55 < .6, hotdog .45 < .5
        assert record["labels"] == ["tench", "ant, emmet, pismire", "dog", "goldfish"]
        assert [p["label"] for p in record["predictions"]] == ["tench", "ant, emmet, pismire", "dog"]
        expected = {p["label"]: p["score"] for p in classifier(record["path"])}
        assert sum(expected.values()) > 1.5  # sigmoid scores, not a softmax
        for entry in record["predictions"]:
            assert entry["score"] == pytest.approx(expected[entry["label"]], abs=1e-6)


def test_multi_label_model_without_thresholds_uses_one_half(multi_label_checkpoint, nested_images, tmp_path):
    import shutil

    from transformers import AutoConfig

    from hf_finetune.errors import ModelLoadError
    from hf_finetune.inference.predict import model_thresholds

    plain = tmp_path / "no_thresholds"
    shutil.copytree(multi_label_checkpoint, plain)
    config = json.loads((plain / "config.json").read_text())
    del config["label_thresholds"]
    (plain / "config.json").write_text(json.dumps(config))
    records = predict_images(plain, [nested_images / "b"], top_k=1, progress=False)
    assert [r["labels"] for r in records] == [
        ["tench", "ant, emmet, pismire", "dog", "great white shark"]
    ] * 3
    loaded = AutoConfig.from_pretrained(multi_label_checkpoint)
    assert model_thresholds(loaded).tolist() == [0.9, 0.01, 0.6, 0.5, 0.5, 0.5, 0.5]
    loaded.label_thresholds = {"dog": 1.5}
    with pytest.raises(
        ModelLoadError, match=r"label_thresholds\['dog'\] must be a probability in \[0, 1\], got 1.5"
    ):
        model_thresholds(loaded)


def test_multi_label_predict_cli_and_csv(multi_label_checkpoint, nested_images, tmp_path, capsys):
    from hf_finetune import cli

    output = tmp_path / "preds.csv"
    folder = str(nested_images / "b")
    assert (
        cli.main(["predict", str(multi_label_checkpoint), folder, "--top-k", "2", "--output", str(output)])
        == 0
    )
    with output.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "rank", "label", "score", "above_threshold"]
    assert [(r["label"], r["above_threshold"]) for r in rows[:2]] == [
        ("tench", "1"),
        ("ant, emmet, pismire", "1"),
    ]
    assert len(rows) == 6
    capsys.readouterr()
    assert cli.main(["predict", str(multi_label_checkpoint), folder, "--top-k", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(folder)]
    assert len(lines) == 3
    assert lines[0].endswith(": [tench, ant, emmet, pismire, dog, goldfish]  tench 0.9526"), lines[0]


# eval on a multi-label model: multi-hot targets matched to the model's columns by name, the multi-label report.


def _multi_hot_split(root: Path, data_labels: list[str], rows: list[list[float]]):
    """A LoadedData-like object whose train and validation splits are one multi-hot split of ``rows``."""
    from types import SimpleNamespace

    import datasets

    from hf_finetune.data.multi_label import multi_hot_features

    make_image_folder(root, {"img": len(rows)}, seed=9)
    images = [{"path": str(p), "bytes": None} for p in sorted((root / "img").glob("*.png"))]
    split = datasets.Dataset.from_dict(
        {"image": images, "label": rows}, features=multi_hot_features(data_labels)
    )
    dataset = datasets.DatasetDict({"train": split, "validation": split})
    return SimpleNamespace(dataset=dataset, labels=data_labels, bad_files=[])


def test_multi_label_eval_matches_labels_by_name_and_reports_at_the_thresholds(
    multi_label_checkpoint, tmp_path, monkeypatch, capsys
):
    from hf_finetune import cli
    from hf_finetune.config.arguments import DataArguments
    from hf_finetune.inference import evaluation
    from hf_finetune.inference.evaluation import evaluate_model, format_report, predict_split
    from hf_finetune.inference.multi_label_metrics import multi_label_report

    data_labels = ["dog", "tench", "goldfish", "ant", "cat"]  # "ant" matches "ant, emmet, pismire" by synonym
    rows = [[1, 1, 1, 1, 0], [1, 0, 0, 0, 1], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
    loaded = _multi_hot_split(tmp_path / "data", data_labels, rows)
    monkeypatch.setattr(evaluation, "load_image_dataset", lambda data_args, seed=42: loaded)
    data_args = DataArguments(train_dir=str(tmp_path / "data"))

    predictions = predict_split(str(multi_label_checkpoint), data_args)
    assert predictions.multi_label and predictions.labels.dtype == np.float32
    # model columns: tench, goldfish, great white shark, hotdog, ant, cat, dog
    assert predictions.labels.tolist() == [
        [1, 1, 0, 0, 1, 0, 1],
        [0, 0, 0, 0, 0, 1, 1],
        [1, 1, 0, 0, 1, 0, 1],
        [0, 0, 0, 0, 0, 0, 0],
    ]
    assert predictions.thresholds.tolist() == [0.9, 0.01, 0.6, 0.5, 0.5, 0.5, 0.5]

    report = evaluate_model(str(multi_label_checkpoint), data_args, output_dir=str(tmp_path / "eval"))
    expected = multi_label_report(
        predictions.logits, predictions.labels, predictions.label_names, predictions.thresholds
    )
    same = json.dumps({k: report[k] for k in expected}, sort_keys=True)
    assert same == json.dumps(expected, sort_keys=True)  # ap is nan for a class without positives
    # every image is predicted {tench, goldfish, ant, dog}: rows 0 and 2 match exactly
    assert report["exact_match"] == 0.5
    assert report["per_class"]["tench"] == pytest.approx(
        {
            "ap": report["per_class"]["tench"]["ap"],
            "precision": 0.5,
            "recall": 1.0,
            "f1": 2 / 3,
            "support": 2,
            "threshold": 0.9,
        }
    )
    assert report["per_class"]["cat"]["recall"] == 0.0 and report["per_class"]["cat"]["support"] == 1
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["multi_label"] is True and written["exact_match"] == 0.5
    assert (tmp_path / "eval" / "precision_recall.png").is_file()
    assert not (tmp_path / "eval" / "confusion_matrix.png").exists()

    table = format_report(report)
    assert "exact_match 0.5000" in table and f"map {report['map']:.4f}" in table
    assert "threshold" in table.splitlines()[1]
    tench = next(line for line in table.splitlines() if line.startswith("tench"))
    assert tench.split()[-1] == "0.9000" and tench.split()[-2] == "2"

    capsys.readouterr()
    argv = [
        "eval",
        str(multi_label_checkpoint),
        "--train_dir",
        str(tmp_path / "data"),
        "--report_dir",
        str(tmp_path / "cli"),
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "validation: 4 images; map " in out and "precision_recall.png" in out


def test_multi_label_eval_of_a_csv_split(multi_label_checkpoint, tmp_path):
    """The same through data loading: CSV files with ';'-joined label sets, classes named as the model's."""
    from hf_finetune.config.arguments import DataArguments
    from hf_finetune.inference.evaluation import evaluate_model

    make_image_folder(tmp_path, {"img": 6}, seed=11)
    sets = ["tench;dog;goldfish", "cat", "dog;tench;goldfish", "", "cat;dog", "goldfish"]
    lines = ["image,label"] + [f"img/img_{i:03d}.png,{labels}" for i, labels in enumerate(sets)]
    (tmp_path / "train.csv").write_text("\n".join(lines[:1] + lines[1:4]) + "\n")
    (tmp_path / "all.csv").write_text("\n".join(lines) + "\n")
    data_args = DataArguments(
        train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "all.csv")
    )
    report = evaluate_model(str(multi_label_checkpoint), data_args)
    # predicted for every image: tench, goldfish, ant, dog; truth in model columns (ant never present)
    assert report["num_images"] == 6 and report["multi_label"] is True
    assert report["exact_match"] == 0.0  # ant is predicted everywhere and never true
    tench, dog, cat = (report["per_class"][name] for name in ("tench", "dog", "cat"))
    assert (tench["support"], dog["support"], cat["support"]) == (2, 3, 2)
    assert tench["precision"] == pytest.approx(2 / 6) and dog["precision"] == pytest.approx(3 / 6)
    assert cat["recall"] == 0.0 and report["per_class"]["ant, emmet, pismire"]["support"] == 0
    assert report["thresholds"] == [0.9, 0.01, 0.6, 0.5, 0.5, 0.5, 0.5]
