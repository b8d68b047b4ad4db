"""Training throughput of `hf-finetune train` against the transformers example recipe (a script, not a test).

For each model (../shared/models: EfficientNet-Lite0 via timm, MobileNetV2 via transformers) and dataset
(../shared/data/hotdog with its train/val folders; ../shared/data/cifar10-test split into a seeded
train/val folder of symlinks), every run in its own fresh process, same images, batch size and steps:

* baseline  -- bench/transformers_example.py: the transformers example's recipe with Trainer's defaults;
* project   -- `hf-finetune train` with its defaults (bf16 autocast where the hardware has it,
               channels_last for CNNs, loader settings from the machine, label mapping, head x10 ...);
* ceiling   -- the same model, settings and optimiser as `project`, stepping on one batch of real
               images already in memory (no data loading, no Trainer): what the arithmetic allows.

Images/s are steady-state (the first 3 steps are left out), count the images each step trained on (hotdog's
200 training images make every 7th batch one of 8) and include the data loading; the main table
runs the three variants alternately --repeats times (default 2) and shows the median images/s; validation
accuracy is measured after the same number of steps on the same validation images. Peak RSS is the
process's high-water mark. Then, on hotdog + EfficientNet-Lite0, what each speed default is worth
(ablations, measured both ways; a default that acts on one model only, such as static_same_padding on the
transformers MobileNetV2, on that model), and the linear probe with the feature cache (`freeze_layers: -1`) against
the baseline's full fine-tuning epoch.

    python bench/throughput.py [--steps 24] [--batch 32] [--models efficientnet_lite0 mobilenet_v2]
        [--datasets hotdog cifar10] [--parts main ablations probe] [--repeats 2] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # bench/machine.py: the machine, saved with the results

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HF_FINETUNE_SHARED", ROOT.parent / "shared"))
MODELS = {
    "efficientnet_lite0": SHARED / "models" / "timm-tf_efficientnet_lite0",
    "mobilenet_v2": SHARED / "models" / "hf-mobilenet_v2_1.0_224",
}
WARMUP_STEPS = 3
ABLATIONS = {  # name -> extra `hf-finetune train` flags on top of the defaults
    "project, bf16 off, channels_last off": ["--bf16", "false", "--channels_last", "false"],
    "project, bf16 off (channels_last on)": ["--bf16", "false"],
    "project, channels_last off (bf16 on)": ["--channels_last", "false"],
    "project, tune_depthwise_precision off": ["--tune_depthwise_precision", "false"],
    "project, tune_inplace_activations off": ["--tune_inplace_activations", "false"],
    "project + 1 loader worker": ["--dataloader_num_workers", "1"],
    "project + cache_images": ["--cache_images", "true"],
    "project, normalize_on_device off": ["--normalize_on_device", "false"],
    "project + torch_compile": ["--torch_compile", "true"],
    "project, keep_freed_memory off": ["--keep_freed_memory", "false"],
    "project, freeze_layers 6 (Lite0: all but the last stage)": ["--freeze_layers", "6"],
}
# Defaults that act on one model only, measured on that model (with its own baseline and defaults rows).
MODEL_ABLATIONS = {
    "mobilenet_v2": {"project, static_same_padding off": ["--static_same_padding", "false"]},
}
GPU_ABLATIONS = {  # on a GPU the data pipeline is what the defaults tune
    "project, bf16 off, channels_last off": ["--bf16", "false", "--channels_last", "false"],
    "project, bf16 off (channels_last on)": ["--bf16", "false"],
    "project, channels_last off (bf16 on)": ["--channels_last", "false"],
    "project, cache_images off": ["--cache_images", "false"],
    "project, normalize_on_device off": ["--normalize_on_device", "false"],
    "project, 0 loader workers (cache_images on)": ["--dataloader_num_workers", "0"],
    "project, 0 loader workers, cache_images off": [
        "--dataloader_num_workers",
        "0",
        "--cache_images",
        "false",
    ],
    "project + torch_compile": ["--torch_compile", "true"],
}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall-clock time at the end of every optimizer step and the images that step trained on (counted at
        the model's input: the last batch of an epoch can be smaller), and the span of every epoch."""

        def __init__(self):
            self.steps: list[float] = []
            self.images: list[int] = []
            self.epochs: list[tuple[float, float]] = []
            self._epoch_start = 0.0
            self._seen = 0
            self._hook = None

        def _count(self, module, args, kwargs):
            if module.training:
                pixels = kwargs.get("pixel_values", args[0] if args else None)
                self._seen += int(pixels.shape[0]) if hasattr(pixels, "shape") else 0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if model is not None and self._hook is None:
                self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

        def on_train_end(self, args, state, control, **kwargs):
            if self._hook is not None:
                self._hook.remove()
                self._hook = None

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(time.perf_counter())
            self.images.append(self._seen)
            self._seen = 0

        def on_epoch_begin(self, args, state, control, **kwargs):
            self._epoch_start = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            self.epochs.append((self._epoch_start, time.perf_counter()))

        def images_per_second(self, batch: int) -> float:
            """Images trained on per second after the warm-up steps; ``batch`` a step unless every timed step's
            images were counted (a compiled model may run without the hook)."""
            timed = self.images[WARMUP_STEPS:]
            if not all(timed):
                timed = [batch] * len(timed)
            return sum(timed) / (self.steps[-1] - self.steps[WARMUP_STEPS - 1])

    return StepTimer()


# --- data --------------------------------------------------------------------------------------------------


def prepare_data(
    name: str, workdir: Path, per_class_train: int = 200, per_class_val: int = 50
) -> tuple[Path, Path]:
    """(train folder, validation folder) of ``name``; CIFAR-10 is split into symlinked folders."""
    if name == "hotdog":
        return SHARED / "data" / "hotdog" / "train", SHARED / "data" / "hotdog" / "val"
    source = SHARED / "data" / "cifar10-test"
    root = workdir / f"cifar10-{per_class_train}-{per_class_val}"  # one folder per split size
    if not (root / "done").exists():
        rng = random.Random(0)
        for folder in sorted(p for p in source.iterdir() if p.is_dir()):
            files = sorted(folder.iterdir())
            rng.shuffle(files)
            for split, chosen in (
                ("train", files[:per_class_train]),
                ("val", files[per_class_train : per_class_train + per_class_val]),
            ):
                target = root / split / folder.name
                target.mkdir(parents=True, exist_ok=True)
                for file in chosen:
                    (target / file.name).symlink_to(file)
        (root / "done").touch()
    return root / "train", root / "val"


# --- one run (in its own process) --------------------------------------------------------------------------


def _project_argv(
    model: Path, train: Path, val: Path, out: Path, steps: int, batch: int, seed: int
) -> list[str]:
    return [
        "--model_name_or_path", str(model),
        "--train_dir", str(train),
        "--validation_dir", str(val),
        "--output_dir", str(out),
        *(["--max_steps", str(steps)] if steps > 0 else []),
        "--per_device_train_batch_size", str(batch),
        "--seed", str(seed),
        "--eval_strategy", "no",
        "--eval_on_start", "false",
        "--save_strategy", "no",
        "--load_best_model_at_end", "false",
        "--report_to", "none",
        "--disable_tqdm", "true",
    ]  # fmt: skip


def run_one(
    variant: str, model: Path, train: Path, val: Path, steps: int, batch: int, seed: int, extra: list[str]
) -> dict:
    import logging

    logging.getLogger("hf_finetune").setLevel(logging.WARNING)
    timer = step_timer()
    out = Path(tempfile.mkdtemp(prefix="hf-finetune-throughput-"))
    result: dict = {"variant": variant}
    if variant == "baseline":
        sys.path.insert(0, str(ROOT / "bench"))
        from transformers_example import build_trainer

        if "--keep_freed_memory" in extra:  # the project's allocator setting, applied to the baseline
            from hf_finetune.runtime.performance import keep_freed_memory

            keep_freed_memory()
        trainer = build_trainer(
            str(model), str(train), str(val), str(out), batch, steps, seed, callbacks=[timer]
        )
        trainer.train()
        result["accuracy"] = trainer.evaluate()["eval_accuracy"]
        result["train_images"] = len(trainer.train_dataset)
    elif variant in ("project", "probe"):
        from hf_finetune.config.parser import parse_train_args
        from hf_finetune.run.train import main
        from hf_finetune.runtime.plan import RunPlan

        argv = _project_argv(model, train, val, out, steps, batch, seed) + extra
        model_args, data_args, training_args = parse_train_args(argv)
        plan = RunPlan()  # what the run chose for the auto keys (the parsed arguments keep them unset)
        outcome = main(model_args, data_args, training_args, callbacks=[timer], plan=plan)
        result["accuracy"] = outcome.metrics_after["eval_accuracy"]
        result["train_images"] = outcome.train_metrics.get("train_samples")
        result["settings"] = {
            "bf16": plan.get("bf16", training_args.bf16),
            "dataloader_num_workers": plan.get(
                "dataloader_num_workers", training_args.dataloader_num_workers
            ),
        }
        result["feature_cache_seconds"] = getattr(outcome, "feature_cache_seconds", None)
        if variant == "probe":
            durations = [end - start for start, end in timer.epochs]
            result["epoch_seconds"] = durations
    elif variant == "ceiling":
        result.update(_ceiling(model, train, val, out, steps, batch, seed, extra))
        result["peak_rss_mib"] = peak_rss_mib()
        return result
    else:
        raise SystemExit(f"unknown variant {variant}")
    if variant != "probe":
        result["images_per_second"] = timer.images_per_second(batch)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def _ceiling(
    model: Path, train: Path, val: Path, out: Path, steps: int, batch: int, seed: int, extra: list[str]
) -> dict:
    """The project's model, freezing, BatchNorm policy, precision, memory format, optimizer groups and gradient
    clipping, stepping on one batch of real (augmented) images held in memory."""
    import torch

    from hf_finetune.config.parser import parse_train_args
    from hf_finetune.run.train import build_trainer

    argv = _project_argv(model, train, val, out, steps, batch, seed) + extra
    model_args, data_args, training_args = parse_train_args(argv)
    trainer, _, _ = build_trainer(model_args, data_args, training_args)
    training_args = trainer.args  # the auto keys as the run resolved them
    net = trainer.model
    net.train()
    optimizer = trainer.create_optimizer()
    params = [p for p in net.parameters() if p.requires_grad]
    device_type = "cuda" if torch.cuda.is_available() and not training_args.use_cpu else "cpu"
    if device_type == "cuda":
        net.to("cuda")
    # Moved to the device and (normalize_on_device) normalised there once, as the Trainer prepares a batch.
    inputs = trainer.prepare_batch(next(iter(trainer.get_train_dataloader())))
    flops_per_image = step_flops_per_image(net, inputs, device_type, bool(training_args.bf16))
    times = []
    for _ in range(steps):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bool(training_args.bf16)):
            loss = net(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, training_args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device_type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    timed = len(times) - WARMUP_STEPS
    return {
        "images_per_second": timed * batch / (times[-1] - times[WARMUP_STEPS - 1]),
        "flops_per_image": flops_per_image,
        "device": torch.cuda.get_device_name(0) if device_type == "cuda" else "cpu",
        "peak_flops": peak_flops(device_type),
    }


def step_flops_per_image(net, inputs: dict, device_type: str, bf16: bool) -> float:
    """The arithmetic of a training step per image: 3 x the forward's FLOPs (the backward is about twice the
    forward), the forward counted by torch's FlopCounterMode on ``inputs``. Counting the backward too would
    overcount: torch's counter prices depthwise convolution backward as a dense one."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            net(**inputs)
    return 3 * counter.get_total_flops() / int(inputs["pixel_values"].shape[0])


# Dense (no 2:4 sparsity) bfloat16 tensor-core peaks, for MFU on a GPU; the first key found in
# torch.cuda.get_device_name() wins, so the PCIe / NVL parts come before their SXM names.
GPU_PEAK_BF16 = {
    "H200 NVL": 835.5e12,
    "H200": 989.5e12,
    "H100 PCIe": 756.5e12,
    "H100 NVL": 835.5e12,
    "H100": 989.5e12,
    "A100": 312e12,
    "L40S": 362.05e12,
}
PEAK_SOURCE = (
    "NVIDIA data sheets, BF16 tensor core: H200 SXM 1,979 and H200 NVL 1,671 TFLOPS (H200 Tensor Core GPU "
    "datasheet), H100 SXM 1,979, PCIe 1,513, NVL 1,671 TFLOPS (H100 datasheet), all 'with sparsity', halved here "
    "for dense; A100 312 TFLOPS dense (A100 datasheet); L40S 362.05 TFLOPS dense (L40S datasheet)"
)


def peak_flops(device_type: str) -> float | None:
    if device_type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(0)
    return next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)


_RUNS: dict[tuple, dict] = {}  # one run per (variant, model, data, flags) in a bench invocation


def spawn(
    variant: str, model: str, data: str, args, workdir: Path, extra: list[str] | None = None, repeat: int = 0
) -> dict:
    """Run one variant in a fresh process (its own peak RSS, no warm caches from another run); a run already
    made in this invocation (the baseline, shared by the tables) is reused."""
    key = (variant, model, data, tuple(extra or ()), repeat)
    if key not in _RUNS:
        _RUNS[key] = _spawn(variant, model, data, args, workdir, extra)
    return _RUNS[key]


def _spawn(variant: str, model: str, data: str, args, workdir: Path, extra: list[str] | None = None) -> dict:
    train, val = prepare_data(data, workdir)
    out = workdir / f"{variant}-{model}-{data}-{abs(hash(tuple(extra or ()))) % 10**8}.json"
    command = [
        sys.executable, __file__, "--_one", variant, "--_model", model,
        "--_train", str(train), "--_val", str(val), "--_out", str(out),
        "--steps", str(args.steps if variant != "probe" else 0), "--batch", str(args.batch),
        "--seed", str(args.seed), "--_extra", json.dumps(extra or []),
    ]  # fmt: skip
    started = time.time()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        tail = "\n".join((completed.stdout + completed.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"{variant} {model} {data} failed:\n{tail}")
    result = json.loads(out.read_text())
    result["wall_seconds"] = time.time() - started
    print(f"  {variant:<9} {model:<18} {data:<8} {' '.join(extra or [])}: " + json.dumps(
        {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items() if k != "variant"}
    ), flush=True)  # fmt: skip
    return result


# --- the tables --------------------------------------------------------------------------------------------


def main_part(args, workdir: Path) -> list[dict]:
    rows = []
    for model in args.models:
        for data in args.datasets:
            repeats = {v: [] for v in ("baseline", "project", "ceiling")}
            for repeat in range(args.repeats):  # alternated, so a slow minute of the machine hits all three
                for variant, runs in repeats.items():
                    runs.append(spawn(variant, model, data, args, workdir, repeat=repeat))
            row = {"model": model, "data": data}
            for variant, runs in repeats.items():
                merged = dict(runs[0])
                merged["images_per_second"] = statistics.median(r["images_per_second"] for r in runs)
                merged["images_per_second_runs"] = [r["images_per_second"] for r in runs]
                merged["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
                row[variant] = merged
            rows.append(row)
    print(
        "\n| model | data | baseline img/s | project img/s | ceiling img/s | project / baseline | "
        "project / ceiling | accuracy baseline | accuracy project | peak RSS baseline / project (MiB) | "
        "project GFLOP/s | MFU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        b, p, c = row["baseline"], row["project"], row["ceiling"]
        achieved = p["images_per_second"] * c["flops_per_image"]
        mfu = f"{achieved / c['peak_flops']:.1%}" if c.get("peak_flops") else "n/a (CPU)"
        print(
            f"| {row['model']} | {row['data']} | {b['images_per_second']:.2f} | {p['images_per_second']:.2f} | "
            f"{c['images_per_second']:.2f} | {p['images_per_second'] / b['images_per_second']:.2f}x | "
            f"{p['images_per_second'] / c['images_per_second']:.2f} | {b['accuracy']:.3f} | {p['accuracy']:.3f} | "
            f"{b['peak_rss_mib']:.0f} / {p['peak_rss_mib']:.0f} | {achieved / 1e9:.0f} | {mfu} |"
        )  # fmt: skip
    if rows:
        print(f"(device: {rows[0]['ceiling']['device']}; FLOPs per image: 3 x the forward's, counted by torch's "
              "FlopCounterMode)")  # fmt: skip
    return rows


def ablation_part(args, workdir: Path) -> list[dict]:
    model, data = args.models[0], args.datasets[0]
    base = spawn("baseline", model, data, args, workdir)
    rows = [
        ("baseline (transformers example)", base, base),
        (
            "baseline + keep_freed_memory",
            spawn("baseline", model, data, args, workdir, ["--keep_freed_memory"]),
            base,
        ),
        ("project defaults", spawn("project", model, data, args, workdir), base),
    ]
    for name, extra in (GPU_ABLATIONS if cuda_available() else ABLATIONS).items():
        rows.append((name, spawn("project", model, data, args, workdir, extra), base))
    for other, ablations in MODEL_ABLATIONS.items():
        if other not in args.models:
            continue
        other_base = spawn("baseline", other, data, args, workdir)
        rows.append((f"{other}: baseline", other_base, other_base))
        rows.append((f"{other}: project defaults", spawn("project", other, data, args, workdir), other_base))
        for name, extra in ablations.items():
            rows.append((f"{other}: {name}", spawn("project", other, data, args, workdir, extra), other_base))
    print(f"\n{model} on {data}, batch {args.batch}, {args.steps} steps, each in its own process:\n")
    print("| run | images/s | x baseline | accuracy | wall s (incl. load, compile, eval) |")
    print("|---|---|---|---|---|")
    for name, r, b in rows:
        print(
            f"| {name} | {r['images_per_second']:.2f} | {r['images_per_second'] / b['images_per_second']:.2f}x | "
            f"{r['accuracy']:.3f} | {r['wall_seconds']:.0f} |"
        )  # fmt: skip
    return [{"run": name, **r} for name, r, _ in rows]


def probe_part(args, workdir: Path) -> list[dict]:
    rows = []
    for model in args.models:
        for data in args.datasets:
            base = spawn("baseline", model, data, args, workdir)
            probe = spawn(
                "probe",
                model,
                data,
                args,
                workdir,
                ["--freeze_layers", "-1", "--num_train_epochs", str(args.probe_epochs)],
            )
            rows.append({"model": model, "data": data, "baseline": base, "probe": probe})
    print(
        "\nLinear probe (freeze_layers: -1) with the feature cache, against one full fine-tuning epoch of the baseline:\n"
    )
    print(
        "| model | data | train images | baseline epoch s | feature extraction s (once) | probe epoch s | "
        "per-epoch speed-up | first epoch incl. extraction | probe accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        b, p = row["baseline"], row["probe"]
        images = b["train_images"]
        baseline_epoch = images / b["images_per_second"]
        epochs = p["epoch_seconds"]
        probe_epoch = sum(epochs) / len(epochs)
        extraction = p.get("feature_cache_seconds") or 0.0
        print(
            f"| {row['model']} | {row['data']} | {images} | {baseline_epoch:.1f} | {extraction:.1f} | "
            f"{probe_epoch:.3f} | {baseline_epoch / probe_epoch:.0f}x | {baseline_epoch / (extraction + probe_epoch):.1f}x | "
            f"{p['accuracy']:.3f} |"
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--models", nargs="+", default=None, choices=[*MODELS, "vit_b16", "convnext_t"],
        help="default: all; vit_b16, convnext_t (random-weight stand-ins) in the gpu part only",
    )  # fmt: skip
    parser.add_argument("--datasets", nargs="+", default=["hotdog", "cifar10"], choices=["hotdog", "cifar10"])
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["main", "ablations", "probe"],
        choices=["main", "ablations", "probe", "gpu"],
        help="gpu: the GPU table at the sizes GPU users train (bench/gpu_bench.py MAIN; its own --steps, "
        "each row in its own process), written into --json as its 'main' key",
    )
    parser.add_argument("--smoke", action="store_true", help="gpu part: tiny models and data on the CPU")
    parser.add_argument("--in-process", action="store_true", help="gpu part: every row in this process")
    parser.add_argument("--budget", type=float, default=None, help="gpu part: seconds for all its rows")
    parser.add_argument("--probe-epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each main-table variant (median)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    for hidden in ("--_one", "--_model", "--_train", "--_val", "--_out", "--_extra", "--_config"):
        parser.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._config:  # a child run of the gpu part: one row (baseline, project, ceiling)
        import gpu_bench

        row = gpu_bench.run_config(json.loads(args._config), args.workdir)
        Path(args._out).write_text(json.dumps(row))
        return
    if args.models is None:
        args.models = list(MODELS) + (["vit_b16", "convnext_t"] if args.parts == ["gpu"] else [])
    if args.parts != ["gpu"] and not set(args.models) <= set(MODELS):
        parser.error("vit_b16 and convnext_t are measured in the gpu part only (--parts gpu)")
    if args._one:  # a child run
        result = run_one(
            args._one,
            MODELS[args._model],
            Path(args._train),
            Path(args._val),
            args.steps,
            args.batch,
            args.seed,
            json.loads(args._extra),
        )
        Path(args._out).write_text(json.dumps(result))
        return
    missing = [str(p) for p in MODELS.values() if not p.is_dir()]
    if missing and not args.smoke:
        raise SystemExit(f"needs the checkpoints of ../shared: missing {missing}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hf-finetune-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    batch = "batch per row (bench/gpu_bench.py MAIN)" if args.parts == ["gpu"] else f"batch {args.batch}"
    print(f"{os.cpu_count()} CPUs; {batch}; {args.steps} steps; timing after {WARMUP_STEPS} warm-up steps")
    results = {}
    started = time.time()
    if "gpu" in args.parts:
        import gpu_bench

        if args.smoke:
            import torch

            torch.set_num_threads(1)  # tiny models on a shared CPU: threads only wait for each other
        gpu_bench.main_part(args, workdir)  # writes its rows into --json itself, row by row
    if "main" in args.parts:
        results["main"] = main_part(args, workdir)
    if "ablations" in args.parts:
        results["ablations"] = ablation_part(args, workdir)
    if "probe" in args.parts:
        results["probe"] = probe_part(args, workdir)
    print(f"\nbench/throughput.py took {time.time() - started:.0f} s")
    if args.json and results:
        args.json.write_text(json.dumps({"machine": describe(), **results}, indent=2))


if __name__ == "__main__":
    main()
