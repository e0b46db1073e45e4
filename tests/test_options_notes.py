"""Search options that passed without a word or gave an odd result: a value that can never
make sense is refused in one line before anything loads (--top-k 0); a harmless over-ask
goes on and is said once, in one note, with what the run does instead (--ensemble 1,
--parallel above --restarts, --names-k above the classes, --pool-sample above the pool);
--max-calls 0 scores every restart's pool sample, not restart 1's only. The command line
and the Python API's search() behave alike (one option table, one SearchConfig.check)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import promptclimb
from fake_llm import FakeLLM, WordEvaluator
from test_search import KEY, responder

from promptclimb.agent.core.errors import PromptclimbError

SMALL = dict(dataset="toy", iterations=2, resets=1, pool_sample=6, search="template")


@pytest.fixture
def built():
    """The evaluators the searches build: in-memory WordEvaluators (3 classes), kept to read
    what they were asked to score."""
    from promptclimb.agent.api import using_evaluator

    evaluators = []

    def build_evaluator(**kwargs):
        evaluators.append(WordEvaluator(kwargs["dataset"]))
        return evaluators[-1]

    with using_evaluator(build_evaluator):
        yield evaluators


@pytest.fixture
def endpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with FakeLLM(responder=responder) as fake:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        yield fake


def search(**keywords) -> tuple[list[str], object]:
    """search() with SMALL and `keywords`: the lines it said, and its result."""
    said: list[str] = []
    result = promptclimb.search(**{**SMALL, **keywords}, echo=said.append)
    return said, result


def flat(output: str) -> str:
    """A command's output without rich's box drawing and line wrapping."""
    return " ".join(output.replace("│", " ").split())


def notes(said: list[str]) -> list[str]:
    return [line for line in said if line.startswith("note: ")]


def history(result) -> list[dict]:
    return [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]


def test_top_k_0_is_refused_before_anything_loads(endpoint, built, tmp_path):
    """--top-k 0 showed the LLM "Here are the best templates so far" over an empty list, and
    asked it for templates that beat them."""
    from promptclimb.agent.cli.search import search_cmd

    with pytest.raises(PromptclimbError, match=r"^search\(\): --top-k 0: not in the range x>=1$"):
        search(top_k=0, name="api")
    factory = {"evaluator_factory": lambda **kw: built.append(WordEvaluator(kw["dataset"])) or built[-1]}
    cli = CliRunner().invoke(search_cmd, ["--dataset", "toy", "--top-k", "0", "--name", "cli"], obj=factory)
    assert cli.exit_code == 2 and "'--top-k': 0 is not in the range x>=1." in cli.output
    config = tmp_path / "s.toml"
    config.write_text('[search]\ndataset = "toy"\ntop-k = 0\n')
    from_file = CliRunner().invoke(search_cmd, ["--config", str(config)], obj=factory, terminal_width=400)
    assert from_file.exit_code == 2 and f"--config {config}: --top-k 0: not in the range x>=1" in flat(from_file.output)
    assert not built and endpoint.count == 0 and not (tmp_path / "runs").exists()
    said, _ = search(top_k=1, name="one")  # one best template shown is a search
    assert not notes(said) and endpoint.count == 2


def test_ensemble_1_is_said_and_no_ensemble_is_tried(endpoint, built):
    said, result = search(ensemble=1, name="e1")
    assert notes(said) == ["note: --ensemble 1: an ensemble takes 2 or more templates, so none is tried "
                           "(as --ensemble 0)"]
    assert built[-1].ensembles == [] and result.best
    said, _ = search(ensemble=0, name="e0")  # 0: none, as the help says, unsaid
    assert not notes(said) and built[-1].ensembles == []


def test_parallel_above_the_restarts_is_said_and_no_longer_refuses_a_budget(endpoint, built):
    """--parallel 3 with one restart has nothing to run at the same time: said, and a budget
    cap, which parallel restarts cannot share, is no reason to refuse it."""
    said, result = search(parallel=3, max_calls=1, name="p1")
    assert notes(said) == ["note: --parallel 3 with 1 restart: nothing to run at the same time, the restart "
                           "runs alone"]
    assert endpoint.count == 1 and [e["event"] for e in history(result)].count("llm_exchange") == 1
    said, _ = search(parallel=3, restarts=2, name="p2")
    assert notes(said) == ["note: --parallel 3 with 2 restarts: 2 run at the same time"]
    with pytest.raises(PromptclimbError, match="parallel restarts cannot share a budget cap"):
        search(parallel=2, restarts=2, max_calls=3, name="p3")  # two lanes do share it
    said, _ = search(parallel=2, restarts=2, name="p4")
    assert not notes(said)


def test_names_k_above_the_classes_is_said_once(endpoint, built):
    said, _ = search(names_k=7, search="names", name="k7")
    assert notes(said) == ["note: --names-k 7: the data has 3 classes, so a names turn asks for all 3 at most"]
    said, _ = search(names_k=3, search="names", name="k3")  # every class: not more than there are
    assert not notes(said)


def test_pool_sample_above_the_pool_is_said_with_the_pools_size(endpoint, built, tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("a photo of a {}.\na {}.\nthe {}.\n")
    said, result = search(pool=str(pool), pool_sample=50, name="big")
    assert notes(said) == ["note: --pool-sample 50: the pool has 3 templates, so each restart scores all of them "
                           "(as --pool-sample 0)"]
    assert [e["pool"] for e in history(result) if e["event"] == "restart"] == [["a photo of a {}.", "a {}.", "the {}."]]
    said, _ = search(pool=str(pool), pool_sample=None, name="default")  # 30, the default: not asked for
    assert not notes(said)


def test_the_cli_says_a_note_as_the_api_does(endpoint, built, tmp_path):
    from promptclimb.agent.cli.search import search_cmd

    factory = {"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])}
    result = CliRunner().invoke(search_cmd, ["--dataset", "toy", "--iterations", "1", "--resets", "1", "--search",
                                             "template", "--pool-sample", "6", "--ensemble", "1", "--name", "cli"],
                                obj=factory)
    assert result.exit_code == 0, result.output
    assert result.output.count("note: --ensemble 1: an ensemble takes 2 or more templates") == 1


def test_a_resume_does_not_say_the_notes_again(endpoint, built):
    search(ensemble=1, name="done")
    said = []
    promptclimb.search(resume="done", echo=said.append)
    assert not notes(said)


@pytest.mark.parametrize("search_kind", ["template", "both"])
def test_max_calls_0_scores_every_restarts_pool_sample(endpoint, built, search_kind):
    """--max-calls 0 --restarts 3 had stopped at restart 1's first turn: restarts 2 and 3
    never scored their pool samples, which need no LLM."""
    said, result = search(max_calls=0, restarts=3, pool_sample=3, search=search_kind, name=f"zero-{search_kind}")
    events = history(result)
    samples = [e["pool"] for e in events if e["event"] == "restart"]
    assert [e["restart"] for e in events if e["event"] == "restart"] == [0, 1, 2] and len(samples[2]) == 3
    scored = {e["template"] for e in events if e["event"] == "score"}
    assert scored == {t for sample in samples for t in sample}
    assert [e["reason"] for e in events if e["event"] == "stop"] == ["budget: max calls (0) reached"]
    assert endpoint.count == 0 and [line for line in said if line.startswith("restart ")][2].startswith("restart 3/3")
    said, result = search(max_calls=1, restarts=3, pool_sample=3, name="one-call")  # a budget spent mid-run stops it
    assert [e["restart"] for e in history(result) if e["event"] == "restart"] == [0]


def test_a_run_recorded_with_top_k_0_before_it_was_refused_still_resumes(endpoint, built):
    """Runs started with --top-k 0 before it was refused hold it in config.json: a resume read
    them as damaged ("config.json is damaged (search.top_k: ...)")."""
    from promptclimb.agent import options

    top_k = options.BY_NAME["top_k"]
    object.__setattr__(top_k, "minimum", 0)  # a run started before --top-k 0 was refused (a frozen Option)
    try:
        said, result = search(top_k=0, name="old", max_calls=1)
    finally:
        object.__setattr__(top_k, "minimum", 1)
    (result.run_dir / "history.jsonl").write_text("".join(  # killed before its budget's stop
        line + "\n" for line in (result.run_dir / "history.jsonl").read_text().splitlines()
        if json.loads(line)["event"] not in ("stop", "final")))
    (result.run_dir / "summary.json").unlink()
    resumed = promptclimb.search(resume=result.run_dir, echo=[].append)
    assert resumed.run_dir == result.run_dir and json.loads((result.run_dir / "config.json").read_text())[
        "search"]["top_k"] == 0
    with pytest.raises(PromptclimbError, match="top-k 0: not in the range"):
        search(top_k=0, name="new")  # a new run is refused as before


def test_a_zero_budget_run_recorded_stopping_at_restart_1_still_resumes(endpoint, built):
    """Before every restart scored its pool sample, --max-calls 0 --restarts 3 stopped at restart
    1's first turn: such a history (the same as one restart's, with restarts 3 recorded) replays
    as it was, where the resume had been refused as a changed search."""
    said, result = search(max_calls=0, restarts=1, pool_sample=3, name="old-zero")
    config = json.loads((result.run_dir / "config.json").read_text())
    config["search"]["restarts"] = 3
    (result.run_dir / "config.json").write_text(json.dumps(config))
    before = history(result)
    resumed = promptclimb.search(resume=result.run_dir, echo=[].append)
    assert resumed.run_dir == result.run_dir and history(resumed)[:len(before)] == before
    assert [e["restart"] for e in history(resumed) if e["event"] == "restart"] == [0]
