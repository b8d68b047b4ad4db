"""The linear-probe path: the frozen body's features computed once, the head trained on them.

When every parameter but the head is frozen (``freeze_layers: -1``), each epoch through the body
recomputes the same features. With ``feature_cache`` (on by default in that case) the body runs once over
the training and validation images, in evaluation mode with the validation transform; the inputs of the
classifier (the pooled features, after the body's final norm and pooling) are written to a memory-mapped
Arrow file in ``output_dir/.feature-cache``, and the Trainer trains :class:`HeadOnlyModel`, which is the
model's own classifier module (shared, not copied) applied to those features. The saved model is the
whole model with the trained head.

What changes against training through the frozen body: no augmentation (the features are of the
validation transform), BatchNorm uses its running statistics, and dropout in front of the classifier is
not applied. ``feature_cache: false`` trains through the body as usual.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from hf_finetune.data.transforms import collate_images, label_tensor, make_batch_transform
from hf_finetune.errors import ConfigError
from hf_finetune.models.heads import head_module_names

__all__ = [
    "CACHE_DIR",
    "HeadOnlyModel",
    "FeatureCache",
    "feature_head",
    "extract_features",
    "build_feature_cache",
    "collate_features",
    "decide_feature_cache",
]

logger = logging.getLogger(__name__)

CACHE_DIR = ".feature-cache"


def feature_head(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """``(name, module)`` of the model's classifier when it is one ``nn.Linear`` fed by the features; ``None``
    for models with several head modules (DeiT-distilled) or a head of another kind."""
    names = head_module_names(model)
    if len(names) != 1:
        return None
    module = dict(model.named_modules())[names[0]]
    if not isinstance(module, nn.Linear):
        return None
    return names[0], module


class HeadOnlyModel(nn.Module):
    """The classifier of ``model`` applied to cached features: ``forward(features, labels)``.

    ``head`` is the model's own module, so training this trains the model's head. Its output is the
    model's: ``logits``, and the cross-entropy ``loss`` when labels are given (binary cross-entropy for the
    multi-hot rows of a multi-label split).
    """

    main_input_name = "features"

    def __init__(self, model: nn.Module, head_name: str, head: nn.Linear):
        super().__init__()
        self.head = head
        self.head_name = head_name
        self.config = model.config

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None, **_: Any):

        logits = self.head(features.to(self.head.weight.dtype))
        loss = None
        if labels is not None and labels.is_floating_point():  # multi-hot rows: the model's own BCE
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        elif labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


def collate_features(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack cached ``features`` and ``label`` rows into a batch for :class:`HeadOnlyModel`."""
    features = torch.stack([torch.as_tensor(e["features"], dtype=torch.float32) for e in examples])
    batch = {"features": features}
    if "label" in examples[0]:
        batch["labels"] = label_tensor([e["label"] for e in examples])
    return batch


@torch.no_grad()
def extract_features(
    model: nn.Module,
    head: nn.Module,
    dataset,
    transform,
    batch_size: int = 64,
    bf16: bool = False,
    channels_last: bool = False,
    device: torch.device | str | None = None,
):
    """Yield ``(features, labels)`` batches (float32 numpy, int list): the inputs of ``head`` when ``model``
    (in evaluation mode) sees ``dataset``'s images through ``transform``."""

    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = torch.utils.data.DataLoader(
        dataset.with_transform(make_batch_transform(transform)),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=lambda rows: collate_images(rows, channels_last=channels_last),
    )
    try:
        for batch in loader:
            captured.clear()
            pixel_values = batch["pixel_values"].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                model(pixel_values=pixel_values)
            if len(captured) != 1:
                raise RuntimeError(f"the classifier ran {len(captured)} times for one batch; expected once")
            yield captured[0].float().flatten(1).cpu().numpy(), batch["labels"].tolist()
    finally:
        hook.remove()
        model.train(was_training)


@dataclass
class FeatureCache:
    """The cached splits (``datasets.Dataset`` memory-mapped from Arrow files) and what making them cost."""

    datasets: dict[str, Any]
    folder: Path
    dim: int
    seconds: float

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def build_feature_cache(
    model: nn.Module,
    head: nn.Module,
    splits: dict[str, Any],
    transform,
    folder: str | Path,
    batch_size: int = 64,
    bf16: bool = False,
    channels_last: bool = False,
) -> FeatureCache:
    """Write the features of every split in ``splits`` (name -> image Dataset) to ``folder/<name>.arrow``
    batch by batch (memory stays flat) and open them memory-mapped."""

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    out: dict[str, Any] = {}
    dim = 0
    label_feature = next(iter(splits.values())).features["label"]
    for name, dataset in splits.items():
        path = folder / f"{name}.arrow"
        writer = None
        for features, labels in extract_features(
            model, head, dataset, transform, batch_size, bf16=bf16, channels_last=channels_last
        ):
            if writer is None:
                dim = features.shape[1]
                schema = datasets.Features(
                    {
                        "features": datasets.Sequence(datasets.Value("float32"), length=dim),
                        "label": label_feature,
                    }
                )
                writer = datasets.arrow_writer.ArrowWriter(features=schema, path=str(path))
            writer.write_batch({"features": list(features), "label": labels})
        if writer is None:
            raise ConfigError(f"feature_cache: the {name} split has no images")
        writer.finalize()
        out[name] = datasets.Dataset.from_file(str(path))
    return FeatureCache(datasets=out, folder=folder, dim=dim, seconds=time.perf_counter() - start)


def decide_feature_cache(
    wanted: bool | None,
    model: nn.Module,
    trainable: list[str],
    head_names: list[str],
    world_size: int,
    scheduled: bool = False,
) -> tuple[bool, str]:
    """Whether to train on cached features, and why; ``wanted`` True with a setting that cannot use the
    cache is a ConfigError naming the key to change. ``scheduled``: a freezing schedule (``probe_epochs``,
    ``unfreeze_schedule``) unfreezes the body later, so its features change during the run."""
    body_trainable = [n for n in trainable if n not in set(head_names)]
    reasons = []
    if scheduled:
        reasons.append("probe_epochs/unfreeze_schedule unfreeze the body later in the run")
    elif body_trainable:
        reasons.append(
            f"{len(body_trainable)} body tensors are trainable (e.g. {body_trainable[0]}); set freeze_layers: -1"
        )
    if world_size > 1:
        reasons.append(f"{world_size} processes train (the cache is for one process)")
    if feature_head(model) is None:
        reasons.append(f"the head of {type(model).__name__} is not a single linear layer")
    if wanted is False:
        return False, "off (feature_cache: false)"
    if reasons:
        if wanted:
            raise ConfigError("feature_cache: true cannot be used: " + "; ".join(reasons))
        return False, "off (" + "; ".join(reasons) + ")"
    return True, "on (the whole body is frozen: its features are computed once)"
