"""The search: a conversational hill-climb over prompt templates, with a chat LLM as the
optimizer (Liu et al., "Language Models as Black-Box Optimizers for Vision-Language
Models", CVPR 2024).

    for restart in restarts:               a fresh sample of the initial pool, scored; restarts
                                           are independent (own scoreboard) and with
                                           --parallel K run K at a time, with the same result
        for reset in resets:               a new conversation; the scoreboard is kept
            for iteration in iterations:   a template turn or a names turn (`turn_kind`):
                                           template: the LLM sees the top-k / bottom-k
                                           templates (or how its last ones scored) and
                                           proposes N more; valid new ones are scored in
                                           one batch, under the current best names (an
                                           answer with nothing to score: the next turn
                                           opens a new conversation, `starts_over`)
                                           names: the LLM renames the weakest classes of
                                           the current best (template, names); each name
                                           is scored as a one-class change (agent/names.py)
                                           either way a new best must hold up on val
                                           (`held_out_worse`, --confirm); a template
                                           conversation that would outgrow the LLM's
                                           context, or that the endpoint refuses as longer
                                           than it, starts a new one (`continuation`,
                                           `ask_template`)
    best (template, names) pair (ranked by --metric on the selection split;
    agent/ranking.py), the top-k ensemble with those names when it beats the best alone
    on val, and their test accuracy, computed once, at the end.

Everything the loop does is appended to the run's history before the next step (see
agent/runs/store.py), which is also how a killed run resumes: the loop runs again, scores
and LLM answers already in the history are read back instead of recomputed, and new
events continue where the history ends.

What the LLM is shown and asked lives in the jinja2 meta-prompts (agent/metaprompt.py);
every knob is in `SearchConfig`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

from promptclimb.agent import names as naming
from promptclimb.agent.core.classnames import name_key
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.format import pct, pct_by_split, shell_command, shortened
from promptclimb.agent.llm.answers import Answer, BudgetExhausted, ContextExceeded, LLMError
from promptclimb.agent.llm.client import LLMClient
from promptclimb.agent.metaprompt import MetaPrompt
from promptclimb.agent.core.pools import PoolTemplate, load_pool, sample_pool
from promptclimb.agent.ranking import (DEFAULT_METRIC, METRICS, best_first, labelled_metric, metric_label, rank_key,
                                       selection_value, then_value, top_and_bottom, worse_on)
from promptclimb.agent.proposals import DUPLICATE, normalise, parse_proposals, why_nothing_read
from promptclimb.agent.core.protocol import UNLABELED_SPLIT, Evaluator, Score, Task
from promptclimb.agent.core.runfiles import SUMMARY
from promptclimb.agent.runs.compact import summary_table
from promptclimb.agent.runs.store import (ANSWER_KINDS, FORMAT_VERSION, RunStore, ledger, ledger_by_kind, names_scored,
                                          run_argument)

SCORED_SPLITS = ("train", "val")  # what every template is scored on during the search
SELECTIONS = {"train": ("train",), "train+val": ("train", "val")}
# Where the ensemble must beat the best template alone to be chosen: a split the templates
# were not ranked on when there is one.
ENSEMBLE_CHOICE = {"train": ("val",), "train+val": ("train", "val")}
SEARCHES = ("template", "names", "both")  # what the LLM rewrites (`turn_kind`)
# Whether a change of the best must also hold on the scored split it was not ranked on (val,
# under --select train): at 1 shot, train is one image per class and a new best there is
# often noise (`HillClimber.held_out_worse`).
CONFIRMS = ("val", "off")
HELD_BACK = "better on the selection split, worse on the held-out one"  # a template's reject reason
# What a run whose config.json predates a setting ran with (read back on --resume).
RECORDED_BEFORE_IT_EXISTED = {"confirm": "off"}
DEFAULT_SEARCH = "both"
REFUSALS_PRINTED = 3  # refused lines or names the console prints per turn; `show` lists every one
# A pool sample this large is said before it is scored (300 templates took 9 s to encode on 2 cores).
MANY_POOL_TEMPLATES = 200


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
    search: str = DEFAULT_SEARCH  # "template" | "names" (the class names) | "both": which turns (`turn_kind`)
    names_k: int = 3  # weakest classes a names turn asks new names for
    names_per_class: int = 4  # names asked for each of them
    guard: str = "own+judge"  # what a kept new name must pass (agent/names.py GUARDS): "own+judge", "own", "judge", "off"
    confirm: str = "val"  # "val": a new best (an LLM template, a name) must be no worse on val, which it was not ranked on; "off"

    def check(self) -> "SearchConfig":
        if self.select not in SELECTIONS:
            raise PromptclimbError(f"select must be one of {', '.join(SELECTIONS)}, not {self.select!r}")
        if self.metric not in METRICS:
            raise PromptclimbError(f"metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if self.search not in SEARCHES:
            raise PromptclimbError(f"search must be one of {', '.join(SEARCHES)}, not {self.search!r}")
        if self.guard not in naming.GUARDS:
            raise PromptclimbError(f"guard must be one of {', '.join(naming.GUARDS)}, not {self.guard!r}")
        if self.confirm not in CONFIRMS:
            raise PromptclimbError(f"confirm must be one of {', '.join(CONFIRMS)}, not {self.confirm!r}")
        # (top_k 0, which showed the LLM an empty "best templates so far", is refused as a new
        # run's option, agent/options.py; a run recorded with it before still resumes)
        for name in ("restarts", "resets", "iterations", "proposals", "parallel", "names_k", "names_per_class"):
            if getattr(self, name) < 1:
                raise PromptclimbError(f"{name} must be at least 1")
        # one restart, or --parallel 1, runs in one lane: nothing shares the cap
        if min(self.parallel, self.restarts) > 1 and (self.max_calls is not None or self.max_tokens is not None):
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

    def over_asks(self) -> list[str]:
        """One note for each setting that asks more than the run can do, and what it does
        instead (said when a run starts, `HillClimber.say_over_asks`): they passed unsaid."""
        notes = []
        if self.ensemble_k == 1:
            notes.append("--ensemble 1: an ensemble takes 2 or more templates, so none is tried (as --ensemble 0)")
        if self.parallel > self.restarts:
            notes.append(f"--parallel {self.parallel} with {self.restarts} restart{'s' if self.restarts > 1 else ''}: "
                         + ("nothing to run at the same time, the restart runs alone" if self.restarts == 1
                            else f"{self.restarts} run at the same time"))
        return notes

    def asks_no_llm(self) -> bool:
        """Whether the budget allows no LLM answer at all (--max-calls 0, --max-tokens 0):
        the run is the restarts' pool samples, scored."""
        return self.max_calls == 0 or self.max_tokens == 0


@dataclass
class Scored:
    """One template on the scoreboard."""

    template: str
    origin: str  # "pool" | "llm"
    accuracy: dict[str, float]
    loss: dict[str, float]
    order: tuple[int, int]  # (restart, position on its board): the last tie-breaker, earlier wins
    prob: dict[str, float] = field(default_factory=dict)  # mean probability of the true class
    names: tuple[str, ...] | None = None  # the class names it was scored with (None: the start names)
    balance: dict[str, float] = field(default_factory=dict)  # on the unlabeled images (--metric balance)

    def to_dict(self) -> dict:
        out = {"template": self.template, "origin": self.origin, "accuracy": self.accuracy, "loss": self.loss,
               "prob": self.prob, **with_balance(self.balance)}
        return out if self.names is None else {**out, "names": list(self.names)}

    @property
    def key(self) -> tuple:
        """What the run's score table knows it by: the template and its names."""
        return (self.template, self.names)


@dataclass
class ClimbResult:
    """What `HillClimber.run` found (the public `SearchResult`, agent/api.py, is read from
    the summary.json the run writes)."""

    best: dict  # {template, origin, accuracy {train, val, test}, loss}
    ensemble: dict | None  # {templates, accuracy, loss}
    top: list[dict]
    stopped: str  # "completed" or why the search ended early
    summary: dict = field(default_factory=dict)
    classnames: tuple[str, ...] = ()  # the names of the best pair (the start names when none was changed)


def turn_kind(search: str, iteration: int, iterations: int) -> str:
    """Whether LLM turn `iteration` (1-based, of `iterations` inside a reset) is a "template"
    or a "names" turn. With "both", every turn is a names turn but a reset's last, which
    climbs the template under the names found (a reset of one turn: names). The bench chose
    it over turns that alternate, names first (docs/results.md, "Class names in the climb";
    embedded LLM, seeds 1-5, four configurations): 89.1 against 88.7 test accuracy on mean,
    +1.8 at 4 shots. Names turns alone scored 89.6: the template turns the small LLM writes
    tend to fit the few training images rather than the task. This is the one place."""
    if search == "both":
        return "template" if iteration == iterations > 1 else "names"
    return search


def starts_over(new: list, held: list) -> bool:
    """Whether the next template turn opens a fresh conversation (the system message and a
    first turn showing the board as it is now) rather than continuing this one: when nothing
    of the last answer could be scored. A 1.5B model that has answered with only repeats or
    refused lines writes them again in the next turns of the same conversation: in 40
    template-only bench runs, 97 of 400 answers had nothing to score, and 13 runs lost three
    to five turns of a reset that way; with this rule 45 and 1, test accuracy level
    (docs/results.md, "Templates that name a class, refused lines, stuck conversations")."""
    return not new and not held


def outgrows_context(context: int | None, used: int, next_message: str, answer_tokens: int) -> bool:
    """Whether a template conversation that has used `used` tokens (its last request's prompt
    and answer) would pass the LLM's `context` with `next_message` and an answer of up to
    `answer_tokens`: then the next turn opens a fresh conversation, as after `starts_over`.
    A template-only conversation grows by about 300 tokens a turn on the demo: with
    `--iterations 44` its 43rd request (8,387 prompt tokens and a 256-token answer) passed
    the embedded model's 8,192, the server refused it, and the run could not go on, resumed
    or not; with this rule the 42nd turn opened a new conversation. The message's tokens
    are estimated from its characters, generously (3 a token). `context` None: not known."""
    if context is None:
        return False
    return used + len(next_message) // 3 + answer_tokens > context


def cut_to_nothing(answer: Answer, max_answer_tokens: int | None) -> dict | None:
    """{tokens: the answer cap it was cut at (None: the endpoint's own limit, or no cap set),
    chars: the characters it had} for an answer whose first line a cap cut, so that nothing of
    it was kept (agent/llm/client.py `chat`, `whole_lines`); None for any other answer. The
    next turn of its kind tells the LLM (`cut` in first_turn.j2 and names_turn.j2): a small
    model that wrote one runaway line writes it again. Read from `truncated_from`, which a
    resumed run replays from the history (`answer_truncated`), so its requests are the same."""
    if not answer.truncated_from or answer.content.strip():
        return None
    return {"tokens": max_answer_tokens, "chars": answer.truncated_from}


def call_seed(seed: int, restart: int, reset: int, iteration: int) -> int:
    """The `seed` sent with one LLM request: fixed by the run's seed and the call's place."""
    digest = hashlib.sha256(f"{seed}:{restart}:{reset}:{iteration}".encode()).hexdigest()
    return int(digest[:8], 16) % (2**31 - 1)


LLM_EVENTS = tuple(ANSWER_KINDS)  # the history's LLM answers, of every kind
JUDGE_ANSWER_TOKENS = 12  # the guard's answer is one class name


@dataclass
class NamesState:
    """What a restart's names turns remember: per class, the names tried for it (name key ->
    the name as first written; its start name included) and the names turns in a row that
    asked about it and kept no new name; and what the last names turn showed back to the
    LLM (results and refusals, for the next one)."""

    tried: dict[int, dict[str, str]]
    fruitless: dict[int, int] = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    cut: dict | None = None  # the last names answer, cut to nothing (`cut_to_nothing`)


def apply_changes(names: tuple[str, ...], changes: Sequence[tuple[int, str]]) -> tuple[str, ...]:
    out = list(names)
    for c, name in changes:
        out[c] = name
    return tuple(out)


def names_kwargs(names: tuple[str, ...] | None) -> dict:
    """The evaluator's `classnames` argument: none at all for the start names, so an
    evaluator is called exactly as before names turns existed."""
    return {} if names is None else {"classnames": names}


def _names_of(event: dict) -> tuple[str, ...] | None:
    return tuple(event["names"]) if event.get("names") is not None else None


def stored_score(event: dict) -> Score:
    """A score as the history holds it."""
    return Score(accuracy=event["accuracy"], loss=event.get("loss", {}), prob=event.get("prob", {}),
                 balance=event.get("balance", {}))


def with_balance(balance: dict) -> dict:
    """An event's `balance` field: there only when measured (--metric balance), so the
    events of every other run read as before."""
    return {"balance": as_floats(balance)} if balance else {}


def first_of_each_template(ranked: Sequence[Scored]) -> list[Scored]:
    """Each template once, at its first (best) place."""
    seen, out = set(), []
    for s in ranked:
        if s.template not in seen:
            seen.add(s.template)
            out.append(s)
    return out


def verdict(value: float, before: float) -> str:
    return "better" if value > before else "worse" if value < before else "equal"


def as_floats(values: dict) -> dict[str, float]:
    """Plain floats (an evaluator may hand back numpy scalars, which JSON cannot hold)."""
    return {str(k): float(v) for k, v in (values or {}).items()}


def value(s: Scored, splits: Sequence[str], metric: str) -> float:
    """What `s` is ranked by and shown as (agent/ranking.py)."""
    return selection_value(s.accuracy, s.prob, splits, metric, s.balance)


def rank(board: Sequence[Scored], splits: Sequence[str], metric: str = "accuracy") -> list[Scored]:
    """Best first: higher value on the selection splits (under --metric balance, then
    higher accuracy), then lower cross-entropy, then scored earlier."""
    return best_first(board, splits, value=lambda s: value(s, splits, metric), loss=lambda s: s.loss,
                      order=lambda s: s.order, then=lambda s: then_value(s.accuracy, splits, metric))


def shown(scored: Sequence[Scored], splits: Sequence[str], metric: str) -> list[dict]:
    """Templates as the meta-prompts see them: text and the value they are ranked by."""
    return [{"template": s.template, "value": value(s, splits, metric)} for s in scored]


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


def recorded_adapter(run_dir) -> dict | None:
    """The adapter section `promptclimb adapt` wrote into a finished run's summary.json, or
    None (none, or a summary that cannot be read: it is written anew all the same)."""
    try:
        section = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8")).get("adapter")
    except (OSError, ValueError, AttributeError):
        return None
    return section if isinstance(section, dict) else None


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
        self.guards = naming.guard_checks(self.config.guard)  # what a kept new name must pass
        # What a new best is confirmed on: the scored splits it was not ranked on (none under
        # --select train+val).
        self.held_out = tuple(s for s in SCORED_SPLITS if s not in self.splits) if self.config.confirm == "val" else ()
        # What every proposal is scored on: under --metric balance, the unlabeled images too.
        self.scored_splits = SCORED_SPLITS + ((UNLABELED_SPLIT,) if self.config.metric == "balance" else ())
        self.metric_label = metric_label(self.config.metric, self.splits)  # what the meta-prompts call the value
        self.asked = self.config.proposals + self.config.spare  # templates asked for per turn
        # Every (template, names) scored in the run, as it first appears (lowest restart, then
        # position); names None: the start names.
        self.scores: dict[tuple, Scored] = {}
        self.start_names = tuple(evaluator.task.classnames)
        self.names_states: dict[int, NamesState] = {}  # per restart
        # Per restart, the (template, names) held back on val: proposing one again is a
        # repeat, as for a template on the board (the LLM was told its score).
        self.held_back: dict[int, set[tuple]] = {}
        # Per restart, the lines refused as templates (normalised): one written again is a
        # repeat, counted and not listed, as a small model shown a line copies it again.
        self.refused_lines: dict[int, set[str]] = {}
        # Per restart, the last template answer if a cap cut it to nothing (`cut_to_nothing`): the
        # conversation the next template turn opens says so.
        self.template_cut: dict[int, dict | None] = {}
        self.turns = Turns(1)
        # The LLM's context as the continuations see it: lowered by a refusal inside the lane's
        # turn that handles it, so parallel restarts see it change at the same step every run
        # (the client learns it when the answer comes, which is timing).
        self.context_tokens = getattr(llm, "context_tokens", None)
        self.calls = 0
        self.timings = {"scoring_s": 0.0, "llm_s": 0.0}
        self.said_where_refusals_are = False  # the console names `show` once (`print_more`)
        # On resume: what the history already knows is read back, never recomputed.
        self.stored_scores = {(e["template"], _names_of(e)): e for e in store.stored_of("score")}
        self.stored_name_scores = {(e["template"], _names_of(e)): e for e in store.stored_of("name_score")}
        self.name_scores: dict[tuple, Score] = {}  # (template, names) -> score, of names variants
        for kind in LLM_EVENTS:
            for e in store.stored_of(kind):
                llm.remember(e["request_key"], {"content": e["answer"], **(e.get("usage") or {}),
                                                **({"model": e["answered_by"]} if e.get("answered_by") else {}),
                                                **({"truncated_from": e["answer_truncated"]["received_chars"]}
                                                   if e.get("answer_truncated") else {})})
                if e.get("context_refused"):
                    llm.remember_refusal(e["context_refused"]["request_key"], e["context_refused"]["context_tokens"])

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> ClimbResult:
        started = time.time()
        self.check_unlabeled()
        self.say_over_asks()
        self.store.append("run_start", run_id=self.store.run_dir.name, start_names=list(self.start_names))
        stopped = "completed"
        try:
            self.run_restarts()
        except BudgetExhausted as exc:
            stopped = f"budget: {exc}"
            self.store.append("stop", reason=stopped)
            self.echo(f"stopping early: {exc}")
        except ContextExceeded as exc:
            # Only a conversation's first request gets here (names turns and guard questions
            # are nothing else; a longer template conversation starts over, `ask_template`).
            raise LLMError(
                f"the LLM's context ({exc.context_tokens:,} tokens, as its endpoint says) is too small for "
                "promptclimb's prompts: it refused the first message of a conversation. Serve the model with a "
                f"larger context (promptclimb llm serve --n-ctx {max(2 * exc.context_tokens, 8192)}), use a model "
                "with a longer one, or start a new run with shorter prompts (--top-k, --bottom-k, --names-k, "
                "--max-answer-tokens: a resume keeps the run's)"
            ) from None
        return self.finish(stopped, started)

    def check_unlabeled(self) -> None:
        """Under --metric balance, one template scored on the split "unlabeled" first: an
        evaluator that cannot score it (a user's, built without unlabeled images) is refused
        in one line before the first turn, not with a KeyError deep inside the ranking."""
        if self.config.metric != "balance":
            return
        try:
            score = self.evaluator.score([self.pool[0].template], splits=(UNLABELED_SPLIT,))[0]
            why = "" if UNLABELED_SPLIT in score.balance else "it returned no balance for it"
        except Exception as exc:  # the evaluator's own error, passed on in the message
            why = f"{type(exc).__name__}: {exc}"
        if why:
            raise PromptclimbError(
                f"--metric balance ranks by how evenly the predictions spread over images scored without their "
                f"labels (the split {UNLABELED_SPLIT!r}), and the evaluator cannot score that split ({why}); build "
                f"it with unlabeled images (the factory's `unlabeled` keyword) or use another --metric")

    def say_over_asks(self) -> None:
        """The settings that ask more than this run can do, each in one note saying what it does
        instead (`SearchConfig.over_asks`, and those that need the pool and the classes), when
        the run starts (a resume has said them). --names-k and --pool-sample at their defaults
        are not said: 3 names of a 2-class dataset, or 30 of a 10-line --pool FILE, were not
        asked for."""
        if self.store.stored:
            return
        cfg, defaults = self.config, SearchConfig()
        notes = cfg.over_asks()
        classes = len(self.start_names)
        takes_names = any(turn_kind(cfg.search, i, cfg.iterations) == "names" for i in range(1, cfg.iterations + 1))
        if takes_names and cfg.names_k > classes and cfg.names_k != defaults.names_k:
            notes.append(f"--names-k {cfg.names_k}: the data has {classes} classes, so a names turn asks for "
                         f"all {classes} at most")
        if cfg.pool_sample > len(self.pool) and cfg.pool_sample != defaults.pool_sample:
            notes.append(f"--pool-sample {cfg.pool_sample}: the pool has {len(self.pool)} templates, so each restart "
                         "scores all of them (as --pool-sample 0)")
        for note in notes:
            self.echo(f"note: {note}")

    def run_restarts(self) -> None:
        """Every restart: one after another, or with `parallel` K in K lanes (threads; lane l
        runs restarts l, l+K, ...) that take turns at the evaluator and the history. A budget
        that allows no LLM answer (`asks_no_llm`) still scores every restart's pool sample
        (it had stopped the run at restart 1's first turn), then stops the run."""
        lanes = min(self.config.parallel, self.config.restarts)
        self.turns = Turns(lanes)
        if lanes == 1:
            spent = None
            for restart in range(self.config.restarts):
                try:
                    self.run_restart(restart, lane=0)
                except BudgetExhausted as exc:
                    # a run recorded when a zero budget stopped at restart 1 replays as it was recorded
                    replayed = self.store.replaying and self.store.peek()["event"] == "stop"
                    if not self.config.asks_no_llm() or replayed:
                        raise
                    spent = spent or exc
            if spent is not None:
                raise spent
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
                messages = self.new_conversation(board, restart) \
                    if turn_kind(cfg.search, 1, cfg.iterations) == "template" else []
            sent = 0  # messages already recorded in this conversation's history
            for iteration in range(1, cfg.iterations + 1):
                if turn_kind(cfg.search, iteration, cfg.iterations) == "names":
                    self.names_turn(board, restart, reset, iteration, lane)
                    continue
                if not messages:  # the template conversation starts at its first template turn
                    with self.turns.turn(lane):
                        messages = self.new_conversation(board, restart)
                answer, messages, sent, refused = self.ask_template(messages, sent, board, restart, reset, iteration,
                                                                    lane)
                with self.turns.turn(lane):
                    self.record_exchange(answer, messages, sent, restart, reset, iteration,
                                         **({"context_refused": refused} if refused else {}))
                    sent = len(messages)
                    messages.append({"role": "assistant", "content": answer.content})
                    self.template_cut[restart] = cut_to_nothing(answer, cfg.max_answer_tokens)
                    best_before = self.ranked(board)[0]
                    new, held, rejected = self.take_proposals(answer.content, board, best_before, restart, reset,
                                                              iteration, answer.truncated_from)
                    self.print_progress(restart, reset, iteration, new, held, rejected)
                    feedback = self.continuation(answer, messages, board, best_before, new, held, rejected)
                    if feedback is None:
                        messages, sent = [], 0
                    else:
                        messages.append({"role": "user", "content": feedback})
                    self.store.write_prompts_csv()

    def start_restart(self, restart: int) -> list[Scored]:
        """A fresh pool sample, scored: the restart's own board."""
        sample = sample_pool(self.pool, self.config.pool_sample, self.config.seed, restart)
        self.store.append("restart", restart=restart, pool=[p.template for p in sample])
        if len(sample) > MANY_POOL_TEMPLATES:  # a 10,000-line --pool FILE was minutes of text encoding, unsaid
            self.echo(f"restart {restart + 1}/{self.config.restarts}: scoring {len(sample):,} pool templates "
                      f"({len(sample) * len(self.start_names):,} texts to encode the first time) ...")
        board: list[Scored] = []
        self.score_batch([(p.template, p.source) for p in sample], "pool", board, restart, reset=None, iteration=0)
        best = self.ranked(board)[0]
        self.echo(
            f"restart {restart + 1}/{self.config.restarts}: {len(board)} pool templates, "
            f"best {pct(self.value(best))}  {best.template}"
        )
        self.store.write_prompts_csv()
        return board

    def new_conversation(self, board: list[Scored], restart: int) -> list[dict]:
        """A template conversation's opening: the system message and the first turn (which says
        so where the restart's last template answer was cut to nothing)."""
        return [
            {"role": "system", "content": self.meta.system(self.task_now(board), self.asked)},
            {"role": "user", "content": self.first_turn(board, self.template_cut.get(restart))},
        ]

    def task_now(self, board: list[Scored]) -> Task:
        """The task as the LLM is told it: with the current best names."""
        names = self.current_names(board)
        return self.evaluator.task if names == self.start_names else replace(self.evaluator.task, classnames=names)

    def current_names(self, board: list[Scored]) -> tuple[str, ...]:
        """The names of the board's best pair: what template turns are scored under."""
        return self.ranked(board)[0].names or self.start_names

    def first_turn(self, board: list[Scored], cut: dict | None = None) -> str:
        top, bottom = self.top_and_bottom(board)
        return self.meta.first_turn(self.evaluator.task, self.asked, self.metric_label, top, bottom, cut=cut)

    def feedback_turn(self, board: list[Scored], best_before: Scored, new: list[Scored], held: list[dict],
                      rejected: list[dict]) -> str:
        before = self.value(best_before)
        results = [{"template": s.template, "value": self.value(s), "previous_best": before,
                    "verdict": verdict(self.value(s), before)} for s in new]
        results += [{**h, "previous_best": before, "verdict": "held"} for h in held]
        top, bottom = self.top_and_bottom(board)
        best = shown(self.ranked(board)[:1], self.splits, self.config.metric)[0]
        return self.meta.feedback_turn(
            self.evaluator.task, self.asked, self.metric_label, results, rejected, best, top, bottom
        )

    def continuation(self, answer: Answer, messages: list[dict], board: list[Scored], best_before: Scored,
                     new: list[Scored], held: list[dict], rejected: list[dict]) -> str | None:
        """The next user message of a template conversation, or None: the next turn opens a
        fresh one, when nothing of the answer could be scored (`starts_over`) or the
        conversation would outgrow the LLM's context (`outgrows_context`)."""
        if starts_over(new, held):
            return None
        feedback = self.feedback_turn(board, best_before, new, held, rejected)
        used = answer.prompt_tokens + answer.completion_tokens or sum(
            len(m["content"]) for m in messages) // 3  # an endpoint that reports no usage
        context = self.context_tokens
        if outgrows_context(context, used, feedback, self.config.max_answer_tokens):
            self.echo(f"    the conversation has used {used:,} of the LLM's {context:,} tokens: "
                      "the next turn starts a new one")
            return None
        return feedback

    def top_and_bottom(self, board: list[Scored]) -> tuple[list[dict], list[dict]]:
        """The best top_k and the worst bottom_k of the scoreboard (no template in both, and
        each template once: at its best, when names turns scored it under several names)."""
        top, bottom = top_and_bottom(first_of_each_template(self.ranked(board)), self.config.top_k, self.config.bottom_k)
        return shown(top, self.splits, self.config.metric), shown(bottom, self.splits, self.config.metric)

    def ranked(self, board) -> list[Scored]:
        return rank(list(board), self.splits, self.config.metric)

    def value(self, s: Scored) -> float:
        return value(s, self.splits, self.config.metric)

    # -- one LLM turn ----------------------------------------------------------------------
    def ask_template(self, messages: list[dict], sent: int, board: list[Scored], restart: int, reset: int,
                     iteration: int, lane: int) -> tuple[Answer, list[dict], int, dict | None]:
        """A template turn's answer, with the conversation it answers and how much of it was
        recorded before: when the endpoint refuses a continued conversation as longer than
        the model's context (its length taken for an estimate, `outgrows_context`, or not
        known), the turn opens a new one, as after `starts_over`, and the context it stated
        holds from then on. The refusal is returned, for the history (`context_refused`:
        the refused request's key, the context stated, its length in messages), so that a
        resumed run is refused the same request at the same step, whatever the endpoint
        says now. A conversation's first message refused: `ContextExceeded` (`run`)."""
        try:
            return self.ask(messages, restart, reset, iteration), messages, sent, None
        except ContextExceeded as exc:
            if not sent:  # already a new conversation: nothing shorter to send
                raise
            with self.turns.turn(lane):
                if self.context_tokens is None or exc.context_tokens < self.context_tokens:
                    self.context_tokens = exc.context_tokens
                self.echo(f"    the LLM refused the conversation's next request as longer than its context of "
                          f"{exc.context_tokens:,} tokens: this turn starts a new one")
                refused = {"request_key": exc.key, "context_tokens": exc.context_tokens, "n_messages": len(messages)}
                messages = self.new_conversation(board, restart)
        return self.ask(messages, restart, reset, iteration), messages, 0, refused

    def ask(self, messages: list[dict], restart: int, reset: int, iteration: int) -> Answer:
        """The LLM's answer (the one step that parallel restarts take at the same time)."""
        seed = call_seed(self.config.seed, restart, reset, iteration)
        return self.llm.chat(
            messages, temperature=self.config.temperature, seed=seed, max_answer_tokens=self.config.max_answer_tokens,
            presence_penalty=self.config.presence_penalty, whole_lines=True,
        )

    def record_exchange(self, answer: Answer, messages: list[dict], sent: int, restart: int, reset: int,
                        iteration: int, event: str = "llm_exchange", seed: int | None = None,
                        temperature: float | None = None, **extra) -> dict:
        """One LLM answer into the history (a template turn's, a names turn's or the guard's)."""
        self.timings["llm_s"] += answer.latency_s
        recorded = self.store.append(
            event,
            restart=restart, reset=reset, iteration=iteration, call=self.calls,
            model=self.llm.model, seed=call_seed(self.config.seed, restart, reset, iteration) if seed is None else seed,
            temperature=self.config.temperature if temperature is None else temperature, request_key=answer.key,
            messages=messages[sent:], n_messages=len(messages), answer=answer.content,
            usage={"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
            latency_s=round(answer.latency_s, 3), cached=answer.cached, source=answer.source,
            **({"answered_by": answer.model} if answer.model and answer.model != self.llm.model else {}),
            **({"answer_truncated": {"kept_chars": len(answer.content), "received_chars": answer.truncated_from}}
               if answer.truncated_from else {}),
            **extra,
        )
        self.calls += 1
        return recorded

    def take_proposals(self, text: str, board: list[Scored], best: Scored, restart: int, reset: int, iteration: int,
                       cut_from: int = 0):
        """Parse, reject with reasons, score the first `proposals` valid new templates (the
        spare ones asked for only stand in for repeats: of templates on this restart's
        board); they join the board, but for those that would replace `best` (the board's
        best) and are worse than it on val (held back). A template already on the board, or
        held back under the same names in this restart, is a repeat; so is a line refused
        before in this restart (it keeps its reason in the history)."""
        call = self.calls - 1
        names = self.current_names(board)
        classnames = (*self.start_names, *(n for n in names if n not in self.start_names))
        scored_names = None if names == self.start_names else names
        already = {normalise(s.template) for s in board}
        already |= {normalise(t) for t, n in self.held_back.get(restart, ()) if n == scored_names}
        parsed = parse_proposals(text, already, classnames=classnames, unfill_lines=self.config.unfill)
        parsed.templates = parsed.templates[: self.config.proposals]
        # Why nothing could be scored, for the console (`report`); rejections say it themselves.
        self.nothing_to_score = why_nothing_read(text, "template", cut_from) \
            if not parsed.templates and not parsed.rejected else None
        rejected, refused_before = [], self.refused_lines.setdefault(restart, set())
        for r in parsed.rejected:
            self.store.append("reject", restart=restart, reset=reset, iteration=iteration, call=call,
                              template=r.line, reason=r.reason)
            again = r.reason != DUPLICATE and normalise(r.line) in refused_before
            rejected.append({"line": r.line, "reason": r.reason, "duplicate": r.reason == DUPLICATE or again,
                             "refused_before": again})
        refused_before |= {normalise(r.line) for r in parsed.rejected if r.reason != DUPLICATE}
        unfilled = set(parsed.unfilled)  # written for one class: its name turned back into {}
        new, held = self.score_batch([(t, "llm-unfilled" if t in unfilled else "llm") for t in parsed.templates],
                                     "llm", board, restart, reset, iteration, call=call,
                                     names=scored_names, confirm_against=best)
        for h in held:
            self.store.append("reject", restart=restart, reset=reset, iteration=iteration, call=call,
                              template=h["template"], reason=HELD_BACK, detail=h["why"])
        return new, held, rejected

    # -- one names turn (agent/names.py) ------------------------------------------------------
    def names_turn(self, board: list[Scored], restart: int, reset: int, iteration: int, lane: int) -> None:
        """The LLM renames the weakest classes of the board's best (template, names); each
        accepted name is scored as a one-class change, and the changes that beat the best
        and pass the drift guard become the new best pair, on the board. Like a template
        turn, the LLM call happens outside the lane's turns."""
        with self.turns.turn(lane):
            best = self.ranked(board)[0]
            state = self.names_state(restart)
            report = self.class_report(best.template, best.names)
            asked = naming.weakest(report, self.config.names_k, state.fruitless)
            messages = self.names_messages(best, report, asked, state)
        answer = self.ask(messages, restart, reset, iteration)
        with self.turns.turn(lane):
            names = best.names or self.start_names
            self.record_exchange(answer, messages, 0, restart, reset, iteration, event="names_exchange",
                                 asked=[names[c] for c in asked])
            call = self.calls - 1
            pairs = naming.parse_names(answer.content, (*names, *self.start_names))
            proposals, refused = naming.check_names(pairs, names, self.start_names,
                                                    {c: set(t) for c, t in state.tried.items()},
                                                    self.config.names_per_class)
            self.record_name_rejects(refused, restart, reset, iteration, call)
            for p in proposals:
                state.tried[p.cls].setdefault(name_key(p.name), p.name)
            singles = self.score_names(best, [[(p.cls, p.name)] for p in proposals], restart, reset, iteration, call)
            picks, guarded, cut = self.pick_changes(best, proposals, singles, restart, reset, iteration)
            self.record_name_rejects(guarded, restart, reset, iteration, call)
            kept = self.keep_changes(best, picks, board, restart, reset, iteration, call)
            # Asked about and not renamed: asked about later than the other weak classes. So is
            # a class the answer skipped (a fifth of the bench's names turns skip one): letting
            # it keep its place was measured and gained nothing (docs/results.md, "Repeats").
            for c in asked:
                state.fruitless[c] = 0 if any(p.cls == c for p in kept) else state.fruitless.get(c, 0) + 1
            state.results = [{"class": names[p.cls], "name": p.name, "value": self.value_of(score),
                              "previous_best": self.value(best), "verdict": verdict(self.value_of(score), self.value(best)),
                              "kept": p in kept} for p, (_, score) in zip(proposals, singles)]
            state.rejected = naming.refusals_shown(refused + guarded, names)
            state.cut = cut_to_nothing(answer, self.config.max_answer_tokens)
            self.print_names_progress(restart, reset, iteration, names, proposals, refused + guarded, kept,
                                      nothing_read=None if pairs else why_nothing_read(answer.content, "names",
                                                                                        answer.truncated_from))
            if cut is not None:  # the turn is recorded and shown: now the search stops (`run`)
                raise cut

    def record_name_rejects(self, refused: list, restart: int, reset: int, iteration: int, call: int) -> None:
        for r in refused:
            self.store.append("name_reject", restart=restart, reset=reset, iteration=iteration, call=call,
                              label=r.label, name=r.name, reason=r.reason, detail=r.detail, **{"class": r.cls})

    def names_state(self, restart: int) -> "NamesState":
        if restart not in self.names_states:
            self.names_states[restart] = NamesState({c: {name_key(n): n} for c, n in enumerate(self.start_names)})
        return self.names_states[restart]

    def class_report(self, template: str, names: tuple[str, ...] | None, splits: Sequence[str] | None = None) -> list:
        """Per class, on the selection split(s) (or `splits`, together): accuracy, true-class
        probability, confusions."""
        return naming.merged_report([self.evaluator.class_report(template, names, split)
                                     for split in splits or self.splits])

    def own_images_lost(self, template: str, before: list, variant: tuple[str, ...], classes: Sequence[int]) -> dict:
        """The "own" guard: of `classes`, those that get fewer of their own train and val
        images right under `variant` than in `before` (the best's `class_report` on
        SCORED_SPLITS; agent/names.py says why), each with how many."""
        return naming.own_images_lost(before, self.class_report(template, variant, SCORED_SPLITS), classes,
                                      " and ".join(SCORED_SPLITS))

    def names_messages(self, best: Scored, report: list, asked: list[int], state: "NamesState") -> list[dict]:
        """A names turn's conversation: the system message and one user message (the turn
        shows the last names turn's results itself, so every names turn is that short)."""
        cfg, task = self.config, self.evaluator.task
        names = best.names or self.start_names
        shown = naming.rows_shown(report, asked)
        return [
            {"role": "system", "content": self.meta.names_system(task, cfg.names_per_class, len(asked))},
            {"role": "user", "content": self.meta.names_turn(
                task, cfg.names_per_class, self.metric_label, best.template, self.value(best),
                naming.class_rows(report, self.start_names, shown), [names[c] for c in asked], state.results,
                state.rejected, hidden=len(report) - len(shown), cut=state.cut)},
        ]

    def score_names(self, best: Scored, changes: list[list[tuple[int, str]]], restart: int, reset: int,
                    iteration: int, call: int) -> list[tuple[tuple[str, ...], Score]]:
        """Each list of (class, name) changes applied to the best's names, scored with its
        template: in one batch, only what neither the run nor its history has scored. One
        name_score event each."""
        base = best.names or self.start_names
        variants = [apply_changes(base, c) for c in changes]
        todo = list(dict.fromkeys(v for v in variants if (best.template, v) not in self.name_scores
                                  and (best.template, v) not in self.stored_name_scores))
        if todo:
            started = time.perf_counter()
            self.name_scores.update(zip(((best.template, v) for v in todo),
                                        self.evaluator.score_names(best.template, todo, splits=self.scored_splits)))
            self.timings["scoring_s"] += time.perf_counter() - started
        out = []
        for change, names in zip(changes, variants):
            score = self.name_scores.get((best.template, names)) or stored_score(
                self.stored_name_scores[(best.template, names)])
            event = self.store.append(
                "name_score", restart=restart, reset=reset, iteration=iteration, call=call, template=best.template,
                names=list(names), changes=[{"class": c, "from": base[c], "to": n} for c, n in change],
                accuracy=as_floats(score.accuracy), loss=as_floats(score.loss), prob=as_floats(score.prob),
                **with_balance(score.balance))
            score = stored_score(event)  # the recorded numbers, as a resumed run reads them
            self.name_scores[(best.template, names)] = score
            out.append((names, score))
        return out

    def pick_changes(self, best: Scored, proposals: list, singles: list, restart: int, reset: int,
                     iteration: int) -> tuple[list, list]:
        """Per class, the best change that beats the current best, holds up on the held-out
        split (`held_out_worse`) and passes the guards (the class keeps its own images; the
        judge, who sees at most JUDGED_PER_CLASS changes of a class, best first, does not file
        it under another class); returns the picks, best first, as (proposal, names, score),
        the refusals, and the BudgetExhausted that cut the judge's questions, or None. The
        budget is a promise about cost, so the judge is not asked past it, and the guard
        exists to refuse drifts, so a change it could not ask about is refused too
        (GUARD_NOT_ASKED); the changes guarded before it can still be kept, and the turn is
        recorded whole before the search stops, instead of being lost."""
        improving = sorted((item for item in zip(proposals, singles) if self.renames_best(item[1][1], best)),
                           key=lambda item: self.score_key(item[1][1]))  # stable: answer order breaks exact ties
        picks, refused, judged, cut = {}, [], defaultdict(int), None
        names = best.names or self.start_names
        before = self.class_report(best.template, best.names, SCORED_SPLITS) if "own" in self.guards else None
        for p, (variant, score) in improving:
            if p.cls in picks:
                continue
            why = self.held_out_worse(score, best)
            if why:
                refused.append(naming.NameRefusal(p.label, p.name, naming.HELD_OUT, p.cls, why))
                continue
            if before is not None:
                lost = self.own_images_lost(best.template, before, variant, [p.cls])
                if lost:
                    refused.append(naming.NameRefusal(p.label, p.name, naming.OWN_IMAGES, p.cls, lost[p.cls]))
                    continue
            if "judge" in self.guards:
                if judged[p.cls] >= naming.JUDGED_PER_CLASS:
                    continue
                judged[p.cls] += 1
                try:
                    other = self.drift_guard(p, names, best.template, restart, reset, iteration)
                except BudgetExhausted as exc:
                    # the class's next change would have been asked about only had this one drifted
                    cut, judged[p.cls] = exc, naming.JUDGED_PER_CLASS
                    refused.append(naming.NameRefusal(p.label, p.name, naming.GUARD_NOT_ASKED, p.cls, str(exc)))
                    continue
                if other is not None:
                    refused.append(naming.NameRefusal(p.label, p.name, naming.DRIFT, p.cls, self.start_names[other]))
                    continue
            picks[p.cls] = (p, variant, score)
        return list(picks.values()), refused, cut

    def drift_guard(self, proposal, names: tuple[str, ...], template: str, restart: int, reset: int,
                    iteration: int) -> int | None:
        """The "judge" guard against a name drifting to another class's meaning (agent/names.py,
        which says why this one): the other class the change drifts to, or None. The LLM is
        asked which class the new name is, among the start names (temperature 0, a seed fixed
        by the run's seed: the same question is one cached answer). An answer naming another
        class is asked again with the classes listed in reverse order: the small model's
        answer leans on the list's order and on spelling. Where the evaluator offers
        `name_similarity`, the text tower has the last word (`text_check`): when both answers
        name the same class, and when the answer names no class at all."""
        listed = self.judge_classes(proposal, names, template)
        named = self.ask_judge(proposal, names, listed, restart, reset, iteration)
        if named == proposal.cls:
            return None
        if named is not None and self.ask_judge(proposal, names, listed[::-1], restart, reset, iteration) != named:
            return None
        return self.text_check(proposal, named, restart, reset, iteration)

    def judge_classes(self, proposal, names: tuple[str, ...], template: str) -> list[str]:
        """The start names the judge chooses among, in class order: all of them, or past
        naming.JUDGE_LISTED classes, the class's own and those nearest the new name: by the
        text tower where the evaluator has `name_similarity`, else those the class is most
        confused with, either way, under the best pair (`naming.judge_listed`)."""
        start = self.start_names
        if len(start) <= naming.JUDGE_LISTED:
            return list(start)
        similarity = getattr(self.evaluator, "name_similarity", None)
        if similarity is not None:  # rounded as `text_nearest` rounds: another device's float noise seldom reorders it
            nearness = [round(float(v), 4) for v in similarity(template, proposal.name, start)]
        else:
            report, c = self.class_report(template, names), proposal.cls
            nearness = [report[c].predicted[o] + report[o].predicted[c] for o in range(len(start))]
        return [start[c] for c in naming.judge_listed(proposal.cls, nearness)]

    def text_check(self, proposal, judged: int | None, restart: int, reset: int, iteration: int) -> int | None:
        """The judge's verdict checked by the text tower: the class the change drifts to, or
        None. `a photo of a {}.` (naming.GUARD_TEMPLATE, not the best template: the name's
        meaning is asked) filled with the new name is compared with it filled with the class's
        start name and with the judged class's (`judged` None: the judge named no class, so
        with every other class's, the nearest counting). The change is refused unless its own
        is closer by naming.TEXT_MARGIN: `sweater` for pullover, which the judge files under
        Sneaker both ways, is kept; `tunic` for pullover, which it echoes, and `Blouse` for
        Dress, a near tie, are refused. Without `name_similarity` the judge decides alone."""
        similarity = getattr(self.evaluator, "name_similarity", None)
        if similarity is None:
            return judged
        other, own, near = naming.text_nearest(similarity, proposal.name, proposal.cls, judged, self.start_names)
        event = self.store.append("names_text", restart=restart, reset=reset, iteration=iteration,
                                  template=naming.GUARD_TEMPLATE,
                                  name=proposal.name, judged=judged, other=other, own_similarity=own,
                                  other_similarity=near, **{"class": proposal.cls})
        # the figures recorded decide: a resumed run reads the verdict its history holds
        return event["other"] if naming.text_refuses(event["own_similarity"], event["other_similarity"]) else None

    def ask_judge(self, proposal, names: tuple[str, ...], listed: Sequence[str], restart: int, reset: int,
                  iteration: int) -> int | None:
        """One judge question, the classes `listed` in that order: the class its answer
        names (the proposal's own, or another), or None (no class)."""
        messages = [{"role": "user", "content": self.meta.names_judge(self.evaluator.task, list(listed),
                                                                      proposal.name)}]
        seed = call_seed(self.config.seed, -1, -1, -1)
        answer = self.llm.chat(messages, temperature=0.0, seed=seed, max_answer_tokens=JUDGE_ANSWER_TOKENS)
        named = naming.judged_class(answer.content, self.start_names, names)
        self.record_exchange(answer, messages, 0, restart, reset, iteration, event="names_judge", seed=seed,
                             temperature=0.0, name=proposal.name, judged=None if named == proposal.cls else named,
                             **{"class": proposal.cls})
        return named

    def keep_changes(self, best: Scored, picks: list, board: list[Scored], restart: int, reset: int, iteration: int,
                     call: int) -> list:
        """The classes' picks (at most one per name) combined greedily: the prefixes (best
        pick, best two, ...) are scored in one batch, and the best-ranked prefix (the
        shortest among equals) that holds up on val and keeps each class's own images becomes
        the new best pair, on the board. Returns the proposals kept."""
        if not picks:
            return []
        picks = naming.first_of_each_name(picks, lambda pick: pick[0].name)
        base = best.names or self.start_names
        candidates, refused = [(picks[0][1], picks[0][2], picks[:1])], []
        if len(picks) > 1:
            prefixes = [picks[:j] for j in range(2, len(picks) + 1)]
            combined = self.score_names(best, [[(p.cls, p.name) for p, _, _ in prefix] for prefix in prefixes],
                                        restart, reset, iteration, call)
            before = self.class_report(best.template, best.names, SCORED_SPLITS) if "own" in self.guards else None
            for (names, score), prefix in zip(combined, prefixes):
                # Combined, the change must hold up on val too, and each class keep its own images.
                why, reason = self.held_out_worse(score, best), naming.HELD_OUT
                if not why and before is not None:
                    lost = self.own_images_lost(best.template, before, names, [p.cls for p, _, _ in prefix])
                    why, reason = "; ".join(f"{base[c]}: {text}" for c, text in lost.items()), naming.OWN_IMAGES
                if why:
                    refused.append({"changes": [{"class": p.cls, "from": base[p.cls], "to": p.name}
                                                for p, _, _ in prefix], "reason": reason, "detail": why})
                else:
                    candidates.append((names, score, prefix))
        names, score, used = min(candidates, key=lambda c: self.score_key(c[1]))  # min keeps the first of equals
        event = self.store.append(
            "names_change", restart=restart, reset=reset, iteration=iteration, call=call, template=best.template,
            names=list(names), changes=[{"class": p.cls, "from": base[p.cls], "to": p.name} for p, _, _ in used],
            accuracy=as_floats(score.accuracy), loss=as_floats(score.loss), prob=as_floats(score.prob),
            **with_balance(score.balance), **({"refused_combinations": refused} if refused else {}))
        entry = Scored(best.template, "names", dict(event["accuracy"]), dict(event["loss"]),
                       order=(restart, len(board)), prob=dict(event["prob"]), names=tuple(event["names"]),
                       balance=dict(event.get("balance", {})))
        board.append(entry)
        first = self.scores.get(entry.key)
        if first is None or entry.order < first.order:
            self.scores[entry.key] = entry
        return [p for p, _, _ in used]

    # Names changes are ranked as templates are (agent/ranking.py): by --metric on the
    # selection split, ties by lower cross-entropy. At 1 shot the train split has one image
    # per class, so accuracy ties almost everywhere and the tie-break decides. Cross-entropy
    # rather than the mean true-class probability, because (1) it is the ranking every
    # template and the final choice already use, so a change that is kept is, by
    # construction, the board's new best (a second rule would let the board and the names
    # turns disagree about the best pair); and (2) it weighs most the images the class gets
    # wrong or nearly wrong (-log p), which is what renaming a weak class is for, where the
    # mean probability mostly rewards making easy images surer. --metric prob|blend ranks by
    # the probability first, for both.
    def score_key(self, score: Score) -> tuple:
        return self.ranking_key(self.value_of(score), score.loss, score.accuracy)

    def beats(self, score: Score, than: Scored) -> bool:
        """Whether `score` ranks strictly above the pair `than` (value, then cross-entropy)."""
        return self.score_key(score) < self.ranking_key(self.value(than), than.loss, than.accuracy)

    def renames_best(self, score: Score, best: Scored) -> bool:
        """Whether a names change (`score`) beats the best pair `best`: ranked above it on the
        value (or, under --metric balance, on accuracy), or, tied there, by a cross-entropy at
        least naming.NAMES_CE_MARGIN lower. A rename changes one class's text only, and on one
        image per class a lower cross-entropy by less is noise it fits."""
        if not self.beats(score, best):
            return False
        new, old = self.score_key(score), self.ranking_key(self.value(best), best.loss, best.accuracy)
        return new[:2] != old[:2] or old[2] - new[2] >= naming.NAMES_CE_MARGIN

    def ranking_key(self, value: float, loss: dict, accuracy: dict) -> tuple:
        """`rank_key` without the order: value, accuracy under --metric balance, cross-entropy."""
        return rank_key(value, loss, self.splits, 0, then_value(accuracy, self.splits, self.config.metric))[:3]

    def value_of(self, score: Score) -> float:
        return selection_value(score.accuracy, score.prob, self.splits, self.config.metric, score.balance)

    def held_out_worse(self, score: Score, than: Scored) -> str:
        """Why `score`, which would beat the best `than` on the selection split, is not
        confirmed: it is worse than `than` on the held-out split (e.g. "val 80.0% vs 90.0%";
        agent/ranking.py `worse_on`). "" when it does not beat `than`, when it holds up, and
        under --confirm off or --select train+val (nothing held out). A new best found on
        one image per class is often a better fit to those images only: on the bench's 1-shot
        runs the renames that lost on val mostly lost on test too, and so did the templates
        that lost val accuracy; templates that lost on val cross-entropy alone went both
        ways (docs/results.md, "Confirmed on val")."""
        if not self.held_out or not self.beats(score, than):
            return ""
        return worse_on(self.held_out, self.config.metric, (score.accuracy, score.prob, score.loss),
                        (than.accuracy, than.prob, than.loss))

    def print_names_progress(self, restart, reset, iteration, names, proposals, refused, kept,
                             nothing_read: str | None = None) -> None:
        cfg = self.config
        best = self.ranked(self.scores.values())[0]
        changes = ", ".join(f"{names[p.cls]} -> {p.name}" for p in kept) or "none kept"
        self.echo(f"[restart {restart + 1}/{cfg.restarts} reset {reset + 1}/{cfg.resets} "
                  f"iteration {iteration}/{cfg.iterations}] names: {len(proposals)} tried, {len(refused)} refused, "
                  f"{changes}{f' ({nothing_read})' if nothing_read else ''} | best {pct(self.value(best))}  "
                  f"{best.template}")
        unasked = [r for r in refused if r.reason == naming.GUARD_NOT_ASKED]
        others = [r for r in refused if r.reason != naming.GUARD_NOT_ASKED]
        shown = naming.refusals_shown(others, names)  # a name refused four times in a line: once
        for r in shown[:REFUSALS_PRINTED]:
            self.echo(f"    refused  {r['class']}: {shortened(r['name'], 40)!r}: {r['reason']}")
        printed = set(list(dict.fromkeys(map(naming.refusal_key, others)))[:REFUSALS_PRINTED])
        self.print_more(sum(naming.refusal_key(r) not in printed for r in others), "refused")
        if unasked:  # its own line, never among the refusals cut off above: it is why the search stops here
            self.echo(f"    cut by the budget ({unasked[0].detail}): the drift guard could not finish its questions "
                      "about " + ", ".join(f"{names[r.cls]} -> {shortened(r.name, 40)}" for r in unasked) + ", so not kept")

    # -- scoring ---------------------------------------------------------------------------
    def score_batch(self, items: list[tuple[str, str]], origin: str, board: list[Scored], restart: int,
                    reset: int | None, iteration: int, call: int | None = None,
                    names: tuple[str, ...] | None = None,
                    confirm_against: Scored | None = None) -> tuple[list[Scored], list[dict]]:
        """Put templates on a restart's board, scored with `names` (None: the start names);
        returns those added, and those held back: with `confirm_against` (the board's best
        before), a template that would become the new best but is worse on the held-out split
        (`held_out_worse`) is not put on the board nor recorded as scored, only returned
        (with its value and why). The evaluator scores, in one batch, only what the run has
        not scored yet (nor its history, when resumed). Each template is recorded once in the
        history, under the first restart (in turn order) to score it; another restart takes
        its score from the run's table (a shared event says so, for an LLM's proposal). The
        table keeps a template's first appearance, (lowest restart, position), which breaks
        the final ranking's last ties, so parallel and sequential restarts rank alike."""
        on_board = {s.template for s in board}
        items = [(t, src) for t, src in items if t not in on_board]
        todo = [t for t, _ in items if (t, names) not in self.scores and (t, names) not in self.stored_scores]
        fresh: dict[str, Score] = {}
        if todo:
            started = time.perf_counter()
            fresh = dict(zip(todo, self.evaluator.score(todo, splits=self.scored_splits, **names_kwargs(names))))
            self.timings["scoring_s"] += time.perf_counter() - started
        added, held = [], []
        for template, source in items:
            first = self.scores.get((template, names))
            if first is None:
                score = fresh.get(template)
                if score is None:  # read back from the history of the run being resumed
                    score = stored_score(self.stored_scores[(template, names)])
            else:
                score = Score(accuracy=first.accuracy, loss=first.loss, prob=first.prob, balance=first.balance)
            why = self.held_out_worse(score, confirm_against) if confirm_against is not None else ""
            if why:
                held.append({"template": template, "value": self.value_of(score), "why": why})
                self.held_back.setdefault(restart, set()).add((template, names))
                continue
            if first is None:
                fields = dict(restart=restart, reset=reset, iteration=iteration, template=template, origin=origin,
                              source=source, accuracy=as_floats(score.accuracy), loss=as_floats(score.loss),
                              prob=as_floats(score.prob), **with_balance(score.balance))
                if call is not None:
                    fields["call"] = call
                if names is not None:
                    fields["names"] = list(names)
                event = self.store.append("score", **fields)
                values = (event["accuracy"], event.get("loss", {}), event.get("prob", {}), event.get("balance", {}))
            else:
                values = (first.accuracy, first.loss, first.prob, first.balance)
                if origin != "pool":  # on this board too, for a reader of the history (a pool's: its restart event)
                    self.store.append("shared", restart=restart, reset=reset, iteration=iteration, template=template,
                                      origin=origin, source=source, **({} if call is None else {"call": call}),
                                      **({} if names is None else {"names": list(names)}))
            scored = Scored(template, origin, dict(values[0]), dict(values[1]), order=(restart, len(board)),
                            prob=dict(values[2]), names=names, balance=dict(values[3]))
            board.append(scored)
            added.append(scored)
            if first is None or scored.order < first.order:
                self.scores[scored.key] = scored
        return added, held

    # -- console ---------------------------------------------------------------------------
    def print_progress(self, restart, reset, iteration, new: list[Scored], held: list[dict], rejected: list[dict]) -> None:
        """The console line of one LLM turn (then its new templates and a few rejections)."""
        cfg = self.config
        best = self.ranked(self.scores.values())[0]
        self.echo(
            f"[restart {restart + 1}/{cfg.restarts} reset {reset + 1}/{cfg.resets} "
            f"iteration {iteration}/{cfg.iterations}] {len(new)} new, {len(rejected)} rejected"
            + (f" ({self.nothing_to_score})" if getattr(self, "nothing_to_score", None) else "")
            + f" | best {pct(self.value(best))}  {best.template}"
        )
        for s in self.ranked(new):
            self.echo(f"    {pct(self.value(s)):>6}  {s.template}")
        for h in held:
            self.echo(f"    {pct(h['value']):>6}  {h['template']}  (held back: {h['why']})")
        shown = list({(r["line"], r["reason"]): r for r in rejected}.values())  # a line repeated: once
        for r in shown[:REFUSALS_PRINTED]:
            self.echo(f"    rejected  {shortened(r['line'], 60)!r}: {r['reason']}")
        printed = {(r["line"], r["reason"]) for r in shown[:REFUSALS_PRINTED]}
        self.print_more(sum((r["line"], r["reason"]) not in printed for r in rejected), "rejected")

    def print_more(self, more: int, word: str) -> None:
        """Where a turn refused more lines or names than the console prints: how many of those
        its first line counts are not among the lines printed (a repeat of a printed one is),
        and, the first time, where they all are."""
        if not more:
            return
        where = "" if self.said_where_refusals_are else \
            f": {shell_command('show', run_argument(self.store.run_dir))} lists them all"
        self.said_where_refusals_are = True
        self.echo(f"    ... {more} more {word}{where}")

    # -- the end ---------------------------------------------------------------------------
    def finish(self, stopped: str, started: float) -> ClimbResult:
        """Best template and top-k ensemble, with test accuracy (computed here, once)."""
        ranked = self.ranked(self.scores.values())
        top = ranked[: max(self.config.ensemble_k, self.config.top_k, 1)]
        stored = self.store.peek()
        names_table = None
        if stored is not None and stored["event"] == "final":
            # a finished run, resumed: read back
            best, ensemble, names_table = stored["best"], stored["ensemble"], stored.get("names")
        else:
            winner = ranked[0]
            best_score = self.evaluator.score([winner.template], splits=("test",), **names_kwargs(winner.names))[0]
            best = winner.to_dict()
            best["accuracy"] = {**best["accuracy"], **as_floats(best_score.accuracy)}
            best["loss"] = {**best["loss"], **as_floats(best_score.loss)}
            best["prob"] = {**best["prob"], **as_floats(best_score.prob)}
            # the names the best template goes with, for every reader (`eval --run`, `transfer`,
            # the API); a template search keeps its start names, as given when it started
            best["names"] = list(winner.names or self.start_names)
            if self.config.search != "template":
                names_table = self.names_table(winner)
            ensemble = self.choose_ensemble(ranked)
        final = self.store.append(
            "final", stopped=stopped, best=best, ensemble=ensemble, top=[s.to_dict() for s in top],
            **({"names": names_table} if names_table is not None else {}),
        )
        self.store.write_prompts_csv()
        summary = self.summary(final, started)
        if stored is not None and stored["event"] == "final":
            adapter = recorded_adapter(self.store.run_dir)
            if adapter:  # in no history event: the summary written anew keeps what `adapt` fit
                summary["adapter"] = adapter
        self.store.write_json("summary.json", summary)
        self.echo(f"best: {best['template']}  " + pct_by_split(best["accuracy"]))
        if ensemble:
            verdict = "chosen" if ensemble["chosen"] else "a candidate only"
            self.echo(f"ensemble of {len(ensemble['templates'])} ({verdict}: {ensemble['reason']}): "
                      + pct_by_split(ensemble["accuracy"]))
        return ClimbResult(best=best, ensemble=ensemble, top=final["top"], stopped=stopped, summary=summary,
                            classnames=tuple(best.get("names") or self.start_names))

    def choose_ensemble(self, ranked: list[Scored]) -> dict | None:
        """The best top-k ensemble (k = 2..ensemble_k) on the choice split, chosen only when it
        beats the best template alone there (agreement with the paper: one template by
        default; an ensemble must earn its place). Ties go to the smaller k."""
        on = ENSEMBLE_CHOICE[self.config.select]
        metric = labelled_metric(self.config.metric)  # chosen on a split with labels
        alone = selection_value(ranked[0].accuracy, ranked[0].prob, on, metric)
        names = ranked[0].names  # the ensemble is built with the best pair's names
        templates = [s.template for s in first_of_each_template(ranked)]
        tried, best = {}, None
        for k in range(2, min(self.config.ensemble_k, len(templates)) + 1):
            members = templates[:k]
            score = self.evaluator.score_ensemble(members, splits=(*SCORED_SPLITS, "test"), **names_kwargs(names))
            tried[k] = selection_value(score.accuracy, score.prob, on, metric)
            if best is None or tried[k] > tried[best[0]]:
                best = (k, members, score)
        if best is None:
            return None
        k, members, score = best
        chosen = tried[k] > alone
        where = " + ".join(on)
        reason = (f"{where} {pct(tried[k])} vs {pct(alone)} for the best template alone "
                  f"({metric}; k tried: {', '.join(map(str, tried))})")
        return {"templates": members, "accuracy": as_floats(score.accuracy), "loss": as_floats(score.loss),
                "prob": as_floats(score.prob), "chosen": chosen, "chosen_on": list(on), "reason": reason,
                "tried": {str(k): v for k, v in tried.items()}, "alone": alone}

    def names_table(self, winner: Scored) -> dict:
        """The final names against the start names, both with the winner's template, per
        class and split: accuracy, true-class probability and the confusion matrix (rows:
        true class, columns: predicted). The test split is read here, at the end, never
        used to choose."""
        start, found = self.start_names, winner.names or self.start_names
        splits = (*SCORED_SPLITS, "test")
        before = {s: self.evaluator.class_report(winner.template, None, s) for s in splits}
        after = {s: self.evaluator.class_report(winner.template, found, s) for s in splits}
        classes = [{"class": c, "start": start[c], "found": found[c], "changed": found[c] != start[c],
                    "accuracy": {"before": {s: before[s][c].accuracy for s in splits},
                                 "after": {s: after[s][c].accuracy for s in splits}},
                    "prob": {"before": {s: before[s][c].prob for s in splits},
                             "after": {s: after[s][c].prob for s in splits}}}
                   for c in range(len(start))]
        return {"template": winner.template, "start": list(start), "found": list(found),
                "changed": sum(c["changed"] for c in classes), "guard": self.config.guard, "classes": classes,
                "confusion": {"before": {s: [list(r.predicted) for r in before[s]] for s in splits},
                              "after": {s: [list(r.predicted) for r in after[s]] for s in splits}}}

    def names_counts(self, events: list[dict]) -> dict:
        """What the run's names turns did, from its history (a resumed run included)."""
        refused: dict[str, int] = {}
        for e in events:
            if e["event"] == "name_reject":
                refused[e["reason"]] = refused.get(e["reason"], 0) + 1
        return {
            "turns": sum(e["event"] == "names_exchange" for e in events),
            "scored": names_scored(events),
            "kept": sum(len(e.get("changes") or ()) for e in events if e["event"] == "names_change"),
            "judged": sum(e["event"] == "names_judge" for e in events),
            "refused": refused,
        }

    def summary(self, final: dict, started: float) -> dict:
        events = self.store.events
        exchanges = [e for e in events if e["event"] in LLM_EVENTS]  # template, names and guard answers
        names = {} if final.get("names") is None else {
            "names": {**summary_table(final["names"]), "counts": self.names_counts(events)}}
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
                **ledger(events),
                "this_session": self.llm.ledger.to_dict(),
                **({"by_kind": ledger_by_kind(events)} if self.config.search != "template" else {}),
            },
            "timings": {
                "session_wall_s": round(time.time() - started, 3),
                "session_scoring_s": round(self.timings["scoring_s"], 3),
                "session_llm_s": round(self.timings["llm_s"], 3),
            },
            "config": asdict(self.config),
            **names,
        }
