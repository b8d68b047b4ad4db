"""Every image mode and file quirk hf_finetune.data.images must turn into plain 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_finetune.data.image_check import load_image
from hf_finetune.data.images import IMAGE_EXTENSIONS, is_image_file, to_rgb


def _pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    return tuple(int(v) for v in image.getpixel(xy))


def _close(actual, expected, tolerance: int = 6) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def test_is_image_file():
    assert is_image_file("a/b/photo.JPG") and is_image_file(Path("x.webp")) and is_image_file("y.tiff")
    assert not is_image_file("notes.txt") and not is_image_file("labels.csv") and not is_image_file("jpg")
    assert ".png" in IMAGE_EXTENSIONS


def test_rgb_png_is_returned_usable(tmp_path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (7, 5), (10, 20, 30)).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (7, 5)
    assert _pixel(image, (3, 2)) == (10, 20, 30)  # the returned image is still readable after the file closed


def test_rgb_jpeg_without_exif(tmp_path):
    path = tmp_path / "rgb.jpg"
    Image.new("RGB", (16, 8), (200, 100, 50)).save(path, quality=95)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (16, 8)
    assert _close(_pixel(image, (8, 4)), (200, 100, 50))


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale(tmp_path, mode):
    path = tmp_path / f"gray_{mode}.png"
    array = np.zeros((6, 10), dtype=np.uint8)
    array[:, 5:] = 255
    Image.fromarray(array, mode="L").convert(mode).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (10, 6)
    assert _pixel(image, (1, 1)) == (0, 0, 0) and _pixel(image, (8, 1)) == (255, 255, 255)


def test_grayscale_midtone_stays_gray(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (4, 4), 100).save(path)
    assert _pixel(load_image(path), (0, 0)) == (100, 100, 100)


def test_palette_with_transparency_composited_on_white(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (8, 4), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)  # index 0 red, index 1 blue
    image.paste(1, (4, 0, 8, 4))
    image.info["transparency"] = 0  # red is transparent
    image.save(path, transparency=0)
    assert Image.open(path).mode == "P"
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (8, 4)
    assert _pixel(rgb, (1, 1)) == (255, 255, 255)  # transparent -> white, not red or black
    assert _pixel(rgb, (6, 1)) == (0, 0, 255)


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "palette.gif"
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0, 0, 0] * 254)
    image.save(path)
    rgb = load_image(path)
    assert rgb.mode == "RGB" and _pixel(rgb, (2, 2)) == (0, 200, 0)


def test_rgba_composited_on_white(tmp_path):
    path = tmp_path / "rgba.png"
    array = np.zeros((4, 9, 4), dtype=np.uint8)
    array[:, 0:3] = (255, 0, 0, 0)  # fully transparent red
    array[:, 3:6] = (0, 255, 0, 255)  # opaque green
    array[:, 6:9] = (0, 0, 0, 128)  # half-transparent black
    Image.fromarray(array, mode="RGBA").save(path)
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (9, 4)
    assert _pixel(rgb, (1, 1)) == (255, 255, 255)
    assert _pixel(rgb, (4, 1)) == (0, 255, 0)
    assert _close(_pixel(rgb, (7, 1)), (127, 127, 127), tolerance=2)


def test_grayscale_with_alpha(tmp_path):
    path = tmp_path / "la.png"
    array = np.zeros((2, 4, 2), dtype=np.uint8)
    array[:, :2] = (0, 0)  # transparent black
    array[:, 2:] = (50, 255)  # opaque dark gray
    Image.fromarray(array, mode="LA").save(path)
    rgb = load_image(path)
    assert rgb.mode == "RGB"
    assert _pixel(rgb, (0, 0)) == (255, 255, 255) and _pixel(rgb, (3, 0)) == (50, 50, 50)


@pytest.mark.parametrize("ext", ["tif", "jpg"])
def test_cmyk(tmp_path, ext):
    path = tmp_path / f"cmyk.{ext}"
    image = Image.new("CMYK", (12, 6), (0, 0, 0, 0))  # no ink: white
    image.paste((0, 255, 255, 0), (6, 0, 12, 6))  # magenta + yellow: red
    image.save(path, **({"quality": 95} if ext == "jpg" else {}))
    assert Image.open(path).mode == "CMYK"
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (12, 6)
    assert _close(_pixel(rgb, (1, 1)), (255, 255, 255))
    assert _close(_pixel(rgb, (10, 3)), (255, 0, 0))


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    array = np.zeros((4, 6), dtype=np.uint16)
    array[:, 2:4] = 32768
    array[:, 4:] = 65535
    Image.fromarray(array).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (6, 4)
    assert _pixel(rgb, (0, 0)) == (0, 0, 0)
    assert _close(_pixel(rgb, (2, 0)), (128, 128, 128), tolerance=1)  # mid-gray, not clipped to 255
    assert _pixel(rgb, (5, 0)) == (255, 255, 255)


def test_exif_orientation_6_rotates(tmp_path):
    path = tmp_path / "rotated.jpg"
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    stored.save(path, exif=exif, quality=95)
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (20, 40)  # width and height swapped
    # Rotating clockwise moves the stored top-left corner to the top-right.
    assert _close(_pixel(rgb, (17, 2)), (255, 0, 0), tolerance=20)
    assert _close(_pixel(rgb, (2, 2)), (0, 0, 255), tolerance=20)


def test_animated_gif_gives_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (10, 8), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as opened:
        assert opened.is_animated and opened.n_frames == 3
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (10, 8)
    assert _pixel(rgb, (5, 4)) == (255, 0, 0)


def test_to_rgb_on_animated_gif_seeked_to_later_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (6, 6), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as opened:
        opened.seek(1)
        rgb = to_rgb(opened)
        assert rgb.mode == "RGB" and _pixel(rgb, (3, 3)) == (255, 0, 0)


def test_to_rgb_keeps_an_rgb_image():
    image = Image.new("RGB", (3, 3), (1, 2, 3))
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (3, 3) and _pixel(out, (0, 0)) == (1, 2, 3)
