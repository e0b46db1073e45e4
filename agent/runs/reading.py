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
import numbers
from dataclasses import dataclass
from pathlib import Path

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.format import shell_command, shortened
from promptclimb.agent.core.paths import not_a_folder
from promptclimb.agent.core.runfiles import SWEEP_FILE
from promptclimb.agent.runs.compact import COMPACT_SINCE, unpack_event
from promptclimb.agent.runs.store import CONFIG, FORMAT_VERSION, HISTORY, SUMMARY, has_summary
from promptclimb.agent.options import check_recorded


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
