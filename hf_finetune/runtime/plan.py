"""The run plan: every ``auto`` value and derived setting a run resolves, with the reason, recorded once.

A parsed config is never changed to hold a resolved value. The run is built into a :class:`RunPlan`, which
records each choice (key, value, why); the plan is logged at the start of the run and saved with it
(``run_plan.json`` in the output folder), so what ``auto`` became is on disk next to the model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PLAN_NAME", "Choice", "RunPlan"]

logger = logging.getLogger("hf_finetune")

PLAN_NAME = "run_plan.json"


@dataclass(frozen=True)
class Choice:
    """One resolved setting: the key, the value the run uses, and why."""

    key: str
    value: Any
    why: str


@dataclass
class RunPlan:
    """The choices a run made, in the order it made them."""

    choices: dict[str, Choice] = field(default_factory=dict)

    def record(self, key: str, value: Any, why: str) -> Any:
        """Record that ``key`` is ``value`` for this run because ``why``; returns ``value``."""
        self.choices[key] = Choice(key, value, why)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        choice = self.choices.get(key)
        return default if choice is None else choice.value

    def __contains__(self, key: str) -> bool:
        return key in self.choices

    def describe(self, key: str) -> str:
        """``value (why)`` for ``key``, a boolean shown as on or off (``on (the CPU has AVX512-BF16/AMX)``)."""
        choice = self.choices[key]
        return f"{_shown(choice.value)} ({choice.why})"

    def lines(self, keys: Iterable[str] | None = None) -> list[str]:
        """One ``key: value (why)`` line per choice (of ``keys``, when given)."""
        keys = list(self.choices) if keys is None else [k for k in keys if k in self.choices]
        return [f"{key}: {self.describe(key)}" for key in keys]

    def log(self, keys: Iterable[str] | None = None) -> None:
        """Log each choice (of ``keys``, when given) in one line."""
        for line in self.lines(keys):
            logger.info("auto %s", line)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {c.key: {"value": _jsonable(c.value), "why": c.why} for c in self.choices.values()}

    def save(self, output_dir: str | Path) -> Path:
        """Write ``run_plan.json`` into ``output_dir`` (through a temporary name, so it is whole or absent)."""
        path = Path(output_dir) / PLAN_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        partial.replace(path)
        return path


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
