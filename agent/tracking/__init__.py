"""MLflow tracking: a run folder mirrored into one MLflow run (`promptclimb mlflow-sync`
afterwards, `Tracker` live during a search), a sweep folder into a parent run with a
nested run per cell.

The run folder stays the source of truth: everything logged is read back from its files,
so any run folder, finished, unfinished or old, can be logged at any time. Logging it
again continues the same MLflow run (its id per tracking server is kept in RUN/mlflow.json)
and sends only what the server does not hold yet: an answer's metrics are logged once (and
once more, at its step, when they were logged before the answer was complete: a sync of a
run killed while the answer was scored, which a resume then completes: `Mirror.log_answers`). A
history redone (the server holds answers it no longer has: a sweep's cell run again from
nothing) gets a new MLflow run in place of the old one, which is deleted (`Mirror.redone`),
and a sweep's parent run keeps one nested run per cell.

What a search becomes in MLflow (experiment "promptclimb" unless told otherwise):
    params     config.json flattened: "search.iterations", "llm.model", ... (config.json
               never holds a key). MLflow params are write-once: a setting changed on
               resume (a raised budget) keeps its first value there; config.json, an
               artifact, has the current one.
    tags       dataset, backbone, shots, seed, llm; promptclimb.status, promptclimb.folder,
               promptclimb.prompt (the registered prompt's URI), promptclimb.result (what
               the run kept, as `runs` says it: "best template", "ensemble of 3", "prompt +
               residual-logits adapter"), promptclimb.names (a names search's: the best's
               renames, "Trouser -> jeans; Pullover -> sweater", or "none"; live, as names are
               kept); a sweep's cell also mlflow.parentRunId and promptclimb.cell (its folder's name)
    metrics    per LLM answer (template turn, names turn, names guard), step = its index
               (`call`), time = when it came: best_train_accuracy, best_val_accuracy (of
               the best so far, ranked as the search ranks), new_proposals and
               refused_proposals (templates or names), prompt_tokens, completion_tokens (0 for
               an answer from the cache, as summary.json's ledger counts); the initial pool's
               best_train/val_accuracy at step -1, where the curves start. A soft-prompt run
               (craft, cbbt): prompt_train_accuracy and prompt_val_accuracy per optimizer step.
               At the end: result_test_accuracy (the result's), baseline_test_accuracy ("a
               photo of a {}." with the start names), best_test_accuracy, and
               ensemble_/adapter_test_accuracy where the run kept it, else
               ensemble_/adapter_candidate_test_accuracy (`result_metrics`)
    artifacts  the run folder's files (config.json, history.jsonl, summary.json, ...)
    prompt     the winning template in MLflow's prompt registry as a new version of
               `promptclimb.<dataset>.<backbone>`, "{}" written "{{class_name}}"; its tags:
               the template as promptclimb writes it, its accuracies, the class names it
               goes with (a names climb's: the best's `names`, else summary.json's `names`
               section), the run's ids; the MLflow run is linked to the version as MLflow's
               link_prompt_version_to_run does it (the `mlflow.linkedPrompts` run tag)
    status     FINISHED (the run has its result), RUNNING (a search is writing it), KILLED
               (stopped part-way: Ctrl-C, SIGTERM, or a sync of a run not ended), FAILED (its
               search failed: an LLM that failed for good, live or as its history's last
               event, `failed`, says afterwards); a resume, or a sync, continues it
    times      the run's start (config.json's `created`) to its last event, whenever it is
               logged; a sweep's parent run spans its cells

Where the run folder's files go: the experiment's artifact location. An experiment this
module creates on a local sqlite store (`sqlite:///PATH/mlflow.db`, MLflow's default) keeps
them beside the database, in PATH/mlruns/<experiment>/, not in the ./mlruns of whichever
folder the command ran in; a tracking server decides for itself.

Tracking never fails a search: `Tracker` reports a problem in one warning line and stops
tracking that run; `promptclimb mlflow-sync RUN` logs it afterwards. A sync reads the whole
run folder before it creates anything in MLflow (a damaged file is one error, no MLflow run),
and ends an MLflow run it created as FAILED when logging stops midway (syncing again
continues that run).

The package: this module is the API (`sync_run`, `sync_sweep`, `Tracker`); mirror.py one folder
and its MLflow run (`Mirror`, `Synced`); logged.py what is logged, read from the run folder;
store.py MLflow itself (the client, tracking URIs and RUN/mlflow.json's links, TrackingError).
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable, Iterator

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.format import shell_command
from promptclimb.agent.core.runfiles import CONFIG, HISTORY
from promptclimb.agent.llm.secrets import without_secrets
from promptclimb.agent.runs.run import Run, load_run
from promptclimb.agent.runs.store import being_written, has_summary
from promptclimb.agent.search import LLM_EVENTS
from promptclimb.agent.sweep.grid import read_sweep
from promptclimb.agent.tracking.logged import (answer_metrics, flat_params, pool_point, prompt_tags, result_metrics,
                                               run_tags, soft_step_metrics)
from promptclimb.agent.tracking.mirror import CELL_TAG, PARENT_TAG, Mirror, Synced, _last_time, _tags
from promptclimb.agent.tracking.store import (FOLDER_TAG, _one_line, database_in_folder, is_folder_store, link_key,
                                              mlflow_errors)

EXPERIMENT = "promptclimb"


# -- the API --------------------------------------------------------------------------------
def sync_run(run_dir: str | Path, tracking_uri: str | None = None, experiment: str = EXPERIMENT,
             parent_run_id: str | None = None) -> Synced:
    """Log a run folder to MLflow, or bring its MLflow run up to date (TrackingError when
    MLflow cannot take it). An answer still being scored by a search that holds the run is
    left for a later sync."""
    if not (Path(run_dir) / CONFIG).exists():
        raise PromptclimbError(f"{run_dir} is not a run folder (no {CONFIG})")
    run = readable_run(run_dir)  # before anything is created in MLflow
    with mlflow_errors():
        mirror = Mirror.open(run_dir, tracking_uri, experiment, parent_run_id, start=_start_time(run))
        with failed_if_new(mirror):
            return mirror.sync(writing=being_written(mirror.folder), run=run)


def sync_sweep(sweep_dir: str | Path, tracking_uri: str | None = None, experiment: str = EXPERIMENT) -> Synced:
    """Log a sweep folder: a parent run (sweep.json's grid and options as params, the sweep's
    own files as artifacts) and, nested under it, each cell's run (`sync_run`). Its answer
    counts are the cells' in all; `cells` has each cell's."""
    sweep_dir = Path(sweep_dir)
    settings = read_sweep(sweep_dir)  # a damaged sweep.json is one line
    cells = [sweep_dir / name for name in settings.get("cells", []) if (sweep_dir / name / CONFIG).exists()]
    read = [readable_run(cell) for cell in cells]  # a damaged cell stops the sync before anything is created in MLflow
    # the parent spans its cells: a sweep synced after its cells ended started after them, and each
    # sync moved its end to the time of the sync
    start = min((_start_time(run) for run in read), default=None)
    end = max((_last_time(run) for run in read), default=time.time())
    with mlflow_errors():
        parent = Mirror.open(sweep_dir, tracking_uri, experiment, start=start)
    with mlflow_errors(), failed_if_new(parent):
        held = parent.client.get_run(parent.run_id)  # what the server holds: asked once
        parent.log_params({**flat_params({k: v for k, v in settings.items() if k != "cells"}),
                           "cells": str(len(settings.get("cells", [])))}, held.data.params)
        # where the sweep is, as a run's: a copy of the folder (its mlflow.json came along) is
        # then a sweep of its own (`_copied`), not the original's, whose cells it would replace
        parent.client.log_batch(parent.run_id, tags=_tags({FOLDER_TAG: str(sweep_dir.resolve())}))
        parent.log_files()
        nested = {cell.name: sync_run(cell, parent.uri, experiment, parent_run_id=parent.run_id) for cell in cells}
        drop_runs_of_redone_cells(parent, nested)
        finished = [c for c in cells if has_summary(c)]
        parent.set_status("FINISHED" if len(finished) == len(settings.get("cells", [])) else "KILLED", end)
    return Synced(parent.run_id, parent.experiment_id, parent.key, sum(c.new_answers for c in nested.values()), None,
                  held.info.artifact_uri, sum(c.completed_answers for c in nested.values()), tuple(nested.items()))


def drop_runs_of_redone_cells(parent: "Mirror", nested: dict[str, Synced]) -> None:
    """Each cell one nested run: a run nested under the sweep's for a cell that is not the run
    its folder links now is that of a history since redone (the cell's folder removed and the
    cell run again, which logged a new run), and is deleted. A nested run's cell is its
    promptclimb.cell tag: its name is the user's to change (renamed as another cell, a live
    run was deleted; renamed otherwise, a redone cell's old run stayed). A run nested before
    that tag was written has only its name to tell its cell."""
    experiments = sorted({parent.experiment_id, *(synced.experiment_id for synced in nested.values())})
    token = None
    while True:
        page = parent.client.search_runs(experiments, f"tags.`{PARENT_TAG}` = '{parent.run_id}'", page_token=token)
        for child in page:
            cell = nested.get(cell_name(child))
            # a run logged from another folder (a copy of the sweep, synced while this sweep's
            # run had no folder tag yet) is that folder's, not a redone cell's
            logged_from = child.data.tags.get(FOLDER_TAG)
            if logged_from and Path(logged_from) != (parent.folder / cell_name(child)).resolve() \
                    and Path(logged_from).is_dir():
                continue
            if cell is not None and child.info.run_id != cell.run_id:
                parent.client.delete_run(child.info.run_id)
        token = page.token
        if not token:
            return


def cell_name(child) -> str:
    """The cell a run nested under a sweep's run is (its promptclimb.cell tag, else its name)."""
    return child.data.tags.get(CELL_TAG) or child.info.run_name


def readable_run(folder: str | Path) -> Run:
    """The run folder read back, and what a sync logs computed from it once: a damaged file
    is one PromptclimbError here, before an MLflow run exists to be left half-logged."""
    run = load_run(folder)  # (it checks summary.json's best, ensemble, top and names)
    damage = history_damage(run)
    if damage:
        raise PromptclimbError(f"{run.path / HISTORY} is damaged ({damage})")
    try:
        flat_params(run.config)
        run_tags(run)
        answer_metrics(run)
        pool_point(run, writing=False)
        soft_step_metrics(run)
        result_metrics(run.final or {})
        prompt_tags(run, "")
    except (AttributeError, TypeError, ValueError, KeyError) as exc:  # a value of the wrong kind somewhere
        raise PromptclimbError(f"{folder} is damaged (it does not read as a run: {_one_line(exc)})") from None
    return run


def history_damage(run: Run) -> str | None:
    """What `search --resume` would refuse in the run's history (`read_history`), said as
    "line N: why" (with how many more), or None: a line that cannot be read, or an event out
    of its place (a line lost), anywhere but on the last line written, which a kill while it
    was written leaves cut short (resume drops it, and so does a sync: it logs the rest).
    `show` and the other readers skip such lines with a warning; a sync logs none of the run."""
    last = max([e["_line"] for e in run.events] + [s.line for s in run.skipped], default=0)
    problems = [(s.line, str(s)) for s in run.skipped if s.line != last]
    out_of_place = [e for e in run.events if e["_line"] != last and e.get("seq") != e["_line"] - 1]  # seq = line - 1
    problems += [(e["_line"], f"line {e['_line']}: event seq {e.get('seq')}, expected {e['_line'] - 1} "
                              "(a line is missing or out of place)") for e in out_of_place[:1]]
    if not problems:
        return None
    problems.sort()
    more = len(problems) - 1
    return problems[0][1] + (f"; and {more} more line{'s' if more > 1 else ''}" if more else "")


@contextmanager
def failed_if_new(mirror: "Mirror") -> Iterator[None]:
    """An MLflow run this sync created ends as FAILED when logging stops midway, instead of
    staying RUNNING forever; syncing the folder again continues it (RUN/mlflow.json). A run
    that was there before keeps the status it had."""
    try:
        yield
    except BaseException:
        if mirror.created:
            end_as_failed(mirror)
        raise


def end_as_failed(mirror: "Mirror") -> None:
    """The MLflow run ends FAILED, not RUNNING for ever (a later sync continues it); quietly:
    the error that stopped the logging is the one to report."""
    with suppress(Exception):
        mirror.client.set_terminated(mirror.run_id, "FAILED")


class Tracker:
    """A search's live MLflow run. `Tracker.attach(store, uri, echo)` once the run folder is
    open and sure to stay (a search attaches it after its evaluator loads); each LLM answer
    is logged when the next one comes (then it is complete); `finish()` after the search and
    its adapter logs the rest. Also a context manager (finish on exit).

    Never raises: the first problem is one warning line through `echo`, and the tracker
    then does nothing more (the run can be logged later with `promptclimb mlflow-sync`)."""

    def __init__(self, run_dir: Path, tracking_uri: str | None, echo: Callable[[str], None]):
        self.run_dir, self.tracking_uri, self.echo = run_dir, tracking_uri, echo
        self.mirror: Mirror | None = None
        self._lock = threading.Lock()  # parallel restarts append events from several threads

    @classmethod
    def attach(cls, store, tracking_uri: str | None = None, echo: Callable[[str], None] = print,
               experiment: str = EXPERIMENT, parent_run_id: str | None = None) -> "Tracker":
        """Open (or, for a resumed run, continue) the run's MLflow run, log what the folder
        holds already, and listen to the store (a `RunStore`) for what comes."""
        tracker = cls(Path(store.run_dir), tracking_uri, echo)

        def start():
            run = load_run(store.run_dir)
            tracker.mirror = Mirror.open(store.run_dir, tracking_uri, experiment, parent_run_id, start=_start_time(run))
            tracker.mirror.sync(writing=True, files=False, run=run)

        if tracker._guard(start):
            store.add_listener(tracker.on_event)
            mirror = tracker.mirror  # where it goes, said once (mlflow-sync says it; a search did not)
            echo(f"MLflow: {'run' if mirror.created else 'continuing run'} {mirror.run_id} at {mirror.key}")
        return tracker

    @property
    def run_id(self) -> str | None:
        return self.mirror.run_id if self.mirror else None

    def on_event(self, event: dict) -> None:
        """The store's listener: an event that follows an answer completes it; a names change
        kept is the best's names (NAMES_TAG); a soft-prompt run's step is a point of its curve."""
        if self.mirror is not None and event["event"] in (*LLM_EVENTS, "restart", "reset", "stop", "final",
                                                          "names_change", "step"):
            self._guard(lambda: self.mirror and self.mirror.follow(load_run(self.run_dir)))

    def finish(self, failed: bool = False) -> None:
        """Everything the folder holds now: the last answers, the results, the files, the
        winning prompt, and the status (FINISHED; for a search that did not end, FAILED where
        it `failed`, KILLED where it was stopped: Ctrl-C, SIGTERM)."""
        self._guard(lambda: self.mirror and self.mirror.sync(writing=False, failed=failed))
        self.mirror = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.finish()

    def _guard(self, step: Callable[[], object]) -> bool:
        with self._lock:
            try:
                with mlflow_errors():
                    step()
                return True
            except Exception as exc:  # noqa: BLE001 - tracking never fails a search
                uri = self.tracking_uri  # again, or the database MLflow takes instead of a folder it refuses
                if uri:
                    uri = database_in_folder(uri) if is_folder_store(uri) else link_key(uri)
                elif (from_env := os.environ.get("MLFLOW_TRACKING_URI")) and is_folder_store(from_env):
                    uri = database_in_folder(from_env)  # the sync would read the same folder, refused again
                where = ["--tracking-uri", uri] if uri else []
                secret = self.tracking_uri and without_secrets(self.tracking_uri) != self.tracking_uri
                self.echo(f"warning: MLflow tracking stopped ({_one_line(exc)}); the search goes on. "
                          f"Log the run afterwards with: {shell_command('mlflow-sync', self.run_dir, *where)}"
                          + (" (the URI had a password or key, left out of that command: give the whole URI to it)"
                             if secret else ""))
                if self.mirror is not None:  # a run this search tracks, new or continued
                    end_as_failed(self.mirror)
                self.mirror = None
                return False


# -- small helpers --------------------------------------------------------------------------
def _start_time(run: Run) -> float:
    """When the run began (config.json's `created`, or its first event where that is earlier:
    `created` counts whole seconds): its MLflow run's start."""
    first = min((float(e["time"]) for e in run.events if isinstance(e.get("time"), (int, float))), default=None)
    return min(run.created.timestamp(), first) if first is not None else run.created.timestamp()
