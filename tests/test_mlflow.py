"""MLflow tracking (agent/tracking/, `promptclimb mlflow-sync`) against a real `mlflow
server` (sqlite backend, 127.0.0.1, a free port), read back through MlflowClient. The run
folders come from real tiny searches (`promptclimb search`, fake LLM, in-memory evaluator)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require_extra

require_extra("mlflow", "mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import ViewType  # noqa: E402

from fake_llm import FakeLLM, WordEvaluator  # noqa: E402
from test_search import KEY, POOL, responder  # noqa: E402

from promptclimb.agent.cli import cli  # noqa: E402
from promptclimb.agent.core.errors import PromptclimbError  # noqa: E402
from promptclimb.agent.llm.client import LLMClient  # noqa: E402
from promptclimb.agent.runs.run import load_run  # noqa: E402
from promptclimb.agent.runs.listing import result_said  # noqa: E402
from promptclimb.agent.runs.store import RunStore  # noqa: E402
from promptclimb.agent.search import HillClimber, SearchConfig  # noqa: E402
from promptclimb.agent.tracking import Tracker, sync_run, sync_sweep  # noqa: E402

ANSWER_METRICS = ("best_train_accuracy", "best_val_accuracy", "new_proposals", "refused_proposals",
                  "prompt_tokens", "completion_tokens")
RUN_FILES = {"config.json", "history.jsonl", "summary.json", "prompts.csv", "curve.png"}
LIVE = dict(restarts=1, resets=1, iterations=3, proposals=5, pool_sample=0, search="template")  # 3 LLM answers

# MLflow's local (sqlite) store uses SQLAlchemy's deprecated `noload`: the first store a process
# opens issues a SQLAlchemy DeprecationWarning. Python's default filters hide a library's
# DeprecationWarning, so `promptclimb mlflow-sync` / `search --mlflow` never print it; pytest shows
# them, and a command's `warning:` lines (agent/cli/errors.py) would then count it as output in
# whichever test opens a store first. Ignored here, that warning only.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning:mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """A real MLflow tracking server for this module; stopped (its process group) at the end."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop():
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        log.close()

    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                stop()
                log_text = (root / "server.log").read_text(errors="replace")
                pytest.fail("mlflow server did not start:\n" + log_text[-3000:])
            time.sleep(0.5)
    yield uri
    stop()


@pytest.fixture
def client(server) -> MlflowClient:
    return MlflowClient(tracking_uri=server, registry_uri=server)


@pytest.fixture
def fake():
    with FakeLLM(responder=responder) as llm:
        yield llm


def search(fake, runs: Path, *args):
    """`promptclimb search ...` with the in-memory evaluator, as tests/test_search.py runs it."""
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
    return CliRunner().invoke(cli, ["search", *map(str, args), "--runs-dir", str(runs)], env=env,
                              obj={"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])})


def mlflow_sync(*args):
    return CliRunner().invoke(cli, ["mlflow-sync", *map(str, args)])


def history(client, run_id, key, pool: bool = False) -> list[tuple[int, float]]:
    """(step, value) of each answer's metric `key`; `pool`: and the initial pool's best, step -1."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key) if pool or m.step >= 0)


def linked_run_id(run_dir: Path, uri: str) -> str:
    return json.loads((run_dir / "mlflow.json").read_text())["runs"][uri]["run_id"]


# -- after the fact: promptclimb mlflow-sync ------------------------------------------------------
def test_sync_logs_settings_curves_results_files_and_the_winning_prompt(tmp_path, server, client):
    run_dir = tmp_path / "runs" / "done"
    # the second answer beats everything before it; the later ones repeat (refused)
    script = ["a grayscale photo of a {}.\na tiny {}", "a grayscale photo of clothing: a {}.", "{}"]
    with FakeLLM(script=script) as fake:
        result = search(fake, run_dir.parent, "--dataset", "toy", "--name", "done", "--iterations", 3, "--search", "template",
                        "--resets", 2, "--pool-sample", 6)
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    answers = summary["counts"]["llm_answers"]
    assert answers == 6

    synced = mlflow_sync("done", "--runs-dir", tmp_path / "runs", "--tracking-uri", server, "--experiment", "sync")
    assert synced.exit_code == 0, synced.output
    run_id = linked_run_id(run_dir, server)
    assert run_id in synced.output and f"{answers} answers logged now" in synced.output
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "done"
    assert client.get_experiment(run.info.experiment_id).name == "sync"

    # every setting as a param (config.json flattened), never a secret
    params = run.data.params
    assert params["search.iterations"] == "3" and params["search.resets"] == "2"
    assert params["evaluator_args.dataset"] == "toy" and params["llm.model"] == "gpt-4o-mini"
    assert params["llm.base_url"] == fake.base_url and "versions.python" in params
    tags = run.data.tags
    assert {k: tags[k] for k in ("dataset", "backbone", "shots", "seed", "llm")} == {
        "dataset": "toy", "backbone": "ViT-B-32 (openai)", "shots": "1", "seed": "0", "llm": "gpt-4o-mini"}
    assert not any("TOPSECRET" in v for v in [*params.values(), *tags.values()])

    # one value per LLM answer, at steps 0..n-1; the best so far is the reader's; the curves
    # start at the initial pool's best, at step -1 (they started at the first answer)
    for key in ANSWER_METRICS:
        pool = [-1] if key.startswith("best_") else []
        assert [step for step, _ in history(client, run_id, key, pool=True)] == pool + list(range(answers)), key
    reader = load_run(run_dir).iterations()
    curve = [v for _, v in history(client, run_id, "best_train_accuracy")]
    assert curve == [it["best_so_far"] for it in reader] and curve[0] < curve[1] == curve[-1]
    scores = load_run(run_dir).ranked()
    pool_best = scores[scores["x"] == 0].iloc[0]  # scored before the first answer
    for split in ("train", "val"):
        assert history(client, run_id, f"best_{split}_accuracy", pool=True)[0] == (-1, pool_best[split]), split
    assert [v for _, v in history(client, run_id, "new_proposals")] == [len(it["scored"]) for it in reader]
    assert [v for _, v in history(client, run_id, "refused_proposals")] == [len(it["rejected"]) for it in reader]
    assert sum(v for _, v in history(client, run_id, "refused_proposals")) > 0
    assert sum(v for _, v in history(client, run_id, "completion_tokens")) == summary["ledger"]["completion_tokens"]
    # the final test accuracies: the result's (what `runs` lists), the baseline's
    metrics = run.data.metrics
    assert metrics["best_test_accuracy"] == summary["best"]["accuracy"]["test"]
    ensemble = "ensemble_test_accuracy" if summary["winner"] == "ensemble" else "ensemble_candidate_test_accuracy"
    assert metrics[ensemble] == summary["ensemble"]["accuracy"]["test"]
    assert (tags["promptclimb.result"], metrics["result_test_accuracy"]) == result_said(summary)
    assert metrics["baseline_test_accuracy"] == summary["baseline"]["accuracy"]["test"]
    assert not any(key.startswith("adapter_") for key in metrics)  # no adapter was fit
    assert "promptclimb.names" not in tags  # a template search: no names searched
    # the run folder's files
    assert {a.path for a in client.list_artifacts(run_id)} == RUN_FILES
    logged = Path(client.download_artifacts(run_id, "summary.json", str(tmp_path / "down")))
    assert json.loads(logged.read_text()) == summary

    # the winning prompt, registered with its metrics and the run as its source
    uri = tags["promptclimb.prompt"]
    name, version = uri.removeprefix("prompts:/").rsplit("/", 1)
    assert name == "promptclimb.toy.ViT-B-32-openai"
    prompt = client.get_prompt_version(name, version)
    assert prompt.template == summary["best"]["template"].replace("{}", "{{class_name}}")
    assert prompt.tags["template"] == summary["best"]["template"]
    assert float(prompt.tags["test_accuracy"]) == summary["best"]["accuracy"]["test"]
    assert prompt.tags["source_run_id"] == run_id and prompt.tags["promptclimb_run"] == "done"
    assert json.loads(prompt.tags["class_names"]) == summary["best"]["names"]  # what the template goes with
    assert {"name": name, "version": version} in json.loads(tags["mlflow.linkedPrompts"])

    # a second sync continues the same MLflow run and logs nothing twice
    again = mlflow_sync(run_dir, "--tracking-uri", server, "--experiment", "sync")
    assert again.exit_code == 0, again.output
    assert linked_run_id(run_dir, server) == run_id and "0 answers logged now" in again.output
    for key in (*ANSWER_METRICS, "best_test_accuracy"):
        assert len(history(client, run_id, key)) == (1 if key == "best_test_accuracy" else answers), key
    assert len(history(client, run_id, "best_val_accuracy", pool=True)) == answers + 1  # the pool's once
    assert int(client.load_prompt(f"prompts:/{name}@latest").version) == int(version)  # no second version
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, server, client, fake):
    runs, run_dir = tmp_path / "runs", tmp_path / "runs" / "cut"
    fake.faults.extend(["ok"] + ["500"] * 20)  # one answer, then the LLM is down
    cut = search(fake, runs, "--dataset", "toy", "--name", "cut", "--iterations", 4, "--search", "template", "--resets", 1,
                 "--pool-sample", 6, "--max-tries", 1, "--no-cache")
    assert cut.exit_code == 1 and "--resume" in cut.output
    with RunStore.resume(run_dir):  # a search holds the run: its last answer may still be being scored
        held = sync_run(run_dir, server, experiment="resume")
    assert held.new_answers == 0 and client.get_run(held.run_id).info.status == "RUNNING"
    synced = sync_run(run_dir, server, experiment="resume")
    assert synced.run_id == held.run_id and synced.new_answers == 1
    run = client.get_run(synced.run_id)
    # its search failed (the history's last event says so): FAILED, as the live tracker ends it, not KILLED
    assert run.info.status == "FAILED" and run.data.tags["promptclimb.status"] == "failed"
    assert history(client, synced.run_id, "new_proposals") == [(0, 5.0)]
    assert "best_test_accuracy" not in run.data.metrics and "promptclimb.prompt" not in run.data.tags
    assert synced.prompt is None

    fake.faults.clear()
    resumed = search(fake, runs, "--resume", "cut")
    assert resumed.exit_code == 0, resumed.output
    again = sync_run(run_dir, server, experiment="resume")
    assert again.run_id == synced.run_id and again.new_answers == 3
    run = client.get_run(synced.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["promptclimb.status"] == "done"
    for key in ANSWER_METRICS:
        assert [step for step, _ in history(client, synced.run_id, key)] == [0, 1, 2, 3], key
    assert again.prompt and run.data.tags["promptclimb.prompt"] == again.prompt
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_sweep_is_a_parent_run_with_a_nested_run_per_cell(tmp_path, server, client, fake):
    """A sweep folder as agent/sweep/ lays it out: sweep.json and one ordinary run
    folder per cell. One cell was logged on its own before: it keeps its run, now nested."""
    sweep = tmp_path / "runs" / "grid"
    cells = ["toy-a", "toy-b"]
    for cell in cells:
        result = search(fake, sweep, "--dataset", "toy", "--name", cell, "--iterations", 2, "--search", "template", "--resets", 1,
                        "--pool-sample", 4)
        assert result.exit_code == 0, result.output
    (sweep / "sweep.json").write_text(json.dumps({"grid": {"dataset": ["toy"], "seeds": [0, 1]},
                                                  "search": {"iterations": 2}, "cells": cells}))
    # the names climb's summary section: the class names go with the registered template
    summary_path = sweep / "toy-b" / "summary.json"
    names = ["red square", "green field", "blue lake"]
    summary = json.loads(summary_path.read_text())
    summary["names"] = {"template": summary["best"]["template"], "start": ["a", "b", "c"], "found": names}
    summary["best"]["names"] = names
    summary_path.write_text(json.dumps(summary))
    alone = sync_run(sweep / "toy-a", server, experiment="sweeps")

    out = mlflow_sync("grid", "--runs-dir", tmp_path / "runs", "--tracking-uri", server, "--experiment", "sweeps")
    assert out.exit_code == 0, out.output
    parent_id = linked_run_id(sweep, server)
    parent = client.get_run(parent_id)
    assert parent.info.run_name == "grid" and parent.info.status == "FINISHED"
    assert parent.data.params["grid.dataset"] == '["toy"]' and parent.data.params["cells"] == "2"
    assert {a.path for a in client.list_artifacts(parent_id)} == {"sweep.json"}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(r.info.run_name for r in children) == cells
    assert linked_run_id(sweep / "toy-a", server) == alone.run_id in {r.info.run_id for r in children}
    for child in children:
        assert len(history(client, child.info.run_id, "best_val_accuracy")) == 2
    prompts = {r.info.run_name: client.get_prompt_version(*r.data.tags["promptclimb.prompt"]
                                                          .removeprefix("prompts:/").rsplit("/", 1))
               for r in children}
    assert json.loads(prompts["toy-b"].tags["class_names"]) == names
    assert json.loads(prompts["toy-a"].tags["class_names"]) != names

    assert sync_sweep(sweep, server, experiment="sweeps").run_id == parent_id  # again: the same runs
    assert len(client.search_runs([parent.info.experiment_id])) == 3


# -- live: a search with a Tracker attached to its run store --------------------------------------
def climb(tmp_path, base_url, name, track):
    llm = LLMClient("fake", base_url=base_url, api_key=KEY, timeout=5, cache_dir=tmp_path / "cache",
                    wait_initial=0.001, wait_max=0.01)
    run_dir = tmp_path / "runs" / name
    store = RunStore.resume(run_dir) if (run_dir / "config.json").exists() else RunStore.create(run_dir, {"t": 1})
    with store, track(store) as tracker:
        result = HillClimber(WordEvaluator(), llm, store, SearchConfig(**LIVE), pool=POOL,
                             echo=lambda msg: None).run()
        run_id = tracker.run_id
    return result, run_dir, run_id


def test_a_live_tracker_logs_each_answer_as_the_next_one_comes(tmp_path, server, client, capfd):
    seen = []  # answers the server held when each LLM request came

    def watching(body):
        runs = client.search_runs([client.get_experiment_by_name("live").experiment_id])
        seen.append(len(client.get_metric_history(runs[0].info.run_id, "new_proposals")))
        return responder(body)

    warnings, steps_sent = [], []  # the answers' steps in each batch sent to the server

    def attach(store):
        tracker = Tracker.attach(store, server, warnings.append, "live")
        log_batch = tracker.mirror.client.log_batch

        def counting(run_id, metrics=(), **kw):
            steps_sent.extend(sorted({m.step for m in metrics if m.key == "new_proposals"}))
            return log_batch(run_id, metrics=metrics, **kw)

        tracker.mirror.client.log_batch = counting
        return tracker

    with FakeLLM(responder=watching) as fake:
        result, run_dir, run_id = climb(tmp_path, fake.base_url, "live", attach)
    assert warnings == [f"MLflow: run {run_id} at {server}"] and result.stopped == "completed"
    assert steps_sent == [0, 1, 2]  # each answer sent once, however many events come after it
    assert capfd.readouterr().out == ""  # MLflow prints nothing where `search --json` prints its summary
    assert seen == [0, 0, 1]  # answer k is logged once answer k+1 has come (then it is complete)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "promptclimb.prompt" in run.data.tags
    reader = load_run(run_dir).iterations()
    assert [v for _, v in history(client, run_id, "best_train_accuracy")] == [it["best_so_far"] for it in reader]
    assert [v for _, v in history(client, run_id, "new_proposals")] == [len(it["scored"]) for it in reader]
    pool = history(client, run_id, "best_train_accuracy", pool=True)[0]
    assert pool[0] == -1 and pool[1] <= reader[0]["best_so_far"]  # where the curve starts, logged live
    assert RUN_FILES - {"curve.png"} <= {a.path for a in client.list_artifacts(run_id)}

    # the same run again (a resume): the same MLflow run, nothing logged twice
    with FakeLLM(responder=responder) as fake:
        _, _, again = climb(tmp_path, fake.base_url, "live",
                            lambda store: Tracker.attach(store, server, warnings.append, "live"))
    assert again == run_id and warnings[1:] == [f"MLflow: continuing run {run_id} at {server}"]
    assert [step for step, _ in history(client, run_id, "best_train_accuracy", pool=True)] == [-1, 0, 1, 2]


def test_the_best_so_far_of_a_names_search_never_falls_and_each_answer_is_logged_with_its_final_value(
        tmp_path, monkeypatch):
    """A names turn writes its kept change after the guard's answers inside the turn: each of
    them is logged with the best so far the reader shows (the change counted), which never
    falls; a turn still being written is held back whole, so what a live tracker (or a sync
    while the search writes) logs is what the finished run says."""
    from test_reading import make_names_run

    from promptclimb.agent.tracking.logged import answer_metrics

    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    run_dir, _ = make_names_run(tmp_path)
    run = load_run(run_dir)
    final = {step: values["best_train_accuracy"] for step, _, values in answer_metrics(run)}
    assert list(final.values()) == [it["best_so_far"] for it in run.iterations()]
    assert list(final.values()) == sorted(final.values())
    kinds = [e["event"] for e in run.answers()]
    assert kinds[:2] == ["names_exchange", "names_judge"]
    assert final[0] == final[1] == run.of("names_change")[0]["accuracy"]["train"]  # the turn's rename counted

    lines = (run_dir / "history.jsonl").read_text().splitlines(keepends=True)
    for n in range(1, len(lines) + 1):  # the folder as a live tracker saw it after each event
        (run_dir / "history.jsonl").write_text("".join(lines[:n]))
        for step, _, values in answer_metrics(load_run(run_dir), hold_last=True):
            assert values["best_train_accuracy"] == final[step], f"answer {step} logged after line {n}"

    (run_dir / "history.jsonl").write_text("".join(lines))
    uri = sqlite_uri(tmp_path / "store")
    assert sync_run(run_dir, uri).new_answers == len(final)
    logged = history(MlflowClient(uri), linked_run_id(run_dir, uri), "best_train_accuracy")
    assert logged == sorted(final.items())


def test_an_unreachable_server_is_one_warning_and_the_search_goes_on(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    warnings = []
    with FakeLLM(responder=responder) as fake:
        result, run_dir, run_id = climb(tmp_path, fake.base_url, "alone",
                                        lambda store: Tracker.attach(store, dead, warnings.append))
    assert result.stopped == "completed" and (run_dir / "summary.json").exists() and run_id is None
    assert len(warnings) == 1 and warnings[0].startswith("warning: MLflow tracking stopped")
    assert dead in warnings[0] and f"promptclimb mlflow-sync {run_dir}" in warnings[0]
    assert "password or key" not in warnings[0]
    assert not (run_dir / "mlflow.json").exists()
    # a URI with a password: left out of the command printed, and said (the command was refused by the server)
    said = []
    with FakeLLM(responder=responder) as fake:
        climb(tmp_path, fake.base_url, "secret", lambda store: Tracker.attach(
            store, dead.replace("http://", "http://bob:hunter2@") + "/?token=abc", said.append))
    assert said[0].endswith(f"promptclimb mlflow-sync {tmp_path / 'runs' / 'secret'} --tracking-uri {dead} (the URI "
                            "had a password or key, left out of that command: give the whole URI to it)")
    assert "hunter2" not in said[0] and "abc" not in said[0]

    out = mlflow_sync(run_dir, "--tracking-uri", dead)
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert len(out.output.splitlines()) == 1
    assert out.output.startswith(f"Error: cannot reach the MLflow tracking server at {dead} (")


def test_tracking_that_stops_midway_ends_its_mlflow_run_failed_and_a_folder_store_points_at_a_database(
        tmp_path, server, client, monkeypatch):
    from promptclimb.agent.tracking.mirror import Mirror

    said = []
    logged = Mirror.log_answers

    def fails_on_the_third(self, *args, **kwargs):
        if len(said) >= 2:
            raise RuntimeError("the server went away")
        said.append(1)
        return logged(self, *args, **kwargs)

    monkeypatch.setattr(Mirror, "log_answers", fails_on_the_third)
    warnings = []
    with FakeLLM(responder=responder) as fake:
        result, run_dir, _ = climb(tmp_path, fake.base_url, "cut",  # an experiment of its own: others count runs
                                   lambda store: Tracker.attach(store, server, warnings.append, "stops-midway"))
    run_id = linked_run_id(run_dir, server)
    assert result.stopped == "completed" and warnings[0] == f"MLflow: run {run_id} at {server}"
    assert len(warnings) == 2 and "the server went away" in warnings[1]
    assert client.get_run(run_id).info.status == "FAILED"  # not RUNNING for ever
    monkeypatch.setattr(Mirror, "log_answers", logged)  # the server is back
    assert mlflow_sync(run_dir, "--tracking-uri", server).exit_code == 0  # continued and ended
    assert client.get_run(run_id).info.status == "FINISHED"

    folder = tmp_path / "mlfile"
    with FakeLLM(responder=responder) as fake:
        search_said = search(fake, tmp_path / "runs", "--dataset", "toy", "--name", "f", "--iterations", 1, "--search",
                             "template", "--resets", 1, "--pool-sample", 4, "--mlflow", f"file:{folder}")
    assert search_said.exit_code == 0, search_said.output
    hint = next(line for line in search_said.output.splitlines() if line.startswith("warning: MLflow tracking"))
    assert hint.endswith(f"--tracking-uri sqlite:///{folder.resolve() / 'mlflow.db'}")
    # the folder from MLFLOW_TRACKING_URI (--mlflow bare): the hint's sync without it was refused the same way
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "envfolder"))
    with FakeLLM(responder=responder) as fake:
        search_said = search(fake, tmp_path / "runs", "--dataset", "toy", "--name", "e", "--iterations", 1, "--search",
                             "template", "--resets", 1, "--pool-sample", 4, "--mlflow")
    assert search_said.exit_code == 0, search_said.output
    hint = next(line for line in search_said.output.splitlines() if line.startswith("warning: MLflow tracking"))
    assert hint.endswith(f"--tracking-uri sqlite:///{(tmp_path / 'envfolder').resolve() / 'mlflow.db'}"), hint


def test_search_with_the_mlflow_option_logs_its_run_and_a_resume_continues_it(tmp_path, server, client, fake):
    """`search --mlflow URI`: one MLflow run per search, one metric step per answer; the
    command that resumes the run (with --mlflow again) logs into the same MLflow run."""
    runs, run_dir = tmp_path / "runs", tmp_path / "runs" / "tracked"
    fake.faults.extend(["ok", "ok"] + ["500"] * 20)  # two answers, then the LLM is down
    cut = search(fake, runs, "--dataset", "toy", "--name", "tracked", "--iterations", 4, "--search", "template", "--resets", 1,
                 "--pool-sample", 6, "--max-tries", 1, "--no-cache", "--mlflow", server)
    assert cut.exit_code == 1 and "--resume" in cut.output and "warning" not in cut.output
    run_id = linked_run_id(run_dir, server)
    assert client.get_run(run_id).info.status == "FAILED"  # a failure, not a Ctrl-C (KILLED)
    # the search's last sync, its own lock still held: not "running" for good (`runs` says failed)
    assert client.get_run(run_id).data.tags["promptclimb.status"] == "failed"
    assert f"MLflow: run {run_id} at {server}\n" in cut.output  # where it went, as mlflow-sync says
    fake.faults.clear()
    resumed = search(fake, runs, "--resume", "tracked", "--mlflow", server)
    assert resumed.exit_code == 0, resumed.output
    assert linked_run_id(run_dir, server) == run_id
    assert f"MLflow: continuing run {run_id} at {server}\n" in resumed.output
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["search.iterations"] == "4"
    assert [step for step, _ in history(client, run_id, "new_proposals")] == [0, 1, 2, 3]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_search_with_an_unreachable_mlflow_server_finishes_with_one_warning(tmp_path, fake):
    dead = f"http://127.0.0.1:{free_port()}"
    result = search(fake, tmp_path / "runs", "--dataset", "toy", "--name", "alone", "--iterations", 2, "--search", "template",
                    "--resets", 1, "--pool-sample", 6, "--mlflow", dead)
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if "MLflow" in line] == [
        line for line in result.output.splitlines() if line.startswith("warning: MLflow tracking stopped")]
    assert sum(line.startswith("warning: MLflow tracking stopped") for line in result.output.splitlines()) == 1
    assert (tmp_path / "runs" / "alone" / "summary.json").exists()


def test_a_search_refused_while_loading_leaves_no_mlflow_run_and_says_only_its_error(tmp_path, fake):
    """Bad input the evaluator finds (a --classnames file one class short, a bad --data-root)
    discards the run folder: nothing is left in MLflow either, and no warning names the folder
    gone as one to sync; a rerun fixed leaves one MLflow run, its own."""
    def refused(**kwargs):
        raise PromptclimbError("--classnames two.txt: line 2 is the last, but 1 of the dataset's 3 classes "
                               "has no name (bag)")

    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
    uri, runs = sqlite_uri(tmp_path / "store"), tmp_path / "runs"
    args = ["search", "--dataset", "toy", "--name", "ghost", "--iterations", 1, "--search", "template", "--resets", 1,
            "--pool-sample", 4, "--runs-dir", runs, "--mlflow", uri]
    for _ in range(2):  # as a sweep reruns a failed cell
        result = CliRunner().invoke(cli, list(map(str, args)), env=env, obj={"evaluator_factory": refused})
        assert result.exit_code == 1, result.output
        assert result.output.splitlines() == [
            "Error: --classnames two.txt: line 2 is the last, but 1 of the dataset's 3 classes has no name (bag)"]
        assert not (runs / "ghost").exists()
    client = MlflowClient(uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)],
                              run_view_type=ViewType.ALL) == []

    fixed = search(fake, runs, *args[1:args.index("--runs-dir")], "--mlflow", uri)
    assert fixed.exit_code == 0, fixed.output
    assert [r.info.run_id for r in all_runs(client)] == [linked_run_id(runs / "ghost", uri)]


def test_a_sweep_with_mlflow_nests_its_cells_and_an_unreachable_server_is_one_warning(tmp_path, server, client,
                                                                                       fake):
    """What the sweep driver does after its cells (agent/sweep/driver.py `track_sweep`)."""
    from promptclimb.agent.sweep.driver import track_sweep

    sweep = tmp_path / "runs" / "grid"
    for cell in ("c1", "c2"):
        assert search(fake, sweep, "--dataset", "toy", "--name", cell, "--iterations", 2, "--search", "template",
                      "--resets", 1, "--pool-sample", 4, "--mlflow", server).exit_code == 0
    (sweep / "sweep.json").write_text(json.dumps({"grid": {"dataset": ["toy"]}, "search": {}, "cells": ["c1", "c2"]}))
    said = []
    track_sweep(sweep, None, said.append)  # no --mlflow: nothing
    assert said == [] and not (sweep / "mlflow.json").exists()
    track_sweep(sweep, server, said.append)
    parent = linked_run_id(sweep, server)
    assert said == [f"MLflow: sweep run {parent} with its cells nested ({server})"]
    for cell in ("c1", "c2"):  # the runs the cells logged live, now nested
        assert client.get_run(linked_run_id(sweep / cell, server)).data.tags["mlflow.parentRunId"] == parent
    said.clear()
    track_sweep(sweep, f"http://127.0.0.1:{free_port()}", said.append)
    assert len(said) == 1 and said[0].startswith("warning: MLflow tracking of the sweep failed")
    assert f"promptclimb mlflow-sync {sweep}" in said[0]


def answer_times(run_dir: Path) -> list[tuple[int, int]]:
    """(step, time in ms) of each LLM answer in the run's history, as its metrics are logged."""
    return sorted((e["call"], int(float(e["time"]) * 1000)) for e in load_run(run_dir).events
                  if e["event"] == "llm_exchange")


def logged_times(client, run_id) -> list[tuple[int, int]]:
    return sorted((m.step, m.timestamp) for m in client.get_metric_history(run_id, "new_proposals"))


def synced_sweep_of_two_cells(tmp_path, fake) -> tuple:
    """A finished sweep of cells c1 and c2, synced once: (its folder, the store's URI, a client)."""
    sweep, uri = tmp_path / "runs" / "grid", sqlite_uri(tmp_path / "store")
    cells = ["c1", "c2"]
    for cell in cells:
        finished_run(fake, sweep, cell)
    (sweep / "sweep.json").write_text(json.dumps({"grid": {"dataset": ["toy"]}, "search": {}, "cells": cells}))
    assert mlflow_sync(sweep, "--tracking-uri", uri).exit_code == 0
    return sweep, uri, MlflowClient(uri)

@pytest.mark.parametrize("tagged", [True, False])
def test_a_copied_sweep_folder_is_a_sweep_of_its_own_and_leaves_the_originals_cell_runs(tmp_path, fake, tagged):
    """`cp -r grid grid2`, then `mlflow-sync grid2`: the copy's cells were told apart as copies,
    but nested under the original's sweep run, whose cell runs were then deleted as redone.
    (`tagged` False: the original's sweep run was logged before it had its folder tag.)"""
    sweep, uri, client = synced_sweep_of_two_cells(tmp_path, fake)
    parent, cells = linked_run_id(sweep, uri), {c: linked_run_id(sweep / c, uri) for c in ("c1", "c2")}
    if not tagged:
        client.delete_tag(parent, "promptclimb.folder")
    shutil.copytree(sweep, tmp_path / "runs" / "grid2")
    assert mlflow_sync(tmp_path / "runs" / "grid2", "--tracking-uri", uri).exit_code == 0
    assert all(client.get_run(run_id).info.lifecycle_stage == "active" for run_id in cells.values())
    copies = {c: linked_run_id(tmp_path / "runs" / "grid2" / c, uri) for c in ("c1", "c2")}
    assert not set(copies.values()) & set(cells.values())
    if tagged:
        assert linked_run_id(tmp_path / "runs" / "grid2", uri) != parent
    assert mlflow_sync(sweep, "--tracking-uri", uri).exit_code == 0  # and the original again: nothing of either lost
    assert all(client.get_run(run_id).info.lifecycle_stage == "active" for run_id in [*cells.values(), *copies.values()])
    assert {c: linked_run_id(sweep / c, uri) for c in ("c1", "c2")} == cells


@pytest.mark.parametrize("redo", ["cell folder removed", "history removed, --mlflow live"])
def test_a_redone_cell_has_one_nested_run_holding_its_new_history_only(redo, tmp_path, fake):
    """A sweep cell run again from nothing: its folder removed (`rm -r SWEEP/CELL`, the link
    in CELL/mlflow.json gone with it), or its history (the link kept). Its new run replaces
    the old one: `mlflow-sync` nested a second run for the cell, or, the link kept, left
    the old history's answers at their steps (skipped as logged) beside the new ones."""
    sweep, uri, client = synced_sweep_of_two_cells(tmp_path, fake)
    parent, old = linked_run_id(sweep, uri), linked_run_id(sweep / "c2", uri)
    old_times = logged_times(client, old)
    assert old_times == answer_times(sweep / "c2")
    old_prompt = client.load_prompt(client.get_run(old).data.tags["promptclimb.prompt"])

    time.sleep(0.01)  # the redone answers come later, at other times
    if redo == "cell folder removed":
        shutil.rmtree(sweep / "c2")
        finished_run(fake, sweep, "c2")
    else:  # the resume of a run with no history is a new search; its live tracker replaces the run at once
        for name in ("history.jsonl", "summary.json"):
            (sweep / "c2" / name).unlink()
        resumed = search(fake, sweep, "--resume", "c2", "--mlflow", uri)
        assert resumed.exit_code == 0, resumed.output
        assert "warning" not in resumed.output, resumed.output
        live = linked_run_id(sweep / "c2", uri)  # replaced as the search began, still nested
        assert live != old and client.get_run(live).data.tags["mlflow.parentRunId"] == parent
        assert logged_times(client, live) == answer_times(sweep / "c2")
    synced = mlflow_sync(sweep, "--tracking-uri", uri)
    assert synced.exit_code == 0, synced.output

    children = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == ["c1", "c2"]  # one nested run per cell
    new = linked_run_id(sweep / "c2", uri)
    assert new != old and new in {r.info.run_id for r in children}
    assert list(json.loads((sweep / "c2" / "mlflow.json").read_text())["runs"]) == [uri]
    assert client.get_run(old).info.lifecycle_stage == "deleted"  # restorable until `mlflow gc`
    assert logged_times(client, new) == answer_times(sweep / "c2") != old_times  # the new answers only
    for key in ANSWER_METRICS:
        assert [step for step, _ in history(client, new, key)] == [0, 1], key
    run = client.get_run(new)
    assert run.info.status == "FINISHED" and run.data.tags["promptclimb.prompt"]
    # the newest prompt version is the new run's; the old one's still says where it came from
    newest = client.load_prompt(f"prompts:/{old_prompt.name}@latest")
    assert run.data.tags["promptclimb.prompt"] == f"prompts:/{newest.name}/{newest.version}"
    assert newest.tags["source_run_id"] == new
    assert client.load_prompt(f"prompts:/{old_prompt.name}/{old_prompt.version}").tags["source_run_id"] == old
    assert RUN_FILES <= {a.path for a in client.list_artifacts(new)}
    assert mlflow_sync(sweep, "--tracking-uri", uri).exit_code == 0  # again: nothing replaced
    assert linked_run_id(sweep / "c2", uri) == new and len(all_runs(client)) == 3



def active_children(client: MlflowClient, parent: str) -> dict[str, str]:
    """run id -> promptclimb.cell tag of the runs nested under `parent` (not deleted)."""
    runs = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    return {r.info.run_id: r.data.tags.get("promptclimb.cell") for r in runs}


def test_a_nested_run_is_told_by_its_cell_tag_whatever_its_name(tmp_path, fake):
    """A sweep's nested runs were told apart by their names, which MLflow's UI lets a user
    change: c2's run renamed "c1" was deleted by the next sync (as the old run of c1); a
    redone cell's old run, renamed, stayed beside its new one. A run nested before the
    promptclimb.cell tag was written is still told by its name."""
    sweep, uri, client = synced_sweep_of_two_cells(tmp_path, fake)
    parent, c1, c2 = (linked_run_id(folder, uri) for folder in (sweep, sweep / "c1", sweep / "c2"))
    assert active_children(client, parent) == {c1: "c1", c2: "c2"}

    client.update_run(c2, name="c1")  # in the UI
    client.delete_tag(c1, "promptclimb.cell")  # as a sync before the tag left it
    shutil.rmtree(sweep / "c1")
    finished_run(fake, sweep, "c1")  # redone
    assert mlflow_sync(sweep, "--tracking-uri", uri).exit_code == 0
    new_c1 = linked_run_id(sweep / "c1", uri)
    assert client.get_run(c2).info.lifecycle_stage == "active" and linked_run_id(sweep / "c2", uri) == c2
    assert client.get_run(c1).info.lifecycle_stage == "deleted"  # the old c1, by its name
    assert active_children(client, parent) == {new_c1: "c1", c2: "c2"}

    shutil.rmtree(sweep / "c2")
    finished_run(fake, sweep, "c2")  # redone: its old run, named "c1", is c2's
    assert mlflow_sync(sweep, "--tracking-uri", uri).exit_code == 0
    new_c2 = linked_run_id(sweep / "c2", uri)
    assert client.get_run(c2).info.lifecycle_stage == "deleted"
    assert active_children(client, parent) == {new_c1: "c1", new_c2: "c2"}

# -- local stores, damaged folders, failures midway -----------------------------------------------
def finished_run(fake, runs: Path, name: str) -> Path:
    result = search(fake, runs, "--dataset", "toy", "--name", name, "--iterations", 2, "--search", "template",
                    "--resets", 1, "--pool-sample", 4)
    assert result.exit_code == 0, result.output
    return runs / name


def test_a_soft_prompt_is_not_registered_as_a_text_prompt(tmp_path, server, client, fake):
    """A craft or cbbt run's best is learned vectors, written `<soft: a photo of a> {class}.`:
    registered, it became the latest version of the LLM runs' prompt, a template no one can use."""
    run_dir = finished_run(fake, tmp_path / "runs", "soft")
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "optimizer": "craft"}))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["best"]["template"] = "<soft: a photo of a> {}."
    (run_dir / "summary.json").write_text(json.dumps(summary))
    synced = mlflow_sync("soft", "--runs-dir", tmp_path / "runs", "--tracking-uri", server, "--experiment", "soft")
    assert synced.exit_code == 0, synced.output
    run = client.get_run(linked_run_id(run_dir, server))
    assert run.info.status == "FINISHED" and "promptclimb.prompt" not in run.data.tags


def test_an_adapter_fitted_again_after_a_sync_is_the_latest_adapter_accuracy(tmp_path, server, client, fake):
    """`adapt` kept another adapter (89.0%) after a sync had logged the first (89.85%): the new
    value was logged at the same step and the same time, and MLflow showed the larger, old one."""
    run_dir = finished_run(fake, tmp_path / "runs", "adapted")
    summary = json.loads((run_dir / "summary.json").read_text())

    def adapt_and_sync(accuracy: float) -> float:
        summary["adapter"] = {"kind": "residual-logits", "accuracy": {"train": 1.0, "val": 0.9, "test": accuracy},
                              "result": "adapter"}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        synced = mlflow_sync("adapted", "--runs-dir", tmp_path / "runs", "--tracking-uri", server, "--experiment", "a")
        assert synced.exit_code == 0, synced.output
        return client.get_run(linked_run_id(run_dir, server)).data.metrics["adapter_test_accuracy"]

    assert adapt_and_sync(0.8985) == 0.8985
    assert adapt_and_sync(0.89) == 0.89
    assert adapt_and_sync(0.8985) == 0.8985


def test_a_run_stopped_while_its_adapter_fits_is_not_finished_in_mlflow(tmp_path, server, client, fake):
    """Its history's final event came, the adapter it asked for did not: `runs` says unfinished,
    MLflow said FINISHED."""
    run_dir = finished_run(fake, tmp_path / "runs", "fitting")
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "adapter_kinds": ["cache"]}))
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "adapter"}))
    from promptclimb.agent.runs.run import load_run

    assert load_run(run_dir).status == "unfinished"
    synced = mlflow_sync("fitting", "--runs-dir", tmp_path / "runs", "--tracking-uri", server, "--experiment", "f")
    assert synced.exit_code == 0, synced.output
    assert client.get_run(linked_run_id(run_dir, server)).info.status == "KILLED"


def test_a_copied_run_folder_gets_an_mlflow_run_of_its_own_and_a_moved_one_keeps_its_run(tmp_path, server, client,
                                                                                          fake):
    """`cp -r runs/a runs/b` then `mlflow-sync b`: the copy's mlflow.json came along, and the
    sync took the original's MLflow run over (its folder tag, and later its files and metrics)."""
    import shutil

    runs = tmp_path / "runs"
    original = finished_run(fake, runs, "a")

    def sync(name: str) -> str:
        synced = mlflow_sync(name, "--runs-dir", runs, "--tracking-uri", server, "--experiment", "copies")
        assert synced.exit_code == 0, synced.output
        return linked_run_id(runs / name, server)

    first = sync("a")
    shutil.copytree(original, runs / "b")
    copy = sync("b")
    assert copy != first
    assert client.get_run(first).data.tags["promptclimb.folder"] == str(original)
    assert client.get_run(copy).data.tags["promptclimb.folder"] == str(runs / "b")
    assert sync("a") == first  # the original keeps its run
    (runs / "a").rename(runs / "moved")
    assert sync("moved") == first  # moved, not copied: the same run, its folder tag follows
    assert client.get_run(first).data.tags["promptclimb.folder"] == str(runs / "moved")


def test_a_report_written_before_the_run_changed_is_written_again_before_it_is_logged(tmp_path, server, client,
                                                                                       fake):
    """`promptclimb report` of a run, then an adapter fitted: the sync logged the old page as
    the run's report (no adapter in it; for a run resumed since, "unfinished")."""
    import os

    run_dir = finished_run(fake, tmp_path / "runs", "paged")
    assert CliRunner().invoke(cli, ["report", "paged", "--runs-dir", str(tmp_path / "runs")]).exit_code == 0
    page = run_dir / "report.html"
    os.utime(page, (page.stat().st_mtime - 60,) * 2)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["adapter"] = {"kind": "residual-logits", "accuracy": {"train": 1.0, "val": 0.9, "test": 0.8985},
                          "fitted": "2026-12-06T18:00:00+0000"}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    synced = mlflow_sync("paged", "--runs-dir", tmp_path / "runs", "--tracking-uri", server, "--experiment", "p")
    assert synced.exit_code == 0, synced.output
    logged = Path(client.download_artifacts(linked_run_id(run_dir, server), "report.html", str(tmp_path / "down")))
    assert logged.read_text() == page.read_text() and "residual-logits" in page.read_text()


def sqlite_uri(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def all_runs(client: MlflowClient) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def assert_one_error_line(result) -> str:
    """A command that failed as the user sees it: status 1, one `Error:` line, no traceback
    (CliRunner hides a traceback: an exception other than SystemExit is one)."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert len(result.output.splitlines()) == 1 and result.output.startswith("Error: "), result.output
    return result.output


def test_a_folder_as_tracking_store_is_one_error_line_naming_a_database_instead(tmp_path, fake, monkeypatch):
    """MLflow 3 refuses its old file store (./mlruns, file:...) unless told otherwise."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    run_dir = finished_run(fake, tmp_path / "runs", "local")
    for uri in (f"file:{tmp_path / 'mlfile'}", str(tmp_path / "plain")):
        said = assert_one_error_line(mlflow_sync(run_dir, "--tracking-uri", uri))
        assert "MLFLOW_ALLOW_FILE_STORE=true" in said and "use a database, e.g. sqlite:///" in said
    assert not (run_dir / "mlflow.json").exists()


def test_a_folder_store_links_the_prompt_to_the_run_s_experiment_and_leaves_nothing_in_the_current_folder(
        tmp_path, fake, monkeypatch):
    """MLflow's folder registry reads a prompt version through a client of the global tracking
    URI, and links a new prompt to the global experiment in a thread of its own: a sync to a
    folder store left an mlflow.db in the current folder and linked the prompt to Default."""
    from mlflow.tracking import is_tracking_uri_set

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    run_dir = finished_run(fake, tmp_path / "runs", "local")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    store = f"file:{tmp_path / 'store'}"
    for _ in range(2):  # registered, then found registered
        synced = mlflow_sync(run_dir, "--tracking-uri", store)
        assert synced.exit_code == 0 and "prompt prompts:/" in synced.output, synced.output
    assert list((tmp_path / "cwd").iterdir()) == []
    assert not is_tracking_uri_set() and "MLFLOW_EXPERIMENT_ID" not in os.environ  # as they were
    monkeypatch.chdir(tmp_path)  # reading it back goes through the global URI again
    client = MlflowClient(tracking_uri=store)
    experiment_id = client.get_experiment_by_name("promptclimb").experiment_id
    run_id = next(iter(json.loads((run_dir / "mlflow.json").read_text())["runs"].values()))["run_id"]
    name = json.loads(client.get_run(run_id).data.tags["mlflow.linkedPrompts"])[0]["name"]
    assert client.get_prompt(name).tags["_mlflow_experiment_ids"] == f",{experiment_id},"


def test_the_documented_default_tracking_uri_is_the_installed_mlflows(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    tracking = readme[readme.index("## Experiment tracking"):].split("\n## ", 1)[0]
    for text in (CliRunner().invoke(cli, ["search", "--help"]).output,
                 CliRunner().invoke(cli, ["mlflow-sync", "--help"]).output, tracking):
        assert "sqlite:///mlflow.db" in text and "else ./mlruns" not in text and "default ./mlruns" not in text


def test_a_sqlite_store_keeps_the_artifacts_beside_its_database_and_says_where(tmp_path, fake, monkeypatch):
    run_dir = finished_run(fake, tmp_path / "runs", "local")
    uri = sqlite_uri(tmp_path / "store")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # MLflow alone would put them in ./mlruns here
    synced = mlflow_sync(run_dir, "--tracking-uri", uri)
    assert synced.exit_code == 0, synced.output
    run_id = linked_run_id(run_dir, uri)
    artifacts = tmp_path / "store" / "mlruns" / "promptclimb" / run_id / "artifacts"
    assert MlflowClient(uri).get_run(run_id).info.artifact_uri == artifacts.as_uri()
    assert {p.name for p in artifacts.iterdir()} == RUN_FILES
    assert not (tmp_path / "elsewhere" / "mlruns").exists()
    assert synced.output.splitlines()[-1] == f"  artifacts: {artifacts.as_uri()}"



def test_a_sqlite_store_named_relative_or_absolute_is_one_store_and_its_runs_are_logged_once(tmp_path, fake,
                                                                                             monkeypatch):
    run_dir = finished_run(fake, tmp_path / "runs", "local")
    uri = sqlite_uri(tmp_path / "store")
    monkeypatch.chdir(tmp_path / "store")
    for spelling in ("sqlite:///mlflow.db", uri, "sqlite:///./mlflow.db"):
        synced = mlflow_sync(run_dir, "--tracking-uri", spelling)
        assert synced.exit_code == 0, synced.output
    assert [r.info.run_id for r in all_runs(MlflowClient(uri))] == [linked_run_id(run_dir, uri)]

@pytest.mark.parametrize("damage", ["empty config.json", "best is 5", "adapter is 5", "history line 4 broken",
                                    "history line 4 gone"])
def test_a_damaged_run_folder_is_one_error_line_and_creates_nothing_in_mlflow(tmp_path, fake, damage):
    run_dir = finished_run(fake, tmp_path / "runs", "damaged")
    if damage == "empty config.json":
        (run_dir / "config.json").write_text("")
    elif damage.startswith("history"):  # `show` reads the rest with a warning; `search --resume` refuses
        lines = (run_dir / "history.jsonl").read_text().splitlines(keepends=True)
        lines[3] = "{broken\n" if damage.endswith("broken") else ""
        (run_dir / "history.jsonl").write_text("".join(lines))
    else:
        summary = json.loads((run_dir / "summary.json").read_text())
        summary[damage.split()[0]] = 5
        (run_dir / "summary.json").write_text(json.dumps(summary))
    uri = sqlite_uri(tmp_path / "store")
    said = assert_one_error_line(mlflow_sync(run_dir, "--tracking-uri", uri))
    assert said.startswith("Error: damaged: ") and "is damaged" in said
    if damage.startswith("history"):
        assert f"{run_dir / 'history.jsonl'} is damaged (line 4: " in said
    assert all_runs(MlflowClient(uri)) == [] and not (run_dir / "mlflow.json").exists()


def test_a_history_cut_short_by_a_kill_is_logged_without_its_last_line_and_the_count_is_said_in_words(
        tmp_path, fake):
    """A last line cut short (a kill while it was written) is what `search --resume` drops,
    not damage: the sync logs the rest. "1 answer", "2 answers"."""
    run_dir = finished_run(fake, tmp_path / "runs", "killed")
    lines = (run_dir / "history.jsonl").read_text().splitlines(keepends=True)
    answers = [i for i, line in enumerate(lines) if json.loads(line)["event"] == "llm_exchange"]
    assert len(answers) == 2
    (run_dir / "summary.json").unlink()
    (run_dir / "history.jsonl").write_text("".join(lines[:answers[1]]) + lines[answers[1]][:20])
    uri = sqlite_uri(tmp_path / "store")
    synced = mlflow_sync(run_dir, "--tracking-uri", uri)
    assert synced.exit_code == 0, synced.output
    assert "(1 answer logged now)" in synced.output  # the second answer is the line cut short
    (run_dir / "history.jsonl").write_text("".join(lines))
    synced = mlflow_sync(run_dir, "--tracking-uri", uri)
    assert synced.exit_code == 0 and "(1 answer logged now)" in synced.output, synced.output


def test_a_sync_that_fails_midway_ends_its_mlflow_run_as_failed_and_the_next_continues_it(tmp_path, fake,
                                                                                         monkeypatch):
    from promptclimb.agent.tracking.mirror import Mirror

    run_dir = finished_run(fake, tmp_path / "runs", "midway")
    uri = sqlite_uri(tmp_path / "store")
    with monkeypatch.context() as patch:
        patch.setattr(Mirror, "log_files", lambda self: (_ for _ in ()).throw(OSError("artifact store is full")))
        said = assert_one_error_line(mlflow_sync(run_dir, "--tracking-uri", uri))
    assert said.startswith("Error: midway: MLflow: artifact store is full")
    client = MlflowClient(uri)
    run_id = linked_run_id(run_dir, uri)
    assert client.get_run(run_id).info.status == "FAILED"
    again = mlflow_sync(run_dir, "--tracking-uri", uri)
    assert again.exit_code == 0, again.output
    assert linked_run_id(run_dir, uri) == run_id and client.get_run(run_id).info.status == "FINISHED"
    assert [r.info.run_id for r in all_runs(client)] == [run_id]



def test_a_sweep_s_sync_says_each_cell_s_answer_counts_and_the_total(tmp_path, fake):
    """`mlflow-sync SWEEP` printed "(sweep, cells nested)" and no count, while a run's sync
    says how many answers it logged: each cell's run now says it, on a line of its own, and
    the sweep's line the total."""
    from promptclimb.agent.tracking.logged import answer_metrics

    sweep, uri = tmp_path / "runs" / "grid", sqlite_uri(tmp_path / "store")
    for cell in ("c1", "c2"):
        finished_run(fake, sweep, cell)
    (sweep / "sweep.json").write_text(json.dumps({"grid": {"dataset": ["toy"]}, "search": {}, "cells": ["c1", "c2"]}))
    answers = len(answer_metrics(load_run(sweep / "c2")))
    assert answers >= 2 and sync_run(sweep / "c1", uri).new_answers == answers  # c1 logged on its own before

    synced = mlflow_sync(sweep, "--tracking-uri", uri)
    assert synced.exit_code == 0, synced.output
    lines = synced.output.splitlines()
    assert lines[0] == (f"grid: MLflow run {linked_run_id(sweep, uri)} (sweep, 2 cells nested; "
                        f"in all {answers} answers logged now)"), synced.output
    assert lines[1].startswith("  artifacts: ")
    assert lines[2:] == ["  cell c1: 0 answers logged now", f"  cell c2: {answers} answers logged now"], synced.output


def test_a_sweep_whose_cell_has_an_empty_summary_is_not_finished(tmp_path, fake):
    """A cell whose summary.json is empty (a crash between creating and writing it) counted as
    finished, and the sweep's run was FINISHED; the readers read that cell as unfinished."""
    sweep = tmp_path / "runs" / "grid"
    for cell in ("c1", "c2"):
        finished_run(fake, sweep, cell)
    (sweep / "sweep.json").write_text(json.dumps({"grid": {"dataset": ["toy"]}, "search": {}, "cells": ["c1", "c2"]}))
    uri = sqlite_uri(tmp_path / "store")
    (sweep / "c2" / "summary.json").write_text("")
    assert mlflow_sync(sweep, "--tracking-uri", uri).exit_code == 0
    assert MlflowClient(uri).get_run(linked_run_id(sweep, uri)).info.status == "KILLED"

def test_a_sweep_with_a_damaged_cell_creates_nothing_and_a_failing_cell_fails_its_parent(tmp_path, fake,
                                                                                        monkeypatch):
    sweep = tmp_path / "runs" / "grid"
    for cell in ("c1", "c2"):
        finished_run(fake, sweep, cell)
    (sweep / "sweep.json").write_text(json.dumps({"grid": {"dataset": ["toy"]}, "search": {}, "cells": ["c1", "c2"]}))
    (sweep / "c2" / "config.json").write_text("")
    uri = sqlite_uri(tmp_path / "store")
    said = assert_one_error_line(mlflow_sync(sweep, "--tracking-uri", uri))
    assert "c2" in said and "is damaged" in said
    assert all_runs(MlflowClient(uri)) == [] and not (sweep / "mlflow.json").exists()

    import promptclimb.agent.tracking as tracking
    from promptclimb.agent.tracking.store import TrackingError

    (sweep / "c2" / "config.json").write_text((sweep / "c1" / "config.json").read_text())
    real = tracking.sync_run

    def c2_fails(cell, *args, **kwargs):
        if Path(cell).name == "c2":
            raise TrackingError("MLflow: the server went away")
        return real(cell, *args, **kwargs)

    monkeypatch.setattr(tracking, "sync_run", c2_fails)
    assert_one_error_line(mlflow_sync(sweep, "--tracking-uri", uri))
    assert MlflowClient(uri).get_run(linked_run_id(sweep, uri)).info.status == "FAILED"


# -- what a run kept, when it ran, the names it found, where its curves start ----------------------
@pytest.mark.parametrize("kept", ["best template", "ensemble", "adapter"])
def test_the_result_is_said_and_an_ensemble_or_adapter_not_kept_is_a_candidate(tmp_path, fake, kept):
    """An ensemble the search did not choose, an adapter that did not beat the prompt on val,
    were logged as ensemble_ and adapter_test_accuracy, as if they were the result, and no
    metric or tag said which was: the result is result_test_accuracy and the promptclimb.result
    tag (what `runs` says), the others `<name>_candidate_test_accuracy`."""
    run_dir = finished_run(fake, tmp_path / "runs", "kept")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["winner"] = "ensemble" if kept == "ensemble" else "best"
    summary["ensemble"]["chosen"] = kept == "ensemble"
    summary["ensemble"]["accuracy"]["test"] = 0.61
    summary["adapter"] = {"kind": "residual-logits", "accuracy": {"train": 1.0, "val": 0.9, "test": 0.72},
                          "result": "adapter" if kept == "adapter" else "prompt-only"}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    uri = sqlite_uri(tmp_path / "store")
    run = MlflowClient(uri).get_run(sync_run(run_dir, uri).run_id)
    metrics, tags = run.data.metrics, run.data.tags
    what, result = {"best template": ("best template", summary["best"]["accuracy"]["test"]),
                    "ensemble": (f"ensemble of {len(summary['ensemble']['templates'])}", 0.61),
                    "adapter": ("prompt + residual-logits adapter", 0.72)}[kept]
    assert (tags["promptclimb.result"], metrics["result_test_accuracy"]) == (what, result) == result_said(summary)
    assert metrics["best_test_accuracy"] == summary["best"]["accuracy"]["test"]
    assert metrics["baseline_test_accuracy"] == summary["baseline"]["accuracy"]["test"]
    for name, value in (("ensemble", 0.61), ("adapter", 0.72)):
        key, other = f"{name}_test_accuracy", f"{name}_candidate_test_accuracy"
        if kept != name:
            key, other = other, key
        assert metrics[key] == value and other not in metrics, (name, sorted(metrics))


def run_times(run_dir: Path) -> tuple[int, int]:
    """(start, end) in ms as the run folder has them: config.json's `created` (or its first
    event, where that is earlier) and its last event."""
    run = load_run(run_dir)
    times = [float(e["time"]) for e in run.events]
    return int(min(run.created.timestamp(), times[0]) * 1000), int(max(times) * 1000)


def test_a_sync_afterwards_starts_and_ends_the_mlflow_run_when_the_run_did_and_a_sweep_spans_its_cells(tmp_path,
                                                                                                     fake):
    """mlflow-sync created the MLflow run at the time of the sync, after the run's end (a
    negative duration); a sweep's parent run started after its cells had ended, and its end
    moved to the time of each sync."""
    sweep, uri = tmp_path / "runs" / "grid", sqlite_uri(tmp_path / "store")
    for cell in ("c1", "c2"):
        finished_run(fake, sweep, cell)
    (sweep / "sweep.json").write_text(json.dumps({"grid": {"dataset": ["toy"]}, "search": {}, "cells": ["c1", "c2"]}))
    time.sleep(1.1)  # a sync well after the cells ended
    client = MlflowClient(uri)
    alone = client.get_run(sync_run(sweep / "c1", uri).run_id).info
    assert (alone.start_time, alone.end_time) == run_times(sweep / "c1") and alone.start_time < alone.end_time
    parent = client.get_run(sync_sweep(sweep, uri).run_id).info
    (start1, end1), (start2, end2) = run_times(sweep / "c1"), run_times(sweep / "c2")
    assert (parent.start_time, parent.end_time) == (min(start1, start2), max(end1, end2))
    cell = client.get_run(linked_run_id(sweep / "c2", uri)).info
    assert (cell.start_time, cell.end_time) == (start2, end2)
    time.sleep(0.1)
    again = client.get_run(sync_sweep(sweep, uri).run_id).info
    assert (again.start_time, again.end_time) == (parent.start_time, parent.end_time)  # not the time of the sync


def test_the_names_a_names_search_found_are_a_tag_of_its_mlflow_run_kept_live(tmp_path, monkeypatch):
    """The class names found were only on the registered prompt version and in summary.json:
    the run says them in its promptclimb.names tag, as its best's renames, as each is kept."""
    from test_reading import make_names_run

    from promptclimb.agent.core.classnames import renames
    from promptclimb.agent.tracking.mirror import Mirror

    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    run_dir, _ = make_names_run(tmp_path)
    lines = (run_dir / "history.jsonl").read_text().splitlines(keepends=True)
    summary = (run_dir / "summary.json").read_bytes()
    (run_dir / "summary.json").unlink()
    kept = {e["_line"]: e["names"] for e in load_run(run_dir).events if e["event"] == "names_change"}
    assert len(kept) == 2
    uri, said = sqlite_uri(tmp_path / "store"), []
    (run_dir / "history.jsonl").write_text("".join(lines[:min(kept) - 1]))
    mirror = Mirror.open(run_dir, uri, "names")
    mirror.sync(writing=True, files=False)
    client = MlflowClient(uri)
    for n in range(min(kept), len(lines) + 1):  # the folder as a live tracker sees it after each event
        (run_dir / "history.jsonl").write_text("".join(lines[:n]))
        mirror.follow(load_run(run_dir))
        said.append(client.get_run(mirror.run_id).data.tags["promptclimb.names"])
    start = load_run(run_dir).start_names
    first, second = (renames(start, kept[line]) for line in sorted(kept))
    assert first == "Trouser -> jeans" and second == "T-shirt/top -> tee; Trouser -> jeans"
    assert said[0] == first and said[sorted(kept)[1] - min(kept)] == said[-1] == second
    (run_dir / "summary.json").write_bytes(summary)
    synced = sync_run(run_dir, uri)
    names = json.loads(summary)["best"]["names"]
    assert client.get_run(synced.run_id).data.tags["promptclimb.names"] == renames(start, names) == second


def test_a_soft_prompt_run_logs_its_prompt_s_accuracy_per_step(tmp_path, request):
    """A craft run logged no curve at all (its history has optimizer steps, no LLM answers):
    its prompt's train and val accuracy per step, live; not best_*: its prompt may fall."""
    pytest.importorskip("torch")
    for fixture in ("tiny_clip_config", "tiny_clip_weights", "image_folder", "torch_threads"):
        request.getfixturevalue(fixture)
    from promptclimb.agent.softsearch import steps_table

    uri, runs = sqlite_uri(tmp_path / "store"), tmp_path / "runs"
    result = CliRunner().invoke(cli, [
        "search", "--dataset", "imagefolder", "--data-root", str(request.getfixturevalue("image_folder")),
        "--shots", "2", "--backbone", request.getfixturevalue("tiny_clip_config"), "--weights",
        str(request.getfixturevalue("tiny_clip_weights")), "--device", "cpu", "--runs-dir", str(runs), "--name",
        "soft", "--optimizer", "craft", "--queries", "12", "--craft-popsize", "4", "--mlflow", uri])
    assert result.exit_code == 0, result.output
    client, run = MlflowClient(uri), load_run(runs / "soft")
    run_id = linked_run_id(runs / "soft", uri)
    steps = steps_table(run.events)
    assert len(steps) == 4  # step 0, the initial prompt, then 3 generations
    for key, split in (("prompt_train_accuracy", "train"), ("prompt_val_accuracy", "val")):
        assert history(client, run_id, key) == [(row["step"], row[split]) for row in steps], key
    held = client.get_run(run_id)
    assert held.info.status == "FINISHED" and "best_train_accuracy" not in held.data.metrics
    assert (held.data.tags["promptclimb.result"], held.data.metrics["result_test_accuracy"]) == \
        result_said(run.summary)
