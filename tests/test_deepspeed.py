"""DeepSpeed ZeRO-2 for real where the deepspeed package is installed (the `deepspeed` extra, not in dev):
2 CPU processes through recipes/accelerate_configs/deepspeed_zero2_cpu.yaml (DeepSpeed's CPU accelerator,
gloo, fp32) train, checkpoint their optimizer shards, resume, and save a model pipeline() loads; after the
same steps on the same data its weights are the DDP run's (tests/dist_runs.py: the 2-node job) within 1e-5.
Without the package those tests skip; the launch checks below run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT
from dist_runs import STEPS, free_port, launch_env, max_abs_diff, two_node_job, write_recipe

CONFIGS = ROOT / "recipes" / "accelerate_configs"
TOLERANCE = 1e-5  # max abs difference of any weight, ZeRO-2 vs DDP after STEPS steps (measured: 6e-8)
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed (pip install 'hf-finetune[deepspeed]'; not in dev)",
)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _run(command, cwd):
    # the first DeepSpeed run on a machine builds its CPU collective op (minutes, then cached)
    proc = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=launch_env(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def zero2_runs(tmp_path_factory, tiny_hf_checkpoint, tiny_image_folder):
    """One ZeRO-2 run of STEPS steps through `hf-finetune train --accelerate_config deepspeed_zero2_cpu`,
    a checkpoint every 2 steps; then the same folder resumed from checkpoint-2 (the last one removed) through
    accelerate's own launcher, which passes no --ddp_backend."""
    root = tmp_path_factory.mktemp("deepspeed")
    out = root / "run"
    recipe = write_recipe(
        root / "recipe.yaml",
        tiny_hf_checkpoint,
        tiny_image_folder,
        output_dir=str(out),
        save_strategy="steps",
        save_steps=2,
    )
    hf_finetune = [sys.executable, "-m", "hf_finetune", "train", str(recipe)]
    first = _run([*hf_finetune, "--accelerate_config", "deepspeed_zero2_cpu"], root)
    full = _weights(out)
    shutil.rmtree(out / f"checkpoint-{STEPS}")
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    accelerate += [str(CONFIGS / "deepspeed_zero2_cpu.yaml"), "--main_process_port", str(free_port())]
    resumed = _run([*accelerate, "-m", "hf_finetune", "train", str(recipe), "--resume"], root)
    return {"out": out, "first": first, "full": full, "resumed": resumed}


def test_deepspeed_cpu_config_is_deepspeed_zero2_yaml_on_cpus():
    """The CPU variant proves the GPU file's ZeRO settings: its deepspeed_config block is deepspeed_zero2.yaml's."""
    gpu = yaml.safe_load((CONFIGS / "deepspeed_zero2.yaml").read_text())
    cpu = yaml.safe_load((CONFIGS / "deepspeed_zero2_cpu.yaml").read_text())
    assert cpu["deepspeed_config"] == gpu["deepspeed_config"] and cpu["deepspeed_config"]["zero_stage"] == 2
    assert (
        cpu["distributed_type"] == "DEEPSPEED"
        and cpu["num_processes"] == 2
        and cpu["mixed_precision"] == "no"
    )


def test_bf16_deepspeed_without_a_gpu_is_one_line_naming_the_cpu_config(monkeypatch):
    """Without a visible GPU, the bf16 GPU config is refused before any process starts (the CPU config runs)."""
    import torch

    from hf_finetune.errors import ConfigError
    from hf_finetune.runtime import launch as launch_module

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: DeepSpeed in bf16 may run")
    monkeypatch.setattr(launch_module, "_deepspeed_installed", lambda: True)
    config = launch_module.resolve_accelerate_config("deepspeed_zero2")
    with pytest.raises(ConfigError) as err:
        launch_module.launch(config, ["never-read.yaml"])
    assert str(err.value).startswith(
        f"accelerate_config: {config} asks for DeepSpeed in bf16, which needs a GPU"
    )
    assert "deepspeed_zero2_cpu" in str(err.value) and "fsdp_cpu" in str(err.value)
    launch_module._check_hardware(launch_module.resolve_accelerate_config("deepspeed_zero2_cpu"))  # accepted


def test_deepspeed_without_its_package_is_one_line(monkeypatch):
    from hf_finetune.errors import ConfigError
    from hf_finetune.runtime import launch as launch_module

    monkeypatch.setattr(launch_module, "_deepspeed_installed", lambda: False)
    config = launch_module.resolve_accelerate_config("deepspeed_zero2_cpu")
    with pytest.raises(ConfigError, match=r"deepspeed package is not installed.*hf-finetune\[deepspeed\]"):
        launch_module.launch(config, ["never-read.yaml"])


def test_a_deepspeed_rank_without_a_gpu_talks_gloo_and_is_not_switched_to_use_cpu(monkeypatch):
    """accelerate drops DeepSpeed under use_cpu, and knows no backend for a CPU-only torch: a DeepSpeed rank
    keeps use_cpu off and gets ddp_backend gloo (FinetuneTrainingArguments asks; a recipe's own is kept)."""
    from types import SimpleNamespace

    import torch

    from hf_finetune.config.arguments import deepspeed_backend_on_cpu
    from hf_finetune.runtime.launch import use_cpu_when_no_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    plain = SimpleNamespace(ddp_backend=None)
    assert deepspeed_backend_on_cpu(plain) is False and plain.ddp_backend is None
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert use_cpu_when_no_gpu() is False and "ACCELERATE_USE_CPU" not in os.environ
    args, kept = SimpleNamespace(ddp_backend=None), SimpleNamespace(ddp_backend="mpi")
    assert deepspeed_backend_on_cpu(args) is True and args.ddp_backend == "gloo"
    assert deepspeed_backend_on_cpu(kept) is False and kept.ddp_backend == "mpi"


@pytest.mark.slow
@needs_deepspeed
def test_zero2_trains_sharded_and_matches_ddp(
    zero2_runs, tmp_path_factory, tiny_hf_checkpoint, tiny_image_folder
):
    """Both ranks ran under DeepSpeed, each wrote its ZeRO optimizer shard into the checkpoint, and after
    STEPS steps every weight is within TOLERANCE of the 2-process DDP run's."""
    stdout = zero2_runs["first"].stdout
    assert "processes: 2 (DistributedType.DEEPSPEED, this is rank 0)" in stdout and "this is rank 1" in stdout
    assert "channels_last: off (auto: DeepSpeed" in stdout
    assert stdout.count("model saved to") == 1
    shards = zero2_runs["out"] / "checkpoint-2" / "global_step2"
    assert {p.name for p in shards.glob("zero_pp_rank_*_optim_states.pt")} == {
        f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)
    }

    ddp = two_node_job(str(tmp_path_factory.getbasetemp()), str(tiny_hf_checkpoint), str(tiny_image_folder))
    assert ddp["returncodes"] == [0, 0]
    reference, start = _weights(ddp["out"]), _weights(tiny_hf_checkpoint)
    moved = max(float((reference[k] - start[k]).abs().max()) for k in start if k.startswith("resnet."))
    assert moved > 100 * TOLERANCE  # the steps changed the body far beyond the tolerance
    assert max_abs_diff(zero2_runs["full"], reference) <= TOLERANCE
    ds_eval = json.loads((zero2_runs["out"] / "eval_results.json").read_text())
    ddp_eval = json.loads((ddp["out"] / "eval_results.json").read_text())
    assert ds_eval["eval_samples"] == ddp_eval["eval_samples"] == 11
    assert ds_eval["eval_accuracy"] == pytest.approx(ddp_eval["eval_accuracy"], abs=1e-9)


@pytest.mark.slow
@needs_deepspeed
def test_zero2_resumes_from_its_checkpoint_and_pipeline_loads_it(zero2_runs, tiny_image_folder):
    """--resume continues from checkpoint-2 (engine, optimizer shards, scheduler, RNG) to the uninterrupted
    run's weights; transformers' pipeline() loads the saved model and names the run's labels."""
    assert f"resuming from {zero2_runs['out'] / 'checkpoint-2'}" in zero2_runs["resumed"].stdout
    assert max_abs_diff(_weights(zero2_runs["out"]), zero2_runs["full"]) <= TOLERANCE

    from transformers import pipeline

    classify = pipeline("image-classification", model=str(zero2_runs["out"]), device="cpu")
    images = sorted((tiny_image_folder / "val").glob("*/*.png"))[:3]
    results = classify([str(p) for p in images], top_k=3)
    assert all({r["label"] for r in result} == {"cat", "dog", "zebra"} for result in results)
    assert all(abs(sum(r["score"] for r in result) - 1) < 1e-4 for result in results)
