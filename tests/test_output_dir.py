"""One run per output folder (issue 20, part A): a fresh run never mixes with an earlier run's checkpoints, two
runs never write one folder at once, ``--resume`` continues only the same recipe and labels, a user's files in the
output folder are never replaced or deleted, the output folder is never inside the training data, and a stop
signal during the final save says what happened."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, make_image_folder
from safetensors.torch import load_file

from hf_finetune.cli import main as cli_main
from hf_finetune.config.parser import parse_train_args
from hf_finetune.errors import TrainingInterrupted
from hf_finetune.run.lock import LOCK_NAME
from hf_finetune.run.output_dir import CHECKPOINT_RECIPE, RECORD_NAME
from hf_finetune.run.train import STAGING, is_finished_model_dir, last_checkpoint, main

# 36 training images at batch 8: 5 steps an epoch.
QUICK = {  # a run of two steps that writes a finished model and no checkpoint
    "max_steps": 2,
    "eval_strategy": "no",
    "save_strategy": "no",
    "eval_on_start": "false",
    "load_best_model_at_end": "false",
}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("output_dir_images")
    make_image_folder(root / "train", {"cat": 12, "dog": 12, "zebra": 12}, seed=1)
    make_image_folder(root / "val", {"cat": 4, "dog": 4, "zebra": 4}, seed=2)
    return root


def _argv(checkpoint: Path, images: Path, out: Path, **keys) -> list[str]:
    values = {
        "model_name_or_path": checkpoint,
        "train_dir": images,
        "output_dir": out,
        "image_size": 32,
        "per_device_train_batch_size": 8,
        "num_train_epochs": 2,
        "learning_rate": "5e-3",
        "bf16": "false",
        "disable_tqdm": "true",
        **keys,
    }
    return ["train"] + [item for key, value in values.items() for item in (f"--{key}", str(value))]


class _SignalAt:
    """A callback that sends SIGTERM to this process after ``step``."""

    def __new__(cls, step: int):
        from transformers import TrainerCallback

        class SignalAt(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    os.kill(os.getpid(), signal.SIGTERM)

        return SignalAt()


def _train(argv: list[str], stop_at: int | None = None):
    """``hf-finetune train`` through the Python API (so that a callback can stop it at a step)."""
    parsed = parse_train_args(argv[1:])
    callbacks = [_SignalAt(stop_at)] if stop_at is not None else None
    return main(*parsed, explicit=parsed.explicit, callbacks=callbacks)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def _message(capsys) -> str:
    """The one ``hf-finetune:`` line the command printed on stderr."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hf-finetune:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_fresh_run_refuses_folder_with_stale_checkpoints(tiny_hf_checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(TrainingInterrupted):  # run A: 3 epochs at batch 8, stopped after step 7
        _train(_argv(tiny_hf_checkpoint, images, out, num_train_epochs=3), stop_at=7)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-7"]
    before = _snapshot(out)

    run_b = _argv(tiny_hf_checkpoint, images, out, per_device_train_batch_size=4, learning_rate="1e-3")
    assert cli_main(run_b) == 2  # run B, another recipe, without --resume
    line = _message(capsys)
    assert line.startswith(f"hf-finetune: error: output_dir: {out} holds the checkpoints of an earlier run")
    assert (
        "(checkpoint-5, checkpoint-7)" in line
        and "--resume" in line
        and "--overwrite_output_dir true" in line
    )
    assert _snapshot(out) == before  # nothing touched

    # Told to overwrite, B deletes A's checkpoints first: its own checkpoint is the one it names and keeps.
    with pytest.raises(TrainingInterrupted) as caught:
        _train(run_b + ["--overwrite_output_dir", "true"], stop_at=2)
    assert caught.value.checkpoint == str(out / "checkpoint-2")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert last_checkpoint(out) == str(out / "checkpoint-2")
    recorded = json.loads((out / "checkpoint-2" / CHECKPOINT_RECIPE).read_text())["values"]
    assert (recorded["learning_rate"], recorded["per_device_train_batch_size"]) == (1e-3, 4)

    result = _train(run_b + ["--resume"])  # the suggested resume finishes B, from B's checkpoint
    assert is_finished_model_dir(out) and result.metrics_after["epoch"] == 2
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 18 and state["train_batch_size"] == 4  # 36 images at batch 4, 2 epochs
    assert "learning_rate: 0.001" in (out / "recipe.yaml").read_text()


def test_rotation_never_deletes_its_own_newest_checkpoint(tmp_path):
    """Case 1's second half: checkpoint-6 just written beside checkpoint-7 of an abandoned branch; rotation to
    one checkpoint would keep 7 and delete 6. It is skipped instead; without a later checkpoint it rotates."""
    from types import SimpleNamespace

    from hf_finetune.training.trainer import FinetuneTrainer

    for step in (5, 6, 7):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    trainer = SimpleNamespace(
        args=SimpleNamespace(save_total_limit=1), state=SimpleNamespace(best_model_checkpoint=None)
    )
    FinetuneTrainer._rotate(trainer, str(tmp_path), str(tmp_path / "checkpoint-6"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5", "checkpoint-6", "checkpoint-7"]
    FinetuneTrainer._rotate(trainer, str(tmp_path), str(tmp_path / "checkpoint-7"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-7"]


def test_interrupted_resume_of_an_older_checkpoint_names_its_own(
    tiny_hf_checkpoint, images, tmp_path, monkeypatch, capsys
):
    """Found with case 1: a run resumed from checkpoint-5 while checkpoint-7 (of the abandoned branch) is there,
    stopped after step 6: the line names its own checkpoint-6 and resumes that one, not --resume (which would
    pick checkpoint-7)."""
    import hf_finetune.run.train as train

    out = tmp_path / "out"
    argv = _argv(tiny_hf_checkpoint, images, out)
    with pytest.raises(TrainingInterrupted):
        _train(argv, stop_at=7)
    build = train.build_trainer

    def build_trainer(*args, callbacks=None, **kwargs):
        return build(*args, callbacks=[_SignalAt(6), *(callbacks or [])], **kwargs)  # before GracefulStop

    monkeypatch.setattr(train, "build_trainer", build_trainer)
    older = argv + ["--resume_from_checkpoint", str(out / "checkpoint-5")]
    assert cli_main(older) == 128 + signal.SIGTERM
    line = _message(capsys)
    assert f"after step 6 of 10; checkpoint saved to {out / 'checkpoint-6'}; resume with: " in line
    assert line.endswith(f" --resume_from_checkpoint {out / 'checkpoint-6'}")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-5",
        "checkpoint-6",
        "checkpoint-7",
    ]

    monkeypatch.undo()
    assert (
        cli_main(older + ["--resume_from_checkpoint", str(out / "checkpoint-6")]) == 0
    )  # the line's command
    logged = capsys.readouterr().out
    assert f"resuming from {out / 'checkpoint-6'}" not in logged  # an explicit path is not looked up
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 10


def test_push_while_a_run_writes_the_folder_refused(tiny_hf_checkpoint, images, tmp_path, capsys):
    """Found with case 2: `hf-finetune push` of a folder a run is writing would upload a mix of two models."""
    from hf_finetune.run.lock import output_lock

    out = tmp_path / "out"
    assert cli_main(_argv(tiny_hf_checkpoint, images, out, **QUICK)) == 0
    capsys.readouterr()
    with output_lock(out):  # a second run into it (overwrite_output_dir) holds the folder
        assert cli_main(["push", str(out), "--repo-id", "me/model"]) == 2
    line = _message(capsys)
    assert line.startswith(
        f"hf-finetune: error: OUTPUT_DIR: {out} is being written by a run (pid {os.getpid()} "
    )
    assert line.endswith("wait until that run has finished")


WRAPPER = """
import os, sys, time
from pathlib import Path
from transformers import TrainerCallback
import hf_finetune.run.train as train
from hf_finetune.cli import main

ready, go = Path(os.environ["READY"]), Path(os.environ["GO"])

class Pause(TrainerCallback):  # after step 1: say so, then wait until told to go on
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            ready.write_text(str(os.getpid()))
            deadline = time.time() + 300
            while not go.exists() and time.time() < deadline:
                time.sleep(0.05)

build = train.build_trainer
def build_trainer(*args, callbacks=None, **kwargs):
    return build(*args, callbacks=[*(callbacks or []), Pause()], **kwargs)
train.build_trainer = build_trainer
sys.exit(main(sys.argv[1:]))
"""


def test_two_runs_into_one_folder_lock(tiny_hf_checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    ready, go = tmp_path / "ready", tmp_path / "go"
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    first = subprocess.Popen(
        [sys.executable, str(tmp_path / "wrapper.py"), *_argv(tiny_hf_checkpoint, images, out, **QUICK)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, HF_HUB_OFFLINE="1", READY=str(ready), GO=str(go)),
    )
    try:
        deadline = time.time() + 180
        while not ready.exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < deadline, "the first run never reached its first step"
            time.sleep(0.05)
        before = _snapshot(out)
        lock = json.loads((out / LOCK_NAME).read_text())
        assert (lock["pid"], lock["host"]) == (first.pid, socket.gethostname())

        second = _argv(tiny_hf_checkpoint, images, out, learning_rate="1e-3", **QUICK)
        assert cli_main(second) == 2  # the second run, while the first one trains
        line = _message(capsys)
        assert line.startswith(
            f"hf-finetune: error: output_dir: {out} is in use by another run (pid {first.pid} "
        )
        assert str(out / LOCK_NAME) in line and "--output_dir NEW" in line
        assert _snapshot(out) == before  # the first run's lock and files are untouched
    finally:
        go.write_text("go")
        _, stderr = first.communicate(timeout=180)
    assert first.returncode == 0, stderr[-3000:]
    assert is_finished_model_dir(out) and not (out / LOCK_NAME).exists()
    assert "learning_rate: 0.005" in (out / "recipe.yaml").read_text()  # the first run's model, whole


def test_stale_lock_from_dead_process_reported(tiny_hf_checkpoint, images, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a run killed with kill -9 leaves its lock file behind, unlocked
    out = tmp_path / "out"
    out.mkdir()
    holder = {"pid": dead.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+0000"}
    (out / LOCK_NAME).write_text(json.dumps(holder))

    assert cli_main(_argv(tiny_hf_checkpoint, images, out, **QUICK)) == 0
    logged = capsys.readouterr().out
    assert f"output_dir: {out}: stale lock left by pid {dead.pid} on {socket.gethostname()}" in logged
    assert is_finished_model_dir(out) and not (out / LOCK_NAME).exists()


def test_resume_with_changed_learning_rate_refused(tiny_hf_checkpoint, images, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(images, data)
    out = tmp_path / "out"
    argv = _argv(tiny_hf_checkpoint, data, out)
    with pytest.raises(TrainingInterrupted):
        _train(argv, stop_at=3)
    before = _snapshot(out)

    changed = _argv(tiny_hf_checkpoint, data, out, learning_rate="1e-3", head_lr_multiplier=5)
    assert cli_main(changed + ["--resume"]) == 2
    line = _message(capsys)
    assert line.startswith(
        f"hf-finetune: error: resume_from_checkpoint: {out / 'checkpoint-3'} was trained with"
    )
    assert "head_lr_multiplier 10.0 -> 5.0, learning_rate 0.005 -> 0.001" in line
    assert "--resume_allow_changes head_lr_multiplier learning_rate" in line
    assert _snapshot(out) == before

    make_image_folder(data / "train", {"yak": 12}, seed=3)  # the same recipe, another label set
    make_image_folder(data / "val", {"yak": 4}, seed=4)
    assert cli_main(argv + ["--resume"]) == 2
    line = _message(capsys)
    assert "was trained on other labels (new: yak)" in line, line
    assert _snapshot(out) == before
    shutil.rmtree(data / "train" / "yak")
    shutil.rmtree(data / "val" / "yak")

    longer = _argv(tiny_hf_checkpoint, data, out, num_train_epochs=3)  # allowed by name: more epochs
    assert cli_main(longer + ["--resume", "--resume_allow_changes", "num_train_epochs"]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 15


USER_FILES = {
    "README.md": b"# my notes\n",
    "labels.json": b'["mine"]',
    "recipe.yaml": b"mine: true\n",
    "trainer_state.json": b"{}",
    "confusion_matrix.png": b"\x89PNG not really",
    "bad_images.json": b"[]",
    "notes.txt": b"keep me\n",
}


def test_user_files_in_output_dir_untouched(tiny_hf_checkpoint, images, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    for name, content in USER_FILES.items():
        (out / name).write_bytes(content)
    before = _snapshot(out)
    argv = _argv(tiny_hf_checkpoint, images, out, **QUICK)

    assert cli_main(argv) == 2
    line = _message(capsys)
    assert line.startswith(f"hf-finetune: error: output_dir: {out} is not empty and holds no hf-finetune run")
    assert "--overwrite_output_dir true" in line
    assert _snapshot(out) == before

    assert cli_main(argv + ["--overwrite_output_dir", "true"]) == 2  # a run would replace some of them
    line = _message(capsys)
    assert (
        f"output_dir: {out} holds README.md, bad_images.json, confusion_matrix.png, labels.json and" in line
    )
    assert "never replaces files hf-finetune did not write" in line
    assert _snapshot(out) == before

    for name in USER_FILES:  # a file of a name no run writes: the run writes beside it, run after run
        if name != "notes.txt":
            (out / name).unlink()
    for _ in range(2):
        assert cli_main(argv + ["--overwrite_output_dir", "true"]) == 0
        assert is_finished_model_dir(out) and (out / "notes.txt").read_bytes() == USER_FILES["notes.txt"]
    assert json.loads((out / RECORD_NAME).read_text()) == {"kept": ["notes.txt"]}


def test_output_dir_inside_training_data_refused(tiny_hf_checkpoint, images, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(images, data)
    before = _snapshot(data)
    out = data / "train" / "cat" / "run"
    assert cli_main(_argv(tiny_hf_checkpoint, data / "train", out, **QUICK)) == 2
    line = _message(capsys)
    assert line == (
        f"hf-finetune: error: output_dir: {out} is inside train_dir {data / 'train'}; the run's own files "
        f"(figures, checkpoints) would be read as training images by the next run; choose a folder outside "
        f"{data / 'train'}"
    )
    assert _snapshot(data) == before and not out.exists()


def test_output_dir_null_in_yaml(tiny_hf_checkpoint, images, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_hf_checkpoint}\ntrain_dir: {images}\nimage_size: 32\noutput_dir: ~\n"
    )
    assert cli_main(["train", str(recipe), "--max_steps", "1"]) == 2
    line = _message(capsys)
    assert line == (
        "hf-finetune: error: output_dir: got null; expected a folder (leave the key out for outputs/hf-finetune)"
    )
    assert list(tmp_path.iterdir()) == [recipe]  # no trainer_output/, no outputs/


def test_sigterm_during_final_save_says_so(tiny_hf_checkpoint, images, tmp_path, monkeypatch, capsys):
    import hf_finetune.inference.reports as reports

    out = tmp_path / "out"
    argv = _argv(tiny_hf_checkpoint, images, out)
    original = reports.write_training_figures

    def figures_then_sigterm(*args, **kwargs):  # the staging folder holds the weights by now
        assert (out / STAGING / "model.safetensors").is_file()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return original(*args, **kwargs)

    monkeypatch.setattr(reports, "write_training_figures", figures_then_sigterm)
    handler_before = signal.getsignal(signal.SIGTERM)
    assert cli_main(argv) == 128 + signal.SIGTERM
    line = _message(capsys)
    assert line == (
        "hf-finetune: interrupted by SIGTERM after all 10 steps, while the final model was being written; it was "
        f"not written, the checkpoints are intact (the newest: {out / 'checkpoint-10'}); resume with: "
        f"hf-finetune {' '.join(argv)} --resume"
    )
    assert signal.getsignal(signal.SIGTERM) == handler_before
    assert not is_finished_model_dir(out) and not (out / STAGING).exists()
    assert json.loads((out / "checkpoint-10" / "trainer_state.json").read_text())["global_step"] == 10
    assert load_file(out / "checkpoint-10" / "model.safetensors")
    assert torch.load(out / "checkpoint-10" / "optimizer.pt", weights_only=True)["state"]

    monkeypatch.undo()
    assert cli_main(argv + ["--resume"]) == 0  # the command the line gives
    assert is_finished_model_dir(out)


def test_rerun_recipe_yaml_message(tiny_hf_checkpoint, images, tmp_path, capsys):
    first = tmp_path / "first"
    assert cli_main(_argv(tiny_hf_checkpoint, images, first, **QUICK)) == 0
    recipe = first / "recipe.yaml"
    header = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    assert header[-1] == "#   hf-finetune train recipe.yaml --output_dir NEW"
    capsys.readouterr()

    assert cli_main(["train", str(recipe)]) == 2  # as the header used to say: into the same folder
    line = _message(capsys)
    assert line == (
        f"hf-finetune: error: output_dir: {first} already holds a fine-tuned model; train into a new folder "
        "with --output_dir NEW, or pass --overwrite_output_dir true to replace it"
    )
    second = tmp_path / "second"
    assert cli_main(["train", str(recipe), "--output_dir", str(second)]) == 0  # as it says now
    assert is_finished_model_dir(second)


def test_validation_dir_equal_train_dir_warns(tiny_hf_checkpoint, images, tmp_path, capsys):
    train = images / "train"
    out = tmp_path / "out"
    assert cli_main(_argv(tiny_hf_checkpoint, train, out, validation_dir=train, **QUICK)) == 0
    logged = capsys.readouterr().out
    assert (
        f"validation_dir is train_dir ({train}): the model is validated on its own training images" in logged
    )
