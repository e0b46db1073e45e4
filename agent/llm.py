"""The one LLM client: any OpenAI-compatible chat endpoint, through the `openai` package.

Around the bare `chat.completions.create` call it adds, in this order:
  1. a budget check (`max_calls`, `max_tokens`): reaching a cap raises `BudgetExhausted`,
     which the search treats as "stop cleanly and report";
  2. answers already known: an in-memory replay (answers read back from a run's history on
     `--resume`) and a disk cache keyed by the full request (model, messages, temperature,
     seed, n, max_tokens), so a rerun or a resume costs no call;
  3. tenacity retries with exponential backoff and jitter on 429, 5xx, timeouts and
     connection errors, honouring `Retry-After`; after `max_tries` an `LLMError` says what
     went wrong (the run stays resumable);
  4. a ledger: calls, cache hits, tokens, latency.

The budget counts every answer the search consumes, cached or not, so a resumed run
stops exactly where an uninterrupted one would. The API key is never stored, logged or
shown: error messages go through `redact`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from promptclimb.agent.errors import PromptclimbError

CACHE_FORMAT = 1  # bump when the cache entry layout changes; old entries are then ignored


class LLMError(PromptclimbError):
    """The LLM endpoint could not answer (after retries) or answered with something unusable."""


class BudgetExhausted(Exception):
    """A budget cap (`max_calls` or `max_tokens`) is reached; not an error: the search ends."""


class MalformedResponse(Exception):
    """A 200 answer that is not a chat completion (no choices, not JSON); retried like a 5xx."""


@dataclass
class Answer:
    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    source: str = "llm"  # "llm" (a request was made), "cache" (disk) or "replay" (run history)
    key: str = ""  # the request key (see `request_key`)

    @property
    def cached(self) -> bool:
        return self.source != "llm"


@dataclass
class Ledger:
    """What this client consumed. `answers` = calls + cache_hits + replayed."""

    calls: int = 0  # requests that returned an answer
    failed_attempts: int = 0  # attempts that were retried or gave up
    cache_hits: int = 0
    replayed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    budget_tokens: int = 0  # tokens of every answer consumed (what max_tokens caps)

    @property
    def answers(self) -> int:
        return self.calls + self.cache_hits + self.replayed

    def to_dict(self) -> dict:
        return {**asdict(self), "answers": self.answers, "latency_s": round(self.latency_s, 3)}


def strip_userinfo(url: str | None) -> str | None:
    """`url` without any `user:password@` part (what may be written to disk or shown)."""
    if not url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


_KEY_LIKE = re.compile(r"\b(sk|pk|key)-[A-Za-z0-9_\-*.]{6,}")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every given secret and anything shaped like an API key replaced."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", text)


def request_key(request: dict) -> str:
    """The cache key of a chat request: a hash of everything that shapes the answer."""
    blob = json.dumps({"format": CACHE_FORMAT, **request}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """One JSON file per request key. Writes are atomic (temp file + rename); an entry that
    cannot be read or does not match its request is ignored (and later overwritten)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, request: dict) -> dict | None:
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
            if entry.get("format") != CACHE_FORMAT or entry.get("request") != request:
                return None
            if not isinstance(entry["answer"]["content"], str):
                return None
            return entry["answer"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # missing or damaged: never fatal, the answer is fetched again

    def put(self, key: str, request: dict, answer: dict) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"format": CACHE_FORMAT, "request": request, "answer": answer}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _is_retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, MalformedResponse)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


def _retry_after(exc: BaseException | None) -> float | None:
    """Seconds from a `Retry-After` (or `retry-after-ms`) header, if the server sent one."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            continue  # an HTTP date: fall back to our own backoff
    return None


class LLMClient:
    """Chat completions from an OpenAI-compatible endpoint, cached, retried and budgeted."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        max_tries: int = 6,
        wait_initial: float = 1.0,
        wait_max: float = 60.0,
        retry_after_max: float = 300.0,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        max_calls: int | None = None,
        max_tokens: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        import openai  # imported here so that `import agent.llm` stays cheap

        self.model = model
        self.base_url = base_url
        self._secrets = tuple(s for s in (api_key, base_url and urlsplit(base_url).password) if s)
        # The openai client's own retries are off: tenacity below does all of them.
        self._client = openai.OpenAI(
            api_key=api_key or "not-needed", base_url=base_url, timeout=timeout, max_retries=0
        )
        self.max_tries = max(1, max_tries)
        self.wait_initial, self.wait_max, self.retry_after_max = wait_initial, wait_max, retry_after_max
        if use_cache and cache_dir is None:
            from promptclimb.agent.paths import cache_dir as shared_cache_dir

            cache_dir = shared_cache_dir("llm")
        self.cache = ResponseCache(cache_dir) if use_cache else None
        self.max_calls, self.max_tokens = max_calls, max_tokens
        self.sleep = sleep
        self.ledger = Ledger()
        self._replay: dict[str, dict] = {}

    # -- what the outside world may see -------------------------------------------------
    def describe(self) -> dict:
        """Model and endpoint for config.json: no key, no userinfo."""
        return {"model": self.model, "base_url": strip_userinfo(self.base_url)}

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def remember(self, key: str, answer: dict) -> None:
        """An answer read back from a run's history: used instead of the cache or a call."""
        self._replay[key] = answer

    # -- the request ---------------------------------------------------------------------
    def build_request(
        self, messages: list[dict], *, temperature: float, seed: int, n: int = 1, max_answer_tokens: int | None = None
    ) -> dict:
        request = {"model": self.model, "messages": messages, "temperature": temperature, "seed": seed, "n": n}
        if max_answer_tokens:
            request["max_tokens"] = max_answer_tokens
        return request

    def budget_left(self) -> str | None:
        """Why no further answer may be consumed, or None."""
        if self.max_calls is not None and self.ledger.answers >= self.max_calls:
            return f"max calls ({self.max_calls}) reached"
        if self.max_tokens is not None and self.ledger.budget_tokens >= self.max_tokens:
            return f"max tokens ({self.max_tokens}) reached"
        return None

    def chat(
        self, messages: list[dict], *, temperature: float = 1.0, seed: int = 0, max_answer_tokens: int | None = None
    ) -> Answer:
        """The assistant's answer to `messages` (the first choice's text; may be empty)."""
        stop = self.budget_left()
        if stop:
            raise BudgetExhausted(stop)
        request = self.build_request(messages, temperature=temperature, seed=seed, max_answer_tokens=max_answer_tokens)
        key = request_key(request)
        known, source = self._replay.get(key), "replay"
        if known is None and self.cache is not None:
            known, source = self.cache.get(key, request), "cache"
        if known is not None:
            answer = Answer(
                content=known["content"],
                prompt_tokens=int(known.get("prompt_tokens") or 0),
                completion_tokens=int(known.get("completion_tokens") or 0),
                latency_s=0.0,
                source=source,
                key=key,
            )
            if source == "replay":
                self.ledger.replayed += 1
            else:
                self.ledger.cache_hits += 1
        else:
            answer = self._ask(request)
            answer.key = key
            self.ledger.calls += 1
            self.ledger.prompt_tokens += answer.prompt_tokens
            self.ledger.completion_tokens += answer.completion_tokens
            self.ledger.latency_s += answer.latency_s
            if self.cache is not None:
                self.cache.put(
                    key,
                    request,
                    {
                        "content": answer.content,
                        "prompt_tokens": answer.prompt_tokens,
                        "completion_tokens": answer.completion_tokens,
                        "latency_s": answer.latency_s,
                    },
                )
        self.ledger.budget_tokens += answer.prompt_tokens + answer.completion_tokens
        return answer

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        server_says = _retry_after(exc)
        if server_says is not None:
            return min(server_says, self.retry_after_max)
        return wait_exponential_jitter(multiplier=self.wait_initial, max=self.wait_max, jitter=self.wait_initial)(state)

    def _ask(self, request: dict) -> Answer:
        def count_failure(state: RetryCallState) -> None:
            self.ledger.failed_attempts += 1

        retrying = Retrying(
            retry=retry_if_exception(_is_retryable),
            stop=stop_after_attempt(self.max_tries),
            wait=self._wait,
            sleep=self.sleep,
            before_sleep=count_failure,
            reraise=True,
        )
        try:
            return retrying(self._ask_once, request)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one readable LLMError
            import openai

            if not isinstance(exc, (openai.OpenAIError, MalformedResponse)):
                raise
            self.ledger.failed_attempts += 1
            tries = "after " + (f"{self.max_tries} tries" if _is_retryable(exc) else "1 try (not retryable)")
            where = strip_userinfo(self.base_url) or "the OpenAI API"
            raise LLMError(
                self.redact(f"the LLM ({self.model} at {where}) did not answer {tries}: {type(exc).__name__}: {exc}")
            ) from None

    def _ask_once(self, request: dict) -> Answer:
        started = time.perf_counter()
        try:
            response = self._client.chat.completions.create(**request)
        except ValueError as exc:  # a 200 whose body is not JSON (json / pydantic errors)
            raise MalformedResponse(f"the endpoint's answer is not valid JSON ({exc})") from None
        latency = time.perf_counter() - started
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices or getattr(choices[0], "message", None) is None:
            raise MalformedResponse(f"the endpoint answered without a chat completion: {str(response)[:200]!r}")
        content = choices[0].message.content
        usage = getattr(response, "usage", None)
        return Answer(
            content=content if isinstance(content, str) else "",
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            latency_s=latency,
        )
