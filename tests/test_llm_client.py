"""agent.llm against a real HTTP server (tests/fake_llm.py) through the real openai client."""

import json

import pytest

from promptclimb.agent.llm import BudgetExhausted, LLMClient, LLMError, ResponseCache, redact, request_key, strip_userinfo
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
    llm = LLMClient("fake-model", base_url=fake.base_url, api_key=KEY, timeout=0.5, wait_initial=0.01,
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
    llm, sleeps = client(fake, tmp_path)
    fake.faults.extend(["hang", "malformed", "nochoices"])
    assert llm.chat(HI).content == "a photo of a {}."
    assert fake.count == 4 and len(sleeps) == 3


def test_empty_content_is_an_answer_not_an_error(fake, tmp_path):
    llm, sleeps = client(fake, tmp_path)
    fake.faults.append("empty")
    assert llm.chat(HI).content == ""
    assert fake.count == 1 and sleeps == []


def test_gives_up_after_max_tries_with_a_clear_error(fake, tmp_path):
    llm, sleeps = client(fake, tmp_path, max_tries=3)
    fake.faults.extend(["500"] * 5)
    with pytest.raises(LLMError) as info:
        llm.chat(HI)
    assert "after 3 tries" in str(info.value) and "InternalServerError" in str(info.value)
    assert fake.count == 3 and len(sleeps) == 2


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
    answer = llm.chat(HI, seed=1)
    path = ResponseCache(tmp_path / "cache").path(answer.key)
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
    assert strip_userinfo("https://user:pw@example.com:8080/v1") == "https://example.com:8080/v1"
    assert strip_userinfo("http://127.0.0.1:1/v1") == "http://127.0.0.1:1/v1"
    assert "abc123" not in redact("bad key sk-abc123abc123xyz", ())
    assert redact("token hunter22 here", ("hunter22",)) == "token [redacted] here"
    llm = LLMClient("m", base_url="http://u:pass1234@127.0.0.1:9/v1", api_key=KEY, use_cache=False)
    assert llm.describe() == {"model": "m", "base_url": "http://127.0.0.1:9/v1"}
    assert "pass1234" not in llm.redact("x pass1234 y") and KEY not in llm.redact(f"x {KEY}")
