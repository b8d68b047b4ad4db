"""The label-mapping section of the model card (:mod:`hf_finetune.hub.model_card`): which rows of the pretrained
classifier started each class, from the run's ``label_mapping.json`` and ``labels.json``; for a CLIP/SigLIP
zero-shot head (:mod:`hf_finetune.models.zero_shot`), that the rows came from the text embeddings of the names."""

from __future__ import annotations

from typing import Any

from hf_finetune.escaping import markdown_text

__all__ = ["mapping_section"]


def mapping_section(
    mapping: dict[str, Any] | None, labels_info: dict[str, Any], max_sources: int = 3
) -> tuple[str, list[dict[str, str]]]:
    """(a sentence, one row per target class: target | kind | the source rows it started from)."""
    if mapping is None:
        if labels_info and not labels_info.get("reinitialized"):
            return "The classes are the checkpoint's own classes: its classifier was kept as it was.", []
        return (
            "The classifier was re-initialised for the new classes: no rows of the pretrained classifier "
            "were reused (`label_mapping: none`).",
            [],
        )
    rows = []
    for match in mapping.get("matches", []):
        indices, names = list(match.get("source_indices", [])), list(match.get("source_names", []))
        shown = [f"{i}: {n}" for i, n in zip(indices, names, strict=False)][:max_sources]
        more = len(indices) - len(shown)
        sources = "; ".join(shown) + (f"; ... +{more} more" if more > 0 else "")
        if match.get("kind") == "text":  # a zero-shot head (hf_finetune.models.zero_shot): its prompts
            sources = str(match.get("note", ""))
        rows.append(
            {
                "target": markdown_text(match.get("target", "")),
                "kind": markdown_text(match.get("kind", "")),
                "sources": markdown_text(sources or "- (fresh row)"),
            }
        )
    reused = sum(1 for m in mapping.get("matches", []) if m.get("kind") != "none")
    summary = (
        f"{reused} of {len(rows)} target classes started from rows of the pretrained classifier "
        f"({mapping.get('num_source_labels', '?')} source classes) instead of random rows; a class made "
        "of several source rows started from their mean row (bias + log n, or a balanced mean). The others "
        "(`none`) started as the model initialises its head."
    )
    from_text = sum(1 for m in mapping.get("matches", []) if m.get("kind") == "text")
    if from_text:
        summary = (
            f"{from_text} of {len(rows)} target classes started from the text embeddings of their names, not "
            "from a classifier: the checkpoint is a CLIP/SigLIP image-text model, and each class's row is the "
            "mean of the normalised text embeddings of its name in the prompt templates (`zero_shot_templates`), "
            "projected onto the image tower's pooled feature and scaled by its logit scale (`kind: text`, the "
            "first prompt shown). As loaded, the model ranked every image's classes as its zero-shot classifier "
            "does; its logits differ by the norm of each image's embedding, which a linear head cannot divide "
            "by (the rows were divided by its mean over training images instead)."
        )
    calibration = mapping.get("bias_calibration")
    if calibration:
        summary += (
            f" Before training the head's biases were fitted to {calibration['images']} training images "
            f"(`label_bias_from_data`; their loss {calibration['loss_before']:.3f} -> "
            f"{calibration['loss_after']:.3f}), replacing the source's class prior with the data's; the "
            f"weights stayed the {'text' if from_text else 'source'} rows."
        )
    return summary, rows
