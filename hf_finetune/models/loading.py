"""Loading a pretrained image classifier for a new label set.

transformers-native checkpoints and timm checkpoints (through transformers' ``TimmWrapper``) both load
through ``AutoModelForImageClassification``, from a Hub id or a local folder. When the label set changes,
the output layer is re-initialised (``ignore_mismatched_sizes=True``), and the tensors that were
re-initialised are reported. A label set with the same number of classes but other names is re-initialised
too: a head is never kept silently for labels it was not trained on.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from hf_finetune.data.multi_label import MULTI_LABEL_PROBLEM_TYPE
from hf_finetune.errors import ConfigError, DataError, ModelLoadError
from hf_finetune.labels.mapping_file import parse_label_mapping
from hf_finetune.labels.matching import match_labels
from hf_finetune.models.backbone_only import (
    classifier_config_for_tower,
    is_vision_tower,
    load_vision_tower,
    new_head_reason,
)
from hf_finetune.models.drop_path import drop_path_modules, set_drop_path_rate
from hf_finetune.models.freezing import set_wrap_classes
from hf_finetune.models.heads import (
    copy_source_rows,
    head_parameter_names,
    reinitialize_head,
    source_head_tensors,
)
from hf_finetune.models.weights_check import check_safetensors_files

__all__ = [
    "LoadedModel",
    "load_source_config",
    "source_label_names",
    "load_model_for_labels",
    "load_image_processor",
    "is_timm_config",
]

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to fine-tune, with what a user needs to know about how it was made."""

    model: Any  # transformers PreTrainedModel
    processor: Any  # transformers image processor (TimmWrapperImageProcessor for timm checkpoints)
    source_labels: list[str]  # the checkpoint's own label names, index = row of its classifier
    labels: list[str]  # the target labels, index = row of the new classifier
    reinitialized: list[str] = field(default_factory=list)  # tensor names re-initialised (with shapes below)
    reinitialized_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    is_timm: bool = False
    name_or_path: str = ""
    mapping: Any = None  # hf_finetune.labels.matching.LabelMappingReport when label mapping ran
    source_head: dict[str, Any] | None = None  # the checkpoint's own head tensors, when they were needed
    new_head: str | None = None  # why the head is new: a backbone-only checkpoint (models/backbone_only.py)

    def describe(self) -> str:
        origin = "timm (via TimmWrapper)" if self.is_timm else "transformers"
        source = "no classification head" if self.new_head else f"{len(self.source_labels)} source labels"
        lines = [
            f"model {self.name_or_path}: {type(self.model).__name__}, {origin}, "
            f"{source} -> {len(self.labels)} target labels"
        ]
        if self.new_head:
            lines.append(f"head: new; {self.new_head}")
        if self.reinitialized:
            shapes = ", ".join(
                f"{n} {list(self.reinitialized_shapes.get(n, ()))}" for n in self.reinitialized
            )
            lines.append(f"re-initialised tensors: {shapes}")
        else:
            lines.append("re-initialised tensors: none (the target labels are the checkpoint's own labels)")
        if self.mapping is not None:
            reused = self.mapping.reused
            lines.append(
                f"classifier rows reused from the source: {len(reused)} of {len(self.labels)} target labels "
                f"({', '.join(m.target for m in reused[:8])}{' ...' if len(reused) > 8 else ''})"
                if reused
                else "classifier rows reused from the source: none (no target label matched a source label)"
            )
        return "\n".join(lines)


def is_timm_config(config) -> bool:
    return getattr(config, "model_type", None) == "timm_wrapper"


def _looks_like_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file()


def load_source_config(
    model_name_or_path: str,
    revision: str = "main",
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
    token: str | None = None,
):
    """Load the checkpoint's config, repairing what real checkpoints get wrong.

    * A timm ``config.json`` whose ``model_args`` repeats ``num_classes`` (exactly what
      ``timm.models.save_for_hf`` writes) makes TimmWrapper call ``timm.create_model`` with two
      ``num_classes``; the duplicate is dropped here (the top-level ``num_classes`` is the truth).
    * timm ImageNet checkpoints without ``label_names`` get timm's ImageNet names (TimmWrapperConfig does it
      through ``timm.data.ImageNetInfo``).
    """

    path = Path(model_name_or_path).expanduser()
    local = path.exists()
    if local and not path.is_dir():
        raise ModelLoadError(
            f"model_name_or_path: {model_name_or_path} is a file; expected a checkpoint folder holding config.json"
        )
    if local and not _looks_like_checkpoint(path):
        raise ModelLoadError(
            f"model_name_or_path: {model_name_or_path} has no config.json; expected a transformers or timm checkpoint folder"
        )
    if local:
        check_safetensors_files(path)  # a truncated or empty weights file is one line, before any loading
    if not local and (model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1):
        raise ModelLoadError(
            f"model_name_or_path: {model_name_or_path} does not exist; expected a checkpoint folder"
        )
    try:
        config = AutoConfig.from_pretrained(
            str(path) if local else model_name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            trust_remote_code=trust_remote_code,
            token=token,
        )
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"model_name_or_path: cannot load {model_name_or_path!r} as a transformers or timm checkpoint ({first})"
        ) from None
    if is_timm_config(config):
        model_args = dict(getattr(config, "model_args", None) or {})
        if "num_classes" in model_args:
            model_args.pop("num_classes")
            config.model_args = model_args or None
            logger.info(
                "dropped the duplicate model_args.num_classes of the timm config (save_for_hf writes it)"
            )
    else:
        # a vision tower (CLIPVisionModel) loads as the family's classifier (CLIPForImageClassification)
        config = classifier_config_for_tower(config) or config
        if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
            raise ModelLoadError(
                f"model_name_or_path: {model_name_or_path} is a {config.model_type!r} checkpoint, which "
                "transformers cannot load as an image classifier; expected an image classification "
                "checkpoint (e.g. vit, convnext, resnet, mobilenet_v2) or a timm one"
            )
    return config


def source_label_names(config) -> list[str]:
    """The checkpoint's label names, index = classifier row (``LABEL_i`` where it has none)."""
    id2label = getattr(config, "id2label", None) or {}
    num = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(num)]


def load_image_processor(
    model_name_or_path: str, revision: str = "main", cache_dir: str | None = None, token: str | None = None
):
    """The checkpoint's image processor; ImageNet defaults (224 px, ImageNet mean/std) with a warning if none."""

    try:
        return AutoImageProcessor.from_pretrained(
            model_name_or_path, revision=revision, cache_dir=cache_dir, token=token
        )
    except (OSError, ValueError, KeyError) as err:
        from transformers import ViTImageProcessor

        logger.warning(
            "%s has no usable image processor (%s); using ImageNet defaults: 224 px, ImageNet mean/std",
            model_name_or_path,
            str(err).splitlines()[0] if str(err) else type(err).__name__,
        )
        return ViTImageProcessor(
            size={"height": 224, "width": 224},
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )


PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _pickle_refusal(model_name_or_path: str) -> str:
    return (
        f"model_name_or_path: {model_name_or_path} has its weights only in pickle files, which can run code when "
        "loaded; expected model.safetensors: convert them, or set allow_pickle_weights: true to load them "
        "with torch.load(weights_only=True)"
    )


def _check_weight_format(model_name_or_path: str, allow_pickle_weights: bool) -> None:
    """A local checkpoint with pickle weights and no safetensors is refused unless pickles are allowed (a Hub
    checkpoint is refused by ``use_safetensors=True`` when it has no safetensors file)."""
    path = Path(model_name_or_path).expanduser()
    if allow_pickle_weights or not path.is_dir():
        return
    names = [p.name for p in path.iterdir() if p.is_file()]
    if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        return
    if any(n.endswith(PICKLE_WEIGHT_SUFFIXES) and n != "training_args.bin" for n in names):
        raise ModelLoadError(_pickle_refusal(model_name_or_path))


def load_model_for_labels(
    model_name_or_path: str,
    labels: list[str],
    revision: str = "main",
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
    token: str | None = None,
    label_mapping: Any = "auto",
    label_merge: str = "lse",
    keep_source_head: bool = False,
    allow_pickle_weights: bool = False,
    drop_path_rate: float | None = None,
    multi_label: bool = False,
) -> LoadedModel:
    """Load ``model_name_or_path`` with an output layer for ``labels``.

    The body is copied whole; the head is kept only when ``labels`` are exactly the checkpoint's labels in
    the same order. Otherwise it is re-initialised as the model initialises its head, and the names and shapes
    of the re-initialised tensors are in the returned :class:`LoadedModel`. Then, unless ``label_mapping`` is
    ``"none"``, target labels that match source labels (:func:`hf_finetune.labels.matching.match_labels`; an explicit
    ``{target: source label(s)}`` mapping wins) start from the source classifier's rows
    (:func:`hf_finetune.models.heads.copy_source_rows`); the report is ``LoadedModel.mapping``.

    ``multi_label``: the model scores each label on its own (``config.problem_type =
    "multi_label_classification"``: sigmoid outputs, binary cross-entropy); a single label is then allowed.
    """

    _check_labels(labels, multi_label)
    source = _Source(
        model_name_or_path,
        revision,
        cache_dir,
        trust_remote_code,
        token or os.environ.get("HF_TOKEN") or None,
    )
    # The checkpoint's config and labels; the weights' format is checked before any weight is read
    config = load_source_config(model_name_or_path, revision, cache_dir, trust_remote_code, source.token)
    _check_weight_format(model_name_or_path, allow_pickle_weights)
    source.use_safetensors = None if allow_pickle_weights else True
    source_labels = source_label_names(config)
    is_timm = is_timm_config(config)
    new_head = new_head_reason(config, model_name_or_path)  # a backbone-only checkpoint: no rows to map
    same_labels = list(labels) == source_labels and new_head is None
    source_config = copy.deepcopy(config)
    # Which target labels start from which source rows
    mapping = None if new_head else _match_to_source(labels, source_labels, label_mapping, same_labels)
    # The model, with a head for the target labels
    if not same_labels:
        _set_target_labels(config, labels, is_timm)
    _set_problem_type(config, multi_label)
    drop_path_set = set_drop_path_rate(config, drop_path_rate, is_timm, model_name_or_path)
    model, info = _from_pretrained(source, config, ignore_mismatched_sizes=not same_labels)
    _load_tower(model, info, source, config, new_head)  # a CLIPVisionModel's tensors into the classifier
    if drop_path_set is not None:
        _check_drop_path(model, model_name_or_path, drop_path_rate, drop_path_set)
    reinitialized = [] if same_labels else _reinitialized_head(model, info, len(labels))
    # The source head's rows copied into the new head for the matched labels
    source_head = None
    if (mapping is not None and mapping.reused) or (keep_source_head and not same_labels and not new_head):
        source_head = _source_head(source, source_config, len(source_labels))
        _copy_matched_rows(model, source_head, mapping, label_merge)
    set_wrap_classes(model)  # FSDP auto-wrap by block class (recipes/accelerate_configs/fsdp.yaml)
    state = dict(model.named_parameters())
    shapes = {name: tuple(state[name].shape) for name in reinitialized if name in state}
    processor = load_image_processor(
        model_name_or_path, revision=revision, cache_dir=cache_dir, token=source.token
    )
    return LoadedModel(
        model=model,
        processor=processor,
        source_labels=source_labels,
        labels=list(labels),
        reinitialized=reinitialized,
        reinitialized_shapes=shapes,
        is_timm=is_timm,
        name_or_path=str(model_name_or_path),
        mapping=mapping,
        source_head=source_head if keep_source_head else None,
        new_head=new_head,
    )


@dataclass
class _Source:
    """Where the checkpoint's weights come from, as ``from_pretrained`` is told."""

    name_or_path: str
    revision: str
    cache_dir: str | None
    trust_remote_code: bool
    token: str | None
    use_safetensors: bool | None = True

    def tower_kwargs(self) -> dict[str, Any]:
        return dict(
            revision=self.revision,
            cache_dir=self.cache_dir,
            token=self.token,
            use_safetensors=self.use_safetensors,
        )

    def from_pretrained(self, config, **kwargs):
        return AutoModelForImageClassification.from_pretrained(
            self.name_or_path,
            config=config,
            revision=self.revision,
            cache_dir=self.cache_dir,
            trust_remote_code=self.trust_remote_code,
            token=self.token,
            **kwargs,
            use_safetensors=self.use_safetensors,
        )


def _check_labels(labels: list[str], multi_label: bool = False) -> None:
    if not labels:
        raise ModelLoadError("labels: got an empty label set; expected at least one class name")
    if (
        len(labels) == 1 and not multi_label
    ):  # transformers would make one output a regression (MSE loss, raw scores)
        raise DataError(
            f"labels: the data has a single class {labels[0]!r}; a classifier needs at least two: add a "
            "folder (or rows) of images for each other class"
        )
    if len(set(labels)) != len(labels):
        raise ModelLoadError(f"labels: duplicate class names in {labels}")


def _match_to_source(labels, source_labels: list[str], label_mapping: Any, same_labels: bool):
    """The label mapping report (:func:`hf_finetune.labels.matching.match_labels`), or None when it does not run."""
    auto, explicit = parse_label_mapping(label_mapping)
    if same_labels or not (auto or explicit):
        return None
    return match_labels(list(labels), source_labels, explicit, auto)


def _set_target_labels(config, labels: list[str], is_timm: bool) -> None:
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    if is_timm:  # TimmWrapperConfig saves label_names (not id2label): keep them in step
        config.label_names = list(labels)


def _set_problem_type(config, multi_label: bool) -> None:
    """Sigmoid outputs and BCE for multi-label data; a multi-label checkpoint fine-tuned on single labels is
    made single-label."""
    if multi_label:
        config.problem_type = MULTI_LABEL_PROBLEM_TYPE
    elif config.problem_type == MULTI_LABEL_PROBLEM_TYPE:
        config.problem_type = "single_label_classification"


def _from_pretrained(source: _Source, config, ignore_mismatched_sizes: bool):
    """The model and transformers' loading info; a failure is one :class:`~hf_finetune.errors.ModelLoadError`."""
    name = source.name_or_path
    try:
        return source.from_pretrained(
            config, ignore_mismatched_sizes=ignore_mismatched_sizes, output_loading_info=True
        )
    except pickle.UnpicklingError as err:  # allow_pickle_weights, and the pickle holds more than tensors
        refused = next((line for line in str(err).splitlines() if "Unsupported global" in line), "")
        raise ModelLoadError(
            f"model_name_or_path: cannot load the weights of {name!r}: its pickle holds objects "
            f"other than tensors, refused by torch.load(weights_only=True) ({refused.strip()})"
        ) from None
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if source.use_safetensors and "safetensors" in first.lower():
            raise ModelLoadError(_pickle_refusal(name)) from None
        raise ModelLoadError(f"model_name_or_path: cannot load the weights of {name!r} ({first})") from None


def _load_tower(model, info: dict[str, Any], source: _Source, config, new_head: str | None) -> None:
    """A vision tower checkpoint: its tensors go into the classifier's tower (the names no longer missing)."""
    if not (new_head and is_vision_tower(config)):
        return
    loaded = load_vision_tower(model, source.name_or_path, **source.tower_kwargs())
    info["missing_keys"] = [k for k in info.get("missing_keys", []) if k not in loaded]


def _check_drop_path(model, model_name_or_path: str, drop_path_rate: float, drop_path_set: str) -> None:
    """``drop_path_rate`` built drop-path modules with the rate (else a model without stochastic depth)."""
    rates = drop_path_modules(model)
    if drop_path_rate > 0 and not any(r > 0 for r in rates.values()):
        raise ConfigError(
            f"drop_path_rate: got {drop_path_rate}; {model_name_or_path} built no drop-path module with it "
            f"({drop_path_set}): this model has no stochastic depth; leave drop_path_rate unset"
        )
    logger.info(
        "drop_path_rate %s (%s): %d drop-path modules, drop probability %.3f to %.3f",
        drop_path_rate,
        drop_path_set,
        len(rates),
        min(rates.values(), default=0.0),
        max(rates.values(), default=0.0),
    )


def _reinitialized_head(model, info: dict[str, Any], num_labels: int) -> list[str]:
    """The names of the head tensors re-initialised for other labels (warns of other weights missing)."""
    mismatched = sorted(str(item[0]) for item in info.get("mismatched_keys", []))
    missing = sorted(str(k) for k in info.get("missing_keys", []))
    heads = head_parameter_names(model, num_labels)
    if mismatched:
        reinitialized = mismatched
    else:
        # Same number of classes, other names: the shapes matched, so the old head was loaded. It
        # belongs to other classes: re-initialise it explicitly.
        reinitialized = reinitialize_head(model, num_labels)
    extra_missing = [k for k in missing if k not in heads and k not in reinitialized]
    if extra_missing:
        logger.warning(
            "weights missing from the checkpoint, freshly initialised: %s", ", ".join(extra_missing)
        )
    return reinitialized


def _source_head(source: _Source, source_config, num_source_labels: int) -> dict[str, Any]:
    """The source head: load the checkpoint as it is, keep its head tensors, drop the rest."""
    source_model = source.from_pretrained(source_config)
    head = source_head_tensors(source_model, num_source_labels)
    del source_model
    return head


def _copy_matched_rows(model, source_head: dict[str, Any], mapping, label_merge: str) -> None:
    matches = mapping.matches if mapping is not None else []
    rows = [(t, list(m.source_indices)) for t, m in enumerate(matches) if m.source_indices]
    if rows:
        copy_source_rows(model, source_head, rows, merge=label_merge)
