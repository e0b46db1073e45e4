"""A sweep read back (`promptclimb sweep-report`): one row per cell, the mean ± sd of each group
over its seeds, report.png. Its own module: reading a sweep needs pandas and matplotlib, never Ray."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.runfiles import SUMMARY, SWEEP_FILE
from promptclimb.agent.runs.store import has_summary, kept_result
from promptclimb.agent.sweep.cell import ERROR_FILE, cell_state, cell_summary
from promptclimb.agent.sweep.grid import check_grid, grid_cells, read_sweep, search_options

if TYPE_CHECKING:
    import pandas as pd

PLOT_FILE = "report.png"
# test accuracies the report aggregates: what each run keeps (`kept_result`), its best template, and
# its ensemble and adapter, kept or not (a candidate ensemble, an adapter that lost on val)
RESULTS = ("result", "best", "ensemble", "adapter")


def sweep_cells(sweep_dir: str | Path) -> "pd.DataFrame":
    """One row per cell of the grid: its state, the test accuracy of the best template, of
    the top-k ensemble and of the adapter (when fit), the LLM cost, and the error of a
    failed cell (or why a summary could not be read)."""
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    settings = read_sweep(sweep_dir)
    try:
        settings["grid"] = check_grid(settings["grid"])
        adapter_wanted = bool(search_options(settings["search"])["adapter_kinds"])
        cells = grid_cells(settings)
    except PromptclimbError as exc:
        raise PromptclimbError(f"{sweep_dir / SWEEP_FILE} is damaged ({exc})") from None
    rows = []
    for cell in cells:
        cell_dir = sweep_dir / cell.name
        row = {"dataset": cell.dataset, "backbone": cell.backbone, "shots": cell.shots, "seed": cell.seed,
               "cell": cell.name, "state": cell_state(cell_dir, adapter_wanted), "error": ""}
        if row["state"] == "failed":
            try:
                row["error"] = (cell_dir / ERROR_FILE).read_text(encoding="utf-8", errors="replace").strip()
            except OSError as exc:
                row["error"] = f"{ERROR_FILE} cannot be read: {exc.strerror or exc}"
        summary = cell_summary(cell_dir)
        if summary is None and has_summary(cell_dir):  # an empty one holds no result: a cell not finished yet
            row["error"] = row["error"] or f"{SUMMARY} is damaged; rerun the sweep to write it again"
        summary = summary or {}
        ledger = summary.get("ledger") if isinstance(summary.get("ledger"), dict) else {}
        row |= {
            "result": _test(kept_result(summary)),
            "best": _test(summary.get("best")),
            "ensemble": _test(summary.get("ensemble")),
            "adapter": _test(summary.get("adapter")),
            "llm_calls": _number(ledger.get("calls")),
            "llm_tokens": _number(ledger.get("prompt_tokens")) + _number(ledger.get("completion_tokens"), 0.0),
            "llm_s": _number(ledger.get("latency_s")),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def _number(value, missing: float = math.nan) -> float:
    """A figure read from a summary: a number, else `missing` (a summary of wrong types is
    shown as not measured, never a traceback)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return missing
    return float(value)


def _test(section) -> float:
    accuracy = section.get("accuracy") if isinstance(section, dict) else None
    return _number(accuracy.get("test")) if isinstance(accuracy, dict) else math.nan


def sweep_summary(cells: "pd.DataFrame") -> "pd.DataFrame":
    """Per dataset x backbone x shots: finished seeds, failed cells, mean and sd over the
    finished seeds of each test accuracy (0..1) and the mean LLM cost per cell."""
    import pandas as pd

    rows = []
    for (dataset, backbone, shots), group in cells.groupby(["dataset", "backbone", "shots"], sort=False):
        done = group[group["state"] == "finished"]
        row = {"dataset": dataset, "backbone": backbone, "shots": shots, "seeds": len(done),
               "failed": int((group["state"] == "failed").sum())}
        for result in RESULTS:
            values = done[result].dropna()
            row[f"{result}_mean"] = values.mean() if len(values) else math.nan
            row[f"{result}_sd"] = values.std(ddof=1) if len(values) > 1 else math.nan
            row[f"{result}_seeds"] = len(values)  # an adapter fit on some seeds only: over those
        for cost in ("llm_calls", "llm_tokens", "llm_s"):
            row[f"{cost}_mean"] = done[cost].mean() if len(done) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def mean_sd(mean: float, sd: float) -> str:
    """"87.5 ± 1.2" (percent); "87.5" for one seed; "" when nothing was measured."""
    if math.isnan(mean):
        return ""
    return f"{100 * mean:.1f}" + (f" ± {100 * sd:.1f}" if not math.isnan(sd) else "")


def plot_sweep(summary: "pd.DataFrame", path: Path, title: str) -> Path | None:
    """Test accuracy against shots, one colour per dataset x backbone: the best template
    (solid, error bars = sd over seeds), the ensemble (dashed), the adapter (dotted)."""
    if summary.empty or summary["best_mean"].isna().all():
        return None
    from promptclimb.agent.runs.plots import new_figure, save_figure

    fig, ax = new_figure(figsize=(7, 4.5))
    styles = {"best": "-o", "ensemble": "--s", "adapter": ":^"}
    for i, ((dataset, backbone), group) in enumerate(summary.groupby(["dataset", "backbone"], sort=False)):
        group = group.sort_values("shots")
        for result, style in styles.items():
            if group[f"{result}_mean"].isna().all():
                continue
            ax.errorbar(group["shots"], 100 * group[f"{result}_mean"], yerr=100 * group[f"{result}_sd"].fillna(0),
                        fmt=style, color=f"C{i}", capsize=3, label=f"{dataset} / {backbone}: {result}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(summary["shots"].unique()), [str(s) for s in sorted(summary["shots"].unique())])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("test accuracy (%), mean ± sd over seeds")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
