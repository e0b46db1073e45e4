"""Where promptclimb keeps shared state outside a run (one place, used by both sides)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def cache_home() -> Path:
    """`~/.cache/promptclimb`, or `$PROMPTCLIMB_HOME` when set."""
    root = os.environ.get("PROMPTCLIMB_HOME")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "promptclimb"


def cache_dir(kind: str) -> Path:
    """A sub-folder of the cache home (`datasets`, `features`, `llm`, `models`), created on demand."""
    path = cache_home() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def prompts_dir() -> Path:
    """The installed `prompts/` folder (text only: meta-prompts and template pools)."""
    spec = importlib.util.find_spec("prompts")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'prompts' data folder is not installed; reinstall promptclimb")
    return Path(list(spec.submodule_search_locations)[0])
