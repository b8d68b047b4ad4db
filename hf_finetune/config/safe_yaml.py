"""Reading user YAML (recipes, label-mapping files) with bounds: no alias bombs, no repeated keys.

``yaml.safe_load`` builds aliases by reference, so a few hundred bytes of nested aliases (``&a [x, x]``,
``&b [*a, *a]``, ...) load into a small object graph that becomes gigabytes the moment it is copied,
dumped to JSON or walked. :func:`load_yaml` counts the nodes of the document *as expanded* (every alias
counted in full, in time linear in the document) before anything is built, and refuses a document past
:data:`MAX_EXPANDED_NODES` or one that refers to itself. A key given twice in one mapping is refused too
(PyYAML keeps the last silently). Errors are :class:`~hf_finetune.errors.ConfigError` naming the file.
"""

from __future__ import annotations

from typing import Any

import yaml

from hf_finetune.errors import ConfigError

__all__ = ["MAX_EXPANDED_NODES", "load_yaml"]

#: The most nodes (scalars, lists, mappings) a document may hold with its aliases expanded. A recipe has
#: a few hundred; a label mapping for ImageNet-1k a few thousand.
MAX_EXPANDED_NODES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses repeated mapping keys and documents too large once aliases expand."""

    def construct_document(self, node):
        _expanded_size(node, {}, set())
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if repeated:
                    raise _Refused(
                        f"key {key!r} is given twice in one mapping (line {key_node.start_mark.line + 1})"
                    )
        return super().construct_mapping(node, deep=deep)


class _Refused(Exception):
    """Why a document is refused (turned into a ConfigError naming the file by :func:`load_yaml`)."""


def _expanded_size(node, sizes: dict[int, int], active: set[int]) -> int:
    """Nodes under ``node`` counting each alias in full; memoised per node, so linear in the document."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in active:
        raise _Refused("an alias refers to a node that contains it (a recursive structure)")
    if isinstance(node, yaml.ScalarNode):
        return 1
    active.add(key)
    children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, active)
        if total > MAX_EXPANDED_NODES:
            raise _Refused(
                f"it expands to more than {MAX_EXPANDED_NODES:,} values once its aliases (*name) are "
                "resolved; expected a recipe of plain keys and values"
            )
    active.discard(key)
    sizes[key] = total
    return total


def load_yaml(text: str, where: str) -> Any:
    """Parse one YAML document of ``text``; ``where`` (e.g. ``"recipe recipes/x.yaml"``) starts every error.

    Raises :class:`ConfigError` for invalid YAML, a repeated key, or a document that expands past
    :data:`MAX_EXPANDED_NODES` nodes."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as err:
        raise ConfigError(f"{where}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{line}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply; expected a recipe of plain keys and values") from None
