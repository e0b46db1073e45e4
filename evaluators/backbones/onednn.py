"""open_clip ViT image towers on a CPU, their blocks written out for oneDNN.

open_clip's vision transformer, run by `nn.MultiheadAttention`'s fused inference path, does
its matrix products with MKL; oneDNN's fp32 kernels reach more GFLOP/s than MKL's on the
same shapes on the CPUs we measure on (bench/bench_images.py). And under bf16 autocast that
fused path is switched off: the unfused one multiplies a transposed input, which copies
every in-projection weight once per token position (slower than fp32).
`encode_image_blocks` is the same forward with the blocks written out: LayerNorms and the
residual stream as the module computes them, every linear layer through `_linear`
(oneDNN, exact GELU fused), attention through scaled_dot_product_attention. fp32: the same
features up to float rounding; bf16: autocast's arithmetic.

The oneDNN ops and the ViT's embedding and pooling steps are private to torch and
open_clip; they are called through `compat`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from promptclimb.evaluators.backbones import compat


def supports_image_blocks(model) -> bool:
    """Whether `encode_image_blocks` computes `model.encode_image`: an open_clip CLIP (or
    CustomTextCLIP) whose image tower is a VisionTransformer of plain blocks
    (`compat.vision_tower`)."""
    return compat.vision_tower(model) is not None


def image_block_weights(model, dtype: torch.dtype = torch.float32, pack_for: int = 0) -> list[tuple]:
    """Per block of `model.visual` (`supports_image_blocks`): its linear layers' weights and
    biases in `dtype` (fp32: the model's own tensors, no copy; bf16: a bf16 copy). With
    `pack_for` images per batch, a copy's weight matrices are held in oneDNN's own blocked
    layout for that many rows (it skips a reorder per product, so bf16 products run
    faster); only where `_onednn_linear_works`, whose op alone reads them."""
    rows = pack_for * model.visual.positional_embedding.shape[0]  # images x tokens per image
    pack = rows > 0 and dtype != torch.float32 and _onednn_linear_works()
    weights = []
    for block in model.visual.transformer.resblocks:
        attn, mlp = block.attn, block.mlp
        tensors = (attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias,
                   mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias)
        tensors = [None if t is None else t.detach().to(dtype) for t in tensors]
        if pack:
            tensors = [t if t is None or t.dim() != 2 else _packed(t, rows) for t in tensors]
        weights.append(tuple(tensors))
    return weights


def _packed(weight: torch.Tensor, rows: int) -> torch.Tensor:
    try:
        return compat.onednn_pack_linear_weight(weight, rows)
    except (AttributeError, RuntimeError):  # a torch without it: the plain layout works too
        return weight


def encode_image_blocks(model, images: torch.Tensor, weights: list[tuple]) -> torch.Tensor:
    """`model.encode_image(images)` (unnormalised) with the transformer blocks computed by
    `_image_block` and the linear weights `weights` (`image_block_weights`)."""
    visual = model.visual
    x = compat.vit_embeds(visual, images)
    for block, block_weights in zip(visual.transformer.resblocks, weights):
        x = _image_block(block, x, block_weights)
    pooled = compat.vit_pool(visual, x)
    return pooled @ visual.proj if visual.proj is not None else pooled


def _image_block(block, x: torch.Tensor, weights: tuple) -> torch.Tensor:
    """One ResidualAttentionBlock on x [B, L, D] (no mask: every patch sees every patch)."""
    in_w, in_b, out_w, out_b, fc_w, fc_b, proj_w, proj_b = weights
    B, L, D = x.shape
    heads = block.attn.num_heads
    q, k, v = _linear(block.ln_1(x), in_w, in_b).view(B, L, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L, head_dim]
    x = x + block.ls_1(_linear(out.transpose(1, 2).reshape(B, L, D), out_w, out_b))
    act = block.mlp[1]
    exact_gelu = type(act) is torch.nn.GELU and act.approximate == "none"
    hidden = _linear(block.ln_2(x), fc_w, fc_b, gelu=exact_gelu)
    if not exact_gelu:  # e.g. QuickGELU (OpenAI's weights)
        hidden = act(hidden)
    return x + block.ls_2(_linear(hidden, proj_w, proj_b))


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    """F.linear(x, weight, bias), then exact GELU if `gelu`, in the weight's dtype: through
    oneDNN on a CPU where it works (`_onednn_linear_works`), else through F.linear."""
    x = x.to(weight.dtype)
    if x.device.type == "cpu" and _onednn_linear_works():
        return compat.onednn_linear(x, weight, bias, gelu)
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


@functools.cache
def _onednn_linear_works() -> bool:
    """Whether torch's oneDNN linear op (the one torch.compile uses on CPUs) is here and
    gives F.linear's results, checked once on small inputs (in fp32, whatever autocast the
    first caller runs under)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=generator) for shape in ((6, 3, 16), (24, 16), (24,)))
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            plain = torch.allclose(compat.onednn_linear(x, w, b), F.linear(x, w, b), atol=1e-5)
            fused = torch.allclose(compat.onednn_linear(x, w, None, gelu=True), F.gelu(F.linear(x, w)), atol=1e-5)
        return plain and fused
    except (AttributeError, RuntimeError, TypeError):
        return False
