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
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import os
import socket
import threading
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

from agent.errors import PromptclimbError
from agent.paths import cache_dir

# name -> "module:factory"; factory(device) -> (model, preprocess, tokenizer), open_clip semantics.
PROJECT_BACKBONES: dict[str, str] = {
    "demo": "evaluators.demo.model:build_demo_backbone",
}

MODEL_CONFIGS_ENV = "PROMPTCLIMB_MODEL_CONFIGS"
CONNECT_TIMEOUT_S = 3.0  # how long we wait to learn that a download host is unreachable
# Texts per forward pass. Rows are sorted by length first, so small chunks waste little on
# padding: on a CPU, chunks of 64 ran 1.5x faster than one batch of 200 cut to its longest.
TEXT_CHUNK = {"cpu": 64, "cuda": 512}

_registered_config_paths: set[str] = set()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


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
    text_chunk: int = 0  # 0: TEXT_CHUNK for the device
    details: dict = field(default_factory=dict)  # JSON-able: where the weights came from

    def __post_init__(self):
        if not self.text_chunk:
            self.text_chunk = TEXT_CHUNK["cuda" if str(self.device).startswith("cuda") else "cpu"]

    @property
    def logit_scale(self) -> float:
        scale = self.model.logit_scale
        scale = scale.exp() if torch.is_tensor(scale) else torch.tensor(float(scale)).exp()
        return float(scale.detach().float().reshape(-1)[0])

    def _autocast(self):
        if str(self.device).startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return nullcontext()

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        """[B, ...] preprocessed images -> [B, D] L2-normalised float32 (on the CPU)."""
        with self._autocast():
            features = self.model.encode_image(batch.to(self.device))
        return F.normalize(features.float(), dim=-1).cpu()

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
        return {"name": self.name, "identity": self.identity, "device": str(self.device),
                "truncated_text": self.truncate, **self.details}


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
    tower, pool_type, _ = _text_tower(model)
    pooled_at = _pool_index(model, tokens)
    length = int(pooled_at.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(cast_dtype)
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), pooled_at.to(x.device)]
    projection = tower.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Module) else x @ projection
    return x


# ---------------------------------------------------------------- loading

def load_backbone(name: str, pretrained: str | None = None, weights: str | os.PathLike | None = None,
                  device: str | None = None) -> Backbone:
    """A Backbone by name: a project backbone (`demo`) or an open_clip architecture, with a
    named `pretrained` tag, a local `weights` file, or (neither) random weights."""
    device = device or default_device()
    if pretrained and weights:
        raise PromptclimbError("give either --pretrained or --weights, not both")
    if name in PROJECT_BACKBONES:
        return _load_project_backbone(name, pretrained, weights, device)
    return _load_open_clip(name, pretrained, weights, device)


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
    _atomic_write_text(memo_file, json.dumps(memo, indent=0))
    return memo[key]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
        digest = file_sha256(path)
        identity = f"{name}:sha256={digest[:16]}:size={path.stat().st_size}"
        details.update(weights=str(path.resolve()), weights_sha256=digest)
        pretrained_arg = str(path)
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
        model = open_clip.create_model(name, pretrained=pretrained_arg, **kwargs)
    except RuntimeError as exc:  # state-dict mismatches, bad files
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
                    tokenizer=tokenizer, truncate=supports_truncation(model), details=details)


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
