"""The result of label matching: one :class:`LabelMatch` per target label (which pretrained rows start it, and
how they were found), gathered in a :class:`LabelMappingReport` that reads and writes JSON and prints a table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MATCH_KINDS", "LabelMatch", "LabelMappingReport"]

MATCH_KINDS = ("explicit", "exact", "synonym", "plural", "synset", "head", "definition", "complement", "none")


@dataclass
class LabelMatch:
    """How one target label starts: from ``source_indices`` rows, or fresh when ``kind == "none"``."""

    target: str
    source_indices: list[int]
    source_names: list[str]
    kind: str
    candidates: list[int] = field(default_factory=list)
    note: str = ""


@dataclass
class LabelMappingReport:
    """One :class:`LabelMatch` per target label, in target order."""

    matches: list[LabelMatch]
    num_source_labels: int
    imagenet_offset: int | None
    bias_calibration: dict[str, Any] | None = None  # label_bias_from_data (hf_finetune.models.head_init)
    label_set: str | None = None  # the ImageNet set recognised (hf_finetune.labels.label_sets)

    @property
    def reused(self) -> list[LabelMatch]:
        """The matches that start from pretrained rows."""
        return [m for m in self.matches if m.kind != "none"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return {
            "num_source_labels": self.num_source_labels,
            "imagenet_offset": self.imagenet_offset,
            **({"label_set": self.label_set} if self.label_set is not None else {}),
            "matches": [asdict(m) for m in self.matches],
            **({"bias_calibration": self.bias_calibration} if self.bias_calibration is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelMappingReport:
        matches = [
            LabelMatch(
                target=str(m["target"]),
                source_indices=[int(i) for i in m.get("source_indices", [])],
                source_names=[str(n) for n in m.get("source_names", [])],
                kind=str(m["kind"]),
                candidates=[int(i) for i in m.get("candidates", [])],
                note=str(m.get("note", "")),
            )
            for m in d["matches"]
        ]
        offset = d.get("imagenet_offset")
        return cls(
            matches=matches,
            num_source_labels=int(d["num_source_labels"]),
            imagenet_offset=None if offset is None else int(offset),
            bias_calibration=d.get("bias_calibration"),
            label_set=d.get("label_set"),
        )

    def table(self, max_sources: int = 3) -> str:
        """An aligned text table: target | kind | source rows (``index: name``, ``... +N more``)."""
        rows = [("target", "kind", "source rows")]
        for m in self.matches:
            shown = [f"{i}: {n}" for i, n in zip(m.source_indices, m.source_names, strict=False)][
                :max_sources
            ]
            extra = len(m.source_indices) - len(shown)
            text = "; ".join(shown) + (f"; ... +{extra} more" if extra > 0 else "")
            rows.append((m.target, m.kind, text or (m.note if m.kind == "text" else "") or "-"))
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines = [f"{a:<{w0}} | {b:<{w1}} | {c}".rstrip() for a, b, c in rows]
        lines.insert(1, f"{'-' * w0}-+-{'-' * w1}-+-{'-' * 11}")
        if self.bias_calibration is not None:
            c = self.bias_calibration
            shifts = ", ".join(f"{k} {v:+.2f}" for k, v in list(c["shift"].items())[:8])
            more = len(c["shift"]) - 8
            lines.append(
                f"biases fitted on {c['images']} training images (loss {c['loss_before']:.3f} -> "
                f"{c['loss_after']:.3f}): {shifts}" + (f", ... +{more} more" if more > 0 else "")
            )
        return "\n".join(lines)
