"""The one LLM client: any OpenAI-compatible chat endpoint, through the `openai` package.

Around the bare `chat.completions.create` call it adds, in this order:
  1. a budget check (`max_calls`, `max_tokens`): reaching a cap raises `BudgetExhausted`,
     which the search treats as "stop cleanly and report";
  2. answers already known: an in-memory replay (answers read back from a run's history on
     `--resume`, by `request_key`) and a disk cache keyed by the full request (model,
     messages, temperature, seed, n, max_tokens) *and* by who answers it (`origin`: the
     endpoint and the model it serves, as it lists it at `/models`; for promptclimb's own
     llama.cpp server the GGUF's SHA-256 alone), so a rerun or a resume costs no call and
     two servers behind the same model name never share answers;
  3. tenacity retries with exponential backoff and jitter on 429, 5xx, timeouts (`timeout`: the
     seconds one try may take in all, its answer trickled or not: `_within_timeout`) and
     connection errors, honouring `Retry-After`, each announced in one line (what failed,
     when the next try is); after `max_tries` an `LLMError` says what went wrong (the run
     stays resumable). A request refused as longer than the model's context, where the
     refusal states the context, is not retried: the client learns the context
     (`context_tokens`) and raises `ContextExceeded`, which a template conversation answers
     by starting a new one (agent/search.py);
  4. a cap on what is kept of an answer (`answer_cap`: 8 characters per requested token):
     a runaway answer is cut before it reaches the cache, the run's history or the next
     turn of the conversation, and `Answer.truncated_from` says so;
  5. a ledger: calls, cache hits, tokens, latency.

The budget counts every answer the search consumes, cached or not, so a resumed run
stops exactly where an uninterrupted one would. The API key is never stored, logged or
shown: error messages go through `redact`.
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from promptclimb.agent.llm.answers import (CHARS_PER_TOKEN, DEFAULT_CAP_TOKENS, Answer, BudgetExhausted,
                                           ContextExceeded, DeadlinePassed, Ledger, LLMError, MalformedResponse,
                                           answer_cap, answer_text, answered_by, cap_answer, whole_lines_of,
                                           why_empty)
from promptclimb.agent.llm.cache import ResponseCache, cache_key, request_key
from promptclimb.agent.llm.secrets import check_endpoint_url, redact, url_secrets, without_secrets

# Said of an answer whose only line a cap cut (`LLMClient.chat`): why nothing of it is kept, what to do
_HALF_LINE_KEPT_NOT = "(a line cut in half is never read)"
_RAISE_CAP = "raise --max-answer-tokens (a new run's setting, a resume keeps the run's)"

OPENAI_API_URL = "https://api.openai.com/v1"  # the openai client's own default endpoint


# How an endpoint states the context it refused a request for: OpenAI's
# `context_length_exceeded` ("This model's maximum context length is 128000 tokens. However,
# ..."), which llama-cpp-python's server (`promptclimb llm serve`) and vLLM copy.
_CONTEXT_STATED = re.compile(r"maximum context length is (\d[\d,]*) tokens", re.IGNORECASE)


def stated_context(exc: BaseException | None) -> int | None:
    """The context length (tokens) that an endpoint's refusal of a request as too long for the
    model states, or None: another error, or a refusal that states no length. Besides
    OpenAI's message, llama.cpp's own server (`llama-server`) answers
    {"type": "exceed_context_size_error", "n_ctx": 4096}."""
    import openai

    if not isinstance(exc, openai.APIStatusError):
        return None
    body = exc.body if isinstance(exc.body, dict) else {}
    if body.get("type") == "exceed_context_size_error" and isinstance(body.get("n_ctx"), int) and body["n_ctx"] > 0:
        return body["n_ctx"]
    message = body.get("message")
    found = _CONTEXT_STATED.search(message if isinstance(message, str) else str(exc))
    return int(found.group(1).replace(",", "")) if found else None


def _is_retryable(exc: BaseException) -> bool:
    import openai

    if stated_context(exc) is not None:
        return False
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, MalformedResponse, DeadlinePassed)):
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


def _failure(exc: BaseException | None, timeout: float) -> str:
    """What went wrong in one attempt, in a few words (never the server's message, which
    may echo a key)."""
    import openai

    if isinstance(exc, (openai.APITimeoutError, DeadlinePassed)):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, openai.APIConnectionError):
        return "connection failed"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}" + (" (rate limited)" if exc.status_code == 429 else "")
    if isinstance(exc, MalformedResponse):
        return "an answer that is not a chat completion"
    return type(exc).__name__


def _no_such_route(exc: BaseException) -> bool:
    """A 404 that names no model (vLLM's and FastAPI's {"detail": "Not Found"}, a proxy's page):
    the URL's path is not the endpoint's. A 404 for a model the endpoint does not serve names
    it (OpenAI's `model_not_found`, Azure's `DeploymentNotFound`, Ollama's 'model "x" not found')."""
    import openai

    if not isinstance(exc, openai.NotFoundError):
        return False
    body = exc.body if isinstance(exc.body, str) else json.dumps(exc.body)
    return not re.search(r"model|deployment", f"{body} {exc}", re.IGNORECASE)


def _route_hint(url: str) -> str:
    """What to change in endpoint `url` (a URL without secrets) where no chat route was found:
    the openai client adds /chat/completions to a base URL, which for an OpenAI-compatible
    server ends in its API version (/v1)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith("/chat/completions"):
        return ("the base URL ends before /chat/completions, which the client adds: try "
                f"{urlunsplit(parts._replace(path=path.removesuffix('/chat/completions')))}")
    if not re.search(r"/v\d", path):
        return "no chat route there; OpenAI-compatible servers answer under /v1: try " \
               f"{urlunsplit(parts._replace(path=path + '/v1'))}"
    return f"no chat route there: is {url} the endpoint's base URL (the part before /chat/completions)?"


# What a model may refuse of a request and be asked again without: OpenAI's reasoning models (o1,
# o3, o4-mini, gpt-5) take max_completion_tokens for max_tokens, and only their default temperature.
# The request's key (cache, history) keeps the parameters as the search sets them.
ADAPTABLE_PARAMETERS = ("max_tokens", "temperature", "presence_penalty", "seed")


def refused_parameter(exc: BaseException) -> str | None:
    """The parameter an endpoint's 400 says its model does not take (OpenAI's `param` with
    code `unsupported_parameter` or `unsupported_value`), where the request can go without it."""
    error = getattr(exc, "body", None)
    error = error.get("error", error) if isinstance(error, dict) else None
    if not isinstance(error, dict) or error.get("code") not in ("unsupported_parameter", "unsupported_value"):
        return None
    return error.get("param") if error.get("param") in ADAPTABLE_PARAMETERS else None


def as_sent(request: dict, not_taken: set[str]) -> dict:
    """`request` as the model takes it: max_tokens as max_completion_tokens, and without the
    other parameters it refused (`refused_parameter`)."""
    sent = {k: v for k, v in request.items() if k not in not_taken}
    if "max_tokens" in not_taken and "max_tokens" in request:
        sent["max_completion_tokens"] = request["max_tokens"]
    return sent


def _token_count(reported) -> int:
    """A count of tokens from an answer's `usage`, 0 where it is no count (`"n/a"`, a
    fraction, a negative number): the answer is used all the same, its tokens uncounted."""
    return reported if isinstance(reported, int) and not isinstance(reported, bool) and reported >= 0 else 0


def local_model_served_at(base_url: str | None, api_key: str | None = None, timeout: float = 10.0) -> str | None:
    """The model's name when `base_url` is promptclimb's own local server (`promptclimb llm
    serve`: it lists its GGUF's name and hash at /models), else None."""
    if not base_url:
        return None
    from promptclimb.agent.llm.local import parse_local_model_id

    local = parse_local_model_id(LLMClient("local", base_url, api_key, timeout=timeout, use_cache=False).served_model())
    return local[0] if local else None


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
        served_model: str | None = None,
        echo: Callable[[str], None] | None = None,
        context_tokens: int | None = None,
        connect: Callable[[], str] | None = None,
    ):
        """`served_model`: what the endpoint serves, when the caller knows it (otherwise the
        endpoint's `/models` is asked once, on the first cache lookup). `echo`: where a line
        about each retry goes (default: stderr). `context_tokens`: the model's context (prompt
        and answer of one request), where known; the search keeps its conversations inside it.
        A refusal that states a smaller context lowers it (`ContextExceeded`). `connect`, in
        place of `base_url`: starts the endpoint and returns its URL, called before the first
        request that the history and the cache cannot answer (the embedded server: a search
        answered from them never starts it); give `served_model` with it."""
        check_endpoint_url(base_url, "base_url")  # unchecked, the HTTP client's error quoted its password
        self.model = model
        self.context_tokens = context_tokens
        self._refused: dict[str, int] = {}  # request key -> the context its refusal stated
        self.base_url = base_url
        self.timeout = timeout
        self._api_key = api_key
        self._secrets = tuple(s for s in (api_key, *url_secrets(base_url)) if s)
        self._connect = connect
        self._connect_lock = threading.Lock()  # restarts in threads (--parallel): one start
        # Each lane's (thread's) own connection, which a request past its deadline is cut with
        # (`_within_timeout`): closed, it ends that request alone, not another lane's
        self._lane = threading.local()
        self._lane_clients: list = []
        self._client = None if connect else self._new_client(base_url)
        self.max_tries = max(1, max_tries)
        self.wait_initial, self.wait_max, self.retry_after_max = wait_initial, wait_max, retry_after_max
        if use_cache and cache_dir is None:
            from promptclimb.agent.core.paths import cache_dir as shared_cache_dir

            cache_dir = shared_cache_dir("llm")
        self.cache = ResponseCache(cache_dir) if use_cache else None
        self.max_calls, self.max_tokens = max_calls, max_tokens
        self.sleep = sleep
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.ledger = Ledger()
        self._replay: dict[str, dict] = {}
        self._served_model = served_model
        self._origin: dict | None = None
        self._origin_lock = threading.Lock()  # restarts may run in threads: ask /models once
        self._closed = False  # set by close(): a request failing after it is not retried
        self._said: set[str] = set()  # what is said once (`_first_time`): an endpoint without usage, ...
        self._not_taken: set[str] = set()  # request parameters the model refused (`as_sent`)
        self._ledger_lock = threading.Lock()
        # who asks (`run_asker`: a run, across its sessions): kept with each answer it puts in the
        # cache, so that its resume tells its own answers, paid for, from other runs'
        self.asker: str | None = None

    def _new_client(self, base_url: str | None):
        import openai  # imported here so that `import agent.llm` stays cheap

        # The openai client's own retries are off: tenacity below does all of them.
        # A query in the URL (`?api-version=...&api-key=...`) goes with every request: the openai
        # client appends its paths to the base URL, after such a query (`/v1?code=Xchat/completions`)
        # No URL is the OpenAI API: given None, the openai client would read OPENAI_BASE_URL itself,
        # and a resumed run on the API went to whatever endpoint that named (the pipeline says
        # which endpoint a search asks: agent/pipeline.py `endpoint_asked`).
        base_url, _, query = (base_url or OPENAI_API_URL).partition("?")
        client = openai.OpenAI(api_key=self._api_key or "not-needed", base_url=base_url, timeout=self.timeout,
                               max_retries=0, default_query=dict(parse_qsl(query, keep_blank_values=True)) or None)
        # The endpoint as requests see it (the openai client resolves None and
        # OPENAI_BASE_URL), without userinfo: part of the cache key, never a secret.
        self.endpoint = without_secrets(str(client.base_url).rstrip("/") + (f"?{query}" if query else ""))
        return client

    @property
    def connected(self):
        """The openai client, its endpoint started first where `connect` starts it."""
        if self._client is None:
            with self._connect_lock:
                if self._client is None:
                    self.base_url = self._connect()
                    self._client = self._new_client(self.base_url)
        return self._client

    def where(self) -> str:
        """The endpoint as error lines name it (never with a secret)."""
        if self.base_url:
            return without_secrets(self.base_url)
        return "the local LLM (not started)" if self._client is None else "the OpenAI API"

    # -- what the outside world may see -------------------------------------------------
    def describe(self) -> dict:
        """Model and endpoint for config.json: no key, no userinfo."""
        return {"model": self.model, "base_url": without_secrets(self.base_url)}

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def remember(self, key: str, answer: dict) -> None:
        """An answer read back from a run's history: used instead of the cache or a call."""
        self._replay[key] = answer

    def remember_refusal(self, key: str, context_tokens: int) -> None:
        """A request that a run's history records as refused for the context: asked again, it
        is refused at once, as it was then (a resumed run makes the requests it made, even
        when the endpoint now has a longer context)."""
        self._refused[key] = context_tokens

    def refused(self, key: str, context_tokens: int) -> ContextExceeded:
        """The refusal of request `key` for a context of `context_tokens`, which the client
        learns: `context_tokens` becomes the smaller of the known and the stated one."""
        with self._ledger_lock:
            self._refused[key] = context_tokens
            if self.context_tokens is None or context_tokens < self.context_tokens:
                self.context_tokens = context_tokens
        where = self.where()
        return ContextExceeded(self.redact(
            f"the LLM ({self.model} at {where}) refused a request as longer than its context of "
            f"{context_tokens:,} tokens"), context_tokens, key)

    # -- who answers ---------------------------------------------------------------------
    def listed_models(self) -> list[str] | None:
        """The model ids the endpoint lists at `/models`, or None when it cannot say (no such
        route, an error, no answer within 10 s): one request, not retried."""
        client = self.connected  # a failed start is said as itself, not as "lists nothing"
        try:
            page = client.with_options(timeout=min(self.timeout, 10.0), max_retries=0).models.list()
            ids = [getattr(m, "id", None) for m in (getattr(page, "data", None) or [])]
        except Exception:  # noqa: BLE001 - any failure just means "it does not say"
            return None
        ids = [i for i in ids if isinstance(i, str) and i]
        return ids or None

    def close(self) -> None:
        """Close the endpoint's connections: a search that ends leaves no socket open. A request
        still under way in another thread (a restart's lane when Ctrl-C ended the search) then
        fails, and is neither retried nor said: it said "connection failed ... retrying"
        seconds after the search had returned."""
        self._closed = True
        if self._client is not None:
            self._client.close()
        with self._connect_lock:
            for http in self._lane_clients:
                http.close()
            self._lane_clients.clear()

    def served_model(self) -> str:
        """What answers requests for `self.model` here: the model the endpoint lists when it
        lists one (llama.cpp, promptclimb's own server) or `self.model` itself when it lists
        it; else (several models, none of them ours, or no `/models` route) `self.model`."""
        if self._served_model is None:
            ids = self.listed_models() or []
            self._served_model = ids[0] if len(ids) == 1 else self.model
        return self._served_model

    def origin(self) -> dict:
        """Who answers: part of every cache key. A promptclimb local server is known by its
        GGUF's SHA-256 wherever it runs (its port changes with every start); any other
        endpoint by its URL and the model it serves."""
        with self._origin_lock:
            if self._origin is None:
                from promptclimb.agent.llm.local import parse_local_model_id

                served = self.served_model()
                local = parse_local_model_id(served)
                if local:
                    self._origin = {"local_gguf_sha256": local[1]}
                else:
                    self.connected  # noqa: B018 - its URL is what `endpoint` holds once it runs
                    self._origin = {"endpoint": self.endpoint, "served_model": served}
        return self._origin

    # -- the request ---------------------------------------------------------------------
    def build_request(
        self, messages: list[dict], *, temperature: float, seed: int, n: int = 1, max_answer_tokens: int | None = None,
        presence_penalty: float = 0.0,
    ) -> dict:
        request = {"model": self.model, "messages": messages, "temperature": temperature, "seed": seed, "n": n}
        if max_answer_tokens:
            request["max_tokens"] = max_answer_tokens
        if presence_penalty:  # only when set: requests (and cache keys) without one stay as they were
            request["presence_penalty"] = presence_penalty
        return request

    def why_out_of_budget(self) -> str | None:
        """Which cap forbids consuming another answer ("max calls (10) reached"), or None."""
        if self.max_calls is not None and self.ledger.answers >= self.max_calls:
            return f"max calls ({self.max_calls}) reached"
        if self.max_tokens is not None and self.ledger.budget_tokens >= self.max_tokens:
            return f"max tokens ({self.max_tokens}) reached"
        return None

    def chat(
        self, messages: list[dict], *, temperature: float = 1.0, seed: int = 0, max_answer_tokens: int | None = None,
        presence_penalty: float = 0.0, whole_lines: bool = False,
    ) -> Answer:
        """The assistant's answer to `messages` (the first choice's text, at most
        `answer_cap(max_answer_tokens)` characters; may be empty). `whole_lines`: an answer
        read line by line (templates, names) loses the line a cut left half written, where
        the endpoint stopped at its cap or `cap_answer` cut it (a judge's one word is kept)."""
        stop = self.why_out_of_budget()
        if stop:
            raise BudgetExhausted(stop)
        request = self.build_request(messages, temperature=temperature, seed=seed, max_answer_tokens=max_answer_tokens,
                                     presence_penalty=presence_penalty)
        key = request_key(request)
        if key in self._refused:
            raise self.refused(key, self._refused[key])
        known, source = self._replay.get(key), "replay"
        if known is None and self.cache is not None:
            known, source = self.cache.get(cache_key(request, self.origin()), request, self.origin()), "cache"
            if known is not None and self.asker is not None and known.get("asked_by") == self.asker:
                source = "earlier"
        if known is not None:
            answer = Answer(
                content=known["content"],
                prompt_tokens=int(known.get("prompt_tokens") or 0),
                completion_tokens=int(known.get("completion_tokens") or 0),
                latency_s=0.0,
                source=source,
                key=key,
                truncated_from=int(known.get("truncated_from") or 0),
                model=known["model"] if isinstance(known.get("model"), str) else None,
            )
            self.count(**{"replayed" if source == "replay" else "cache_hits": 1})
        else:
            answer = self._ask(request, key)
            answer.key = key
            self.count(calls=1, prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                       latency_s=answer.latency_s)
        content, cut_from = cap_answer(answer.content, answer_cap(max_answer_tokens), whole_lines)
        # An answer of one line cut in half keeps nothing: said as such, not as a longer answer's
        # last line (the turn reads it as empty, the history as answer_truncated, 0 characters kept)
        if cut_from:
            answer.content, answer.truncated_from = content, cut_from
            cap = f"({CHARS_PER_TOKEN} per token of the {max_answer_tokens or DEFAULT_CAP_TOKENS}-token cap)"
            if answer.source == "llm" and not content.strip():
                self.echo(f"LLM answer of {cut_from:,} characters cut at {answer_cap(max_answer_tokens):,} {cap} "
                          f"inside its first line: none of it kept {_HALF_LINE_KEPT_NOT}: {_RAISE_CAP}")
            elif answer.source == "llm":
                self.echo(f"LLM answer of {cut_from:,} characters cut to its first {len(content):,} {cap}")
        elif whole_lines and answer.source == "llm" and answer.finish_reason == "length" and answer.content:
            # the endpoint stopped it at max_tokens: its last line was scored as a template or a name
            received = answer.content
            answer.content, answer.truncated_from = whole_lines_of(received), len(received)
            cap = f"the {max_answer_tokens}-token cap (--max-answer-tokens)" if max_answer_tokens else \
                "its own length limit"
            if answer.content or not received.strip():
                self.echo(f"LLM answer stopped by the endpoint at {cap}: its last line, cut in half, left out")
            else:
                self.echo(f"LLM answer stopped by the endpoint at {cap} inside its first line: none of its "
                          f"{len(received):,} characters kept {_HALF_LINE_KEPT_NOT}"
                          + (f": {_RAISE_CAP}" if max_answer_tokens else ""))
        # an empty answer is not kept for other runs: a transient one would be replayed to them all
        if answer.source == "llm" and self.cache is not None and answer.content.strip():
            failed = self.cache.put(
                cache_key(request, self.origin()),
                request,
                {
                    "content": answer.content,
                    "prompt_tokens": answer.prompt_tokens,
                    "completion_tokens": answer.completion_tokens,
                    "latency_s": answer.latency_s,
                    **({"truncated_from": answer.truncated_from} if answer.truncated_from else {}),
                    **({"model": answer.model} if answer.model else {}),
                    **({"asked_by": self.asker} if self.asker else {}),
                },
                self.origin(),
            )
            if failed and self._first_time(f"cache:{failed}"):
                self.echo(f"warning: the LLM cache {self.cache.root} cannot be written ({failed}): the answers are "
                          "in the run's history, not kept for other runs")
        self.count(budget_tokens=answer.prompt_tokens + answer.completion_tokens)
        return answer

    def _first_time(self, what: str) -> bool:
        """True the first time `what` is asked about: a thing is said once (parallel lanes share
        this client)."""
        with self._ledger_lock:
            first = what not in self._said
            self._said.add(what)
        return first

    def count(self, **amounts) -> None:
        """Add to the ledger's counters: restarts run in threads (--parallel) share this client."""
        with self._ledger_lock:
            for name, amount in amounts.items():
                setattr(self.ledger, name, getattr(self.ledger, name) + amount)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        server_says = _retry_after(exc)
        if server_says is not None:
            return min(server_says, self.retry_after_max)
        # Exponential backoff with jitter (tenacity's `wait_exponential_jitter`, written out:
        # its arguments differ between the tenacity versions pyproject allows).
        backoff = self.wait_initial * 2 ** (state.attempt_number - 1) + random.uniform(0, self.wait_initial)
        return max(0.0, min(backoff, self.wait_max))

    def _ask(self, request: dict, key: str) -> Answer:
        def count_failure(state: RetryCallState) -> None:
            self.count(failed_attempts=1)
            what = _failure(state.outcome.exception() if state.outcome else None, self.timeout)
            wait = state.next_action.sleep if state.next_action else 0.0
            where = self.where()
            self.echo(self.redact(
                f"LLM {self.model} at {where}: {what} (try {state.attempt_number} of {self.max_tries}); "
                f"retrying in {wait:.1f}s, at {time.strftime('%H:%M:%S', time.localtime(time.time() + wait))}"
            ))

        retrying = Retrying(
            retry=retry_if_exception(lambda exc: not self._closed and _is_retryable(exc)),
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

            if not isinstance(exc, (openai.OpenAIError, MalformedResponse, DeadlinePassed)):
                raise
            self.count(failed_attempts=1)
            context = stated_context(exc)
            if context is not None:
                raise self.refused(key, context) from None
            tries = "after " + (f"{self.max_tries} {'try' if self.max_tries == 1 else 'tries'}" if _is_retryable(exc)
                                else "1 try (not retryable)")
            where = self.where()
            # the URL said has no password nor key: one copied from the hint would go without them
            with_credentials = ", with the URL's credentials" if url_secrets(self.base_url) else ""
            cause = "timeout" if isinstance(exc, (openai.APITimeoutError, DeadlinePassed)) else \
                "connection" if isinstance(exc, openai.APIConnectionError) else \
                "no route" if self.base_url and _no_such_route(exc) else \
                "refused" if getattr(exc, "status_code", None) in (400, 404, 422) else None
            # the cause went unsaid: a --timeout too short for a slow model read as an endpoint that failed
            hint = f" (a try waits {self.timeout:g}s: a slow endpoint may need a longer --timeout)" \
                if cause == "timeout" else f" ({_route_hint(where)}{with_credentials})" if cause == "no route" else ""
            raise LLMError(self.redact(f"the LLM ({self.model} at {where}) did not answer {tries}: "
                                       f"{type(exc).__name__}: {exc}{hint}"), cause=cause) from None

    def _within_timeout(self, client, sent: dict) -> object:
        """`client.chat.completions.create(**sent)`'s answer (or what it raises), or DeadlinePassed
        once it has taken `timeout` seconds in all. The HTTP client times each wait for the
        endpoint (to connect, between two parts of the answer), not the whole request, and no
        client setting says "in all": the request runs in a thread of its own, on this lane's
        connection (kept from one request to the next), which is closed when the deadline
        passes. The endpoint then sees the request go, as when the HTTP client's own timeout
        fired: a server stops computing it (llama.cpp's one slot, an API's billing) rather than
        queue the retry behind it; the lane's next request opens a new connection."""
        lane = self._lane
        if getattr(lane, "client", None) is None or lane.base is not client:
            import openai

            http = openai.DefaultHttpxClient(timeout=self.timeout)
            with self._connect_lock:  # (those closed at a deadline are gone)
                self._lane_clients[:] = [*(h for h in self._lane_clients if not h.is_closed), http]
            lane.http, lane.base, lane.client = http, client, client.with_options(http_client=http)
        http, per_lane = lane.http, lane.client
        outcome: dict = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["answer"] = per_lane.chat.completions.create(**sent)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name="promptclimb-llm-request", daemon=True).start()
        finished = False
        try:
            finished = done.wait(self.timeout)
        finally:
            if not finished:  # past the deadline, or Ctrl-C: the request ends with the wait for it
                http.close()
                lane.client = None
        if not finished:
            raise DeadlinePassed(f"no whole answer within {self.timeout:g}s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["answer"]

    def _ask_once(self, request: dict) -> Answer:
        import openai

        client = self.connected  # a server's start is not the answer's latency
        started = time.perf_counter()
        while True:
            not_taken = set(self._not_taken)  # as this request goes: another lane may add to it meanwhile
            try:
                sent = as_sent(request, not_taken)
                response = self._within_timeout(client, sent)
                break
            except ValueError as exc:  # a 200 whose body is not JSON (json / pydantic errors)
                raise MalformedResponse(f"the endpoint's answer is not valid JSON ({exc})") from None
            except openai.BadRequestError as exc:
                param = refused_parameter(exc)
                if param is None or param in not_taken:
                    raise
                with self._ledger_lock:
                    first = param not in self._not_taken
                    self._not_taken.add(param)
                if first:
                    self.echo(f"note: {self.model} does not take {param}: " + (
                        "sent as max_completion_tokens" if param == "max_tokens" else "left out of its requests"))
        latency = time.perf_counter() - started
        choices = getattr(response, "choices", None)
        # the openai client builds its answer unchecked: a `"message": "text"` has no content to read
        if not isinstance(choices, list) or not choices or not hasattr(getattr(choices[0], "message", None), "content"):
            raise MalformedResponse(f"the endpoint answered without a chat completion: {str(response)[:200]!r}")
        content = answer_text(choices[0].message.content)
        if not content.strip():  # the search says only "the answer was empty": the endpoint may say why
            self.echo(self.redact(f"the LLM's answer was empty: {why_empty(choices[0], request.get('max_tokens'))}"))
        usage = getattr(response, "usage", None)
        if usage is None and self.max_tokens is not None and self._first_time("no usage"):
            self.echo(f"warning: {self.endpoint} reports no token usage: --max-tokens {self.max_tokens} cannot be "
                      "counted against it (--max-calls can)")
        return Answer(
            content=content,
            prompt_tokens=_token_count(getattr(usage, "prompt_tokens", None)),
            completion_tokens=_token_count(getattr(usage, "completion_tokens", None)),
            latency_s=latency,
            finish_reason=getattr(choices[0], "finish_reason", None),
            model=answered_by(response),
        )
