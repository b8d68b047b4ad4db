"""bench/mosaics.py, the seeded builder of the multi-label mosaics: each label set is the set of classes its
four tiles show (found from the pixels), the splits use disjoint source photos, a seed gives identical bytes."""

from __future__ import annotations

import csv
import hashlib
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from conftest import ROOT, SHARED_DATA, requires_shared
from PIL import Image

sys.path.insert(0, str(ROOT / "bench"))

import mosaics  # noqa: E402  (bench/ is not a package)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.fixture
def photo_folder(tmp_path):
    """4 classes x 25 distinct random 32x32 JPEGs, CIFAR-10's layout."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for name in ("bird", "cat", "dog", "ship"):
        (root / name).mkdir(parents=True)
        for i in range(25):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:04d}.jpg", quality=90)
    return root


def _source_index(root):
    """{digest of the decoded photo: (class, file)}."""
    index = {}
    for path in sorted(root.glob("*/*.jpg")):
        with Image.open(path) as image:
            index[_digest(np.asarray(image.convert("RGB")))] = (path.parent.name, path.name)
    return index


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_label_sets_are_the_classes_the_tiles_show_and_splits_are_disjoint(tmp_path, photo_folder):
    out = tmp_path / "mosaics"
    sizes = {"train": 12, "validation": 4, "test": 8}
    mosaics.build_mosaics(out, sizes, seed=3, source=photo_folder)
    index = _source_index(photo_folder)
    assert len(index) == 100
    used = {}
    for split, size in sizes.items():
        rows = _read_csv(out / f"{split}.csv")
        assert [r["image"] for r in rows] == [f"{split}/{i:05d}.png" for i in range(size)]
        used[split] = set()
        for row in rows:
            with Image.open(out / row["image"]) as image:
                assert image.size == (64, 64) and image.format == "PNG"
                pixels = np.asarray(image.convert("RGB"))
            tiles = [pixels[y : y + 32, x : x + 32] for y in (0, 32) for x in (0, 32)]
            found = [index[_digest(t)] for t in tiles]  # every tile is one source photo, pixel for pixel
            labels = row["label"].split(";")
            assert labels == sorted(set(labels)) and 1 <= len(labels) <= 4
            assert set(labels) == {name for name, _ in found}
            used[split].update(found)
    assert used["train"].isdisjoint(used["validation"])
    assert used["train"].isdisjoint(used["test"])
    assert used["validation"].isdisjoint(used["test"])
    # the photo pools are cut in proportion to the sizes: 25 photos of a class -> 12.5 / 4.2 / 8.3
    pools = mosaics.source_pools(photo_folder, sizes, random.Random(0))
    assert [len(pools[s]["cat"]) for s in sizes] == [12, 4, 9]


def test_the_same_seed_gives_identical_bytes_another_seed_other_mosaics(tmp_path, photo_folder):
    sizes = {"train": 6, "validation": 3, "test": 3}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        mosaics.build_mosaics(tmp_path / name, sizes, seed=seed, source=photo_folder)

    def files(folder):
        return {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
        }

    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(a) == 6 + 3 + 3 + 3 + 1  # 12 PNGs, 3 CSVs, mosaics.json
    assert a == b
    assert a["train.csv"] != c["train.csv"]
    assert sum(a[k] != c[k] for k in a if k.endswith(".png")) >= 10


def test_the_number_of_classes_is_uniform_over_1_to_4_and_each_shown_class_is_a_tile():
    rng = random.Random(0)
    classes = [f"c{i}" for i in range(10)]
    draws = [mosaics.draw_tile_classes(classes, rng) for _ in range(4000)]
    assert all(len(d) == 4 for d in draws)
    counts = Counter(len(set(d)) for d in draws)
    assert set(counts) == {1, 2, 3, 4}
    assert all(900 <= n <= 1100 for n in counts.values()), counts  # 1000 expected each, sd about 27
    per_class = Counter(c for d in draws for c in set(d))
    assert all(900 <= n <= 1100 for n in per_class.values()), per_class  # 10000 class-slots / 10


def test_cli_refuses_a_missing_source_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "mosaics.py"), str(out), "--source", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "source photos not found" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


@requires_shared
def test_default_sizes_on_cifar10_use_each_real_photo_at_most_once(tmp_path):
    out = tmp_path / "mosaics"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "mosaics.py"), str(out), "--seed", "0"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    import json

    manifest = json.loads((out / "mosaics.json").read_text())
    assert manifest["sizes"] == {"train": 600, "validation": 200, "test": 400}
    photos = [p for split in mosaics.SPLITS for row in manifest[split] for p in row["tiles"]]
    assert len(photos) == 4 * 1200 == len(set(photos))
    assert all((SHARED_DATA / "cifar10-test" / p).is_file() for p in photos)
    labels = [row["label"] for row in _read_csv(out / "train.csv")]
    assert Counter(len(x.split(";")) for x in labels).keys() == {1, 2, 3, 4}
