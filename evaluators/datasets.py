"""Datasets and reproducible few-shot splits.

A `Dataset` is class names + a way to load an image by id + labelled id lists per split.
A `FewShotSplit` draws k images per class for train and min(k, 4) for val, reproducibly
from (dataset, shots, seed); test is the dataset's whole held-out test list and is never
used to choose anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PIL import Image

# (image_id, label) pairs; image ids are strings so that every dataset can key its cache.
Labelled = list[tuple[str, int]]


@dataclass
class Dataset:
    name: str
    classnames: list[str]
    description: str  # what the images are, told to the LLM: "satellite photos of land use"
    load_image: Callable[[str], Image.Image]
    # "train" and "val" are the pools few-shot examples are drawn from ("val" may be empty:
    # then val is drawn from what is left of "train"); "test" is the held-out test set.
    splits: dict[str, Labelled]
    identity: str = ""  # what distinguishes this data from other data of the same name (root, version)


# name -> "module:function" returning a Dataset; loaders take (data_root: str | None).
DATASETS: dict[str, str] = {
    "eurosat": "evaluators.eurosat:load_eurosat",
    "imagefolder": "evaluators.datasets:load_imagefolder",
    "coop": "evaluators.datasets:load_coop_folder",
    "fashion-mnist": "evaluators.demo.fashion_mnist:load_fashion_mnist",
}
