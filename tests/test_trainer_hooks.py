"""The private Trainer methods we still override are the ones hf_finetune.training.private_hooks lists, each with
the signature it was written against: a transformers upgrade that changes one fails here, not deep in a run."""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import Trainer

from hf_finetune.training.private_hooks import PRIVATE_OVERRIDES, TRANSFORMERS_VERSION, signature_mismatches
from hf_finetune.training.trainer import FinetuneTrainer


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _our_private_overrides() -> dict[str, list[str]]:
    """Private Trainer method name -> the classes of ours (in FinetuneTrainer's MRO) that define it."""
    found: dict[str, list[str]] = {}
    for cls in FinetuneTrainer.__mro__:
        if not cls.__module__.startswith("hf_finetune."):
            continue
        for name in vars(cls):
            if _private(name) and hasattr(Trainer, name):
                found.setdefault(name, []).append(f"{cls.__module__}.{cls.__qualname__}")
    return found


@pytest.mark.parametrize("name", sorted(PRIVATE_OVERRIDES))
def test_recorded_signature_matches_the_installed_trainer(name):
    override = PRIVATE_OVERRIDES[name]
    assert hasattr(Trainer, name), f"Trainer.{name} is gone; {override.owner} overrides it: {override.reason}"
    installed = str(inspect.signature(getattr(Trainer, name)))
    assert installed == override.signature, (
        f"Trainer.{name} changed: installed {installed}, written against {override.signature} (transformers "
        f"{TRANSFORMERS_VERSION}). {override.owner} overrides it because: {override.reason} Read the new "
        "method, adapt the override, then record the new signature in hf_finetune/training/private_hooks.py."
    )


def test_signature_mismatches_is_empty_on_the_installed_transformers():
    assert signature_mismatches() == []


def test_every_private_override_is_listed_with_its_owner():
    found = _our_private_overrides()
    unlisted = sorted(set(found) - set(PRIVATE_OVERRIDES))
    assert not unlisted, (
        f"private Trainer methods overridden but not in hf_finetune/training/private_hooks.py: {unlisted} "
        f"(by {[found[n] for n in unlisted]}); use a public hook, or list each with its reason and signature"
    )
    stale = sorted(set(PRIVATE_OVERRIDES) - set(found))
    assert not stale, f"listed in private_hooks.py but no longer overridden: {stale}; remove them"
    for name, owners in found.items():
        assert owners == [PRIVATE_OVERRIDES[name].owner], (name, owners)


def test_every_listed_override_gives_a_reason():
    for name, override in PRIVATE_OVERRIDES.items():
        assert len(override.reason) > 40, name


# --- the behaviours moved to public hooks ---------------------------------------------------------------------


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Conv2d(3, 2, 1)
        self.classifier = torch.nn.Linear(2, 3)
        self.seen: list[torch.Tensor] = []

    def forward(self, pixel_values, labels=None):
        self.seen.append(pixel_values)
        logits = self.classifier(self.body(pixel_values).mean(dim=(2, 3)))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits} if loss is not None else {"logits": logits}


def _trainer(tmp_path, normalizer):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no")
    return FinetuneTrainer(
        model=_Tiny(),
        args=args,
        head_names=["classifier.weight", "classifier.bias"],
        pixel_normalizer=normalizer,
    )


def test_uint8_pixels_are_normalised_in_training_and_prediction_steps(tmp_path):
    from hf_finetune.data.transforms import PixelNormalizer

    normalizer = PixelNormalizer([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    trainer = _trainer(tmp_path, normalizer)
    pixels = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    batch = {"pixel_values": pixels, "labels": torch.tensor([0, 1, 2, 0])}
    expected = normalizer(pixels.clone())
    assert torch.equal(trainer.prepare_batch(batch)["pixel_values"], expected)
    assert batch["pixel_values"].dtype == torch.uint8  # the loader's batch is left as it was
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by train() otherwise
    trainer.training_step(trainer.model, batch)
    trainer.prediction_step(trainer.model, batch, prediction_loss_only=False)
    assert len(trainer.model.seen) == 2 and all(torch.equal(seen, expected) for seen in trainer.model.seen)
    floats = {"pixel_values": expected, "labels": batch["labels"]}
    assert trainer.normalize_pixels(floats) is floats  # float pixels (normalize_on_device off) pass through
    assert _trainer(tmp_path, None).normalize_pixels(batch) is batch


def test_ema_callback_restores_the_best_checkpoints_average_at_the_end(tmp_path):
    from types import SimpleNamespace

    from hf_finetune.training.ema import EmaCallback, WeightEma

    model = torch.nn.Linear(3, 2)
    ema = WeightEma(model, 0.5)
    best = tmp_path / "checkpoint-4"
    best.mkdir()
    ema.save(str(best))
    saved = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=5)
    assert not torch.equal(ema.state_dict()["weight"], saved["weight"])
    callback = EmaCallback(ema)
    state = SimpleNamespace(best_model_checkpoint=None)
    callback.on_train_begin(None, state, None)
    state.best_model_checkpoint = str(best)
    callback.on_save(None, state, None)
    # a callback before this one (StartingPointCallback keeping the start) may clear it at on_train_end
    state.best_model_checkpoint = None
    callback.on_train_end(SimpleNamespace(load_best_model_at_end=False), state, None, model=model)
    assert not torch.equal(ema.state_dict()["weight"], saved["weight"])  # no best-model restore: untouched
    callback.on_train_end(SimpleNamespace(load_best_model_at_end=True), state, None, model=model)
    assert all(torch.equal(v, saved[k]) for k, v in ema.state_dict().items())
