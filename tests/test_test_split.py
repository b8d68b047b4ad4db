"""A test split is scored once, at the end, by the final model: ``test_results.json``, one summary line and a
model-index entry of its own; and it changes nothing the run chooses (same best checkpoint, same weights)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import make_image_folder
from safetensors.torch import load_file

from hf_finetune import DataArguments, FinetuneTrainingArguments, ModelArguments, finetune
from hf_finetune.inference.evaluation import evaluate_model

CLASSES = {"cat": 10, "dog": 10, "zebra": 10}
SETTINGS = {
    "num_train_epochs": 3,
    "per_device_train_batch_size": 8,
    "learning_rate": 3e-3,
    "seed": 7,
    "logging_steps": 2,
}


def _run(checkpoint, data_dir, out):
    return finetune(
        ModelArguments(model_name_or_path=str(checkpoint)),
        DataArguments(train_dir=str(data_dir), image_size=32),
        FinetuneTrainingArguments(output_dir=str(out), **SETTINGS),
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``plain``: train/ and val/; ``with_test``: the same plus test/; ``swapped``: the same plus a test/ whose
    cat and dog folders hold each other's images (a test split that disagrees with everything)."""
    root = tmp_path_factory.mktemp("test_split")
    plain = root / "plain"
    make_image_folder(plain / "train", CLASSES, seed=1)
    make_image_folder(plain / "val", {name: 4 for name in CLASSES}, seed=2)
    with_test, swapped = root / "with_test", root / "swapped"
    for folder in (with_test, swapped):
        shutil.copytree(plain, folder)
    make_image_folder(with_test / "test", {"cat": 5, "dog": 3, "zebra": 6}, seed=3)
    make_image_folder(swapped / "test", {"cat": 5, "dog": 3, "zebra": 6}, seed=3)
    (swapped / "test" / "cat").rename(swapped / "test" / "tmp")
    (swapped / "test" / "dog").rename(swapped / "test" / "cat")
    (swapped / "test" / "tmp").rename(swapped / "test" / "dog")
    return {"plain": plain, "with_test": with_test, "swapped": swapped}


@pytest.fixture(scope="module")
def runs(tiny_hf_checkpoint, folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("test_split_runs")
    return {
        name: (_run(tiny_hf_checkpoint, data, root / name), root / name) for name, data in folders.items()
    }


def test_test_results_equal_an_independent_evaluation(runs, folders):
    result, out = runs["with_test"]
    written = json.loads((out / "test_results.json").read_text())
    assert written["test_samples"] == 14
    assert set(written) >= {"test_accuracy", "test_macro_f1", "test_loss"}
    report = evaluate_model(
        str(out), DataArguments(train_dir=str(folders["with_test"])), "test", reports=False
    )
    assert report["num_images"] == 14
    assert written["test_accuracy"] == pytest.approx(report["accuracy"], abs=1e-9)
    assert written["test_macro_f1"] == pytest.approx(report["macro_f1"], abs=1e-6)
    assert result.test_metrics == written
    # the test figures are apart from the validation's: eval_results.json and the log history have none
    assert not any(k.startswith("test_") for k in json.loads((out / "eval_results.json").read_text()))
    state = json.loads((out / "trainer_state.json").read_text())
    assert not any(k.startswith("test_") for entry in state["log_history"] for k in entry)


def test_summary_line_once_and_card_lists_the_test_split(runs):
    result, out = runs["with_test"]
    summary = result.summary()
    lines = [line for line in summary.splitlines() if line.startswith("test split")]
    assert lines == [
        f"test split (14 images, scored once, chose nothing): accuracy {result.test_metrics['test_accuracy']:.4f}"
        f", macro_f1 {result.test_metrics['test_macro_f1']:.4f}"
    ]
    assert "test_results.json" in result.files
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    entries = meta["model-index"][0]["results"]
    by_split = {e["dataset"]["split"]: e for e in entries}
    assert set(by_split) == {"validation", "test"}
    test_metrics = {m["name"]: m["value"] for m in by_split["test"]["metrics"]}
    assert test_metrics["Test accuracy"] == round(result.test_metrics["test_accuracy"], 4)
    assert "Test macro F1" in test_metrics
    assert all(not m["name"].startswith("Test") for m in by_split["validation"]["metrics"])
    assert "images of the test split, scored once by the final model" in card
    assert "| metric | test split |" in card


def test_the_test_split_changes_nothing(runs):
    """A test split that disagrees with everything (cat and dog swapped) leaves the run's choices and weights
    exactly as a run without it, and scores low."""
    plain, plain_out = runs["plain"]
    for name in ("with_test", "swapped"):
        result, out = runs[name]
        assert result.best_checkpoint.rsplit("-", 1)[1] == plain.best_checkpoint.rsplit("-", 1)[1]
        assert result.best_epoch == plain.best_epoch
        timing = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
        for key in set(plain.metrics_after) - set(timing):
            assert result.metrics_after[key] == plain.metrics_after[key], key
        weights, plain_weights = (
            load_file(out / "model.safetensors"),
            load_file(plain_out / "model.safetensors"),
        )
        assert weights.keys() == plain_weights.keys()
        assert all(weights[k].equal(plain_weights[k]) for k in weights)
    swapped, ordered = runs["swapped"][0].test_metrics, runs["with_test"][0].test_metrics
    assert swapped["test_accuracy"] < ordered["test_accuracy"]


def test_no_test_split_no_file_no_line(runs):
    result, out = runs["plain"]
    assert result.test_metrics == {}
    assert not (out / "test_results.json").exists()
    assert "test split" not in result.summary()
    card = (out / "README.md").read_text()
    assert "test split" not in card
    meta = yaml.safe_load(card.split("---")[1])
    assert {e["dataset"]["split"] for e in meta["model-index"][0]["results"]} == {"validation"}


@pytest.mark.parametrize(
    "extra",
    [
        {"freeze_layers": -1, "feature_cache": True},  # the head trained alone on cached features
        {"cache_images": True},
        {"ema_decay": 0.9, "ema_save": True},
        {"lora_r": 4, "bf16": False},  # the merged model is saved
    ],
    ids=["feature_cache", "cache_images", "ema", "lora"],
)
def test_each_input_mode_scores_the_saved_model(extra, tiny_hf_checkpoint, folders, tmp_path):
    """The final model (the whole model after cached features, the EMA weights) is what the test scores."""
    data_dir = folders["with_test"]
    settings = dict(SETTINGS, num_train_epochs=2, **extra)
    result = finetune(
        ModelArguments(model_name_or_path=str(tiny_hf_checkpoint)),
        DataArguments(train_dir=str(data_dir), image_size=32),
        FinetuneTrainingArguments(output_dir=str(tmp_path / "out"), **settings),
    )
    written = json.loads((tmp_path / "out" / "test_results.json").read_text())
    report = evaluate_model(
        str(tmp_path / "out"), DataArguments(train_dir=str(data_dir)), "test", reports=False
    )
    assert written["test_accuracy"] == pytest.approx(report["accuracy"], abs=1e-9)
    assert result.test_metrics["test_samples"] == 14


def test_a_dataset_test_split_is_scored(tiny_hf_checkpoint, folders, tmp_path):
    """``dataset_name`` (here a local folder ``datasets`` loads as train/validation/test splits): its ``test``
    split is the run's test split."""
    result = finetune(
        ModelArguments(model_name_or_path=str(tiny_hf_checkpoint)),
        DataArguments(dataset_name=str(folders["with_test"]), image_size=32),
        FinetuneTrainingArguments(output_dir=str(tmp_path / "out"), **dict(SETTINGS, num_train_epochs=1)),
    )
    written = json.loads((tmp_path / "out" / "test_results.json").read_text())
    assert written["test_samples"] == 14 and result.test_metrics == written
    assert result.metrics_after["eval_samples"] == 12  # val/ is the validation split, not test/
