"""The GPU check's Python half (bench/gpu_check.sh drives it; a module, not a script).

What it measures, at the sizes GPU users train (issue 26):

* ``BREAKDOWN`` -- bench/step_breakdown.py's four parts (loader alone, ceiling, loader-fed step without a
  Trainer, ``trainer.train()``), one process for all of them, on the CIFAR-10 split;
* ``MAIN`` -- bench/throughput.py's GPU table: per (model, batch, data) one fresh process running the
  transformers-example baseline, then ``hf-finetune train`` with its defaults, then the compute ceiling;
  images/s, ratios, accuracy after the same steps, MFU.

Models: the shared MobileNetV2 and EfficientNet-Lite0 checkpoints, and two random-weight stand-ins made once
into the work folder: ``vit_b16`` (transformers ``ViTConfig()`` defaults: ViT-B/16 at 224 px, 86M parameters)
and ``convnext_t`` (timm ``convnext_tiny``, ``pretrained=False``, 28M). With ``smoke`` every model is a tiny
random one of the same family, the data a tiny generated folder, and the run is on the CPU (a wiring check
that runs in seconds; its figures mean nothing).

Every part writes its rows into ONE JSON (:func:`update_results`) as soon as each row is measured, so a part
cut short by its time budget still leaves the rows it finished.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import throughput  # bench/throughput.py: data, recipe flags, the three variants, the peak table
from machine import describe  # bench/machine.py

# (model, batch) for bench/step_breakdown.py; (model, batch, data) for the main table. The hotdog rows are for
# accuracy (200 training images: every step of 256 is one epoch); their ceiling is the CIFAR-10 row's (the
# ceiling steps on a batch already on the device, so it does not depend on the data).
BREAKDOWN = [
    ("mobilenet_v2", 32),
    ("mobilenet_v2", 256),
    ("vit_b16", 128),
    ("convnext_t", 128),
    ("efficientnet_lite0", 256),
]
MAIN = [
    ("mobilenet_v2", 256, "cifar10"),
    ("efficientnet_lite0", 256, "cifar10"),
    ("vit_b16", 128, "cifar10"),
    ("convnext_t", 128, "cifar10"),
    ("mobilenet_v2", 256, "hotdog"),
    ("efficientnet_lite0", 256, "hotdog"),
]
# Issue 26's targets: project / ceiling at least, project / baseline at least.
TARGETS = {
    "vit_b16": {"ceiling": 0.9},
    "convnext_t": {"ceiling": 0.9},
    "mobilenet_v2": {"ceiling": 0.8, "baseline": 3.0},
    "efficientnet_lite0": {"ceiling": 0.8, "baseline": 3.0},
}
RANDOM_MODELS = ("vit_b16", "convnext_t")
# On the CPU smoke run: nothing tuned or cached, no loader processes, one thread (the figures are not the point).
SMOKE_FLAGS = [
    "--bf16", "false",
    "--dataloader_num_workers", "0",
    "--tune_depthwise_precision", "false",
    "--tune_inplace_activations", "false",
    "--cache_images", "false",
]  # fmt: skip
SMOKE_SIZE = 32


# --- models and data ---------------------------------------------------------------------------------------


def checkpoint(name: str, root: Path, smoke: bool = False) -> Path:
    """The checkpoint folder of ``name``: the shared one, or a random-weight one made once under ``root``."""
    if not smoke and name not in RANDOM_MODELS:
        return throughput.MODELS[name]
    folder = root / f"{name}{'-smoke' if smoke else ''}"
    if not folder.is_dir():  # made beside it, then renamed: a run stopped while saving leaves no half folder
        import shutil
        import tempfile

        import torch

        torch.manual_seed(0)
        root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        MAKERS[name](partial, smoke)
        try:
            partial.rename(folder)
        except OSError:  # another process made it first
            shutil.rmtree(partial, ignore_errors=True)
    return folder


def _vit_b16(folder: Path, smoke: bool) -> None:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    tiny = dict(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, patch_size=8
    )
    size = SMOKE_SIZE if smoke else 224
    ViTForImageClassification(ViTConfig(image_size=size, **(tiny if smoke else {}))).save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)


def _timm(architecture: str, folder: Path, smoke: bool, model_args: dict) -> None:
    import timm

    model = timm.create_model(architecture, pretrained=False, **model_args)
    if smoke:
        model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, SMOKE_SIZE, SMOKE_SIZE))
    timm.models.save_for_hf(model, str(folder), model_args=model_args or None, safe_serialization=True)


def _convnext_t(folder: Path, smoke: bool) -> None:
    tiny = {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}
    _timm("convnext_tiny", folder, smoke, tiny if smoke else {})


def _lite0(folder: Path, smoke: bool) -> None:  # smoke only: the shared checkpoint otherwise
    _timm("tf_efficientnet_lite0", folder, smoke, {})


def _mobilenet_v2(folder: Path, smoke: bool) -> None:  # smoke only
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification, MobileNetV2ImageProcessor

    config = MobileNetV2Config(depth_multiplier=0.35, image_size=SMOKE_SIZE)
    MobileNetV2ForImageClassification(config).save_pretrained(folder)
    crop = {"height": SMOKE_SIZE, "width": SMOKE_SIZE}
    MobileNetV2ImageProcessor(size={"shortest_edge": SMOKE_SIZE}, crop_size=crop).save_pretrained(folder)


MAKERS = {
    "vit_b16": _vit_b16,
    "convnext_t": _convnext_t,
    "efficientnet_lite0": _lite0,
    "mobilenet_v2": _mobilenet_v2,
}


def data_folders(name: str, workdir: Path, smoke: bool = False) -> tuple[Path, Path]:
    """(train, validation) folders of ``name``; on the smoke run one tiny generated two-class folder."""
    if not smoke:
        return throughput.prepare_data(name, workdir)
    import numpy as np
    from PIL import Image

    root = workdir / "smoke-images"
    if not (root / "done").exists():
        rng = np.random.default_rng(0)
        for split, count in (("train", 6), ("val", 2)):
            for index, label in enumerate(("a", "b")):
                (root / split / label).mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    pixels = rng.integers(0, 96, (40, 48, 3)) + 128 * index
                    Image.fromarray(pixels.astype("uint8")).save(root / split / label / f"{i}.jpg")
        (root / "done").touch()
    return root / "train", root / "val"


# --- the one results file ----------------------------------------------------------------------------------


def update_results(path: Path | None, key: str, value) -> None:
    """Set ``key`` in the JSON at ``path`` (made with the machine and the peak table's entry when missing)."""
    if path is None:
        return
    results = json.loads(path.read_text()) if path.is_file() else {}
    if "machine" not in results:
        results["machine"] = describe()
        results["peak_bf16_flops"] = throughput.peak_flops("cuda" if throughput.cuda_available() else "cpu")
        results["peak_source"] = throughput.PEAK_SOURCE
        results["matmul_bf16_flops_measured"] = matmul_flops()
    results[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))


def matmul_flops() -> float | None:
    """FLOP/s of a bf16 8192^3 matrix product on this GPU (mean of 10 after 3), the practical ceiling beside
    the data sheet's; None on a CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - start)


def free_memory() -> int | None:
    """Collect what the last run left and return the GPU's peak allocation since the last call (MiB)."""
    import torch

    if not torch.cuda.is_available():  # nothing to give back (and a collection of this heap takes seconds)
        return None
    gc.collect()
    peak = torch.cuda.max_memory_allocated() // 2**20
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return int(peak)


# --- the main table ----------------------------------------------------------------------------------------


def run_config(config: dict, workdir: Path) -> dict:
    """Baseline, project and (unless ``config["ceiling"]`` is false) ceiling, in that order, in this process."""
    smoke = bool(config.get("smoke"))
    model = checkpoint(config["model"], workdir / "models", smoke)
    train, val = data_folders(config["data"], workdir, smoke)
    row = {key: config[key] for key in ("model", "batch", "data", "steps")}
    variants = ("baseline", "project", "ceiling") if config.get("ceiling", True) else ("baseline", "project")
    free_memory()
    for variant in variants:
        extra = SMOKE_FLAGS if smoke and variant != "baseline" else []
        started = time.perf_counter()
        result = throughput.run_one(variant, model, train, val, config["steps"], config["batch"], 42, extra)
        result["seconds"] = time.perf_counter() - started
        result["gpu_peak_mib"] = free_memory()
        row[variant] = result
    return row


def ratios(rows: list[dict]) -> None:
    """Fill each row's project / baseline, project / ceiling, MFU and the issue's targets (in place); a row
    without its own ceiling takes its model and batch's from another row."""
    ceilings = {(r["model"], r["batch"]): r["ceiling"] for r in rows if "ceiling" in r}
    for row in rows:
        if "project" not in row or "baseline" not in row:
            continue
        ceiling = row.get("ceiling") or ceilings.get((row["model"], row["batch"]))
        project = row["project"]["images_per_second"]
        row["project_over_baseline"] = project / row["baseline"]["images_per_second"]
        if ceiling is None:
            continue
        row["ceiling_from"] = "this row" if "ceiling" in row else "the same model and batch on another row"
        row["project_over_ceiling"] = project / ceiling["images_per_second"]
        peak = ceiling.get("peak_flops")
        row["mfu_project"] = project * ceiling["flops_per_image"] / peak if peak else None
        row["mfu_ceiling"] = (
            ceiling["images_per_second"] * ceiling["flops_per_image"] / peak if peak else None
        )
        target = TARGETS.get(row["model"], {})
        row["targets"] = {
            "project / ceiling": [
                target.get("ceiling"),
                row["project_over_ceiling"] >= target.get("ceiling", 0),
            ],
            "project / baseline": [
                target.get("baseline"),
                row["project_over_baseline"] >= target.get("baseline", 0),
            ],
            "accuracy not below baseline": [
                None,
                row["project"]["accuracy"] >= row["baseline"]["accuracy"],
            ],
        }


def render_main(rows: list[dict]) -> str:
    """The main table (markdown), one line per row; failed rows say so."""
    lines = [
        "| model | batch | data | baseline img/s | project img/s | ceiling img/s | project / baseline | "
        "project / ceiling | accuracy baseline | accuracy project | MFU project | MFU ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        head = f"| {row['model']} | {row['batch']} | {row['data']} |"
        if "failed" in row:
            lines.append(f"{head} failed: {row['failed'].splitlines()[-1][:120]} |")
            continue
        b, p = row["baseline"], row["project"]
        c = row.get("ceiling") or {}
        mfu = [f"{row[k]:.1%}" if row.get(k) is not None else "n/a" for k in ("mfu_project", "mfu_ceiling")]
        ceiling = f"{c['images_per_second']:.0f}" if c else "(other row)"
        lines.append(
            f"{head} {b['images_per_second']:.0f} | {p['images_per_second']:.0f} | {ceiling} | "
            f"{row['project_over_baseline']:.2f}x | {row.get('project_over_ceiling', float('nan')):.2f} | "
            f"{b['accuracy']:.3f} | {p['accuracy']:.3f} | {mfu[0]} | {mfu[1]} |"
        )
    return "\n".join(lines)


def main_part(args, workdir: Path) -> list[dict]:
    """Every ``MAIN`` row: in a child process each (``args.in_process``: here), within ``args.budget``
    seconds (a row that would start after it is left out, a child still running at it is stopped)."""
    import subprocess
    import sys

    started = time.perf_counter()
    rows: list[dict] = []
    models = set(args.models)
    chosen = [c for c in MAIN if c[0] in models and c[2] in args.datasets]
    for model, batch, data in chosen:
        config = {"model": model, "batch": batch, "data": data, "steps": args.steps, "smoke": args.smoke}
        config["ceiling"] = data == "cifar10" or ("cifar10" not in args.datasets)
        left = args.budget - (time.perf_counter() - started) if args.budget else None
        try:
            if left is not None and left < 10:
                raise RuntimeError(f"left out: the part's {args.budget} s budget was spent")
            if args.in_process:
                row = run_config(config, workdir)
            else:
                out = workdir / f"gpu-{model}-{batch}-{data}.json"
                command = [sys.executable, throughput.__file__, "--_config", json.dumps(config)]
                command += ["--_out", str(out), "--workdir", str(workdir)]
                done = subprocess.run(command, capture_output=True, text=True, timeout=left, check=False)
                if done.returncode != 0:
                    raise RuntimeError("\n".join((done.stdout + done.stderr).strip().splitlines()[-15:]))
                row = json.loads(out.read_text())
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            row = {**config, "failed": str(error) or type(error).__name__}
        rows.append(row)
        print(f"  {model} batch {batch} {data}: " + ("failed" if "failed" in row else "done"), flush=True)
        ratios(rows)
        update_results(args.json, "main", rows)
    print("\n" + render_main(rows))
    return rows
