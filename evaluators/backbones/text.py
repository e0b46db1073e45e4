"""Exact shortcuts for causal open_clip text towers: padding truncation, and the encoder
that runs shared token prefixes once.

Exact padding truncation: a CLIP text tower with a causal attention mask computes the
feature it pools (the end-of-text token for `argmax`/`eos` pooling) from that token and
the ones before it only. Cutting a token batch from 77 positions to the longest pooled
position + 1 therefore gives the same features for a fraction of the work (prompts are
far shorter than 77 tokens). `Backbone` does that where it is exact and uses plain
`encode_text` elsewhere.

Shared prefixes: the same causality means that texts starting with the same tokens (the
class names filled into one template) have the same hidden states over those tokens, so
`encode_text_shared_prefix` runs each shared prefix once and then only the rest of each
text, attending to the prefix's cached keys and values; also exact, and fewer token-FLOPs
for typical templates.

Which towers qualify is read from open_clip's model layout by `compat.text_tower` and
`compat.plain_attention_blocks`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from promptclimb.evaluators.backbones import compat
from promptclimb.evaluators.backbones.device import TEXT_CHUNK

# ---------------------------------------------------------------- exact padding truncation

def _pool_index(model, tokens: torch.Tensor) -> torch.Tensor:
    """The position each row's feature is pooled from (as open_clip's text_global_pool)."""
    _, pool_type, eos_id = compat.text_tower(model)
    if pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if pool_type == "eos":
        return (tokens == eos_id).int().argmax(dim=-1)
    return torch.zeros(tokens.shape[0], dtype=torch.long)


def supports_truncation(model) -> bool:
    return compat.text_tower(model) is not None


def encode_text_truncated(model, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's text forward on tokens cut to the longest pooled position + 1.

    Same result as `model.encode_text(tokens)` (unnormalised) for models where
    `supports_truncation(model)`: the causal mask means positions after the pooled one
    never influence it.
    """
    length = int(_pool_index(model, tokens).max()) + 1
    return encode_token_embeddings(model, token_embedding(model)(tokens[:, :length]), tokens)


def token_embedding(model) -> torch.nn.Embedding:
    """The token-embedding table of a causal open_clip text tower (`supports_truncation`)."""
    return compat.text_tower(model)[0].token_embedding


def encode_token_embeddings(model, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's text forward from token embeddings x [B, L, width] instead of looking
    them up for `tokens` [B, L] (which still say where each row is pooled), cut to the
    longest pooled position + 1 as `encode_text_truncated`. With x = token_embedding(tokens)
    it is `encode_text_truncated`; soft prompts (evaluators/softprompt.py) put learned
    vectors in some of x's positions."""
    tower, _, _ = compat.text_tower(model)
    pooled_at = _pool_index(model, tokens.cpu())
    length = int(pooled_at.max()) + 1
    cast_dtype = tower.transformer.get_cast_dtype()
    x = x[:, :length].to(cast_dtype) + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), pooled_at.to(x.device)]
    projection = tower.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Module) else x @ projection
    return x


# ---------------------------------------------------------------- shared prefixes

# Groups bigger than this many rows are split (it bounds the grouping's work; rows in one
# group share one prefix pass, so the split costs one more prefix pass per extra group).
PREFIX_GROUP_WINDOW = 1024


def supports_shared_prefix(model) -> bool:
    """Whether `encode_text_shared_prefix` handles `model`'s text tower: a causal open_clip
    text transformer of plain `ResidualAttentionBlock`s (self-attention through
    `nn.MultiheadAttention`), pooled at the argmax/eos token."""
    found = compat.text_tower(model)
    if found is None or found[1] not in ("argmax", "eos"):
        return False
    return compat.plain_attention_blocks(found[0].transformer.resblocks)


def encode_text_shared_prefix(model, tokens: torch.Tensor, chunk: int = TEXT_CHUNK["cpu"]) -> torch.Tensor:
    """Same result as `model.encode_text(tokens)` (unnormalised), computing shared token
    prefixes once, for models where `supports_shared_prefix(model)`.

    Why it is exact: with a causal mask, the hidden states of the first p positions depend
    on those p tokens only, so rows that start with the same p tokens (every class of a
    template "a photo of a {}." starts with "<sot> a photo of a") have the same hidden
    states there, in every layer. A prefix is run once per group of rows; each row then
    runs only its suffix (its tokens from p to the pooled one, at their true positions),
    attending to the prefix's keys and values of each layer (a KV cache) and causally to
    its own suffix. Only the order of the arithmetic differs from `encode_text` (float
    rounding). Rows are grouped by `_prefix_groups`; any grouping is exact.
    """
    tower, _, _ = compat.text_tower(model)
    pooled_at = _pool_index(model, tokens.cpu())
    group, prefix_len = _prefix_groups(tokens.cpu(), pooled_at)
    # Blocks of whole groups (at most `chunk` groups, about 8 chunks of rows): a block's
    # prefix keys and values, every layer's, are held at once.
    sizes = torch.bincount(group, minlength=len(prefix_len)).tolist()
    blocks, first, n_rows = [], 0, 0
    for g, size in enumerate(sizes):
        if g > first and (g - first >= chunk or n_rows + size > 8 * chunk):
            blocks.append((first, g))
            first, n_rows = g, 0
        n_rows += size
    blocks.append((first, len(sizes)))
    out = None
    for first, last in blocks:
        rows = torch.nonzero((group >= first) & (group < last)).squeeze(1)
        features = _shared_prefix_block(tower, tokens[rows.to(tokens.device)], pooled_at[rows],
                                        group[rows] - first, prefix_len[first:last], chunk)
        if out is None:
            out = features.new_empty(len(tokens), features.shape[-1])
        out[rows.to(out.device)] = features
    return out


def _prefix_groups(tokens: torch.Tensor, pooled_at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(group [N], prefix_len [G]): rows of a group share their first prefix_len tokens, and
    every row's prefix ends before its pooled position (so each row keeps a suffix).

    Rows are sorted lexicographically, so rows with long common prefixes are neighbours;
    the sorted list is then cut into runs maximising the tokens saved, sum over runs of
    (rows - 1) * common prefix length (dynamic programming over the cut points). The
    texts of one template "a photo of a {}." come out as one group; texts of templates
    "{} ..." group by class name instead ("<sot> forest" is what they share).
    """
    n = len(tokens)
    texts = [tokens[i, :int(pooled_at[i]) + 1].tolist() for i in range(n)]
    order = sorted(range(n), key=texts.__getitem__)
    srt = tokens[order]
    same = (srt[1:] == srt[:-1]).int().cumprod(dim=1).sum(dim=1)  # common prefix of neighbours
    cap = pooled_at[order]
    adjacent = torch.minimum(same, torch.minimum(cap[1:], cap[:-1])).numpy()  # [n - 1]
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)  # best split of the first j rows: last run starts at cut[j]
    for j in range(1, n + 1):
        lo = max(0, j - PREFIX_GROUP_WINDOW)
        # runs order[i:j] for i = j-2 .. lo: common prefix = min(adjacent[i:j-1])
        mins = np.minimum.accumulate(adjacent[lo:j - 1][::-1])
        gains = best[j - 2 - np.arange(len(mins))] + np.arange(1, len(mins) + 1) * mins
        best[j], cut[j] = best[j - 1], j - 1  # a run of one row saves nothing
        if len(mins) and gains.max() > best[j]:
            k = int(gains.argmax())
            best[j], cut[j] = gains[k], j - 2 - k
    runs, j = [], n
    while j > 0:
        runs.append((int(cut[j]), j))
        j = int(cut[j])
    runs.reverse()
    group = torch.empty(n, dtype=torch.long)
    prefix_len = torch.zeros(len(runs), dtype=torch.long)
    for g, (i, j) in enumerate(runs):
        group[order[i:j]] = g
        if j - i > 1:
            prefix_len[g] = int(adjacent[i:j - 1].min())
    return group, prefix_len


def _shared_prefix_block(tower, tokens, pooled_at, group, prefix_len, chunk) -> torch.Tensor:
    """Features [N, D] of rows in groups 0..G-1 (see encode_text_shared_prefix)."""
    device = tokens.device
    cast_dtype = tower.transformer.get_cast_dtype()
    blocks = tower.transformer.resblocks
    group, prefix_len, pooled_at = group.to(device), prefix_len.to(device), pooled_at.to(device)
    # The prefixes: each group's first row, cut to the longest prefix; positions past a
    # group's own prefix are computed but never attended to.
    first_row = torch.zeros(len(prefix_len), dtype=torch.long, device=device).scatter_reduce(
        0, group, torch.arange(len(group), device=device), "amin", include_self=False)
    P = int(prefix_len.max())
    past = []  # per layer: (keys, values) [G, heads, P, head_dim]
    if P:
        x = tower.token_embedding(tokens[first_row, :P]).to(cast_dtype)
        x = x + tower.positional_embedding[:P].to(cast_dtype)
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        for block in blocks:
            x, keys, values = _attention_block(block, x, causal)
            past.append((keys, values))
    # The suffixes, sorted by length so that each chunk is cut to a tight length.
    start_at = prefix_len[group]
    length = pooled_at - start_at + 1
    order = torch.argsort(length.cpu(), stable=True).to(device)
    pieces = []
    for lo in range(0, len(order), chunk):
        rows = order[lo:lo + chunk]
        S, p = int(length[rows].max()), int(start_at[rows].max())
        positions = (start_at[rows, None] + torch.arange(S, device=device)).clamp(max=tokens.shape[1] - 1)
        x = tower.token_embedding(tokens[rows[:, None], positions]).to(cast_dtype)
        x = x + tower.positional_embedding[positions].to(cast_dtype)
        # Keys: the row's prefix (its first start_at positions), then its suffix causally.
        see_prefix = torch.arange(p, device=device) < start_at[rows, None]  # [n, p]
        see_suffix = torch.ones(S, S, dtype=torch.bool, device=device).tril()
        mask = torch.cat([see_prefix[:, None, :].expand(-1, S, -1), see_suffix.expand(len(rows), -1, -1)], dim=2)
        mask = mask[:, None]  # [n, 1 (heads), S, p + S]
        rows_group = group[rows]
        for layer, block in enumerate(blocks):
            kv = None
            if p:
                keys, values = past[layer]
                kv = (keys[rows_group, :, :p], values[rows_group, :, :p])
            x, _, _ = _attention_block(block, x, mask, kv)
        pieces.append(x[torch.arange(len(rows), device=device), length[rows] - 1])
    x = torch.empty_like(torch.cat(pieces))
    x[order] = torch.cat(pieces)
    x = tower.ln_final(x)  # per position: the same before or after pooling
    projection = tower.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Module) else x @ projection
    return x


def _attention_block(block, x, mask, past=None):
    """open_clip's ResidualAttentionBlock on x [B, L, D], its attention written out so that
    cached keys/values `past` ([B, heads, P, head_dim] each) come before x's own. Returns
    (output, x's keys, x's values)."""
    attn = block.attn
    B, L, D = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(B, L, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
    keys, values = (k, v) if past is None else (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2))
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    out = attn.out_proj(out.transpose(1, 2).reshape(B, L, D))
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, k, v
