"""The default backbone: one rule for `promptclimb search`, `promptclimb eval` and the
Python API (torch-free, so a command can apply it before anything is loaded); and the
encoder precisions those commands offer (`--precision`)."""

from __future__ import annotations

EMBEDDED_DATASET = "fashion-mnist"  # the shipped Fashion-MNIST subset
EMBEDDED_BACKBONE = "demo"  # its image tower was trained on that dataset, and only on it
DEFAULT_BACKBONE, DEFAULT_PRETRAINED = "ViT-B-32", "openai"
# fp32: full precision, the default. bf16: image and text encoders in bfloat16 (autocast
# arithmetic) on a CPU with bf16 instructions (AVX512-BF16, AMX): ViT-B-32 images 2.1-2.6x
# faster on 2 cores, features within ~2e-3 (README, Image encoding); cached apart from fp32
# ones (evaluators/backbones/model.py, Backbone.feature_identity).
PRECISIONS = ("fp32", "bf16")
DEFAULT_PRECISION = "fp32"
PRECISION_HELP = ("Encoder precision: fp32 (full precision; on CUDA without TF32) or bf16 (bfloat16 autocast: "
                  "about 2x faster image and text encoding on CPUs with AVX512-BF16/AMX; "
                  "features within ~2e-3, cached apart from fp32 ones).")


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

# --metric balance: how many images of the train pool outside the few-shot split are drawn
# and scored without their labels (docs/results.md, "Ranked by the balance of predictions":
# with 200 the pick is noisier than with about a thousand).
UNLABELED_IMAGES = 1000
