"""The recipe's ``label_mapping`` value: ``auto``, ``none``, a mapping of target label to source label(s), a JSON
string of one, or a ``.yaml``/``.yml``/``.json`` file holding one, read into ``(auto, explicit mapping)``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hf_finetune.config.safe_yaml import load_yaml
from hf_finetune.errors import ConfigError

__all__ = ["parse_label_mapping"]


def parse_label_mapping(value: Any) -> tuple[bool, dict[str, Any] | None]:
    """Read the recipe's ``label_mapping`` value into ``(auto, explicit mapping)``.

    ``None``/``"auto"``/``True`` -> ``(True, None)``; ``"none"``/``"off"``/``False`` -> ``(False, None)``;
    a dict -> ``(True, dict)``; a path to a ``.yaml``/``.yml``/``.json`` file holding a dict, or a JSON
    string of a dict -> ``(True, that dict)``. Anything else raises :class:`ConfigError`.
    """
    expected = (
        "expected 'auto', 'none'/'off', a mapping of target label to source label(s), "
        "a JSON string of one, or a .yaml/.yml/.json file holding one"
    )
    if value is None or value is True:
        return True, None
    if value is False:
        return False, None
    if isinstance(value, Mapping):
        return True, _check_mapping(dict(value), value)
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(f"label_mapping: {expected}, got {value!r}")
    text = value.strip()
    word = text.casefold()
    if word in ("", "auto"):
        return True, None
    if word in ("none", "off", "false", "no"):
        return False, None
    if text.startswith("{"):
        try:
            loaded = json.loads(text, object_pairs_hook=_unique_pairs)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"label_mapping: {value!r} is not valid JSON ({exc.msg})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"label_mapping: {expected}, got {value!r}")
        return True, _check_mapping(loaded, value)
    path = Path(text).expanduser()
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise ConfigError(f"label_mapping: file {text!r} not found")
        try:
            if path.suffix.lower() == ".json":
                loaded = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_pairs)
            else:
                loaded = load_yaml(path.read_text(encoding="utf-8"), f"label_mapping: {text}")
        except ConfigError:
            raise
        except (OSError, ValueError, ImportError) as exc:
            raise ConfigError(f"label_mapping: cannot read {text!r}: {exc}") from None
        except Exception as exc:  # yaml.YAMLError
            raise ConfigError(f"label_mapping: cannot parse {text!r}: {exc}".splitlines()[0]) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"label_mapping: {text!r} must hold a mapping, got {type(loaded).__name__}")
        return True, _check_mapping(loaded, text)
    raise ConfigError(f"label_mapping: {expected}, got {value!r}")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' object hook: a key given twice is an error (JSON keeps the last silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"label_mapping: key {key!r} is given twice; expected each target label once")
        out[key] = value
    return out


def _check_mapping(mapping: dict[Any, Any], origin: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in mapping.items():
        ok = (
            val is None
            or isinstance(val, str)
            or (isinstance(val, (list, tuple)) and all(isinstance(v, str) for v in val))
        )
        if not ok:
            raise ConfigError(
                f"label_mapping ({origin!r}): value for {key!r} must be a source label, a list of them "
                f"or none, got {val!r}"
            )
        out[str(key)] = list(val) if isinstance(val, (list, tuple)) else val
    return out
