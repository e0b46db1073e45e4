"""Start and --resume take the same command line: an option the start accepted is not
refused when the same command is run again with --resume. The LLM search on an in-memory
evaluator; the craft side is in tests/test_soft_prompt_search.py."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from fake_llm import FakeLLM, WordEvaluator, one_line_error
from test_search import KEY, comparable, responder

FACTORY = {"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])}


@pytest.fixture
def search(tmp_path):
    runs = tmp_path / "runs"
    with FakeLLM(responder=responder) as fake:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}

        def run(*extra, name="run"):
            from promptclimb.agent.cli import cli

            args = ["search", "--dataset", "toy", "--iterations", "1", "--resets", "1", "--pool-sample", "4", "--search",
                    "template", "--runs-dir", str(runs), "--name", name, *extra]
            return CliRunner().invoke(cli, args, obj=FACTORY, env=env)

        run.runs = runs
        yield run


def config(search, name="run") -> dict:
    return json.loads((search.runs / name / "config.json").read_text())


def test_soft_prompt_options_are_ignored_alike_at_start_and_on_resume(search):
    """The LLM search does not read the craft/cbbt knobs: said once at start, and again on
    resume rather than refused (its config.json records none of them); --queries is refused
    both times with the same message."""
    result = search("--craft-popsize", "5", "--prompt-tokens", "2")
    assert result.exit_code == 0, result.output
    warning = ("warning: the LLM search (--optimizer llm) does not use --prompt-tokens, --craft-popsize "
               "(craft and cbbt options): ignored")
    assert result.output.count(warning) == 1
    assert "soft_prompt" not in config(search)
    again = search("--craft-popsize", "5", "--prompt-tokens", "2", "--resume", "run")
    assert again.exit_code == 0, again.output
    assert again.output.count(warning) == 1
    start = search("--queries", "40", name="other")
    resume = search("--queries", "40", "--resume", "run")
    for refused in (start, resume):
        one_line_error(refused, "--queries is the budget of --optimizer craft|cbbt")
