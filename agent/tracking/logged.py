"""What is logged, read from the run folder: params, tags, each answer's metrics, the initial
pool's and a soft-prompt run's points, the test accuracies, the registered prompt's name and tags.
Its own module: plain functions of a `Run` that call no MLflow, which a sync runs once before it
creates anything (`readable_run`), so a damaged folder is one error.
"""

from __future__ import annotations

import json
import re
import time
from typing import Callable, Container

import numpy as np
import pandas as pd

from promptclimb.agent.core.classnames import renames
from promptclimb.agent.runs.listing import result_said
from promptclimb.agent.runs.recorded import run_classnames
from promptclimb.agent.runs.run import Run
from promptclimb.agent.runs.store import tokens_spent
from promptclimb.agent.search import LLM_EVENTS
from promptclimb.agent.softsearch import steps_table
from promptclimb.agent.tracking.store import FOLDER_TAG

REFUSED = ("reject", "name_reject")  # events of an answer's proposals that were not scored
RESULTS = ("best", "ensemble", "adapter", "baseline")  # summary.json sections whose test accuracy is logged
# the one the run kept as its result, whatever it is (`result_said`): one metric to compare runs by
RESULT_KEY, RESULT_TAG, NAMES_TAG = "result_test_accuracy", "promptclimb.result", "promptclimb.names"
# a soft-prompt run's steps: its current prompt's accuracy, which may fall (not a best so far)
SOFT_KEYS = {"prompt_train_accuracy": "train", "prompt_val_accuracy": "val"}
PARAM_LIMIT, TAG_LIMIT = 6000, 8000  # MLflow's longest param and tag values


# -- what is logged, read from the run folder -----------------------------------------------
def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Settings as MLflow params: nested keys joined by ".", other values as JSON, each cut
    to MLflow's limit (the whole of it is in config.json, an artifact)."""
    out = {}
    for key, value in config.items():
        name = re.sub(r"[^\w\-. /:]", "_", f"{prefix}{key}")
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = _cut(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False), PARAM_LIMIT)
    return out


def run_tags(run: Run) -> dict:
    """The MLflow run's tags; those None (no result yet, no names searched) are not sent."""
    return {"dataset": run.dataset, "backbone": run.backbone, "shots": run.args.get("shots"),
            "seed": run.args.get("seed"), "llm": run.llm, "promptclimb.status": run.status,
            FOLDER_TAG: str(run.path.resolve()), RESULT_TAG: result_said(run.final)[0], NAMES_TAG: renames_said(run)}


def renames_said(run: Run) -> str | None:
    """The class names the run's best goes with, as its renames: "Trouser -> jeans; Pullover
    -> sweater" ("none": the start names). The registered prompt and summary.json have them,
    the MLflow run did not. None for a run that searched no names (or recorded no start names)."""
    searched = (run.config.get("search") or {}).get("search") in ("names", "both") or run.of("names_exchange")
    start = run.start_names
    if not searched or not start:
        return None
    return renames(start, run.held_names) or "none"


def result_metrics(final: dict) -> dict[str, float]:
    """The test accuracies logged at the end: the run's result's (RESULT_KEY: what `runs` lists,
    `result_said`), the baseline's ("a photo of a {}." with the start names), the best
    template's, and the ensemble's and the adapter's. An ensemble not chosen, an adapter that
    did not beat the prompt on val, is logged as `<name>_candidate_test_accuracy`: under its
    own name it looked like the result, and its figure is still worth a look (the sweep report
    shows it too; test never chose anything)."""
    out = {f"{name}_test_accuracy": _test_accuracy(final.get(name)) for name in RESULTS}
    rejected = {"ensemble": final.get("winner") != "ensemble",
                "adapter": (final.get("adapter") or {}).get("result") != "adapter"}
    for name, candidate in rejected.items():
        if candidate:
            out[f"{name}_candidate_test_accuracy"] = out.pop(f"{name}_test_accuracy")
    result = result_said(final)[1] if final else None
    out[RESULT_KEY] = float(result) if isinstance(result, (int, float)) else None
    return {key: value for key, value in out.items() if value is not None}


def pool_point(run: Run, writing: bool) -> tuple[int, dict[str, float], bool] | None:
    """(time in ms, metrics, whether it is whole) of the initial pool's best, logged at
    POOL_STEP: the train and val accuracy of the best recorded before the first LLM answer.
    Whole once an answer follows; None while a search `writing` the run may still be scoring it
    (a sync of a run nothing writes logs what was scored). None for a run with no scores."""
    first = next((e["_line"] for e in run.events if e["event"] in LLM_EVENTS and e.get("call") is not None), None)
    if first is None and writing:
        return None
    before = [e for e in run.events if first is None or e["_line"] < first]
    values = _best_so_far(run.ranked())(before[-1]["_line"]) if before else {}
    if not values:
        return None
    return int(float(before[-1].get("time") or time.time()) * 1000), values, first is not None


def soft_step_metrics(run: Run) -> list[tuple[int, int, dict[str, float]]]:
    """(step, time in ms, metrics) per step of a soft-prompt run (craft, cbbt: agent/softsearch.py,
    `steps_table`): the train and val accuracy of its prompt at that step (SOFT_KEYS). Not
    best_*_accuracy: the optimizer's prompt is its current one, not a best so far, and may fall."""
    steps = [e for e in run.events if e["event"] == "step"]
    return [(int(row["step"]), int(float(e.get("time") or time.time()) * 1000),
             {key: float(row[split]) for key, split in SOFT_KEYS.items()})
            for e, row in zip(steps, steps_table(steps))]


def answer_metrics(run: Run, hold_last: bool = False,
                   logged: Container[int] = ()) -> list[tuple[int, int, dict[str, float]]]:
    """(step = `call`, time in ms, metrics) per LLM answer of any kind (template turn, names
    turn, names guard): the train and val accuracy of the best so far (as the reader ranks, up
    to the answer's end as the reader counts it, `Run.answer_ends`: a names turn's kept change
    is written after the guard's answers inside the turn, and the best so far never falls),
    how many of its proposals were scored (new) and refused, its tokens. An answer's events
    are those with its `call`. `hold_last`: leave out the answers of a last turn that nothing
    follows yet (`Run.open_turn`: a search may still be scoring it, or keep a names change).
    `logged`: steps to leave out (the server has them), so a live tracker's work per answer
    does not grow with the answers before it."""
    ranked = run.ranked()  # best first; `line` = where it was recorded
    own: dict[int, list[dict]] = {}
    for e in run.events:
        if e.get("call") is not None:
            own.setdefault(int(e["call"]), []).append(e)
    ends, held = run.answer_ends(), run.open_turn() if hold_last else set()
    best_at = _best_so_far(ranked)
    rows = []
    for answer in (e for e in run.events if e["event"] in LLM_EVENTS and e.get("call") is not None):
        call = int(answer["call"])
        if call in logged or call in held:
            continue
        end = ends[call]
        values = {"new_proposals": sum(_is_new(e) for e in own[call]),
                  "refused_proposals": sum(e["event"] in REFUSED for e in own[call]), **tokens_spent(answer)}
        values.update(best_at(end))
        rows.append((call, _answer_time(answer), values))
    return rows


def _best_so_far(ranked: pd.DataFrame) -> Callable[[int], dict[str, float]]:
    """line -> the train and val accuracy of the best of what was recorded up to that line
    (the highest-ranked row among them): one sort, then a binary search per answer."""
    if ranked.empty:  # (a non-empty one has `line`: agent/runs/run.py `Run.scores`)
        return lambda line: {}
    by_line = ranked.assign(rank=np.arange(len(ranked))).sort_values("line", kind="stable")
    lines = by_line["line"].to_numpy()
    leader = np.minimum.accumulate(by_line["rank"].to_numpy())  # the best rank seen so far, in line order

    def best(line: int) -> dict[str, float]:
        at = int(np.searchsorted(lines, line, side="right")) - 1
        if at < 0:
            return {}
        return _accuracies(ranked.iloc[int(leader[at])], ranked)

    return best


def _accuracies(row: pd.Series, ranked: pd.DataFrame) -> dict[str, float]:
    return {f"best_{s}_accuracy": float(row[s]) for s in ("train", "val") if s in ranked and pd.notna(row[s])}


def _is_new(event: dict) -> bool:
    """A proposal of the answer, scored: a template, or one class's new name (a names turn
    also scores combinations of its names: not proposals of their own)."""
    return event["event"] == "score" or (event["event"] == "name_score" and len(event.get("changes") or ()) == 1)


def prompt_name(run: Run) -> str:
    """`promptclimb.<dataset>.<backbone>`: every run on the same task adds a version."""
    args = run.args
    backbone = "-".join(str(p) for p in (args.get("backbone"), args.get("pretrained")) if p)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"promptclimb.{run.dataset}.{backbone or 'unknown'}").strip("-.")


def prompt_tags(run: Run, mlflow_run_id: str) -> dict:
    summary = run.summary or {}
    best = summary.get("best") or {}
    tags = {"template": best.get("template"), "winner": summary.get("winner"),
            **{f"{split}_accuracy": value for split, value in (best.get("accuracy") or {}).items()},
            **{k: v for k, v in run_tags(run).items() if not k.startswith("promptclimb.")},
            "promptclimb_run": run.id, "source_run_id": mlflow_run_id}
    if summary.get("winner") == "ensemble":
        tags["ensemble_templates"] = json.dumps((summary.get("ensemble") or {}).get("templates"), ensure_ascii=False)
    names = run_classnames(summary)
    if names is not None:  # the class names go with the template
        tags["class_names"] = json.dumps(names, ensure_ascii=False)
    return tags


# -- small helpers --------------------------------------------------------------------------
def _strings(tags: dict) -> dict[str, str]:
    return {k: _cut(str(v), TAG_LIMIT) for k, v in tags.items() if v is not None}


def _test_accuracy(section: dict | None) -> float | None:
    value = ((section or {}).get("accuracy") or {}).get("test")
    return float(value) if isinstance(value, (int, float)) else None


def _answer_time(answer: dict) -> int:
    """When an answer came, in ms: its metrics' MLflow time, which tells it from another
    answer at its step (`Mirror.redone`)."""
    return int(float(answer.get("time") or time.time()) * 1000)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 40] + f"... ({len(text)} characters in all)"
