"""The on-disk feature cache (under `agent.core.paths.cache_dir("features")`).

- Both are keyed by the backbone's `feature_identity`: its identity (the weights), plus the
  precision when it is not fp32 (`--precision bf16` features are never read back as fp32
  ones; fp32 keys are what they were before --precision existed).
- Image features of a split: one safetensors file per (backbone identity, dataset name +
  identity, split name, hash of the split's (id, label) list), holding the L2-normalised
  float32 features, the labels, and which ids were kept (unreadable images are skipped).
  A folder dataset's identity covers its files' sizes and modification times
  (`datasets.files_digest`): images replaced in place are encoded anew.
- Text features: per backbone identity, a folder of append-only shards (safetensors; the
  strings in the file's metadata). A process reads all shards once into a dict, so a
  lookup of thousands of strings is a dict lookup; new features are written as one new
  shard per batch, and shards are merged when there are many. Two processes writing at
  once write different shards, so nothing is lost.

Every write is atomic (agent/core/files.py: a temp file beside the target, renamed over it).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from promptclimb.agent.core.files import remove_dead_temp_files, write_atomic
from promptclimb.agent.core.paths import cache_dir

MAX_SHARDS = 32  # merge text shards beyond this many


def _key(*parts) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


_UNWRITABLE: set[Path] = set()  # cache folders whose write failed, said once each


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> bool:
    """Whether `tensors` were written to `path`. A cache that cannot be written (a full disk,
    a read-only folder) is a warning, once per folder: the features are in memory, and are
    encoded again next time (a full disk had ended the search in a traceback)."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    try:
        write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return True
    except (OSError, SafetensorError) as exc:
        if path.parent not in _UNWRITABLE:
            _UNWRITABLE.add(path.parent)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            warnings.warn(f"the feature cache {path.parent} cannot be written ({reason}): these features are "
                          "encoded again the next time", stacklevel=2)
        return False


class ImageFeatureCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_dir("features") / "images"
        if self.root.is_dir():
            remove_dead_temp_files(self.root)  # what a process killed mid-write left here

    def path(self, backbone_identity: str, dataset_key: str, split: str, ids_hash: str) -> Path:
        return self.root / f"{_key(backbone_identity, dataset_key, split, ids_hash)}.safetensors"

    def load(self, path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]] | None:
        """(features, labels, kept ids) or None when absent or unreadable."""
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                kept = json.loads(f.metadata()["kept_ids"])
            data = load_file(str(path))
        except (SafetensorError, OSError, KeyError, ValueError):
            return None
        # A copy in memory of its own: the file's tensor can sit at an address that sends the
        # matrix products down another kernel, and the losses then differed in their last bit
        # from those of the same features just encoded (a tie at 1 shot can turn on that bit).
        return data["features"].clone(), data["labels"], kept

    def save(self, path: Path, features: torch.Tensor, labels: torch.Tensor, kept_ids: list[str],
             info: dict) -> None:
        metadata = {"kept_ids": json.dumps(kept_ids), "info": json.dumps(info)}
        _atomic_save({"features": features.float(), "labels": labels.long()}, path, metadata)


class TextFeatureCache:
    """Text features of one backbone, keyed by the exact string."""

    def __init__(self, backbone_identity: str, root: Path | None = None):
        base = Path(root) if root else cache_dir("features") / "texts"
        self.folder = base / _key(backbone_identity)
        if self.folder.is_dir():
            remove_dead_temp_files(self.folder)  # what a process killed mid-write left here
        self.backbone_identity = backbone_identity
        self._features: dict[str, torch.Tensor] = {}
        self._loaded = False

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("*.safetensors")) if self.folder.is_dir() else []

    def _load(self) -> None:
        if self._loaded:
            return
        for shard in self._shards():
            try:
                with safe_open(str(shard), framework="pt") as f:
                    texts = json.loads(f.metadata()["texts"])
                    features = f.get_tensor("features")
            except (SafetensorError, OSError, KeyError, ValueError):
                continue  # a shard merged away by another process, or a broken file
            for text, row in zip(texts, features):
                self._features[text] = row
        self._loaded = True

    def __len__(self) -> int:
        self._load()
        return len(self._features)

    def missing(self, texts: list[str]) -> list[str]:
        """The distinct strings of `texts` not in the cache, in first-seen order."""
        self._load()
        return [t for t in dict.fromkeys(texts) if t not in self._features]

    def get(self, texts: list[str]) -> torch.Tensor:
        self._load()
        return torch.stack([self._features[t] for t in texts])

    def add(self, texts: list[str], features: torch.Tensor) -> None:
        if not texts:
            return
        self._load()
        features = features.float().contiguous()
        for text, row in zip(texts, features):
            self._features[text] = row
        shard = self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.safetensors"
        _atomic_save({"features": features}, shard,
                     {"texts": json.dumps(list(texts)), "backbone": self.backbone_identity})
        if len(self._shards()) > MAX_SHARDS:
            self._merge()

    def _merge(self) -> None:
        """Rewrite all shards as one (everything they hold is in memory after _load)."""
        old = self._shards()
        self._loaded = False
        self._load()  # pick up shards other processes wrote meanwhile
        texts = list(self._features)
        merged = self.folder / f"merged-{uuid.uuid4().hex[:12]}.safetensors"
        if not _atomic_save({"features": torch.stack([self._features[t] for t in texts])}, merged,
                            {"texts": json.dumps(texts), "backbone": self.backbone_identity}):
            return  # the shards stay: they hold what the merged file would have
        for shard in old:
            try:
                shard.unlink()
            except OSError:
                pass
