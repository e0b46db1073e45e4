"""The search: a conversational hill-climb over prompt templates, with a chat LLM as the
optimizer (Liu et al., "Language Models as Black-Box Optimizers for Vision-Language
Models", CVPR 2024).

    for restart in restarts:               a fresh sample of the initial pool, scored
        for reset in resets:               a new conversation; the scoreboard is kept
            for iteration in iterations:   the LLM sees the top-k / bottom-k templates (or
                                           how its last ones scored) and proposes N more;
                                           valid new ones are scored in one batch
    best template (selection split, ties by lower cross-entropy), top-k ensemble, and
    their test accuracy, computed once, at the end.

Everything the loop does is appended to the run's history before the next step (see
agent/runstore.py), which is also how a killed run resumes: the loop runs again, scores
and LLM answers already in the history are read back instead of recomputed, and new
events continue where the history ends.

What the LLM is shown and asked lives in the jinja2 meta-prompts (agent/metaprompt.py);
every knob is in `SearchConfig`.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from promptclimb.agent.errors import PromptclimbError
from promptclimb.agent.llm import Answer, BudgetExhausted, LLMClient
from promptclimb.agent.metaprompt import MetaPrompt
from promptclimb.agent.pools import PoolTemplate, load_pool, sample_pool
from promptclimb.agent.proposals import normalise, parse_proposals
from promptclimb.agent.protocol import Evaluator, Score
from promptclimb.agent.runstore import FORMAT_VERSION, RunStore

SCORED_SPLITS = ("train", "val")  # what every template is scored on during the search
SELECTIONS = {"train": ("train",), "train+val": ("train", "val")}


@dataclass
class SearchConfig:
    """Every knob of the search (all on `promptclimb search --help`). The defaults fit a
    small budget: 1 restart x 2 resets x 5 iterations = 10 LLM answers."""

    restarts: int = 1
    resets: int = 2
    iterations: int = 5  # LLM turns per conversation
    proposals: int = 5  # templates asked for per turn
    top_k: int = 3  # best templates shown to the LLM
    bottom_k: int = 3  # worst templates shown to the LLM
    pool_sample: int = 30  # initial-pool templates per restart (0 = the whole pool)
    temperature: float = 1.0
    seed: int = 0
    select: str = "train"  # "train" (as in the paper) or "train+val"
    ensemble_k: int = 3  # templates in the final ensemble (0 or 1 = none)
    max_answer_tokens: int = 400  # length cap of one LLM answer
    max_calls: int | None = None  # LLM answers in the whole run (cached ones count too)
    max_tokens: int | None = None  # prompt + completion tokens in the whole run

    def check(self) -> "SearchConfig":
        if self.select not in SELECTIONS:
            raise PromptclimbError(f"select must be one of {', '.join(SELECTIONS)}, not {self.select!r}")
        for name in ("restarts", "resets", "iterations", "proposals"):
            if getattr(self, name) < 1:
                raise PromptclimbError(f"{name} must be at least 1")
        for name in ("top_k", "bottom_k", "pool_sample", "ensemble_k", "max_answer_tokens"):
            if getattr(self, name) < 0:
                raise PromptclimbError(f"{name} must not be negative")
        if not 0.0 <= self.temperature <= 2.0:
            raise PromptclimbError("temperature must be between 0 and 2")
        return self


@dataclass
class Scored:
    """One template on the scoreboard."""

    template: str
    origin: str  # "pool" | "llm"
    accuracy: dict[str, float]
    loss: dict[str, float]
    order: int  # position in scoring order (the last tie-breaker: earlier wins)
    restart: int = 0
    reset: int | None = None
    iteration: int = 0

    def to_dict(self) -> dict:
        return {"template": self.template, "origin": self.origin, "accuracy": self.accuracy, "loss": self.loss}


@dataclass
class SearchResult:
    best: dict  # {template, origin, accuracy {train, val, test}, loss}
    ensemble: dict | None  # {templates, accuracy, loss}
    top: list[dict]
    stopped: str  # "completed" or why the search ended early
    summary: dict = field(default_factory=dict)


def call_seed(seed: int, restart: int, reset: int, iteration: int) -> int:
    """The `seed` sent with one LLM request: fixed by the run's seed and the call's place."""
    digest = hashlib.sha256(f"{seed}:{restart}:{reset}:{iteration}".encode()).hexdigest()
    return int(digest[:8], 16) % (2**31 - 1)


def as_floats(values: dict) -> dict[str, float]:
    """Plain floats (an evaluator may hand back numpy scalars, which JSON cannot hold)."""
    return {str(k): float(v) for k, v in (values or {}).items()}


def metric(s: Scored, splits: Sequence[str]) -> float:
    values = [s.accuracy[k] for k in splits if k in s.accuracy]
    return sum(values) / len(values) if values else 0.0


def tie_loss(s: Scored, splits: Sequence[str]) -> float:
    values = [s.loss[k] for k in splits if k in s.loss]
    return sum(values) / len(values) if values else math.inf


def rank(board: Sequence[Scored], splits: Sequence[str]) -> list[Scored]:
    """Best first: higher accuracy on the selection splits, then lower cross-entropy, then
    scored earlier."""
    return sorted(board, key=lambda s: (-metric(s, splits), tie_loss(s, splits), s.order))


def shown(scored: Sequence[Scored], splits: Sequence[str]) -> list[dict]:
    """Templates as the meta-prompts see them: text and selection accuracy."""
    return [{"template": s.template, "accuracy": metric(s, splits)} for s in scored]


class HillClimber:
    """One search over one evaluator, recorded in one run store. `run()` is the entry point."""

    def __init__(
        self,
        evaluator: Evaluator,
        llm: LLMClient,
        store: RunStore,
        config: SearchConfig | None = None,
        meta: MetaPrompt | None = None,
        pool: list[PoolTemplate] | None = None,
        echo: Callable[[str], None] = print,
    ):
        self.evaluator, self.llm, self.store = evaluator, llm, store
        self.config = (config or SearchConfig()).check()
        self.meta = meta or MetaPrompt()
        self.pool = pool if pool is not None else load_pool(evaluator.task.dataset)
        if not self.pool:
            raise PromptclimbError("the initial pool is empty")
        self.echo = echo
        self.splits = SELECTIONS[self.config.select]
        self.metric_name = {"train": "training accuracy", "train+val": "accuracy on training and validation images"}[
            self.config.select
        ]
        self.scores: dict[str, Scored] = {}  # every template scored in the run
        self.seen: set[str] = set()  # their normalised forms (duplicate check)
        self.calls = 0
        self.timings = {"scoring_s": 0.0, "llm_s": 0.0}
        # On resume: what the history already knows is read back, never recomputed.
        self.stored_scores = {e["template"]: e for e in store.stored_of("score")}
        for e in store.stored_of("llm_exchange"):
            llm.remember(e["request_key"], {"content": e["answer"], **(e.get("usage") or {})})

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> SearchResult:
        cfg = self.config
        started = time.time()
        self.store.append("run_start", run_id=self.store.run_dir.name)
        stopped = "completed"
        try:
            for restart in range(cfg.restarts):
                board = self.start_restart(restart)
                for reset in range(cfg.resets):
                    self.store.append("reset", restart=restart, reset=reset)
                    messages = [
                        {"role": "system", "content": self.meta.system(self.evaluator.task, cfg.proposals)},
                        {"role": "user", "content": self.first_turn(board)},
                    ]
                    sent = 0  # messages already recorded in this conversation's history
                    for iteration in range(1, cfg.iterations + 1):
                        answer = self.ask(messages, sent, restart, reset, iteration)
                        sent = len(messages)
                        messages.append({"role": "assistant", "content": answer.content})
                        best_before = rank(board, self.splits)[0]
                        new, rejected = self.take_proposals(answer.content, board, restart, reset, iteration)
                        self.report(restart, reset, iteration, new, rejected, board)
                        messages.append({"role": "user", "content": self.feedback_turn(board, best_before, new, rejected)})
                        self.store.write_prompts_csv()
        except BudgetExhausted as exc:
            stopped = f"budget: {exc}"
            self.store.append("stop", reason=stopped)
            self.echo(f"stopping early: {exc}")
        return self.finish(stopped, started)

    def start_restart(self, restart: int) -> list[Scored]:
        """A fresh pool sample, scored (templates scored before are not scored again)."""
        sample = sample_pool(self.pool, self.config.pool_sample, self.config.seed, restart)
        self.store.append("restart", restart=restart, pool=[p.template for p in sample])
        self.score_batch([(p.template, p.source) for p in sample], "pool", restart=restart, reset=None, iteration=0)
        board = [self.scores[p.template] for p in sample]
        best = rank(board, self.splits)[0]
        self.echo(
            f"restart {restart + 1}/{self.config.restarts}: {len(board)} pool templates, "
            f"best {metric(best, self.splits):.1%}  {best.template}"
        )
        self.store.write_prompts_csv()
        return board

    def first_turn(self, board: list[Scored]) -> str:
        top, bottom = self.top_and_bottom(board)
        return self.meta.first_turn(self.evaluator.task, self.config.proposals, self.metric_name, top, bottom)

    def feedback_turn(self, board: list[Scored], best_before: Scored, new: list[Scored], rejected: list[dict]) -> str:
        before = metric(best_before, self.splits)
        results = []
        for s in new:
            value = metric(s, self.splits)
            verdict = "better" if value > before else "worse" if value < before else "equal"
            results.append({"template": s.template, "accuracy": value, "previous_best": before, "verdict": verdict})
        top, bottom = self.top_and_bottom(board)
        best = shown(rank(board, self.splits)[:1], self.splits)[0]
        return self.meta.feedback_turn(
            self.evaluator.task, self.config.proposals, self.metric_name, results, rejected, best, top, bottom
        )

    def top_and_bottom(self, board: list[Scored]) -> tuple[list[dict], list[dict]]:
        """The best top_k and the worst bottom_k of the scoreboard (no template in both)."""
        ranked = rank(board, self.splits)
        top = ranked[: self.config.top_k]
        rest = ranked[len(top):]
        bottom = rest[len(rest) - self.config.bottom_k:] if self.config.bottom_k else []
        return shown(top, self.splits), shown(bottom, self.splits)

    # -- one LLM turn ----------------------------------------------------------------------
    def ask(self, messages: list[dict], sent: int, restart: int, reset: int, iteration: int) -> Answer:
        seed = call_seed(self.config.seed, restart, reset, iteration)
        answer = self.llm.chat(
            messages, temperature=self.config.temperature, seed=seed, max_answer_tokens=self.config.max_answer_tokens
        )
        self.timings["llm_s"] += answer.latency_s
        self.store.append(
            "llm_exchange",
            restart=restart, reset=reset, iteration=iteration, call=self.calls,
            model=self.llm.model, seed=seed, temperature=self.config.temperature, request_key=answer.key,
            messages=messages[sent:], n_messages=len(messages), answer=answer.content,
            usage={"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
            latency_s=round(answer.latency_s, 3), cached=answer.cached, source=answer.source,
        )
        self.calls += 1
        return answer

    def take_proposals(self, text: str, board: list[Scored], restart: int, reset: int, iteration: int):
        """Parse, reject with reasons, score the valid new templates; they join the board."""
        call = self.calls - 1
        parsed = parse_proposals(text, self.seen)
        rejected = []
        for r in parsed.rejected:
            self.store.append("reject", restart=restart, reset=reset, iteration=iteration, call=call,
                              template=r.line, reason=r.reason)
            rejected.append({"line": r.line, "reason": r.reason})
        self.score_batch([(t, "llm") for t in parsed.templates], "llm", restart, reset, iteration, call=call)
        new = [self.scores[t] for t in parsed.templates]
        board.extend(new)
        return new, rejected

    # -- scoring ---------------------------------------------------------------------------
    def score_batch(self, items: list[tuple[str, str]], origin: str, restart: int, reset: int | None,
                    iteration: int, call: int | None = None) -> None:
        """Score the templates not scored yet (one evaluator batch) and record them."""
        items = [(t, src) for t, src in items if t not in self.scores]
        todo = [t for t, _ in items if t not in self.stored_scores]
        fresh: dict[str, Score] = {}
        if todo:
            started = time.perf_counter()
            fresh = dict(zip(todo, self.evaluator.score(todo, splits=SCORED_SPLITS)))
            self.timings["scoring_s"] += time.perf_counter() - started
        for template, source in items:
            score = fresh.get(template)
            if score is None:  # read back from the history of the run being resumed
                stored = self.stored_scores[template]
                score = Score(accuracy=stored["accuracy"], loss=stored.get("loss", {}))
            fields = dict(restart=restart, reset=reset, iteration=iteration, template=template, origin=origin,
                          source=source, accuracy=as_floats(score.accuracy), loss=as_floats(score.loss))
            if call is not None:
                fields["call"] = call
            event = self.store.append("score", **fields)
            self.scores[template] = Scored(template, origin, dict(event["accuracy"]), dict(event.get("loss", {})),
                                           order=len(self.scores), restart=restart, reset=reset, iteration=iteration)
            self.seen.add(normalise(template))

    # -- console ---------------------------------------------------------------------------
    def report(self, restart, reset, iteration, new: list[Scored], rejected: list[dict], board) -> None:
        cfg = self.config
        best = rank(list(self.scores.values()), self.splits)[0]
        self.echo(
            f"[restart {restart + 1}/{cfg.restarts} reset {reset + 1}/{cfg.resets} "
            f"iteration {iteration}/{cfg.iterations}] {len(new)} new, {len(rejected)} rejected | "
            f"best {metric(best, self.splits):.1%}  {best.template}"
        )
        for s in rank(new, self.splits):
            self.echo(f"    {metric(s, self.splits):6.1%}  {s.template}")
        for r in rejected[:3]:
            self.echo(f"    rejected  {r['line'][:60]!r}: {r['reason']}")

    # -- the end ---------------------------------------------------------------------------
    def finish(self, stopped: str, started: float) -> SearchResult:
        """Best template and top-k ensemble, with test accuracy (computed here, once)."""
        ranked = rank(list(self.scores.values()), self.splits)
        top = ranked[: max(self.config.ensemble_k, self.config.top_k, 1)]
        stored = self.store.peek()
        if stored is not None and stored["event"] == "final":
            best, ensemble = stored["best"], stored["ensemble"]  # a finished run, resumed: read back
        else:
            best_score = self.evaluator.score([ranked[0].template], splits=("test",))[0]
            best = ranked[0].to_dict()
            best["accuracy"] = {**best["accuracy"], **as_floats(best_score.accuracy)}
            best["loss"] = {**best["loss"], **as_floats(best_score.loss)}
            ensemble = None
            members = [s.template for s in ranked[: self.config.ensemble_k]]
            if len(members) >= 2:
                score = self.evaluator.score_ensemble(members, splits=(*SCORED_SPLITS, "test"))
                ensemble = {"templates": members, "accuracy": as_floats(score.accuracy), "loss": as_floats(score.loss)}
        final = self.store.append(
            "final", stopped=stopped, best=best, ensemble=ensemble, top=[s.to_dict() for s in top]
        )
        self.store.write_prompts_csv()
        summary = self.summary(final, started)
        self.store.write_json("summary.json", summary)
        self.echo(f"best: {best['template']}  " + "  ".join(f"{k} {v:.1%}" for k, v in best["accuracy"].items()))
        if ensemble:
            self.echo(f"ensemble of {len(ensemble['templates'])}: "
                      + "  ".join(f"{k} {v:.1%}" for k, v in ensemble["accuracy"].items()))
        return SearchResult(best=best, ensemble=ensemble, top=final["top"], stopped=stopped, summary=summary)

    def summary(self, final: dict, started: float) -> dict:
        events = self.store.events
        exchanges = [e for e in events if e["event"] == "llm_exchange"]
        asked = [e for e in exchanges if not e.get("cached")]
        return {
            "v": FORMAT_VERSION,
            "run_id": self.store.run_dir.name,
            "dataset": self.evaluator.task.dataset,
            "select": self.config.select,
            "stopped": final["stopped"],
            "best": final["best"],
            "ensemble": final["ensemble"],
            "top": final["top"],
            "counts": {
                "scored": sum(e["event"] == "score" for e in events),
                "scored_from_llm": sum(e["event"] == "score" and e["origin"] == "llm" for e in events),
                "rejected": sum(e["event"] == "reject" for e in events),
                "llm_answers": len(exchanges),
            },
            # The whole run's LLM cost, from its history (a resumed run included).
            "ledger": {
                "calls": len(asked),
                "cache_hits": len(exchanges) - len(asked),
                "prompt_tokens": sum(e["usage"]["prompt_tokens"] for e in asked),
                "completion_tokens": sum(e["usage"]["completion_tokens"] for e in asked),
                "latency_s": round(sum(e.get("latency_s") or 0.0 for e in asked), 3),
                "this_session": self.llm.ledger.to_dict(),
            },
            "timings": {
                "session_wall_s": round(time.time() - started, 3),
                "session_scoring_s": round(self.timings["scoring_s"], 3),
                "session_llm_s": round(self.timings["llm_s"], 3),
            },
            "config": asdict(self.config),
        }
