"""LoRA keys: low-rank adapters on the body instead of training it whole.

* ``lora_r``: the adapters' rank (0: LoRA off, the model itself trains);
* ``lora_alpha``, ``lora_dropout``: their scale and input dropout;
* ``lora_target_modules``: the layers that get one (unset: every adaptable layer of the body).

Applied by :mod:`hf_finetune.models.lora` (through peft). :meth:`LoraArguments.check_lora` checks these keys
alone; how they combine with freezing, BatchNorm and the feature cache is checked by
:func:`hf_finetune.config.checks.check_lora_keys`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_finetune.errors import ConfigError

__all__ = ["LoraArguments"]


@dataclass
class LoraArguments:
    """LoRA: rank-N adapters on the body's layers, the head trained whole, the base weights frozen."""

    lora_r: int = field(
        default=0,
        metadata={
            "help": "LoRA rank (peft; hf_finetune.models.lora): 0 trains the model itself; N > 0 trains rank-N adapters "
            "on the body's layers plus the whole head (modules_to_save), with the base weights and BatchNorm "
            "statistics frozen. Saves OUTPUT/adapter/ and the merged model."
        },
    )
    lora_alpha: float | None = field(
        default=None,
        metadata={
            "help": "LoRA scale numerator (updates are scaled by lora_alpha / lora_r); unset: 2 x lora_r."
        },
    )
    lora_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the input of the LoRA adapters, in [0, 1)."}
    )
    lora_target_modules: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Layers that get LoRA adapters: full module names or their last parts (e.g. query value). "
            "Unset: every nn.Linear and ungrouped nn.Conv2d of the body not frozen by freeze_layers/"
            "freeze_patterns."
        },
    )

    def check_lora(self) -> None:
        """The LoRA keys alone (any object with them may be passed: ``LoraArguments.check_lora(args)``)."""
        r = self.lora_r
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ConfigError(f"lora_r: got {r!r}; expected 0 (LoRA off) or a positive integer rank")
        alpha = self.lora_alpha
        if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
            raise ConfigError(f"lora_alpha: got {alpha!r}; expected a positive number (unset: 2 x lora_r)")
        dropout = self.lora_dropout
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ConfigError(f"lora_dropout: got {dropout!r}; expected a probability in [0, 1)")
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]
        for name in self.lora_target_modules:
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"lora_target_modules: got {name!r}; expected module names such as 'query'")
        if r == 0:
            for key in ("lora_alpha", "lora_target_modules"):
                if getattr(self, key):
                    raise ConfigError(
                        f"{key}: got {getattr(self, key)!r} but lora_r is 0 (LoRA off); expected lora_r > 0 "
                        f"to use it, or no {key}"
                    )
