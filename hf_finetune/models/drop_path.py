"""Drop path (stochastic depth, ``drop_path_rate``): set on the config before the weights load (timm:
``model_args``, passed to ``timm.create_model``; transformers: ``config.drop_path_rate``), then checked on the
loaded modules."""

from __future__ import annotations

from typing import Any

from torch import nn

from hf_finetune.errors import ConfigError

__all__ = ["set_drop_path_rate", "drop_path_modules"]


def set_drop_path_rate(config: Any, rate: float | None, is_timm: bool, name: str) -> str | None:
    """Put ``rate`` on a checkpoint's config before its weights load; returns what was done (None: unset).

    timm: ``model_args["drop_path_rate"]`` (``timm.create_model`` builds the DropPath modules with it).
    transformers: ``config.drop_path_rate`` where the config has that field; a rate above 0 for a config
    without it is a :class:`ConfigError` (the model has no stochastic depth)."""
    if rate is None:
        return None
    if is_timm:
        model_args = dict(getattr(config, "model_args", None) or {})
        model_args["drop_path_rate"] = float(rate)
        config.model_args = model_args
        return f"timm model_args.drop_path_rate = {rate}"
    if hasattr(config, "drop_path_rate"):
        config.drop_path_rate = float(rate)
        return f"config.drop_path_rate = {rate}"
    if rate > 0:
        raise ConfigError(
            f"drop_path_rate: got {rate}; {name} ({type(config).__name__}) has no drop path (stochastic depth): "
            "leave drop_path_rate unset for this model"
        )
    return None


def drop_path_modules(model: nn.Module) -> dict[str, float]:
    """Drop-path modules of ``model`` and their drop probability (timm ``DropPath``, transformers ``*DropPath``)."""
    found = {}
    for name, module in model.named_modules():
        if type(module).__name__.endswith("DropPath") and hasattr(module, "drop_prob"):
            found[name] = float(module.drop_prob)
    return found
