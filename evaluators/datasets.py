"""Datasets and reproducible few-shot splits.

A `Dataset` is class names + a way to load an image by id + labelled id lists per split.
Its `classnames` are the labels the data is published with (a run's start names: folder or
class names with `_` and `-` turned into spaces for imagefolder, coop and hf, WordNet IDs
such as ImageNet's `n02085620` as their WordNet name, the official labels for fashion-mnist,
the folder names for eurosat); `named_sets` holds hand-made sets chosen with
`--classnames NAME`.
A `FewShotSplit` draws k images per class for train and min(k, 4) for val, reproducibly
from (dataset, shots, seed); test is the dataset's whole held-out test list and is never
used to choose anything.

Loaders (`DATASETS`, imported lazily) take `data_root: str | None` and return a Dataset:
- `imagefolder`: one sub-folder per class (`--data-root DIR`). If DIR has `train/` and
  `test/` (and optionally `val/`) folders, each an ImageFolder, those are the splits (in
  any case, or `training/`, `valid/`, `validation/`, `testing/`: `SPLIT_NAMES`; a folder
  beside them is refused: its images would not be read); otherwise every class is split
  50/20/30 into train/val/test by `deterministic_split`, drawn from the folder's own name
  (a copy elsewhere under the same name draws the same split; renamed, another). Images
  are found in sub-folders too, linked ones followed; hidden files and folders,
  `__MACOSX/`, `@eaDir/` and Windows' `Thumbs.db` are not data (`is_data`); files of
  other kinds, unreadable images and images over Pillow's pixel limit are said
  (`warn_scan`). Images are turned as their EXIF orientation says (`open_image`).
- `coop`: a CoOp-format folder: images plus one `split_*.json` with
  {"train"|"val"|"test": [[relative_path, label, classname], ...]}.
- `eurosat` (evaluators/eurosat.py), `fashion-mnist` (evaluators/demo/fashion_mnist.py).
- `hf` (`--data-root DIR`) and `hf:OWNER/NAME[:CONFIG]`: Hugging Face datasets (evaluators/hf.py).

Determinism across machines: ids are sorted before sampling and every random draw comes
from numpy's PCG64 seeded with a sha256 of its inputs (never Python's salted `hash()`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from promptclimb.agent.core.classnames import name_key, readable_classname
from promptclimb.agent.core.errors import PromptclimbError

# (image_id, label) pairs; image ids are strings so that every dataset can key its cache.
Labelled = list[tuple[str, int]]

# Every one is opened by this Pillow (a test checks); a kind not listed is passed over, said (`warn_scan`).
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".avif"}
# Folders that hold no class and no photo of one: a zip made by macOS's Finder has __MACOSX/
# (AppleDouble `._x.png` files), a Synology share @eaDir/ (thumbnails of the photos beside
# them, which would put a copy of a test image in train); hidden files and folders too.
NOT_DATA = {"__MACOSX", "@eaDir"}
# Files a system leaves beside photos, hidden by an attribute rather than a leading dot (Windows' thumbnail caches
# and folder settings, macOS's custom folder icon): never said as files passed over. Lower case: Windows ignores it.
SYSTEM_FILES = {"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "icon\r"}


def is_data(name: str) -> bool:
    """Whether a file or folder of an image folder is data, not what a system left there."""
    return not name.startswith(".") and name not in NOT_DATA and name.lower() not in SYSTEM_FILES


@dataclass
class Dataset:
    name: str
    # The labels the data is published with, in label order: a run's start names unless
    # --classnames says otherwise (agent/core/classnames.py `read_classnames`).
    classnames: list[str]
    description: str  # what the images are, told to the LLM: "satellite photos of land use"
    load_image: Callable[[str], Image.Image]
    # "train" and "val" are the pools few-shot examples are drawn from ("val" may be empty:
    # then val is drawn from what is left of "train"); "test" is the held-out test set.
    splits: dict[str, Labelled]
    identity: str = ""  # what distinguishes this data from other data of the same name (root, version)
    # Hand-made name sets, chosen with --classnames NAME (fashion-mnist's `clean`, eurosat's `coop`).
    named_sets: dict[str, list[str]] = field(default_factory=dict)
    # The names `classnames` were made readable from, in label order (imagefolder's folders, a
    # CoOp split file's class names: `a_b` and `a-b` both read 'a b'); empty where they are the
    # labels. A refused start name names its folder; `folder,name` lines of --classnames FILE
    # find a class by its folder's own spelling first.
    folders: list[str] = field(default_factory=list)
    folder_word: str = "folder"  # what one of `folders` is, as a refusal names it (a Hugging Face label)


# A WordNet noun ID as ImageNet names its classes ("n02085620"), alone or before a name
# ("n02085620-Chihuahua", Stanford Dogs' folders).
WORDNET_ID = re.compile(r"(n\d{8})(?:[-_ ](.+))?")


def published_names(labels: Sequence[str]) -> list[str]:
    """The start names of labels as a folder tree or a label column gives them: readable
    (`_` and `-` as spaces), and a WordNet ID as its WordNet name (`n02085620` 'Chihuahua',
    `n02085620-Chihuahua` 'Chihuahua'), since an ID tells neither CLIP's text tower nor the
    LLM anything. Where two IDs share a name (ImageNet has two `crane`s) each takes its
    next WordNet name that no other class has, or keeps its ID: `crane (n02012849)`."""
    labels = [str(label) for label in labels]
    options = [_name_options(label) for label in labels]
    names = [o[0] for o in options]
    for attempt in ("another name", "the ID"):
        count = Counter(map(name_key, names))
        for i, (label, opts) in enumerate(zip(labels, options)):
            bare_id = WORDNET_ID.fullmatch(label.strip())
            if count[name_key(names[i])] == 1 or not bare_id or bare_id.group(2):
                continue  # names shared by labels that are not IDs are refused later, naming both
            taken = set(map(name_key, names))
            spare = [o for o in opts[1:] if name_key(o) not in taken]
            if spare:
                names[i] = spare[0]
            elif attempt == "the ID":
                names[i] = f"{opts[0]} ({bare_id.group(1)})"
    return names


def _name_options(label: str) -> list[str]:
    """A label's possible start names, best first: a known WordNet ID's names (several where
    WordNet has synonyms), else the label made readable."""
    match = WORDNET_ID.fullmatch(label.strip())
    if match and match.group(2):
        return [readable_classname(match.group(2))]
    names = wordnet_names(match.group(1)) if match else ""
    return [n.strip() for n in names.split(",") if n.strip()] or [readable_classname(label)]


@functools.lru_cache(maxsize=1)
def _imagenet_info():
    from timm.data import ImageNetInfo  # timm is open_clip's dependency, with WordNet's table

    return ImageNetInfo()


def wordnet_names(wnid: str) -> str:
    """A WordNet ID's names ("Chihuahua"; "German shepherd, German shepherd dog, ..."), for the
    synsets of ImageNet-21k; "" for an ID not among them."""
    try:
        return _imagenet_info().label_name_to_description(wnid)
    except KeyError:
        return ""


# name -> "module:function" returning a Dataset; loaders take (data_root: str | None).
DATASETS: dict[str, str] = {
    "eurosat": "promptclimb.evaluators.eurosat:load_eurosat",
    "imagefolder": "promptclimb.evaluators.datasets:load_imagefolder",
    "coop": "promptclimb.evaluators.datasets:load_coop_folder",
    "fashion-mnist": "promptclimb.evaluators.demo.fashion_mnist:load_fashion_mnist",
    "hf": "promptclimb.evaluators.hf:load_hf",  # and hf:OWNER/NAME[:CONFIG] (evaluators/hf.py)
}


def canonical_dataset_name(name: str) -> str:
    """The one spelling of a dataset name among those that load the same data, for a new run or
    eval to record and load: `hf:owner/name:` and `hf:owner/name:default` are `hf:owner/name`
    (evaluators/hf.py `canonical_hub_name`); other names are their own. A name draws its few-shot
    split and keys its features: loaded as it is spelled, a run recorded under another spelling
    draws the split it was searched on."""
    if not isinstance(name, str) or not name.startswith("hf:"):
        return name
    from promptclimb.evaluators.hf import canonical_hub_name  # no `datasets` import: only the spelling is read

    return canonical_hub_name(name)


def same_dataset_name(given: str | None, recorded: str | None) -> bool:
    """Whether two dataset names load the same data (`canonical_dataset_name`): a --dataset given
    with --resume or `eval --run` in another spelling of the run's is the run's dataset."""
    return given == recorded or canonical_dataset_name(given) == canonical_dataset_name(recorded)


def load_dataset(name: str, data_root: str | None = None, image_column: str | None = None,
                 label_column: str | None = None) -> Dataset:
    """The Dataset registered as `name` in DATASETS; the columns are for hf datasets."""
    target = DATASETS.get("hf" if name.startswith("hf:") else name)
    if target is None:
        raise PromptclimbError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    module_name, attr = target.split(":")
    loader = getattr(importlib.import_module(module_name), attr)
    if target == DATASETS["hf"]:
        loader = functools.partial(loader, name=name, image_column=image_column, label_column=label_column)
    elif image_column or label_column:
        raise PromptclimbError(f"--image-column and --label-column are for hf datasets, not {name!r}")
    try:
        dataset = loader(data_root)
    except FileNotFoundError as exc:
        raise PromptclimbError(str(exc)) from exc
    empty = [split for split in ("train", "test") if not dataset.splits.get(split)]
    if empty:
        raise PromptclimbError(f"dataset {name!r} has an empty {' and '.join(empty)} split"
                               + (f" ({FOLDER_SPLIT_NEEDS})" if name == "imagefolder" else ""))
    if len(dataset.classnames) < 2:
        raise PromptclimbError(f"dataset {name!r} has {len(dataset.classnames)} class"
                               f"{'' if len(dataset.classnames) == 1 else 'es'} ({', '.join(dataset.classnames)}); "
                               "a classifier needs at least 2" + (" (is --data-root the folder that holds one "
                                                                  "sub-folder per class?)" if data_root else ""))
    return dataset


# ---------------------------------------------------------------- stable randomness

def stable_seed(*parts) -> int:
    """A 64-bit seed from the parts' text, the same on every machine and Python run."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def stable_rng(*parts) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(stable_seed(*parts)))


def ids_digest(items: Labelled) -> str:
    """A short hash of an (id, label) list (keys caches and identifies splits)."""
    h = hashlib.sha256()
    for image_id, label in items:
        h.update(f"{image_id}\x1f{label}\x1e".encode())
    return h.hexdigest()[:16]


def files_digest(root: Path, items: Labelled) -> str:
    """A short hash of every image file's (id, label, size, modification time) under `root`:
    part of a folder dataset's identity, which keys the feature cache, so that images
    replaced in place under the same names get their features computed anew."""
    h = hashlib.sha256()
    for image_id, label in sorted(items):
        stat = (root / image_id).stat()
        h.update(f"{image_id}\x1f{label}\x1f{stat.st_size}\x1f{stat.st_mtime_ns}\x1e".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- few-shot splits

@dataclass
class FewShotSplit:
    dataset: str
    shots: int
    seed: int
    splits: dict[str, Labelled]  # "train", "val", "test" (and "unlabeled", when drawn)

    def info(self) -> dict:
        return {"dataset": self.dataset, "shots": self.shots, "seed": self.seed,
                "sizes": {k: len(v) for k, v in self.splits.items()},
                "ids_sha256": {k: ids_digest(v) for k, v in self.splits.items()}}


def _by_class(items: Labelled, num_classes: int) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {c: [] for c in range(num_classes)}
    for image_id, label in items:
        groups[int(label)].append(image_id)
    return {c: sorted(ids) for c, ids in groups.items()}


UNLABELED = -1  # the label an image of the "unlabeled" split carries: its own is never read


def make_fewshot_split(dataset: Dataset, shots: int, seed: int, unlabeled: int = 0) -> FewShotSplit:
    """train = `shots` per class from the dataset's train pool; val = min(shots, 4) per class
    from its val pool (or from the rest of train when it has none); test = all of test.
    `unlabeled` > 0 adds the split "unlabeled": up to that many images of the train pool
    that are in neither train nor val, drawn after them (so train and val do not change),
    each with the label UNLABELED."""
    if shots < 1:
        raise PromptclimbError(f"--shots must be at least 1 (got {shots})")
    n_classes = len(dataset.classnames)
    rng = stable_rng("fewshot", dataset.name, shots, seed)
    train_pool = _by_class(dataset.splits["train"], n_classes)
    short = {c: len(ids) for c, ids in train_pool.items() if len(ids) < shots}
    if short:
        c = min(short, key=short.get)
        # without a val split, val is drawn from what train leaves: a class needs one image more
        val_from_train = not dataset.splits.get("val")
        allows = short[c] - val_from_train
        raise PromptclimbError(
            f"--shots {shots} is more than class {dataset.classnames[c]!r} of {dataset.name} has "
            f"({short[c]} training image{'' if short[c] == 1 else 's'}); the smallest class allows --shots {allows}"
            + (" (one image a class is left for validation)" if val_from_train else "")
            if allows >= 1 else f"class {dataset.classnames[c]!r} of {dataset.name} has "
            f"{short[c] or 'no'} training image{'' if short[c] == 1 else 's'}"
            + (": too few to draw training and validation images from" if short[c] else
               " (only its test images have this label)" if any(label == c for _, label in dataset.splits["test"])
               else "")
        )
    train: Labelled = []
    rest: dict[int, list[str]] = {}
    for c in range(n_classes):
        ids = train_pool[c]
        chosen = set(rng.choice(len(ids), size=shots, replace=False).tolist())
        train += [(ids[i], c) for i in sorted(chosen)]
        rest[c] = [ids[i] for i in range(len(ids)) if i not in chosen]

    val_shots = min(shots, 4)
    val_source = dataset.splits.get("val") or []
    val_pool = _by_class(val_source, n_classes) if val_source else rest
    val: Labelled = []
    thin = []
    for c in range(n_classes):
        ids = val_pool[c]
        take = min(val_shots, len(ids))
        if take < val_shots:
            thin.append(f"{dataset.classnames[c]} ({len(ids)})")
        picked = sorted(rng.choice(len(ids), size=take, replace=False).tolist()) if take else []
        val += [(ids[i], c) for i in picked]
    if not val:  # every prompt is scored on val: nothing could be
        raise PromptclimbError(f"{dataset.name}: no image is left for the validation split at --shots {shots}"
                               + (f" ({FOLDER_SPLIT_NEEDS})" if dataset.name == "imagefolder" else ""))
    if thin:
        warnings.warn(f"{dataset.name}: fewer than {val_shots} validation images for "
                      f"{len(thin)} class(es): {', '.join(thin[:5])}", stacklevel=2)
    test = sorted(dataset.splits["test"])
    splits = {"train": train, "val": val, "test": test}
    if unlabeled > 0:
        used = {image_id for image_id, _ in train + val}
        left = sorted(image_id for ids in train_pool.values() for image_id in ids if image_id not in used)
        if not left:
            raise PromptclimbError(
                f"{dataset.name}: no image of its train pool is left outside the {shots}-shot split to score "
                f"without its label (what --metric balance ranks by); use another --metric")
        drawn = rng.choice(len(left), size=min(unlabeled, len(left)), replace=False)
        splits["unlabeled"] = [(left[i], UNLABELED) for i in sorted(drawn.tolist())]
    return FewShotSplit(dataset=dataset.name, shots=shots, seed=seed, splits=splits)


# How a folder of class folders is split (`deterministic_split`), said where a split is empty.
FOLDER_SPLIT_NEEDS = ("a folder of class folders is split per class into train, val and test: a class needs 2 images "
                      "for train and test, 3 for a val image too, and more for more shots")


def deterministic_split(items_by_class: dict[int, list[str]], tag: str,
                        fractions=(0.5, 0.2, 0.3)) -> dict[str, Labelled]:
    """Split each class's sorted ids into train/val/test by `fractions`, shuffled by a
    seed derived from `tag` (CoOp's 50/20/30 by default). Classes with 2+ images always
    get at least one test image; with 3+ at least one val image too."""
    out: dict[str, Labelled] = {"train": [], "val": [], "test": []}
    for c in sorted(items_by_class):
        ids = sorted(items_by_class[c])
        order = stable_rng("split", tag, c).permutation(len(ids))
        n = len(ids)
        n_test = max(1, round(n * fractions[2])) if n >= 2 else 0
        n_val = max(1, round(n * fractions[1])) if n >= 3 else 0
        shuffled = [ids[i] for i in order]
        out["test"] += [(i, c) for i in shuffled[:n_test]]
        out["val"] += [(i, c) for i in shuffled[n_test:n_test + n_val]]
        out["train"] += [(i, c) for i in shuffled[n_test + n_val:]]
    return {k: sorted(v) for k, v in out.items()}


# ---------------------------------------------------------------- images on disk

# Part of the identity of a dataset decoded by `open_image` or `eight_bits` (its features are cached by it):
# 2 since images of 16 or 32 bits per pixel are scaled to 8 bits, not clipped; 3 since a photo is turned as its EXIF
# orientation says and an integer image past 8 bits is scaled by its own brightest value (a 12-bit camera's values,
# stored in 16 bits and divided by 65535, read near black).
DECODING = "decoded:3"
# What an image folder keeps where no image's header shows a change of 3 (`decoded_otherwise`): its cached features
# are still right, and a run begun before resumes without a warning that its evaluator changed. A CoOp folder's and a
# Hugging Face dataset's images are not all opened when loaded: they carry DECODING, encoded anew once.
DECODING_BEFORE = "decoded:2"


def open_image(path: str | Path) -> Image.Image:
    """A fully decoded image (so that a truncated file fails here, not later), turned upright
    as its EXIF orientation says (as the datasets library turns a Hugging Face dataset's),
    with 8 bits per channel (`eight_bits`). Over Pillow's pixel limit, the error says the size."""
    try:
        with Image.open(path) as im:
            im.load()
            return eight_bits(ImageOps.exif_transpose(im))
    except Image.DecompressionBombError as exc:  # what the scorer says of a skipped image
        raise Image.DecompressionBombError(why_unreadable(exc)) from exc


def eight_bits(im: Image.Image) -> Image.Image:
    """A grayscale image of 16 or 32 bits per pixel (16-bit PNG, TIFF: PIL's modes I;16, I
    and F) scaled to 8 bits ("L"); any other image as it is. PIL's own conversion to "L" or
    "RGB" clips such an image at 255, which leaves a 16-bit photo two shades. Integer images
    whose values all fit 8 bits are kept as they are; past 8 bits, scaled so that their
    brightest value is white, as a viewer's auto-contrast shows them (a 12-bit camera's values
    divided by 65535 read near black). The scale follows the brightest value smoothly: scaled
    by the bit depth it needs, two almost equal images read 4 times apart (4095 and 4096).
    Float ones in 0..1 are read as 0..1, up to 255 as 8 bits, past it as 16."""
    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im
    pixels = np.asarray(im, dtype=np.float64)
    top = float(pixels.max(initial=0.0))
    if im.mode == "F":
        full = 1.0 if top <= 1.0 else 255.0 if top <= 255 else 65535.0
    else:
        full = max(top, 255.0)
    return Image.fromarray(np.clip(np.rint(pixels * (255.0 / full)), 0, 255).astype(np.uint8))  # 2-D uint8: "L"


def decoded_otherwise(im: Image.Image) -> bool:
    """Whether `open_image` may decode `im` (just opened: its header) otherwise than `DECODING_BEFORE` did: an
    integer image of 16 or 32 bits (its depth is known once decoded), or an EXIF orientation other than upright."""
    if im.mode == "I" or im.mode.startswith("I;16"):
        return True
    # Image.getexif of a PNG decodes it whole to look for EXIF after the pixels; the base reads what the header holds
    return Image.Image.getexif(im).get(ExifTags.Base.Orientation, 1) not in (1, None)


def why_unreadable(exc: BaseException, path: Path | None = None) -> str:
    """Why an image could not be read, in one line: the error's own words, as the scorer says
    them of an image that fails to decode (its own path made its name), or for one over Pillow's
    pixel limit, its size and what to do."""
    pixels = re.search(r"\((\d+) pixels\)", str(exc)) if isinstance(exc, Image.DecompressionBombError) else None
    if pixels and Image.MAX_IMAGE_PIXELS:
        return (f"{int(pixels[1]) / 1e6:.3g} MP, over Pillow's limit of {2 * Image.MAX_IMAGE_PIXELS / 1e6:.3g} MP "
                "(twice PIL.Image.MAX_IMAGE_PIXELS); downscale it or raise the limit")
    said = str(exc).replace(str(path), path.name) if path is not None else str(exc)
    return " ".join(said.split())[:160] or type(exc).__name__


def is_hf_save(root: Path) -> bool:
    """A `save_to_disk` folder (a DatasetDict's, or one Dataset's state beside its arrow files)."""
    return (root / "dataset_dict.json").is_file() or \
        ((root / "state.json").is_file() and next(root.glob("*.arrow"), None) is not None)


def other_kind(root: Path) -> str | None:
    """Which other --dataset reads `root`, said where it looks like one (a folder of class
    folders was asked for; the hint said `--dataset imagefolder`, which fails there too)."""
    if is_hf_save(root) or next(root.glob("*.parquet"), None) or next(root.glob("*/*.parquet"), None):
        return f"{root} reads as a Hugging Face dataset: --dataset hf"
    nested = sorted(root.glob("*/split_*.json"))
    if nested:
        return f"a CoOp split file is in {nested[0].parent}: --dataset coop --data-root {nested[0].parent}"
    if next(root.glob("split_*.json"), None):
        return f"{root} holds a CoOp split file: --dataset coop"
    return None


@dataclass
class FolderScan:
    """What `_scan_class_folders` found in a folder of class folders; ids are paths relative to it."""
    classes: list[str]
    by_class: dict[int, list[str]]
    unreadable: dict[str, str] = field(default_factory=dict)  # id -> why (`why_unreadable`)
    passed_over: Counter = field(default_factory=Counter)  # files of a kind not read as images, by kind
    large: list[str] = field(default_factory=list)  # images over Pillow's pixel limit, read anyway: "id (100 MP)"
    decoded_otherwise: bool = False  # an image `decoded_otherwise` is among them (`DECODING`)

    def add(self, other: FolderScan, prefix: str) -> None:
        """`other`'s files, its ids under `prefix` (a split folder's), counted with these."""
        self.unreadable.update({f"{prefix}{i}": why for i, why in other.unreadable.items()})
        self.passed_over.update(other.passed_over)
        self.large += [f"{prefix}{i}" for i in other.large]
        self.decoded_otherwise |= other.decoded_otherwise


def data_files(folder: Path, unreadable: dict[str, str], root: Path, data_root: Path | None = None) -> list[Path]:
    """Every data file under `folder` (`is_data`), sub-folders that are links followed as a
    linked class folder or image is: those to folders elsewhere. A link to a folder of the
    data itself (`data_root`, default `root`: another class's, another split's, or one that
    holds them) is not followed, said in `unreadable`: its images would be read under this
    class too (in train here, in test there). Each folder once, so a loop ends. A folder that
    cannot be listed goes into `unreadable` (its id relative to `root`, why)."""
    seen: set[tuple[int, int]] = set()
    files = []
    inside = Path(os.path.realpath(data_root or root))

    def of_the_data(link: Path) -> bool:
        target = Path(os.path.realpath(link))
        return target.is_relative_to(inside) or inside.is_relative_to(target)

    def cannot_list(exc: OSError) -> None:
        where = Path(exc.filename or folder)
        unreadable[f"{where.relative_to(root) if where.is_relative_to(root) else where}/"] = why_unreadable(exc)

    for top, dirs, names in os.walk(folder, followlinks=True, onerror=cannot_list):
        stat = os.stat(top)
        if (stat.st_dev, stat.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        linked = {d for d in dirs if is_data(d) and os.path.islink(os.path.join(top, d))
                  and of_the_data(Path(top, d))}
        for d in sorted(linked):
            unreadable[f"{Path(top, d).relative_to(root)}/"] = (f"a link to {os.path.realpath(os.path.join(top, d))}, "
                                                               "a folder of the data itself: not read twice")
        dirs[:] = sorted(d for d in dirs if is_data(d) and d not in linked)
        files += [Path(top, name) for name in sorted(names) if is_data(name)]
    return files


def read_header(path: Path) -> tuple[bool, str]:
    """(whether it is `decoded_otherwise`, its size where it is over Pillow's pixel limit: "100 MP"),
    from the image's header alone (cheap); Pillow's error where it cannot read the file."""
    with warnings.catch_warnings(record=True) as caught:  # Pillow's bomb warning names no file: said by `warn_scan`
        warnings.simplefilter("always")
        with Image.open(path) as im:
            otherwise, pixels = decoded_otherwise(im), im.width * im.height
            im.verify()
    large = any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)
    return otherwise, f"{pixels / 1e6:.3g} MP" if large else ""


def _scan_class_folders(root: Path, data_root: Path | None = None) -> FolderScan:
    """The class folders of an ImageFolder and their images. Only the image headers are read
    here (cheap); full decoding errors surface when features are computed and are skipped and
    counted there."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and is_data(p.name))
    if not classes:
        hint = other_kind(root)
        raise PromptclimbError(f"{root} has no class sub-folders (expected one folder per class)"
                               + (f"; {hint}" if hint else ""))
    scan = FolderScan(classes, {})
    others: dict[str, set[str]] = {}  # class -> kinds of file passed over
    for c, name in enumerate(classes):
        ids = []
        for path in data_files(root / name, scan.unreadable, root, data_root):
            image_id = str(path.relative_to(root))
            if not path.exists():  # a link whose target is gone: it was meant to be read
                scan.unreadable[image_id] = f"a link to {os.readlink(path)}, which does not exist"
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                kind = path.suffix.lower() or path.name
                others.setdefault(name, set()).add(kind)
                scan.passed_over[kind] += 1
                continue
            try:
                otherwise, large = read_header(path)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                # over 179 million pixels, Pillow refuses to open an image at all (a bomb, to it)
                scan.unreadable[image_id] = why_unreadable(exc, path)
                continue
            scan.decoded_otherwise |= otherwise
            if large:
                scan.large.append(f"{image_id} ({large})")
            ids.append(image_id)
        scan.by_class[c] = ids
    empty = [classes[c] for c, ids in scan.by_class.items() if not ids]
    if empty:
        # files of a kind never read (.heic from a phone) were said as unreadable images
        kinds = sorted(set().union(*(others.get(name, set()) for name in empty)))
        said = (f" (files there: {', '.join(kinds[:5])}; the images read are "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))})") if kinds else ""
        hint = other_kind(root)  # a folder of parquet files: its data/ read as a class
        raise PromptclimbError(f"{root}: class folder(s) with no readable images: {', '.join(empty)}{said}"
                               + (f"; {hint}" if hint else ""))
    return scan


def warn_unreadable(root: Path, unreadable: dict[str, str]) -> None:
    """One line for the files skipped as unreadable (`id -> why`), each with its reason."""
    if unreadable:
        shown = ", ".join(f"{i} ({why})" for i, why in list(unreadable.items())[:5])
        warnings.warn(f"{root}: skipped {len(unreadable)} unreadable image(s): {shown}"
                      + (" ..." if len(unreadable) > 5 else ""), stacklevel=3)


def warn_scan(root: Path, scan: FolderScan) -> None:
    """What the scan of an image folder left out or read with a warning, a line each."""
    warn_unreadable(root, scan.unreadable)
    if scan.passed_over:  # a class's .heic photos beside its .jpg ones were left out, unsaid
        kinds = ", ".join(f"{kind} ({n})" for kind, n in sorted(scan.passed_over.items(), key=lambda k: (-k[1], k[0])))
        warnings.warn(f"{root}: left out {sum(scan.passed_over.values())} file(s) of a kind not read as an image: "
                      f"{kinds} (the kinds read: {', '.join(sorted(IMAGE_EXTENSIONS))})", stacklevel=3)
    if scan.large:  # Pillow's own warning says a size and "decompression bomb", never which file
        shown = ", ".join(scan.large[:5]) + (" ..." if len(scan.large) > 5 else "")
        warnings.warn(f"{root}: {len(scan.large)} image(s) over Pillow's pixel limit (PIL.Image.MAX_IMAGE_PIXELS, "
                      f"{(Image.MAX_IMAGE_PIXELS or 0) / 1e6:.3g} MP) read anyway (Pillow warns of each, naming no "
                      f"file, as a possible decompression bomb): {shown}", stacklevel=3)


def _require_root(data_root: str | None, what: str) -> Path:
    if not data_root:
        raise PromptclimbError(f"--dataset {what} needs --data-root DIR")
    return check_data_folder(Path(data_root).expanduser()).resolve()


def check_data_folder(root: Path) -> Path:
    """`root` when it is a folder, else PromptclimbError saying what it is instead."""
    if not root.is_dir():
        raise PromptclimbError(f"data folder {root} " + ("is a file, not a folder" if root.exists() else "does not exist"))
    return root


# The names a split folder goes by, in any case: `Train/ Val/ Test/` were read as three classes, each holding every
# real class's images.
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


def split_folders(root: Path) -> dict[str, Path]:
    """`root`'s split folders by split ("train", "val", "test"), or {} where its folders are
    classes: a train and a test folder make split folders (a class may be named `train`).
    Refused: folders that are all split folders without both; two folders of one split;
    any other folder beside split folders (its images would not be read)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and is_data(p.name))
    by_split: dict[str, list[Path]] = {}
    for folder in folders:
        if folder.name.lower() in SPLIT_NAMES:
            by_split.setdefault(SPLIT_NAMES[folder.name.lower()], []).append(folder)
    if not {"train", "test"} <= by_split.keys():
        if folders and all(f.name.lower() in SPLIT_NAMES for f in folders):
            raise PromptclimbError(f"{root} holds {', '.join(f.name for f in folders)}/ only: split folders need "
                                   "train/ and test/ (val/ is optional), each with one sub-folder per class")
        return {}
    for split, alike in by_split.items():
        if len(alike) > 1:
            raise PromptclimbError(f"{root} has {' and '.join(f'{f.name}/' for f in alike)}: two folders of its "
                                   f"{split} split; merge them into one")
    found = {split: by_split[split][0] for split in ("train", "val", "test") if split in by_split}
    others = [f"{f.name}/" for f in folders if f.name.lower() not in SPLIT_NAMES]
    if others:
        named = ", ".join(f"{folder.name}/" for folder in found.values())
        raise PromptclimbError(f"{root} has split folders ({named}) and beside them {', '.join(others[:5])}"
                               f"{' ...' if len(others) > 5 else ''}, which would not be read: move class folders "
                               f"into the split folders (each class in train/ and test/), anything else out of {root}")
    return found


def load_imagefolder(data_root: str | None) -> Dataset:
    """Any folder with one sub-folder of images per class (see the module docstring)."""
    root = _require_root(data_root, "imagefolder")
    if is_hf_save(root):  # its split folders read as class folders of arrow files, or train/ as a tree
        raise PromptclimbError(f"{root} is not a folder of class folders: {other_kind(root)}")
    split_dirs = split_folders(root)
    if split_dirs:
        classes = None
        splits: dict[str, Labelled] = {"val": []}
        scan = FolderScan([], {})
        for split, folder in split_dirs.items():
            found = _scan_class_folders(folder, root)
            if classes is None:
                classes = found.classes
            elif found.classes != classes:
                # say which: among a hundred class folders, one spelled otherwise is hard to find
                extra, missing = sorted(set(found.classes) - set(classes)), sorted(set(classes) - set(found.classes))
                said = "; ".join(f"{what}: {', '.join(map(repr, names))}" for what, names in (
                    (f"only in {folder.name}/", extra), ("not in it", missing)) if names)
                raise PromptclimbError(f"{folder} has different class folders than {split_dirs['train']} ({said})")
            splits[split] = sorted((f"{folder.name}/{i}", c) for c, ids in found.by_class.items() for i in ids)
            scan.add(found, f"{folder.name}/")
    else:
        scan = _scan_class_folders(root)
        classes = scan.classes
        few = [f"{classes[c]} ({len(ids)})" for c, ids in scan.by_class.items() if len(ids) < 2]
        if few:  # no test image: the class would be left out of test accuracy, unsaid
            raise PromptclimbError(f"{root}: class folder(s) with a single image: {', '.join(few[:5])} "
                                   f"({FOLDER_SPLIT_NEEDS})")
        splits = deterministic_split(scan.by_class, tag=f"imagefolder:{root.name}")
    warn_scan(root, scan)
    files = files_digest(root, [i for items in splits.values() for i in items])
    decoding = DECODING if scan.decoded_otherwise else DECODING_BEFORE
    return Dataset(
        name="imagefolder", classnames=published_names(classes), folders=list(classes),
        description="photos", load_image=lambda image_id: open_image(root / image_id),
        splits=splits, identity=f"{root}:{files}:{decoding}",
    )


def find_split_json(root: Path) -> Path | None:
    """The CoOp split file in `root` (the first by name of several, said: one was taken unsaid)."""
    found = sorted(root.glob("split_*.json"))
    if len(found) > 1:
        warnings.warn(f"{root} holds {len(found)} split files ({', '.join(f.name for f in found)}): using "
                      f"{found[0].name}", stacklevel=2)
    return found[0] if found else None


def read_coop_split(split_file: Path, image_root: Path) -> tuple[dict[str, Labelled], dict[int, str]]:
    """(splits, label -> classname) from a CoOp split JSON; ids are paths under image_root."""
    try:
        raw = json.loads(split_file.read_text())
    except (OSError, ValueError) as exc:
        raise PromptclimbError(f"cannot read split file {split_file}: {exc}") from exc
    if not isinstance(raw, dict):
        raise PromptclimbError(f"{split_file} is not a CoOp split file (expected an object with train, val and "
                               f"test lists, not {type(raw).__name__})")
    splits: dict[str, Labelled] = {}
    names: dict[int, str] = {}
    for split in ("train", "val", "test"):
        entries = raw.get(split) or []
        if not isinstance(entries, list):
            raise PromptclimbError(f"{split_file}: {split!r} is not a list of [path, label, classname] entries")
        items = []
        for entry in entries:
            try:
                path, label, classname = str(entry[0]), int(entry[1]), str(entry[2])
            except (IndexError, KeyError, TypeError, ValueError) as exc:
                raise PromptclimbError(f"{split_file}: bad entry {entry!r} in {split!r}") from exc
            if label < 0:
                raise PromptclimbError(f"{split_file}: bad entry {entry!r} in {split!r} (a label is 0 or more)")
            items.append((path, label))
            if names.setdefault(label, classname) != classname:  # the first was taken, unsaid
                raise PromptclimbError(f"{split_file}: label {label} is named both {names[label]!r} and "
                                       f"{classname!r} (entry {entry!r} in {split!r}): one class name per label")
        splits[split] = sorted(items)
    if not splits["train"] or not splits["test"]:
        raise PromptclimbError(f"{split_file} has no 'train' or no 'test' entries")
    gaps = sorted(set(range(max(names) + 1)) - set(names))
    if gaps:  # the labels index the classes
        raise PromptclimbError(f"{split_file}: no entry has label {', '.join(map(str, gaps[:5]))}: labels must run "
                               f"from 0 to the number of classes - 1")
    return splits, names


def find_image_root(root: Path, sample: str) -> Path:
    """The folder under which the split file's relative paths exist."""
    candidates = [root, root / "images", *sorted(p for p in root.iterdir() if p.is_dir())]
    for candidate in candidates:
        if (candidate / sample).is_file():
            return candidate
    raise PromptclimbError(f"images of the split file not found under {root} (looked for {sample!r} "
                           f"in {', '.join(str(c) for c in candidates[:4])})")


def drop_missing(root: Path, splits: dict[str, Labelled]) -> dict[str, Labelled]:
    missing = {i: "not found" for items in splits.values() for i, _ in items if not (root / i).is_file()}
    if missing:
        warn_unreadable(root, missing)
        gone = set(missing)
        splits = {k: [(i, c) for i, c in v if i not in gone] for k, v in splits.items()}
    return splits


def load_coop_folder(data_root: str | None) -> Dataset:
    """A CoOp-format folder: images plus a `split_*.json`."""
    root = _require_root(data_root, "coop")
    split_file = find_split_json(root)
    if split_file is None:
        raise PromptclimbError(f"no split_*.json in {root} (CoOp format: images + a split JSON); " + (
            other_kind(root) or "for a plain folder with one sub-folder per class use --dataset imagefolder"))
    splits, names = read_coop_split(split_file, root)
    image_root = find_image_root(root, splits["train"][0][0])
    splits = drop_missing(image_root, splits)
    folders = [names[c] for c in range(max(names) + 1)]  # read_coop_split refuses a label gap
    return Dataset(
        name="coop", classnames=published_names(folders), folders=folders, description="photos",
        load_image=lambda image_id: open_image(image_root / image_id), splits=splits,
        identity=(f"{root}:{split_file.name}:{files_digest(image_root, [i for v in splits.values() for i in v])}"
                  f":{DECODING}"),
    )
