"""Model keys: which pretrained checkpoint to fine-tune, from where, and what loading it may do.

* ``model_name_or_path``, ``model_revision``, ``cache_dir``: the checkpoint (a Hub id or a local folder);
* ``trust_remote_code``, ``allow_pickle_weights``: what loading it is allowed to run;
* ``zero_shot_templates``: the prompts whose text embeddings start a CLIP or SigLIP checkpoint's classes
  (:mod:`hf_finetune.models.zero_shot`).

:class:`ModelArguments` also carries the label mapping keys (:class:`~hf_finetune.config.label_mapping.LabelMappingArguments`),
which say how the checkpoint's classifier starts the new head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_finetune.config.label_mapping import LabelMappingArguments
from hf_finetune.config.ranges import require

__all__ = ["CheckpointArguments", "ModelArguments", "ZERO_SHOT_TEMPLATES", "ZeroShotArguments"]

# Seven of the CLIP paper's 80 ImageNet templates, those describing a plain photograph (hf_finetune.labels.prompts)
ZERO_SHOT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
)


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


@dataclass
class ZeroShotArguments:
    """How a CLIP or SigLIP checkpoint (image and text towers) starts its classes from their names."""

    zero_shot_templates: list[str] = field(
        default_factory=lambda: list(ZERO_SHOT_TEMPLATES),
        metadata={
            "help": "CLIP/SigLIP checkpoints (CLIPModel, SiglipModel with a tokenizer): each class starts from "
            "the text embedding of its name in these sentences ('{}' is the name, '_' read as a space), "
            "each embedding normalised, averaged and normalised again (the CLIP paper's prompt ensemble). "
            "label_mapping: none gives a fresh head instead."
        },
    )

    def check_zero_shot_templates(self) -> None:
        """One template given as text is a list of one; each holds exactly one ``{}``."""
        if isinstance(self.zero_shot_templates, str):
            self.zero_shot_templates = [self.zero_shot_templates]
        templates = list(self.zero_shot_templates or [])
        require(
            bool(templates),
            "zero_shot_templates",
            templates,
            "at least one template such as 'a photo of a {}.'",
        )
        for template in templates:
            ok = isinstance(template, str) and template.count("{}") == 1 == template.count(
                "{"
            ) == template.count("}")
            require(
                ok,
                "zero_shot_templates",
                template,
                "a sentence with exactly one '{}' where the class name goes",
            )


# The bases are listed last group first: a dataclass takes the fields of its bases in reverse order, so the
# checkpoint keys come first in --help and in the recipe-keys page.
@dataclass
class ModelArguments(ZeroShotArguments, LabelMappingArguments, CheckpointArguments):
    """Which pretrained checkpoint to fine-tune, and how its classifier starts the new head."""

    def __post_init__(self):
        self.check_label_mapping()
        self.check_zero_shot_templates()
        self.check_checkpoint()
