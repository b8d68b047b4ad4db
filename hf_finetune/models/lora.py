"""LoRA fine-tuning through peft: low-rank adapters on the body, the new head trained whole.

``lora_r: N`` (N > 0) wraps the model, once it is loaded and its head mapped, in a ``peft.PeftModel``:

* **adapters** (rank ``lora_r``, scale ``lora_alpha / lora_r``, dropout ``lora_dropout``) go on the layers
  ``lora_target_modules`` names; unset, on every ``nn.Linear`` and every ungrouped ``nn.Conv2d`` of the body,
  found from the module types, not from a per-architecture list (a CNN's convolutions and, for a ViT, its
  attention and MLP projections and the patch embedding: peft's ``all-linear`` plus convolutions). Grouped
  and depthwise convolutions get none: peft cannot merge them. Layers that ``freeze_layers`` /
  ``freeze_patterns`` freeze get no adapter either, so those keys still say which part of the body stays as
  it was;
* **the head** (:func:`hf_finetune.models.heads.head_module_names`) goes into peft's ``modules_to_save``: it is
  trained whole (at ``head_lr_multiplier`` x the learning rate) and saved with the adapter;
* every other parameter is frozen by peft, and BatchNorm running statistics are frozen too (an adapter does not
  hold them, so an adapter reloaded onto the base checkpoint would otherwise see other statistics).

The output folder then holds the adapter in ``OUTPUT/adapter/`` (``adapter_config.json``,
``adapter_model.safetensors`` with the head) and, as the main ``model.safetensors``, the adapter merged into
a copy of the model (``merge_and_unload``): ``hf-finetune predict``/``eval``/``push`` and
``transformers.pipeline()`` load that as any fine-tuned model. :func:`load_lora_model` rebuilds the
adapted model from the base checkpoint and the adapter.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from hf_finetune.config.checks import check_lora_keys  # the key checks live with the config
from hf_finetune.errors import ConfigError, ModelLoadError, suggest
from hf_finetune.models.heads import head_module_names
from hf_finetune.models.loading import load_model_for_labels

__all__ = [
    "ADAPTER_DIR",
    "LoraSetup",
    "check_lora_keys",
    "default_target_modules",
    "resolve_target_modules",
    "apply_lora",
    "save_lora",
    "load_lora_model",
]

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"  # inside the output folder
_ADAPTABLE = (nn.Linear, nn.Conv2d)


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _in(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def default_target_modules(model: nn.Module, frozen: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Every ``nn.Linear`` and ungrouped ``nn.Conv2d`` of the body whose weight is not in ``frozen``."""
    head = head_module_names(model)
    return [
        name
        for name, module in model.named_modules()
        if name and _adaptable(module) and not _in(name, head) and f"{name}.weight" not in frozen
    ]


def resolve_target_modules(
    model: nn.Module, wanted: list[str], frozen: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """Full module names for ``lora_target_modules``: each entry is a module's full name or its last parts
    (``query`` matches every ``...attention.query``, as in peft). An entry that matches nothing, the head, or
    only layers LoRA cannot adapt here is a :class:`ConfigError`; matched layers that freezing keeps as they
    are get no adapter (logged)."""
    head = head_module_names(model)
    modules = dict(model.named_modules())
    names: list[str] = []
    for entry in wanted:
        matched = [n for n in modules if n and (n == entry or n.endswith("." + entry))]
        if not matched:
            leaves = {n.rsplit(".", 1)[-1] for n, m in modules.items() if n and _adaptable(m)}
            raise ConfigError(
                f"lora_target_modules: {entry!r} matches no module of {type(model).__name__}"
                f"{suggest(entry, leaves)}; expected a module name or its last parts, e.g. "
                f"{sorted(leaves)[:4]}"
            )
        if any(_in(n, head) for n in matched):
            raise ConfigError(
                f"lora_target_modules: {entry!r} matches the head ({', '.join(head)}); expected body layers: "
                "the head is trained whole and saved with the adapter"
            )
        usable = [n for n in matched if _adaptable(modules[n])]
        if not usable:
            kinds = sorted({type(modules[n]).__name__ for n in matched})
            raise ConfigError(
                f"lora_target_modules: {entry!r} matches {', '.join(kinds)} modules; expected nn.Linear or "
                "ungrouped nn.Conv2d layers (peft cannot merge adapters of grouped convolutions)"
            )
        kept = [n for n in usable if f"{n}.weight" not in frozen]
        if len(kept) < len(usable):
            logger.info(
                "lora_target_modules: %d layers matching %r are frozen by freeze_layers/freeze_patterns and "
                "get no adapter",
                len(usable) - len(kept),
                entry,
            )
        names += [n for n in kept if n not in names]
    return names


@dataclass
class LoraSetup:
    """The wrapped model and what was done to it."""

    model: Any  # a peft.PeftModel
    target_modules: list[str]
    modules_to_save: list[str]
    head_names: list[str]  # parameter names of the trained head copy inside the PeftModel
    trainable: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    trainable_count: int = 0
    total_count: int = 0
    r: int = 0
    alpha: float = 0.0
    dropout: float = 0.0

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        modules = dict(self.model.get_base_model().named_modules())
        for name in self.target_modules:
            base = getattr(modules[name], "base_layer", modules[name])
            kinds[type(base).__name__] = kinds.get(type(base).__name__, 0) + 1
        layers = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
        share = 100.0 * self.trainable_count / max(self.total_count, 1)
        return (
            f"lora: rank {self.r}, alpha {self.alpha:g}, dropout {self.dropout:g} on {len(self.target_modules)} "
            f"layers ({layers}); head trained whole and saved with the adapter: "
            f"{', '.join(self.modules_to_save)}; trainable {self.trainable_count} of {self.total_count} "
            f"parameters ({share:.2f}%)"
        )


def apply_lora(model: nn.Module, training_args, frozen: list[str] | set[str] = ()) -> LoraSetup:
    """Wrap ``model`` (loaded, head mapped) for LoRA with the keys of ``training_args``.

    ``frozen``: parameter names that freezing froze (:func:`hf_finetune.models.freezing.freeze_parameters`); their
    layers get no adapter. peft changes ``model`` in place (its layers become LoRA layers)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError(
            "lora_r: LoRA needs the peft package; install it with: pip install 'hf_finetune[lora]'"
        ) from None
    if training_args.fsdp or training_args.deepspeed or _accelerate_env_shards():
        raise ConfigError(
            f"lora_r: got {training_args.lora_r} under FSDP or DeepSpeed; expected one process or DDP "
            "(saving a merged LoRA model from sharded weights is not supported)"
        )
    frozen = set(frozen)
    head = head_module_names(model)
    if not head:
        raise ConfigError(f"lora_r: no head found in {type(model).__name__} to train with the adapter")
    if training_args.lora_target_modules:
        targets = resolve_target_modules(model, list(training_args.lora_target_modules), frozen)
    else:
        targets = default_target_modules(model, frozen)
    if not targets:
        raise ConfigError(
            f"lora_target_modules: no nn.Linear or ungrouped nn.Conv2d layer of {type(model).__name__}'s body "
            "is left for an adapter (freeze_layers/freeze_patterns froze them); expected fewer frozen layers"
        )
    r = int(training_args.lora_r)
    alpha = float(training_args.lora_alpha) if training_args.lora_alpha is not None else 2.0 * r
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=float(training_args.lora_dropout),
        target_modules=targets,
        modules_to_save=head,
        bias="none",
    )
    name_or_path = getattr(model, "name_or_path", None)
    peft_model = get_peft_model(model, config)
    if name_or_path:
        peft_model.peft_config["default"].base_model_name_or_path = str(name_or_path)
    named = list(peft_model.named_parameters())
    trainable = [n for n, p in named if p.requires_grad]
    return LoraSetup(
        model=peft_model,
        target_modules=targets,
        modules_to_save=head,
        head_names=[n for n in trainable if ".modules_to_save." in n],
        trainable=trainable,
        frozen=[n for n, p in named if not p.requires_grad],
        trainable_count=sum(p.numel() for _, p in named if p.requires_grad),
        total_count=sum(p.numel() for _, p in named),
        r=r,
        alpha=alpha,
        dropout=float(training_args.lora_dropout),
    )


def _accelerate_env_shards() -> bool:
    return any(
        os.environ.get(key, "").lower() in ("1", "true")
        for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
    )


def save_lora(peft_model, folder: str | Path, base_model_name_or_path: str | None = None) -> None:
    """Write the adapter (with the head) into ``folder/adapter/`` and the merged model into ``folder``.

    The merge is done on a copy: ``peft_model`` keeps its adapters."""
    folder = Path(folder)
    if base_model_name_or_path:
        for config in peft_model.peft_config.values():
            config.base_model_name_or_path = str(base_model_name_or_path)
    peft_model.save_pretrained(str(folder / ADAPTER_DIR))
    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.save_pretrained(str(folder))


def load_lora_model(output_dir: str | Path, base_model_name_or_path: str | None = None, **load_kwargs):
    """The adapted model of a LoRA run, rebuilt from its base checkpoint and ``OUTPUT/adapter/``.

    The base (``labels.json``'s ``base_model`` unless given) is loaded with a fresh head for the run's labels
    (:func:`hf_finetune.models.loading.load_model_for_labels`, ``label_mapping: none``): the adapter holds the trained
    head. Returns a ``peft.PeftModel`` in evaluation mode; ``load_kwargs`` go to ``load_model_for_labels``."""
    from peft import PeftModel

    out = Path(output_dir)
    adapter = out / ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"{out}: no {ADAPTER_DIR}/adapter_config.json; expected the output of a LoRA run"
        )
    info = json.loads((out / "labels.json").read_text(encoding="utf-8"))
    base = base_model_name_or_path or info["base_model"]
    loaded = load_model_for_labels(base, list(info["labels"]), label_mapping="none", **load_kwargs)
    return PeftModel.from_pretrained(loaded.model, str(adapter)).eval()
