"""history.jsonl in format v2 (agent/runs/compact.py): class names written as changes from the
start names, confusion matrices as their non-zero cells, and every reader given back the events
the search recorded; runs recorded in v1 (names in full, dense matrices) read and resume as
before. With the in-memory WordEvaluator (30 classes) and the fake LLM of tests/test_names.py."""

from __future__ import annotations

import json
import shutil

import pytest
from fake_llm import FakeLLM, WordEvaluator
from test_names import BONUS, MANY, climb, scripted

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.runs.compact import confusion_matrix
from promptclimb.agent.runs.reading import read_events, read_history
from promptclimb.agent.runs.run import load_run
from promptclimb.agent.runs.store import RunStore

SEARCH = dict(search="both", resets=1, iterations=3, restarts=1)
ANSWER = "Trouser: jeans; pants; slacks"  # Trouser is the weak class; jeans does best


def many_classes(tmp_path, base_url):
    ev = WordEvaluator(classnames=MANY, name_bonus=BONUS, class_bias={1: -0.25})
    return climb(tmp_path, base_url, ev=ev, **SEARCH)


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    """A finished 30-class names search, and every event as the search recorded it (in memory)."""
    events, append = [], RunStore.append

    def recording(store, event, **fields):
        record = append(store, event, **fields)
        events.append(record)
        return record

    monkeypatch.setattr(RunStore, "append", recording)
    with FakeLLM(responder=scripted([ANSWER])) as fake:
        result, _, run_dir = many_classes(tmp_path / "new", fake.base_url)
    monkeypatch.undo()
    return result, run_dir, events


def raw_lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_names_are_written_as_changes_and_matrices_as_cells_and_read_back_as_recorded(recorded):
    result, run_dir, events = recorded
    assert result.best["names"] != list(MANY)  # a class was renamed: its changes are what gets written
    assert read_history(run_dir / "history.jsonl") == events
    assert [{k: v for k, v in e.items() if k != "_line"} for e in read_events(run_dir / "history.jsonl")[0]] == events

    raw = raw_lines(run_dir)
    assert raw[0]["event"] == "run_start" and raw[0]["start_names"] == list(MANY)
    with_names = [e for e in raw[1:] if "names" in e and e["event"] != "final"]
    assert with_names and all(set(e["names"]) == {"renamed"} for e in with_names)
    final, whole = raw[-1], events[-1]
    renamed = {int(c): name for c, name in final["best"]["names"]["renamed"].items()}
    assert renamed and all(whole["best"]["names"][c] == name != MANY[c] for c, name in renamed.items())
    table = final["names"]
    assert "start" not in table and table["found"] == final["best"]["names"]
    after = table["confusion"]["after"]["test"]
    dense = whole["names"]["confusion"]["after"]["test"]
    assert after["shape"] == [30, 30] and after["cells"] == [[i, j, n] for i, row in enumerate(dense)
                                                           for j, n in enumerate(row) if n]
    assert len(table["classes"]["accuracy"]["after"]["test"]) == 30  # a list per figure, not a row per class
    # what grows with the classes is written once: the final line is a fraction of its whole form
    final_line = (run_dir / "history.jsonl").read_text().splitlines()[-1]
    assert len(final_line) < len(json.dumps(whole, ensure_ascii=False)) / 3


def as_v1(run_dir, to):
    """The run as promptclimb wrote it before format v2: every event whole, run_start without
    the start names, v 1 on every line and file."""
    shutil.copytree(run_dir, to)
    lines = []
    for e in read_history(run_dir / "history.jsonl"):
        e = {**e, "v": 1}
        e.pop("start_names", None)
        lines.append(json.dumps(e, ensure_ascii=False))
    (to / "history.jsonl").write_text("\n".join(lines) + "\n")
    for name in ("config.json", "summary.json"):
        obj = json.loads((to / name).read_text())
        (to / name).write_text(json.dumps({**obj, "v": 1}, indent=2))
    return lines


def test_a_run_recorded_in_v1_reads_as_before_and_resumes_in_v1_to_the_same_end(recorded, tmp_path):
    whole, run_dir, _ = recorded
    old_dir = tmp_path / "old" / "runs" / "run"
    lines = as_v1(run_dir, old_dir)
    new, old = load_run(run_dir), load_run(old_dir)
    assert comparable(old.events) == comparable(new.events) and not old.skipped
    for table in ("scores", "names", "names_turns", "winners"):
        assert str(getattr(old, table)()) == str(getattr(new, table)()), table
    assert all(old.confusion()[when].equals(new.confusion()[when]) for when in ("before", "after"))

    # killed halfway, before any summary: resumed, it continues the history as v1
    (old_dir / "summary.json").unlink()
    (old_dir / "history.jsonl").write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    with FakeLLM(responder=scripted([ANSWER])) as fake:
        resumed, _, _ = many_classes(tmp_path / "old", fake.base_url)
    assert resumed.best == whole.best and resumed.summary["names"] == whole.summary["names"]
    raw = raw_lines(old_dir)
    assert len(raw) == len(lines) and {e["v"] for e in raw} == {1} and "start_names" not in raw[0]
    assert all(isinstance(e["names"], list) for e in raw if "names" in e and e["event"] != "final")
    # the history (v1) holds the matrix whole; summary.json, past 20 classes, its non-zero cells
    assert raw[-1]["names"]["confusion"]["after"]["test"] == confusion_matrix(whole.summary["names"], "after", "test")
    assert comparable(read_history(old_dir / "history.jsonl")) == comparable(read_history(run_dir / "history.jsonl"))


def comparable(events: list[dict]) -> list[dict]:
    drop = ("v", "time", "latency_s", "cached", "source", "start_names")
    return [{k: v for k, v in e.items() if k not in drop} for e in events]


def test_a_compact_line_that_does_not_unpack_is_named_not_a_traceback(recorded):
    _, run_dir, _ = recorded
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    n = next(i for i, line in enumerate(lines) if json.loads(line)["event"] == "name_score")
    bad = json.loads(lines[n])
    bad["names"] = {"renamed": {"30": "jeans"}}  # a class the run does not have
    lines[n] = json.dumps(bad)
    (run_dir / "history.jsonl").write_text("\n".join(lines) + "\n")
    events, skipped = read_events(run_dir / "history.jsonl")
    assert [s.line for s in skipped] == [n + 1] and "renamed class '30'" in skipped[0].reason
    assert len(events) == len(lines) - 1 and load_run(run_dir).names().shape[0] == 30
    with pytest.raises(PromptclimbError, match=f"line {n + 1} is damaged .*compact form"):
        read_history(run_dir / "history.jsonl")
