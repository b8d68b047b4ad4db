"""Interruptions lose nothing: SIGINT/SIGTERM finish the step and write a checkpoint that ``--resume`` continues
from; ``kill -9`` while a checkpoint is written never leaves a folder that passes for a checkpoint; a failed
write (a full disk, a file-size limit) is one line and leaves the earlier checkpoints intact."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, make_image_folder, run_hf_finetune
from safetensors.torch import load_file

from hf_finetune import DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_finetune.errors import TrainingInterrupted
from hf_finetune.run.train import is_finished_model_dir, last_checkpoint, main
from hf_finetune.training.trainer import PARTIAL_CHECKPOINTS, FinetuneTrainer

# 36 training images at batch 8: 5 steps an epoch (the last one of 4 images), 10 steps in 2 epochs.
STEPS_PER_EPOCH, EPOCHS = 5, 2


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupt_images")
    make_image_folder(root / "train", {"cat": 12, "dog": 12, "zebra": 12}, seed=1)
    make_image_folder(root / "val", {"cat": 4, "dog": 4, "zebra": 4}, seed=2)
    return root


def _args(checkpoint: Path, images: Path, out: Path, **extra):
    return (
        ModelArguments(model_name_or_path=str(checkpoint)),
        DataArguments(train_dir=str(images), image_size=32),
        FinetuneTrainingArguments(
            output_dir=str(out),
            per_device_train_batch_size=8,
            num_train_epochs=EPOCHS,
            learning_rate=5e-3,
            bf16=False,
            **extra,
        ),
    )


def _cli_args(checkpoint: Path, images: Path, out: Path) -> list[str]:
    return [
        "train",
        "--model_name_or_path", str(checkpoint),
        "--train_dir", str(images),
        "--output_dir", str(out),
        "--per_device_train_batch_size", "8",
        "--num_train_epochs", str(EPOCHS),
        "--learning_rate", "5e-3",
        "--image_size", "32",
        "--bf16", "false",
        "--disable_tqdm", "true",
    ]  # fmt: skip


def _complete(checkpoint: Path, step: int) -> None:
    """``checkpoint`` is whole: its state says ``step`` and its weights and optimizer load."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == step
    assert load_file(checkpoint / "model.safetensors")
    assert torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]


@pytest.fixture
def recorded_batches(monkeypatch):
    """(step, labels, pixel sum) of every batch the Trainer trains on."""
    seen: list[tuple[int, list[int], float]] = []
    original = FinetuneTrainer.training_step

    def record(self, model, inputs, *args, **kwargs):
        seen.append(
            (
                self.state.global_step + 1,
                inputs["labels"].tolist(),
                float(inputs["pixel_values"].double().sum()),
            )
        )
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(FinetuneTrainer, "training_step", record)
    return seen


@pytest.mark.parametrize(
    "signum, times", [(signal.SIGTERM, 1), (signal.SIGINT, 2)], ids=["sigterm", "sigint-twice"]
)
def test_a_signal_mid_epoch_checkpoints_and_resume_ends_like_an_uninterrupted_run(
    tiny_hf_checkpoint, images, tmp_path, recorded_batches, signum, times
):
    from transformers import TrainerCallback

    class SignalAtStep7(TrainerCallback):  # step 7: the middle of epoch 2
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 7:
                for _ in range(times):  # a second Ctrl-C must not cut the checkpoint short
                    os.kill(os.getpid(), signum)

    handler_before = signal.getsignal(signum)
    reference = main(*_args(tiny_hf_checkpoint, images, tmp_path / "reference"))
    uninterrupted = list(recorded_batches)
    recorded_batches.clear()

    out = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted) as caught:
        main(*_args(tiny_hf_checkpoint, images, out), callbacks=[SignalAtStep7()])
    assert (caught.value.signum, caught.value.step, caught.value.max_steps) == (signum, 7, 10)
    assert caught.value.checkpoint == str(out / "checkpoint-7")
    assert signal.getsignal(signum) == handler_before  # the handlers are put back
    assert [step for step, _, _ in recorded_batches] == list(range(1, 8))  # step 7 finished, step 8 never ran
    _complete(out / "checkpoint-7", 7)
    assert (out / "checkpoint-5").is_dir()  # the end of epoch 1, kept (save_total_limit 2)
    assert not is_finished_model_dir(out) and not (out / PARTIAL_CHECKPOINTS).exists()
    state = json.loads((out / "checkpoint-7" / "trainer_state.json").read_text())
    evaluated_at = [entry["step"] for entry in state["log_history"] if "eval_accuracy" in entry]
    assert evaluated_at == [0, 5]  # no extra evaluation at the stop

    resumed = main(*_args(tiny_hf_checkpoint, images, out, resume_from_checkpoint="last"))
    assert is_finished_model_dir(out)
    # The same batches in the same order; the first 7 bit-identical. From step 8 the random crops differ:
    # transformers restores the checkpoint's RNG state after accelerate's loader has drawn a batch ahead.
    assert [(s, labels) for s, labels, _ in recorded_batches] == [
        (s, labels) for s, labels, _ in uninterrupted
    ]
    assert recorded_batches[:7] == uninterrupted[:7]
    after, expected = resumed.metrics_after, reference.metrics_after
    assert after["epoch"] == expected["epoch"] == EPOCHS
    assert after["eval_accuracy"] == expected["eval_accuracy"]
    assert abs(after["eval_loss"] - expected["eval_loss"]) <= 5e-3  # measured: 5e-5 (SIGTERM at step 7)
    weights, reference_weights = (
        load_file(out / "model.safetensors"),
        load_file(tmp_path / "reference" / "model.safetensors"),
    )
    assert max((weights[k] - reference_weights[k]).abs().max().item() for k in weights) <= 2e-2
    final_state = json.loads((out / "trainer_state.json").read_text())
    assert final_state["global_step"] == 10


# --- through the command line, in real processes ---------------------------------------------------------------

# Runs `hf-finetune train` with a pause after every step (so that the test can signal it mid-epoch) and a marker
# file once step 3 is done; or, with SLOW_SAVE, a pause inside the writing of the checkpoint of epoch 2.
WRAPPER = """
import os, sys, time
from pathlib import Path
from transformers import TrainerCallback
import hf_finetune.run.train as train
from hf_finetune.cli import main
from hf_finetune.training.trainer import FinetuneTrainer

marker = Path(os.environ["MARKER"])

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            marker.write_text("3")
        time.sleep(0.5)

build = train.build_trainer
def build_trainer(*args, callbacks=None, **kwargs):
    extra = [] if os.environ.get("SLOW_SAVE") else [Slow()]
    return build(*args, callbacks=[*(callbacks or []), *extra], **kwargs)
train.build_trainer = build_trainer

save_rng = FinetuneTrainer._save_rng_state
def slow_save_rng(self, output_dir):  # weights and optimizer are written by now, the state not yet
    if os.environ.get("SLOW_SAVE") and self.state.global_step == 10:
        marker.write_text(output_dir)
        time.sleep(60)
    return save_rng(self, output_dir)
FinetuneTrainer._save_rng_state = slow_save_rng
sys.exit(main(sys.argv[1:]))
"""


def _start(tmp_path: Path, argv: list[str], **env) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / "marker"
    marker.unlink(missing_ok=True)
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    process = subprocess.Popen(
        [sys.executable, str(script), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, HF_HUB_OFFLINE="1", MARKER=str(marker), **env),
    )
    return process, marker


def _wait_for(marker: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode} early:\n{process.communicate()[1][-3000:]}")
        assert time.time() < deadline, "the run never reached the point to interrupt"
        time.sleep(0.05)


def test_sigterm_to_the_command_checkpoints_and_says_how_to_resume(tiny_hf_checkpoint, images, tmp_path):
    out = tmp_path / "out"
    argv = _cli_args(tiny_hf_checkpoint, images, out)
    process, marker = _start(tmp_path, argv)
    _wait_for(marker, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    step = int(line.split("after step ")[1].split(" ")[0])
    assert 3 <= step < 10 and step != STEPS_PER_EPOCH, line  # stopped during training, not at its end
    assert line.startswith("hf-finetune: interrupted by SIGTERM after step ")
    assert f"checkpoint saved to {out / f'checkpoint-{step}'}" in line
    assert line.endswith(" --resume") and "resume with: hf-finetune train " in line
    _complete(out / f"checkpoint-{step}", step)
    assert last_checkpoint(out) == str(out / f"checkpoint-{step}")
    assert not is_finished_model_dir(out)

    resumed = run_hf_finetune(*argv, "--resume")  # the command the message gives
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert is_finished_model_dir(out)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 10
    assert (
        "resume_from_checkpoint" not in (out / "recipe.yaml").read_text()
    )  # the recipe, not this invocation


def test_kill_9_while_a_checkpoint_is_written_leaves_the_last_complete_one(
    tiny_hf_checkpoint, images, tmp_path
):
    out = tmp_path / "out"
    argv = _cli_args(tiny_hf_checkpoint, images, out)
    process, marker = _start(tmp_path, argv, SLOW_SAVE="1")
    _wait_for(marker, process)
    partial = Path(marker.read_text())
    assert partial == out / PARTIAL_CHECKPOINTS / "checkpoint-10"
    assert (partial / "model.safetensors").is_file()  # half-written: weights, no state yet
    process.kill()
    process.communicate(timeout=60)
    assert not (out / "checkpoint-10").exists()
    assert last_checkpoint(out) == str(out / "checkpoint-5")
    _complete(out / "checkpoint-5", 5)
    assert not is_finished_model_dir(out)

    resumed = run_hf_finetune(*argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from " + str(out / "checkpoint-5") in resumed.stdout + resumed.stderr
    assert is_finished_model_dir(out) and not (out / PARTIAL_CHECKPOINTS).exists()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 10


def test_a_full_disk_while_saving_is_one_line_and_the_earlier_checkpoint_survives(
    tiny_hf_checkpoint, images, tmp_path, monkeypatch, capsys
):
    """The checkpoint of epoch 2 fails half-way through its weights (ENOSPC); epoch 1's stays loadable."""
    import errno

    from hf_finetune.cli import main as cli_main

    original = FinetuneTrainer.save_model

    def save_model(self, output_dir=None, _internal_call=False):
        if output_dir and output_dir.endswith("checkpoint-10"):
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 100)  # the part that fit
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir, _internal_call)

    monkeypatch.setattr(FinetuneTrainer, "save_model", save_model)
    out = tmp_path / "out"
    assert cli_main(_cli_args(tiny_hf_checkpoint, images, out)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hf-finetune: error")]
    assert len(errors) == 1
    assert str(out / "checkpoint-10") in errors[0] and "No space left on device" in errors[0]
    assert "--resume" in errors[0]
    assert not (out / "checkpoint-10").exists() and not (out / PARTIAL_CHECKPOINTS).exists()
    _complete(out / "checkpoint-5", 5)
    assert not is_finished_model_dir(out)


def test_a_file_size_limit_stops_the_run_with_one_line(tiny_hf_checkpoint, images, tmp_path):
    """A real write failure from the operating system: RLIMIT_FSIZE below the optimizer file's size."""
    limit = 64 * 1024  # the tiny model's weights (about 30 KiB) fit; its optimizer state does not

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "hf_finetune", *_cli_args(tiny_hf_checkpoint, images, out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        preexec_fn=limited,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hf-finetune: error")]
    assert len(errors) == 1 and str(out / "checkpoint-5") in errors[0], proc.stderr[-2000:]
    assert not list(out.glob("checkpoint-*")) and not (out / PARTIAL_CHECKPOINTS).exists()
    assert not is_finished_model_dir(out)


def test_sigterm_under_accelerate_stops_every_rank_after_the_same_step(tiny_hf_checkpoint, images, tmp_path):
    """`--accelerate_config cpu_ddp` (2 processes over gloo): SIGTERM to the command reaches each rank once; the
    ranks agree on the step, write one checkpoint together (an RNG state each) and the command exits 143."""
    import threading

    import yaml

    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            dict(
                model_name_or_path=str(tiny_hf_checkpoint),
                train_dir=str(images),
                output_dir=str(out),
                image_size=32,
                per_device_train_batch_size=2,
                num_train_epochs=40,  # 360 steps: long enough to be interrupted
                eval_strategy="no",
                eval_on_start=False,
                save_strategy="no",
                load_best_model_at_end=False,
                logging_steps=1,
                disable_tqdm=True,
                report_to="none",
                bf16=False,
            )
        )
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "hf_finetune", "train", str(recipe), "--accelerate_config", "cpu_ddp"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stdout: list[str] = []
    training = threading.Event()

    def read():
        for line in process.stdout:
            stdout.append(line)
            if "'loss'" in line:
                training.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert training.wait(timeout=300), "".join(stdout)[-3000:]
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=180)[1]
    reader.join(timeout=10)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("hf-finetune: interrupted by SIGTERM")]
    assert len(lines) == 1, stderr[-3000:]  # rank 0 says it, once
    step = int(lines[0].split("after step ")[1].split(" ")[0])
    assert 1 <= step < 360
    assert lines[0].endswith("--accelerate_config cpu_ddp --resume")
    checkpoint = out / f"checkpoint-{step}"
    assert last_checkpoint(out) == str(checkpoint)
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert load_file(checkpoint / "model.safetensors")
