"""The command a stopped `search --mlflow URI` prints to continue it carries `--mlflow URI`
(a resumed search tracks only when given it again: it is not recorded), never a secret the
URI held; run as printed, the search continues its MLflow run to FINISHED."""

from __future__ import annotations

import json
import shlex

import pytest
from click.testing import CliRunner
from conftest import require_extra

require_extra("mlflow", "mlflow")
from mlflow import MlflowClient  # noqa: E402

from fake_llm import FakeLLM, WordEvaluator  # noqa: E402
from test_mlflow import ANSWER_METRICS, free_port, linked_run_id, mlflow_sync, sqlite_uri  # noqa: E402
from test_search import KEY, responder  # noqa: E402

from promptclimb.agent.cli import cli  # noqa: E402
from promptclimb.agent.runs.run import load_run  # noqa: E402
from promptclimb.agent.tracking import sync_run  # noqa: E402
from promptclimb.agent.tracking.logged import answer_metrics  # noqa: E402

SMALL = ["--iterations", "3", "--search", "template", "--resets", "1", "--pool-sample", "6"]


class StoppedAfter(WordEvaluator):
    """Ctrl-C (or `stop`: SystemExit(143), as SIGTERM unwinds) while the `stop_at`-th batch of
    templates is scored (0: never)."""

    def __init__(self, dataset: str, stop_at: int = 0, stop: BaseException | None = None):
        super().__init__(dataset)
        self.stop_at, self.batches, self.stop = stop_at, 0, stop

    def score(self, *args, **kwargs):
        self.batches += 1
        if self.batches == self.stop_at:
            raise self.stop or KeyboardInterrupt()
        return super().score(*args, **kwargs)


def search(fake, args, stop_at: int = 0, stop: BaseException | None = None):
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
    return CliRunner().invoke(cli, list(map(str, args)), env=env,
                              obj={"evaluator_factory": lambda **kw: StoppedAfter(kw["dataset"], stop_at, stop)})


def printed_command(output: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith("interrupted; continue with: "))
    words = shlex.split(line.removeprefix("interrupted; continue with: "))
    assert words[0] == "promptclimb", line
    return words[1:]


def test_the_printed_resume_command_continues_the_mlflow_run(tmp_path):
    uri, runs = sqlite_uri(tmp_path / "store"), tmp_path / "runs"
    with FakeLLM(responder=responder) as fake:
        stopped = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "t",
                                "--mlflow", uri], stop_at=3)  # the pool, one turn, then Ctrl-C
        assert stopped.exit_code == 130, stopped.output
        command = printed_command(stopped.output)
        assert command == ["search", "--resume", str(runs / "t"), "--mlflow", uri]
        client = MlflowClient(uri)
        run_id = linked_run_id(runs / "t", uri)
        assert client.get_run(run_id).info.status == "KILLED"

        resumed = search(fake, command)
    assert resumed.exit_code == 0, resumed.output
    assert linked_run_id(runs / "t", uri) == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # the answer stopped while it was scored was logged as it was then, and again once complete
    assert sorted(m.step for m in client.get_metric_history(run_id, "new_proposals")) == [0, 1, 1, 2]
    assert shown(client, run_id) == {step: values for step, _, values in answer_metrics(load_run(runs / "t"))}



def shown(client, run_id) -> dict[int, dict[str, float]]:
    """step -> each answer metric as MLflow shows it: the latest value logged at the step (not
    the initial pool's best, at step -1)."""
    out: dict[int, dict[str, float]] = {}
    for key in ANSWER_METRICS:
        for metric in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.value)):
            if metric.step >= 0:
                out.setdefault(metric.step, {})[key] = metric.value
    return out


@pytest.mark.parametrize("resume", ["then mlflow-sync", "with --mlflow"])
def test_an_answer_logged_before_it_was_scored_shows_its_completed_values_after_the_resume(tmp_path, resume):
    """`mlflow-sync` of a run stopped while an answer was scored logs that answer as it is
    (nothing holds the run); the resume scores the rest of it. Its MLflow step kept the
    partial values (0 new proposals): the answer's steps were logged once."""
    uri, runs = sqlite_uri(tmp_path / "store"), tmp_path / "runs"
    client = MlflowClient(uri)
    with FakeLLM(responder=responder) as fake:
        stopped = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "t"],
                         stop_at=3)  # the pool, one turn, then Ctrl-C while the second is scored
        assert stopped.exit_code == 130, stopped.output
        assert mlflow_sync(runs / "t", "--tracking-uri", uri).exit_code == 0
        run_id = linked_run_id(runs / "t", uri)
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "new_proposals")] == [(0, 5), (1, 0)]
        first_times = {m.step: m.timestamp for m in client.get_metric_history(run_id, "new_proposals")}

        resumed = search(fake, ["search", "--resume", runs / "t", *(["--mlflow", uri] if "--mlflow" in resume else [])])
        assert resumed.exit_code == 0, resumed.output
    complete = {step: values for step, _, values in answer_metrics(load_run(runs / "t"))}
    assert complete[1]["new_proposals"] == 5
    if "--mlflow" in resume:  # its live tracker logged them
        assert shown(client, run_id) == complete and "warning" not in resumed.output, resumed.output
    synced = mlflow_sync(runs / "t", "--tracking-uri", uri)
    assert synced.exit_code == 0, synced.output
    # it said "(1 answer logged now" alone: the answer completed, logged again, went uncounted
    said = "(0 answers logged now;" if "--mlflow" in resume else \
        "(1 answer logged now, 1 logged again with its completed values;"
    assert said in synced.output, synced.output
    assert linked_run_id(runs / "t", uri) == run_id  # the same answers: the same MLflow run
    assert shown(client, run_id) == complete
    history = client.get_metric_history(run_id, "new_proposals")
    assert {s: min(m.timestamp for m in history if m.step == s) for s in first_times} == first_times
    again = mlflow_sync(runs / "t", "--tracking-uri", uri)  # again: nothing more
    assert again.exit_code == 0 and "(0 answers logged now;" in again.output and "again with" not in again.output
    assert len(client.get_metric_history(run_id, "new_proposals")) == len(history) == 4  # steps 0, 1 (twice), 2

def test_a_sync_asks_mlflow_only_for_the_metric_histories_a_resume_can_change(tmp_path, monkeypatch):
    """Each sync of a run logged before asked MLflow for the history of all 6 answer metrics
    (one request each) to find answers logged while they were scored. The tokens are the
    answer's own, never changed by the scoring after it: 4 requests. What is logged is as
    before: the completed answer again, its tokens once."""
    uri, runs = sqlite_uri(tmp_path / "store"), tmp_path / "runs"
    asked: list[str] = []
    real = MlflowClient.get_metric_history

    def counted(self, run_id, key):
        asked.append(key)
        return real(self, run_id, key)

    def sync_asking() -> tuple[str, list[str]]:
        asked.clear()
        synced = mlflow_sync(runs / "t", "--tracking-uri", uri)
        assert synced.exit_code == 0, synced.output
        return synced.output, sorted(asked)

    changing = ["best_train_accuracy", "best_val_accuracy", "new_proposals", "refused_proposals"]
    monkeypatch.setattr(MlflowClient, "get_metric_history", counted)
    with FakeLLM(responder=responder) as fake:
        stopped = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "t"], stop_at=3)
        assert stopped.exit_code == 130, stopped.output
        assert sync_asking()[1] == []  # a new MLflow run: nothing to ask
        resumed = search(fake, ["search", "--resume", runs / "t"])
        assert resumed.exit_code == 0, resumed.output
    said, histories = sync_asking()  # the second answer was logged while it was scored
    assert histories == changing and "(1 answer logged now, 1 logged again with its completed values;" in said, said
    said, histories = sync_asking()
    assert histories == changing and "(0 answers logged now;" in said, said

    client, run_id = MlflowClient(uri), linked_run_id(runs / "t", uri)
    complete = {step: values for step, _, values in answer_metrics(load_run(runs / "t"))}
    assert shown(client, run_id) == complete
    for key in ("prompt_tokens", "completion_tokens"):  # each answer's once
        assert sorted(m.step for m in real(client, run_id, key)) == sorted(complete), key


def test_a_sync_asks_mlflow_for_its_run_once(tmp_path, monkeypatch):
    """Each sync of a finished run asked MLflow for the whole run 4 times (for its params,
    its result metrics, its prompt tags, its artifact URI): once now, and, for a run logged
    before, once more to see that it still exists. What the one answer says still decides
    what is sent: a second sync registers no second prompt version, logs no result again."""
    uri, runs = sqlite_uri(tmp_path / "store"), tmp_path / "runs"
    with FakeLLM(responder=responder) as fake:
        done = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "t"])
        assert done.exit_code == 0, done.output
    asked: list[str] = []
    real = MlflowClient.get_run

    def counted(self, run_id):
        asked.append(run_id)
        return real(self, run_id)

    monkeypatch.setattr(MlflowClient, "get_run", counted)
    first = sync_run(runs / "t", uri)
    assert asked == [first.run_id]  # a new MLflow run: nothing to check first
    asked.clear()
    again = sync_run(runs / "t", uri)
    assert asked == [first.run_id] * 2  # it exists; then what it holds
    assert (again.run_id, again.prompt, again.artifact_uri) == (first.run_id, first.prompt, first.artifact_uri)
    assert first.prompt and first.artifact_uri
    client = MlflowClient(uri)
    held = real(client, first.run_id)
    assert held.info.status == "FINISHED" and held.data.params["search.iterations"] == "3"
    assert held.data.tags["promptclimb.prompt"] == first.prompt
    assert len(client.get_metric_history(first.run_id, "best_test_accuracy")) == 1


def test_a_tracking_uri_with_a_password_is_printed_without_it_and_asked_for_again(tmp_path):
    """Tracking to a server that does not answer is one warning; the search goes on and is
    stopped: the command names the server, not the password, and says to give it again."""
    secret_uri = f"http://someone:pw-SECRET123@127.0.0.1:{free_port()}/?token=tk-SECRET456"
    with FakeLLM(responder=responder) as fake:
        stopped = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", tmp_path / "runs", "--name",
                                "t", "--mlflow", secret_uri], stop_at=2)
    assert stopped.exit_code == 130, stopped.output
    assert "SECRET" not in stopped.output
    command = printed_command(stopped.output)
    assert command[-2:] == ["--mlflow", f"http://127.0.0.1:{secret_uri.split(':')[-1].split('/')[0]}"]
    assert "note: the --mlflow URI had a password or key, left out of that command: give the URI with it again" \
        in stopped.output.splitlines()


def test_a_bare_mlflow_option_is_printed_as_the_store_it_used_and_an_untracked_search_without_it(tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's default store: ./mlflow.db
    with FakeLLM(responder=responder) as fake:
        bare = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", "runs", "--name", "b", "--mlflow"],
                      stop_at=2)
        plain = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", "runs", "--name", "p"], stop_at=2)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow's default, here: by its path, the key mlflow.json has
    assert printed_command(bare.output) == ["search", "--resume", "runs/b", "--mlflow", store]
    assert list(json.loads((tmp_path / "runs" / "b" / "mlflow.json").read_text())["runs"]) == [store]
    assert printed_command(plain.output) == ["search", "--resume", "runs/p"]


def test_a_bare_mlflow_option_whose_environment_uri_holds_a_password_stays_bare(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI with a password: named without it, the store would refuse the
    resume; a bare --mlflow reads the variable again. Never the password."""
    from promptclimb.agent.pipeline import resume_command

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:pw-SECRET@127.0.0.1:5000/?token=tk-SECRET")
    command, note = resume_command(tmp_path / "run", "")
    assert command == f"promptclimb search --resume {tmp_path / 'run'} --mlflow" and note is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000/")
    assert resume_command(tmp_path / "run", "")[0].endswith(" --mlflow http://127.0.0.1:5000")


@pytest.mark.parametrize("typed", ["--mlflow", "--mlflow sqlite:///mlflow.db"])
def test_the_printed_command_run_from_another_folder_continues_the_same_mlflow_run(tmp_path, monkeypatch, typed):
    """A bare --mlflow (MLflow's default: ./mlflow.db) or a relative sqlite path, printed as
    typed, was another database in the folder the resume ran from: it logged a second MLflow
    run there (mlflow.json then linked two), the first left KILLED with half the run."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    here, there, runs = tmp_path / "here", tmp_path / "there", tmp_path / "runs"
    here.mkdir(), there.mkdir()
    monkeypatch.chdir(here)
    with FakeLLM(responder=responder) as fake:
        stopped = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "t",
                                *typed.split()], stop_at=3)
        assert stopped.exit_code == 130, stopped.output
        command = printed_command(stopped.output)
        monkeypatch.chdir(there)
        resumed = search(fake, command)
    assert resumed.exit_code == 0, resumed.output
    uri = f"sqlite:///{here / 'mlflow.db'}"
    assert list(json.loads((runs / "t" / "mlflow.json").read_text())["runs"]) == [uri]  # one MLflow run, linked
    assert not (there / "mlflow.db").exists()
    assert MlflowClient(uri).get_run(linked_run_id(runs / "t", uri)).info.status == "FINISHED"
    assert command[-2:] == ["--mlflow", uri]


def test_show_of_a_stopped_tracked_run_says_the_command_that_continues_its_mlflow_run(tmp_path, monkeypatch):
    """`show` of an unfinished run said `search --resume RUN`, without --mlflow: a resume so
    did not track, and the MLflow run stayed KILLED with half the run. Its one linked store now
    goes with it; run as said, from another folder, the search continues that MLflow run."""
    uri, runs = sqlite_uri(tmp_path / "store"), tmp_path / "runs"
    with FakeLLM(responder=responder) as fake:
        stopped = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "t",
                                "--mlflow", uri], stop_at=3)
        assert stopped.exit_code == 130, stopped.output
        shown_run = CliRunner().invoke(cli, ["show", str(runs / "t")])
        assert shown_run.exit_code == 0, shown_run.output
        line = next(line for line in shown_run.output.splitlines() if line.startswith("continue it with: "))
        command = shlex.split(line.removeprefix("continue it with: "))
        assert command == ["promptclimb", "search", "--resume", str(runs / "t"), "--mlflow", uri]
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        resumed = search(fake, command[1:])
    assert resumed.exit_code == 0, resumed.output
    run_id = linked_run_id(runs / "t", uri)
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    assert f"MLflow: continuing run {run_id} at {uri}" in resumed.output


def test_show_of_a_run_tracked_on_a_server_names_it_beside_the_command(tmp_path):
    """A server's store is kept without the password or token it may need: put in the command,
    `--mlflow http://host` overrode an MLFLOW_TRACKING_URI that held them, and the resume's
    tracking failed."""
    runs = tmp_path / "runs"
    with FakeLLM(responder=responder) as fake:
        stopped = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "t"], stop_at=3)
    assert stopped.exit_code == 130, stopped.output
    (runs / "t" / "mlflow.json").write_text(json.dumps({"v": 1, "runs": {
        "http://mlflow.example:5000": {"experiment_id": "1", "run_id": "abc"}}}))
    shown = CliRunner().invoke(cli, ["show", str(runs / "t")]).output
    assert f"continue it with: promptclimb search --resume {runs / 't'}\n" in shown
    assert "(its MLflow run is on http://mlflow.example:5000: add --mlflow with that server's URI, and the " \
           "credentials it needs, to continue that MLflow run)" in shown


def test_an_llm_that_fails_for_good_says_the_command_with_mlflow_and_ends_its_mlflow_run_failed(tmp_path):
    """A search that fails (an LLM that refuses the request: rc 1) was KILLED in MLflow, as
    a Ctrl-C; SIGTERM (SystemExit 143) stays KILLED."""
    uri = sqlite_uri(tmp_path / "store")
    with FakeLLM(responder=responder) as fake:
        fake.faults.extend(["ok"] + ["401"] * 20)  # one answer, then the LLM refuses
        cut = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", tmp_path / "runs", "--name", "t",
                            "--max-tries", "1", "--no-cache", "--mlflow", uri])
        fake.faults.clear()
        termed = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", tmp_path / "runs", "--name",
                               "s", "--mlflow", uri], stop_at=3, stop=SystemExit(143))
    assert cut.exit_code == 1, cut.output
    assert f"continue it with: promptclimb search --resume {tmp_path / 'runs' / 't'} --mlflow {uri}" in cut.output
    client = MlflowClient(uri)
    assert client.get_run(linked_run_id(tmp_path / "runs" / "t", uri)).info.status == "FAILED"
    assert termed.exit_code == 143, termed.output
    assert client.get_run(linked_run_id(tmp_path / "runs" / "s", uri)).info.status == "KILLED"
