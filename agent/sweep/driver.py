"""Sweeps: a grid of ordinary searches (dataset x backbone x shots x seed) run as Ray tasks
(`promptclimb sweep`), and their results read back (`promptclimb sweep-report`).

    runs/<sweep>/
      sweep.json                                  the grid and the search options of every cell
      <dataset>-<backbone>-<shots>shot-seed<k>/   one ordinary run folder per cell, plus
          search.log                              what its search printed
          error.txt                               why its last run failed (gone once it runs again)
      report.png                                  written by sweep-report
      .lock                                       held by the `sweep` command running it (`sweep_lock`)

Each cell is one Ray task (`cell_task`) that calls the same `run_search` as `promptclimb
search`: a new run, or the resume of a killed one through its own history. Rerunning a
sweep skips finished cells (summary.json written, with the adapter in it when one was
asked for), resumes killed ones and retries failed ones. Ray does all the scheduling: a
local Ray started in-process (on the loopback only) by default, or an existing cluster
(`address`); `cpus_per_run` / `gpus_per_run` are each task's Ray resources.

On a cluster, every node must see the sweep folder at the same path (shared storage); the
feature cache is per node (`PROMPTCLIMB_HOME`, which may point at shared storage too), and
so is `OPENAI_API_KEY`. All cells use one LLM endpoint: `--base-url`, or the embedded
local LLM started once by the driver (then the cells run on the driver's node), asked as a
standalone search asks its own; a soft-prompt sweep (craft, cbbt) asks none.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable, Iterator

from promptclimb.agent.core.errors import EXIT_TERMINATED, PromptclimbError, sigterm_received
from promptclimb.agent.core.files import write_text_atomic
from promptclimb.agent.core.format import bar_disable, shell_command
from promptclimb.agent.core.paths import missing_folders, remove_while_empty
from promptclimb.agent.core.runfiles import LOCK, SWEEP_FILE
from promptclimb.agent.runs.store import LOCK_TRIES, RunLocked, check_folder_name, lock_folder, lock_holder_said
from promptclimb.agent.sweep.cell import (ERROR_FILE, INTERRUPTED, LOG_FILE, cell_state, cell_task, claim_cell,
                                          interrupted_line)
from promptclimb.agent.sweep.cluster import check_ray_options, ray_session
from promptclimb.agent.sweep.grid import (cell_options, claim_sweep, grid_cells, prepare_sweep, search_options,
                                          sweep_endpoint)

CELL_STOP_GRACE_S = 10  # how long a stopped sweep waits for its running cells to say where they stopped
QUEUED = "queued"  # a cell's state in a running sweep before its task starts (`run_sweep`, `watch`)


# -- the driver -----------------------------------------------------------------------------
@contextmanager
def llm_endpoint(opts: dict, echo: Callable[[str], None]) -> Iterator[tuple[str | None, dict]]:
    """(where every cell's LLM answers, what the driver sets in every cell's options
    (`cell_options`)): no LLM for a soft-prompt sweep (--optimizer craft|cbbt asks none);
    --base-url, or the driver's $OPENAI_BASE_URL; for the embedded local LLM without one, a
    llama.cpp server started here once for the whole sweep, which each cell's search asks
    instead of starting its own; None: the OpenAI API (with each node's OPENAI_API_KEY)."""
    from promptclimb.agent.options import LOCAL
    from promptclimb.agent.pipeline import default_llm

    if opts["optimizer"] != "llm":
        yield None, {}
        return
    base_url = sweep_endpoint(opts)
    if base_url or (opts["llm_name"] or default_llm()) != LOCAL:
        yield base_url, {"base_url": base_url}
        return
    from promptclimb.agent.llm.local import local_server

    with local_server(model_path=opts["llm_model"], echo=echo) as url:
        # --llm local whatever a node's environment says: the LLM the driver started for it
        yield url, {"llm_name": LOCAL, "local_llm_url": url}


def on_this_machine(base_url: str | None) -> bool:
    return bool(base_url and re.match(r"https?://(127\.|localhost)", base_url))


def cell_resources(ray, base_url: str | None, address: str | None, cpus_per_run: float, gpus_per_run: float,
                   echo: Callable[[str], None]) -> dict:
    """The Ray options of every cell's task. An endpoint on this machine keeps the cells on
    this node. When it is promptclimb's local LLM (started by the sweep, or a `promptclimb llm
    serve`: it lists its GGUF at /models), each cell asks for all of the node's CPUs, so Ray
    runs one at a time: that server answers one request at a time and keeps only the last
    request's prefix, and cells taking turns at it would reprocess their conversations
    (docs/sweeps.md has the measurement)."""
    from promptclimb.agent.llm.client import local_model_served_at
    from promptclimb.agent.llm.local import ONE_AT_A_TIME

    resources = {"num_cpus": cpus_per_run, "num_gpus": gpus_per_run, "max_retries": 1}
    if not on_this_machine(base_url):
        return resources
    here = ray.get_runtime_context().get_node_id()
    if local_model_served_at(base_url):
        node_cpus = next(n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] == here)
        resources["num_cpus"] = max(cpus_per_run, node_cpus)
        echo(f"{ONE_AT_A_TIME}: the cells run one after another")
    if address is not None:
        if address.startswith("ray://"):
            raise PromptclimbError(f"the LLM at {base_url} serves this machine only: give the cells an "
                                   "endpoint they can reach (--base-url) when the cluster is reached with ray://")
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        resources["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    return resources


def continue_command(name: str, runs_dir: Path, address: str | None, num_cpus: int | None, cpus_per_run: float,
                     gpus_per_run: float) -> str:
    """The command that continues a sweep (its grid and search options are in sweep.json)."""
    words = ["sweep", name, "--runs-dir", runs_dir]
    words += ["--address", address] if address else []
    words += ["--num-cpus", num_cpus] if num_cpus else []
    words += ["--cpus-per-run", f"{cpus_per_run:g}"] if cpus_per_run != 1.0 else []
    words += ["--gpus-per-run", f"{gpus_per_run:g}"] if gpus_per_run else []
    return shell_command(*words)


@contextmanager
def forgotten_if_refused(sweep_dir: Path, new_sweep: bool, created: list[Path]) -> Iterator[Callable[[], None]]:
    """A new sweep refused before its first cell starts (a bad value, a cluster it cannot
    reach, resources this machine lacks, an LLM that does not start, a file it cannot write)
    leaves nothing behind: not its sweep.json, which would keep the refused command's
    settings and refuse a corrected command with others, nor the folders it created
    (`created`: the sweep's, and --runs-dir and the folders above it that did not exist),
    each removed only while it is empty. Yields what to call when the cells start."""
    started = False

    def cells_started() -> None:
        nonlocal started
        started = True

    try:
        yield cells_started
    except (PromptclimbError, OSError):
        if new_sweep and not started:
            with suppress(OSError):
                (sweep_dir / SWEEP_FILE).unlink(missing_ok=True)
            remove_while_empty(created)
        raise


@contextmanager
def sweep_lock(sweep_dir: Path, name: str, created: list[Path]) -> Iterator[None]:
    """Hold the sweep's lock (its .lock, flock'd as a run's writer holds a run's: agent/runs/store.py)
    while this command runs the sweep, from before it writes anything: a second `sweep NAME`
    meanwhile is refused in one line before Ray starts, where it had run the cells beside the
    first (two results in a search.log) or failed the cell the first was finishing (its run
    lock). The lock file is there only while the sweep runs (or after a kill -9): a refused
    rerun leaves the folder as it was, and a new sweep refused or stopped before it wrote
    sweep.json leaves nothing, the folders in `created` going again while empty (as
    `forgotten_if_refused` says)."""
    try:
        handle = _take_sweep_lock(sweep_dir, name)
    except BaseException:
        remove_while_empty(created)
        raise
    try:
        yield
    finally:
        with suppress(OSError):
            (sweep_dir / LOCK).unlink(missing_ok=True)  # while held: one waiting for it takes a new file
        remove_while_empty(created)
        handle.close()  # releases the flock


def _take_sweep_lock(sweep_dir: Path, name: str):
    """The sweep's lock file, locked by this process (`sweep_lock`)."""
    for _ in range(LOCK_TRIES):
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            handle = lock_folder(sweep_dir)
        except FileNotFoundError:  # a new sweep refused meanwhile removed the folder
            continue
        except RunLocked:
            raise PromptclimbError(f"sweep {name} is {lock_holder_said(sweep_dir, 'being run')}") from None
        with suppress(OSError):
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(sweep_dir / LOCK)):
                return handle
        handle.close()  # a lock file that its holder removed as it let go (`sweep_lock`) while this one waited
    raise PromptclimbError(f"sweep {name}: its lock file {sweep_dir / LOCK} keeps being removed by another "
                           "process; try again")


def run_sweep(name: str, runs_dir: str | Path, grid: dict | None, search: dict, *, address: str | None = None,
              num_cpus: int | None = None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0,
              echo: Callable[[str], None] = print) -> dict:
    """Run (or continue) the sweep `runs_dir/name`: every cell not finished yet, as Ray
    tasks. `grid` None continues a stored sweep. Returns the cells' states by name. A
    failed cell does not stop the others; Ctrl-C or SIGTERM cancels the running ones and
    says how to continue."""
    check_folder_name(name, "sweep name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise PromptclimbError(f"sweep name {name!r}: use letters, digits and . _ + - (it names a folder)")
    check_ray_options(address, num_cpus, cpus_per_run, gpus_per_run)
    runs_dir = Path(runs_dir).expanduser().resolve()
    sweep_dir = runs_dir / name
    created = missing_folders(sweep_dir)
    claim_sweep(sweep_dir, create=False)  # a run's folder or a file: refused before its lock is touched
    with sweep_lock(sweep_dir, name, created):
        new_sweep = not (sweep_dir / SWEEP_FILE).exists()  # under the lock: no other command is writing it
        with forgotten_if_refused(sweep_dir, new_sweep, created):
            settings = prepare_sweep(sweep_dir, grid, search, echo)
        opts = search_options(settings["search"])
        cells = grid_cells(settings)
        states = {c.name: cell_state(sweep_dir / c.name, bool(opts["adapter_kinds"])) for c in cells}
        todo = [c for c in cells if states[c.name] != "finished"]
        for cell in todo:
            claim_cell(sweep_dir / cell.name, create=False)
        counts = {s: sum(v == s for v in states.values()) for s in ("finished", "killed", "failed", "new")}
        echo(f"sweep {name}: {len(cells)} cells; {counts['finished']} finished, {counts['killed']} to resume, "
             f"{counts['failed']} to retry, {counts['new']} to start   ({sweep_dir})")
        if not todo:
            return states
        # cells this run retries or resumes are to do, not failed: its progress counts its own failures
        states.update(dict.fromkeys((c.name for c in todo), QUEUED))
        log_sizes: dict[str, int] = {}  # what the cells' search.log held before this run
        unwritten: dict[str, str] = {}  # cell -> why it failed, where no error.txt could say it
        try:
            with forgotten_if_refused(sweep_dir, new_sweep, created) as cells_started, \
                    ray_session(address, echo, num_cpus) as ray, llm_endpoint(opts, echo) as (base_url, settled):
                total = ray.cluster_resources()
                if address is None and (cpus_per_run > total.get("CPU", 0) or gpus_per_run > total.get("GPU", 0)):
                    raise PromptclimbError(f"each cell asks for {cpus_per_run:g} CPUs and {gpus_per_run:g} GPUs, but "
                                           f"this machine has {total.get('CPU', 0):g} and {total.get('GPU', 0):g}")
                resources = cell_resources(ray, base_url, address, cpus_per_run, gpus_per_run, echo)
                task = ray.remote(num_returns="streaming")(cell_task).options(**resources)
                cells_started()
                log_sizes = {c.name: log_size(sweep_dir / c.name) for c in todo}
                running = {task.remote(str(sweep_dir / c.name), cell_options(c, opts, sweep_dir, **settled)): c
                           for c in todo}
                unwritten = watch(ray, running, sweep_dir, states, echo)
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (SystemExit 143: ray_session), at any step
            # The running cells were stopped through their own interrupt path (watch: stop_cells)
            # before Ray went; one whose process ended before it said so is recorded here.
            record_interruptions(sweep_dir, log_sizes, bool(opts["adapter_kinds"]), opts.get("mlflow"))
            echo(f"stopped; finished cells are kept, the others resume from their history. Continue with:\n"
                 f"  {continue_command(name, runs_dir, address, num_cpus, cpus_per_run, gpus_per_run)}")
            if sigterm_received():  # Ray may have turned it into SystemExit(1)
                raise SystemExit(EXIT_TERMINATED) from None
            raise
        failed = [n for n, s in states.items() if s == "failed"]
        report = shell_command("sweep-report", name, "--runs-dir", runs_dir)
        echo(f"sweep {name}: {sum(s == 'finished' for s in states.values())}/{len(cells)} cells finished"
             + failed_note(len(failed), unwritten, report))
        track_sweep(sweep_dir, opts.get("mlflow"), echo)
        return states


def failed_note(failed: int, unwritten: dict[str, str], report: str) -> str:
    """The end of a sweep's last line for its `failed` cells: where to read why. A cell whose
    error no error.txt holds (`unwritten`: cell -> error; its node could not see or claim its
    folder) is not a failed cell to sweep-report either, so its error is said here."""
    if not failed:
        return ""
    written = f"see their error.txt, or: {report}"
    if not unwritten:
        return f", {failed} failed ({written})"
    errors = sorted(set(unwritten.values()))
    why = errors[0] if len(errors) == 1 else "in their FAILED lines above"
    if len(unwritten) == failed:
        return f", {failed} failed (no error.txt written): {why}"
    return f", {failed} failed ({failed - len(unwritten)}: {written}; {len(unwritten)}, no error.txt written: {why})"


def track_sweep(sweep_dir: Path, tracking_uri: str | None, echo: Callable[[str], None]) -> None:
    """--mlflow: the sweep as one MLflow parent run, each cell's run (logged live by the
    cell's own search) nested under it. Like a search's tracking, it never fails the sweep."""
    if tracking_uri is None:
        return
    from promptclimb.agent.tracking import sync_sweep

    try:
        synced = sync_sweep(sweep_dir, tracking_uri or None)
        echo(f"MLflow: sweep run {synced.run_id} with its cells nested ({synced.tracking_uri})")
    except PromptclimbError as exc:
        echo(f"warning: MLflow tracking of the sweep failed ({exc}); log it afterwards with: "
             f"{shell_command('mlflow-sync', sweep_dir)}")


def watch(ray, running: dict, sweep_dir: Path, states: dict, echo: Callable[[str], None]) -> dict[str, str]:
    """Follow the cells' tasks (generator -> Cell) to their end, with a progress bar of
    cells done / running / failed (on a terminal; a line per change otherwise), kept in
    `states` (every cell's; the tasks' cells QUEUED, so that an earlier run's failure is not
    counted as this run's while its retry waits or runs). Ctrl-C or SIGTERM stops the cells
    not ended yet (`stop_cells`) before it goes on. Returns the errors of the cells that
    failed with no error.txt written (cell -> error)."""
    from tqdm import tqdm

    total, active = len(states), set()
    bar = tqdm(total=total, initial=sum(s == "finished" for s in states.values()), unit="cell", file=sys.stderr,
               disable=bar_disable(True), dynamic_ncols=True)
    say = echo if bar.disable else bar.write

    def progress() -> str:
        done, failed = (sum(s == state for s in states.values()) for state in ("finished", "failed"))
        bar.set_postfix_str(f"done {done}, running {len(active)}, failed {failed}", refresh=False)
        return f"[{done}/{total} done, {len(active)} running, {failed} failed]"

    pending, started, ended = list(running), {}, set()  # started: generator -> its "running" message
    unwritten = {}
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for generator in ready:
                cell = running[generator]
                try:
                    message = ray.get(next(generator))
                except StopIteration:
                    ended.add(generator)
                    continue
                except Exception as exc:  # noqa: BLE001 - the worker died, or the task could not run
                    message = {"state": "failed", "error": task_error(exc)}
                    write_text_atomic(sweep_dir / cell.name / ERROR_FILE, message["error"] + "\n")
                if message["state"] == "interrupted":  # its worker was stopped, not the sweep
                    message = {"state": "failed", "error": CELL_INTERRUPTED}
                    write_text_atomic(sweep_dir / cell.name / ERROR_FILE, message["error"] + "\n")
                if message["state"] == "running":
                    started[generator] = message
                    active.add(cell.name)
                    states[cell.name] = "running"
                    pending.append(generator)
                    say(f"{progress()} {cell.name}: running on {message['node']}")
                    continue
                active.discard(cell.name)
                ended.add(generator)
                states[cell.name] = message["state"]
                if message["state"] == "finished":
                    bar.update(1)
                    say(f"{progress()} {cell.name}: finished")
                else:
                    say(f"{progress()} {cell.name}: FAILED: {message['error'].splitlines()[0]}")
                    if message.get("error_file") is False:
                        unwritten[cell.name] = message["error"].splitlines()[0]
                        forget_earlier_error(sweep_dir / cell.name)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C or SIGTERM of the driver
        try:
            stop_cells(ray, [g for g in running if g not in ended], started, say)
        except Exception:  # noqa: BLE001 - a Ray that cannot stop them: leaving it ends them (run_sweep)
            pass
        raise
    finally:
        bar.close()
    return unwritten


def forget_earlier_error(cell_dir: Path) -> None:
    """A cell that failed where it could write no error.txt (its node does not see, or could not
    claim, its folder; `run_cell` removes an earlier error.txt only once it has claimed it): an
    error.txt there is an earlier run's, which sweep-report would give as this run's failure
    (and count the cell as failed, where the sweep's last line says no error.txt was written).
    The driver removes it where it sees the folder (a cell's own file: `claim_folder`)."""
    with suppress(OSError):  # not seen from here either: nothing there to be read as this run's
        (cell_dir / ERROR_FILE).unlink(missing_ok=True)


CELL_INTERRUPTED = ("interrupted: its worker was stopped (SIGTERM, or Ray's cancel) while the sweep ran; "
                    "a rerun of the sweep resumes it")


def stop_cells(ray, unfinished: list, started: dict, say: Callable[[str], None]) -> None:
    """The sweep was stopped: its cells not ended yet (generators; `started` maps the
    running ones to their "running" message) end through their own interrupt path while Ray
    is still there (leaving Ray ends every worker of the job at once, a cell's last lines
    written or not). Cells waiting for a slot are cancelled first, so that none starts now.
    A running cell on this node gets SIGTERM in its worker, by id (Ray's handler raises
    SystemExit in the search, which says how to continue as on Ctrl-C; Ray blocks SIGINT in
    its workers; Linux: /proc tells the worker from a reused pid); any other gets Ray's
    cancel (KeyboardInterrupt at its next Python step: a search waiting for an LLM answer
    sees it once the answer is in). Waits up to CELL_STOP_GRACE_S for them to end; a second
    Ctrl-C or SIGTERM waits no more. A cell still running then is recorded by
    `record_interruptions`."""
    from promptclimb.agent.sweep.reaper import signal_process

    for generator in unfinished:
        if generator not in started:
            ray.cancel(generator)
    try:
        here = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - a Ray client knows no node of its own
        here = None
    running = [g for g in unfinished if g in started]
    if running:
        say(f"stopping {len(running)} running cell(s); each says in its search.log where it stopped "
            f"(waiting up to {CELL_STOP_GRACE_S} s)")
    for generator in running:
        where = started[generator]
        if where.get("node_id") != here or not signal_process(where["pid"], where.get("started"), signal.SIGTERM):
            ray.cancel(generator)
    deadline, pending = time.monotonic() + CELL_STOP_GRACE_S, list(unfinished)
    while pending and time.monotonic() < deadline:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        for generator in ready:
            try:
                ray.get(next(generator))
            except StopIteration:
                continue
            except Exception:  # noqa: BLE001 - cancelled before it ran, or its worker ended
                continue
            pending.append(generator)  # its last message was ready; its end follows


def log_size(cell_dir: Path) -> int:
    """How many bytes a cell's search.log holds (0: none yet)."""
    try:
        return (cell_dir / LOG_FILE).stat().st_size
    except OSError:
        return 0


def record_interruptions(sweep_dir: Path, log_sizes: dict[str, int], adapter_wanted: bool,
                         tracking_uri: str | None = None) -> list[str]:
    """After a stopped sweep has left Ray: every cell that started in this run (its
    search.log grew beyond `log_sizes`) and neither finished, failed nor said it was
    interrupted (its worker ended before it could: a cell on another node still busy when
    `stop_cells` stopped waiting, a stop before the cells' tasks were followed) gets the
    line its search would have written, from the driver. Returns those cells' names."""
    recorded = []
    for name, before in log_sizes.items():
        cell_dir = sweep_dir / name
        try:
            with open(cell_dir / LOG_FILE, "rb") as log:
                log.seek(before)
                said = log.read().decode("utf-8", errors="replace")
            if not said or cell_state(cell_dir, adapter_wanted) in ("finished", "failed") \
                    or any(line.startswith(INTERRUPTED) for line in said.splitlines()):
                continue
            with open(cell_dir / LOG_FILE, "a", encoding="utf-8") as log:
                log.write(f"the sweep was stopped; this cell's process ended before it said so (written by the "
                          f"sweep's driver)\n{interrupted_line(cell_dir, tracking_uri)}\n")
        except OSError:  # not started in this run, or not ours to write: the stop goes on
            continue
        recorded.append(name)
    return recorded


def task_error(exc: BaseException) -> str:
    """One line from a Ray error (a task's own exception, or a worker that died)."""
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
