"""Where promptclimb keeps shared state outside a run (one place, used by both sides)."""

from __future__ import annotations

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
    """The installed `promptclimb/prompts/` folder (text only: meta-prompts and template
    pools); beside `agent/` both in the repository and in an installed wheel."""
    path = Path(__file__).resolve().parents[1] / "prompts"
    if not path.is_dir():
        raise RuntimeError(f"the prompts data folder is missing ({path}); reinstall promptclimb")
    return path
