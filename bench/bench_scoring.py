"""Templates scored per second: three ways of scoring the same 50 templates on EuroSAT-sized work.

    python bench/bench_scoring.py            # ViT-B-32 (random weights), 2 threads, CPU
    python bench/bench_scoring.py --device cuda

(a) naive: the paper's released-code style: one template at a time, and per class the
    zero-shot classifier loop of CLIP research code (tokenise, encode, normalise, average),
    77 tokens, no cache;
(b) batched: open_clip `encode_text` on all 500 texts in one batch (77 tokens);
(c) `ClipEvaluator.score_templates` (one batched pass, exact padding truncation, each
    template's shared prefix computed once for all its classes), with a
    cold text cache (a fresh PROMPTCLIMB_HOME), so nothing is read back from disk.

All three get the same precomputed image features; image encoding is not timed (it is
cached once per split). Random weights are fine for speed; they also let (a), (b) and (c)
be checked for the same accuracies. Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


EUROSAT_CLASSES = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road",
                   "Industrial Buildings", "Pasture Land", "Permanent Crop Land", "Residential Buildings",
                   "River", "Sea or Lake"]


def bench_templates(n: int) -> list[str]:
    """n distinct realistic templates: our EuroSAT pool, then OpenAI's ImageNet templates."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from promptclimb.agent.core.pools import read_pool_file
    from promptclimb.agent.core.paths import prompts_dir

    templates = read_pool_file(prompts_dir() / "pools" / "eurosat.txt")
    templates += [make("{}") for make in OPENAI_IMAGENET_TEMPLATES]
    templates = list(dict.fromkeys(templates))[:n]
    assert len(templates) == n
    return templates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--templates", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="promptclimb-bench-")
    os.environ["PROMPTCLIMB_HOME"] = home  # cold caches, and nothing written to ~/.cache
    import torch
    import torch.nn.functional as F
    from PIL import Image

    import open_clip
    from promptclimb.evaluators.backbones import load_backbone
    from promptclimb.evaluators.datasets import Dataset, FewShotSplit
    from promptclimb.evaluators.scorer import ClipEvaluator

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    templates = bench_templates(args.templates)
    classes = EUROSAT_CLASSES
    backbone = load_backbone(args.model, device=args.device)  # no pretrained tag: random weights
    model, tokenizer = backbone.model, backbone.tokenizer

    # A stand-in for a 1-shot EuroSAT split: 1 train + 1 val image per class (encoded once, untimed).
    images = {f"{c}/{s}": Image.new("RGB", (64, 64), (25 * c, 200 - 15 * c, 40 + 20 * c))
              for c in range(10) for s in ("train", "val")}
    dataset = Dataset(name="bench-eurosat", classnames=classes, description="satellite photos",
                      load_image=images.__getitem__, splits={}, identity="bench")
    split = FewShotSplit("bench-eurosat", 1, 1, {s: [(f"{c}/{s}", c) for c in range(10)] for s in ("train", "val")})
    evaluator = ClipEvaluator(backbone, dataset, split)
    feats = {s: evaluator.image_features(s) for s in ("train", "val")}

    def accuracies(text_features):  # [C, D] -> accuracy per split
        return {s: float(((x @ text_features.T).argmax(1) == y).float().mean()) for s, (x, y) in feats.items()}

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - start, out

    def naive():
        results = []
        with torch.inference_mode(), backbone._autocast():
            for template in templates:
                # The zero-shot classifier loop of CLIP-style research code, called with [template]:
                # per class, tokenise and encode its texts (here one), normalise, average, renormalise.
                per_class = []
                for c in classes:
                    emb = F.normalize(model.encode_text(tokenizer([template.format(c)]).to(args.device)).float(), dim=-1)
                    per_class.append(F.normalize(emb.mean(0), dim=-1))
                results.append(accuracies(torch.stack(per_class).cpu()))
        return results

    def batched():
        texts = [t.format(c) for t in templates for c in classes]
        with torch.inference_mode(), backbone._autocast():
            text = F.normalize(model.encode_text(tokenizer(texts).to(args.device)).float(), dim=-1).cpu()
        text = text.view(len(templates), len(classes), -1)
        return [accuracies(text[i]) for i in range(len(templates))]

    def ours():
        return [s.accuracy for s in evaluator.score_templates(templates)]

    with torch.inference_mode():  # warm-up (allocators, kernels) on other strings
        model.encode_text(tokenizer(["warm up {}".format(c) for c in classes]).to(args.device))

    n = len(templates)
    print(f"{args.model} (random weights), {len(classes)} classes x {n} templates = {n * len(classes)} texts, "
          f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"open_clip {open_clip.__version__}")
    t_a, acc_a = timed(naive)
    print(f"{'(a) naive loop (per template, per-class tokenising, 77 tokens):':72s}{t_a:7.2f} s  {n / t_a:8.2f} templates/s",
          flush=True)
    t_b, acc_b = timed(batched)
    print(f"{'(b) open_clip encode_text, all texts in one batch (77 tokens):':72s}{t_b:7.2f} s  {n / t_b:8.2f} templates/s",
          flush=True)
    t_c, acc_c = timed(ours)
    print(f"{'(c) ClipEvaluator.score_templates (truncated, shared prefix, cold):':72s}{t_c:7.2f} s  {n / t_c:8.2f} templates/s")
    t_warm, _ = timed(ours)
    print(f"{'    (c) again with the text cache warm:':72s}{t_warm:7.2f} s  {n / t_warm:8.2f} templates/s")
    print(f"ratio c/a = {t_a / t_c:.1f}x   ratio c/b = {t_b / t_c:.1f}x")
    same = acc_a == acc_b == acc_c
    print(f"same accuracies from (a), (b) and (c): {same}")


if __name__ == "__main__":
    main()
