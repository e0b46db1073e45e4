"""Run: one run folder read back, its tables as pandas frames (`promptclimb.load_run`).

Its own module: the class is most of the reader's code, built on the files agent/runs/reading.py
finds, reads and checks; the tables every command and the API read a run through.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from promptclimb.agent.core.classnames import renames
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.protocol import SPLITS
from promptclimb.agent.runs.compact import confusion_matrix
from promptclimb.agent.runs.recorded import names_of, run_start_names
from promptclimb.agent.runs.reading import (Skipped, check_config, one_of, read_events, read_json, read_summary,
                                            whole_number)
from promptclimb.agent.runs.store import (ANSWER_KINDS, CONFIG, EVENTS, FAILED, HISTORY, being_written,
                                          ended_with_adapter, ledger, names_scored, SCORED_EVENTS, scored_origin,
                                          tokens_spent)
from promptclimb.agent.ranking import LEGACY_METRIC, best_first, selection_value, then_value, top_and_bottom
from promptclimb.agent.names import GUARD_NOT_ASKED
from promptclimb.agent.search import SELECTIONS


# -- one run --------------------------------------------------------------------------------
# `Run.iterations_frame`'s columns, one row per LLM answer.
ITERATION_COLUMNS = ("call", "kind", "restart", "reset", "iteration", "scored", "rejected", "best_new", "best_so_far",
                     "prompt_tokens", "completion_tokens", "latency_s", "cached")


NAMES_COLUMNS = ("class", "start", "found", "changed", *(f"{split}_{when}" for when in ("before", "after")
                                                         for split in ("train", "val", "test")))


def _number(x) -> bool:
    """A number a table cell holds (not a missing one: None or NaN)."""
    return isinstance(x, numbers.Real) and not math.isnan(x)


@dataclass
class Run:
    """One run folder read back (`promptclimb.load_run`). Its tables are pandas frames:

        scores()               every scored template in scoring order, with its accuracy
                               (and loss / prob) per split, `selection` (what it was ranked
                               by) and `best_so_far`
        ranked()               the same, best first, as the search ranks them
        winners(k)             the best k with train / val / test, then the ensemble, and
                               the names each was scored with (winners_said: as show says it)
        iterations_frame()     one row per LLM answer (iterations(): the same as dicts,
                               with what the LLM was shown and what it proposed)
        conversation_frame()   one row per message exchanged with the LLM

    and `config`, `summary`, `events` (history.jsonl) are the files as they are."""

    path: Path
    config: dict
    summary: dict | None
    events: list[dict]
    skipped: list[Skipped] = field(default_factory=list)

    def __repr__(self) -> str:
        # a notebook cell ending in `run` shows this: the dataclass's own repr held every event
        # (55 KB for a 5-answer run)
        return f"Run({str(self.path)!r}, {self.status}, {len(self.events)} events)"

    # identity ------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.path.name

    @property
    def args(self) -> dict:
        return self.config.get("evaluator_args") or {}

    @property
    def dataset(self) -> str | None:
        return self.args.get("dataset") or (self.summary or {}).get("dataset")

    @property
    def shots(self) -> int | None:
        """Training images per class (`run.dataset` and `run.backbone` read so; these were only
        in `run.args`)."""
        return self.args.get("shots")

    @property
    def seed(self) -> int | None:
        return self.args.get("seed")

    @property
    def backbone(self) -> str | None:
        name = self.args.get("backbone")
        if name and self.args.get("pretrained"):
            return f"{name} ({self.args['pretrained']})"
        return name

    @property
    def llm(self) -> str | None:
        llm = self.config.get("llm") or {}
        return llm.get("served_model") or llm.get("model")

    @property
    def answered_by(self) -> list[str]:
        """The models the endpoint said answered, where not the one asked for (an alias answered
        by a dated snapshot, a router's choice), in the order first seen."""
        return list(dict.fromkeys(e["answered_by"] for e in self.answers() if e.get("answered_by")))

    @property
    def select(self) -> str:
        return (self.config.get("search") or {}).get("select") or (self.summary or {}).get("select") or "train"

    @property
    def select_splits(self) -> tuple[str, ...]:
        return SELECTIONS.get(self.select, ("train",))

    @property
    def metric(self) -> str:
        """What the run ranked by (runs from before `--metric` ranked by accuracy)."""
        return (self.config.get("search") or {}).get("metric") or LEGACY_METRIC

    @property
    def ranked_by(self) -> str:
        """e.g. "accuracy on train"; under --metric balance, "balance on unlabeled images,
        then accuracy on train"."""
        if self.metric == "balance":
            return f"balance on unlabeled images, then accuracy on {self.select}"
        return f"{self.metric} on {self.select}"

    @property
    def pool(self) -> str:
        """The initial pool: curated, captions or the file's path."""
        return (self.config.get("pool") or {}).get("name") or "curated"

    @property
    def created(self) -> datetime:
        """When the run started: config.json's `created`, else the folder's time."""
        text = self.config.get("created")
        if text:
            try:
                return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")
            except ValueError:
                pass
        return datetime.fromtimestamp((self.path / CONFIG).stat().st_mtime, tz=timezone.utc)

    @property
    def final(self) -> dict | None:
        """The result: summary.json, else the history's final event (None: not finished)."""
        if self.summary is not None:
            return self.summary
        finals = self.of("final")
        return finals[-1] if finals else None

    @property
    def status(self) -> str:
        """"done", "stopped early" (a budget), or, not ended: "running" (a search holds the
        run), "failed" (its search ended in an error: `failure`), "unfinished" (killed, or
        failed before failures were recorded)."""
        final = self.final
        if not ended_with_adapter(final, bool(self.config.get("adapter_kinds"))):
            # a search holding the run is still at it; one that let go failed, or was stopped
            if being_written(self.path):
                return "running"
            return "failed" if self.failure is not None else "unfinished"
        return "done" if final.get("stopped", "completed") == "completed" else "stopped early"

    @property
    def failure(self) -> str | None:
        """The error the run's last search ended in (its history's last event, `failed`), or
        None: it did not fail, was killed, or a resume has gone on since (its events follow)."""
        last = self.events[-1] if self.events else None
        return str(last.get("error") or "an error") if last is not None and last["event"] == FAILED else None

    @property
    def status_said(self) -> str:
        """`status` with what stopped a run early (`stopped early (budget: ...)`) or the error
        a failed one ended in (`failed (...)`); a run that missed the adapter it asked for is
        unfinished, whatever stopped its search."""
        stopped = (self.final or {}).get("stopped", "")
        status = self.status
        if status == "failed":
            return f"failed ({self.failure})"
        return f"{status} ({stopped})" if status == "stopped early" and stopped.startswith("budget") else status

    def answers(self) -> list[dict]:
        """Every LLM answer of the run, in order: template turns, names turns and the drift
        guard's questions."""
        return [e for e in self.events if e["event"] in ANSWER_KINDS]

    def of(self, kind: str) -> list[dict]:
        """The run's events of one kind (`EVENTS`; any kind its history holds)."""
        held = dict.fromkeys([*EVENTS, *(e["event"] for e in self.events)])
        one_of(kind, "Run.of()", "kind", list(held))
        return [e for e in self.events if e["event"] == kind]

    def names_counted(self) -> tuple[int, int] | None:
        """(names scored, names refused) by the run's names turns, as summary.json counts them
        (a one-class change each); None for a run without names turns."""
        if not self.of("names_exchange"):
            return None
        return names_scored(self.events), len(self.of("name_reject"))

    # tables --------------------------------------------------------------------------------
    def scores(self) -> pd.DataFrame:
        """Every scored template (and every (template, names) pair a names turn kept, origin
        "names", with its `names`), in scoring order, with its accuracy, loss (`<split>_loss`)
        and mean true-class probability (`<split>_prob`) per split, `x` = LLM answers received
        before it was scored (0 for the first pool; call + 1 for a proposal of LLM answer
        `call`) and `selection` = what the search ranks by (`--metric`: accuracy, prob, ...)."""
        rows, calls = [], 0
        for e in self.events:
            if e["event"] in ANSWER_KINDS:
                calls = max(calls, int(e["call"]) + 1)
            if e["event"] not in SCORED_EVENTS:
                continue
            row = {k: scored_origin(e) if k == "origin" else e.get(k)
                   for k in ("restart", "reset", "iteration", "call", "template", "origin", "source")}
            row["names"] = e.get("names")  # None: the start names
            row["x"] = int(e["call"]) + 1 if e.get("call") is not None else calls
            for split, value in e["accuracy"].items():
                row[split] = value
            for split, value in (e.get("loss") or {}).items():
                row[f"{split}_loss"] = value
            for split, value in (e.get("prob") or {}).items():  # the class docstring promised them
                row[f"{split}_prob"] = value
            row["selection"] = selection_value(e["accuracy"], e.get("prob"), self.select_splits, self.metric,
                                               e.get("balance"))
            row["line"] = e["_line"]
            rows.append(row)
        frame = pd.DataFrame(rows)
        if frame.empty:
            return pd.DataFrame(columns=["template", "origin", "x", "selection", "train", "val"])
        frame["best_so_far"] = frame["selection"].cummax()
        return frame

    def ranked(self) -> pd.DataFrame:
        """Scored templates best first, as the search ranks them: selection accuracy, then
        lower cross-entropy on the same splits, then scored earlier."""
        frame = self.scores()
        return frame if frame.empty else self._rank(frame)

    def winners(self, k: int = 5) -> pd.DataFrame:
        """The best k templates with train / val / test accuracy (test exists for the best one
        and the ensemble only: it is computed once, at the end), best first. Each template is
        listed once, at its best place, with the figures of its best names (under --search
        names|both the run scored it with several sets of names), as `transfer` ranks them:
        summary.json's `top` (which holds a template once per set of names, and only as many
        entries as the search kept), then the rest of the run's scores as the search ranks them.
        `origin`: where the template came from (`template_origin`: "pool + names" for a pair a
        names turn kept); `names`: the classes renamed in the names it was scored with, "Trouser
        -> jeans; ..." ("" for the start names; the ensemble's are the best's). The ensemble's
        row (rank "ens") says what it is in `template` ("ensemble of 3 (chosen)"), no template:
        leave it out (`frame[frame["rank"] != "ens"]`) before `evaluate()`; its templates are
        `final["ensemble"]["templates"]`."""
        k = whole_number(k, "Run.winners()", "k", 1)
        final = self.final
        start = self.start_names
        rows = []
        if final is not None:
            top, listed = [], set()
            for t in final.get("top") or [final["best"]]:
                if t.get("template") not in listed:
                    listed.add(t.get("template"))
                    top.append(t)
            if len(top) < k:  # the summary keeps the best few: the history ranks the rest
                for row in self.ranked().drop_duplicates("template").to_dict("records"):
                    if len(top) >= k:
                        break
                    if row["template"] not in listed:
                        listed.add(row["template"])
                        top.append({"template": row["template"], "origin": row.get("origin"),
                                    "names": names_of(row),
                                    "accuracy": {s: row[s] for s in ("train", "val") if _number(row.get(s))}})
            for i, t in enumerate(top[:k], start=1):
                acc = dict(t.get("accuracy") or {})
                if t.get("template") == final["best"].get("template"):
                    acc = {**acc, **(final["best"].get("accuracy") or {})}
                rows.append({"rank": i, "template": t.get("template"),
                             "origin": self.template_origin(t.get("template"), t.get("origin")),
                             "names": renames(start, t.get("names")), **acc})
            ensemble = final.get("ensemble")
            if ensemble:
                verdict = "" if "chosen" not in ensemble else " (chosen)" if ensemble["chosen"] else " (candidate)"
                rows.append({"rank": "ens", "template": f"ensemble of {len(ensemble['templates'])}{verdict}",
                             "origin": "top-k", "names": renames(start, final["best"].get("names")),  # the best's
                             **(ensemble.get("accuracy") or {})})
        else:  # an unfinished run: rank what was scored (no test accuracy yet)
            for i, row in enumerate(self.ranked().drop_duplicates("template").head(k).to_dict("records"), start=1):
                rows.append({"rank": i, "template": row["template"],
                             "origin": self.template_origin(row["template"], row.get("origin")),
                             "names": renames(start, names_of(row)),
                             **{s: row[s] for s in ("train", "val") if s in row}})
        frame = pd.DataFrame(rows, columns=["rank", "template", "origin", "train", "val", "test", "names"])
        return frame

    @property
    def start_names(self) -> list[str] | None:
        """The names the search started from: its history's run_start (what the names of its
        events, and prompts.csv, differ from), else its result's names table (a history
        written before run_start held them), else what its evaluator recorded."""
        start = next((e["start_names"] for e in self.events if e["event"] == "run_start"
                      and isinstance(e.get("start_names"), list)), None)
        table = (self.final or {}).get("names") or {}
        return start or (table.get("start") if isinstance(table.get("start"), list) else None) or \
            run_start_names(self.config)

    @property
    def held_names(self) -> list[str] | None:
        """The names the run's templates go with: its result's, or, of a run not ended, those
        its last kept names change holds; None for its start names."""
        if self.final is not None:
            return (self.final.get("best") or {}).get("names")
        held = self.of("names_change")
        return held[-1].get("names") if held else None

    def winners_said(self, k: int = 5) -> pd.DataFrame:
        """`winners(k)` as `show` and the report list them: `names` says which names each row
        was scored with, "found" (`held_names`: the run's result, or the names a run not ended
        holds now), "start" or "earlier" (a names search's pool and early templates keep the
        names they were scored with: its rows mix them); no column for a run that renamed
        nothing."""
        frame = self.winners(k)
        if not frame["names"].astype(bool).any():
            return frame.drop(columns="names")
        found = renames(self.start_names, self.held_names)
        said = {found: "found", "": "start"}  # the start names are never "found": nothing renamed
        return frame.assign(names=[said.get(names, "earlier") for names in frame["names"]])

    def template_origin(self, template: str | None, origin: str | None) -> str | None:
        """Where a winner's template came from, as `show` and the report list it. The search
        tags the (template, names) pair a names turn kept "names" (summary.json, `scores()`),
        which said nothing of the template: a names turn only re-scores the best template
        under new names. Such a pair is its template's own origin, renamed: "pool + names"
        (or "llm + names"; "names" alone where the history holds no score of the template)."""
        if origin != "names":
            return origin
        first = next((e.get("origin") for e in self.events if e["event"] in ("score", "shared")
                      and e.get("template") == template and e.get("origin") not in (None, "names")), None)
        return origin if first is None else f"{first} + names"

    def _rank(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`frame`'s rows best first, sorted as the search sorts its scoreboard
        (agent/ranking.py `best_first`): selection value, then lower cross-entropy on the
        selection splits, then scored earlier: (restart, line), as the search's (restart,
        position on its board)."""
        splits = self.select_splits
        rows = frame.to_dict("records")

        def loss(i: int) -> dict:  # as the score event holds it: the splits that have a number
            return {s: rows[i][f"{s}_loss"] for s in splits if _number(rows[i].get(f"{s}_loss"))}

        def order(i: int) -> tuple:
            restart, line = rows[i].get("restart"), rows[i].get("line")
            return (restart if _number(restart) else 0, line if _number(line) else i)

        def then(i: int) -> float | None:  # accuracy on the selection splits, under --metric balance
            return then_value({s: rows[i][s] for s in splits if _number(rows[i].get(s))}, splits, self.metric)

        positions = best_first(range(len(rows)), splits, value=lambda i: rows[i]["selection"], loss=loss, order=order,
                               then=then)
        return frame.iloc[positions].reset_index(drop=True)

    def scoreboard(self, restart: int, before_line: int) -> tuple[list[dict], list[dict]]:
        """The top-k and bottom-k templates the LLM was shown at a point of the run: the
        restart's board then (its pool sample under the start names, what the LLM proposed in
        that restart so far, scored there or, a shared event says, by another restart first,
        and each (template, names) pair a names turn kept), ranked as the search ranks it,
        each template once, at its best place: a renamed template with the figures of its
        names then, not of its first score (rebuilt from the events, not parsed back from the
        prompt text, which users may rewrite). A history written before shared events existed
        misses, on a later restart's board, the proposals an earlier one had scored.
        `restart`: one of the run's restarts; `before_line`: a history line (1-based; past the
        last: the board at the end)."""
        restart = whole_number(restart, "Run.scoreboard()", "restart", 0)
        restarts = sorted({e["restart"] for e in self.events if isinstance(e.get("restart"), int)})
        if restart not in restarts:
            raise PromptclimbError(f"Run.scoreboard(): restart {restart!r}: expected one of the run's restarts "
                                   f"({', '.join(map(str, restarts)) or 'it has none'})")
        return self._board(restart, whole_number(before_line, "Run.scoreboard()", "before_line", 1))

    def _board(self, restart, before_line: int) -> tuple[list[dict], list[dict]]:
        """`scoreboard` for a restart and line the history gave (not checked again)."""
        scores = self.scores()
        if scores.empty:
            return [], []
        pools = [e.get("pool") or [] for e in self.of("restart") if e.get("restart") == restart]
        pool = set(pools[-1]) if pools else set(scores.loc[scores["origin"] == "pool", "template"])
        start_names = scores["names"].isna() if "names" in scores else pd.Series(True, index=scores.index)
        in_pool = scores[start_names & scores["template"].isin(pool)].drop_duplicates("template")
        own = scores[scores["origin"].isin(["llm", "names"]) & (scores["restart"] == restart)
                     & (scores["line"] < before_line)]
        shared = self._shared(scores)  # its proposals another restart had scored first
        shared = shared[(shared["restart"] == restart) & (shared["line"] < before_line)] if not shared.empty else shared
        if not shared.empty:
            own = pd.concat([own, shared])
        board = self._rank(pd.concat([in_pool, own])).drop_duplicates("template")  # first = best place
        search = self.config.get("search") or {}
        top_k, bottom_k = int(search.get("top_k", 3)), int(search.get("bottom_k", 3))
        rows = [{"template": r.template, "selection": r.selection} for r in board.itertuples()]
        return top_and_bottom(rows, top_k, bottom_k)

    def _shared(self, scores: pd.DataFrame) -> pd.DataFrame:
        """The shared events (agent/runs/store.py) as rows of `scores`: a proposal a restart put
        on its board with the figures another restart's event recorded (the first of the same
        template and names), at the shared event's place (restart, call, line). Empty for a
        history without them (written before they existed: such a board misses those)."""
        rows = []
        first = {}
        for row in scores.to_dict("records"):
            first.setdefault((row["template"], _names_key(row.get("names"))), row)
        for e in self.of("shared"):
            scored = first.get((e.get("template"), _names_key(e.get("names"))))
            if scored is not None:
                rows.append({**scored, **{k: e.get(k) for k in ("restart", "reset", "iteration", "call", "origin",
                                                                  "source")}, "line": e["_line"]})
        return pd.DataFrame(rows, columns=scores.columns)

    def answer_ends(self) -> dict[int, int]:
        """Per LLM answer (its `call`): the history line up to which its best so far counts:
        its own last event (a names turn's kept change is written after the guard's answers
        inside the turn), and never a line before the end of the answer before it (so a guard
        answer counts the change of its turn). The best so far never falls, and after a turn
        it is what the console said then."""
        last: dict[int, int] = {}
        for e in self.events:
            if e.get("call") is not None:
                last[int(e["call"])] = max(last.get(int(e["call"]), 0), e["_line"])
        ends, reached = {}, 0
        for ex in self.answers():
            if ex.get("call") is not None:
                reached = max(reached, last[int(ex["call"])])
                ends[int(ex["call"])] = reached
        return ends

    def open_turn(self) -> set[int]:
        """The calls of the history's last turn (a template or names turn's answer and the
        guard's answers inside it) while nothing but that turn's own events (same restart,
        reset and iteration) follows its answer: a search writing the run may still be
        scoring it, or keep a names change after it. Empty once anything else follows."""
        openers = [e for e in self.events if e["event"] in ("llm_exchange", "names_exchange")]
        if not openers:
            return set()
        opener = openers[-1]
        place = tuple(opener.get(k) for k in ("restart", "reset", "iteration"))
        # a failure closes no turn: a resume completes it (the turn stays open, as a killed one)
        after = [e for e in self.events if e["_line"] > opener["_line"] and e["event"] != FAILED]
        if any(tuple(e.get(k) for k in ("restart", "reset", "iteration")) != place for e in after):
            return set()
        return {int(e["call"]) for e in [opener, *after] if e["event"] in ANSWER_KINDS and e.get("call") is not None}

    def iterations(self) -> list[dict]:
        """One entry per LLM answer, of every kind ("template", "names", "guard": the drift
        guard's question): where it was, what the LLM was shown (a template turn: the
        scoreboard's top and bottom), what it answered, what was scored (a template turn: a
        proposal another restart had scored first too, with that score, as the console and
        the next prompt said) and what rejected (and why; a names turn: "Class -> name" for
        each one-class change), and the best so far after it."""
        scores = self.scores()
        shared = self._shared(scores) if not scores.empty else scores
        proposed = pd.concat([scores, shared]) if not shared.empty else scores  # a turn's, scored by it or before
        ends = self.answer_ends()
        out = []
        kinds = ANSWER_KINDS
        for ex in self.answers():
            call = int(ex["call"])
            if ex["event"] == "llm_exchange":
                scored = proposed[proposed["call"] == call] if "call" in proposed else proposed.iloc[0:0]
                rejects = [e for e in self.of("reject") if e.get("call") == call]
                top, bottom = self._board(ex.get("restart"), ex["_line"])
            else:
                scored, rejects, top, bottom = self._names_answer(ex, call)
            # best so far = over everything recorded up to the end of this answer (`answer_ends`)
            upto = scores[scores["line"] <= ends[call]] if "line" in scores else scores
            usage = tokens_spent(ex)
            out.append({
                "call": call, "kind": kinds[ex["event"]], "restart": ex.get("restart"), "reset": ex.get("reset"),
                "iteration": ex.get("iteration"),
                "shown_top": top, "shown_bottom": bottom,
                "answer": ex.get("answer", ""),
                # the characters a cap cut it from (nothing kept: `why_nothing_read` says so), else 0
                "cut_from": (ex.get("answer_truncated") or {}).get("received_chars") or 0,
                "scored": [{"template": r.template, "selection": r.selection,
                            **{s: getattr(r, s) for s in ("train", "val") if hasattr(r, s)}}
                           for r in self._rank(scored).itertuples()] if not scored.empty else [],
                "rejected": [{"template": e["template"],
                              "reason": e["reason"] + (f" ({e['detail']})" if e.get("detail") else "")}
                             for e in rejects],
                "best_so_far": float(upto["selection"].max()) if not upto.empty else math.nan,
                "best_template": self._rank(upto)["template"].iloc[0] if not upto.empty else None,
                "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
                "latency_s": ex.get("latency_s"), "source": ex.get("source"), "cached": bool(ex.get("cached")),
            })
        return out

    def _names_answer(self, ex: dict, call: int) -> tuple[pd.DataFrame, list[dict], list, list]:
        """A names turn's (or the guard's) scored one-class changes as rows shaped like
        scored templates ("Class -> name"), its refused names, and no scoreboard."""
        rows = []
        for e in self.of("name_score"):
            if e.get("call") == call and len(e.get("changes") or ()) == 1:
                change = e["changes"][0]
                rows.append({"template": f"{change['from']} -> {change['to']}", "line": e["_line"],
                             "selection": selection_value(e.get("accuracy") or {}, e.get("prob") or {},
                                                          self.select_splits, self.metric, e.get("balance")),
                             **{s: (e.get("accuracy") or {}).get(s) for s in ("train", "val")},
                             "loss": (e.get("loss") or {}).get(self.select_splits[0], math.nan), "order": e["_line"]})
        rejects = [{"template": e.get("name", ""), "reason": e.get("reason", ""), "_line": e["_line"]}
                   for e in self.of("name_reject") if e.get("call") == call]
        return pd.DataFrame(rows, columns=["template", "line", "selection", "train", "val", "loss", "order"]), \
            rejects, [], []

    def iterations_frame(self) -> pd.DataFrame:
        """`iterations()` as a table, one row per LLM answer: where it was, how many of its
        templates were scored and rejected, the best of them, the best so far, its cost."""
        rows = []
        for it in self.iterations():
            best_new = max((s["selection"] for s in it["scored"]), default=math.nan)
            rows.append({k: it[k] for k in ("call", "kind", "restart", "reset", "iteration")}
                        | {"scored": len(it["scored"]), "rejected": len(it["rejected"]), "best_new": best_new,
                           "best_so_far": it["best_so_far"], "prompt_tokens": it["prompt_tokens"],
                           "completion_tokens": it["completion_tokens"], "latency_s": it["latency_s"],
                           "cached": it["cached"]})
        return pd.DataFrame(rows, columns=ITERATION_COLUMNS)  # a run without answers: no rows, the same columns

    def conversation(self) -> list[dict]:
        """The raw exchanges, of every kind of answer ("template", "names", "guard"): per LLM
        answer, the messages sent since the previous answer of its conversation (a names turn
        and a guard question are conversations of their own), then the answer. (A template
        turn's request repeats the previous answer as its first new message; it is shown once,
        as that answer.)"""
        return [{"call": ex["call"], "kind": ANSWER_KINDS[ex["event"]], "restart": ex.get("restart"),
                 "reset": ex.get("reset"), "iteration": ex.get("iteration"), "answer": ex.get("answer", ""),
                 "answered_by": ex.get("answered_by"),  # where the endpoint named another model
                 "messages": [m for m in ex.get("messages") or [] if m.get("role") != "assistant"]}
                for ex in self.answers()]

    def conversation_frame(self) -> pd.DataFrame:
        """`conversation()` as a table, one row per message (the answers as `assistant` rows),
        in the order they were exchanged."""
        rows = []
        for ex in self.conversation():
            place = {k: ex[k] for k in ("call", "kind", "restart", "reset", "iteration")}
            rows += [place | {"role": m.get("role"), "content": m.get("content")} for m in ex["messages"]]
            rows.append(place | {"role": "assistant", "content": ex["answer"]})
        return pd.DataFrame(rows, columns=["call", "kind", "restart", "reset", "iteration", "role", "content"])

    def ledger(self) -> dict:
        """LLM cost of the run: from summary.json, else counted from the history."""
        if self.summary and self.summary.get("ledger"):
            return self.summary["ledger"]
        return ledger(self.events)

    def names(self) -> pd.DataFrame:
        """The class names the search started from and found (summary.json "names"), one row
        per class: start, found, changed, and the accuracy on each split with the start and
        the found names (the winning template both times). No rows (the same columns) for a
        run that searched the template only, a soft-prompt run, or one not ended (its result
        holds the table; `winners_said` has the names it holds so far)."""
        table = (self.final or {}).get("names") or {}
        rows = []
        for c in table.get("classes") or []:
            row = {"class": c["class"], "start": c["start"], "found": c["found"], "changed": c["changed"]}
            for when in ("before", "after"):
                row |= {f"{split}_{when}": value for split, value in c["accuracy"][when].items()}
            rows.append(row)
        # `names()["found"]` of a run without the table was a KeyError
        return pd.DataFrame(rows, columns=None if rows else NAMES_COLUMNS)

    def confusion(self, split: str = "test") -> dict[str, pd.DataFrame]:
        """The confusion matrices with the start and the found names ("before", "after"):
        rows the true class, columns the predicted one, labelled with the start names; empty
        for a run that searched the template only. `split`: train, val or test."""
        one_of(split, "Run.confusion()", "split", SPLITS)
        table = (self.final or {}).get("names") or {}
        labels = table.get("start") or []
        return {when: pd.DataFrame(confusion_matrix(table, when, split), index=labels, columns=labels)
                for when in ("before", "after") if table.get("confusion")}

    def names_turns(self) -> list[dict]:
        """Each names turn: which classes were asked about, every proposed name scored (the
        selection value of its one-class change) or refused (the reason), the changes kept,
        the combinations of its picks not kept ({changes, reason, detail}), and `cut`: why
        the LLM budget ended the run in this turn before the drift guard could be asked about
        `unguarded` (scored changes, as in `scored`, not kept for that), or None."""
        turns = {}
        for e in self.events:
            if e["event"] == "names_exchange":
                turns[e["call"]] = {"call": e["call"], "restart": e.get("restart"), "reset": e.get("reset"),
                                    "iteration": e.get("iteration"), "asked": e.get("asked") or [], "scored": [],
                                    "refused": [], "kept": [], "combinations_refused": [], "cut": None,
                                    "unguarded": []}
            elif e["event"] in ("name_score", "name_reject", "names_change") and e.get("call") in turns:
                turn = turns[e["call"]]
                if e["event"] == "name_reject":
                    turn["refused"].append({"name": e.get("name"), "label": e.get("label"), "reason": e.get("reason")})
                    if e.get("reason") == GUARD_NOT_ASKED:  # its name_score came before it
                        turn["cut"] = e.get("detail")
                        turn["unguarded"] += [s for s in turn["scored"]
                                              if s.get("class") == e.get("class") and s.get("to") == e.get("name")]
                elif e["event"] == "names_change":
                    turn["kept"] += e.get("changes") or []
                    turn["combinations_refused"] += e.get("refused_combinations") or []
                elif len(e.get("changes") or ()) == 1:
                    value = selection_value(e.get("accuracy") or {}, e.get("prob") or {}, self.select_splits,
                                            self.metric, e.get("balance"))
                    turn["scored"].append({**e["changes"][0], "selection": value})
        return list(turns.values())

    def transfers(self) -> list[dict]:
        """The transfers made from this run (`promptclimb transfer`: transfer-<backbone>.json
        summaries, by file name); a file that cannot be read is left out, and named with the
        reason by `unreadable_transfers()`."""
        return self._read_transfers()[0]

    def unreadable_transfers(self) -> list[str]:
        """'<file>: <why>' for each transfer-*.json that cannot be read (`show` and `report`
        warn about them instead of leaving them out silently)."""
        return self._read_transfers()[1]

    def _read_transfers(self) -> tuple[list[dict], list[str]]:
        good, bad = [], []
        for path in sorted(self.path.glob("transfer-*.json")):
            try:
                summary = json.loads(path.read_text(encoding="utf-8"))
            except OSError as exc:
                bad.append(f"{path}: cannot be read ({exc.strerror or exc})")
                continue
            except ValueError as exc:  # not JSON, or not UTF-8
                bad.append(f"{path}: damaged (not valid JSON: {exc})")
                continue
            if not isinstance(summary, dict) or any(not isinstance(summary.get(k), dict) for k in TRANSFER_PARTS):
                bad.append(f"{path}: not a transfer summary (written by promptclimb transfer)")
                continue
            good.append(summary)
        return good, bad


def _names_key(names) -> tuple | None:
    """A row's or an event's class names as a key (None, or NaN in a frame: the start names)."""
    return tuple(names) if isinstance(names, (list, tuple)) else None


def load_run(path: str | Path) -> Run:
    """A run folder read back (NewerFormat / PromptclimbError for what cannot be read)."""
    path = Path(path)
    config = read_json(path / CONFIG)
    check_config(config, path / CONFIG)
    summary = read_summary(path)
    events, skipped = read_events(path / HISTORY)
    return Run(path, config, summary, events, skipped)


# What a transfer-<backbone>.json must hold to be shown (agent/api.py, transfer_summary).
TRANSFER_PARTS = ("target", "rank_correlation", "winner", "baseline", "target_best", "files")
