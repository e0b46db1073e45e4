"""The boundary between the search and the CLIP side.

The agent only ever sees templates, class names and numbers. `evaluators.ClipEvaluator` implements this
protocol; tests use small in-memory fakes behind the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

SPLITS = ("train", "val", "test")  # an evaluator's splits: the search scores on train and val, test once at the end


# The split of images scored without their labels (`--metric balance`): images of the
# train pool that are in neither train nor val (evaluators/datasets.py make_fewshot_split).
UNLABELED_SPLIT = "unlabeled"


@dataclass(frozen=True)
class Score:
    """Accuracy (0..1), mean cross-entropy and mean probability of the true class (0..1) of
    one template (or an ensemble) per split; on a split of images without labels
    ("unlabeled"), only the balance of its predictions."""

    accuracy: dict[str, float]
    loss: dict[str, float] = field(default_factory=dict)
    prob: dict[str, float] = field(default_factory=dict)
    # How evenly the predicted classes spread over the images: the entropy of the predicted
    # classes' histogram over log(C) (1: each class predicted equally often; 0: one class).
    balance: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """What the LLM is told about the classification problem."""

    dataset: str
    description: str  # e.g. "grayscale photos of clothing items"
    # The start names, in class order: the dataset's published labels, or --classnames.
    # What the evaluator scores with when it is not given other names.
    classnames: tuple[str, ...]


@dataclass(frozen=True)
class ClassReport:
    """One class on one split under one (template, names): how its images are classified."""

    index: int  # the class's position
    name: str  # the name it was scored with
    count: int  # images of this class on the split
    prob: float  # mean probability of the true class over them (0..1)
    predicted: tuple[int, ...]  # how many of them were predicted as each class: the confusion-matrix row

    @property
    def accuracy(self) -> float:
        return self.predicted[self.index] / self.count if self.count else 0.0

    def mistaken_for(self) -> list[tuple[int, int]]:
        """(other class, images of this class predicted as it), most first, then by class."""
        return sorted(((c, n) for c, n in enumerate(self.predicted) if c != self.index and n),
                      key=lambda cn: (-cn[1], cn[0]))


class Evaluator(Protocol):
    task: Task

    def score(self, templates: Sequence[str], splits: Sequence[str] = ("train", "val"),
              classnames: Sequence[str] | None = None) -> list[Score]:
        """One Score per template, in order. Templates are already validated (one `{}`).
        `classnames`: the names to fill in (None: `task.classnames`)."""

    def score_names(self, template: str, variants: Sequence[Sequence[str]],
                    splits: Sequence[str] = ("train", "val")) -> list[Score]:
        """One Score per names tuple in `variants`, all with `template`, in one batch (a
        variant that changes one class costs one new text)."""

    def score_ensemble(self, templates: Sequence[str], splits: Sequence[str] = ("test",),
                       classnames: Sequence[str] | None = None) -> Score:
        """Score of the ensemble whose class embeddings average the templates' text features."""

    def class_report(self, template: str, classnames: Sequence[str] | None, split: str) -> list[ClassReport]:
        """Per class, in class order: accuracy, mean true-class probability and the confusion
        row of `template` filled with `classnames` (None: `task.classnames`) on `split`."""

    def info(self) -> dict:
        """JSON-able identity of backbone, dataset and split (for config.json; no secrets)."""

    # Optional: name_similarity(template, name, others) -> list[float], the cosine similarity
    # of the text `template` filled with `name` to it filled with each of `others`. The drift
    # guard checks the judge with it (agent/search.py `drift_guard`); without it, the judge's
    # answers decide alone.
