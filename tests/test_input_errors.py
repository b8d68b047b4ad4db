"""Bad input is one line on stderr and exit status 2, no traceback (issue 20, part B: cases 6-9, 11-13,
15-17 and duplicate YAML keys). One test per case, named after it.

Most run the command in this process (``cli.main``; a traceback would fail the test as an exception);
a few run it as a subprocess, as a user does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import SHARED_DATA, SHARED_MODELS, make_image_folder, requires_shared, run_hf_finetune

QUICK = ["--image_size", "32", "--per_device_train_batch_size", "4", "--max_steps", "1"]
QUICK += ["--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false"]
QUICK += ["--eval_on_start", "false", "--report_to", "none", "--dataloader_num_workers", "0"]


def one_line_error(stderr: str, *fragments: str) -> str:
    """The one line of ``stderr`` (``hf-finetune: error: ...``), checked to hold every fragment."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hf-finetune: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def cli_error(capsys, *args, fragments=()) -> str:
    """Run ``hf-finetune ARGS`` in this process: exit status 2 and one line naming every fragment."""
    from hf_finetune import cli

    capsys.readouterr()
    status = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    assert status == 2, captured.out + captured.err
    return one_line_error(captured.err, *fragments)


def subprocess_error(*args, fragments=()) -> str:
    proc = run_hf_finetune(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    return one_line_error(proc.stderr, *fragments)


# --- case 17 and duplicate keys: the recipe YAML -----------------------------------------------------


def test_yaml_alias_bomb_refused(tmp_path, capsys):
    """Nine levels of nine aliases inside label_mapping: 9**9 strings once expanded (gigabytes as JSON)."""
    lines = ["model_name_or_path: x", "train_dir: x", "label_mapping:", '  l0: &l0 ["lol", "lol", "lol"]']
    for level in range(1, 10):
        lines.append(f"  l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    assert recipe.stat().st_size < 1000
    line = cli_error(capsys, "train", recipe, fragments=(str(recipe), "aliases"))
    assert "100,000" in line
    # the same bound applies to a label-mapping file
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("\n".join(lines[3:]).replace("  ", "", 1).replace("\n  ", "\n") + "\n")
    from hf_finetune.errors import ConfigError
    from hf_finetune.labels.mapping_file import parse_label_mapping

    with pytest.raises(ConfigError, match="label_mapping: .*mapping.yaml: it expands to more than"):
        parse_label_mapping(str(mapping))


def test_duplicate_yaml_keys_refused(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: x\ntrain_dir: x\nlearning_rate: 0.1\nlearning_rate: 0.001\n")
    cli_error(capsys, "train", recipe, fragments=(str(recipe), "'learning_rate'", "twice", "line 4"))
    # a merge key (<<) may still be overridden: that is what it is for
    from hf_finetune.config.safe_yaml import load_yaml

    assert load_yaml("a: &a {x: 1}\nb:\n  <<: *a\n  x: 2\n", "test") == {"a": {"x": 1}, "b": {"x": 2}}


# --- case 13: numeric recipe values ------------------------------------------------------------------

OUT_OF_RANGE = {
    "num_train_epochs": ".inf",
    "seed": "-1",
    "gradient_accumulation_steps": "0",
    "image_size": "100000",
    "weight_decay": "-1",
    "freeze_patterns": "[[a]]",
    "max_steps": "-5",
    "learning_rate": ".nan",
}


@pytest.mark.parametrize("key, value", list(OUT_OF_RANGE.items()), ids=list(OUT_OF_RANGE))
def test_numeric_recipe_values_out_of_range(tmp_path, capsys, key, value):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: x\ntrain_dir: {tmp_path}\n{key}: {value}\n")
    line = cli_error(capsys, "train", recipe, "--output_dir", tmp_path / "out", fragments=(f"{key}: got",))
    assert line.split(": error: ")[1].startswith(f"{key}: got"), line
    assert not (tmp_path / "out").exists()


def test_every_numeric_key_has_a_range():
    """The one table covers every int/float key of the recipe (a new key without a range fails here)."""
    from dataclasses import fields

    from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
    from hf_finetune.config.ranges import RANGES

    numeric = {
        spec.name
        for cls in (ModelArguments, DataArguments, FinetuneTrainingArguments)
        for spec in fields(cls)
        if spec.init and any(t in str(spec.type) for t in ("int", "float"))
    }
    assert numeric - set(RANGES) == set()


# --- case 6: a single class --------------------------------------------------------------------------


def test_single_class_is_one_line_error(tmp_path, tiny_hf_checkpoint):
    data = make_image_folder(tmp_path / "data", {"cat": 8})
    out = tmp_path / "out"
    args = ["train", "--model_name_or_path", tiny_hf_checkpoint, "--train_dir", data, "--output_dir", out]
    subprocess_error(*args, *QUICK, fragments=("single class 'cat'", "at least two"))
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()


# --- cases 7-9: file and class names -----------------------------------------------------------------


def _train_args(checkpoint: Path, data: Path, out: Path) -> list:
    return ["train", "--model_name_or_path", checkpoint, "--train_dir", data, "--output_dir", out, *QUICK]


def test_non_utf8_file_names(tmp_path, capsys, tiny_hf_checkpoint):
    """A Latin-1 file name (bytes that are not UTF-8) in a class folder: one line naming it, whether the file
    is a good image or a bad one (bad_images.json could not list it either); so is a Latin-1 class folder."""
    data = make_image_folder(tmp_path / "data", {"cat": 4, "dog": 4})
    latin1 = os.fsencode(data / "cat") + b"/caf\xe9.png"
    shutil.copy(data / "cat" / "cat_000.png", latin1)
    args = _train_args(tiny_hf_checkpoint, data, tmp_path / "out")
    cli_error(capsys, *args, fragments=("train_dir: ", "caf\\xe9.png", "not valid UTF-8", "rename"))
    os.remove(latin1)
    Path(os.fsdecode(os.fsencode(data / "dog") + b"/empty\xff.png")).write_bytes(b"")  # a bad file, too
    cli_error(capsys, *args, fragments=("empty\\xff.png", "not valid UTF-8"))
    assert not (tmp_path / "out" / "bad_images.json").exists()
    os.remove(os.fsencode(data / "dog") + b"/empty\xff.png")
    shutil.copytree(data / "dog", os.fsdecode(os.fsencode(tmp_path / "data") + b"/d\xf6g"))
    cli_error(capsys, *args, fragments=("d\\xf6g", "not valid UTF-8"))


def test_symlink_loop_in_class_folder(tmp_path, capsys, tiny_hf_checkpoint):
    data = make_image_folder(tmp_path / "data", {"cat": 4, "dog": 4})
    os.symlink("loop_b.png", data / "cat" / "loop_a.png")
    os.symlink("loop_a.png", data / "cat" / "loop_b.png")
    args = _train_args(tiny_hf_checkpoint, data, tmp_path / "out")
    cli_error(capsys, *args, fragments=("train_dir: ", "/cat/loop_", "symbolic link loop"))
    # predict skips what is not a readable file and predicts the rest
    from hf_finetune import cli

    assert cli.main(["predict", str(tiny_hf_checkpoint), str(data / "cat")]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if "cat_0" in line]) == 4


def test_superscript_and_dash_class_names(tmp_path, capsys, tiny_hf_checkpoint):
    """str.isdigit() accepts '²' and the old sort key stripped every '-' of '--1': int() failed on both.
    Such names are names; whole numbers still sort numerically."""
    data = make_image_folder(tmp_path / "data", {"²": 6, "--1": 6, "10": 6, "-2": 6, "3": 6})
    out = tmp_path / "out"
    from hf_finetune import cli

    assert cli.main([str(a) for a in _train_args(tiny_hf_checkpoint, data, out)]) == 0, capsys.readouterr()
    id2label = json.loads((out / "config.json").read_text())["id2label"]
    assert [id2label[str(i)] for i in range(5)] == ["-2", "3", "10", "--1", "²"]


# --- case 11: weights cut short ----------------------------------------------------------------------


def test_truncated_safetensors_in_predict_eval_train(tmp_path, capsys, tiny_hf_checkpoint, tiny_image_folder):
    model = tmp_path / "model"
    shutil.copytree(tiny_hf_checkpoint, model)
    weights = model / "model.safetensors"
    whole = weights.read_bytes()
    image = next((tiny_image_folder / "val" / "cat").iterdir())
    commands = {
        "predict": ["predict", model, image],
        "eval": ["eval", model, "--train_dir", tiny_image_folder, "--report_dir", tmp_path / "report"],
        "train": _train_args(model, tiny_image_folder, tmp_path / "out"),
    }
    for content, why in ((whole[: len(whole) // 2], "truncated"), (b"", "0 bytes"), (whole[:6], "6 bytes")):
        weights.write_bytes(content)
        for name, args in commands.items():
            line = cli_error(capsys, *args, fragments=(str(weights), "not a whole safetensors file", why))
            assert name and "Traceback" not in line
    assert not (tmp_path / "out" / "model.safetensors").exists()


# --- case 12: outputs that cannot be written, found before any work ---------------------------------


def _must_not_run(*args, **kwargs):
    raise AssertionError("the work started before the output path was checked")


def test_unwritable_output_paths_checked_before_work(tmp_path, capsys, monkeypatch, tiny_hf_checkpoint):
    import hf_finetune.config.path_checks
    import hf_finetune.data.loading
    import hf_finetune.inference.evaluation
    import hf_finetune.inference.predict

    data = make_image_folder(tmp_path / "data", {"cat": 3, "dog": 3})
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is needed\n")
    model = str(tiny_hf_checkpoint)
    for module, name in (
        (hf_finetune.data.loading, "load_image_dataset"),
        (hf_finetune.inference.predict, "predict_images"),
        (hf_finetune.inference.evaluation, "evaluate_model"),
    ):
        monkeypatch.setattr(module, name, _must_not_run)
    train = ["train", "--model_name_or_path", model, "--train_dir", data, *QUICK]
    cli_error(
        capsys, *train, "--output_dir", blocker / "sub", fragments=("output_dir: ", f"{blocker} is a file")
    )
    cli_error(capsys, *train, "--output_dir", "", fragments=("output_dir: got ''",))
    cli_error(capsys, "predict", model, data, "--output", data, fragments=("output: ", "is a folder"))
    cli_error(
        capsys, "predict", model, data, "--output", blocker / "p.csv", fragments=(f"{blocker} is a file",)
    )
    cli_error(
        capsys, "predict", model, data, "--output", tmp_path / "p.txt", fragments=("output: ", ".jsonl")
    )
    mapping = ["map-labels", "--model_name_or_path", model, "--train_dir", data]
    cli_error(
        capsys, *mapping, "--output", blocker / "m.json", fragments=("output: ", f"{blocker} is a file")
    )
    cli_error(
        capsys, "eval", model, "--train_dir", data, "--report_dir", blocker, fragments=("report_dir: ",)
    )
    # a parent the process may not write (simulated: tests run as root, for whom every folder is writable)
    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(
        hf_finetune.config.path_checks.os,
        "access",
        lambda p, mode: Path(p) != locked and real_access(p, mode),
    )
    cli_error(
        capsys, *train, "--output_dir", locked / "run", fragments=(f"the folder {locked} is not writable",)
    )
    cli_error(capsys, "predict", model, data, "--output", locked / "p.csv", fragments=(str(locked),))
    monkeypatch.undo()
    # map-labels --output into a folder that does not exist yet: made, as predict --output does
    from hf_finetune import cli

    report = tmp_path / "new" / "folder" / "map.json"
    assert cli.main([str(a) for a in [*mapping, "--output", report]]) == 0
    assert json.loads(report.read_text())


# --- case 15: eval of an ImageNet-1k model (two labels named crane) ----------------------------------


@requires_shared
@pytest.mark.parametrize("checkpoint", ["hf-mobilenet_v2_1.0_224", "timm-tf_efficientnet_lite0"])
def test_eval_imagenet_model_with_duplicate_crane(tmp_path, capsys, checkpoint):
    """Folders hotdog/ and pizza/ are matched to the model's labels as training's mapping matches them
    (synonyms of 'hotdog, hot dog, red hot' and 'pizza, pizza pie'); the two crane rows are told apart by
    index in every report; a folder crane/ names both, and a folder matching nothing is named in one line."""
    from hf_finetune import cli

    photos = SHARED_DATA / "hotdog" / "val"
    data = tmp_path / "data"
    for split, pick in (("train", slice(0, 2)), ("val", slice(2, 5))):
        for folder, source in (("hotdog", "hotdog"), ("pizza", "not_hotdog")):
            (data / split / folder).mkdir(parents=True)
            for photo in sorted((photos / source).glob("*.jpg"))[pick]:
                shutil.copy(photo, data / split / folder / photo.name)
    model = SHARED_MODELS / checkpoint
    report = tmp_path / "report"
    assert cli.main(["eval", str(model), "--train_dir", str(data), "--report_dir", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    cranes = sorted(name for name in metrics["per_class"] if name.startswith("crane"))
    assert len(cranes) == 2 and all(name.startswith("crane [") for name in cranes), cranes
    assert (
        metrics["per_class"][next(n for n in metrics["per_class"] if n.startswith("hotdog"))]["support"] == 3
    )
    assert (
        metrics["per_class"][next(n for n in metrics["per_class"] if n.startswith("pizza"))]["support"] == 3
    )
    capsys.readouterr()
    (data / "val" / "pizza").rename(data / "val" / "crane")
    (data / "train" / "pizza").rename(data / "train" / "crane")
    cli_error(capsys, "eval", model, "--train_dir", data, fragments=("'crane'", cranes[0], cranes[1]))
    (data / "val" / "crane").rename(data / "val" / "qwzx")
    (data / "train" / "crane").rename(data / "train" / "qwzx")
    cli_error(capsys, "eval", model, "--train_dir", data, fragments=("'qwzx' (no model label)",))


# --- case 16: a Dataset (not a DatasetDict) saved with save_to_disk ----------------------------------


def test_single_dataset_saved_to_disk(tmp_path, capsys, tiny_hf_checkpoint):
    import datasets

    from hf_finetune import cli
    from hf_finetune.config.arguments import DataArguments
    from hf_finetune.data.loading import load_image_dataset

    images = make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6})
    paths = sorted(str(p) for p in images.rglob("*.png"))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])}
    )
    labels = [0 if "/cat/" in p else 1 for p in paths]
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"image": paths, "label": labels}, features=features).save_to_disk(str(saved))
    data = load_image_dataset(DataArguments(dataset_name=str(saved)))
    assert data.labels == ["cat", "dog"]
    assert sorted(data.dataset) == ["train", "validation"]
    assert len(data.dataset["train"]) + len(data.dataset["validation"]) == 12
    assert "save_to_disk" in data.source
    capsys.readouterr()
    mapping = ["map-labels", "--model_name_or_path", tiny_hf_checkpoint, "--dataset_name", saved]
    assert cli.main([str(a) for a in mapping]) == 0
    # a split that the single Dataset does not have is one line
    cli_error(capsys, *mapping, "--train_split", "training", fragments=("train_split: ", "'train'"))


# --- faults of the same class found while fixing these ----------------------------------------------


def test_recipe_that_is_not_utf8(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(b"model_name_or_path: caf\xe9\ntrain_dir: x\n")
    cli_error(capsys, "train", recipe, fragments=(str(recipe), "UTF-8"))


def test_label_mapping_json_with_a_repeated_key(tmp_path):
    from hf_finetune.errors import ConfigError
    from hf_finetune.labels.mapping_file import parse_label_mapping

    with pytest.raises(ConfigError, match="label_mapping: key 'cat' is given twice"):
        parse_label_mapping('{"cat": "tabby", "cat": "tiger"}')
    mapping = tmp_path / "mapping.json"
    mapping.write_text('{"cat": "tabby", "dog": "dingo", "cat": "tiger"}')
    with pytest.raises(ConfigError, match="label_mapping: key 'cat' is given twice"):
        parse_label_mapping(str(mapping))


def test_eval_batch_size_and_seed_out_of_range(tmp_path, capsys, monkeypatch, tiny_hf_checkpoint):
    """eval's own flags go through the same range table (a zero batch size failed in the DataLoader, a
    negative seed in numpy, after the data was read)."""
    import hf_finetune.data.loading

    monkeypatch.setattr(hf_finetune.data.loading, "load_image_dataset", _must_not_run)
    data = make_image_folder(tmp_path / "data", {"cat": 3, "dog": 3})
    args = ["eval", tiny_hf_checkpoint, "--train_dir", data, "--report_dir", tmp_path / "r"]
    cli_error(capsys, *args, "--batch_size", "0", fragments=("batch_size: got 0",))
    cli_error(capsys, *args, "--seed", "-1", fragments=("seed: got -1",))


def test_csv_that_is_not_utf8(tmp_path, capsys, tiny_hf_checkpoint):
    images = make_image_folder(tmp_path / "images", {"cat": 3, "dog": 3})
    rows = [f"{p},{p.parent.name}" for p in sorted(images.rglob("*.png"))]
    table = tmp_path / "train.csv"
    table.write_bytes(("image,label\n" + "\n".join(rows) + "\n").encode().replace(b",cat", b",c\xe4t"))
    args = ["train", "--model_name_or_path", tiny_hf_checkpoint, "--train_file", table]
    cli_error(capsys, *args, "--output_dir", tmp_path / "out", *QUICK, fragments=(str(table), "not UTF-8"))


def test_predict_output_with_a_non_utf8_file_name(tmp_path, capsys, tiny_hf_checkpoint):
    """The CSV could not hold the name (UnicodeEncodeError after every prediction): the record's path
    shows the bad bytes as \\xNN."""
    from hf_finetune import cli

    images = make_image_folder(tmp_path / "images", {"cat": 2})
    shutil.copy(images / "cat" / "cat_000.png", os.fsencode(images / "cat") + b"/caf\xe9.png")
    output = tmp_path / "predictions.csv"
    assert cli.main(["predict", str(tiny_hf_checkpoint), str(images), "--output", str(output)]) == 0
    text = output.read_text(encoding="utf-8")
    assert "caf\\xe9.png" in text and "cat_001.png" in text


def test_dataset_config_that_does_not_exist(tmp_path, capsys, tiny_hf_checkpoint):
    """datasets' ValueError (here: an unknown configuration of a local dataset folder) is one line."""
    import datasets

    saved = tmp_path / "saved"
    features = datasets.Features(
        {"image": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])}
    )
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"image": ["x.png", "y.png"], "label": [0, 1]}, features=features
            )
        }
    ).save_to_disk(str(saved))
    args = ["map-labels", "--model_name_or_path", tiny_hf_checkpoint, "--dataset_name", saved]
    cli_error(capsys, *args, "--dataset_config_name", "nope", fragments=("dataset_name: ", "'nope'"))


def test_unreadable_folder_inside_a_class_folder(tmp_path, capsys, monkeypatch, tiny_hf_checkpoint):
    """A subfolder the process may not list (simulated: tests run as root) is one line naming it."""
    import hf_finetune.data.folders

    data = make_image_folder(tmp_path / "data", {"cat": 3, "dog": 3})
    (data / "cat" / "private").mkdir()
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("private"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(hf_finetune.data.folders.os, "scandir", scandir)
    args = _train_args(tiny_hf_checkpoint, data, tmp_path / "out")
    cli_error(capsys, *args, fragments=("train_dir: cannot read the folder", "private", "Permission denied"))


def test_push_of_a_folder_with_truncated_weights_or_broken_config(tmp_path, capsys, tiny_hf_checkpoint):
    """push checked only that the files exist: it would upload a truncated model, or fail on config.json
    with a traceback."""
    out = tmp_path / "run"
    shutil.copytree(tiny_hf_checkpoint, out)
    weights = out / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:100])
    cli_error(
        capsys, "push", out, "--repo-id", "me/model", fragments=(str(weights), "not a whole safetensors")
    )
    weights.write_bytes(whole)
    (out / "config.json").write_text('{"model_type": "resnet",')
    cli_error(capsys, "push", out, "--repo-id", "me/model", fragments=("config.json is not valid JSON",))


def test_resume_from_a_truncated_checkpoint(tmp_path, capsys, tiny_hf_checkpoint):
    """--resume picked the newest checkpoint and failed in safetensors with a traceback when its weights
    were cut short (a copy or disk that filled up)."""
    from hf_finetune import cli

    data = make_image_folder(tmp_path / "data", {"cat": 4, "dog": 4})
    out = tmp_path / "out"
    args = _train_args(tiny_hf_checkpoint, data, out)
    args += ["--save_strategy", "steps", "--save_steps", "1", "--max_steps", "2"]
    assert cli.main([str(a) for a in args]) == 0, capsys.readouterr()
    weights = out / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    cli_error(
        capsys, *args, "--resume", fragments=("resume_from_checkpoint: ", str(weights), "earlier checkpoint")
    )


@pytest.mark.parametrize(
    "line, shown",
    [
        ("train_dir: 2024-01-01", "datetime.date(2024, 1, 1), which YAML read as a date"),
        ("model_name_or_path: !!binary aGVsbG8=", "b'hello', which YAML read as a bytes value"),
        ("save_strategy: no", "False, which YAML read as a boolean (YAML reads unquoted yes/no"),
        ("run_name: 12", "12, which YAML read as a number"),
    ],
    ids=["date", "binary", "no", "number"],
)
def test_text_key_given_another_yaml_type(tmp_path, capsys, line, shown):
    """YAML turns unquoted dates, numbers, yes/no and !!binary into other types; a text key kept them and
    failed far away (a TypeError traceback from Path(), or 'False is not a valid IntervalStrategy')."""
    key = line.split(":")[0]
    base = {"model_name_or_path": "x", "train_dir": str(tmp_path), "output_dir": str(tmp_path / "out")}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("".join(f"{k}: {v}\n" for k, v in base.items() if k != key) + line + "\n")
    cli_error(capsys, "train", recipe, fragments=(f"{key}: got {shown}", "in quotes"))
