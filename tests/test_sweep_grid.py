"""The parts of a sweep that need no Ray: the grid (flags or TOML), cell names, settings kept
in sweep.json, cell states and the report's numbers (the LLM endpoint the cells share, with
a sweep that runs: tests/test_sweep.py)."""

import json
import re
import math

import pytest
from click.testing import CliRunner
from fake_llm import one_line_error

from promptclimb.agent.sweep import cell as sweep_cell
from promptclimb.agent.sweep import driver as sweeps
from promptclimb.agent.sweep import grid as sweep_grid
from promptclimb.agent.sweep import reading as sweep_reading
from promptclimb.agent.cli import cli
from promptclimb.agent.core.errors import PromptclimbError


def test_seeds_from_ranges_and_lists():
    assert sweep_grid.parse_seeds(["1-3"]) == [1, 2, 3]
    assert sweep_grid.parse_seeds(["5,1", 2, "2-3"]) == [1, 2, 3, 5]
    for bad in ("3-1", "x", "1-", "-2"):
        with pytest.raises(PromptclimbError, match="is not a seed"):
            sweep_grid.parse_seeds([bad])


@pytest.mark.parametrize("seeds, said", [
    ("18446744073709551616", "grid: --seeds 18446744073709551616: not in the range 0<=x<2**64"),
    ("0-18446744073709551616", "grid: --seeds 18446744073709551616: not in the range 0<=x<2**64"),
    ("0-99999999999", "grid: --seeds 0-99999999999: 100,000,000,000 seeds, more than the 10,000 cells"),
])
def test_seeds_out_of_range_or_too_many_are_refused_before_anything_starts(seeds, said, tmp_path):
    """`sweep s1 --seeds=18446744073709551616` had started Ray and ended in "Remote end closed
    connection without response"; --seeds 0-99999999999 built a set of 10**11 seeds."""
    runs = tmp_path / "runs"
    refused = CliRunner().invoke(cli, ["sweep", "s1", f"--seeds={seeds}", "--dataset", "fashion-mnist",
                                       "--runs-dir", str(runs), "--address", "127.0.0.1:1"])
    # a usage error, as search's --seed out of range is (it exited with 1)
    assert refused.exit_code == 2 and said in refused.output and "Ray" not in refused.output, refused.output
    assert not runs.exists()


@pytest.mark.parametrize("seeds, said", [
    ("18446744073709551616", "grid: --seeds 18446744073709551616: not in the range 0<=x<2**64"),
    ("-1", "grid: --seeds -1: not in the range 0<=x<2**64"),
    ('"0-99999999999"', "100,000,000,000 seeds, more than the 10,000 cells"),
])
def test_a_grid_file_s_seeds_are_refused_in_the_words_the_flag_gets(seeds, said, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(f'[grid]\ndataset = ["fashion-mnist"]\nseeds = [{seeds}]\n')
    with pytest.raises(PromptclimbError) as refused:
        sweep_grid.prepare_sweep(tmp_path / "runs" / "s", *sweep_grid.read_grid_file(grid))
    assert said in str(refused.value)
    assert sweep_grid.parse_seeds([9999, "0-9998", "5-7"]) == list(range(10_000))  # 10,000 seeds: the most
    with pytest.raises(PromptclimbError, match="10,001 seeds, more than the 10,000 cells"):
        sweep_grid.parse_seeds(["0-9998", "5-7", "9999,10000"])


@pytest.mark.parametrize("axis", ["shots", "seeds"])
def test_an_empty_list_of_shots_or_seeds_is_refused_as_an_empty_dataset_list_is(axis, tmp_path):
    """`shots = []` or `seeds = []` in a grid file had run 1 shot / seed 0, where `dataset = []`
    was refused; an axis left out still takes its default."""
    said = f"grid {axis}: an empty list; give at least one value, or leave the key out"
    with pytest.raises(PromptclimbError, match=re.escape(said)):
        sweep_grid.check_grid({"dataset": ["fashion-mnist"], axis: []})
    assert sweep_grid.check_grid({"dataset": ["fashion-mnist"]})[axis] == [1 if axis == "shots" else 0]
    grid, runs = tmp_path / "grid.toml", tmp_path / "runs"
    grid.write_text(f'[grid]\ndataset = ["fashion-mnist"]\n{axis} = []\n')
    refused = CliRunner().invoke(cli, ["sweep", "s", "--grid", str(grid), "--runs-dir", str(runs)])
    one_line_error(refused, said, code=2)
    assert not runs.exists()


def test_a_grid_of_more_than_10000_cells_is_refused_naming_its_axes():
    with pytest.raises(PromptclimbError, match=r"grid of 10,002 cells \(2 datasets x 1 backbones x 1 shots x 5,001 "
                                               r"seeds\): a sweep may have at most 10,000 cells"):
        sweep_grid.check_grid({"dataset": ["fashion-mnist", "eurosat"], "seeds": ["0-5000"]})
    assert len(sweep_grid.check_grid({"dataset": ["fashion-mnist", "eurosat"], "seeds": ["0-4999"]})["seeds"]) == 5000


def test_cells_are_named_by_their_grid_point_with_the_search_default_backbone():
    settings = {"grid": sweep_grid.check_grid({"dataset": ["fashion-mnist", "eurosat"], "shots": [1, 4],
                                               "seeds": ["1-2"]}), "search": {}}
    names = [c.name for c in sweep_grid.grid_cells(settings)]
    assert names[:2] == ["fashion-mnist-demo-1shot-seed1", "fashion-mnist-demo-1shot-seed2"]
    assert "eurosat-ViT-B-32-4shot-seed2" in names and len(names) == 8
    eurosat = next(c for c in sweep_grid.grid_cells(settings) if c.dataset == "eurosat")
    assert eurosat.pretrained == "openai"  # the search's default pair, not random weights
    odd = sweep_grid.Cell("coop", "hf-hub:org/model", None, 1, 0)
    assert odd.name == "coop-hf-hub_org_model-1shot-seed0"


def test_bad_grids_are_refused_in_one_line(tmp_path):
    with pytest.raises(PromptclimbError, match="at least one --dataset"):
        sweep_grid.check_grid({"shots": [1]})
    with pytest.raises(PromptclimbError, match="share a folder name"):
        sweep_grid.grid_cells({"grid": sweep_grid.check_grid({"dataset": ["hf:org/x", "hf:org_x"]}), "search": {}})
    with pytest.raises(PromptclimbError, match="single --backbone"):
        sweep_grid.grid_cells({"grid": sweep_grid.check_grid({"dataset": ["coop"], "backbone": ["RN50", "ViT-B-32"]}),
                               "search": {"weights": "w.pt"}})
    grid = tmp_path / "grid.toml"
    grid.write_text("[grid]\nsize = 3\n")
    with pytest.raises(PromptclimbError, match="unknown \\[grid\\] key"):
        sweep_grid.read_grid_file(grid)
    grid.write_text("[grid\n")
    with pytest.raises(PromptclimbError, match="not valid TOML"):
        sweep_grid.read_grid_file(grid)
    with pytest.raises(PromptclimbError, match="unknown keyword"):
        sweep_grid.search_options({"iterationz": 3})
    with pytest.raises(PromptclimbError, match="seed: an axis of the grid"):
        sweep_grid.search_options({"seed": 3})
    with pytest.raises(PromptclimbError, match="nor a file"):
        sweep_grid.search_options({"pool": str(tmp_path / "missing.txt")})


def test_a_toml_grid_and_flags_that_override_it(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\ndataset = ["fashion-mnist"]\nshots = [1, 4]\nseeds = "1-3"\n'
                    '[search]\niterations = 3\nmax-calls = 9\nadapter = ["cache"]\n')
    grid_axes, search = sweep_grid.read_grid_file(grid)
    assert grid_axes == {"dataset": ["fashion-mnist"], "shots": [1, 4], "seeds": ["1-3"]}
    opts = sweep_grid.search_options(search)
    assert (opts["iterations"], opts["max_calls"], opts["adapter_kinds"]) == (3, 9, ("cache",))
    settings = sweep_grid.prepare_sweep(tmp_path / "runs" / "s", grid_axes, search)
    assert len(settings["cells"]) == 6 and (tmp_path / "runs" / "s" / "sweep.json").exists()


def test_a_sweep_continues_with_its_stored_settings_and_refuses_other_ones(tmp_path):
    sweep_dir = tmp_path / "s"
    sweep_grid.prepare_sweep(sweep_dir, {"dataset": ["fashion-mnist"], "seeds": ["1-2"]},
                             {"iterations": 3, "base_url": "http://127.0.0.1:1/v1"})
    # execution options may change, for this run only (issue 26: one-off flags are not stored
    # for every later rerun), and --parallel is one of them (the same results)
    again = sweep_grid.prepare_sweep(sweep_dir, None, {"base_url": "http://127.0.0.1:2/v1", "no_cache": True,
                                                       "parallel": 2})
    assert again["grid"]["seeds"] == [1, 2] and again["search"]["iterations"] == 3
    assert again["search"]["base_url"] == "http://127.0.0.1:2/v1" and again["search"]["parallel"] == 2
    stored = json.loads((sweep_dir / "sweep.json").read_text())["search"]
    assert stored == {"iterations": 3, "base_url": "http://127.0.0.1:1/v1"}
    sweep_grid.prepare_sweep(sweep_dir, {"dataset": ["fashion-mnist"], "seeds": [1, 2]}, {"iterations": 3})
    with pytest.raises(PromptclimbError, match=re.escape("other settings (the grid's seeds 1, 2, 3 (the sweep's: 1, 2), "
                                                         "--iterations 4 (the sweep's: 3))")):
        sweep_grid.prepare_sweep(sweep_dir, {"dataset": ["fashion-mnist"], "seeds": ["1-3"]}, {"iterations": 4})
    with pytest.raises(PromptclimbError, match="holds no sweep yet"):
        sweep_grid.prepare_sweep(tmp_path / "other", None, {})


def test_a_sweep_none_of_whose_cells_finished_says_how_to_start_it_again_with_new_settings(tmp_path):
    """Every cell of a sweep with an --llm its server does not serve fails, naming --llm;
    the rerun with --llm changed was refused with 'give the new grid another name' only."""
    sweep_dir = tmp_path / "my sweep"
    sweep_grid.prepare_sweep(sweep_dir, {"dataset": ["fashion-mnist"], "seeds": ["1-2"]},
                             {"llm": "gpt-x", "base_url": "http://127.0.0.1:1/v1"})
    for cell in ("fashion-mnist-demo-1shot-seed1", "fashion-mnist-demo-1shot-seed2"):
        (sweep_dir / cell).mkdir()
        (sweep_dir / cell / "error.txt").write_text("the server serves no model gpt-x\n")
    with pytest.raises(PromptclimbError) as refused:
        sweep_grid.prepare_sweep(sweep_dir, None, {"llm": "gpt-y"})
    assert "(--llm gpt-y (the sweep's: gpt-x))" in str(refused.value)
    assert f"none of its 2 cells finished: to start it again with these settings, remove it first: " \
           f"rm -r '{sweep_dir}'" in str(refused.value)
    # a cell killed on its way holds answers paid for: the removal says it loses them
    (sweep_dir / "fashion-mnist-demo-1shot-seed1" / "history.jsonl").write_text(
        '{"event": "llm_exchange"}\n{"event": "score"}\n{"event": "names_exchange"}\n{"event": "llm_exc')
    with pytest.raises(PromptclimbError, match=r"none of its 2 cells finished; their histories hold 2 LLM answers, "
                                               r"which that removes: to start it again"):
        sweep_grid.prepare_sweep(sweep_dir, None, {"llm": "gpt-y"})
    (sweep_dir / "fashion-mnist-demo-1shot-seed2" / "summary.json").write_text(json.dumps({"best": {}}))
    with pytest.raises(PromptclimbError) as refused:
        sweep_grid.prepare_sweep(sweep_dir, None, {"llm": "gpt-y"})
    assert "(--llm gpt-y (the sweep's: gpt-x))" in str(refused.value) and "rm -r" not in str(refused.value)


def test_cell_states(tmp_path):
    cell = tmp_path / "cell"
    assert sweep_cell.cell_state(cell, adapter_wanted=False) == "new"
    cell.mkdir()
    (cell / "config.json").write_text("{}")
    assert sweep_cell.cell_state(cell, False) == "killed"
    (cell / "error.txt").write_text("boom\n")
    assert sweep_cell.cell_state(cell, False) == "failed"
    (cell / "summary.json").write_text(json.dumps({"best": {}}))
    assert sweep_cell.cell_state(cell, False) == "finished"
    assert sweep_cell.cell_state(cell, True) == "failed"  # the adapter asked for is not fit yet
    (cell / "error.txt").unlink()
    assert sweep_cell.cell_state(cell, True) == "killed"


@pytest.mark.parametrize("released_after_s", [0.8, None])
def test_a_cell_waits_a_moment_for_its_run_lock(released_after_s, tmp_path, monkeypatch):
    """After a sweep's driver is killed, its Ray worker may still hold a cell's run lock for a
    moment: the rerun's cell waits for it (up to CELL_LOCK_WAIT_S) instead of failing."""
    import threading

    from promptclimb.agent import pipeline
    from promptclimb.agent.runs.store import _acquire_lock, run_lock

    cell = tmp_path / "sweep" / "cell"
    cell.mkdir(parents=True)
    (cell / "config.json").write_text("{}")
    searched = []

    def search_under_the_lock(opts, echo):  # run_search takes the run's lock first
        with run_lock(opts["resume"]):
            searched.append(opts["resume"])

    monkeypatch.setattr(pipeline, "run_search", search_under_the_lock)
    monkeypatch.setattr(sweep_cell, "CELL_LOCK_WAIT_S", 3)
    held = _acquire_lock(cell)  # the orphaned worker
    if released_after_s:
        threading.Timer(released_after_s, held.close).start()
    try:
        outcome = sweep_cell.run_cell(str(cell), {})
    finally:
        held.close()
    log = (cell / "search.log").read_text()
    if released_after_s:
        assert outcome == {"state": "finished"} and searched == [str(cell)] and "waiting up to 3 s" in log
    else:
        assert outcome["state"] == "failed" and "is being written by" in outcome["error"] and not searched


def test_a_cell_s_log_header_says_its_time_zone(tmp_path, monkeypatch):
    """search.log's header read "--- 2026-12-06 05:12:40 starting on ...", the worker's local
    time with no zone: it says its UTC offset, as `runs` and the report do."""
    import re
    import time

    cell = tmp_path / "sweep" / "cell"
    cell.mkdir(parents=True)
    monkeypatch.setattr(sweep_cell, "search_when_free", lambda cell_dir, opts, echo: None)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert sweep_cell.run_cell(str(cell), {}) == {"state": "finished"}
    finally:  # this process's zone back as it was, for the tests that follow
        monkeypatch.undo()
        time.tzset()
    header = (cell / "search.log").read_text().splitlines()[0]
    assert re.fullmatch(r"--- \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC-0[45]:00 starting on .+ \(pid \d+\)", header), header


def test_sweep_report_means_and_sds_over_finished_seeds(tmp_path):
    sweep_dir = tmp_path / "runs" / "s"
    settings = sweep_grid.prepare_sweep(sweep_dir, {"dataset": ["fashion-mnist"], "shots": [1], "seeds": ["1-3"]}, {})
    tests = {"fashion-mnist-demo-1shot-seed1": 0.80, "fashion-mnist-demo-1shot-seed2": 0.90}
    for name, test in tests.items():
        (sweep_dir / name).mkdir()
        (sweep_dir / name / "summary.json").write_text(json.dumps({
            "best": {"accuracy": {"test": test}}, "ensemble": {"accuracy": {"test": test + 0.01}},
            "ledger": {"calls": 10, "prompt_tokens": 900, "completion_tokens": 100, "latency_s": 5.0}}))
    failed = sweep_dir / settings["cells"][2]
    failed.mkdir()
    (failed / "error.txt").write_text("LLMError: the LLM did not answer\nmore\n")
    summary = sweep_reading.sweep_summary(sweep_reading.sweep_cells(sweep_dir)).iloc[0]
    assert (summary["seeds"], summary["failed"]) == (2, 1)
    assert summary["best_mean"] == pytest.approx(0.85) and summary["best_sd"] == pytest.approx(0.0707107, rel=1e-5)
    assert summary["ensemble_mean"] == pytest.approx(0.86) and math.isnan(summary["adapter_mean"])
    assert summary["llm_tokens_mean"] == 1000
    result = CliRunner().invoke(cli, ["sweep-report", "s", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "85.0 ± 7.1" in result.output and "86.0 ± 7.1" in result.output
    # what each run keeps (seed 1 chose its ensemble; seed 2's adapter lost on val): the columns had
    # mixed a candidate ensemble and an adapter not kept, from one seed, into means over "2 seeds done"
    one = sweep_dir / "fashion-mnist-demo-1shot-seed1" / "summary.json"
    one.write_text(json.dumps({**json.loads(one.read_text()), "winner": "ensemble"}))
    two = sweep_dir / "fashion-mnist-demo-1shot-seed2" / "summary.json"
    two.write_text(json.dumps({**json.loads(two.read_text()), "winner": "best",
                               "adapter": {"accuracy": {"test": 0.95}, "result": "prompt-only"}}))
    summary = sweep_reading.sweep_summary(sweep_reading.sweep_cells(sweep_dir)).iloc[0]
    assert summary["result_mean"] == pytest.approx((0.81 + 0.90) / 2)
    assert (summary["adapter_mean"], summary["adapter_seeds"]) == (pytest.approx(0.95), 1)
    table = CliRunner().invoke(cli, ["sweep-report", "s", "--runs-dir", str(tmp_path / "runs")]).output
    assert "85.5 ± 6.4" in table and "95.0 (1 of 2)" in table and "result: what each run keeps" in table
    assert "fashion-mnist-demo-1shot-seed3: LLMError: the LLM did not answer" in result.output
    assert (sweep_dir / "report.png").exists()


def test_sweep_report_reads_an_empty_summary_json_as_a_missing_one(tmp_path):
    """A cell whose summary.json is empty (a crash between creating and writing it) was called
    damaged, where `show`, `runs` and a rerun read it as missing (has_summary): the cell has
    not finished, as one without the file. One that holds something that is not JSON still is."""
    sweep_dir = tmp_path / "runs" / "s"
    cell = sweep_dir / sweep_grid.prepare_sweep(sweep_dir, {"dataset": ["fashion-mnist"]}, {})["cells"][0]
    cell.mkdir()
    (cell / "config.json").write_text("{}")

    def report() -> str:
        result = CliRunner().invoke(cli, ["sweep-report", "s", "--runs-dir", str(tmp_path / "runs")])
        assert result.exit_code == 0, result.output
        return result.output

    missing = report()
    assert f"1 cell(s) not finished yet: {cell.name}\n\n" in missing
    for empty in ("", " \n"):
        (cell / "summary.json").write_text(empty)
        assert report() == missing and "damaged" not in missing
        assert sweep_reading.sweep_cells(sweep_dir).iloc[0][["state", "error"]].tolist() == ["killed", ""]
    (cell / "summary.json").write_text("{")
    assert f"  {cell.name}: summary.json is damaged; rerun the sweep to write it again" in report()


def test_a_classnames_file_reaches_every_cell_as_an_absolute_path(tmp_path, monkeypatch):
    """A Ray worker does not start in the driver's folder: a relative names file is made
    absolute once, in the driver; a set name stays a set name."""
    (tmp_path / "names.txt").write_text("tee\n")
    monkeypatch.chdir(tmp_path)
    assert sweep_grid.search_options({"classnames": "names.txt"})["classnames"] == str(tmp_path / "names.txt")
    assert sweep_grid.search_options({"classnames": "clean"})["classnames"] == "clean"


@pytest.mark.parametrize("flags, said", [
    (["--num-cpus", "1", "--address", "127.0.0.1:1"], "--num-cpus sizes the local Ray"),
    (["--address", "no-port"], "--address no-port: expected auto, HOST:PORT"),
    (["--num-cpus", "1", "--cpus-per-run", "2"], "each cell asks for 2 CPUs (--cpus-per-run), but the local Ray has 1"),
    # found only once Ray connects (or found missing), after sweep.json: a new sweep is forgotten
    (["--address", "127.0.0.1:1"], "Ray"),
])
def test_a_refused_sweep_leaves_nothing_and_a_corrected_one_may_change_its_settings(flags, said, tmp_path):
    """A sweep.json left by a refused command kept its settings: the corrected command, with
    other ones, was refused as "started with other settings"."""
    runs = tmp_path / "runs"
    refused = CliRunner().invoke(cli, ["sweep", "v2", "--dataset", "fashion-mnist", "--seeds", "1-2", "--optimizer",
                                       "craft", "--queries", "200", "--runs-dir", str(runs), *flags])
    errors = [line for line in refused.output.splitlines() if line.startswith("Error:")]
    assert refused.exit_code == 1 and len(errors) == 1 and said in errors[0], refused.output
    assert not (runs / "v2").exists()
    settings = sweep_grid.prepare_sweep(runs / "v2", {"dataset": ["fashion-mnist"], "seeds": ["1-3"]},
                                        {"optimizer": "craft", "queries": 400})
    assert len(settings["cells"]) == 3


def test_a_killed_cell_resumes_with_its_own_settings():
    """What the run does comes from its config.json (which matched sweep.json): given again,
    those options would only be compared with it, and a soft-prompt run records no LLM to
    compare --llm with. Where and how it runs (device, endpoint, budget) is this run's."""
    from promptclimb.agent.options import BY_NAME, resolve

    opts = {**resolve({"optimizer": "craft", "queries": 400, "resets": 1, "device": "cpu", "max_calls": 9}),
            "llm_name": "local", "base_url": "http://127.0.0.1:1/v1", "local_llm_url": "http://127.0.0.1:2/v1"}
    resumed = sweep_cell.resumed_options(opts)
    assert [resumed[name] for name in ("llm_name", "optimizer", "queries", "resets")] == \
        [BY_NAME[name].default for name in ("llm_name", "optimizer", "queries", "resets")]
    assert (resumed["device"], resumed["max_calls"], resumed["base_url"], resumed["local_llm_url"]) == \
        ("cpu", 9, "http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1")


def test_sweep_json_keeps_no_secret_of_the_endpoint(tmp_path):
    url = "http://someone:pw-SECRET456@127.0.0.1:1/v1?api-key=qs-SECRET789"
    settings = sweep_grid.prepare_sweep(tmp_path / "s", {"dataset": ["fashion-mnist"]}, {"base_url": url})
    assert settings["search"]["base_url"] == url  # the cells of this run still reach it
    text = (tmp_path / "s" / "sweep.json").read_text()
    assert "SECRET" not in text and json.loads(text)["search"]["base_url"] == "http://127.0.0.1:1/v1"


def test_a_sweep_whose_endpoint_secret_was_left_out_is_rerun_only_with_the_url_given_again(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    grid = {"dataset": ["fashion-mnist"]}
    url = "http://someone:pw-SECRET456@127.0.0.1:1/v1"
    sweep_grid.prepare_sweep(tmp_path / "s", grid, {"base_url": url})
    with pytest.raises(PromptclimbError, match="give it again with --base-url") as refused:
        sweep_grid.prepare_sweep(tmp_path / "s", None, {})  # rerun as `sweep s` alone
    assert "SECRET" not in str(refused.value)
    again = sweep_grid.prepare_sweep(tmp_path / "s", None, {"base_url": url})
    assert again["search"]["base_url"] == url
    with pytest.raises(PromptclimbError, match="give it again"):  # still said on the next rerun
        sweep_grid.prepare_sweep(tmp_path / "s", None, {})
    monkeypatch.setenv("OPENAI_BASE_URL", url)  # given again the other way: the cells ask it with its secret
    said = []
    assert sweep_grid.prepare_sweep(tmp_path / "s", None, {}, said.append)["search"]["base_url"] == url and said == []
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # another endpoint: asked, and said so
    assert sweep_grid.prepare_sweep(tmp_path / "s", None, {}, said.append)["search"]["base_url"] == \
        "http://127.0.0.1:9/v1"
    assert said == ["note: OPENAI_BASE_URL is not the LLM endpoint the sweep recorded (http://127.0.0.1:1/v1); "
                    "asking it, as the sweep's URL had a key that was not recorded"]
    monkeypatch.delenv("OPENAI_BASE_URL")
    sweep_grid.prepare_sweep(tmp_path / "plain", grid, {"base_url": "http://127.0.0.1:1/v1"})
    assert sweep_grid.prepare_sweep(tmp_path / "plain", None, {})["search"]["base_url"] == "http://127.0.0.1:1/v1"


@pytest.mark.parametrize("search, said", [
    ('runs-dir = "elsewhere"', "[search] runs-dir: a grid file does not say where the sweep goes; give --runs-dir "
                               "on the command line"),
    ("runs_dir = 'elsewhere'", "[search] runs-dir: a grid file does not say where the sweep goes"),
    ("max-calls = 3\nmax_calls = 4", "[search] max-calls is given twice (max-calls, max_calls); keep one"),
    # the refusal listed every search option as valid, the grid's axes among them, and named no file
    ("seeds = [1]", "grid.toml: [search] seeds: an axis of the grid ([grid] dataset, backbone, shots, seeds; or "),
    ("json = true", "[search] json: not for a sweep"),
    ("max-call = 3", "grid.toml: [search] unknown key max-call (did you mean max-calls?)"),
    ("zz = 3", "grid.toml: [search] unknown key zz; the valid ones: adapter, base-url, bottom-k, "),  # no axis
    ("runs-dirr = 3", "unknown key runs-dirr; the valid ones: adapter, "),
    ("runs-dirr = 3", ", resets, restarts, search, "),  # no runs-dir, which is then refused
    ("iterations = 0", "grid.toml: [search] --iterations 0: not in the range x>=1"),
])
def test_a_grid_file_search_table_is_refused_where_it_would_be_ignored_or_ambiguous(search, said, tmp_path):
    """A grid file's runs-dir was stored in sweep.json and silently not used (the sweep went
    to --runs-dir); a key given both ways was taken one way, the other dropped. Each is a
    usage error, as a --config file's is for search (they exited with 1)."""
    grid = tmp_path / "grid.toml"
    grid.write_text(f'[grid]\ndataset = ["fashion-mnist"]\n[search]\n{search}\n')
    runs = tmp_path / "runs"
    refused = CliRunner().invoke(cli, ["sweep", "g", "--grid", str(grid), "--runs-dir", str(runs), "--optimizer",
                                       "craft", "--queries", "200", "--address", "127.0.0.1:1"])  # no Ray, refused or not
    errors = [line for line in refused.output.splitlines() if line.startswith("Error:")]
    assert refused.exit_code == 2 and len(errors) == 1 and said in errors[0], refused.output
    assert not runs.exists() and not (tmp_path / "elsewhere").exists()


def test_a_grid_file_reads_its_search_keys_as_search_config_does(tmp_path):
    """read_grid_file takes `max-calls` or `max_calls` by the options layer's one rule
    (agent/options.py table_keywords): a key given both ways is refused, naming both, not
    merged with one value dropped."""
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\ndataset = "fashion-mnist"\n[search]\nmax-calls = 3\nmax_calls = 4\n')
    with pytest.raises(PromptclimbError) as refused:
        sweep_grid.read_grid_file(grid)
    assert str(refused.value) == f"{grid}: [search] max-calls is given twice (max-calls, max_calls); keep one"
    grid.write_text('[grid]\ndataset = "fashion-mnist"\n[search]\nmax-calls = 3\npool_sample = 4\n')
    assert sweep_grid.read_grid_file(grid) == ({"dataset": ["fashion-mnist"]}, {"max_calls": 3, "pool_sample": 4})


def test_a_grid_file_with_dashed_keys_gives_the_sweep_its_search_options(tmp_path, monkeypatch):
    """`promptclimb sweep --grid FILE`: the [search] table's dashed keys reach the sweep as
    the search's options, and an option given on the command line overrides the file's."""
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\ndataset = ["fashion-mnist"]\nseeds = "1-2"\n'
                    '[search]\nmax-calls = 9\npool-sample = 4\niterations = 3\n')
    runs = tmp_path / "runs"
    swept = []

    def run_sweep(name, runs_dir, grid, search, **_):
        swept.append((grid, search))
        return {c: "finished" for c in sweep_grid.prepare_sweep(runs / name, grid, search)["cells"]}

    monkeypatch.setattr(sweeps, "run_sweep", run_sweep)
    result = CliRunner().invoke(cli, ["sweep", "g", "--grid", str(grid), "--runs-dir", str(runs),
                                      "--iterations", "5"])
    assert result.exit_code == 0, result.output
    assert swept == [({"dataset": ["fashion-mnist"], "seeds": ["1-2"]},
                      {"max_calls": 9, "pool_sample": 4, "iterations": 5})]
    stored = json.loads((runs / "g" / "sweep.json").read_text())["search"]
    assert (stored["max_calls"], stored["pool_sample"], stored["iterations"]) == (9, 4, 5)


def test_a_rerun_that_gives_some_grid_axes_takes_the_others_from_the_sweep(tmp_path):
    """`sweep s --shots 4` on a sweep of one dataset said 'a sweep needs at least one
    --dataset'; the axes not given are the sweep's, and what differs is named."""
    runs = tmp_path / "runs"
    sweep_grid.prepare_sweep(runs / "s", {"dataset": ["fashion-mnist"], "seeds": ["1-2"]},
                             {"optimizer": "craft", "queries": 200})

    def rerun(*flags):
        result = CliRunner().invoke(cli, ["sweep", "s", "--runs-dir", str(runs), *flags, "--address", "127.0.0.1:1"])
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert result.exit_code == 1 and len(errors) == 1, result.output
        return errors[0]

    assert "started with other settings (the grid's shots 4 (the sweep's: 1))" in rerun("--shots", "4")
    assert "(the grid's seeds 1, 2, 3 (the sweep's: 1, 2))" in rerun("--seeds", "1-3")
    assert "cannot reach Ray" in rerun("--seeds", "1,2")  # the sweep's grid: accepted, on to Ray
    assert "cannot reach Ray" in rerun("--dataset", "fashion-mnist")
    assert json.loads((runs / "s" / "sweep.json").read_text())["grid"]["seeds"] == [1, 2]


def test_sweep_report_of_a_folder_that_does_not_exist_says_so(tmp_path, monkeypatch):
    """It said `runs/nope is not a sweep folder`, for a folder that is not there at all."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "plain").mkdir(parents=True)

    def error(*args) -> str:
        result = CliRunner().invoke(cli, ["sweep-report", *args])
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert result.exit_code == 1 and len(errors) == 1, result.output
        return errors[0]

    assert error("nope") == "Error: runs/nope does not exist: no sweep nope under --runs-dir runs (or give a sweep " \
                            "folder's path)"
    assert error("nope", "--runs-dir", "elsewhere").startswith("Error: elsewhere/nope does not exist")
    assert error("plain") == "Error: runs/plain is not a sweep folder (no sweep.json)"  # there, but not a sweep's
    assert error(str(tmp_path / "runs" / "plain")).endswith("is not a sweep folder (no sweep.json)")


def test_sweep_json_keeps_no_secret_of_the_tracking_uri_and_a_rerun_asks_for_it(tmp_path):
    grid = {"dataset": ["fashion-mnist"]}
    uri = "http://someone:pw-SECRET456@127.0.0.1:1"
    settings = sweep_grid.prepare_sweep(tmp_path / "s", grid, {"mlflow": uri})
    assert settings["search"]["mlflow"] == uri  # this run tracks to it
    text = (tmp_path / "s" / "sweep.json").read_text()
    assert "SECRET" not in text and json.loads(text)["search"]["mlflow"] == "http://127.0.0.1:1"
    with pytest.raises(PromptclimbError, match="give it again with --mlflow") as refused:
        sweep_grid.prepare_sweep(tmp_path / "s", None, {})
    assert "SECRET" not in str(refused.value)
    assert sweep_grid.prepare_sweep(tmp_path / "s", None, {"mlflow": uri})["search"]["mlflow"] == uri
    assert "SECRET" not in (tmp_path / "s" / "sweep.json").read_text()


def _two_folders(tmp_path):
    """Folder `a`, where a sweep starts, with its data, pool and names file; folder `b`, where
    it is rerun, with a same-named data folder of other data."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "hf" / "fm_str2").mkdir(parents=True)
    (a / "bigpool.txt").write_text("a photo of a {}.\na picture of a {}.\n")
    (a / "oddnames.txt").write_text("tee\ntrouser\n")
    return a, b


RELATIVE = {"data_root": "hf/fm_str2", "label_column": "label", "pool": "bigpool.txt", "classnames": "oddnames.txt"}


def test_a_sweep_started_with_relative_paths_is_continued_from_any_folder_on_its_own_data(tmp_path, monkeypatch):
    """sweep.json kept the paths as typed, so a rerun from another folder resolved them there:
    its new cells failed on a missing folder, or read a same-named one; and the same folder
    given as an absolute path was refused as "other settings"."""
    a, b = _two_folders(tmp_path)
    sweep_dir = tmp_path / "runs" / "s"
    monkeypatch.chdir(a)
    sweep_grid.prepare_sweep(sweep_dir, {"dataset": ["hf"], "backbone": ["demo"], "seeds": ["1-2"]}, dict(RELATIVE))
    stored = json.loads((sweep_dir / "sweep.json").read_text())["search"]
    assert (stored["data_root"], stored["pool"], stored["classnames"]) == \
        (str(a / "hf" / "fm_str2"), str(a / "bigpool.txt"), str(a / "oddnames.txt"))
    monkeypatch.chdir(b)
    for given in ({}, {"data_root": str(a / "hf" / "fm_str2"), "pool": str(a / "bigpool.txt")}):
        settings = sweep_grid.prepare_sweep(sweep_dir, None, given)
        opts = sweep_grid.search_options(settings["search"])
        cell = sweep_grid.grid_cells(settings)[1]
        cell_opts = sweep_grid.cell_options(cell, opts, sweep_dir)
        assert (cell_opts["data_root"], cell_opts["pool"], cell_opts["classnames"]) == \
            (str(a / "hf" / "fm_str2"), str(a / "bigpool.txt"), str(a / "oddnames.txt"))
    with pytest.raises(PromptclimbError, match=r"\(--data-root .*hf/fm_str2 \(the sweep's: "):  # b's own hf/fm_str2 is other data
        sweep_grid.prepare_sweep(sweep_dir, None, {"data_root": "hf/fm_str2"})


def test_an_older_sweep_json_with_relative_paths_still_continues_from_its_own_folder(tmp_path, monkeypatch):
    a, _ = _two_folders(tmp_path)
    sweep_dir = tmp_path / "runs" / "s"
    sweep_dir.mkdir(parents=True)
    old = {"grid": {"dataset": ["hf"], "backbone": ["demo"], "shots": [1], "seeds": [1, 2]}, "search": RELATIVE,
           "cells": ["hf-demo-1shot-seed1", "hf-demo-1shot-seed2"], "created": "2024-01-01T00:00:00+0000"}
    (sweep_dir / "sweep.json").write_text(json.dumps(old))
    monkeypatch.chdir(a)
    for given in ({}, {"data_root": str(a / "hf" / "fm_str2")}):
        opts = sweep_grid.search_options(sweep_grid.prepare_sweep(sweep_dir, None, given)["search"])
        assert (opts["data_root"], opts["pool"]) == (str(a / "hf" / "fm_str2"), str(a / "bigpool.txt"))
    assert json.loads((sweep_dir / "sweep.json").read_text())["search"] == RELATIVE


@pytest.mark.parametrize("backbone", ["demo/../x", "nosuch"])
def test_a_backbone_no_cell_could_load_is_refused_before_ray_starts(backbone, tmp_path):
    """Datasets were checked up front, backbones not: every cell then failed with "unknown
    backbone" inside Ray. The check reads open_clip's configs without importing torch."""
    import subprocess
    import sys

    runs = tmp_path / "runs"
    refused = CliRunner().invoke(cli, ["sweep", "b", "--dataset", "fashion-mnist", "--backbone", "demo", "--backbone",
                                       backbone, "--runs-dir", str(runs), "--num-cpus", "1"])
    assert refused.exit_code == 1 and f"grid backbone {backbone!r}: unknown backbone" in refused.output, refused.output
    assert not (runs / "b").exists()
    for known in ("demo", "ViT-B-32", "RN50-quickgelu", "hf-hub:org/model"):
        sweep_grid.prepare_sweep(tmp_path / known.replace(":", "_").replace("/", "_"),
                                 {"dataset": ["fashion-mnist"], "backbone": [known]}, {})
    code = ("import sys; from promptclimb.agent.core.backbones import check_backbone_name; "
            "check_backbone_name('ViT-B-32'); print('torch' in sys.modules, 'open_clip' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() \
        == ["False", "False"]


@pytest.mark.parametrize("given, said", [
    (["--meta-prompt", "{meta}"], "meta-prompt {tmp}/meta/names_turn.j2 line 1: 'nosuch' is undefined"),
    (["--classnames", "{tmp}/missing.txt"], "--classnames {tmp}/missing.txt: no such file"),
])
def test_a_meta_prompt_or_names_file_no_cell_could_use_is_refused_before_ray_starts(given, said, tmp_path):
    """They were checked inside each cell only: Ray and the local LLM started, then every cell
    failed with the same line in its error.txt."""
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "names_turn.j2").write_text("Rename {{ nosuch.name }}")
    runs = tmp_path / "runs"
    args = [a.format(meta=meta, tmp=tmp_path) for a in given]
    refused = CliRunner().invoke(cli, ["sweep", "p", "--dataset", "fashion-mnist", *args, "--runs-dir", str(runs),
                                       "--num-cpus", "1"])
    one_line_error(refused, said.format(tmp=tmp_path))
    assert not (runs / "p").exists()


def test_a_backbone_of_a_registered_model_config_is_known(tmp_path, monkeypatch):
    config = {"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}}
    (tmp_path / "my-tiny.json").write_text(json.dumps(config))
    from promptclimb.agent.core.backbones import check_backbone_name

    with pytest.raises(PromptclimbError, match="unknown backbone"):
        check_backbone_name("my-tiny")
    monkeypatch.setenv("PROMPTCLIMB_MODEL_CONFIGS", str(tmp_path))
    assert check_backbone_name("my-tiny") == "my-tiny"


def test_a_value_given_twice_is_one_grid_point_on_every_axis(tmp_path):
    """--seeds 1,1 and --seeds 1-3 --seeds 2 were one seed each, while --shots 1 --shots 1 (or a
    dataset or backbone given twice) was refused as two cells sharing a folder name."""
    grid = sweep_grid.check_grid({"dataset": ["fashion-mnist", "fashion-mnist"], "backbone": ["demo", "demo"],
                                  "shots": [2, 1, 2], "seeds": ["1-3", 2]})
    assert grid == {"dataset": ["fashion-mnist"], "backbone": ["demo"], "shots": [2, 1], "seeds": [1, 2, 3]}
    settings = sweep_grid.prepare_sweep(tmp_path / "s", {**grid, "shots": [2, 1, 2, 1]}, {})
    assert settings["cells"] == [f"fashion-mnist-demo-{k}shot-seed{s}" for k in (2, 1) for s in (1, 2, 3)]
    sweep_grid.prepare_sweep(tmp_path / "s", {**grid, "shots": [2, 1]}, {})  # the same grid, not other settings


@pytest.mark.parametrize("datasets, flags, said", [
    (["hf", "fashion-mnist"], ["--label-column", "label"], "grid dataset 'fashion-mnist': --label-column is for hf"),
    (["hf", "hf:org/data"], [], "grid dataset 'hf:org/data': --data-root is for --dataset hf"),
])
def test_an_option_only_some_grid_datasets_take_is_refused_before_ray_starts(datasets, flags, said, tmp_path):
    """Every cell takes the sweep's options: the cells whose dataset refuses one failed
    inside Ray, after the sweep had started (and the hf cells ran)."""
    runs, data = tmp_path / "runs", tmp_path / "data"
    data.mkdir()
    refused = CliRunner().invoke(cli, ["sweep", "m", *(f for d in datasets for f in ("--dataset", d)), "--data-root",
                                       str(data), *flags, "--runs-dir", str(runs), "--num-cpus", "1"])
    assert refused.exit_code == 1 and said in refused.output, refused.output
    assert not (runs / "m").exists()
    settings = sweep_grid.prepare_sweep(runs / "hf", {"dataset": ["hf"]},
                                        {"data_root": str(data), "label_column": "label"})
    assert settings["cells"] == ["hf-ViT-B-32-1shot-seed0"]


def test_a_new_sweep_keeps_the_llm_its_environment_chose_and_a_rerun_elsewhere_asks_it(tmp_path, monkeypatch):
    """A sweep started without OPENAI_* (the embedded LLM) and rerun from a shell with
    OPENAI_BASE_URL set: its killed cells went on against that endpoint, recorded as the local
    model; one started against an endpoint went on with the local LLM where the variables
    were gone. sweep.json now keeps what the environment chose, and --llm local is the
    embedded LLM whatever OPENAI_BASE_URL says, as for a search."""
    grid = {"dataset": ["fashion-mnist"]}
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    sweep_grid.prepare_sweep(tmp_path / "local", grid, {})
    assert json.loads((tmp_path / "local" / "sweep.json").read_text())["search"] == {"llm": "local"}
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    opts = sweep_grid.search_options(sweep_grid.prepare_sweep(tmp_path / "local", None, {})["search"])
    assert opts["llm_name"] == "local" and sweep_grid.sweep_endpoint(opts) is None
    sweep_grid.prepare_sweep(tmp_path / "served", grid, {})  # the endpoint, not a model name: what it serves decides
    assert json.loads((tmp_path / "served" / "sweep.json").read_text())["search"] == \
        {"base_url": "http://127.0.0.1:1/v1"}
    monkeypatch.delenv("OPENAI_BASE_URL")
    opts = sweep_grid.search_options(sweep_grid.prepare_sweep(tmp_path / "served", None, {})["search"])
    assert opts["llm_name"] is None and sweep_grid.sweep_endpoint(opts) == "http://127.0.0.1:1/v1"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    sweep_grid.prepare_sweep(tmp_path / "api", grid, {})
    assert json.loads((tmp_path / "api" / "sweep.json").read_text())["search"] == {"llm": "gpt-4o-mini"}
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(PromptclimbError, match="needs OPENAI_API_KEY"):  # not the local LLM, unsaid
        sweep_grid.prepare_sweep(tmp_path / "api", None, {})
    sweep_grid.prepare_sweep(tmp_path / "craft", grid, {"optimizer": "craft", "queries": 200})  # asks no LLM
    assert json.loads((tmp_path / "craft" / "sweep.json").read_text())["search"] == {"optimizer": "craft",
                                                                                      "queries": 200}


def test_options_the_cells_ignore_are_said_once_by_the_sweep(tmp_path):
    """`sweep --optimizer craft --search names --iterations 3`: the warning was in each cell's
    search.log only (and named --llm, which the driver set itself)."""
    said = []
    sweep_grid.prepare_sweep(tmp_path / "s", {"dataset": ["fashion-mnist"], "seeds": ["1-2"]},
                             {"optimizer": "craft", "queries": 200, "search": "names", "iterations": 3}, said.append)
    assert said == ["warning: --optimizer craft does not use --search, --iterations (options of the LLM search): "
                    "ignored"]
    quiet = []
    sweep_grid.prepare_sweep(tmp_path / "t", {"dataset": ["fashion-mnist"]}, {"optimizer": "craft", "queries": 200},
                             quiet.append)
    assert quiet == []


def test_a_rerun_given_the_backbone_every_cell_already_used_is_the_same_sweep(tmp_path):
    """`sweep s --backbone demo` on a sweep started without --backbone (every cell on demo,
    fashion-mnist's default) was refused: 'the grid's backbone demo (the sweep's: none)'."""
    grid, search = {"dataset": ["fashion-mnist"], "seeds": ["1-2"]}, {"optimizer": "craft", "queries": 200}
    first = sweep_grid.prepare_sweep(tmp_path / "s", grid, search)
    again = sweep_grid.prepare_sweep(tmp_path / "s", {**grid, "backbone": ["demo"]}, search)
    assert again["cells"] == first["cells"] == ["fashion-mnist-demo-1shot-seed1", "fashion-mnist-demo-1shot-seed2"]
    with pytest.raises(PromptclimbError, match=r"other settings \(the grid's backbone fashion-mnist: demo-mpnet \(the "
                                               r"sweep's: fashion-mnist: demo\)"):
        sweep_grid.prepare_sweep(tmp_path / "s", {**grid, "backbone": ["demo-mpnet"]}, search)
    # a backbone that is one dataset's default is another's new one: more cells, refused (a review found it taken)
    both, openai = {"dataset": ["fashion-mnist", "eurosat"], "seeds": ["1"]}, {**search, "pretrained": "openai"}
    assert len(sweep_grid.prepare_sweep(tmp_path / "two", both, openai)["cells"]) == 2  # demo, ViT-B-32
    with pytest.raises(PromptclimbError, match="other settings"):
        sweep_grid.prepare_sweep(tmp_path / "two", {**both, "backbone": ["demo", "ViT-B-32"]}, openai)


def test_a_value_edited_into_sweep_json_is_said_as_the_file_damaged(tmp_path):
    """A sweep.json edited by hand (`"resets": "x"`): its rerun said `sweep: --resets 'x': ...`,
    a flag the user never gave; sweep-report already said the file was damaged."""
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    runs = tmp_path / "runs"
    sweep_grid.prepare_sweep(runs / "s", {"dataset": ["fashion-mnist"]}, {"optimizer": "craft", "queries": 200})
    path = runs / "s" / "sweep.json"
    stored = json.loads(path.read_text())
    stored["search"]["resets"] = "x"
    path.write_text(json.dumps(stored))
    for command in (["sweep", "s"], ["sweep-report", "s"]):
        said = CliRunner().invoke(cli, [*command, "--runs-dir", str(runs)])
        assert said.exit_code == 1 and f"Error: {path} is damaged (--resets 'x': expected a whole number)" \
            in said.output, said.output


@pytest.mark.parametrize("datasets, said", [
    (["hf:a/b", "hf:a/b:default"], "the grid lists one dataset twice: hf:a/b and hf:a/b:default; give it once"),
    (["hf:a/b:", "coop", "hf:a/b", "hf:a/b:"], "the grid lists one dataset twice: hf:a/b: and hf:a/b; give it once"),
    (["hf:a/b", "hf:a/b:", "hf:a/b:default"], "one dataset 3 times: hf:a/b, hf:a/b: and hf:a/b:default; give it once"),
])
def test_two_spellings_of_one_dataset_are_refused_before_anything_runs(datasets, said, tmp_path):
    """`--dataset hf:a/b --dataset hf:a/b:default` ran two cells (two folders, two searches) on
    the same data; the same name given twice is still one grid point."""
    runs = tmp_path / "runs"
    refused = CliRunner().invoke(cli, ["sweep", "m", *(f for d in datasets for f in ("--dataset", d)),
                                       "--runs-dir", str(runs), "--address", "127.0.0.1:1"])
    one_line_error(refused, said)
    assert "Ray" not in refused.output and not (runs / "m").exists()
    settings = sweep_grid.prepare_sweep(runs / "once", {"dataset": ["hf:a/b", "hf:a/b:x", "hf:a/b"]},
                                        {"optimizer": "craft", "queries": 200})
    assert settings["cells"] == ["hf_a_b-ViT-B-32-1shot-seed0", "hf_a_b_x-ViT-B-32-1shot-seed0"]


@pytest.mark.parametrize("dataset", ["hf:a/b ", "hf:a/b: rgb", "hf: a/b"])
def test_a_hub_name_with_spaces_is_refused_before_ray_starts(dataset, tmp_path):
    """It passed the grid's check and failed in each cell, inside Ray, where the dataset loads."""
    runs = tmp_path / "runs"
    refused = CliRunner().invoke(cli, ["sweep", "m", "--dataset", dataset, "--runs-dir", str(runs),
                                       "--address", "127.0.0.1:1"])
    one_line_error(refused, "without spaces around its parts", code=2)
    assert "Ray" not in refused.output and not (runs / "m").exists()


def test_a_sweep_recorded_with_two_spellings_of_one_dataset_continues_and_is_reported(tmp_path):
    """One started before they were refused has both cells: it continues as it was recorded, and
    sweep-report reads it; another grid for it is refused as before."""
    sweep_dir = tmp_path / "runs" / "old"
    sweep_dir.mkdir(parents=True)
    grid = {"dataset": ["hf:a/b", "hf:a/b:default"], "backbone": [], "shots": [1], "seeds": [0]}
    search = {"optimizer": "craft", "queries": 200}
    (sweep_dir / "sweep.json").write_text(json.dumps({"grid": grid, "search": search, "created": "2024-01-01"}))
    assert len(sweep_grid.prepare_sweep(sweep_dir, None, {})["cells"]) == 2
    assert len(sweep_grid.prepare_sweep(sweep_dir, grid, search)["cells"]) == 2
    assert len(sweep_reading.sweep_cells(sweep_dir)) == 2
    with pytest.raises(PromptclimbError, match="lists one dataset twice: hf:a/b and hf:a/b:"):
        sweep_grid.prepare_sweep(sweep_dir, {"dataset": ["hf:a/b", "hf:a/b:"]}, search)


def test_a_sweep_recorded_with_top_k_0_continues_and_a_new_one_is_refused_it(tmp_path):
    """--top-k 0 is refused for a new run, and a run recorded with it resumes; a sweep recorded
    with it was refused on its rerun and by sweep-report (`sweep.json is damaged (--top-k 0: ...)`)."""
    runs = tmp_path / "runs"
    (runs / "old").mkdir(parents=True)
    grid = {"dataset": ["fashion-mnist"], "backbone": [], "shots": [1], "seeds": [0]}
    recorded = {"grid": grid, "search": {"llm": "local", "top_k": 0}, "created": "2024-01-01T00:00:00+0000",
                "cells": ["fashion-mnist-demo-1shot-seed0"]}
    (runs / "old" / "sweep.json").write_text(json.dumps(recorded))
    settings = sweep_grid.prepare_sweep(runs / "old", None, {})
    assert sweep_grid.search_options(settings["search"])["top_k"] == 0  # what its cells run with
    rerun = CliRunner().invoke(cli, ["sweep", "old", "--runs-dir", str(runs), "--address", "127.0.0.1:1"])
    assert "cannot reach Ray" in one_line_error(rerun), rerun.output  # past every check, on to Ray
    report = CliRunner().invoke(cli, ["sweep-report", "old", "--runs-dir", str(runs)])
    assert report.exit_code == 0 and "fashion-mnist" in report.output, report.output
    assert json.loads((runs / "old" / "sweep.json").read_text())["search"] == {"llm": "local", "top_k": 0}
    refused = "sweep: --top-k 0: not in the range x>=1"
    with pytest.raises(PromptclimbError, match=re.escape(refused)):  # given again: as for a new run
        sweep_grid.prepare_sweep(runs / "old", None, {"top_k": 0})
    with pytest.raises(PromptclimbError, match=re.escape(refused)):
        sweep_grid.prepare_sweep(runs / "new", {"dataset": ["fashion-mnist"]}, {"llm": "local", "top_k": 0})
    new = CliRunner().invoke(cli, ["sweep", "new", "--dataset", "fashion-mnist", "--top-k", "0", "--runs-dir",
                                   str(runs)])
    assert new.exit_code == 2 and "--top-k" in new.output, new.output
    assert not (runs / "new").exists()
