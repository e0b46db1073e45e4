"""Reading a run folder back: the tables behind `promptclimb runs / show / report / compare`.

The writer (agent/runs/store.py) defines the folder and the history.jsonl event schema; this
module is the one reader of its files, for every command (a damaged file is one line naming
it and what is wrong, never a traceback):
- `read_json`: config.json, summary.json;
- `read_events`: history.jsonl to *look* at a run: every line that parses is used and every
  line that does not is reported as skipped, so a damaged history still shows what it holds;
- `read_history`: history.jsonl to *continue* a run (`RunStore.resume`): strict, every line
  must be a whole event in order, except a last line cut short by a kill.

Format versions: a run folder whose config.json or summary.json says a newer format than
this promptclimb knows is refused with a clear message (`NewerFormat`) rather than read on a
best-effort basis: a newer format may change what a field means, and quietly wrong numbers
are worse than "upgrade promptclimb". Single history lines of a newer version are skipped
and reported like damaged ones. Lines of format v2 are unpacked from their compact forms
(agent/runs/compact.py): every reader gets each event whole, as the search recorded it, from
a v1 history and a v2 one alike.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pandas as pd

from promptclimb.agent.core.classnames import PUBLISHED, renames
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.format import shell_command, shortened
from promptclimb.agent.core.paths import absolute, not_a_folder
from promptclimb.agent.core.protocol import SPLITS
from promptclimb.agent.core.runfiles import SWEEP_FILE
from promptclimb.agent.runs.compact import COMPACT_SINCE, confusion_matrix, unpack_event
from promptclimb.agent.runs.store import (ANSWER_KINDS, CONFIG, EVENTS, FAILED, FORMAT_VERSION, HISTORY, SUMMARY,
                                          being_written, ended_with_adapter, has_summary, kept_result, ledger,
                                          names_scored, run_argument, SCORED_EVENTS, scored_origin, tokens_spent)
from promptclimb.agent.ranking import LEGACY_METRIC, best_first, selection_value, then_value, top_and_bottom
from promptclimb.agent.names import GUARD_NOT_ASKED
from promptclimb.agent.options import check_recorded
from promptclimb.agent.search import SELECTIONS


class NewerFormat(PromptclimbError):
    pass


@dataclass(frozen=True)
class Skipped:
    """A history line that could not be used, and why (line numbers are 1-based)."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


# -- finding runs ---------------------------------------------------------------------------
# `Run.iterations_frame`'s columns, one row per LLM answer.
ITERATION_COLUMNS = ("call", "kind", "restart", "reset", "iteration", "scored", "rejected", "best_new", "best_so_far",
                     "prompt_tokens", "completion_tokens", "latency_s", "cached")


NAMES_COLUMNS = ("class", "start", "found", "changed", *(f"{split}_{when}" for when in ("before", "after")
                                                         for split in ("train", "val", "test")))


def list_run_dirs(runs_dir: str | Path) -> list[Path]:
    """Every folder under `runs_dir` that looks like a run (has a config.json)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted(p for p in runs_dir.iterdir() if p.is_dir() and (p / CONFIG).exists())


def list_sweep_dirs(runs_dir: str | Path) -> list[Path]:
    """Every sweep folder under `runs_dir` (one with a sweep.json): its cells are runs one
    level down, which `list_run_dirs` does not list."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted(p for p in runs_dir.iterdir() if p.is_dir() and (p / SWEEP_FILE).exists())


def find_run(run: str, runs_dir: str | Path) -> Path:
    """A run folder from an id under `runs_dir`, a unique prefix of one, or a path."""
    if not str(run).strip():  # a prefix of every run, and the current folder as a path
        raise PromptclimbError(f"run {run!r}: expected a run folder's path or a run id")
    runs_dir = Path(runs_dir)
    for candidate in (Path(run), runs_dir / run):
        if (candidate / CONFIG).exists():
            return candidate
    known = list_run_dirs(runs_dir)
    matches = [p for p in known if p.name.startswith(run)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise PromptclimbError(f"run {run!r} is ambiguous under {runs_dir}: " + ", ".join(p.name for p in matches))
    for candidate in (Path(run), runs_dir / run):  # a path, or a folder there: say what is wrong with it
        if candidate.exists():
            raise PromptclimbError(not_a_run_folder(candidate))
    if not known and not_a_folder(runs_dir):  # not "holds no runs": a file was given as the runs folder
        raise PromptclimbError(f"no run {run!r}: {runs_dir} (--runs-dir): {not_a_folder(runs_dir)}")
    if Path(run).is_absolute() or len(Path(run).parts) > 1:  # a path: nothing there ("under runs" was not it)
        raise PromptclimbError(f"no run folder {run}: it does not exist")
    if not known:
        raise PromptclimbError(f"no run {run!r}: {runs_dir} holds no runs (use --runs-dir to look elsewhere)")
    names = [p.name for p in sorted(known, key=lambda p: p.stat().st_mtime, reverse=True)]
    shown = ", ".join(names[:10]) + (f" ... ({len(names)} in all)" if len(names) > 10 else "")
    raise PromptclimbError(f"no run {run!r} under {runs_dir}; runs there: {shown}")


def not_a_run_folder(path: Path) -> str:
    """Why `path`, which exists, is not a run folder: a file, a folder of runs, or neither."""
    if not path.is_dir():
        return f"{path} is a file, not a run folder (a run folder holds {CONFIG})"
    if (path / SWEEP_FILE).exists():
        return (f"{path} is a sweep, not a run: {shell_command('sweep-report', str(path))} reports it, "
                f"{shell_command('runs', '--runs-dir', str(path))} lists its runs")
    inside = list_run_dirs(path)
    if inside:
        shown = ", ".join(p.name for p in inside[:3]) + (" ..." if len(inside) > 3 else "")
        return f"{path} is not a run folder but holds runs ({shown}): give one of them"
    return f"{path} is not a run folder (it has no {CONFIG})"


def find_sweep(name: str, runs_dir: str | Path) -> Path | None:
    """A sweep folder (one with a sweep.json) from a path or a name under `runs_dir`, else None."""
    for candidate in (Path(name), Path(runs_dir) / name):
        if (candidate / SWEEP_FILE).exists():
            return candidate
    return None


# -- reading files --------------------------------------------------------------------------
def _check_version(obj: dict, where: Path) -> None:
    version = obj.get("v")
    if not isinstance(version, int):
        raise PromptclimbError(f"{where}: no format version ('v'); not a promptclimb run file")
    if version > FORMAT_VERSION:
        raise NewerFormat(
            f"{where} was written in run format v{version}; this promptclimb reads v{FORMAT_VERSION}. "
            "Upgrade promptclimb to read it."
        )


def read_json(path: str | Path) -> dict:
    """A run's JSON file (config.json, summary.json), or PromptclimbError naming the file and
    what is wrong with it."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PromptclimbError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSON, or not UTF-8
        raise PromptclimbError(f"{path} is damaged (not valid JSON: {exc})") from None
    if not isinstance(obj, dict):
        raise PromptclimbError(f"{path} is damaged (not a JSON object)")
    _check_version(obj, path)
    return obj


# What an event needs to be usable by the readers (see agent/runs/store.py for the schema).
REQUIRED = {
    "score": ("template", "accuracy"),
    "reject": ("template", "reason"),
    "llm_exchange": ("call", "answer"),
    "final": ("best",),
}


def read_events(path: str | Path) -> tuple[list[dict], list[Skipped]]:
    """Every usable event of a history.jsonl, and the lines skipped with the reason."""
    path = Path(path)
    if not path.exists():
        return [], []
    return _parse_events(_read_bytes(path), REQUIRED)


def read_history(path: str | Path, repair: bool = False) -> list[dict]:
    """The events of a history.jsonl, for continuing the run. The last line is dropped when
    it is cut short or damaged (a kill while it was written), and with `repair` cut from the
    file, so that the next event starts a line of its own; a bad line anywhere else is a
    PromptclimbError naming it."""
    path = Path(path)
    if not path.exists():
        return []
    data = _read_bytes(path)
    lines = data.split(b"\n")
    written = [n for n, raw in enumerate(lines, start=1) if raw.strip()]
    if not written:
        return []
    last = written[-1]
    events, skipped = _parse_events(data, required={})  # replayed as recorded, whatever the event
    for s in skipped:
        if s.line != last:
            raise PromptclimbError(f"{path}: line {s.line} is damaged ({s.reason}); the run cannot be continued")
    if lines[-1].strip():  # no newline after the last line: the kill came before it was finished
        events = [e for e in events if e["_line"] != last]
    for seq, event in enumerate(events):
        if event.get("seq") != seq:
            if event["_line"] != last:
                raise PromptclimbError(f"{path}: line {event['_line']} is event seq {event.get('seq')}, "
                                       f"expected {seq}; the run cannot be continued")
            events = events[:seq]
            break
    kept_lines = events[-1]["_line"] if events else 0
    if repair and kept_lines < last:
        with open(path, "r+b") as f:
            f.truncate(sum(len(raw) + 1 for raw in lines[:kept_lines]))
    for event in events:
        del event["_line"]
    return events


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PromptclimbError(f"{path} cannot be read: {exc.strerror or exc}") from None


# A last line with no end of line yet: a search still running is writing it, or one was stopped
# while it was; a reader cannot tell which (the run's lock says nothing on a mount without it).
UNFINISHED_LINE = "incomplete (no end of line: a search still running is writing it, or was stopped while writing it)"


def _parse_events(data: bytes, required: dict) -> tuple[list[dict], list[Skipped]]:
    events, skipped = [], []
    start = None  # run_start's start names: what a compact line's names differ from
    lines = data.split(b"\n")
    cut_short = not data.endswith(b"\n") and data != b""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = number == len(lines)
        try:
            event = json.loads(raw)
        except ValueError as exc:
            why = UNFINISHED_LINE if last and cut_short else f"not valid JSON ({exc})"
            skipped.append(Skipped(number, why))
            continue
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            skipped.append(Skipped(number, "not an event (no 'event' field)"))
            continue
        version = event.get("v")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            skipped.append(Skipped(number, f"format v{version} is not one this promptclimb reads (v{FORMAT_VERSION})"))
            continue
        if version >= COMPACT_SINCE:
            if event["event"] == "run_start" and isinstance(event.get("start_names"), list):
                start = event["start_names"]
            try:
                unpack_event(event, start)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                skipped.append(Skipped(number, f"{event['event']} event not in the compact form of format "
                                               f"v{version} ({exc})"))
                continue
        missing = [k for k in required.get(event["event"], ()) if k not in event]
        if missing or ("accuracy" in required.get(event["event"], ()) and not isinstance(event.get("accuracy"), dict)):
            skipped.append(Skipped(number, f"{event['event']} event without {', '.join(missing) or 'accuracy'}"))
            continue
        event["_line"] = number
        events.append(event)
    return events, skipped


def _number(x) -> bool:
    """A number a table cell holds (not a missing one: None or NaN)."""
    return isinstance(x, numbers.Real) and not math.isnan(x)


# -- checking what a Run's method is given ---------------------------------------------------
# A notebook's slip (winners(-1), confusion("x")) is one PromptclimbError saying what is
# accepted, not a KeyError from deep inside pandas or a table quietly cut short.
def whole_number(value, where: str, what: str, minimum: int) -> int:
    """`value` when it is a whole number of at least `minimum` (True, 2.0 or "3" are refused:
    not guessed at), else PromptclimbError in one line."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise PromptclimbError(f"{where}: {what} {value!r}: expected a whole number of at least {minimum}")
    return int(value)


def one_of(value, where: str, what: str, accepted) -> str:
    """`value` when it is one of `accepted` (names), else PromptclimbError listing them."""
    if not isinstance(value, str) or value not in accepted:
        raise PromptclimbError(f"{where}: {what} {value!r}: expected one of {', '.join(accepted)}")
    return value


# -- one run --------------------------------------------------------------------------------
@dataclass
class Run:
    """One run folder read back (`promptclimb.load_run`). Its tables are pandas frames:

        scores()               every scored template in scoring order, with its accuracy
                               (and loss / prob) per split, `selection` (what it was ranked
                               by) and `best_so_far`
        ranked()               the same, best first, as the search ranks them
        winners(k)             the best k with train / val / test, then the ensemble, and
                               the names each was scored with (winners_said: as show says it)
        iterations_frame()     one row per LLM answer (iterations(): the same as dicts,
                               with what the LLM was shown and what it proposed)
        conversation_frame()   one row per message exchanged with the LLM

    and `config`, `summary`, `events` (history.jsonl) are the files as they are."""

    path: Path
    config: dict
    summary: dict | None
    events: list[dict]
    skipped: list[Skipped] = field(default_factory=list)

    def __repr__(self) -> str:
        # a notebook cell ending in `run` shows this: the dataclass's own repr held every event
        # (55 KB for a 5-answer run)
        return f"Run({str(self.path)!r}, {self.status}, {len(self.events)} events)"

    # identity ------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.path.name

    @property
    def args(self) -> dict:
        return self.config.get("evaluator_args") or {}

    @property
    def dataset(self) -> str | None:
        return self.args.get("dataset") or (self.summary or {}).get("dataset")

    @property
    def shots(self) -> int | None:
        """Training images per class (`run.dataset` and `run.backbone` read so; these were only
        in `run.args`)."""
        return self.args.get("shots")

    @property
    def seed(self) -> int | None:
        return self.args.get("seed")

    @property
    def backbone(self) -> str | None:
        name = self.args.get("backbone")
        if name and self.args.get("pretrained"):
            return f"{name} ({self.args['pretrained']})"
        return name

    @property
    def llm(self) -> str | None:
        llm = self.config.get("llm") or {}
        return llm.get("served_model") or llm.get("model")

    @property
    def answered_by(self) -> list[str]:
        """The models the endpoint said answered, where not the one asked for (an alias answered
        by a dated snapshot, a router's choice), in the order first seen."""
        return list(dict.fromkeys(e["answered_by"] for e in self.answers() if e.get("answered_by")))

    @property
    def select(self) -> str:
        return (self.config.get("search") or {}).get("select") or (self.summary or {}).get("select") or "train"

    @property
    def select_splits(self) -> tuple[str, ...]:
        return SELECTIONS.get(self.select, ("train",))

    @property
    def metric(self) -> str:
        """What the run ranked by (runs from before `--metric` ranked by accuracy)."""
        return (self.config.get("search") or {}).get("metric") or LEGACY_METRIC

    @property
    def ranked_by(self) -> str:
        """e.g. "accuracy on train"; under --metric balance, "balance on unlabeled images,
        then accuracy on train"."""
        if self.metric == "balance":
            return f"balance on unlabeled images, then accuracy on {self.select}"
        return f"{self.metric} on {self.select}"

    @property
    def pool(self) -> str:
        """The initial pool: curated, captions or the file's path."""
        return (self.config.get("pool") or {}).get("name") or "curated"

    @property
    def created(self) -> datetime:
        """When the run started: config.json's `created`, else the folder's time."""
        text = self.config.get("created")
        if text:
            try:
                return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")
            except ValueError:
                pass
        return datetime.fromtimestamp((self.path / CONFIG).stat().st_mtime, tz=timezone.utc)

    @property
    def final(self) -> dict | None:
        """The result: summary.json, else the history's final event (None: not finished)."""
        if self.summary is not None:
            return self.summary
        finals = self.of("final")
        return finals[-1] if finals else None

    @property
    def status(self) -> str:
        """"done", "stopped early" (a budget), or, not ended: "running" (a search holds the
        run), "failed" (its search ended in an error: `failure`), "unfinished" (killed, or
        failed before failures were recorded)."""
        final = self.final
        if not ended_with_adapter(final, bool(self.config.get("adapter_kinds"))):
            # a search holding the run is still at it; one that let go failed, or was stopped
            if being_written(self.path):
                return "running"
            return "failed" if self.failure is not None else "unfinished"
        return "done" if final.get("stopped", "completed") == "completed" else "stopped early"

    @property
    def failure(self) -> str | None:
        """The error the run's last search ended in (its history's last event, `failed`), or
        None: it did not fail, was killed, or a resume has gone on since (its events follow)."""
        last = self.events[-1] if self.events else None
        return str(last.get("error") or "an error") if last is not None and last["event"] == FAILED else None

    @property
    def status_said(self) -> str:
        """`status` with what stopped a run early (`stopped early (budget: ...)`) or the error
        a failed one ended in (`failed (...)`); a run that missed the adapter it asked for is
        unfinished, whatever stopped its search."""
        stopped = (self.final or {}).get("stopped", "")
        status = self.status
        if status == "failed":
            return f"failed ({self.failure})"
        return f"{status} ({stopped})" if status == "stopped early" and stopped.startswith("budget") else status

    def answers(self) -> list[dict]:
        """Every LLM answer of the run, in order: template turns, names turns and the drift
        guard's questions."""
        return [e for e in self.events if e["event"] in ANSWER_KINDS]

    def of(self, kind: str) -> list[dict]:
        """The run's events of one kind (`EVENTS`; any kind its history holds)."""
        held = dict.fromkeys([*EVENTS, *(e["event"] for e in self.events)])
        one_of(kind, "Run.of()", "kind", list(held))
        return [e for e in self.events if e["event"] == kind]

    def names_counted(self) -> tuple[int, int] | None:
        """(names scored, names refused) by the run's names turns, as summary.json counts them
        (a one-class change each); None for a run without names turns."""
        if not self.of("names_exchange"):
            return None
        return names_scored(self.events), len(self.of("name_reject"))

    # tables --------------------------------------------------------------------------------
    def scores(self) -> pd.DataFrame:
        """Every scored template (and every (template, names) pair a names turn kept, origin
        "names", with its `names`), in scoring order, with its accuracy, loss (`<split>_loss`)
        and mean true-class probability (`<split>_prob`) per split, `x` = LLM answers received
        before it was scored (0 for the first pool; call + 1 for a proposal of LLM answer
        `call`) and `selection` = what the search ranks by (`--metric`: accuracy, prob, ...)."""
        rows, calls = [], 0
        for e in self.events:
            if e["event"] in ANSWER_KINDS:
                calls = max(calls, int(e["call"]) + 1)
            if e["event"] not in SCORED_EVENTS:
                continue
            row = {k: scored_origin(e) if k == "origin" else e.get(k)
                   for k in ("restart", "reset", "iteration", "call", "template", "origin", "source")}
            row["names"] = e.get("names")  # None: the start names
            row["x"] = int(e["call"]) + 1 if e.get("call") is not None else calls
            for split, value in e["accuracy"].items():
                row[split] = value
            for split, value in (e.get("loss") or {}).items():
                row[f"{split}_loss"] = value
            for split, value in (e.get("prob") or {}).items():  # the class docstring promised them
                row[f"{split}_prob"] = value
            row["selection"] = selection_value(e["accuracy"], e.get("prob"), self.select_splits, self.metric,
                                               e.get("balance"))
            row["line"] = e["_line"]
            rows.append(row)
        frame = pd.DataFrame(rows)
        if frame.empty:
            return pd.DataFrame(columns=["template", "origin", "x", "selection", "train", "val"])
        frame["best_so_far"] = frame["selection"].cummax()
        return frame

    def ranked(self) -> pd.DataFrame:
        """Scored templates best first, as the search ranks them: selection accuracy, then
        lower cross-entropy on the same splits, then scored earlier."""
        frame = self.scores()
        return frame if frame.empty else self._rank(frame)

    def winners(self, k: int = 5) -> pd.DataFrame:
        """The best k templates with train / val / test accuracy (test exists for the best one
        and the ensemble only: it is computed once, at the end), best first. Each template is
        listed once, at its best place, with the figures of its best names (under --search
        names|both the run scored it with several sets of names), as `transfer` ranks them:
        summary.json's `top` (which holds a template once per set of names, and only as many
        entries as the search kept), then the rest of the run's scores as the search ranks them.
        `origin`: where the template came from (`template_origin`: "pool + names" for a pair a
        names turn kept); `names`: the classes renamed in the names it was scored with, "Trouser
        -> jeans; ..." ("" for the start names; the ensemble's are the best's). The ensemble's
        row (rank "ens") says what it is in `template` ("ensemble of 3 (chosen)"), no template:
        leave it out (`frame[frame["rank"] != "ens"]`) before `evaluate()`; its templates are
        `final["ensemble"]["templates"]`."""
        k = whole_number(k, "Run.winners()", "k", 1)
        final = self.final
        start = self.start_names
        rows = []
        if final is not None:
            top, listed = [], set()
            for t in final.get("top") or [final["best"]]:
                if t.get("template") not in listed:
                    listed.add(t.get("template"))
                    top.append(t)
            if len(top) < k:  # the summary keeps the best few: the history ranks the rest
                for row in self.ranked().drop_duplicates("template").to_dict("records"):
                    if len(top) >= k:
                        break
                    if row["template"] not in listed:
                        listed.add(row["template"])
                        top.append({"template": row["template"], "origin": row.get("origin"),
                                    "names": names_of(row),
                                    "accuracy": {s: row[s] for s in ("train", "val") if _number(row.get(s))}})
            for i, t in enumerate(top[:k], start=1):
                acc = dict(t.get("accuracy") or {})
                if t.get("template") == final["best"].get("template"):
                    acc = {**acc, **(final["best"].get("accuracy") or {})}
                rows.append({"rank": i, "template": t.get("template"),
                             "origin": self.template_origin(t.get("template"), t.get("origin")),
                             "names": renames(start, t.get("names")), **acc})
            ensemble = final.get("ensemble")
            if ensemble:
                verdict = "" if "chosen" not in ensemble else " (chosen)" if ensemble["chosen"] else " (candidate)"
                rows.append({"rank": "ens", "template": f"ensemble of {len(ensemble['templates'])}{verdict}",
                             "origin": "top-k", "names": renames(start, final["best"].get("names")),  # the best's
                             **(ensemble.get("accuracy") or {})})
        else:  # an unfinished run: rank what was scored (no test accuracy yet)
            for i, row in enumerate(self.ranked().drop_duplicates("template").head(k).to_dict("records"), start=1):
                rows.append({"rank": i, "template": row["template"],
                             "origin": self.template_origin(row["template"], row.get("origin")),
                             "names": renames(start, names_of(row)),
                             **{s: row[s] for s in ("train", "val") if s in row}})
        frame = pd.DataFrame(rows, columns=["rank", "template", "origin", "train", "val", "test", "names"])
        return frame

    @property
    def start_names(self) -> list[str] | None:
        """The names the search started from: its history's run_start (what the names of its
        events, and prompts.csv, differ from), else its result's names table (a history
        written before run_start held them), else what its evaluator recorded."""
        start = next((e["start_names"] for e in self.events if e["event"] == "run_start"
                      and isinstance(e.get("start_names"), list)), None)
        table = (self.final or {}).get("names") or {}
        return start or (table.get("start") if isinstance(table.get("start"), list) else None) or \
            run_start_names(self.config)

    @property
    def held_names(self) -> list[str] | None:
        """The names the run's templates go with: its result's, or, of a run not ended, those
        its last kept names change holds; None for its start names."""
        if self.final is not None:
            return (self.final.get("best") or {}).get("names")
        held = self.of("names_change")
        return held[-1].get("names") if held else None

    def winners_said(self, k: int = 5) -> pd.DataFrame:
        """`winners(k)` as `show` and the report list them: `names` says which names each row
        was scored with, "found" (`held_names`: the run's result, or the names a run not ended
        holds now), "start" or "earlier" (a names search's pool and early templates keep the
        names they were scored with: its rows mix them); no column for a run that renamed
        nothing."""
        frame = self.winners(k)
        if not frame["names"].astype(bool).any():
            return frame.drop(columns="names")
        found = renames(self.start_names, self.held_names)
        said = {found: "found", "": "start"}  # the start names are never "found": nothing renamed
        return frame.assign(names=[said.get(names, "earlier") for names in frame["names"]])

    def template_origin(self, template: str | None, origin: str | None) -> str | None:
        """Where a winner's template came from, as `show` and the report list it. The search
        tags the (template, names) pair a names turn kept "names" (summary.json, `scores()`),
        which said nothing of the template: a names turn only re-scores the best template
        under new names. Such a pair is its template's own origin, renamed: "pool + names"
        (or "llm + names"; "names" alone where the history holds no score of the template)."""
        if origin != "names":
            return origin
        first = next((e.get("origin") for e in self.events if e["event"] in ("score", "shared")
                      and e.get("template") == template and e.get("origin") not in (None, "names")), None)
        return origin if first is None else f"{first} + names"

    def _rank(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`frame`'s rows best first, sorted as the search sorts its scoreboard
        (agent/ranking.py `best_first`): selection value, then lower cross-entropy on the
        selection splits, then scored earlier: (restart, line), as the search's (restart,
        position on its board)."""
        splits = self.select_splits
        rows = frame.to_dict("records")

        def loss(i: int) -> dict:  # as the score event holds it: the splits that have a number
            return {s: rows[i][f"{s}_loss"] for s in splits if _number(rows[i].get(f"{s}_loss"))}

        def order(i: int) -> tuple:
            restart, line = rows[i].get("restart"), rows[i].get("line")
            return (restart if _number(restart) else 0, line if _number(line) else i)

        def then(i: int) -> float | None:  # accuracy on the selection splits, under --metric balance
            return then_value({s: rows[i][s] for s in splits if _number(rows[i].get(s))}, splits, self.metric)

        positions = best_first(range(len(rows)), splits, value=lambda i: rows[i]["selection"], loss=loss, order=order,
                               then=then)
        return frame.iloc[positions].reset_index(drop=True)

    def scoreboard(self, restart: int, before_line: int) -> tuple[list[dict], list[dict]]:
        """The top-k and bottom-k templates the LLM was shown at a point of the run: the
        restart's board then (its pool sample under the start names, what the LLM proposed in
        that restart so far, scored there or, a shared event says, by another restart first,
        and each (template, names) pair a names turn kept), ranked as the search ranks it,
        each template once, at its best place: a renamed template with the figures of its
        names then, not of its first score (rebuilt from the events, not parsed back from the
        prompt text, which users may rewrite). A history written before shared events existed
        misses, on a later restart's board, the proposals an earlier one had scored.
        `restart`: one of the run's restarts; `before_line`: a history line (1-based; past the
        last: the board at the end)."""
        restart = whole_number(restart, "Run.scoreboard()", "restart", 0)
        restarts = sorted({e["restart"] for e in self.events if isinstance(e.get("restart"), int)})
        if restart not in restarts:
            raise PromptclimbError(f"Run.scoreboard(): restart {restart!r}: expected one of the run's restarts "
                                   f"({', '.join(map(str, restarts)) or 'it has none'})")
        return self._board(restart, whole_number(before_line, "Run.scoreboard()", "before_line", 1))

    def _board(self, restart, before_line: int) -> tuple[list[dict], list[dict]]:
        """`scoreboard` for a restart and line the history gave (not checked again)."""
        scores = self.scores()
        if scores.empty:
            return [], []
        pools = [e.get("pool") or [] for e in self.of("restart") if e.get("restart") == restart]
        pool = set(pools[-1]) if pools else set(scores.loc[scores["origin"] == "pool", "template"])
        start_names = scores["names"].isna() if "names" in scores else pd.Series(True, index=scores.index)
        in_pool = scores[start_names & scores["template"].isin(pool)].drop_duplicates("template")
        own = scores[scores["origin"].isin(["llm", "names"]) & (scores["restart"] == restart)
                     & (scores["line"] < before_line)]
        shared = self._shared(scores)  # its proposals another restart had scored first
        shared = shared[(shared["restart"] == restart) & (shared["line"] < before_line)] if not shared.empty else shared
        if not shared.empty:
            own = pd.concat([own, shared])
        board = self._rank(pd.concat([in_pool, own])).drop_duplicates("template")  # first = best place
        search = self.config.get("search") or {}
        top_k, bottom_k = int(search.get("top_k", 3)), int(search.get("bottom_k", 3))
        rows = [{"template": r.template, "selection": r.selection} for r in board.itertuples()]
        return top_and_bottom(rows, top_k, bottom_k)

    def _shared(self, scores: pd.DataFrame) -> pd.DataFrame:
        """The shared events (agent/runs/store.py) as rows of `scores`: a proposal a restart put
        on its board with the figures another restart's event recorded (the first of the same
        template and names), at the shared event's place (restart, call, line). Empty for a
        history without them (written before they existed: such a board misses those)."""
        rows = []
        first = {}
        for row in scores.to_dict("records"):
            first.setdefault((row["template"], _names_key(row.get("names"))), row)
        for e in self.of("shared"):
            scored = first.get((e.get("template"), _names_key(e.get("names"))))
            if scored is not None:
                rows.append({**scored, **{k: e.get(k) for k in ("restart", "reset", "iteration", "call", "origin",
                                                                  "source")}, "line": e["_line"]})
        return pd.DataFrame(rows, columns=scores.columns)

    def answer_ends(self) -> dict[int, int]:
        """Per LLM answer (its `call`): the history line up to which its best so far counts:
        its own last event (a names turn's kept change is written after the guard's answers
        inside the turn), and never a line before the end of the answer before it (so a guard
        answer counts the change of its turn). The best so far never falls, and after a turn
        it is what the console said then."""
        last: dict[int, int] = {}
        for e in self.events:
            if e.get("call") is not None:
                last[int(e["call"])] = max(last.get(int(e["call"]), 0), e["_line"])
        ends, reached = {}, 0
        for ex in self.answers():
            if ex.get("call") is not None:
                reached = max(reached, last[int(ex["call"])])
                ends[int(ex["call"])] = reached
        return ends

    def open_turn(self) -> set[int]:
        """The calls of the history's last turn (a template or names turn's answer and the
        guard's answers inside it) while nothing but that turn's own events (same restart,
        reset and iteration) follows its answer: a search writing the run may still be
        scoring it, or keep a names change after it. Empty once anything else follows."""
        openers = [e for e in self.events if e["event"] in ("llm_exchange", "names_exchange")]
        if not openers:
            return set()
        opener = openers[-1]
        place = tuple(opener.get(k) for k in ("restart", "reset", "iteration"))
        # a failure closes no turn: a resume completes it (the turn stays open, as a killed one)
        after = [e for e in self.events if e["_line"] > opener["_line"] and e["event"] != FAILED]
        if any(tuple(e.get(k) for k in ("restart", "reset", "iteration")) != place for e in after):
            return set()
        return {int(e["call"]) for e in [opener, *after] if e["event"] in ANSWER_KINDS and e.get("call") is not None}

    def iterations(self) -> list[dict]:
        """One entry per LLM answer, of every kind ("template", "names", "guard": the drift
        guard's question): where it was, what the LLM was shown (a template turn: the
        scoreboard's top and bottom), what it answered, what was scored (a template turn: a
        proposal another restart had scored first too, with that score, as the console and
        the next prompt said) and what rejected (and why; a names turn: "Class -> name" for
        each one-class change), and the best so far after it."""
        scores = self.scores()
        shared = self._shared(scores) if not scores.empty else scores
        proposed = pd.concat([scores, shared]) if not shared.empty else scores  # a turn's, scored by it or before
        ends = self.answer_ends()
        out = []
        kinds = ANSWER_KINDS
        for ex in self.answers():
            call = int(ex["call"])
            if ex["event"] == "llm_exchange":
                scored = proposed[proposed["call"] == call] if "call" in proposed else proposed.iloc[0:0]
                rejects = [e for e in self.of("reject") if e.get("call") == call]
                top, bottom = self._board(ex.get("restart"), ex["_line"])
            else:
                scored, rejects, top, bottom = self._names_answer(ex, call)
            # best so far = over everything recorded up to the end of this answer (`answer_ends`)
            upto = scores[scores["line"] <= ends[call]] if "line" in scores else scores
            usage = tokens_spent(ex)
            out.append({
                "call": call, "kind": kinds[ex["event"]], "restart": ex.get("restart"), "reset": ex.get("reset"),
                "iteration": ex.get("iteration"),
                "shown_top": top, "shown_bottom": bottom,
                "answer": ex.get("answer", ""),
                "scored": [{"template": r.template, "selection": r.selection,
                            **{s: getattr(r, s) for s in ("train", "val") if hasattr(r, s)}}
                           for r in self._rank(scored).itertuples()] if not scored.empty else [],
                "rejected": [{"template": e["template"],
                              "reason": e["reason"] + (f" ({e['detail']})" if e.get("detail") else "")}
                             for e in rejects],
                "best_so_far": float(upto["selection"].max()) if not upto.empty else math.nan,
                "best_template": self._rank(upto)["template"].iloc[0] if not upto.empty else None,
                "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
                "latency_s": ex.get("latency_s"), "source": ex.get("source"), "cached": bool(ex.get("cached")),
            })
        return out

    def _names_answer(self, ex: dict, call: int) -> tuple[pd.DataFrame, list[dict], list, list]:
        """A names turn's (or the guard's) scored one-class changes as rows shaped like
        scored templates ("Class -> name"), its refused names, and no scoreboard."""
        rows = []
        for e in self.of("name_score"):
            if e.get("call") == call and len(e.get("changes") or ()) == 1:
                change = e["changes"][0]
                rows.append({"template": f"{change['from']} -> {change['to']}", "line": e["_line"],
                             "selection": selection_value(e.get("accuracy") or {}, e.get("prob") or {},
                                                          self.select_splits, self.metric, e.get("balance")),
                             **{s: (e.get("accuracy") or {}).get(s) for s in ("train", "val")},
                             "loss": (e.get("loss") or {}).get(self.select_splits[0], math.nan), "order": e["_line"]})
        rejects = [{"template": e.get("name", ""), "reason": e.get("reason", ""), "_line": e["_line"]}
                   for e in self.of("name_reject") if e.get("call") == call]
        return pd.DataFrame(rows, columns=["template", "line", "selection", "train", "val", "loss", "order"]), \
            rejects, [], []

    def iterations_frame(self) -> pd.DataFrame:
        """`iterations()` as a table, one row per LLM answer: where it was, how many of its
        templates were scored and rejected, the best of them, the best so far, its cost."""
        rows = []
        for it in self.iterations():
            best_new = max((s["selection"] for s in it["scored"]), default=math.nan)
            rows.append({k: it[k] for k in ("call", "kind", "restart", "reset", "iteration")}
                        | {"scored": len(it["scored"]), "rejected": len(it["rejected"]), "best_new": best_new,
                           "best_so_far": it["best_so_far"], "prompt_tokens": it["prompt_tokens"],
                           "completion_tokens": it["completion_tokens"], "latency_s": it["latency_s"],
                           "cached": it["cached"]})
        return pd.DataFrame(rows, columns=ITERATION_COLUMNS)  # a run without answers: no rows, the same columns

    def conversation(self) -> list[dict]:
        """The raw exchanges, of every kind of answer ("template", "names", "guard"): per LLM
        answer, the messages sent since the previous answer of its conversation (a names turn
        and a guard question are conversations of their own), then the answer. (A template
        turn's request repeats the previous answer as its first new message; it is shown once,
        as that answer.)"""
        return [{"call": ex["call"], "kind": ANSWER_KINDS[ex["event"]], "restart": ex.get("restart"),
                 "reset": ex.get("reset"), "iteration": ex.get("iteration"), "answer": ex.get("answer", ""),
                 "answered_by": ex.get("answered_by"),  # where the endpoint named another model
                 "messages": [m for m in ex.get("messages") or [] if m.get("role") != "assistant"]}
                for ex in self.answers()]

    def conversation_frame(self) -> pd.DataFrame:
        """`conversation()` as a table, one row per message (the answers as `assistant` rows),
        in the order they were exchanged."""
        rows = []
        for ex in self.conversation():
            place = {k: ex[k] for k in ("call", "kind", "restart", "reset", "iteration")}
            rows += [place | {"role": m.get("role"), "content": m.get("content")} for m in ex["messages"]]
            rows.append(place | {"role": "assistant", "content": ex["answer"]})
        return pd.DataFrame(rows, columns=["call", "kind", "restart", "reset", "iteration", "role", "content"])

    def ledger(self) -> dict:
        """LLM cost of the run: from summary.json, else counted from the history."""
        if self.summary and self.summary.get("ledger"):
            return self.summary["ledger"]
        return ledger(self.events)

    def names(self) -> pd.DataFrame:
        """The class names the search started from and found (summary.json "names"), one row
        per class: start, found, changed, and the accuracy on each split with the start and
        the found names (the winning template both times). No rows (the same columns) for a
        run that searched the template only, a soft-prompt run, or one not ended (its result
        holds the table; `winners_said` has the names it holds so far)."""
        table = (self.final or {}).get("names") or {}
        rows = []
        for c in table.get("classes") or []:
            row = {"class": c["class"], "start": c["start"], "found": c["found"], "changed": c["changed"]}
            for when in ("before", "after"):
                row |= {f"{split}_{when}": value for split, value in c["accuracy"][when].items()}
            rows.append(row)
        # `names()["found"]` of a run without the table was a KeyError
        return pd.DataFrame(rows, columns=None if rows else NAMES_COLUMNS)

    def confusion(self, split: str = "test") -> dict[str, pd.DataFrame]:
        """The confusion matrices with the start and the found names ("before", "after"):
        rows the true class, columns the predicted one, labelled with the start names; empty
        for a run that searched the template only. `split`: train, val or test."""
        one_of(split, "Run.confusion()", "split", SPLITS)
        table = (self.final or {}).get("names") or {}
        labels = table.get("start") or []
        return {when: pd.DataFrame(confusion_matrix(table, when, split), index=labels, columns=labels)
                for when in ("before", "after") if table.get("confusion")}

    def names_turns(self) -> list[dict]:
        """Each names turn: which classes were asked about, every proposed name scored (the
        selection value of its one-class change) or refused (the reason), the changes kept,
        the combinations of its picks not kept ({changes, reason, detail}), and `cut`: why
        the LLM budget ended the run in this turn before the drift guard could be asked about
        `unguarded` (scored changes, as in `scored`, not kept for that), or None."""
        turns = {}
        for e in self.events:
            if e["event"] == "names_exchange":
                turns[e["call"]] = {"call": e["call"], "restart": e.get("restart"), "reset": e.get("reset"),
                                    "iteration": e.get("iteration"), "asked": e.get("asked") or [], "scored": [],
                                    "refused": [], "kept": [], "combinations_refused": [], "cut": None,
                                    "unguarded": []}
            elif e["event"] in ("name_score", "name_reject", "names_change") and e.get("call") in turns:
                turn = turns[e["call"]]
                if e["event"] == "name_reject":
                    turn["refused"].append({"name": e.get("name"), "label": e.get("label"), "reason": e.get("reason")})
                    if e.get("reason") == GUARD_NOT_ASKED:  # its name_score came before it
                        turn["cut"] = e.get("detail")
                        turn["unguarded"] += [s for s in turn["scored"]
                                              if s.get("class") == e.get("class") and s.get("to") == e.get("name")]
                elif e["event"] == "names_change":
                    turn["kept"] += e.get("changes") or []
                    turn["combinations_refused"] += e.get("refused_combinations") or []
                elif len(e.get("changes") or ()) == 1:
                    value = selection_value(e.get("accuracy") or {}, e.get("prob") or {}, self.select_splits,
                                            self.metric, e.get("balance"))
                    turn["scored"].append({**e["changes"][0], "selection": value})
        return list(turns.values())

    def transfers(self) -> list[dict]:
        """The transfers made from this run (`promptclimb transfer`: transfer-<backbone>.json
        summaries, by file name); a file that cannot be read is left out, and named with the
        reason by `unreadable_transfers()`."""
        return self._read_transfers()[0]

    def unreadable_transfers(self) -> list[str]:
        """'<file>: <why>' for each transfer-*.json that cannot be read (`show` and `report`
        warn about them instead of leaving them out silently)."""
        return self._read_transfers()[1]

    def _read_transfers(self) -> tuple[list[dict], list[str]]:
        good, bad = [], []
        for path in sorted(self.path.glob("transfer-*.json")):
            try:
                summary = json.loads(path.read_text(encoding="utf-8"))
            except OSError as exc:
                bad.append(f"{path}: cannot be read ({exc.strerror or exc})")
                continue
            except ValueError as exc:  # not JSON, or not UTF-8
                bad.append(f"{path}: damaged (not valid JSON: {exc})")
                continue
            if not isinstance(summary, dict) or any(not isinstance(summary.get(k), dict) for k in TRANSFER_PARTS):
                bad.append(f"{path}: not a transfer summary (written by promptclimb transfer)")
                continue
            good.append(summary)
        return good, bad


def _names_key(names) -> tuple | None:
    """A row's or an event's class names as a key (None, or NaN in a frame: the start names)."""
    return tuple(names) if isinstance(names, (list, tuple)) else None


def run_classnames(summary: dict) -> list[str] | None:
    """The class names a run's result is written with: the names its search found, or
    the start names it recorded; None for a run that records neither (a soft prompt)."""
    best = summary.get("best") or {}
    if best.get("names"):
        return list(best["names"])
    return None


def names_of(row: dict) -> list[str] | None:
    """The names a row of `Run.scores()` was scored with (None: the start names; pandas reads
    a missing one as NaN)."""
    names = row.get("names")
    return names if isinstance(names, (list, tuple)) else None


def run_start_names(config: dict) -> list[str] | None:
    """The names a run started from, as its evaluator recorded them (None: not recorded)."""
    recorded = (config.get("evaluator") or {}).get("dataset")
    return recorded.get("classnames") if isinstance(recorded, dict) else None


def run_labels(config: dict) -> list[str] | None:
    """The labels of the data a run was searched on, in its class order: those its evaluator
    recorded beside start names of its own (--classnames clean or FILE), else its start names
    where it started from the data's own labels (no --classnames, or `published`); None for a
    run that started from names of its own before the labels were recorded, or recorded none."""
    recorded = (config.get("evaluator") or {}).get("dataset")
    if isinstance(recorded, dict) and recorded.get("labels"):
        return list(recorded["labels"])
    labels = run_start_names(config)
    own_labels = (config.get("evaluator_args") or {}).get("classnames") in (None, PUBLISHED)
    return list(labels) if labels and own_labels else None


def run_names_by_label(config: dict, summary: dict) -> dict[str, str] | list[str] | None:
    """The names a run's templates go with, for scoring them again: keyed by the dataset's
    own labels where the run's are known (`run_labels`; so that other data, `--data-root
    DIR`, must hold the same classes, in any order), else in class order (`run_classnames`).
    A summary without names (`{}`) keys the start names."""
    names = run_classnames(summary)
    labels = run_labels(config)
    start = run_start_names(config) or labels
    if labels and len(labels) == len(names or start):
        return dict(zip(labels, names or start))
    return names


def start_names_as_built(config: dict) -> dict[str, str] | tuple[str, ...] | None:
    """The names a run started from, as its evaluator is built again (a resume, `adapt`,
    `transfer`): keyed by the labels of its data where it knows them, so that data whose
    classes changed since is refused by class (`names_by_label`) where names in class order
    went to other classes' images; else in class order; None where none were recorded. Not
    a names file or the data's labels read again: a file edited or deleted since, or labels a
    newer promptclimb reads otherwise (WordNet IDs), would change the run."""
    start = run_names_by_label(config, {}) or run_start_names(config)
    return start if isinstance(start, dict) or not start else tuple(start)


def warn_names_by_position(run_dir: str | Path, config: dict, data: dict, remedy: str) -> None:
    """A warning where a run's names go to other data's classes by position: the run started
    from names of its own (--classnames clean or FILE) before the labels they name were
    recorded beside them (`run_labels`), so nothing tells which class each name is. `data`:
    the dataset, data_root, image_column and label_column scored on; `remedy`: how the
    command at hand matches the names by class (`eval` and `transfer` differ)."""
    import warnings

    if runs_own_data(config, data):
        return  # its classes in the run's order
    spec = (config.get("evaluator_args") or {}).get("classnames")
    started = f"--classnames {spec}" if isinstance(spec, str) else "names of its own"
    warnings.warn(f"{Path(run_dir).name} started from {started} and recorded no labels for its names (a run "
                  f"started before they were recorded): its names are filled in to "
                  f"the classes of {data.get('data_root') or data.get('dataset')} by position; {remedy}", stacklevel=3)


def without_root(identity: str, root: str | None) -> str:
    """A folder dataset's identity less the folder's path it starts with (the rest: its
    files and how they are decoded): a copy or a move of the folder is the same data."""
    return identity[len(root) + 1:] if root and identity.startswith(f"{root}:") else identity


def runs_own_data(config: dict, data: dict) -> bool:
    """Whether `data` (dataset, data_root, image_column, label_column) is a run's own."""
    own = config.get("evaluator_args") or {}
    given = {**data, "data_root": absolute(data.get("data_root"))}  # `DIR/` or a relative path: the same folder
    return all(given.get(key) == own.get(key) for key in ("dataset", "data_root", "image_column", "label_column"))


def warn_other_split(run_dir: str | Path, config: dict, data: dict, split: dict) -> None:
    """A warning where the few-shot split just drawn from a run's own data (`data`, as
    `runs_own_data` takes it; `split`: the evaluator's `info()["split"]`, for the run's shots
    and seed) is not the one the run recorded: images were added to, removed from or renamed
    in its data folder since, and `eval --run`, `adapt` and `transfer` scored other images
    than the run's, unsaid."""
    import warnings

    if not runs_own_data(config, data):
        return  # other data given on purpose (--data-root, --dataset)
    changed = splits_drawn_otherwise(config, split)
    if changed:
        warnings.warn(f"{images_drawn_otherwise(run_dir, changed)}: these figures are not comparable with the run's",
                      stacklevel=3)


def check_class_order(run_dir: str | Path, config: dict, info: dict) -> None:
    """PromptclimbError where a run's classes, the same ones, now come in another order in its
    data (`info`: its evaluator's `info()`, whose start names are the run's put in the data's
    class order by label; class folders renamed since): a resume replays names and scores by
    class order, and `adapt` fits on names in it. Said by the data's labels, which the user
    renames (a run's own start names are not)."""
    started, dataset = run_start_names(config), info.get("dataset") or {}
    now = dataset.get("classnames")
    if not started or not now or list(now) == list(started) or len(now) != len(started):
        return
    moved = next(i for i, (a, b) in enumerate(zip(now, started)) if a != b)
    labels_now, labels_then = dataset.get("labels") or now, run_labels(config) or started
    raise PromptclimbError(f"{Path(run_dir).name}'s classes now come in another order than when it started (a class "
                           f"folder or label renamed since?): class {moved + 1} is {labels_now[moved]!r}, the run's "
                           f"was {labels_then[moved]!r}; give them back their names to go on with it")


def splits_drawn_otherwise(config: dict, split: dict) -> list[str]:
    """The splits whose images, drawn now (`split`: an evaluator's `info()["split"]`), are not
    those a run (`config`) recorded for the same shots and seed; [] where either describes
    none (a run killed before its evaluator was described, an evaluator that describes no
    split) or another split was asked for (--shots, --seed)."""
    recorded = (config.get("evaluator") or {}).get("split")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("ids_sha256"), dict):
        return []
    if (recorded.get("shots"), recorded.get("seed")) != (split.get("shots"), split.get("seed")):
        return []
    now = split.get("ids_sha256") or {}
    # the splits both drew (a --metric balance run's unlabeled images are drawn by its search only)
    return [s for s, digest in recorded["ids_sha256"].items() if s in now and now[s] != digest]


def images_drawn_otherwise(run_dir: str | Path, changed: Sequence[str]) -> str:
    """`splits_drawn_otherwise`'s finding, said (eval, adapt, transfer and a resume alike)."""
    return (f"the {', '.join(changed)} images drawn now from {Path(run_dir).name}'s data are not the ones it was "
            "searched on (images added, removed or renamed, or labels changed, in its data since; or a folder without "
            "train/ and test/ renamed: its split is drawn by its name)")


def load_run(path: str | Path) -> Run:
    """A run folder read back (NewerFormat / PromptclimbError for what cannot be read)."""
    path = Path(path)
    config = read_json(path / CONFIG)
    check_config(config, path / CONFIG)
    summary = read_summary(path)
    events, skipped = read_events(path / HISTORY)
    return Run(path, config, summary, events, skipped)


def read_summary(run_dir: Path) -> dict | None:
    """A run's summary.json, checked (`check_summary`), or None where it holds no result
    (`has_summary`: missing, or empty). The readers then go by the history, as for a run
    that has not finished."""
    if not has_summary(run_dir):
        return None
    try:
        summary = read_json(run_dir / SUMMARY)
        check_summary(summary, run_dir / SUMMARY)
    except PromptclimbError as exc:
        if not has_history(run_dir):
            raise
        # the history holds the result: a resume of the run replays it and writes the summary again
        raise PromptclimbError(f"{exc}; write it again from the run's history with: "
                               f"{shell_command('search', '--resume', run_dir)}") from None
    return summary


def has_history(run_dir: Path) -> bool:
    """Whether the run's history.jsonl holds anything."""
    try:
        return (Path(run_dir) / HISTORY).stat().st_size > 0
    except OSError:
        return False


# The parts of config.json the readers (and a resume) open as objects.
CONFIG_SECTIONS = ("search", "evaluator_args", "evaluator", "llm", "pool", "soft_prompt")


def check_config(config: dict, path: Path) -> None:
    """PromptclimbError naming the file when a part of the settings that readers use is not
    what a run records (a hand-edited config.json: "llm": "x", metric "nope", shots "x"), not
    an AttributeError, ValueError or TypeError in whichever reader opens it."""
    for key in CONFIG_SECTIONS:
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise PromptclimbError(f"{path} is damaged ({key!r} is {shortened(json.dumps(config[key]), 40)}, "
                                   "not an object)")
    # what a reader ranks by, and what `eval --run`, `adapt` and `transfer` build the evaluator from
    check_recorded(config, path, ("search.metric", "evaluator_args."))


# The result's parts every reader opens (`Run.final`): what each must be, as said in an error.
SUMMARY_SHAPE = {"best": (dict, "an object"), "ensemble": ((dict, type(None)), "an object or null"),
                 "top": (list, "a list"), "names": ((dict, type(None)), "an object or null"),
                 "ledger": (dict, "an object")}
# Lists in it whose entries every reader opens as objects: (part, key of its list or None).
SUMMARY_LISTS = (("top", None), ("names", "classes"))


def check_summary(summary: dict, path: Path) -> None:
    """PromptclimbError naming the file when a part of the result is missing or not what it
    must be (a hand-edited or damaged summary.json), not a KeyError or AttributeError in
    whichever reader opens it."""
    if "best" not in summary:  # every search writes it (the template that won)
        raise PromptclimbError(f"{path} is damaged (no 'best': the result it should hold)")
    for key, (kind, said) in SUMMARY_SHAPE.items():
        if key in summary and not isinstance(summary[key], kind):
            raise PromptclimbError(f"{path} is damaged ({key!r} is {shortened(json.dumps(summary[key]), 40)}, not {said})")
    if not isinstance(summary["best"].get("template"), str):  # what show, eval --run and adapt read of it
        raise PromptclimbError(f"{path} is damaged ('best' has no template: "
                               f"{shortened(json.dumps(summary['best']), 40)})")
    for part, key in SUMMARY_LISTS:
        entries = summary.get(part) if key is None else (summary.get(part) or {}).get(key, [])
        name = part if key is None else f"{part}.{key}"
        if entries is not None and (not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries)):
            raise PromptclimbError(f"{path} is damaged ({name!r} is {shortened(json.dumps(entries), 40)}, "
                                   "not a list of objects)")


# What a transfer-<backbone>.json must hold to be shown (agent/api.py, transfer_summary).
TRANSFER_PARTS = ("target", "rank_correlation", "winner", "baseline", "target_best", "files")


# -- all runs -------------------------------------------------------------------------------
RUNS_COLUMNS = ["id", "dataset", "backbone", "shots", "seed", "llm", "best template", "train", "test", "result",
                "result test", "llm answers", "date", "status"]


def result_said(summary: dict | None) -> tuple[str | None, float | None]:
    """What a finished run keeps as its result (`kept_result`: an adapter, an ensemble, its best
    template), said in a few words, and its test accuracy: `runs` listed the best template's
    alone, where the search had ended on an ensemble or an adapter."""
    result = kept_result(summary) if summary else None
    if not result:
        return None, None
    if result is summary.get("adapter"):
        what = f"prompt + {result.get('kind')} adapter"
    elif result is summary.get("ensemble"):
        what = f"ensemble of {len(result.get('templates') or [])}"
    else:
        what = "best template"
    return what, (result.get("accuracy") or {}).get("test")


def runs_frame(runs_dir: str | Path) -> pd.DataFrame:
    """One row per run under `runs_dir`, newest first. A run that cannot be read still gets
    its row, with the reason as status (one bad folder must not hide the others)."""
    rows = []
    for path in list_run_dirs(runs_dir):
        try:
            run = load_run(path)
        except PromptclimbError as exc:
            when = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
            status = "newer format" if isinstance(exc, NewerFormat) else "unreadable"
            rows.append({"id": path.name, "date": when, "status": status})
            continue
        final = run.final
        best = (final or {}).get("best") or {}
        if not best:  # unfinished: best scored so far, no test accuracy
            ranked = run.ranked()
            if not ranked.empty:
                best = {"template": ranked.loc[0, "template"], "accuracy": {"train": ranked.loc[0].get("train")}}
        accuracy = best.get("accuracy") or {}
        status = run.status + (f", {len(run.skipped)} bad lines" if run.skipped else "")
        result, result_test = result_said(final)
        rows.append({
            "id": run.id, "dataset": run.dataset, "backbone": run.backbone, "shots": run.args.get("shots"),
            "seed": run.args.get("seed"), "llm": run.llm, "best template": best.get("template"),
            "train": accuracy.get("train"), "test": accuracy.get("test"), "result": result, "result test": result_test,
            "llm answers": len(run.answers()), "date": run.created, "status": status,
        })
    frame = pd.DataFrame(rows, columns=RUNS_COLUMNS)
    if frame.empty:
        return frame
    for column in ("shots", "seed", "llm answers"):
        # an unreadable run's row has none: NaN would turn the column to floats (shots 1.0)
        try:
            frame[column] = frame[column].astype("Int64")
        except (TypeError, ValueError):  # a hand-edited config.json's shots 1.5 or "four": shown as written
            pass
    frame["date"] = pd.to_datetime(frame["date"], utc=True)
    return frame.sort_values(["date", "id"], ascending=False).reset_index(drop=True)


def continue_said(run: Run) -> tuple[str, str | None] | None:
    """How to go on with an unfinished run (killed, or stopped by a failure: nothing else tells
    a reader), as `show` and the report say it: the command, with the MLflow store it tracked
    to where that is a file or folder, and a note where it is a server (its URI is kept
    without the password or token it may need: named, not put in the command); None for a
    run done, stopped early or running."""
    if run.status not in ("unfinished", "failed"):
        return None
    from promptclimb.agent.tracking import linked_store  # the MLflow run it continues, where it has one

    store = linked_store(run.path)
    server = store is not None and store.startswith(("http://", "https://"))
    command = shell_command("search", "--resume", run_argument(run.path),
                            *(["--mlflow", store] if store and not server else []))
    note = (f"its MLflow run is on {store}: add --mlflow with that server's URI, and the credentials it needs, "
            "to continue that MLflow run") if server else None
    return command, note


NAMES_SHOWN = 5  # proposals listed per names turn, the kept ones first


def names_turns_shown(run: Run) -> list[dict]:
    """`Run.names_turns()` as `show` and the report list them: each turn with its best
    `NAMES_SHOWN` proposals, the kept ones first and marked (a kept name tied with others could
    not be told apart), its refused names counted by reason, and `undecided`: the last turn of a
    run not ended that kept nothing yet, whose decision may be still to come (keeping nothing
    writes no event)."""
    open_turn = run.open_turn() if run.final is None else set()
    out = []
    for turn in run.names_turns():
        kept = {(c["from"], c["to"]) for c in turn["kept"]}
        ranked = sorted(turn["scored"], key=lambda s: ((s["from"], s["to"]) not in kept, -s["selection"]))
        reasons: dict[str, int] = {}
        for r in turn["refused"]:
            if r["reason"] != GUARD_NOT_ASKED:  # said on the turn's "cut" line
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        out.append({**turn, "shown": [{**s, "kept": (s["from"], s["to"]) in kept} for s in ranked[:NAMES_SHOWN]],
                    "reasons": reasons,
                    "undecided": turn["call"] in open_turn and not turn["kept"] and not turn["cut"]})
    return out
