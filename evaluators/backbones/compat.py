"""The private torch and open_clip calls the backbones rely on, gathered in one place.

Everything here uses something its library does not promise to keep: underscore-prefixed
ops and methods, internal modules, the layout of open_clip's model classes, or how one of
open_clip's functions does its work. Each function is small and named for what it gives
the rest of the package, and each has a test in tests/test_compat.py that runs it on a
tiny real input and checks the outcome, so that a new torch or open_clip release that
changes what it relies on fails there, by name, rather than somewhere deep in a search.

The callers keep their own fallbacks (e.g. `device.cpu_supports_bf16` answers False when
the op is missing); the functions here raise whatever the library raises.

What is not here: the forwards that `text` and `onednn` write out (open_clip's text
transformer and its ResidualAttentionBlock, its ViT blocks). Those are checked against
open_clip's own `encode_text` / `encode_image` by tests/test_backbones.py and
tests/test_image_encoding.py, and `text_tower`, `plain_attention_blocks` and
`vision_tower` below decide where they may run.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

# ---------------------------------------------------------------- torch: oneDNN ops


def onednn_bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 matrix products natively on this CPU (AVX512-BF16 or
    AMX): `torch.ops.mkldnn._is_mkldnn_bf16_supported`."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  gelu: bool = False) -> torch.Tensor:
    """F.linear(x, weight, bias), then exact GELU if `gelu`, through oneDNN's fused linear
    op (`torch.ops.mkldnn._linear_pointwise`, the one torch.compile uses on CPUs); `weight`
    may be plain or packed by `onednn_pack_linear_weight`."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [],
                                              "none" if gelu else "")


def onednn_pack_linear_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` [out, in] in oneDNN's own blocked layout for products with `rows` input rows
    (`torch.ops.mkldnn._reorder_linear_weight`); only `onednn_linear` reads the result."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


# ---------------------------------------------------------------- torch: building and loading


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside, every module's parameters are created on the meta device (shape and dtype, no
    memory) and its buffers for real: the recipe of accelerate's init_empty_weights. It
    wraps `nn.Module.register_parameter` and replaces the entry in the module's private
    `_parameters` dict."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


@contextmanager
def torch_load_mmap() -> Iterator[None]:
    """Inside, torch.load maps the file (copy-on-write) instead of reading it, through the
    process-wide `torch.utils.serialization.config.load.mmap` (older torch versions lack it:
    ImportError)."""
    from torch.utils.serialization import config

    before, config.load.mmap = config.load.mmap, True
    try:
        yield
    finally:
        config.load.mmap = before


# ---------------------------------------------------------------- open_clip: checkpoints and files


def load_checkpoint_with(model, path: str, load_state_dict: Callable) -> None:
    """open_clip's `load_checkpoint(model, path)` (its file formats, key conversions and
    position-embedding resizes), with the final step, which open_clip does as
    `model.load_state_dict(state_dict, strict=...)`, done by `load_state_dict` instead (for
    this model only, for this call only)."""
    import open_clip

    model.load_state_dict = load_state_dict
    try:
        open_clip.load_checkpoint(model, path)
    finally:
        del model.load_state_dict


def hf_weights_filenames(filename: str) -> list[str]:
    """The files open_clip would fetch from a Hugging Face repository for a pretrained cfg's
    `filename` ('' for the default one), in its order: safetensors alternatives first
    (`open_clip.pretrained._get_safe_alternatives`, `open_clip.constants.HF_WEIGHTS_NAME`)."""
    from open_clip.constants import HF_WEIGHTS_NAME
    from open_clip.pretrained import _get_safe_alternatives

    filename = filename or HF_WEIGHTS_NAME
    return [*_get_safe_alternatives(filename), filename]


def image_preprocess(model) -> Callable:
    """The evaluation transform (PIL image -> tensor) open_clip builds for `model`, from the
    preprocessing settings it keeps on `model.visual.preprocess_cfg`
    (`open_clip.transform.PreprocessCfg`, `image_transform_v2`)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)


# ---------------------------------------------------------------- open_clip: model layout


def text_tower(model):
    """(tower, pool_type, eos_id) when `model`'s text tower is a causal open_clip transformer
    whose pooled feature depends only on tokens up to the pooled one; else None. The tower
    (the CLIP itself, or a CustomTextCLIP's `text`) holds token_embedding,
    positional_embedding, transformer, attn_mask, ln_final and text_projection."""
    try:
        import open_clip
        from open_clip.transformer import TextTransformer, Transformer
    except ImportError:
        return None
    if isinstance(model, open_clip.CLIP):
        tower, pool_type, eos_id = model, model.text_pool_type, getattr(model, "text_eos_id", None)
    elif isinstance(model, open_clip.CustomTextCLIP) and isinstance(model.text, TextTransformer):
        tower = model.text
        if tower.cls_emb is not None or tower.use_pad_mask:  # CoCa-style cls token / padding mask
            return None
        pool_type, eos_id = tower.pool_type, tower.eos_id
    else:
        return None
    if getattr(tower, "attn_mask", None) is None:  # bidirectional: every position sees the padding
        return None
    if pool_type not in ("argmax", "eos", "first"):  # 'last' pools a padding position
        return None
    if pool_type == "eos" and eos_id is None:
        return None
    if not isinstance(tower.transformer, Transformer):
        return None
    return tower, pool_type, eos_id


def plain_attention_blocks(blocks) -> bool:
    """Whether every block is a plain open_clip `ResidualAttentionBlock`: self-attention
    through `nn.MultiheadAttention` with packed in-projection weights, no extra keys; so
    x + ls_1(attn(ln_1(x))), then x + ls_2(mlp(ln_2(x)))."""
    from open_clip.transformer import ResidualAttentionBlock

    for block in blocks:
        attn = getattr(block, "attn", None)
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            return False
        if (not isinstance(attn, torch.nn.MultiheadAttention) or attn.in_proj_weight is None
                or attn.bias_k is not None or attn.add_zero_attn):
            return False
    return True


def vision_tower(model):
    """`model.visual` when `model` is an open_clip CLIP (or CustomTextCLIP) whose image tower
    is a batch-first VisionTransformer of plain blocks (`plain_attention_blocks`, each MLP
    c_fc, an activation, c_proj) that `vit_embeds` and `vit_pool` handle; else None."""
    try:
        import open_clip
        from open_clip.transformer import Transformer, VisionTransformer
    except ImportError:
        return None
    if not isinstance(model, (open_clip.CLIP, open_clip.CustomTextCLIP)):
        return None
    visual = getattr(model, "visual", None)
    if type(visual) is not VisionTransformer or getattr(visual, "output_tokens", False):
        return None
    if not all(hasattr(visual, name) for name in ("_embeds", "_pool", "proj")):
        return None
    tower = visual.transformer
    if not isinstance(tower, Transformer) or not getattr(tower, "batch_first", False):
        return None
    if not plain_attention_blocks(tower.resblocks):
        return None
    if not all(isinstance(getattr(block.mlp, "c_fc", None), torch.nn.Linear)
               and isinstance(getattr(block.mlp, "c_proj", None), torch.nn.Linear) and len(block.mlp) == 3
               for block in tower.resblocks):
        return None
    return visual


def vit_embeds(visual, images: torch.Tensor) -> torch.Tensor:
    """What an open_clip VisionTransformer's blocks start from: patch embeddings, class
    token, positions and ln_pre, [B, tokens, width] (`VisionTransformer._embeds`)."""
    return visual._embeds(images)


def vit_pool(visual, x: torch.Tensor) -> torch.Tensor:
    """The pooled image feature [B, width] of a VisionTransformer's block output x, before
    its projection `proj` (`VisionTransformer._pool`, which returns (pooled, tokens))."""
    pooled, _ = visual._pool(x)
    return pooled
