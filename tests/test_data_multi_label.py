"""Multi-label data from every source (CSV/JSONL, image folder with a labels file, Hub/parquet/save_to_disk
datasets) into the multi-hot contract of hf_finetune.data.multi_label; test_file; the hold-out; the errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from hf_finetune.config.arguments import DataArguments
from hf_finetune.data.label_sets import label_set, multi_label_split_indices
from hf_finetune.data.loading import LoadedData, load_image_dataset
from hf_finetune.data.multi_label import multi_hot_column
from hf_finetune.data.splits import label_counts
from hf_finetune.errors import DataError


def _load(tmp_path: Path, seed: int = 42, **kwargs) -> LoadedData:
    return load_image_dataset(DataArguments(**kwargs), seed=seed, cache_dir=str(tmp_path / "hf_cache"))


def _images(folder: Path, count: int, prefix: str = "img") -> list[str]:
    """``count`` tiny PNG files in ``folder``; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(prefix) + count)
    names = []
    for i in range(count):
        name = f"{prefix}_{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, size=(6, 6, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def _csv(path: Path, rows: list[tuple[str, str]], header: str = "image,label") -> Path:
    path.write_text(
        header + "\n" + "".join(f'{image},"{label}"\n' for image, label in rows), encoding="utf-8"
    )
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _sets(data: LoadedData, split: str) -> dict[str, set[str]]:
    """{image file name: set of class names} of a split, read back from its multi-hot rows."""
    dataset = data.dataset[split]
    hot = multi_hot_column(dataset)
    paths = [Path(row["path"]).name for row in dataset["image"]]
    return {path: {data.labels[i] for i in np.flatnonzero(row)} for path, row in zip(paths, hot, strict=True)}


def test_csv_with_separator_becomes_multi_hot(tmp_path):
    names = _images(tmp_path, 6)
    labels = ["hotdog;food", " food ; hotdog ", "food", "", "cat;cat", "cat;food;hotdog"]
    train = _csv(tmp_path / "train.csv", list(zip(names, labels, strict=True)))
    val_names = _images(tmp_path / "v", 2, "val")
    val = _csv(tmp_path / "val.csv", [(f"v/{val_names[0]}", "cat"), (f"v/{val_names[1]}", "food;hotdog")])
    data = _load(tmp_path, train_file=str(train), validation_file=str(val))
    assert data.multi_label
    assert data.labels == ["cat", "food", "hotdog"]
    feature = data.dataset["train"].features["label"]
    assert feature.length == 3 and feature.feature.dtype == "float32"
    assert _sets(data, "train") == {
        "img_000.png": {"hotdog", "food"},
        "img_001.png": {"hotdog", "food"},
        "img_002.png": {"food"},
        "img_003.png": set(),  # an empty cell: an image with no class
        "img_004.png": {"cat"},  # a repeated name is merged
        "img_005.png": {"cat", "food", "hotdog"},
    }
    assert multi_hot_column(data.dataset["train"])[3].tolist() == [0.0, 0.0, 0.0]
    assert _sets(data, "validation") == {"val_000.png": {"cat"}, "val_001.png": {"food", "hotdog"}}
    assert label_counts(data.dataset["train"], data.labels) == {"cat": 2, "food": 4, "hotdog": 3}
    assert label_counts(data.dataset["train"]) == {"0": 2, "1": 4, "2": 3}
    summary = data.summary()
    assert summary.startswith(
        f"3 classes (multi-label; per class: the images holding it) from CSV file {train}, "
    )
    assert "train: 6 images, 1.50 labels per image (cat 2, food 4, hotdog 3)" in summary
    assert "validation: 2 images, 1.50 labels per image (cat 1, food 1, hotdog 1)" in summary


def test_jsonl_lists_with_validation_and_test_files(tmp_path):
    names = _images(tmp_path, 5)
    train = _jsonl(
        tmp_path / "train.jsonl",
        [
            {"image": names[0], "labels": ["b", "a"]},
            {"image": names[1], "labels": []},
            {"image": names[2], "labels": ["c"]},
            {"image": names[3], "labels": [" a ", "a"]},
            {"image": names[4], "labels": ["c", "b"]},
        ],
    )
    val = _jsonl(
        tmp_path / "val.jsonl", [{"image": names[0], "labels": ["a"]}, {"image": names[1], "labels": []}]
    )
    test = _jsonl(
        tmp_path / "test.jsonl",
        [{"image": n, "labels": lab} for n, lab in zip(names[:3], [["a", "c"], ["b"], []], strict=True)],
    )
    data = _load(tmp_path, train_file=str(train), validation_file=str(val), test_file=str(test))
    assert list(data.dataset) == ["train", "validation", "test"]
    assert data.labels == ["a", "b", "c"]
    assert multi_hot_column(data.dataset["train"]).tolist() == [
        [1, 1, 0],
        [0, 0, 0],
        [0, 0, 1],
        [1, 0, 0],
        [0, 1, 1],
    ]
    assert multi_hot_column(data.dataset["test"]).tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert label_counts(data.dataset["test"], data.labels) == {"a": 1, "b": 1, "c": 1}


def test_problem_type_multi_label_with_one_name_per_row(tmp_path):
    names = _images(tmp_path, 4)
    train = _csv(tmp_path / "train.csv", list(zip(names, ["x", "y", "x", "z"], strict=True)))
    data = _load(tmp_path, train_file=str(train), problem_type="multi_label", train_val_split=0.25)
    assert data.multi_label and data.labels == ["x", "y", "z"]
    every = {**_sets(data, "train"), **_sets(data, "validation")}
    assert every == {"img_000.png": {"x"}, "img_001.png": {"y"}, "img_002.png": {"x"}, "img_003.png": {"z"}}
    assert (len(data.dataset["train"]), len(data.dataset["validation"])) == (3, 1)


def test_single_label_data_stays_single_label_and_empty_separator_never_splits(tmp_path):
    names = _images(tmp_path, 4)
    train = _csv(tmp_path / "train.csv", list(zip(names, ["a;b", "c", "a;b", "c"], strict=True)))
    data = _load(tmp_path, train_file=str(train), label_separator="", train_val_split=0.5)
    assert not data.multi_label
    assert data.labels == ["a;b", "c"]
    assert isinstance(data.dataset["train"].features["label"], datasets.ClassLabel)


def test_single_label_forced_on_sets_is_an_error(tmp_path):
    names = _images(tmp_path, 3)
    train = _csv(tmp_path / "train.csv", list(zip(names, ["a", "b", "a;b"], strict=True)))
    with pytest.raises(DataError) as err:
        _load(tmp_path, train_file=str(train), problem_type="single_label")
    message = str(err.value)
    assert message.startswith(f"train_file: {train} row 3: label 'a;b' names a set of classes")
    assert "problem_type: multi_label" in message and "\n" not in message
    jsonl = _jsonl(
        tmp_path / "t.jsonl", [{"image": names[0], "label": ["a"]}, {"image": names[1], "label": ["a", "b"]}]
    )
    with pytest.raises(DataError, match=r"t\.jsonl row 2: label \['a', 'b'\] names a set"):
        _load(tmp_path, train_file=str(jsonl), problem_type="single_label")


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("a;;b", "row 2: empty class name in the label 'a;;b'"),
        ("a;", "row 2: empty class name in the label 'a;'"),
        (["a", ""], "row 2: empty class name in the label list ['a', '']"),
        (
            ["hot;dog"],
            "row 2: class name 'hot;dog' in the label list ['hot;dog'] contains the label_separator",
        ),
    ],
)
def test_bad_label_values_name_file_and_row(tmp_path, label, expected):
    names = _images(tmp_path, 2)
    first = ["a"] if isinstance(label, list) else "a"
    train = _jsonl(
        tmp_path / "train.jsonl", [{"image": names[0], "label": first}, {"image": names[1], "label": label}]
    )
    with pytest.raises(DataError) as err:
        _load(tmp_path, train_file=str(train), problem_type="multi_label")
    assert str(err.value) == f"train_file: {train} {expected}" or str(err.value).startswith(
        f"train_file: {train} {expected}"
    )


def test_validation_or_test_class_not_in_train_names_the_row(tmp_path):
    names = _images(tmp_path, 3)
    train = _csv(tmp_path / "train.csv", list(zip(names, ["cat;dog", "dog", "cat"], strict=True)))
    val = _csv(tmp_path / "val.csv", [(names[0], "cat"), (names[1], "dog;zebra")])
    with pytest.raises(DataError) as err:
        _load(tmp_path, train_file=str(train), validation_file=str(val))
    assert str(err.value).startswith(
        f"validation_file: {val} row 2: class 'zebra' is not among the train classes ['cat', 'dog']"
    )
    test = _jsonl(tmp_path / "test.jsonl", [{"image": names[0], "label": ["cat", "Dog"]}])
    with pytest.raises(DataError, match=r"test_file: .*test\.jsonl row 1: class 'Dog' is not among"):
        _load(tmp_path, train_file=str(train), test_file=str(test))


def test_validation_without_a_train_class_is_warned_not_refused(tmp_path, caplog):
    names = _images(tmp_path, 3)
    train = _csv(tmp_path / "train.csv", list(zip(names, ["cat;dog", "dog", "bird"], strict=True)))
    val = _csv(tmp_path / "val.csv", [(names[0], "cat"), (names[1], "")])
    with caplog.at_level(logging.WARNING):
        data = _load(tmp_path, train_file=str(train), validation_file=str(val))
    assert label_counts(data.dataset["validation"], data.labels) == {"bird": 0, "cat": 1, "dog": 0}
    assert "2 of 3 classes have no positive image (bird, dog)" in caplog.text


def test_hold_out_keeps_the_fraction_and_is_seeded(tmp_path):
    names = _images(tmp_path, 20)
    labels = [("a;b" if i % 3 == 0 else "a") if i % 2 else "b" for i in range(20)]
    train = _csv(tmp_path / "train.csv", list(zip(names, labels, strict=True)))
    data = _load(tmp_path, train_file=str(train), train_val_split=0.2)
    assert (len(data.dataset["train"]), len(data.dataset["validation"])) == (16, 4)
    assert "iterative stratification, seed 42" in data.source
    train_sets, val_sets = _sets(data, "train"), _sets(data, "validation")
    assert not set(train_sets) & set(val_sets) and len({**train_sets, **val_sets}) == 20
    # a: 10 images, b: 13 (3 with a): about round(n * 0.2) of each held out (2 and 3; within one)
    held = label_counts(data.dataset["validation"], data.labels)
    assert held["a"] == 2 and abs(held["b"] - 3) <= 1
    again = _load(tmp_path, train_file=str(train), train_val_split=0.2)
    assert _sets(again, "validation") == val_sets
    other = _load(tmp_path, seed=7, train_file=str(train), train_val_split=0.2)
    assert set(_sets(other, "validation")) != set(val_sets)


def test_iterative_stratification_holds_out_each_class_in_proportion():
    rng = np.random.default_rng(0)
    hot = np.zeros((40, 4), dtype=np.float32)
    hot[:, 0] = rng.random(40) < 0.5
    hot[:, 1] = rng.random(40) < 0.25
    hot[[3, 17], 2] = 1  # a rare class: 2 images
    hot[5:10] = 0  # five images without a class
    wanted = [min(max(1, round(n * 0.2)), n - 1) if n >= 2 else 0 for n in hot.sum(axis=0).astype(int)]
    assert wanted[2] == 1 and wanted[3] == 0
    for seed in range(10):
        train, held = multi_label_split_indices(hot, 0.2, seed)
        assert len(held) == 8 and sorted(train + held) == list(range(40))
        counts = hot[held].sum(axis=0)
        assert counts[2] == 1  # a seeded permutation leaves the rare class out of 8 of 40 in 63% of seeds
        assert all(abs(c - w) <= 1 for c, w in zip(counts, wanted, strict=True))
    assert multi_label_split_indices(hot, 0.2, 3) == multi_label_split_indices(hot, 0.2, 3)
    assert multi_label_split_indices(hot, 0.2, 3) != multi_label_split_indices(hot, 0.2, 4)
    assert multi_label_split_indices(np.zeros((2, 3)), 0.01, 0) == ([0], [1]) or multi_label_split_indices(
        np.zeros((2, 3)), 0.01, 0
    ) == ([1], [0])
    assert multi_label_split_indices(np.ones((1, 3)), 0.5, 0) == ([0], [])


def test_image_folder_with_a_metadata_file(tmp_path):
    root = tmp_path / "flat"
    names = _images(root / "photos", 5)
    rows = [
        (f"photos/{n}", lab) for n, lab in zip(names, ["sun;sea", "sea", "", "sun", "sky;sun"], strict=True)
    ]
    _csv(root / "metadata.csv", rows, header="file_name,labels")
    data = _load(tmp_path, train_dir=str(root), problem_type="multi_label", train_val_split=0.2)
    assert data.labels == ["sea", "sky", "sun"]
    every = {**_sets(data, "train"), **_sets(data, "validation")}
    assert every == {
        "img_000.png": {"sun", "sea"},
        "img_001.png": {"sea"},
        "img_002.png": set(),
        "img_003.png": {"sun"},
        "img_004.png": {"sky", "sun"},
    }


def test_image_folder_with_split_subfolders_each_holding_metadata_jsonl(tmp_path):
    root = tmp_path / "data"
    for split, rows in {
        "train": [["red", "round"], ["red"], ["round"], []],
        "val": [["red"], ["round", "red"]],
        "test": [["round"]],
    }.items():
        names = _images(root / split, len(rows), split)
        _jsonl(
            root / split / "metadata.jsonl",
            [{"file_name": n, "tags": r} for n, r in zip(names, rows, strict=True)],
        )
    data = _load(tmp_path, train_dir=str(root), label_column_name="tags")
    assert data.multi_label and data.labels == ["red", "round"]
    assert {s: len(d) for s, d in data.dataset.items()} == {"train": 4, "validation": 2, "test": 1}
    assert multi_hot_column(data.dataset["train"]).tolist() == [[1, 1], [1, 0], [0, 1], [0, 0]]
    assert _sets(data, "validation") == {"val_000.png": {"red"}, "val_001.png": {"red", "round"}}
    assert _sets(data, "test") == {"test_000.png": {"round"}}


def _hub_splits(
    folder: Path, rows: dict[str, list], feature: datasets.Features
) -> dict[str, datasets.Dataset]:
    out = {}
    for split, labels in rows.items():
        names = _images(folder / "images", len(labels), split)
        paths = [str(folder / "images" / n) for n in names]
        out[split] = datasets.Dataset.from_dict({"image": paths, "label": labels}, features=feature)
    return out


def test_parquet_dataset_with_a_sequence_of_class_labels(tmp_path):
    feature = datasets.Features(
        {
            "image": datasets.Value("string"),
            "label": datasets.Sequence(datasets.ClassLabel(names=["z", "a", "m"])),
        }
    )
    folder = tmp_path / "hub"
    splits = _hub_splits(folder, {"train": [[0, 1], [2], [], [1]], "validation": [[1, 2], [0]]}, feature)
    (folder / "data").mkdir()
    for split, dataset in splits.items():
        dataset.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    data = _load(tmp_path, dataset_name=str(folder))
    assert data.multi_label
    assert data.labels == ["z", "a", "m"]  # a ClassLabel's names keep their order
    assert multi_hot_column(data.dataset["train"]).tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert multi_hot_column(data.dataset["validation"]).tolist() == [[0, 1, 1], [1, 0, 0]]
    with pytest.raises(DataError, match=r"split train row 1: label \[0, 1\] names a set of classes"):
        _load(tmp_path, dataset_name=str(folder), problem_type="single_label")


def test_saved_dataset_with_string_lists_and_separator_text(tmp_path):
    lists = datasets.Features(
        {"image": datasets.Value("string"), "label": datasets.Sequence(datasets.Value("string"))}
    )
    saved = _hub_splits(tmp_path / "lists", {"train": [["b", "a"], ["b"], ["c"], []]}, lists)["train"]
    saved.save_to_disk(str(tmp_path / "saved"))
    data = _load(tmp_path, dataset_name=str(tmp_path / "saved"), train_val_split=0.25)
    assert data.labels == ["a", "b", "c"]
    assert sorted(map(sorted, {**_sets(data, "train"), **_sets(data, "validation")}.values())) == [
        [],
        ["a", "b"],
        ["b"],
        ["c"],
    ]
    text = datasets.Features({"image": datasets.Value("string"), "label": datasets.Value("string")})
    split = _hub_splits(
        tmp_path / "text", {"train": ["x;y", "y", "x", "y"], "validation": ["x", "y;zebra"]}, text
    )
    datasets.DatasetDict(split).save_to_disk(str(tmp_path / "saved_text"))
    with pytest.raises(
        DataError, match=r"split validation row 2: class 'zebra' is not among the train classes"
    ):
        _load(tmp_path, dataset_name=str(tmp_path / "saved_text"))


def test_single_label_test_file_is_read(tmp_path):
    names = _images(tmp_path, 6)
    train = _csv(tmp_path / "train.csv", list(zip(names, ["a", "b"] * 3, strict=True)))
    test = _csv(tmp_path / "test.csv", [(names[0], "a"), (names[1], "a"), (names[2], "b")])
    data = _load(tmp_path, train_file=str(train), test_file=str(test), train_val_split=0.34)
    assert not data.multi_label
    assert len(data.dataset["test"]) == 3
    assert label_counts(data.dataset["test"]) == {"a": 2, "b": 1}
    assert f"test file {test}" in data.source
    bad = _csv(tmp_path / "bad.csv", [(names[0], "c")])
    with pytest.raises(DataError, match="test labels differ from train: only in test: \\['c'\\]"):
        _load(tmp_path, train_file=str(train), test_file=str(bad))


def test_label_set_directly():
    assert label_set(" b ; a ;b", ";", "w") == ("a", "b")
    assert label_set([2, 10, 2], ";", "w") == ("2", "10")
    assert label_set(None, ";", "w") == () and label_set("  ", ";", "w") == ()
    assert label_set("a;b", "", "w") == ("a;b",)


def test_single_label_metadata_folders_and_forced_multi_label_class_labels(tmp_path):
    root = tmp_path / "flat"
    names = _images(root, 4)
    _csv(
        root / "metadata.csv",
        list(zip(names, ["red", "blue", "red", "blue"], strict=True)),
        "file_name,label",
    )
    val = tmp_path / "val"
    val_names = _images(val, 2, "val")
    _jsonl(
        val / "metadata.jsonl",
        [{"file_name": n, "label": c} for n, c in zip(val_names, ["blue", "red"], strict=True)],
    )
    data = _load(tmp_path, train_dir=str(root), validation_dir=str(val))
    assert not data.multi_label and data.labels == ["blue", "red"]
    assert label_counts(data.dataset["train"]) == {"blue": 2, "red": 2}
    assert label_counts(data.dataset["validation"]) == {"blue": 1, "red": 1}

    feature = datasets.Features(
        {"image": datasets.Value("string"), "label": datasets.ClassLabel(names=["p", "q"])}
    )
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        _hub_splits(tmp_path / "hub", {"train": [1, 0, 1], "validation": [0]}, feature)
    ).save_to_disk(str(saved))
    forced = _load(tmp_path, dataset_name=str(saved), problem_type="multi_label")
    assert forced.multi_label and forced.labels == ["p", "q"]
    assert multi_hot_column(forced.dataset["train"]).tolist() == [[0, 1], [1, 0], [0, 1]]
    assert multi_hot_column(forced.dataset["validation"]).tolist() == [[1, 0]]
