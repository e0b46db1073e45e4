"""The run folder: the search's memory, append-only and resumable.

    runs/<run-id>/
      config.json     every setting, package versions, evaluator.info(), the LLM model and
                      base_url (userinfo stripped); never a key. Written at creation, before
                      the model loads (so a run killed while loading resumes by name);
                      "evaluator" is added once the evaluator is built.
      history.jsonl   one event per line, flushed and fsync'd before the search goes on
      prompts.csv     every scored template once per set of names (rewritten from history as the run goes)
      summary.json    the result (written at the end, see agent/search.py)
      .lock           held (flock) by the process writing the run (a search, or `adapt`)

history.jsonl, format version 2. Every line has
    v (2; 1 in a history begun before v2), seq (0, 1, 2, ... = line number), time (unix
    seconds), event
and, where they apply, restart, reset (0-based), iteration (0 = the initial pool,
1.. = LLM turns inside a reset) and call (0-based index of the LLM answer in the run).
Events:
    run_start     run_id, start_names [the class names the search starts from; none in a
                  soft-prompt run's history]
    restart       restart, pool: [templates sampled from the initial pool for it]
    reset         restart, reset (a new conversation; the scoreboard is kept)
    llm_exchange  restart, reset, iteration, call, model, seed, temperature, request_key,
                  messages (only the messages new since this conversation's previous
                  exchange, starting with its answer: the conversation is the concatenation
                  of `messages` since its system message, then the last `answer`; a reset
                  opens a new conversation, and so does a turn after an answer with nothing
                  to score, search.py `starts_over`), n_messages (the whole conversation's
                  length), answer (raw text), usage {prompt_tokens, completion_tokens},
                  latency_s, cached, source
                  ("llm" | "cache" | "replay"), and answer_truncated {kept_chars,
                  received_chars} when the answer was cut (agent/llm/answers.py `answer_cap`),
                  and context_refused {request_key, context_tokens, n_messages} when the
                  endpoint refused this turn's request in the conversation before as longer
                  than the context it stated: this exchange opens a new one (a resume is
                  refused that request again without asking; search.py `ask_template`)
    score         restart, reset, iteration, call (llm only), template, origin ("pool" |
                  "llm"), source (pool file, or "llm"), accuracy {split: 0..1},
                  loss {split: mean cross-entropy}
    shared        restart, reset, iteration, call, template, origin ("llm"), source, names (as
                  score's): a template this restart's LLM proposed and put on its board, whose
                  score another restart recorded first (the run scores each template, under
                  each names, once: the figures are that score event's, or the names_change
                  event's for a pair a names turn kept). A restart's board is its restart
                  event's pool, its own score and names_change events and these. Histories
                  written before this event hold none (`ADDED_LATER`).
    reject        restart, reset, iteration, call, template (the cleaned line), reason;
                  detail for a template held back on val (search.py HELD_BACK: "val 80.0%
                  vs 90.0%")
  names turns (--search names|both; agent/names.py); a score of a template scored under
  names other than the start names has `names` [one per class] too:
    names_exchange  as llm_exchange (messages: the whole names conversation, system first),
                  plus asked [the classes asked about]
    name_reject   restart, reset, iteration, call, class (or null), label (the class as
                  written), name, reason (a key of agent/names.py REASONS: "unknown class",
                  "empty", "too long", "braces", "not one name", "word twice", "another
                  class's name", "a kind of another class", "built on the name", "repeat",
                  "too many", "drift", "own images lost", "worse held out", "guard not
                  asked": the LLM budget ran out before the drift guard could ask, and a
                  stop event follows the turn), detail (what the LLM reads after the
                  reason: the other class's name, the cap reached, ...)
    name_score    restart, reset, iteration, call, template, names, changes [{class, from,
                  to}] (one: a proposal; several: a combination), accuracy, loss, prob
    names_judge   restart, reset, iteration, call, class, name, request_key, answer, usage,
                  latency_s, cached, source, judged (the other class the answer names, or
                  null); when it names one, a second such event asks with the classes in
                  reverse order, and the name is refused only when both name the same class
                  and the text tower agrees (names_text); an answer naming no class goes to
                  the text tower alone
    names_text    restart, reset, iteration, template, class, name, judged (the class both
                  judge answers named, or null: the answer named no class), other (judged,
                  or the other class nearest the text), own_similarity, other_similarity (the
                  template filled with the name, against it filled with the class's and with
                  other's start name); the change is refused when other_similarity >
                  own_similarity
    names_change  restart, reset, iteration, call, template, names (the new best names),
                  changes [{class, from, to}], accuracy, loss, prob; refused_combinations
                  [{changes, reason ("worse held out" or "own images lost"), detail}] when
                  a combination of the turn's picks was scored and not kept for that reason
    stop          reason (a budget cap was reached; the search ended early)
    failed        error (the one-line message of the error that ended the search: an LLM
                  that failed for good, data that no longer reads; never a key): written at
                  the end of the history by `RunStore.record_failure`, never replayed (a
                  resume passes over it, and the events it writes after it say the run goes
                  on); a run killed (Ctrl-C, SIGTERM, SIGKILL) has none. Histories written
                  before this event hold none: such a failed run reads as unfinished
    final         stopped, best {template, origin, accuracy, loss}, ensemble
                  {templates, accuracy, loss} or null, top [{template, accuracy, loss}];
                  with names turns, best and top entries carry `names`, and `names` holds
                  the names table (start -> found, per-class figures: agent/search.py)

Compact forms (v2, agent/runs/compact.py): every list of class names but run_start's is
written as {"renamed": {"<class index>": "name"}}, the classes not named as in start_names;
the names table's confusion matrices as {"shape": [rows, columns], "cells": [[true,
predicted, count], ...]} (the non-zero cells), its per-class figures as one list per figure.
The reader (agent/runs/reading.py) gives every event back whole, as the search recorded it;
the fields above describe that whole form. A v1 history (names in full, dense matrices) is
read as it is, and a v1 run resumed is continued in v1.

Resume: the search is deterministic given (config, evaluator, LLM answers), so a resumed
run simply runs again. A store reopened with `RunStore.resume` knows the events already
written: `append` of an event that is already there checks that it is the same event
(same kind, position, template, request ...) and returns the stored copy instead of
writing it twice; the first new event is appended after them. A different event means
the run cannot be continued (settings, meta-prompts or evaluator changed): `RunMismatch`,
except for an event of a kind added to the format later (`ADDED_LATER`): where the history
holds another event, it was written before that kind existed, and the replay writes none of
it (the events after the replay do).
A last line cut short by a kill is dropped (and the file truncated to the last full line).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import time
import unicodedata
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable, Iterable, Iterator

from promptclimb.agent.core.classnames import renames
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.files import remove_dead_temp_files, write_atomic, write_json_atomic
from promptclimb.agent.core.format import shell_command
from promptclimb.agent.runs.compact import COMPACT_SINCE, pack_event

from promptclimb.agent.core.runfiles import (  # noqa: F401 (re-exported)
    CELL_ERROR, CELL_LOG, CONFIG, FORMAT_VERSION, HISTORY, LOCK, PROMPTS, SUMMARY, SWEEP_FILE)

# The fields that make two events "the same step" when a resumed run replays its history.
# Measured values (time, latency, accuracies read back, usage) are not compared, nor the run
# id that run_start records: the folder's name, which a moved or renamed run no longer has.
IDENTITY = ("event", "restart", "reset", "iteration", "call", "template", "origin", "request_key", "reason",
            "class", "name", "names")

# How a resume says that only a newer promptclimb's decoding of the images changed (agent/pipeline.py
# data_change): nothing a user can put back, so a refusal does not ask for it.
DECODING_CHANGED = "how images are decoded changed"
# The history's LLM answers, by event, and the kind of turn each answers.
ANSWER_KINDS = {"llm_exchange": "template", "names_exchange": "names", "names_judge": "guard"}
# Every kind of event a history holds (the list above; "step": a soft-prompt run's, agent/softsearch.py),
# so that a reader asked for another (`Run.of("scores")`) says so instead of finding none. The store
# refuses to write any other kind: a new kind fails its first test until it is listed here.
EVENTS = ("run_start", "restart", "reset", "llm_exchange", "score", "reject", "names_exchange", "name_reject",
          "name_score", "names_judge", "names_text", "names_change", "stop", "final", "step", "shared", "failed")
# What a search that ended in an error writes last (`RunStore.record_failure`); not a step of the
# search: a resume replays around it, and a run killed writes none (the readers tell the two apart)
FAILED = "failed"
# Kinds added after runs were recorded without them: a resumed run replaying a history from
# before one was added is not refused for lacking it (`RunStore.append`).
ADDED_LATER = ("shared",)


def ledger(events: Iterable[dict]) -> dict:
    """A run's LLM cost, from its history's answer events (a resumed run included): requests
    made (answers not from the cache), cache hits, and the requests' tokens and latency.
    summary.json's "ledger" and `Run.ledger()` of an unfinished run."""
    answers = [e for e in events if e["event"] in ANSWER_KINDS]
    asked = [e for e in answers if not e.get("cached")]
    return {
        "calls": len(asked),
        "cache_hits": len(answers) - len(asked),
        "prompt_tokens": sum(tokens_spent(e)["prompt_tokens"] for e in answers),
        "completion_tokens": sum(tokens_spent(e)["completion_tokens"] for e in answers),
        "latency_s": round(sum(e.get("latency_s") or 0.0 for e in asked), 3),
    }


def names_scored(events: Iterable[dict]) -> int:
    """The names a run's names turns scored, each as a one-class change (summary.json's names
    counts, `show` and the report)."""
    return sum(e["event"] == "name_score" and len(e.get("changes") or ()) == 1 for e in events)


def ledger_by_kind(events: Iterable[dict]) -> dict:
    """Requests made and their tokens per kind of turn: template, names and the drift guard."""
    out = {kind: {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0} for kind in ANSWER_KINDS.values()}
    for e in events:
        if e["event"] in ANSWER_KINDS and not e.get("cached"):
            row = out[ANSWER_KINDS[e["event"]]]
            row["calls"] += 1
            for tokens, n in tokens_spent(e).items():
                row[tokens] += n
    return out


def _usage(event: dict, tokens: str) -> int:
    return (event.get("usage") or {}).get(tokens) or 0


def tokens_spent(event: dict) -> dict[str, int]:
    """The prompt and completion tokens an answer event cost: none for one from the cache
    (it records those of the request that made it), as `ledger` counts. --max-tokens counts
    them all the same (agent/llm/client.py): a rerun from the cache stops where the first did."""
    if event.get("cached"):
        return {"prompt_tokens": 0, "completion_tokens": 0}
    return {tokens: _usage(event, tokens) for tokens in ("prompt_tokens", "completion_tokens")}


class RunMismatch(PromptclimbError):
    pass


class RunLocked(PromptclimbError):
    pass


def check_folder_name(name, what: str) -> str:
    """`name` when it is one plain folder name, else PromptclimbError naming `what`. Every
    value that becomes a folder under the runs dir passes here (a run id, a sweep's name, a
    sweep cell's name made of grid values), so the folder stays directly under it."""
    if not isinstance(name, str) or name in ("", ".", "..") \
            or any(sep and sep in name for sep in ("/", "\\", os.sep, os.altsep, "\0")):
        raise PromptclimbError(f"{what} {name!r} must be a plain folder name (no '/', not '.' or '..'); "
                               "it names a folder directly under the runs dir (--runs-dir)")
    control = next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if control is not None:  # a line break or a tab in an id broke `runs`' table and `show`'s one-line headings
        raise PromptclimbError(f"{what} {name!r} has a control character ({control!r}); it names a folder that "
                               "`promptclimb runs` and `show` print on one line")
    hidden = next((c for c in name if unicodedata.category(c) == "Cf"), None)
    if hidden is not None:  # U+202E turned 'evil\u202etxt.exe' into 'evilexe.txt' in `runs`; U+200B hid itself
        raise PromptclimbError(f"{what} {name!r} has an invisible formatting character ({hidden!r}); it names a "
                               "folder that `promptclimb runs` and `show` would print as another name")
    return name


def check_run_name(name: str) -> str:
    """A run id names one folder directly under --runs-dir (where `promptclimb runs` looks)."""
    return check_folder_name(name, "--name")


def run_argument(run_dir: str | Path) -> str:
    """How a printed command names a run: its id when it is under ./runs (the default
    --runs-dir), else its path (every command that takes RUN takes a path too)."""
    run_dir = Path(run_dir)
    if run_dir.parent.resolve() == Path("runs").resolve():
        return run_dir.name
    return str(run_dir)


def _holds_run(run_dir: Path) -> bool:
    return (run_dir / CONFIG).exists() or (run_dir / HISTORY).exists()


# The events that score a prompt: a template (with the names then current), and the (template,
# names) pair a names turn kept (`names_change`), whose origin reads "names".
SCORED_EVENTS = ("score", "names_change")


def scored_origin(event: dict) -> str | None:
    """Where a scored prompt (`SCORED_EVENTS`) came from: pool, llm, ..., or names."""
    return "names" if event["event"] == "names_change" else event.get("origin")


def kept_result(summary: dict) -> dict | None:
    """The section of a summary that is the run's result: the adapter where prompt + adapter
    beat the prompt alone on val, else the ensemble where it was chosen, else the best."""
    adapter, winner = summary.get("adapter"), summary.get("winner")
    if isinstance(adapter, dict) and adapter.get("result") == "adapter":
        return adapter
    return summary.get("ensemble") if winner == "ensemble" else summary.get("best")


def ended_with_adapter(result: dict | None, adapter_wanted: bool) -> bool:
    """Whether a run's result (summary.json, or its history's final event) is whole: there,
    and holding the adapter where one was asked for (it is fit after the summary is written,
    so a search stopped in between has not finished: its resume fits it)."""
    return result is not None and (not adapter_wanted or isinstance(result.get("adapter"), dict))


def has_summary(run_dir: Path) -> bool:
    """Whether a run folder holds a summary.json, the mark of a finished run. An empty or blank
    one (a crash between creating and writing it, or `: > summary.json`) holds no result and
    counts as missing: the run has not finished (runs/reading.py's read_summary then reads it
    by its history). One that cannot be read counts as there: its reader names it and why."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return False
    try:  # by its first block: `runs` asks this of every run, and a summary may be megabytes
        with open(path, "rb") as f:
            while block := f.read(1 << 16):
                if block.strip():
                    return True
        return False
    except OSError:
        return True


def _held(run_dir: Path) -> PromptclimbError:
    """A new run refused a folder that holds one, saying what to do with that one: continue it,
    or, finished (summary.json written), read it; there is nothing to resume; or, being
    written by another process now, wait (its resume would be refused as that)."""
    writer = writing_now(run_dir)
    if writer:
        return PromptclimbError(f"{run_dir} already holds a run, {writer}, or give the new run another --name")
    if has_summary(run_dir):
        return PromptclimbError(f"{run_dir} already holds a finished run (read it with: "
                                f"{shell_command('show', run_argument(run_dir))}); give the new run another --name")
    return PromptclimbError(f"{run_dir} already holds a run; continue it with: "
                            f"{shell_command('search', '--resume', run_argument(run_dir))}")


# -- claiming a folder -------------------------------------------------------------------------
RUN, SWEEP = "run", "sweep"


def claim_folder(folder: str | Path, kind: str, create: bool = True) -> Path:
    """The one rule by which a search (`kind` RUN) or a sweep (SWEEP) takes a folder: it does
    not exist (it is created, unless not `create`), or it is empty, or it is provably this
    kind's own. A run's own: only its lock (a search killed before its config.json was
    written) and, in a cell of a sweep (a folder its sweep.json lists), that cell's
    search.log and error.txt. A sweep's own: it holds sweep.json (the sweep then continues
    only with that file's settings, agent/sweep/grid.py). Temp files of a killed write
    are nobody's. Anything else is refused in one line: a search never writes into a
    sweep's folder or a folder of the user's, a sweep never into a run."""
    folder = Path(folder)
    # a sweep's cell is named by its grid point: what is in its place must go, not the cell
    cell = kind == RUN and _is_sweep_cell(folder)
    if folder.exists() and not folder.is_dir():
        way_out = "move it out of the sweep's folder, then rerun the sweep" if cell else "give it another name"
        raise PromptclimbError(f"{folder} is a file, not a folder: the {'sweep cell' if cell else kind} cannot go "
                               f"there; {way_out}")
    if not folder.exists():
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        return folder
    holds_sweep = (folder / SWEEP_FILE).exists()
    if kind == RUN and _holds_run(folder):
        raise _held(folder)
    if kind == RUN and holds_sweep:
        raise PromptclimbError(f"{folder} is a sweep's folder, not a run's "
                               f"({shell_command('sweep-report', folder.name, '--runs-dir', folder.parent)}); "
                               "give the run another --name")
    if kind == SWEEP and holds_sweep:
        return folder
    if kind == SWEEP and _holds_run(folder):
        raise PromptclimbError(f"{folder} holds a run ({shell_command('show', run_argument(folder))}), not a sweep; "
                               "give the sweep another name")
    own = ({LOCK} | ({CELL_LOG, CELL_ERROR} if cell else set())) if kind == RUN else set()
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in own and not _is_temp_file(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        way_out = ("move them out of it, then rerun the sweep" if cell
                   else f"give the {kind} another name, or another --runs-dir")
        raise PromptclimbError(f"{folder} is not empty and not a {kind}'s folder (it holds {shown}); {way_out}")
    return folder


def _is_sweep_cell(folder: Path) -> bool:
    """Whether `folder` is a cell of the sweep in its parent folder (named in its sweep.json)."""
    try:
        cells = json.loads((folder.parent / SWEEP_FILE).read_text(encoding="utf-8")).get("cells")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(cells, list) and folder.name in cells


def _is_temp_file(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")  # agent/core/files.py, write_atomic


# `being_written` takes the lock shared for an instant to look; a writer starting in that
# instant tries again rather than refuse its own run as held by another process.
LOCK_TRIES, LOCK_TRY_EVERY_S = 10, 0.05


def being_written(run_dir: str | Path) -> bool:
    """Whether a search (or `adapt`) holds the run's lock now: `runs` and `show` say "running"
    rather than "unfinished", `mlflow-sync` leaves the MLflow run open."""
    try:
        import fcntl
        handle = open(Path(run_dir) / LOCK, "rb")
    except (ImportError, OSError):
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def writing_now(run_dir: str | Path) -> str:
    """"being written by another promptclimb process (pid N); wait until it has finished"
    while a search (or `adapt`) holds the run's lock; "" when none does."""
    if not being_written(run_dir):
        return ""
    try:
        holder = (Path(run_dir) / LOCK).read_text().strip()
    except OSError:
        holder = ""
    return _writer_said(holder)


def _writer_said(holder: str, doing: str = "being written") -> str:
    """Who holds a run's lock (or a sweep's: `doing` "being run"), and what to do, from the pid
    its lock file holds."""
    if holder == str(os.getpid()):  # a notebook's other thread
        return f"{doing} by this process (pid {holder}: another thread of it); wait until it has finished"
    return f"{doing} by another promptclimb process{f' (pid {holder})' if holder else ''}; wait until it has finished"


def _acquire_lock(run_dir: Path):
    """The run's lock file, locked (flock) by this process; RunLocked when another holds it."""
    handle = open(run_dir / LOCK, "a+")
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one process per run is on the user
        return handle
    for attempt in range(LOCK_TRIES):
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if attempt < LOCK_TRIES - 1:
                time.sleep(LOCK_TRY_EVERY_S)
    else:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise RunLocked(f"{run_dir} is {_writer_said(holder)}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold a run's lock, as the search writing it does: for a command that rewrites a run's
    files from outside the search (`promptclimb adapt`)."""
    handle = _acquire_lock(Path(run_dir))
    try:
        yield
    finally:
        handle.close()  # releases the flock


def lock_holder_said(folder: str | Path, doing: str) -> str:
    """Who holds `folder`'s lock (`lock_folder`), said as a run's holder is."""
    holder = ""
    with suppress(OSError):
        holder = (Path(folder) / LOCK).read_text().strip()
    return _writer_said(holder, doing)


def lock_folder(folder: str | Path):
    """`folder`'s lock file, locked (flock) by this process as a run's writer locks its run's,
    for a folder that is not a run's (a sweep's: agent/sweep/driver.py `sweep_lock`); closing
    it lets go. RunLocked when another process holds it."""
    return _acquire_lock(Path(folder))


class RunStore:
    """Writes (or, on resume, re-reads and continues) one run folder."""

    def __init__(self, run_dir: str | Path, config: dict, stored: list[dict]):
        self.run_dir = Path(run_dir)
        self.config = config
        self.stored = stored  # events found on disk when opened
        self.events: list[dict] = []  # events of this session (stored ones replayed + new)
        self._lock_file = None
        self._history = None
        self._listeners: list[Callable[[dict], None]] = []
        self.start_names: list[str] | None = None  # run_start's, what the compact lines' names differ from
        # what a resume found changed in the evaluator it records (agent/pipeline.py), said when a replay breaks
        self.evaluator_changed = ""

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, run_dir: str | Path, config: dict) -> "RunStore":
        """A new run folder, with its config.json. An existing folder is taken only as
        `claim_folder` allows: empty, or provably this run's own."""
        run_dir = claim_folder(run_dir, RUN)
        store = cls(run_dir, config, [])
        store._lock()
        if _holds_run(run_dir):  # another process created it between the two looks
            store.close()
            raise _held(run_dir)
        store._write_config()
        return store._open_history()

    @classmethod
    def create_numbered(cls, runs_dir: str | Path, base: str, config: dict) -> "RunStore":
        """A new run folder `base`, or `base-2`, `base-3`, ... when that is taken. The folder is
        claimed by mkdir, which only one process can win, so two searches started in the same
        second get a folder each. config["run_id"] is set to the folder's name."""
        runs_dir = Path(runs_dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            run_dir = runs_dir / (base if n == 1 else f"{base}-{n}")
            try:
                run_dir.mkdir()
            except FileExistsError:
                continue
            return cls.create(run_dir, {**config, "run_id": run_dir.name})
        raise AssertionError("unreachable")

    @classmethod
    def resume(cls, run_dir: str | Path) -> "RunStore":
        """A killed (or finished) run, ready to be replayed and continued."""
        from promptclimb.agent.runs.reading import read_history, read_json  # the one reader; it imports this module

        run_dir = Path(run_dir)
        if not (run_dir / CONFIG).exists():
            raise PromptclimbError(f"{run_dir} is not a run folder (no {CONFIG})")
        store = cls(run_dir, {}, [])
        store._lock()  # before reading: another process may be writing
        try:
            store.config = read_json(run_dir / CONFIG)
            store.stored = read_history(run_dir / HISTORY, repair=True)
        except BaseException:
            store.close()
            raise
        store._pass_failures()  # a history that holds nothing but a failure: the search starts it anew
        return store._open_history()

    def update_config(self, **settings) -> None:
        """Add or replace settings in config.json (e.g. the evaluator's description, known
        only once it is built; a budget cap changed on resume)."""
        self.config = {**self.config, **settings}
        self._write_config()

    def _write_config(self) -> None:
        write_json_atomic(self.run_dir / CONFIG, {"v": FORMAT_VERSION, **self.config})

    def _lock(self) -> None:
        self._lock_file = _acquire_lock(self.run_dir)
        remove_dead_temp_files(self.run_dir)  # what a process killed mid-write left here

    def _open_history(self) -> "RunStore":
        # unbuffered: a write a full disk refuses is not kept in a buffer, to fail again at close
        # (which then hid the first error and kept the run's lock held in this process)
        self._history = open(self.run_dir / HISTORY, "ab", buffering=0)
        return self

    def close(self) -> None:
        try:
            if self._history is not None:
                self._history.close()
        except OSError:
            pass  # what was written is on disk: every acknowledged event was fsync'd
        finally:
            self._history = None
            if self._lock_file is not None:
                self._lock_file.close()  # releases the flock
                self._lock_file = None

    def discard(self) -> None:
        """Close and remove a folder this process created that recorded no event: a run
        refused before it began is not left behind as an unfinished one."""
        if self.events or self.stored:
            raise RuntimeError(f"{self.run_dir} holds a run; it is not discarded")
        self.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- events --------------------------------------------------------------------------
    @property
    def replaying(self) -> bool:
        """True while the session is still re-walking events that were already on disk."""
        return len(self.events) < len(self.stored)

    def peek(self) -> dict | None:
        """The stored event the next `append` will be checked against, if any."""
        return self.stored[len(self.events)] if self.replaying else None

    def add_listener(self, listener: Callable[[dict], None]) -> None:
        """Call `listener(event)` after each event written from now on (a live tracker,
        agent/tracking/). Not for the events a resumed run replays: those are on disk
        already. A listener must not raise: its errors would stop the search."""
        self._listeners.append(listener)

    @property
    def compact(self) -> bool:
        """Whether the lines are written in the compact forms of format v2 (agent/runs/compact.py):
        a new history is; one begun in v1 (a run recorded before them, resumed) goes on in v1."""
        return not self.stored or self.stored[0].get("v", 1) >= COMPACT_SINCE

    def stored_of(self, event: str) -> list[dict]:
        return [e for e in self.stored if e["event"] == event]

    def append(self, event: str, **fields) -> dict | None:
        """Record one event (or, while replaying, check it against the stored one and return
        that). Flushed and fsync'd before returning: a kill never loses an acknowledged step.
        None for an event of a kind `ADDED_LATER` while replaying a history that holds another
        event there (one written before that kind existed): nothing is written or checked."""
        if event not in EVENTS:
            raise ValueError(f"unknown history event {event!r}: list it in EVENTS (agent/runs/store.py)")
        if event == FAILED:  # not a step a search replays (a soft-prompt run re-walks its stored events)
            return None
        if event in ADDED_LATER and self.replaying and self.peek()["event"] != event:
            return None
        version = FORMAT_VERSION if self.compact else 1
        record = {"v": version, "seq": len(self.events), "time": round(time.time(), 3), "event": event, **fields}
        if self.replaying:
            stored = self.stored[record["seq"]]
            mine = {k: record.get(k) for k in IDENTITY}
            theirs = {k: stored.get(k) for k in IDENTITY}
            if mine != theirs:
                differ = {k: (theirs[k], mine[k]) for k in IDENTITY if mine[k] != theirs[k]}
                # a newer promptclimb's decoding is nothing a user can put back (agent/pipeline.py data_change)
                undo = "finish it with the promptclimb it began with, or" if DECODING_CHANGED in \
                    self.evaluator_changed else "put it back as it was, or"
                why = (f"Its evaluator changed since the run started: {self.evaluator_changed}. The scores its "
                       f"recorded turns showed the LLM are not those given now: {undo}"
                       if self.evaluator_changed else
                       "The settings, meta-prompts, pools or evaluator changed since the run started, or the "
                       "search's own rules did (a newer promptclimb: docs/results.md says when each came);")
                raise RunMismatch(
                    f"cannot resume {self.run_dir.name}: at event {record['seq']} the history has "
                    f"{_short(theirs)} but the resumed search produced {_short(mine)} "
                    f"(differs in {', '.join(differ)}). {why} start a new run instead."
                )
            self.events.append(stored)
            self._remember_start(stored)
            self._pass_failures()
            return stored
        self._write(record)
        self.events.append(record)
        self._call_listeners(record)
        return record

    def record_failure(self, error: str) -> dict:
        """A `failed` event at the end of the history: the search ended in `error` (one line,
        said without a secret by the caller). Written after every line on disk, also when the
        failure came while a resume was still replaying the history (a score of the replay
        that failed): the status readers give the run is what its last line says."""
        version = FORMAT_VERSION if self.compact else 1
        record = {"v": version, "seq": max(len(self.stored), len(self.events)), "time": round(time.time(), 3),
                  "event": FAILED, "error": error}
        self._write(record)
        (self.stored if self.replaying else self.events).append(record)  # each: as many as the lines on disk
        self._call_listeners(record)
        return record

    def _pass_failures(self) -> None:
        """Past the `failed` events where the replay is now: what a search stopped by an error
        left, which the resumed search does not write again (the lines stay, numbered as they are)."""
        while self.replaying and self.peek()["event"] == FAILED:
            self.events.append(self.peek())

    def _write(self, record: dict) -> None:
        """One line, flushed and fsync'd."""
        assert self._history is not None, "the run store is closed"
        self._remember_start(record)
        line = pack_event(record, self.start_names) if self.compact else record
        data = memoryview((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
        try:
            while data:  # a raw write may take part of it
                data = data[self._history.write(data):]
            os.fsync(self._history.fileno())
        except OSError as exc:  # a full disk: said with the file (a cut line is dropped on resume)
            raise OSError(exc.errno, exc.strerror, str(self.run_dir / HISTORY)) from exc

    def _call_listeners(self, record: dict) -> None:
        for listener in self._listeners:
            listener(record)

    def _remember_start(self, event: dict) -> None:
        if event["event"] == "run_start" and event.get("start_names") is not None:
            self.start_names = list(event["start_names"])

    # -- derived files -------------------------------------------------------------------
    def write_json(self, name: str, obj) -> Path:
        path = self.run_dir / name
        write_json_atomic(path, obj)
        return path

    def write_prompts_csv(self) -> Path:
        """prompts.csv from the events so far: every scored template once per set of class
        names it was scored with (`names`: the classes renamed, "" for the start names), in
        scoring order.
        Not while a resume replays the history: the file already holds what is replayed, and
        a Ctrl-C there would leave it cut short."""
        if self.replaying:
            return self.run_dir / PROMPTS
        import pandas as pd  # only needed here; keeps `import agent.runs.store` light

        rows = []
        for e in self.events:
            if e["event"] not in SCORED_EVENTS:  # a names turn's kept pairs too: the winner was missing
                continue
            row = {k: scored_origin(e) if k == "origin" else e.get(k)
                   for k in ("template", "origin", "source", "restart", "reset", "iteration", "call")}
            row["names"] = renames(self.start_names, e.get("names"))  # "": the start names
            for split, value in sorted(e.get("accuracy", {}).items()):
                row[f"{split}_accuracy"] = value
            for split, value in sorted(e.get("loss", {}).items()):
                row[f"{split}_loss"] = value
            rows.append(row)
        frame = pd.DataFrame(rows, columns=None if rows else ["template", "origin", "source", "restart", "reset", "iteration", "call",
                                                           "names"])
        if rows:  # a pair a names turn kept that undid a rename is the pair scored before it
            frame = frame.drop_duplicates(["template", "names"])
        return write_atomic(self.run_dir / PROMPTS,
                            lambda tmp: frame.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL, float_format="%.6g"))


def _short(identity: dict) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in identity.items() if v is not None) + "}"
