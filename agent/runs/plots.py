"""Plots of a run, written into its folder (matplotlib, Agg backend, imported lazily so that
`import agent.runs.plots` stays cheap).

    curve.png   best-so-far accuracy by LLM answer, every proposal as a point, and the
                initial pool's distribution as a reference band
    transfer-<backbone>.png   after `promptclimb transfer`: every template's accuracy on the
                source (the run's selection split) against the target (test)
"""

from __future__ import annotations

from pathlib import Path

from promptclimb.agent.core.files import write_atomic
from promptclimb.agent.core.format import pct, shortened
from promptclimb.agent.runs.run import Run, load_run
from promptclimb.agent.core.templates import BASELINE

from promptclimb.agent.core.runfiles import CURVE
from promptclimb.agent.runs.store import ANSWER_KINDS
SPLIT_NAMES = {"train": "training accuracy", "train+val": "train+val accuracy"}


def new_figure(figsize: tuple[float, float], dpi: int = 100):
    """(figure, axes) of a plot written to a file: a matplotlib Figure of its own, not one of
    pyplot's, so the process's backend is left as it is (a notebook's inline plots went on
    Agg after `search()`) and nothing is registered to close. The plots here, a soft-prompt
    run's curve (agent/softsearch.py) and a sweep's report (agent/sweep/reading.py)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots()


def save_figure(fig, path: str | Path, **savefig) -> Path:
    """`fig` as a PNG at `path`, written atomically (a report or a browser may be reading the
    old one)."""
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", **savefig))


def plot_curve(run: Run, path: Path) -> Path | None:
    """curve.png; None when the run has no scores yet."""
    scores = run.scores()
    if scores.empty:
        return None
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    pool = scores[scores["origin"] == "pool"]["selection"].dropna()
    llm = scores[scores["origin"] == "llm"]
    calls = max(int(scores["x"].max()), len(run.of("llm_exchange")), 1)

    fig, ax = new_figure(figsize=(11, 5), dpi=120)
    ax.set_axisbelow(True)
    left, right = -0.5, calls + 0.5
    if not pool.empty:
        lo, q1, med, q3, hi = pool.quantile([0, 0.25, 0.5, 0.75, 1]).tolist()
        ax.axhspan(lo, hi, color="#9aa5b1", alpha=0.18, lw=0, label=f"initial pool: range ({len(pool)} templates)")
        ax.axhspan(q1, q3, color="#9aa5b1", alpha=0.35, lw=0, label="initial pool: middle half")
        ax.axhline(med, color="#6b7785", lw=1, ls=":", label="initial pool: median")
    baseline = scores[scores["template"] == BASELINE]["selection"]
    if not baseline.empty:
        ax.axhline(baseline.iloc[0], color="#c0392b", lw=1, ls="--", label=f"baseline '{BASELINE}'")

    # restarts and resets start new conversations: thin vertical guides before their first
    # answer, of whichever kind (under --search both a reset opens with a names turn); restarts
    # in parallel lanes take turns in the history, so each (restart, reset) is marked once
    seen = set()
    for ex in (e for e in run.events if e["event"] in ANSWER_KINDS and e.get("call") is not None):
        where = (ex.get("restart"), ex.get("reset"))
        if where not in seen and seen:
            restart = ex.get("reset") == 0  # a restart also re-samples the pool: stronger line
            ax.axvline(int(ex["call"]) + 0.5, color="#8d99a6" if restart else "#d0d4d9",
                       lw=1.2 if restart else 0.8, ls="--" if restart else "-", zorder=0)
        seen.add(where)

    if not llm.empty:
        ax.scatter(llm["x"], llm["selection"], s=22, color="#2e86de", alpha=0.55, lw=0, zorder=3,
                   label=f"LLM proposal ({len(llm)})")
    # best so far: a step line over every scored template, drawn at the end of each answer
    curve = scores.groupby("x")["best_so_far"].max().reindex(range(0, calls + 1)).ffill()
    ax.step(curve.index, curve.values, where="post", color="#1b4f72", lw=2.2, zorder=4, label="best so far")
    # the winner where it was scored: with ties on accuracy it can come after the curve's first peak
    best = run.ranked().iloc[0]
    # ... with its names: a template scored first under the start names is the winner only with
    # those a names turn found later (the dot sat at 0, at a score the pool never had)
    same_names = scores["names"].map(names_key) == names_key(best.get("names"))
    same = scores["template"] == best["template"]
    best_x = int(scores.loc[same & same_names if (same & same_names).any() else same, "x"].min())
    ax.scatter([best_x], [best["selection"]], s=70, color="#f39c12", edgecolor="#1b4f72", zorder=5,
               label="the winner (ties: lower cross-entropy)")

    ax.set_xlim(left, right)
    # a little room above and below, and never a range so narrow that ticks repeat
    values = scores["selection"].dropna()
    span = float(values.max() - values.min())
    pad = max(0.02, 0.06 * span)
    ax.set_ylim(float(values.min()) - pad, float(values.max()) + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0 if span + 2 * pad >= 0.05 else 1))
    ax.set_xlabel("LLM answers (0 = the initial pool; thin lines: new conversation; dashed: restart)")
    ax.set_ylabel(SPLIT_NAMES.get(run.select, run.select))
    ax.grid(axis="y", color="#eceff1")
    ax.set_title(f"{run.id}: best {pct(best['selection'])}  {shortened(best['template'], 60)}", fontsize=10, loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path)


def names_key(names) -> tuple | None:
    """A scored row's names, comparable (a list, or None for the start names)."""
    return tuple(names) if isinstance(names, (list, tuple)) else None


def plot_transfer(table, summary: dict, path: Path) -> Path:
    """transfer-<backbone>.png: source accuracy (the run's selection split) against target
    test accuracy, one point per template the run scored; the source winner, the target's
    own best and the baseline marked; Spearman's rho in the title."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    select = summary["select"].split("+")
    ours = table[table["source_rank"].notna()]
    x = ours[[f"source_{s}" for s in select]].mean(axis=1)
    y = ours["target_test"]
    fig, ax = new_figure(figsize=(7.5, 5.5), dpi=120)
    ax.set_axisbelow(True)
    ax.scatter(x, y, s=24, color="#2e86de", alpha=0.5, lw=0, zorder=3, label=f"template ({len(ours)})")
    winner_rank = f"{summary['winner']['target_test_rank']}/{summary['templates']}"
    marks = [(ours["source_rank"] == 1, "#f39c12", "o", 90, f"source winner (target rank {winner_rank} on test)"),
             (ours["template"] == summary["target_best"]["template"], "#27ae60", "D", 60,
              f"best on target {summary['select']}")]
    for mask, color, marker, size, label in marks:
        ax.scatter(x[mask], y[mask], s=size, color=color, marker=marker, edgecolor="#1b4f72", zorder=5, label=label)
    # the baseline the text gives: with the start names (the table's row has the run's names)
    ax.axhline(summary["baseline"]["target"]["test"], color="#c0392b", lw=1, ls="--",
               label=f"baseline '{BASELINE}' with the start names, on target")
    for axis, values in ((ax.xaxis, x), (ax.yaxis, y)):  # ticks on round percents, one decimal when close
        axis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 5, 10]))
        axis.set_major_formatter(PercentFormatter(1.0, decimals=0 if values.max() - values.min() >= 0.05 else 1))
    source, target = summary["source_backbone"], summary["target"]["backbone"]
    ax.set_xlabel(f"source {source}: {SPLIT_NAMES.get(summary['select'], summary['select'])}")
    ax.set_ylabel(f"target {target}: test accuracy")
    rho = summary["rank_correlation"]
    fmt = (lambda r: "n/a" if r is None else f"{r:+.2f}")
    ax.set_title(f"{summary['run_id']}: {source} -> {target}\nSpearman rho {fmt(rho['selection'])} "
                 f"(target {summary['select']}), {fmt(rho['test'])} (target test)", fontsize=10, loc="left")
    ax.grid(color="#eceff1")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path)


def write_plots(run_dir: str | Path) -> list[Path]:
    """Every plot of the run, written into its folder; the paths written."""
    run = load_run(run_dir)
    written = [plot_curve(run, run.path / CURVE)]
    return [p for p in written if p is not None]
