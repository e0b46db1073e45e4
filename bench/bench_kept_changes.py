"""What the kept changes of finished bench searches did on val and on test.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_kept_changes.py runs/bench-quality9 [RUNS_DIR ...]

For every `both*` run folder that bench_search_quality.py left under RUNS_DIR/curated/<start>/:
- each kept names change (a `names_change` event): the pair before it and the pair after
  it, scored with the same template on train, val and test;
- the final template against the pool's best (the same seed's pool-only run), both under
  the final names.
Prints one row each with the change in accuracy and cross-entropy per split, and then how
much test accuracy the changes that made val worse cost together, and what the names changes
that won on train cross-entropy alone (train accuracy unchanged) did on test, by how much
they lowered it (`agent/names.py` NAMES_CE_MARGIN). Test is only measured
here, to judge a rule such as `--confirm val` after the fact; no search reads it. Asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from promptclimb.agent.runs.reading import read_history
from promptclimb.evaluators import build_evaluator

SPLITS = ("train", "val", "test")


def deltas(before, after) -> dict:
    out = {}
    for split in SPLITS:
        out[f"d_{split}"] = after.accuracy[split] - before.accuracy[split]
        out[f"d_{split}_ce"] = after.loss[split] - before.loss[split]
    return out


def val_worse(row) -> bool:
    """Worse on val as the search ranks (accuracy, then cross-entropy)."""
    return row.d_val < 0 or (row.d_val == 0 and row.d_val_ce > 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs_dir", nargs="+")
    args = parser.parse_args()
    changes, templates = [], []
    for history in sorted(h for d in args.runs_dir for h in Path(d).glob("curated/*/both*/history.jsonl")):
        run = history.parent
        config = json.loads((run / "config.json").read_text())
        where = dict(start=run.parent.name, run=run.name, backbone=config["evaluator_args"]["backbone"])
        ev = build_evaluator(**{k: config["evaluator_args"][k] for k in ("dataset", "shots", "seed", "backbone",
                                                                        "classnames")})
        events = read_history(history)  # whole events, whatever the run folder's format
        for e in (e for e in events if e["event"] == "names_change"):
            before = list(e["names"])
            for c in e["changes"]:
                before[c["class"]] = c["from"]
            scores = ev.score_names(e["template"], [tuple(before), tuple(e["names"])], splits=SPLITS)
            changes.append({**where, "change": "; ".join(f"{c['from']} -> {c['to']}" for c in e["changes"]),
                            **deltas(*scores)})
        summary = json.loads((run / "summary.json").read_text())
        pool_run = run.parent / ("pool-only" + run.name[run.name.index("-demo"):])
        if not (pool_run / "summary.json").exists():
            continue
        pool_best = json.loads((pool_run / "summary.json").read_text())["best"]["template"]
        final = summary["best"]["template"]
        if final != pool_best:
            names = tuple(summary["names"]["found"]) if summary.get("names") else ev.task.classnames
            scores = [ev.score_names(t, [names], splits=SPLITS)[0] for t in (pool_best, final)]
            templates.append({**where, "pool_best": pool_best, "final": final, **deltas(*scores)})
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 48)
    for title, rows in (("kept names changes", changes), ("final template against the pool's best", templates)):
        frame = pd.DataFrame(rows)
        print(f"\n{title}: {len(frame)}")
        if frame.empty:
            continue
        print(frame.round(4).to_string(index=False))
        worse = frame[frame.apply(val_worse, axis=1)]
        print(f"worse on val: {len(worse)} of {len(frame)}, test accuracy change together "
              f"{100 * worse['d_test'].sum():+.1f} points (the others: {100 * frame['d_test'].sum() - 100 * worse['d_test'].sum():+.1f})")
    frame = pd.DataFrame(changes)
    if not frame.empty:
        alone = frame[frame["d_train"].abs() < 1e-9].assign(gain=lambda f: -f["d_train_ce"])
        alone["lowered by"] = pd.cut(alone["gain"], [-1, 0.0025, 0.005, 0.01, 0.02, 0.05, 10])
        print(f"\nnames changes that won on train cross-entropy alone: {len(alone)} of {len(frame)}; test accuracy "
              "change (points), by how much they lowered train cross-entropy:")
        table = alone.groupby(["lowered by"], observed=True)["d_test"].agg(["count", "mean", "min", "max"])
        print(table.assign(**{k: 100 * table[k] for k in ("mean", "min", "max")}).round(2).to_string())
        for name, part in (("under", alone[alone["gain"] < 0.01]), ("0.01 or more", alone[alone["gain"] >= 0.01])):
            print(f"lowered by {name}: {len(part)} changes, test {100 * part['d_test'].mean():+.2f} points on mean")


if __name__ == "__main__":
    main()
