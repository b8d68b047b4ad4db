"""The private Trainer methods we still override are the ones hf_finetune.training.private_hooks lists, each with
the signature it was written against: a transformers upgrade that changes one fails here, not deep in a run."""

from __future__ import annotations

import inspect

import pytest
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
