"""The `fashion-mnist` dataset, from the compact subset shipped in `data/`.

The subset comes from the official Fashion-MNIST **test** set only (the image tower is
trained on the official train set), 100 images per class to draw few-shot examples from
("train") and 200 other images per class as the held-out "test" split. `build_subset.py`
rebuilds it from the Debian package `dataset-fashion-mnist`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from promptclimb.evaluators.datasets import Dataset

DATA_DIR = Path(__file__).resolve().parent / "data"
SUBSET_FILE = "fashion_mnist_subset.npz"
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist

# The official label order. OFFICIAL_CLASSNAMES are the published labels: a run's start
# names. CLASSNAMES, hand-cleaned to read naturally inside a prompt ("a photo of a {}."), is
# the named set `--classnames clean` (87.7% against 79.4% for "a photo of a {}." on the demo
# backbone's test split; issue 24).
CLASSNAMES = [
    "T-shirt", "trousers", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]
OFFICIAL_CLASSNAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DESCRIPTION = "small grayscale photos (28x28 pixels) of single clothing items and accessories"


def read_idx(path: str | Path) -> np.ndarray:
    """An array from an IDX file (the MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte, the only type Fashion-MNIST uses
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_debian_split(split: str, root: str | Path = DEBIAN_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of the official "train" or "t10k" set."""
    root = Path(root)
    images, labels = root / f"{split}-images-idx3-ubyte.gz", root / f"{split}-labels-idx1-ubyte.gz"
    if not images.exists() or not labels.exists():
        raise SystemExit(
            f"Fashion-MNIST not found under {root} (looked for {images.name} and {labels.name}).\n"
            "Install the Debian package first:  sudo apt-get install dataset-fashion-mnist"
        )
    return read_idx(images), read_idx(labels)


def _read_subset(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """The subset's arrays and digest, read once per version of the file: keyed on its size and
    modification time too, so that a subset replaced in the same process (a notebook that
    rebuilds it) is read again; keyed on the path alone, its old arrays and digest came back."""
    stat = path.stat()
    return _read_subset_version(path.resolve(), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4)
def _read_subset_version(path: Path, size: int, mtime_ns: int) -> tuple[dict[str, np.ndarray], str]:
    raw = path.read_bytes()
    with np.load(io.BytesIO(raw)) as npz:  # the bytes digested: a file replaced meanwhile is not mixed in
        arrays = {key: npz[key] for key in npz.files}
    return arrays, hashlib.sha256(raw).hexdigest()[:16]


def load_fashion_mnist(data_root: str | None = None) -> Dataset:
    """The shipped Fashion-MNIST subset (or `data_root/fashion_mnist_subset.npz`)."""
    path = Path(data_root).expanduser() / SUBSET_FILE if data_root else DATA_DIR / SUBSET_FILE
    if data_root and not path.exists():
        # the usual cause is one --data-root meant for other data (a sweep, a run's other
        # dataset): rebuilding the shipped subset is not what the user needs to hear
        raise FileNotFoundError(
            f"--data-root {data_root} holds no {SUBSET_FILE}: fashion-mnist is read from the data embedded in "
            f"promptclimb when no --data-root is given (a --data-root is for a subset built with "
            f"`python -m promptclimb.evaluators.demo.build_subset --out DIR/{SUBSET_FILE}`)")
    if not path.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST subset not found at {path}; rebuild it with "
            "`python -m promptclimb.evaluators.demo.build_subset` (needs the Debian package dataset-fashion-mnist)"
        )
    arrays, digest = _read_subset(path)
    images: dict[str, np.ndarray] = {}
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for split in ("train", "test"):
        # Image ids name the image's index in the official test set: stable and traceable.
        for pixels, label, index in zip(arrays[f"{split}_images"], arrays[f"{split}_labels"],
                                        arrays[f"{split}_source_index"]):
            image_id = f"t10k-{int(index):05d}"
            images[image_id] = pixels
            splits[split].append((image_id, int(label)))

    def load_image(image_id: str) -> Image.Image:
        try:
            return Image.fromarray(images[image_id], mode="L")
        except KeyError:
            raise KeyError(f"no image {image_id!r} in the Fashion-MNIST subset") from None

    return Dataset(
        name="fashion-mnist",
        classnames=list(OFFICIAL_CLASSNAMES),
        description=DESCRIPTION,
        load_image=load_image,
        splits=splits,
        identity=f"fashion-mnist-subset:{digest}",
        named_sets={"clean": list(CLASSNAMES)},
    )
