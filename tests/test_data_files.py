"""Every common data file as given: which ``datasets`` builder reads a file, glob or folder
(:func:`hf_finetune.data.data_files.data_source`), and the loaders per format."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import datasets
import pytest
from PIL import Image

from hf_finetune.config.arguments import DataArguments
from hf_finetune.data.data_files import DataSource, data_source, file_builder, is_data_spec
from hf_finetune.data.file_sources import load_source
from hf_finetune.data.loading import load_image_dataset
from hf_finetune.errors import DataError


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "builder"),
    [
        ("a.csv", "csv"),
        ("a.tsv", None),
        ("a.json", "json"),
        ("a.JSONL", "json"),
        ("a.jsonl.gz", "json"),
        ("a.parquet", "parquet"),
        ("data-00000-of-00001.arrow", "arrow"),
        ("shard-000.tar", "webdataset"),
        ("a.txt", None),
        ("a.tar.gz", None),
        ("a.png", None),
    ],
)
def test_file_builder_from_extension(name, builder):
    assert file_builder(name) == builder


def test_single_file_resolves_to_its_absolute_path(tmp_path):
    path = _touch(tmp_path / "train.parquet")
    assert data_source(str(path), "train_file") == DataSource("parquet", [str(path.resolve())])


def test_glob_is_expanded_and_sorted(tmp_path):
    names = ["shard-10.parquet", "shard-02.parquet", "shard-01.parquet"]
    for name in names:
        _touch(tmp_path / "d" / name)
    _touch(tmp_path / "d" / "other" / "shard-00.parquet")
    source = data_source(str(tmp_path / "d" / "shard-*.parquet"), "train_file")
    assert source.builder == "parquet"
    assert [Path(p).name for p in source.data_files] == sorted(names)
    deep = data_source(str(tmp_path / "d" / "**" / "*.parquet"), "train_file")
    assert len(deep.data_files) == len(names) + 1


def test_folder_of_shards_skips_hidden_and_metadata_files(tmp_path):
    for index in range(3):
        _touch(tmp_path / "shards" / f"part-{index}.tar")
    _touch(tmp_path / "shards" / "_SUCCESS")
    _touch(tmp_path / "shards" / ".hidden.json")
    _touch(tmp_path / "shards" / "dataset_info.json")
    _touch(tmp_path / "shards" / "README.md")
    source = data_source(str(tmp_path / "shards"), "train_file")
    assert source.builder == "webdataset"
    assert [Path(p).name for p in source.data_files] == [f"part-{i}.tar" for i in range(3)]


def test_save_to_disk_folders_and_image_folders_are_given_as_the_folder(tmp_path):
    single = tmp_path / "single"
    _touch(single / "state.json", "{}")
    _touch(single / "data-00000-of-00001.arrow")
    several = tmp_path / "dict"
    _touch(several / "dataset_dict.json", "{}")
    images = tmp_path / "images"
    _touch(images / "cat" / "a.png")
    _touch(images / "metadata.csv")
    assert data_source(str(single), "dataset_name") == DataSource("disk", [str(single)])
    assert data_source(str(several), "dataset_name").folder == str(several)
    assert data_source(str(images), "train_file") == DataSource("imagefolder", [str(images)])
    # the arrow files inside a save_to_disk folder, given by glob, are read by the arrow builder
    assert data_source(str(single / "*.arrow"), "train_file").builder == "arrow"


@pytest.mark.parametrize(
    ("files", "spec", "words"),
    [
        ([], "nothing-*.parquet", ["train_file", "nothing-*.parquet", "matches no file"]),
        ([], "missing.parquet", ["validation_file", "missing.parquet", "does not exist"]),
        (["a.parquet", "b.csv"], "*", ["mixes kinds", "parquet (", "csv ("]),
        (["a.parquet", "b.txt"], "*", ["b.txt", "'.txt'"]),
        (["notes.txt"], "notes.txt", ["notes.txt", "'.txt'"]),
        (["d/a.parquet", "d/b.arrow"], "d", ["mixes kinds", "a.parquet", "b.arrow"]),
        (["d/README.md"], "d", ["holds no data file"]),
        (["a.png", "b.png"], "*.png", ["image files", "a folder of images"]),
    ],
)
def test_bad_specs_are_one_line_naming_key_and_spec(tmp_path, files, spec, words):
    for name in files:
        _touch(tmp_path / name)
    key = "validation_file" if spec == "missing.parquet" else "train_file"
    with pytest.raises(DataError) as caught:
        data_source(str(tmp_path / spec), key)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{key}: ")
    for word in words:
        assert word in message


def test_is_data_spec_tells_local_specs_from_hub_ids(tmp_path):
    _touch(tmp_path / "a.parquet")
    assert is_data_spec(str(tmp_path / "a.parquet"))
    assert is_data_spec(str(tmp_path / "*.parquet"))
    assert is_data_spec(str(tmp_path))
    assert not is_data_spec("owner/some-dataset")


# --- the loaders per format, in this process --------------------------------------------------------------

COLOURS = {
    "cat": [(200, 30, 30), (220, 40, 20), (180, 20, 40)],
    "dog": [(30, 30, 200), (20, 40, 220), (40, 20, 180)],
}
CLASSES = sorted(COLOURS)
ROWS = [(name, colour) for name in CLASSES for colour in COLOURS[name]] * 2  # 12 images, 6 per class


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "PNG")
    return buffer.getvalue()


def _tar(path: Path, rows: list[tuple[int, str, tuple]]) -> None:
    with tarfile.open(path, "w") as archive:
        for index, name, colour in rows:
            members = {
                "png": _png(colour),
                "cls": str(CLASSES.index(name)).encode(),
                "json": json.dumps({"label": name}).encode(),
                "txt": name.encode(),
            }
            for ext, data in members.items():
                info = tarfile.TarInfo(f"sample{index:03d}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> Path:
    """The same 12 images (8x8 PNGs, two classes) as every format: parquet (one file, shards, paths), Arrow,
    save_to_disk (a Dataset, a DatasetDict), WebDataset shards, and a multi-label parquet file."""
    root = tmp_path_factory.mktemp("formats")
    images = root / "images"
    images.mkdir()
    for index, (_, colour) in enumerate(ROWS):
        (images / f"{index:03d}.png").write_bytes(_png(colour))
    embedded = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    rows = {"image": [{"bytes": _png(c), "path": None} for _, c in ROWS], "label": [n for n, _ in ROWS]}
    table = datasets.Dataset.from_dict(rows, features=embedded)
    table.to_parquet(str(root / "images.parquet"))
    (root / "shards").mkdir()
    for shard in range(2):
        table.shard(2, shard, contiguous=True).to_parquet(str(root / "shards" / f"part-{shard}.parquet"))
    paths = {"file": [f"images/{i:03d}.png" for i in range(len(ROWS))], "class": [n for n, _ in ROWS]}
    datasets.Dataset.from_dict(paths).to_parquet(str(root / "paths.parquet"))
    table.save_to_disk(str(root / "saved"))
    shutil.copy(next((root / "saved").glob("*.arrow")), root / "images.arrow")
    datasets.DatasetDict(
        {"train": table.select(range(8)), "validation": table.select(range(8, 12))}
    ).save_to_disk(str(root / "saved_dict"))
    (root / "wds").mkdir()
    indexed = [(i, n, c) for i, (n, c) in enumerate(ROWS)]
    _tar(root / "wds" / "shard-0.tar", indexed[:6])
    _tar(root / "wds" / "shard-1.tar", indexed[6:])
    multi = [["cat"], ["dog"], ["cat", "dog"]] * 4
    multi_features = datasets.Features(
        {"image": datasets.Image(), "labels": datasets.List(datasets.Value("string"))}
    )
    datasets.Dataset.from_dict({"image": rows["image"], "labels": multi}, features=multi_features).to_parquet(
        str(root / "multi.parquet")
    )
    return root


def _load(root: Path, **kwargs):
    return load_image_dataset(DataArguments(**kwargs), seed=0, cache_dir=str(root / "hf_cache"))


def _colours(data) -> list[tuple[int, int, int]]:
    """The colour of every image of every split, decoded from its bytes or path."""
    found = []
    for split in data.dataset.values():
        for row in split:
            image = row["image"]
            source = io.BytesIO(image["bytes"]) if image["bytes"] else image["path"]
            with Image.open(source) as opened:
                found.append(opened.convert("RGB").getpixel((4, 4)))
    return sorted(found)


@pytest.mark.parametrize(
    ("key", "spec", "names"),
    [
        ("train_file", "images.parquet", CLASSES),
        ("train_file", "shards/part-*.parquet", CLASSES),
        ("train_file", "shards", CLASSES),
        ("train_file", "paths.parquet", CLASSES),
        ("train_file", "images.arrow", CLASSES),
        ("train_file", "saved", CLASSES),
        ("train_file", "wds/shard-*.tar", ["0", "1"]),  # the cls member: class ids
        ("dataset_name", "images.parquet", CLASSES),
        ("dataset_name", "shards/*.parquet", CLASSES),
        ("dataset_name", "saved", CLASSES),
        ("dataset_name", "saved_dict", CLASSES),
        ("dataset_name", "wds", ["0", "1"]),
    ],
)
def test_every_format_gives_the_same_images_and_labels(formats, key, spec, names):
    data = _load(formats, **{key: str(formats / spec)})
    assert data.labels == names
    assert set(data.dataset) == {"train", "validation"}
    assert sum(len(split) for split in data.dataset.values()) == len(ROWS)
    for split in data.dataset.values():
        assert isinstance(split.features["image"], datasets.Image) and not split.features["image"].decode
        assert isinstance(split.features["label"], datasets.ClassLabel)
    counts = Counter(data.labels[i] for split in data.dataset.values() for i in split["label"])
    assert sorted(counts.values()) == [len(ROWS) // 2] * 2
    assert _colours(data) == sorted(colour for _, colour in ROWS)
    if spec == "saved_dict":
        assert [len(data.dataset[s]) for s in ("train", "validation")] == [8, 4]


@pytest.mark.parametrize("member", ["txt", "json.label"])
def test_webdataset_label_member_named_by_label_column_name(formats, member):
    data = _load(formats, train_file=str(formats / "wds" / "*.tar"), label_column_name=member)
    assert data.labels == CLASSES
    by_colour = {colour: name for name, colour in ROWS}
    for split in data.dataset.values():
        for row in split:
            with Image.open(io.BytesIO(row["image"]["bytes"])) as opened:
                assert by_colour[opened.convert("RGB").getpixel((4, 4))] == data.labels[row["label"]]


def test_multi_label_parquet_and_parquet_validation_file(formats):
    data = _load(
        formats,
        train_file=str(formats / "multi.parquet"),
        validation_file=str(formats / "multi.parquet"),
        test_file=str(formats / "paths.parquet"),
        label_column_name=None,
    )
    assert data.multi_label and data.labels == CLASSES
    hot = data.dataset["validation"]["label"]
    assert [sum(row) for row in hot] == [1.0, 1.0, 2.0] * 4
    assert len(data.dataset["test"]) == len(ROWS)


# --- bad input: one line naming the key and the file -------------------------------------------------------


def _truncated_copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def _one_line(caught, *fragments: str) -> str:
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_truncated_parquet_shard_and_tar_shard_are_named(formats, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(formats / "shards", shards)
    bad = _truncated_copy(formats / "images.parquet", shards / "part-2.parquet")
    with pytest.raises(DataError) as caught:
        _load(formats, train_file=str(shards / "*.parquet"))
    _one_line(caught, "train_file: ", str(bad), "could not be read as parquet", "truncated")
    with pytest.raises(DataError) as caught:  # the same folder as dataset_name: load_dataset's own inference
        _load(formats, dataset_name=str(shards))
    _one_line(caught, "dataset_name: ", str(bad), "truncated")
    tars = tmp_path / "wds"
    shutil.copytree(formats / "wds", tars)
    bad_tar = _truncated_copy(formats / "wds" / "shard-1.tar", tars / "shard-1.tar")
    with pytest.raises(DataError) as caught:
        _load(formats, train_file=str(tars / "*.tar"), validation_file=str(formats / "images.parquet"))
    _one_line(caught, "train_file: ", str(bad_tar), "WebDataset tar")


def test_a_shard_gone_between_listing_and_reading_is_named(formats, tmp_path):
    kept = shutil.copy(formats / "shards" / "part-0.parquet", tmp_path / "part-0.parquet")
    gone = str(tmp_path / "part-1.parquet")
    with pytest.raises(DataError) as caught:
        load_source(DataSource("parquet", [str(kept), gone]), "train_file", str(formats / "hf_cache"))
    _one_line(caught, "train_file: ", gone, "does not exist")


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        (
            {"validation_file": "nothing-*.parquet"},
            ["validation_file: ", "nothing-*.parquet", "matches no file"],
        ),
        ({"test_file": "*.*"}, ["test_file: ", "mixes kinds of file"]),
        ({"validation_file": "saved_dict"}, ["validation_file: ", "saved_dict", "give it as dataset_name"]),
        ({"validation_file": "images"}, ["validation_file: ", "folder of images", "validation_dir"]),
    ],
)
def test_bad_validation_and_test_specs(formats, kwargs, fragments):
    spec = {key: str(formats / value) for key, value in kwargs.items()}
    with pytest.raises(DataError) as caught:
        _load(formats, train_file=str(formats / "images.parquet"), **spec)
    _one_line(caught, *fragments)


def test_webdataset_without_a_label_member(formats, tmp_path):
    with tarfile.open(tmp_path / "only-images.tar", "w") as archive:
        for index in range(2):
            info = tarfile.TarInfo(f"s{index}.png")
            data = _png((index, index, index))
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError) as caught:
        _load(formats, train_file=str(tmp_path / "only-images.tar"))
    _one_line(caught, "train_file: ", "only-images.tar", "no label member", ".cls, .txt or .json")


# --- end to end: a tiny fine-tune on a parquet train_file, evaluated from the same file -----------------


def test_tiny_training_and_eval_on_a_parquet_train_file(formats, tiny_hf_checkpoint, tmp_path, capsys):
    from hf_finetune import cli
    from hf_finetune.inference.evaluation import evaluate_model

    out = tmp_path / "run"
    argv = ["train", "--model_name_or_path", tiny_hf_checkpoint, "--train_file", formats / "images.parquet"]
    argv += [
        "--output_dir",
        out,
        "--image_size",
        "32",
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        "2",
    ]
    argv += ["--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false"]
    argv += ["--report_to", "none", "--dataloader_num_workers", "0", "--train_val_split", "0.34"]
    assert cli.main([str(a) for a in argv]) == 0, capsys.readouterr().err[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog"}
    trained = json.loads((out / "eval_results.json").read_text())
    assert trained["eval_samples"] == 4  # 34% of each class of 6, stratified: 2 + 2
    data_args = DataArguments(train_file=str(formats / "shards" / "*.parquet"), train_val_split=0.34)
    report = evaluate_model(str(out), data_args, split="validation", seed=42)
    assert report["num_images"] == trained["eval_samples"]
    assert report["accuracy"] == pytest.approx(trained["eval_accuracy"])


@pytest.mark.parametrize("name", ["rows.csv", "rows.jsonl.gz"])
def test_a_glob_of_path_files_reads_each_files_paths_from_its_folder(formats, tmp_path, name):
    expected = []
    for part, rows in (("a", ROWS[:6]), ("b", ROWS[6:])):
        (tmp_path / part / "img").mkdir(parents=True)
        lines = []
        for index, (label, colour) in enumerate(rows):
            (tmp_path / part / "img" / f"{index}.png").write_bytes(_png(colour))
            expected.append(str(tmp_path / part / "img" / f"{index}.png"))
            lines.append({"image": f"img/{index}.png", "label": label})
        if name == "rows.csv":
            text = "image,label\n" + "".join(f"{row['image']},{row['label']}\n" for row in lines)
            (tmp_path / part / name).write_text(text)
        else:
            with gzip.open(tmp_path / part / name, "wt") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in lines)
    data = _load(formats, train_file=str(tmp_path / "*" / name))
    assert data.labels == CLASSES
    paths = sorted(row["path"] for split in data.dataset.values() for row in split["image"])
    assert paths == sorted(expected)
    assert _colours(data) == sorted(colour for _, colour in ROWS)


def test_the_cli_says_a_truncated_shard_in_one_line_and_writes_nothing(
    formats, tiny_hf_checkpoint, tmp_path, capsys
):
    from hf_finetune import cli

    shards = tmp_path / "shards"
    shutil.copytree(formats / "shards", shards)
    bad = _truncated_copy(formats / "shards" / "part-1.parquet", shards / "part-1.parquet")
    out = tmp_path / "run"
    argv = ["train", "--model_name_or_path", tiny_hf_checkpoint, "--train_file", shards / "*.parquet"]
    capsys.readouterr()
    assert cli.main([str(a) for a in [*argv, "--output_dir", out, "--max_steps", "1"]]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hf-finetune: error: train_file: "), lines
    assert str(bad) in lines[0]
    assert not out.exists()
