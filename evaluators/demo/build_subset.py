"""Build `data/fashion_mnist_subset.npz`, the Fashion-MNIST subset shipped in the repo.

Taken from the official Fashion-MNIST **test** set (t10k) only, so it never overlaps the
60,000 training images the demo image tower is trained on. Per class, a seeded random
choice of 100 images forms the "train" pool (few-shot examples are drawn from it) and 200
other images the held-out "test" split: 3,000 images, about 2 MB.

Re-run (needs `sudo apt-get install dataset-fashion-mnist`; output is byte-identical):

    python -m promptclimb.evaluators.demo.build_subset
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from promptclimb.evaluators.demo.fashion_mnist import DATA_DIR, DEBIAN_ROOT, SUBSET_FILE, read_debian_split


def build_subset(root: Path, out: Path, per_class_train: int, per_class_test: int, seed: int) -> None:
    images, labels = read_debian_split("t10k", root)
    rng = np.random.default_rng(seed)
    chosen = {"train": [], "test": []}
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(labels == label))
        chosen["train"].append(indices[:per_class_train])
        chosen["test"].append(indices[per_class_train:per_class_train + per_class_test])
    arrays = {}
    for split, parts in chosen.items():
        index = np.sort(np.concatenate(parts))  # sorted: the file does not depend on class order
        arrays[f"{split}_images"] = images[index]
        arrays[f"{split}_labels"] = labels[index]
        arrays[f"{split}_source_index"] = index.astype(np.int32)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): "
          f"{len(arrays['train_labels'])} train + {len(arrays['test_labels'])} test images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEBIAN_ROOT, help="folder with the Fashion-MNIST .gz files")
    parser.add_argument("--out", type=Path, default=DATA_DIR / SUBSET_FILE)
    parser.add_argument("--per-class-train", type=int, default=100)
    parser.add_argument("--per-class-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build_subset(args.root, args.out, args.per_class_train, args.per_class_test, args.seed)


if __name__ == "__main__":
    main()
