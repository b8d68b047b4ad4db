"""Model keys: which pretrained checkpoint to fine-tune, from where, and what loading it may do.

* ``model_name_or_path``, ``model_revision``, ``cache_dir``: the checkpoint (a Hub id or a local folder);
* ``trust_remote_code``, ``allow_pickle_weights``: what loading it is allowed to run.

:class:`ModelArguments` also carries the label mapping keys (:class:`~hf_finetune.config.label_mapping.LabelMappingArguments`),
which say how the checkpoint's classifier starts the new head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_finetune.config.label_mapping import LabelMappingArguments
from hf_finetune.config.ranges import require

__all__ = ["CheckpointArguments", "ModelArguments"]


@dataclass
class CheckpointArguments:
    """Which pretrained checkpoint to fine-tune, and what loading it may run."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id (org/name) or local folder of a transformers image classifier or a timm checkpoint "
            "(config.json with 'architecture'), e.g. google/vit-base-patch16-224 or timm/resnet50.a1_in1k."
        },
    )
    model_revision: str = field(
        default="main", metadata={"help": "Branch, tag or commit of the checkpoint on the Hub."}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where downloaded checkpoints and datasets are cached."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run modelling code shipped inside the checkpoint. Off unless you trust its author; the run "
            "logs a warning when it is on."
        },
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "Load a checkpoint whose weights are only in pickle files (pytorch_model.bin, *.pt, *.pth). "
            "Off: such a checkpoint is refused, since unpickling can run code; on: they load with "
            "torch.load(weights_only=True), which still refuses anything but tensors."
        },
    )

    def check_checkpoint(self) -> None:
        require(
            self.model_name_or_path is not None and str(self.model_name_or_path).strip() != "",
            "model_name_or_path",
            self.model_name_or_path,
            "a Hub id like 'timm/resnet18.a1_in1k' or a local checkpoint folder",
        )


# The bases are listed last group first: a dataclass takes the fields of its bases in reverse order, so the
# checkpoint keys come first in --help and in the recipe-keys page.
@dataclass
class ModelArguments(LabelMappingArguments, CheckpointArguments):
    """Which pretrained checkpoint to fine-tune, and how its classifier starts the new head."""

    def __post_init__(self):
        self.check_label_mapping()
        self.check_checkpoint()
