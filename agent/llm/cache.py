"""The LLM answer cache on disk and its keys: `request_key` (what a run's history records, and a
resume looks answers up by) and `cache_key` (the request and who answers it). Its own module because
both keys' formats bind caches and histories already written, whatever the client does around them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from promptclimb.agent.core.files import remove_dead_temp_files, write_json_atomic

# Bump when the cache entry layout or key changes; old entries are then ignored.
# 2: entries are keyed and checked by `origin` (endpoint and served model) too.
CACHE_FORMAT = 2
# Part of every `request_key`, which run histories record and a resume looks answers up
# by: it never changes, or runs written before the change could not be resumed.
REQUEST_KEY_FORMAT = 1


def request_key(request: dict) -> str:
    """The key of a chat request in a run's history: a hash of everything in the request
    that shapes the answer. (The disk cache adds who answers it: `cache_key`.)"""
    blob = json.dumps({"format": REQUEST_KEY_FORMAT, **request}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def cache_key(request: dict, origin: dict) -> str:
    """The disk cache key: the request and who answers it (`LLMClient.origin`)."""
    blob = json.dumps({"format": CACHE_FORMAT, "origin": origin, "request": request}, sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()



class ResponseCache:
    """One JSON file per cache key. Writes are atomic (temp file + rename); an entry that
    cannot be read or does not match its request and origin is ignored (and later
    overwritten)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.is_dir():
            remove_dead_temp_files(self.root)  # what a process killed mid-write left here

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, request: dict, origin: dict | None = None) -> dict | None:
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
            if entry.get("format") != CACHE_FORMAT or entry.get("request") != request:
                return None
            if entry.get("origin") != origin:
                return None
            if not isinstance(entry["answer"]["content"], str):
                return None
            return entry["answer"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # missing or damaged: never fatal, the answer is fetched again

    def put(self, key: str, request: dict, answer: dict, origin: dict | None = None) -> str:
        """"" once the entry is written; else why it could not be (a full disk, a read-only
        folder): the answer is in the run's history all the same, so the search goes on."""
        entry = {"format": CACHE_FORMAT, "origin": origin, "request": request, "answer": answer}
        try:
            write_json_atomic(self.path(key), entry, indent=None)
        except OSError as exc:
            return exc.strerror or str(exc)
        return ""

