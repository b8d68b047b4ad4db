"""The ``metrics`` recipe key (issue 22, point 6): the built-in metrics equal ``evaluate``'s own implementations,
extra ``evaluate`` metrics are computed and saved like the built-in ones, and one that cannot be loaded is a
one-line error before training. The metric scripts are ``../shared/evaluate-metrics/`` (offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED
from test_input_errors import QUICK, cli_error

from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments
from hf_finetune.errors import ConfigError
from hf_finetune.inference.evaluation import predict_split
from hf_finetune.inference.extra_metrics import extra_metric_values, load_extra_metrics
from hf_finetune.inference.metrics import classification_metrics, per_class_report

METRICS = SHARED / "evaluate-metrics"
requires_metrics = pytest.mark.skipif(
    not (METRICS / "f1" / "f1.py").is_file(), reason=f"evaluate's metric scripts not found at {METRICS}"
)


def _metric(name: str):
    import evaluate

    return evaluate.load(str(METRICS / name))


def _case(seed: int, num_classes: int, samples: int = 97):
    """Seeded logits and labels; above 2 classes the last class never occurs as a label and class 0 is never
    predicted."""
    rng = np.random.default_rng(seed)
    absent = num_classes > 2
    labels = rng.integers(0, num_classes - absent, size=samples)
    logits = rng.normal(size=(samples, num_classes))
    logits[np.arange(samples), labels] += rng.uniform(0, 2)
    logits[:, 0] -= 10.0 * absent
    return logits, labels


@requires_metrics
@pytest.mark.parametrize("num_classes", [2, 3, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_builtin_metrics_equal_evaluate(num_classes, seed):
    logits, labels = _case(seed, num_classes)
    predicted = np.argmax(logits, axis=1).tolist()
    refs, every = labels.tolist(), list(range(num_classes))
    names = [f"c{i}" for i in range(num_classes)]
    ours = classification_metrics(logits, labels)
    report = per_class_report(logits, labels, names)
    accuracy = _metric("accuracy").compute(predictions=predicted, references=refs)["accuracy"]
    assert ours["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    f1 = _metric("f1").compute(predictions=predicted, references=refs, labels=every, average="macro")["f1"]
    assert ours["macro_f1"] == pytest.approx(f1, abs=1e-9)
    for name, key in (("f1", "f1"), ("precision", "precision"), ("recall", "recall")):
        per_class = _metric(name).compute(predictions=predicted, references=refs, labels=every, average=None)[
            key
        ]
        assert [report["per_class"][n][key] for n in names] == pytest.approx(list(per_class), abs=1e-9)
    matrix = _metric("confusion_matrix").compute(predictions=predicted, references=refs, labels=every)
    assert report["confusion_matrix"] == np.asarray(matrix["confusion_matrix"]).tolist()
    if num_classes > 2:
        assert sum(report["confusion_matrix"][num_classes - 1]) == 0  # an absent class: a row of zeros
        assert all(row[0] == 0 for row in report["confusion_matrix"])  # and a class never predicted


@requires_metrics
@pytest.mark.parametrize("num_classes", [2, 10])
def test_extra_metric_values_keys_and_numbers(num_classes):
    logits, labels = _case(3, num_classes)
    predicted, refs = np.argmax(logits, axis=1).tolist(), labels.tolist()
    names = ["accuracy", "f1", "matthews_correlation", "confusion_matrix", "roc_auc"]
    if num_classes > 2:
        names.remove("roc_auc")  # the default config takes one score per image
    modules = load_extra_metrics([str(METRICS / n) for n in names])
    values = extra_metric_values(modules, logits, labels)
    suffix = "_macro" if num_classes > 2 else ""
    expected_keys = {"evaluate_accuracy", f"f1{suffix}", "matthews_correlation"} | (
        {"roc_auc"} if num_classes == 2 else set()
    )
    assert set(values) == expected_keys  # the matrix is not one number: left out
    assert values["evaluate_accuracy"] == pytest.approx(classification_metrics(logits, labels)["accuracy"])
    mcc = _metric("matthews_correlation").compute(predictions=predicted, references=refs)
    assert values["matthews_correlation"] == pytest.approx(mcc["matthews_correlation"], abs=1e-12)
    if num_classes > 2:  # macro F1 over every class, as the built-in one
        assert values["f1_macro"] == pytest.approx(
            classification_metrics(logits, labels)["macro_f1"], abs=1e-9
        )
    else:
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        auc = _metric("roc_auc").compute(prediction_scores=probabilities[:, 1].tolist(), references=refs)
        assert values["roc_auc"] == pytest.approx(auc["roc_auc"], abs=1e-12)


def test_metrics_key_values(tmp_path):
    args = FinetuneTrainingArguments(output_dir=str(tmp_path / "o"), metrics="accuracy")
    assert args.metrics == ["accuracy"]
    assert FinetuneTrainingArguments(output_dir=str(tmp_path / "o")).metrics == []
    with pytest.raises(ConfigError, match="metrics: got the entry ' '"):
        FinetuneTrainingArguments(output_dir=str(tmp_path / "o"), metrics=["f1", " "])
    with pytest.raises(ConfigError, match=r"metrics: got \[3\]; expected a string or a list of strings"):
        FinetuneTrainingArguments(output_dir=str(tmp_path / "o"), metrics=[3])


def test_unloadable_metric_is_one_line_before_training(
    tmp_path, capsys, tiny_hf_checkpoint, tiny_image_folder
):
    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_hf_checkpoint}\ntrain_dir: {tiny_image_folder}\noutput_dir: {out}\n"
        "metrics: no_such_metric_here\n"
    )
    cli_error(
        capsys,
        "train",
        recipe,
        *QUICK,
        fragments=(
            "metrics: cannot load 'no_such_metric_here' (offline and not cached: ",
            "evaluate-metrics/f1",
        ),
    )
    assert not out.exists() or not any(out.iterdir())


@requires_metrics
def test_training_run_reports_matthews_correlation(tmp_path, capsys, tiny_hf_checkpoint, tiny_image_folder):
    from hf_finetune import cli

    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_hf_checkpoint}\ntrain_dir: {tiny_image_folder}\noutput_dir: {out}\n"
        f"metrics: [{METRICS / 'matthews_correlation'}]\nimage_size: 32\nmax_steps: 3\n"
        "per_device_train_batch_size: 4\nreport_to: none\ndataloader_num_workers: 0\nbf16: false\n"
        "metric_for_best_model: matthews_correlation\n"
    )
    assert cli.main(["train", str(recipe)]) == 0, capsys.readouterr()
    results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_accuracy", "eval_macro_f1", "eval_matthews_correlation"} <= set(results)
    split = predict_split(str(out), DataArguments(train_dir=str(tiny_image_folder)), "validation")
    expected = _metric("matthews_correlation").compute(
        predictions=np.argmax(split.logits, axis=1).tolist(), references=split.labels.tolist()
    )["matthews_correlation"]
    assert results["eval_matthews_correlation"] == pytest.approx(expected, abs=1e-9)
    assert results["eval_accuracy"] == pytest.approx(float(np.mean(split.logits.argmax(1) == split.labels)))
    printed = capsys.readouterr().out
    assert "(validation matthews_correlation " in printed  # the best epoch, chosen on it
    lines = [line for line in printed.splitlines() if line.startswith("eval epoch")]
    assert lines and all("matthews_correlation " in line for line in lines)  # each evaluation's log line
    value = results["eval_matthews_correlation"]
    assert f"matthews_correlation {value:.4g}" in lines[-1]
    card = (out / "README.md").read_text()  # the card's evaluation table, as the built-in metrics
    before = json.loads((out / "trainer_state.json").read_text())["log_history"][0][
        "eval_matthews_correlation"
    ]
    assert f"| matthews\\_correlation | {before:.4f} | {value:.4f} |" in card


@requires_metrics
def test_compute_metrics_merges_extra_metrics():
    from transformers import EvalPrediction

    from hf_finetune.inference.metrics import build_compute_metrics

    logits, labels = _case(5, 10)
    paths = [str(METRICS / "f1"), str(METRICS / "precision"), str(METRICS / "recall")]
    values = build_compute_metrics(10, paths)(EvalPrediction(predictions=(logits,), label_ids=labels))
    builtin = classification_metrics(logits, labels)
    assert set(values) == set(builtin) | {"f1_macro", "precision_macro", "recall_macro"}
    assert values["f1_macro"] == pytest.approx(builtin["macro_f1"], abs=1e-9)
    report = per_class_report(logits, labels, [f"c{i}" for i in range(10)])
    for key in ("precision", "recall"):
        mean = np.mean([row[key] for row in report["per_class"].values()])
        assert values[f"{key}_macro"] == pytest.approx(mean, abs=1e-9)
    assert build_compute_metrics(10, [])(EvalPrediction(predictions=logits, label_ids=labels)) == builtin


def _multi_label_csv(folder, name: str, count: int, seed: int):
    """``folder/NAME.csv`` of 32x32 images holding 1-3 of three colours, labelled with ';'-joined class sets;
    the first rows hold every class, so each one has a positive and a negative in every split."""
    from PIL import Image

    colours = {"red": (230, 40, 40), "green": (40, 230, 40), "blue": (40, 40, 230)}
    rng = np.random.default_rng(seed)
    (folder / name).mkdir(parents=True)
    lines = ["image,label"]
    for index in range(count):
        names = [["red"], ["green", "blue"]][index] if index < 2 else sorted(rng.choice(list(colours), size=int(rng.integers(1, 4)), replace=False))  # fmt: skip
        pixels = np.full((32, 32, 3), 128.0)
        for tile, colour in enumerate(names):
            pixels[16 * (tile // 2) : 16 * (tile // 2) + 16, 16 * (tile % 2) : 16 * (tile % 2) + 16] = (
                colours[colour]
            )
        pixels += rng.normal(0, 10, size=pixels.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(folder / name / f"{index:02d}.png")
        lines.append(f"{name}/{index:02d}.png,{';'.join(names)}")
    (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return folder / f"{name}.csv"


@requires_metrics
def test_multi_label_run_reports_evaluate_metrics_on_multi_hot_rows(tmp_path, capsys, tiny_hf_checkpoint):
    from hf_finetune import cli
    from hf_finetune.inference.multi_label_metrics import sigmoid

    train, validation = (
        _multi_label_csv(tmp_path, "train", 16, 1),
        _multi_label_csv(tmp_path, "validation", 10, 2),
    )
    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_hf_checkpoint}\ntrain_file: {train}\nvalidation_file: {validation}\n"
        f"output_dir: {out}\nmetrics: [{METRICS / 'roc_auc'}, {METRICS / 'f1'}]\nimage_size: 32\nmax_steps: 2\n"
        "per_device_train_batch_size: 4\nreport_to: none\ndataloader_num_workers: 0\nbf16: false\n"
    )
    assert cli.main(["train", str(recipe)]) == 0, capsys.readouterr()
    results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_map", "eval_f1_macro", "eval_roc_auc", "eval_evaluate_f1_macro"} <= set(results)
    split = predict_split(str(out), DataArguments(train_file=str(train), validation_file=str(validation)))
    targets = split.labels.astype(int).tolist()
    auc = _metric_config("roc_auc").compute(
        prediction_scores=sigmoid(split.logits).tolist(), references=targets
    )
    assert results["eval_roc_auc"] == pytest.approx(auc["roc_auc"], abs=1e-6)  # the sigmoid probabilities
    at_half = (sigmoid(split.logits) >= 0.5).astype(int).tolist()  # the multi-hot predictions at 0.5
    f1 = _metric_config("f1").compute(predictions=at_half, references=targets, average="macro")["f1"]
    assert results["eval_evaluate_f1_macro"] == pytest.approx(f1, abs=1e-6)
    # a metric that takes one class per image: one line naming it, exit 2, nothing written
    single = tmp_path / "single_only"
    single.mkdir()
    script = (METRICS / "accuracy" / "accuracy.py").read_text()
    (single / "single_only.py").write_text(script.replace('self.config_name == "multilabel"', "False"))
    other = tmp_path / "other"
    recipe.write_text(
        recipe.read_text().replace(str(out), str(other)).replace(str(METRICS / "roc_auc"), str(single))
    )
    fragments = (f"metrics: '{single}' cannot be computed on multi-label data", "NAME:multilabel")
    cli_error(capsys, "train", recipe, *QUICK, fragments=fragments)
    assert not other.exists() or not any(other.iterdir())


def _metric_config(name: str):
    import evaluate

    return evaluate.load(str(METRICS / name), "multilabel")


@requires_metrics
def test_roc_auc_multiclass_config_on_single_label_data():
    from sklearn.metrics import roc_auc_score

    logits, labels = _case(6, 4)
    labels[:4] = np.arange(4)  # every class occurs
    modules = load_extra_metrics([f"{METRICS / 'roc_auc'}:multiclass"], multi_label=False)
    assert modules[0].config_name == "multiclass"
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = roc_auc_score(labels, probabilities, multi_class="ovr")
    assert extra_metric_values(modules, logits, labels) == {"roc_auc": pytest.approx(expected, abs=1e-12)}
