"""One cell of a sweep, inside a Ray worker: its search, new or resumed, what it printed in its
search.log and why it failed in its error.txt. Its own module: Ray's workers import `cell_task` by
this module's path, and with it only what a cell runs."""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.files import write_text_atomic
from promptclimb.agent.core.format import moment
from promptclimb.agent.core.runfiles import CELL_ERROR, CELL_LOG, CONFIG, SUMMARY
from promptclimb.agent.runs.store import RUN, RunLocked, check_folder_name, claim_folder, ended_with_adapter

LOG_FILE, ERROR_FILE = CELL_LOG, CELL_ERROR
CELL_LOCK_WAIT_S = 30  # how long a cell waits for another process to let go of its run


def cell_summary(cell_dir: Path) -> dict | None:
    """A cell's summary.json when it is whole (a JSON object with a best result), else None:
    missing, cut short or damaged, the cell is not finished, and its rerun resumes it
    through its history, which writes the summary again."""
    try:
        summary = json.loads((cell_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and isinstance(summary.get("best"), dict) else None


def cell_state(cell_dir: Path, adapter_wanted: bool) -> str:
    """"finished" (a whole summary.json, with the adapter when one was asked for), "failed"
    (error.txt), "killed" (started, not finished: a damaged summary too) or "new"."""
    if ended_with_adapter(cell_summary(cell_dir), adapter_wanted):
        return "finished"
    if (cell_dir / ERROR_FILE).exists():
        return "failed"
    return "killed" if (cell_dir / CONFIG).exists() else "new"


def run_cell(cell_dir: str, opts: dict) -> dict:
    """One cell: a new search, or the resume of a killed one. What it prints goes to
    search.log; an error to error.txt. Returns {"state": "finished" | "failed" |
    "interrupted", ...}; a failure where no error.txt can be written (the folder is not seen
    from this node, or not ours) says so ("error_file": False). Interrupted (SIGTERM of its
    worker: `stop_cells`; Ray's cancel), the cell's log says how to continue (its search says
    it once its run folder exists) and the task ends: a worker left with SystemExit would be
    retried by Ray."""
    cell_dir = Path(cell_dir)
    if not cell_dir.parent.is_dir():
        return {"state": "failed", "error_file": False,
                "error": f"{cell_dir.parent} does not exist on node {platform.node()}: "
                         "a sweep folder must be on storage every node sees (--runs-dir)"}
    try:
        claim_cell(cell_dir)
    except PromptclimbError as exc:  # not ours to write into, error.txt included
        return {"state": "failed", "error": str(exc), "error_file": False}
    (cell_dir / ERROR_FILE).unlink(missing_ok=True)
    said_interrupted = False
    with open(cell_dir / LOG_FILE, "a", encoding="utf-8") as log:
        def echo(message: str) -> None:
            nonlocal said_interrupted
            said_interrupted = said_interrupted or message.startswith(INTERRUPTED)
            log.write(f"{message}\n")
            log.flush()

        echo(f"--- {moment(seconds=True)} "
             f"{'resuming' if (cell_dir / CONFIG).exists() else 'starting'} "
             f"on {platform.node()} (pid {os.getpid()})")
        try:
            search_when_free(cell_dir, opts, echo)
            return {"state": "finished"}
        except PromptclimbError as exc:
            error = str(exc)
        except (KeyboardInterrupt, SystemExit):
            if not said_interrupted:
                echo(interrupted_line(cell_dir, opts.get("mlflow")))
            return {"state": "interrupted"}
        except Exception as exc:  # noqa: BLE001 - any failure of one cell is recorded, the sweep goes on
            error = f"{type(exc).__name__}: {exc}"
            echo(traceback.format_exc())
        echo(f"failed: {error}")
    write_text_atomic(cell_dir / ERROR_FILE, error + "\n")
    return {"state": "failed", "error": error}


def claim_cell(cell_dir: Path, create: bool = True) -> None:
    """The cell's folder, taken as its search takes a run's (`claim_folder`): new, or this
    cell's own (a folder its sweep.json lists, a run in it resumed). Not `create`: only
    checked, by the driver before Ray starts (`run_sweep`): a file in the cell's place, or a
    folder of someone else's files, is then one line, not a cell failing inside Ray with no
    error.txt to say why (none can be written there)."""
    check_folder_name(cell_dir.name, "cell")
    if not (cell_dir / CONFIG).exists():
        claim_folder(cell_dir, RUN, create=create)


INTERRUPTED = "interrupted"  # how a search.log line that records an interruption begins


def interrupted_line(cell_dir: Path, tracking_uri: str | None = None) -> str:
    """What a cell's search.log says when it was stopped: what its search says once the run
    folder exists (agent/pipeline.py, `resume_command`)."""
    from promptclimb.agent.pipeline import resume_command

    if (cell_dir / CONFIG).exists():
        return f"{INTERRUPTED}; continue with: {resume_command(cell_dir, tracking_uri)[0]}"
    return f"{INTERRUPTED} before its run began; the sweep starts it again when rerun"


def search_when_free(cell_dir: Path, opts: dict, echo: Callable[[str], None]) -> None:
    """The cell's search (resumed when its folder holds a config). While another process
    holds the run's lock, wait for it, up to CELL_LOCK_WAIT_S: Ray's workers are the
    raylet's children, so after a sweep's driver is killed one may still be finishing this
    cell's last write."""
    from promptclimb.agent.pipeline import run_search

    deadline, waiting = time.monotonic() + CELL_LOCK_WAIT_S, False
    while True:
        resume = (cell_dir / CONFIG).exists()
        try:
            run_search({**resumed_options(opts), "resume": str(cell_dir)} if resume else opts, echo)
            return
        except RunLocked as exc:
            if time.monotonic() >= deadline:
                raise
            if not waiting:
                echo(f"{exc}: waiting up to {CELL_LOCK_WAIT_S} s for it")
                waiting = True
            time.sleep(0.5)


def resumed_options(opts: dict) -> dict:
    """A killed cell's options for its resume: every option that says what the run does
    (scope "run": agent/options.py) at its default, the others (device, endpoint, budget)
    as given. The run continues with the settings its config.json records, which matched
    sweep.json's already; given again, they would only be compared with them, and a
    soft-prompt run records no LLM settings to compare with (--llm local was refused).
    --parallel of this run is for new cells: a killed one resumes with its own lanes."""
    from promptclimb.agent.options import RUN as WHAT_THE_RUN_DOES, SEARCH_OPTIONS

    return {**opts, **{o.name: o.default for o in SEARCH_OPTIONS if o.scope == WHAT_THE_RUN_DOES}}


def cell_task(cell_dir: str, opts: dict) -> Iterator[dict]:
    """The Ray task of a cell (a streaming generator): first that it runs, and in which
    process (`stop_cells` signals it), then its end."""
    import ray

    from promptclimb.agent.sweep.reaper import start_time

    yield {"state": "running", "node": platform.node(), "node_id": ray.get_runtime_context().get_node_id(),
           "pid": os.getpid(), "started": start_time(os.getpid())}
    yield run_cell(cell_dir, opts)
