"""The ``hf-finetune`` command line, run as a real process (``python -m hf_finetune`` and the console script).

* ``--help`` of every command;
* bad input: exit status 2, one ``hf-finetune: error:`` line naming the culprit, no traceback, no output folder;
* one real fine-tune of each tiny checkpoint (transformers-native and timm), then ``predict`` and ``eval`` on it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import make_image_folder

MODULE = [sys.executable, "-m", "hf_finetune"]
SCRIPT_PATH = Path(sys.executable).parent / "hf-finetune"
SCRIPT = [str(SCRIPT_PATH)]
LABELS = ["cat", "dog", "zebra"]
TIMEOUT = 180

# tqdm progress bars (datasets' "Generating train split", transformers' "Loading weights") are not messages
PROGRESS = re.compile(r"(it/s\]|examples/s\]|\d+ examples \[|\|\s*\d+/\d+ \[)")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("hf_cache")
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_DATASETS_CACHE=str(cache / "datasets"),
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",  # processes run side by side on few cores
    )


def run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT
    )


def message_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines that are not progress-bar redraws."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    return [line for line in lines if not PROGRESS.search(line)]


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout (tail)\n{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-3000:]}"


# --- help -----------------------------------------------------------------------------------------------


def test_console_script_is_installed():
    assert SCRIPT_PATH.is_file() and os.access(SCRIPT_PATH, os.X_OK), f"{SCRIPT_PATH} is not an executable"


HELP_CASES = [
    ("module", ""),
    ("module", "train"),
    ("module", "predict"),
    ("module", "eval"),
    ("script", ""),
    ("script", "train"),
]


@pytest.mark.parametrize(
    "launcher, command", HELP_CASES, ids=[f"{who}-{c or 'top'}" for who, c in HELP_CASES]
)
def test_help(command, launcher, env):
    base = MODULE if launcher == "module" else SCRIPT
    proc = run([*base, *([command] if command else []), "--help"], env)
    assert proc.returncode == 0, describe(proc)
    assert "Traceback" not in proc.stderr
    prog = f"hf-finetune {command}".strip()
    assert proc.stdout.lstrip().startswith(f"usage: {prog}"), proc.stdout[:300]
    if not command:
        for name in ("train", "predict", "eval"):
            assert name in proc.stdout
    if command == "train":
        for key in (
            "--model_name_or_path",
            "--train_dir",
            "--freeze_patterns",
            "--batchnorm",
            "--head_lr_multiplier",
        ):
            assert key in proc.stdout
    if command == "predict":
        assert "--top-k" in proc.stdout and "--output" in proc.stdout
    if command == "eval":
        assert "--train_dir" in proc.stdout and "--split" in proc.stdout


def test_top_level_help_does_not_import_torch(env):
    code = (
        "import sys, io, contextlib, hf_finetune.cli as c\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf): rc = c.main(['--help'])\n"
        "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules, 'usage: hf-finetune' in buf.getvalue())\n"
    )
    proc = run([sys.executable, "-c", code], env)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.split() == ["0", "False", "False", "True"]


def test_no_command_and_unknown_command(env):
    proc = run(MODULE, env)
    assert proc.returncode == 2
    assert "usage: hf-finetune" in proc.stdout + proc.stderr
    proc = run([*MODULE, "trian"], env)
    assert proc.returncode == 2
    assert message_lines(proc.stderr) == [
        "hf-finetune: error: unknown command 'trian' (did you mean 'train'?); expected one of train, predict, eval, map-labels, push, export, app, search, lr-find"
    ]


# --- bad input ---------------------------------------------------------------------------------------------


def _bad_cases(root: Path, hf_checkpoint: Path, images: Path) -> dict[str, tuple[list[str], list[str]]]:
    """{case: (command line without --output_dir, substrings the error line must contain)}."""
    root.mkdir(parents=True, exist_ok=True)
    unknown_key = root / "unknown_key.yaml"
    unknown_key.write_text(
        yaml.safe_dump(
            {"model_name_or_path": str(hf_checkpoint), "train_dir": str(images), "lerning_rate": 1e-3}
        )
    )
    missing_key = root / "missing_key.yaml"
    missing_key.write_text(yaml.safe_dump({"train_dir": str(images), "num_train_epochs": 1}))

    nothing = root / "nothing"
    nothing.mkdir()
    (nothing / "readme.txt").write_text("no class folders, no images")

    empty_class = root / "empty_class"
    make_image_folder(empty_class / "train", {"cat": 3, "dog": 0}, seed=3)
    make_image_folder(empty_class / "val", {"cat": 2, "dog": 2}, seed=4)
    assert not any((empty_class / "train" / "dog").iterdir())

    table = root / "rows.csv"
    rows = [(f"{images}/train/{c}/{c}_{i:03d}.png", c) for c in LABELS for i in range(3)]
    with table.open("w", newline="") as handle:
        csv.writer(handle).writerows([("image", "label"), *rows])

    empty_model = root / "empty_model"
    empty_model.mkdir()
    bert = root / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    missing_model = root / "no_such_model"

    hf, img = str(hf_checkpoint), str(images)
    return {
        "unknown-recipe-key": (["train", unknown_key], ["lerning_rate", "learning_rate", str(unknown_key)]),
        "unknown-flag": (
            ["train", "--model_name_or_path", hf, "--train_dir", img, "--lerning_rate", "1"],
            ["--lerning_rate", "learning_rate"],
        ),
        "missing-recipe-key": (["train", missing_key], ["model_name_or_path"]),
        "data-path-missing": (
            ["train", "--model_name_or_path", hf, "--train_dir", root / "no_such_dir"],
            ["train_dir", str(root / "no_such_dir"), "does not exist"],
        ),
        "folder-without-images": (
            ["train", "--model_name_or_path", hf, "--train_dir", nothing],
            ["train_dir", str(nothing), "no images"],
        ),
        "class-folder-without-images": (
            ["train", "--model_name_or_path", hf, "--train_dir", empty_class],
            ["train_dir", str(empty_class / "train" / "dog"), "no images"],
        ),
        "absent-image-column": (
            ["train", "--model_name_or_path", hf, "--train_file", table, "--image_column_name", "nope"],
            ["image_column_name", "'nope'", str(table)],
        ),
        "model-empty-folder": (
            ["train", "--model_name_or_path", empty_model, "--train_dir", img],
            ["model_name_or_path", str(empty_model), "config.json"],
        ),
        "model-text-checkpoint": (
            ["train", "--model_name_or_path", bert, "--train_dir", img],
            ["model_name_or_path", str(bert), "bert"],
        ),
        "model-does-not-exist": (
            ["train", "--model_name_or_path", missing_model, "--train_dir", img],
            ["model_name_or_path", str(missing_model), "does not exist"],
        ),
    }


BAD_CASE_IDS = [
    "unknown-recipe-key",
    "unknown-flag",
    "missing-recipe-key",
    "data-path-missing",
    "folder-without-images",
    "class-folder-without-images",
    "absent-image-column",
    "model-empty-folder",
    "model-text-checkpoint",
    "model-does-not-exist",
]


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, tiny_hf_checkpoint, tiny_image_folder, env):
    """Every bad-input case run once, concurrently (each is a fresh interpreter importing torch)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    cases = _bad_cases(root / "inputs", tiny_hf_checkpoint, tiny_image_folder)
    assert sorted(cases) == sorted(BAD_CASE_IDS)

    def one(item):
        index, (name, (argv, expected)) = item
        out = root / "outputs" / name / "out"
        out.parent.mkdir(parents=True)
        launcher = SCRIPT if index % 2 else MODULE  # both launchers see bad input
        proc = run([*launcher, *argv, "--output_dir", out], env)
        return name, (proc, out, expected, out.exists())

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(one, enumerate(cases.items())))


@pytest.mark.parametrize("case", BAD_CASE_IDS)
def test_bad_input_is_one_error_line(bad_runs, case):
    proc, out, expected, out_existed = bad_runs[case]
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    lines = message_lines(proc.stderr)
    assert len(lines) == 1, f"expected one error line, got {lines}"
    line = lines[0]
    assert line.startswith("hf-finetune: error: "), line
    for part in expected:
        assert part in line, f"{part!r} not in {line!r}"
    assert not out_existed, f"{out} was left behind"


# --- end to end: train, re-run, predict, eval --------------------------------------------------------------


def _train_cmd(checkpoint: Path, images: Path, out: Path) -> list[str]:
    return [
        "train",
        "--model_name_or_path",
        checkpoint,
        "--train_dir",
        images,
        "--num_train_epochs",
        "1",
        "--per_device_train_batch_size",
        "8",
        "--image_size",
        "32",
        "--bf16",  # fp32, as `eval` runs: test_eval_matches_training_eval compares the two exactly
        "false",
        "--output_dir",
        out,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_hf_checkpoint, tiny_timm_checkpoint, tiny_image_folder, env):
    """Fine-tune both tiny checkpoints through the CLI, concurrently: the transformers one with the console
    script, the timm one with ``python -m hf_finetune``."""
    root = tmp_path_factory.mktemp("e2e")
    jobs = {
        "hf": (SCRIPT, tiny_hf_checkpoint, root / "hf" / "out"),
        "timm": (MODULE, tiny_timm_checkpoint, root / "timm" / "out"),
    }

    def one(item):
        name, (launcher, checkpoint, out) = item
        out.parent.mkdir(parents=True)
        cmd = [*launcher, *_train_cmd(checkpoint, tiny_image_folder, out)]
        return name, {"proc": run(cmd, env), "out": out, "cmd": cmd, "launcher": launcher}

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, jobs.items()))


@pytest.fixture(params=["hf", "timm"])
def kind(request):
    return request.param


def _out(trained, kind) -> Path:
    proc = trained[kind]["proc"]
    assert proc.returncode == 0, describe(proc)
    return trained[kind]["out"]


def test_train_exits_0_and_writes_the_model(trained, kind):
    out = _out(trained, kind)
    proc = trained[kind]["proc"]
    assert "Traceback" not in proc.stderr
    expected = {
        "config.json",
        "model.safetensors",
        "recipe.yaml",
        "eval_results.json",
        "all_results.json",
        "labels.json",
    }
    if kind == "hf":
        expected.add("preprocessor_config.json")
    # (transformers' TimmWrapperImageProcessor.save_pretrained is disabled on purpose: a timm model's
    # preprocessing lives in config.json's pretrained_cfg, checked in test_timm_config_and_timm_load)
    present = {p.name for p in out.iterdir()}
    assert expected <= present, f"missing {expected - present}"
    assert not (out / ".final-partial").exists()
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_samples"] == 12
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    all_results = json.loads((out / "all_results.json").read_text())
    assert all_results["eval_accuracy"] == pytest.approx(results["eval_accuracy"])
    assert all_results["train_samples"] == 36
    assert json.loads((out / "labels.json").read_text())["labels"] == LABELS


def test_saved_labels_are_the_target_labels(trained, kind):
    """config.json's labels, as transformers reads them back, are the three class folders in order."""
    from transformers import AutoConfig

    out = _out(trained, kind)
    config = AutoConfig.from_pretrained(out)
    assert config.num_labels == 3
    assert {int(k): v for k, v in config.id2label.items()} == {0: "cat", 1: "dog", 2: "zebra"}
    assert {k: int(v) for k, v in config.label2id.items()} == {"cat": 0, "dog": 1, "zebra": 2}


def test_hf_config_json_id2label(trained):
    out = _out(trained, "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "zebra"}
    assert config["model_type"] == "resnet"


def test_timm_config_and_timm_load(trained, tiny_image_folder):
    """The timm-origin model stays a timm checkpoint: timm itself loads it with 3 classes, the duplicate
    model_args.num_classes (the save_for_hf trap) is gone, and its label names are the new ones."""
    import timm
    import torch

    out = _out(trained, "timm")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_efficientnet"
    assert config["num_classes"] == 3
    assert "num_classes" not in (config.get("model_args") or {})
    assert list(config["pretrained_cfg"]["input_size"]) == [3, 32, 32]

    model = timm.create_model("local-dir:" + str(out), pretrained=True).eval()
    assert model.num_classes == 3
    with torch.no_grad():
        assert tuple(model(torch.zeros(1, 3, 32, 32)).shape) == (1, 3)

    # the stale ImageNet-style names of the source checkpoint must not survive into the fine-tuned one
    assert config.get("label_names") == LABELS, f"config.json label_names is {config.get('label_names')}"
    assert model.pretrained_cfg.get("label_names") == LABELS


def test_pipeline_predicts_the_new_labels(trained, kind, tiny_image_folder):
    from transformers import pipeline

    out = _out(trained, kind)
    classifier = pipeline("image-classification", model=str(out), device="cpu")
    images = [str(tiny_image_folder / "val" / name / f"{name}_000.png") for name in LABELS]
    results = classifier(images, top_k=3)
    assert len(results) == 3
    for result in results:
        assert sorted(r["label"] for r in result) == LABELS
        assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-4)


def test_recipe_yaml_reparses_to_the_same_arguments(trained, kind, tiny_image_folder):
    from hf_finetune.config.parser import parse_train_args

    out = _out(trained, kind)
    recorded = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recorded["train_dir"] == str(tiny_image_folder)
    assert recorded["image_size"] == 32
    assert recorded["per_device_train_batch_size"] == 8
    assert recorded["num_train_epochs"] == 1
    assert recorded["output_dir"] == str(out)
    model_args, data_args, training_args = parse_train_args([str(out / "recipe.yaml")])
    assert data_args.image_size == 32 and training_args.num_train_epochs == 1
    assert model_args.model_name_or_path == recorded["model_name_or_path"]


def test_rerun_into_finished_output_dir_is_refused(trained, env):
    out = _out(trained, "hf")
    weights = out / "model.safetensors"
    before = (weights.stat().st_mtime_ns, weights.read_bytes())
    proc = run(trained["hf"]["cmd"], env)
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stderr
    lines = message_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("hf-finetune: error: output_dir"), lines
    assert str(out) in lines[0] and "overwrite_output_dir" in lines[0]
    assert (weights.stat().st_mtime_ns, weights.read_bytes()) == before  # nothing was touched


def test_predict_writes_top2_csv(trained, kind, tiny_image_folder, tmp_path, env):
    out = _out(trained, kind)
    preds = tmp_path / "preds.csv"
    launcher = SCRIPT if kind == "hf" else MODULE
    proc = run([*launcher, "predict", out, tiny_image_folder / "val", "--top-k", "2", "--output", preds], env)
    assert proc.returncode == 0, describe(proc)
    with preds.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = sorted(str(p) for p in (tiny_image_folder / "val").rglob("*.png"))
    assert len(images) == 12
    assert len(rows) == 2 * len(images)
    by_image: dict[str, list[dict]] = {}
    for row in rows:
        by_image.setdefault(row["path"], []).append(row)
    assert sorted(by_image) == images
    for path, ranked in by_image.items():
        assert [r["rank"] for r in ranked] == ["1", "2"], path
        assert all(r["label"] in LABELS for r in ranked), ranked
        assert ranked[0]["label"] != ranked[1]["label"]
        scores = [float(r["score"]) for r in ranked]
        assert scores[0] >= scores[1] and 0.0 < sum(scores) <= 1.0 + 1e-6


def test_eval_matches_training_eval(trained, kind, tiny_image_folder, env):
    out = _out(trained, kind)
    launcher = SCRIPT if kind == "timm" else MODULE
    proc = run([*launcher, "eval", out, "--train_dir", tiny_image_folder], env)
    assert proc.returncode == 0, describe(proc)
    metrics_path = out / "eval_validation" / "metrics.json"
    assert metrics_path.is_file()
    metrics = json.loads(metrics_path.read_text())
    trained_eval = json.loads((out / "eval_results.json").read_text())
    assert metrics["num_images"] == 12
    assert metrics["split"] == "validation"
    assert abs(metrics["accuracy"] - trained_eval["eval_accuracy"]) < 1e-6
    assert sorted(metrics["per_class"]) == LABELS


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["predict", "{model}", "{images}", "--top-k", "two"], ["top_k", "'two'"]),
        (["predict", "{missing}", "{images}"], ["model_name_or_path", "{missing}", "does not exist"]),
        (["eval", "{model}", "--train_dir", "{images}", "--batch_size", "x"], ["batch_size", "'x'"]),
        (
            ["eval", "{model}", "--train_dir", "{images}", "--split", "tset"],
            ["split", "'tset'", "'validation'"],
        ),
        (
            ["map-labels", "--model_name_or_path", "{model}", "--train_dir", "{images}", "--nope", "1"],
            ["--nope"],
        ),
    ],
    ids=[
        "predict-bad-type",
        "predict-missing-model",
        "eval-bad-type",
        "eval-unknown-split",
        "map-labels-unknown-flag",
    ],
)
def test_other_commands_fail_in_one_line(
    argv, expected, tiny_hf_checkpoint, tiny_image_folder, tmp_path, env
):
    values = {
        "model": str(tiny_hf_checkpoint),
        "images": str(tiny_image_folder),
        "missing": str(tmp_path / "gone"),
    }
    proc = run([*MODULE, *(a.format(**values) for a in argv)], env)
    lines = message_lines(proc.stderr)
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stderr and len(lines) == 1, describe(proc)
    assert lines[0].startswith("hf-finetune: error:")
    for fragment in expected:
        assert fragment.format(**values) in lines[0], describe(proc)


def test_an_error_raised_in_a_loader_worker_is_still_one_line(monkeypatch, capsys):
    """torch re-raises a worker's DataError with the worker's traceback in its message."""
    from torch._utils import ExceptionWrapper

    from hf_finetune.cli import commands as cli
    from hf_finetune.errors import DataError

    def train(argv):
        try:
            raise DataError("data/cat/broken.jpg: image file is truncated (strict: true)")
        except DataError:
            ExceptionWrapper(where="in DataLoader worker process 0").reraise()

    monkeypatch.setattr(cli, "_train", train)
    assert cli.main(["train", "recipe.yaml"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["hf-finetune: error: data/cat/broken.jpg: image file is truncated (strict: true)"]
