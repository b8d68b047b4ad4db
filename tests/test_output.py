"""What a run prints: one training bar with evaluations as lines, the metrics once, none of transformers' three
messages a user cannot act on; every command's ``--help`` at once (no torch, no transformers) and ``train
--help`` grouped by feature."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "predict", "eval", "map-labels", "push", "export", "app", "search", "lr-find")
HELP_SECONDS = (
    2.0  # generous for a loaded CI machine; an import of transformers' TrainingArguments takes more
)
NOISE = (
    "LOAD REPORT",
    "Reinit due to size mismatch",
    "Requested torchvision backend is not available",
    "save_pretrained` method is disabled for TimmWrapperImageProcessor",
)


def _env() -> dict[str, str]:
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )


# --- help -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_answers_at_once(command):
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "hf_finetune", command, "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: hf-finetune {command}"), proc.stdout[:300]
    assert seconds < HELP_SECONDS, f"hf-finetune {command} --help took {seconds:.2f} s"


def test_help_imports_nothing_heavy():
    code = (
        "import contextlib, io, sys\n"
        "import hf_finetune.cli as c\n"
        f"for command in {COMMANDS!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try: c.main([command, '--help'])\n"
        "        except SystemExit as e: assert e.code == 0, (command, e.code)\n"
        "print([m for m in ('torch', 'transformers', 'timm', 'datasets') if m in sys.modules])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def _help(*argv: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "hf_finetune", *argv], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_train_help_is_grouped_by_feature():
    from hf_finetune.cli.help import _table

    text = _help("train", "--help")
    groups = [
        g for name in ("ModelArguments", "DataArguments", "FinetuneTrainingArguments") for g in _table()[name]
    ]
    ours = [g for g in groups if g["ours"]]
    theirs = [g for g in groups if not g["ours"]]
    assert ours and theirs
    for group in ours:  # each feature: its title (from the declaring class's docstring), then its keys
        assert f"\n{group['title']}:\n" in text, group["title"]
        for key in group["keys"]:
            assert f"\n  {key['flags'][0]}" in text, key["flags"][0]
    assert "\nhardware:\n  --accelerate_config" in text and "\ninterruptions:\n  --resume" in text
    # transformers' own keys: named in one paragraph, described by --help-all
    assert "gradient_accumulation_steps" in text and "\n  --gradient_accumulation_steps" not in text
    assert len(text.splitlines()) < 600
    full = _help("train", "--help-all")
    assert "\n  --gradient_accumulation_steps GRADIENT_ACCUMULATION_STEPS" in full
    for group in theirs:
        assert f"\n{group['title']}:\n" in full


def test_key_table_is_current():
    """The help's table is the config dataclasses' (regenerate: python -m hf_finetune.cli.key_table --write)."""
    from hf_finetune.cli.key_table import DATA_MODULE, REGENERATE, build_table, render_module

    assert DATA_MODULE.read_text(encoding="utf-8") == render_module(build_table()), f"stale: run {REGENERATE}"


def test_help_flags_are_the_real_parsers():
    """Every flag the real train parser accepts is in the help table (under one of its names)."""
    from hf_finetune.cli.help import _table
    from hf_finetune.config.parser import RecipeParser

    listed = {key["flags"][0] for groups in _table().values() for g in groups for key in g["keys"]}
    missing = [
        action.option_strings
        for action in RecipeParser()._actions
        if action.dest != "help" and action.option_strings and not listed & set(action.option_strings)
    ]
    assert not missing


# --- the three messages --------------------------------------------------------------------------------------


def _emit(logger_name: str, message: str) -> bool:
    """Whether ``message`` on ``logger_name`` gets through the installed filters."""
    from hf_finetune.runtime.log_filters import quiet_known_noise

    quiet_known_noise()
    quiet_known_noise()  # installing twice adds nothing
    logger = logging.getLogger(logger_name)
    record = logger.makeRecord(logger_name, logging.WARNING, __file__, 0, message, (), None)
    return logger.filter(record)


REPORT = (
    "\x1b[1mResNetForImageClassification LOAD REPORT\x1b[0m from: x\nKey | Status |\n"
    "classifier.1.weight | MISMATCH | Reinit due to size mismatch - ckpt: [7, 16] vs model: [3, 16]\n\n"
    "Notes:\n- MISMATCH:\tckpt weights were loaded, but they did not match the original empty weight shapes."
)


def test_filters_drop_only_the_three_messages():
    from hf_finetune.runtime.log_filters import NOISE_LOGGERS

    modeling, backend, timm_processor = NOISE_LOGGERS[0], NOISE_LOGGERS[-2], NOISE_LOGGERS[-1]
    assert not _emit(modeling, REPORT)
    with_missing = REPORT + "\n- MISSING:\tthose params were newly initialized"
    assert _emit(modeling, with_missing)  # a report with more than the head's mismatch still prints
    assert _emit(modeling, "some other warning")
    assert not _emit(backend, "Requested torchvision backend is not available. Falling back to pil backend.")
    assert _emit(backend, "Requested pil backend is not available. Falling back to torchvision backend.")
    assert not _emit(
        timm_processor,
        "The `save_pretrained` method is disabled for TimmWrapperImageProcessor. The image processor ...",
    )
    assert _emit(timm_processor, "another message")
    assert _emit("transformers.trainer", REPORT)  # other loggers are untouched


# --- the progress callback ----------------------------------------------------------------------------------


def test_progress_replaces_the_trainers_callbacks(tmp_path):
    import torch
    from transformers import PrinterCallback, ProgressCallback, Trainer, TrainingArguments

    from hf_finetune.training.progress import RunProgress, use_run_progress

    for disable in (False, True):
        args = TrainingArguments(output_dir=str(tmp_path), disable_tqdm=disable, report_to=[])
        trainer = Trainer(model=torch.nn.Linear(2, 2), args=args)
        progress = use_run_progress(trainer)
        kinds = [type(c) for c in trainer.callback_handler.callbacks]
        assert ProgressCallback not in kinds and PrinterCallback not in kinds
        assert kinds.count(RunProgress) == 1 and progress.show_bar is not disable


def test_progress_lines(capsys):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from hf_finetune.training.progress import RunProgress

    args, control = TrainingArguments(output_dir="unused", report_to=[]), TrainerControl()
    state = TrainerState(max_steps=10, global_step=0, epoch=0.0)
    progress = RunProgress(show_bar=False)  # disable_tqdm: no bar, the lines still written
    progress.on_train_begin(args, state, control)
    assert progress.bar is None
    metrics = {
        "eval_loss": 1.0986,
        "eval_accuracy": 0.3333,
        "eval_runtime": 0.25,
        "eval_samples_per_second": 48.0,
    }
    progress.on_log(args, state, control, logs=dict(metrics, epoch=0.0))  # written by on_evaluate instead
    progress.on_evaluate(args, state, control, metrics=metrics)
    state.global_step, state.epoch = 5, 1.0
    progress.on_log(args, state, control, logs={"loss": 0.91, "learning_rate": 1e-4, "epoch": 1.0})
    progress.on_evaluate(args, state, control, metrics=dict(metrics, eval_accuracy=0.5))
    progress.on_log(args, state, control, logs={"train_runtime": 1.2, "train_loss": 0.9, "epoch": 1.0})
    progress.on_train_end(args, state, control)
    progress.on_evaluate(args, state, control, metrics=metrics)  # the final evaluation: the summary's
    assert capsys.readouterr().out.splitlines() == [
        "eval epoch 0 (before training): loss 1.099, accuracy 0.3333 [0.25 s]",
        "{'loss': '0.91', 'learning_rate': '0.0001', 'epoch': '1'}",
        "eval epoch 1 (step 5/10): loss 1.099, accuracy 0.5 [0.25 s]",
    ]


# --- a tiny run ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_timm_checkpoint, tiny_image_folder):
    """One epoch of the timm checkpoint (the one that triggers all three messages) through the CLI."""
    out = tmp_path_factory.mktemp("output") / "out"
    cmd = [
        *(sys.executable, "-m", "hf_finetune", "train"),
        *("--model_name_or_path", tiny_timm_checkpoint, "--train_dir", tiny_image_folder),
        *("--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--image_size", "32"),
        *("--bf16", "false", "--output_dir", out),
    ]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out


def test_a_run_prints_none_of_the_three_messages(tiny_run):
    proc, _ = tiny_run
    for noise in NOISE:
        assert noise not in proc.stdout + proc.stderr, noise


def test_a_run_has_one_bar_and_evaluations_as_lines(tiny_run):
    proc, _ = tiny_run
    totals = set(re.findall(r"\| *\d+/(\d+) \[", proc.stderr))
    assert totals == {"5"}, totals  # the training bar's 5 steps; no evaluation bar (1 batch)
    evals = [line for line in proc.stdout.splitlines() if line.startswith("eval epoch")]
    assert [line.split(":")[0] for line in evals] == [
        "eval epoch 0 (before training)",
        "eval epoch 1 (step 5/5)",
    ]


def test_a_run_prints_its_metrics_once(tiny_run):
    proc, out = tiny_run
    assert "metrics *****" not in proc.stdout
    assert "train_runtime" not in proc.stdout and "'eval_accuracy'" not in proc.stdout
    assert proc.stdout.count("after fine-tuning:") == 1
    loss = json.loads((out / "train_results.json").read_text())["train_loss"]
    assert (
        proc.stdout.count("training loss") == 1
        and f"training loss (mean over the run): {loss:.4f}" in proc.stdout
    )
    for name in ("train_results.json", "eval_results.json", "all_results.json"):  # still written
        assert json.loads((out / name).read_text())
