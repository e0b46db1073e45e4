"""What the changes of finished bench searches did on val and on test, after the fact.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_kept_changes.py runs/bench-quality9 [RUNS_DIR ...] [--every]

For every `both*` run folder that bench_search_quality.py left under RUNS_DIR/curated/<start>/:
- each kept names change (a `names_change` event): the pair before it and the pair after
  it, scored with the same template on train, val and test;
- the final template against the pool's best (the same seed's pool-only run), both under
  the final names.
Prints one row each with the change in accuracy and cross-entropy per split, and then how
much test accuracy the changes that made val worse cost together, and what the names changes
that won on train cross-entropy alone (train accuracy unchanged) did on test, by how much
they lowered it (`agent/names.py` NAMES_CE_MARGIN).

With `--every`, also what the few-shot images could have told the search:
- every one-class rename the runs scored (`name_score` events, kept or not), before and
  after on train, val and test: how well each signal ranks them by their test change (the
  renames the search could keep, those that lose no training image and lower train
  cross-entropy), what other rules for keeping a rename would have kept and what those did
  on test, and how the search's pick among the renames of one class that pass its rule
  compares with other picks and with the best one chosen on test;
- every template an LLM turn wrote that took the board's lead (replayed from the history:
  train accuracy, then cross-entropy), against the pair it replaced, on test.
Runs that replay the same answers (one seed in several runs dirs) count once.

Test is only measured here, to judge a rule after the fact; no search reads it. Asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from promptclimb.agent.names import NAMES_CE_MARGIN
from promptclimb.agent.runs.reading import read_history
from promptclimb.evaluators import build_evaluator

SPLITS = ("train", "val", "test")
TINY = 1e-9  # accuracies are multiples of 1/N stored as float32: equal within this


def deltas(before, after) -> dict:
    out = {}
    for split in SPLITS:
        out[f"d_{split}"] = after.accuracy[split] - before.accuracy[split]
        out[f"d_{split}_ce"] = after.loss[split] - before.loss[split]
    return out


def val_worse(row) -> bool:
    """Worse on val as the search ranks (accuracy, then cross-entropy)."""
    return row.d_val < 0 or (row.d_val == 0 and row.d_val_ce > 0)


def search_keeps(f: pd.DataFrame) -> pd.Series:
    """The search's own rule for a one-class rename (`HillClimber.renames_best`, then the
    check on val): more training images right, or as many and a cross-entropy lower by
    NAMES_CE_MARGIN; and on val no fewer images right, nor as many with a higher cross-entropy."""
    on_train = (f.d_train > TINY) | ((f.d_train.abs() < TINY) & (f.d_train_ce <= -NAMES_CE_MARGIN))
    on_val = (f.d_val > TINY) | ((f.d_val.abs() < TINY) & (f.d_val_ce <= 0))
    return on_train & on_val


# Other rules for keeping a rename, on the same images: what each would have kept.
RULES = {
    "the search's (train, margin 0.01; then val)": search_keeps,
    "... and val cross-entropy lower by 0.01 too": lambda f: search_keeps(f) & (f.d_val_ce <= -NAMES_CE_MARGIN),
    "train and val pooled (accuracy, then cross-entropy by 0.01)": lambda f: (f.tv_acc > TINY) | (
        (f.tv_acc.abs() < TINY) & (f.tv_ce <= -NAMES_CE_MARGIN)),
    "no image lost on either, pooled cross-entropy lower by 0.02": lambda f: (f.d_train > -TINY) & (
        f.d_val > -TINY) & (f.tv_ce <= -0.02),
}
SIGNALS = {"train cross-entropy": "d_train_ce", "val cross-entropy": "d_val_ce", "pooled cross-entropy": "tv_ce"}


def spearman(x: pd.Series, y: pd.Series) -> float:
    return round(x.rank().corr(y.rank()), 2)


def every_rename(events: list[dict], ev, where: dict) -> list[dict]:
    """Each one-class rename a run scored, before and after, on every split."""
    rows = []
    for e in (e for e in events if e["event"] == "name_score" and len(e.get("changes", ())) == 1):
        change = e["changes"][0]
        before = list(e["names"])
        before[change["class"]] = change["from"]
        scores = ev.score_names(e["template"], [tuple(before), tuple(e["names"])], splits=SPLITS)
        rows.append({**where, "template": e["template"], "before": tuple(before), "cls": change["class"],
                     "change": f"{change['from']} -> {change['to']}", **deltas(*scores)})
    return rows


def takeovers(events: list[dict], ev, where: dict) -> list[dict]:
    """Each template from an LLM turn that took the board's lead, replayed from the history
    (train accuracy, then train cross-entropy; equal: the earlier), with the pair it replaced."""
    rows, board_best = [], None
    for order, e in enumerate(events):
        if e["event"] == "restart":
            board_best = None
        if e["event"] not in ("score", "names_change"):
            continue
        entry = (-e["accuracy"]["train"], e["loss"]["train"], order, e["template"],
                 tuple(e["names"]) if e.get("names") else ev.task.classnames)
        if board_best is not None and entry < board_best and str(e.get("origin", "")).startswith("llm"):
            old, new = (ev.score_names(t, [n], splits=SPLITS)[0] for t, n in (board_best[3:], entry[3:]))
            rows.append({**where, "was": board_best[3], "now": e["template"], **deltas(old, new)})
        if board_best is None or entry < board_best:
            board_best = entry
    return rows


def print_every(renames: list[dict], leads: list[dict]) -> None:
    frame = pd.DataFrame(renames)
    if frame.empty:
        return
    frame = frame.drop_duplicates(["setting", "seed", "template", "before", "change"])
    frame = frame.assign(tv_acc=(frame.d_train + frame.d_val) / 2, tv_ce=(frame.d_train_ce + frame.d_val_ce) / 2)
    settings = [("all", frame), *frame.groupby("setting")]
    could = frame[(frame.d_train > -TINY) & (frame.d_train_ce < 0)]
    print(f"\nevery one-class rename scored: {len(frame)}; those the search could keep (no training image lost, "
          f"train cross-entropy lower): {len(could)}. Spearman of each signal's fall with the test accuracy change:")
    print(pd.DataFrame([{"setting": name, "renames": len(part), **{label: spearman(-part[col], part.d_test)
                                                                    for label, col in SIGNALS.items()}}
                        for name, part in [("all", could), *could.groupby("setting")]]).to_string(index=False))
    print("\nwhat each rule would keep: renames, test accuracy change on mean (points)")
    table = []
    for rule, keeps in RULES.items():
        row = {"rule": rule}
        for name, part in settings:
            kept = part[keeps(part)]
            row[name] = f"{len(kept)}, {100 * kept.d_test.mean():+.2f}" if len(kept) else "0"
        table.append(row)
    print(pd.DataFrame(table).to_string(index=False))
    passing = frame[search_keeps(frame)]
    picks = []
    for (setting, *_), group in passing.groupby(["setting", "seed", "template", "before", "cls"]):
        if len(group) < 2:
            continue

        def first(by, ascending):
            return group.sort_values(by, ascending=ascending).iloc[0].d_test
        picks.append({"setting": setting, "the search's (train)": first(["d_train", "d_train_ce"], [False, True]),
                      "pooled": first(["tv_acc", "tv_ce"], [False, True]),
                      "val": first(["d_val", "d_val_ce"], [False, True]),
                      "any (mean)": group.d_test.mean(), "chosen on test": group.d_test.max()})
    if picks:
        picks = pd.DataFrame(picks)
        print(f"\nthe pick among renames of one class that pass the search's rule ({len(picks)} times two or more): "
              "test accuracy change on mean (points)")
        print((100 * picks.groupby("setting").mean()).round(2).to_string())
        print((100 * picks.drop(columns="setting").mean()).round(2).to_frame("all").T.to_string())
    leads = pd.DataFrame(leads)
    if leads.empty:
        return
    leads = leads.drop_duplicates(["setting", "seed", "was", "now"])
    print(f"\ntemplates from LLM turns that took the lead: {len(leads)}; test accuracy change (points)")
    pd.set_option("display.max_colwidth", 44)
    print(leads.assign(test=100 * leads.d_test)[["setting", "seed", "was", "now", "d_train", "d_train_ce", "d_val",
                                                  "d_val_ce", "test"]].round(3).to_string(index=False))
    for name, part in [("tied on train accuracy", leads[leads.d_train.abs() < TINY]),
                       ("more training images right", leads[leads.d_train > TINY])]:
        if len(part):
            print(f"{name}: {len(part)}, test {100 * part.d_test.mean():+.2f} points on mean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs_dir", nargs="+")
    parser.add_argument("--every", action="store_true",
                        help="also every scored rename and every template that took the lead (see above)")
    args = parser.parse_args()
    changes, templates, renames, leads, evaluators = [], [], [], [], {}
    for history in sorted(h for d in args.runs_dir for h in Path(d).glob("curated/*/both*/history.jsonl")):
        run = history.parent
        config = json.loads((run / "config.json").read_text())
        where = dict(start=run.parent.name, run=run.name, backbone=config["evaluator_args"]["backbone"])
        build = {k: config["evaluator_args"][k] for k in ("dataset", "shots", "seed", "backbone", "classnames")}
        key = json.dumps(build, sort_keys=True)
        if key not in evaluators:  # one per dataset split and names, shared by the runs on it
            evaluators[key] = build_evaluator(**build)
        ev = evaluators[key]
        events = read_history(history)  # whole events, whatever the run folder's format
        for e in (e for e in events if e["event"] == "names_change"):
            before = list(e["names"])
            for c in e["changes"]:
                before[c["class"]] = c["from"]
            scores = ev.score_names(e["template"], [tuple(before), tuple(e["names"])], splits=SPLITS)
            changes.append({**where, "change": "; ".join(f"{c['from']} -> {c['to']}" for c in e["changes"]),
                            **deltas(*scores)})
        if args.every:
            run_of = dict(setting=f"{build['backbone']}, {run.parent.name}, {build['shots']} shot", seed=build["seed"])
            renames += every_rename(events, ev, run_of)
            leads += takeovers(events, ev, run_of)
        if not (run / "summary.json").exists():  # a run stopped before its end: no final template
            continue
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
    if args.every:
        print_every(renames, leads)


if __name__ == "__main__":
    main()
