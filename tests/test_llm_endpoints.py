"""Which LLM answers a run (issue 12, item 1), through `promptclimb search`: answers are cached
per endpoint and served model, and a `--base-url` that is a `promptclimb llm serve` server is
the local LLM. Fake OpenAI-compatible servers (tests/fake_llm.py) and the in-memory evaluator."""

from __future__ import annotations

import contextlib
import json

import pytest
from click.testing import CliRunner

from fake_llm import FakeLLM, WordEvaluator

KEY = "sk-test-ENDPOINTS-0123456789"
ARGS = ["--dataset", "toy", "--iterations", "2", "--resets", "1", "--pool-sample", "6"]


def server_answer(tag):
    """Proposals that name the server that made them."""
    return lambda body: f"a {tag} photo of a {{}}.\na {tag} picture of a {{}}."


@pytest.fixture
def cli(tmp_path, monkeypatch):
    from promptclimb.agent.cli.search import search_cmd
    from promptclimb.agent.llm import local as local_llm

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    evaluator_factory = lambda **kw: WordEvaluator(kw["dataset"])
    @contextlib.contextmanager
    def no_embedded_server(*args, **kwargs):
        pytest.fail("the embedded local LLM must not be started")
        yield

    monkeypatch.setattr(local_llm, "local_server", no_embedded_server)

    def invoke(name, *args, env=None):
        result = CliRunner().invoke(search_cmd, [*ARGS, "--runs-dir", str(tmp_path / "runs"),
                                                            "--name", name, *map(str, args)], env=env, obj={"evaluator_factory": evaluator_factory})
        assert result.exit_code == 0, result.output
        return result, tmp_path / "runs" / name

    return invoke


def answers(run_dir):
    events = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [e["answer"] for e in events if e["event"] == "llm_exchange"]


def test_two_servers_behind_one_llm_name_answer_their_own_runs(cli):
    with FakeLLM(responder=server_answer("first")) as first, FakeLLM(responder=server_answer("second")) as second:
        _, run1 = cli("one", "--llm", "same-model", env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": first.base_url})
        _, run2 = cli("two", "--llm", "same-model", env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": second.base_url})
    assert first.count == 2 and second.count == 2  # the second run made its own requests
    assert all("first" in a for a in answers(run1)) and all("second" in a for a in answers(run2))
    assert json.loads((run2 / "config.json").read_text())["llm"]["base_url"] == second.base_url


def test_two_llm_serve_servers_with_other_ggufs_do_not_share_answers(cli):
    from promptclimb.agent.llm.local import local_model_id

    with FakeLLM(responder=server_answer("q4"), models=[local_model_id("qwen", "1" * 64)]) as one, \
            FakeLLM(responder=server_answer("q8"), models=[local_model_id("qwen", "2" * 64)]) as two:
        cli("one", "--base-url", one.base_url)
        _, run2 = cli("two", "--base-url", two.base_url)
    assert two.count == 2 and all("q8" in a for a in answers(run2))


def test_a_base_url_of_a_local_server_is_the_local_llm(cli):
    from promptclimb.agent.llm import local as local_llm

    served = local_llm.local_model_id(local_llm.LOCAL_MODEL_NAME, "c" * 64)
    with FakeLLM(responder=server_answer("local"), models=[served]) as fake:
        result, run = cli("served", "--base-url", fake.base_url)
    assert "embedded" not in result.output and "No OPENAI_API_KEY" not in result.output
    assert f"Using the local LLM served at {fake.base_url} ({local_llm.LOCAL_MODEL_NAME})" in result.output
    # the local model's sampling, as with the embedded server
    assert fake.requests[0]["temperature"] == local_llm.LOCAL_SAMPLING["temperature"]
    assert fake.requests[0]["max_tokens"] == local_llm.LOCAL_SAMPLING["max_tokens"]
    llm = json.loads((run / "config.json").read_text())["llm"]
    assert llm["served_model"] == local_llm.LOCAL_MODEL_NAME and llm["base_url"] == fake.base_url


def test_a_model_file_for_an_endpoint_is_said_ignored_and_not_recorded(cli, tmp_path):
    """--llm-model with --base-url was ignored unsaid, and recorded as if it had chosen the
    model (even a file that does not exist)."""
    from promptclimb.agent.llm import local as local_llm

    served = local_llm.local_model_id(local_llm.LOCAL_MODEL_NAME, "c" * 64)
    with FakeLLM(responder=server_answer("local"), models=[served]) as fake:
        result, run = cli("given", "--base-url", fake.base_url, "--llm-model", tmp_path / "nowhere.gguf")
    assert f"warning: --llm-model is the embedded LLM's model file; the endpoint {fake.base_url} serves its own " \
           "model: ignored" in result.output
    assert json.loads((run / "config.json").read_text())["llm"]["llm_model_file"] is None


def test_a_base_url_of_another_server_is_not_called_local(cli):
    with FakeLLM(responder=server_answer("vllm"), models=["org/some-model"]) as fake:
        result, run = cli("other", "--base-url", fake.base_url)
    assert "local LLM" not in result.output and fake.count == 2
    assert json.loads((run / "config.json").read_text())["llm"]["model"] == "gpt-4o-mini"


def test_the_local_llms_context_and_its_longer_timeout_are_known_to_the_search_and_an_api_models_are_not(cli, monkeypatch):
    from promptclimb.agent import pipeline
    from promptclimb.agent.llm import local as local_llm

    clients = []

    class Recording(pipeline.LLMClient):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            clients.append((self.context_tokens, self.timeout))

    monkeypatch.setattr(pipeline, "LLMClient", Recording)
    served = local_llm.local_model_id(local_llm.LOCAL_MODEL_NAME, "c" * 64)
    with FakeLLM(responder=server_answer("local"), models=[served]) as local, \
            FakeLLM(responder=server_answer("api")) as api:
        _, run = cli("served", "--base-url", local.base_url)
        cli("served-30s", "--base-url", local.base_url, "--timeout", "30")
        cli("api", "--llm", "some-model", env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": api.base_url})
    # A local server goes on computing a request the client abandons, so a retry would queue
    # behind it: the search waits longer for it, unless told otherwise.
    assert clients == [(local_llm.CONTEXT_TOKENS, local_llm.REQUEST_TIMEOUT_S), (local_llm.CONTEXT_TOKENS, 30.0),
                       (None, 120.0)]
    assert json.loads((run / "config.json").read_text())["llm"]["timeout"] == local_llm.REQUEST_TIMEOUT_S


def test_the_local_llm_is_asked_by_one_name_embedded_or_served(cli, monkeypatch):
    """A search against `promptclimb llm serve` sends the requests the embedded server gets,
    so each answers the other's runs from the cache (and a resume may switch between them)."""
    from promptclimb.agent.llm import local as local_llm

    served = local_llm.served_model_id()  # what `llm serve` lists for the embedded model
    with FakeLLM(responder=server_answer("local"), models=[served]) as fake:
        monkeypatch.setattr(local_llm, "local_server", lambda **kw: contextlib.nullcontext(fake.base_url))
        _, embedded = cli("embedded", "--llm", "local")
        asked = fake.count
        _, via_serve = cli("via-serve", "--base-url", fake.base_url)
    assert asked == 2 and fake.count == asked  # every answer of the second run from the cache
    assert {r["model"] for r in fake.requests} == {local_llm.LOCAL_MODEL_NAME}
    assert answers(via_serve) == answers(embedded)
    for run in (embedded, via_serve):
        assert json.loads((run / "config.json").read_text())["llm"]["request_model"] == local_llm.LOCAL_MODEL_NAME


def test_a_run_recorded_before_the_request_model_asks_a_served_local_llm_as_before():
    from types import SimpleNamespace

    from promptclimb.agent import pipeline
    from promptclimb.agent.core.settings import LLMSettings
    from promptclimb.agent.llm import local as local_llm

    recorded = {"model": "local", "local": False, "served_model": local_llm.LOCAL_MODEL_NAME,
                "base_url": "http://127.0.0.1:9/v1", "timeout": 3600.0, "max_tries": 6}
    plan = SimpleNamespace(llm=LLMSettings.from_config(recorded), search=SimpleNamespace(max_calls=None, max_tokens=None))
    opts = {"base_url": None, "no_cache": True, "llm_model": None}
    with pipeline.llm_client(plan, opts, echo=print) as client:
        assert client.model == "local"  # its history's request keys were made with this name
    new = LLMSettings.from_config({**recorded, "request_model": local_llm.LOCAL_MODEL_NAME})
    with pipeline.llm_client(SimpleNamespace(llm=new, search=plan.search), opts, echo=print) as client:
        assert client.model == local_llm.LOCAL_MODEL_NAME


def test_a_run_of_the_embedded_llm_resumes_against_llm_serve(cli, monkeypatch, tmp_path):
    from promptclimb.agent.llm import local as local_llm

    served = local_llm.local_model_id(local_llm.LOCAL_MODEL_NAME, "c" * 64)
    with FakeLLM(responder=server_answer("local"), models=[served]) as fake:
        monkeypatch.setattr(local_llm, "local_server", lambda **kw: contextlib.nullcontext(fake.base_url))
        _, run = cli("killed", "--llm", "local", "--no-cache")
        history = (run / "history.jsonl").read_text().splitlines()
        second = max(i for i, line in enumerate(history) if '"llm_exchange"' in line)
        (run / "summary.json").unlink()  # as if killed before its second answer
        (run / "history.jsonl").write_text("\n".join(history[:second]) + "\n")
        result, _ = cli("killed", "--resume", run, "--base-url", fake.base_url, "--no-cache")
    assert fake.count == 3  # the first answer replayed from the history, the second asked again
    keys = lambda lines: [json.loads(line).get("request_key") for line in lines if '"llm_exchange"' in line]
    assert keys((run / "history.jsonl").read_text().splitlines()) == keys(history)  # the same requests


def test_a_resume_is_told_to_give_again_an_endpoint_url_whose_secret_was_left_out(cli, tmp_path):
    from promptclimb.agent.cli.search import search_cmd

    def resume(run, *args):
        return CliRunner().invoke(search_cmd, ["--resume", str(run), *args], env={"OPENAI_API_KEY": KEY},
                                  obj={"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])})

    with FakeLLM(responder=server_answer("api")) as fake:
        secret_url = fake.base_url + "?api-key=qs-SECRET77"
        _, run = cli("keyed", "--base-url", secret_url, env={"OPENAI_API_KEY": KEY})
        finished = resume(run)
        assert finished.exit_code == 0, finished.output  # ended: its answers replay, nothing is asked
        history = (run / "history.jsonl").read_text().splitlines()
        second = max(i for i, line in enumerate(history) if '"llm_exchange"' in line)
        (run / "summary.json").unlink()  # as if killed before its second answer
        (run / "history.jsonl").write_text("\n".join(history[:second]) + "\n")
        asked = fake.count
        refused = resume(run)
        assert refused.exit_code == 1 and fake.count == asked
        assert "give the URL again with --base-url" in refused.output and "SECRET77" not in refused.output
        again = resume(run, "--base-url", secret_url, "--no-cache")
        assert again.exit_code == 0, again.output
    assert fake.count == asked + 1


def test_the_embedded_llm_has_no_key_to_redact_from_its_messages():
    # a placeholder key ("local") was treated as a secret: every "local" in an error message,
    # the model name of runs recorded before request_model included, read "[redacted]"
    from types import SimpleNamespace

    from promptclimb.agent import pipeline
    from promptclimb.agent.core.settings import LLMSettings

    plan = SimpleNamespace(llm=LLMSettings(model="local", local=True),
                           search=SimpleNamespace(max_calls=None, max_tokens=None))
    opts = {"base_url": None, "no_cache": True, "llm_model": None, "local_llm_url": "http://127.0.0.1:9/v1"}
    with pipeline.llm_client(plan, opts, echo=print) as client:
        assert client.redact("the LLM (local at http://127.0.0.1:9/v1) timed out") == \
            "the LLM (local at http://127.0.0.1:9/v1) timed out"
        assert client.redact("key sk-abcdefghijklmnopqrstuvwx") != "key sk-abcdefghijklmnopqrstuvwx"


def test_a_run_against_an_endpoint_that_failed_says_a_moved_one_is_given_with_base_url(tmp_path, monkeypatch):
    """`llm serve` started again listens on another port: the resume command alone asked the
    dead one again, the same error each time."""
    from promptclimb.agent.cli import cli
    from promptclimb.agent.llm import local as local_llm

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with FakeLLM(responder=server_answer("served"), models=[local_llm.served_model_id()]) as fake:
        fake.faults.extend(["500"] * 5)
        result = CliRunner().invoke(cli, ["search", *ARGS, "--runs-dir", str(tmp_path / "runs"), "--name", "s",
                                                 "--base-url", fake.base_url, "--max-tries", "1", "--no-cache"],
                                    obj={"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])})
    assert result.exit_code == 1
    assert f"continue it with: promptclimb search --resume {tmp_path / 'runs' / 's'}\n(with --base-url URL added " \
           "where the endpoint has moved" in result.output


def test_a_resume_of_a_run_on_the_openai_api_asks_it_whatever_openai_base_url_says(monkeypatch):
    """A run that asked the OpenAI API records no base URL: its resume went to the endpoint an
    OPENAI_BASE_URL set since (for another tool) names, unsaid. A run whose URL's key was left
    out of its record takes it again from OPENAI_BASE_URL, said where it names another host."""
    from promptclimb.agent.core.settings import LLMSettings
    from promptclimb.agent.pipeline import endpoint_asked

    said = []
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    api = LLMSettings.from_config({"model": "gpt-4o-mini", "local": False, "base_url": None})
    assert endpoint_asked(api, {"base_url": None, "resume": "r"}, said.append) is None
    # ... and None is the OpenAI API: the openai client read OPENAI_BASE_URL itself for it
    from promptclimb.agent.llm.client import OPENAI_API_URL, LLMClient

    assert LLMClient("gpt-4o-mini", base_url=None, api_key="sk-x", use_cache=False).endpoint == OPENAI_API_URL
    assert said == ["note: OPENAI_BASE_URL is set; the run asks the LLM endpoint it recorded (the OpenAI API): "
                    "give --base-url to ask another"]
    assert endpoint_asked(api, {"base_url": None, "resume": None}, said.append) == "http://127.0.0.1:9/v1"  # new
    keyed = LLMSettings.from_config({"model": "m", "local": False, "base_url": "http://127.0.0.1:9/v1",
                                     "secrets_left_out": True})
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1?api-key=SECRET1")
    assert endpoint_asked(keyed, {"base_url": None, "resume": "r"}, said.append) == \
        "http://127.0.0.1:9/v1?api-key=SECRET1" and len(said) == 1


def test_a_run_whose_llm_serve_server_is_gone_is_told_to_start_it_again(cli, tmp_path):
    """The hint named only --base-url; the server a user stopped (or that died) was not named."""
    from promptclimb.agent.cli.search import search_cmd
    from promptclimb.agent.llm import local as local_llm

    def invoke(*args):
        return CliRunner().invoke(search_cmd, [*ARGS, "--runs-dir", str(tmp_path / "runs"), "--max-tries", "1", *args],
                                  obj={"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])},
                                  terminal_width=300)

    served = local_llm.local_model_id(local_llm.LOCAL_MODEL_NAME, "c" * 64)
    with FakeLLM(responder=server_answer("local"), models=[served]) as fake:
        fake.faults.extend(["none", "500"])  # the second answer fails: the run is left to resume
        first = invoke("--name", "gone", "--base-url", fake.base_url)
    assert first.exit_code == 1 and "InternalServerError" in first.output and "still running" not in first.output
    resumed = invoke("--resume", "gone")
    assert resumed.exit_code == 1 and "APIConnectionError" in resumed.output
    assert "(is `promptclimb llm serve` still running? start it again, or continue with --base-url URL added " \
           "where" in " ".join(resumed.output.replace("│", " ").split())


@pytest.mark.parametrize("given", ["--base-url", "OPENAI_BASE_URL", "--config"])
def test_a_malformed_endpoint_url_is_refused_without_its_password_however_it_is_given(tmp_path, monkeypatch, given):
    """Its refusal quoted the password; `http://alice/team:SECRET123@...` passed, and was
    written whole into config.json."""
    from promptclimb.agent.cli.search import search_cmd
    from test_llm_client import MALFORMED_SECRET_URLS

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    config = tmp_path / "search.toml"
    for url, why in MALFORMED_SECRET_URLS.items():
        config.write_text(f'[search]\nbase-url = "{url}"\n')
        args = {"--base-url": ["--base-url", url], "--config": ["--config", str(config)]}.get(given, [])
        result = CliRunner().invoke(search_cmd, [*ARGS, "--runs-dir", str(tmp_path / "runs"), "--name", "r", *args],
                                    env={"OPENAI_BASE_URL": url} if given == "OPENAI_BASE_URL" else None,
                                    obj={"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])},
                                    terminal_width=300)
        said = " ".join(result.output.replace("│", " ").split())  # the error's box wraps its lines
        assert result.exit_code == 1 and why in said, said
        assert "SECRET" not in said and "SECRET" not in result.output
    assert not (tmp_path / "runs").exists()


def test_a_base_url_without_v1_is_told_to_add_it_not_that_the_endpoint_moved(tmp_path, monkeypatch):
    """A bare "NotFoundError: Error code: 404", and a note about an endpoint that has moved."""
    from promptclimb.agent.cli.search import search_cmd
    from test_llm_client import CHAT, Routes

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with Routes(CHAT) as server:  # its routes under /v1, as vLLM's
        url = server.base_url.removesuffix("/v1")
        result = CliRunner().invoke(search_cmd, [*ARGS, "--runs-dir", str(tmp_path / "runs"), "--name", "s",
                                                 "--base-url", url, "--max-tries", "1", "--no-cache"],
                                    obj={"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])},
                                    terminal_width=300)
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 1 and f"NotFoundError: Error code: 404 (no chat route there; OpenAI-compatible " \
        f"servers answer under /v1: try {url}/v1)" in said, said
    assert "has moved" not in said and "(with --base-url URL added, the endpoint's URL corrected: a resume asks " \
        "the one the run recorded)" in said


def test_a_model_the_endpoint_does_not_serve_says_how_to_start_again_with_another(tmp_path, monkeypatch):
    """The first request refused for good (a model the endpoint does not serve): the hint was to
    resume, which asked the same model again; `--resume --llm OTHER` was refused as a change of
    settings, and the same command with OTHER as a folder that holds a run: a loop."""
    from promptclimb.agent.cli.search import search_cmd
    from test_llm_client import CHAT, Routes

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    reply = {"error": {"message": "The model `gpt-x` does not exist", "type": "invalid_request_error",
                       "code": "model_not_found"}}
    runs = tmp_path / "runs"
    with Routes(reply, status=404) as server:
        result = CliRunner().invoke(search_cmd, [*ARGS, "--runs-dir", str(runs), "--name", "s", "--llm", "gpt-x",
                                                 "--base-url", server.base_url, "--no-cache"],
                                    obj={"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])},
                                    terminal_width=300)
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 1 and "does not exist" in said, said
    assert f"The run is saved; continue it with: promptclimb search --resume {runs / 's'} (or, as no answer is " \
        f"recorded in it, to change --llm or another setting: remove it first (rm -r {runs / 's'}) and run the " \
        "command again)" in said, said

    class AnswersOnce(Routes):  # an answer recorded, then refused: the run is worth its resume
        def _handle(self, handler, body):
            self.reply, self.status = (CHAT, 200) if not self.requests else (reply, 400)
            super()._handle(handler, body)

    with AnswersOnce(CHAT) as server:
        later = CliRunner().invoke(search_cmd, [*ARGS, "--runs-dir", str(runs), "--name", "t", "--llm", "gpt-x",
                                                "--base-url", server.base_url, "--no-cache"],
                                   obj={"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])},
                                   terminal_width=300)
    said = " ".join(later.output.replace("│", " ").split())
    assert later.exit_code == 1 and server.count == 2 and "The run is saved; continue it with" in said, said
    assert "no answer is recorded" not in said
