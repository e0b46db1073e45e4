"""agent.llm against a real HTTP server (tests/fake_llm.py) through the real openai client."""

import json

import pytest

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.llm.answers import BudgetExhausted, ContextExceeded, LLMError
from promptclimb.agent.llm.cache import ResponseCache, cache_key, request_key
from promptclimb.agent.llm.client import LLMClient
from promptclimb.agent.llm.secrets import (check_api_key, check_endpoint_url, redact, scrub_urls, url_secrets,
                                           without_secrets)
from fake_llm import FakeLLM

KEY = "sk-test-VERYSECRET-0123456789"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fake():
    with FakeLLM(script=["a photo of a {}."], retry_after="3") as server:
        yield server


def client(fake, tmp_path, **kw):
    sleeps = []
    kw.setdefault("cache_dir", tmp_path / "cache")
    kw.setdefault("timeout", 5)  # the tests whose fake hangs pass 0.5; a loaded machine may take 0.5 s to answer
    llm = LLMClient("fake-model", base_url=fake.base_url, api_key=KEY, wait_initial=0.01,
                    wait_max=0.05, sleep=sleeps.append, **kw)
    return llm, sleeps


def test_answer_usage_and_ledger(fake, tmp_path):
    llm, _ = client(fake, tmp_path)
    answer = llm.chat(HI, seed=3, temperature=0.5)
    assert answer.content == "a photo of a {}." and answer.source == "llm" and not answer.cached
    assert (answer.prompt_tokens, answer.completion_tokens) == (10, 7)
    sent = fake.requests[0]
    assert sent["seed"] == 3 and sent["temperature"] == 0.5 and sent["model"] == "fake-model"
    assert fake.headers[0]["authorization"] == f"Bearer {KEY}"
    assert llm.ledger.calls == 1 and llm.ledger.prompt_tokens == 10 and llm.ledger.completion_tokens == 7


def test_429_honours_retry_after_then_500_backs_off(fake, tmp_path):
    llm, sleeps = client(fake, tmp_path)
    fake.faults.extend(["429", "500", "500"])
    answer = llm.chat(HI)
    assert answer.content == "a photo of a {}."
    assert fake.count == 4
    assert sleeps[0] == 3.0  # the server's Retry-After
    assert all(0 < s <= 0.06 for s in sleeps[1:]) and len(sleeps) == 3  # our backoff (with jitter)
    assert llm.ledger.failed_attempts == 3 and llm.ledger.calls == 1


def test_timeout_malformed_and_missing_choices_are_retried(fake, tmp_path):
    llm, sleeps = client(fake, tmp_path, timeout=0.5)
    fake.faults.extend(["hang", "malformed", "nochoices"])
    assert llm.chat(HI).content == "a photo of a {}."
    assert fake.count == 4 and len(sleeps) == 3


def test_empty_content_is_an_answer_not_an_error(fake, tmp_path):
    llm, sleeps = client(fake, tmp_path)
    fake.faults.append("empty")
    assert llm.chat(HI).content == ""
    assert fake.count == 1 and sleeps == []


@pytest.mark.parametrize("fault, said", [
    ("empty", "the endpoint gave no reason (finish_reason 'stop')"),
    ("length", "it was cut at the 50-token answer cap before it began (raise --max-answer-tokens: a new run's setting, "
     "a resume keeps the run's)"),
    ("refusal", "the model refused (\"I can't help with that.\")")])
def test_an_empty_answer_says_why_and_is_not_kept_for_other_runs(fake, tmp_path, fault, said):
    """An empty answer was cached: a second run was given the same nothing (a transient fault
    of the endpoint, replayed for good), and the search said only "the answer was empty"."""
    lines = []
    llm, _ = client(fake, tmp_path, echo=lines.append)
    fake.faults.append(fault)
    assert llm.chat(HI, max_answer_tokens=50).content == ""
    assert lines == [f"the LLM's answer was empty: {said}"]
    again, _ = client(fake, tmp_path)
    assert again.chat(HI, max_answer_tokens=50).content == "a photo of a {}."
    assert again.ledger.calls == 1 and again.ledger.cache_hits == 0 and fake.count == 2


def test_an_endpoint_without_usage_is_said_once_where_max_tokens_cannot_count(tmp_path):
    """--max-tokens was never reached against an endpoint that sends no `usage`, unsaid."""
    with FakeLLM(usage=False) as fake:
        lines = []
        llm, _ = client(fake, tmp_path, echo=lines.append, max_tokens=100, use_cache=False)
        llm.chat(HI)
        llm.chat(HI, seed=1)
        assert lines == [f"warning: {fake.base_url.rstrip('/')} reports no token usage: --max-tokens 100 cannot be "
                         "counted against it (--max-calls can)"]
        quiet = []
        client(fake, tmp_path, echo=quiet.append, use_cache=False)[0].chat(HI)
        assert quiet == []  # no cap to count: nothing to say


def test_gives_up_after_max_tries_with_a_clear_error(fake, tmp_path):
    llm, sleeps = client(fake, tmp_path, max_tries=3)
    fake.faults.extend(["500"] * 5)
    with pytest.raises(LLMError) as info:
        llm.chat(HI)
    assert "after 3 tries" in str(info.value) and "InternalServerError" in str(info.value)
    assert fake.count == 3 and len(sleeps) == 2

    one, _ = client(fake, tmp_path, max_tries=1, cache_dir=tmp_path / "cache-1")
    with pytest.raises(LLMError) as info:
        one.chat(HI)
    assert "did not answer after 1 try: InternalServerError" in str(info.value)  # not "after 1 tries"


def test_a_request_that_times_out_every_try_says_how_long_each_waited(fake, tmp_path):
    """A --timeout too short for a slow model read as an endpoint that failed."""
    llm, _ = client(fake, tmp_path, max_tries=2, timeout=0.5)
    fake.faults.extend(["hang", "hang"])
    with pytest.raises(LLMError) as info:
        llm.chat(HI)
    assert str(info.value).endswith("(a try waits 0.5s: a slow endpoint may need a longer --timeout)")
    assert info.value.cause == "timeout"
    fake.faults.extend(["500", "500"])
    with pytest.raises(LLMError) as info:
        llm.chat(HI, seed=1)
    assert "--timeout" not in str(info.value) and info.value.cause is None


def test_auth_error_is_not_retried_and_never_shows_the_key(fake, tmp_path):
    llm, sleeps = client(fake, tmp_path)
    fake.faults.append("401")  # the server echoes the key back in its message
    with pytest.raises(LLMError) as info:
        llm.chat(HI)
    assert fake.count == 1 and sleeps == []
    assert KEY not in str(info.value) and "VERYSECRET" not in str(info.value)


def test_cache_hit_makes_no_request_and_no_cache_bypasses(fake, tmp_path):
    llm, _ = client(fake, tmp_path)
    first = llm.chat(HI, seed=1)
    again, _ = client(fake, tmp_path)
    second = again.chat(HI, seed=1)
    assert fake.count == 1 and second.source == "cache" and second.content == first.content
    assert again.ledger.cache_hits == 1 and again.ledger.calls == 0
    again.chat(HI, seed=2)  # another seed is another request
    assert fake.count == 2
    uncached, _ = client(fake, tmp_path, use_cache=False)
    uncached.chat(HI, seed=1)
    assert fake.count == 3


def test_damaged_cache_entry_is_ignored_and_replaced(fake, tmp_path):
    llm, _ = client(fake, tmp_path)
    llm.chat(HI, seed=1)
    request = llm.build_request(HI, temperature=1.0, seed=1)
    path = ResponseCache(tmp_path / "cache").path(cache_key(request, llm.origin()))
    for damage in (b"{not json", b"", json.dumps({"format": 1, "request": {}, "answer": {}}).encode()):
        path.write_bytes(damage)
        fresh, _ = client(fake, tmp_path)
        assert fresh.chat(HI, seed=1).source == "llm"
        assert json.loads(path.read_text())["answer"]["content"] == "a photo of a {}."
    assert fake.count == 4
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]  # no temp files left


def test_budget_caps_count_every_answer(fake, tmp_path):
    llm, _ = client(fake, tmp_path, max_calls=2)
    llm.chat(HI, seed=1)
    llm.chat(HI, seed=1)  # a cache hit still counts: a resumed run must stop where the first would
    with pytest.raises(BudgetExhausted, match="max calls"):
        llm.chat(HI, seed=3)
    assert fake.count == 1
    tokens, _ = client(fake, tmp_path, max_tokens=20, use_cache=False)
    tokens.chat(HI, seed=4)  # 17 tokens
    tokens.chat(HI, seed=5)  # 34 >= 20
    with pytest.raises(BudgetExhausted, match="max tokens"):
        tokens.chat(HI, seed=6)


def test_replayed_answers_come_before_cache_and_network(fake, tmp_path):
    llm, _ = client(fake, tmp_path)
    request = llm.build_request(HI, temperature=1.0, seed=0, max_answer_tokens=None)
    llm.remember(request_key(request), {"content": "from history", "prompt_tokens": 1, "completion_tokens": 2})
    answer = llm.chat(HI, temperature=1.0, seed=0)
    assert answer.content == "from history" and answer.source == "replay" and fake.count == 0


def test_cache_key_covers_the_whole_request():
    base = {"model": "m", "messages": HI, "temperature": 1.0, "seed": 0, "n": 1}
    keys = {request_key(base)}
    for change in ({"model": "m2"}, {"temperature": 0.5}, {"seed": 1}, {"n": 2}, {"max_tokens": 9},
                   {"messages": [{"role": "user", "content": "hi!"}]}):
        keys.add(request_key({**base, **change}))
    assert len(keys) == 7


def test_secrets_are_stripped_and_redacted():
    assert without_secrets("https://user:pw@example.com:8080/v1") == "https://example.com:8080/v1"
    assert without_secrets("http://127.0.0.1:1/v1") == "http://127.0.0.1:1/v1"
    assert without_secrets("https://x.example/v1?api-version=2024-06&api-key=SECRET789") == \
        "https://x.example/v1?api-version=2024-06"
    assert without_secrets("https://x.example/v1?Token=abcd1234") == "https://x.example/v1"
    assert "abc123" not in redact("bad key sk-abc123abc123xyz", ())
    assert redact("token hunter22 here", ("hunter22",)) == "token [redacted] here"
    llm = LLMClient("m", base_url="http://u:pass1234@127.0.0.1:9/v1", api_key=KEY, use_cache=False)
    assert llm.describe() == {"model": "m", "base_url": "http://127.0.0.1:9/v1"}
    assert "pass1234" not in llm.redact("x pass1234 y") and KEY not in llm.redact(f"x {KEY}")
    query = LLMClient("m", base_url="http://127.0.0.1:9/v1?api-key=SECRET789", api_key=KEY, use_cache=False)
    assert query.describe()["base_url"] == "http://127.0.0.1:9/v1" and "SECRET789" not in query.redact("a SECRET789")


def test_every_form_of_a_url_secret_is_hidden():
    """`?code=` (an Azure Functions gateway's key), `?pwd=`, `?pass=` are keys too; a secret
    percent-encoded in a URL, or as the Basic header a password in the URL becomes, is
    redacted; a URL urlsplit cannot read (`[::1`, a port that is no number) is shown without
    its userinfo and query rather than raising; URLs quoted in an error lose their secrets."""
    for name in ("code", "pwd", "pass", "access_token"):
        assert without_secrets(f"https://h.example/v1?{name}=SECRET42&v=1") == "https://h.example/v1?v=1"
        assert "SECRET42" in url_secrets(f"https://h.example/v1?{name}=SECRET42")
    assert redact("the body said SECRET%2BENC", ("SECRET+ENC",)) == "the body said [redacted]"
    # a password holding an @, raw: all of it is the password
    raw_at = "http://u:pa@ssword99@127.0.0.1:99999/v1?key=S@CRETKEY"
    assert "pa@ssword99" in url_secrets("http://u:pa@ssword99@127.0.0.1:1/v1")
    assert "ssword" not in without_secrets(raw_at) and "CRETKEY" not in without_secrets(raw_at)
    assert "p:w" in url_secrets("http://u:p%3Aw@127.0.0.1:1/v1")  # as sent, not only as typed
    llm = LLMClient("m", base_url="http://user:PASSWORD99@127.0.0.1:9/v1", api_key=KEY, use_cache=False)
    assert "dXNlcjpQQVNTV09SRDk5" not in llm.redact("Incorrect API key provided: Basic dXNlcjpQQVNTV09SRDk5")
    assert without_secrets("http://u:pw99@[::1:5000/x?token=T1") == "http://[::1:5000/x"
    assert url_secrets("http://u:pw99@[::1:5000/x?token=T1")[:2] == ("pw99", "T1")  # then as a Basic header
    said = scrub_urls("API request to http://127.0.0.1:1/?access_token=SECRETQ4/api/2.0/x failed; "
                      "http://me:SECRETPW@host/v1 too")
    assert "SECRETQ4" not in said and "SECRETPW" not in said and "http://127.0.0.1:1/?access_token=" in said
    for bad in ("http://u:pw@[::1/v1", "http://127.0.0.1:abc/v1", "http://127.0.0.1:99999/v1",
                "http://u:pa@sspw@h:abc/v1?key=S@CRETKEY"):
        with pytest.raises(PromptclimbError, match="its host or port cannot be read") as refused:
            check_endpoint_url(bad, "--base-url")
        said = str(refused.value)
        assert said.startswith("--base-url 'http://") and "pw" not in said.replace("port", "") \
            and "CRETKEY" not in said
    for key, why in (("sk-ok\u00e9", "a character an HTTP header cannot carry"),
                     ("sk-ok\n", "a character an HTTP header cannot carry"), ("sk-ok-with-a-space ", "ends with a space")):
        with pytest.raises(PromptclimbError, match=why) as refused:
            check_api_key(key)
        assert "sk-ok" not in str(refused.value)
    check_api_key("sk-plain-ascii")


def test_a_query_in_the_base_url_goes_with_every_request(tmp_path):
    """`--base-url https://host/v1?api-version=1&code=KEY`: the openai client appended its path
    after the query (`/v1?api-version=1&code=KEYchat/completions`)."""
    with FakeLLM(script=["a {}"]) as fake:
        llm = LLMClient("m", base_url=f"{fake.base_url}?api-version=1&code=SECRET77", api_key=KEY, use_cache=False)
        assert llm.chat(HI).content == "a {}"
        assert fake.paths == ["/v1/chat/completions?api-version=1&code=SECRET77"]
        assert llm.endpoint == f"{fake.base_url}?api-version=1"


# -- who answers: the cache key covers the endpoint and the served model (issue 12, item 1) ------

def test_two_servers_behind_one_model_name_do_not_share_answers(tmp_path):
    with FakeLLM(script=["from the first server {}"]) as first, FakeLLM(script=["from the second server {}"]) as second:
        a = LLMClient("same-name", base_url=first.base_url, api_key=KEY, cache_dir=tmp_path / "cache")
        b = LLMClient("same-name", base_url=second.base_url, api_key=KEY, cache_dir=tmp_path / "cache")
        assert a.chat(HI).content == "from the first server {}"
        answer = b.chat(HI)
        assert second.count == 1 and answer.source == "llm" and answer.content == "from the second server {}"
        # each server's own answer is cached for it: a rerun against either makes no request
        again = LLMClient("same-name", base_url=first.base_url, api_key=KEY, cache_dir=tmp_path / "cache")
        assert again.chat(HI).content == "from the first server {}" and first.count == 1


def test_one_url_serving_another_model_gets_its_own_answers(tmp_path):
    """The same URL and --llm name, the server restarted with another model behind it."""
    with FakeLLM(script=["old model {}", "new model {}"], models=["org/model-a"]) as fake:
        first = LLMClient("whatever", base_url=fake.base_url, api_key=KEY, cache_dir=tmp_path / "cache")
        assert first.chat(HI).content == "old model {}"
        fake.models = ["org/model-b"]
        second = LLMClient("whatever", base_url=fake.base_url, api_key=KEY, cache_dir=tmp_path / "cache")
        assert second.chat(HI).content == "new model {}" and fake.count == 2
        assert second.origin() == {"endpoint": fake.base_url, "served_model": "org/model-b"}


def test_models_route_is_asked_once_per_client_and_may_be_missing(tmp_path):
    with FakeLLM(script=["x {}"]) as fake:  # no /v1/models: the requested name stands in
        llm = LLMClient("m", base_url=fake.base_url, api_key=KEY, cache_dir=tmp_path / "cache")
        for seed in range(3):
            llm.chat(HI, seed=seed)
        assert fake.model_requests == 1 and llm.served_model() == "m"
        assert llm.origin() == {"endpoint": fake.base_url, "served_model": "m"}
    with FakeLLM(script=["x {}"], models=["gpt-a", "gpt-b"]) as fake:  # several: the one asked for
        assert LLMClient("gpt-b", base_url=fake.base_url, api_key=KEY).served_model() == "gpt-b"
    with FakeLLM(script=["x {}"], models=["only-one"]) as fake:  # one: whatever name is asked
        assert LLMClient("local", base_url=fake.base_url, api_key=KEY).served_model() == "only-one"


def test_a_local_server_is_known_by_its_gguf_hash_not_its_port(tmp_path):
    from promptclimb.agent.llm.local import local_model_id

    same = local_model_id("qwen", "a" * 64)
    other = local_model_id("qwen", "b" * 64)  # `llm serve --llm-model` with another GGUF, same name
    with FakeLLM(script=["A {}"], models=[same]) as one, FakeLLM(script=["A again {}"], models=[same]) as two, \
            FakeLLM(script=["B {}"], models=[other]) as three:
        clients = [LLMClient("local", base_url=s.base_url, api_key=KEY, cache_dir=tmp_path / "cache")
                   for s in (one, two, three)]
        assert [c.chat(HI).content for c in clients] == ["A {}", "A {}", "B {}"]
        assert (one.count, two.count, three.count) == (1, 0, 1)  # a restarted server on a new port: cached
        assert clients[0].origin() == {"local_gguf_sha256": "a" * 64}


def test_a_server_started_on_demand_starts_only_for_a_request_the_cache_cannot_answer(tmp_path):
    """The embedded server starts at the first request that the cache (or the run's history)
    does not answer, once even when restarts in threads ask together; a replay never starts it."""
    import threading

    from promptclimb.agent.llm.local import local_model_id

    served = local_model_id("qwen", "a" * 64)
    with FakeLLM(script=["A {}"] * 4, models=[served]) as fake:
        starts = []

        def start():
            starts.append(1)
            return fake.base_url

        def lazy():
            return LLMClient("local", connect=start, served_model=served, cache_dir=tmp_path / "cache")

        first = lazy()
        assert first.where() == "the local LLM (not started)" and starts == []
        threads = [threading.Thread(target=first.chat, args=(HI,), kwargs={"seed": s}) for s in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(starts) == 1 and fake.count == 2 and first.where() == fake.base_url
        replay = lazy()
        assert replay.chat(HI, seed=1).source == "cache" and len(starts) == 1  # no second start
        assert replay.origin() == {"local_gguf_sha256": "a" * 64}
        replay.close()  # nothing was opened: nothing to close


def test_history_keys_are_unchanged_so_old_runs_resume():
    """Run histories record `request_key` and a resume looks answers up by it: the formula
    must not change (the disk cache has its own key, `cache_key`)."""
    request = {"model": "m", "messages": HI, "temperature": 1.0, "seed": 0, "n": 1, "max_tokens": 400}
    assert request_key(request) == "7e96e634ca3342fb266f8bfac976ea1a519571d95b5c5742f8a80c43d03f2ddb"


# -- what is kept of an answer, and what a retry says (issue 12, item 7) -------------------------

def test_a_runaway_answer_is_cut_before_it_is_kept(tmp_path):
    huge = "a photo of a {}.\n" * 200_000  # 3.4 MB
    with FakeLLM(script=[huge]) as fake:
        said = []
        llm = LLMClient("m", base_url=fake.base_url, api_key=KEY, cache_dir=tmp_path / "cache", echo=said.append)
        answer = llm.chat(HI, max_answer_tokens=100)
        assert len(answer.content) <= 800 and answer.truncated_from == len(huge)
        assert said == [f"LLM answer of {len(huge):,} characters cut to its first {len(answer.content):,} "
                        "(8 per token of the 100-token cap)"]
        assert answer.content.endswith("a photo of a {}.")  # cut at a line break: no half line kept
        assert sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*.json")) < 5_000
        cached = LLMClient("m", base_url=fake.base_url, api_key=KEY, cache_dir=tmp_path / "cache")
        again = cached.chat(HI, max_answer_tokens=100)
        assert again.source == "cache" and again.content == answer.content and again.truncated_from == len(huge)


def test_an_answer_within_the_cap_is_kept_whole(fake, tmp_path):
    llm, _ = client(fake, tmp_path)
    answer = llm.chat(HI, max_answer_tokens=2)  # 16 characters: "a photo of a {}." is 16
    assert answer.content == "a photo of a {}." and answer.truncated_from == 0


def test_each_retry_is_announced_without_secrets(fake, tmp_path):
    lines = []
    llm, sleeps = client(fake, tmp_path, echo=lines.append, timeout=0.5)
    fake.faults.extend(["500", "hang", "429"])
    assert llm.chat(HI).content == "a photo of a {}."
    assert len(lines) == 3 and len(sleeps) == 3
    assert "HTTP 500" in lines[0] and "try 1 of 6" in lines[0] and "retrying in" in lines[0]
    assert "no answer within 0.5s" in lines[1] and "try 2 of 6" in lines[1]
    assert "HTTP 429 (rate limited)" in lines[2] and "retrying in 3.0s" in lines[2]
    assert all("fake-model" in line and fake.base_url in line for line in lines)
    assert not any(KEY in line or "VERYSECRET" in line for line in lines)


# -- a request longer than the model's context --------------------------------------------------

LONG = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
        {"role": "user", "content": "u2"}]  # 40 prompt tokens, as the fake counts them


@pytest.mark.parametrize("says", ["openai", "llama-server"])
def test_a_refusal_for_the_context_is_not_retried_and_the_stated_context_is_learned(tmp_path, says):
    with FakeLLM(script=["a photo of a {}."], context=100, context_says=says) as fake:
        llm, sleeps = client(fake, tmp_path, context_tokens=8192)
        with pytest.raises(ContextExceeded) as info:
            llm.chat(LONG, max_answer_tokens=70)  # 40 + 70 > 100
        assert fake.count == 1 and sleeps == []  # refused again if sent again: never retried
        assert info.value.context_tokens == 100 and llm.context_tokens == 100
        assert info.value.key == request_key(llm.build_request(LONG, temperature=1.0, seed=0, max_answer_tokens=70))
        assert "context of 100 tokens" in str(info.value) and KEY not in str(info.value)
        assert llm.ledger.failed_attempts == 1 and llm.ledger.answers == 0
        with pytest.raises(ContextExceeded):
            llm.chat(LONG, max_answer_tokens=70)
        assert fake.count == 1  # the same request is refused without asking
        assert llm.chat(LONG, max_answer_tokens=60).content == "a photo of a {}."  # 100 fits
        unknown, _ = client(fake, tmp_path, use_cache=False)
        with pytest.raises(ContextExceeded):
            unknown.chat(LONG, max_answer_tokens=70)
        assert unknown.context_tokens == 100  # none known before: the stated one


def test_a_refusal_that_states_no_context_is_an_error_as_before(tmp_path):
    with FakeLLM(context=100, context_says="nothing") as fake:
        llm, sleeps = client(fake, tmp_path, context_tokens=8192)
        with pytest.raises(LLMError, match="not retryable") as info:
            llm.chat(LONG, max_answer_tokens=70)
        assert not isinstance(info.value, ContextExceeded)
        assert fake.count == 1 and sleeps == [] and llm.context_tokens == 8192


def test_a_refusal_read_back_from_a_runs_history_is_refused_again_without_a_request(fake, tmp_path):
    llm, _ = client(fake, tmp_path, context_tokens=8192)
    key = request_key(llm.build_request(LONG, temperature=1.0, seed=0))
    llm.remember_refusal(key, 4096)
    with pytest.raises(ContextExceeded) as info:
        llm.chat(LONG)
    assert fake.count == 0 and info.value.context_tokens == 4096 and llm.context_tokens == 4096
    assert llm.chat(HI).source == "llm"  # another request is asked



@pytest.mark.parametrize("status", [500, 429])
def test_a_refusal_for_the_context_is_not_retried_whatever_its_status(tmp_path, status):
    with FakeLLM(context=100, context_status=status) as fake:
        llm, sleeps = client(fake, tmp_path)
        with pytest.raises(ContextExceeded):
            llm.chat(LONG, max_answer_tokens=70)
        assert fake.count == 1 and sleeps == [] and llm.context_tokens == 100


def test_a_request_under_way_when_the_client_closes_is_neither_retried_nor_said(tmp_path):
    """Ctrl-C ended a search with restarts in parallel lanes: a lane's request, cut when the
    client closed, said "connection failed ... retrying" seconds after the search returned."""
    import threading
    import time

    said = []
    with FakeLLM(script=["a {}"], hang_s=5) as fake:
        fake.faults.append("hang")
        llm = LLMClient("m", base_url=fake.base_url, api_key=KEY, use_cache=False, timeout=30, max_tries=3,
                        wait_initial=0.01, echo=said.append)
        failed = []

        def ask():
            try:
                llm.chat(HI)
            except Exception as exc:  # noqa: BLE001 - the lane's end, whatever it is
                failed.append(exc)

        lane = threading.Thread(target=ask)
        lane.start()
        while fake.count == 0:
            time.sleep(0.01)
        llm.close()
        lane.join(10)
    assert not lane.is_alive() and failed and fake.count == 1
    assert not any("retrying" in line for line in said), said


# URLs whose password the check's refusal, and what was shown or recorded of them, quoted: a
# scheme without its '//', a password holding an unencoded '/', '?' or '#', a user name with a
# '/' (that one passed the check, and was written whole into config.json)
NOT_HTTP = "expected an http:// or https:// URL"
ENCODE = "percent-encode them in the password (%2F for '/', %40 for '@'"
MALFORMED_SECRET_URLS = {"http//bob:tSECRET123t@127.0.0.1:8080/v1": NOT_HTTP,
                         "http:/bob:tSECRET123t@127.0.0.1:8080/v1": NOT_HTTP,
                         "http:///bob:tSECRET123t@127.0.0.1:8080/v1": NOT_HTTP,
                         "http://alice:SECRET123/x@127.0.0.1:8080/v1": ENCODE,
                         "http://alice:pa?ssSECRET123@127.0.0.1:8080/v1": ENCODE,
                         "http://alice:pa#ssSECRET123@127.0.0.1:8080/v1": ENCODE,
                         "http://alice/team:SECRET123@127.0.0.1:8080/v1": ENCODE,
                         # a '/' then a '?' or '#' in the password: the query had begun inside it (review)
                         "http://alice:SE/CR?ET123@127.0.0.1:8080/v1": ENCODE,
                         "http://alice:SE/CR#ET123@127.0.0.1:8080/v1": ENCODE}


@pytest.mark.parametrize("url, why", MALFORMED_SECRET_URLS.items())
def test_a_malformed_url_is_refused_and_never_shows_its_password(url, why):
    with pytest.raises(PromptclimbError) as refused:
        check_endpoint_url(url, "--base-url")
    assert why in str(refused.value)
    # what a client of it records (`describe`) and says (`where`, `redact`: an error quoting it)
    said = [str(refused.value), without_secrets(url), redact(f"connection to {url} failed", url_secrets(url))]
    assert not any("SECRET123" in line for line in said), said


def test_a_password_percent_encoded_passes_and_an_at_in_a_file_path_is_no_password():
    llm = LLMClient("m", base_url="http://alice%2Fteam:SECRET123@127.0.0.1:8080/v1", api_key=KEY, use_cache=False)
    assert llm.describe()["base_url"] == llm.where() == llm.endpoint == "http://127.0.0.1:8080/v1"
    check_endpoint_url("http://alice:SECRET123%2Fx@127.0.0.1:8080/v1", "--base-url")
    check_endpoint_url("http://alice%2Fteam:SECRET123@127.0.0.1:8080/v1", "--base-url")
    with pytest.raises(PromptclimbError, match="percent-encode"):
        check_endpoint_url("https://h.example/v1/models@latest", "--base-url")
    assert scrub_urls("at http://alice:pa?ss/x@h.example/v1 too") == "at http://h.example/v1 too"
    for tracked in ("sqlite:////tmp/runs@2/mlflow.db", "file:///tmp/runs@2/mlruns", "/data/runs@v2/mlruns",
                    "./runs@2/mlruns", "~/runs@2"):  # MLflow's: a path (a plain one was cut to 'v2/mlruns')
        assert without_secrets(tracked) == tracked and scrub_urls(tracked) == tracked
    # an '@' in a query or a path that no host follows is no password's end
    assert without_secrets("http://host:5000/v1?email=a@b.com&x=1") == "http://host:5000/v1?email=a@b.com&x=1"
    assert without_secrets("postgresql://u:SECRET@db.example:5432/mlflow") == "postgresql://db.example:5432/mlflow"


CHAT = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "a {}"}}]}


class Routes(FakeLLM):
    """A server with one chat route, /v1/chat/completions, answered with `reply` (HTTP
    `status`); any other path is answered 404 {"detail": "Not Found"}, as vLLM (FastAPI) does."""

    def __init__(self, reply: dict, status: int = 200):
        super().__init__()
        self.reply, self.status = reply, status

    def _handle(self, handler, body: dict) -> None:
        with self._lock:
            self.requests.append(body)
            self.paths.append(handler.path)
        if handler.path != "/v1/chat/completions":
            return self._send(handler, 404, {"detail": "Not Found"})
        self._send(handler, self.status, self.reply)


@pytest.mark.parametrize("choices", [[{"message": "hello {}"}], [{"message": ["hello {}"]}], [None], "hello {}"])
def test_an_answer_of_another_shape_is_retried_then_said_in_one_line(tmp_path, choices):
    """`"message": "hello {}"` escaped as an AttributeError traceback."""
    with Routes({**CHAT, "choices": choices}) as server:
        llm, sleeps = client(server, tmp_path, max_tries=2)
        with pytest.raises(LLMError, match="did not answer after 2 tries: MalformedResponse: the endpoint answered "
                                           "without a chat completion") as info:
            llm.chat(HI)
    assert server.count == 2 and len(sleeps) == 1 and "\n" not in str(info.value)


@pytest.mark.parametrize("usage, counted", [({"prompt_tokens": "n/a", "completion_tokens": 7}, (0, 7)),
                                            ({"prompt_tokens": 2.5, "completion_tokens": True}, (0, 0)),
                                            ({"prompt_tokens": -3, "completion_tokens": None}, (0, 0)),
                                            ("n/a", (0, 0))])
def test_token_counts_that_are_no_whole_numbers_count_as_none(tmp_path, usage, counted):
    """`"usage": {"prompt_tokens": "n/a"}` escaped as a ValueError traceback."""
    with Routes({**CHAT, "usage": usage}) as server:
        llm, _ = client(server, tmp_path)
        answer = llm.chat(HI)
    assert answer.content == "a {}" and (answer.prompt_tokens, answer.completion_tokens) == counted
    assert llm.ledger.budget_tokens == sum(counted)


@pytest.mark.parametrize("path, hint", [
    ("", "no chat route there; OpenAI-compatible servers answer under /v1: try {url}/v1"),
    ("?api-version=1", "no chat route there; OpenAI-compatible servers answer under /v1: try {url}/v1?api-version=1"),
    ("/v1/chat/completions", "the base URL ends before /chat/completions, which the client adds: try {url}/v1"),
    ("/v1/v1", "no chat route there: is {url}/v1/v1 the endpoint's base URL (the part before /chat/completions)?"),
    # the URL said has no password: one copied from the hint would go without it
    ("?key=K9", "no chat route there; OpenAI-compatible servers answer under /v1: try {url}/v1, with the URL's "
                "credentials")])
def test_a_url_with_no_chat_route_says_which_url_to_give(tmp_path, path, hint):
    """A bare "NotFoundError: Error code: 404" was all a base URL without its /v1 got."""
    with Routes(CHAT) as server:
        url = server.base_url.removesuffix("/v1")
        llm = LLMClient("m", base_url=url + path, api_key=KEY, use_cache=False, sleep=lambda s: None)
        with pytest.raises(LLMError) as info:
            llm.chat(HI)
    said = str(info.value)  # older openai clients (the lowest declared) add the body after the code
    assert "after 1 try (not retryable): NotFoundError: Error code: 404" in said
    assert said.endswith(f" ({hint.format(url=url)})") and info.value.cause == "no route" and server.count == 1


def test_a_404_for_a_model_the_endpoint_does_not_serve_keeps_its_message(tmp_path):
    said = "The model `gpt-x` does not exist or you do not have access to it."
    reply = {"error": {"message": said, "type": "invalid_request_error", "code": "model_not_found"}}
    with Routes(reply, status=404) as server:
        with pytest.raises(LLMError) as info:
            LLMClient("gpt-x", base_url=server.base_url, api_key=KEY, use_cache=False).chat(HI)
    assert "NotFoundError: Error code: 404 - " in str(info.value) and said in str(info.value)
    assert "no chat route" not in str(info.value) and info.value.cause == "refused"


class ReasoningModel(Routes):
    """OpenAI's reasoning models (o3-mini, gpt-5): a 400 for max_tokens (they take
    max_completion_tokens) and for a temperature other than their default, 1."""

    def _handle(self, handler, body: dict) -> None:
        with self._lock:
            self.requests.append(body)
        if "max_tokens" in body:
            return self._send(handler, 400, {"error": {
                "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                           "'max_completion_tokens' instead.", "type": "invalid_request_error",
                "param": "max_tokens", "code": "unsupported_parameter"}})
        if body.get("temperature", 1) != 1:
            return self._send(handler, 400, {"error": {
                "message": "Unsupported value: 'temperature' does not support 0.2 with this model.",
                "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}})
        self._send(handler, 200, CHAT)


def test_a_reasoning_model_gets_max_completion_tokens_and_its_own_temperature(tmp_path):
    """o3-mini and gpt-5 refused every request: 'max_tokens' is not supported (--max-answer-tokens
    is always sent), and the search failed after its first try."""
    said = []
    with ReasoningModel(CHAT) as server:
        llm = LLMClient("o3-mini", base_url=server.base_url, api_key=KEY, cache_dir=tmp_path / "cache",
                        echo=said.append)
        first = llm.chat(HI, temperature=0.2, max_answer_tokens=300)
        again = llm.chat(HI + HI, temperature=0.2, max_answer_tokens=300)
        asked = len(server.requests)
        cached = LLMClient("o3-mini", base_url=server.base_url, api_key=KEY, cache_dir=tmp_path / "cache").chat(
            HI, temperature=0.2, max_answer_tokens=300)
    assert first.content == again.content == "a {}" and cached.source == "cache" and len(server.requests) == asked
    assert asked == 4  # two refusals, each once, then each request as the model takes it
    assert server.requests[-1] == {"model": "o3-mini", "messages": HI + HI, "seed": 0, "n": 1,
                                   "max_completion_tokens": 300}
    assert said == ["note: o3-mini does not take max_tokens: sent as max_completion_tokens",
                    "note: o3-mini does not take temperature: left out of its requests"]


def test_an_answer_in_content_parts_is_read_and_one_of_reasoning_only_says_so(tmp_path):
    """Magistral's `content` as a list of parts was read as an empty answer; an answer whose
    text is all in `reasoning_content` said 'the endpoint gave no reason'."""
    parts = [{"type": "thinking", "thinking": [{"type": "text", "text": "hmm: a {} maybe"}]},
             {"type": "text", "text": "a photo of a {}.\n"}, {"type": "text", "text": "a drawing of a {}."}]
    message = {"role": "assistant", "content": parts}
    with Routes({**CHAT, "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}) as server:
        answer = LLMClient("m", base_url=server.base_url, api_key=KEY, use_cache=False).chat(HI)
    assert answer.content == "a photo of a {}.\na drawing of a {}."
    said = []
    message = {"role": "assistant", "content": "", "reasoning_content": "a photo of a {}. or a sketch of a {}?"}
    with Routes({**CHAT, "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}) as server:
        answer = LLMClient("m", base_url=server.base_url, api_key=KEY, use_cache=False, echo=said.append).chat(HI)
    assert answer.content == "" and said == ["the LLM's answer was empty: the model wrote only its reasoning "
                                             "(reasoning_content, 37 characters), no answer after it"]


def test_a_client_made_with_a_malformed_url_refuses_it_without_its_password():
    """Made directly (not through the command line's check), the HTTP client's InvalidURL quoted
    the password: "Invalid port: 'SECRET123'"."""
    for url, why in MALFORMED_SECRET_URLS.items():
        with pytest.raises(PromptclimbError) as info:
            LLMClient("m", base_url=url, api_key=KEY, use_cache=False).chat(HI)
        assert "SECRET" not in str(info.value) and str(info.value).startswith("base_url ") and why in str(info.value)


def test_lanes_that_ask_a_reasoning_model_at_once_all_get_their_answer(tmp_path):
    """--parallel: lanes that had sent max_tokens before another lane learnt it is refused were
    failed on its refusal (not retryable), as if the model refused what they had sent anew."""
    import threading
    import time as clock

    class Slow(ReasoningModel):
        def _handle(self, handler, body):
            clock.sleep(0.3)  # every lane's first request is sent before the first refusal comes back
            super()._handle(handler, body)

    said, answers, errors = [], [], []
    with Slow(CHAT) as server:
        llm = LLMClient("o3-mini", base_url=server.base_url, api_key=KEY, use_cache=False, echo=said.append)

        def lane(k):
            try:
                answers.append(llm.chat([{"role": "user", "content": f"lane {k}"}], max_answer_tokens=300).content)
            except Exception as exc:  # noqa: BLE001 - counted below
                errors.append(exc)

        lanes = [threading.Thread(target=lane, args=(k,)) for k in range(4)]
        for t in lanes:
            t.start()
        for t in lanes:
            t.join(30)
    assert errors == [] and answers == ["a {}"] * 4
    assert said == ["note: o3-mini does not take max_tokens: sent as max_completion_tokens"]
