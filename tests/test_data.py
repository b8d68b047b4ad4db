"""hf_finetune.data.loading: every source becomes train/validation(/test) with exactly ``image`` and ``label``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pytest
from conftest import SHARED_DATA, make_image_folder, requires_shared

from hf_finetune.config.arguments import DataArguments
from hf_finetune.data.image_check import open_image
from hf_finetune.data.loading import LoadedData, load_image_dataset
from hf_finetune.data.splits import label_counts, stratified_split_indices
from hf_finetune.errors import DataError


def _load(tmp_path: Path, seed: int = 42, **kwargs) -> LoadedData:
    return load_image_dataset(DataArguments(**kwargs), seed=seed, cache_dir=str(tmp_path / "hf_cache"))


def _assert_contract(data: LoadedData) -> None:
    assert "train" in data.dataset and "validation" in data.dataset
    features = data.dataset["train"].features
    for split in data.dataset.values():
        assert split.column_names == ["image", "label"]
        assert isinstance(split.features["image"], datasets.Image)
        assert split.features["image"].decode is False  # rows hold {"path", "bytes"}; the transform decodes
        assert isinstance(split.features["label"], datasets.ClassLabel)
        assert split.features["label"].names == data.labels
        assert split.features == features
        assert len(split) > 0


def _paths(dataset: datasets.Dataset) -> list[str]:
    return [row["path"] for row in dataset.cast_column("image", datasets.Image(decode=False))["image"]]


def _path_classes(dataset: datasets.Dataset) -> set[tuple[str, str]]:
    names = dataset.features["label"].names
    plain = dataset.cast_column("image", datasets.Image(decode=False))
    return {(row["image"]["path"], names[row["label"]]) for row in plain}


# --- image folders ---------------------------------------------------------------------------------------


def test_folder_with_train_and_val(tiny_image_folder, tmp_path):
    data = _load(tmp_path, train_dir=str(tiny_image_folder))
    _assert_contract(data)
    assert data.labels == ["cat", "dog", "zebra"]
    assert list(data.dataset) == ["train", "validation"]
    assert label_counts(data.dataset["train"]) == {"cat": 12, "dog": 12, "zebra": 12}
    assert label_counts(data.dataset["validation"]) == {"cat": 4, "dog": 4, "zebra": 4}
    assert "train/" in data.source and "val/" in data.source and str(tiny_image_folder) in data.source
    # labels follow the folder each image came from; nothing is decoded up front
    for path, name in _path_classes(data.dataset["validation"]):
        assert Path(path).parent.name == name and Path(path).parent.parent.name == "val"
    summary = data.summary()
    assert "train: 36 images" in summary and "validation: 12 images" in summary and "zebra 4" in summary
    image = data.dataset["train"][0]["image"]  # a path, decoded by the batch transform
    assert image["bytes"] is None and image["path"].endswith(".png")
    assert open_image(image).size == (40, 32)


def test_folder_with_validation_and_test_subfolders(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", {"a": 5, "b": 5})
    make_image_folder(root / "validation", {"a": 2, "b": 2}, seed=1)
    make_image_folder(root / "test", {"a": 3, "b": 1}, seed=2)
    data = _load(tmp_path, train_dir=str(root))
    _assert_contract(data)
    assert list(data.dataset) == ["train", "validation", "test"]
    assert [len(data.dataset[s]) for s in data.dataset] == [10, 4, 4]
    assert label_counts(data.dataset["test"]) == {"a": 3, "b": 1}
    assert "validation/" in data.source and "test/" in data.source


def test_test_split_may_lack_a_class_but_not_add_one(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", {"a": 3, "b": 3})
    make_image_folder(root / "val", {"a": 1, "b": 1})
    make_image_folder(root / "test", {"a": 2})
    assert label_counts(_load(tmp_path, train_dir=str(root)).dataset["test"]) == {"a": 2, "b": 0}
    make_image_folder(root / "test", {"c": 1})
    with pytest.raises(DataError, match=r"only in test: \['c'\]"):
        _load(tmp_path, train_dir=str(root))


def test_flat_folder_gets_a_stratified_reproducible_split(tmp_path):
    root = make_image_folder(tmp_path / "flat", {"a": 20, "b": 10, "c": 7})
    data = _load(tmp_path, train_dir=str(root), train_val_split=0.2)
    _assert_contract(data)
    assert data.labels == ["a", "b", "c"]
    assert label_counts(data.dataset["validation"]) == {"a": 4, "b": 2, "c": 1}  # round(n * 0.2) per class
    assert label_counts(data.dataset["train"]) == {"a": 16, "b": 8, "c": 6}
    assert "held out" in data.source
    train, val = _path_classes(data.dataset["train"]), _path_classes(data.dataset["validation"])
    assert not train & val and len(train | val) == 37
    assert all(Path(path).parent.name == name for path, name in train | val)

    same = _load(tmp_path, train_dir=str(root), train_val_split=0.2)
    assert _paths(same.dataset["validation"]) == _paths(data.dataset["validation"])
    assert _paths(same.dataset["train"]) == _paths(data.dataset["train"])
    other = _load(tmp_path, seed=7, train_dir=str(root), train_val_split=0.2)
    assert set(_paths(other.dataset["validation"])) != set(_paths(data.dataset["validation"]))
    assert label_counts(other.dataset["validation"]) == {"a": 4, "b": 2, "c": 1}


def test_small_classes_keep_an_image_on_each_side_and_singletons_stay_in_train(tmp_path, caplog):
    root = make_image_folder(tmp_path / "flat", {"big": 10, "pair": 2, "solo": 1})
    with caplog.at_level(logging.WARNING, logger="hf_finetune.data.loading"):
        data = _load(tmp_path, train_dir=str(root), train_val_split=0.15)
    assert label_counts(data.dataset["train"]) == {"big": 8, "pair": 1, "solo": 1}
    assert label_counts(data.dataset["validation"]) == {"big": 2, "pair": 1, "solo": 0}
    assert "solo" in caplog.text and "single image" in caplog.text


def test_only_single_image_classes_leave_no_validation(tmp_path):
    root = make_image_folder(tmp_path / "flat", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="no validation images"):
        _load(tmp_path, train_dir=str(root))


def test_summary_of_many_classes_stays_short(tmp_path):
    root = make_image_folder(tmp_path / "many", {f"c{i:02d}": 2 + i for i in range(12)}, size=(8, 8))
    summary = _load(tmp_path, train_dir=str(root)).summary()
    assert summary.startswith("12 classes from image folder") and len(summary.splitlines()) == 3
    assert "train: 74 images (per class 1 (c00) to 11 (c11))" in summary


def test_stratified_split_indices_directly():
    labels = [0] * 50 + [1] * 30 + [2] * 5
    train, val = stratified_split_indices(labels, 0.2, seed=3)
    assert sorted(train + val) == list(range(85)) and not set(train) & set(val)
    held = [labels[i] for i in val]
    assert (held.count(0), held.count(1), held.count(2)) == (10, 6, 1)
    assert stratified_split_indices(labels, 0.2, seed=3) == (train, val)
    assert stratified_split_indices(labels, 0.2, seed=4) != (train, val)


def test_validation_dir_overrides_val_subfolder(tiny_image_folder, tmp_path):
    other = make_image_folder(tmp_path / "other", {"cat": 2, "dog": 3, "zebra": 1}, seed=5)
    data = _load(tmp_path, train_dir=str(tiny_image_folder), validation_dir=str(other))
    _assert_contract(data)
    assert label_counts(data.dataset["validation"]) == {"cat": 2, "dog": 3, "zebra": 1}
    assert all(str(other) in path for path in _paths(data.dataset["validation"]))
    assert "val/" not in data.source and str(other) in data.source


def test_validation_dir_with_flat_train_dir(tmp_path):
    train = make_image_folder(tmp_path / "train_flat", {"x": 6, "y": 6})
    val = make_image_folder(tmp_path / "val_flat", {"x": 2, "y": 2}, seed=3)
    data = _load(tmp_path, train_dir=str(train), validation_dir=str(val))
    assert len(data.dataset["train"]) == 12 and len(data.dataset["validation"]) == 4  # nothing held out


def test_folder_scan_is_recursive_sorted_and_skips_hidden_and_non_images(tmp_path):
    root = make_image_folder(tmp_path / "flat", {"a": 3, "b": 3}, ext="jpg")
    (root / "a" / "nested").mkdir()
    make_image_folder(root / "a" / "nested", {"deeper": 1})
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / ".hidden.jpg").write_bytes(b"")
    (root / "b" / ".cache").mkdir()
    (root / "b" / ".cache" / "x.png").write_bytes(b"")
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "y.png").write_bytes(b"")
    (root / "README.md").write_text("hello")
    data = _load(tmp_path, train_dir=str(root), validation_dir=str(root))
    assert data.labels == ["a", "b"]
    paths = _paths(data.dataset["train"])
    assert paths == sorted(paths) and len(paths) == 7
    assert any("nested/deeper" in p for p in paths)
    assert not any("/." in p or p.endswith(".txt") for p in paths)


# --- folder errors ---------------------------------------------------------------------------------------


def test_missing_train_dir(tmp_path):
    with pytest.raises(DataError, match="train_dir: .*nowhere does not exist; expected a folder of CLASS"):
        _load(tmp_path, train_dir=str(tmp_path / "nowhere"))


def test_missing_validation_dir(tiny_image_folder, tmp_path):
    with pytest.raises(DataError, match="validation_dir: .*gone does not exist"):
        _load(tmp_path, train_dir=str(tiny_image_folder), validation_dir=str(tmp_path / "gone"))


def test_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty contains no images"):
        _load(tmp_path, train_dir=str(tmp_path / "empty"))


def test_images_without_class_folders(tmp_path):
    root = make_image_folder(tmp_path / "loose", {"x": 2})
    with pytest.raises(DataError, match="holds 2 images but no class folders"):
        _load(tmp_path, train_dir=str(root / "x"))


def test_class_folder_without_images_is_named(tmp_path):
    root = make_image_folder(tmp_path / "flat", {"a": 3, "b": 3})
    (root / "empty_class").mkdir()
    (root / "empty_class" / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match="class folder .*empty_class has no images"):
        _load(tmp_path, train_dir=str(root))


def test_validation_labels_differ_from_train(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", {"cat": 3, "horse": 3})
    make_image_folder(root / "val", {"cat": 1, "zebra": 1})
    with pytest.raises(DataError) as err:
        _load(tmp_path, train_dir=str(root))
    message = str(err.value)
    assert "validation labels differ from train" in message
    assert "only in validation: ['zebra']" in message and "only in train: ['horse']" in message


def test_class_names_colliding_after_case_folding(tmp_path):
    root = make_image_folder(tmp_path / "flat", {"Cat": 2, "cat": 2, "dog": 2})
    with pytest.raises(DataError, match="'Cat' and 'cat' differ only in case"):
        _load(tmp_path, train_dir=str(root))


# --- CSV and JSONL files ---------------------------------------------------------------------------------


@pytest.fixture
def table_images(tmp_path) -> Path:
    """``tmp_path/files/images/{red,green}/*.png``, 6 each, for CSV/JSONL tests."""
    return make_image_folder(tmp_path / "files" / "images", {"red": 6, "green": 6})


def _rows(images: Path, relative_to: Path) -> list[tuple[str, str]]:
    return [(str(p.relative_to(relative_to)), p.parent.name) for p in sorted(images.rglob("*.png"))]


def test_csv_with_relative_paths_and_held_out_validation(table_images, tmp_path):
    folder = table_images.parent
    lines = ["filepath,label"] + [f"{path},{name}" for path, name in _rows(table_images, folder)]
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    data = _load(tmp_path, train_file=str(folder / "train.csv"), train_val_split=0.34)
    _assert_contract(data)
    assert data.labels == ["green", "red"]
    assert label_counts(data.dataset["validation"]) == {"green": 2, "red": 2}
    assert "CSV file" in data.source
    for path, name in _path_classes(data.dataset["train"]) | _path_classes(data.dataset["validation"]):
        assert Path(path).is_absolute() and Path(path).is_file() and Path(path).parent.name == name


def test_jsonl_train_and_validation_files(table_images, tmp_path):
    folder = table_images.parent
    rows = _rows(table_images, folder)
    train = [{"image": path, "category": name, "extra": 1} for path, name in rows[1:6] + rows[7:]]
    val = [{"image": str((folder / path).resolve()), "category": name} for path, name in (rows[0], rows[6])]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in train))
    (folder / "val.json").write_text("\n".join(json.dumps(r) for r in val))
    data = _load(tmp_path, train_file=str(folder / "train.jsonl"), validation_file=str(folder / "val.json"))
    _assert_contract(data)
    assert label_counts(data.dataset["train"]) == {"green": 5, "red": 5}
    assert label_counts(data.dataset["validation"]) == {"green": 1, "red": 1}


def test_csv_labels_are_kept_as_written_and_sorted_numerically(tmp_path):
    images = make_image_folder(tmp_path / "n", {"x": 6})
    paths = sorted(images.rglob("*.png"))
    labels = ["2", "10", "007", "2", "10", "007"]
    (tmp_path / "n.csv").write_text(
        "path,target\n" + "".join(f"{p},{lab}\n" for p, lab in zip(paths, labels, strict=True))
    )
    data = _load(tmp_path, train_file=str(tmp_path / "n.csv"), validation_file=str(tmp_path / "n.csv"))
    assert data.labels == ["2", "007", "10"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (",red", r"row 3: empty image path"),
        ("{first},", r"row 3: empty label"),
        ("images/red/missing.png,red", r"row 3: image 'images/red/missing.png' does not exist"),
    ],
)
def test_csv_row_errors_name_file_and_row(table_images, tmp_path, row, message):
    folder = table_images.parent
    rows = _rows(table_images, folder)
    lines = ["image,label", f"{rows[0][0]},green", f"{rows[6][0]},red", row.format(first=rows[1][0])]
    (folder / "bad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"train_file: .*bad\.csv {message}"):
        _load(tmp_path, train_file=str(folder / "bad.csv"))


def test_table_file_errors(table_images, tmp_path):
    folder = table_images.parent
    with pytest.raises(DataError, match="train_file: .*absent.csv does not exist"):
        _load(tmp_path, train_file=str(folder / "absent.csv"))
    (folder / "rows.txt").write_text("a,b\n")
    with pytest.raises(
        DataError, match=r"rows.txt has extension '\.txt'; expected a \.csv, \.json, \.jsonl, \.parquet"
    ):
        _load(tmp_path, train_file=str(folder / "rows.txt"))
    (folder / "cols.csv").write_text("photo_file,kind\nx.png,red\n")
    with pytest.raises(DataError, match=r"no image column found among \['photo_file', 'kind'\]"):
        _load(tmp_path, train_file=str(folder / "cols.csv"))
    (folder / "ok.csv").write_text(
        "image,label\n" + "".join(f"{p},{n}\n" for p, n in _rows(table_images, folder))
    )
    with pytest.raises(DataError, match=r"label_column_name: column 'labl' not found .*\['image', 'label'\]"):
        _load(tmp_path, train_file=str(folder / "ok.csv"), label_column_name="labl")


def test_validation_file_with_unknown_label(table_images, tmp_path):
    folder = table_images.parent
    rows = _rows(table_images, folder)
    (folder / "t.csv").write_text("image,label\n" + "".join(f"{p},{n}\n" for p, n in rows))
    (folder / "v.csv").write_text(f"image,label\n{rows[0][0]},blue\n{rows[6][0]},red\n")
    with pytest.raises(DataError, match=r"only in validation: \['blue'\]; only in train: \['green'\]"):
        _load(tmp_path, train_file=str(folder / "t.csv"), validation_file=str(folder / "v.csv"))


# --- datasets loaded by name (a local folder of parquet files stands in for the Hub) ---------------------


def _write_parquet(folder: Path, splits: dict[str, datasets.Dataset]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, dataset in splits.items():
        dataset.to_parquet(str(folder / f"{name}.parquet"))
    return folder


@pytest.fixture
def parquet_images(tmp_path) -> dict[str, list[str]]:
    root = make_image_folder(tmp_path / "pq_images", {"bird": 6, "fish": 6, "frog": 6})
    return {name: sorted(str(p) for p in (root / name).glob("*.png")) for name in ("bird", "fish", "frog")}


def test_dataset_with_string_labels_and_path_column(parquet_images, tmp_path):
    train = {"photo": [], "species": [], "id": []}
    for name, paths in parquet_images.items():
        train["photo"] += paths[:5]
        train["species"] += [name] * 5
        train["id"] += list(range(5))
    valid = {
        "photo": [p[5] for p in parquet_images.values()],
        "species": list(parquet_images),
        "id": [0, 1, 2],
    }
    folder = _write_parquet(
        tmp_path / "pq",
        {"train": datasets.Dataset.from_dict(train), "valid": datasets.Dataset.from_dict(valid)},
    )
    data = _load(tmp_path, dataset_name=str(folder), label_column_name="species")
    _assert_contract(data)
    assert data.labels == ["bird", "fish", "frog"]
    assert label_counts(data.dataset["validation"]) == {"bird": 1, "fish": 1, "frog": 1}
    assert _path_classes(data.dataset["validation"]) == {
        (paths[5], name) for name, paths in parquet_images.items()
    }
    assert "dataset folder" in data.source
    with pytest.raises(
        DataError, match=r"label_column_name: column 'specie' not found.*did you mean 'species'"
    ):
        _load(tmp_path, dataset_name=str(folder), label_column_name="specie")
    with pytest.raises(DataError, match=r"no label column found among \['photo', 'species', 'id'\]"):
        _load(tmp_path, dataset_name=str(folder))


def test_dataset_with_image_and_classlabel_features(parquet_images, tmp_path):
    names = ["frog", "bird", "fish"]  # deliberately unsorted: a ClassLabel keeps its order
    features = datasets.Features({"fine_label": datasets.ClassLabel(names=names), "img": datasets.Image()})

    def split(index: slice) -> datasets.Dataset:
        rows = {"fine_label": [], "img": []}
        for name, paths in parquet_images.items():
            rows["img"] += paths[index]
            rows["fine_label"] += [names.index(name)] * len(paths[index])
        return datasets.Dataset.from_dict(rows, features=features)

    folder = _write_parquet(tmp_path / "pq_cl", {"train": split(slice(0, 4)), "test": split(slice(4, 6))})
    data = _load(tmp_path, dataset_name=str(folder))  # test is used as validation
    _assert_contract(data)
    assert data.labels == names
    assert list(data.dataset) == ["train", "validation"]
    assert label_counts(data.dataset["train"]) == {"frog": 4, "bird": 4, "fish": 4}
    assert label_counts(data.dataset["validation"]) == {"frog": 2, "bird": 2, "fish": 2}
    assert open_image(data.dataset["validation"][0]["image"]).size == (40, 32)

    explicit = _load(tmp_path, dataset_name=str(folder), validation_split="test")
    assert label_counts(explicit.dataset["validation"]) == label_counts(data.dataset["validation"])
    with pytest.raises(
        DataError, match=r"validation_split: .* has no split 'dev'; splits: \['train', 'test'\]"
    ):
        _load(tmp_path, dataset_name=str(folder), validation_split="dev")
    with pytest.raises(
        DataError, match=r"image_column_name: column 'picture' not found .*\['fine_label', 'img'\]"
    ):
        _load(tmp_path, dataset_name=str(folder), image_column_name="picture")


def test_dataset_with_only_train_gets_held_out_split_and_sampling(parquet_images, tmp_path):
    rows = {"image_path": [], "label": []}
    for name, paths in parquet_images.items():
        rows["image_path"] += paths
        rows["label"] += [name] * 6
    folder = _write_parquet(tmp_path / "pq_train", {"train": datasets.Dataset.from_dict(rows)})
    data = _load(
        tmp_path, dataset_name=str(folder), train_val_split=0.5, max_train_samples=4, max_eval_samples=5
    )
    _assert_contract(data)
    assert len(data.dataset["train"]) == 4 and len(data.dataset["validation"]) == 5
    again = _load(
        tmp_path, dataset_name=str(folder), train_val_split=0.5, max_train_samples=4, max_eval_samples=5
    )
    assert _paths(again.dataset["train"]) == _paths(data.dataset["train"])


def test_dataset_classlabels_with_other_order_and_integer_labels_are_matched_by_name(
    parquet_images, tmp_path, monkeypatch
):
    def dataset(names: list[str], index: slice) -> datasets.Dataset:
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
        rows = {"image": [], "label": []}
        for name, paths in parquet_images.items():
            rows["image"] += paths[index]
            rows["label"] += [names.index(name)] * len(paths[index])
        return datasets.Dataset.from_dict(rows, features=features)

    # Served from memory: datasets' parquet loader casts every split to the first file's features
    # (ids kept, names replaced), so per-split ClassLabel orders cannot survive a parquet folder.
    served = datasets.DatasetDict(
        {
            "train": dataset(["bird", "fish", "frog"], slice(0, 4)),
            "val": dataset(["frog", "fish", "bird"], slice(4, 5)),
        }
    )
    with monkeypatch.context() as patch:
        patch.setattr(datasets, "load_dataset", lambda *args, **kwargs: served)
        data = _load(tmp_path, dataset_name="someone/animals")
    assert data.labels == ["bird", "fish", "frog"] and data.source == "hub dataset someone/animals"
    assert _path_classes(data.dataset["validation"]) == {
        (paths[4], name) for name, paths in parquet_images.items()
    }

    numbers = {"bird": 10, "fish": 2, "frog": 7}
    rows = {"image": [], "target": []}
    for name, paths in parquet_images.items():
        rows["image"] += paths
        rows["target"] += [numbers[name]] * len(paths)
    folder = _write_parquet(tmp_path / "pq_int", {"train": datasets.Dataset.from_dict(rows)})
    data = _load(tmp_path, dataset_name=str(folder))
    assert data.labels == ["2", "7", "10"]
    assert label_counts(data.dataset["train"]) == {"2": 5, "7": 5, "10": 5}


def test_dataset_validation_split_with_unknown_label(parquet_images, tmp_path):
    train = datasets.Dataset.from_dict({"image": parquet_images["bird"][:3], "label": ["bird"] * 3})
    val = datasets.Dataset.from_dict({"image": parquet_images["fish"][:1], "label": ["fish"]})
    folder = _write_parquet(tmp_path / "pq_bad", {"train": train, "validation": val})
    with pytest.raises(DataError, match=r"only in validation: \['fish'\]; only in train: \['bird'\]"):
        _load(tmp_path, dataset_name=str(folder))


def test_dataset_not_found(tmp_path):
    with pytest.raises(DataError, match="dataset_name: could not load"):
        _load(tmp_path, dataset_name=str(tmp_path / "no_such_dataset"))


# --- sampling --------------------------------------------------------------------------------------------


def test_max_train_and_eval_samples(tiny_image_folder, tmp_path):
    data = _load(tmp_path, train_dir=str(tiny_image_folder), max_train_samples=7, max_eval_samples=5)
    _assert_contract(data)
    assert len(data.dataset["train"]) == 7 and len(data.dataset["validation"]) == 5
    same = _load(tmp_path, train_dir=str(tiny_image_folder), max_train_samples=7, max_eval_samples=5)
    assert _paths(same.dataset["train"]) == _paths(data.dataset["train"])
    other = _load(tmp_path, seed=1, train_dir=str(tiny_image_folder), max_train_samples=7)
    assert _paths(other.dataset["train"]) != _paths(data.dataset["train"])
    everything = _load(tmp_path, train_dir=str(tiny_image_folder), max_train_samples=1000)
    assert len(everything.dataset["train"]) == 36


# --- the real photos -------------------------------------------------------------------------------------


@requires_shared
def test_shared_hotdog(tmp_path):
    data = _load(tmp_path, train_dir=str(SHARED_DATA / "hotdog"))
    _assert_contract(data)
    assert data.labels == ["hotdog", "not_hotdog"]
    assert len(data.dataset["train"]) == 200 and len(data.dataset["validation"]) == 50
    assert open_image(data.dataset["train"][0]["image"]).mode == "RGB"
