"""On a machine with a CUDA GPU: the encoders' features on the GPU against the CPU's, and their speed.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_cuda.py

For the embedded `demo` backbone and ViT-B-32 (open_clip's random initialisation, seed 0,
loaded back from a safetensors file as `--weights` does: speed and agreement only), one batch
of 64 random images and 8 class texts is encoded on the CPU in fp32 (the reference), then on
CUDA in fp32 and in bf16. Prints each one's feature-cache key, the largest difference of its
normalised image and text features from the reference, and the encoder's images/s over 512
images in the backbone's own batches (no decoding). fp32 on CUDA should agree to ~1e-7
(it shares the CPU's cache key); bf16 to ~2e-3 (its own key). Asserts nothing.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from promptclimb.evaluators.backbones import load_backbone

CLASSES = ["shirt", "trouser", "pullover", "dress", "coat", "sandal", "sneaker", "bag"]


def random_vit_weights(folder: Path) -> Path:
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = open_clip.create_model("ViT-B-32").state_dict()
    path = folder / "vit-b-32-random.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("bench_cuda: no CUDA device here; nothing to compare")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    texts = [f"a photo of a {c}." for c in CLASSES]
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("demo", {}, (64, 1, 28, 28)),
                 ("ViT-B-32", {"weights": str(random_vit_weights(Path(tmp)))}, (64, 3, 224, 224))]
        for name, weights, shape in cases:
            torch.manual_seed(0)
            images = torch.randn(*shape)
            many = torch.cat([images] * 8)
            reference = None
            for device, precision in [("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16")]:
                backbone = load_backbone(name, device=device, precision=precision, **weights)
                image, text = backbone.encode_images(images), backbone.encode_texts(texts)  # also the warm-up
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for i in range(0, len(many), backbone.image_batch):
                    backbone.encode_images(many[i:i + backbone.image_batch])  # returns on the CPU: synchronised
                seconds = time.perf_counter() - start
                reference = reference or (image, text)
                print(f"{name} {device} {precision}: key ...{backbone.feature_identity[-40:]!r}  "
                      f"image diff vs cpu fp32 {(image - reference[0]).abs().max():.1e}  "
                      f"text diff {(text - reference[1]).abs().max():.1e}  {len(many) / seconds:.0f} images/s",
                      flush=True)


if __name__ == "__main__":
    main()
