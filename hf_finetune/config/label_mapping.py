"""Label mapping keys: how the new head starts from the pretrained classifier's rows.

* ``label_mapping``: which source labels each target label reuses (auto, none, a mapping or a mapping file);
* ``label_merge``: how a target built from several source rows gets its row;
* ``label_init_from_data``, ``label_bias_from_data``: rows and biases fitted to a few training images before
  training.

The mapping itself is made by :mod:`hf_finetune.labels` and applied by :mod:`hf_finetune.models.heads`; these keys
are parsed with the checkpoint's (:class:`~hf_finetune.config.model.ModelArguments`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from hf_finetune.config.ranges import require

__all__ = ["LabelMappingArguments", "LABEL_MERGES"]

LABEL_MERGES = ("lse", "balanced")


@dataclass
class LabelMappingArguments:
    """How the new head starts: classifier rows reused from the pretrained head, matched by label."""

    label_mapping: str | None = field(
        default="auto",
        metadata={
            "help": "Reuse rows of the pretrained classifier for target labels that match source labels: auto "
            "(match by name, synonym, plural, ImageNet synset, head word and WordNet definition), none (a "
            "fresh head), a mapping {target: source label | [source labels or synsets] | none} that wins "
            "over automatic matching, or a path to a YAML/JSON file holding such a mapping."
        },
    )
    label_merge: str = field(
        default="lse",
        metadata={
            "help": "How a target that maps to several source rows gets its row: lse (mean row, bias + log n: "
            "approximates the log-sum-exp, i.e. the probability of the union) or balanced (mean row: "
            "approximates log-mean-exp, removing the source's prior for big groups).",
            "choices": list(LABEL_MERGES),
        },
    )

    label_init_from_data: bool = field(
        default=False,
        metadata={
            "help": "Before training, let the pretrained model look at up to 32 training images per class: "
            "targets no name matched start from the source rows it predicts for them, and targets built from "
            "several rows get them weighted by those predictions (Co-Tuning-style; reported as kind 'data')."
        },
    )
    label_bias_from_data: bool = field(
        default=True,
        metadata={
            "help": "When some rows are reused, shift the head's biases before training so that its predictions "
            "on up to 32 training images per class fit their labels (maximum likelihood over the biases alone; "
            "weights untouched): the source's class prior (e.g. the 999 ImageNet classes behind a complement "
            "like not_hotdog) gives way to the data's. Reported in label_mapping.json; false keeps the rows' "
            "own biases."
        },
    )

    def check_label_mapping(self) -> None:
        """A mapping given as a dict (from Python) is kept as its JSON text, as the parser gives it."""
        if isinstance(self.label_mapping, dict):
            self.label_mapping = json.dumps(self.label_mapping)
        require(self.label_merge in LABEL_MERGES, "label_merge", self.label_merge, "lse or balanced")
