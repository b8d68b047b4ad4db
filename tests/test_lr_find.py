"""``hf-finetune lr-find``: an exponential ramp that stops when the loss diverges, a sensible suggestion on a tiny
task, the model's weights put back, the recipe's output folder untouched (a streamed recipe too), and bad input and
several processes in one line."""

from __future__ import annotations

import contextlib
import io
import math
import re

import pytest
import torch
import yaml

from hf_finetune.cli.commands import main
from hf_finetune.config.parser import parse_train_args
from hf_finetune.run.build import build_trainer
from hf_finetune.search.lr_find import DIVERGE, lr_find, suggest_rate

STEPS = 30


@pytest.fixture(scope="module")
def recipe(tiny_hf_checkpoint, tiny_image_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("lr_find")
    path = root / "recipe.yaml"
    keys = {
        "model_name_or_path": str(tiny_hf_checkpoint),
        "train_dir": str(tiny_image_folder / "train"),
        "validation_dir": str(tiny_image_folder / "val"),
        "output_dir": str(root / "out"),
        "per_device_train_batch_size": 8,
        "bf16": False,
        "seed": 0,
    }
    path.write_text(yaml.safe_dump(keys), encoding="utf-8")
    return path


def _cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def test_ramp_suggestion_and_weights_put_back(recipe, tmp_path):
    args = parse_train_args([str(recipe), "--output_dir", str(tmp_path / "run")])
    trainer, _, _ = build_trainer(*args)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = lr_find(trainer, start_lr=1e-6, end_lr=10.0, num_steps=STEPS)
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # parameters and BatchNorm buffers
    assert trainer.optimizer is None  # the test's optimizer is not left for a later train()
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:], strict=False)]
    assert result.lrs[0] == pytest.approx(1e-6) and all(r == pytest.approx(ratios[0]) for r in ratios)
    assert ratios[0] == pytest.approx((10.0 / 1e-6) ** (1 / (STEPS - 1)))
    # a ramp up to 10 on a tiny model diverges: stopped early, once past DIVERGE x the best smoothed loss
    assert result.diverged and len(result.lrs) < STEPS
    assert result.smoothed[-1] > DIVERGE * min(result.smoothed[:-1]) or not math.isfinite(result.smoothed[-1])
    assert 1e-5 <= result.suggestion <= 1.0, result.suggestion
    assert result.minimum_tenth < result.lrs[-1]
    # at the suggested rate the smoothed loss is falling: below the start of the ramp
    at = min(range(len(result.lrs)), key=lambda i: abs(math.log(result.lrs[i] / result.suggestion)))
    assert result.smoothed[at] < result.smoothed[0]


def test_suggestion_rule():
    lrs = [10 ** (-6 + i * 0.1) for i in range(61)]  # 1e-6 .. 1
    # flat, then the steepest fall centred at 1e-3, then a minimum at 1e-2 and a rise
    smoothed = [2.0 - 1.5 / (1 + math.exp(-(math.log10(lr) + 3) * 6)) for lr in lrs]
    smoothed = [s + max(0.0, math.log10(lr) + 2) * 3 for s, lr in zip(smoothed, lrs, strict=False)]
    suggestion, tenth, rule = suggest_rate(lrs, smoothed)
    assert suggestion == pytest.approx(1e-3, rel=0.3) and "steepest" in rule
    assert tenth == pytest.approx(1e-3, rel=0.3)  # the minimum (1e-2) / 10
    short = suggest_rate(lrs[:5], [1.0, 0.9, 0.8, 0.7, 0.6])
    assert short[0] == short[1] == pytest.approx(lrs[4] / 10) and "minimum / 10" in short[2]


def test_cli_leaves_the_output_folder_untouched(recipe, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    plot = tmp_path / "lr.png"
    code, stdout, stderr = _cli("lr-find", recipe, "--output_dir", out, "--num_steps", 20, "--plot", plot)
    assert code == 0, stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert not (recipe.parent / "out").exists()  # the recipe's own output_dir: never created
    assert plot.stat().st_size > 5000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rate = float(re.search(r"suggested learning_rate: (\S+)", stdout).group(1))
    assert 1e-5 <= rate <= 1.0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--start_lr", "1", "--end_lr", "0.1"], "--start_lr 1 is not below --end_lr 0.1"),
        (["--num_steps", "0"], "--num_steps: got 0; expected 2 to 500 steps"),
        (["--start_lr", "-1"], "--start_lr: got -1; expected a positive learning rate"),
        (["--plot", "{out}/lr.png"], "is inside the recipe's output_dir"),
        (["--plot", "lr.jpg"], "expected .png"),
        (["--learnin_rate", "1"], "unknown flag --learnin_rate (did you mean 'learning_rate'?)"),
    ],
)
def test_bad_input_is_one_line(recipe, tmp_path, flags, message):
    out = tmp_path / "out"
    flags = [f.replace("{out}", str(out)) for f in flags]
    code, stdout, stderr = _cli("lr-find", recipe, "--output_dir", out, *flags)
    assert code == 2
    assert stderr.startswith("hf-finetune: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr
    assert not out.exists()


def test_on_a_stream_a_suggestion_with_the_weights_and_the_output_folder_untouched(
    tiny_hf_checkpoint, tiny_image_folder, tmp_path, monkeypatch
):
    """A streamed recipe: the ramp reads the stream pass after pass (8 steps of a 2-step stream), suggests a
    rate, puts the weights back and never creates the recipe's output folder."""
    import datasets
    from conftest import streamed_recipe

    from hf_finetune.search import lr_find as lr_find_module
    from hf_finetune.training.stream_state import is_rank_stream

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)  # time only (test_streaming.py)
    built, real_build = [], lr_find_module.build_trainer

    def recording_build(*args, **kwargs):
        trainer = real_build(*args, **kwargs)[0]
        built.append((trainer, {k: v.clone() for k, v in trainer.model.state_dict().items()}))
        return trainer, None, None

    monkeypatch.setattr(lr_find_module, "build_trainer", recording_build)
    plots = []  # the plot itself: test_cli_leaves_the_output_folder_untouched
    monkeypatch.setattr(lr_find_module, "plot_lr_find", lambda result, path: plots.append((result, path)))
    recipe = streamed_recipe(tmp_path / "data", tiny_hf_checkpoint, tiny_image_folder)
    plot = tmp_path / "lr.png"
    argv = ["lr-find", recipe, "--start_lr", 1e-5, "--end_lr", 1e-2, "--num_steps", 8, "--plot", plot]
    code, stdout, stderr = _cli(*argv)
    assert code == 0, stderr[-2000:]
    [(trainer, before)] = built
    assert is_rank_stream(trainer.train_dataset)
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # parameters and BatchNorm buffers
    assert "lr-find: 8 steps from 1.0e-05 to 1.0e-02;" in stdout  # 4 passes of the stream, none diverged
    rate = float(re.search(r"suggested learning_rate: (\S+)", stdout).group(1))
    assert 1e-6 <= rate <= 1e-2
    assert [(len(result.lrs), path) for result, path in plots] == [(8, str(plot))]
    assert not (tmp_path / "data" / "model").exists()  # the recipe's output_dir: never created


@pytest.mark.parametrize(
    "flags, env, message",
    [
        (
            ["--accelerate_config=cpu_ddp"],
            {},
            "--accelerate_config: lr-find runs in one process (under several",
        ),
        (["--num_machines", "2"], {}, "expected no --num_machines"),
        ([], {"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE 2: lr-find started as process 0 of 2"),
    ],
)
def test_several_processes_are_refused_before_anything_loads(
    recipe, tmp_path, monkeypatch, flags, env, message
):
    """Each process would ramp its own copy of the model on its own batches and write the same plot: refused
    before the recipe is read; so is lr_find on a trainer of several processes."""
    from types import SimpleNamespace

    from hf_finetune.errors import ConfigError
    from hf_finetune.search import lr_find as lr_find_module

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(lr_find_module, "build_trainer", lambda *a, **k: pytest.fail("the run was built"))
    plot = tmp_path / "lr.png"
    code, stdout, stderr = _cli("lr-find", recipe, "--plot", plot, *flags)
    assert code == 2 and stdout == ""
    assert stderr.startswith("hf-finetune: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr and "its own copy of the model" in stderr
    assert not plot.exists()
    with pytest.raises(ConfigError, match="the trainer runs on 2 processes; expected one"):
        lr_find(SimpleNamespace(args=SimpleNamespace(world_size=2)), num_steps=2)
