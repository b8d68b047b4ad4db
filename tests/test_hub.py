"""Pushing to the Hub (``hf_finetune.hub.push``, ``hf-finetune push``, ``push_to_hub: true``), without the internet.

* A real Hub-compatible read server: ``olah`` (PyPI), started here on a free 127.0.0.1 port as a subprocess and
  stopped by its process id (``tests/hub_server.py``), serves git repositories as Hub repos.
  - The module's one fine-tune reads its base model ``test-org/tiny-timm-source`` from it (``hf-finetune train``
    with ``model_name_or_path: ORG/NAME``, ``HF_ENDPOINT`` pointing at olah) and asks for ``push_to_hub: true``.
    olah refuses uploads (405), which is the fault path of a push at the end of training: one line, exit 2,
    the finished folder intact, the push rerunnable alone.
  - The exact folder a push uploads (:func:`hf_finetune.hub.push.upload_plan`) is published there, and
    ``pipeline()``, ``AutoModelForImageClassification`` and ``timm.create_model("hf-hub:...")`` load it with
    the right labels (and the card's own snippets run).
* The push itself at the ``huggingface_hub`` boundary: a *recorded client* (``RecordedHubClient``) stands in for
  ``HfApi`` and records repo creation, the branch, the files and their bytes; retries and failures are injected
  there. A live test against the real Hub is marked ``network`` and skipped unless ``HF_TOKEN`` is set and the
  Hub answers.
* A fake token is in the environment of every push and run: no file written or uploaded, no log, no card and no
  error message may contain it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import ROOT, SOURCE_LABELS
from hub_server import LocalHub

from hf_finetune.errors import ConfigError, HubError
from hf_finetune.hub import push as hub_module
from hf_finetune.hub.model_card import render_model_card

SOURCE_REPO = "test-org/tiny-timm-source"
TARGET_REPO = "test-org/tiny-timm-cats"
LABELS = ["cat", "dog", "zebra"]
TOKEN = "hf_FakeTokenForHfFinetuneTests0123456789"
TIMEOUT = 300
UPLOADED = {
    "README.md",
    "all_results.json",
    "config.json",
    "confusion_matrix.png",
    "eval_per_class.json",
    "eval_results.json",
    "label_mapping.json",
    "labels.json",
    "model.safetensors",
    "recipe.yaml",
    "train_results.json",
    "trainer_state.json",
    "training_curves.png",
}


def folder_digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder``: "nothing lost, nothing changed"."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def files_containing(folder: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


# --- the server and the module's one fine-tune ------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_timm_checkpoint):
    server = LocalHub(tmp_path_factory.mktemp("olah"))
    server.publish(tiny_timm_checkpoint, SOURCE_REPO)
    server.start(SOURCE_REPO)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trained(hub, tiny_image_folder, tmp_path_factory):
    """``hf-finetune train recipe.yaml`` from the Hub id ``test-org/tiny-timm-source`` served by olah, with
    ``push_to_hub: true``; a fake token in the environment."""
    root = tmp_path_factory.mktemp("hub_run")
    out = root / "out"
    recipe = {
        "model_name_or_path": SOURCE_REPO,
        "train_dir": str(tiny_image_folder),
        "output_dir": str(out),
        "image_size": 32,
        "num_train_epochs": 2,
        "per_device_train_batch_size": 8,
        "learning_rate": 0.003,
        "seed": 7,
        "push_to_hub": True,
        "hub_model_id": TARGET_REPO,
    }
    recipe_path = root / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    env = hub.client_env(os.environ, root / "hf_home")
    env.update(HF_TOKEN=TOKEN, HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "hf_finetune", "train", str(recipe_path)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return SimpleNamespace(out=out, proc=proc, root=root, seconds=time.monotonic() - start)


def describe(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("hf-finetune")]


def test_training_reads_its_base_model_from_the_hub_server(trained, hub):
    out = trained.out
    assert (out / "model.safetensors").is_file(), describe(trained.proc)
    # it went through the server: olah served the source's config and weights, the cache holds them
    log = hub.log()
    for name in ("config.json", "model.safetensors"):
        assert re.search(rf'GET /{SOURCE_REPO}/resolve/[0-9a-f]{{40}}/{name} HTTP/1.1" 200', log), log[-2000:]
    assert (trained.root / "hf_home" / "hub" / "models--test-org--tiny-timm-source").is_dir()
    labels = json.loads((out / "labels.json").read_text())
    assert labels["labels"] == LABELS and labels["base_model"] == SOURCE_REPO
    assert labels["source_labels_count"] == len(SOURCE_LABELS)
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_samples"] == 12 and results["eval_accuracy"] >= 0.75, results
    print(f"\ntrain from {SOURCE_REPO} via olah + refused push: {trained.seconds:.1f} s, {results}")


def test_push_at_the_end_refused_by_the_server_is_one_line_and_keeps_the_model(trained, hub):
    """olah is read-only: creating the repo gets 405. A 4xx is not retried; the main process tried once; the
    finished folder is complete and the error line says how to rerun the push alone."""
    proc, out = trained.proc, trained.out
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-2000:]
    line = lines[0]
    assert line.startswith(f"hf-finetune: error: push to {TARGET_REPO} failed (creating the repo): ")
    assert "405" in line
    assert f"rerun the push alone with `hf-finetune push {out} --repo-id {TARGET_REPO}`" in line
    assert hub.log().count("POST /api/repos/create") == 1
    # the run saved everything before pushing
    assert {p.name for p in out.iterdir()} >= UPLOADED
    assert not (out / ".final-partial").exists()
    assert "accuracy" in proc.stdout  # the run's summary came before the push


def test_the_token_is_written_nowhere(trained):
    assert files_containing(trained.root, TOKEN) == []
    assert TOKEN not in trained.proc.stdout + trained.proc.stderr
    assert any(p.name == "training_args.bin" for p in trained.out.rglob("*"))  # checked above, it exists


def test_the_card_of_the_run(trained):
    from huggingface_hub import ModelCard

    out = trained.out
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == SOURCE_REPO
    assert data["library_name"] == "timm" and data["pipeline_tag"] == "image-classification"
    assert {"image-classification", "timm", "transformers", "hf-finetune"} <= set(data["tags"])
    assert "datasets" not in data  # an image folder is no Hub dataset
    results = json.loads((out / "eval_results.json").read_text())
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics["accuracy"] == round(results["eval_accuracy"], 4)
    assert metrics["f1"] == round(results["eval_macro_f1"], 4)
    assert card.data.eval_results[0].dataset_type == "imagefolder"
    text = card.text
    # what was fine-tuned from what, the recipe, the label mapping, the metrics per class, the usage
    assert f"fine-tuned from [{SOURCE_REPO}](https://huggingface.co/{SOURCE_REPO})" in text
    assert "`test_efficientnet`" in text and "3: cat, dog, zebra" in text
    assert "hub_model_id: test-org/tiny-timm-cats" in text and "learning_rate: 0.003" in text
    mapping = json.loads((out / "label_mapping.json").read_text())
    assert [m["kind"] for m in mapping["matches"]] == ["exact", "exact", "none"]
    assert "| cat | exact | 5: cat |" in text and "| dog | exact | 6: dog |" in text
    assert "| zebra | none | - (fresh row) |" in text
    assert "2 of 3 target classes started from rows of the pretrained classifier" in text
    calibration = mapping["bias_calibration"]  # label_bias_from_data is on by default with reused rows
    assert calibration["images"] == 36 and calibration["loss_after"] < calibration["loss_before"]
    assert "biases were fitted to 36 training images (`label_bias_from_data`; their loss " in text
    per_class = json.loads((out / "eval_per_class.json").read_text())
    assert per_class["accuracy"] == pytest.approx(results["eval_accuracy"])
    assert [row["support"] for row in per_class["per_class"].values()] == [4, 4, 4]
    for name, row in per_class["per_class"].items():
        assert f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | 4 |" in text
    state = json.loads((out / "trainer_state.json").read_text())
    before = next(e for e in state["log_history"] if "eval_accuracy" in e)
    assert before["epoch"] == 0
    assert f"| accuracy | {before['eval_accuracy']:.4f} | {results['eval_accuracy']:.4f} |" in text
    assert f'pipeline("image-classification", model="{TARGET_REPO}")' in text
    assert f'timm.create_model("hf-hub:{TARGET_REPO}", pretrained=True)' in text
    assert "## Limitations" in text and "12 validation images" in text


# --- what is pushed works from a Hub ----------------------------------------------------------------------

LOADER = r"""
import json, re, sys, contextlib, io
import numpy as np
import timm, torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

repo, images, card = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
out = {}
classifier = pipeline("image-classification", model=repo, revision="main", device="cpu")
out["pipeline"] = [[(r["label"], r["score"]) for r in rows] for rows in classifier(images, top_k=3)]
model = AutoModelForImageClassification.from_pretrained(repo, revision="main").eval()
out["id2label"] = [model.config.id2label[i] for i in range(model.config.num_labels)]
tm = timm.create_model(f"hf-hub:{repo}@main", pretrained=True).eval()
out["timm_labels"] = tm.pretrained_cfg["label_names"]
out["timm_num_classes"] = tm.num_classes
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    out["max_diff_timm_vs_transformers"] = float((tm(x) - model(pixel_values=x).logits).abs().max())
# the card's own snippets, on a real image
snippets = re.findall(r"```python\n(.*?)```", open(card, encoding="utf-8").read(), flags=re.S)
out["snippets"] = []
for code in snippets:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        # olah in offline mode answers /api/models/ORG/NAME (no revision) with 401: name the branch
        code = code.replace(f'model="{repo}"', f'model="{repo}", revision="main"')
        exec(code.replace('"photo.jpg"', repr(images[-1])), {})
    out["snippets"].append(buf.getvalue())
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def published(trained, hub, tmp_path_factory):
    """The exact folder ``push_to_hub`` would upload, as ``test-org/tiny-timm-cats`` on the server."""
    folder = tmp_path_factory.mktemp("upload") / "repo"
    plan = hub_module.upload_plan(trained.out, TARGET_REPO)
    hub_module.write_upload_folder(plan, folder)
    hub.publish(folder, TARGET_REPO)
    assert hub.wait_ready(TARGET_REPO, timeout=30)
    return SimpleNamespace(folder=folder, plan=plan)


def test_the_pushed_folder_loads_from_the_hub_with_pipeline_and_timm(
    published, trained, hub, tiny_image_folder
):
    from hf_finetune.inference.predict import predict_images

    assert sorted(p.name for p in published.folder.iterdir()) == sorted(UPLOADED)
    config = json.loads((published.folder / "config.json").read_text())
    assert "num_classes" not in (config.get("model_args") or {}) and config["num_classes"] == 3
    images = [str(tiny_image_folder / "val" / name / f"{name}_000.png") for name in LABELS]
    env = dict(hub.client_env(os.environ, trained.root / "hf_home_loader"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, TARGET_REPO, json.dumps(images), str(published.folder / "README.md")],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, describe(proc)
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["id2label"] == LABELS
    assert result["timm_labels"] == LABELS and result["timm_num_classes"] == 3
    assert result["max_diff_timm_vs_transformers"] < 1e-5  # one set of weights, two loaders
    local = predict_images(trained.out, images, top_k=3, device="cpu")
    for served, here in zip(result["pipeline"], local, strict=True):
        assert [label for label, _ in served] == [p["label"] for p in here["predictions"]]
        for (_, score), p in zip(served, here["predictions"], strict=True):
            assert score == pytest.approx(p["score"], abs=1e-5)
    # the card's pipeline snippet prints the three labels; the timm one prints a label and its probability
    assert len(result["snippets"]) == 2
    assert sorted(re.findall(r"'label': '(\w+)'", result["snippets"][0])) == LABELS
    label, probability = result["snippets"][1].split()
    assert label in LABELS and 0.0 < float(probability) <= 1.0
    assert re.search(rf"GET /{TARGET_REPO}/resolve/[0-9a-f]{{40}}/model.safetensors", hub.log())


# --- the push at the huggingface_hub boundary ------------------------------------------------------------


class RecordedHubClient:
    """Stands in for ``huggingface_hub.HfApi`` (``create_repo``, ``create_branch``, ``create_commit``) and
    records every call, with the bytes of every file of a commit. ``failures[method]`` lists exceptions to raise
    on that method's successive calls before it succeeds. No network, no server: a recorded client."""

    def __init__(self, failures: dict[str, list[BaseException]] | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.failures = {k: list(v) for k, v in (failures or {}).items()}

    def _record(self, method: str, **kwargs):
        self.calls.append((method, kwargs))
        if self.failures.get(method):
            raise self.failures[method].pop(0)

    def create_repo(self, repo_id, **kwargs):
        self._record("create_repo", repo_id=repo_id, **kwargs)
        return f"recorded://{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self._record("create_branch", repo_id=repo_id, **kwargs)

    def create_commit(self, repo_id, operations, **kwargs):
        files = {}
        for op in operations:
            content = op.path_or_fileobj
            files[op.path_in_repo] = content if isinstance(content, bytes) else Path(content).read_bytes()
        self._record("create_commit", repo_id=repo_id, files=files, **kwargs)
        return SimpleNamespace(commit_url=f"recorded://{repo_id}/commit/{len(self.calls)}")

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def http_error(status: int):
    from huggingface_hub.errors import HfHubHTTPError

    response = SimpleNamespace(status_code=status, headers={}, request=None)
    return HfHubHTTPError(
        f"{status} Client Error for url: https://hub.example/api/repos/create", response=response
    )


@pytest.fixture
def recorded(monkeypatch):
    client = RecordedHubClient()
    monkeypatch.setattr(hub_module, "hub_client", lambda: client)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return client


def test_push_command_through_a_recorded_client(trained, recorded, capsys):
    from hf_finetune.cli import main

    before = folder_digest(trained.out)
    argv = ["push", str(trained.out), "--repo-id", TARGET_REPO, "--private", "--revision", "dev"]
    assert main([*argv, "--commit-message", "first push"]) == 0
    assert recorded.names() == ["create_repo", "create_branch", "create_commit"]
    (_, repo), (_, branch), (_, commit) = recorded.calls
    assert repo == {
        "repo_id": TARGET_REPO,
        "token": TOKEN,
        "private": True,
        "repo_type": "model",
        "exist_ok": True,
    }
    assert branch["branch"] == "dev" and branch["exist_ok"] is True
    assert commit["revision"] == "dev" and commit["commit_message"] == "first push"
    files = commit["files"]
    assert set(files) == UPLOADED  # no checkpoint-*, no training_args.bin
    assert any(p.name.startswith("checkpoint-") for p in trained.out.iterdir())
    assert files["model.safetensors"] == (trained.out / "model.safetensors").read_bytes()
    assert files["README.md"].decode() == render_model_card(trained.out, TARGET_REPO)
    assert all(TOKEN.encode() not in content for content in files.values())
    assert folder_digest(trained.out) == before  # the push only reads the folder
    printed = capsys.readouterr()
    assert (
        f"pushed {len(UPLOADED)} files to {TARGET_REPO}@dev: recorded://{TARGET_REPO}/commit/3" in printed.out
    )
    assert TOKEN not in printed.out + printed.err


def test_transient_failures_are_retried_with_backoff(trained, recorded):
    recorded.failures = {"create_commit": [http_error(503), ConnectionError("connection reset by peer")]}
    waits: list[float] = []
    result = hub_module.push_to_hub(trained.out, TARGET_REPO, sleep=waits.append)
    assert recorded.names() == ["create_repo", "create_commit", "create_commit", "create_commit"]
    assert waits == [2.0, 4.0]
    assert result.attempts == 4 and result.revision == "main"
    last = recorded.calls[-1][1]
    assert set(last["files"]) == UPLOADED  # the retry uploads everything again
    accuracy = json.loads((trained.out / "eval_results.json").read_text())["eval_accuracy"]
    assert last["commit_message"] == (
        f"Upload fine-tuned image classifier (validation accuracy {accuracy:.4f}) with hf-finetune"
    )


def test_a_failed_upload_is_one_line_and_the_folder_stays_intact(trained, recorded, capsys):
    from hf_finetune.cli import main

    before = folder_digest(trained.out)
    recorded.failures = {"create_commit": [http_error(503) for _ in range(4)]}
    waits: list[float] = []
    with pytest.raises(HubError) as info:
        hub_module.push_to_hub(trained.out, TARGET_REPO, sleep=waits.append)
    message = str(info.value)
    assert waits == [2.0, 4.0, 8.0] and recorded.names().count("create_commit") == 4
    assert message.startswith(f"push to {TARGET_REPO} failed after 4 attempts (uploading the files): 503 ")
    assert message.endswith(
        f"rerun the push alone with `hf-finetune push {trained.out} --repo-id {TARGET_REPO}`"
    )
    assert "\n" not in message and TOKEN not in message
    # a refused token is not retried, and the command line says so in one line, exit 2
    recorded.calls.clear()
    recorded.failures = {"create_repo": [http_error(401)]}
    assert main(["push", str(trained.out), "--repo-id", TARGET_REPO]) == 2
    assert recorded.names() == ["create_repo"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "401" in err[0] and "HF_TOKEN" in err[0] and "hf auth login" in err[0]
    assert folder_digest(trained.out) == before
    # ... and the push reruns alone
    recorded.calls.clear()
    assert main(["push", str(trained.out), "--repo-id", TARGET_REPO]) == 0
    assert recorded.names() == ["create_repo", "create_commit"]


def test_push_with_huggingface_hubs_own_client_offline_is_one_line(trained, monkeypatch, capsys):
    """No recorded client: huggingface_hub's HfApi refuses to connect under HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants

    from hf_finetune.cli import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["push", str(trained.out), "--repo-id", TARGET_REPO]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "(creating the repo): HF_HUB_OFFLINE=1 is set; unset it to push" in lines[0], (
        lines
    )


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.fixture
def bad_folders(tmp_path, trained):
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoint-5").mkdir(parents=True)
    (unfinished / "checkpoint-5" / "config.json").write_text("{}")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"pickle")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {"unfinished": unfinished, "pickled": pickled, "file": a_file, "missing": tmp_path / "nope"}


PUSH_CASES = {
    "missing-folder": ("missing", TARGET_REPO, ["OUTPUT_DIR", "nope", "does not exist", "hf-finetune train"]),
    "unfinished-run": (
        "unfinished",
        TARGET_REPO,
        ["holds no finished model", "checkpoint-5", "--resume_from_checkpoint last"],
    ),
    "pickle-weights": ("pickled", TARGET_REPO, ["pytorch_model.bin", "safetensors"]),
    "a-file": ("file", TARGET_REPO, ["a_file", "is a file"]),
    "repo-id-with-two-slashes": ("trained", "org/name/extra", ["repo_id", "'org/name/extra'", "ORG/NAME"]),
    "repo-id-without-org": ("trained", "name-only", ["repo_id", "'name-only'", "ORG/NAME"]),
    "repo-id-bad-characters": ("trained", "org/na me", ["repo_id", "'org/na me'", "ORG/NAME"]),
}


@pytest.mark.parametrize("case", list(PUSH_CASES))
def test_bad_push_input_is_one_line_exit_2_nothing_lost(case, bad_folders, trained, recorded, capsys):
    from hf_finetune.cli import main

    which, repo_id, needles = PUSH_CASES[case]
    folder = trained.out if which == "trained" else bad_folders[which]
    parent = folder if folder.is_dir() else folder.parent
    before = folder_digest(parent)
    assert main(["push", str(folder), "--repo-id", repo_id]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-finetune: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert recorded.calls == []  # nothing reached the Hub
    assert folder_digest(parent) == before


def _train_argv(checkpoint, images, out, *extra) -> list[str]:
    return [
        "train",
        "--model_name_or_path",
        str(checkpoint),
        "--train_dir",
        str(images),
        "--output_dir",
        str(out),
        *extra,
    ]


TRAIN_CASES = {
    "push-without-hub_model_id": (["--push_to_hub", "true"], ["push_to_hub", "hub_model_id", "ORG/NAME"]),
    "bad-hub_model_id": (["--push_to_hub", "true", "--hub_model_id", "a/b/c"], ["hub_model_id", "'a/b/c'"]),
    "token-as-a-flag": (
        ["--push_to_hub", "true", "--hub_model_id", TARGET_REPO, "--hub_token", TOKEN],
        ["hub_token", "HF_TOKEN", "recipe.yaml"],
    ),
    "offline": (["--push_to_hub", "true", "--hub_model_id", TARGET_REPO], ["HF_HUB_OFFLINE", "push_to_hub"]),
    "no-token": (
        ["--push_to_hub", "true", "--hub_model_id", TARGET_REPO],
        ["no Hugging Face token", "HF_TOKEN"],
    ),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_hub_keys_stop_training_before_it_starts(
    case, tiny_hf_checkpoint, tiny_image_folder, tmp_path, monkeypatch, capsys
):
    from huggingface_hub import constants

    from hf_finetune.cli import main

    extra, needles = TRAIN_CASES[case]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", case == "offline")
    out = tmp_path / "out"
    assert main(_train_argv(tiny_hf_checkpoint, tiny_image_folder, out, *extra)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert TOKEN not in captured.out + captured.err.replace(f"--hub_token {TOKEN}", "")
    assert TOKEN not in lines[0]
    assert not out.exists()  # nothing trained, nothing written


# --- pieces ---------------------------------------------------------------------------------------------------


def test_push_help_is_instant_and_imports_nothing_heavy():
    code = (
        "import sys, io, contextlib, time\n"
        "t = time.perf_counter()\n"
        "import hf_finetune.cli as c\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try: c.main(['push', '--help'])\n"
        "    except SystemExit as e: code = e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'huggingface_hub', 'timm') if m in sys.modules]\n"
        "print(code, heavy, round(time.perf_counter() - t, 3), '--repo-id' in buf.getvalue())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    fields = proc.stdout.strip().split(" ")
    assert fields[0] == "0" and fields[1] == "[]" and fields[-1] == "True", proc.stdout
    assert float(fields[2]) < 1.0, proc.stdout


def test_normalize_timm_config():
    trap = {
        "architecture": "resnet18",
        "num_classes": 3,
        "model_args": {"num_classes": 7, "in_chans": 3},
        "id2label": {"0": "a", "1": "b", "2": "c"},
    }
    fixed = hub_module.normalize_timm_config(trap)
    assert fixed["model_args"] == {"in_chans": 3} and fixed["label_names"] == ["a", "b", "c"]
    assert trap["model_args"]["num_classes"] == 7  # the input is not modified
    assert "model_args" not in hub_module.normalize_timm_config(
        {"model_type": "timm_wrapper", "model_args": None}
    )
    plain = {"model_type": "vit", "id2label": {"0": "a"}}
    assert hub_module.normalize_timm_config(plain) is plain


def test_card_and_plan_of_a_transformers_model(tiny_hf_checkpoint, tmp_path):
    """A transformers-origin folder: library transformers, no timm snippet, the processor uploaded; a local
    folder is no base_model, and a card rendered without a repo id loads the folder itself."""
    import shutil

    from huggingface_hub import ModelCard

    out = tmp_path / "run"
    shutil.copytree(tiny_hf_checkpoint, out)
    (out / "recipe.yaml").write_text(yaml.safe_dump({"model_name_or_path": str(tiny_hf_checkpoint)}))
    (out / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.5, "eval_samples": 4}))
    plan = hub_module.upload_plan(out, "org/tiny-resnet")
    assert set(plan) == {
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "recipe.yaml",
        "eval_results.json",
    }
    card = ModelCard(plan["README.md"].decode())
    assert card.data.library_name == "transformers" and card.data.base_model is None
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("accuracy", 0.5)]
    assert "timm.create_model" not in card.text and 'model="org/tiny-resnet"' in card.text
    assert "Per-class figures were not recorded" in card.text
    assert f'model="{out}"' in render_model_card(out)
    # a Hub dataset is named in the metadata and the model-index
    (out / "recipe.yaml").write_text(
        yaml.safe_dump({"model_name_or_path": "google/vit-base", "dataset_name": "beans"})
    )
    card = ModelCard(render_model_card(out, "org/vit-beans"))
    assert card.data.datasets == ["beans"] and card.data.base_model == "google/vit-base"
    assert card.data.eval_results[0].dataset_type == "beans"
    assert "on [beans](https://huggingface.co/datasets/beans)" in card.text
    with pytest.raises(ConfigError, match="repo_id"):
        hub_module.push_to_hub(out, "not a repo")


# --- a multi-label model's card -------------------------------------------------------------------------------


def _multi_label_folder(tiny_hf_checkpoint, out: Path, recipe: dict) -> dict:
    """A hand-written output folder of a multi-label run of the tiny ResNet's 7 classes (the contract's files)."""
    import shutil

    shutil.copytree(tiny_hf_checkpoint, out)
    config = json.loads((out / "config.json").read_text())
    names = [config["id2label"][str(i)] for i in range(7)]
    thresholds = dict(zip(names, [0.35, 0.5, 0.6, 0.25, 0.45, 0.5, 0.7], strict=True))
    config |= {"problem_type": "multi_label_classification", "label_thresholds": thresholds}
    (out / "config.json").write_text(json.dumps(config))
    (out / "recipe.yaml").write_text(yaml.safe_dump({"model_name_or_path": "org/base", **recipe}))
    per_class = {
        name: {
            "ap": 0.9 - 0.05 * k if k != 6 else float("nan"),  # the last class: no positives
            "precision": 0.8 - 0.03 * k,
            "recall": 0.7 + 0.02 * k,
            "f1": 0.75 - 0.01 * k,
            "support": 10 + k if k != 6 else 0,
            "threshold": thresholds[name],
        }
        for k, name in enumerate(names)
    }
    report = {"multi_label": True, "per_class": per_class, "map": 0.7512, "map_micro": 0.8021}
    report |= {
        "f1_micro": 0.6634,
        "f1_macro": 0.6112,
        "exact_match": 0.41,
        "thresholds": list(thresholds.values()),
    }
    (out / "eval_per_class.json").write_text(json.dumps(report))
    results = {
        "eval_map": 0.751234,
        "eval_map_micro": 0.802111,
        "eval_f1_micro": 0.663421,
        "eval_samples": 40,
    }
    results |= {"eval_f1_macro": 0.6112, "eval_exact_match": 0.41, "eval_loss": 0.2345}
    (out / "eval_results.json").write_text(json.dumps(results))
    history = [
        {"epoch": 0.0, "step": 0, "eval_map": 0.412345, "eval_f1_micro": 0.3, "eval_loss": 0.7},
        {"epoch": 1.0, "step": 5, "eval_map": 0.751234, "eval_f1_micro": 0.663421, "eval_loss": 0.2345},
    ]
    state = {"log_history": history, "epoch": 1.0, "global_step": 5, "best_metric": 0.751234}
    (out / "trainer_state.json").write_text(json.dumps(state))
    (out / "precision_recall.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return {"names": names, "thresholds": thresholds, "per_class": per_class, "results": results}


def test_the_card_of_a_multi_label_model(tiny_hf_checkpoint, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "run"
    folder = _multi_label_folder(tiny_hf_checkpoint, out, {"threshold": "per_class"})
    card = ModelCard(render_model_card(out, "org/tiny-multi"))
    text = card.text
    assert "A multi-label image classifier fine-tuned from" in text
    assert "the checkpoint with the best validation map (0.7512) was kept" in text
    assert "This is a **multi-label** classifier" in text and "`label_thresholds`" in text
    assert "the 7 thresholds (from 0.2500 to 0.7000)" in text and "`threshold: per_class`" in text
    assert (
        "| validation | mAP 0.7512, micro F1 0.6634 at the saved thresholds on 40 validation images " in text
    )
    assert "(mAP 0.4123 before fine-tuning) |" in text
    assert "| class | AP | F1 | precision | recall | support | threshold |" in text
    for name, row in folder["per_class"].items():
        ap = "-" if name == folder["names"][6] else f"{row['ap']:.4f}"
        cells = [ap, *(f"{row[k]:.4f}" for k in ("f1", "precision", "recall")), str(row["support"])]
        assert f"| {name} | {' | '.join(cells)} | {row['threshold']:.4f} |" in text
    assert "| mAP (macro mean AP) | 0.4123 | 0.7512 |" in text and "| micro F1 | 0.3000 | 0.6634 |" in text
    assert "| mAP | 0.4123 | 0.7512 |" in text  # by epoch
    assert "| precision | recall | F1 | support |\n" not in text and "confusion_matrix" not in text
    assert "![precision-recall curves](precision_recall.png)" in text
    assert 'function_to_apply="sigmoid", top_k=None' in text and "timm.create_model" not in text
    index = {(r.dataset_split, r.metric_type): r for r in card.data.eval_results}
    assert set(index) == {("validation", "mean_average_precision"), ("validation", "f1")}
    assert index["validation", "mean_average_precision"].metric_value == 0.7512
    assert index["validation", "f1"].metric_value == 0.6634
    assert index["validation", "f1"].metric_args == {"average": "micro"}
    assert "precision_recall.png" in hub_module.upload_plan(out, "org/tiny-multi")
    # the test split: its own model-index entries; a global or fixed threshold is said so
    (out / "test_results.json").write_text(
        json.dumps({"test_map": 0.700049, "test_f1_micro": 0.61, "test_samples": 30})
    )
    (out / "recipe.yaml").write_text(
        yaml.safe_dump({"model_name_or_path": "org/base", "threshold": "global"})
    )
    card = ModelCard(render_model_card(out, "org/tiny-multi"))
    index = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert index["test", "mean_average_precision"] == 0.7 and index["test", "f1"] == 0.61
    assert "| mAP (macro mean AP) | 0.7000 |" in card.text and "`threshold: global`" in card.text
    (out / "recipe.yaml").write_text(yaml.safe_dump({"model_name_or_path": "org/base", "threshold": 0.3}))
    assert "fixed at 0.3 for every class" in render_model_card(out)


def test_the_multi_label_cards_snippet_applies_the_thresholds(tiny_hf_checkpoint, tmp_path):
    """The card's usage snippet, run on the local folder: the labels it prints are the classes whose sigmoid
    probability reaches their saved threshold."""
    import contextlib
    import io

    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    out = tmp_path / "run"
    folder = _multi_label_folder(tiny_hf_checkpoint, out, {})
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photo)
    code = re.findall(r"```python\n(.*?)```", render_model_card(out), flags=re.S)[0]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(code.replace('"photo.jpg"', repr(str(photo))), {})
    printed = buffer.getvalue()
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    inputs = AutoImageProcessor.from_pretrained(out)(Image.open(photo).convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        probabilities = model(**inputs).logits.sigmoid()[0].numpy()
    order = np.argsort(-probabilities, kind="stable")
    expected = [
        folder["names"][k] for k in order if probabilities[k] >= folder["thresholds"][folder["names"][k]]
    ]
    assert 0 < len(expected) < 7  # the thresholds decide: some classes called, some not
    assert printed.startswith(repr(expected) + " [")


# --- the real Hub ---------------------------------------------------------------------------------------------


def _hub_answers(token: str) -> bool:
    import urllib.request

    request = urllib.request.Request(
        "https://huggingface.co/api/whoami-v2", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status == 200
    except Exception:
        return False


@pytest.mark.network
def test_live_push_and_load_back(trained, tiny_image_folder, tmp_path):
    """Pushes the run to a new private repo of the token's user on huggingface.co, loads it back with
    pipeline() and timm, and deletes the repo."""
    token = os.environ.get("HF_TOKEN", "")
    if not token or token == TOKEN or not _hub_answers(token):
        pytest.skip("needs HF_TOKEN (write access) and huggingface.co reachable")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT",)}
    env.update(
        HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_HOME=str(tmp_path / "hf_home"), HF_TOKEN=token
    )
    user = subprocess.run(
        [sys.executable, "-c", "from huggingface_hub import whoami; print(whoami()['name'])"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    repo = f"{user}/hf-finetune-test-{uuid.uuid4().hex[:8]}"
    try:
        push = subprocess.run(
            [sys.executable, "-m", "hf_finetune", "push", str(trained.out), "--repo-id", repo, "--private"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert push.returncode == 0, describe(push)
        images = [str(tiny_image_folder / "val" / name / f"{name}_000.png") for name in LABELS]
        card = tmp_path / "README.md"
        card.write_text(render_model_card(trained.out, repo), encoding="utf-8")
        load = subprocess.run(
            [sys.executable, "-c", LOADER, repo, json.dumps(images), str(card)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert load.returncode == 0, describe(load)
        result = json.loads(load.stdout.split("RESULT ", 1)[1])
        assert result["id2label"] == LABELS and result["timm_labels"] == LABELS
    finally:
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"from huggingface_hub import delete_repo; delete_repo({repo!r}, missing_ok=True)",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
