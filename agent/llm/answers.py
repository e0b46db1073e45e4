"""The LLM client's exceptions and what it hands back: an `Answer` (and the cap on what is kept
of one), the `Ledger` of what was consumed, and how a chat completion's text is read. Its own module
because the search catches and reads these without the client's requests, retries and cache."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from promptclimb.agent.core.errors import PromptclimbError

# What is kept of one answer: this many characters per token asked for (a token is about
# 4 characters of English: twice that is generous), or DEFAULT_CAP_TOKENS when no cap was
# asked for.
CHARS_PER_TOKEN = 8
DEFAULT_CAP_TOKENS = 4096


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

