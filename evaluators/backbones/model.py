"""`Backbone`: one loaded model behind a small interface, normalised float32 features for
images and texts, in the precision it was loaded with."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from promptclimb.agent.core.defaults import DEFAULT_PRECISION
from promptclimb.evaluators.backbones.device import IMAGE_BATCH, TEXT_CHUNK, _cudnn_without_tf32, _is_cuda
from promptclimb.evaluators.backbones.onednn import encode_image_blocks, image_block_weights, supports_image_blocks
from promptclimb.evaluators.backbones.text import _pool_index, encode_text_shared_prefix, encode_text_truncated


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
    precision: str = DEFAULT_PRECISION  # "fp32" or "bf16" (CPU autocast; agent.core.defaults.PRECISIONS)
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
        device up to float rounding, so they share one key; bf16 ones are not (CUDA autocast
        and the CPU's bf16 blocks round differently), so CUDA's have their own."""
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
        (NHWC), with the image tower's convolution weights converted once to match. It speeds
        up convolutional towers (RN50, the demo's) and ViT-B-32's patch embedding (its blocks
        have no convolutions), with the same features up to float rounding. Converting only
        the input, without the weights, gained nothing."""
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
