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
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Container, Iterator

import numpy as np
import pandas as pd

from promptclimb.agent.core.classnames import renames
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.files import write_json_atomic
from promptclimb.agent.core.format import shell_command
from promptclimb.agent.core.runfiles import CONFIG, HISTORY
from promptclimb.agent.llm.client import scrub_urls, without_secrets
from promptclimb.agent.runs.reading import Run, load_run, result_said, run_classnames
from promptclimb.agent.runs.store import being_written, has_summary, tokens_spent
from promptclimb.agent.search import LLM_EVENTS
from promptclimb.agent.softsearch import is_soft_prompt_run, steps_table
from promptclimb.agent.sweep.driver import read_sweep

EXPERIMENT = "promptclimb"
FOLDER_TAG = "promptclimb.folder"  # where the run folder was when it was last logged
MLFLOW_FILE = "mlflow.json"  # in a run (or sweep) folder: {"v": 1, "runs": {uri: {experiment_id, run_id}}}
STEP_KEY = "new_proposals"  # logged for every answer: its history says which answers the server has, and when
ANSWER_KEYS = ("best_train_accuracy", "best_val_accuracy", STEP_KEY, "refused_proposals", "prompt_tokens",
               "completion_tokens")  # an answer's metrics (`answer_metrics`)
# an answer's own: read from its one history line, so the events after it (which complete an
# answer logged while it was scored) never change them, and a sync never asks for their history
FIXED_KEYS = ("prompt_tokens", "completion_tokens")
REFUSED = ("reject", "name_reject")  # events of an answer's proposals that were not scored
RESULTS = ("best", "ensemble", "adapter", "baseline")  # summary.json sections whose test accuracy is logged
# the one the run kept as its result, whatever it is (`result_said`): one metric to compare runs by
RESULT_KEY, RESULT_TAG, NAMES_TAG = "result_test_accuracy", "promptclimb.result", "promptclimb.names"
POOL_STEP = -1  # the best of the initial pool, before the first answer (step 0): where each curve starts
# a soft-prompt run's steps: its current prompt's accuracy, which may fall (not a best so far)
SOFT_KEYS = {"prompt_train_accuracy": "train", "prompt_val_accuracy": "val"}
PARENT_TAG = "mlflow.parentRunId"
CELL_TAG = "promptclimb.cell"  # a sweep's nested run: its cell (folder name), which a renamed run keeps
LINKED_PROMPTS_TAG = "mlflow.linkedPrompts"  # what MLflow's link_prompt_version_to_run sets
PARAM_LIMIT, TAG_LIMIT = 6000, 8000  # MLflow's longest param and tag values
ANSWERS_PER_BATCH = 100  # 6 metrics each: under MLflow's 1000 metrics per request
# While we talk to MLflow, unless the user set them: its HTTP client retries 7 times with
# doubling waits (minutes against a server that is gone; a search does not wait that long),
# and it prints run links to stdout (where `search --json` prints its summary).
MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


class TrackingError(PromptclimbError):
    """MLflow is missing, unreachable, or refused what was sent (one line)."""


@dataclass(frozen=True)
class Synced:
    """What one sync did: the MLflow run, the answers newly logged (and those logged again with
    the values a resume completed), the registered prompt."""

    run_id: str
    experiment_id: str
    tracking_uri: str  # without any user:password@
    new_answers: int
    prompt: str | None
    artifact_uri: str | None = None  # where the run folder's files went
    completed_answers: int = 0  # logged before they were complete, again now with their values
    cells: tuple[tuple[str, "Synced"], ...] = ()  # a sweep's: each cell's sync, by folder name (the counts: in all)


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


# -- one folder and its MLflow run ----------------------------------------------------------
class Mirror:
    """A run (or sweep) folder and the MLflow run it is logged to."""

    def __init__(self, client, uri: str, folder: Path, experiment_id: str, run_id: str, created: bool = False,
                 start: float | None = None):
        self.client, self.uri, self.folder = client, uri, folder
        self.experiment_id, self.run_id = experiment_id, run_id
        self.created = created  # by this Mirror.open (not continued from RUN/mlflow.json)
        self.start = start  # when the folder's run began (a new MLflow run's start), None: now
        self.key = link_key(uri)
        # the answers the server has, step -> their time in ms, asked once (then this mirror is
        # the only writer of its answers); and those found to be the history's as it is now
        self.logged: dict[int, int] | None = None
        self.checked: set[int] = set()
        # answers logged that may not have been complete then (all the server had when asked,
        # until each is seen complete): step -> (the time and the values the server shows last)
        self.unsure: dict[int, tuple[int, dict[str, float]]] = {}
        # the pool's best as the server shows it (time, values; `ask_server`), and whether it
        # is whole (an answer follows it); a soft-prompt run's steps the server has; the names tag sent
        self.pool_shown: tuple[int, dict[str, float]] | None = None
        self.pool_whole = False
        self.soft_logged: set[int] | None = None
        self.names_said: str | None = None

    @classmethod
    def open(cls, folder: str | Path, tracking_uri: str | None, experiment: str,
             parent_run_id: str | None = None, start: float | None = None) -> "Mirror":
        """The MLflow run this folder was logged to on this server (RUN/mlflow.json), or a new
        one, started at `start` (when the folder's run began; None: now)."""
        client, uri = mlflow_client(tracking_uri)
        folder = Path(folder)
        known = _read_links(folder)
        # a link written before sqlite paths were keyed absolute is under the URI as typed
        link = known.get(link_key(uri)) or known.get(without_secrets(uri).rstrip("/")) or {}
        held = _live_run(client, link["run_id"]) if link.get("run_id") else None
        if held is not None and not _copied(held, folder):
            mirror = cls(client, uri, folder, link["experiment_id"], link["run_id"], start=start)
        else:
            experiment_id = _experiment_id(client, experiment, artifacts_beside_database(uri, experiment))
            mirror = cls(client, uri, folder, experiment_id, "", created=True, start=start)
            mirror.start_run()
        if parent_run_id:  # a sweep's cell
            client.log_batch(mirror.run_id, tags=_tags({PARENT_TAG: parent_run_id, CELL_TAG: folder.name}))
        return mirror

    def start_run(self, tags: dict | None = None, replacing: str | None = None) -> None:
        """A new MLflow run for the folder, linked in RUN/mlflow.json under this server's key;
        the links to other servers are kept, any to the run it replaces (`replacing`: one
        keyed as typed before sqlite paths were keyed absolute) dropped."""
        # started when the folder's run began: a sync afterwards started it at the sync, after its end
        start_time = int(self.start * 1000) if self.start else None
        self.run_id = self.client.create_run(self.experiment_id, run_name=self.folder.name, tags=tags,
                                             start_time=start_time).info.run_id
        self.created, self.logged, self.checked, self.unsure = True, {}, set(), {}
        self.pool_shown, self.pool_whole, self.soft_logged, self.names_said = None, False, set(), None
        kept = {key: link for key, link in _read_links(self.folder).items()
                if not (replacing and isinstance(link, dict) and link.get("run_id") == replacing)}
        write_json_atomic(self.folder / MLFLOW_FILE, {"v": 1, "runs": {**kept, self.key: {
            "experiment_id": self.experiment_id, "run_id": self.run_id}}})

    def replace(self) -> None:
        """The folder's history was redone (`redone`): a new MLflow run in place of its old
        one, nested where that one was (as the same cell), so that MLflow shows the history as
        it is now. The old run is deleted once the new one is linked (MLflow keeps it
        restorable until `mlflow gc`)."""
        old = self.run_id
        tags = self.client.get_run(old).data.tags
        self.start_run({k: tags[k] for k in (PARENT_TAG, CELL_TAG) if k in tags} or None, replacing=old)
        self.client.delete_run(old)

    def redone(self, run: Run) -> bool:
        """Whether the server holds answers the history no longer has: an answer gone from
        it, or another answer at its step (another time). So it is when the history was redone
        (a sweep's cell whose history was removed and run again; a last line a resume dropped
        and asked again): the history's answers, skipped at the steps logged, would have
        left the old ones there (and new steps beside them). An answer still being scored
        when it was logged (a sync of a killed run) is the same answer, with the same time,
        when a resume completes it: its MLflow run goes on (`log_answers` logs its values
        again, later)."""
        if self.logged is None:
            self.ask_server()
        if self.checked.issuperset(self.logged):
            return False
        answers = {int(e["call"]): e for e in run.events if e["event"] in LLM_EVENTS and e.get("call") is not None}
        for step, stamp in self.logged.items():
            answer = answers.get(step)
            # an answer without its time (the store always writes one) is taken as the one logged
            if answer is None or (answer.get("time") and _answer_time(answer) != stamp):
                return True
        self.checked.update(self.logged)
        return False

    def ask_server(self) -> None:
        """The answers the server has: `logged`, step -> the time of the first values at the
        step (the answer's own; later ones are its values completed, `log_answers`), and
        `unsure`, each step's time and values as MLflow shows them: its latest ones. One
        request per key an answer's completion can change (MLflow reads one metric's history
        at a time); FIXED_KEYS never change, so their histories are not asked for."""
        self.logged, self.unsure = {}, {}
        for key in (k for k in ANSWER_KEYS if k not in FIXED_KEYS):
            # oldest first, as MLflow orders them (by time, then value): the last one it shows
            for metric in sorted(self.client.get_metric_history(self.run_id, key), key=lambda m: (m.timestamp, m.value)):
                if key == STEP_KEY:
                    self.logged.setdefault(metric.step, metric.timestamp)
                stamp, values = self.unsure.get(metric.step, (metric.timestamp, {}))
                self.unsure[metric.step] = max(stamp, metric.timestamp), {**values, key: metric.value}
        self.pool_shown = self.unsure.pop(POOL_STEP, None)  # the pool's best, not an answer

    def follow(self, run: Run) -> None:
        """A live search's new events: the answers now complete, or (`redone`) the whole run
        in a new MLflow run."""
        if self.redone(run):
            self.replace()
            self.sync(writing=True, files=False, run=run)
        else:
            self.log_answers(run, hold_last=True)
            self.log_pool(run, writing=True)
            self.log_soft_steps(run)
            self.log_names(run)

    def sync(self, writing: bool, files: bool = True, run: Run | None = None, failed: bool = False) -> Synced:
        """Settings, answers, results, files, prompt and status, from the folder as it is now
        (or as `run` read it), in a new MLflow run when the history was redone. `writing`: a
        search is still writing it (its last answer may not be complete yet); `failed`: the
        search that wrote it ended in an error (FAILED, not KILLED, where it did not finish)."""
        run = load_run(self.folder) if run is None else run
        failed = failed or run.status == "failed"  # as its history says it: a sync afterwards, a sweep's cell
        if self.redone(run):
            self.replace()
        # What the server holds, asked once: what this sync logs before each use leaves the
        # part it reads unchanged (its params, result metrics and prompt tags; its artifact URI)
        held = self.client.get_run(self.run_id)
        self.log_params(flat_params({k: v for k, v in run.config.items() if k != "v"}), held.data.params)
        tags = run_tags(run)
        if not writing and tags["promptclimb.status"] == "running":  # the search's own last sync, its lock
            # still held: stopped, or failed, as `runs` says it next
            tags["promptclimb.status"] = "failed" if failed else "unfinished"
        self.client.log_batch(self.run_id, tags=_tags(tags))
        self.names_said = tags.get(NAMES_TAG)
        new, completed = self.log_answers(run, hold_last=writing)
        self.log_pool(run, writing)
        self.log_soft_steps(run)
        self.log_results(run, held.data.metrics)
        if files:
            refresh_report(run)
            self.log_files()
        prompt = self.register_prompt(run, held.data.tags)
        # ended as `runs` says it: a final event with the adapter it asked for still missing is no end
        ended = run.status in ("done", "stopped early")
        self.set_status("FINISHED" if ended and not failed else "RUNNING" if writing else
                        "FAILED" if failed else "KILLED", _last_time(run))
        return Synced(self.run_id, self.experiment_id, self.key, new, prompt, held.info.artifact_uri, completed)

    def log_params(self, params: dict[str, str], have: dict[str, str]) -> None:
        """The params the server does not `have` (MLflow's are write-once)."""
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items() if k not in have])

    def log_answers(self, run: Run, hold_last: bool) -> tuple[int, int]:
        """The metrics of each answer the server does not have yet. And those of an answer
        logged before it was complete (not `hold_last`: a sync of a run killed while the
        answer was scored) where they differ now (a resume completed it): again at its step,
        at the time its values were complete, so that they are the ones MLflow shows for the
        step (its latest) and not the partial ones. Returns how many of each."""
        from mlflow.entities import Metric

        if self.logged is None:
            self.ask_server()
        rows = answer_metrics(run, hold_last, logged=self.logged.keys() - self.unsure.keys())
        still_open = run.open_turn() if rows and not hold_last else set()  # logged now, maybe not complete yet
        completed_at = _completion_times(run) if any(step in self.unsure for step, _, _ in rows) else {}
        new = sum(step not in self.logged for step, _, _ in rows)
        sends, completed = [], 0  # (step, time, the metrics to send); answers logged again
        for step, stamp, values in rows:
            changed = values
            if step in self.unsure:  # logged already, perhaps before it was complete
                stamp, values, changed = self._again(step, values, completed_at[step])
                completed += bool(changed)
            if changed:
                sends.append((step, stamp, changed))
            if step in still_open:
                self.unsure[step] = stamp, values
        for start in range(0, len(sends), ANSWERS_PER_BATCH):
            batch = sends[start:start + ANSWERS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=[Metric(key, value, stamp, step) for step, stamp, values in batch
                                                        for key, value in values.items()])
            for step, stamp, _ in batch:
                self.logged.setdefault(step, stamp)
                self.checked.add(step)
        return new, completed

    def _again(self, step: int, values: dict[str, float], completed_at: int) -> tuple[int, dict, dict]:
        """An answer the server has (`unsure`), as the history has it now: the time its values
        are shown at (later, when values changed: MLflow shows a step's latest), all its
        values, and those that changed (never FIXED_KEYS: `ask_server` does not read them)."""
        last, shown = self.unsure.pop(step)
        changed = {k: v for k, v in values.items() if k not in FIXED_KEYS and shown.get(k) != v}
        return (max(completed_at, last + 1) if changed else last), {**shown, **values}, changed

    def log_results(self, run: Run, have: dict[str, float]) -> None:
        """The test accuracies of the end (`result_metrics`), each again only when it differs
        from what the server `have`s (`promptclimb adapt` may fit another adapter later)."""
        from mlflow.entities import Metric

        step, stamp = sum(e["event"] in LLM_EVENTS for e in run.events), int(_last_time(run) * 1000)
        # A value that replaces one the server has (another adapter fitted since) is logged at
        # the same step: MLflow's latest is then the one with the later time, and at the run's
        # own last time it tied, and the larger value (the old adapter's, once) showed.
        metrics = [Metric(key, value, int(time.time() * 1000) if key in have else stamp, step)
                   for key, value in result_metrics(run.final or {}).items() if have.get(key) != value]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_pool(self, run: Run, writing: bool) -> None:
        """The initial pool's best at POOL_STEP, where the curves start (`pool_point`); again,
        later, where a resume scored more of a pool that a sync had logged part of (MLflow
        shows a step's latest)."""
        from mlflow.entities import Metric

        if self.pool_whole:  # an answer followed it: it no longer changes
            return
        if self.logged is None:
            self.ask_server()
        point = pool_point(run, writing)
        if point is None:
            return
        stamp, values, self.pool_whole = point
        if self.pool_shown is not None:
            if self.pool_shown[1] == values:
                return
            stamp = max(stamp, self.pool_shown[0] + 1)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, POOL_STEP) for k, v in values.items()])
        self.pool_shown = stamp, values

    def log_soft_steps(self, run: Run) -> None:
        """A soft-prompt run's steps the server does not have (`soft_step_metrics`)."""
        from mlflow.entities import Metric

        if not is_soft_prompt_run(run.config):
            return
        if self.soft_logged is None:  # asked once: then this mirror is their only writer
            self.soft_logged = {m.step for m in self.client.get_metric_history(self.run_id, next(iter(SOFT_KEYS)))}
        sends = [row for row in soft_step_metrics(run) if row[0] not in self.soft_logged]
        for start in range(0, len(sends), ANSWERS_PER_BATCH):
            batch = sends[start:start + ANSWERS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=[Metric(key, value, stamp, step) for step, stamp, values in batch
                                                        for key, value in values.items()])
            self.soft_logged.update(step for step, _, _ in batch)

    def log_names(self, run: Run) -> None:
        """NAMES_TAG where the best's names changed since it was sent (a live search kept a names change)."""
        said = renames_said(run)
        if said is not None and said != self.names_said:
            self.client.log_batch(self.run_id, tags=_tags({NAMES_TAG: said}))
            self.names_said = said

    def log_files(self) -> None:
        """The folder's files as artifacts (not its lock, temp files or mlflow.json)."""
        for path in sorted(self.folder.iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.name != MLFLOW_FILE:
                self.client.log_artifact(self.run_id, str(path))

    def register_prompt(self, run: Run, tags: dict[str, str]) -> str | None:
        """The winning template as a new version in the prompt registry, once per run (`tags`:
        the MLflow run's, which say what it registered); returns its URI (None while the run
        has no result, and for a soft prompt, which has no text to register)."""
        summary = run.summary
        if not summary or not (summary.get("best") or {}).get("template"):
            return None
        if is_soft_prompt_run(run.config):  # learned vectors, '<soft: a photo of a> {class}.': no text to use
            return None
        best = summary["best"]
        template = best["template"].replace("{}", "{{class_name}}")
        registered = tags.get("promptclimb.prompt")
        if registered and _registered_template(self.client, registered) == template:
            return registered
        version = self.client.register_prompt(
            prompt_name(run), template, commit_message=f"promptclimb run {run.id}",
            tags=_strings(prompt_tags(run, self.run_id)))
        uri = f"prompts:/{version.name}/{version.version}"
        linked = json.loads(tags.get(LINKED_PROMPTS_TAG) or "[]")
        linked.append({"name": version.name, "version": str(version.version)})
        self.client.log_batch(self.run_id, tags=_tags({"promptclimb.prompt": uri,
                                                       LINKED_PROMPTS_TAG: json.dumps(linked)}))
        return uri

    def set_status(self, status: str, end: float) -> None:
        if status == "RUNNING":
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.client.set_terminated(self.run_id, status, end_time=int(end * 1000))


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


def answer_metrics(run: Run, hold_last: bool = False, logged: Container[int] = ()) -> list[tuple[int, int, dict[str, float]]]:
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
    if ranked.empty:  # (a non-empty one has `line`: agent/runs/reading.py `Run.scores`)
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


# -- MLflow ---------------------------------------------------------------------------------
def mlflow_client(tracking_uri: str | None):
    """(MlflowClient, the tracking URI it uses): `tracking_uri`, else MLFLOW_TRACKING_URI, else
    MLflow's default. A server that does not answer is a TrackingError, at once."""
    try:
        import mlflow
    except ImportError:
        raise TrackingError("MLflow is not installed: pip install 'promptclimb[mlflow]'") from None
    uri = tracking_uri or mlflow.get_tracking_uri()
    check_server(uri)
    with mlflow_errors():  # a store MLflow refuses (its file store) is one line, not a traceback
        try:
            return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), uri
        except Exception as exc:
            if "MLFLOW_ALLOW_FILE_STORE" in str(exc):
                raise TrackingError(file_store_refused(uri)) from None
            raise


def file_store_refused(uri: str) -> str:
    """MLflow 3 refuses a folder (`./mlruns`, file:...) as a tracking store: say what works."""
    import mlflow

    return (f"MLflow {mlflow.__version__} does not track to a folder ({link_key(uri)}) unless "
            f"MLFLOW_ALLOW_FILE_STORE=true: use a database, e.g. {database_in_folder(uri)}")


def is_folder_store(uri: str) -> bool:
    """A tracking URI that names a folder (file:..., or a plain path), not a database or server."""
    return uri.startswith("file:") or (uri != "databricks" and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) is None)


def database_in_folder(uri: str) -> str:
    """A sqlite tracking URI in the folder `uri` names: what MLflow 3 tracks to instead."""
    folder = Path(uri.removeprefix("file://").removeprefix("file:")).expanduser()
    return f"sqlite:///{folder.resolve() / 'mlflow.db'}"


def artifacts_beside_database(uri: str, experiment: str) -> str | None:
    """The artifact location of a new experiment on a local sqlite store: a folder beside the
    database (DB_FOLDER/mlruns/<experiment>), as MLflow's default (sqlite:///mlflow.db with
    ./mlruns) has it when run from the database's folder; MLflow itself would use the
    ./mlruns of the current folder, wherever that is. None (MLflow decides): anything else."""
    if not uri.startswith("sqlite:///"):
        return None
    database = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not database or database == ":memory:":
        return None
    folder = re.sub(r"[^\w.-]+", "-", experiment).strip(".-") or "experiment"
    return (Path(database).expanduser().resolve().parent / "mlruns" / folder).as_uri()


def link_key(uri: str) -> str:
    """A tracking URI as RUN/mlflow.json knows it: no `user:password@`, no trailing "/", a
    sqlite database or a folder store by its absolute path."""
    uri = without_secrets(uri).rstrip("/")
    database, sep, query = uri.removeprefix("sqlite:///").partition("?")
    if uri.startswith("sqlite:///") and database and database != ":memory:":
        # sqlite:///mlflow.db (MLflow's default) names another database in every folder, and
        # the same one as sqlite:////ITS/PATH: keyed as typed, a sync from elsewhere (or by the
        # other spelling) found no link and logged every run a second time
        uri = f"sqlite:///{os.path.abspath(os.path.expanduser(database))}{sep}{query}"
    elif uri and is_folder_store(uri):  # ./mlruns, file:mlruns: another folder wherever the hint is run
        uri = absolute_folder_store(uri)
    return uri


def absolute_folder_store(uri: str) -> str:
    """A folder store (`is_folder_store`) by its absolute path, spelt as it was (a plain path,
    or file://PATH); file://HOST/... (another machine's) as typed."""
    if not uri.startswith("file:"):
        return os.path.abspath(os.path.expanduser(uri))
    path = uri.removeprefix("file:")
    if path.startswith("//") and not path.startswith("///"):
        return uri
    return "file://" + os.path.abspath(os.path.expanduser(path.removeprefix("//")))


def stored_tracking_uri(uri: str | None) -> str | None:
    """--mlflow as a sweep keeps it (sweep.json) and gives it to its cells: a local store
    (a sqlite database, a folder; bare, MLflow's default sqlite:///mlflow.db) by its absolute
    path, which a rerun or a report from another folder would read as another database
    (`link_key`); anything else (a server's http(s) URI, another database's) as typed, its
    password left for the sweep to leave out and ask for again. Bare stays bare where MLflow
    is not installed, or MLFLOW_TRACKING_URI names no local store (it gives it again then)."""
    if uri is None:
        return None
    if not uri:
        local = tracked_store(uri)
        return local if local and (local.startswith("sqlite:///") or is_folder_store(local)) else uri
    if (uri.startswith("sqlite:///") or is_folder_store(uri)) and without_secrets(uri) == uri:
        return link_key(uri)
    return uri


def tracked_store(tracking_uri: str) -> str | None:
    """The store a search given `--mlflow tracking_uri` ("": bare, MLflow's default) tracks
    to, as RUN/mlflow.json keys it (`link_key`, what its tracker's key is): absolute, without
    a password or key. The command that resumes the run names it: `--mlflow` as typed, bare
    or `sqlite:///mlflow.db`, is another database in another folder, and a resume from there
    logged a second MLflow run, the first left KILLED with half the run. None (a bare --mlflow
    stays bare) where MLflow is not installed, or MLFLOW_TRACKING_URI holds a password or key:
    named without it, the store would refuse the resume; bare, the variable gives it again."""
    if not tracking_uri:
        try:
            import mlflow
        except ImportError:
            return None
        tracking_uri = mlflow.get_tracking_uri()  # MLFLOW_TRACKING_URI, else MLflow's default
        if without_secrets(tracking_uri) != tracking_uri:
            return None
    return link_key(tracking_uri)


def linked_store(folder: str | Path) -> str | None:
    """The one tracking store RUN/mlflow.json links the folder to (its key: absolute, without a
    password), or None (none, or several: which one a resume should continue is the user's)."""
    links = _read_links(Path(folder))
    return next(iter(links)) if len(links) == 1 else None


def check_server(uri: str, timeout_s: float = 5.0) -> None:
    """An http(s) tracking server answers (any HTTP answer will do), or TrackingError."""
    if not uri.startswith(("http://", "https://")):
        return
    shown = without_secrets(uri)
    try:
        urllib.request.urlopen(shown.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TrackingError(f"cannot reach the MLflow tracking server at {shown} ({reason})") from None


@contextmanager
def mlflow_errors() -> Iterator[None]:
    """MLflow's (and its HTTP client's) errors as a one-line TrackingError; meanwhile MLflow
    is quiet (warnings only, no links on stdout) and its HTTP retries short (MLFLOW_ENV)."""
    added = {k: v for k, v in MLFLOW_ENV.items() if k not in os.environ}
    os.environ.update(added)
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    except PromptclimbError:
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException, requests' errors, OSError
        raise TrackingError(f"MLflow: {_one_line(exc)}") from exc
    finally:
        logger.setLevel(level)
        for key in added:
            os.environ.pop(key, None)


def _experiment_id(client, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id; a new experiment gets `artifact_location` (None: MLflow's choice)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except Exception:  # noqa: BLE001 - another process (a sweep's cell) created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def refresh_report(run: Run) -> None:
    """report.html written again where the run changed since `promptclimb report` wrote it
    (a search went on, an adapter was fitted): it was logged as the run's report as it was
    then ("unfinished", 5 answers, no test accuracy) beside a finished run."""
    from promptclimb.agent.core.runfiles import HISTORY, REPORT, SUMMARY
    from promptclimb.agent.runs.report import write_report

    page = run.path / REPORT
    if not page.is_file():
        return
    newest = max((f.stat().st_mtime for f in (run.path / HISTORY, run.path / SUMMARY) if f.is_file()), default=0.0)
    if newest > page.stat().st_mtime:
        write_report(run)


def _copied(held, folder: Path) -> bool:
    """Whether `folder` is a copy of the run folder logged to MLflow run `held` (its
    mlflow.json came along): that folder is still there, linked to the same run. A copy then
    gets an MLflow run of its own; it took the original's over (its folder tag, its files).
    A folder moved since continues its run."""
    logged = held.data.tags.get(FOLDER_TAG)
    if not logged or Path(logged) == folder.resolve() or not Path(logged).is_dir():
        return False
    return any(isinstance(link, dict) and link.get("run_id") == held.info.run_id
               for link in _read_links(Path(logged)).values())


def _live_run(client, run_id: str):
    """MLflow's run `run_id`, or None where it is gone (deleted, or never on this server)."""
    from mlflow.exceptions import MlflowException

    try:
        held = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return None if held.info.lifecycle_stage == "deleted" else held


def _registered_template(client, uri: str) -> str | None:
    name, _, version = uri.removeprefix("prompts:/").rpartition("/")
    found = client.get_prompt_version(name, version) if name else None
    return found.template if found else None


# -- small helpers --------------------------------------------------------------------------
def _read_links(folder: Path) -> dict:
    """RUN/mlflow.json's runs by tracking URI ({} when absent or unreadable: a new MLflow run)."""
    try:
        runs = json.loads((folder / MLFLOW_FILE).read_text(encoding="utf-8")).get("runs")
    except (OSError, ValueError, AttributeError):
        return {}
    return runs if isinstance(runs, dict) else {}


def _strings(tags: dict) -> dict[str, str]:
    return {k: _cut(str(v), TAG_LIMIT) for k, v in tags.items() if v is not None}


def _tags(tags: dict):
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in _strings(tags).items()]


def _test_accuracy(section: dict | None) -> float | None:
    value = ((section or {}).get("accuracy") or {}).get("test")
    return float(value) if isinstance(value, (int, float)) else None


def _answer_time(answer: dict) -> int:
    """When an answer came, in ms: its metrics' MLflow time, which tells it from another
    answer at its step (`Mirror.redone`)."""
    return int(float(answer.get("time") or time.time()) * 1000)


def _completion_times(run: Run) -> dict[int, int]:
    """step -> when its answer's values were complete, in ms: the time of the last event its
    best so far counts (`Run.answer_ends`)."""
    times = {e["_line"]: e.get("time") for e in run.events}
    return {call: int(float(times.get(line) or time.time()) * 1000) for call, line in run.answer_ends().items()}


def _start_time(run: Run) -> float:
    """When the run began (config.json's `created`, or its first event where that is earlier:
    `created` counts whole seconds): its MLflow run's start."""
    first = min((float(e["time"]) for e in run.events if isinstance(e.get("time"), (int, float))), default=None)
    return min(run.created.timestamp(), first) if first is not None else run.created.timestamp()


def _last_time(run: Run) -> float:
    return max((float(e.get("time") or 0) for e in run.events), default=0.0) or time.time()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 40] + f"... ({len(text)} characters in all)"


def _one_line(exc: BaseException) -> str:
    """The first line of an error, without the password or the secret query values of any URL
    in it (MLflow quotes the tracking URI, `?access_token=...` and all)."""
    lines = str(exc).strip().splitlines()
    return scrub_urls(lines[0]) if lines else type(exc).__name__
