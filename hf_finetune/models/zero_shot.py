"""Zero-shot heads for CLIP and SigLIP: a dual-encoder checkpoint becomes an image classifier whose classes start
from the text embeddings of their names.

For a ``CLIPModel`` or ``SiglipModel`` checkpoint with its tokenizer, each target class ``c`` gets the prompt
ensemble of the CLIP paper: its name in every template (``a photo of a {}.``), each sentence's text embedding
L2-normalised, the mean normalised again, ``t_c``. The zero-shot classifier is then

    CLIP:    z_c = s * <t_c, P h / |P h|>            (softmax over classes)
    SigLIP:  z_c = s * <t_c, h / |h|> + b            (a sigmoid per class)

where ``h`` is the image tower's pooled feature (CLIP: the final LayerNorm of the class token; SigLIP: the
attention-pooling head), ``P`` CLIP's ``visual_projection``, ``s = exp(logit_scale)`` and ``b`` SigLIP's
``logit_bias``. The image tower is converted to timm's ``VisionTransformer`` (CLIP: class token, pre-norm,
QuickGELU; SigLIP: no class token, ``global_pool='map'``), which pools exactly as the contrastive embedding
does, and saved through transformers' ``TimmWrapper``, so ``pipeline("image-classification")`` loads it without
remote code. Its head is the linear layer ``W = s * T P`` (``T`` the rows ``t_c``; SigLIP has no ``P``), bias
``b`` (0 for CLIP).

What a linear head cannot carry is the division by ``|P h|``: the saved classifier's logits are
``|P h| * (z - b) + b``, the zero-shot logits with their distance from ``b`` multiplied by a positive factor
per image. The top-1 class is the same for every image (and so is every ranking); the scores are not: CLIP's
softmax is taken at temperature ``1 / |P h|`` and SigLIP's sigmoids move with it. timm's ViT has no layer
between the pooled feature and the head that could normalise it (``fc_norm`` is a LayerNorm that replaces the
final norm), so the saved model trains from this head (a run divides it by the training images' mean ``|P h|``,
:func:`scale_to_training_images`) and :func:`zero_shot_logits` gives the zero-shot scores exactly (within 1e-5 of
transformers' ``zero-shot-image-classification`` pipeline) from the same model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hf_finetune.data.transforms import data_config_from_processor
from hf_finetune.errors import ModelLoadError
from hf_finetune.labels.mapping_file import parse_label_mapping
from hf_finetune.labels.matching import _mapping_targets
from hf_finetune.labels.prompts import DEFAULT_TEMPLATES, prompts_for
from hf_finetune.labels.report import LabelMappingReport, LabelMatch
from hf_finetune.models.drop_path import set_drop_path_rate
from hf_finetune.models.head_init import _batches, _per_class_subset
from hf_finetune.models.loading import LoadedModel, load_image_processor, load_source_config
from hf_finetune.models.zero_shot_timm import ZERO_SHOT_MODELS, timm_vision_tower

__all__ = [
    "ZERO_SHOT_MODELS",
    "ZeroShotHead",
    "class_text_embeddings",
    "create_zero_shot_head",
    "is_zero_shot_checkpoint",
    "load_zero_shot_model",
    "timm_vision_tower",
    "scale_to_training_images",
    "zero_shot_logits",
    "zero_shot_mapping",
]

logger = logging.getLogger(__name__)


def is_zero_shot_checkpoint(config: Any) -> bool:
    """A full CLIP or SigLIP dual encoder (``CLIPModel``/``SiglipModel``), not a classifier or a vision tower."""
    entry = ZERO_SHOT_MODELS.get(getattr(config, "model_type", None))
    return entry is not None and entry[0] in (getattr(config, "architectures", None) or [])


@dataclass
class ZeroShotHead:
    """A classifier made from a dual encoder: the timm image classifier and how its head was made."""

    model: Any  # transformers TimmWrapperForImageClassification
    processor: (
        Any  # its TimmWrapperImageProcessor (the checkpoint's preprocessing, as pipeline() reads it back)
    )
    text_embeddings: torch.Tensor  # [classes, embedding], each row of norm 1 (0 for a class left fresh)
    projection: torch.Tensor | None  # CLIP's visual_projection [embedding, width]; None for SigLIP
    logit_scale: float  # exp(logit_scale)
    logit_bias: float  # SigLIP's logit_bias; 0 for CLIP
    model_type: str
    report: LabelMappingReport


def _text_features(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``get_text_features`` as a tensor (transformers 5 returns an output whose pooler_output holds it)."""
    out = model.get_text_features(**inputs)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def class_text_embeddings(
    model: Any,
    tokenizer: Any,
    names: Sequence[Sequence[str]],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 256,
) -> torch.Tensor:
    """One unit row per class: the CLIP paper's prompt ensemble over ``templates`` and the class's ``names``
    (each sentence's text embedding normalised, averaged, normalised again). A class without names gets a row of
    zeros. Sentences are tokenised as transformers' ``zero-shot-image-classification`` pipeline does (SigLIP:
    padded to 64 tokens, which its last-token pooling needs)."""
    siglip = "siglip" in model.config.model_type
    kwargs = {"padding": "max_length", "max_length": 64, "truncation": True} if siglip else {"padding": True}
    sentences = [[s for name in class_names for s in prompts_for(name, templates)] for class_names in names]
    flat = [s for group in sentences for s in group]
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in range(0, len(flat), batch_size):
            tokens = tokenizer(flat[start : start + batch_size], return_tensors="pt", **kwargs)
            inputs = {k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            features = _text_features(model, inputs).double()
            chunks.append(features / features.norm(dim=-1, keepdim=True))
    finally:
        model.train(was_training)
    embedded = torch.cat(chunks) if chunks else torch.zeros(0, 1, dtype=torch.float64)
    rows, start = [], 0
    for group in sentences:
        if not group:
            rows.append(torch.zeros(embedded.shape[1], dtype=torch.float64))
            continue
        mean = embedded[start : start + len(group)].mean(0)
        rows.append(mean / mean.norm())
        start += len(group)
    return torch.stack(rows)


def _timm_classifier(
    model: Any, labels: Sequence[str], processor: Any, multi_label: bool, drop_path_rate: float | None = None
) -> tuple[Any, Any]:
    """A ``TimmWrapperForImageClassification`` holding the converted image tower, with a head for ``labels``, and
    its ``TimmWrapperImageProcessor``: ``pipeline()`` preprocesses a timm folder from ``config.pretrained_cfg``,
    which is the checkpoint's own processor in timm's terms (:func:`~hf_finetune.data.transforms.data_config_from_processor`)."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperImageProcessor

    architecture, model_args, state = timm_vision_tower(model)
    data_config = data_config_from_processor(processor)
    pretrained_cfg = {k: data_config[k] for k in ("input_size", "interpolation", "crop_pct", "crop_mode")}
    pretrained_cfg.update(
        mean=list(data_config["mean"]),
        std=list(data_config["std"]),
        input_size=list(data_config["input_size"]),
    )
    pretrained_cfg["classifier"] = "head"
    config = TimmWrapperConfig(
        architecture=architecture,
        model_args=model_args,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        pretrained_cfg=pretrained_cfg,
    )
    config.label_names = list(labels)
    set_drop_path_rate(config, drop_path_rate, True, architecture)
    if multi_label:
        config.problem_type = "multi_label_classification"
    classifier = TimmWrapperForImageClassification(config).eval()
    missing, unexpected = classifier.timm_model.load_state_dict(state, strict=False)
    left = sorted(set(missing) - {"head.weight", "head.bias"}) + sorted(unexpected)
    if left:
        raise ModelLoadError(
            f"model_name_or_path: the image tower did not convert to timm ({', '.join(left[:4])})"
        )
    return classifier, TimmWrapperImageProcessor(pretrained_cfg=pretrained_cfg, architecture=architecture)


def _class_names(labels: Sequence[str], label_mapping: Any) -> list[list[str]]:
    """The names whose prompts start each class: its own, or the explicit mapping's (a name, a list, none); a key
    that names no target label is one :class:`~hf_finetune.errors.ConfigError`, as for any checkpoint."""
    _auto, explicit = parse_label_mapping(label_mapping)
    given = {pos: value for pos, (_key, value) in _mapping_targets(explicit or {}, list(labels)).items()}
    names = []
    for pos, label in enumerate(labels):
        value = given.get(pos, label)
        names.append([] if value is None else [value] if isinstance(value, str) else [str(v) for v in value])
    return names


def _report(labels: Sequence[str], names: list[list[str]], templates: Sequence[str]) -> LabelMappingReport:
    matches = []
    for label, class_names in zip(labels, names, strict=True):
        if not class_names:
            matches.append(LabelMatch(label, [], [], "none", note="explicit: none (a fresh row)"))
            continue
        prompts = prompts_for(class_names[0], templates[:1])[0]
        count = len(class_names) * len(templates)
        note = f"text: {prompts!r}" + (f" and {count - 1} more prompts" if count > 1 else "")
        matches.append(LabelMatch(label, [], [], "text", note=note))
    return LabelMappingReport(matches=matches, num_source_labels=0, imagenet_offset=None)


def create_zero_shot_head(
    model: Any,
    tokenizer: Any,
    processor: Any,
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    label_mapping: Any = "auto",
    multi_label: bool = False,
    drop_path_rate: float | None = None,
) -> ZeroShotHead:
    """The image classifier for ``labels`` made from a CLIP or SigLIP dual encoder ``model``.

    Args:
        model: a loaded ``CLIPModel`` or ``SiglipModel`` (image and text towers).
        tokenizer: its tokenizer (``AutoTokenizer.from_pretrained`` of the checkpoint).
        processor: its image processor (its geometry, interpolation and mean/std become the timm
            ``pretrained_cfg`` that ``pipeline()`` preprocesses with).
        labels: the target class names, in head order; ``_`` in a name reads as a space in the prompts.
        templates: sentences with one ``{}`` for the name (the recipe key ``zero_shot_templates``).
        label_mapping: the recipe's ``label_mapping``; an explicit ``{target: name | [names] | none}`` gives the
            names whose prompts start the target (``none``: the row stays as timm initialises it).
        multi_label: the classifier's ``problem_type`` is ``multi_label_classification`` (sigmoid outputs).
        drop_path_rate: stochastic depth of the timm model's blocks (the recipe key; None: timm's default, 0).

    Returns:
        A :class:`ZeroShotHead`: ``model`` is a ``TimmWrapperForImageClassification`` whose head is
        ``W = exp(logit_scale) * T @ P`` (bias SigLIP's ``logit_bias``, 0 for CLIP), ``report`` one match of kind
        ``text`` per class.
    """
    model_type = model.config.model_type
    names = _class_names(labels, label_mapping)
    text = class_text_embeddings(model, tokenizer, names, templates)
    projection = None if model_type == "siglip" else model.visual_projection.weight.detach().double()
    scale = float(model.logit_scale.detach().double().exp())
    bias = float(model.logit_bias.detach().double().reshape(-1)[0]) if model_type == "siglip" else 0.0
    classifier, timm_processor = _timm_classifier(model, labels, processor, multi_label, drop_path_rate)
    weight = scale * (text @ projection if projection is not None else text)
    head = classifier.timm_model.head
    with torch.no_grad():
        fresh = [i for i, n in enumerate(names) if not n]
        kept = head.weight.detach().clone()
        head.weight.copy_(weight.to(head.weight.dtype))
        head.bias.fill_(bias)
        for i in fresh:
            head.weight[i] = kept[i]
            head.bias[i] = 0.0
    return ZeroShotHead(
        model=classifier,
        processor=timm_processor,
        text_embeddings=text.float(),
        projection=None if projection is None else projection.float(),
        logit_scale=scale,
        logit_bias=bias,
        model_type=model_type,
        report=_report(labels, names, templates),
    )


@torch.no_grad()
def zero_shot_logits(head: ZeroShotHead, pixel_values: torch.Tensor) -> torch.Tensor:
    """The zero-shot classifier's logits (the contrastive model's ``logits_per_image``) from the converted
    classifier: its pooled feature, projected and L2-normalised, against the class text embeddings."""
    timm_model = head.model.timm_model
    pooled = timm_model.forward_head(timm_model.forward_features(pixel_values), pre_logits=True).double()
    embedded = pooled @ head.projection.double().T if head.projection is not None else pooled
    embedded = embedded / embedded.norm(dim=-1, keepdim=True)
    return head.logit_scale * embedded @ head.text_embeddings.double().T + head.logit_bias


def _load_dual_encoder(model_args: Any) -> tuple[Any, Any] | None:
    """``(model, tokenizer)`` when ``model_args`` names a CLIP or SigLIP dual encoder and its label mapping is on;
    else None (the checkpoint loads as any other). A dual encoder without a loadable tokenizer is one line."""
    from transformers import AutoModel, AutoTokenizer

    auto, explicit = parse_label_mapping(model_args.label_mapping)
    if not (auto or explicit):
        return None
    name = model_args.model_name_or_path
    config = load_source_config(
        name, model_args.model_revision, model_args.cache_dir, model_args.trust_remote_code
    )
    if not is_zero_shot_checkpoint(config):
        return None
    where = {"revision": model_args.model_revision, "cache_dir": model_args.cache_dir}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **where)
    except (OSError, ValueError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"model_name_or_path: {name} is a {config.model_type} checkpoint whose tokenizer does not load "
            f"({first}); a zero-shot head needs it: add the tokenizer files, or set label_mapping: none"
        ) from None
    if len(tokenizer) - len(set(tokenizer.all_special_ids)) < 2:  # transformers 5 makes one of no files
        raise ModelLoadError(
            f"model_name_or_path: {name} is a {config.model_type} checkpoint without tokenizer files (its "
            f"tokenizer has {len(tokenizer)} tokens); a zero-shot head needs them: add the tokenizer files, or "
            "set label_mapping: none"
        )
    safetensors = None if getattr(model_args, "allow_pickle_weights", False) else True
    model = AutoModel.from_pretrained(name, config=config, use_safetensors=safetensors, **where).eval()
    return model, tokenizer


def load_zero_shot_model(
    model_args: Any, labels: Sequence[str], multi_label: bool = False, training_args: Any = None
) -> LoadedModel | None:
    """The run's model when ``model_args.model_name_or_path`` is a CLIP or SigLIP dual encoder (and
    ``label_mapping`` is not ``none``): :func:`create_zero_shot_head`'s classifier as a
    :class:`~hf_finetune.models.loading.LoadedModel` whose mapping says every row came from text; else None."""
    loaded = _load_dual_encoder(model_args)
    if loaded is None:
        return None
    model, tokenizer = loaded
    name = model_args.model_name_or_path
    processor = load_image_processor(name, revision=model_args.model_revision, cache_dir=model_args.cache_dir)
    templates = list(model_args.zero_shot_templates)
    drop_path_rate = getattr(
        training_args, "drop_path_rate", None
    )  # the recipe key, as any timm model takes it
    head = create_zero_shot_head(
        model, tokenizer, processor, labels, templates, model_args.label_mapping, multi_label, drop_path_rate
    )
    logger.info(
        "zero-shot head: %s's image tower as timm %s; %d classes from the text embeddings of their names in %d "
        "templates, scaled by exp(logit_scale) = %.4g%s",
        type(model).__name__,
        head.model.config.architecture,
        len(labels),
        len(templates),
        head.logit_scale,
        f", bias logit_bias = {head.logit_bias:.4g}" if head.model_type == "siglip" else "",
    )
    head.model.hf_finetune_zero_shot = {"projection": head.projection}  # for scale_to_training_images
    return LoadedModel(
        model=head.model,
        processor=head.processor,
        source_labels=[],
        labels=list(labels),
        reinitialized=["timm_model.head.weight", "timm_model.head.bias"],
        reinitialized_shapes={"timm_model.head.weight": tuple(head.model.timm_model.head.weight.shape)},
        is_timm=True,
        name_or_path=str(name),
        mapping=head.report,
    )


def zero_shot_mapping(model_args: Any, labels: Sequence[str]) -> LabelMappingReport | None:
    """``hf-finetune map-labels`` for a CLIP or SigLIP dual encoder: the report of the rows that would come from
    text (None for any other checkpoint)."""
    loaded = _load_dual_encoder(model_args)
    if loaded is None:
        return None
    names = _class_names(labels, model_args.label_mapping)
    return _report(labels, names, list(model_args.zero_shot_templates))


@torch.no_grad()
def scale_to_training_images(
    loaded: LoadedModel,
    raw_dataset: Any,
    transform: Any,
    device: Any = None,
    per_class: int = 16,
    max_images: int = 256,
    batch_size: int = 32,
) -> float | None:
    """Divide a zero-shot head's weights by ``m``, the mean norm of the image embedding (``|P h|``) over up to
    ``per_class`` training images per class (at most ``max_images``), so that its logits,
    ``(|P h| / m) (z - b) + b``, are the zero-shot logits ``z`` on an average image instead of ``|P h|`` times them
    (the top-1 class is unchanged for every image). Returns ``m``; None (nothing done) for any other head.
    The notes of the mapping report say it."""
    zero_shot = getattr(loaded.model, "hf_finetune_zero_shot", None)
    if zero_shot is None:
        return None
    subset = _per_class_subset(
        raw_dataset, transform, len(loaded.labels), max(1, min(per_class, max_images // len(loaded.labels)))
    )
    if subset is None:
        return None
    timm_model = loaded.model.timm_model
    home = next(timm_model.parameters()).device
    device = torch.device(device) if device is not None else home
    was_training = timm_model.training
    timm_model.eval().to(device)
    norms = []
    try:
        for pixels, _labels in _batches(subset, batch_size):
            pooled = timm_model.forward_head(timm_model.forward_features(pixels.to(device)), pre_logits=True)
            projection = zero_shot["projection"]
            embedded = (
                pooled.double() @ projection.to(device).double().T
                if projection is not None
                else pooled.double()
            )
            norms.append(embedded.norm(dim=-1).cpu())
    finally:
        timm_model.train(was_training).to(home)
    if not norms:
        return None
    mean, count = float(torch.cat(norms).mean()), sum(len(n) for n in norms)
    timm_model.head.weight.div_(mean)
    logger.info(
        "zero-shot head: rows divided by %.4g, the mean image-embedding norm of %d training images",
        mean,
        count,
    )
    for match in loaded.mapping.matches:
        if match.kind == "text":
            match.note += f"; row / {mean:.4g} (mean image-embedding norm of {count} training images)"
    return mean
