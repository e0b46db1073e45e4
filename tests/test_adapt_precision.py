"""The adapters count accuracy as the CLIP scorer does (a float32 mean of right answers), so
one count is one number in a run: 1779 right of 2000 was 0.88950002 in the search's best
line (89.0%) and 0.8895 in the adapter's "(prompt 88.9%)" for the same prompt."""

from __future__ import annotations

import torch

from promptclimb.agent.core.format import pct

RIGHT, IMAGES = 1779, 2000


def scored_as_the_scorer_does(right: int, images: int) -> float:
    """evaluators/scorer.py: float((logits.argmax(-1) == labels).float().mean())."""
    return float((torch.arange(images) < right).float().mean())


def test_an_adapters_accuracy_is_the_scorers_number_for_the_same_count():
    from promptclimb.evaluators import adapters

    labels = torch.zeros(IMAGES, dtype=torch.long)
    logits = torch.zeros(IMAGES, 2)
    logits[RIGHT:, 1] = 1.0  # the last 221 images go to the other class
    scored = scored_as_the_scorer_does(RIGHT, IMAGES)
    assert pct(scored) == "89.0%" and pct(RIGHT / IMAGES) == "88.9%"  # the two numbers one count had
    assert adapters.accuracy(logits, labels) == scored
    assert pct(adapters.accuracy(logits, labels)) == "89.0%"
    assert adapters.accuracy(logits[:0], labels[:0]) == 0.0  # no image: no NaN
