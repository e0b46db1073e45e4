"""Prompt optimizers side by side on the embedded demo, at equal query budgets: the LLM's
text templates against the seed papers' soft prompts (CraFT, CBBT).

    python bench/bench_optimizers.py --shots 1 16 --seeds 1 --budgets 200 1000
    python bench/bench_optimizers.py --shots 16 --seeds 1 --budgets 8000 --optimizers craft
    python bench/bench_optimizers.py --llm-runs runs/bench-quality       # LLM searches already run
    python bench/bench_optimizers.py --start clean --shots 1 --budgets 8000   # from the hand-cleaned names
    python bench/bench_optimizers.py --base-url http://127.0.0.1:PORT/v1 # run them on `promptclimb llm serve`

Rows, per (shots, seed) of fashion-mnist on backbone `demo`, every one starting from the same
class names (`--start`: the published labels, or `clean`, the hand-cleaned set; the LLM
search may change them, the soft prompts keep them):
    hard        "a photo of a {}."                                   text access
    pool        the curated pool's best, ranked as the search ranks    text access
    llm         the default LLM search (run folders from --llm-runs,
                or run with --base-url; left out with neither)        text access
    craft@B     CraFT, B queries (CMA-ES popsize 40)                  embedding access
    cbbt@B      CBBT, B queries (directions: see CBBT_DIRECTIONS)     embedding access
One query = one prompt scored on the train split (hard: 0; pool: its size; llm: every
template it scored). "+module" = the output-side module on the row's prompt: CraFT's
refinement and CBBT's feature adapter come with their runs; for the text rows, the better
on val of the two (as `promptclimb adapt --kind residual-logits --kind feature-residual`).
Test accuracy is only measured, never used to choose.

Every soft-prompt search is an ordinary run folder under --runs-dir (`promptclimb show`);
finished ones are read back and a killed one resumes, so a rerun only computes what is
missing. Everything goes under <runs-dir>/<start>/: the run folders, the measured wall and
CPU seconds (all threads) in timings.json, results.csv and accuracy-vs-queries.png. Prints one
markdown table per shots. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from promptclimb.agent.core.files import write_json_atomic
from promptclimb.agent.core.pools import load_pool
from promptclimb.agent.ranking import DEFAULT_METRIC, rank_key, selection_value
from promptclimb.agent.core.settings import SoftPromptConfig
from promptclimb.agent.options import resolve
from promptclimb.agent.pipeline import run_search
from promptclimb.agent.core.templates import BASELINE

DATASET, BACKBONE = "fashion-mnist", "demo"
ACCESS = {"hard": "text", "pool": "text", "llm": "text", "craft": "embeddings", "cbbt": "embeddings"}


def cbbt_directions(budget: int) -> int:
    """CBBT's 256 directions per step where the budget buys 20 steps or more of them; fewer
    below (at least 4), so that a budget gets about 20 gradient steps (the bench's choice, shown)."""
    return max(4, min(256, budget // 20 - 1))


def soft_run(optimizer: str, budget: int, shots: int, seed: int, args, timings: dict) -> dict:
    name = f"{optimizer}-q{budget}-shots{shots}-seed{seed}"
    run_dir = Path(args.runs_dir) / name
    if not (run_dir / "summary.json").exists():
        if args.only_finished:
            return None
        opts = resolve({"resume": str(run_dir) if (run_dir / "config.json").exists() else None,
                        "runs_dir": args.runs_dir, "name": name, "dataset": DATASET, "shots": shots, "seed": seed,
                        "backbone": BACKBONE, "device": "cpu", "optimizer": optimizer, "queries": budget,
                        "cbbt_directions": cbbt_directions(budget), "classnames": args.start})
        if opts["resume"]:  # the run's own settings; only the session's are given again
            opts = resolve({"resume": opts["resume"], "runs_dir": args.runs_dir, "device": "cpu"})
        wall, cpu = time.time(), time.process_time()
        run_search(opts, echo=lambda msg: print(f"  {msg}", file=sys.stderr) if args.verbose else None)
        timings[name] = {"wall_s": round(time.time() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1)}
        write_json_atomic(Path(args.runs_dir) / "timings.json", timings)
    summary = json.loads((run_dir / "summary.json").read_text())
    measured = timings.get(name) or {"wall_s": summary["timings"]["session_wall_s"],
                                     "cpu_s": summary["timings"].get("session_cpu_s")}
    adapter = summary["adapter"]
    return {"optimizer": optimizer, "budget": budget, "queries": summary["counts"]["queries"],
            "steps": summary["counts"]["steps"], "test": summary["best"]["accuracy"]["test"],
            "test_module": adapter["accuracy"]["test"], "module_kept": adapter["beats_prompt_on_val"],
            "module": adapter["kind"], "directions": summary["config"]["cbbt_directions"] if optimizer == "cbbt" else None,
            "prompt": summary["best"]["template"], **measured}


def with_module(evaluator, template: str, seed: int, classnames=None) -> tuple[float, bool]:
    """Test accuracy of the better module on val (residual-logits or feature-residual) on a
    text prompt (with `classnames`, a search's found names; None: the start names), and
    whether it beat the prompt alone on val."""
    from promptclimb.evaluators.adapters import select_and_fit

    weights = evaluator.class_embeddings([template], classnames)
    splits = {s: evaluator.image_features(s) for s in ("train", "val", "test")}
    fits = [select_and_fit(kind, splits["train"], splits["val"], weights, evaluator.logit_scale, seed=seed,
                           test=splits["test"]) for kind in ("residual-logits", "feature-residual")]
    best = max(fits, key=lambda f: f.accuracy["val"])
    return best.accuracy["test"], best.beats_prompt_on_val


def text_rows(shots: int, seed: int, args) -> list[dict]:
    """hard, pool (and llm when its run is at hand), each with and without a module."""
    from promptclimb.evaluators import build_evaluator

    evaluator = build_evaluator(DATASET, shots, seed, BACKBONE, device="cpu", classnames=args.start)
    rows = []
    started = time.time()
    hard = evaluator.score([BASELINE], splits=("test",))[0].accuracy["test"]
    rows.append({"optimizer": "hard", "queries": 0, "test": hard, "prompt": BASELINE,
                 "wall_s": round(time.time() - started, 1)})
    started = time.time()
    pool = [p.template for p in load_pool(DATASET, "curated")]
    scores = evaluator.score(pool, splits=("train",))
    order = sorted(range(len(pool)), key=lambda i: rank_key(
        selection_value(scores[i].accuracy, scores[i].prob, ("train",), DEFAULT_METRIC), scores[i].loss, ("train",), i))
    best = pool[order[0]]
    rows.append({"optimizer": "pool", "queries": len(pool), "prompt": best,
                 "test": evaluator.score([best], splits=("test",))[0].accuracy["test"],
                 "wall_s": round(time.time() - started, 1)})
    llm = llm_run(shots, seed, args)
    if llm:
        rows.append(llm)
    for row in rows:
        row["test_module"], row["module_kept"] = with_module(evaluator, row["prompt"], seed, row.get("classnames"))
        row["module"] = "best on val"
    return rows


def llm_run(shots: int, seed: int, args) -> dict | None:
    """The LLM search's result for (shots, seed): a finished run folder under --llm-runs, or
    a default search run now on --base-url; None when neither is given."""
    found = []
    if args.llm_runs:
        for config_path in sorted(Path(args.llm_runs).rglob("config.json")):
            config = json.loads(config_path.read_text())
            a = config.get("evaluator_args") or {}
            if (config.get("optimizer", "llm") == "llm" and a.get("dataset") == DATASET and a.get("backbone") == BACKBONE
                    and a.get("shots") == shots and a.get("seed") == seed and (a.get("classnames") or "published") == args.start
                    and (config_path.parent / "summary.json").exists()):
                found.append(config_path.parent)
        # bench_search_quality's folders: prefer its default search ("both"; "full" before names turns)
        found.sort(key=lambda p: (not p.name.startswith("both-"), not p.name.startswith("full-"), str(p)))
    if not found and args.base_url:
        name = f"llm-shots{shots}-seed{seed}"
        run_dir = Path(args.runs_dir) / name
        if not (run_dir / "summary.json").exists():
            command = ["promptclimb", "search", "--dataset", DATASET, "--shots", str(shots), "--seed", str(seed),
                       "--classnames", args.start, "--base-url", args.base_url, "--runs-dir", args.runs_dir,
                       "--name", name, "--json"]
            if (run_dir / "config.json").exists():
                command = ["promptclimb", "search", "--resume", str(run_dir), "--base-url", args.base_url, "--json"]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        found = [run_dir]
    if not found:
        return None
    summary = json.loads((found[0] / "summary.json").read_text())
    names = summary.get("names") or {}
    # one query = one prompt scored on train: the templates, and the names variants of names turns
    queries = summary["counts"]["scored"] + (names.get("counts") or {}).get("scored", 0)
    return {"optimizer": "llm", "queries": queries, "test": summary["best"]["accuracy"]["test"],
            "prompt": summary["best"]["template"], "classnames": summary["best"].get("names"),
            "wall_s": summary["timings"]["session_wall_s"], "run": str(found[0])}


def table(frame: pd.DataFrame) -> str:
    """Mean ± sd over seeds per row (one table per shots)."""
    lines = []
    for shots, part in frame.groupby("shots"):
        lines.append(f"\n{shots} shot{'s' if shots > 1 else ''} ({part['seed'].nunique()} seed(s): "
                     f"{', '.join(map(str, sorted(part['seed'].unique())))}); test accuracy in %\n")
        lines.append("| optimizer | queries | access | prompt alone | + module (kept on val) | wall s | CPU s |")
        lines.append("|---|---|---|---|---|---|---|")
        for key, rows in part.groupby("row", sort=False):
            def stat(col):
                values = rows[col].dropna() * 100
                if values.empty:
                    return ""
                return f"{values.mean():.1f}" + (f" ± {values.std():.1f}" if len(values) > 1 else "")
            kept = rows["module_kept"].dropna()
            cpu = rows["cpu_s"].dropna() if "cpu_s" in rows else pd.Series(dtype=float)
            lines.append(f"| {key} | {int(rows['queries'].mean())} | {ACCESS[rows['optimizer'].iloc[0]]} | "
                         f"{stat('test')} | {stat('test_module')} ({int(kept.sum())}/{len(kept)}) | "
                         f"{rows['wall_s'].mean():.0f} | {f'{cpu.mean():.0f}' if not cpu.empty else ''} |")
    return "\n".join(lines)


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    shots_values = sorted(frame["shots"].unique())
    fig, axes = plt.subplots(1, len(shots_values), figsize=(6 * len(shots_values), 4.5), dpi=120, squeeze=False)
    colours = {"craft": "#c0392b", "cbbt": "#8e44ad", "llm": "#2e86de", "pool": "#7f8c8d", "hard": "#2c3e50"}
    for ax, shots in zip(axes[0], shots_values):
        part = frame[frame["shots"] == shots]
        for optimizer in ("craft", "cbbt"):
            rows = part[part["optimizer"] == optimizer].groupby("queries")[["test", "test_module"]].mean()
            if rows.empty:
                continue
            ax.plot(rows.index, rows["test"], "o-", color=colours[optimizer], label=f"{optimizer}, soft prompt")
            ax.plot(rows.index, rows["test_module"], "o--", color=colours[optimizer], alpha=0.6,
                    label=f"{optimizer} + its module")
        for optimizer in ("hard", "pool", "llm"):
            rows = part[part["optimizer"] == optimizer]
            if rows.empty:
                continue
            x = max(1, rows["queries"].mean())
            ax.scatter([x], [rows["test"].mean()], s=60, marker="s", color=colours[optimizer],
                       label=f"{optimizer} (text)", zorder=4)
        ax.set_xscale("log")
        ax.set_title(f"fashion-mnist, demo backbone, {shots} shot{'s' if shots > 1 else ''}")
        ax.set_xlabel("queries (prompts scored on the train split)")
        ax.set_ylabel("test accuracy (mean over seeds)")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 200, 1000, 8000])
    parser.add_argument("--optimizers", nargs="+", default=["craft", "cbbt"], choices=["craft", "cbbt"])
    parser.add_argument("--llm-runs", default=None, help="Folder searched for finished LLM run folders of the same split.")
    parser.add_argument("--base-url", default=None, help="Run missing LLM searches on this OpenAI-compatible endpoint.")
    parser.add_argument("--no-text", action="store_true", help="Leave out the text rows (hard, pool, llm).")
    parser.add_argument("--start", default="published", choices=["published", "clean"],
                        help="The class names every row starts from: the dataset's published labels or the "
                             "hand-cleaned set.")
    parser.add_argument("--runs-dir", default="runs/bench-optimizers")
    parser.add_argument("--only-finished", action="store_true",
                        help="Tabulate the soft-prompt runs already finished under --runs-dir; compute none.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's].")
    parser.add_argument("--verbose", action="store_true", help="Print every step of the soft-prompt searches.")
    args = parser.parse_args()
    args.runs_dir = str(Path(args.runs_dir) / args.start)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    timings_path = Path(args.runs_dir) / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    SoftPromptConfig().check()  # the papers' defaults are valid before anything slow

    rows = []
    for shots in args.shots:
        for seed in args.seeds:
            cell = [] if args.no_text else text_rows(shots, seed, args)
            for optimizer in args.optimizers:
                for budget in args.budgets:
                    started = time.time()
                    row = soft_run(optimizer, budget, shots, seed, args, timings)
                    if row is not None:
                        cell.append(row)
                        print(f"{optimizer} {budget} queries, {shots} shots, seed {seed}: test {row['test']:.1%} "
                              f"({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
            for row in cell:
                label = row["optimizer"] if "budget" not in row else f"{row['optimizer']} @ {row['budget']}"
                if row["optimizer"] == "cbbt":
                    label += f" (q={row['directions']})"
                rows.append({"shots": shots, "seed": seed, "row": label, **row})
    frame = pd.DataFrame(rows)
    frame.to_csv(Path(args.runs_dir) / "results.csv", index=False, float_format="%.6g")
    plot(frame, Path(args.runs_dir) / "accuracy-vs-queries.png")
    print(table(frame))
    print(f"\nwrote {Path(args.runs_dir) / 'results.csv'} and {Path(args.runs_dir) / 'accuracy-vs-queries.png'}")
    if math.isnan(frame["test"].mean()):
        sys.exit("no results")


if __name__ == "__main__":
    main()
