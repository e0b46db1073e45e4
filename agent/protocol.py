"""The boundary between the search and the CLIP side.

The agent only ever sees templates and numbers. `evaluators.ClipEvaluator` implements this
protocol; tests use small in-memory fakes behind the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence


@dataclass(frozen=True)
class Score:
    """Accuracy (0..1), mean cross-entropy and mean probability of the true class (0..1) of
    one template (or an ensemble) per split."""

    accuracy: dict[str, float]
    loss: dict[str, float] = field(default_factory=dict)
    prob: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """What the LLM is told about the classification problem."""

    dataset: str
    description: str  # e.g. "grayscale photos of clothing items"
    classnames: tuple[str, ...]


class Evaluator(Protocol):
    task: Task

    def score(self, templates: Sequence[str], splits: Sequence[str] = ("train", "val")) -> list[Score]:
        """One Score per template, in order. Templates are already validated (one `{}`)."""

    def score_ensemble(self, templates: Sequence[str], splits: Sequence[str] = ("test",)) -> Score:
        """Score of the ensemble whose class embeddings average the templates' text features."""

    def info(self) -> dict:
        """JSON-able identity of backbone, dataset and split (for config.json; no secrets)."""
