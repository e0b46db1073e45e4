"""`promptclimb search --optimizer craft|cbbt`: the run folder, resume after a kill, the
options, `show` and the refused `transfer` (a tiny open_clip model, generated images)."""

from __future__ import annotations

import csv
import io
import json

import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from promptclimb.agent.cli import cli  # noqa: E402
from promptclimb.agent.runs.reading import read_history  # noqa: E402
from fake_llm import one_line_error  # noqa: E402


@pytest.fixture
def search(tmp_path, tiny_clip_config, tiny_clip_weights, image_folder, torch_threads):
    runs = tmp_path / "runs"

    def run(*extra, name="soft"):
        args = ["search", "--dataset", "imagefolder", "--data-root", str(image_folder), "--shots", "2",
                "--backbone", tiny_clip_config, "--weights", str(tiny_clip_weights), "--device", "cpu",
                "--runs-dir", str(runs), "--name", name, *extra]
        return CliRunner().invoke(cli, args)

    run.runs = runs
    return run


def test_craft_search_writes_a_complete_run_folder(search):
    result = search("--optimizer", "craft", "--queries", "12", "--craft-popsize", "4", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    run_dir = search.runs / "soft"
    assert summary["optimizer"] == "craft" and summary["counts"] == {"queries": 12, "steps": 3, "budget": 12}
    for split in ("train", "val", "test"):
        assert 0.0 <= summary["best"]["accuracy"][split] <= 1.0
        assert 0.0 <= summary["adapter"]["accuracy"][split] <= 1.0
    assert summary["adapter"]["kind"] == "residual-logits"
    assert summary["best"]["template"].startswith("<soft: ") and "{}" not in summary["best"]["template"]

    steps = [e for e in read_history(run_dir / "history.jsonl") if e["event"] == "step"]
    assert [(e["iteration"], e["queries"]) for e in steps] == [(0, 0), (1, 4), (2, 8), (3, 12)]
    assert all("population" in e and "val" in e["prompt"]["accuracy"] for e in steps[1:])

    from promptclimb.evaluators.softprompt import load_soft_prompt

    context, metadata = load_soft_prompt(run_dir / "soft_prompt.safetensors")
    assert tuple(context.shape) == (4, 32) and metadata["optimizer"] == "craft"
    assert metadata["nearest_tokens"].split() == summary["soft_prompt"]["nearest_tokens"]
    for name in ("adapter.pt", "curve.png", "optimizer_state.pt", "config.json", "summary.json"):
        assert (run_dir / name).stat().st_size > 0

    shown = CliRunner().invoke(cli, ["show", "soft", "--runs-dir", str(search.runs)])
    assert shown.exit_code == 0, shown.output
    assert "optimizer craft" in shown.output and "nearest tokens: " in shown.output
    assert " ".join(summary["soft_prompt"]["nearest_tokens"]) in shown.output
    assert "3 steps, 12 of 12 queries" in shown.output
    # csv: one row per step (it printed the header of an empty template table)
    rows = list(csv.DictReader(io.StringIO(
        CliRunner().invoke(cli, ["show", "soft", "--runs-dir", str(search.runs), "--format", "csv"]).stdout)))
    assert [(int(r["step"]), int(r["queries"])) for r in rows] == [(0, 0), (1, 4), (2, 8), (3, 12)]
    assert float(rows[-1]["train"]) == pytest.approx(steps[-1]["prompt"]["accuracy"]["train"], abs=1e-6)

    refused = CliRunner().invoke(cli, ["transfer", "soft", "--runs-dir", str(search.runs), "--backbone", "demo"])
    assert refused.exit_code == 1 and "cannot be carried over" in refused.output
    assert "Traceback" not in refused.output
    import promptclimb

    with pytest.raises(promptclimb.PromptclimbError, match="cannot be carried over"):
        promptclimb.transfer("soft", "demo", runs_dir=search.runs)

    # commands that work on a run's best template say why a soft prompt is not one
    for command in (["adapt", "soft", "--kind", "cache"], ["eval", "--run", "soft"],
                    ["eval", "--run", "soft", "--with-adapter", "--prompt", "a photo of a {}."]):
        refused = CliRunner().invoke(cli, [*command, "--runs-dir", str(search.runs)], terminal_width=1000)
        assert refused.exit_code == 1, (command, refused.output)
        assert "learned a soft prompt (craft), not a text template" in refused.output, (command, refused.output)
        # the commands it names find the run from here (`show soft` looked under ./runs)
        assert f"`promptclimb show {search.runs / 'soft'}`" in refused.output, refused.output
    # templates of one's own on the run's split still work
    own = CliRunner().invoke(cli, ["eval", "--run", "soft", "--prompt", "a photo of a {}.", "--json",
                                   "--runs-dir", str(search.runs)])
    assert own.exit_code == 0, own.output
    assert json.loads(own.stdout)["results"][0]["template"] == "a photo of a {}."


@pytest.mark.parametrize("name, kill", [("craft", "before"), ("cbbt", "before"), ("craft", "after")])
def test_a_killed_search_resumes_to_the_same_end(search, monkeypatch, name, kill):
    """Killed after step 3's event, before or after its state is saved: the resumed run goes
    on from the saved state and ends as the uninterrupted one."""
    import promptclimb.evaluators.softprompt as softprompt

    settings = ["--optimizer", name, "--queries", "20", "--craft-popsize", "4", "--cbbt-directions", "3", "--json"]
    straight = search(*settings, name="straight")
    assert straight.exit_code == 0, straight.output

    original, saves = softprompt.save_state, []

    def killed_on_the_third_save(path, optimizer):
        saves.append(path)
        if len(saves) == 3 and kill == "before":
            raise KeyboardInterrupt
        written = original(path, optimizer)
        if len(saves) == 3:
            raise KeyboardInterrupt
        return written

    monkeypatch.setattr(softprompt, "save_state", killed_on_the_third_save)
    killed = search(*settings, name="killed")
    assert killed.exit_code != 0 and "continue with: promptclimb search --resume" in killed.output
    monkeypatch.setattr(softprompt, "save_state", original)
    cls = softprompt.OPTIMIZERS[name]
    computed, step = [], cls.step
    monkeypatch.setattr(cls, "step", lambda self: computed.append(self.step_count) or step(self))
    resumed = CliRunner().invoke(cli, ["search", "--resume", "killed", "--runs-dir", str(search.runs), "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert computed[0] == (2 if kill == "before" else 3)  # from the saved state, not from the start

    a, b = json.loads(straight.stdout), json.loads(resumed.stdout)
    # The same template and accuracies. Losses and probabilities: equal on a CPU; on CUDA the
    # resumed run rounded differently (2e-7 relative, seen on an H100).
    rounded = ("loss", "prob")
    assert {k: v for k, v in a["best"].items() if k not in rounded} == \
        {k: v for k, v in b["best"].items() if k not in rounded}
    for key in rounded:
        assert b["best"][key] == pytest.approx(a["best"][key], rel=1e-5)
    assert a["adapter"]["accuracy"] == b["adapter"]["accuracy"]
    assert a["counts"] == b["counts"]
    steps = [e["iteration"] for e in read_history(search.runs / "killed" / "history.jsonl") if e["event"] == "step"]
    assert steps == list(range(a["counts"]["steps"] + 1))  # every step once


def test_the_command_that_started_a_craft_run_resumes_it_with_llm_options_given(search, monkeypatch):
    """Options of the LLM search given to craft are not used: said in one warning line when
    the run starts and again when the same command is given with --resume, not refused
    there (the run records no LLM settings to compare them with). A craft setting of its own
    that differs is still refused."""
    import promptclimb.evaluators.softprompt as softprompt

    command = ["--optimizer", "craft", "--queries", "9", "--craft-popsize", "3", "--llm", "gpt-4o", "--iterations",
               "3", "--select", "train+val", "--confirm", "off", "--max-calls", "5", "--adapter", "cache", "--json"]
    warning = ("warning: --optimizer craft does not use --llm, --iterations, --confirm, --max-calls, --select, "
               "--adapter (options of the LLM search): ignored")
    original, saves = softprompt.save_state, []

    def killed_on_the_second_save(path, optimizer):
        saves.append(original(path, optimizer))
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(softprompt, "save_state", killed_on_the_second_save)
    killed = search(*command)
    assert killed.exit_code != 0 and "continue with: promptclimb search --resume" in killed.output
    assert killed.output.count(warning) == 1
    config = json.loads((search.runs / "soft" / "config.json").read_text())
    assert "search" not in config and config["adapter_kinds"] == []  # craft trains its own module
    monkeypatch.setattr(softprompt, "save_state", original)

    refused = search(*command, "--craft-popsize", "4", "--resume", "soft")
    one_line_error(refused, "--craft-popsize 4 (the run's: 3)")
    resumed = search(*command, "--resume", "soft")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stderr.count(warning) == 1 and "Error" not in resumed.output
    assert json.loads(resumed.stdout)["counts"] == {"queries": 9, "steps": 3, "budget": 9}


def test_every_soft_prompt_option_reaches_the_run(search):
    options = {"--queries": 6, "--prompt-tokens": 2, "--prompt-init": "a photo", "--craft-popsize": 3,
               "--craft-sigma": 0.05, "--craft-bound": 2.0, "--craft-intrinsic-dim": 8, "--craft-lr": 0.01,
               "--craft-kl-weight": 0.5, "--cbbt-lr": 0.02, "--cbbt-directions": 2}
    args = [str(x) for option, value in options.items() for x in (option, value)]
    result = search("--optimizer", "craft", *args)
    assert result.exit_code == 0, result.output
    recorded = json.loads((search.runs / "soft" / "config.json").read_text())["soft_prompt"]
    for option, value in options.items():
        assert recorded[option[2:].replace("-", "_")] == value, option
    assert json.loads((search.runs / "soft" / "summary.json").read_text())["counts"]["steps"] == 2


def test_bad_budgets_are_refused_in_one_line(search):
    llm = search("--queries", "100")
    assert llm.exit_code != 0 and "--queries is the budget of --optimizer craft|cbbt" in llm.output
    small = search("--optimizer", "cbbt", "--queries", "100")
    assert small.exit_code != 0 and "buys no cbbt step" in small.output
    init = search("--optimizer", "craft", "--queries", "40", "--prompt-init", "a photo")
    assert init.exit_code != 0 and "is not 4 tokens" in init.output
    assert not (search.runs / "soft").exists()  # refused before a run folder is made
    for result in (llm, small, init):
        assert "Traceback" not in result.output


def test_a_prompt_init_longer_than_the_context_is_refused_before_the_model_loads(tmp_path):
    def no_model(*args, **kwargs):
        raise AssertionError("the evaluator was built")

    args = ["search", "--dataset", "fashion-mnist", "--shots", "1", "--optimizer", "craft", "--queries", "40",
            "--prompt-init", "a photo of a red", "--runs-dir", str(tmp_path / "runs"), "--name", "soft"]
    result = CliRunner().invoke(cli, args, obj={"evaluator_factory": no_model})
    one_line_error(result, "--prompt-init 'a photo of a red' has 5 words, more than --prompt-tokens 4")
    assert not (tmp_path / "runs" / "soft").exists()
