"""``FinetuneTrainer``: transformers' Trainer with fine-tuning parameter groups.

* the new head learns ``head_lr_multiplier`` times faster than the pretrained body;
* no weight decay on norms, biases and other 1-D tensors (BatchNorm included, unlike Trainer's default);
* frozen parameters are left out of the optimizer (no state, no update, no gradient computed).

Everything else (devices, mixed precision, DDP/FSDP/DeepSpeed through accelerate, checkpoints, resuming,
best-model selection) is the Trainer's own.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from .heads import head_parameter_names

__all__ = ["FinetuneTrainer", "parameter_groups"]

logger = logging.getLogger(__name__)


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.endswith(".bias")


def parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    head_lr_multiplier: float = 10.0,
    head_names: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: body/head x decay/no-decay, trainable parameters only.

    Each group carries a ``name`` (``body``, ``body_no_decay``, ``head``, ``head_no_decay``) and its ``lr``.
    """
    head = set(head_names if head_names is not None else head_parameter_names(_unwrap(model)))
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        bare = name[len("module.") :] if name.startswith("module.") else name
        part = "head" if bare in head else "body"
        key = part + ("_no_decay" if _no_decay(bare, param) else "")
        if key not in groups:
            groups[key] = {
                "name": key,
                "params": [],
                "weight_decay": 0.0 if key.endswith("_no_decay") else weight_decay,
                "lr": learning_rate * (head_lr_multiplier if part == "head" else 1.0),
            }
        groups[key]["params"].append(param)
    order = ["body", "body_no_decay", "head", "head_no_decay"]
    return [groups[k] for k in order if k in groups]


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


class FinetuneTrainer(Trainer):
    """A ``transformers.Trainer`` for fine-tuning a pretrained classifier.

    ``args`` is a :class:`~hf_finetune.configs.FinetuneTrainingArguments` (plain ``TrainingArguments`` work
    too: the head multiplier then defaults to 10). ``head_names`` are the parameter names of the new head;
    by default they are found from the model (:func:`hf_finetune.heads.head_parameter_names`).
    """

    def __init__(self, *args, head_names: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_names = (
            list(head_names) if head_names is not None else head_parameter_names(_unwrap(self.model))
        )

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            multiplier = float(getattr(self.args, "head_lr_multiplier", 10.0))
            groups = parameter_groups(
                opt_model, self.args.learning_rate, self.args.weight_decay, multiplier, self.head_names
            )
            if not groups:
                raise ValueError("no trainable parameters: everything is frozen")
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k not in ("params", "model")}
            for group in groups:
                logger.info(
                    "optimizer group %-13s %4d tensors, lr %.2e, weight decay %g",
                    group["name"],
                    len(group["params"]),
                    group["lr"],
                    group["weight_decay"],
                )
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer
