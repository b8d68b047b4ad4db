"""A ViT-family model made to take another square image size: its absolute position embeddings are
interpolated once, when the run prepares the model, not at every forward pass.

* transformers ViT, DeiT, DINOv2 (with or without registers), CLIP and SigLIP vision towers, Swin with absolute
  embeddings: the patch-grid part of the embedding is resampled bicubically to the new grid; the class, distillation
  (and, where they share the table, register) tokens are kept as they are. ``image_size`` of the (vision) config and
  the embedding modules' sizes are set to the new size, so the saved folder builds the resized table again and
  ``pipeline()`` runs it at that size.
* timm models with an absolute ``pos_embed`` (vit, deit, eva, ...): timm's own ``set_input_size`` (which calls
  ``timm.layers.resample_abs_pos_embed``), and ``img_size`` in the config's ``model_args``, so that
  ``timm.create_model`` and ``TimmWrapper`` rebuild the model at the new size.
* Models that run at any size themselves (convolutional networks; Swin and Swinv2, which pad to whole windows; BEiT
  and Data2VecVision, which interpolate their embeddings and relative position bias at each forward pass) are left
  as they are.
* LeViT (attention biases learned for one resolution) and Hiera (mask units unrolled for one token grid), and any
  model that fails a one-image forward pass at the new size, are refused in one line naming the sizes that work.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn

from hf_finetune.errors import ConfigError

__all__ = ["FIXED_SIZE_FAMILIES", "resize_position_embeddings"]

logger = logging.getLogger(__name__)

# transformers model types built for one input resolution, with why
FIXED_SIZE_FAMILIES = {
    "levit": "its attention biases are learned for the token grid of one resolution",
    "hiera": "its mask-unit attention unrolls the token grid of one resolution",
}
# the class, distillation and register tokens a position table may carry before its patch grid
_MAX_PREFIX_TOKENS = 8


def resize_position_embeddings(model: Any, image_size: int | None) -> str | None:
    """Make ``model`` take ``image_size`` x ``image_size`` inputs, interpolating its position embeddings once.

    Args:
        model: a transformers image classifier (``TimmWrapperForImageClassification`` for a timm checkpoint); changed
            in place (parameters keep their ``requires_grad``), with its config, so that the saved folder reloads at
            the new size.
        image_size: the new side in pixels. ``None``, or the model's own size, leaves the model untouched (its
            outputs are the same bit for bit).

    Returns:
        One line saying what was resized (also logged), or ``None`` when nothing needed to change.

    Raises:
        ConfigError: the model cannot run at ``image_size``: one line naming ``image_size``, the family and the sizes
            that work.
    """
    if image_size is None:
        return None
    side = int(image_size)
    if hasattr(model, "timm_model"):
        line = _resize_timm(model, side)
    else:
        line = _resize_transformers(model, side)
    if line is not None:
        logger.info("%s", line)
    return line


def _resize_transformers(model, side: int) -> str | None:
    config = getattr(model.config, "vision_config", None) or model.config
    family = str(getattr(model.config, "model_type", type(model).__name__))
    own = _side(getattr(config, "image_size", None))
    if own is None or own == side:
        return None  # no recorded input size (a convolutional network), or already this size
    if family in FIXED_SIZE_FAMILIES:
        raise _refusal(side, family, model, own, FIXED_SIZE_FAMILIES[family])
    tables = _position_tables(model, config, own)
    line = None
    if tables:
        patch = _side(config.patch_size)
        for module, prefix in tables:
            _resample_table(module, prefix, own // patch, side // patch)
        _set_sizes(model, config, side, patch, tables)
        prefixes = sorted({p for _, p in tables})
        line = (
            f"image_size {side}: {family} position embeddings interpolated once (bicubic) from a "
            f"{own // patch}x{own // patch} to a {side // patch}x{side // patch} patch grid, "
            f"{'/'.join(map(str, prefixes))} class/distillation token(s) kept; config image_size {own} -> {side}"
        )
    _check_forward(model, side, family, own)
    return line


def _resize_timm(model, side: int) -> str | None:
    timm_model = model.timm_model
    family = str(getattr(model.config, "architecture", type(timm_model).__name__))
    own = _timm_own_side(model)
    if own == side:
        return None
    line = None
    if "img_size" in _parameters(getattr(timm_model, "set_input_size", None)):
        # resample_abs_pos_embed (bicubic, prefix tokens kept); relative position tables and windows set anew,
        # Swin's windows kept at the sizes timm.create_model(img_size=...) builds (set_input_size would scale them)
        windows = getattr(timm_model, "_ref_window_sizes", None)
        keep = (
            {"window_size": list(windows)}
            if windows is not None and "window_size" in _parameters(timm_model.set_input_size)
            else {}
        )
        timm_model.set_input_size(img_size=(side, side), **keep)
        model.config.model_args = dict(getattr(model.config, "model_args", None) or {}, img_size=side)
        has_table = getattr(timm_model, "pos_embed", None) is not None
        line = (
            f"image_size {side}: timm {family} resized once by timm's set_input_size from {own} px"
            + (
                f" (position embeddings interpolated bicubically, {timm_model.num_prefix_tokens} prefix token(s) "
                "kept)"
                if has_table and hasattr(timm_model, "num_prefix_tokens")
                else ""
            )
            + f"; model_args img_size {side}"
        )
    if own is not None:
        reference = _check_forward(model, side, f"timm {family}", own)
        if line is not None:
            _check_timm_rebuild(model, side, family, own, reference)
    return line


def _check_timm_rebuild(model, side: int, family: str, own: int, reference: torch.Tensor) -> None:
    """The saved folder rebuilds this model: ``timm.create_model`` with the config's ``model_args`` (as
    ``TimmWrapper`` and ``timm.create_model("local-dir:...")`` call it) takes the resized weights and gives the same
    output on a zero image."""
    import timm

    config = model.config
    try:
        fresh = timm.create_model(
            config.architecture, pretrained=False, num_classes=config.num_labels, **(config.model_args or {})
        )
        fresh.load_state_dict(model.timm_model.state_dict(), strict=True)
        fresh.to(reference.device).eval()
        with torch.no_grad():
            output = fresh(torch.zeros(1, 3, side, side, dtype=reference.dtype, device=reference.device))
        same = torch.allclose(output, reference, rtol=1e-4, atol=1e-5)
        why = "rebuilt from its saved config it computes other outputs"
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:
        same, why = False, f"it cannot be rebuilt from its saved config ({str(err).strip().splitlines()[0]})"
    if not same:
        raise _refusal(side, f"timm {family}", model, own, f"resized by timm's set_input_size, {why}")


def _parameters(function) -> set[str]:
    try:
        return set(inspect.signature(function).parameters) if function is not None else set()
    except (TypeError, ValueError):
        return set()


def _timm_own_side(model) -> int | None:
    patch_embed = getattr(model.timm_model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None:
        return _side(img_size)
    pretrained_cfg = getattr(model.timm_model, "pretrained_cfg", None) or {}
    input_size = pretrained_cfg.get("input_size")
    return int(input_size[-1]) if input_size else None


def _side(value) -> int | None:
    """The side of a square size given as an int or a (height, width) pair (a non-square one is returned as its
    height)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return int(value[0])
    return int(value)


def _position_tables(model, config, own: int) -> list[tuple[nn.Module, int]]:
    """The embedding modules holding an absolute position table over the patch grid, with the number of tokens
    (class, distillation) ahead of the grid."""
    patch = _side(getattr(config, "patch_size", None))
    if patch is None or getattr(model.config, "model_type", "") in ("beit", "data2vec-vision"):
        return []  # BEiT and Data2VecVision interpolate at each forward pass (sizes of their relative bias)
    grid = (own // patch) ** 2
    tables = []
    for module in model.modules():
        table = _table(module)
        if table is not None and table.ndim in (2, 3):
            prefix = table.shape[-2] - grid
            if 0 <= prefix <= _MAX_PREFIX_TOKENS:
                tables.append((module, prefix))
    return tables


def _table(module) -> torch.Tensor | None:
    """The position table of an embeddings module: ``position_embeddings`` (a parameter) or
    ``position_embedding`` (an ``nn.Embedding``), else None."""
    param = getattr(module, "position_embeddings", None)
    if isinstance(param, nn.Parameter):
        return param
    embedding = getattr(module, "position_embedding", None)
    if isinstance(embedding, nn.Embedding):
        return embedding.weight
    return None


def _resample_table(module, prefix: int, old_grid: int, new_grid: int) -> None:
    """Bicubic resampling of the patch part of the table (timm's ``resample_abs_pos_embed``, without antialiasing, as
    transformers' own ``interpolate_pos_encoding``); the parameter object is kept, with its ``requires_grad``."""
    from timm.layers import resample_abs_pos_embed

    param = _table(module)
    as_rows = param.ndim == 2  # nn.Embedding weight: (positions, dim)
    with torch.no_grad():
        table = param.detach().unsqueeze(0) if as_rows else param.detach()
        resized = resample_abs_pos_embed(
            table,
            new_size=[new_grid, new_grid],
            old_size=[old_grid, old_grid],
            num_prefix_tokens=prefix,
            interpolation="bicubic",
            antialias=False,
        )
        param.data = (resized[0] if as_rows else resized).contiguous()
    embedding = getattr(module, "position_embedding", None)
    if isinstance(embedding, nn.Embedding):
        embedding.num_embeddings = param.shape[0]
    ids = getattr(module, "position_ids", None)
    if isinstance(ids, torch.Tensor):
        module.position_ids = torch.arange(param.shape[-2], device=ids.device).expand((1, -1))


def _set_sizes(model, config, side: int, patch: int, tables) -> None:
    """The new size in the config (so the saved folder is built at it) and in the embedding modules' checks."""
    config.image_size = _like(config.image_size, side)
    grid = side // patch
    prefix = {id(module): p for module, p in tables}
    for module in model.modules():
        if isinstance(getattr(module, "image_size", None), (int, list, tuple)):
            module.image_size = _like(module.image_size, side)
        if isinstance(getattr(module, "grid_size", None), (list, tuple)):
            module.grid_size = _like(module.grid_size, grid)
        if isinstance(getattr(module, "num_patches", None), int):
            module.num_patches = grid * grid
        if isinstance(getattr(module, "num_positions", None), int) and id(module) in prefix:
            module.num_positions = grid * grid + prefix[id(module)]


def _like(old, value: int):
    """``value`` in the form of ``old``: an int, or a square pair of its type."""
    if isinstance(old, (list, tuple)):
        return type(old)([value, value])
    return value


def _check_forward(model, side: int, family: str, own: int) -> torch.Tensor:
    """One zero image at ``side`` px through the model in evaluation mode (no gradient, no random numbers drawn);
    each module's training flag is restored after. Returns its logits."""
    param = next(model.parameters())
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            output = model(pixel_values=torch.zeros(1, 3, side, side, dtype=param.dtype, device=param.device))
    except (RuntimeError, ValueError, AssertionError, IndexError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _refusal(side, family, model, own, f"a forward pass at {side} px fails ({first})") from None
    finally:
        for module, training in modes.items():
            module.training = training
    return output.logits


def _refusal(side: int, family: str, model, own: int, why: str) -> ConfigError:
    return ConfigError(
        f"image_size: got {side}; {family} ({type(model).__name__}) cannot run at another size than its "
        f"checkpoint's: {why}; it works at {own} px only: leave image_size unset or set it to {own}"
    )
