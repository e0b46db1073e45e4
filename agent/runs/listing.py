"""Runs read for listing and showing: the table of every run under a runs folder (`promptclimb
runs`), and what `show` and the report say of one run beyond its tables (its result, how to go on
with it, its names turns).

Its own module: it reads runs through the Run class (agent/runs/run.py) and says them for a reader.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.format import shell_command
from promptclimb.agent.runs.reading import NewerFormat, list_run_dirs
from promptclimb.agent.runs.run import Run, load_run
from promptclimb.agent.runs.store import kept_result, run_argument
from promptclimb.agent.names import GUARD_NOT_ASKED


# -- all runs -------------------------------------------------------------------------------
RUNS_COLUMNS = ["id", "dataset", "backbone", "shots", "seed", "llm", "best template", "train", "test", "result",
                "result test", "llm answers", "date", "status"]


def result_said(summary: dict | None) -> tuple[str | None, float | None]:
    """What a finished run keeps as its result (`kept_result`: an adapter, an ensemble, its best
    template), said in a few words, and its test accuracy: `runs` listed the best template's
    alone, where the search had ended on an ensemble or an adapter."""
    result = kept_result(summary) if summary else None
    if not result:
        return None, None
    if result is summary.get("adapter"):
        what = f"prompt + {result.get('kind')} adapter"
    elif result is summary.get("ensemble"):
        what = f"ensemble of {len(result.get('templates') or [])}"
    else:
        what = "best template"
    return what, (result.get("accuracy") or {}).get("test")


def runs_frame(runs_dir: str | Path) -> pd.DataFrame:
    """One row per run under `runs_dir`, newest first. A run that cannot be read still gets
    its row, with the reason as status (one bad folder must not hide the others)."""
    rows = []
    for path in list_run_dirs(runs_dir):
        try:
            run = load_run(path)
        except PromptclimbError as exc:
            when = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
            status = "newer format" if isinstance(exc, NewerFormat) else "unreadable"
            rows.append({"id": path.name, "date": when, "status": status})
            continue
        final = run.final
        best = (final or {}).get("best") or {}
        if not best:  # unfinished: best scored so far, no test accuracy
            ranked = run.ranked()
            if not ranked.empty:
                best = {"template": ranked.loc[0, "template"], "accuracy": {"train": ranked.loc[0].get("train")}}
        accuracy = best.get("accuracy") or {}
        status = run.status + (f", {len(run.skipped)} bad lines" if run.skipped else "")
        result, result_test = result_said(final)
        rows.append({
            "id": run.id, "dataset": run.dataset, "backbone": run.backbone, "shots": run.args.get("shots"),
            "seed": run.args.get("seed"), "llm": run.llm, "best template": best.get("template"),
            "train": accuracy.get("train"), "test": accuracy.get("test"), "result": result, "result test": result_test,
            "llm answers": len(run.answers()), "date": run.created, "status": status,
        })
    frame = pd.DataFrame(rows, columns=RUNS_COLUMNS)
    if frame.empty:
        return frame
    for column in ("shots", "seed", "llm answers"):
        # an unreadable run's row has none: NaN would turn the column to floats (shots 1.0)
        try:
            frame[column] = frame[column].astype("Int64")
        except (TypeError, ValueError):  # a hand-edited config.json's shots 1.5 or "four": shown as written
            pass
    frame["date"] = pd.to_datetime(frame["date"], utc=True)
    return frame.sort_values(["date", "id"], ascending=False).reset_index(drop=True)


def continue_said(run: Run) -> tuple[str, str | None] | None:
    """How to go on with an unfinished run (killed, or stopped by a failure: nothing else tells
    a reader), as `show` and the report say it: the command, with the MLflow store it tracked
    to where that is a file or folder, and a note where it is a server (its URI is kept
    without the password or token it may need: named, not put in the command); None for a
    run done, stopped early or running."""
    if run.status not in ("unfinished", "failed"):
        return None
    from promptclimb.agent.tracking.store import linked_store  # the MLflow run it continues, where it has one

    store = linked_store(run.path)
    server = store is not None and store.startswith(("http://", "https://"))
    command = shell_command("search", "--resume", run_argument(run.path),
                            *(["--mlflow", store] if store and not server else []))
    note = (f"its MLflow run is on {store}: add --mlflow with that server's URI, and the credentials it needs, "
            "to continue that MLflow run") if server else None
    return command, note


NAMES_SHOWN = 5  # proposals listed per names turn, the kept ones first


def names_turns_shown(run: Run) -> list[dict]:
    """`Run.names_turns()` as `show` and the report list them: each turn with its best
    `NAMES_SHOWN` proposals, the kept ones first and marked (a kept name tied with others could
    not be told apart), its refused names counted by reason, and `undecided`: the last turn of a
    run not ended that kept nothing yet, whose decision may be still to come (keeping nothing
    writes no event)."""
    open_turn = run.open_turn() if run.final is None else set()
    out = []
    for turn in run.names_turns():
        kept = {(c["from"], c["to"]) for c in turn["kept"]}
        ranked = sorted(turn["scored"], key=lambda s: ((s["from"], s["to"]) not in kept, -s["selection"]))
        reasons: dict[str, int] = {}
        for r in turn["refused"]:
            if r["reason"] != GUARD_NOT_ASKED:  # said on the turn's "cut" line
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        out.append({**turn, "shown": [{**s, "kept": (s["from"], s["to"]) in kept} for s in ranked[:NAMES_SHOWN]],
                    "reasons": reasons,
                    "undecided": turn["call"] in open_turn and not turn["kept"] and not turn["cut"]})
    return out
