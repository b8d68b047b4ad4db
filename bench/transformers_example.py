"""The baseline: transformers' example recipe for image classification, as its users run it.

This follows ``examples/pytorch/image-classification/run_image_classification.py`` (transformers): a
``datasets`` image folder, per-sample torchvision transforms applied with ``set_transform``
(RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize with the checkpoint's mean/std for training;
Resize + CenterCrop + ToTensor + Normalize for validation), ``AutoModelForImageClassification`` with
``ignore_mismatched_sizes=True`` (a fresh head), and ``Trainer`` with its defaults: fp32, NCHW,
``dataloader_num_workers=0``, AdamW at 5e-5 with a linear decay, no warm-up.

Two changes, both needed to run it on the same checkpoints as hf_finetune, neither making it slower:

* the example takes the training size from the image processor's ``size`` (``shortest_edge``); for
  MobileNetV2 that is 256, for timm checkpoints there is none (``TimmWrapperImageProcessor`` keeps a timm
  data config). Here the size is the crop size the checkpoint was made for (224 for both shared models),
  so the baseline and hf_finetune do the same arithmetic per image;
* a timm checkpoint whose ``config.json`` repeats ``num_classes`` in ``model_args`` (the shared
  EfficientNet-Lite0) fails in ``from_pretrained(..., num_labels=N)`` with "got multiple values for keyword
  argument 'num_classes'"; the duplicate is dropped from the config before loading.

    python bench/transformers_example.py --model_name_or_path ../shared/models/timm-tf_efficientnet_lite0 \\
        --train_dir ../shared/data/hotdog/train --validation_dir ../shared/data/hotdog/val --max_steps 20
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def collate_fn(examples):
    import torch

    pixel_values = torch.stack([example["pixel_values"] for example in examples])
    labels = torch.tensor([example["label"] for example in examples])
    return {"pixel_values": pixel_values, "labels": labels}


def _size_and_norm(image_processor):
    """(size, mean, std) as the example reads them, with the crop size (see the module docstring)."""
    data_config = getattr(image_processor, "data_config", None)
    if isinstance(data_config, dict):  # timm checkpoint through TimmWrapperImageProcessor
        size = tuple(data_config["input_size"][-2:])
        return size, data_config.get("mean"), data_config.get("std")
    crop = getattr(image_processor, "crop_size", None)
    source = crop if crop else image_processor.size
    if "shortest_edge" in source:
        size = source["shortest_edge"]
    else:
        size = (source["height"], source["width"])
    return size, getattr(image_processor, "image_mean", None), getattr(image_processor, "image_std", None)


def _accuracy(p):
    import numpy as np

    return {"accuracy": float((np.argmax(p.predictions, axis=1) == p.label_ids).mean())}


def build_trainer(
    model_name_or_path: str,
    train_dir: str,
    validation_dir: str,
    output_dir: str,
    per_device_train_batch_size: int = 32,
    max_steps: int = 20,
    seed: int = 42,
    callbacks=None,
    **training_kwargs,
):
    """The example's Trainer (its data, model, transforms and training defaults); nothing trained yet."""
    from datasets import load_dataset
    from torchvision.transforms import (
        CenterCrop,
        Compose,
        Lambda,
        Normalize,
        RandomHorizontalFlip,
        RandomResizedCrop,
        Resize,
        ToTensor,
    )
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForImageClassification,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(seed)
    data_files = {
        "train": os.path.join(train_dir, "**"),
        "validation": os.path.join(validation_dir, "**"),
    }
    dataset = load_dataset("imagefolder", data_files=data_files)
    labels = dataset["train"].features["label"].names
    label2id = {label: str(i) for i, label in enumerate(labels)}
    id2label = {str(i): label for i, label in enumerate(labels)}

    config = AutoConfig.from_pretrained(
        model_name_or_path,
        num_labels=len(labels),
        label2id=label2id,
        id2label=id2label,
        finetuning_task="image-classification",
    )
    if isinstance(getattr(config, "model_args", None), dict) and "num_classes" in config.model_args:
        config.model_args = {k: v for k, v in config.model_args.items() if k != "num_classes"} or None
    model = AutoModelForImageClassification.from_pretrained(
        model_name_or_path, config=config, ignore_mismatched_sizes=True
    )
    image_processor = AutoImageProcessor.from_pretrained(model_name_or_path)

    size, mean, std = _size_and_norm(image_processor)
    normalize = Normalize(mean=mean, std=std) if mean is not None and std is not None else Lambda(lambda x: x)
    _train_transforms = Compose([RandomResizedCrop(size), RandomHorizontalFlip(), ToTensor(), normalize])
    _val_transforms = Compose([Resize(size), CenterCrop(size), ToTensor(), normalize])

    def train_transforms(example_batch):
        example_batch["pixel_values"] = [
            _train_transforms(pil_img.convert("RGB")) for pil_img in example_batch["image"]
        ]
        return example_batch

    def val_transforms(example_batch):
        example_batch["pixel_values"] = [
            _val_transforms(pil_img.convert("RGB")) for pil_img in example_batch["image"]
        ]
        return example_batch

    dataset["train"].set_transform(train_transforms)
    dataset["validation"].set_transform(val_transforms)

    args = TrainingArguments(
        output_dir=output_dir,
        remove_unused_columns=False,  # as the example's README command line sets it
        per_device_train_batch_size=per_device_train_batch_size,
        per_device_eval_batch_size=per_device_train_batch_size,
        max_steps=max_steps,
        seed=seed,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        **training_kwargs,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset["train"],
        eval_dataset=dataset["validation"],
        compute_metrics=_accuracy,
        processing_class=image_processor,
        data_collator=collate_fn,
        callbacks=callbacks,
    )
    trainer.example_transforms = (_train_transforms, _val_transforms)  # for tests and readers
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default=str(SHARED / "models" / "timm-tf_efficientnet_lite0"))
    parser.add_argument("--train_dir", default=str(SHARED / "data" / "hotdog" / "train"))
    parser.add_argument("--validation_dir", default=str(SHARED / "data" / "hotdog" / "val"))
    parser.add_argument("--per_device_train_batch_size", type=int, default=32)
    parser.add_argument("--max_steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(
            args.model_name_or_path,
            args.train_dir,
            args.validation_dir,
            tmp,
            args.per_device_train_batch_size,
            args.max_steps,
            args.seed,
        )
        result = trainer.train()
        metrics = trainer.evaluate()
    print(
        f"transformers example: {result.metrics['train_samples_per_second']:.2f} images/s over "
        f"{args.max_steps} steps; validation accuracy {metrics['eval_accuracy']:.4f}"
    )


if __name__ == "__main__":
    main()
