"""Reading one image file into an RGB PIL image, the way every path of hf_finetune reads images.

EXIF orientation is applied, and every mode (grayscale, palette with transparency, RGBA, CMYK,
16-bit, ...) becomes 8-bit RGB; transparent pixels are composited on white.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["IMAGE_EXTENSIONS", "to_rgb", "is_image_file"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def is_image_file(path: str | Path) -> bool:
    """True when the file name has an image extension (the content is not checked)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any PIL mode to 8-bit RGB."""
    if getattr(image, "is_animated", False):
        image.seek(0)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not lose the picture
        pass
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit integer grayscale: scale to 8 bits instead of clipping.

        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            scale = 65535.0  # the mode says 16 bits: scale by the range, not by the brightest pixel
        else:
            scale = 65535.0 if array.size and array.max() > 255 else 255.0
        image = Image.fromarray((array / scale * 255.0).clip(0, 255).astype("uint8"), mode="L")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        background.alpha_composite(image.convert("RGBA"))
        return background.convert("RGB")
    return image.convert("RGB")
