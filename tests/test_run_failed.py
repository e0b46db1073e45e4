"""A run whose search FAILED (an LLM that failed for good, an error while scoring) is told
from one KILLED (Ctrl-C, SIGTERM, SIGKILL) once the process is gone: the failure is the
history's last event (`failed`), `runs`/`show` say "failed", `mlflow-sync` ends its MLflow
run FAILED, and a resume passes over the event and clears the status. A sweep keeps a
local --mlflow store by its absolute path, and the hints name a folder store absolute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fake_llm import FakeLLM, WordEvaluator
from test_search import KEY, responder

from promptclimb.agent.cli import cli
from promptclimb.agent.runs.reading import read_history
from promptclimb.agent.runs.run import load_run
from promptclimb.agent.runs.store import RunStore
from promptclimb.agent.sweep import grid as sweep_grid

# three template turns of one conversation; an LLM error is final at once
ARGS = ("--dataset", "toy", "--iterations", 3, "--search", "template", "--resets", 1, "--pool-sample", 6,
        "--max-tries", 1, "--no-cache")
PASSWORD = "PASSW0RD-9f8e7d"


def search(fake: FakeLLM, runs: Path, *args, factory=None):
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
    factory = factory or (lambda **kw: WordEvaluator(kw["dataset"]))
    return CliRunner().invoke(cli, ["search", *map(str, args), "--runs-dir", str(runs)], env=env,
                              obj={"evaluator_factory": factory})


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def statuses(runs: Path) -> dict[str, str]:
    listed = invoke("runs", "--runs-dir", runs, "--format", "json")
    assert listed.exit_code == 0, listed.output
    return {r["id"]: r["status"] for r in json.loads(listed.output)}


class StopsAtScore(WordEvaluator):
    """Raises `error` at its `at`-th call of score (1: the pool's): past the evaluator's load."""

    def __init__(self, dataset: str, at: int, error: BaseException):
        super().__init__(dataset)
        self.at, self.error, self.calls = at, error, 0

    def score(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise self.error
        return super().score(*args, **kwargs)


def test_a_failed_search_reads_failed_a_killed_one_unfinished_and_a_resume_clears_it(tmp_path):
    runs = tmp_path / "runs"
    with FakeLLM(responder=responder) as fake:
        fake.faults.extend(["ok"] + ["500"] * 20)  # one answer, then the LLM is down for good
        failed = search(fake, runs, *ARGS, "--name", "failed")
        assert failed.exit_code == 1 and "The run is saved; continue it with:" in failed.output, failed.output
        fake.faults.clear()
        killed = search(fake, runs, *ARGS, "--name", "killed",
                        factory=lambda **kw: StopsAtScore(kw["dataset"], 3, KeyboardInterrupt()))
        assert killed.exit_code == 130, killed.output

        last = events(runs / "failed")[-1]
        assert last["event"] == "failed" and last["seq"] == len(events(runs / "failed")) - 1
        assert last["error"].startswith("the LLM (") and "\n" not in last["error"] and KEY not in last["error"]
        assert "failed" not in {e["event"] for e in events(runs / "killed")}
        assert statuses(runs) == {"failed": "failed", "killed": "unfinished"}
        shown = invoke("show", runs / "failed")
        assert shown.exit_code == 0 and shown.output.splitlines()[0].endswith(f"; failed ({last['error']})")
        assert "continue it with: promptclimb search --resume" in shown.output  # as for a killed run
        listed = invoke("runs", "--runs-dir", runs, "--status", "failed", "--format", "json")
        assert listed.exit_code == 0 and [r["id"] for r in json.loads(listed.output)] == ["failed"], listed.output
        assert load_run(runs / "failed").failure == last["error"]
        # the last turn is as open as a killed run's: a resume may complete it (the failure closes nothing)
        assert load_run(runs / "failed").open_turn() == {0}

        # a resume that fails again (after one more answer): it passed over the first failure, and
        # records its own at the end
        fake.faults.extend(["ok"] + ["500"] * 20)
        again = search(fake, runs, "--resume", "failed")
        assert again.exit_code == 1, again.output
        kinds = [e["event"] for e in events(runs / "failed")]
        assert kinds.count("failed") == 2 and kinds[-1] == "failed" and kinds.index("failed") < len(kinds) - 3
        fake.faults.clear()
        for name in ("failed", "killed"):
            resumed = search(fake, runs, "--resume", name)
            assert resumed.exit_code == 0, resumed.output
    assert statuses(runs) == {"failed": "done", "killed": "done"}
    history = events(runs / "failed")
    assert [e["seq"] for e in history] == list(range(len(history)))  # the lines stay, numbered as they are
    assert [e["event"] for e in history].count("failed") == 2 and history[-1]["event"] == "final"
    assert len(read_history(runs / "failed" / "history.jsonl")) == len(history)  # the strict reader of a resume
    assert load_run(runs / "failed").failure is None


def test_the_failure_recorded_holds_no_key_or_password(tmp_path):
    """An error that quotes the API key or a URL's password is written without them."""
    runs = tmp_path / "runs"
    error = RuntimeError(f"shard 3 unreadable (key {KEY}, from http://alice:{PASSWORD}@data.example/s3)\n"
                         f"Traceback-ish second line {KEY}")
    with FakeLLM(responder=responder) as fake:
        result = search(fake, runs, *ARGS, "--name", "leaky",
                        factory=lambda **kw: StopsAtScore(kw["dataset"], 3, error))
    assert result.exit_code == 1
    last = events(runs / "leaky")[-1]
    assert last == {**last, "event": "failed",
                    "error": "RuntimeError: shard 3 unreadable (key [redacted], from http://data.example/s3)"}
    for path in (runs / "leaky").rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            assert KEY.encode() not in text and PASSWORD.encode() not in text, path
    assert statuses(runs) == {"leaky": "failed"}


def test_a_history_without_the_event_reads_as_before_and_a_replay_passes_over_it(tmp_path):
    run_dir = tmp_path / "r"
    with RunStore.create(run_dir, {"t": 1}) as store:
        store.append("run_start", run_id="r")
        store.append("restart", restart=0, pool=["a {}."])
    with RunStore.resume(run_dir) as store:  # fails while it replays: the event goes after every line
        store.append("run_start", run_id="r")
        store.record_failure("boom")
    assert [(e["seq"], e["event"]) for e in events(run_dir)] == [(0, "run_start"), (1, "restart"), (2, "failed")]
    with RunStore.resume(run_dir) as store:
        assert store.append("run_start", run_id="r")["seq"] == 0
        assert store.append("restart", restart=0, pool=["a {}."])["seq"] == 1
        assert not store.replaying  # past the failure, which a soft-prompt run's re-walk gives back: not written
        assert store.append("failed", error="boom") is None
        assert store.append("reset", restart=0, reset=0)["seq"] == 3
    assert [e["event"] for e in read_history(run_dir / "history.jsonl")] == ["run_start", "restart", "failed", "reset"]


def test_mlflow_sync_of_a_failed_run_ends_it_failed_and_of_a_killed_one_killed(tmp_path, monkeypatch):
    from conftest import require_extra

    require_extra("mlflow", "mlflow")
    import warnings

    from mlflow import MlflowClient

    warnings.filterwarnings("ignore", "The ``noload`` loader strategy is deprecated", DeprecationWarning)
    runs = tmp_path / "runs"
    with FakeLLM(responder=responder) as fake:
        fake.faults.extend(["ok"] + ["500"] * 20)
        assert search(fake, runs, *ARGS, "--name", "failed").exit_code == 1
        fake.faults.clear()
        killed = search(fake, runs, *ARGS, "--name", "killed",
                        factory=lambda **kw: StopsAtScore(kw["dataset"], 3, KeyboardInterrupt()))
        assert killed.exit_code == 130
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    synced = invoke("mlflow-sync", runs / "failed", runs / "killed", "--tracking-uri", uri)
    assert synced.exit_code == 0, synced.output
    client = MlflowClient(uri)
    for name, status, tag in (("failed", "FAILED", "failed"), ("killed", "KILLED", "unfinished")):
        run_id = json.loads((runs / name / "mlflow.json").read_text())["runs"][uri]["run_id"]
        run = client.get_run(run_id)
        assert (run.info.status, run.data.tags["promptclimb.status"]) == (status, tag), name


def test_a_sweep_keeps_a_local_mlflow_store_absolute_and_a_server_as_typed(tmp_path, monkeypatch):
    grid = {"dataset": ["fashion-mnist"], "seeds": ["1"]}
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cases = {"sqlite:///mlflow.db": f"sqlite:///{tmp_path / 'mlflow.db'}", "./mlruns": str(tmp_path / "mlruns"),
             "file:mlruns": f"file://{tmp_path / 'mlruns'}", "http://127.0.0.1:5000": "http://127.0.0.1:5000"}
    if _has_mlflow():  # bare: MLflow's default, sqlite:///mlflow.db here
        cases[""] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for n, (typed, kept) in enumerate(cases.items()):
        sweep_dir = tmp_path / "runs" / f"s{n}"
        settings = sweep_grid.prepare_sweep(sweep_dir, grid, {"mlflow": typed})
        stored = json.loads((sweep_dir / "sweep.json").read_text())["search"]
        assert stored["mlflow"] == kept and settings["search"]["mlflow"] == kept, typed
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # a rerun from another folder tracks to the same database
    assert sweep_grid.prepare_sweep(tmp_path / "runs" / "s0", None, {})["search"]["mlflow"] == \
        cases["sqlite:///mlflow.db"]
    # a server's password is still left out of sweep.json, and asked for again
    secret = sweep_grid.prepare_sweep(tmp_path / "runs" / "pw", grid, {"mlflow": f"http://u:{PASSWORD}@h.example:5000"})
    assert secret["search"]["mlflow"] == f"http://u:{PASSWORD}@h.example:5000"
    kept = json.loads((tmp_path / "runs" / "pw" / "sweep.json").read_text())
    assert kept["search"]["mlflow"] == "http://h.example:5000" and kept["secrets_left_out"] == ["mlflow"]


def _has_mlflow() -> bool:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("typed, shown", [("./mlruns", "{here}/mlruns"), ("mlruns/", "{here}/mlruns"),
                                          ("file:mlruns", "file://{here}/mlruns"),
                                          ("file:///abs/ml runs", "file:///abs/ml runs"),
                                          ("sqlite:///mlflow.db", "sqlite:///{here}/mlflow.db"),
                                          ("http://127.0.0.1:5000/", "http://127.0.0.1:5000")])
def test_the_resume_hint_names_a_folder_store_absolute(tmp_path, monkeypatch, typed, shown):
    from promptclimb.agent.pipeline import resume_command

    monkeypatch.chdir(tmp_path)
    command, note = resume_command(tmp_path / "run", typed)
    assert command.split()[-2:] == ["--mlflow", shown.format(here=tmp_path)] or \
        command.endswith(f"--mlflow '{shown.format(here=tmp_path)}'"), command
    assert note is None


def test_a_search_whose_reader_went_away_is_not_recorded_as_failed(tmp_path):
    """`promptclimb search ... | head -2`: the closed pipe ended the search (exit 141), and the run
    had been recorded as failed ("Broken pipe"), as an LLM that failed for good is."""
    import promptclimb
    from promptclimb.agent.api import using_evaluator

    said = []

    def reader_goes_away(line: str) -> None:
        said.append(line)
        if len(said) > 6:
            raise BrokenPipeError(32, "Broken pipe")

    runs = tmp_path / "runs"
    with FakeLLM(responder=responder) as fake, using_evaluator(lambda **kw: WordEvaluator(kw["dataset"])), \
            pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", KEY)
        env.setenv("OPENAI_BASE_URL", fake.base_url)
        with pytest.raises(BrokenPipeError):
            promptclimb.search(dataset="toy", iterations=2, runs_dir=runs, name="piped", echo=reader_goes_away)
    assert events(runs / "piped") and "failed" not in {e["event"] for e in events(runs / "piped")}
    assert statuses(runs) == {"piped": "unfinished"}


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("images of split train no longer decode")])
def test_show_says_an_answer_the_run_stopped_before_scoring_was_not_scored(error, tmp_path):
    """A run killed or failed while it scored an answer: `show` read the answer's five templates
    as "no line had a {} placeholder"."""
    runs = tmp_path / "runs"
    with FakeLLM(responder=responder) as fake:
        search(fake, runs, *ARGS, "--name", "r", factory=lambda **kw: StopsAtScore(kw["dataset"], 2, error))
    shown = invoke("show", runs / "r")
    assert shown.exit_code == 0, shown.output
    assert ("proposed: 0 scored, 0 rejected (the run stopped before it scored this answer: a resume goes on from it)"
            in shown.output) and "placeholder" not in shown.output


def test_show_reads_an_answer_with_nothing_to_score_as_such_where_the_run_failed_after_it(tmp_path):
    """A first answer without a {} line, then the LLM down: the answer had been read (nothing in
    it to score), so it is not one the run "stopped before scoring"."""
    runs = tmp_path / "runs"
    with FakeLLM(script=["no template here", "still none"]) as fake:
        fake.faults.extend(["ok"] + ["500"] * 20)
        failed = search(fake, runs, *ARGS, "--name", "r")
    assert failed.exit_code == 1, failed.output
    shown = invoke("show", runs / "r")
    assert "(no line had a {} placeholder)" in shown.output and "stopped before it scored" not in shown.output
