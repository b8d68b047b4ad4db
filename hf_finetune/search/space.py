"""A search space: a YAML mapping of recipe keys to ranges or choices, checked against the recipe before any
trial runs.

.. code-block:: yaml

    learning_rate: {low: 1.0e-5, high: 1.0e-1, log: true}   # a float range (log-uniform)
    head_lr_multiplier: {low: 1, high: 30}                   # a range: float or int as the key's type is
    freeze_layers: {choices: [0, 2, -1]}                     # a categorical choice
    label_smoothing_factor: {low: 0.0, high: 0.2, step: 0.05}

Every key must be a recipe key (``hf-finetune train`` knows it), not one read when the data is loaded
(:data:`DATA_KEYS`: a search loads the data once); every bound and choice must be a value the recipe
would accept for it (each is parsed with the recipe, as ``hf-finetune train RECIPE --key value`` would).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_finetune.config.parser import RecipeParser, known_keys, parse_train_args
from hf_finetune.config.safe_yaml import load_yaml
from hf_finetune.errors import ConfigError, suggest

__all__ = ["DATA_KEYS", "Param", "SearchSpace", "load_space", "value_flag"]

RANGE_KEYS = ("low", "high", "log", "step")
# Keys read when the data is loaded, which a search does once for all its trials (search.py): a trial's value of
# one of them would change nothing (a stream's shuffle buffer, the examples kept, the split), so they are refused
DATA_KEYS = (
    "dataset_name", "dataset_config_name", "train_split", "validation_split", "train_dir", "validation_dir",
    "train_file", "validation_file", "test_file", "problem_type", "label_separator", "image_column_name",
    "label_column_name", "train_val_split", "max_train_samples", "max_eval_samples", "streaming", "labels",
    "shuffle_buffer_size",
)  # fmt: skip
FORMAT = "expected {low: L, high: H[, log: true][, step: S]} or {choices: [a, b, ...]}"


@dataclass(frozen=True)
class Param:
    """One recipe key of the space: a range (``low``..``high``, ``log``, ``step``; ``integer`` as the key's type
    is) or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        """The trial's value (Optuna returns the same value when asked again in the same trial)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            step = int(self.step or 1)
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high
        )

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name}: one of {list(self.choices)}"
        scale = ", log" if self.log else ""
        step = f", step {self.step:g}" if self.step else ""
        return (
            f"{self.name}: {self.low:g} to {self.high:g}{scale}{step}{' (integer)' if self.integer else ''}"
        )


@dataclass
class SearchSpace:
    """The parameters of a search, in the order the file gives them."""

    params: list[Param] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def suggest(self, trial) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.params}

    def describe(self) -> str:
        return "; ".join(p.describe() for p in self.params)


def value_flag(name: str, value: Any) -> list[str]:
    """``--name value`` as the recipe parser reads it (booleans as true/false)."""
    text = (
        str(value).lower()
        if isinstance(value, bool)
        else repr(value)
        if isinstance(value, float)
        else str(value)
    )
    return [f"--{name}", text]


def load_space(path: str | Path, recipe_argv: list[str]) -> SearchSpace:
    """Read and check the search space file ``path`` against the recipe ``recipe_argv`` (``[RECIPE, --key value
    ...]``): every key a recipe key, every entry a well-formed range or choice list, every bound and choice a value
    the recipe accepts for its key. Raises :class:`~hf_finetune.errors.ConfigError` naming the file and key."""

    path = Path(path)
    where = f"search space {path}"
    if not path.is_file():
        raise ConfigError(f"{where}: does not exist; expected a YAML file of recipe keys and ranges")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), where)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: cannot be read as UTF-8 text ({err})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: expected a mapping of recipe keys to ranges or choices, got {data!r}")
    keys, types = set(known_keys()), _key_types()
    params = []
    for name, entry in data.items():
        name = str(name)
        if name not in keys:
            raise ConfigError(f"{where}: {name!r} is not a recipe key{suggest(name, keys)}")
        if name in DATA_KEYS:
            raise ConfigError(
                f"{where}: {name} is read when the data is loaded, once for all the trials; expected a key of the "
                "model or the training (the data is the recipe's)"
            )
        params.append(_param(name, entry, types.get(name), where))
    for param in params:
        _check_values(param, recipe_argv, where)
    return SearchSpace(params)


def _key_types() -> dict[str, Any]:
    return {action.dest: action.type for action in RecipeParser()._actions}


def _param(name: str, entry: Any, kind: Any, where: str) -> Param:
    """One entry of the file, checked for its form."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: {name}: got {entry!r}; {FORMAT}")
    unknown = [k for k in entry if k not in (*RANGE_KEYS, "choices")]
    if unknown:
        raise ConfigError(
            f"{where}: {name}: unknown field {unknown[0]!r}{suggest(str(unknown[0]), RANGE_KEYS)}; {FORMAT}"
        )
    if "choices" in entry:
        return _choices(name, entry, where)
    if "low" not in entry or "high" not in entry:
        raise ConfigError(f"{where}: {name}: a range needs both low and high; {FORMAT}")
    low, high, step = entry["low"], entry["high"], entry.get("step")
    for label, value in (("low", low), ("high", high), ("step", step)):
        if value is None and label == "step":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: {name}: {label} is {value!r}; expected a finite number")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {name}: log is {log!r}; expected true or false")
    if not low < high:
        raise ConfigError(f"{where}: {name}: low {low!r} is not below high {high!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: {name}: a log range needs low > 0, got low {low!r}")
    if step is not None and (step <= 0 or log):
        raise ConfigError(
            f"{where}: {name}: step {step!r}: expected a positive step, and no step with log: true"
        )
    integer = kind is int
    if integer and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise ConfigError(f"{where}: {name} takes integers; got low {low!r}, high {high!r}, step {step!r}")
    return Param(name, float(low), float(high), log, None if step is None else float(step), integer)


def _choices(name: str, entry: dict, where: str) -> Param:
    choices = entry["choices"]
    if len(entry) > 1:
        raise ConfigError(f"{where}: {name}: choices cannot be mixed with low/high/log/step; {FORMAT}")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: {name}: choices is {choices!r}; expected a non-empty list")
    for choice in choices:
        if choice is None or not isinstance(choice, (bool, int, float, str)):
            raise ConfigError(f"{where}: {name}: choice {choice!r}; expected a number, text, true or false")
    if len(set(map(repr, choices))) != len(choices):
        raise ConfigError(f"{where}: {name}: choices {choices!r} repeat a value")
    return Param(name, choices=tuple(choices))


def _check_values(param: Param, recipe_argv: list[str], where: str) -> None:
    """Each bound or choice parsed with the recipe, as a flag: the recipe's own checks (ranges, types, the
    checks across keys) name what is wrong."""
    if param.choices is not None:
        values = list(param.choices)
    else:
        cast = int if param.integer else float
        values = [cast(param.low), cast(param.high)]
    for value in values:
        try:
            parse_train_args([*recipe_argv, *value_flag(param.name, value)])
        except ConfigError as err:
            raise ConfigError(f"{where}: {param.name}: {value!r} is refused by the recipe: {err}") from None
