"""The run folder: the search's memory, append-only and resumable.

    runs/<run-id>/
      config.json     every setting, package versions, evaluator.info(), the LLM model and
                      base_url (userinfo stripped); never a key. Written once, at creation.
      history.jsonl   one event per line, flushed and fsync'd before the search goes on
      prompts.csv     every scored template once (rewritten from history as the run goes)
      summary.json    the result (written at the end, see agent/search.py)
      .lock           held (flock) by the process writing the run

history.jsonl, format version 1. Every line has
    v (1), seq (0, 1, 2, ... = line number), time (unix seconds), event
and, where they apply, restart, reset (0-based), iteration (0 = the initial pool,
1.. = LLM turns inside a reset) and call (0-based index of the LLM answer in the run).
Events:
    run_start     run_id
    restart       restart, pool: [templates sampled from the initial pool for it]
    reset         restart, reset (a new conversation; the scoreboard is kept)
    llm_exchange  restart, reset, iteration, call, model, seed, temperature, request_key,
                  messages (only the messages new since this conversation's previous
                  exchange: the conversation is the concatenation of `messages` and `answer`
                  over a reset), n_messages (the whole conversation's length), answer (raw
                  text), usage {prompt_tokens, completion_tokens}, latency_s, cached, source
                  ("llm" | "cache" | "replay")
    score         restart, reset, iteration, call (llm only), template, origin ("pool" |
                  "llm"), source (pool file, or "llm"), accuracy {split: 0..1},
                  loss {split: mean cross-entropy}
    reject        restart, reset, iteration, call, template (the cleaned line), reason
    stop          reason (a budget cap was reached; the search ended early)
    final         stopped, best {template, origin, accuracy, loss}, ensemble
                  {templates, accuracy, loss} or null, top [{template, accuracy, loss}]

Resume: the search is deterministic given (config, evaluator, LLM answers), so a resumed
run simply runs again. A store reopened with `RunStore.resume` knows the events already
written: `append` of an event that is already there checks that it is the same event
(same kind, position, template, request ...) and returns the stored copy instead of
writing it twice; the first new event is appended after them. A different event means
the run cannot be continued (settings, meta-prompts or evaluator changed): `RunMismatch`.
A last line cut short by a kill is dropped (and the file truncated to the last full line).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from pathlib import Path

from promptclimb.agent.errors import PromptclimbError

FORMAT_VERSION = 1
CONFIG, HISTORY, PROMPTS, SUMMARY, LOCK = "config.json", "history.jsonl", "prompts.csv", "summary.json", ".lock"

# The fields that make two events "the same step" when a resumed run replays its history.
# Measured values (time, latency, accuracies read back, usage) are not compared.
IDENTITY = ("event", "restart", "reset", "iteration", "call", "template", "origin", "request_key", "reason", "run_id")


class RunMismatch(PromptclimbError):
    pass


class RunLocked(PromptclimbError):
    pass


def write_json_atomic(path: str | Path, obj) -> None:
    """`obj` as indented JSON at `path`, replaced in one step (never half-written)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run files are meant to be read and shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_history(path: str | Path, repair: bool = False) -> list[dict]:
    """The events of a history file. A damaged *last* line (a kill mid-write) is dropped,
    and with `repair` cut from the file; damage anywhere else is an error."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    events, pos = [], 0
    while pos < len(data):
        newline = data.find(b"\n", pos)
        if newline == -1:
            break  # a last line without its newline was cut short by a kill: drop it
        raw = data[pos:newline]
        if raw.strip():
            try:
                event = json.loads(raw)
                if not isinstance(event, dict) or event.get("seq") != len(events):
                    raise ValueError(f"expected event seq {len(events)}")
            except ValueError as exc:
                if data[newline + 1:].strip():
                    raise PromptclimbError(f"{path}: line {len(events) + 1} is damaged ({exc})") from None
                break  # the last line is damaged: drop it
            events.append(event)
        pos = newline + 1
    good_end = pos
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return events


class RunStore:
    """Writes (or, on resume, re-reads and continues) one run folder."""

    def __init__(self, run_dir: str | Path, config: dict, stored: list[dict]):
        self.run_dir = Path(run_dir)
        self.config = config
        self.stored = stored  # events found on disk when opened
        self.events: list[dict] = []  # events of this session (stored ones replayed + new)
        self._lock_file = None
        self._history = None

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, run_dir: str | Path, config: dict) -> "RunStore":
        """A new run folder; refuses one that already holds a history."""
        run_dir = Path(run_dir)
        if (run_dir / HISTORY).exists():
            raise PromptclimbError(f"{run_dir} already holds a run; continue it with --resume {run_dir.name}")
        run_dir.mkdir(parents=True, exist_ok=True)
        store = cls(run_dir, config, [])
        store._lock()
        write_json_atomic(run_dir / CONFIG, {"v": FORMAT_VERSION, **config})
        return store._open_history()

    @classmethod
    def resume(cls, run_dir: str | Path) -> "RunStore":
        """A killed (or finished) run, ready to be replayed and continued."""
        run_dir = Path(run_dir)
        if not (run_dir / CONFIG).exists():
            raise PromptclimbError(f"{run_dir} is not a run folder (no {CONFIG})")
        config = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
        if config.get("v") != FORMAT_VERSION:
            raise PromptclimbError(f"{run_dir}: run format v{config.get('v')} is not supported (v{FORMAT_VERSION})")
        store = cls(run_dir, config, [])
        store._lock()  # before reading: another process may be writing
        store.stored = read_history(run_dir / HISTORY, repair=True)
        return store._open_history()

    def _lock(self) -> None:
        self._lock_file = open(self.run_dir / LOCK, "a+")
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one process per run is on the user
            return
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            self._lock_file = None
            raise RunLocked(f"{self.run_dir} is being written by another promptclimb process") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()

    def _open_history(self) -> "RunStore":
        self._history = open(self.run_dir / HISTORY, "a", encoding="utf-8")
        return self

    def close(self) -> None:
        if self._history is not None:
            self._history.close()
            self._history = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

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

    def stored_of(self, event: str) -> list[dict]:
        return [e for e in self.stored if e["event"] == event]

    def append(self, event: str, **fields) -> dict:
        """Record one event (or, while replaying, check it against the stored one and return
        that). Flushed and fsync'd before returning: a kill never loses an acknowledged step."""
        record = {"v": FORMAT_VERSION, "seq": len(self.events), "time": round(time.time(), 3), "event": event, **fields}
        if self.replaying:
            stored = self.stored[record["seq"]]
            mine = {k: record.get(k) for k in IDENTITY}
            theirs = {k: stored.get(k) for k in IDENTITY}
            if mine != theirs:
                differ = {k: (theirs[k], mine[k]) for k in IDENTITY if mine[k] != theirs[k]}
                raise RunMismatch(
                    f"cannot resume {self.run_dir.name}: at event {record['seq']} the history has "
                    f"{_short(theirs)} but the resumed search produced {_short(mine)} "
                    f"(differs in {', '.join(differ)}). The settings, meta-prompts, pools or evaluator "
                    "changed since the run started; start a new run instead."
                )
            self.events.append(stored)
            return stored
        assert self._history is not None, "the run store is closed"
        self._history.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._history.flush()
        os.fsync(self._history.fileno())
        self.events.append(record)
        return record

    # -- derived files -------------------------------------------------------------------
    def write_json(self, name: str, obj) -> Path:
        path = self.run_dir / name
        write_json_atomic(path, obj)
        return path

    def write_prompts_csv(self) -> Path:
        """prompts.csv from the events so far: every scored template once, in scoring order."""
        import pandas as pd  # only needed here; keeps `import agent.runstore` light

        rows = []
        for e in self.events:
            if e["event"] != "score":
                continue
            row = {k: e.get(k) for k in ("template", "origin", "source", "restart", "reset", "iteration", "call")}
            for split, value in sorted(e.get("accuracy", {}).items()):
                row[f"{split}_accuracy"] = value
            for split, value in sorted(e.get("loss", {}).items()):
                row[f"{split}_loss"] = value
            rows.append(row)
        path = self.run_dir / PROMPTS
        frame = pd.DataFrame(rows, columns=None if rows else ["template", "origin", "source", "restart", "reset", "iteration", "call"])
        fd, tmp = tempfile.mkstemp(dir=self.run_dir, prefix=".prompts.", suffix=".tmp")
        os.close(fd)
        frame.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL, float_format="%.6g")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return path


def _short(identity: dict) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in identity.items() if v is not None) + "}"
