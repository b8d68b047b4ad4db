"""Two machines for real, on one: node 0 and node 1 of a 2-node job (recipes/accelerate_configs/multi_node.yaml
with its variables given as flags), one CPU process each, rendezvous on 127.0.0.1; and a node that never joins.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from dist_runs import free_port, launch_env, node_flags, two_node_job

from hf_finetune.errors import ConfigError
from hf_finetune.runtime.launch import (
    LAUNCH_FLAGS,
    launch_command,
    main_machine,
    pop_launch_flags,
    resolve_accelerate_config,
)


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_hf_checkpoint, tiny_image_folder):
    return two_node_job(str(tmp_path_factory.getbasetemp()), str(tiny_hf_checkpoint), str(tiny_image_folder))


def test_two_nodes_train_evaluate_once_and_only_node_0_writes(job, tiny_image_folder):
    """Both nodes trained (global ranks 0 and 1); node 1's launcher did not take the output folder's lock that
    node 0's held (else it would have stopped with 'in use by another run'); only node 0's main process saved;
    the metrics are those of one process evaluating the saved model on the same 11 images."""
    assert job["returncodes"] == [0, 0], "\n".join(s[-3000:] for s in job["stdout"] + job["stderr"])
    node0, node1 = job["stdout"]
    assert "processes: 2 (DistributedType.MULTI_CPU, this is rank 0)" in node0
    assert "this is rank 1" in node1 and "this is rank 0" not in node1
    assert node0.count("model saved to") == 1 and "model saved to" not in node1
    assert not any(job["node1_cwd"].iterdir())  # node 1 wrote nothing beside it either

    out = job["out"]
    assert (out / "model.safetensors").is_file() and not (out / ".hf-finetune.lock").exists()
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_samples"] == 11
    from hf_finetune.config.arguments import DataArguments
    from hf_finetune.inference.evaluation import evaluate_model

    single = evaluate_model(
        str(out), DataArguments(train_dir=str(tiny_image_folder), max_eval_samples=11, image_size=32), seed=0
    )
    assert single["num_images"] == 11
    assert single["accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-9)
    assert single["macro_f1"] == pytest.approx(metrics["eval_macro_f1"], abs=1e-9)


def test_a_node_that_never_joins_is_one_line_naming_the_address(capsys):
    """Node 0 alone, node 1 never started: the rendezvous times out after --rdzv_timeout seconds with one
    line naming 127.0.0.1:PORT, status 2 (what `hf-finetune train` then exits with). The launcher runs in this
    process (the rendezvous fails before any rank starts, so nothing else would run)."""
    from hf_finetune.runtime import rendezvous

    port = free_port()
    flags = node_flags(0, port, mixed_precision="no", rdzv_timeout=2)[2:]  # without --accelerate_config
    command = launch_command(resolve_accelerate_config("multi_node"), ["never-read.yaml"], flags)
    assert command[1:3] == ["-m", "hf_finetune.runtime.rendezvous"]
    start = time.perf_counter()
    assert rendezvous.main(command[3:]) == 2
    seconds = time.perf_counter() - start
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"hf-finetune: error: rendezvous at 127.0.0.1:{port} failed")
    assert "1/2 clients joined" in lines[0] and "within 2 s" in lines[0] and "machine_rank 0 of 2" in lines[0]
    assert seconds < 30  # the timeout, not torch's 600 s default


def test_a_main_machine_that_never_answers_is_one_line_too(tmp_path):
    """Node 1 alone: its connection to node 0 times out (torch retries it 3 times) and the launcher, a process
    of its own as under `hf-finetune train`, prints one line naming the address, c10d's C++ retry messages
    silenced, exit 2."""
    port = free_port()
    flags = node_flags(1, port, mixed_precision="no", rdzv_timeout=1)[2:]
    command = launch_command(resolve_accelerate_config("multi_node"), ["never-read.yaml"], flags)
    proc = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=launch_env(), timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"hf-finetune: error: rendezvous at 127.0.0.1:{port} failed: the main machine")
    assert "DistNetworkError" in lines[0] and "machine_rank 1 of 2" in lines[0]
    assert not any(tmp_path.iterdir())


def test_launch_flags_fill_in_the_multi_node_template():
    flags, rest = pop_launch_flags(
        ["r.yaml", "--machine-rank", "1", "--main_process_ip=10.0.0.1", "--seed", "3", "--rdzv_timeout", "30"]
    )
    assert rest == ["r.yaml", "--seed", "3"]
    assert flags == ["--machine_rank", "1", "--main_process_ip", "10.0.0.1", "--rdzv_timeout", "30"]
    config = resolve_accelerate_config("multi_node")
    assert not main_machine(config, flags) and main_machine(config, ["--machine_rank", "0"])
    assert main_machine(config, [])  # the template's own machine_rank: 0
    command = launch_command(config, ["r.yaml"], flags)
    assert command[command.index("--rdzv_conf") + 1] == "timeout=30" and "--rdzv_timeout" not in command
    assert command[command.index("--machine_rank") + 1] == "1"
    assert set(LAUNCH_FLAGS) >= {
        "--machine_rank",
        "--num_machines",
        "--main_process_ip",
        "--main_process_port",
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--machine_rank", "-1"], "--machine_rank: expected a whole number >= 0, got '-1'"),
        (["--main_process_port", "70000"], "--main_process_port: expected a port, 1-65535, got '70000'"),
        (["--num_machines", "two"], "--num_machines: expected a whole number >= 1, got 'two'"),
        (["--rdzv_timeout", "0"], "--rdzv_timeout: expected a whole number >= 1, got '0'"),
        (["--mixed_precision", "fp32"], "--mixed_precision: expected one of no, fp16, bf16, got 'fp32'"),
        (["--main_process_ip"], "--main_process_ip: expected a value after it"),
    ],
)
def test_bad_launch_flag_is_one_line_naming_it(argv, message, capsys):
    with pytest.raises(ConfigError) as err:
        pop_launch_flags(["r.yaml", *argv])
    assert str(err.value) == message
    from hf_finetune.cli.commands import main

    assert main(["train", "r.yaml", "--accelerate_config", "multi_node", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"hf-finetune: error: {message}"
