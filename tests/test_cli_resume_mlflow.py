"""The command a stopped `search --mlflow URI` prints to continue it carries `--mlflow URI`
(a resumed search tracks only when given it again: it is not recorded), never a secret the
URI held; run as printed, the search continues its MLflow run to FINISHED."""

from __future__ import annotations

import shlex

from click.testing import CliRunner
from conftest import require_extra

require_extra("mlflow", "mlflow")
from mlflow import MlflowClient  # noqa: E402

from fake_llm import FakeLLM, WordEvaluator  # noqa: E402
from test_mlflow import free_port, linked_run_id, sqlite_uri  # noqa: E402
from test_search import KEY, responder  # noqa: E402

from promptclimb.agent.cli import cli  # noqa: E402

SMALL = ["--iterations", "3", "--search", "template", "--resets", "1", "--pool-sample", "6"]


class StoppedAfter(WordEvaluator):
    """Ctrl-C while the `stop_at`-th batch of templates is scored (0: never)."""

    def __init__(self, dataset: str, stop_at: int = 0):
        super().__init__(dataset)
        self.stop_at, self.batches = stop_at, 0

    def score(self, *args, **kwargs):
        self.batches += 1
        if self.batches == self.stop_at:
            raise KeyboardInterrupt
        return super().score(*args, **kwargs)


def search(fake, args, stop_at: int = 0):
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
    return CliRunner().invoke(cli, list(map(str, args)), env=env,
                              obj={"evaluator_factory": lambda **kw: StoppedAfter(kw["dataset"], stop_at)})


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
    assert [m.step for m in client.get_metric_history(run_id, "new_proposals")] == [0, 1, 2]


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
    assert command[-2:] == ["--mlflow", f"http://127.0.0.1:{secret_uri.split(':')[-1].split('/')[0]}/"]
    assert "note: the --mlflow URI had a password or key, left out of that command: give the URI with it again" \
        in stopped.output.splitlines()


def test_a_bare_mlflow_option_is_printed_bare_and_an_untracked_search_without_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default store: ./mlflow.db
    with FakeLLM(responder=responder) as fake:
        bare = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", "runs", "--name", "b", "--mlflow"],
                      stop_at=2)
        plain = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", "runs", "--name", "p"], stop_at=2)
    assert printed_command(bare.output) == ["search", "--resume", "runs/b", "--mlflow"]
    assert printed_command(plain.output) == ["search", "--resume", "runs/p"]


def test_an_llm_that_fails_for_good_says_the_command_with_mlflow(tmp_path):
    uri = sqlite_uri(tmp_path / "store")
    with FakeLLM(responder=responder) as fake:
        fake.faults.extend(["ok"] + ["500"] * 20)  # one answer, then the LLM is down
        cut = search(fake, ["search", "--dataset", "toy", *SMALL, "--runs-dir", tmp_path / "runs", "--name", "t",
                            "--max-tries", "1", "--no-cache", "--mlflow", uri])
    assert cut.exit_code == 1, cut.output
    assert f"continue it with: promptclimb search --resume {tmp_path / 'runs' / 't'} --mlflow {uri}" in cut.output
