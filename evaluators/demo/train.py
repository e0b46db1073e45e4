"""Train a demo image tower into a frozen sentence encoder's text space: all-MiniLM-L6-v2
for backbone `demo` (the default), all-mpnet-base-v2 for `demo-mpnet` (`--backbone`).

LiT ("locked-image tuning") with the towers' roles reversed: the pretrained text tower is
locked, the image tower learns. Each class's captions come from the varied caption
templates in `caption_templates.txt` (deliberately not the search's template pools, so the
search is not scored on its own training captions); their MiniLM embeddings are computed
once. Each training image draws one caption template at random, and the loss is the
cosine distance to its caption's embedding (alignment) plus a small cross-entropy of its
scaled similarities to the 10 classes' captions in the same wording (contrastive: CLIP's
zero-shot classifier, trained). The temperature (logit scale) is learned. Captions name
each class in several ways (`CLASS_PHRASES`: "pair of jeans", "handbag", ...), as real
captions do.

Data: the 60,000 images of the official Fashion-MNIST **train** set, from the Debian
package (the shipped subset in `data/` comes from the official test set only).

Re-run exactly (about 6 minutes on 2 CPU cores; seeded; writes
`evaluators/demo/data/fashion_image_tower.safetensors`):

    sudo apt-get install dataset-fashion-mnist      # /usr/share/datasets/fashion-mnist
    HF_HUB_OFFLINE=1 python -m promptclimb.evaluators.demo.train
    HF_HUB_OFFLINE=1 python -m promptclimb.evaluators.demo.train --backbone demo-mpnet   # needs the mpnet extra;
                                               # writes data/fashion_image_tower_mpnet.safetensors

`--holdout 5000` keeps the last 5,000 train images out of training and prints zero-shot
accuracy on them each epoch (how the settings were chosen, without looking at test data).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from promptclimb.evaluators.demo.fashion_mnist import CLASSNAMES, DEBIAN_ROOT, read_debian_split
from promptclimb.evaluators.demo.model import PIXEL_MEAN, PIXEL_STD, TEXT_TOWERS, FashionImageTower, build_text_side

CAPTION_TEMPLATES_FILE = Path(__file__).resolve().parent / "caption_templates.txt"

# How people name and describe each class, in the official label order. Captions use these
# rather than only the dataset's class names, as real image captions do; the class name is
# then one pointer among many into the caption space, which is why the prompt's wording
# matters at test time (with captions built from the class names alone, every template
# scores within about 2 points of every other: nothing for a prompt search to find).
CLASS_PHRASES = [
    ["T-shirt", "tee", "short-sleeved top", "tank top", "crew-neck top", "short-sleeved cotton top",
     "plain tee", "crew-neck tee", "sleeveless top", "graphic tee"],
    ["trousers", "pair of pants", "pair of jeans", "slacks", "leggings", "pair of chinos", "sweatpants"],
    ["pullover", "sweater", "jumper", "knitted sweater", "hoodie", "cardigan", "sweatshirt"],
    ["dress", "gown", "sundress", "evening dress", "frock", "evening gown", "summer gown"],
    ["coat", "jacket", "parka", "overcoat", "blazer", "trench coat", "winter jacket"],
    ["sandal", "flip-flop", "strappy sandal", "high-heeled sandal", "slide", "strappy summer shoe",
     "high-heeled open shoe", "beach shoe", "open-toe shoe"],
    ["shirt", "button-up shirt", "blouse", "flannel shirt", "dress shirt", "polo shirt", "collared shirt"],
    ["sneaker", "trainer", "running shoe", "canvas shoe", "tennis shoe", "sports shoe", "athletic shoe"],
    ["bag", "handbag", "purse", "tote bag", "backpack", "tote", "shoulder bag", "clutch"],
    ["ankle boot", "boot", "bootie", "chelsea boot", "heeled boot", "leather boot", "short boot", "winter boot"],
]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_caption_templates(path: Path = CAPTION_TEMPLATES_FILE) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@torch.no_grad()
def class_text_features(templates: list[str], classnames: list[str], backbone: str = "demo",
                        batch: int = 128) -> torch.Tensor:
    """Normalised text features [n_templates, n_classes, D] of every caption."""
    text_tower, tokenizer = build_text_side(backbone)
    captions = [t.format(c) for t in templates for c in classnames]
    chunks = [text_tower(tokenizer(captions[i:i + batch])) for i in range(0, len(captions), batch)]
    return F.normalize(torch.cat(chunks), dim=-1).view(len(templates), len(classnames), -1)


def caption_features(templates: list[str], backbone: str = "demo") -> torch.Tensor:
    """Features [n_templates * n_variants, n_classes, D]: row k captions every class with the
    same template and its (k mod its count)-th phrase, so the classes compete under one wording."""
    n_variants = max(len(phrases) for phrases in CLASS_PHRASES)
    variants = [[phrases[k % len(phrases)] for phrases in CLASS_PHRASES] for k in range(n_variants)]
    return torch.cat([class_text_features(templates, names, backbone) for names in variants])


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> normalised float [N, 1, 28, 28], exactly as `preprocess` does."""
    return ((torch.from_numpy(np.array(images)).float() / 255.0 - PIXEL_MEAN) / PIXEL_STD).unsqueeze(1)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 2 pixels (clothes look alike mirrored)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 / 14)  # affine units: 2 px of 28
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = -PIXEL_MEAN / PIXEL_STD  # a black pixel after normalisation
    return F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros") + background


@torch.no_grad()
def zero_shot_accuracy(tower, images: torch.Tensor, labels: torch.Tensor, class_features: torch.Tensor) -> float:
    tower.eval()
    features = torch.cat([F.normalize(tower(images[i:i + 1000]), dim=-1) for i in range(0, len(images), 1000)])
    tower.train()
    return (features @ class_features.T).argmax(1).eq(labels).float().mean().item()


def train(args) -> None:
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    started = time.time()
    images, labels = read_debian_split("train", args.root)
    x_all, y_all = to_input(images), torch.from_numpy(labels.astype(np.int64))
    n_train = len(x_all) - args.holdout
    x, y = x_all[:n_train], y_all[:n_train]
    x_held, y_held = x_all[n_train:], y_all[n_train:]

    templates = read_caption_templates()
    text = caption_features(templates, args.backbone)  # [K, C, D], fixed
    # For monitoring on held-out train images only: the caption-ensemble classifier, and two
    # sentences that are not caption templates.
    monitors = {"captions-mean": F.normalize(text.mean(0), dim=-1),
                "a photo of a {}.": class_text_features(["a photo of a {}."], CLASSNAMES, args.backbone)[0],
                "{}": class_text_features(["{}"], CLASSNAMES, args.backbone)[0]}
    print(f"{len(text) * len(CLASSNAMES)} captions ({len(templates)} templates) encoded "
          f"({time.time() - started:.0f}s); training on {n_train} images")

    tower = FashionImageTower(width=args.width, embed_dim=TEXT_TOWERS[args.backbone].embed_dim)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(args.init_scale)))
    optimizer = torch.optim.AdamW([
        {"params": tower.parameters(), "weight_decay": args.weight_decay},
        {"params": [logit_scale], "weight_decay": 0.0},
    ], lr=args.lr)
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps,
                                                   pct_start=0.15)
    generator = torch.Generator().manual_seed(args.seed)

    for epoch in range(args.epochs):
        order = torch.randperm(n_train, generator=generator)
        seen = correct = loss_sum = 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
        for step in bar:
            batch = order[step * args.batch_size:(step + 1) * args.batch_size]
            images_b, labels_b = augment(x[batch], generator), y[batch]
            # One random caption row per image: the tower must match all wordings, not one.
            captions = text[torch.randint(len(text), (len(batch),), generator=generator)]  # [B, C, D]
            features = F.normalize(tower(images_b), dim=-1)
            similarity = torch.einsum("bd,bcd->bc", features, captions)
            logits = logit_scale.clamp(max=math.log(100)).exp() * similarity
            # Contrastive: the image's caption against the other classes' captions in the same
            # wording. Alignment: land on the caption's embedding itself (not only on the side
            # of it that separates classes), so that the image also matches the caption's
            # wording; without it all templates score alike.
            alignment = 1 - similarity.gather(1, labels_b[:, None]).mean()
            loss = alignment + args.contrastive_weight * F.cross_entropy(logits, labels_b)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += len(batch)
            correct += logits.argmax(1).eq(labels_b).sum().item()
            loss_sum += loss.item() * len(batch)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        line = (f"epoch {epoch + 1}: loss {loss_sum / seen:.3f}, train acc {correct / seen:.3f}, "
                f"scale {logit_scale.exp().item():.1f}, {time.time() - started:.0f}s")
        if args.holdout:
            line += "".join(f", held-out '{name}' {zero_shot_accuracy(tower, x_held, y_held, feats):.3f}"
                            for name, feats in monitors.items())
        print(line, flush=True)

    save(tower, logit_scale, args, templates, time.time() - started)


def save(tower, logit_scale, args, templates, seconds: float) -> None:
    from safetensors.torch import save_file

    state = {key: value.detach().half().contiguous() for key, value in tower.state_dict().items()
             if not key.endswith("num_batches_tracked")}
    state["logit_scale"] = logit_scale.detach().float().reshape(())
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
              if key != "out"}  # where it was written says nothing about the weights
    config.update(n_caption_templates=len(templates), train_seconds=round(seconds),
                  torch=torch.__version__)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata={"config": json.dumps(config), "format": "pt"})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) after {seconds:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEBIAN_ROOT, help="folder with the Fashion-MNIST .gz files")
    parser.add_argument("--backbone", choices=sorted(TEXT_TOWERS), default="demo",
                        help="which text tower to train into (demo: all-MiniLM-L6-v2, demo-mpnet: all-mpnet-base-v2)")
    parser.add_argument("--out", type=Path, default=None, help="[default: the backbone's file in data/]")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--contrastive-weight", type=float, default=0.01,
                        help="weight of the cross-entropy over classes, next to the cosine alignment")
    parser.add_argument("--init-scale", type=float, default=10.0, help="initial logit scale (1/temperature)")
    parser.add_argument("--width", type=int, default=32, help="channels of the first conv layer")
    parser.add_argument("--holdout", type=int, default=0, help="train images kept out for monitoring")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.out = args.out or TEXT_TOWERS[args.backbone].weights_file
    train(args)


if __name__ == "__main__":
    main()
