"""Where promptclimb keeps shared state outside a run (one place, used by both sides)."""

from __future__ import annotations

import os
from pathlib import Path


def absolute(path: str | Path | None) -> str | None:
    """A path as a run records it (config.json): absolute, so that `eval --run`, `adapt`,
    `transfer` and a resume find it from any folder, and `DIR/` or a relative path given
    later reads as the same folder."""
    return None if path is None else str(Path(path).expanduser().resolve())


def cache_home() -> Path:
    """`~/.cache/promptclimb`, or `$PROMPTCLIMB_HOME` when set."""
    root = os.environ.get("PROMPTCLIMB_HOME")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "promptclimb"


def cache_dir(kind: str) -> Path:
    """A sub-folder of the cache home (`datasets`, `features`, `llm`, `models`), created on demand."""
    path = cache_home() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_writable(folder: str | Path, what: str) -> Path:
    """`folder`, created if missing, after a real write test (permissions, a read-only file
    system, a file in the way); PromptclimbError in one line when it cannot be written.
    Commands call it before loading a model, not after."""
    import tempfile

    from promptclimb.agent.core.errors import PromptclimbError

    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        # for a file in the way the OS says "File exists" or "Not a directory": say which file
        why = not_a_folder(folder) or exc.strerror or str(exc)
        raise PromptclimbError(f"{folder} ({what}) is not writable ({why})") from None
    return folder


def file_in_the_way(folder: Path) -> Path | None:
    """The file at `folder`, or at the nearest of its parents that exists, that keeps it from
    being a folder; None where that is a folder."""
    for path in (folder, *folder.parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


def not_a_folder(folder: Path) -> str | None:
    """Why `folder` cannot be a folder, `it is a file, not a folder` or `PARENT is a file, not
    a folder`, for a message about it; None where no file is in the way."""
    in_the_way = file_in_the_way(folder)
    if in_the_way is None:
        return None
    return "it is a file, not a folder" if in_the_way == folder else f"{in_the_way} is a file, not a folder"


def missing_folders(folder: str | Path) -> list[Path]:
    """`folder` and the folders above it that do not exist yet, deepest first (what
    `check_writable` or `mkdir(parents=True)` would create)."""
    folder = Path(folder).expanduser().absolute()
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_while_empty(folders: list[Path]) -> None:
    """Remove `folders` (deepest first), each only while it is empty: what a refused command
    created and left unused goes, never a folder something else wrote to meanwhile."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone, or not ours to remove): it and those above stay
            return


def prompts_dir() -> Path:
    """The installed `promptclimb/prompts/` folder (text only: meta-prompts and template
    pools); beside `agent/` both in the repository and in an installed wheel."""
    path = Path(__file__).resolve().parents[2] / "prompts"
    if not path.is_dir():
        raise RuntimeError(f"the prompts data folder is missing ({path}); reinstall promptclimb")
    return path
