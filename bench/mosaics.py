"""Build a multi-label image set from real photos: 2x2 mosaics of CIFAR-10 test photos.

Each mosaic is a 64x64 PNG of four 32x32 tiles from ``../shared/data/cifar10-test`` (``<class>/*.jpg``),
labelled with the SET of classes its tiles show (1-4 labels). How a mosaic is drawn, all from one seeded
``random.Random(seed)``:

* the number of distinct classes k is uniform over 1, 2, 3, 4;
* the k classes are a uniform sample of the 10, without repeats;
* each of the k classes gets one tile, the 4 - k other tiles a class drawn uniformly from the k again, and
  the four tiles are put in a shuffled order (so a 1-class mosaic shows four photos of that class);
* each tile is a photo of its class drawn without replacement from that split's own photos.

The three splits use disjoint source photos: each class's 1000 photos are shuffled and cut into three pools in
proportion to the splits' sizes, and a split only draws from its own pool (a photo is reused, within its split
only, when the split needs more tiles of a class than its pool holds; at the default sizes none is).

Written to OUT: ``train/``, ``validation/``, ``test/`` (the PNGs), ``train.csv``, ``validation.csv``,
``test.csv`` (``image,label`` rows, the image path relative to OUT, the label the class names sorted and joined
by ``;``) and ``mosaics.json`` (the seed, the sizes and, per mosaic, its four source photos in the order
top-left, top-right, bottom-left, bottom-right). The same seed and sizes give byte-identical files.

    python bench/mosaics.py OUT [--seed 0] [--train 600] [--validation 200] [--test 400] [--source DIR]

Nothing it writes is stored in git; the multi-label benchmark (bench/multilabel.py) builds it per run.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "cifar10-test"
SPLITS = ("train", "validation", "test")
TILE = 32
SEPARATOR = ";"

__all__ = ["build_mosaics", "draw_tile_classes", "source_pools", "SOURCE", "SPLITS"]


def source_pools(source: Path, sizes: dict[str, int], rng: random.Random) -> dict[str, dict[str, list[str]]]:
    """Per split, per class, the source photos (paths relative to ``source``) it may use: each class's photos
    shuffled and cut in proportion to ``sizes``, so no photo is in two splits."""
    classes = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    total = sum(sizes.values())
    pools: dict[str, dict[str, list[str]]] = {split: {} for split in sizes}
    for name in classes:
        photos = sorted(f"{name}/{p.name}" for p in (source / name).iterdir() if p.suffix.lower() == ".jpg")
        rng.shuffle(photos)
        start = 0
        for i, (split, size) in enumerate(sizes.items()):
            end = len(photos) if i == len(sizes) - 1 else start + round(len(photos) * size / total)
            pools[split][name] = photos[start:end]
            start = end
    return pools


def draw_tile_classes(classes: list[str], rng: random.Random) -> list[str]:
    """The classes of a mosaic's four tiles: k ~ U{1..4} distinct classes, each shown at least once."""
    k = rng.randint(1, 4)
    chosen = rng.sample(classes, k)
    tiles = chosen + [rng.choice(chosen) for _ in range(4 - k)]
    rng.shuffle(tiles)
    return tiles


class _Drawer:
    """Draws photos of a class from one split's pool without replacement (reshuffled when used up)."""

    def __init__(self, pool: dict[str, list[str]], rng: random.Random):
        self.pool, self.rng, self.left = pool, rng, {name: [] for name in pool}

    def draw(self, name: str) -> str:
        if not self.left[name]:
            if not self.pool[name]:
                raise ValueError(f"no source photo of class {name!r} left for this split")
            self.left[name] = list(self.pool[name])
            self.rng.shuffle(self.left[name])
        return self.left[name].pop()


def _mosaic(source: Path, photos: list[str]):
    from PIL import Image

    canvas = Image.new("RGB", (2 * TILE, 2 * TILE))
    for i, photo in enumerate(photos):
        with Image.open(source / photo) as tile:
            tile = tile.convert("RGB")
            if tile.size != (TILE, TILE):
                tile = tile.resize((TILE, TILE))
            canvas.paste(tile, ((i % 2) * TILE, (i // 2) * TILE))
    return canvas


def build_mosaics(out: Path, sizes: dict[str, int], seed: int = 0, source: Path = SOURCE) -> dict:
    """Write the mosaics of ``sizes`` (split -> number of mosaics) into ``out``; returns the manifest."""
    out, source = Path(out), Path(source)
    rng = random.Random(seed)
    pools = source_pools(source, sizes, rng)
    classes = sorted(next(iter(pools.values())))
    manifest: dict = {"seed": seed, "sizes": dict(sizes), "source": str(source), "classes": classes}
    for split, size in sizes.items():
        drawer = _Drawer(pools[split], rng)
        (out / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(size):
            tile_classes = draw_tile_classes(classes, rng)
            photos = [drawer.draw(name) for name in tile_classes]
            image = f"{split}/{i:05d}.png"
            _mosaic(source, photos).save(out / image, format="PNG", optimize=False)
            rows.append({"image": image, "label": SEPARATOR.join(sorted(set(tile_classes))), "tiles": photos})
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["image", "label"])
            writer.writerows([r["image"], r["label"]] for r in rows)
        manifest[split] = rows
    (out / "mosaics.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--validation", type=int, default=200)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--source", type=Path, default=SOURCE, help="a folder of <class>/*.jpg photos")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(f"error: source photos not found at {args.source} (see ../shared/README.md)", file=sys.stderr)
        return 2
    sizes = {"train": args.train, "validation": args.validation, "test": args.test}
    if any(n < 0 for n in sizes.values()):
        print("error: --train, --validation and --test are counts of mosaics, 0 or more", file=sys.stderr)
        return 2
    manifest = build_mosaics(args.out, sizes, args.seed, args.source)
    for split in SPLITS:
        counts = [len(r["label"].split(SEPARATOR)) for r in manifest[split]]
        spread = " ".join(f"{k}:{counts.count(k)}" for k in range(1, 5))
        print(f"{split}: {len(counts)} mosaics -> {args.out / (split + '.csv')} (labels per image {spread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
