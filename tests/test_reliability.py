"""Issue 26, reliability of the newer surfaces: which folder a search or a sweep may claim,
values that become paths, options checked before anything slow, resume of a soft-prompt
run, damaged sweep cells, the Python API's errors, interrupts and exit codes, and the
smaller items. No Ray and no torch here except where a test says so (the Ray ones are in
tests/test_sweep.py); the evaluator is the in-memory WordEvaluator, the LLM the fake one."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fake_llm import FakeLLM, WordEvaluator, one_line_error
from test_reading import make_run
from test_search import KEY, comparable, responder

import promptclimb
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.sweep import cell as sweep_cell
from promptclimb.agent.sweep import driver as sweeps
from promptclimb.agent.sweep import grid as sweep_grid

TESTS = Path(__file__).resolve().parent
SMALL = ["--iterations", "2", "--resets", "1", "--pool-sample", "6"]
WORDS = {"evaluator_factory": lambda **kwargs: WordEvaluator(kwargs["dataset"])}


def cli(*args, obj=WORDS, env=None):
    from promptclimb.agent.cli import cli as command

    return CliRunner().invoke(command, [str(a) for a in args], obj=obj, env=env)


def files_of(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def a_sweep(runs: Path, name: str = "k3", **search) -> Path:
    """A sweep's folder as `promptclimb sweep` leaves it before its cells ran (no Ray needed)."""
    sweep_grid.prepare_sweep(runs / name, {"dataset": ["fashion-mnist"], "seeds": ["1-2"]},
                             {"base_url": "http://127.0.0.1:9/v1", "llm": "fake", **search})
    return runs / name


# -- 1: a run folder is claimed only when it is empty or provably this run's own ----------------------
def test_a_search_never_writes_into_a_sweep_or_someone_elses_folder(tmp_path, llm):
    runs = tmp_path / "runs"
    sweep = a_sweep(runs)
    (sweep / "fashion-mnist-demo-1shot-seed1").mkdir()
    (sweep / "fashion-mnist-demo-1shot-seed1" / "search.log").write_text("a cell's log\n")
    theirs = runs / "photos"
    theirs.mkdir()
    (theirs / "holiday.jpg").write_bytes(b"\xff\xd8 not ours")
    before = {p: files_of(p) for p in (sweep, theirs)}

    one_line_error(cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "k3"),
                   "is a sweep's folder, not a run's")
    one_line_error(cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "photos"),
                   "is not empty and not a run's folder", "holiday.jpg")
    assert {p: files_of(p) for p in (sweep, theirs)} == before and llm.count == 0

    # empty, or left by a search killed before its config.json: taken
    (runs / "empty").mkdir()
    (runs / "killed").mkdir()
    (runs / "killed" / ".lock").write_text("")
    for name in ("empty", "killed"):
        done = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", name)
        assert done.exit_code == 0, done.output
        assert (runs / name / "summary.json").exists()


def test_only_a_sweeps_own_cell_may_hold_a_cells_files(tmp_path):
    from promptclimb.agent.runs.store import RUN, claim_folder

    sweep = a_sweep(tmp_path / "runs")
    for name in ("fashion-mnist-demo-1shot-seed1", "not-a-cell"):
        (sweep / name).mkdir()
        (sweep / name / "search.log").write_text("--- starting\n")
        (sweep / name / "error.txt").write_text("boom\n")
    assert claim_folder(sweep / "fashion-mnist-demo-1shot-seed1", RUN) == sweep / "fashion-mnist-demo-1shot-seed1"
    with pytest.raises(PromptclimbError, match="not empty and not a run's folder .*error.txt, search.log"):
        claim_folder(sweep / "not-a-cell", RUN)


@pytest.mark.parametrize("in_the_way", ["a file", "someone's files"])
def test_a_cell_folder_that_cannot_be_taken_is_refused_before_ray_starts(in_the_way, tmp_path):
    """A cell's folder replaced by a file (`rm -r SWEEP/CELL && touch SWEEP/CELL`), or holding
    files of someone else's: the cell failed inside Ray, and the sweep said to see its
    error.txt, which could not be written there. Now one line naming the path, before Ray."""
    sweep = a_sweep(tmp_path / "runs")
    cell = sweep / "fashion-mnist-demo-1shot-seed2"
    if in_the_way == "a file":
        cell.write_text("")
        said = ("is a file, not a folder: the sweep cell cannot go there; "
                "move it out of the sweep's folder, then rerun the sweep")
    else:
        cell.mkdir()
        (cell / "notes.txt").write_text("mine")
        said = "is not empty and not a run's folder (it holds notes.txt); move them out of it, then rerun the sweep"
    before = files_of(sweep)
    refused = cli("sweep", "k3", "--runs-dir", tmp_path / "runs", "--num-cpus", "1")
    one_line_error(refused, f"{cell} {said}")
    assert "Ray:" not in refused.output and "error.txt" not in refused.output
    assert files_of(sweep) == before and (cell.is_file() if in_the_way == "a file" else cell.is_dir())


def test_a_sweep_never_turns_a_run_or_a_file_into_a_sweep(tmp_path, llm):
    runs = tmp_path / "runs"
    assert cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "victim").exit_code == 0
    before = files_of(runs / "victim")
    grid = ["--dataset", "fashion-mnist", "--runs-dir", runs, "--llm", "fake"]
    one_line_error(cli("sweep", "victim", *grid), "holds a run", "not a sweep")
    assert files_of(runs / "victim") == before
    (runs / "a-file").write_text("in the way")
    one_line_error(cli("sweep", "a-file", *grid), "is a file, not a folder")
    (runs / "mine").mkdir()
    (runs / "mine" / "notes.txt").write_text("mine")
    one_line_error(cli("sweep", "mine", *grid), "is not empty and not a sweep's folder", "notes.txt")
    assert sorted(p.name for p in (runs / "mine").iterdir()) == ["notes.txt"]


# -- 2: every value that becomes a path stays inside the runs dir ----------------------------------------
@pytest.mark.parametrize("dataset", ["../../escape", "/tmp/absolute-escape", "a/b"])
def test_grid_values_never_name_a_folder_outside_the_sweep(dataset, tmp_path, monkeypatch):
    runs = tmp_path / "deep" / "er" / "runs"
    monkeypatch.chdir(tmp_path)
    one_line_error(cli("sweep", "s", "--dataset", dataset, "--runs-dir", runs, "--llm", "fake"),
                   "grid dataset", "unknown dataset", code=2)  # a usage error, as search --dataset is
    assert not runs.exists() and not list(tmp_path.glob("**/*escape*"))
    assert not Path("/tmp/absolute-escape-demo-1shot-seed0").exists()


def test_every_folder_name_is_one_plain_name():
    from promptclimb.agent.runs.store import check_folder_name

    cell = sweep_grid.Cell("hf:org/data", "hf-hub:org/model", None, 1, 0)
    assert cell.name == "hf_org_data-hf-hub_org_model-1shot-seed0"  # one folder, not org/...
    for name in ("../x", "/abs", "a/b", "..", ".", "", "a\\b", 5, None):
        with pytest.raises(PromptclimbError, match="must be a plain folder name"):
            check_folder_name(name, "cell")
    with pytest.raises(PromptclimbError, match="sweep name"):
        sweeps.run_sweep("../up", "runs", {"dataset": ["fashion-mnist"]}, {})


# -- 3: --resume compares the same settings, whichever optimizer -------------------------------------------
def test_resume_of_a_soft_prompt_run_refuses_changed_settings(tmp_path):
    from dataclasses import asdict

    from promptclimb.agent.core.settings import SoftPromptConfig

    run = tmp_path / "runs" / "soft"
    run.mkdir(parents=True)
    soft = asdict(SoftPromptConfig(optimizer="craft", queries=800))
    (run / "config.json").write_text(json.dumps({
        "v": 1, "run_id": "soft", "optimizer": "craft", "soft_prompt": soft, "adapter_kinds": [],
        "evaluator_args": {"dataset": "fashion-mnist", "shots": 1, "seed": 0, "backbone": "demo"}}))
    built = []
    refused = cli("search", "--resume", "soft", "--queries", "1600", "--shots", "4", "--optimizer", "cbbt",
                  "--runs-dir", tmp_path / "runs", obj={"evaluator_factory": lambda **kw: built.append(kw)})
    line = one_line_error(refused, "--queries 1600 (the run's: 800)", "--shots 4 (the run's: 1)",
                          "--optimizer cbbt (the run's: craft)")
    assert "Drop them" in line and built == []


# -- 4: a damaged cell is not finished; the rerun resumes it ----------------------------------------------
def test_a_cell_with_a_damaged_summary_is_resumed_and_the_report_says_why(tmp_path, llm, monkeypatch):
    from promptclimb.agent import pipeline

    monkeypatch.setattr(pipeline, "default_evaluator_factory", lambda **kw: WordEvaluator(kw["dataset"]))
    runs = tmp_path / "runs"
    sweep = runs / "s"
    settings = sweep_grid.prepare_sweep(sweep, {"dataset": ["fashion-mnist"]},
                                        {"iterations": 2, "resets": 1, "pool_sample": 6, "llm": "fake",
                                         "base_url": llm.base_url, "adapter": ["cache"]})
    opts = sweep_grid.search_options(settings["search"])
    cell = sweep_grid.grid_cells(settings)[0]
    cell_dir = sweep / cell.name
    cell_opts = sweep_grid.cell_options(cell, {**opts, "adapter_kinds": ()}, sweep, llm.base_url, "fake")
    assert sweep_cell.run_cell(str(cell_dir), cell_opts) == {"state": "finished"}
    whole = json.loads((cell_dir / "summary.json").read_text())
    (cell_dir / "summary.json").write_text(json.dumps(whole)[:40])  # cut short

    for adapter_wanted in (False, True):  # with an adapter asked for, it used to crash
        assert sweep_cell.cell_state(cell_dir, adapter_wanted) == "killed"
    report = cli("sweep-report", "s", "--runs-dir", runs)
    assert report.exit_code == 0, report.output
    assert "1 cell(s) not finished yet" in report.output and "summary.json is damaged" in report.output

    asked = llm.count
    # resumed through its history; a rerun's --parallel is for new cells, this one keeps its lanes
    assert sweep_cell.run_cell(str(cell_dir), {**cell_opts, "parallel": 2}) == {"state": "finished"}
    assert "resuming" in (cell_dir / "search.log").read_text().split("--- ")[-1]
    assert comparable(json.loads((cell_dir / "summary.json").read_text())) == comparable(whole)
    assert llm.count == asked and sweep_cell.cell_state(cell_dir, False) == "finished"


# -- 5 and 6: bad input is one line (never a traceback, never a silently other value) ------------------------
@pytest.mark.parametrize("content", [b"{not json", b"", b"[]", b'{"search": {}}', b'{"grid": 5}',
                                     b'{"grid": {"dataset": ["fashion-mnist"]}, "search": {"iterations": "x"}}',
                                     b'{"grid": {"dataset": [7]}}', b"\xff\xfe"])
def test_sweep_report_of_a_damaged_sweep_json_is_one_line(content, tmp_path):
    sweep = tmp_path / "runs" / "s"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_bytes(content)
    one_line_error(cli("sweep-report", "s", "--runs-dir", tmp_path / "runs"), str(sweep / "sweep.json"), "damaged")


def test_sweep_report_of_cells_with_wrong_types_and_a_folder_it_cannot_write(tmp_path):
    runs = tmp_path / "runs"
    sweep = a_sweep(runs)
    odd = {"fashion-mnist-demo-1shot-seed1": {"best": {"accuracy": "high"}, "ensemble": 5, "ledger": {"calls": "x"}},
           "fashion-mnist-demo-1shot-seed2": {"best": {"accuracy": {"test": 0.5}}, "ledger": []}}
    for name, summary in odd.items():
        (sweep / name).mkdir()
        (sweep / name / "summary.json").write_text(json.dumps(summary))
    (sweep / "report.png").mkdir()  # the plot cannot be written there
    result = cli("sweep-report", "k3", "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    assert "50.0" in result.stdout and "Traceback" not in result.output
    assert f"warning: {sweep / 'report.png'} not written" in result.stderr
    as_json = json.loads(cli("sweep-report", "k3", "--runs-dir", runs, "--format", "json").stdout)
    assert [c["state"] for c in as_json["cells"]] == ["finished", "finished"]


# 2: a usage error, found as the grid file is read (as search --config's); 1: found as the cells' settings
# are put together, as search's
@pytest.mark.parametrize("text, needle, code", [
    ('[grid]\ndataset = ["fashion-mnist"]\nshots = ["abc"]\n', "--shots 'abc': expected a whole number", 2),
    ('[grid]\ndataset = ["fashion-mnist"]\nshots = [1.7]\n', "--shots 1.7: expected a whole number", 2),
    ('[grid]\ndataset = ["fashion-mnist"]\nshots = true\n', "--shots True: expected a whole number", 2),
    ('[grid]\ndataset = ["fashion-mnist"]\nbackbone = [7]\n', "grid backbone 7: expected a backbone name", 2),
    ('[grid]\ndataset = ["fashion-mnist"]\nseeds = [1.5]\n', "seeds: 1.5 is not a seed", 2),
    ("grid = 5\n", "grid must be a [grid] table", 2),
    ('search = "x"\n[grid]\ndataset = ["fashion-mnist"]\n', "search must be a [search] table", 2),
    ('[grid]\ndataset = ["fashion-mnist"]\n[search]\niterations = [1, 2]\n', "--iterations [1, 2]: expected a whole",
     2),
    ('[grid]\ndataset = ["fashion-mnist"]\n[search]\nadapter = ["lora"]\n', "unknown adapter kind 'lora'", 1),
    ('[grid]\ndataset = ["fashion-mnist"]\n[search]\ndevice = "cpu:5"\n', "--device 'cpu:5'", 2),
    ('[grid]\ndataset = ["fashion-mnist"]\n[search]\nmax-calls = 3\nparallel = 2\nrestarts = 2\n', "--parallel", 1),
    ('[grid]\ndataset = ["fashion-mnist"]\n[search]\nqueries = 100\n', "--queries is the budget", 1),
    ("[grid]\ndataset = ['caf\xe9']\n", "not a UTF-8 text file", 2),
])
def test_a_bad_grid_file_is_one_line_before_ray_starts(text, needle, code, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_bytes(text.encode("latin-1"))
    runs = tmp_path / "runs"
    result = cli("sweep", "s", "--grid", grid, "--runs-dir", runs, "--llm", "fake")
    one_line_error(result, needle, code=code)
    assert "Ray:" not in result.output and not runs.exists()  # nothing written, Ray never started


def test_eval_and_search_refuse_a_device_by_name_before_anything_loads(tmp_path, llm):
    runs = tmp_path / "runs"
    run = make_run(tmp_path, "r")
    # refused while the options are read (exit status 2), by every command in the same words
    for device in ("cpu:5", "meta", "gpu", ""):
        for argv in (["eval", "--run", "r", "--runs-dir", runs], ["search", "--dataset", "toy", "--runs-dir", tmp_path / "new"],
                     ["adapt", "r", "--kind", "cache", "--runs-dir", runs], ["transfer", "r", "--backbone", "demo-mpnet",
                                                                             "--runs-dir", runs]):
            one_line_error(cli(*argv, "--device", device), f"--device '{device}': not a device", "use cpu or cuda", code=2)
    assert not (tmp_path / "new").exists() and "adapter" not in json.loads((run / "summary.json").read_text())


def test_a_dataset_the_clip_evaluator_does_not_know_leaves_no_run_folder(tmp_path, llm):
    runs = tmp_path / "runs"
    one_line_error(cli("search", "--dataset", "nope", *SMALL, "--runs-dir", runs, obj={"evaluator_factory": None}),
                   "--dataset 'nope': unknown dataset")
    assert not runs.exists() or not list(runs.iterdir())
    listed = cli("runs", "--runs-dir", runs)
    assert "nope" not in listed.output


def test_bad_input_the_evaluator_finds_leaves_no_unfinished_run(tmp_path, llm):
    def no_such_data(**kwargs):
        raise PromptclimbError(f"data folder {kwargs['data_root']} does not exist")

    runs = tmp_path / "runs"
    one_line_error(cli("search", "--dataset", "toy", "--data-root", tmp_path / "nowhere", *SMALL, "--runs-dir", runs,
                       "--name", "x", obj={"evaluator_factory": no_such_data}), "does not exist")
    assert not (runs / "x").exists()


# -- 7: the API's errors are PromptclimbError with a readable message ------------------------------------------
@pytest.fixture
def built():
    from promptclimb.agent.api import using_evaluator

    asked = []

    def build(**kwargs):
        asked.append(kwargs)
        return WordEvaluator(kwargs["dataset"])

    with using_evaluator(build):
        yield asked


@pytest.mark.parametrize("call, needle", [
    (lambda: promptclimb.evaluate(None), "templates None: expected a template or a list"),
    (lambda: promptclimb.evaluate(5), "templates 5: expected a template or a list"),
    (lambda: promptclimb.evaluate(["a {}.", 3]), "expected a template or a list"),
    (lambda: promptclimb.evaluate("a {}.", shots="one"), "evaluate(): --shots 'one': expected a whole number"),
    (lambda: promptclimb.evaluate("a {}.", shots=1.5), "--shots 1.5: expected a whole number"),
    (lambda: promptclimb.evaluate("a {}.", seed="x"), "evaluate(): --seed 'x': expected a whole number"),
    (lambda: promptclimb.evaluate("a {}.", backbone=5), "evaluate(): --backbone 5: expected text"),
    (lambda: promptclimb.evaluate("a {}.", dataset=None), "dataset is required"),
    (lambda: promptclimb.evaluate("a {}.", device="cpu:5"), "device 'cpu:5'"),
    (lambda: promptclimb.evaluate("a {}.", splits=["dev"]), "splits ['dev']"),
    (lambda: promptclimb.evaluate("a {}.", precision="fp8"), "--precision 'fp8': expected one of fp32, bf16"),
    (lambda: promptclimb.evaluate("a {}.", sheds=2), "evaluate(): unknown keyword sheds; the valid ones: "),
    (lambda: promptclimb.transfer(None, backbone="demo"), "transfer(): run None: expected a run"),
    (lambda: promptclimb.transfer("r", backbone=None), "transfer(): backbone None"),
    (lambda: promptclimb.transfer("r", backbone="demo", top="x"), "transfer(): top 'x': expected a whole number"),
    (lambda: promptclimb.transfer("r", backbone="demo", top=0), "top 0"),
    (lambda: promptclimb.transfer("r", backbone="demo", device="meta"), "device 'meta'"),
    (lambda: promptclimb.transfer("r", backbone="demo", backbon="x"),
     "transfer(): unknown keyword backbon (did you mean backbone?)"),
    (lambda: promptclimb.search(dataset="toy", iterations=[1]), "--iterations [1]: expected a whole number"),
    (lambda: promptclimb.search(dataset="toy", shots=1.5), "--shots 1.5: expected a whole number"),
])
def test_api_errors_are_promptclimb_errors_with_a_readable_message(call, needle, built, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path, "r")
    with pytest.raises(PromptclimbError) as caught:
        call()
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    assert built == []  # refused before any evaluator was built


# -- 8: interrupts and exit codes -------------------------------------------------------------------------------
def fake_cli(*args, env: dict, stderr=subprocess.STDOUT) -> subprocess.Popen:
    # SIGINT back to its default in the child, so that Python turns it into KeyboardInterrupt
    # as a terminal's Ctrl-C: a suite started as a background job of a non-interactive shell
    # inherits SIGINT ignored, and the search would never see it.
    return subprocess.Popen([sys.executable, str(TESTS / "fake_cli.py"), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=stderr, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_on_a_search_exit_130_and_143_with_the_resume_command(sig, code, tmp_path):
    runs = tmp_path / "runs"
    with FakeLLM(responder=responder, signal_at=2) as fake:
        env = {**os.environ, "PROMPTCLIMB_HOME": str(tmp_path / "home"), "OPENAI_API_KEY": KEY,
               "OPENAI_BASE_URL": fake.base_url}
        child = fake_cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "t", env=env,
                         stderr=subprocess.PIPE)
        try:
            assert fake.reached.wait(300), "the search never reached its second LLM call"
            child.send_signal(sig)
            stdout, stderr = child.communicate(timeout=60)
        finally:
            child.kill()
    output = stdout + stderr
    assert child.returncode == code, output
    # on stderr, as errors are: `search ... | tee log` dies with the same Ctrl-C, and the line was lost
    assert f"interrupted; continue with: promptclimb search --resume {runs / 't'}" in stderr
    assert "interrupted" not in stdout
    assert "Aborted!" not in output and "Traceback" not in output


def test_exit_codes_done_error_usage(tmp_path, llm):
    runs = tmp_path / "runs"
    assert cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs).exit_code == 0
    assert cli("search", "--resume", "nope", "--runs-dir", runs).exit_code == 1
    assert cli("search", "--datasett", "toy").exit_code == 2
    assert cli("search", "--shots", "x").exit_code == 2


def test_ctrl_c_on_a_sweep_is_130_and_failed_cells_are_3(tmp_path, monkeypatch):
    from promptclimb.agent.core.errors import EXIT_CELLS_FAILED

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweeps, "run_sweep", interrupted)
    stopped = cli("sweep", "s", "--dataset", "fashion-mnist", "--runs-dir", tmp_path)
    assert stopped.exit_code == 130 and "Aborted" not in stopped.output
    monkeypatch.setattr(sweeps, "run_sweep", lambda *a, **k: {"a": "finished", "b": "failed"})
    failed = cli("sweep", "s", "--dataset", "fashion-mnist", "--runs-dir", tmp_path)
    assert failed.exit_code == EXIT_CELLS_FAILED == 3
    monkeypatch.setattr(sweeps, "run_sweep", lambda *a, **k: {"a": "finished"})
    assert cli("sweep", "s", "--dataset", "fashion-mnist", "--runs-dir", tmp_path).exit_code == 0


# -- 12: the smaller items ----------------------------------------------------------------------------------------
class FakeRay:
    """ray.wait / ray.get over cells' streaming generators (lists of messages)."""

    def wait(self, pending, num_returns=1, timeout=None):
        return pending[:1], pending[1:]

    def get(self, message):
        return message


def test_progress_never_counts_a_running_cell_as_failed(tmp_path):
    lines = []
    cell = sweep_grid.Cell("fashion-mnist", "demo", None, 1, 0)
    states = {cell.name: "failed", "other": "finished"}  # it failed in the run before; retried now
    generator = iter([{"state": "running", "node": "n"}, {"state": "finished"}])
    sweeps.watch(FakeRay(), {generator: cell}, tmp_path, states, lines.append)
    assert lines[0] == f"[1/2 done, 1 running, 0 failed] {cell.name}: running on n"
    assert lines[1] == f"[2/2 done, 0 running, 0 failed] {cell.name}: finished"


def test_the_hints_a_run_prints_name_its_folder_outside_the_default_runs_dir(tmp_path, llm):
    runs = tmp_path / "elsewhere"
    done = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "h")
    assert done.exit_code == 0, done.output
    assert f"(read it with: promptclimb show {runs / 'h'})" in done.output
    again = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "h")
    one_line_error(again, f"already holds a finished run (read it with: promptclimb show {runs / 'h'})")
    (runs / "h" / "summary.json").unlink()  # unfinished: there is something to continue
    again = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "h")
    one_line_error(again, f"continue it with: promptclimb search --resume {runs / 'h'}")


def said_command(output: str, before: str, after: str = "") -> list[str]:
    """The words of the command a line prints between `before` and `after`, as a shell reads them."""
    line = next(line for line in output.splitlines() if before in line)
    said = line.split(before, 1)[1]
    return shlex.split(said[: said.rindex(after)] if after else said)


def test_the_commands_a_run_prints_read_back_whole_in_a_shell(tmp_path, llm, monkeypatch):
    """A --runs-dir or --name with a space (or a quote) is one argument of the printed command."""
    runs = tmp_path / "My Drive" / "it's runs"
    done = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "x y")
    assert done.exit_code == 0, done.output
    words = said_command(done.output, "(read it with: ", ")")
    assert words == ["promptclimb", "show", str(runs / "x y")]
    shown = cli(*words[1:])
    assert shown.exit_code == 0 and "Winning templates" in shown.output, shown.output

    again = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "x y")
    assert said_command(again.output, "(read it with: ", ")") == ["promptclimb", "show", str(runs / "x y")]
    # a run started without --classnames started from the published names, and says so
    refused = cli("search", "--resume", runs / "x y", "--classnames", "clean")
    one_line_error(refused, "--classnames clean (the run's: published)")
    assert cli("search", "--resume", runs / "x y", "--classnames", "published").exit_code == 0

    unfinished = runs / "x z"
    shutil.copytree(runs / "x y", unfinished)
    (unfinished / "summary.json").unlink()
    told = cli("adapt", unfinished, "--kind", "cache")
    assert told.exit_code == 1 and said_command(told.output, "(finish it with: ", ")") == [
        "promptclimb", "search", "--resume", str(unfinished)], told.output
    again = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "x z")
    assert said_command(again.output, "continue it with: ") == ["promptclimb", "search", "--resume", str(unfinished)]

    monkeypatch.chdir(tmp_path)  # under ./runs a run is named by its id alone
    here = cli("search", "--dataset", "toy", *SMALL, "--name", "a b")
    assert said_command(here.output, "(read it with: ", ")") == ["promptclimb", "show", "a b"]

    from promptclimb.agent.pipeline import resume_command

    command, _ = resume_command(runs / "x y", "file:///tmp/ml runs")
    assert shlex.split(command) == ["promptclimb", "search", "--resume", str(runs / "x y"), "--mlflow",
                                    "file:///tmp/ml runs"]
    assert shlex.split(sweeps.continue_command("s t", runs, "ray://h:1", 2, 1.0, 0.0)) == [
        "promptclimb", "sweep", "s t", "--runs-dir", str(runs), "--address", "ray://h:1", "--num-cpus", "2"]


def test_show_and_report_warn_about_a_damaged_transfer_file(tmp_path):
    run = make_run(tmp_path, "r")
    (run / "transfer-ViT-B-32.json").write_text('{"v": 1, "rank_corr')
    (run / "transfer-RN50.json").write_text('{"v": 1}')
    for command in (["show", "r"], ["report", "r"]):
        result = cli(*command, "--runs-dir", tmp_path / "runs")
        assert result.exit_code == 0, result.output
        assert f"warning: transfer left out: {run / 'transfer-ViT-B-32.json'}: damaged" in result.stderr
        assert f"{run / 'transfer-RN50.json'}: not a transfer summary" in result.stderr


def test_show_markdown_keeps_its_table_whole_with_a_pipe_in_a_template(tmp_path):
    from promptclimb.agent.runs.store import RunStore

    run = tmp_path / "runs" / "pipes"
    with RunStore.create(run, {"run_id": "pipes", "evaluator_args": {"dataset": "toy"}}) as store:
        for template, acc in (("a | b photo of a {}.", 0.9), ("a photo of a {}.", 0.5)):
            store.append("score", template=template, origin="pool", restart=0, reset=0, iteration=0,
                         accuracy={"train": acc, "val": acc}, loss={"train": 1.0, "val": 1.0})
    table = cli("show", "pipes", "--runs-dir", tmp_path / "runs", "--format", "markdown").output
    rows = [line for line in table.splitlines() if line.startswith("|")]
    header_cells = rows[0].count("|")
    assert all(line.replace("\\|", "").count("|") == header_cells for line in rows), table
    assert "a \\| b photo of a {}." in table


def test_sigterm_on_a_craft_search_exits_143_with_the_resume_command(tmp_path, tiny_clip_config, tiny_clip_weights,
                                                                     image_folder):
    """The soft-prompt optimizers stop on SIGTERM as the LLM search does: status 143, and the
    command that continues (the real CLIP evaluator on the tiny model, in a process of its own)."""
    runs = tmp_path / "runs"
    env = {**os.environ, "PROMPTCLIMB_HOME": str(tmp_path / "home")}
    child = subprocess.Popen(
        [sys.executable, "-m", "promptclimb.agent.cli", "search", "--optimizer", "craft", "--queries", "100000",
         "--craft-popsize", "4", "--dataset", "imagefolder", "--data-root", str(image_folder), "--shots", "2",
         "--backbone", tiny_clip_config, "--weights", str(tiny_clip_weights), "--device", "cpu",
         "--runs-dir", str(runs), "--name", "soft"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        history, deadline = runs / "soft" / "history.jsonl", time.monotonic() + 300
        while time.monotonic() < deadline and child.poll() is None and \
                (not history.exists() or history.read_text().count('"step"') < 3):
            time.sleep(0.2)
        child.send_signal(signal.SIGTERM)
        output = child.communicate(timeout=120)[0]
    finally:
        child.kill()
    assert child.returncode == 143, output
    assert f"interrupted; continue with: promptclimb search --resume {runs / 'soft'}" in output
