"""What one loader process spends per training image, with and without ``normalize_on_device`` (a script, not a
timed test).

A loader worker runs torch on one thread. On a GPU machine (the project's defaults there: ``cache_images`` on,
loader workers) each worker takes an image from the cache, augments it, makes a tensor of it, stacks a batch
and hands the batch over to the training process through shared memory; the training process pins it and
copies it to the device. This script times those stages on one thread, in one process, for the two ways the
project can make a batch:

* float32: the transform ends in ``ToTensor`` + ``Normalize`` (``normalize_on_device: false``);
* 8-bit:   the transform ends in ``ToUint8Tensor``, and ``PixelNormalizer`` finishes the batch on the device
           (``normalize_on_device``, the default). Here the device is this CPU, on one thread; on a GPU that
           step runs there.

The images are the model's real training inputs: each file decoded and downscaled once as ``cache_images``
keeps it, then the project's training transform for the checkpoint (random-resized-crop + flip). Both paths
draw the same crops (same seeds). Each round times every stage of both paths; the table gives the medians over
--rounds, per image.

    .venv/bin/python bench/loader_cost.py [--model efficientnet_lite0] [--data hotdog] [--images 128]
        [--batch 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (bench/throughput.py: the models and data)

STAGES = ("augment (PIL)", "to tensor", "stack a batch", "hand over (shared memory)", "normalise the batch")


def load_images(model: Path, folder: Path, count: int, image_size: int | None = None):
    """The checkpoint's training transform and ``count`` images of ``folder`` as the image cache keeps them."""
    from PIL import Image

    from hf_finetune.data.image_cache import _downscale, train_side_limit
    from hf_finetune.data.transforms import build_transforms, data_config_from_processor
    from hf_finetune.models.loading import load_image_processor

    config = data_config_from_processor(load_image_processor(str(model)), image_size)
    train_transform, _ = build_transforms(config, "rrc_flip", 0.25, 0.5)
    side = int(config["input_size"][-1])
    downscale = _downscale(train_side_limit(side, 0.25), config.get("interpolation"))
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    if not files:
        raise SystemExit(f"no images under {folder}")
    images = [downscale(Image.open(f).convert("RGB")) for f in files]
    return train_transform, images


class Paths:
    """The float32 and 8-bit ways of making batches from the same images, stage by stage."""

    def __init__(self, train_transform, images, batch: int):
        from hf_finetune.data.transforms import split_normalize

        steps = list(train_transform.transforms)
        self.augment_steps = steps[:-2]  # EnlargeTiny, random-resized-crop, flip, (no-op colour jitter)
        self.float_finish = steps[-2:]  # ToTensor, Normalize
        uint8, self.normalizer = split_normalize(train_transform)
        self.uint8_finish = uint8.transforms[-1:]  # ToUint8Tensor
        self.images, self.batch = images, batch

    def augment(self, seed: int):
        import torch

        random.seed(seed)  # timm's random-resized-crop draws from `random`, the flip from torch
        torch.manual_seed(seed)
        out = []
        for image in self.images:
            for step in self.augment_steps:
                image = step(image)
            out.append(image)
        return out

    @staticmethod
    def finish(steps, crops):
        out = []
        for crop in crops:
            for step in steps:
                crop = step(crop)
            out.append(crop)
        return out

    def batches(self, tensors):
        from hf_finetune.data.transforms import collate_images

        rows = [{"pixel_values": t, "labels": 0} for t in tensors]
        return [
            collate_images(rows[i : i + self.batch])["pixel_values"] for i in range(0, len(rows), self.batch)
        ]

    def round(self, seed: int) -> dict[str, dict[str, float]]:
        """Seconds per image of every stage, both paths, one round (the same crops for both)."""
        import torch

        seconds: dict[str, dict[str, float]] = {"float32": {}, "8-bit": {}}
        n = len(self.images)
        start = time.perf_counter()
        crops = self.augment(seed)
        augment = (time.perf_counter() - start) / n
        outputs = {}
        for path, steps in (("float32", self.float_finish), ("8-bit", self.uint8_finish)):
            seconds[path]["augment (PIL)"] = augment  # the same work on both paths
            start = time.perf_counter()
            tensors = self.finish(steps, crops)
            seconds[path]["to tensor"] = (time.perf_counter() - start) / n
            start = time.perf_counter()
            batches = self.batches(tensors)
            seconds[path]["stack a batch"] = (time.perf_counter() - start) / n
            start = time.perf_counter()
            for batch in batches:  # what the worker's queue does with a batch: its storage into shared memory
                batch.share_memory_()
            seconds[path]["hand over (shared memory)"] = (time.perf_counter() - start) / n
            start = time.perf_counter()
            if path == "8-bit":
                batches = [self.normalizer(batch) for batch in batches]
            seconds[path]["normalise the batch"] = (time.perf_counter() - start) / n
            outputs[path] = batches
        self.shape = tuple(outputs["float32"][0].shape)
        same = all(torch.equal(a, b) for a, b in zip(outputs["float32"], outputs["8-bit"], strict=True))
        if not same:
            raise SystemExit("the two paths made different batches: normalize_on_device is not exact here")
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0", choices=list(throughput.MODELS))
    parser.add_argument("--data", default="hotdog", choices=["hotdog", "cifar10"])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import tempfile

    import torch

    torch.set_num_threads(1)  # as in a DataLoader worker
    model = throughput.MODELS[args.model]
    if not model.is_dir():
        raise SystemExit(f"needs the checkpoints of ../shared: missing {model}")
    train, _ = throughput.prepare_data(args.data, Path(tempfile.mkdtemp(prefix="hf-finetune-bench-")))
    transform, images = load_images(model, train, args.images)
    paths = Paths(transform, images, args.batch)
    paths.round(0)  # warm-up
    rounds = [paths.round(seed) for seed in range(1, args.rounds + 1)]
    median = {
        path: {stage: statistics.median(r[path][stage] for r in rounds) for stage in STAGES}
        for path in ("float32", "8-bit")
    }
    side = min(min(image.size) for image in images), max(min(image.size) for image in images)
    print(
        f"\n{args.model} training transform on {len(images)} {args.data} images (short side {side[0]}-{side[1]} "
        f"px as cached), batch {args.batch}, one thread, {args.rounds} rounds (medians); both paths gave the "
        "same batches bit for bit\n"
    )
    print("| stage | float32 path ms/image | 8-bit path ms/image |")
    print("|---|---|---|")
    for stage in STAGES:
        f, u = median["float32"][stage], median["8-bit"][stage]
        print(f"| {stage} | {1000 * f:.3f} | {1000 * u:.3f} |")
    loader = {p: sum(median[p][s] for s in STAGES[:-1]) for p in median}
    print(
        f"| **in the loader process** | **{1000 * loader['float32']:.3f}** | **{1000 * loader['8-bit']:.3f}** |"
    )
    pixels = 1
    for size in paths.shape:
        pixels *= size
    print(
        f"\nA loader process makes {1 / loader['float32']:.0f} images/s on the float32 path and "
        f"{1 / loader['8-bit']:.0f} on the 8-bit path ({loader['float32'] / loader['8-bit']:.2f}x); a batch of "
        f"{paths.shape} is {4 * pixels / 2**20:.1f} MiB against {pixels / 2**20:.1f} MiB (what the worker hands "
        "over and the training process pins and copies). The last stage runs in the training process, on the "
        "device."
    )


if __name__ == "__main__":
    main()
