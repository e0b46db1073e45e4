"""The one table of search options (agent/options.py): the command, its help panels, a
--config TOML file, `sweep` and the Python API all take the same options with the same checks."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from fake_llm import FakeLLM, WordEvaluator
from test_search import KEY, responder

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.options import PANELS, SEARCH_OPTIONS, resolve

FACTORY = {"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])}


def flat(output: str) -> str:
    """A command's output with rich's box drawing and line wrapping taken out."""
    return " ".join(output.replace("│", " ").split())


def test_every_option_is_in_exactly_one_help_panel_and_essentials_come_first():
    from promptclimb.agent.cli.search import help_panels, search_cmd

    panels = help_panels("search", ["--config"])
    listed = [flag for panel in panels for flag in panel["options"]]
    declared = [max(p.opts, key=len) for p in search_cmd.params]
    assert sorted(listed) == sorted(declared + ["--help"])
    assert panels[0]["name"] == PANELS[0] and panels[0]["options"][:3] == ["--config", "--dataset", "--shots"]
    help_text = CliRunner().invoke(search_cmd, ["--help"], terminal_width=100).output
    order = [help_text.index(f"─ {name} ─") for name in PANELS]
    assert order == sorted(order)  # essentials first, soft-prompt knobs last


def test_sweep_takes_the_search_options_from_the_same_table():
    from promptclimb.agent.cli.sweep import NOT_PER_SWEEP, sweep_cmd

    sweep_names = {p.name for p in sweep_cmd.params}
    assert {o.name for o in SEARCH_OPTIONS} - NOT_PER_SWEEP <= sweep_names
    assert not (NOT_PER_SWEEP - {"dataset", "shots", "backbone"}) & sweep_names


@pytest.mark.parametrize("value, why", [(1.7, "expected a whole number"), (True, "expected a whole number"),
                                        ("abc", "expected a whole number"), ([1, 2], "expected a whole number"),
                                        (0, "not in the range x>=1")])
def test_a_value_is_never_silently_converted(value, why):
    with pytest.raises(PromptclimbError, match=f"--shots {value!r}: {why}".replace("[", r"\[").replace("]", r"\]")):
        resolve({"shots": value})
    assert resolve({"shots": 4.0})["shots"] == 4 and resolve({"shots": "4"})["shots"] == 4


def test_a_config_file_sets_options_and_the_command_line_overrides_it(tmp_path, monkeypatch):
    from promptclimb.agent.cli.search import search_cmd

    config = tmp_path / "search.toml"
    config.write_text('[search]\ndataset = "toy"\niterations = 2\nresets = 1\npool_sample = 6\nname = "from-file"\n')
    with FakeLLM(responder=responder) as fake:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
        runs = str(tmp_path / "runs")
        result = CliRunner().invoke(search_cmd, ["--config", str(config), "--runs-dir", runs, "--json"], env=env,
                                    obj=FACTORY)
        assert result.exit_code == 0, result.output
        saved = json.loads((tmp_path / "runs" / "from-file" / "config.json").read_text())
        assert saved["search"]["iterations"] == 2 and saved["search"]["resets"] == 1 and fake.count == 2
        over = CliRunner().invoke(search_cmd, ["--config", str(config), "--iterations", "1", "--name", "cli",
                                               "--runs-dir", runs], env=env, obj=FACTORY)
        assert over.exit_code == 0, over.output
        assert json.loads((tmp_path / "runs" / "cli" / "config.json").read_text())["search"]["iterations"] == 1
        assert "[grid]" not in over.stderr
        # a sweep's grid file: its [grid] table was passed over, unsaid (one run of seed 0, not the grid)
        config.write_text(config.read_text() + "[grid]\nshots = [1, 4]\nseeds = [1, 2]\n")
        gridded = CliRunner().invoke(search_cmd, ["--config", str(config), "--name", "grid", "--runs-dir", runs],
                                     env=env, obj=FACTORY)
        assert gridded.exit_code == 0, gridded.output
        assert f"note: --config {config}: its [grid] table is for `promptclimb sweep NAME --grid {config}`; a " \
               "search reads its [search] table only" in gridded.stderr
        # two files: the later overrides the earlier where both set an option (the first was dropped, unsaid)
        later = tmp_path / "later.toml"
        later.write_text('[search]\niterations = 1\nname = "two-files"\n')
        both = CliRunner().invoke(search_cmd, ["--config", str(config), "--config", str(later), "--runs-dir", runs],
                                  env=env, obj=FACTORY)
        assert both.exit_code == 0, both.output
        saved = json.loads((tmp_path / "runs" / "two-files" / "config.json").read_text())
        assert saved["search"]["iterations"] == 1 and saved["search"]["resets"] == 1  # the later's, the earlier's


def test_a_flag_a_config_file_turns_on_is_turned_off_on_the_command_line(tmp_path, monkeypatch):
    """`no-cache = true` / `json = true` in a --config file could not be undone: a flag had no
    opposite. --cache and --no-json do, and count as given (a resume compares them)."""
    import promptclimb.agent.pipeline as pipeline
    from promptclimb.agent.cli.search import search_cmd
    from promptclimb.agent.options import GIVEN

    seen = []
    monkeypatch.setattr(pipeline, "run_search", lambda opts, echo, **kw: seen.append(opts) or {})
    config = tmp_path / "flags.toml"
    config.write_text('[search]\ndataset = "toy"\nno-cache = true\njson = true\n')
    for args, expected in ([], (True, True)), (["--cache", "--no-json"], (False, False)):
        result = CliRunner().invoke(search_cmd, ["--config", str(config), *args])
        assert result.exit_code == 0, result.output
        assert (seen[-1]["no_cache"], seen[-1]["as_json"]) == expected
        assert {"no_cache", "as_json"} <= seen[-1][GIVEN]


def test_a_value_refused_once_the_search_starts_names_the_config_file_that_set_it(tmp_path):
    """`--pool: 'missing.txt' is neither ...` from a --config file sent a user to a command
    line without it; given there, the refusal stays as it was."""
    from promptclimb.agent.cli.search import search_cmd

    config = tmp_path / "pool.toml"
    config.write_text('[search]\ndataset = "toy"\npool = "missing.txt"\n')
    runs = str(tmp_path / "runs")
    with FakeLLM(responder=responder) as fake:  # never asked: the pool is refused first
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
        from_file = CliRunner().invoke(search_cmd, ["--config", str(config), "--runs-dir", runs], env=env,
                                       obj=FACTORY, terminal_width=500)
        typed = CliRunner().invoke(search_cmd, ["--config", str(config), "--runs-dir", runs, "--pool", "other.txt"],
                                   env=env, obj=FACTORY, terminal_width=500)
    assert from_file.exit_code == 1 and f"--config {config}: --pool: 'missing.txt' is " in flat(from_file.output)
    assert typed.exit_code == 1 and "--pool: 'other.txt' is " in flat(typed.output) and "--config" not in typed.output


def test_a_config_file_takes_the_long_option_names_with_dashes_too(tmp_path, monkeypatch):
    """A sweep grid file's [search] table takes `max-calls`; --config refused it as an
    unknown keyword, and took only `max_calls`."""
    from promptclimb.agent.cli.search import search_cmd

    runs = tmp_path / "from-file-runs"
    config = tmp_path / "search.toml"
    config.write_text(f'[search]\ndataset = "toy"\nmax-calls = 1\nruns-dir = "{runs}"\npool-sample = 6\n'
                      'search = "template"\nname = "dashes"\nmax_tries = 2\n')
    with FakeLLM(responder=responder) as fake:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
        result = CliRunner().invoke(search_cmd, ["--config", str(config)], env=env, obj=FACTORY)
        assert result.exit_code == 0, result.output
        assert fake.count == 1
    saved = json.loads((runs / "dashes" / "config.json").read_text())
    assert (saved["search"]["max_calls"], saved["search"]["pool_sample"]) == (1, 6)


def test_an_option_given_both_ways_in_a_config_file_is_refused_naming_it(tmp_path):
    from promptclimb.agent.cli.search import search_cmd

    config = tmp_path / "twice.toml"
    config.write_text('[search]\ndataset = "toy"\nmax-calls = 1\nmax_calls = 2\n')
    result = CliRunner().invoke(search_cmd, ["--config", str(config), "--runs-dir", str(tmp_path / "runs")],
                                obj=FACTORY)
    assert result.exit_code == 2, result.output
    assert "max-calls is given twice (max-calls, max_calls); keep one" in flat(result.output)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, needle", [
    ("[search]\niterations = [1, 2]\n", "--iterations [1, 2]: expected a whole number"),
    ("[search]\nshots = 1.5\n", "--shots 1.5: expected a whole number"),
    ("[search]\niteratons = 2\n", "unknown key iteratons (did you mean iterations?)"),
    ("[search]\nmax-call = 2\nzz = 1\n", "unknown keys max-call (did you mean max-calls?), zz; the valid ones: "
                                          "adapter, backbone, base-url,"),
    ("search = 5\n", "expected a [search] table"),
    ("[search]\nadapter = 5\n", "--adapter 5: expected a name or a list of names"),
    ("[search]\nmlflow = 3\n", "--mlflow 3: expected true, false or TRACKING_URI"),
    ("[search\n", "not valid TOML"),
])
def test_a_bad_config_file_is_one_line_naming_the_file(tmp_path, text, needle):
    from promptclimb.agent.cli.search import search_cmd

    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = CliRunner().invoke(search_cmd, ["--config", str(config), "--runs-dir", str(tmp_path / "runs")],
                                obj=FACTORY)
    assert result.exit_code == 2, result.output
    assert needle in flat(result.output) and str(config) in flat(result.output) and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("key, value, name, taken", [
    ("adapter", "cache", "adapter_kinds", ("cache",)),  # click refused it: "Value must be an iterable."
    ("adapter", ["cache", "feature-residual"], "adapter_kinds", ("cache", "feature-residual")),
    ("mlflow", True, "mlflow", ""),  # as a bare --mlflow (it was "--mlflow True: expected a path")
    ("mlflow", False, "mlflow", None),
    ("mlflow", "sqlite:///t.db", "mlflow", "sqlite:///t.db"),
    ("classnames", ["cat", "dog"], "classnames", ("cat", "dog")),  # it was the text "['cat', 'dog']"
    ("classnames", "clean", "classnames", "clean"),
])
def test_a_config_file_value_reaches_the_search_as_its_option_takes_it(tmp_path, monkeypatch, key, value, name,
                                                                       taken):
    """--config and the Python API take a TOML value alike: a lone name for a repeatable
    option, true for an option whose value may be left out, the names themselves."""
    from promptclimb.agent import pipeline
    from promptclimb.agent.cli.search import search_cmd

    seen = []
    monkeypatch.setattr(pipeline, "run_search", lambda opts, echo, **kw: seen.append(opts) or {})
    config = tmp_path / "search.toml"
    config.write_text(f'[search]\ndataset = "toy"\n{key} = {json.dumps(value)}\n')  # JSON's are TOML's here
    result = CliRunner().invoke(search_cmd, ["--config", str(config)], obj=FACTORY)
    assert result.exit_code == 0, result.output
    assert seen[0][name] == taken
    assert resolve({key: value})[name] == taken


def test_a_config_file_that_is_not_utf8_is_refused(tmp_path):
    from promptclimb.agent.cli.search import search_cmd

    config = tmp_path / "latin.toml"
    config.write_bytes('[search]\ndataset = "caf\xe9"\n'.encode("latin-1"))
    result = CliRunner().invoke(search_cmd, ["--config", str(config)], obj=FACTORY)
    assert result.exit_code == 2 and "not a UTF-8 text file" in flat(result.output)


def test_a_config_file_saved_with_a_bom_and_crlf_is_read(tmp_path, monkeypatch):
    """A BOM made tomllib refuse the file as "not valid TOML (Invalid statement (at line 1,
    column 1))", a line that looks right in any editor."""
    from promptclimb.agent import pipeline
    from promptclimb.agent.cli.search import search_cmd

    seen = []
    monkeypatch.setattr(pipeline, "run_search", lambda opts, echo, **kw: seen.append(opts) or {})
    config = tmp_path / "notepad.toml"
    config.write_bytes('[search]\r\ndataset = "toy"\r\niterations = 3\r\n'.encode("utf-8-sig"))
    result = CliRunner().invoke(search_cmd, ["--config", str(config)], obj=FACTORY)
    assert result.exit_code == 0, result.output
    assert seen[0]["dataset"] == "toy" and seen[0]["iterations"] == 3


def test_the_search_help_says_what_one_iteration_of_both_runs():
    """`--search both --iterations 1`: the help said each reset ends with a template turn; its
    one turn is a names turn (agent/search.py `turn_kind`), and the help says so now."""
    from promptclimb.agent.options import BY_NAME
    from promptclimb.agent.search import turn_kind

    assert [turn_kind("both", i, 1) for i in (1,)] == ["names"]
    assert [turn_kind("both", i, 3) for i in (1, 2, 3)] == ["names", "names", "template"]
    said = " ".join(BY_NAME["search"].help.split())
    assert "a template turn to end each reset of two or more --iterations" in said
    assert "with --iterations 1 a reset's one turn is a names turn, so no template turn" in said


def test_sweep_help_says_what_mlflow_logs_for_a_sweep():
    """sweep --help's --mlflow was the search's text ("one run"); a sweep logs a parent run
    with a nested run per cell."""
    from promptclimb.agent.cli.search import search_cmd
    from promptclimb.agent.cli.sweep import sweep_cmd

    def mlflow_help(command) -> str:
        return " ".join(next(p for p in command.params if p.name == "mlflow").help.split())

    assert "one parent run for the sweep with the cells' runs nested under it" in mlflow_help(sweep_cmd)
    assert "one run," not in mlflow_help(sweep_cmd) and "never fails a sweep" in mlflow_help(sweep_cmd)
    assert "(one run, a metric step per LLM answer" in mlflow_help(search_cmd)
    shown = flat(CliRunner().invoke(sweep_cmd, ["--help"], terminal_width=100).output)
    assert "one parent run for the sweep" in shown


@pytest.mark.parametrize("command", [["search", "--dataset", "toy"], ["eval"], ["adapt", "RUN", "--kind", "cache"]])
def test_the_seed_help_is_readable_and_its_64_bit_maximum_still_refused(command):
    """--seed's maximum (2**64 - 1, torch's 64-bit seeds) had put `[0<=x<=18446744073709551615]`
    in every help; the help shows `[x>=0]` now, and 2**64 is still refused in one line."""
    from promptclimb.agent.cli import cli
    from promptclimb.agent.cli.params import table_int
    from promptclimb.agent.options import BY_KEYWORD

    shown = flat(CliRunner().invoke(cli, [command[0], "--help"], terminal_width=100).output)
    seed_row = shown.split("--seed INTEGER RANGE ")[1].split(" --")[0]  # its range: first (rich) or last (click)
    assert "[x>=0]" in seed_row and "18446744073709551615" not in shown, shown
    said = CliRunner().invoke(cli, [*command, "--seed", str(2 ** 64)])
    assert said.exit_code == 2, said.output
    assert said.output.strip().splitlines()[-1] == \
        "Error: Invalid value for '--seed': 18446744073709551616 is not in the range 0<=x<2**64."
    assert table_int(BY_KEYWORD["seed"]).convert(str(2 ** 64 - 1), None, None) == 2 ** 64 - 1


def test_a_default_of_zero_is_shown_in_the_help():
    """`0 in (None, (), False)` is true: --seed's default 0 went unshown (and would any other
    option's 0)."""
    from promptclimb.agent.cli.search import search_cmd

    help_text = flat(CliRunner().invoke(search_cmd, ["--help"], terminal_width=400).output)
    seed = help_text[help_text.index("--seed "):]
    assert seed[:seed.index("--backbone")].rstrip().endswith("[default: 0]")
    assert "[default: False]" not in help_text  # a flag off by default still shows none


def test_numpy_numbers_and_booleans_are_taken_as_python_ones():
    """What a frame's cell holds (np.int64, np.True_, np.float32) is taken as the number or
    the boolean it is; a numpy boolean is still no number, nor a numpy integer a boolean."""
    import numpy as np

    taken = resolve({"shots": np.int64(4), "seed": np.uint64(2 ** 64 - 1), "no_cache": np.True_,
                     "temperature": np.float32(0.5), "iterations": np.float64(3.0), "mlflow": np.True_})
    assert (taken["shots"], taken["seed"], taken["no_cache"], taken["temperature"], taken["iterations"],
            taken["mlflow"]) == (4, 2 ** 64 - 1, True, 0.5, 3, "")
    assert type(taken["shots"]) is int and type(taken["seed"]) is int and type(taken["no_cache"]) is bool
    assert resolve({"mlflow": np.False_})["mlflow"] is None
    for keyword, value, why in (("shots", np.True_, "expected a whole number"), ("shots", np.float32(1.5),
                                "expected a whole number"), ("no_cache", np.int64(1), "expected true or false"),
                                ("temperature", np.False_, "expected a number"),
                                ("seed", np.int64(-1), "not in the range 0<=x<2**64")):
        with pytest.raises(PromptclimbError, match=f"{re.escape(why)}$"):
            resolve({keyword: value})
