"""How much prompt wording matters on a demo backbone (`demo`, or `demo-mpnet` with
--backbone): zero-shot accuracies on the held-out test split of the shipped Fashion-MNIST subset.

Prints the accuracy of "a photo of a {}.", the best, worst and spread (best - worst) over the
initial template pool a fashion-mnist search starts from (`agent.core.pools.load_pool`:
`prompts/pools/general.txt`, `prompts/pools/fashion-mnist.txt` and OpenAI's 80 ImageNet
templates), and a few deliberately poor templates that are not in the pool.

    HF_HUB_OFFLINE=1 python -m promptclimb.evaluators.demo.report            # --split train for the shot pool
    HF_HUB_OFFLINE=1 python -m promptclimb.evaluators.demo.report --backbone demo-mpnet
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from promptclimb.agent.core.pools import load_pool
from promptclimb.agent.core.templates import fill
from promptclimb.evaluators.demo.fashion_mnist import load_fashion_mnist
from promptclimb.evaluators.demo.model import TEXT_TOWERS, DemoCLIP, build_preprocess, build_text_side, load_image_tower

REFERENCE = "a photo of a {}."
# Wordings a user might well try that say little or the wrong thing about the images.
POOR_TEMPLATES = [
    "{}",
    "a satellite photo of {}.",
    "a photo of a dog next to a {}.",
    "this is not a {}.",
    "{} stock price falls.",
]


def initial_pool(pool: str = "curated") -> list[str]:
    """The templates a fashion-mnist search starts from (curated: general + fashion-mnist +
    OpenAI's 80; captions: generic caption-style sentences)."""
    return [entry.template for entry in load_pool("fashion-mnist", pool)]


@torch.no_grad()
def encode_split(model, preprocess, dataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image features [N, D] and labels [N] of one split."""
    ids, labels = zip(*dataset.splits[split])
    images = torch.stack([preprocess(dataset.load_image(i)) for i in ids])
    features = torch.cat([model.encode_image(images[i:i + 500], normalize=True) for i in range(0, len(images), 500)])
    return features, torch.tensor(labels)


@torch.no_grad()
def template_accuracies(model, tokenizer, classnames, image_features, labels, templates) -> list[float]:
    """Zero-shot accuracy of each template: argmax over classes of cosine(image, filled template)."""
    texts = [fill(t, c) for t in templates for c in classnames]
    text = torch.cat([model.encode_text(tokenizer(texts[i:i + 256]), normalize=True)
                      for i in range(0, len(texts), 256)]).view(len(templates), len(classnames), -1)
    predictions = torch.einsum("nd,tcd->tnc", image_features, text).argmax(-1)
    return predictions.eq(labels).float().mean(1).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--backbone", choices=sorted(TEXT_TOWERS), default="demo")
    parser.add_argument("--weights", type=Path, default=None,
                        help="image-tower weights to measure [default: the backbone's shipped file]")
    parser.add_argument("--pool", default="curated", help="the initial pool measured: curated or captions")
    parser.add_argument("--show", type=int, default=5, help="how many best and worst pool templates to list")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.time()
    text_tower, tokenizer = build_text_side(args.backbone)
    image_tower, logit_scale, _ = load_image_tower(args.weights or TEXT_TOWERS[args.backbone].weights_file)
    model, preprocess = DemoCLIP(text_tower, image_tower, logit_scale).eval(), build_preprocess()
    dataset = load_fashion_mnist()
    features, labels = encode_split(model, preprocess, dataset, args.split)
    pool = initial_pool(args.pool)
    accuracy = dict(zip(pool + [REFERENCE] + POOR_TEMPLATES,
                        template_accuracies(model, tokenizer, dataset.classnames, features, labels,
                                            pool + [REFERENCE] + POOR_TEMPLATES)))
    ranked = sorted(pool, key=accuracy.get, reverse=True)
    best, worst = accuracy[ranked[0]], accuracy[ranked[-1]]
    print(f"{args.backbone} backbone, fashion-mnist {args.split} split ({len(labels)} images, chance 10.0%)")
    print(f"{100 * accuracy[REFERENCE]:5.1f}%  {REFERENCE!r}")
    print(f"initial pool ({args.pool}): {len(pool)} templates, best {100 * best:.1f}%, worst {100 * worst:.1f}%, "
          f"spread {100 * (best - worst):.1f} points, median {100 * accuracy[ranked[len(ranked) // 2]]:.1f}%")
    print("best in pool:")
    for t in ranked[:args.show]:
        print(f"  {100 * accuracy[t]:5.1f}%  {t!r}")
    print("worst in pool:")
    for t in ranked[-args.show:]:
        print(f"  {100 * accuracy[t]:5.1f}%  {t!r}")
    print("deliberately poor templates (not in the pool):")
    for t in POOR_TEMPLATES:
        print(f"  {100 * accuracy[t]:5.1f}%  {t!r}")
    print(f"({time.time() - started:.1f}s)")


if __name__ == "__main__":
    main()
