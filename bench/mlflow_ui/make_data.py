"""An hf save_to_disk dataset from the embedded Fashion-MNIST subset (train 1000, test 2000)."""
import sys

import datasets
import numpy as np
from PIL import Image

from promptclimb.evaluators.demo.fashion_mnist import OFFICIAL_CLASSNAMES

d = np.load(sys.argv[1])
features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(OFFICIAL_CLASSNAMES))})
splits = {}
for split in ("train", "test"):
    images = [Image.fromarray(a) for a in d[f"{split}_images"]]
    splits[split] = datasets.Dataset.from_dict({"image": images, "label": d[f"{split}_labels"].tolist()},
                                              features=features)
datasets.DatasetDict(splits).save_to_disk(sys.argv[2])
print("saved", {k: len(v) for k, v in splits.items()})
