"""Real multi-process runs shared by tests/test_multi_node.py and tests/test_fsdp.py.

:func:`two_node_job` is a 2-node job on this machine (node 0 and node 1, one CPU process each, DDP over gloo,
rendezvous on 127.0.0.1): it is the DDP reference the FSDP run is compared with, so it runs once per test
session (cached), whichever module asks first.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import ROOT

STEPS = 4  # optimizer steps of every run here: 2 processes x 4 images a step


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1"
    )
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def write_recipe(path: Path, checkpoint: Path, images: Path, **keys) -> Path:
    """A recipe whose weights are reproducible to float rounding under any process layout: fp32, no
    augmentation, BatchNorm statistics frozen, ``STEPS`` steps of 2 x 4 images."""
    recipe = dict(
        model_name_or_path=str(checkpoint),
        train_dir=str(images),
        image_size=32,
        bf16=False,
        augmentation="none",
        batchnorm="freeze",
        class_balance="none",
        optim="adamw_torch",  # an optimizer with state: its shards are checkpointed and resumed
        learning_rate=0.01,
        weight_decay=0.0,
        max_steps=STEPS,
        body_warmup_epochs=0,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_eval_samples=11,  # odd: 2 ranks cannot split it evenly
        eval_strategy="no",
        eval_on_start=False,
        save_strategy="no",
        load_best_model_at_end=False,
        seed=0,
        report_to="none",
        disable_tqdm=True,
    )
    recipe.update(keys)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def train_command(recipe: Path, *flags) -> list[str]:
    return [sys.executable, "-m", "hf_finetune", "train", str(recipe), *(str(f) for f in flags)]


def node_flags(rank: int, port: int, **extra) -> list[str]:
    """The placement flags that fill in recipes/accelerate_configs/multi_node.yaml for node ``rank``."""
    flags = ["--accelerate_config", "multi_node", "--num_machines", "2", "--num_processes", "2"]
    flags += ["--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    for key, value in extra.items():
        flags += [f"--{key}", str(value)]
    return flags


@functools.cache
def two_node_job(base: str, checkpoint: str, images: str) -> dict:
    """Node 0 and node 1 of a 2-node job, both training into the same folder (as on a shared disk): node 0
    started first holds the output folder's lock while it waits for node 1. Returns the run's folder, both
    nodes' outputs and the wall time."""
    root = Path(base) / "two_nodes"
    root.mkdir()
    out = root / "run"
    recipe = write_recipe(root / "recipe.yaml", Path(checkpoint), Path(images), output_dir=str(out))
    node1_cwd = root / "node1_cwd"  # node 1's working folder: stays empty
    node1_cwd.mkdir()
    port = free_port()
    start = time.perf_counter()
    procs = []
    for rank, cwd in ((0, root), (1, node1_cwd)):
        command = train_command(recipe, *node_flags(rank, port, mixed_precision="no"))
        procs.append(
            subprocess.Popen(
                command, cwd=cwd, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
        if rank == 0:
            time.sleep(1.0)  # node 0 takes the lock first
    outputs = [p.communicate(timeout=600) for p in procs]
    return {
        "out": out,
        "recipe": recipe,
        "node1_cwd": node1_cwd,
        "returncodes": [p.returncode for p in procs],
        "stdout": [o[0] for o in outputs],
        "stderr": [o[1] for o in outputs],
        "seconds": time.perf_counter() - start,
    }


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
