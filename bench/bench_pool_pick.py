"""How well a template can be picked from the curated pool on a few images: the ceiling a
search starts under.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_pool_pick.py --start clean --seeds 1 2 3 4 5

Per seed (one few-shot split of fashion-mnist), every template of the curated pool is scored
with the start names on train, val and test. Printed: the test accuracy of the template the
search's ranking picks on train (accuracy, then cross-entropy), of the one it would pick on
train and val pooled (`--select train+val`), of the one `--metric balance` picks (how evenly
the predictions spread over up to 1,000 unlabeled images of the train pool outside the split,
then train accuracy, then cross-entropy), of `a photo of a {}.`, and the pool's mean and
best on test, and how well train accuracy and the balance each rank the pool by test
accuracy (Spearman). The best is chosen on test: a ceiling no pick on a few images can be expected
to reach, not a method. Test is only measured here; no search reads it. Asserts nothing.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from promptclimb.agent.core.defaults import UNLABELED_IMAGES
from promptclimb.agent.core.pools import load_pool
from promptclimb.evaluators import build_evaluator


def picked(accuracy: np.ndarray, loss: np.ndarray, first: np.ndarray | None = None) -> int:
    """The search's ranking: higher accuracy, then lower cross-entropy, then pool order
    (`first`: a value ranked before all of them, higher first: the balance)."""
    keys = (np.arange(len(accuracy)), loss, -accuracy)
    return int(np.lexsort(keys if first is None else (*keys, -first))[0])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (ties share their mean rank)."""
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default="published", help="published or clean: the class names")
    parser.add_argument("--backbone", default="demo", help="demo or demo-mpnet")
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = parser.parse_args()

    pool = [p.template for p in load_pool("fashion-mnist", "curated")]
    rows, agreement = [], []
    for seed in args.seeds:
        evaluator = build_evaluator(dataset="fashion-mnist", shots=args.shots, seed=seed, backbone=args.backbone,
                                    classnames=args.start, unlabeled=UNLABELED_IMAGES)
        scores = evaluator.score(pool, splits=("train", "val", "test", "unlabeled"))
        acc = {s: np.array([x.accuracy[s] for x in scores]) for s in ("train", "val", "test")}
        loss = {s: np.array([x.loss[s] for x in scores]) for s in ("train", "val")}
        test = acc["test"]
        balance = np.array([x.balance["unlabeled"] for x in scores])
        agreement.append({"seed": seed, "train accuracy": spearman(acc["train"], test),
                          "balance": spearman(balance, test)})
        rows.append({"seed": seed, "picked on train": test[picked(acc["train"], loss["train"])],
                     "picked on train+val": test[picked(acc["train"] + acc["val"], loss["train"] + loss["val"])],
                     "picked by balance": test[picked(acc["train"], loss["train"], balance)],
                     "a photo of a {}.": test[pool.index("a photo of a {}.")],
                     "pool mean": test.mean(), "pool best (chosen on test)": test.max()})
    df = pd.DataFrame(rows).set_index("seed")
    print(f"test accuracy (%), {len(pool)} curated templates, {args.start} names, backbone {args.backbone}, "
          f"{args.shots} shot(s)")
    print((100 * df).round(1).to_string())
    print("mean over seeds: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in df.mean().items()))
    rho = pd.DataFrame(agreement).set_index("seed")
    print("how each ranks the pool by test accuracy (Spearman), mean (lowest-highest seed): "
          + ", ".join(f"{k} {v.mean():.2f} ({v.min():.2f}-{v.max():.2f})" for k, v in rho.items()))


if __name__ == "__main__":
    main()
