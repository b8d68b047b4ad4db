"""The same recipe under ``accelerate launch``: configs parse, 2 CPU processes train correctly.

The two launches here are real: accelerate's launcher starts 2 processes that train over gloo.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_hf_finetune

from hf_finetune.errors import ConfigError
from hf_finetune.runtime.launch import (
    available_accelerate_configs,
    launch_command,
    pop_accelerate_config,
    resolve_accelerate_config,
)

CONFIGS_DIR = ROOT / "recipes" / "accelerate_configs"
CONFIGS = sorted(CONFIGS_DIR.glob("*.yaml"))
EXPECTED = {
    "cpu",
    "cpu_ddp",
    "single_gpu",
    "multi_gpu",
    "fsdp",
    "deepspeed_zero2",
    "deepspeed_zero2_cpu",
    "multi_node",
}


def test_the_configs_the_issue_names_exist():
    assert EXPECTED <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_accelerate_config_parses_with_accelerates_loader(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # rejects unknown keys: hyperparameters cannot sneak in
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert config.num_processes == raw["num_processes"] >= 1
    assert str(config.distributed_type.value) == raw["distributed_type"]
    assert resolve_accelerate_config(path.stem) == path
    text = path.read_text(encoding="utf-8")
    if path.stem != "multi_node":
        assert f"--accelerate_config {path.stem}" in text  # its own launch line is in its header


def test_fsdp_config_wraps_by_block_class(tiny_hf_checkpoint, tiny_timm_checkpoint):
    """TRANSFORMER_BASED_WRAP with no class list wraps the blocks hf-finetune finds, timm and transformers."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from hf_finetune.models.freezing import body_layout
    from hf_finetune.models.loading import load_model_for_labels

    raw = yaml.safe_load((CONFIGS_DIR / "fsdp.yaml").read_text())["fsdp_config"]
    assert raw["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in raw
    for checkpoint in (tiny_hf_checkpoint, tiny_timm_checkpoint):
        model = load_model_for_labels(str(checkpoint), ["a", "b"]).model
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
        policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
        wrapped = [name for name, module in model.named_modules() if policy(module)]
        modules = dict(model.named_modules())
        blocks = body_layout(model).blocks
        units = 0
        for name, _ in blocks:
            children = [c for c in modules[name].children() if sum(p.numel() for p in c.parameters())]
            is_container = type(modules[name]).__name__ in ("Sequential", "ModuleList")
            units += len(children) if is_container else 1
        assert len(wrapped) == units > 1, (checkpoint.name, wrapped)


def test_unknown_config_name_lists_the_available_ones():
    with pytest.raises(ConfigError) as err:
        resolve_accelerate_config("cpu_dd")
    message = str(err.value)
    assert "'cpu_dd'" in message and "did you mean 'cpu_ddp'" in message
    for name in EXPECTED:
        assert name in message
    with pytest.raises(ConfigError, match="neither an existing file"):
        resolve_accelerate_config("/nowhere/x.yaml")


def test_invalid_accelerate_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed_type: MULTI_GPU\nnum_processes: 2\nnot_a_key: 1\n")
    with pytest.raises(ConfigError, match="not a valid accelerate config"):
        resolve_accelerate_config(str(bad))


def test_pop_accelerate_config_and_command():
    value, rest = pop_accelerate_config(["r.yaml", "--accelerate_config", "cpu_ddp", "--seed", "3"])
    assert value == "cpu_ddp" and rest == ["r.yaml", "--seed", "3"]
    value, rest = pop_accelerate_config(["--accelerate-config=x.yaml", "r.yaml"])
    assert value == "x.yaml" and rest == ["r.yaml"]
    assert pop_accelerate_config(["r.yaml"]) == (None, ["r.yaml"])
    with pytest.raises(ConfigError):
        pop_accelerate_config(["r.yaml", "--accelerate_config"])
    cmd = launch_command(Path("c.yaml"), ["r.yaml"])
    assert cmd[1:] == [
        "-m",
        "hf_finetune.runtime.rendezvous",  # accelerate launch, a failed rendezvous in one line
        "--config_file",
        "c.yaml",
        "-m",
        "hf_finetune",
        "train",
        "r.yaml",
    ]
    assert set(available_accelerate_configs()) >= EXPECTED


def test_a_one_machine_launch_takes_a_free_port_and_a_job_of_several_keeps_its_own():
    from hf_finetune.runtime.launch import _free_port_flags

    cpu_ddp = resolve_accelerate_config("cpu_ddp")
    flags = _free_port_flags(cpu_ddp, [])
    assert flags[0] == "--main_process_port" and 1024 <= int(flags[1]) <= 65535
    with socket.socket() as busy:  # the port it names is free: it can be bound
        busy.bind(("127.0.0.1", int(flags[1])))
    assert _free_port_flags(cpu_ddp, ["--main_process_port", "29511"]) == []
    assert _free_port_flags(resolve_accelerate_config("multi_node"), []) == []  # its machines agreed on one
    assert _free_port_flags(cpu_ddp, ["--num_machines", "2"]) == []


def test_cli_unknown_accelerate_config_is_one_line_exit_2(tmp_path):
    proc = run_hf_finetune("train", "--accelerate_config", "nope", "--seed", "1", timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "accelerate_config: 'nope'" in lines[0] and "cpu_ddp" in lines[0]
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ real launches
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _write_recipe(path: Path, **keys) -> Path:
    path.write_text(yaml.safe_dump(keys, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """sklearn's real handwritten digits as an image folder."""
    from hf_finetune.demo.assets import export_digits

    return export_digits(tmp_path_factory.mktemp("digits") / "digits", val_fraction=0.2, seed=0)


def test_two_cpu_processes_train_evaluate_and_save_once(tmp_path, digits, tiny_hf_checkpoint):
    """`hf-finetune train RECIPE --accelerate_config cpu_ddp`: 2 processes over gloo; the metrics are those
    of one process evaluating the saved model on the same 51 images (none counted twice, none lost); one
    output folder, written once."""
    out = tmp_path / "run"
    recipe = _write_recipe(
        tmp_path / "recipe.yaml",
        model_name_or_path=str(tiny_hf_checkpoint),
        train_dir=str(digits),
        max_train_samples=64,
        max_eval_samples=51,  # odd: 2 ranks cannot split it evenly, the last batch is padded
        image_size=32,
        bf16=False,  # fp32, as evaluate_model runs: the two evaluations are compared exactly
        num_train_epochs=1,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=0.01,
        seed=0,
        output_dir=str(out),
        report_to="none",
        disable_tqdm=True,
    )
    proc = run_hf_finetune(
        "train", recipe, "--accelerate_config", "cpu_ddp", env=_env(), cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "processes: 2 (DistributedType.MULTI_CPU, this is rank 0)" in proc.stdout
    assert "this is rank 1" in proc.stdout  # both ranks trained
    assert proc.stdout.count("model saved to") == 1  # the summary (and the save) come from rank 0 only

    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_samples"] == 51
    from hf_finetune.config.arguments import DataArguments
    from hf_finetune.inference.evaluation import evaluate_model

    single = evaluate_model(
        str(out),
        DataArguments(train_dir=str(digits), max_eval_samples=51, image_size=32),
        seed=0,
        batch_size=13,
    )
    assert single["num_images"] == 51
    assert single["accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-9)

    # one output folder, written once, complete, nothing half-written beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml", "run"]
    assert not (out / ".final-partial").exists()
    assert len(list(out.glob("config.json"))) == 1 and (out / "model.safetensors").is_file()


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_one_step_on_two_processes_equals_one_step_on_the_double_batch(tmp_path, digits, tiny_hf_checkpoint):
    """Seeded, augmentation off, BatchNorm statistics frozen, plain SGD: one step of 2 processes x 4 images
    gives the weights of one step of 1 process x 8 images (same 8 images: the sampler order is shared).
    In fp32: bf16 autocast (the default on a CPU with AVX512-BF16) rounds the two batch shapes differently."""
    common = dict(
        bf16=False,
        model_name_or_path=str(tiny_hf_checkpoint),
        train_dir=str(digits),
        max_train_samples=64,
        max_eval_samples=8,
        image_size=32,
        augmentation="none",
        batchnorm="freeze",
        class_balance="none",  # 64 digits are skewed enough for auto's weighted loss, normalised per rank
        optim="sgd",
        learning_rate=0.5,
        weight_decay=0.0,
        max_steps=1,
        body_warmup_epochs=0,  # one step: the body must learn at its full rate from it
        eval_strategy="no",
        eval_on_start=False,
        save_strategy="no",
        load_best_model_at_end=False,
        seed=0,
        report_to="none",
        disable_tqdm=True,
    )
    two = _write_recipe(
        tmp_path / "two.yaml", per_device_train_batch_size=4, output_dir=str(tmp_path / "two"), **common
    )
    one = _write_recipe(
        tmp_path / "one.yaml", per_device_train_batch_size=8, output_dir=str(tmp_path / "one"), **common
    )
    config = CONFIGS_DIR / "cpu_ddp.yaml"
    launches = [
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(config),
            "--main_process_port",
            "29517",
            "-m",
            "hf_finetune",
            "train",
            str(two),
        ],
        [sys.executable, "-m", "hf_finetune", "train", str(one)],
    ]
    for cmd in launches:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w_two, w_one = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    from safetensors.torch import load_file

    start = load_file(str(tiny_hf_checkpoint / "model.safetensors"))
    assert w_two.keys() == w_one.keys()
    moved = max(
        float((w_one[k] - start[k]).abs().max())
        for k in w_one
        if k in start and w_one[k].shape == start[k].shape
    )
    assert moved > 1e-3  # the step did change the body
    worst = max(float((w_two[k] - w_one[k]).abs().max()) for k in w_one)
    assert worst < 1e-5, worst


def test_bf16_accumulation_and_auto_batch_size_from_a_recipe(tmp_path, tiny_hf_checkpoint, tiny_image_folder):
    """The Trainer's own keys work from a recipe: bf16 autocast (CPU), gradient accumulation, and
    auto_find_batch_size. 36 images, batch 6 x 2 accumulation = 12 per step: 3 optimizer steps an epoch."""
    from hf_finetune.config.parser import parse_train_args
    from hf_finetune.run.train import main

    recipe = _write_recipe(
        tmp_path / "r.yaml",
        model_name_or_path=str(tiny_hf_checkpoint),
        train_dir=str(tiny_image_folder),
        output_dir=str(tmp_path / "out"),
        num_train_epochs=1,
        per_device_train_batch_size=6,
        gradient_accumulation_steps=2,
        auto_find_batch_size=True,
        bf16=True,
        use_cpu=True,
        save_strategy="no",
        load_best_model_at_end=False,
        eval_on_start=False,
        report_to="none",
        disable_tqdm=True,
    )
    parsed = parse_train_args([str(recipe)])
    model_args, data_args, training_args = parsed
    assert training_args.bf16 and training_args.gradient_accumulation_steps == 2
    assert training_args.auto_find_batch_size
    main(model_args, data_args, training_args, explicit=parsed.explicit)
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert state["train_batch_size"] == 6  # auto_find_batch_size kept it: nothing ran out of memory


def test_gpu_check_script_is_ready():
    """bench/gpu_check.sh (run where a GPU is lent) parses and names files that exist."""
    script = ROOT / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    recipe = re.search(r"RECIPE=(\S+)", text).group(1)
    assert (ROOT / recipe).is_file()
    found = []
    for name in re.findall(r"^\s*(?:if .*then )?(?:NPROC=\S+ )?run \S+ (\w+)", text, flags=re.M):
        assert (CONFIGS_DIR / f"{name}.yaml").is_file(), name
        found.append(name)
    assert found == ["single_gpu", "multi_gpu"]
    scripts = set(re.findall(r"\$PY (bench/\w+\.py)", text))
    assert scripts == {"bench/step_breakdown.py", "bench/loader_cost.py", "bench/throughput.py"}
    assert all((ROOT / name).is_file() for name in scripts)
