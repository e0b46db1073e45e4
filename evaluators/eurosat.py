"""EuroSAT (RGB): 27,000 64x64 Sentinel-2 satellite images of 10 land-use classes.

Where the data comes from, in order:
1. `--data-root DIR` or the cache `<cache>/datasets/eurosat`, holding the unpacked archive
   (a folder with the 10 class folders, as the official zip's `2750/`); if
   `split_zhou_EuroSAT.json` (CoOp's split, from Zhou et al.) is in DIR or next to the
   class folders, it defines train/val/test;
2. otherwise the official archive is downloaded into the cache on first use (the DFKI
   original, else torchvision's mirror): with a progress bar, checked against its MD5,
   unpacked beside the cache folder and renamed into place in one step, so a half-done
   download never looks like data. Processes that need it at the same moment take turns
   (a lock file): the first downloads, the others wait and then use its copy.

Without CoOp's split file the split is our own, documented and deterministic: per class,
the sorted file names are shuffled by a PCG64 seeded from sha256("split|eurosat|<class>")
and cut 50/20/30 into train/val/test (the same proportions as CoOp's 13,500/5,400/8,100).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.paths import cache_dir
from promptclimb.evaluators.datasets import (Dataset, deterministic_split, drop_missing, files_digest, open_image,
                                 read_coop_split, IMAGE_EXTENSIONS)

# The official archive (Helber et al., DFKI) and torchvision's pinned mirror of the same zip.
ARCHIVE_URLS = (
    "https://madm.dfki.de/files/sentinel/EuroSAT.zip",
    "https://huggingface.co/datasets/torchgeo/eurosat/resolve/c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
)
ARCHIVE_MD5 = "c8fa014336c82ac7804f0398fcb19387"
SPLIT_FILE = "split_zhou_EuroSAT.json"
DOWNLOAD_TIMEOUT_S = 10

# Folder names in the archive, in label order (the published labels: a run's start names),
# and CoOp's readable class names for them (`--classnames coop`).
FOLDERS = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
           "Pasture", "PermanentCrop", "Residential", "River", "SeaLake"]
COOP_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land", "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings",
    "River": "River", "SeaLake": "Sea or Lake",
}
DESCRIPTION = "centered satellite photos (Sentinel-2, RGB, 64x64 pixels) of land use and land cover in Europe"


def find_image_folder(root: Path) -> Path | None:
    """The folder that holds the 10 class folders: root itself, or one level / two levels down."""
    nearest = nearest_image_folder(root)
    return nearest[0] if nearest and not nearest[1] else None


def nearest_image_folder(root: Path) -> tuple[Path, list[str]] | None:
    """(the folder, the class folders it lacks) for the folder that holds most of EuroSAT's
    class folders, at least half: root itself, or one level / two levels down (the first of
    those that hold as many); None where none does."""
    if not root.is_dir():
        return None
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    candidates += [q for p in candidates[1:] for q in sorted(p.iterdir()) if q.is_dir()]
    best = max(candidates, key=lambda c: sum((c / name).is_dir() for name in FOLDERS))
    missing = [name for name in FOLDERS if not (best / name).is_dir()]
    return (best, missing) if len(missing) <= len(FOLDERS) // 2 else None


def download_archive(target: Path) -> None:
    """Download and unpack the EuroSAT archive into `target`, unless it is there already
    (another process may have just put it there). Atomic: the archive is fetched and
    unpacked in a temp folder beside `target` and renamed into place. Raises OSError
    (URLError, timeouts, a wrong MD5) when no source gives the archive."""
    with _download_lock(target):
        if find_image_folder(target) is not None:
            return  # another process downloaded it while this one waited
        for stale in target.parent.glob(f".{target.name}-download-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed download (we hold the lock)
        errors = []
        for url in ARCHIVE_URLS:
            try:
                _check_reachable(url)  # fail fast when offline
                with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-download-") as tmp:
                    archive = Path(tmp) / "EuroSAT.zip"
                    md5 = _fetch(url, archive)
                    if md5 != ARCHIVE_MD5:
                        errors.append(f"{url}: unexpected md5 {md5} (expected {ARCHIVE_MD5})")
                        continue
                    unpacked = Path(tmp) / "unpacked"
                    with zipfile.ZipFile(archive) as z:
                        z.extractall(unpacked)
                    archive.unlink()
                    os.replace(unpacked, target)
                    return
            except (OSError, zipfile.BadZipFile) as exc:
                errors.append(f"{url}: {exc}")
        raise OSError("; ".join(errors))


def _check_reachable(url: str) -> None:
    """A TCP connection to the URL's host, or an OSError within 3 s (no DNS, no route)."""
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    socket.create_connection((parts.hostname, port), timeout=3).close()


@contextlib.contextmanager
def _download_lock(target: Path) -> Iterator[None]:
    """One downloader at a time per cache folder (flock; elsewhere, none)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+") as lock:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; `find_image_folder` still catches a finished copy
            yield
            return
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"waiting for another promptclimb process that is downloading EuroSAT into {target} ...",
                  file=sys.stderr, flush=True)
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _fetch(url: str, dest: Path) -> str:
    """`url` into `dest`, with a progress bar on stderr; returns the MD5 of what came."""
    from tqdm import tqdm

    digest = hashlib.md5()
    print(f"downloading EuroSAT from {url}", file=sys.stderr, flush=True)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="EuroSAT.zip", file=sys.stderr) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
    return digest.hexdigest()


def offline_message(looked: list[Path], cache_target: Path, reason: str) -> str:
    where = "\n".join(f"    {p}" for p in looked)
    return (
        f"EuroSAT images not found, and the download failed ({reason}).\n"
        f"  Looked for the 10 class folders ({', '.join(FOLDERS[:3])}, ...) in:\n{where}\n"
        f"  To provide the data: download {ARCHIVE_URLS[0]} and unzip it into {cache_target} "
        "(or anywhere, then pass --data-root DIR); put CoOp's split_zhou_EuroSAT.json there too "
        "to use CoOp's split.\n"
        "  To run offline without EuroSAT: --dataset fashion-mnist --backbone demo"
    )


def load_eurosat(data_root: str | None = None) -> Dataset:
    cache_target = cache_dir("datasets") / "eurosat"
    looked = [Path(data_root).expanduser().resolve()] if data_root else [cache_target]
    images = find_image_folder(looked[0])
    if images is None and data_root is None:
        try:
            download_archive(cache_target)
        except OSError as exc:
            raise PromptclimbError(offline_message(looked, cache_target, str(exc)[:300])) from exc
        images = find_image_folder(cache_target)
    if images is None:
        partial = nearest_image_folder(looked[0]) if data_root else None
        if partial is not None:  # a copy that lost a class folder read as EuroSAT not there at all
            folder, missing = partial
            raise PromptclimbError(f"{folder} has {len(FOLDERS) - len(missing)} of EuroSAT's {len(FOLDERS)} class "
                                   f"folders; missing: {', '.join(missing)}")
        if data_root:
            raise PromptclimbError(offline_message(looked, cache_target, "not attempted: --data-root was given"))
        raise PromptclimbError(f"the EuroSAT archive unpacked into {cache_target} has no class folders")

    split_file = next((p / SPLIT_FILE for p in (looked[0], images, images.parent) if (p / SPLIT_FILE).is_file()), None)
    if split_file is not None:
        splits, _ = read_coop_split(split_file, images)
        splits = drop_missing(images, splits)
        split_name = "coop-zhou"
    else:
        by_class = {}
        for c, name in enumerate(FOLDERS):
            by_class[c] = sorted(str(p.relative_to(images)) for p in (images / name).iterdir()
                                 if p.suffix.lower() in IMAGE_EXTENSIONS)
        empty = [FOLDERS[c] for c, ids in by_class.items() if not ids]
        if empty:
            raise PromptclimbError(f"{images}: EuroSAT class folder(s) without images: {', '.join(empty)}")
        splits = deterministic_split(by_class, tag="eurosat")
        split_name = "promptclimb-50-20-30"
    # sizes and modification times too: images replaced in place must not reuse cached features
    listing = files_digest(images, [i for v in splits.values() for i in v])
    return Dataset(
        name="eurosat", classnames=list(FOLDERS), description=DESCRIPTION,
        load_image=lambda image_id: open_image(images / image_id), splits=splits,
        identity=f"eurosat:{split_name}:{listing}",
        named_sets={"coop": [COOP_CLASSNAMES[f] for f in FOLDERS]},
    )
