"""The default backbone: one rule for `promptclimb search`, `promptclimb eval` and the
Python API (torch-free, so a command can apply it before anything is loaded)."""

from __future__ import annotations

EMBEDDED_DATASET = "fashion-mnist"  # the shipped Fashion-MNIST subset
EMBEDDED_BACKBONE = "demo"  # its image tower was trained on that dataset, and only on it
DEFAULT_BACKBONE, DEFAULT_PRETRAINED = "ViT-B-32", "openai"


def default_backbone(dataset: str, backbone: str | None, pretrained: str | None,
                     weights: str | None) -> tuple[str, str | None]:
    """(backbone, pretrained tag) to use. A backbone named by the user is kept as given.
    Otherwise the embedded model for the embedded dataset, and OpenAI's ViT-B-32 for any
    other data (with --weights FILE: that file's ViT-B-32), never the embedded tower, which
    knows Fashion-MNIST and nothing else."""
    if backbone:
        return backbone, pretrained
    if dataset == EMBEDDED_DATASET:
        return EMBEDDED_BACKBONE, pretrained
    return DEFAULT_BACKBONE, pretrained or (None if weights else DEFAULT_PRETRAINED)
