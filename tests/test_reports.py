"""Tests of hf_finetune.inference.reports: the numbers behind the confusion matrix, most_confused.csv and top losses
equal a recount; the PNGs open, have the expected size and are not blank; a real tiny training run writes
training_curves.png and confusion_matrix.png and its card links them; ``hf-finetune eval`` writes all four
report files; TensorBoard event files appear offline when tensorboard is installed."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder, run_hf_finetune
from PIL import Image

from hf_finetune.inference import reports
from hf_finetune.inference.metrics import confusion_matrix
from hf_finetune.inference.precision_recall import precision_recall_curve


def _predictions(num_classes: int, num_images: int, seed: int = 0):
    """Labels and logits where the model is right about 60% of the time."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_images)
    logits = rng.normal(size=(num_images, num_classes))
    logits[np.arange(num_images), labels] += 1.5
    return labels, logits


def _check_png(path: Path, min_size: tuple[int, int], max_size: tuple[int, int], min_std: float = 10.0):
    assert path.is_file(), path
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert min_size[0] <= width <= max_size[0] and min_size[1] <= height <= max_size[1], (width, height)
    assert pixels.std() > min_std, f"{path.name} looks blank (pixel std {pixels.std():.1f})"
    return width, height


# ------------------------------------------------------------------------------------------------ numbers
def test_normalized_confusion_equals_a_recount():
    labels, logits = _predictions(7, 300)
    predicted = logits.argmax(axis=1)
    matrix = confusion_matrix(predicted, labels, 7)
    normalised, order = reports.normalized_confusion(matrix)
    recall = [np.mean(predicted[labels == c] == c) for c in range(7)]
    assert list(order) == sorted(range(7), key=lambda c: (recall[c], c))
    for r, true in enumerate(order):
        n_true = np.sum(labels == true)
        for c, pred in enumerate(order):
            assert normalised[r, c] == pytest.approx(np.sum((labels == true) & (predicted == pred)) / n_true)
    np.testing.assert_allclose(normalised.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.diag(normalised), sorted(recall))


def test_normalized_confusion_keeps_a_class_without_images_at_zero():
    normalised, order = reports.normalized_confusion([[2, 0, 0], [0, 0, 0], [1, 0, 3]])
    assert list(order) == [1, 2, 0]  # recall 0 (no images), 0.75, 1.0
    np.testing.assert_allclose(normalised, [[0, 0, 0], [0, 0.75, 0.25], [0, 0, 1.0]])


def test_most_confused_rows_equal_a_recount(tmp_path):
    labels, logits = _predictions(5, 400, seed=3)
    predicted = logits.argmax(axis=1)
    names = ["ant", "bee", "cat", "dog", "eel"]
    matrix = confusion_matrix(predicted, labels, 5)
    path = reports.write_most_confused(matrix, names, tmp_path / "most_confused.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    pairs = Counter((names[t], names[p]) for t, p in zip(labels, predicted, strict=True) if t != p)
    support = Counter(names[t] for t in labels)
    assert len(rows) == len(pairs) == 20  # every off-diagonal pair occurs with 400 images
    assert {(r["true"], r["predicted"]): int(r["count"]) for r in rows} == dict(pairs)
    for row in rows:
        assert float(row["share"]) == pytest.approx(int(row["count"]) / support[row["true"]], abs=1e-6)
    counts = [int(r["count"]) for r in rows]
    assert counts == sorted(counts, reverse=True) and counts[0] == max(pairs.values())


def test_most_confused_orders_ties_by_share():
    rows = reports.most_confused([[5, 2, 0], [1, 1, 0], [0, 2, 8]], ["a", "b", "c"])
    # a: 7 images, b: 2, c: 10; the two counts of 2: the larger share (2/7 > 2/10) first
    assert [(r["true"], r["predicted"], r["count"]) for r in rows] == [
        ("a", "b", 2),
        ("c", "b", 2),
        ("b", "a", 1),
    ]
    assert [r["share"] for r in rows] == pytest.approx([2 / 7, 0.2, 0.5])


def test_per_image_losses_are_cross_entropy():
    import torch

    labels, logits = _predictions(4, 50, seed=5)
    scores = reports.per_image_losses(logits, labels)
    expected = torch.nn.functional.cross_entropy(
        torch.tensor(logits), torch.tensor(labels), reduction="none"
    ).numpy()
    np.testing.assert_allclose(scores["loss"], expected, rtol=1e-10)
    probabilities = torch.tensor(logits).softmax(-1).numpy()
    np.testing.assert_array_equal(scores["predicted"], logits.argmax(1))
    np.testing.assert_allclose(scores["probability"], probabilities.max(1), rtol=1e-10)
    np.testing.assert_allclose(scores["true_probability"], probabilities[np.arange(50), labels], rtol=1e-10)


HISTORY = [
    {"epoch": 0.0, "step": 0, "eval_accuracy": 0.3, "eval_loss": 1.9, "eval_runtime": 0.5},
    {"epoch": 0.5, "step": 2, "loss": 1.4, "learning_rate": 1e-3},
    {"epoch": 1.0, "step": 4, "loss": 1.0},
    {"epoch": 1.0, "step": 4, "eval_accuracy": 0.9, "eval_loss": 0.6, "eval_samples_per_second": 9.0},
    {"epoch": 2.0, "step": 8, "loss": 0.5},
    {"epoch": 2.0, "step": 8, "eval_accuracy": 0.9, "eval_loss": 0.4},
    {"epoch": 2.0, "step": 8, "train_runtime": 3.0, "train_loss": 0.9},
    {"epoch": 2.0, "step": 8, "eval_accuracy": 0.9, "eval_loss": 0.6},  # the re-evaluation after training
]


def test_training_curves_and_best_epoch_from_the_log_history():
    curves = reports.training_curves(HISTORY)
    assert curves == {
        "eval_accuracy": [(0.0, 0.3), (1.0, 0.9), (2.0, 0.9)],
        "eval_loss": [(0.0, 1.9), (1.0, 0.6), (2.0, 0.4)],
        "loss": [(0.5, 1.4), (1.0, 1.0), (2.0, 0.5)],
    }
    assert reports.best_epoch(HISTORY) == (1.0, 0.9)  # a tie: the first
    assert reports.best_epoch(HISTORY, "eval_loss") == (2.0, 0.4)  # a loss: lower is better
    assert reports.best_epoch(HISTORY, "macro_f1") is None


# -------------------------------------------------------------------------------------------------- plots
@pytest.mark.parametrize("num_classes,size", [(3, (600, 900)), (100, (1500, 1800))])
def test_confusion_matrix_png(tmp_path, num_classes, size):
    labels, logits = _predictions(num_classes, 20 * num_classes)
    matrix = confusion_matrix(logits.argmax(1), labels, num_classes)
    names = [f"class number {i}" for i in range(num_classes)]
    path = reports.plot_confusion_matrix(matrix, names, tmp_path / "cm.png")
    width, height = _check_png(path, (size[0], size[0]), (size[1] + 200, size[1]))
    assert width > height  # the colour bar beside the square matrix


def test_top_losses_png(tmp_path):
    root = make_image_folder(tmp_path / "imgs", {"a": 5, "b": 5}, size=(48, 40), seed=2)
    images = sorted(str(p) for p in root.rglob("*.png"))
    labels = np.array([0] * 5 + [1] * 5)
    logits = np.zeros((10, 2))
    logits[[1, 7], :] = [[0.0, 3.0], [2.0, 0.0]]  # two confident mistakes: the worst two
    path = reports.plot_top_losses(images, labels, logits, ["a", "b"], tmp_path / "top.png", k=6, columns=3)
    _check_png(path, (850, 600), (950, 750))  # 3 x 2 tiles of 300 x 340 px


def test_training_curves_png(tmp_path):
    path = reports.plot_training_curves(HISTORY, tmp_path / "curves.png")
    _check_png(path, (1100, 420), (1100, 420))
    assert reports.plot_training_curves([], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_write_training_figures_logs_a_failure_and_goes_on(tmp_path, caplog):
    report = {"confusion_matrix": [[1, 0], [0, 1, 5]]}  # ragged: the plot fails
    written = reports.write_training_figures(tmp_path, HISTORY, report, ["a", "b"])
    assert written == [reports.TRAINING_CURVES_NAME]
    assert any("confusion_matrix.png not written" in r.getMessage() for r in caplog.records)


# -------------------------------------------------------------------------------------------- multi-label
def _multi_label(num_classes: int, num_images: int, seed: int = 0, rates=None):
    """Multi-hot targets (class k positive with probability rates[k]) and logits that favour the positives."""
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.05, 0.6, num_classes) if rates is None else np.asarray(rates)
    targets = (rng.random((num_images, num_classes)) < rates).astype(np.float32)
    logits = rng.normal(size=(num_images, num_classes)) + 1.5 * targets
    return targets, np.round(logits, 1)  # rounded: tied scores, which the curves must group


def test_precision_recall_curve_equals_sklearn():
    from sklearn.metrics import average_precision_score
    from sklearn.metrics import precision_recall_curve as sklearn_curve

    targets, logits = _multi_label(6, 150, seed=4)
    for k in range(6):
        precision, recall, ap = precision_recall_curve(logits[:, k], targets[:, k])
        expected_precision, expected_recall, _ = sklearn_curve(targets[:, k], logits[:, k])
        np.testing.assert_allclose(precision, expected_precision[:-1][::-1], rtol=1e-12)
        np.testing.assert_allclose(recall, expected_recall[:-1][::-1], rtol=1e-12)
        assert ap == pytest.approx(average_precision_score(targets[:, k], logits[:, k]), abs=1e-12)
    assert np.isnan(precision_recall_curve([0.3, 0.9], [0, 0])[2])  # no positives


def test_per_image_losses_of_multi_hot_targets_are_summed_bce():
    import torch

    targets, logits = _multi_label(5, 40, seed=6)
    targets[3] = 0.0  # an image without any class
    scores = reports.per_image_losses(logits, targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(logits), torch.tensor(targets, dtype=torch.float64), reduction="none"
    ).sum(1)
    np.testing.assert_allclose(scores["loss"], expected.numpy(), rtol=1e-10)
    probabilities = torch.tensor(logits).sigmoid().numpy()
    np.testing.assert_allclose(scores["probability"], probabilities.max(1), rtol=1e-10)
    assert scores["true_probability"][3] == 1.0
    first = np.flatnonzero(targets[0])
    assert scores["true_probability"][0] == pytest.approx(
        probabilities[0, first].min() if len(first) else 1.0
    )


def test_precision_recall_png_legend_holds_each_class_ap(tmp_path):
    from sklearn.metrics import average_precision_score

    targets, logits = _multi_label(4, 120, seed=1)
    targets[:, 3] = 0.0  # a class without positives: listed, not drawn
    names = ["ant", "bee", "$\\foo{$", "dog"]  # math text would raise: drawn as plain text
    figure = reports.plot_precision_recall(1 / (1 + np.exp(-logits)), targets, names, tmp_path / "pr.png")
    _check_png(figure.path, (900, 600), (900, 600))
    assert figure.classes == [0, 1, 2, 3]
    expected = [average_precision_score(targets[:, k], logits[:, k]) for k in range(3)]
    np.testing.assert_allclose(figure.average_precision[:3], expected, atol=1e-12)
    assert figure.legend[:3] == [f"{n} (AP {ap:.4f})" for n, ap in zip(names, expected, strict=False)]
    assert figure.legend[3] == "dog (AP n/a, no positives)"
    assert f"mAP {np.mean(expected):.4f} over 3 classes with positives" in figure.title
    assert "shown:" not in figure.title


def test_precision_recall_png_above_20_classes_keeps_the_20_most_frequent(tmp_path):
    rates = np.random.default_rng(9).permutation(np.linspace(0.03, 0.9, 30))
    targets, logits = _multi_label(30, 400, seed=2, rates=rates)
    counts = targets.sum(0)
    assert len(set(counts)) == 30  # distinct counts: the 20 most frequent are one set
    names = [f"class {k}" for k in range(30)]
    figure = reports.plot_precision_recall(logits, targets, names, tmp_path / "pr.png")
    assert figure.classes == sorted(range(30), key=lambda k: -counts[k])[:20]
    assert len(figure.legend) == 20 and figure.legend[0].startswith(f"class {int(np.argmax(counts))} (AP")
    assert "shown: the 20 of 30 classes with the most positive images" in figure.title
    _check_png(figure.path, (900, 600), (900, 600))


def test_write_eval_reports_of_a_multi_label_evaluation(tmp_path):
    root = make_image_folder(tmp_path / "imgs", {"a": 3, "b": 3}, size=(40, 40), seed=3)
    images = sorted(str(p) for p in root.rglob("*.png"))
    targets, logits = _multi_label(3, 6, seed=5)
    written = reports.write_eval_reports(tmp_path / "eval", logits, targets, ["x", "y", "z"], images, top_k=4)
    assert [p.name for p in written] == ["precision_recall.png", "top_losses.png"]
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["precision_recall.png", "top_losses.png"]
    _check_png(tmp_path / "eval" / "top_losses.png", (1200, 340), (1200, 340))  # 4 x 1 tiles
    names = reports.write_training_figures(
        tmp_path / "eval",
        HISTORY,
        {"multi_label": True},
        ["x", "y", "z"],
        probabilities=logits,
        targets=targets,
    )
    assert names == [reports.TRAINING_CURVES_NAME, reports.PRECISION_RECALL_NAME]
    assert not (tmp_path / "eval" / "confusion_matrix.png").exists()


def test_the_final_per_class_report_of_a_multi_label_run_uses_the_models_thresholds(tmp_path):
    from types import SimpleNamespace

    from hf_finetune.inference.multi_label_metrics import multi_label_report, sigmoid
    from hf_finetune.run.save import _per_class_report

    targets, logits = _multi_label(3, 50, seed=8)
    names = ["x", "y", "z"]
    prediction = SimpleNamespace(predictions=logits, label_ids=targets)
    config = SimpleNamespace(problem_type="multi_label_classification", label_thresholds={"x": 0.3, "z": 0.7})
    report, (probabilities, kept) = _per_class_report(prediction, names, SimpleNamespace(config=config))
    expected = multi_label_report(logits, targets, names, [0.3, 0.5, 0.7])  # y: no threshold saved, 0.5
    assert report == {**expected, "split": "validation", "num_images": 50}
    assert report["thresholds"] == [0.3, 0.5, 0.7] and "confusion_matrix" not in report
    np.testing.assert_allclose(probabilities, sigmoid(logits))
    np.testing.assert_array_equal(kept, targets)
    # the legend of the figure drawn from these scores holds the report's AP
    figure = reports.plot_precision_recall(probabilities, kept, names, tmp_path / "pr.png")
    assert figure.legend == [f"{n} (AP {report['per_class'][n]['ap']:.4f})" for n in names]
    # a single-label run: the per-class report with its confusion matrix, no scores
    labels = targets.argmax(1)
    single, scores = _per_class_report(SimpleNamespace(predictions=logits, label_ids=labels), names, None)
    assert scores is None and sum(map(sum, single["confusion_matrix"])) == 50


# ----------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_hf_checkpoint, tiny_image_folder):
    """A real 2-epoch fine-tune of the tiny ResNet on the three colour classes."""
    from hf_finetune import DataArguments, FinetuneTrainingArguments, ModelArguments, finetune

    out = tmp_path_factory.mktemp("reports_run") / "out"
    result = finetune(
        ModelArguments(model_name_or_path=str(tiny_hf_checkpoint)),
        DataArguments(train_dir=str(tiny_image_folder), image_size=32),
        FinetuneTrainingArguments(
            output_dir=str(out),
            num_train_epochs=2,
            per_device_train_batch_size=8,
            learning_rate=3e-3,
            logging_steps=2,
            seed=7,
            report_to="none",
        ),
    )
    return out, result


def test_training_writes_curves_and_confusion_matrix(trained_run):
    out, result = trained_run
    _check_png(out / "training_curves.png", (1100, 420), (1100, 420))
    _check_png(out / "confusion_matrix.png", (600, 600), (900, 700))
    assert not (out / ".final-partial").exists()
    per_class = json.loads((out / "eval_per_class.json").read_text())
    assert sum(map(sum, per_class["confusion_matrix"])) == 12
    state = json.loads((out / "trainer_state.json").read_text())
    assert result.best_epoch == reports.best_epoch(state["log_history"])[0]
    assert result.best_metric == {"accuracy": reports.best_epoch(state["log_history"])[1]}
    summary = result.summary()
    assert f"best epoch: {result.best_epoch:g} (validation accuracy" in summary
    assert "images/s" in summary and "training_curves.png, confusion_matrix.png" in summary
    assert f"model saved to {out}" in summary


def test_the_card_links_the_figures_and_push_uploads_them(trained_run):
    from hf_finetune.hub.push import upload_plan

    out, _ = trained_run
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "![confusion matrix](confusion_matrix.png)" in card
    assert "![training curves](training_curves.png)" in card
    plan = upload_plan(out, "org/tiny")
    assert {"confusion_matrix.png", "training_curves.png"} <= set(plan)
    assert "![confusion matrix](confusion_matrix.png)" in plan["README.md"].decode()


def test_eval_cli_writes_the_four_report_files(trained_run, tiny_image_folder, tmp_path):
    out, _ = trained_run
    report_dir = tmp_path / "report"
    proc = run_hf_finetune("eval", out, "--train_dir", tiny_image_folder, "--report_dir", report_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = ["metrics.json", "confusion_matrix.png", "most_confused.csv", "top_losses.png"]
    assert f"report written to {report_dir}: {', '.join(names)}" in proc.stdout
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert metrics["num_images"] == 12
    trained_accuracy = json.loads((out / "eval_results.json").read_text())["eval_accuracy"]
    assert metrics["accuracy"] == pytest.approx(trained_accuracy, abs=1e-6)  # the same images, the same model
    _check_png(report_dir / "confusion_matrix.png", (600, 600), (900, 700))
    _check_png(report_dir / "top_losses.png", (1200, 1020), (1200, 1020))  # 12 images: 4 x 3 tiles
    matrix = np.array(metrics["confusion_matrix"])
    with (report_dir / "most_confused.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = list(metrics["per_class"])
    expected = {
        (labels[t], labels[p]): int(matrix[t, p])
        for t in range(3)
        for p in range(3)
        if t != p and matrix[t, p]
    }
    assert {(r["true"], r["predicted"]): int(r["count"]) for r in rows} == expected


def _multi_label_csv(folder: Path, name: str, count: int, seed: int) -> Path:
    """``folder/NAME.csv`` of 32x32 images whose red, green and blue halves show classes r, g, b (';'-joined)."""
    rng = np.random.default_rng(seed)
    (folder / name).mkdir(parents=True)
    lines = ["image,label"]
    for index in range(count):
        present = rng.random(3) < 0.5
        pixels = rng.normal(100, 20, (32, 32, 3))
        for channel in np.flatnonzero(present):
            pixels[: 16 if channel < 2 else 32, :, channel] += 120
        Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(folder / name / f"{index}.png")
        lines.append(f"{name}/{index}.png,{';'.join(c for c, p in zip('rgb', present, strict=True) if p)}")
    (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return folder / f"{name}.csv"


def test_a_multi_label_run_writes_precision_recall_and_its_report(tiny_hf_checkpoint, tmp_path):
    from huggingface_hub import ModelCard

    from hf_finetune import DataArguments, FinetuneTrainingArguments, ModelArguments, finetune

    files = {
        name: _multi_label_csv(tmp_path, name, n, seed)
        for name, n, seed in [("train", 32, 1), ("val", 16, 2)]
    }
    out = tmp_path / "out"
    result = finetune(
        ModelArguments(model_name_or_path=str(tiny_hf_checkpoint)),
        DataArguments(train_file=str(files["train"]), validation_file=str(files["val"]), image_size=32),
        FinetuneTrainingArguments(
            output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=8, seed=3, report_to="none"
        ),
    )
    _check_png(out / "precision_recall.png", (900, 600), (900, 600))
    assert not (out / "confusion_matrix.png").exists() and "precision_recall.png" in result.summary()
    config = json.loads((out / "config.json").read_text())
    report = json.loads((out / "eval_per_class.json").read_text())
    results = json.loads((out / "eval_results.json").read_text())
    assert report["multi_label"] is True and "confusion_matrix" not in report
    assert list(report["per_class"]) == ["b", "g", "r"] and report["num_images"] == 16
    assert report["thresholds"] == [config["label_thresholds"][c] for c in "bgr"]
    assert report["map"] == pytest.approx(results["eval_map"], abs=1e-9)  # the same final evaluation
    card = ModelCard.load(out / "README.md")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "mean_average_precision": round(results["eval_map"], 4),
        "f1": round(results["eval_f1_micro"], 4),
    }
    row = report["per_class"]["g"]
    cells = [row[k] for k in ("ap", "f1", "precision", "recall")]
    expected = f"| g | {' | '.join(f'{v:.4f}' for v in cells)} | {row['support']} | {row['threshold']:.4f} |"
    assert expected in card.text and "![precision-recall curves](precision_recall.png)" in card.text


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_report_to_tensorboard_writes_event_files_offline(tiny_hf_checkpoint, tiny_image_folder, tmp_path):
    out = tmp_path / "out"
    proc = run_hf_finetune(
        "train",
        "--model_name_or_path",
        tiny_hf_checkpoint,
        "--train_dir",
        tiny_image_folder,
        "--output_dir",
        out,
        "--num_train_epochs",
        "1",
        "--image_size",
        "32",
        "--per_device_train_batch_size",
        "12",
        "--logging_steps",
        "1",
        "--report_to",
        "tensorboard",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert {"train/loss", "eval/accuracy"} <= set(accumulator.Tags()["scalars"])
    assert len(accumulator.Scalars("train/loss")) == 3  # 36 images, batch 12, a loss every step
    assert f"TensorBoard logs in {out / 'runs'}" in proc.stdout
