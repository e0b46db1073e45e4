"""The class names and the data a run recorded, read back and held against what is given now: its
start names, its labels, its names by label, and the warnings and errors where data changed since.

Its own module: `eval --run`, `adapt`, `transfer` and a resume read these from config.json and
summary.json alone, without the Run class and its pandas tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from promptclimb.agent.core.classnames import PUBLISHED
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.paths import absolute


def run_classnames(summary: dict) -> list[str] | None:
    """The class names a run's result is written with: the names its search found, or
    the start names it recorded; None for a run that records neither (a soft prompt)."""
    best = summary.get("best") or {}
    if best.get("names"):
        return list(best["names"])
    return None


def names_of(row: dict) -> list[str] | None:
    """The names a row of `Run.scores()` was scored with (None: the start names; pandas reads
    a missing one as NaN)."""
    names = row.get("names")
    return names if isinstance(names, (list, tuple)) else None


def run_start_names(config: dict) -> list[str] | None:
    """The names a run started from, as its evaluator recorded them (None: not recorded)."""
    recorded = (config.get("evaluator") or {}).get("dataset")
    return recorded.get("classnames") if isinstance(recorded, dict) else None


def run_labels(config: dict) -> list[str] | None:
    """The labels of the data a run was searched on, in its class order: those its evaluator
    recorded beside start names of its own (--classnames clean or FILE), else its start names
    where it started from the data's own labels (no --classnames, or `published`); None for a
    run that started from names of its own before the labels were recorded, or recorded none."""
    recorded = (config.get("evaluator") or {}).get("dataset")
    if isinstance(recorded, dict) and recorded.get("labels"):
        return list(recorded["labels"])
    labels = run_start_names(config)
    own_labels = (config.get("evaluator_args") or {}).get("classnames") in (None, PUBLISHED)
    return list(labels) if labels and own_labels else None


def run_names_by_label(config: dict, summary: dict) -> dict[str, str] | list[str] | None:
    """The names a run's templates go with, for scoring them again: keyed by the dataset's
    own labels where the run's are known (`run_labels`; so that other data, `--data-root
    DIR`, must hold the same classes, in any order), else in class order (`run_classnames`).
    A summary without names (`{}`) keys the start names."""
    names = run_classnames(summary)
    labels = run_labels(config)
    start = run_start_names(config) or labels
    if labels and len(labels) == len(names or start):
        return dict(zip(labels, names or start))
    return names


def start_names_as_built(config: dict) -> dict[str, str] | tuple[str, ...] | None:
    """The names a run started from, as its evaluator is built again (a resume, `adapt`,
    `transfer`): keyed by the labels of its data where it knows them, so that data whose
    classes changed since is refused by class (`names_by_label`) where names in class order
    went to other classes' images; else in class order; None where none were recorded. Not
    a names file or the data's labels read again: a file edited or deleted since, or labels a
    newer promptclimb reads otherwise (WordNet IDs), would change the run."""
    start = run_names_by_label(config, {}) or run_start_names(config)
    return start if isinstance(start, dict) or not start else tuple(start)


def warn_names_by_position(run_dir: str | Path, config: dict, data: dict, remedy: str) -> None:
    """A warning where a run's names go to other data's classes by position: the run started
    from names of its own (--classnames clean or FILE) before the labels they name were
    recorded beside them (`run_labels`), so nothing tells which class each name is. `data`:
    the dataset, data_root, image_column and label_column scored on; `remedy`: how the
    command at hand matches the names by class (`eval` and `transfer` differ)."""
    import warnings

    if runs_own_data(config, data):
        return  # its classes in the run's order
    spec = (config.get("evaluator_args") or {}).get("classnames")
    started = f"--classnames {spec}" if isinstance(spec, str) else "names of its own"
    warnings.warn(f"{Path(run_dir).name} started from {started} and recorded no labels for its names (a run "
                  f"started before they were recorded): its names are filled in to "
                  f"the classes of {data.get('data_root') or data.get('dataset')} by position; {remedy}", stacklevel=3)


def without_root(identity: str, root: str | None) -> str:
    """A folder dataset's identity less the folder's path it starts with (the rest: its
    files and how they are decoded): a copy or a move of the folder is the same data."""
    return identity[len(root) + 1:] if root and identity.startswith(f"{root}:") else identity


def runs_own_data(config: dict, data: dict) -> bool:
    """Whether `data` (dataset, data_root, image_column, label_column) is a run's own."""
    own = config.get("evaluator_args") or {}
    given = {**data, "data_root": absolute(data.get("data_root"))}  # `DIR/` or a relative path: the same folder
    return all(given.get(key) == own.get(key) for key in ("dataset", "data_root", "image_column", "label_column"))


def warn_other_split(run_dir: str | Path, config: dict, data: dict, split: dict) -> None:
    """A warning where the few-shot split just drawn from a run's own data (`data`, as
    `runs_own_data` takes it; `split`: the evaluator's `info()["split"]`, for the run's shots
    and seed) is not the one the run recorded: images were added to, removed from or renamed
    in its data folder since, and `eval --run`, `adapt` and `transfer` scored other images
    than the run's, unsaid."""
    import warnings

    if not runs_own_data(config, data):
        return  # other data given on purpose (--data-root, --dataset)
    changed = splits_drawn_otherwise(config, split)
    if changed:
        warnings.warn(f"{images_drawn_otherwise(run_dir, changed)}: these figures are not comparable with the run's",
                      stacklevel=3)


def check_class_order(run_dir: str | Path, config: dict, info: dict) -> None:
    """PromptclimbError where a run's classes, the same ones, now come in another order in its
    data (`info`: its evaluator's `info()`, whose start names are the run's put in the data's
    class order by label; class folders renamed since): a resume replays names and scores by
    class order, and `adapt` fits on names in it. Said by the data's labels, which the user
    renames (a run's own start names are not)."""
    started, dataset = run_start_names(config), info.get("dataset") or {}
    now = dataset.get("classnames")
    if not started or not now or list(now) == list(started) or len(now) != len(started):
        return
    moved = next(i for i, (a, b) in enumerate(zip(now, started)) if a != b)
    labels_now, labels_then = dataset.get("labels") or now, run_labels(config) or started
    raise PromptclimbError(f"{Path(run_dir).name}'s classes now come in another order than when it started (a class "
                           f"folder or label renamed since?): class {moved + 1} is {labels_now[moved]!r}, the run's "
                           f"was {labels_then[moved]!r}; give them back their names to go on with it")


def splits_drawn_otherwise(config: dict, split: dict) -> list[str]:
    """The splits whose images, drawn now (`split`: an evaluator's `info()["split"]`), are not
    those a run (`config`) recorded for the same shots and seed; [] where either describes
    none (a run killed before its evaluator was described, an evaluator that describes no
    split) or another split was asked for (--shots, --seed)."""
    recorded = (config.get("evaluator") or {}).get("split")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("ids_sha256"), dict):
        return []
    if (recorded.get("shots"), recorded.get("seed")) != (split.get("shots"), split.get("seed")):
        return []
    now = split.get("ids_sha256") or {}
    # the splits both drew (a --metric balance run's unlabeled images are drawn by its search only)
    return [s for s, digest in recorded["ids_sha256"].items() if s in now and now[s] != digest]


def images_drawn_otherwise(run_dir: str | Path, changed: Sequence[str]) -> str:
    """`splits_drawn_otherwise`'s finding, said (eval, adapt, transfer and a resume alike)."""
    return (f"the {', '.join(changed)} images drawn now from {Path(run_dir).name}'s data are not the ones it was "
            "searched on (images added, removed or renamed, or labels changed, in its data since; or a folder without "
            "train/ and test/ renamed: its split is drawn by its name)")
