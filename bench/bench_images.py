"""Image encoding speed: ViT-B-32 images/s on this machine's CPU cores, four ways, and what bf16 changes.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_images.py          # ~3 min on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_images.py --extra  # + loader and batch-size variants

The same images (the first --images of the shipped Fashion-MNIST test split, preprocessed to
224 px as ViT-B-32 wants them; `eval --dataset fashion-mnist --backbone ViT-B-32` encodes
these) and the same random ViT-B-32 weights (seed 0: speed only) go through:
- plain: a plain open_clip loop (per batch of 64: preprocess in this thread, encode_image);
- today: the evaluator's loop before issue 18 (the same, with its progress bar);
- overlapped: `ClipEvaluator._encode_split` now: a worker thread decodes and preprocesses the
  next batch while the encoder runs, batches per device, the vision blocks written out with
  oneDNN linears (evaluators/backbones/onednn.py, encode_image_blocks);
- overlapped bf16: the same with --precision bf16.
Each runs in a process of its own (so peak RSS is its own), one after the other, in one run
of this script, --rounds times interleaved; the best round of each counts (other jobs on a
shared machine only ever slow a round down). The absolute figures move with the machine's
load; the ratios of one run are comparable.
GFLOP/s counts 2 FLOPs per multiply-add (torch's FlopCounterMode); "GEMM peak" is the best a
single large matrix product reaches here (oneDNN fp32, MKL fp32, oneDNN bf16): the distance
to the machine's limit.

Accuracy of bf16: max |Δ| of the normalised image features against today's, and how many
test predictions ("a photo of a {}." over the 10 classes) change, on the ViT-B-32 fixture
(the random weights above: its near-uniform logits make it a harsh test) and on the embedded
demo backbone (its whole 2,000-image test split). Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "ViT-B-32"
TEMPLATE = "a photo of a {}."
MODES = {  # mode -> label in the table
    "plain": "plain open_clip loop",
    "today": "today (before issue 18)",
    "overlapped": "overlapped fp32",
    "overlapped-bf16": "overlapped bf16",
}
# --extra: why the default path is what it is (the comments on evaluators/scorer.py's
# _prefetched and evaluators/backbones/device.py's IMAGE_BATCH rest on what these measure).
EXTRA = {
    "no-prefetch": "fp32, no overlap (decode in the main thread)",
    "dataloader": "fp32, torch DataLoader, 1 worker process",
    "batch16": "overlapped fp32, batch 16",
    "batch64": "overlapped fp32, batch 64",
}


# -- one mode, in a process of its own ---------------------------------------------------------
def child(mode: str, n: int, threads: int, out: Path) -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    if mode == "gemm":
        return gemm_peaks()
    if mode == "demo-check":
        return demo_check()
    backbone, evaluator, items = setup(mode, n)
    encode = ENCODERS.get(mode, encode_overlapped)
    encode(backbone, evaluator, items[:8])  # warm-up: first-call allocations, oneDNN kernel choice
    start = time.perf_counter()
    features = encode(backbone, evaluator, items)
    seconds = time.perf_counter() - start
    with torch.inference_mode():
        texts = backbone.encode_texts([TEMPLATE.format(c) for c in evaluator.dataset.classnames])
    torch.save({"features": features, "texts": texts}, out / f"{mode}.pt")
    return {"mode": mode, "images": len(items), "seconds": seconds, "gflop_per_image": gflop_per_image(backbone),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def setup(mode: str, n: int):
    import warnings

    import torch

    from promptclimb.evaluators.backbones import load_backbone
    from promptclimb.evaluators.datasets import FewShotSplit, load_dataset
    from promptclimb.evaluators.scorer import ClipEvaluator

    dataset = load_dataset("fashion-mnist")
    items = sorted(dataset.splits["test"])[:n]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights": meant
        backbone = load_backbone(MODEL, device="cpu", precision="bf16" if mode.endswith("bf16") else "fp32")
    batch = {"batch16": 16, "batch64": 64}.get(mode)
    split = FewShotSplit(dataset.name, 1, 0, {"test": items})
    return backbone, ClipEvaluator(backbone, dataset, split, image_batch=batch, echo=lambda msg: None), items


def encode_plain(backbone, evaluator, items, batch_size=64):
    """What an open_clip user writes: preprocess a batch, encode_image, normalise."""
    import torch
    import torch.nn.functional as F

    out = []
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            images = torch.stack([backbone.preprocess(evaluator.dataset.load_image(image_id))
                                  for image_id, _ in items[i:i + batch_size]])
            out.append(F.normalize(backbone.model.encode_image(images), dim=-1))
    return torch.cat(out)


def encode_today(backbone, evaluator, items, batch_size=64):
    """ClipEvaluator._encode_split and Backbone.encode_images as they were before issue 18."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    features, batch = [], []

    @torch.inference_mode()
    def encode_images(images):
        return F.normalize(backbone.model.encode_image(images).float(), dim=-1).cpu()

    for image_id, _ in tqdm(items, unit="img", leave=False, disable=None):
        batch.append(backbone.preprocess(evaluator.dataset.load_image(image_id)))
        if len(batch) == batch_size:
            features.append(encode_images(torch.stack(batch)))
            batch.clear()
    if batch:
        features.append(encode_images(torch.stack(batch)))
    return torch.cat(features)


def encode_overlapped(backbone, evaluator, items):
    return evaluator._encode_split("test", items)[0]


def encode_no_prefetch(backbone, evaluator, items):
    import torch

    chunks = [items[i:i + evaluator.image_batch] for i in range(0, len(items), evaluator.image_batch)]
    return torch.cat([backbone.encode_images(evaluator._load_batch(chunk)[0]) for chunk in chunks])


def encode_dataloader(backbone, evaluator, items):
    import torch
    from torch.utils.data import DataLoader

    chunks = [items[i:i + evaluator.image_batch] for i in range(0, len(items), evaluator.image_batch)]
    loader = DataLoader(chunks, batch_size=None, num_workers=1, collate_fn=evaluator._load_batch, prefetch_factor=2)
    return torch.cat([backbone.encode_images(images) for images, _, _ in loader])


ENCODERS = {"plain": encode_plain, "today": encode_today, "no-prefetch": encode_no_prefetch,
            "dataloader": encode_dataloader}


def gflop_per_image(backbone) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # The fused MultiheadAttention op hides its projections from the counter; the unfused path shows them.
    fused = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            backbone.model.encode_image(torch.zeros(1, 3, 224, 224))
    finally:
        torch.backends.mha.set_fastpath_enabled(fused)
    return counter.get_total_flops() / 1e9


def gemm_peaks() -> dict:
    """GFLOP/s of one large matrix product (the MLP's shape at batch 32): oneDNN fp32, MKL fp32, oneDNN bf16."""
    import torch
    import torch.nn.functional as F

    x, w = torch.randn(1600, 768), torch.randn(3072, 768)

    def best(fn, a, b):
        fn(a, b)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn(a, b)
            times.append(time.perf_counter() - start)
        return 2 * 1600 * 768 * 3072 / min(times) / 1e9

    with torch.inference_mode():
        onednn = lambda a, b: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")  # noqa: E731
        return {"mode": "gemm", "onednn_fp32": best(onednn, x, w), "mkl_fp32": best(F.linear, x, w),
                "onednn_bf16": best(F.linear, x.bfloat16(), w.bfloat16())}


def demo_check() -> dict:
    """fp32 against bf16 on the embedded demo backbone, its whole fashion-mnist test split."""
    import torch

    from promptclimb.evaluators import build_evaluator

    got = {}
    for precision in ("fp32", "bf16"):
        evaluator = build_evaluator("fashion-mnist", 1, 0, "demo", device="cpu", precision=precision)
        evaluator.echo = lambda msg: None
        images, labels = evaluator.image_features("test")
        texts = evaluator.text_features([TEMPLATE.format(c) for c in evaluator.dataset.classnames])
        got[precision] = (images, texts, (images @ texts.T).argmax(-1))
    (i32, t32, p32), (i16, t16, p16) = got["fp32"], got["bf16"]
    return {"mode": "demo-check", "images": len(labels), "image_delta": float((i16 - i32).abs().max()),
            "text_delta": float((t16 - t32).abs().max()), "changed": int((p16 != p32).sum()),
            "accuracy_fp32": float((p32 == labels).float().mean()),
            "accuracy_bf16": float((p16 == labels).float().mean())}


# -- the driver ----------------------------------------------------------------------------------
def run_child(mode: str, args, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--images", str(args.images), "--threads", str(args.threads),
               "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    if done.returncode:
        sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each way; the fastest counts")
    parser.add_argument("--extra", action="store_true", help="also the loader and batch-size variants")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.images, args.threads, Path(args.out))))
        return

    os.environ["PROMPTCLIMB_HOME"] = tempfile.mkdtemp(prefix="promptclimb-bench-")  # cold caches
    out = Path(os.environ["PROMPTCLIMB_HOME"])
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}; "
          f"{args.images} images, {MODEL} (random weights), {args.threads} threads, best of {args.rounds} rounds",
          flush=True)
    modes = [*MODES, *(EXTRA if args.extra else [])]
    results = {}
    for round_ in range(args.rounds):
        for mode in modes:
            got = run_child(mode, args, out)
            print(f"  round {round_ + 1}, {mode}: {got['images'] / got['seconds']:.1f} images/s", file=sys.stderr,
                  flush=True)
            best = results.get(mode)
            if best is None or got["seconds"] < best["seconds"]:
                results[mode] = {**got, "rss_mb": max(got["rss_mb"], best["rss_mb"] if best else 0)}
    gemm = run_child("gemm", args, out)
    demo = run_child("demo-check", args, out)
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])} (this bench's own "
          f"{args.threads} threads count in it)")
    report(results, gemm, demo, out)


def report(results: dict, gemm: dict, demo: dict, out: Path) -> None:
    import torch

    rate = {m: r["images"] / r["seconds"] for m, r in results.items()}
    gflop = results["today"]["gflop_per_image"]
    print(f"\n{MODEL}: {gflop:.2f} GFLOP per image (2 per multiply-add). GEMM peak here: oneDNN fp32 "
          f"{gemm['onednn_fp32']:.0f}, MKL fp32 {gemm['mkl_fp32']:.0f}, oneDNN bf16 {gemm['onednn_bf16']:.0f} "
          "GFLOP/s\n")
    print("| way | images/s | x today | x plain loop | GFLOP/s | peak RSS |")
    print("|---|---|---|---|---|---|")
    for mode, r in results.items():
        label = {**MODES, **EXTRA}[mode]
        print(f"| {label} | {rate[mode]:.1f} | {rate[mode] / rate['today']:.2f} | {rate[mode] / rate['plain']:.2f} | "
              f"{rate[mode] * gflop:.0f} | {r['rss_mb']:.0f} MB |")
    saved = {m: torch.load(out / f"{m}.pt") for m in results}
    today = saved["today"]
    print()
    for mode in results:
        if mode == "today":
            continue
        delta = (saved[mode]["features"] - today["features"]).abs().max()
        changed = int(((saved[mode]["features"] @ saved[mode]["texts"].T).argmax(-1)
                       != (today["features"] @ today["texts"].T).argmax(-1)).sum())
        print(f"{MODES.get(mode) or EXTRA[mode]} vs today: max |Δ feature| {delta:.2e}, "
              f"{changed} of {len(today['features'])} predictions changed")
    print(f"demo backbone, bf16 vs fp32 on its {demo['images']} test images: max |Δ image feature| "
          f"{demo['image_delta']:.2e}, max |Δ text feature| {demo['text_delta']:.2e}, {demo['changed']} predictions "
          f"changed, accuracy {100 * demo['accuracy_fp32']:.2f}% -> {100 * demo['accuracy_bf16']:.2f}%")


if __name__ == "__main__":
    main()
