"""One run (or sweep) folder and the MLflow run it is logged to: `Mirror`, which sends what the
server does not hold yet (answers, the pool's best, soft-prompt steps, results, files, the prompt,
the status), and `Synced`, what one sync did. Its own module: the stateful part of tracking, which
the API drives, fed by logged.py (what to log) and store.py (MLflow).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from promptclimb.agent.core.files import write_json_atomic
from promptclimb.agent.llm.secrets import without_secrets
from promptclimb.agent.runs.run import Run, load_run
from promptclimb.agent.search import LLM_EVENTS
from promptclimb.agent.softsearch import is_soft_prompt_run
from promptclimb.agent.tracking.logged import (NAMES_TAG, SOFT_KEYS, _answer_time, _strings, answer_metrics,
                                               flat_params, pool_point, prompt_name, prompt_tags, renames_said,
                                               result_metrics, run_tags, soft_step_metrics)
from promptclimb.agent.tracking.store import (MLFLOW_FILE, _copied, _experiment_id, _live_run, _read_links,
                                              _registered_template, artifacts_beside_database, link_key,
                                              mlflow_client, refresh_report, registering_prompts)

STEP_KEY = "new_proposals"  # logged for every answer: its history says which answers the server has, and when
ANSWER_KEYS = ("best_train_accuracy", "best_val_accuracy", STEP_KEY, "refused_proposals", "prompt_tokens",
               "completion_tokens")  # an answer's metrics (`answer_metrics`)
# an answer's own: read from its one history line, so the events after it (which complete an
# answer logged while it was scored) never change them, and a sync never asks for their history
FIXED_KEYS = ("prompt_tokens", "completion_tokens")
POOL_STEP = -1  # the best of the initial pool, before the first answer (step 0): where each curve starts
PARENT_TAG = "mlflow.parentRunId"
CELL_TAG = "promptclimb.cell"  # a sweep's nested run: its cell (folder name), which a renamed run keeps
LINKED_PROMPTS_TAG = "mlflow.linkedPrompts"  # what MLflow's link_prompt_version_to_run sets
ANSWERS_PER_BATCH = 100  # 6 metrics each: under MLflow's 1000 metrics per request


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
            for metric in sorted(self.client.get_metric_history(self.run_id, key),
                                 key=lambda m: (m.timestamp, m.value)):
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
        template = summary["best"]["template"].replace("{}", "{{class_name}}")
        registered = tags.get("promptclimb.prompt")
        with registering_prompts(self.uri, self.experiment_id):
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


# -- small helpers --------------------------------------------------------------------------
def _tags(tags: dict):
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in _strings(tags).items()]


def _completion_times(run: Run) -> dict[int, int]:
    """step -> when its answer's values were complete, in ms: the time of the last event its
    best so far counts (`Run.answer_ends`)."""
    times = {e["_line"]: e.get("time") for e in run.events}
    return {call: int(float(times.get(line) or time.time()) * 1000) for call, line in run.answer_ends().items()}


def _last_time(run: Run) -> float:
    return max((float(e.get("time") or 0) for e in run.events), default=0.0) or time.time()
