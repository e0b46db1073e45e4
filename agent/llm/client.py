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

import base64
import hashlib
import json
import random
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode, urlsplit, urlunsplit

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.files import remove_dead_temp_files, write_json_atomic

# Bump when the cache entry layout or key changes; old entries are then ignored.
# 2: entries are keyed and checked by `origin` (endpoint and served model) too.
CACHE_FORMAT = 2
# Part of every `request_key`, which run histories record and a resume looks answers up
# by: it never changes, or runs written before the change could not be resumed.
REQUEST_KEY_FORMAT = 1
# What is kept of one answer: this many characters per token asked for (a token is about
# 4 characters of English: twice that is generous), or DEFAULT_CAP_TOKENS when no cap was
# asked for.
CHARS_PER_TOKEN = 8
DEFAULT_CAP_TOKENS = 4096
# Said of an answer whose only line a cap cut (`LLMClient.chat`): why nothing of it is kept, what to do
_HALF_LINE_KEPT_NOT = "(a line cut in half is never read)"
_RAISE_CAP = "raise --max-answer-tokens (a new run's setting, a resume keeps the run's)"


class LLMError(PromptclimbError):
    """The LLM endpoint could not answer (after retries) or answered with something unusable.
    `cause`: "timeout" or "connection" where the last try ended so, "no route" for a 404 that
    names no model, "refused" for a request the endpoint refuses as it is (another 400, 404 or
    422: a model it does not serve, a parameter it does not take), which no retry or resume
    changes (a caller's hint names what to do: a longer --timeout, a server to start again,
    the URL to give, another setting)."""

    def __init__(self, message: str = "", cause: str | None = None):
        super().__init__(message)
        self.cause = cause


class ContextExceeded(LLMError):
    """The endpoint refused the request as longer than the model's context, and said how long
    that context is (`context_tokens`). Sending the same request again would be refused again:
    it is never retried."""

    def __init__(self, message: str, context_tokens: int, key: str):
        super().__init__(message)
        self.context_tokens = context_tokens
        self.key = key  # the refused request's `request_key`


class BudgetExhausted(Exception):
    """A budget cap (`max_calls` or `max_tokens`) is reached; not an error: the search ends."""


def why_empty(choice, max_tokens: int | None) -> str:
    """Why a chat completion's message is empty, as far as the endpoint says (its refusal, or
    the answer cap reached inside a reasoning model's thinking), in a few words."""
    refusal = getattr(choice.message, "refusal", None)
    if isinstance(refusal, str) and refusal.strip():
        return f"the model refused ({refusal.strip()[:200]!r})"
    # vLLM's and DeepSeek's reasoning parsers, OpenRouter: the thinking beside the answer, not in it
    thought = next((f for f in ("reasoning_content", "reasoning") if isinstance(getattr(choice.message, f, None), str)
                    and getattr(choice.message, f).strip()), None)
    if thought and getattr(choice, "finish_reason", None) != "length":
        return (f"the model wrote only its reasoning ({thought}, {len(getattr(choice.message, thought)):,} "
                "characters), no answer after it")
    if getattr(choice, "finish_reason", None) == "length":
        return (f"it was cut at the {max_tokens}-token answer cap before it began (raise --max-answer-tokens: "
                "a new run's setting, a resume keeps the run's)"
                if max_tokens else "it was cut at the endpoint's length limit before it began")
    return f"the endpoint gave no reason (finish_reason {getattr(choice, 'finish_reason', None)!r})"


def answered_by(response) -> str | None:
    """The model a chat completion says answered it (its `model`), or None where it names none."""
    model = getattr(response, "model", None)
    return model.strip()[:200] if isinstance(model, str) and model.strip() else None


def answer_text(content) -> str:
    """A message's text: its `content`, or the text parts of a content list (Mistral's
    Magistral answers `[{"type": "thinking", ...}, {"type": "text", "text": ...}]`, which was
    read as an empty answer)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = [part if isinstance(part, dict) else vars(part) if hasattr(part, "__dict__") else {} for part in content]
    return "".join(p["text"] for p in parts if p.get("type") == "text" and isinstance(p.get("text"), str))


class MalformedResponse(Exception):
    """A 200 answer that is not a chat completion (no choices, not JSON); retried like a 5xx."""


class DeadlinePassed(Exception):
    """A request not answered in whole within the client's timeout; retried like a timeout. The
    HTTP client's own timeout waits for each part of an answer: an endpoint that sent a byte
    every few seconds (a proxy's keep-alive spaces, a slow stream) held one request for as long
    as it went on."""


@dataclass
class Answer:
    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    # "llm" (a request was made), "cache" (disk), "replay" (run history), or "earlier": the cache's
    # answer to a request this run made in an earlier session, stopped before its history held it
    source: str = "llm"
    key: str = ""  # the request key (see `request_key`)
    truncated_from: int = 0  # characters the answer had when it was cut to `answer_cap` (0: kept whole)
    finish_reason: str | None = None  # the endpoint's, for an answer asked now ("length": cut at its cap)
    # the model the endpoint says answered, where it names one (OpenAI answers "gpt-4o" as a dated
    # snapshot; a router as the model it chose): kept with the answer, recorded by the run
    model: str | None = None

    @property
    def cached(self) -> bool:
        """Costs this run nothing: an answer made for another run, or replayed (one this run
        paid for, `earlier`, is no cached answer: its tokens count, as an uninterrupted run's)."""
        return self.source not in ("llm", "earlier")


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


# Query parameters that carry a credential (`?api-key=...` for Azure-style endpoints, `?token=`, a
# signature): never written to disk or shown.
# Query parameters that carry a key: `api_key`, `access_token`, `sig` (Azure SAS), `code` (an
# Azure Functions gateway's), `pwd`/`pass`... A name that merely contains one of these words is
# hidden too: better a harmless parameter hidden than a key shown.
_SECRET_WORDS = r"key|token|secret|pass|pwd|sig|auth|credential|code"
_SECRET_PARAMETER = re.compile(_SECRET_WORDS, re.IGNORECASE)
# The same in free text (an error message quoting a URL): the values of secret parameters (the
# userinfo of each URL in it: `scrub_urls`)
_SECRET_QUERY_IN_TEXT = re.compile(r"([?&][^=&\s?]*(?:" + _SECRET_WORDS + r")[^=&\s]*=)[^&\s]+", re.IGNORECASE)
# a URL up to the next space: a password may hold a '/', which ended the userinfo `://[^/\s]*@` found
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/+\S*")
# a scheme has its slash (one at least, as typed): in `bob:pw@host`, `bob:` is a user name
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):/+")
_QUERY_BEGINS = re.compile(r"[?#]")
# an '@' that a host (and port) and then a path follow: where a `user:password@` ends, whatever the
# password holds ('/', '?', '#' typed unencoded)
_AT_BEFORE_HOST = re.compile(r"@(?=[A-Za-z0-9._~%\[\]:-]+/)")
# Schemes whose URL names a file (MLflow's `sqlite:///runs@2/mlflow.db`): no userinfo, an '@' there is the path's
_FILE_SCHEMES = ("file", "sqlite")
# where a URL's authority (`user:password@host:port`) ends, as far as what is typed tells
_AUTHORITY_ENDS = re.compile(r"[/?#]")


OPENAI_API_URL = "https://api.openai.com/v1"  # the openai client's own default endpoint


def _split(url: str):
    """urlsplit's parts of `url`, or None where it cannot read them (`http://[::1`, a port
    that is not a number)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        return parts
    except ValueError:
        return None


def _userinfo(url: str) -> tuple[int, int]:
    """Where the `user:password@` of `url` begins and ends (its '@' included; both at its
    start where it has none): everything between the scheme's slashes (or the start) and the
    last '@' that a host and a path follow, or, with none, the last '@' before the query. A
    password typed unencoded may hold a '/', '?' or '#' (which urlsplit reads as the path's,
    the query's: the password was shown, and recorded); an '@' in a query (`?email=a@b.com`,
    a key's value) is no userinfo's end. A file's URL and a plain path (MLflow's folder store,
    `/data/runs@2/mlruns`) have none."""
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 0
    if (scheme and scheme.group(1).lower() in _FILE_SCHEMES) or (not scheme and url[:1] in ("/", ".", "~")):
        return start, start
    query = _query_after_host(url, start)
    before_host = [found.start() for found in _AT_BEFORE_HOST.finditer(url, start, query)]
    if before_host:
        return start, before_host[-1] + 1
    slash = url.find("/", start)
    query = _QUERY_BEGINS.search(url, slash if slash >= 0 else start)
    at = url.rfind("@", start, query.start() if query else len(url))
    return start, (at + 1 if at >= 0 else start)


def _query_after_host(url: str, start: int) -> int:
    """Where the query (or fragment) of `url` begins when what comes before it reads as a host
    (and port), a path maybe, and a '?' or '#' (`http://127.0.0.1:8080/v1?x=a@b/c`: an '@' after
    it is the query's, even with a host-like word and a '/' after it); else len(url). A password
    typed with a '?' or '#' in it leaves no host and port before that (`user:pa?ss@host/v1`:
    'pa' is no port), so its '@' stays the userinfo's end."""
    ends = _AUTHORITY_ENDS.search(url, start)
    if ends is None:
        return len(url)
    host = url[start:ends.start()].rpartition("@")[2]  # after a userinfo typed before it
    parts = _split(f"http://{host}")
    if parts is None or not parts.hostname:
        return len(url)
    query = _QUERY_BEGINS.search(url, ends.start())
    return query.start() if query else len(url)


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The credentials written into `url`: its password (also as the HTTP Basic header that
    carries it, which an endpoint may quote back), and its secret query parameters' values."""
    if not url:
        return ()
    start, end = _userinfo(url)
    user, _, password = url[start:end - 1].partition(":") if end > start else ("", "", "")
    parts = _split(url[:start] + url[end:])
    if parts is None:  # not a URL urlsplit reads: every value of whatever sits where a query would
        found = [password] + [value for _, value in parse_qsl(url[end:].partition("?")[2])]
    else:
        found = [password] + [value for name, value in parse_qsl(parts.query) if _SECRET_PARAMETER.search(name)]
    if password:  # as typed (percent-encoded), as sent, and as the Basic header that sends it
        found += [unquote(password), base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()]
    return tuple(dict.fromkeys(secret for secret in found if secret))


def without_secrets(url: str | None) -> str | None:
    """`url` without its `user:password@` part and its secret query parameters (what may be
    written to disk or shown)."""
    if not url:
        return url
    start, end = _userinfo(url)
    url = url[:start] + url[end:]
    parts = _split(url)
    if parts is None:
        return shown_url(url)
    query = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True)
             if not _SECRET_PARAMETER.search(name)]
    if len(query) == len(parse_qsl(parts.query, keep_blank_values=True)):
        return url
    return urlunsplit(parts._replace(query=urlencode(query)))


def shown_url(url: str) -> str:
    """`url` without its userinfo, query and fragment: what may be shown of a URL whose parts
    cannot be told apart for sure."""
    start, end = _userinfo(url)
    return url[:start] + _QUERY_BEGINS.split(url[end:], maxsplit=1)[0]


def scrub_urls(text: str) -> str:
    """`text` (an error message) with the password and the secret query values of every URL
    in it left out."""
    def without_userinfo(found: re.Match) -> str:
        start, end = _userinfo(found.group())
        return found.group()[:start] + found.group()[end:]

    return _SECRET_QUERY_IN_TEXT.sub(r"\1[redacted]", _URL_IN_TEXT.sub(without_userinfo, text))


def check_endpoint_url(url: str | None, what: str) -> None:
    """PromptclimbError in one line naming `what` (--base-url, OPENAI_BASE_URL) when `url` is
    given and is not an http(s) URL with a host and a port that can be read: 'localhost:8080/v1'
    was taken, and its connection error retried for half a minute before the search failed.
    Its password is never said, read as `_userinfo` reads it."""
    if not url:
        return
    start, end = _userinfo(url)
    parts = _split(url[:start] + url[end:])
    shown = shown_url(url)
    if parts is None:
        raise PromptclimbError(f"{what} {shown!r}: its host or port cannot be read (a port is a number from 0 to "
                               "65535; an IPv6 host is written in brackets, http://[::1]:8080/v1)")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PromptclimbError(f"{what} {shown!r}: expected an http:// or https:// URL (e.g. http://localhost:8080/v1)")
    if re.search(r"[/?#]", url[start:end]):  # the HTTP client would read a host, a path or a query in the password
        raise PromptclimbError(f"{what} {shown!r}: its user name or password holds a '/', '?' or '#' (or its path an "
                               "'@'): percent-encode them in the password (%2F for '/', %40 for '@', %3F for '?', "
                               "%23 for '#')")


def check_api_key(key: str | None, what: str = "OPENAI_API_KEY") -> None:
    """PromptclimbError where `key` holds a character an HTTP header cannot carry (a letter
    outside ASCII, a line break) or begins or ends with a space: pasted with the key; the key
    itself is never said."""
    if key and (not key.isascii() or any(ord(c) < 32 or ord(c) == 127 for c in key)):
        raise PromptclimbError(f"{what} holds a character an HTTP header cannot carry (a letter outside ASCII, a "
                               "line break or another control character: pasted with the key?); set it again")
    if key and key != key.strip():  # the HTTP client refuses it too, as a connection error retried
        raise PromptclimbError(f"{what} begins or ends with a space: pasted with the key?; set it again without")


_KEY_LIKE = re.compile(r"\b(sk|pk|key)-[A-Za-z0-9_\-*.]{6,}")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every given secret (as it is, or percent-encoded in a URL) and anything
    shaped like an API key replaced, and URLs in it without their passwords and secret
    query values."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            for form in dict.fromkeys((secret, quote(secret, safe=""), quote_plus(secret))):
                text = text.replace(form, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", scrub_urls(text))


def request_key(request: dict) -> str:
    """The key of a chat request in a run's history: a hash of everything in the request
    that shapes the answer. (The disk cache adds who answers it: `cache_key`.)"""
    blob = json.dumps({"format": REQUEST_KEY_FORMAT, **request}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def cache_key(request: dict, origin: dict) -> str:
    """The disk cache key: the request and who answers it (`LLMClient.origin`)."""
    blob = json.dumps({"format": CACHE_FORMAT, "origin": origin, "request": request}, sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def answer_cap(max_answer_tokens: int | None) -> int:
    """How many characters of an answer are kept (see CHARS_PER_TOKEN)."""
    return CHARS_PER_TOKEN * (max_answer_tokens or DEFAULT_CAP_TOKENS)


def cap_answer(content: str, cap: int, whole_lines: bool = False) -> tuple[str, int]:
    """(`content` cut to `cap` characters - at its last line break when it has one, so no
    line is kept half -, the length it had when cut, or 0 when kept whole). `whole_lines`: a
    first line cut in half is left out too (an answer of templates or names, where it was
    scored as one: `a photo of a {} num`, `Dress: su`)."""
    if len(content) <= cap:
        return content, 0
    kept = content[:cap]
    if content[cap] in "\r\n":  # cut where a line ends: its last line is whole
        return kept, len(content)
    return (whole_lines_of(kept) if "\n" in kept or whole_lines else kept), len(content)


def whole_lines_of(content: str) -> str:
    """`content` less its last line, which a cut left half written."""
    return content[: content.rindex("\n")] if "\n" in content else ""


class ResponseCache:
    """One JSON file per cache key. Writes are atomic (temp file + rename); an entry that
    cannot be read or does not match its request and origin is ignored (and later
    overwritten)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.is_dir():
            remove_dead_temp_files(self.root)  # what a process killed mid-write left here

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, request: dict, origin: dict | None = None) -> dict | None:
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
            if entry.get("format") != CACHE_FORMAT or entry.get("request") != request:
                return None
            if entry.get("origin") != origin:
                return None
            if not isinstance(entry["answer"]["content"], str):
                return None
            return entry["answer"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # missing or damaged: never fatal, the answer is fetched again

    def put(self, key: str, request: dict, answer: dict, origin: dict | None = None) -> str:
        """"" once the entry is written; else why it could not be (a full disk, a read-only
        folder): the answer is in the run's history all the same, so the search goes on."""
        entry = {"format": CACHE_FORMAT, "origin": origin, "request": request, "answer": answer}
        try:
            write_json_atomic(self.path(key), entry, indent=None)
        except OSError as exc:
            return exc.strerror or str(exc)
        return ""


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
