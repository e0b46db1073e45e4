"""Loading a backbone by name: `load_backbone(name, ...) -> Backbone`.

Where a backbone comes from:
- an open_clip architecture with a named pretrained tag (`RN50`, `openai`): open_clip
  downloads the weights; offline this fails within seconds with a message saying what to do;
- an open_clip architecture with a local weights file (`--weights FILE`, .pt or .safetensors);
- a backbone registered by the project in `PROJECT_BACKBONES` (e.g. `demo`), a factory
  `factory(device) -> (model, preprocess, tokenizer)` with open_clip semantics;
- extra open_clip model configs (JSON files in open_clip's own format, e.g. tiny test
  models) registered with `register_model_configs(path)` or listed in the environment
  variable `PROMPTCLIMB_MODEL_CONFIGS` (folders or files, separated by os.pathsep).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import pickle
import socket
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.files import file_sha256
from promptclimb.evaluators.backbones import compat
from promptclimb.evaluators.backbones.device import check_device, check_precision, default_device
from promptclimb.evaluators.backbones.model import Backbone
from promptclimb.evaluators.backbones.text import supports_shared_prefix, supports_truncation

# kept with the agent's torch-free check of a backbone name (agent/core/backbones.py)
from promptclimb.agent.core.backbones import MODEL_CONFIGS_ENV, PROJECT_BACKBONES, check_backbone_name
CONNECT_TIMEOUT_S = 3.0  # how long we wait to learn that a download host is unreachable

_registered_config_paths: set[str] = set()


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
        with root_logging_kept():  # open_clip logs with `logging.info`, which configures the root logger
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
    weights inside the package; this notices when they are retrained). Exact bytes only: a
    float sum depends on how many threads add it up, and so did the identity (and with it the
    feature cache and a resume's evaluator check)."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        t = tensor.detach().float().reshape(-1).cpu()
        h.update(t[:: max(1, t.numel() // 1024)].numpy().tobytes())  # a strided sample: cheap, and a retrain moves it
    return h.hexdigest()[:16]


def _known_model(name: str) -> None:
    import open_clip  # noqa: F401 (imported: the check also sees configs registered in this process)

    check_backbone_name(name, "backbone")


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
        elif pretrained_arg is None:  # random weights: said by the warning above, not by open_clip's log line
            with open_clip_quiet():
                model = open_clip.create_model(name, pretrained=None, **kwargs)
        else:  # open_clip downloads the tag's file first
            model = open_clip.create_model(name, pretrained=pretrained_arg, **kwargs)
    except RuntimeError as exc:  # state-dict mismatches
        what = f"weights file {weights}" if weights else f"pretrained {pretrained!r}"
        raise PromptclimbError(f"could not load {what} into architecture {name!r}: {_first_line(exc)}") from exc
    except (OSError, ValueError) as exc:
        raise PromptclimbError(f"could not build backbone {name!r}: {_first_line(exc)}") from exc
    model.eval()
    preprocess = compat.image_preprocess(model)
    try:
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # HF tokenizers may need a download
        raise PromptclimbError(
            f"could not load the tokenizer of {name!r} ({_first_line(exc)}); it may need a download"
        ) from exc
    return Backbone(name=name, identity=identity, device=device, model=model, preprocess=preprocess,
                    tokenizer=tokenizer, truncate=supports_truncation(model),
                    shared_prefix=supports_shared_prefix(model), details=details)


@contextmanager
def root_logging_kept():
    """The root logger's handlers as they were: `logging.info()` and `logging.warning()` (which
    open_clip calls) give it a stderr handler where it has none, even while logging is
    disabled; then its lines print even with the API's echo=None, and a notebook's own
    `logging.basicConfig` does nothing."""
    handlers = list(logging.root.handlers)
    try:
        yield
    finally:
        logging.root.handlers[:] = handlers


@contextmanager
def open_clip_quiet():
    """open_clip's "No pretrained weights loaded ... randomly" not logged (a warning of ours
    says it, or the weights follow)."""
    quiet = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with root_logging_kept():
            yield
    finally:
        logging.disable(quiet)


def _load_weights_file(name: str, path: Path, kwargs: dict):
    """open_clip architecture `name` holding the weights of the file `path`, which is held
    in memory once while loading.

    open_clip's `create_model(pretrained=FILE)` builds the model with random weights and then
    copies the file's tensors into it, so both are in memory at once. Here the model is
    built with its parameters on the meta device (no memory, no random init; buffers such as
    the causal mask are built for real), and
    open_clip's own checkpoint loader (file formats, key conversions, position-embedding
    resizes) hands the file's tensors over as the parameters (`assign=True`)."""
    import open_clip

    with open_clip_quiet(), compat.parameters_on_meta():
        model = open_clip.create_model(name, pretrained=None, **{**kwargs, "device": None})

    handed_over = []  # set once the file has been read and its tensors are being assigned

    def assign(state_dict, strict: bool = True):
        handed_over.append(True)
        own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        for key, tensor in state_dict.items():  # keep the model's dtypes (a file may hold fp16)
            if key in own and tensor.is_floating_point() and tensor.dtype != own[key].dtype:
                state_dict[key] = tensor.to(own[key].dtype)
        return torch.nn.Module.load_state_dict(model, state_dict, strict=strict, assign=True)

    try:
        try:
            # torch.load maps the file (copy-on-write) instead of reading it: the parameters
            # handed over with `assign=True` are the file's pages, which become resident only
            # when used, so a search that reads its image features from the cache never loads
            # the image tower's half.
            with compat.torch_load_mmap():
                compat.load_checkpoint_with(model, str(path), assign)
        except Exception:  # noqa: BLE001 - e.g. a legacy (pre-zip) torch.save file cannot be mapped
            if handed_over:
                raise  # the file was read; what failed was fitting it to the architecture
            compat.load_checkpoint_with(model, str(path), assign)
    except RuntimeError as exc:
        if "state_dict" in str(exc):
            raise  # the file's tensors do not fit this architecture: said by the caller
        raise PromptclimbError(_unreadable_weights(path, exc)) from None
    except Exception as exc:  # noqa: BLE001 - torch.load's failures on a non-checkpoint file have no common type
        raise PromptclimbError(_unreadable_weights(path, exc)) from None
    missing = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if missing:
        raise PromptclimbError(f"weights file {path} has no values for {', '.join(missing[:5])} "
                               f"of architecture {name!r}")
    return model.to(kwargs["device"])


WEIGHTS_HEAD_SHOWN = 40  # bytes of an unreadable weights file said: an HTML page, a Git LFS pointer, text


def _unreadable_weights(path: Path, exc: BaseException) -> str:
    # torch.load's own messages on such files are long and mostly about weights_only; on a file
    # that is no pickle at all its legacy reader fails with a bare number (KeyError(174812789)):
    # what the file begins with says more
    said = _first_line(exc)
    if isinstance(exc, (EOFError, pickle.UnpicklingError, KeyError)) or not any(c.isalpha() for c in said):
        try:
            with open(path, "rb") as f:
                reason = f" (it begins {f.read(WEIGHTS_HEAD_SHOWN)!r})"
        except OSError:
            reason = ""
    else:
        reason = f": {said}"
    return (f"weights file {path} cannot be read as PyTorch (.pt, .bin) or safetensors weights{reason}; "
            "pass a state dict saved with torch.save or safetensors")


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
        # `transfer` takes no --dataset, and `eval --dataset imagefolder` had been told to drop its data
        "  - or try it offline with the embedded model:  --backbone demo (small, trained on Fashion-MNIST's clothes)"
    )


def _cached_pretrained_file(cfg: dict) -> str | None:
    """The weights file for a pretrained cfg when it is already on disk, else None."""
    if cfg.get("file"):
        return cfg["file"]
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        model_id, filename = os.path.split(hf_hub)
        try:
            from huggingface_hub import hf_hub_download

            candidates = compat.hf_weights_filenames(filename)
        except ImportError:
            hf_hub_download = None
        if hf_hub_download is not None:
            for candidate in candidates:
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
