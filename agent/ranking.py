"""How templates are ranked: one place, used by the search and by reading a run back.

A template's score on a split is three numbers from the evaluator: accuracy, mean
cross-entropy (`loss`) and the mean probability of the true class (`prob`). The search
ranks by one value on the selection split(s), chosen by `--metric`:

    accuracy   accuracy; ties by lower cross-entropy. At 1 shot the train split holds one
               image per class, so accuracy moves in steps of 1/C and many templates tie.
    prob       the mean probability of the true class: continuous, never saturates.
    blend      the mean of the two: still reads as an accuracy, but breaks its ties with a
               signal the LLM is also shown.
    balance    how evenly the predicted classes spread over images of the train pool that
               are not in the few-shot split, read without their labels (the split
               "unlabeled"); ties by accuracy, then cross-entropy. It assumes the classes
               are about equally common. On a split with labels (val, when a new best is
               confirmed; the ensemble's choice) it is accuracy that counts. Why: on the
               demo at 1 shot, the ten training images rank the 119 curated templates by
               test accuracy with a Spearman of 0.52-0.57 on mean over seeds (0.0 to 0.85
               per seed), the balance on about a thousand unlabeled images with 0.95-0.98
               (docs/results.md, "Ranked by the balance of predictions"). Not the default:
               it reads images beyond the few-shot split, which the soft-prompt baselines
               and the paper's protocol do not.

The value is what the LLM is shown (as a percentage), so it and the ranking never disagree.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence, TypeVar

from promptclimb.agent.core.format import pct
from promptclimb.agent.core.protocol import UNLABELED_SPLIT

T = TypeVar("T")

METRICS = ("accuracy", "prob", "blend", "balance")
DEFAULT_METRIC = "accuracy"  # bench/bench_search_quality.py: blend and accuracy tie on val (README)
# What a run written before `--metric` existed ranked by (its config has no `metric`).
LEGACY_METRIC = "accuracy"

# How the meta-prompts name the value shown to the LLM ("{label} on {splits}").
METRIC_LABELS = {
    "accuracy": "accuracy",
    "prob": "mean probability of the correct class",
    "blend": "score (the mean of accuracy and the probability of the correct class)",
    "balance": "balance: how evenly the classifier spreads unlabeled images over the classes",
}
SPLIT_LABELS = {("train",): "the training images", ("train", "val"): "the training and validation images"}


def split_mean(values: dict | None, splits: Sequence[str]) -> float | None:
    """Mean of `values[split]` over the splits that have a number, or None."""
    found = [float(values[s]) for s in splits if isinstance((values or {}).get(s), (int, float))]
    return sum(found) / len(found) if found else None


def labelled_metric(metric: str) -> str:
    """What `metric` judges on a split with labels (val, test): balance is read on the
    unlabeled images only, so there it is accuracy."""
    return "accuracy" if metric == "balance" else metric


def selection_value(accuracy: dict, prob: dict | None, splits: Sequence[str], metric: str,
                    balance: dict | None = None) -> float:
    """The one number a template is ranked by (0..1; NaN when nothing was measured)."""
    if metric == "balance":
        found = (balance or {}).get(UNLABELED_SPLIT)
        return float(found) if isinstance(found, (int, float)) else math.nan
    acc = split_mean(accuracy, splits)
    if metric == "accuracy":
        return acc if acc is not None else math.nan
    p = split_mean(prob, splits)
    if p is None:  # a score recorded before `prob` existed: accuracy is all there is
        return acc if acc is not None else math.nan
    if metric == "prob":
        return p
    if metric == "blend":
        return (acc + p) / 2 if acc is not None else p
    raise ValueError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")


def rank_key(value: float, loss: dict | None, splits: Sequence[str], order: int, then: float | None = None) -> tuple:
    """Sort key, best first: higher value, then higher `then` (accuracy, under --metric
    balance), then lower cross-entropy, then scored earlier."""
    tie = split_mean(loss, splits)
    return (-value if not math.isnan(value) else math.inf, -(then or 0.0), tie if tie is not None else math.inf,
            order)


def then_value(accuracy: dict | None, splits: Sequence[str], metric: str) -> float | None:
    """`rank_key`'s `then`: the accuracy on `splits` under --metric balance, else None."""
    return split_mean(accuracy, splits) if metric == "balance" else None


def best_first(items: Iterable[T], splits: Sequence[str], value: Callable[[T], float],
               loss: Callable[[T], dict | None], order: Callable[[T], tuple],
               then: Callable[[T], float | None] = lambda item: None) -> list[T]:
    """`items` ranked by `rank_key`, best first: the one sort of the search's scoreboard
    (agent/search.py `rank`) and of a run read back (agent/runs/run.py `Run.ranked`)."""
    return sorted(items, key=lambda item: rank_key(value(item), loss(item), splits, order(item), then(item)))


def metric_label(metric: str, splits: Sequence[str]) -> str:
    """e.g. "accuracy on the training images" (what the meta-prompts call the value)."""
    if metric == "balance":  # read on the unlabeled images, whatever the selection split
        return METRIC_LABELS[metric]
    return f"{METRIC_LABELS[metric]} on {SPLIT_LABELS.get(tuple(splits), ' and '.join(splits))}"


def top_and_bottom(ranked: Sequence, top_k: int, bottom_k: int) -> tuple[list, list]:
    """The best `top_k` and the worst `bottom_k` of a ranked list, no item in both (fewer
    worst ones when the list is short)."""
    top = list(ranked[:top_k])
    rest = list(ranked[len(top):])
    return top, (rest[max(0, len(rest) - bottom_k):] if bottom_k else [])


def worse_on(splits: Sequence[str], metric: str, new: tuple[dict, dict | None, dict | None],
             old: tuple[dict, dict | None, dict | None]) -> str:
    """Why `new` ranks strictly below `old` on `splits` (each an (accuracy, prob, loss)
    triple of score dicts), e.g. "val 80.0% vs 90.0%" or "val cross-entropy 0.318 vs
    0.298"; "" when it does not (equal passes). The search's check of a new best on the
    split it was not ranked on (`SearchConfig.confirm`)."""
    metric = labelled_metric(metric)
    values = [selection_value(acc, prob, splits, metric) for acc, prob, _ in (new, old)]
    keys = [rank_key(v, loss, splits, 0)[:3] for v, (_, _, loss) in zip(values, (new, old))]
    if not keys[0] > keys[1]:
        return ""
    where = "+".join(splits)
    if keys[0][0] != keys[1][0]:
        return f"{where} {' vs '.join(told_apart(values, pct, 1))}"
    return f"{where} cross-entropy {' vs '.join(told_apart([k[2] for k in keys], lambda v, d: f'{v:.{d}f}', 3))}"


def told_apart(values: Sequence[float], show: Callable[[float, int], str], decimals: int) -> list[str]:
    """`values` shown with `decimals`, or with as many more (up to 3) as it takes for them
    to read differently: a reason that reads "0.692 vs 0.692" tells the LLM nothing."""
    for d in range(decimals, decimals + 4):
        shown = [show(v, d) for v in values]
        if len(set(shown)) == len(shown):
            break
    return shown
