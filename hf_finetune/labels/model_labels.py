"""A model's label names as reports show them, and which model label each class folder of the data is.

* :func:`distinct_label_names`: a model may repeat a label name (ImageNet-1k has two ``crane`` classes, a
  bird and a machine); metrics, tables and predictions need one name per row, so a repeated name gets its
  row appended (``crane [134]``, ``crane [517]``). Names that are already distinct are unchanged.
* :func:`data_to_model_rows`: ``hf-finetune eval`` of a model on data whose class names are not exactly
  the model's labels (an ImageNet checkpoint on a folder ``hotdog/``) matches them the way training's label
  mapping does (:func:`hf_finetune.labels.matching.match_labels`: whole label, synonym, plural, synset id), keeping
  only matches to a single row; classes that match no row or several are one
  :class:`~hf_finetune.errors.DataError` naming each and what it matched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from hf_finetune.errors import DataError
from hf_finetune.labels.matching import match_labels

__all__ = ["distinct_label_names", "data_to_model_rows"]

_ONE_ROW_KINDS = ("exact", "synonym", "plural", "synset")


def distinct_label_names(names: Sequence[str]) -> list[str]:
    """``names`` with each repeated name suffixed by its index: ``crane [134]``."""
    names = [str(name) for name in names]
    counts = Counter(names)
    return [f"{name} [{index}]" if counts[name] > 1 else name for index, name in enumerate(names)]


def _unmatched(match, shown_labels: Sequence[str]) -> str:
    rows = list(match.source_indices)
    if not rows:
        return f"{match.target!r} (no model label)"
    shown = ", ".join(repr(shown_labels[row]) for row in rows[:3])
    more = f", ... {len(rows) - 3} more" if len(rows) > 3 else ""
    return f"{match.target!r} ({len(rows)} model labels by {match.kind}: {shown}{more})"


def data_to_model_rows(data_labels: Sequence[str], model_labels: Sequence[str], model: str) -> list[int]:
    """The model row of each data class: its exact (or :func:`distinct_label_names`) name, else a match to
    exactly one row by name, synonym, plural or synset id. Raises :class:`DataError` naming every class
    that matches none or several."""

    shown = distinct_label_names(model_labels)
    counts = Counter(str(name) for name in model_labels)
    exact = {name: row for row, name in enumerate(shown)}
    exact.update({str(name): row for row, name in enumerate(model_labels) if counts[str(name)] == 1})
    rows: dict[str, int] = {name: exact[name] for name in data_labels if name in exact}
    rest = [name for name in data_labels if name not in rows]
    problems = []
    if rest:
        for match in match_labels(rest, list(model_labels)).matches:
            if match.kind in _ONE_ROW_KINDS and len(match.source_indices) == 1:
                rows[match.target] = match.source_indices[0]
            else:
                problems.append(_unmatched(match, shown))
    if problems:
        raise DataError(
            f"labels: {len(problems)} {'class' if len(problems) == 1 else 'classes'} of the data "
            f"{'matches' if len(problems) == 1 else 'match'} no single label of the model {model}: "
            f"{'; '.join(problems)}; name each class folder after one of the model's labels as quoted here "
            "(or a synonym of one)"
        )
    return [rows[name] for name in data_labels]
