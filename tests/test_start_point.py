"""The epoch-0 state is a candidate for the best model: a run that only got worse saves its starting point."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_hf_finetune
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_finetune.training.start_point import StartingPointCallback, start_evaluation


def _history(*accuracies: float) -> list[dict]:
    return [
        {"step": 10 * i, "epoch": float(i), "eval_accuracy": a, "eval_loss": round(1.0 - a, 6)}
        for i, a in enumerate(accuracies)
    ]


def _end(callback, model, history, out, **args):
    state = TrainerState()
    state.log_history = history
    state.best_metric, state.best_global_step = 0.5, 30
    training_args = TrainingArguments(
        output_dir=str(out), load_best_model_at_end=True, eval_strategy="epoch", save_strategy="epoch", **args
    )
    callback.on_train_end(training_args, state, TrainerControl(), model=model)
    return state


@pytest.mark.parametrize(
    "history, metric, restored",
    [
        (_history(0.8, 0.6, 0.7, 0.75), "accuracy", True),  # never beaten
        (_history(0.8, 0.6, 0.8, 0.75), "accuracy", True),  # a tie goes to the earlier evaluation
        (_history(0.8, 0.6, 0.81, 0.75), "accuracy", False),
        (_history(0.8, 0.6, 0.7, 0.75), "loss", True),  # eval_loss 0.2 at epoch 0, then 0.4, 0.3, 0.25
        (_history(0.8, 0.6, 0.85, 0.75), "loss", False),  # epoch 2's loss 0.15 is lower
    ],
)
def test_starting_point_restored_only_when_never_beaten(history, metric, restored, tmp_path):
    model = torch.nn.Linear(3, 2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    callback = StartingPointCallback(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    state = _end(callback, model, history, tmp_path, metric_for_best_model=metric)
    assert (callback.restored is not None) == restored
    same = all(torch.equal(model.state_dict()[k], start[k]) for k in start)
    assert same == restored
    if restored:
        assert state.best_global_step == 0 and state.best_model_checkpoint is None


def test_start_evaluation_reads_step_zero():
    assert start_evaluation(_history(0.8, 0.9), "eval_accuracy") == 0.8
    assert start_evaluation(_history(0.8, 0.9)[1:], "eval_accuracy") is None


def test_run_that_only_gets_worse_saves_its_starting_point(tiny_hf_checkpoint, tiny_image_folder, tmp_path):
    """A trained model fine-tuned again at a destructive learning rate: every epoch scores below epoch 0, so the
    saved weights are the starting weights bit for bit and the summary says so."""
    first, second = tmp_path / "first", tmp_path / "second"
    common = [
        "--train_dir",
        tiny_image_folder,
        "--image_size",
        "32",
        "--seed",
        "7",
        "--per_device_train_batch_size",
        "8",
    ]
    proc = run_hf_finetune(
        "train", "--model_name_or_path", tiny_hf_checkpoint, "--output_dir", first,
        "--num_train_epochs", "4", "--learning_rate", "3e-3", *common,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_hf_finetune(
        "train", "--model_name_or_path", first, "--output_dir", second,
        "--num_train_epochs", "2", "--learning_rate", "5", "--head_lr_multiplier", "1", *common,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    history = json.loads((second / "trainer_state.json").read_text())["log_history"]
    scores = [e["eval_accuracy"] for e in history if "eval_accuracy" in e]
    assert scores[0] > 0.5 and max(scores[1:-1]) < scores[0], scores  # the setting really made it worse
    assert json.loads((second / "eval_results.json").read_text())["eval_accuracy"] == pytest.approx(scores[0])
    before, after = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "no epoch beat the starting point" in proc.stderr + proc.stdout
