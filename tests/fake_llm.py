"""A small OpenAI-compatible chat server for tests: real HTTP on 127.0.0.1, scripted answers,
injected faults, a request count. Used through the real `openai` client.

    with FakeLLM(script=["a photo of a {}.", ...]) as llm:      # answers in order (cycled)
        client = LLMClient("fake", base_url=llm.base_url, api_key="sk-test")
    FakeLLM(responder=lambda request: "...")                    # answer = f(request JSON)
    llm.faults.extend(["429", "500", "hang", "malformed", "empty", "nochoices"])  # next requests
    (also "length": empty, cut at the answer cap; "cut": the answer, stopped at the cap (finish_reason
    "length"); "refusal": no content, the model's refusal)

`models=["id", ...]` makes it list those ids at GET /v1/models (as llama.cpp or vLLM do;
`promptclimb llm serve` lists its GGUF's hash there); by default that route answers 404,
like a server without it. `model_requests` counts the GETs.

Faults are consumed one per request, before the scripted answer. `"429"` sends
`Retry-After: <retry_after>`; `"hang"` holds the request until the server stops (or
`hang_s`), so a client timeout fires. `signal_at=k` sets `reached` when the k-th request
(1-based) arrives and then holds it like a hang: a test can kill the client at that point.
`latency_s=1.0` holds every answer that long (a slow remote LLM, for benchmarks of
concurrency); `max_in_flight` is the most requests it was answering at once.
`answer_together=3` holds answers until 3 requests wait for one (at most `hang_s`), then
answers them together: concurrent clients are told apart from sequential ones by count,
not by timing.

`context=N` refuses (HTTP `context_status`, 400 by default) a request whose prompt (counted
as its usage is: 10 tokens a message) and `max_tokens` pass N tokens, the way `context_says`
names: "openai" (llama-cpp-python's server and vLLM copy OpenAI's "This model's maximum
context length is N tokens. ..."), "llama-server" (llama.cpp's own: the length in the body's
`n_ctx`) or "nothing" (a refusal that states no length). `refused` counts the refusals.
"""

from __future__ import annotations

import collections
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class FakeLLM:
    def __init__(
        self,
        script: list[str] | None = None,
        responder: Callable[[dict], str] | None = None,
        retry_after: str = "0",
        hang_s: float = 10.0,
        signal_at: int | None = None,
        latency_s: float = 0.0,
        models: list[str] | None = None,
        answer_together: int = 1,
        context: int | None = None,
        context_says: str = "openai",
        context_status: int = 400,
        usage: bool = True,
        answered_as: str | None = None,
    ):
        self.script = list(script or ["a photo of a {}."])
        self.responder = responder
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.signal_at = signal_at
        self.models = models  # what GET /v1/models lists (None: the route does not exist)
        self.answered_as = answered_as  # the model its answers name (None: the one asked for)
        self.model_requests = 0
        self.latency_s = latency_s
        self.answer_together = answer_together
        self.context, self.context_says, self.context_status = context, context_says, context_status
        self.refused = 0
        self.usage = usage  # False: answers without `usage`, as some proxies send them
        self.in_flight = 0
        self.max_in_flight = 0
        self._arrived = self._released = 0  # requests held for `answer_together`
        self.faults: collections.deque[str] = collections.deque()
        self.requests: list[dict] = []  # every request body received (faulted ones too)
        self.paths: list[str] = []  # and the path each was sent to, its query included
        self.headers: list[dict] = []
        self.reached = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._together = threading.Condition(self._lock)
        self._answered = 0
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> "FakeLLM":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake._handle(self, body)

            def do_GET(self):
                with fake._lock:
                    fake.model_requests += 1
                if self.path.rstrip("/").endswith("/models") and fake.models is not None:
                    return fake._send(self, 200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in fake.models]})
                fake._send(self, 404, {"error": {"message": f"no route {self.path}"}})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def count(self) -> int:
        return len(self.requests)

    # -- one request ---------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        with self._lock:
            self.requests.append(body)
            self.paths.append(handler.path)
            self.headers.append({k.lower(): v for k, v in handler.headers.items()})
            number = len(self.requests)
            fault = self.faults.popleft() if self.faults else None
        if self.signal_at is not None and number == self.signal_at:
            self.reached.set()
            fault = "hang"
        if fault == "hang":
            self._stop.wait(self.hang_s)
            return  # no response at all: the client's timeout (or the kill) ends it
        if fault == "429":
            return self._send(handler, 429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                              {"Retry-After": self.retry_after})
        if fault == "500":
            return self._send(handler, 500, {"error": {"message": "internal error", "type": "server_error"}})
        if fault == "401":
            key = handler.headers.get("Authorization", "")
            return self._send(handler, 401, {"error": {"message": f"Incorrect API key provided: {key}"}})
        if fault == "malformed":
            return self._send_raw(handler, 200, b"this is not json {")
        if fault == "nochoices":
            return self._send(handler, 200, {"id": "x", "object": "chat.completion", "choices": []})
        prompt_tokens, answer_tokens = 10 * len(body.get("messages", [])), body.get("max_tokens") or 0
        if self.context is not None and prompt_tokens + answer_tokens > self.context:
            with self._lock:
                self.refused += 1
            return self._send(handler, self.context_status, {"error": self._context_error(prompt_tokens, answer_tokens)})
        content = "" if fault in ("empty", "length", "refusal") else self._answer(body)
        if self.latency_s or self.answer_together > 1:
            with self._together:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                self._arrived += 1
                ticket = self._arrived
                if self._arrived % self.answer_together == 0:
                    self._released = self._arrived
                    self._together.notify_all()
                self._together.wait_for(lambda: self._released >= ticket or self._stop.is_set(), timeout=self.hang_s)
            self._stop.wait(self.latency_s)
            with self._together:
                self.in_flight -= 1
        self._send(handler, 200, {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": 0,
            "model": self.answered_as or body.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": "length" if fault in ("length", "cut") else "stop",
                         "message": {"role": "assistant", "content": None if fault == "refusal" else content,
                                     **({"refusal": "I can't help with that."} if fault == "refusal" else {})}}],
            **({} if not self.usage else {"usage": {
                "prompt_tokens": 10 * len(body.get("messages", [])), "completion_tokens": 7,
                "total_tokens": 10 * len(body.get("messages", [])) + 7}}),
        })

    def _context_error(self, prompt_tokens: int, answer_tokens: int) -> dict:
        if self.context_says == "llama-server":
            return {"code": 400, "message": "the request exceeds the available context size, try increasing it",
                    "type": "exceed_context_size_error", "n_prompt_tokens": prompt_tokens, "n_ctx": self.context}
        if self.context_says == "nothing":
            return {"message": "the request exceeds the available context size", "type": "invalid_request_error"}
        return {"message": f"This model's maximum context length is {self.context} tokens. However, you "
                           f"requested {prompt_tokens + answer_tokens} tokens ({prompt_tokens} in the messages, "
                           f"{answer_tokens} in the completion). Please reduce the length of the messages or completion.",
                "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}

    def _answer(self, body: dict) -> str:
        if self.responder is not None:
            return self.responder(body)
        with self._lock:
            content = self.script[self._answered % len(self.script)]
            self._answered += 1
        return content

    @staticmethod
    def _send(handler, status: int, payload: dict, headers: dict | None = None) -> None:
        FakeLLM._send_raw(handler, status, json.dumps(payload).encode(), headers, "application/json")

    @staticmethod
    def _send_raw(handler, status: int, data: bytes, headers: dict | None = None,
                  content_type: str = "application/json") -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to do


# -- an in-memory evaluator behind the `Evaluator` protocol (no torch) ------------------------
from promptclimb.agent.core.classnames import check_classnames  # noqa: E402
from promptclimb.agent.core.protocol import ClassReport, Score, Task  # noqa: E402

# Words that make a template "better" on this fake task; everything else is neutral.
GOOD_WORDS = {"photo": 0.10, "clothing": 0.15, "grayscale": 0.12, "product": 0.08, "garment": 0.10, "studio": 0.05}
# Words that make the model surer of the true class without changing its accuracy.
CONFIDENT_WORDS = {"sharp": 0.2}
IMAGES_PER_CLASS = 10  # what class_report counts per class and split


class WordEvaluator:
    """Accuracy = a deterministic function of the template's words; counts what it scores.
    The ensemble of several templates scores `ensemble_gain` above its best member.

    Class names: with the start names (`classnames`) every class scores the template's
    value. A name moves its class's accuracy and true-class probability by
    `name_bonus[name.lower()]` (a number, or {split: number}; unknown names 0), and a
    template's accuracy is the mean over classes. `class_bias` shifts single classes under
    any name (a weak class to rename). A class's misses are predicted as the next class."""

    def __init__(self, dataset: str = "toy", ensemble_gain: float = 0.01,
                 classnames: tuple[str, ...] = ("T-shirt", "trousers", "bag"),
                 name_bonus: dict | None = None, class_bias: dict | None = None, labels: tuple[str, ...] = ()):
        self.ensemble_gain = ensemble_gain
        self.labels = tuple(labels)  # the data's own labels, recorded (as the CLIP evaluator does) beside other names
        self.task = Task(dataset, "small grayscale photos of clothing items", tuple(classnames))
        self.name_bonus = {k.lower(): v for k, v in (name_bonus or {}).items()}
        self.class_bias = dict(class_bias or {})  # class index -> accuracy shift under every name
        self.scored: list[str] = []
        self.names_scored: list[tuple[str, tuple[str, ...]]] = []  # (template, names) of score_names
        self.reports: list[tuple[str, tuple[str, ...], str]] = []  # class_report calls
        self.ensembles: list[tuple[str, ...]] = []
        self.ensemble_names: list[tuple[str, ...] | None] = []
        self.splits_asked: list[tuple[str, ...]] = []

    def _value(self, template: str, split: str) -> tuple[float, float]:
        words = set(re.findall(r"[a-z]+", template.lower()))
        acc = 0.3 + sum(w for word, w in GOOD_WORDS.items() if word in words)
        acc -= 0.002 * len(template)  # shorter is slightly better: fewer exact ties
        acc += {"train": 0.0, "val": -0.02, "test": -0.04}[split]
        acc = max(0.0, min(1.0, round(acc, 4)))
        return acc, round(2.0 - acc, 4)

    def _prob(self, template: str, split: str) -> float:
        words = set(re.findall(r"[a-z]+", template.lower()))
        sure = sum(w for word, w in CONFIDENT_WORDS.items() if word in words)
        return max(0.0, min(1.0, round(self._value(template, split)[0] - 0.25 + sure, 4)))

    # -- class names -------------------------------------------------------------------------
    def _names(self, classnames) -> tuple[str, ...]:
        """As the CLIP evaluator checks them: one per class, none empty or with braces, no two alike."""
        if classnames is None:
            return self.task.classnames
        return check_classnames(classnames, len(self.task.classnames))

    def _shift(self, c: int, name: str, split: str) -> float:
        bonus = self.name_bonus.get(name.lower(), 0.0)  # what the name says, as a text tower reads it
        if isinstance(bonus, dict):
            bonus = bonus.get(split, 0.0)
        return bonus + self.class_bias.get(c, 0.0)

    def _per_class(self, template: str, names, split: str) -> list[tuple[float, float]]:
        """(accuracy, true-class probability) per class."""
        acc, prob = self._value(template, split)[0], self._prob(template, split)
        clamp = lambda v: max(0.0, min(1.0, round(v, 4)))  # noqa: E731
        return [(clamp(acc + self._shift(c, n, split)), clamp(prob + self._shift(c, n, split)))
                for c, n in enumerate(names)]

    def _score_with(self, template: str, names, splits) -> Score:
        if names == self.task.classnames and not self.class_bias:  # exactly as before names existed
            values = {s: self._value(template, s) for s in splits}
            return Score(accuracy={s: v[0] for s, v in values.items()}, loss={s: v[1] for s, v in values.items()},
                         prob={s: self._prob(template, s) for s in splits})
        per = {s: self._per_class(template, names, s) for s in splits}
        acc = {s: round(sum(a for a, _ in v) / len(v), 6) for s, v in per.items()}
        return Score(accuracy=acc, loss={s: round(2.0 - a, 6) for s, a in acc.items()},
                     prob={s: round(sum(p for _, p in v) / len(v), 6) for s, v in per.items()})

    def score(self, templates, splits=("train", "val"), classnames=None):
        self.splits_asked.append(tuple(splits))
        names = self._names(classnames)
        out = []
        for t in templates:
            assert t.count("{}") == 1 and t.format("x")  # only ever handed checked templates
            self.scored.append(t)
            out.append(self._score_with(t, names, splits))
        return out

    def score_names(self, template, variants, splits=("train", "val")):
        assert template.count("{}") == 1
        self.splits_asked.append(tuple(splits))
        out = []
        for names in variants:
            names = self._names(names)
            self.names_scored.append((template, names))
            out.append(self._score_with(template, names, splits))
        return out

    def class_report(self, template, classnames, split):
        names = self._names(classnames)
        self.reports.append((template, names, split))
        reports = []
        for c, (acc, prob) in enumerate(self._per_class(template, names, split)):
            right = round(acc * IMAGES_PER_CLASS)
            predicted = [0] * len(names)
            predicted[c] += right
            predicted[(c + 1) % len(names)] += IMAGES_PER_CLASS - right
            reports.append(ClassReport(index=c, name=names[c], count=IMAGES_PER_CLASS, prob=prob,
                                       predicted=tuple(predicted)))
        return reports

    def score_ensemble(self, templates, splits=("test",), classnames=None):
        self.ensembles.append(tuple(templates))
        self.ensemble_names.append(None if classnames is None else tuple(classnames))
        names = self._names(classnames)
        members = [self._score_with(t, names, splits) for t in templates]
        acc = {s: min(1.0, max(m.accuracy[s] for m in members) + self.ensemble_gain) for s in splits}
        prob = {s: min(1.0, max(m.prob[s] for m in members) + self.ensemble_gain) for s in splits}
        return Score(accuracy=acc, loss={s: 2.0 - a for s, a in acc.items()}, prob=prob)

    def info(self):
        dataset = {"name": self.task.dataset, "classes": len(self.task.classnames), "classnames": list(self.task.classnames)}
        if self.labels and self.labels != self.task.classnames:
            dataset["labels"] = list(self.labels)
        classes = len(self.task.classnames)  # as `eval`'s table reads the CLIP evaluator's
        return {"evaluator": "WordEvaluator", "dataset": dataset, "backbone": {"identity": "words", "device": "cpu"},
                "split": {"sizes": {"train": classes, "val": classes, "test": 10 * classes}}}


def one_line_error(result, *needles, code=1):
    """A command (click's CliRunner result) failed with exit status `code` and one readable
    `Error:` line holding every needle: no traceback, no "Aborted!"."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught exception
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], (needle, result.output)
    assert "Traceback" not in result.output and "Aborted" not in result.output
    return errors[0]


def signal_child_at_request(fake: FakeLLM, argv: list[str], env: dict, sig: int, wait_s: float = 60) -> tuple[int, str]:
    """Start `argv` (a search against `fake`, whose `signal_at` is set), wait until it sends
    that request, send it `sig` there and return its exit status and output. A child that
    never gets that far fails the test with its output."""
    import subprocess

    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        if not fake.reached.wait(wait_s):
            child.kill()
            raise AssertionError(f"the child never sent request {fake.signal_at}:\n{child.communicate(timeout=10)[0]}")
        child.send_signal(sig)
        output = child.communicate(timeout=30)[0]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    fake.signal_at = None
    return child.returncode, output
