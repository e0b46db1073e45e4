"""CLIP-like backbones behind one small interface: `load_backbone(name, ...) -> Backbone`.

One concept per module:
- `device`: the device and --precision (checks that say what is possible here), per-device
  batch sizes;
- `model`: the `Backbone` class, normalised float32 features for images and texts;
- `text`: exact padding truncation and the shared-prefix encoder for causal text towers;
- `onednn`: open_clip ViT image towers on a CPU, their blocks through oneDNN;
- `loading`: `load_backbone`, pretrained tags, local weights files, project backbones and
  model configs registered as data;
- `compat`: the private torch and open_clip calls the others rely on, each tested in
  tests/test_compat.py.

The names below are the package's interface; import them from here.
"""

from __future__ import annotations

from promptclimb.evaluators.backbones.device import (IMAGE_BATCH, TEXT_CHUNK, check_device, check_precision,
                                                     cpu_supports_bf16, default_device)
from promptclimb.evaluators.backbones.loading import (CONNECT_TIMEOUT_S, MODEL_CONFIGS_ENV, PROJECT_BACKBONES,
                                                      file_sha256, load_backbone, register_model_configs)
from promptclimb.evaluators.backbones.model import Backbone
from promptclimb.evaluators.backbones.onednn import encode_image_blocks, image_block_weights, supports_image_blocks
from promptclimb.evaluators.backbones.text import (PREFIX_GROUP_WINDOW, encode_text_shared_prefix,
                                                   encode_text_truncated, encode_token_embeddings,
                                                   supports_shared_prefix, supports_truncation, token_embedding)

__all__ = [
    "CONNECT_TIMEOUT_S", "IMAGE_BATCH", "MODEL_CONFIGS_ENV", "PREFIX_GROUP_WINDOW", "PROJECT_BACKBONES", "TEXT_CHUNK",
    "Backbone", "check_device", "check_precision", "cpu_supports_bf16", "default_device", "encode_image_blocks",
    "encode_text_shared_prefix", "encode_text_truncated", "encode_token_embeddings", "file_sha256",
    "image_block_weights", "load_backbone", "register_model_configs", "supports_image_blocks",
    "supports_shared_prefix", "supports_truncation", "token_embedding",
]
