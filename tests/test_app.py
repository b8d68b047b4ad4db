"""``hf-finetune app`` in a real headless Chromium, its bad input, and ``hf-finetune push --space``.

* The module's one finished model: ``hf-finetune train`` (in-process, 1 epoch) of the tiny timm checkpoint on the
  tiny image folder, then ``hf-finetune eval`` (its top losses), so the folder has every report the app shows.
* The browser test starts ``hf-finetune app`` as a subprocess on a free port, drives Debian's chromium
  (``/usr/bin/chromium``; Playwright's own browser download does not work here) with Playwright's sync API,
  uploads a real hotdog photo (``../shared/data/hotdog``) and reads the labels and probabilities from the page:
  they must equal what ``hf-finetune predict`` writes for the same file. It stops the app by its process id and
  checks the port is free again. Its screenshot goes to a temporary folder, or to the file
  ``HF_FINETUNE_SCREENSHOT`` names (``make test`` leaves the tree clean).
* ``push --space`` through the recorded ``HfApi`` of ``tests/test_hub.py``: the Space's files and their content,
  and the Space's ``app.py`` run here against the pushed files, agreeing with ``predict``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import SHARED_DATA
from PIL import Image
from test_hub import RecordedHubClient

from hf_finetune.app.page import PREDICTIONS_ID, predictions_html
from hf_finetune.cli import main
from hf_finetune.hub import push as hub_module
from hf_finetune.inference.predict import predict_images

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_ENV = "HF_FINETUNE_SCREENSHOT"
HOTDOGS = SHARED_DATA / "hotdog" / "val" / "hotdog"
TOP_K = 3
READY_TIMEOUT = 120
TOKEN = "hf_FakeTokenForHfFinetuneTests0123456789"
MODEL_REPO = "test-org/tiny-timm-cats"
SPACE = "test-org/tiny-timm-cats-demo"


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def run_in_module_fixture(argv: list[str]) -> int:
    """``main(argv)`` from a module-scoped fixture, which runs before the autouse ``_restore_log_handlers`` of
    conftest.py saves the handlers: the handler ``main`` attaches to this test's captured stdout is removed here,
    or later tests would log to a closed stream."""
    logger = logging.getLogger("hf_finetune")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    try:
        return main(argv)
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture(scope="module")
def finished(tiny_timm_checkpoint, tiny_image_folder, tmp_path_factory) -> Path:
    """A finished run's folder (training's reports, and ``eval_validation/`` with the top losses)."""
    out = tmp_path_factory.mktemp("app_run") / "tiny-timm-cats"
    train = [
        "train",
        "--model_name_or_path",
        str(tiny_timm_checkpoint),
        "--train_dir",
        str(tiny_image_folder),
    ]
    train += ["--output_dir", str(out), "--image_size", "32", "--num_train_epochs", "1", "--seed", "7"]
    assert run_in_module_fixture([*train, "--per_device_train_batch_size", "12"]) == 0
    assert run_in_module_fixture(["eval", str(out), "--train_dir", str(tiny_image_folder)]) == 0
    return out


@pytest.fixture(scope="module")
def app_server(finished, tmp_path_factory):
    """``hf-finetune app`` started as a subprocess (not yet waited for: it imports gradio meanwhile)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package; .ci/run installs it)")
    if not HOTDOGS.is_dir():
        pytest.skip(f"real photos not found at {HOTDOGS} (see ../shared/README.md)")
    root = tmp_path_factory.mktemp("app_server")
    cwd = root / "cwd"
    cwd.mkdir()
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_TEMP_DIR=str(root / "gradio"), HF_HUB_OFFLINE="1")
    log = root / "app.log"
    before = digest(finished)
    command = [sys.executable, "-m", "hf_finetune", "app", str(finished), "--port", str(port)]
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [*command, "--top-k", str(TOP_K)], cwd=cwd, env=env, stdout=handle, stderr=handle
        )
    server = SimpleNamespace(proc=proc, port=port, url=f"http://127.0.0.1:{port}/", log=log, cwd=cwd)
    server.before, server.uploads = before, root / "gradio"
    yield server
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def wait_until_ready(server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"the app exited with {server.proc.returncode}:\n{server.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(server.url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"the app did not answer within {READY_TIMEOUT} s:\n{server.log.read_text()[-3000:]}")


def test_the_app_starts(app_server):
    """Requested first: the app imports gradio while the tests below run."""
    assert app_server.proc.poll() is None, app_server.log.read_text()


# --- bad input: one line, exit 2, before gradio ---------------------------------------------------------------


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("hf-finetune: error: ")
    return lines[0]


def test_app_on_a_missing_folder_is_one_line(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main(["app", str(missing)]) == 2
    line = one_error_line(capsys)
    assert f"MODEL_DIR: {missing} does not exist" in line and "finished `hf-finetune train` run" in line
    assert not missing.exists()


def test_app_on_a_folder_without_a_model_is_one_line(tiny_image_folder, capsys):
    assert main(["app", str(tiny_image_folder)]) == 2
    line = one_error_line(capsys)
    assert f"MODEL_DIR: {tiny_image_folder} has no config.json and no model.safetensors" in line


def test_app_on_a_busy_port_is_one_line(finished, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        assert main(["app", str(finished), "--port", str(port)]) == 2
        seconds = time.monotonic() - started
    line = one_error_line(capsys)
    assert f"--port: 127.0.0.1:{port} is already in use" in line, line
    assert seconds < 5, f"the busy port took {seconds:.1f} s to report: checked after gradio started?"


def test_app_with_a_bad_port_or_top_k_is_one_line(finished, capsys):
    assert main(["app", str(finished), "--port", "70000"]) == 2
    assert "--port: 70000 is not a TCP port; expected 1 to 65535" in one_error_line(capsys)
    assert main(["app", str(finished), "--top-k", "0"]) == 2
    assert "--top-k: 0 is not a positive number of labels" in one_error_line(capsys)


# --- the page's content ---------------------------------------------------------------------------------------


def test_multi_label_page_lists_the_classes_at_or_above_their_thresholds(tiny_hf_checkpoint, tmp_path):
    """A multi-label model: the page names exactly the classes predict puts above their thresholds (config.json
    label_thresholds), here only the least probable of the top 3, whose threshold is 0."""
    model = tmp_path / "multi"
    shutil.copytree(tiny_hf_checkpoint, model)
    config = json.loads((model / "config.json").read_text())
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 32), (200, 30, 60)).save(image)
    config["problem_type"] = "multi_label_classification"
    (model / "config.json").write_text(json.dumps(config))
    ranked = predict_images(model, [image], top_k=TOP_K)[0]["predictions"]
    lowest = ranked[-1]["label"]
    config["label_thresholds"] = {
        name: (0.0 if name == lowest else 1.0) for name in config["id2label"].values()
    }
    (model / "config.json").write_text(json.dumps(config))
    record = predict_images(model, [image], top_k=TOP_K)[0]
    assert record["labels"] == [lowest]
    page = predictions_html(record)
    assert f"at or above their thresholds: <b>{lowest}</b>" in page
    shown = re.findall(r'<td class="hf-label">(.*?)</td><td class="hf-score">(.*?)</td>', page)
    assert shown == [(p["label"], f"{p['score']:.4f}") for p in ranked]


# --- push --space ---------------------------------------------------------------------------------------------


@pytest.fixture
def recorded(monkeypatch):
    client = RecordedHubClient()
    monkeypatch.setattr(hub_module, "hub_client", lambda: client)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return client


def test_push_with_space_uploads_an_app_that_loads_the_model_repo(
    finished, recorded, tiny_image_folder, tmp_path, monkeypatch, capsys
):
    assert main(["push", str(finished), "--repo-id", MODEL_REPO, "--space", SPACE]) == 0
    assert recorded.names() == ["create_repo", "create_commit", "create_repo", "create_commit"]
    (_, model_commit), (_, space_repo), (_, space_commit) = recorded.calls[1:]
    assert space_repo == {
        "repo_id": SPACE,
        "token": TOKEN,
        "private": None,
        "repo_type": "space",
        "space_sdk": "gradio",
        "exist_ok": True,
    }
    assert space_commit["repo_id"] == SPACE and space_commit["repo_type"] == "space"
    files = space_commit["files"]
    assert sorted(files) == ["README.md", "app.py", "requirements.txt"]
    front = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert front == {
        "title": SPACE.split("/")[1],
        "sdk": "gradio",
        "sdk_version": metadata.version("gradio"),
        "app_file": "app.py",
        "pinned": False,
        "models": [MODEL_REPO],
    }
    requirements = files["requirements.txt"].decode().splitlines()
    installed = {name: metadata.version(name).split("+")[0] for name in ("transformers", "torch", "timm")}
    assert requirements == [f"{name}>={version}" for name, version in installed.items()]
    app_source = files["app.py"].decode()
    assert f'MODEL_REPO = "{MODEL_REPO}"' in app_source and 'REVISION = "main"' in app_source
    assert TOKEN not in app_source
    out = capsys.readouterr().out
    assert f"pushed the Space {SPACE} (app.py, requirements.txt, README.md)" in out

    # the Space's app.py, run against the pushed files (a local folder named as the repo), agrees with predict
    for name, content in model_commit["files"].items():
        (tmp_path / MODEL_REPO / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / MODEL_REPO / name).write_bytes(content)
    (tmp_path / "app.py").write_bytes(files["app.py"])
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("space_app", tmp_path / "app.py")
    space_app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(space_app)  # loads the model; gradio only in build_demo()
    image = sorted((tiny_image_folder / "val" / "dog").iterdir())[0]
    top, above = space_app.classify(str(image))
    expected = predict_images(finished, [image], top_k=TOP_K)[0]["predictions"]
    assert list(top) == [p["label"] for p in expected] and above == ""
    assert list(top.values()) == pytest.approx([p["score"] for p in expected], abs=1e-5)


def test_push_with_a_bad_space_id_is_one_line_and_pushes_nothing(finished, recorded, capsys):
    assert main(["push", str(finished), "--repo-id", MODEL_REPO, "--space", "not a space"]) == 2
    assert "space: 'not a space' is not a Hub repo id" in one_error_line(capsys)
    assert recorded.calls == []


# --- the browser ----------------------------------------------------------------------------------------------


def test_browser_shows_what_predict_says_for_a_real_photo(app_server, finished, tmp_path):
    from playwright.sync_api import sync_playwright

    photo = sorted(HOTDOGS.glob("*.jpg"))[0]
    predictions = tmp_path / "predictions.jsonl"
    assert (
        main(["predict", str(finished), str(photo), "--top-k", str(TOP_K), "--output", str(predictions)]) == 0
    )
    expected = json.loads(predictions.read_text().splitlines()[0])["predictions"]
    shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "app.png")
    wait_until_ready(app_server)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 560})
            page.goto(app_server.url)
            page.locator("input[type=file]").first.set_input_files(str(photo))
            page.wait_for_selector(f"#{PREDICTIONS_ID} td.hf-label", timeout=60_000)
            labels = page.locator(f"#{PREDICTIONS_ID} td.hf-label").all_inner_texts()
            scores = page.locator(f"#{PREDICTIONS_ID} td.hf-score").all_inner_texts()
            heading = page.locator("[data-testid='label-output-value']").inner_text()
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
            page.get_by_role("tab", name="Reports").click()
            page.get_by_text("top losses (eval_validation)").wait_for(timeout=30_000)
            page.wait_for_function(
                "[...document.images].filter(i => i.complete && i.naturalWidth).length >= 5"
            )
            report_text = page.locator("body").inner_text()
            images = page.locator("img").count()
        finally:
            browser.close()
    assert heading.strip() == expected[0]["label"]
    assert labels == [p["label"] for p in expected]
    assert scores == [f"{p['score']:.4f}" for p in expected]
    assert [round(float(s), 2) for s in scores] == [round(p["score"], 2) for p in expected]
    for title in ("training curves", "confusion matrix", "top losses (eval_validation)"):
        assert title in report_text, report_text[:2000]
    assert images >= 5  # the upload; curves, two confusion matrices, top losses
    confused = (finished / "eval_validation" / "most_confused.csv").read_text().splitlines()
    assert ("most confused pairs (eval_validation)" in report_text) == (len(confused) > 1), confused
    assert "per-class metrics" in report_text and all(name in report_text for name in ("cat", "dog", "zebra"))
    assert shot.stat().st_size > 10_000

    assert list(app_server.uploads.rglob(photo.name)), "the upload is not where GRADIO_TEMP_DIR says"
    app_server.proc.terminate()  # by its process id (SIGTERM): the server stops as on Ctrl-C
    assert app_server.proc.wait(timeout=30) == 0, app_server.log.read_text()[-3000:]
    assert not list(app_server.uploads.rglob(photo.name)), "the uploaded photo outlived the app"
    assert port_is_free(app_server.port), f"port {app_server.port} still taken after the app stopped"
    assert digest(finished) == app_server.before  # the model folder is only read
    assert list(app_server.cwd.iterdir()) == []  # nothing written where it ran
