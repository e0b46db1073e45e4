"""The search-quality knobs: --pool, --metric, the ensemble chosen on val, --spare.
Against the fake OpenAI-compatible server and the in-memory WordEvaluator: no torch."""

import json
import re

import pytest
from click.testing import CliRunner

from promptclimb.agent.cli.search import search_cmd
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.format import pct
from promptclimb.agent.core.pools import load_pool
from promptclimb.agent.core.templates import template_problem
from fake_llm import FakeLLM, WordEvaluator
from test_search import KEY, climb, history


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))


# -- pools ------------------------------------------------------------------------------------
def test_captions_pool_is_large_valid_and_distinct_from_curated():
    captions = load_pool("fashion-mnist", "captions")
    curated = load_pool("fashion-mnist", "curated")
    assert len(captions) >= 80 and all(template_problem(p.template) is None for p in captions)
    assert {p.source for p in captions} == {"captions"}
    assert not {p.template for p in captions} & {p.template for p in curated}


def test_pool_file_reports_every_bad_line_with_its_number(tmp_path):
    path = tmp_path / "pool.txt"
    path.write_text("# mine\na {} here\nno placeholder\n\na {} and {}\n")
    with pytest.raises(PromptclimbError) as err:
        load_pool("toy", str(path))
    message = str(err.value)
    assert "2 invalid line(s)" in message
    assert re.search(r"line 3: 'no placeholder'", message) and re.search(r"line 5: 'a \{\} and \{\}'", message)
    assert "\n" not in message  # one line, as every error (it was a list, one line each)
    path.write_text("".join(f"bad {i}\n" for i in range(1, 8)))
    with pytest.raises(PromptclimbError, match=r"7 invalid line\(s\) .*line 5: 'bad 5': [^;]*; \.\.\. \(7 in all\)$"):
        load_pool("toy", str(path))
    path.write_text("a photo of " + "very " * 30 + "things\n")  # no placeholder: shown cut, and saying so
    with pytest.raises(PromptclimbError) as err:
        load_pool("toy", str(path))
    assert f"line 1: '{('a photo of ' + 'very ' * 30)[:79]}…'" in str(err.value)
    path.write_text("# only comments\n\n")
    with pytest.raises(PromptclimbError, match="holds no template"):
        load_pool("toy", str(path))
    with pytest.raises(PromptclimbError, match="neither curated nor captions nor a file"):
        load_pool("toy", str(tmp_path / "missing.txt"))


def run_cli(args, fake_url, monkeypatch, evaluator=None):
    evaluator_factory = lambda **kw: evaluator or WordEvaluator(kw["dataset"])
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake_url}
    return CliRunner().invoke(search_cmd, args, env=env, obj={"evaluator_factory": evaluator_factory})


def test_pool_file_is_recorded_kept_by_resume_and_shown(tmp_path, monkeypatch):
    from promptclimb.agent.cli.runs import show_cmd

    pool = tmp_path / "pool.txt"
    pool.write_text("my pool {} one\nmy pool {} two\nmy pool {} three\n")
    runs = tmp_path / "runs"
    with FakeLLM(script=["a photo of a {}."]) as fake:
        result = run_cli(["--dataset", "toy", "--pool", str(pool), "--iterations", "1", "--search", "template", "--resets", "1",
                          "--runs-dir", str(runs), "--name", "p", "--max-calls", "0"], fake.base_url, monkeypatch)
        assert result.exit_code == 0, result.output
        config = json.loads((runs / "p" / "config.json").read_text())
        assert config["pool"]["name"] == str(pool.resolve()) and config["pool"]["size"] == 3
        pool.unlink()  # resume reads the pool from config.json, not from the file
        result = run_cli(["--resume", "p", "--runs-dir", str(runs)], fake.base_url, monkeypatch)
        assert result.exit_code == 0, result.output
    scored = [e["template"] for e in history(runs / "p") if e["event"] == "score" and e["origin"] == "pool"]
    assert set(scored) == {"my pool {} one", "my pool {} two", "my pool {} three"}
    shown = CliRunner().invoke(show_cmd, ["p", "--runs-dir", str(runs)])
    assert shown.exit_code == 0 and f"pool {pool.resolve()}" in shown.output


def test_a_bad_pool_file_fails_before_the_evaluator_is_built(tmp_path, monkeypatch):
    pool = tmp_path / "pool.txt"
    pool.write_text("fine {}\nbroken {0}\n")
    built = []
    evaluator_factory = lambda **kw: built.append(kw)
    result = CliRunner().invoke(search_cmd, ["--dataset", "toy", "--pool", str(pool), "--runs-dir",
                                             str(tmp_path / "runs")], env={"OPENAI_API_KEY": KEY}, obj={"evaluator_factory": evaluator_factory})
    assert result.exit_code != 0 and "line 2" in result.output and built == []


# -- metric -----------------------------------------------------------------------------------
# "sharp" makes the fake model surer of the true class without changing its accuracy.
SHARP = "a photo of clothing, sharp: {}."
PLAIN = "a photo of clothing, plain: {}."


@pytest.mark.parametrize("metric, winner", [("accuracy", PLAIN), ("prob", SHARP), ("blend", SHARP)])
def test_metric_decides_the_winner_and_is_what_the_llm_sees(tmp_path, metric, winner):
    # PLAIN is proposed first: under accuracy the two tie (same accuracy and loss), and the earlier wins
    with FakeLLM(script=[f"{PLAIN}\n{SHARP}", "a {}."]) as fake:
        result, evaluator, run_dir = climb(tmp_path, fake.base_url, resets=1, iterations=2, metric=metric)
    assert result.best["template"] == winner
    shown = {}
    for line in fake.requests[1]["messages"][-1]["content"].splitlines():
        m = re.match(r"^([\d.]+)%  (.+?)  \(", line)
        if m:
            shown[m.group(2)] = float(m.group(1))
    ev = WordEvaluator()
    acc, prob = ev._value(SHARP, "train")[0], ev._prob(SHARP, "train")
    expected = {"accuracy": acc, "prob": prob, "blend": (acc + prob) / 2}[metric]
    assert shown[SHARP] == pytest.approx(100 * expected, abs=0.05)
    system = fake.requests[0]["messages"][1]["content"]
    assert {"accuracy": "accuracy on", "prob": "probability of the correct class",
            "blend": "mean of accuracy and the probability"}[metric] in system
    assert result.summary["metric"] == metric


# -- ensemble ---------------------------------------------------------------------------------
@pytest.mark.parametrize("gain, chosen", [(0.02, True), (-0.05, False)])
def test_the_ensemble_is_chosen_on_val_only_when_it_beats_the_best_alone(tmp_path, gain, chosen):
    evaluator = WordEvaluator(ensemble_gain=gain)
    with FakeLLM(script=["a grayscale photo of a {}.", "a dark {}."]) as fake:
        result, _, run_dir = climb(tmp_path, fake.base_url, evaluator=evaluator, ensemble_k=4)
    ensemble = result.ensemble
    assert ensemble["chosen"] is chosen and ensemble["chosen_on"] == ["val"]
    assert set(ensemble["tried"]) == {"2", "3", "4"}
    # ties between sizes go to the smaller k: every size scores the same on this evaluator
    assert len(ensemble["templates"]) == 2
    assert result.summary["winner"] == ("ensemble" if chosen else "best")
    assert "test" in ensemble["accuracy"]  # measured, whether chosen or not


@pytest.mark.parametrize("gain", [0.02, -0.05])
def test_what_changed_says_the_ensemble_when_it_is_what_to_use(tmp_path, monkeypatch, gain):
    """The search's last lines gave the best template's test accuracy even when the ensemble,
    chosen on val, is what summary.json says to use."""
    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    with FakeLLM(script=["a grayscale photo of a {}.", "a dark {}."]) as fake:
        result = run_cli(["--dataset", "toy", "--runs-dir", str(tmp_path / "runs"), "--name", "run", "--search",
                          "template", "--iterations", "2", "--resets", "1", "--pool-sample", "6"], fake.base_url,
                         monkeypatch, evaluator=WordEvaluator(ensemble_gain=gain))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text())
    said = [line for line in result.output.splitlines() if line.startswith("  test accuracy: ")]
    if gain > 0:
        ensemble = summary["ensemble"]
        assert summary["winner"] == "ensemble" and ensemble["accuracy"]["test"] != summary["best"]["accuracy"]["test"]
        assert said[0].endswith(f"-> {pct(ensemble['accuracy']['test'])} (the ensemble of "
                                f"{len(ensemble['templates'])} templates)")
    else:
        best = summary["best"]
        assert summary["winner"] == "best" and said[0].endswith(f"-> {pct(best['accuracy']['test'])} "
                                                                f"({best['template']!r})")
    # the start's figure, said once at the end, is kept: show reads the same line back the day after
    start = said[0].split("test accuracy: ")[1].split(" ")[0]
    assert pct(summary["baseline"]["accuracy"]["test"]) == start and summary["baseline"]["names"] == "start"
    from promptclimb.agent.cli import cli

    shown = CliRunner().invoke(cli, ["show", "run", "--runs-dir", str(tmp_path / "runs")]).output.splitlines()
    assert shown[2] == f"test accuracy: {start} ('a photo of a {{}}.' with the start names) -> " \
        f"{said[0].split(' -> ')[1].split(' ')[0]} ({'ensemble of 2' if gain > 0 else 'best template'})"


@pytest.mark.parametrize("result", ["adapter", "prompt-only"])
def test_what_changed_ends_with_the_adapter_when_it_is_the_runs_result(result):
    """With --adapter the block gave the prompt's test accuracy as where the search ended,
    three lines before `kept: ... the run's result is now prompt + adapter`."""
    from promptclimb.agent.pipeline import what_changed

    best = {"template": "a dark {}.", "accuracy": {"test": 0.75}}
    adapter = {"kind": "cache", "result": result, "accuracy": {"test": 0.8125}}
    lines = []
    what_changed({"best": best, "winner": "best", "adapter": adapter}, WordEvaluator(), lines.append)
    said = lines[lines.index("\nWhat changed") + 1:]
    assert said[0].startswith("  test accuracy: ") and said[0].endswith("-> 75.0% ('a dark {}.')")
    assert said[1:] == (["  with the cache adapter (the run's result): 81.2%"] if result == "adapter" else [])


# -- spare ------------------------------------------------------------------------------------
def test_spare_asks_for_more_and_scores_only_the_first_new_ones(tmp_path):
    answer = "\n".join(["a photo of a {}.", "a {} one", "a {} two", "a {} three", "a {} four"])
    with FakeLLM(script=[answer]) as fake:
        result, evaluator, run_dir = climb(tmp_path, fake.base_url, resets=1, iterations=1, proposals=2, spare=3)
    assert "exactly 5 new templates" in fake.requests[0]["messages"][0]["content"]
    scored = [e["template"] for e in history(run_dir) if e["event"] == "score" and e["origin"] == "llm"]
    assert scored == ["a {} one", "a {} two"]  # the repeat of a pool template did not cost a slot


def test_repeats_are_counted_back_not_listed(tmp_path):
    # a small model shown its repeated lines copies them again: the feedback only counts them
    answer = "a photo of a {}.\na {{}} broken\na brand new {}"
    with FakeLLM(script=[answer]) as fake:
        climb(tmp_path, fake.base_url, resets=1, iterations=2)
    feedback = fake.requests[1]["messages"][-1]["content"]
    assert "1 of your lines repeated templates already scored" in feedback
    assert "a photo of a {}." not in feedback.split("Current top templates:")[0]
    assert "a {{}} broken" in feedback  # an invalid line is still listed, with its reason


def test_a_line_refused_before_and_written_again_is_counted_not_listed(tmp_path):
    # the 1.5B model copies the refused lines it is shown, turn after turn (bench seed 28)
    refused = "a {{}} broken"
    with FakeLLM(script=[f"{refused}\na brand new {{}}", f"{refused}\nanother new {{}}", "a third {}"]) as fake:
        _, _, run_dir = climb(tmp_path, fake.base_url, resets=1, iterations=3)
    first, second = (fake.requests[i]["messages"][-1]["content"] for i in (1, 2))
    assert refused in first and "repeated templates" not in first  # refused once: listed with its reason
    assert refused not in second  # written again: counted
    assert "1 of your lines repeated templates already scored or refused, so they were skipped" in second
    reasons = [e["reason"] for e in history(run_dir) if e["event"] == "reject" and e["template"] == refused]
    assert len(reasons) == 2 and len(set(reasons)) == 1 and "duplicate" not in reasons[0]  # the history keeps why


# -- unfill -----------------------------------------------------------------------------------
def test_a_line_written_for_one_class_becomes_a_template(tmp_path):
    # WordEvaluator's classes: T-shirt, trousers, bag
    answer = "a studio photo of a t-shirt\na bag and trousers\na grayscale photo of a {}."
    with FakeLLM(script=[answer]) as fake:
        result, evaluator, run_dir = climb(tmp_path, fake.base_url, resets=1, iterations=1)
    scored = {e["template"]: e["source"] for e in history(run_dir) if e["event"] == "score" and e["origin"] == "llm"}
    assert scored == {"a studio photo of a {}": "llm-unfilled", "a grayscale photo of a {}.": "llm"}
    with FakeLLM(script=[answer]) as fake:  # without unfill the filled-in line is lost
        _, _, run_dir = climb(tmp_path, fake.base_url, name="off", resets=1, iterations=1, unfill=False)
    assert [e["template"] for e in history(run_dir) if e["event"] == "score" and e["origin"] == "llm"] == [
        "a grayscale photo of a {}."]


def test_a_template_that_names_a_class_is_not_scored_and_the_llm_reads_why(tmp_path):
    # WordEvaluator's classes: T-shirt, trousers, bag
    answer = "a photo of a {}, a bag.\na grayscale photo of a {}."
    with FakeLLM(script=[answer, "a brand new {}"]) as fake:
        _, _, run_dir = climb(tmp_path, fake.base_url, resets=1, iterations=2)
    events = history(run_dir)
    assert [e["template"] for e in events if e["event"] == "score" and e["origin"] == "llm"] == [
        "a grayscale photo of a {}.", "a brand new {}"]
    assert [(e["template"], e["reason"]) for e in events if e["event"] == "reject"] == [
        ("a photo of a {}, a bag.", 'names the class "bag": a class name goes only where {} is')]
    assert 'a photo of a {}, a bag.  (names the class "bag"' in fake.requests[1]["messages"][-1]["content"]


# -- presence penalty -------------------------------------------------------------------------
def test_presence_penalty_is_sent_only_when_set_and_a_resume_keeps_it(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    common = ["--dataset", "toy", "--iterations", "1", "--search", "template", "--resets", "1", "--runs-dir", str(runs)]
    with FakeLLM(script=["a photo of a {}."]) as fake:
        plain = run_cli([*common, "--name", "plain"], fake.base_url, monkeypatch)
        assert plain.exit_code == 0, plain.output
        assert "presence_penalty" not in fake.requests[-1]  # requests (and cache keys) as before the option
        penalised = run_cli([*common, "--name", "pen", "--presence-penalty", "0.8", "--no-cache"], fake.base_url,
                            monkeypatch)
        assert penalised.exit_code == 0, penalised.output
        assert fake.requests[-1]["presence_penalty"] == 0.8
        changed = run_cli(["--resume", "pen", "--runs-dir", str(runs), "--presence-penalty", "0.2"], fake.base_url,
                          monkeypatch)
    assert json.loads((runs / "pen" / "config.json").read_text())["search"]["presence_penalty"] == 0.8
    assert changed.exit_code != 0 and "--presence-penalty 0.2 (the run's: 0.8)" in changed.output
    bad = run_cli([*common, "--name", "bad", "--presence-penalty", "3"], "http://127.0.0.1:9/v1", monkeypatch)
    assert bad.exit_code == 2 and "Invalid value for '--presence-penalty': 3.0 is not in the range -2<=x<=2." \
        in bad.output


def test_what_changed_is_said_when_the_adapter_fit_fails(tmp_path, monkeypatch):
    """--adapter: a fit that failed (a full disk as adapter.pt is written) ended the search with
    its error alone; the prompt it found, the run's result so far, went unsaid."""
    from promptclimb.agent import adapt
    from promptclimb.agent.core.errors import PromptclimbError

    def fails(*args, **kwargs):
        raise PromptclimbError("adapter.pt cannot be written")

    monkeypatch.setattr(adapt, "fit_run_adapter", fails)
    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    with FakeLLM(script=["a grayscale photo of a {}."]) as fake:
        result = run_cli(["--dataset", "toy", "--runs-dir", str(tmp_path / "runs"), "--name", "run", "--search",
                          "template", "--iterations", "1", "--resets", "1", "--pool-sample", "6", "--adapter", "cache"],
                         fake.base_url, monkeypatch, evaluator=WordEvaluator())
    assert result.exit_code == 1 and "adapter.pt cannot be written" in result.output, result.output
    assert "\nWhat changed\n  test accuracy: " in result.output
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text())
    assert "baseline" in summary and "adapter" not in summary
