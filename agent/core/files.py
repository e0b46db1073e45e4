"""The one way promptclimb writes a file that others may read at any moment (run folders,
the LLM cache, feature caches, adapters, the assembled local model): atomically.

The content goes to a temp file beside the target (same folder, so same file system), is
flushed to disk, and is renamed over the target in one step: a reader, or a run killed
mid-write, sees the old file or the new one, never half of one. A failed write leaves
neither a temp file nor a damaged target. Torch-free: torch/safetensors writers come in
as the `write` callback.

A process killed mid-write (SIGKILL) leaves its temp file behind. The temp file's name
carries the writer's pid, `.<target>.<pid>.<random>.tmp`, so that `remove_dead_temp_files`
can remove the leftovers of dead writers without touching a write in progress.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Replace `path` with what `write(temp_path)` writes into a temp file beside it.

    `write` may raise (e.g. a checksum that does not match): then `path` is left as it was.
    A new file gets mode 0644 (run files and caches are meant to be read and shared); a file
    replaced keeps its own. A symlink is written through: the file it points to is
    replaced, and the link stays. A path that is there and is not a file (a FIFO, a device:
    `report -o /dev/stdout`) is written to directly, non-atomically. Returns `path`."""
    given = Path(path)
    given.parent.mkdir(parents=True, exist_ok=True)
    try:
        found = os.stat(given)  # through a symlink: what the path writes to
    except FileNotFoundError:  # nothing there yet, or a dangling symlink (its target is created)
        found = None
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(given))
    if found is not None and not stat.S_ISREG(found.st_mode):
        # nothing to rename over: a rename would put a file in place of the device or FIFO
        # (as root, in place of /dev/null), and whoever reads the FIFO would never see it
        with _named(given):
            write(given)
        return given
    # over the link's target, beside it: renamed over the link, the temp file would replace
    # the link with a copy and leave the file the user linked to as it was
    target = Path(os.path.realpath(given)) if given.is_symlink() else given
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        with _named(given):
            write(tmp)
        with open(tmp, "rb") as f:  # the writer may not have synced: do it here, once
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(found.st_mode) if found is not None else 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return given


@contextmanager
def _named(path: Path) -> Iterator[None]:
    """An OSError of a write that names no file (ENOSPC: `report -o /dev/full`) names `path`,
    so that the one error line says which file could not be written."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def remove_dead_temp_files(folder: str | Path) -> list[Path]:
    """Remove the temp files under `folder` (and its sub-folders) whose writer is no longer
    running: the leftovers of processes killed mid-write. Returns what was removed."""
    removed = []
    for tmp in Path(folder).rglob(".*.tmp"):
        pid = tmp.name[: -len(".tmp")].rsplit(".", 2)[-2] if tmp.name.count(".") >= 3 else ""
        if pid.isdigit() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`text` (UTF-8) at `path`, atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# A list of numbers, as json.dumps(indent=...) spreads it over one line per number. JSON writes a
# newline inside a string as "\n", so a match (which needs real newlines) is never in a string.
NUMBER_LIST = re.compile(r"\[\n\s*(-?[\d.eE+-]+(?:,\n\s*-?[\d.eE+-]+)*)\n\s*\]")


def write_json_atomic(path: str | Path, obj, indent: int | None = 2) -> Path:
    """`obj` as JSON (non-ASCII kept as is; indent None: one line) at `path`, atomically.
    Indented, a list of numbers stays on one line: a confusion-matrix row of a 397-class
    run, one number per line, made its summary.json 14.6 MB; on one line per row, 3.2 MB."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    if indent is not None:
        text = NUMBER_LIST.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)
    return write_text_atomic(path, text + "\n")


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a large file (weights, a GGUF), hashed at most once per version of it:
    remembered in the cache's `hashes/` folder with the file's path, size and mtime, and a
    change to any of them hashes it again."""
    from promptclimb.agent.core.paths import cache_dir

    path = Path(path).expanduser().resolve()
    stat = path.stat()
    stamp = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    record_file = cache_dir("hashes") / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
    try:
        record = json.loads(record_file.read_text())
        if {k: record.get(k) for k in stamp} == stamp and len(record.get("sha256", "")) == 64:
            return record["sha256"]
    except (OSError, ValueError, AttributeError):
        pass  # not hashed yet, or a damaged record: hash it
    sha = sha256_of(path)
    write_json_atomic(record_file, {**stamp, "sha256": sha})
    return sha
