"""A folder of many classes for `--dataset imagefolder`, from the embedded Fashion-MNIST images.

    .venv/bin/python bench/make_many_classes.py DIR [--classes 397]
    HF_HUB_OFFLINE=1 .venv/bin/promptclimb search --dataset imagefolder --data-root DIR --backbone demo --shots 1

No dataset with hundreds of classes can be downloaded where this was written, so this one
stands in for SUN397's size: class k holds Fashion-MNIST images of item k % 10 under a name
such as `woolen_coat` (`train/` 2 images, `test/` 3). The names do not describe the images,
so its accuracy means nothing; it shows whether a search with that many classes runs, and
what its messages and run folder cost (docs/results.md, "Many classes").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from promptclimb.evaluators.demo.fashion_mnist import CLASSNAMES, DATA_DIR, SUBSET_FILE

ADJECTIVES = ["red", "blue", "green", "black", "white", "grey", "brown", "pink", "yellow", "purple", "orange",
              "beige", "navy", "striped", "checked", "dotted", "woolen", "cotton", "leather", "denim", "silk",
              "linen", "velvet", "suede", "knitted", "padded", "vintage", "modern", "classic", "casual", "formal",
              "sporty", "summer", "winter", "children's", "women's", "men's", "cheap", "designer", "worn", "new"]
PER_SPLIT = {"train": 2, "test": 3}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--classes", type=int, default=397)
    args = parser.parse_args()
    if not 10 <= args.classes <= 10 * len(ADJECTIVES):
        parser.error(f"--classes must be between 10 and {10 * len(ADJECTIVES)}")
    data = np.load(DATA_DIR / SUBSET_FILE)
    used = {split: [0] * 10 for split in PER_SPLIT}
    for k in range(args.classes):
        item = k % 10
        name = f"{ADJECTIVES[k // 10]} {CLASSNAMES[item]}".replace(" ", "_")
        for split, count in PER_SPLIT.items():
            images = data[f"{split}_images"][data[f"{split}_labels"] == item]
            folder = args.out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                Image.fromarray(images[used[split][item] % len(images)]).save(folder / f"{used[split][item]}.png")
                used[split][item] += 1
    print(f"{args.classes} classes in {args.out}")


if __name__ == "__main__":
    main()
