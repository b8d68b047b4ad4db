"""FSDP for real: 2 CPU processes over gloo through recipes/accelerate_configs/fsdp_cpu.yaml (fsdp.yaml's FSDP2
settings) train, checkpoint their shards, resume, and save a model pipeline() loads; after the same steps on
the same data its weights are the DDP run's (tests/dist_runs.py: the 2-node job) within 1e-5.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT
from dist_runs import STEPS, free_port, launch_env, max_abs_diff, two_node_job, write_recipe

CONFIGS = ROOT / "recipes" / "accelerate_configs"
TOLERANCE = 1e-5  # max abs difference of any weight, FSDP vs DDP after STEPS steps (measured: ~1e-7)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory, tiny_hf_checkpoint, tiny_image_folder):
    """One FSDP run of STEPS steps with a checkpoint every 2 steps, then the same folder resumed (--resume)
    from the step-2 checkpoint after the last checkpoint is removed."""
    root = tmp_path_factory.mktemp("fsdp")
    out = root / "run"
    recipe = write_recipe(
        root / "recipe.yaml",
        tiny_hf_checkpoint,
        tiny_image_folder,
        output_dir=str(out),
        save_strategy="steps",
        save_steps=2,
    )

    def train(
        *flags,
    ):  # accelerate's own launcher, as `hf-finetune train --accelerate_config fsdp_cpu` runs it
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(CONFIGS / "fsdp_cpu.yaml"),
        ]
        command += [
            "--main_process_port",
            str(free_port()),
            "-m",
            "hf_finetune",
            "train",
            str(recipe),
            *flags,
        ]
        proc = subprocess.run(
            command, capture_output=True, text=True, cwd=root, env=launch_env(), timeout=600
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    first = train()
    full = _weights(out)
    shutil.rmtree(out / f"checkpoint-{STEPS}")
    resumed = train("--resume")
    return {"out": out, "first": first, "full": full, "resumed": resumed}


def test_fsdp_cpu_config_is_fsdp_yaml_on_cpus():
    """The CPU variant proves the GPU file's FSDP settings: its fsdp_config block is fsdp.yaml's, key for key."""
    gpu = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())
    cpu = yaml.safe_load((CONFIGS / "fsdp_cpu.yaml").read_text())
    assert cpu["fsdp_config"] == gpu["fsdp_config"] and cpu["fsdp_config"]["fsdp_version"] == 2
    assert cpu["distributed_type"] == "FSDP" and cpu["num_processes"] == 2 and cpu["mixed_precision"] == "no"


def test_fsdp_trains_sharded_and_matches_ddp(
    fsdp_runs, tmp_path_factory, tiny_hf_checkpoint, tiny_image_folder
):
    """Both ranks ran under FSDP (accelerate's own FSDP2 path on CPU), wrote a sharded optimizer into each
    checkpoint, and after STEPS steps every weight is within TOLERANCE of the 2-process DDP run's."""
    stdout = fsdp_runs["first"].stdout
    assert "processes: 2 (DistributedType.FSDP, this is rank 0)" in stdout and "this is rank 1" in stdout
    assert "channels_last: off (auto: FSDP" in stdout  # FSDP2 shards contiguous parameters only
    assert stdout.count("model saved to") == 1
    checkpoint = fsdp_runs["out"] / "checkpoint-2"
    assert (checkpoint / "optimizer.bin").is_file() and (checkpoint / "pytorch_model_fsdp.bin").is_file()

    ddp = two_node_job(str(tmp_path_factory.getbasetemp()), str(tiny_hf_checkpoint), str(tiny_image_folder))
    assert ddp["returncodes"] == [0, 0]
    reference, start = _weights(ddp["out"]), _weights(tiny_hf_checkpoint)
    moved = max(float((reference[k] - start[k]).abs().max()) for k in start if k.startswith("resnet."))
    assert moved > 100 * TOLERANCE  # the steps changed the body far beyond the tolerance
    assert max_abs_diff(fsdp_runs["full"], reference) <= TOLERANCE
    # the evaluation under FSDP counts the 11 validation images once, as the DDP run's does
    fsdp_eval = json.loads((fsdp_runs["out"] / "eval_results.json").read_text())
    ddp_eval = json.loads((ddp["out"] / "eval_results.json").read_text())
    assert fsdp_eval["eval_samples"] == ddp_eval["eval_samples"] == 11
    assert fsdp_eval["eval_accuracy"] == pytest.approx(ddp_eval["eval_accuracy"], abs=1e-9)


def test_fsdp_resumes_from_its_sharded_checkpoint_and_pipeline_loads_it(fsdp_runs, tiny_image_folder):
    """--resume continues from checkpoint-2 (model and optimizer shards, scheduler, RNG) to the same weights
    as the uninterrupted run; transformers' pipeline() loads the saved model and names the run's labels."""
    stdout = fsdp_runs["resumed"].stdout
    assert f"resuming from {fsdp_runs['out'] / 'checkpoint-2'}" in stdout
    assert max_abs_diff(_weights(fsdp_runs["out"]), fsdp_runs["full"]) <= TOLERANCE

    from transformers import pipeline

    classify = pipeline("image-classification", model=str(fsdp_runs["out"]), device="cpu")
    images = sorted((tiny_image_folder / "val").glob("*/*.png"))[:3]
    results = classify([str(p) for p in images], top_k=3)
    assert all({r["label"] for r in result} == {"cat", "dog", "zebra"} for result in results)
    assert all(abs(sum(r["score"] for r in result) - 1) < 1e-4 for result in results)
