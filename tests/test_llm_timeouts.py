"""The LLM client: --timeout bounds a whole request, even
against an endpoint that trickles its answer; an answer whose only line a cap cut says so;
an '@' in an endpoint URL's query is no password's end."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from promptclimb.agent.llm.answers import LLMError
from promptclimb.agent.llm.client import LLMClient
from promptclimb.agent.llm.secrets import check_endpoint_url, redact, scrub_urls, url_secrets, without_secrets
from fake_llm import FakeLLM

KEY = "sk-test-VERYSECRET-0123456789"
HI = [{"role": "user", "content": "hi"}]
CHAT = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "a {}"}}]}


class Trickle:
    """A 127.0.0.1 chat endpoint that sends its headers at once, then its answer one byte
    every `every_s` seconds (leading spaces, then a valid chat completion): every read of
    the HTTP client gets a byte well within its timeout, and the answer takes
    `spaces * every_s` seconds in all."""

    def __init__(self, spaces: int = 40, every_s: float = 0.1):
        self.spaces, self.every_s = spaces, every_s
        self.requests = 0
        self.gone = 0  # requests whose client closed the connection before the answer was sent
        self.ports: list[int] = []  # each request's client port: one connection, one port
        self.stop = threading.Event()
        trickle = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                trickle.requests += 1
                trickle.ports.append(self.client_address[1])
                body = b" " * trickle.spaces + json.dumps(CHAT).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for i in range(trickle.spaces):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        if trickle.stop.wait(trickle.every_s):
                            return
                    self.wfile.write(body[trickle.spaces:])
                except OSError:  # the client gave up on it, and closed its connection
                    trickle.gone += 1

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


# -- 1. --timeout is a deadline for the whole request ---------------------------------------------

def test_an_endpoint_that_trickles_its_answer_is_abandoned_at_the_timeout_and_retried():
    """Each read got a byte within the timeout, so the HTTP client's timeout (between two parts
    of an answer) never fired: one answer could take far longer than --timeout."""
    said, sleeps = [], []
    with Trickle(spaces=40, every_s=0.1) as server:  # 4 s for the whole answer
        llm = LLMClient("m", base_url=server.base_url, api_key=KEY, use_cache=False, timeout=1, max_tries=2,
                        sleep=sleeps.append, wait_initial=0.01, echo=said.append)
        started = time.monotonic()
        with pytest.raises(LLMError) as failed:
            llm.chat(HI)
        took = time.monotonic() - started
        assert server.requests == 2  # retried as a timeout is, then given up
    assert took < 3.9, took  # two 1 s tries and their start-up; one whole answer alone takes 4 s
    assert failed.value.cause == "timeout"
    assert str(failed.value).endswith("(a try waits 1s: a slow endpoint may need a longer --timeout)")
    assert len(said) == 1 and "no answer within 1s (try 1 of 2); retrying in" in said[0] and len(sleeps) == 1
    assert llm.ledger.failed_attempts == 2 and llm.ledger.calls == 0


def test_a_try_abandoned_at_the_timeout_closes_its_connection():
    """The endpoint must see an abandoned try go, as when the HTTP client's own timeout fired:
    left open, a server computed it on (llama.cpp's one slot held the retry behind it; an API
    billed it) and the request's thread and socket stayed until the endpoint ended them."""
    with Trickle(spaces=100, every_s=0.05) as server:  # 5 s for the whole answer
        llm = LLMClient("m", base_url=server.base_url, api_key=KEY, use_cache=False, timeout=1, max_tries=1)
        with pytest.raises(LLMError):
            llm.chat(HI)
        deadline = time.monotonic() + 2.5  # well before the trickle's 5 s: the server saw the client go
        while server.gone < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.gone == 1
        assert not [t for t in threading.enumerate() if t.name == "promptclimb-llm-request"]


def test_the_requests_of_a_lane_share_one_connection_until_a_deadline_cuts_it():
    """Each request had opened a connection of its own (a TCP and TLS handshake per answer on an
    API); a lane keeps one, and a new one follows only a request cut at its deadline."""
    with Trickle(spaces=0, every_s=0.01) as server:
        llm = LLMClient("m", base_url=server.base_url, api_key=KEY, use_cache=False, timeout=2, max_tries=1)
        for i in range(3):
            llm.chat([{"role": "user", "content": f"hi {i}"}])
        server.spaces, server.every_s = 40, 0.1  # 4 s: past the deadline
        with pytest.raises(LLMError):
            llm.chat([{"role": "user", "content": "slow"}])
        server.spaces = 0
        llm.chat([{"role": "user", "content": "after"}])
        llm.close()
    assert len(set(server.ports[:4])) == 1 and server.ports[4] != server.ports[0], server.ports


def test_a_trickled_answer_within_the_timeout_is_taken():
    with Trickle(spaces=5, every_s=0.05) as server:
        llm = LLMClient("m", base_url=server.base_url, api_key=KEY, use_cache=False, timeout=5, max_tries=1)
        answer = llm.chat(HI)
    assert answer.content == "a {}" and answer.source == "llm" and server.requests == 1


# -- 2. an answer whose only line a cap cut -------------------------------------------------------

def test_an_answer_whose_only_line_the_endpoint_cut_says_nothing_of_it_was_kept(tmp_path):
    """A one-line answer stopped at the cap became an empty answer, said as the last line of a
    longer one ("its last line, cut in half, left out"), and read as "the answer was empty"."""
    said = []
    with FakeLLM(script=["a photo of a {} with a long tail that the cap cut in h"]) as fake:
        fake.faults.append("cut")
        llm = LLMClient("m", base_url=fake.base_url, api_key=KEY, cache_dir=tmp_path / "cache", echo=said.append)
        answer = llm.chat(HI, max_answer_tokens=12, whole_lines=True)
    assert answer.content == "" and answer.truncated_from == 54
    assert said == ["LLM answer stopped by the endpoint at the 12-token cap (--max-answer-tokens) inside its first "
                    "line: none of its 54 characters kept (a line cut in half is never read): raise "
                    "--max-answer-tokens (a new run's setting, a resume keeps the run's)"]


def test_an_answer_of_one_runaway_line_cut_here_says_nothing_of_it_was_kept(tmp_path):
    said = []
    with FakeLLM(script=["a photo of a {} " * 20]) as fake:  # 320 characters; the cap keeps 8 per token
        llm = LLMClient("m", base_url=fake.base_url, api_key=KEY, cache_dir=tmp_path / "cache", echo=said.append)
        answer = llm.chat(HI, max_answer_tokens=10, whole_lines=True)
        assert answer.content == "" and answer.truncated_from == 320
        assert said == ["LLM answer of 320 characters cut at 80 (8 per token of the 10-token cap) inside its first "
                        "line: none of it kept (a line cut in half is never read): raise --max-answer-tokens (a new "
                        "run's setting, a resume keeps the run's)"]
        # a judge's word is read from its start: kept, and said as before
        said.clear()
        assert llm.chat(HI, seed=1, max_answer_tokens=10).content == ("a photo of a {} " * 20)[:80]
        assert said == ["LLM answer of 320 characters cut to its first 80 (8 per token of the 10-token cap)"]


def test_a_line_that_ends_where_the_cap_cuts_is_whole_and_kept():
    from promptclimb.agent.llm.answers import cap_answer

    assert cap_answer("a photo of a {}.\nand a tail", 16, whole_lines=True) == ("a photo of a {}.", 27)
    assert cap_answer("a {}.\na photo of a {}.\nand a tail", 22, whole_lines=True) == ("a {}.\na photo of a {}.", 33)
    assert cap_answer("a {}.\na photo of a {}.\nand a tail", 20, whole_lines=True) == ("a {}.", 33)


# -- 3. an '@' in a URL's query ------------------------------------------------------------------

def test_an_at_then_a_slash_in_a_query_is_shown_whole():
    for url in ("http://127.0.0.1:8080/v1?x=a@b/c", "http://127.0.0.1:8080/v1?next=/me@host/x&y=1",
                "https://h.example/v1#a@b/c", "http://[::1]:8080/v1?x=a@b/c"):
        assert without_secrets(url) == url
        assert scrub_urls(f"connection to {url} failed") == f"connection to {url} failed"
        assert url_secrets(url) == ()
        check_endpoint_url(url, "--base-url")
    for url in ("http://user:key99@host/v1", "http://user:key99@host/v1?x=a@b/c"):
        assert without_secrets(url) == "http://host/v1" + url.partition("/v1")[2]
        assert "key99" in url_secrets(url) and "key99" not in redact(f"to {url}", url_secrets(url))
    # a password with an unencoded '/', '?' or '#' is still all hidden (no host and port read before it)
    for url in ("http://alice:pa?ss/x@h.example/v1", "http://alice:SE/CR?ET123@h.example/v1"):
        assert without_secrets(url) == "http://h.example/v1"


def test_a_client_of_an_endpoint_with_an_at_in_its_query_names_it_whole():
    with FakeLLM(script=["a {}"]) as fake:
        url = f"{fake.base_url}?x=a@b/c"
        llm = LLMClient("m", base_url=url, api_key=KEY, use_cache=False)
        assert llm.chat(HI).content == "a {}"
        assert fake.paths == ["/v1/chat/completions?x=a%40b%2Fc"]  # the query goes with it, encoded
        assert llm.describe()["base_url"] == llm.where() == llm.endpoint == url


def test_a_search_records_an_answer_whose_only_line_was_cut_as_cut_not_as_empty(tmp_path):
    """The real loop: the turn has nothing to score, and the history's exchange says the answer
    was cut (answer_truncated: 0 characters kept of those received)."""
    from promptclimb.agent.core.pools import PoolTemplate
    from promptclimb.agent.runs.store import RunStore
    from promptclimb.agent.search import HillClimber, SearchConfig
    from fake_llm import WordEvaluator

    cut = "a photo of a {} with a long tail that the cap cut in h"
    console: list[str] = []
    with FakeLLM(script=[cut, "a clean photo of a {}."]) as fake:
        fake.faults.append("cut")
        llm = LLMClient("fake", base_url=fake.base_url, api_key=KEY, cache_dir=tmp_path / "cache", echo=console.append)
        config = SearchConfig(restarts=1, resets=1, iterations=2, proposals=3, pool_sample=0, search="template",
                              max_answer_tokens=12)
        with RunStore.create(tmp_path / "run", {"t": 1}) as store:
            HillClimber(WordEvaluator(), llm, store, config, pool=[PoolTemplate("a {}.", "general")],
                        echo=console.append).run()
    events = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    first = [e for e in events if e["event"] == "llm_exchange"][0]
    assert first["answer"] == "" and first["answer_truncated"] == {"kept_chars": 0, "received_chars": len(cut)}
    assert not any("tail" in e.get("template", "") for e in events)
    assert any("inside its first line: none of its 54 characters kept" in line for line in console), console
