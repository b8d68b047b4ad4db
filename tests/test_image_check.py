"""Bad image files and label edge cases: the up-front header check, the decode-time skip, the report
``OUTPUT/bad_images.json``, ``strict``, and class names (Unicode, collisions, classes left empty).

Every bad input is built here, in ``tmp_path``."""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import re
import struct
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import make_image_folder, run_hf_finetune
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hf_finetune.config.arguments import DataArguments, FinetuneTrainingArguments, ModelArguments
from hf_finetune.data import image_check
from hf_finetune.data.image_check import (
    MAX_ASPECT_RATIO,
    REPORT_NAME,
    BadImageError,
    check_image_file,
    check_image_files,
    open_image,
    write_bad_image_report,
)
from hf_finetune.data.loading import load_image_dataset
from hf_finetune.data.transforms import collate_images, make_batch_transform
from hf_finetune.errors import DataError

# --- building good and bad files ------------------------------------------------------------------------


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    _noise(width, height, seed).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_truncated_jpeg(path: Path, seed: int = 0) -> Path:
    """A real JPEG cut in the middle of its pixel data: the header is whole, decoding fails."""
    data = _jpeg_bytes(seed=seed)
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` RGB pixels, followed by one tiny IDAT chunk:
    the dimensions a decompression bomb declares, without the bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def write_good_variants(folder: Path) -> dict[str, Path]:
    """Files that are unusual but good: CMYK, 16-bit PNG, palette with transparency, animated GIF, EXIF
    rotated, 1 x 1, an aspect ratio of exactly 50:1."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    cmyk = Image.new("CMYK", (12, 6), (0, 0, 0, 0))
    cmyk.paste((0, 255, 255, 0), (6, 0, 12, 6))  # magenta + yellow ink: red
    cmyk.save(files.setdefault("cmyk", folder / "cmyk.jpg"), quality=95)
    deep = np.zeros((4, 6), dtype=np.uint16)
    deep[:, 3:] = 65535
    Image.fromarray(deep).save(files.setdefault("16bit", folder / "deep.png"))
    palette = Image.new("P", (8, 4), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    palette.paste(1, (4, 0, 8, 4))
    palette.save(files.setdefault("palette", folder / "palette.png"), transparency=0)
    frames = [Image.new("RGB", (10, 8), colour) for colour in ((0, 255, 0), (0, 0, 255))]
    frames[0].save(
        files.setdefault("gif", folder / "anim.gif"), save_all=True, append_images=frames[1:], duration=50
    )
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    stored.save(files.setdefault("exif", folder / "rotated.jpg"), exif=exif, quality=95)
    Image.new("RGB", (1, 1), (10, 20, 30)).save(files.setdefault("1x1", folder / "one.png"))
    Image.new("RGB", (50, 1), (200, 0, 0)).save(files.setdefault("50:1", folder / "wide_ok.png"))
    return files


def write_bad_variants(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files the header check refuses: ``{name: (path, start of the reason)}``."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = {}
    (folder / "empty.jpg").write_bytes(b"")
    bad["zero bytes"] = (folder / "empty.jpg", "zero bytes")
    (folder / "notes.jpg").write_text("this is a text file named .jpg\n")
    bad["text named .jpg"] = (folder / "notes.jpg", "not an image (no image format recognises")
    (folder / "README.md").write_text("# about these images\n")
    bad["README.md"] = (folder / "README.md", "not an image file (extension '.md')")
    write_png_header(folder / "bomb.png", 100_000, 100_000)
    bad["bomb"] = (folder / "bomb.png", "decompression bomb (100000 x 100000 = 10,000,000,000 pixels")
    Image.new("RGB", (1, 60), (0, 0, 0)).save(folder / "strip.png")
    bad["aspect"] = (folder / "strip.png", "extreme aspect ratio (1 x 60 pixels, beyond 50:1)")
    return bad


def _pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(int(v) for v in image.getpixel(xy))


def _close(actual, expected, tolerance: int = 20) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


@pytest.fixture(autouse=True)
def _fresh_decode_record():
    """Each test starts (and leaves) the process-wide decode record empty and not strict."""
    image_check.reset_decode_failures(strict=False)
    yield
    image_check.reset_decode_failures(strict=False)


def _load(tmp_path: Path, **kwargs):
    return load_image_dataset(DataArguments(**kwargs), seed=0, cache_dir=str(tmp_path / "hf_cache"))


# --- the header check of one file -----------------------------------------------------------------------


def test_bad_files_are_refused_from_their_header(tmp_path):
    bad = write_bad_variants(tmp_path)
    for name, (path, reason) in bad.items():
        got = check_image_file(path)
        assert got is not None and got.startswith(reason), (name, got)
    assert check_image_file(tmp_path / "README.md") == "not an image file (extension '.md')"
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    assert check_image_file(tmp_path / ".DS_Store") == "not an image file (extension 'none')"


def test_good_variants_pass_the_check_and_decode_right(tmp_path):
    files = write_good_variants(tmp_path)
    assert {name: check_image_file(path) for name, path in files.items()} == dict.fromkeys(files)
    cmyk = open_image(files["cmyk"])
    assert cmyk.mode == "RGB" and cmyk.size == (12, 6)
    assert _close(_pixel(cmyk, (1, 1)), (255, 255, 255)) and _close(_pixel(cmyk, (10, 3)), (255, 0, 0))
    deep = open_image(files["16bit"])
    assert _pixel(deep, (0, 0)) == (0, 0, 0) and _pixel(deep, (5, 0)) == (255, 255, 255)
    palette = open_image(files["palette"])
    assert _pixel(palette, (1, 1)) == (255, 255, 255) and _pixel(palette, (6, 1)) == (0, 0, 255)
    gif = open_image(files["gif"])
    assert gif.size == (10, 8) and _pixel(gif, (5, 4)) == (0, 255, 0)  # the first frame
    rotated = open_image(files["exif"])
    assert rotated.size == (20, 40)  # EXIF orientation applied
    assert _close(_pixel(rotated, (17, 2)), (255, 0, 0)) and _close(_pixel(rotated, (2, 2)), (0, 0, 255))
    one = open_image(files["1x1"])
    assert one.size == (1, 1) and _pixel(one, (0, 0)) == (10, 20, 30)


def test_tiny_and_long_images_keep_transforms_bounded():
    """1 x 1 trains (upscaled); the longest image allowed (50:1) stays small through the eval transform,
    which resizes the short side first."""
    from hf_finetune.data.transforms import build_transforms

    config = {"input_size": (3, 32, 32), "crop_pct": 0.875, "interpolation": "bilinear"}
    config.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    train_t, eval_t = build_transforms(config)
    one = Image.new("RGB", (1, 1), (255, 0, 0))
    for seed in range(40):  # random-resized-crop's smallest crops of a 1 x 1 image were empty: black
        random.seed(seed)
        torch.manual_seed(seed)
        for transform in (train_t, eval_t):
            out = transform(one)
            assert out.shape == (3, 32, 32)
            assert torch.allclose(out[0], torch.ones(32, 32)) and torch.allclose(out[1], -torch.ones(32, 32))
    two = Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8))  # 2 x 1
    enlarged = train_t.transforms[0](two)  # to at least 3 pixels (crop_scale_min 0.6), by whole pixels
    assert enlarged.size == (4, 2)
    assert _pixel(enlarged, (1, 1)) == (0, 0, 0) and _pixel(enlarged, (2, 0)) == (255, 255, 255)
    eight = Image.new("RGB", (8, 8))
    assert train_t.transforms[0](eight) is eight  # sklearn's 8 x 8 digits are left as they are
    assert image_check.size_problem(1, int(MAX_ASPECT_RATIO)) is None
    assert image_check.size_problem(1, int(MAX_ASPECT_RATIO) + 1).startswith("extreme aspect ratio")
    assert eval_t(Image.new("RGB", (1, 50), (0, 0, 255))).shape == (3, 32, 32)


def test_decompression_bomb_by_pil_limit_is_never_decoded(tmp_path, monkeypatch):
    path = tmp_path / "ordinary.png"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(path)
    assert check_image_file(path) is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert check_image_file(path).startswith("decompression bomb (40 x 30 = 1,200 pixels")
    with pytest.raises(BadImageError, match="ordinary.png: decompression bomb"):
        open_image(str(path))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the limit switched off: no bomb check
    assert check_image_file(path) is None


def test_huge_declared_size_fails_in_open_image_without_allocating(tmp_path):
    path = write_png_header(tmp_path / "bomb.png", 100_000, 100_000)  # 30 GB if decoded
    with pytest.raises(BadImageError) as err:
        open_image({"path": str(path), "bytes": None})
    assert err.value.path == str(path) and err.value.reason.startswith("decompression bomb")
    with pytest.raises(BadImageError, match="decompression bomb"):
        open_image({"path": None, "bytes": path.read_bytes()})  # bytes of a Hub dataset: same check


def test_truncated_jpeg_passes_the_header_check_and_fails_decoding(tmp_path):
    path = write_truncated_jpeg(tmp_path / "cut.jpg")
    assert check_image_file(path) is None  # only decoding can tell
    with pytest.raises(BadImageError) as err:
        open_image(str(path))
    assert err.value.path == str(path)
    assert err.value.reason.startswith("cannot be decoded (OSError: image file is truncated")


def test_fast_header_sizes_agree_with_pil(tmp_path):
    """The direct PNG/JPEG/GIF header reads give PIL's size, also past big EXIF/ICC segments."""
    image = _noise(53, 37)
    variants = {
        "a.jpg": {"quality": 90},
        "p.jpg": {"progressive": True},
        "icc.jpg": {"icc_profile": bytes(200_000)},  # several APP2 segments beyond the first block
        "c.jpg": {"comment": b"x" * 50_000},
        "a.png": {},
        "a.gif": {},
    }
    for name, options in variants.items():
        image.save(tmp_path / name, **options)
        with open(tmp_path / name, "rb") as handle:
            fast = image_check._fast_size(handle.read(image_check._HEAD), handle)
        assert fast == (53, 37), name
    Image.new("CMYK", (7, 9)).save(tmp_path / "k.jpg")
    Image.new("RGB", (7, 9)).save(tmp_path / "t.tif")  # read by PIL
    assert check_image_files([tmp_path / "k.jpg", tmp_path / "t.tif"]) == [None, None]


def test_many_files_are_checked_in_order_by_the_pool(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4)).save(good)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    paths = [str(good if i % 7 else empty) for i in range(1200)]  # above the threshold for threads
    reasons = check_image_files(paths)
    assert [i for i, r in enumerate(reasons) if r is not None] == list(range(0, 1200, 7))
    assert set(reasons) == {None, "zero bytes"}


# --- random bytes never crash the check or the decoder ------------------------------------------------

_PNG_PREFIX = _png_bytes(Image.new("RGB", (8, 8)))[:33]  # signature + IHDR (8 x 8)
_JPEG = _jpeg_bytes(16, 16)
_JPEG_PREFIX = _JPEG[: _JPEG.index(b"\xff\xda")]  # every segment before the pixel data (start of scan)


def _transform(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the corrupt EXIF it meets
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from([b"", _PNG_PREFIX, _JPEG_PREFIX, b"GIF89a", b"BM", b"II*\x00"]),
    body=st.binary(max_size=600),
    ext=st.sampled_from([".jpg", ".png", ".gif", ".bmp", ".tif", ".webp"]),
)
def test_random_bytes_never_crash_the_check_or_the_decoder(tmp_path, prefix, body, ext):
    path = tmp_path / f"random{ext}"
    path.write_bytes(prefix + body)
    reason = check_image_file(path)
    assert reason is None or isinstance(reason, str) and reason
    if not (prefix + body):
        assert reason == "zero bytes"
    try:
        image = open_image(str(path))
    except BadImageError as err:
        assert err.path == str(path) and err.reason
    else:
        assert image.mode == "RGB" and image.size[0] * image.size[1] > 0
    apply = make_batch_transform(_transform)
    out = apply({"image": [{"path": str(path), "bytes": None}], "label": [0]})
    value = out["pixel_values"][0]
    assert value is None or value.shape == (3, 4, 4)
    assert out["labels"] == [0]


# --- the decode-time skip in the batch transform and the collator --------------------------------------


def test_batch_transform_skips_a_file_that_fails_to_decode(tmp_path, caplog):
    good = tmp_path / "good.png"
    Image.new("RGB", (6, 6), (10, 20, 30)).save(good)
    cut = write_truncated_jpeg(tmp_path / "cut.jpg")
    apply = make_batch_transform(_transform)
    with caplog.at_level(logging.WARNING, logger="hf_finetune.data.image_check"):
        out = apply(
            {"image": [{"path": str(good)}, {"path": str(cut)}, {"path": str(good)}], "label": [0, 1, 2]}
        )
    assert out["pixel_values"][1] is None and out["labels"] == [0, 1, 2]
    messages = [r.getMessage() for r in caplog.records if str(cut) in r.getMessage()]
    assert len(messages) == 1 and messages[0].startswith(f"skipped image {cut}: cannot be decoded (OSError")
    rows = zip(out["pixel_values"], out["labels"], strict=True)
    batch = collate_images([{"pixel_values": v, "labels": y} for v, y in rows])
    assert batch["pixel_values"].shape == (2, 3, 4, 4) and batch["labels"].tolist() == [0, 2]
    assert batch["pixel_values"][0, 0, 0, 0].item() == 10.0
    # a batch with no good image repeats the last good one (and its label): no empty batch
    again = apply({"image": [{"path": str(cut)}], "label": [1]})
    assert again["labels"] == [2] and torch.equal(again["pixel_values"][0], out["pixel_values"][2])
    failures = image_check.decode_failures()
    assert [p for p, _ in failures] == [str(cut)]  # once, however often it fails
    assert failures[0][1].startswith("cannot be decoded (OSError: image file is truncated")


def test_a_batch_of_only_bad_images_before_any_good_one_is_a_clear_error(tmp_path):
    cut = write_truncated_jpeg(tmp_path / "cut.jpg")
    out = make_batch_transform(_transform)({"image": [{"path": str(cut)}] * 2, "label": [0, 1]})
    assert out["pixel_values"] == [None, None]
    with pytest.raises(DataError, match="every image of a batch of 2 failed to decode"):
        collate_images([{"pixel_values": None, "labels": 0}, {"pixel_values": None, "labels": 1}])


def test_collate_keeps_channels_last_after_dropping(tmp_path):
    examples = [{"pixel_values": torch.rand(3, 4, 4), "labels": 1}, {"pixel_values": None, "labels": 0}]
    batch = collate_images(examples, channels_last=True)
    assert batch["pixel_values"].shape == (1, 3, 4, 4) and batch["labels"].tolist() == [1]
    assert batch["pixel_values"].is_contiguous(memory_format=torch.channels_last)


def test_strict_makes_a_decode_failure_an_error_naming_the_file(tmp_path):
    cut = write_truncated_jpeg(tmp_path / "cut.jpg")
    image_check.set_strict(True)
    with pytest.raises(DataError, match=rf"strict: image {re.escape(str(cut))}: cannot be decoded"):
        make_batch_transform(_transform)({"image": [{"path": str(cut)}], "label": [0]})


# --- image folders: skipped, counted, listed; strict; classes left empty --------------------------------


def _folder_with_bad_files(root: Path) -> tuple[dict[str, Path], dict[str, tuple[Path, str]]]:
    make_image_folder(root, {"ant": 4, "bee": 4}, seed=5)
    good = write_good_variants(root / "bee")
    bad = write_bad_variants(root / "ant")
    (root / "ant" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # hidden: not looked at
    return good, bad


def test_folder_scan_skips_counts_and_lists_bad_files(tmp_path, caplog):
    root = tmp_path / "images"
    good, bad = _folder_with_bad_files(root)
    with caplog.at_level(logging.WARNING, logger="hf_finetune.data.loading"):
        data = _load(tmp_path, train_dir=str(root), validation_dir=str(root))
    paths = {row["path"] for split in data.dataset.values() for row in split["image"]}
    assert len(data.dataset["train"]) == 4 + 4 + len(good)
    assert {str(p) for p in good.values()} <= paths
    assert not paths & {str(p) for p, _ in bad.values()} and not any(".DS_Store" in p for p in paths)
    listed = dict(data.bad_files)
    assert sorted(listed) == sorted(str(p) for p, _ in bad.values())  # once, though scanned twice
    for path, reason in bad.values():
        assert listed[str(path)].startswith(reason)
    lines = [r.getMessage() for r in caplog.records if "bad image file" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(
        "skipped 5 bad image files (2 not an image, 1 decompression bomb, 1 extreme aspect ratio, 1 zero bytes; e.g."
    )
    assert "OUTPUT/bad_images.json" in lines[0]
    assert "skipped: 5 bad image files" in data.summary()


def test_strict_folder_scan_names_the_first_bad_file(tmp_path):
    root = tmp_path / "images"
    _folder_with_bad_files(root)
    with pytest.raises(DataError) as err:
        _load(tmp_path, train_dir=str(root), strict=True)
    message = str(err.value)
    assert message.startswith(f"train_dir: {root / 'ant' / 'README.md'}: not an image file (extension '.md')")
    assert "strict: true refuses bad image files" in message and "\n" not in message


def test_class_whose_files_are_all_bad_is_named(tmp_path):
    root = make_image_folder(tmp_path / "images", {"ant": 3, "bee": 3})
    doomed = root / "cow"
    doomed.mkdir()
    (doomed / "a.jpg").write_bytes(b"")
    (doomed / "b.jpg").write_text("not a picture")
    (doomed / "c.jpg").write_text("nor this")
    with pytest.raises(DataError) as err:
        _load(tmp_path, train_dir=str(root))
    assert str(err.value) == (
        f"train_dir: class folder {doomed} has no images it can use: all 3 files are bad (2 not an image, "
        "1 zero bytes; e.g. a.jpg: zero bytes); add images or remove the folder"
    )


def test_class_with_one_usable_image_stays_in_train_with_a_warning(tmp_path, caplog):
    root = make_image_folder(tmp_path / "images", {"ant": 4, "bee": 4})
    lone = make_image_folder(root, {"cow": 1})
    (lone / "cow" / "broken.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="hf_finetune.data.loading"):
        data = _load(tmp_path, train_dir=str(root))
    names = data.dataset["train"].features["label"].names
    assert names == ["ant", "bee", "cow"]
    assert [names[i] for i in data.dataset["train"]["label"]].count("cow") == 1
    assert "cow" not in [names[i] for i in data.dataset["validation"]["label"]]
    assert any("single image" in r.getMessage() and "'cow'" in r.getMessage() for r in caplog.records)


# --- CSV files ------------------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("image", "label"), *rows])
    return path


def test_csv_rows_with_bad_files_are_skipped_and_listed(tmp_path):
    images = make_image_folder(tmp_path / "files", {"red": 4, "green": 4})
    (images / "red" / "empty.png").write_bytes(b"")
    write_truncated_jpeg(images / "green" / "cut.jpg")
    rows = [(str(p.relative_to(tmp_path)), p.parent.name) for p in sorted(images.rglob("*.*"))]
    table = _write_csv(tmp_path / "rows.csv", rows)
    data = _load(tmp_path, train_file=str(table))
    assert sum(len(split) for split in data.dataset.values()) == 9  # the truncated file passes the scan
    assert data.bad_files == [(str(images / "red" / "empty.png"), "zero bytes")]
    with pytest.raises(
        DataError, match=rf"train_file: {re.escape(str(table))} row \d+: image .*empty.png: zero bytes"
    ):
        _load(tmp_path, train_file=str(table), strict=True)


def test_csv_class_whose_files_are_all_bad_is_named(tmp_path):
    images = make_image_folder(tmp_path / "files", {"red": 3})
    (tmp_path / "files" / "x.png").write_text("text")
    (tmp_path / "files" / "y.png").write_bytes(b"")
    rows = [(str(p), "red") for p in sorted((images / "red").iterdir())] + [
        (str(tmp_path / "files" / "x.png"), "blue"),
        (str(tmp_path / "files" / "y.png"), "blue"),
    ]
    table = _write_csv(tmp_path / "rows.csv", rows)
    with pytest.raises(DataError) as err:
        _load(tmp_path, train_file=str(table))
    message = str(err.value)
    assert message.startswith(
        f"train_file: {table}: class 'blue' has no images it can use: all 2 of its files are bad "
        "(1 not an image, 1 zero bytes; e.g."
    )


# --- class names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first, second, how",
    [
        ("Cat", "cat", "differ only in case"),
        ("cat", "cat ", "are one name once case-folded, stripped of surrounding spaces and NFC-normalised"),
        ("caf\u00e9", "cafe\u0301", r"\('cafe\\u0301' and 'caf\\xe9'\)"),
    ],
)
def test_class_names_colliding_after_normalisation_name_both(tmp_path, first, second, how):
    root = make_image_folder(tmp_path / "images", {first: 2, second: 2, "dog": 2})
    assert len([p for p in root.iterdir() if p.is_dir()]) == 3  # two folders the file system tells apart
    with pytest.raises(DataError) as err:
        _load(tmp_path, train_dir=str(root))
    message = str(err.value)
    assert repr(first) in message and repr(second) in message and re.search(how, message), message


def test_unicode_and_spaces_in_class_names_load_as_written(tmp_path):
    names = {"čaj": 3, "日本": 3, "hot dog": 3}
    root = make_image_folder(tmp_path / "images", names)
    data = _load(tmp_path, train_dir=str(root))
    assert data.labels == sorted(names)
    label_names = data.dataset["train"].features["label"].names
    for row in data.dataset["train"]:
        assert Path(row["image"]["path"]).parent.name == label_names[row["label"]]


# --- the report ------------------------------------------------------------------------------------------


def test_report_lists_scan_and_decode_failures_and_grows(tmp_path):
    root = tmp_path / "images"
    _, bad = _folder_with_bad_files(root)
    data = _load(tmp_path, train_dir=str(root))
    out = tmp_path / "out"
    cut = write_truncated_jpeg(tmp_path / "cut.jpg")
    make_batch_transform(_transform)({"image": [{"path": str(cut)}], "label": [0]})  # before the report
    report = write_bad_image_report(out, data)
    assert report == out / REPORT_NAME
    entries = json.loads(report.read_text())
    assert [e["stage"] for e in entries] == ["scan"] * 5 + ["decode"]
    assert {e["path"] for e in entries} == {str(p) for p, _ in bad.values()} | {str(cut)}
    assert all(set(e) == {"path", "reason", "stage"} and e["reason"] for e in entries)
    later = write_truncated_jpeg(tmp_path / "later.jpg", seed=1)
    make_batch_transform(_transform)({"image": [{"path": str(later)}] * 2, "label": [0, 0]})
    entries = json.loads(report.read_text())
    assert len(entries) == 7 and entries[-1]["path"] == str(later) and entries[-1]["stage"] == "decode"


def test_no_bad_file_no_report(tmp_path):
    root = make_image_folder(tmp_path / "images", {"a": 3, "b": 3})
    out = tmp_path / "out"
    out.mkdir()
    (out / REPORT_NAME).write_text("[]")  # an earlier run's
    assert write_bad_image_report(out, _load(tmp_path, train_dir=str(root))) is None
    assert not (out / REPORT_NAME).exists()


# --- caches survive a bad file --------------------------------------------------------------------------


def _dataset_with_a_cut_file(tmp_path: Path) -> tuple[datasets.Dataset, Path]:
    root = make_image_folder(tmp_path / "images", {"a": 3, "b": 3})
    cut = write_truncated_jpeg(root / "a" / "cut.jpg")
    data = _load(tmp_path, train_dir=str(root), validation_dir=str(root))
    return data.dataset["train"], cut


def test_image_cache_leaves_out_a_file_that_fails_to_decode(tmp_path):
    from hf_finetune.data.image_cache import build_image_cache
    from hf_finetune.data.transforms import build_transforms

    train, cut = _dataset_with_a_cut_file(tmp_path)
    assert len(train) == 7
    config = {"input_size": (3, 16, 16), "crop_pct": 0.875, "interpolation": "bilinear"}
    config.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    train_t, eval_t = build_transforms(config, "none")
    cache = build_image_cache(
        {"train": train, "validation": train}, config, "none", 0.25, 0.5, train_t, eval_t, tmp_path / "cache"
    )
    assert len(cache.train) == 6 and len(cache.validation) == 6
    assert sorted(cache.train.with_format(None)["label"]) == [0, 0, 0, 1, 1, 1]
    assert [p for p, _ in image_check.decode_failures()] == [str(cut)]


def test_feature_cache_leaves_out_a_file_that_fails_to_decode(tmp_path, tiny_hf_checkpoint):
    from transformers import AutoModelForImageClassification

    from hf_finetune.data.transforms import build_transforms
    from hf_finetune.training.feature_cache import build_feature_cache, feature_head

    train, cut = _dataset_with_a_cut_file(tmp_path)
    model = AutoModelForImageClassification.from_pretrained(tiny_hf_checkpoint)
    _, head = feature_head(model)
    config = {"input_size": (3, 16, 16), "crop_pct": 0.875, "interpolation": "bilinear"}
    config.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    _, eval_t = build_transforms(config, "none")
    cache = build_feature_cache(model, head, {"train": train}, eval_t, tmp_path / "features", batch_size=4)
    assert len(cache.datasets["train"]) == 6
    assert sorted(cache.datasets["train"]["label"]) == [0, 0, 0, 1, 1, 1]
    assert [p for p, _ in image_check.decode_failures()] == [str(cut)]


# --- a real training run, and the command line ------------------------------------------------------------


def test_training_skips_bad_files_and_lists_them(tmp_path, tiny_hf_checkpoint):
    """Unicode class names, files the scan refuses and a truncated JPEG only decoding finds: training
    completes, the labels are the folder names, and OUTPUT/bad_images.json lists every bad file."""
    from hf_finetune.run.train import main

    names = {"čaj": 6, "日本": 6, "hot dog": 6}
    root = make_image_folder(tmp_path / "images", names, size=(24, 24))
    cut = write_truncated_jpeg(root / "čaj" / "cut.jpg")
    (root / "日本" / "empty.png").write_bytes(b"")
    (root / "hot dog" / "README.md").write_text("notes")
    (root / "hot dog" / ".DS_Store").write_bytes(b"\x00\x01")
    out = tmp_path / "out"
    result = main(
        ModelArguments(model_name_or_path=str(tiny_hf_checkpoint)),
        DataArguments(train_dir=str(root), image_size=16, train_val_split=0.34),
        FinetuneTrainingArguments(
            output_dir=str(out),
            num_train_epochs=2,
            per_device_train_batch_size=4,
            per_device_eval_batch_size=4,
            save_strategy="no",
            load_best_model_at_end=False,
            report_to=[],
            disable_tqdm=True,
        ),
    )
    assert result.labels == sorted(names)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert sorted(config["id2label"].values()) == sorted(names)
    assert result.train_metrics["epoch"] == 2 and result.metrics_after["eval_accuracy"] >= 0
    entries = json.loads((out / REPORT_NAME).read_text(encoding="utf-8"))
    by_path = {e["path"]: e for e in entries}
    assert sorted(by_path) == sorted(
        [str(cut), str(root / "日本" / "empty.png"), str(root / "hot dog" / "README.md")]
    )
    assert by_path[str(cut)]["stage"] == "decode"
    assert by_path[str(cut)]["reason"].startswith("cannot be decoded (OSError: image file is truncated")
    assert by_path[str(root / "日本" / "empty.png")] == {
        "path": str(root / "日本" / "empty.png"),
        "reason": "zero bytes",
        "stage": "scan",
    }
    assert by_path[str(root / "hot dog" / "README.md")]["reason"] == "not an image file (extension '.md')"


PROGRESS = re.compile(r"(it/s\]|examples/s\]|\d+ examples \[|\|\s*\d+/\d+ \[)")


def test_cli_class_whose_files_are_all_bad_is_one_error_line(tmp_path, tiny_hf_checkpoint):
    root = make_image_folder(tmp_path / "images", {"ant": 3, "bee": 3})
    (root / "cow").mkdir()
    (root / "cow" / "a.jpg").write_text("not a picture")
    (root / "cow" / "b.png").write_bytes(b"")
    out = tmp_path / "out"
    proc = run_hf_finetune(
        "train", "--model_name_or_path", tiny_hf_checkpoint, "--train_dir", root, "--output_dir", out
    )
    lines = [
        line
        for line in proc.stderr.replace("\r", "\n").splitlines()
        if line.strip() and not PROGRESS.search(line)
    ]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines == [
        f"hf-finetune: error: train_dir: class folder {root / 'cow'} has no images it can use: all 2 files "
        "are bad (1 not an image, 1 zero bytes; e.g. a.jpg: not an image (no image format recognises its "
        "header)); add images or remove the folder"
    ]
    assert not out.exists()


def test_strict_is_a_recipe_key_and_a_flag(tmp_path):
    from hf_finetune.config.parser import parse_train_args

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: m\ntrain_dir: d\nstrict: true\n", encoding="utf-8")
    assert parse_train_args([str(recipe)])[1].strict is True
    assert parse_train_args(["--model_name_or_path", "m", "--train_dir", "d"])[1].strict is False
    flagged = parse_train_args(["--model_name_or_path", "m", "--train_dir", "d", "--strict", "true"])
    assert flagged[1].strict is True
