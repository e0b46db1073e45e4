"""The search: a conversational hill-climb over prompt templates, with a chat LLM as the
optimizer (Liu et al., "Language Models as Black-Box Optimizers for Vision-Language
Models", CVPR 2024).

    for restart in restarts:               a fresh sample of the initial pool, scored; restarts
                                           are independent (own scoreboard) and with
                                           --parallel K run K at a time, with the same result
        for reset in resets:               a new conversation; the scoreboard is kept
            for iteration in iterations:   the LLM sees the top-k / bottom-k templates (or
                                           how its last ones scored) and proposes N more;
                                           valid new ones are scored in one batch
    best template (ranked by --metric on the selection split; agent/ranking.py), the
    top-k ensemble when it beats the best alone on val, and their test accuracy,
    computed once, at the end.

Everything the loop does is appended to the run's history before the next step (see
agent/runstore.py), which is also how a killed run resumes: the loop runs again, scores
and LLM answers already in the history are read back instead of recomputed, and new
events continue where the history ends.

What the LLM is shown and asked lives in the jinja2 meta-prompts (agent/metaprompt.py);
every knob is in `SearchConfig`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from promptclimb.agent.errors import PromptclimbError
from promptclimb.agent.llm import Answer, BudgetExhausted, LLMClient
from promptclimb.agent.metaprompt import MetaPrompt
from promptclimb.agent.pools import PoolTemplate, load_pool, sample_pool
from promptclimb.agent.ranking import DEFAULT_METRIC, METRICS, metric_label, rank_key, selection_value, top_and_bottom
from promptclimb.agent.proposals import DUPLICATE, normalise, parse_proposals
from promptclimb.agent.protocol import Evaluator, Score
from promptclimb.agent.runstore import FORMAT_VERSION, RunStore

SCORED_SPLITS = ("train", "val")  # what every template is scored on during the search
SELECTIONS = {"train": ("train",), "train+val": ("train", "val")}
# Where the ensemble must beat the best template alone to be chosen: a split the templates
# were not ranked on when there is one.
ENSEMBLE_CHOICE = {"train": ("val",), "train+val": ("train", "val")}


@dataclass
class SearchConfig:
    """Every knob of the search (all on `promptclimb search --help`). The defaults fit a
    small budget: 1 restart x 2 resets x 5 iterations = 10 LLM answers."""

    restarts: int = 1
    resets: int = 2
    iterations: int = 5  # LLM turns per conversation
    proposals: int = 5  # new templates scored per turn
    spare: int = 2  # extra templates asked for per turn, so that repeats still leave `proposals` new ones
    unfill: bool = True  # a proposed line naming one class instead of {} becomes a template
    top_k: int = 3  # best templates shown to the LLM
    bottom_k: int = 3  # worst templates shown to the LLM
    pool_sample: int = 30  # initial-pool templates per restart (0 = the whole pool)
    temperature: float = 1.0
    presence_penalty: float = 0.0  # OpenAI's: > 0 discourages tokens already in the conversation
    seed: int = 0
    select: str = "train"  # "train" (as in the paper) or "train+val"
    metric: str = DEFAULT_METRIC  # what templates are ranked by and the LLM is shown (agent/ranking.py)
    ensemble_k: int = 3  # largest ensemble tried at the end (0 or 1 = none); k is chosen on val
    max_answer_tokens: int = 400  # length cap of one LLM answer
    max_calls: int | None = None  # LLM answers in the whole run (cached ones count too)
    max_tokens: int | None = None  # prompt + completion tokens in the whole run
    parallel: int = 1  # restarts run at the same time (their LLM calls overlap; same result)

    def check(self) -> "SearchConfig":
        if self.select not in SELECTIONS:
            raise PromptclimbError(f"select must be one of {', '.join(SELECTIONS)}, not {self.select!r}")
        if self.metric not in METRICS:
            raise PromptclimbError(f"metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        for name in ("restarts", "resets", "iterations", "proposals", "parallel"):
            if getattr(self, name) < 1:
                raise PromptclimbError(f"{name} must be at least 1")
        if self.parallel > 1 and (self.max_calls is not None or self.max_tokens is not None):
            raise PromptclimbError("parallel restarts cannot share a budget cap (which restart gets the last "
                                   "calls would depend on timing): drop --parallel or --max-calls/--max-tokens")
        for name in ("spare", "top_k", "bottom_k", "pool_sample", "ensemble_k", "max_answer_tokens"):
            if getattr(self, name) < 0:
                raise PromptclimbError(f"{name} must not be negative")
        if not 0.0 <= self.temperature <= 2.0:
            raise PromptclimbError("temperature must be between 0 and 2")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise PromptclimbError("presence_penalty must be between -2 and 2")
        return self


@dataclass
class Scored:
    """One template on the scoreboard."""

    template: str
    origin: str  # "pool" | "llm"
    accuracy: dict[str, float]
    loss: dict[str, float]
    order: tuple[int, int]  # (restart, position on its board): the last tie-breaker, earlier wins
    prob: dict[str, float] = field(default_factory=dict)  # mean probability of the true class

    def to_dict(self) -> dict:
        return {"template": self.template, "origin": self.origin, "accuracy": self.accuracy, "loss": self.loss,
                "prob": self.prob}


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


def value(s: Scored, splits: Sequence[str], metric: str) -> float:
    """What `s` is ranked by and shown as (agent/ranking.py)."""
    return selection_value(s.accuracy, s.prob, splits, metric)


def rank(board: Sequence[Scored], splits: Sequence[str], metric: str = "accuracy") -> list[Scored]:
    """Best first: higher value on the selection splits, then lower cross-entropy, then
    scored earlier."""
    return sorted(board, key=lambda s: rank_key(value(s, splits, metric), s.loss, splits, s.order))


def shown(scored: Sequence[Scored], splits: Sequence[str], metric: str) -> list[dict]:
    """Templates as the meta-prompts see them: text and the value they are ranked by."""
    return [{"template": s.template, "accuracy": value(s, splits, metric)} for s in scored]


class LaneStopped(Exception):
    """Another lane failed or the run was interrupted: this lane takes no further turn."""


class Turns:
    """Restarts running in parallel lanes (threads) take turns at what they share: the
    evaluator, the run's score table and its history. Only the LLM calls happen outside a
    turn, so they overlap. Turns go round the lanes in a fixed order (lane 0, 1, ..., K-1,
    0, ...; a lane that is done drops out), so a parallel run writes the same history every
    time, and a killed one resumes by replaying it."""

    def __init__(self, lanes: int):
        self._cond = threading.Condition()
        self._taken = {lane: 0 for lane in range(lanes)}  # turns taken, per lane still running
        self._busy = False
        self.failure: BaseException | None = None

    @contextmanager
    def turn(self, lane: int):
        with self._cond:
            self._cond.wait_for(lambda: self.failure is not None or self._next() == lane)
            if self.failure is not None:
                raise LaneStopped()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._taken[lane] += 1
                self._busy = False
                self._cond.notify_all()

    def _next(self) -> int:
        return min(self._taken, key=lambda lane: (self._taken[lane], lane))

    def leave(self, lane: int) -> None:
        with self._cond:
            self._taken.pop(lane, None)
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        """Stop every lane at its next turn; the first failure is the one reported."""
        with self._cond:
            self.failure = self.failure or exc
            self._cond.notify_all()

    def wait_idle(self) -> None:
        """Until no lane is inside a turn (so the history is not written to any more)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._busy)


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
        self.metric_name = metric_label(self.config.metric, self.splits)
        self.asked = self.config.proposals + self.config.spare  # templates asked for per turn
        # Every template scored in the run, as it first appears (lowest restart, then position).
        self.scores: dict[str, Scored] = {}
        self.turns = Turns(1)
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
            self.run_restarts()
        except BudgetExhausted as exc:
            stopped = f"budget: {exc}"
            self.store.append("stop", reason=stopped)
            self.echo(f"stopping early: {exc}")
        return self.finish(stopped, started)

    def run_restarts(self) -> None:
        """Every restart: one after another, or with `parallel` K in K lanes (threads; lane l
        runs restarts l, l+K, ...) that take turns at the evaluator and the history."""
        lanes = min(self.config.parallel, self.config.restarts)
        self.turns = Turns(lanes)
        if lanes == 1:
            for restart in range(self.config.restarts):
                self.run_restart(restart, lane=0)
            return
        threads = [threading.Thread(target=self.run_lane, args=(lane, lanes), name=f"restart-lane-{lane}", daemon=True)
                   for lane in range(lanes)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.1)  # short waits: Ctrl-C and SIGTERM still reach this thread
        except BaseException as exc:
            self.turns.fail(exc)
            self.turns.wait_idle()  # a lane inside its turn finishes writing its step
            raise
        if self.turns.failure is not None:
            raise self.turns.failure

    def run_lane(self, lane: int, lanes: int) -> None:
        try:
            for restart in range(lane, self.config.restarts, lanes):
                self.run_restart(restart, lane)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            self.turns.fail(exc)
        finally:
            self.turns.leave(lane)

    def run_restart(self, restart: int, lane: int) -> None:
        """One restart: a pool sample, then `resets` conversations of `iterations` LLM turns.
        Everything but the LLM call happens inside a turn of its lane."""
        cfg = self.config
        with self.turns.turn(lane):
            board = self.start_restart(restart)
        for reset in range(cfg.resets):
            with self.turns.turn(lane):
                self.store.append("reset", restart=restart, reset=reset)
                messages = [
                    {"role": "system", "content": self.meta.system(self.evaluator.task, self.asked)},
                    {"role": "user", "content": self.first_turn(board)},
                ]
            sent = 0  # messages already recorded in this conversation's history
            for iteration in range(1, cfg.iterations + 1):
                answer = self.ask(messages, restart, reset, iteration)
                with self.turns.turn(lane):
                    self.record_exchange(answer, messages, sent, restart, reset, iteration)
                    sent = len(messages)
                    messages.append({"role": "assistant", "content": answer.content})
                    best_before = self.ranked(board)[0]
                    new, rejected = self.take_proposals(answer.content, board, restart, reset, iteration)
                    self.print_progress(restart, reset, iteration, new, rejected)
                    messages.append({"role": "user", "content": self.feedback_turn(board, best_before, new, rejected)})
                    self.store.write_prompts_csv()

    def start_restart(self, restart: int) -> list[Scored]:
        """A fresh pool sample, scored: the restart's own board."""
        sample = sample_pool(self.pool, self.config.pool_sample, self.config.seed, restart)
        self.store.append("restart", restart=restart, pool=[p.template for p in sample])
        board: list[Scored] = []
        self.score_batch([(p.template, p.source) for p in sample], "pool", board, restart, reset=None, iteration=0)
        best = self.ranked(board)[0]
        self.echo(
            f"restart {restart + 1}/{self.config.restarts}: {len(board)} pool templates, "
            f"best {self.value(best):.1%}  {best.template}"
        )
        self.store.write_prompts_csv()
        return board

    def first_turn(self, board: list[Scored]) -> str:
        top, bottom = self.top_and_bottom(board)
        return self.meta.first_turn(self.evaluator.task, self.asked, self.metric_name, top, bottom)

    def feedback_turn(self, board: list[Scored], best_before: Scored, new: list[Scored], rejected: list[dict]) -> str:
        before = self.value(best_before)
        results = []
        for s in new:
            value = self.value(s)
            verdict = "better" if value > before else "worse" if value < before else "equal"
            results.append({"template": s.template, "accuracy": value, "previous_best": before, "verdict": verdict})
        top, bottom = self.top_and_bottom(board)
        best = shown(self.ranked(board)[:1], self.splits, self.config.metric)[0]
        return self.meta.feedback_turn(
            self.evaluator.task, self.asked, self.metric_name, results, rejected, best, top, bottom
        )

    def top_and_bottom(self, board: list[Scored]) -> tuple[list[dict], list[dict]]:
        """The best top_k and the worst bottom_k of the scoreboard (no template in both)."""
        top, bottom = top_and_bottom(self.ranked(board), self.config.top_k, self.config.bottom_k)
        return shown(top, self.splits, self.config.metric), shown(bottom, self.splits, self.config.metric)

    def ranked(self, board) -> list[Scored]:
        return rank(list(board), self.splits, self.config.metric)

    def value(self, s: Scored) -> float:
        return value(s, self.splits, self.config.metric)

    # -- one LLM turn ----------------------------------------------------------------------
    def ask(self, messages: list[dict], restart: int, reset: int, iteration: int) -> Answer:
        """The LLM's answer (the one step that parallel restarts take at the same time)."""
        seed = call_seed(self.config.seed, restart, reset, iteration)
        return self.llm.chat(
            messages, temperature=self.config.temperature, seed=seed, max_answer_tokens=self.config.max_answer_tokens,
            presence_penalty=self.config.presence_penalty,
        )

    def record_exchange(self, answer: Answer, messages: list[dict], sent: int, restart: int, reset: int,
                        iteration: int) -> None:
        self.timings["llm_s"] += answer.latency_s
        self.store.append(
            "llm_exchange",
            restart=restart, reset=reset, iteration=iteration, call=self.calls,
            model=self.llm.model, seed=call_seed(self.config.seed, restart, reset, iteration),
            temperature=self.config.temperature, request_key=answer.key,
            messages=messages[sent:], n_messages=len(messages), answer=answer.content,
            usage={"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
            latency_s=round(answer.latency_s, 3), cached=answer.cached, source=answer.source,
            **({"answer_truncated": {"kept_chars": len(answer.content), "received_chars": answer.truncated_from}}
               if answer.truncated_from else {}),
        )
        self.calls += 1

    def take_proposals(self, text: str, board: list[Scored], restart: int, reset: int, iteration: int):
        """Parse, reject with reasons, score the first `proposals` valid new templates (the
        spare ones asked for only stand in for repeats: of templates on this restart's
        board); they join the board."""
        call = self.calls - 1
        classnames = self.evaluator.task.classnames if self.config.unfill else ()
        parsed = parse_proposals(text, {normalise(s.template) for s in board}, classnames=classnames)
        parsed.templates = parsed.templates[: self.config.proposals]
        # Why nothing could be scored, for the console (`report`); rejections say it themselves.
        self.nothing_to_score = ("the answer was empty" if not text.strip() else "no line had a {} placeholder"
                                 if not parsed.templates and not parsed.rejected else None)
        rejected = []
        for r in parsed.rejected:
            self.store.append("reject", restart=restart, reset=reset, iteration=iteration, call=call,
                              template=r.line, reason=r.reason)
            rejected.append({"line": r.line, "reason": r.reason, "duplicate": r.reason == DUPLICATE})
        unfilled = set(parsed.unfilled)  # written for one class: its name turned back into {}
        new = self.score_batch([(t, "llm-unfilled" if t in unfilled else "llm") for t in parsed.templates], "llm",
                               board, restart, reset, iteration, call=call)
        return new, rejected

    # -- scoring ---------------------------------------------------------------------------
    def score_batch(self, items: list[tuple[str, str]], origin: str, board: list[Scored], restart: int,
                    reset: int | None, iteration: int, call: int | None = None) -> list[Scored]:
        """Put templates on a restart's board, scored; returns those added. The evaluator
        scores, in one batch, only what the run has not scored yet (nor its history, when
        resumed). Each template is recorded once in the history, under the first restart (in
        turn order) to score it; another restart takes its score from the run's table. The
        table keeps a template's first appearance, (lowest restart, position), which breaks
        the final ranking's last ties, so parallel and sequential restarts rank alike."""
        on_board = {s.template for s in board}
        items = [(t, src) for t, src in items if t not in on_board]
        todo = [t for t, _ in items if t not in self.scores and t not in self.stored_scores]
        fresh: dict[str, Score] = {}
        if todo:
            started = time.perf_counter()
            fresh = dict(zip(todo, self.evaluator.score(todo, splits=SCORED_SPLITS)))
            self.timings["scoring_s"] += time.perf_counter() - started
        added = []
        for template, source in items:
            first = self.scores.get(template)
            if first is None:
                score = fresh.get(template)
                if score is None:  # read back from the history of the run being resumed
                    stored = self.stored_scores[template]
                    score = Score(accuracy=stored["accuracy"], loss=stored.get("loss", {}), prob=stored.get("prob", {}))
                fields = dict(restart=restart, reset=reset, iteration=iteration, template=template, origin=origin,
                              source=source, accuracy=as_floats(score.accuracy), loss=as_floats(score.loss),
                              prob=as_floats(score.prob))
                if call is not None:
                    fields["call"] = call
                event = self.store.append("score", **fields)
                values = (event["accuracy"], event.get("loss", {}), event.get("prob", {}))
            else:
                values = (first.accuracy, first.loss, first.prob)
            scored = Scored(template, origin, dict(values[0]), dict(values[1]), order=(restart, len(board)),
                            prob=dict(values[2]))
            board.append(scored)
            added.append(scored)
            if first is None or scored.order < first.order:
                self.scores[template] = scored
        return added

    # -- console ---------------------------------------------------------------------------
    def print_progress(self, restart, reset, iteration, new: list[Scored], rejected: list[dict]) -> None:
        """The console line of one LLM turn (then its new templates and a few rejections)."""
        cfg = self.config
        best = self.ranked(self.scores.values())[0]
        self.echo(
            f"[restart {restart + 1}/{cfg.restarts} reset {reset + 1}/{cfg.resets} "
            f"iteration {iteration}/{cfg.iterations}] {len(new)} new, {len(rejected)} rejected"
            + (f" ({self.nothing_to_score})" if getattr(self, "nothing_to_score", None) else "")
            + f" | best {self.value(best):.1%}  {best.template}"
        )
        for s in self.ranked(new):
            self.echo(f"    {self.value(s):6.1%}  {s.template}")
        for r in rejected[:3]:
            self.echo(f"    rejected  {r['line'][:60]!r}: {r['reason']}")

    # -- the end ---------------------------------------------------------------------------
    def finish(self, stopped: str, started: float) -> SearchResult:
        """Best template and top-k ensemble, with test accuracy (computed here, once)."""
        ranked = self.ranked(self.scores.values())
        top = ranked[: max(self.config.ensemble_k, self.config.top_k, 1)]
        stored = self.store.peek()
        if stored is not None and stored["event"] == "final":
            best, ensemble = stored["best"], stored["ensemble"]  # a finished run, resumed: read back
        else:
            best_score = self.evaluator.score([ranked[0].template], splits=("test",))[0]
            best = ranked[0].to_dict()
            best["accuracy"] = {**best["accuracy"], **as_floats(best_score.accuracy)}
            best["loss"] = {**best["loss"], **as_floats(best_score.loss)}
            best["prob"] = {**best["prob"], **as_floats(best_score.prob)}
            ensemble = self.choose_ensemble(ranked)
        final = self.store.append(
            "final", stopped=stopped, best=best, ensemble=ensemble, top=[s.to_dict() for s in top]
        )
        self.store.write_prompts_csv()
        summary = self.summary(final, started)
        self.store.write_json("summary.json", summary)
        self.echo(f"best: {best['template']}  " + "  ".join(f"{k} {v:.1%}" for k, v in best["accuracy"].items()))
        if ensemble:
            verdict = "chosen" if ensemble["chosen"] else "a candidate only"
            self.echo(f"ensemble of {len(ensemble['templates'])} ({verdict}: {ensemble['reason']}): "
                      + "  ".join(f"{k} {v:.1%}" for k, v in ensemble["accuracy"].items()))
        return SearchResult(best=best, ensemble=ensemble, top=final["top"], stopped=stopped, summary=summary)

    def choose_ensemble(self, ranked: list[Scored]) -> dict | None:
        """The best top-k ensemble (k = 2..ensemble_k) on the choice split, chosen only when it
        beats the best template alone there (agreement with the paper: one template by
        default; an ensemble must earn its place). Ties go to the smaller k."""
        on = ENSEMBLE_CHOICE[self.config.select]
        alone = selection_value(ranked[0].accuracy, ranked[0].prob, on, self.config.metric)
        tried, best = {}, None
        for k in range(2, min(self.config.ensemble_k, len(ranked)) + 1):
            members = [s.template for s in ranked[:k]]
            score = self.evaluator.score_ensemble(members, splits=(*SCORED_SPLITS, "test"))
            tried[k] = selection_value(score.accuracy, score.prob, on, self.config.metric)
            if best is None or tried[k] > tried[best[0]]:
                best = (k, members, score)
        if best is None:
            return None
        k, members, score = best
        chosen = tried[k] > alone
        where = " + ".join(on)
        reason = (f"{where} {tried[k]:.1%} vs {alone:.1%} for the best template alone "
                  f"({self.config.metric}; k tried: {', '.join(map(str, tried))})")
        return {"templates": members, "accuracy": as_floats(score.accuracy), "loss": as_floats(score.loss),
                "prob": as_floats(score.prob), "chosen": chosen, "chosen_on": list(on), "reason": reason,
                "tried": {str(k): v for k, v in tried.items()}, "alone": alone}

    def summary(self, final: dict, started: float) -> dict:
        events = self.store.events
        exchanges = [e for e in events if e["event"] == "llm_exchange"]
        asked = [e for e in exchanges if not e.get("cached")]
        return {
            "v": FORMAT_VERSION,
            "run_id": self.store.run_dir.name,
            "dataset": self.evaluator.task.dataset,
            "select": self.config.select,
            "metric": self.config.metric,
            "stopped": final["stopped"],
            # what to use: the best template, or the ensemble when it beat it on val
            "winner": "ensemble" if (final["ensemble"] or {}).get("chosen") else "best",
            "best": final["best"],
            "ensemble": final["ensemble"],
            "top": final["top"],
            "counts": {
                "scored": sum(e["event"] == "score" for e in events),
                "scored_from_llm": sum(s.origin == "llm" for s in self.scores.values()),  # as first proposed
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
