"""A CLIP or SigLIP image tower as timm's ``VisionTransformer`` (for :mod:`hf_finetune.models.zero_shot`).

CLIP's tower is timm's ``vit_*_clip_*`` (class token, pre-norm, the final LayerNorm on the class token,
QuickGELU, patch embedding without bias); SigLIP's is ``vit_*_siglip_*`` (no class token, the final LayerNorm,
then the attention-pooling head, timm's ``global_pool='map'``). Both end at the contrastive model's pooled feature
(before CLIP's ``visual_projection``); the head is left to the caller.
"""

from __future__ import annotations

from typing import Any

import torch

from hf_finetune.errors import ModelLoadError

__all__ = ["ZERO_SHOT_MODELS", "timm_vision_tower"]

# model_type -> (the dual-encoder class, the timm architecture whose fixed settings match its image tower)
ZERO_SHOT_MODELS = {
    "clip": ("CLIPModel", "vit_base_patch16_clip_224"),
    "siglip": ("SiglipModel", "vit_base_patch16_siglip_224"),
}
# The LayerNorm epsilon each timm architecture above builds (fixed by its registration, not an argument)
_TIMM_EPS = {"clip": 1e-5, "siglip": 1e-6}
# transformers' hidden_act -> timm's act_layer
_TIMM_ACTS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
}


def timm_vision_tower(model: Any) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """``(timm architecture, model_args, state dict)`` of timm's ``VisionTransformer`` equal to the checkpoint's
    image tower up to its pooled feature (no head)."""
    model_type = model.config.model_type
    vision = model.config.vision_config
    width, ratio = vision.hidden_size, vision.intermediate_size / vision.hidden_size
    act = _TIMM_ACTS.get(vision.hidden_act)
    problem = None
    if act is None:
        problem = f"its image tower's hidden_act {vision.hidden_act!r}, which timm has no layer for"
    elif int(width * ratio) != vision.intermediate_size:
        problem = f"its intermediate_size {vision.intermediate_size}, not a whole multiple timm can rebuild"
    elif abs(float(vision.layer_norm_eps) - _TIMM_EPS[model_type]) > 1e-12:
        problem = f"its layer_norm_eps {vision.layer_norm_eps} (timm's {model_type} ViT uses {_TIMM_EPS[model_type]})"
    elif model_type == "siglip" and not getattr(vision, "vision_use_head", True):
        problem = "no attention-pooling head in its image tower (vision_use_head: false)"
    if problem is not None:
        raise ModelLoadError(
            f"model_name_or_path: cannot make a zero-shot classifier of this {model_type} checkpoint: {problem}; "
            "set label_mapping: none to train a fresh head on its image tower"
        )
    model_args = {
        "img_size": vision.image_size,
        "patch_size": vision.patch_size,
        "embed_dim": width,
        "depth": vision.num_hidden_layers,
        "num_heads": vision.num_attention_heads,
        "mlp_ratio": ratio,
        "act_layer": act,
    }
    return (
        ZERO_SHOT_MODELS[model_type][1],
        model_args,
        _timm_state(model.vision_model.state_dict(), model_type),
    )


def _timm_state(hf: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """The HF image tower's tensors under timm's ``VisionTransformer`` names."""
    out = {
        "patch_embed.proj.weight": hf["embeddings.patch_embedding.weight"],
        "pos_embed": hf["embeddings.position_embedding.weight"].unsqueeze(0),
        "norm.weight": hf["post_layernorm.weight"],
        "norm.bias": hf["post_layernorm.bias"],
    }
    if model_type == "clip":
        out["cls_token"] = hf["embeddings.class_embedding"].reshape(1, 1, -1)
        out["norm_pre.weight"], out["norm_pre.bias"] = hf["pre_layrnorm.weight"], hf["pre_layrnorm.bias"]
    else:
        out["patch_embed.proj.bias"] = hf["embeddings.patch_embedding.bias"]
        width = hf["head.probe"].shape[-1]
        in_w, in_b = hf["head.attention.in_proj_weight"], hf["head.attention.in_proj_bias"]
        out.update(
            {
                "attn_pool.latent": hf["head.probe"],
                "attn_pool.q.weight": in_w[:width],
                "attn_pool.q.bias": in_b[:width],
                "attn_pool.kv.weight": in_w[width:],
                "attn_pool.kv.bias": in_b[width:],
                "attn_pool.proj.weight": hf["head.attention.out_proj.weight"],
                "attn_pool.proj.bias": hf["head.attention.out_proj.bias"],
            }
        )
        for part in (
            "norm.weight",
            "norm.bias",
            "mlp.fc1.weight",
            "mlp.fc1.bias",
            "mlp.fc2.weight",
            "mlp.fc2.bias",
        ):
            out[f"attn_pool.{part}"] = hf[f"head.{part.replace('norm.', 'layernorm.')}"]
    layers = sorted({int(k.split(".")[2]) for k in hf if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"blocks.{i}."
        attn = src + "self_attn."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.qkv.{kind}"] = torch.cat([hf[f"{attn}{p}_proj.{kind}"] for p in ("q", "k", "v")])
            out[f"{dst}attn.proj.{kind}"] = hf[f"{attn}out_proj.{kind}"]
            out[f"{dst}norm1.{kind}"] = hf[f"{src}layer_norm1.{kind}"]
            out[f"{dst}norm2.{kind}"] = hf[f"{src}layer_norm2.{kind}"]
            out[f"{dst}mlp.fc1.{kind}"] = hf[f"{src}mlp.fc1.{kind}"]
            out[f"{dst}mlp.fc2.{kind}"] = hf[f"{src}mlp.fc2.{kind}"]
    return {k: v.detach().clone().float() for k, v in out.items()}
