"""The benchmark baseline (bench/transformers_example.py) is the transformers example recipe with Trainer's
defaults, and it runs: on a tiny random model here, on the real checkpoints in bench/throughput.py."""

from __future__ import annotations

import dataclasses
import re
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))


def test_the_baseline_is_the_example_with_trainer_defaults(tmp_path, tiny_hf_checkpoint, tiny_image_folder):
    import torch
    import transformers_example
    from torchvision.transforms import CenterCrop, RandomHorizontalFlip, RandomResizedCrop, Resize
    from transformers import TrainingArguments

    trainer = transformers_example.build_trainer(
        str(tiny_hf_checkpoint),
        str(tiny_image_folder / "train"),
        str(tiny_image_folder / "val"),
        str(tmp_path / "out"),
        per_device_train_batch_size=8,
        max_steps=3,
    )
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
    args = trainer.args
    assert (args.bf16, args.fp16) == (False, False) == (defaults["bf16"], defaults["fp16"])
    assert args.dataloader_num_workers == defaults["dataloader_num_workers"] == 0
    assert args.learning_rate == defaults["learning_rate"] == 5e-5
    assert args.lr_scheduler_type == defaults["lr_scheduler_type"] == "linear"
    assert args.optim == defaults["optim"]
    assert trainer.model.config.num_labels == 3  # a fresh 3-way head, no rows reused
    sample = trainer.train_dataset[0]
    assert sample["pixel_values"].shape == (3, 32, 32) and sample["pixel_values"].is_contiguous()
    train_steps, val_steps = (list(t.transforms) for t in trainer.example_transforms)
    assert [type(t) for t in train_steps[:2]] == [RandomResizedCrop, RandomHorizontalFlip]
    assert [type(t) for t in val_steps[:2]] == [Resize, CenterCrop]
    first = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    moved = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, first[k])]
    assert any(k.startswith("classifier") for k in moved) and any(k.startswith("resnet") for k in moved)


def test_every_technique_of_the_recipes_table_is_a_valid_recipe(
    tmp_path, tiny_hf_checkpoint, tiny_image_folder
):
    """bench/recipes_table.py: each row's flags parse into the keys it names (a renamed key fails here)."""
    import importlib.util

    from hf_finetune.config.parser import parse_train_args

    spec = importlib.util.spec_from_file_location("recipes_table", ROOT / "bench" / "recipes_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    base = ["--model_name_or_path", str(tiny_hf_checkpoint), "--train_dir", str(tiny_image_folder)]
    for name, flags in table.TECHNIQUES.items():
        parsed = parse_train_args([*base, "--output_dir", str(tmp_path / "out"), *flags])
        for key, value in zip(flags[::2], flags[1::2], strict=True):
            assert key[2:] in parsed.explicit, (name, key)
            assert str(parsed.explicit[key[2:]]).lower() == value.lower() or float(
                parsed.explicit[key[2:]]
            ) == float(value)


def test_step_breakdown_times_each_part_on_the_projects_trainer(tiny_hf_checkpoint, tiny_image_folder):
    """bench/step_breakdown.py's four parts run on the trainer `hf-finetune train` builds: the loader part
    draws batches across epochs, the stepping parts train the model, trainer.train() runs the asked steps."""
    import torch
    from step_breakdown import PARTS, Parts, build

    trainer, timer = build(
        tiny_hf_checkpoint, tiny_image_folder / "train", tiny_image_folder / "val", 8, 6, ["--bf16", "false"]
    )
    parts = Parts(trainer, timer)
    assert parts.resident["pixel_values"].shape == (8, 3, 32, 32)
    start = {k: v.clone() for k, v in parts.net.state_dict().items()}
    seconds = {}
    for part in PARTS:
        seconds[part] = parts.timed(part, warmup=1, steps=5)  # 36 images: 5 batches (of at most 8) an epoch
        moved = any(not torch.equal(v, start[k]) for k, v in parts.net.state_dict().items())
        assert moved is (part != "loader"), part  # only the loader part leaves the weights alone
        start = {k: v.clone() for k, v in parts.net.state_dict().items()}
    assert all(s > 0 for s in seconds.values())
    assert trainer.state.global_step == 6 and len(timer.steps) == 6


def test_loader_cost_times_both_paths_on_the_same_crops(tiny_hf_checkpoint, tiny_image_folder):
    """bench/loader_cost.py: every stage of both paths is timed, the 8-bit path hands over a quarter of the
    bytes, and a round refuses to report when the two paths' batches differ."""
    import pytest
    from loader_cost import STAGES, Paths, load_images

    transform, images = load_images(tiny_hf_checkpoint, tiny_image_folder / "train", 20)
    assert len(images) == 20
    paths = Paths(transform, images, batch=8)
    seconds = paths.round(1)
    assert set(seconds) == {"float32", "8-bit"} and all(set(s) == set(STAGES) for s in seconds.values())
    timed = [(p, s) for p in seconds for s in STAGES if (p, s) != ("float32", "normalise the batch")]
    assert all(seconds[p][s] > 0 for p, s in timed) and paths.shape == (8, 3, 32, 32)
    assert seconds["float32"]["normalise the batch"] < seconds["8-bit"]["normalise the batch"]
    from hf_finetune.data.transforms import PixelNormalizer

    off = paths.normalizer
    paths.normalizer = PixelNormalizer(off.mean + 0.5, off.std)  # no longer what the float path does
    with pytest.raises(SystemExit, match="different batches"):
        paths.round(1)


def test_defaults_table_runs_the_bare_command_and_a_probe(
    tmp_path, tiny_hf_checkpoint, tiny_image_folder, monkeypatch
):
    """bench/defaults_table.py: one run per seed of the bare command (accuracy by epoch, epoch 0 first, and the
    saved model's, which is the best of them), and the logistic-regression floor on the frozen features."""
    import defaults_table

    monkeypatch.setitem(defaults_table.MODELS, "tiny", tiny_hf_checkpoint)
    train, val = tiny_image_folder / "train", tiny_image_folder / "val"
    run = defaults_table.run_finetune("tiny", train, val, 2, 0, ["--image_size", "32"], tmp_path / "out")
    assert "failed" not in run, run.get("failed")
    assert len(run["by_epoch"]) == 3  # epoch 0, then each epoch
    assert run["saved"] == max(run["by_epoch"])
    probe = defaults_table.linear_probe("tiny", train, val)
    assert 0.6 <= probe <= 1.0  # the classes differ by colour: the random body's features separate them
    results = {"runs": {"tiny/tiny-data/0": run}, "probe": {"tiny/tiny-data": probe}}
    table = defaults_table.render(results, "defaults")
    assert f"| tiny | tiny-data | 1 | {run['by_epoch'][0]:.3f} |" in table and f"| {probe:.3f} |" in table


def test_docs_defaults_page_shows_the_measured_table():
    """docs/defaults.md carries the table bench/defaults_table.py wrote, row for row."""
    page = (ROOT / "docs" / "defaults.md").read_text()
    for name in ("defaults_table-defaults.md", "defaults_table-defaults-8k.md", "defaults_table-before.md"):
        rows = [
            line
            for line in (ROOT / "bench" / "results" / name).read_text().splitlines()
            if line.startswith("| ")
        ]
        assert rows and all(row in page for row in rows), name


def test_throughput_project_and_ceiling_run_with_the_resolved_settings(tiny_hf_checkpoint, tiny_image_folder):
    """bench/throughput.py's project row reports what the run chose for the auto keys (the parsed arguments keep
    them unset), and its ceiling steps under the precision the run resolved."""
    from throughput import run_one

    folders = (tiny_hf_checkpoint, tiny_image_folder / "train", tiny_image_folder / "val")
    project = run_one("project", *folders, 5, 8, 0, [])
    assert isinstance(project["settings"]["bf16"], bool)
    assert isinstance(project["settings"]["dataloader_num_workers"], int)
    ceiling = run_one("ceiling", *folders, 5, 8, 0, [])
    assert ceiling["images_per_second"] > 0 and ceiling["flops_per_image"] > 0


def test_the_machine_is_described_with_the_results():
    """bench/machine.py: what every bench script stores under "machine" beside its raw results."""
    import os

    from machine import describe

    machine = describe()
    assert machine["cpus"] == os.cpu_count() and machine["cpu"]
    assert machine["packages"]["torch"] and machine["packages"]["transformers"]
    for script in (
        "throughput",
        "defaults_table",
        "label_mapping",
        "loader_memory",
        "recipes_table",
        "gpu_bench",  # bench/step_breakdown.py and the gpu part of bench/throughput.py store through it
    ):
        source = (ROOT / "bench" / f"{script}.py").read_text()
        assert "describe()" in source, f"bench/{script}.py does not store the machine with its results"


def test_gpu_check_parts_write_their_rows_into_one_json(tmp_path):
    """bench/gpu_check.sh's two parts on the CPU (--smoke: tiny random models of the same families): the
    breakdown (here ViT-B/16's family) and the main table (ConvNeXt-T's: the baseline recipe, the project and
    the ceiling) each set their key of ONE results JSON, every figure positive; the second part keeps the
    first's rows. The full smoke, every row: `bash bench/gpu_check.sh --smoke`."""
    import argparse
    import json

    import gpu_bench
    import step_breakdown
    import torch

    results = tmp_path / "gpu_check.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the smoke run does: tiny models, threads would only wait for each other
    try:
        args = argparse.Namespace(smoke=True, extra=[], steps=1, warmup=1, repeats=1)
        row = step_breakdown.measure("vit_b16", 4, "cifar10", args, tmp_path)
        gpu_bench.update_results(results, "breakdown", [row])
        args = argparse.Namespace(
            smoke=True, models=["convnext_t"], datasets=["cifar10"], steps=4, budget=None, in_process=True,
            json=results,
        )  # fmt: skip
        gpu_bench.main_part(args, tmp_path)
    finally:
        torch.set_num_threads(threads)
    saved = json.loads(results.read_text())
    assert saved["machine"]["cpus"] and saved["peak_source"].startswith("NVIDIA")
    (breakdown,) = saved["breakdown"]
    assert (breakdown["model"], breakdown["batch"]) == ("vit_b16", 4)
    assert set(breakdown["images_per_second"]) == set(step_breakdown.PARTS)
    assert all(v > 0 for v in breakdown["images_per_second"].values()) and breakdown["flops_per_image"] > 0
    assert breakdown["over_ceiling"]["ceiling"] == 1.0
    (main,) = saved["main"]
    assert (main["model"], main["batch"], main["data"]) == ("convnext_t", 128, "cifar10")
    for variant in ("baseline", "project", "ceiling"):
        assert main[variant]["images_per_second"] > 0, variant
    assert 0.0 <= main["baseline"]["accuracy"] <= 1.0 and 0.0 <= main["project"]["accuracy"] <= 1.0
    assert main["ceiling"]["flops_per_image"] > 0
    ratio = main["project"]["images_per_second"] / main["ceiling"]["images_per_second"]
    assert main["project_over_ceiling"] == ratio and main["targets"]["project / ceiling"][0] == 0.9


def test_gpu_check_measures_the_issues_models_and_sizes():
    """The GPU check's rows are issue 26's: MobileNetV2 at 32 and 256, ViT-B/16 and ConvNeXt-T sized at 128,
    EfficientNet-Lite0 at 256; the main table has each at its size on the CIFAR-10 split, the two pretrained
    CNNs on hotdog too; the random stand-ins are built at the sizes named (ViT-B/16: 86M parameters)."""
    import gpu_bench
    from transformers import ViTConfig

    assert gpu_bench.BREAKDOWN == [
        ("mobilenet_v2", 32),
        ("mobilenet_v2", 256),
        ("vit_b16", 128),
        ("convnext_t", 128),
        ("efficientnet_lite0", 256),
    ]
    sizes = {model: batch for model, batch, _ in gpu_bench.MAIN}
    assert sizes == {"mobilenet_v2": 256, "efficientnet_lite0": 256, "vit_b16": 128, "convnext_t": 128}
    assert {(m, d) for m, _, d in gpu_bench.MAIN} >= {(m, "cifar10") for m in sizes} | {
        ("mobilenet_v2", "hotdog"),
        ("efficientnet_lite0", "hotdog"),
    }
    config = ViTConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.patch_size, config.image_size) == (
        768,
        12,
        16,
        224,
    )
    script = (ROOT / "bench" / "gpu_check.sh").read_text()
    budgets = [int(b) for b in re.findall(r"BUDGET_BREAKDOWN=(\d+) BUDGET_MAIN=(\d+)", script)[-1]]
    assert sum(budgets) + 30 <= 8 * 60  # the parts' budgets and the setup's 30 s fit in 8 minutes
