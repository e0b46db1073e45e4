"""`promptclimb sweep` (a grid of searches on Ray) and `promptclimb sweep-report` (its
results, mean ± sd over seeds). The work is in agent/sweep/."""

from __future__ import annotations

import json

import rich_click as click
from click.core import ParameterSource

from promptclimb.agent.cli.errors import user_errors
from promptclimb.agent.cli.params import TableText
from promptclimb.agent.cli.search import CONTEXT, help_panels, table_options
from promptclimb.agent.core.errors import EXIT_CELLS_FAILED, PromptclimbError
from promptclimb.agent.options import BY_NAME

# search options that the grid and the cell's folder set instead
NOT_PER_SWEEP = {"dataset", "shots", "seed", "backbone", "run_name", "resume", "as_json"}
SWEEP_OWN = ["--dataset", "--backbone", "--shots", "--seeds", "--grid", "--address", "--num-cpus", "--cpus-per-run",
             "--gpus-per-run"]
FORMATS = ("table", "markdown", "csv", "json")
# what a sweep's options do where the search's help would say otherwise
SWEEP_HELPS = {
    "mlflow": "Log the sweep to MLflow: each cell's search its own run (a metric step per LLM answer, the winning "
              "prompt registered), and at the end one parent run for the sweep with the cells' runs nested under "
              "it; to TRACKING_URI, else $MLFLOW_TRACKING_URI, else MLflow's default sqlite:///mlflow.db (in the "
              "current folder; artifacts beside it, in mlruns/). Needs the mlflow extra; tracking never fails a sweep.",
    "no_cache": "Do not read or write the LLM response cache (--cache: do, undoing a --grid file's no-cache = true).",
    "data_root": "Where the dataset lives (every cell's).",
}


click.rich_click.OPTION_GROUPS["promptclimb sweep"] = help_panels("sweep", SWEEP_OWN, NOT_PER_SWEEP)
click.rich_click.OPTION_GROUPS["sweep"] = click.rich_click.OPTION_GROUPS["promptclimb sweep"]


@click.command("sweep", context_settings=CONTEXT)
@click.argument("name")
@click.option("--dataset", "datasets", multiple=True, help="A dataset of the grid (repeatable).")
@click.option("--backbone", "backbones", multiple=True,
              help="A backbone of the grid (repeatable) [default: the search's default for each dataset].")
@click.option("--shots", "shots", type=click.IntRange(min=1), multiple=True,
              help="A shot count of the grid (repeatable) [default: 1].")
@click.option("--seeds", multiple=True, metavar="1-3|1,4,7", callback=lambda ctx, param, values: seeds_given(values),
              help="Seeds of the grid (repeatable) [default: 0].")
@click.option("--grid", "grid_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A TOML file with [grid] (dataset, backbone, shots, seeds) and [search] (any search option); "
                   "options given here override it.")
@click.option("--address", default=None, metavar="auto|HOST:PORT|ray://HOST:PORT",
              help="An existing Ray cluster [default: a local Ray started in this process].")
@click.option("--num-cpus", type=click.IntRange(min=1), default=None,
              help="CPUs of the local Ray [default: all of this machine's]; not with --address.")
@click.option("--cpus-per-run", type=click.FloatRange(min=0, min_open=True), default=1.0,
              help="Ray CPUs per cell (fractions allowed).")
@click.option("--gpus-per-run", type=click.FloatRange(min=0), default=0.0,
              help="Ray GPUs per cell (fractions allowed, e.g. 0.25).")
@table_options(skip=NOT_PER_SWEEP, helps=SWEEP_HELPS)
@click.pass_context
@user_errors
def sweep_cmd(ctx, name, datasets, backbones, shots, seeds, grid_file, address, num_cpus, cpus_per_run, gpus_per_run,
              **search):
    """Run a grid of searches (datasets x backbones x shots x seeds) as Ray tasks, one run
    folder per cell in RUNS_DIR/NAME. Every `promptclimb search` option applies to every cell.

    Rerun the same command (or just `promptclimb sweep NAME`) to continue: finished cells are
    skipped, killed ones resume from their history, failed ones are retried. Exit status: 0
    when every cell finished, 3 when some failed, 130 (Ctrl-C) or 143 (SIGTERM) when stopped,
    141 when what read its output stopped reading.

    \b
    Examples:
      promptclimb sweep grid1 --dataset eurosat --dataset fashion-mnist --shots 1 --shots 4 --seeds 1-3
      promptclimb sweep grid2 --grid grid.toml --address auto --gpus-per-run 0.25 --base-url http://llm:8000/v1
      promptclimb sweep-report grid1
    """
    from promptclimb.agent.sweep.driver import run_sweep
    from promptclimb.agent.sweep.grid import check_grid, read_grid_file

    grid, options = usage(read_grid_file, grid_file) if grid_file else ({}, {})
    flags = {"dataset": datasets, "backbone": backbones, "shots": shots, "seeds": seeds}
    grid.update({axis: list(values) for axis, values in flags.items() if values})
    grid = with_stored_axes(grid, search["runs_dir"], name)
    if grid:  # none: a rerun of the sweep as stored
        usage(check_grid, grid)
    given = {p.name for p in ctx.command.params if ctx.get_parameter_source(p.name) != ParameterSource.DEFAULT}
    runs_dir = search.pop("runs_dir")
    options.update({BY_NAME[name].keyword: list(value) if BY_NAME[name].multiple else value
                    for name, value in search.items() if name in given})
    states = run_sweep(name, runs_dir, grid or None, options, address=address, num_cpus=num_cpus,
                       cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                       echo=lambda message: click.echo(message, err=True))
    if "failed" in states.values():  # the sweep ran to its end; the others are kept
        ctx.exit(EXIT_CELLS_FAILED)


def usage(check, *args):
    """`check(*args)`, its refusal a usage error (exit status 2), as search's options and
    --config file are: a grid, its file or its seeds written wrong (they exited with 1)."""
    try:
        return check(*args)
    except PromptclimbError as exc:
        raise click.UsageError(str(exc)) from None


def seeds_given(values: tuple) -> tuple:
    """--seeds as given, once they read as seeds (a usage error otherwise)."""
    from promptclimb.agent.sweep.grid import parse_seeds

    if values:
        usage(parse_seeds, values)
    return values


def with_stored_axes(grid: dict, runs_dir: str, name: str) -> dict:
    """A rerun's grid: the axes given (flags, --grid FILE), the sweep's stored ones for the
    axes not given, as options not given keep their stored values. `sweep NAME --shots 4`
    on a sweep of one dataset is then refused for what differs (grid.shots), not for a
    missing --dataset. A new sweep's grid is as given; none given takes the stored grid."""
    from pathlib import Path

    from promptclimb.agent.sweep.grid import SWEEP_FILE, read_sweep

    sweep_dir = Path(runs_dir).expanduser().resolve() / name
    if not grid or not (sweep_dir / SWEEP_FILE).is_file():
        return grid
    stored = read_sweep(sweep_dir)["grid"]
    return {**{axis: stored[axis] for axis in stored if axis not in grid}, **grid}


@click.command("sweep-report", context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("sweep")
@click.option("--runs-dir", type=TableText(BY_NAME["runs_dir"]), default="runs", help="Where the sweep folder is.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", help="How to print the results.")
@user_errors
def sweep_report_cmd(sweep, runs_dir, fmt):
    """Results of a sweep: per dataset x backbone x shots, the test accuracy of what each run
    keeps (its result), of the best template, the ensemble and the adapter (when fit, kept or
    not), mean ± sd over the finished seeds, and the LLM cost per cell; failed cells with
    their error. Writes report.png into the sweep folder.
    """
    from pathlib import Path

    from tabulate import tabulate

    from promptclimb.agent.sweep.reading import PLOT_FILE, RESULTS, mean_sd, plot_sweep, sweep_cells, sweep_summary

    from promptclimb.agent.runs.reading import find_sweep

    # a path or a name (a folder that is not a sweep's: sweep_cells says so)
    sweep_dir = find_sweep(sweep, runs_dir) or next(
        (folder for folder in (Path(runs_dir) / sweep, Path(sweep)) if folder.is_dir()), None)
    if sweep_dir is None:
        raise PromptclimbError(f"{Path(runs_dir) / sweep} does not exist: no sweep {sweep} under --runs-dir "
                               f"{runs_dir} (or give a sweep folder's path)")
    cells = sweep_cells(sweep_dir)
    summary = sweep_summary(cells)
    try:
        plot = plot_sweep(summary, sweep_dir / PLOT_FILE, f"sweep {sweep_dir.name}: test accuracy")
    except OSError as exc:  # a sweep folder it cannot write: the report is still printed
        click.echo(f"warning: {sweep_dir / PLOT_FILE} not written ({exc.strerror or exc})", err=True)
        plot = None
    failed = cells[cells["state"] == "failed"]
    if fmt == "json":
        click.echo(json.dumps({"groups": json.loads(summary.to_json(orient="records")),
                               "cells": json.loads(cells.to_json(orient="records")),
                               "plot": str(plot) if plot else None}, indent=2))
        return
    if fmt == "csv":
        click.echo(summary.to_csv(index=False, float_format="%.6g"), nl=False)
        return
    def over(r, result: str) -> str:  # mean ± sd, and over how many seeds where not all
        said, seeds = mean_sd(getattr(r, f"{result}_mean"), getattr(r, f"{result}_sd")), getattr(r, f"{result}_seeds")
        return f"{said} ({seeds} of {r.seeds})" if said and seeds < r.seeds else said

    rows = [{"dataset": r.dataset, "backbone": r.backbone, "shots": r.shots, "seeds done": r.seeds,
             **{f"{result} (test %)": over(r, result) for result in RESULTS},
             "LLM requests": _number(r.llm_calls_mean), "LLM tokens": _number(r.llm_tokens_mean),
             "LLM s": _number(r.llm_s_mean), "failed": r.failed or ""}
            for r in summary.itertuples()]
    click.echo(tabulate(rows, headers="keys", tablefmt="pipe" if fmt == "markdown" else "simple",
                        disable_numparse=True))
    # `runs` counts a run's answers, cached or not: said, where the two could be read as one figure
    click.echo("\nresult: what each run keeps (prompt + adapter where it beat the prompt alone on val, else the "
               "ensemble where chosen, else the best template); ensemble and adapter: as measured, kept or not")
    click.echo("LLM requests, tokens and s: a cell's requests to the LLM (answers from the cache not counted), "
               "mean over its seeds")
    unfinished = cells[~cells["state"].isin(["finished", "failed"])]
    if len(unfinished):
        click.echo(f"\n{len(unfinished)} cell(s) not finished yet: {', '.join(unfinished['cell'])}")
        for row in unfinished[unfinished["error"] != ""].itertuples():  # a damaged summary.json
            click.echo(f"  {row.cell}: {row.error}")
    if len(failed):
        click.echo(f"\n{len(failed)} failed cell(s):")
        for row in failed.itertuples():
            click.echo(f"  {row.cell}: {(row.error.splitlines() or ['(error.txt is empty)'])[0]}")
    click.echo("\nLLM cost: mean per finished cell. " + (f"Plot: {plot}" if plot else "No finished cell to plot yet."))


def _number(value: float) -> str:
    return "" if value != value else f"{value:,.0f}" if abs(value) >= 10 else f"{value:.1f}"
