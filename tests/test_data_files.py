"""Every common data file as given: which ``datasets`` builder reads a file, glob or folder
(:func:`hf_finetune.data.data_files.data_source`), and the loaders per format."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_finetune.data.data_files import DataSource, data_source, file_builder, is_data_spec
from hf_finetune.errors import DataError


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "builder"),
    [
        ("a.csv", "csv"),
        ("a.tsv", "csv"),
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
