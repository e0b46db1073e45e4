"""`promptclimb mlflow-sync RUN...`: log run folders (finished, unfinished, old) and sweep
folders to MLflow afterwards; a thin shell over agent/tracking/. Syncing a folder again
continues its MLflow run."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from promptclimb.agent.cli.errors import user_errors
from promptclimb.agent.cli.params import TableText
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.options import BY_KEYWORD
from promptclimb.agent.runs.reading import find_run, find_sweep

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


def find_folder(name: str, runs_dir: str) -> tuple[Path, bool]:
    """(folder, is a sweep): a sweep folder (path, or name under --runs-dir), else a run as
    `promptclimb show` finds it (path, id or unique prefix)."""
    sweep = find_sweep(name, runs_dir)
    return (sweep, True) if sweep is not None else (find_run(name, runs_dir), False)


@click.command("mlflow-sync", context_settings=CONTEXT)
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="The MLflow tracking server (http://...) or store (default: MLflow's, sqlite:///mlflow.db in "
                   "the current folder; a sqlite store keeps the artifacts beside it, in mlruns/).")
@click.option("--experiment", default="promptclimb", help="The MLflow experiment of new runs.")
@click.option("--runs-dir", type=TableText(BY_KEYWORD["runs_dir"]), default="runs", help="Where run folders are.")
@user_errors
def mlflow_sync_cmd(runs, tracking_uri, experiment, runs_dir):
    """Log runs (ids, prefixes or folders) and sweep folders to MLflow: settings as params, a
    metric curve per LLM answer, test accuracies, the run's files, the winning prompt in the
    prompt registry. A folder logged before continues its MLflow run (RUN/mlflow.json).

    \b
    Examples:
      promptclimb mlflow-sync 20250101-120000-eurosat-4shot --tracking-uri http://127.0.0.1:5000
      MLFLOW_TRACKING_URI=http://127.0.0.1:5000 promptclimb mlflow-sync runs/my-sweep
    """
    from promptclimb.agent.tracking import sync_run, sync_sweep
    from promptclimb.agent.tracking.store import mlflow_client

    folders = [find_folder(name, runs_dir) for name in runs]  # a typo stops us before anything is sent
    _, uri = mlflow_client(tracking_uri)  # an unreachable server: one line, once
    failed = 0
    for folder, is_sweep in folders:
        try:
            synced = (sync_sweep if is_sweep else sync_run)(folder, uri, experiment)
        except PromptclimbError as exc:  # the other folders are still logged
            click.echo(f"Error: {folder.name}: {exc}", err=True)
            failed += 1
            continue
        n = len(synced.cells)
        what = f"sweep, {n} cell{'' if n == 1 else 's'} nested; in all {answers_said(synced)}" if is_sweep \
            else answers_said(synced)
        prompt = f"; prompt {synced.prompt}" if synced.prompt else ""
        click.echo(f"{folder.name}: MLflow run {synced.run_id} ({what}{prompt}){_link(synced)}")
        for cell, cell_synced in synced.cells:  # what each cell's run got, as a run's sync says it
            click.echo(f"  cell {cell}: {answers_said(cell_synced)}")
    if failed:
        sys.exit(1)


def answers_said(synced) -> str:
    """How many answers this sync logged: new ones, and those logged before a resume completed
    them, again with their completed values (else the count hides that MLflow's curves changed)."""
    n, again = synced.new_answers, synced.completed_answers
    said = f"{n} answer{'' if n == 1 else 's'} logged now"
    if again:
        said += f", {again} logged again with {'its' if again == 1 else 'their'} completed values"
    return said


def _link(synced) -> str:
    """Where the MLflow UI shows the run (a tracking server), else where its files went (a
    local store: they are not inside the database)."""
    if not synced.tracking_uri.startswith(("http://", "https://")):
        return f"\n  artifacts: {synced.artifact_uri}" if synced.artifact_uri else ""
    return f"\n  {synced.tracking_uri}/#/experiments/{synced.experiment_id}/runs/{synced.run_id}"
