"""promptclimb.agent.runs.store: the append-only, resumable run folder."""

import json
import multiprocessing
import os
import re

import pytest

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.runs.reading import read_history
from promptclimb.agent.runs.store import HISTORY, RunLocked, RunMismatch, RunStore, being_written


def lines(run_dir):
    return (run_dir / HISTORY).read_text().splitlines()


def test_create_writes_config_and_appends_events(tmp_path):
    run = tmp_path / "r1"
    with RunStore.create(run, {"search": {"seed": 1}}) as store:
        store.append("run_start", run_id="r1")
        store.append("score", template="a {}.", origin="pool", accuracy={"train": 0.5})
        assert len(lines(run)) == 2  # flushed as it goes, before close
    config = json.loads((run / "config.json").read_text())
    assert config == {"v": 2, "search": {"seed": 1}}
    events = [json.loads(x) for x in lines(run)]
    assert [e["seq"] for e in events] == [0, 1]
    assert all(e["v"] == 2 and "time" in e for e in events)
    with pytest.raises(PromptclimbError, match="already holds a run; continue it with: promptclimb search --resume"):
        RunStore.create(run, {})
    (run / "summary.json").write_text("{}")  # finished: nothing to continue, only to read
    with pytest.raises(PromptclimbError, match=r"already holds a finished run \(read it with: promptclimb show .*\); "
                                               "give the new run another --name"):
        RunStore.create(run, {})



def test_a_run_being_written_is_said_so_not_given_a_resume_that_would_be_refused(tmp_path):
    """A new search into a run another process is writing, and `adapt`/`eval --run` of it,
    said to continue or finish it with `search --resume`, which that process's lock refuses."""
    import os

    from promptclimb.agent.adapt import read_run

    run = tmp_path / "r"
    with RunStore.create(run, {"search": {"seed": 1}}) as store:
        store.append("run_start", run_id="r")
        busy = f"being written by this process (pid {os.getpid()}: another thread of it); wait until it has finished"
        with pytest.raises(PromptclimbError, match=re.escape(f"already holds a run, {busy}, or give the new run another")):
            RunStore.create(run, {})
        with pytest.raises(PromptclimbError, match=re.escape(f"has no summary.json yet: it is {busy}")):
            read_run(run)
        with pytest.raises(RunLocked, match=re.escape(f"{run} is {busy}")):
            RunStore.resume(run)
    with pytest.raises(PromptclimbError, match="has no summary.json: the search has not finished"):
        read_run(run)  # stopped: finished with a resume


@pytest.mark.parametrize("empty", ["", " \n"])
def test_a_run_whose_summary_is_empty_is_held_as_unfinished_not_finished(tmp_path, empty):
    """A new run in a folder whose summary.json is empty (a crash between creating and writing
    it) was refused as "already holds a finished run (read it with: show)", while the readers
    read that run by its history, as one not finished: it is one to continue."""
    run = tmp_path / "r"
    with RunStore.create(run, {}) as store:
        store.append("run_start", run_id="r")
    (run / "summary.json").write_text(empty)
    with pytest.raises(PromptclimbError, match="already holds a run; continue it with: promptclimb search --resume"):
        RunStore.create(run, {})

def test_resume_replays_stored_events_and_appends_new_ones(tmp_path):
    run = tmp_path / "r"
    with RunStore.create(run, {}) as store:
        store.append("run_start", run_id="r")
        store.append("score", template="a {}.", origin="pool", accuracy={"train": 0.5})
    with RunStore.resume(run) as store:
        assert store.replaying and store.peek()["event"] == "run_start"
        store.append("run_start", run_id="r")
        # measured values are read back, not compared: the stored copy is returned
        back = store.append("score", template="a {}.", origin="pool", accuracy={"train": 0.9})
        assert back["accuracy"] == {"train": 0.5} and not store.replaying
        store.append("final", stopped="completed")
    assert [json.loads(x)["event"] for x in lines(run)] == ["run_start", "score", "final"]


def test_resume_refuses_a_different_step(tmp_path):
    run = tmp_path / "r"
    with RunStore.create(run, {}) as store:
        store.append("score", template="a {}.", origin="pool")
    with RunStore.resume(run) as store:
        with pytest.raises(RunMismatch, match="template") as refused:
            store.append("score", template="another {}.", origin="pool")
    # a run killed under an older promptclimb, whose rules (a margin, a guard) decide otherwise
    # now, stops at the first decision that differs: the message names that cause too
    assert "or the search's own rules did (a newer promptclimb" in str(refused.value)


def test_a_run_whose_images_a_newer_promptclimb_decodes_otherwise_is_not_told_to_put_them_back(tmp_path):
    """The data's identity ends with how its images are decoded (`:decoded:N`); where only that
    changed (EXIF orientation, 12-bit images), "the data's files changed (images edited ...):
    put it back as it was" sent a user looking for edits never made."""
    from promptclimb.agent.pipeline import evaluator_changes

    recorded, now = ({"dataset": {"identity": f"/d:abc:decoded:{n}"}} for n in (2, 3))
    said = evaluator_changes(recorded, now)
    assert said.startswith("how images are decoded changed (a newer promptclimb") and "edited" not in said
    assert evaluator_changes(recorded, {"dataset": {"identity": "/d:abd:decoded:3"}}).startswith(
        "the data's files changed")
    run = tmp_path / "r"
    with RunStore.create(run, {}) as store:
        store.append("score", template="a {}.", origin="pool")
    with RunStore.resume(run) as store:
        store.evaluator_changed = said
        with pytest.raises(RunMismatch) as refused:
            store.append("score", template="another {}.", origin="pool")
    assert "finish it with the promptclimb it began with, or start a new run instead" in str(refused.value)
    assert "put it back" not in str(refused.value)


def test_a_cut_short_last_line_is_dropped_and_repaired(tmp_path):
    run = tmp_path / "r"
    with RunStore.create(run, {}) as store:
        for i in range(3):
            store.append("score", template=f"t{i} {{}}", origin="pool")
    data = (run / HISTORY).read_bytes()
    (run / HISTORY).write_bytes(data[: len(data) - 15])  # a kill in the middle of the last write
    assert len(read_history(run / HISTORY)) == 2
    with RunStore.resume(run) as store:
        assert len(store.stored) == 2
        for i in range(3):
            store.append("score", template=f"t{i} {{}}", origin="pool")
    assert [json.loads(x)["seq"] for x in lines(run)] == [0, 1, 2]


def test_damage_before_the_last_line_is_an_error(tmp_path):
    run = tmp_path / "r"
    with RunStore.create(run, {}) as store:
        for i in range(3):
            store.append("score", template=f"t{i} {{}}", origin="pool")
    text = lines(run)
    text[1] = text[1][:10]
    (run / HISTORY).write_text("\n".join(text) + "\n")
    with pytest.raises(PromptclimbError, match="line 2 is damaged"):
        read_history(run / HISTORY)


def _try_lock(run_dir, queue):
    try:
        RunStore.resume(run_dir)
        queue.put("opened")
    except RunLocked as exc:
        queue.put(f"locked: {exc}")


def test_two_processes_cannot_write_one_run(tmp_path):
    run = tmp_path / "r"
    with RunStore.create(run, {}) as store:
        store.append("run_start", run_id="r")
        queue = multiprocessing.get_context("spawn").Queue()
        other = multiprocessing.get_context("spawn").Process(target=_try_lock, args=(run, queue))
        other.start()
        other.join(30)
        assert queue.get(timeout=5).startswith("locked")
    with RunStore.resume(run):  # released on close
        pass


def _peek_for(seconds, lock_path, ready):
    """A reader that looks at a run's lock as `runs` does, holding it shared for a while."""
    import fcntl
    import time

    with open(lock_path, "rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        ready.set()
        time.sleep(seconds)


def test_a_writer_is_not_refused_by_a_reader_looking_at_its_lock(tmp_path):
    """`runs` and `show` take the lock shared for an instant to tell a running search from a
    stopped one; a search resumed in that instant must not call its own run held by another."""
    import threading

    run = tmp_path / "r"
    with RunStore.create(run, {}) as store:
        store.append("run_start", run_id="r")
        assert being_written(run)
    assert not being_written(run)
    ready = threading.Event()
    reader = threading.Thread(target=_peek_for, args=(0.2, run / ".lock", ready))
    reader.start()
    ready.wait(5)
    try:
        with RunStore.resume(run):
            assert being_written(run)
    finally:
        reader.join()


def test_prompts_csv_has_every_scored_template_once(tmp_path):
    import pandas as pd

    with RunStore.create(tmp_path / "r", {}) as store:
        store.append("score", template="a {}.", origin="pool", source="general", restart=0, reset=None,
                     iteration=0, accuracy={"train": 0.5, "val": 0.4}, loss={"train": 1.0, "val": 1.1})
        store.append("reject", template="{0}", reason="bad")
        store.append("score", template="a, b {}", origin="llm", source="llm", restart=0, reset=0,
                     iteration=1, call=0, accuracy={"train": 0.6, "val": 0.5}, loss={"train": 0.9, "val": 1.0})
        path = store.write_prompts_csv()
    frame = pd.read_csv(path)
    assert list(frame["template"]) == ["a {}.", "a, b {}"]
    assert list(frame["train_accuracy"]) == [0.5, 0.6] and list(frame["origin"]) == ["pool", "llm"]
    assert {"val_accuracy", "train_loss", "restart", "reset", "iteration"} <= set(frame.columns)
    # a resume replaying the history leaves the file whole (a Ctrl-C mid-replay cut it short)
    with RunStore.resume(tmp_path / "r") as store:
        store.append("score", template="a {}.", origin="pool", source="general", restart=0, reset=None,
                     iteration=0, accuracy={"train": 0.5, "val": 0.4}, loss={"train": 1.0, "val": 1.1})
        store.write_prompts_csv()
        assert list(pd.read_csv(path)["template"]) == ["a {}.", "a, b {}"]


def test_an_event_kind_not_in_events_is_refused_before_it_is_written(tmp_path):
    # readers (Run.of) know the kinds from EVENTS: a kind written but not listed there would be
    # refused by `Run.of` on every run that lacks it
    run = tmp_path / "r1"
    with RunStore.create(run, {}) as store:
        store.append("run_start", run_id="r1")
        with pytest.raises(ValueError, match="unknown history event 'scores'"):
            store.append("scores", template="a {}.")
    assert [json.loads(x)["event"] for x in lines(run)] == ["run_start"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_history_write_a_full_disk_refuses_is_named_and_leaves_the_run_free(tmp_path, monkeypatch):
    """On a full disk the refused line stayed in a buffer: closing the store failed again with
    no file named (hiding the first error) and kept the run's lock held in this process."""
    from promptclimb.agent.runs import store as run_store

    run = tmp_path / "r"
    store = RunStore.create(run, {})
    store._history.close()
    monkeypatch.setattr(run_store, "HISTORY", "/dev/full")  # every write to the history: ENOSPC
    store._open_history()
    with pytest.raises(OSError, match="No space left on device") as refused:
        store.append("run_start", run_id="r")
    assert refused.value.filename == str(run / "/dev/full")
    store.close()  # nothing left to fail
    assert not being_written(run)
