"""What people do after a search: `promptclimb runs`, `show`, `report`, `transfer`, `compare`.

Each is a thin shell over the Python API (agent/api.py: `load_run`, `transfer`) and the
readers of agent/runs/. Only `transfer` needs the CLIP side (it re-scores templates on
another backbone), and it imports it only when it runs, so the others never pay for torch.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable

import click
import pandas as pd

from promptclimb.agent.api import load_run, on_stderr, transfer, transfer_table
from promptclimb.agent.core.defaults import DEFAULT_PRECISION, PRECISION_HELP, PRECISIONS
from promptclimb.agent.core.classnames import PUBLISHED, first_renames, renamed_pairs, renames
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.cli.errors import user_errors
from promptclimb.agent.cli.params import TableText
from promptclimb.agent.core.format import markdown_text, moment, pct, shell_command, shortened, shots_said
from promptclimb.agent.options import BY_KEYWORD
from promptclimb.agent.proposals import why_nothing_read
from promptclimb.agent.runs.reading import find_run, list_sweep_dirs
from promptclimb.agent.runs.recorded import run_start_names, without_root
from promptclimb.agent.runs.run import Run
from promptclimb.agent.runs.listing import continue_said, names_turns_shown, result_said, runs_frame
from promptclimb.agent.runs.compact import CLASSES_IN_FULL
from promptclimb.agent.runs.store import ANSWER_KINDS, CONFIG, HISTORY
from promptclimb.agent.adapt import adapter_said
from promptclimb.agent.softsearch import is_soft_prompt_run, soft_prompt_lines, spent_said, steps_table
from promptclimb.agent.core.templates import BASELINE

FORMATS = ["table", "markdown", "csv", "json"]
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}

runs_dir_option = click.option("--runs-dir", type=TableText(BY_KEYWORD["runs_dir"]), default="runs",
                               help="Where run folders are.")
format_option = click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", help="Output format.")


# -- formatting -----------------------------------------------------------------------------
NAME_WIDTH = 40  # characters of a class name in `show`'s names table on a terminal


def as_text(frame: pd.DataFrame, fmt: str, percent: tuple[str, ...] = ()) -> str:
    """A table as `table` (aligned text), `markdown`, `csv` or `json` (records)."""
    if fmt == "csv":
        return frame.to_csv(index=False, float_format="%.6g").rstrip("\n")
    if fmt == "json":
        return frame.to_json(orient="records", indent=2, date_format="iso", force_ascii=False)
    shown = frame.copy()
    for col in percent:
        if col in shown:
            shown[col] = shown[col].map(pct)
    shown = shown.astype(object).where(shown.notna(), "")
    if shown.empty:
        return "(none)"
    if fmt == "markdown":  # a `|` or a line break in a template would end its cell, or its row
        for col in shown.columns:
            shown[col] = shown[col].map(markdown_cell)
    return shown.to_markdown(index=False, tablefmt="github" if fmt == "markdown" else "simple",
                             disable_numparse=True)


def markdown_cell(value):
    """A table cell's text as it must be written inside a markdown (GitHub) table."""
    if not isinstance(value, str):
        return value
    return markdown_text(value).replace("\r", " ").replace("\n", " ")


def backtick_fence(text: str, shortest: int) -> str:
    """Backticks enough to open code that holds `text` whole: more than its longest run of
    backticks (an LLM answer quoting templates in ``` or in `...` would close a shorter one)."""
    return "`" * max(shortest, max(map(len, re.findall(r"`+", text)), default=0) + 1)


def markdown_code(text: str) -> str:
    """`text` as an inline code span (padded where it starts or ends with a backtick, which
    would otherwise join the fence; markdown drops one space on each side)."""
    fence = backtick_fence(text, 1)
    pad = " " if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def skipped_note(run: Run) -> str | None:
    if not run.skipped:
        return None
    lines = [f"warning: {len(run.skipped)} line(s) of {run.path / 'history.jsonl'} could not be read and were "
             "skipped; showing the valid ones:"]
    lines += [f"  {s}" for s in run.skipped[:10]]
    if len(run.skipped) > 10:
        lines.append(f"  ... and {len(run.skipped) - 10} more")
    return "\n".join(lines)


def history_note(run: Run) -> str | None:
    """A finished run (summary.json) whose history.jsonl is missing or empty: what is shown of it
    is its summary's result and cost alone ("0 LLM answers" beside its token counts; a
    soft-prompt run, which asks no LLM, its steps and queries in all, without their table),
    and the fixtures of a finished run without a history are read so (not refused): say why."""
    history = run.path / HISTORY
    if run.summary is None or run.events or run.skipped:
        return None
    kept, lost = (("the result, its steps and queries in all", "steps one by one")
                  if is_soft_prompt_run(run.config) else ("the result and its cost", "LLM answers, scores or steps"))
    return (f"warning: {history} is {'empty' if history.exists() else 'missing'}: showing what summary.json holds "
            f"({kept}), not the run's {lost}")


def open_run(run: str, runs_dir: str) -> Run:
    """The run (promptclimb.load_run), with a warning on stderr for history lines skipped or a
    history lost."""
    loaded = load_run(find_run(run, runs_dir))  # an empty RUN refused as the command's, not load_run()'s
    for note in (skipped_note(loaded), history_note(loaded)):
        if note:
            click.echo(note, err=True)
    for problem in loaded.unreadable_transfers():  # left out of what is shown: say so
        click.echo(f"warning: transfer left out: {problem}", err=True)
    return loaded


# -- runs -----------------------------------------------------------------------------------
@click.command("runs", context_settings=CONTEXT)
@runs_dir_option
@format_option
@click.option("--dataset", "datasets", multiple=True, help="Only runs on this dataset (repeatable).")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["done", "stopped-early", "unfinished", "failed", "running"]),
              help="Only runs in this state (repeatable; stopped-early: ended by --max-calls or --max-tokens; "
                   "failed: its search ended in an error; unfinished: killed).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the newest N runs listed.")
@user_errors
def runs_cmd(runs_dir, fmt, datasets, statuses, limit):
    """List the runs under --runs-dir, newest first.

    \b
    Examples:
      promptclimb runs
      promptclimb runs --dataset eurosat --status done --limit 5
      promptclimb runs --runs-dir elsewhere/runs --format csv
    """
    if fmt != "table" and not Path(runs_dir).expanduser().is_dir():
        # an empty list of records is right for a folder with no runs; a folder misspelt is not one
        raise PromptclimbError(f"no folder {Path(runs_dir).expanduser().resolve()} (--runs-dir): no runs to list")
    frame = runs_frame(runs_dir)
    # a sweep's cells are runs one level down: said beside the table (on stderr: csv and json stay records)
    sweeps = [shell_command('runs', '--runs-dir', str(p)) for p in list_sweep_dirs(runs_dir)]
    if frame.empty and fmt == "table":
        if (Path(runs_dir).expanduser() / CONFIG).is_file():  # --runs-dir given a run folder itself
            raise PromptclimbError(f"{Path(runs_dir).resolve()} is a run, not a folder of runs: read it with "
                                   f"{shell_command('show', str(runs_dir))}")
        raise PromptclimbError(f"no runs under {Path(runs_dir).resolve()} " + (
            f"but sweeps; their runs: {'; '.join(sweeps)}" if sweeps else
            "(start one with `promptclimb search`, or point --runs-dir elsewhere)"))
    if not frame.empty:  # a run's status may carry a note after a comma ("done, 1 bad lines")
        if datasets:  # any spelling of a dataset (hf:o/n:default is hf:o/n), as a run recorded it or as given
            from promptclimb.evaluators.datasets import canonical_dataset_name

            frame = frame[frame["dataset"].map(canonical_dataset_name).isin(map(canonical_dataset_name, datasets))]
        if statuses:
            frame = frame[frame["status"].str.split(",").str[0].isin([s.replace("-", " ") for s in statuses])]
        frame = frame.head(limit) if limit else frame
        if frame.empty and fmt == "table":
            raise PromptclimbError(f"no runs under {Path(runs_dir).resolve()} match "
                                   + " and ".join(f"--{flag} {' or '.join(values)}" for flag, values in
                                                  (("dataset", datasets), ("status", statuses)) if values))
    if fmt in ("table", "markdown") and not frame.empty:
        frame = frame.assign(date=frame["date"].map(moment))  # UTC, and saying so
    click.echo(as_text(frame, fmt, percent=("train", "test", "result test")))
    if sweeps:
        click.echo(f"sweeps here (their runs not listed above): {'; '.join(sweeps)}", err=True)


# -- show -----------------------------------------------------------------------------------
def headline(run: Run) -> str:
    status = run.status_said
    said = (f"run {run.id}: {run.dataset}, backbone {run.backbone}, {shots_said(run.args.get('shots'))}, "
            f"seed {run.args.get('seed')}, {start_said(run.args.get('classnames'))}")
    if is_soft_prompt_run(run.config):  # no LLM: what it spent is queries, not answers or tokens
        return f"{said}optimizer {run.config['optimizer']}; {status}\n{spent_said(run)} (prompts scored on train)"
    ledger = run.ledger()
    answers = run.answers()
    kinds = {kind: sum(ANSWER_KINDS[e["event"]] == kind for e in answers) for kind in ANSWER_KINDS.values()}
    # names turns and the guard's questions are LLM answers too, often most of them
    by_kind = (" (" + ", ".join(f"{n} {kind}" for kind, n in kinds.items() if n) + ")"
               if len(answers) > kinds["template"] else "")
    return (
        f"{said}LLM {run.llm}{answered_said(run)}, pool {run.pool}, ranked by {run.ranked_by}{settings_said(run)}; "
        f"{status}\n"
        f"{len(answers)} LLM answers{by_kind}; {ledger.get('cache_hits', 0)} from the cache, "
        f"{ledger.get('prompt_tokens', 0)} prompt + {ledger.get('completion_tokens', 0)} completion tokens; "
        f"{len(run.of('score'))} templates scored, {len(run.of('reject'))} template lines refused{names_said(run)}"
    )


def settings_said(run) -> str:
    """The search's settings a reader cannot tell from its results, where not the default:
    renames kept with no drift guard looked like guarded ones, a climb of templates only like
    one that found no better names."""
    from promptclimb.agent.search import RECORDED_BEFORE_IT_EXISTED, SearchConfig

    # a run recorded before a setting existed ran without it (it resumes so, agent/resume.py)
    search, default = {**RECORDED_BEFORE_IT_EXISTED, **(run.config.get("search") or {})}, SearchConfig()
    said = [f"search {search['search']}"] if search.get("search") not in (None, default.search) else []
    if search.get("search", default.search) != "template" and search.get("guard") not in (None, default.guard):
        said.append(f"guard {search['guard']}")
    said += [f"confirm {search['confirm']}"] if search.get("confirm") not in (None, default.confirm) else []
    return "".join(f", {s}" for s in said)


def names_said(run) -> str:
    """What a run's names turns scored and refused, as its headline adds it (the count of refused
    proposals had counted template lines only, beside an answers table that counts both)."""
    counted = run.names_counted()
    return f"; {counted[0]} names scored, {counted[1]} refused" if counted else ""


def start_said(spec) -> str:
    """The names a run started from, as its headline says them where they are not the data's
    own labels: a set's name, a file, or the first names themselves (a list, from Python)."""
    if spec in (None, PUBLISHED):
        return ""
    if isinstance(spec, list):
        spec = ", ".join(map(str, spec[:4])) + (", ..." if len(spec) > 4 else "")
    return f"start names {spec}, "


def where(it: dict) -> str:
    def one(v):
        return "?" if v is None else v + 1

    return f"answer {it['call'] + 1} (restart {one(it['restart'])}, reset {one(it['reset'])}, iteration {it['iteration']})"


def show_text(run: Run, conversation: bool, markdown: bool) -> str:
    h2 = (lambda s: f"\n## {s}\n") if markdown else (lambda s: f"\n{s}\n{'-' * len(s)}")
    code = markdown_code if markdown else (lambda s: s)
    literal = markdown_text if markdown else (lambda s: s)
    out = [f"# {literal(headline(run))}" if markdown else headline(run)]  # a run named my_*best* is no markup
    said = continue_said(run)  # an unfinished run: how to go on, as the report says it
    if said is not None:
        resume, note = said
        out.append(("\n" if markdown else "") + f"continue it with: {code(resume)}")  # markdown: a paragraph of its own
        if note:
            out.append(f"({note})")
    baseline = ((run.final or {}).get("baseline") or {}).get("accuracy", {}).get("test")
    result, result_test = result_said(run.final)
    if baseline is not None and result_test is not None:  # the search's last words, read back the day after
        out.append(("\n" if markdown else "") + f"test accuracy: {pct(baseline)} ({code(repr(BASELINE))} with the start "
                   f"names) -> {pct(result_test)} ({result})")
    out.append(h2("Winning templates (test accuracy: best template and ensemble only)"))
    out.append(as_text(run.winners_said(), "markdown" if markdown else "table", percent=("train", "val", "test")))
    adapter = (run.final or {}).get("adapter")
    if adapter and not is_soft_prompt_run(run.config):  # a soft-prompt run's is in its own section below
        out.append(f"{'- ' if markdown else ''}{adapter_said(adapter)}")
    names = run.names()
    if not names.empty:
        out.append(h2(f"Class names ({int(names['changed'].sum())} of {len(names)} changed; accuracy with the "
                      "start names -> the found ones, the winning template both times)"))
        shown = names[["start", "found", "train_before", "train_after", "test_before", "test_after"]]
        if len(shown) > CLASSES_IN_FULL:  # 397 rows bury the few that changed
            shown = shown[names["changed"]]
            out.append(f"(the changed classes; all {len(names)} in summary.json and the report)")
        if not markdown:  # a terminal's table, not as wide as its longest folder name (markdown keeps them whole)
            shown = shown.assign(**{k: shown[k].map(lambda name: shortened(name, NAME_WIDTH))
                                    for k in ("start", "found")})
        if not shown.empty:
            out.append(as_text(shown, "markdown" if markdown else "table",
                               percent=("train_before", "train_after", "test_before", "test_after")))
    transfers = run.transfers()
    scored_now = int(transfer_table(run)["source_rank"].notna().sum()) if transfers else 0
    for summary in transfers:
        target = summary["target"]
        # the backbone, its pretrained tag and the run's folder are the user's names: no markup
        out.append(h2(literal(f"Transfer to {target['backbone']}"
                              + (f" ({target['pretrained']})" if target.get("pretrained") else "")
                              + (f" (weights {target['weights']})" if target.get("weights") else "")
                              + (f", {target['precision']}"
                                 if target.get("precision", DEFAULT_PRECISION) != DEFAULT_PRECISION else ""))))
        out += [f"{'- ' if markdown else ''}{line}" for line in transfer_lines(summary)]
        if summary.get("templates") != scored_now:  # made before the run went on (a resume)
            out.append(f"{'- ' if markdown else ''}made when the run had scored {summary.get('templates')} templates; "
                       f"it has {scored_now} now: transfer again")
        out.append(f"{'- ' if markdown else ''}plot: {literal(str(run.path / summary['files']['plot']))}")
    if is_soft_prompt_run(run.config):  # no LLM turns: the soft prompt and its steps instead
        return "\n".join(out + soft_prompt_lines(run, markdown)).rstrip()
    turns = names_turns_shown(run)
    if turns:
        out.append(h2("Names turns"))
        bullet, sub = list_bullets(markdown)
        for turn in turns:
            kept = ", ".join(f"{literal(c['from'])} -> {literal(c['to'])}" for c in turn["kept"])
            kept = f"kept {kept or 'nothing'}"
            if turn["undecided"]:
                kept = "kept nothing so far" + ("" if run.status == "running" else
                                                " (the run stopped in this turn: a resume goes on from it)")
            out.append(f"{bullet}{where(turn)}: asked about {literal(', '.join(turn['asked']))}; {kept}")
            for s in turn["shown"]:
                mark = "  (kept)" if s["kept"] else ""
                out.append(f"{sub}{pct(s['selection']):>6}  {literal(s['from'])} -> {literal(s['to'])}{mark}")
            if turn["reasons"]:
                out.append(f"{sub}refused: " + ", ".join(f"{n} {literal(why)}" for why, n in turn["reasons"].items()))
            if turn["cut"]:
                unguarded = ", ".join(f"{literal(s['from'])} -> {literal(s['to'])} ({pct(s['selection'])})"
                                      for s in turn["unguarded"])
                out.append(f"{sub}cut by the budget ({literal(turn['cut'])}): the drift guard could not finish its "
                           f"questions about {unguarded}, so not kept; the search stopped here")
            for combination in turn["combinations_refused"]:
                changes = ", ".join(f"{literal(c['from'])} -> {literal(c['to'])}" for c in combination["changes"])
                out.append(f"{sub}not combined: {changes} ({literal(combination['reason'])}: "
                           f"{literal(combination['detail'])})")
    out.append(h2("Iteration by iteration"))
    exchanges = {e["call"]: e for e in run.conversation()}
    iterations = run.iterations()
    if not iterations:
        out.append("(no LLM answer recorded)")
    bullet, sub = list_bullets(markdown)
    judges = {e["call"]: e for e in run.of("names_judge")}
    name_scores = run.of("name_score")  # once: read for every guard answer
    # the answer of a turn the run stopped in (killed, failed) was not scored yet: its lines were not "none"
    stopped_in = run.open_turn() if run.status in ("unfinished", "failed") else set()
    for it in iterations:
        kind = "" if it["kind"] == "template" else f" [{it['kind']}]"
        if it["kind"] == "guard":  # its answer is the whole story, beside the change it judged
            asked = guard_asked(run, judges.get(it["call"], {}), name_scores)
            out.append(("### " if markdown else "") + f"{where(it)}{kind} {literal(asked)}: judged "
                       f"{code(shortened(' '.join(it['answer'].split()), 80))}")
            if conversation:
                out += exchange_lines(exchanges[it["call"]], bullet, markdown)
            if not markdown:
                out.append("")
            continue
        out.append(("### " if markdown else "") + f"{where(it)}{kind}: best so far {pct(it['best_so_far'])}")
        if conversation:
            out += exchange_lines(exchanges[it["call"]], bullet, markdown)
        if it["kind"] == "template" and not conversation:
            out.append(f"{bullet}shown:")
            for s in it["shown_top"]:
                out.append(f"{sub}top     {pct(s['selection']):>6}  {code(s['template'])}")
            for s in it["shown_bottom"]:
                out.append(f"{sub}bottom  {pct(s['selection']):>6}  {code(s['template'])}")
        # (an answer with nothing to score was read: what stopped the run came after it)
        readable = "{}" in (it.get("answer") or "") if it["kind"] == "template" else ":" in (it.get("answer") or "")
        why = ("the run stopped before it scored this answer: a resume goes on from it" if it["call"] in stopped_in
               and readable else why_nothing_read(it.get("answer") or "", it["kind"], it.get("cut_from") or 0))
        out.append(f"{bullet}proposed: {len(it['scored'])} scored, {len(it['rejected'])} rejected"
                   + (f" ({why})" if not it["scored"] and not it["rejected"] else ""))
        for s in it["scored"]:
            mark = "  <- best so far" if s["template"] == it["best_template"] else ""
            out.append(f"{sub}{pct(s['selection']):>6}  {code(s['template'])}{mark}")
        for r in it["rejected"]:
            out.append(f"{sub}rejected  {code(shortened(r['template'], 80))}: {literal(r['reason'])}")
        if not markdown:
            out.append("")
    return "\n".join(out).rstrip()


def answered_said(run: Run) -> str:
    """The models that answered where the endpoint named others than the one asked for."""
    answered = run.answered_by
    if not answered:
        return ""
    return f" (answered as {', '.join(answered[:3])}{' ...' if len(answered) > 3 else ''})"


def exchange_lines(ex: dict, bullet: str, markdown: bool) -> list[str]:
    """One exchange of `Run.conversation()` as `show --conversation` prints it: each message
    sent, then the answer."""
    out = []
    for m in ex["messages"]:
        out += [f"{bullet}[{m.get('role')}]", indent(m.get("content", ""), markdown)]
    return out + [f"{bullet}[assistant]", indent(ex["answer"], markdown)]


def guard_asked(run: Run, judge: dict, name_scores: list[dict]) -> str:
    """The change a drift-guard question (its `names_judge` event) was about, "Class -> name":
    the class as its turn's score of the change (`name_scores`: the run's) named it (the names
    then current), else by its start name, since the event holds the class's number only."""
    cls, name = judge.get("class"), judge.get("name", "?")
    changes = [e["changes"][0] for e in name_scores if e["_line"] < judge.get("_line", 0)
               and len(e.get("changes") or ()) == 1 and e["changes"][0].get("class") == cls
               and e["changes"][0].get("to") == name]
    if changes:
        return f"{changes[-1].get('from')} -> {name}"
    start = run.start_names or []
    return f"{start[cls] if isinstance(cls, int) and cls < len(start) else f'class {cls}'} -> {name}"


def list_bullets(markdown: bool) -> tuple[str, str]:
    """How `show` starts a line of a list, and a line under it: in markdown "- " and a nested
    "  - " (four spaces, as the terminal indents it, make an indented code block there, where
    templates show their backticks and nothing after a bullet is a list item)."""
    return ("- ", "  - ") if markdown else ("  ", "      ")


def indent(text: str, markdown: bool) -> str:
    if markdown:
        fence = backtick_fence(text, 3)
        return f"{fence}text\n{text.rstrip()}\n{fence}"
    return "\n".join("      " + line for line in text.rstrip().splitlines())


def show_rows(run: Run, conversation: bool) -> pd.DataFrame:
    """csv: every template of the run, one row each (pool, scored proposals, rejected ones);
    with --conversation, every message instead (none for a soft-prompt run, which asks no
    LLM); else a soft-prompt run's steps (it scores no templates)."""
    if conversation:  # a soft-prompt run's: no rows, as json's "conversation" is [] (not its steps)
        return run.conversation_frame()
    if is_soft_prompt_run(run.config):
        return pd.DataFrame(steps_table(run.events))
    scores = run.scores()
    keep = [c for c in ("restart", "reset", "iteration", "call", "template", "origin", "source", "train", "val",
                        "best_so_far") if c in scores]
    frame = scores[keep].assign(status="scored", reason="")
    if "names" in scores:  # the classes renamed where a names turn changed them ("": the start names)
        start = run.start_names  # as prompts.csv: the history's (it read config.json's)
        frame.insert(frame.columns.get_loc("template") + 1, "names",
                     [renames(start, names) for names in scores["names"]])
    rejects = pd.DataFrame([{k: e.get(k) for k in ("restart", "reset", "iteration", "call", "template", "reason")}
                            | {"origin": "llm", "status": "rejected", "_line": e["_line"]} for e in run.of("reject")])
    if not rejects.empty:
        frame = pd.concat([frame.assign(_line=scores["line"]), rejects]).sort_values("_line").drop(columns="_line")
    return frame.reset_index(drop=True)


def show_json(run: Run, conversation: bool) -> str:
    def clean(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    doc = {
        "run_id": run.id, "path": str(run.path), "dataset": run.dataset, "backbone": run.backbone,
        "shots": run.args.get("shots"), "seed": run.args.get("seed"), "llm": run.llm, "select": run.select,
        "pool": run.pool, "metric": run.metric,
        "status": run.status, "stopped": (run.final or {}).get("stopped"),
        "winners": run.winners().to_dict("records"), "ensemble": (run.final or {}).get("ensemble"),
        "ledger": run.ledger(), "transfers": run.transfers(), "iterations": run.iterations(),
        "names": run.names().to_dict("records"),  # start -> found, per class (empty: the template only)
        "adapter": (run.final or {}).get("adapter"), "soft_prompt": (run.final or {}).get("soft_prompt"),
        "skipped": [{"line": s.line, "reason": s.reason} for s in run.skipped],
    }
    if conversation:
        doc["conversation"] = run.conversation()
    return json.dumps(clean(doc), indent=2, ensure_ascii=False, default=str)


@click.command("show", context_settings=CONTEXT)
@click.argument("run")
@runs_dir_option
@format_option
@click.option("--conversation", is_flag=True, help="Print the raw exchanges with the LLM (every message and answer).")
@user_errors
def show_cmd(run, runs_dir, fmt, conversation):
    """Show a search as a person reads it: the winning templates, then iteration by iteration
    what the LLM was shown, what it proposed, what was rejected and why, and the best so far.

    RUN is a run id under --runs-dir (or a unique start of one), or a path to a run folder.
    csv gives one row per template (pool, scored, rejected) and set of names it was scored
    with (`names`: the classes renamed; the names turns' proposals are in json and
    summary.json), or per step of a soft-prompt run; with --conversation, one row per message.

    csv and json write restart, reset and call (the LLM answer) counted from 0, as
    history.jsonl holds them, and iteration as it is there too (0: the pool, scored before
    any answer; LLM turns from 1 inside each reset); the table, markdown and the report
    count restarts, resets and answers from 1 ("answer 1 (restart 1, reset 1, iteration 1)"
    is call 0, restart 0, reset 0, iteration 1).

    \b
    Examples:
      promptclimb show 20250101-120000-eurosat-4shot
      promptclimb show 20250101 --format markdown > search.md
      promptclimb show runs/my-run --conversation
    """
    loaded = open_run(run, runs_dir)
    if fmt == "json":
        click.echo(show_json(loaded, conversation))
    elif fmt == "csv":
        click.echo(as_text(show_rows(loaded, conversation), "csv"))
    else:
        click.echo(show_text(loaded, conversation, markdown=fmt == "markdown"))


# -- report ---------------------------------------------------------------------------------
@click.command("report", context_settings=CONTEXT)
@click.argument("run")
@runs_dir_option
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Where to write the page, - for stdout [default: report.html in the run folder].")
@user_errors
def report_cmd(run, runs_dir, output):
    """Write one self-contained HTML page of a run (summary, tables, the plot, the
    conversation folded away) for sharing. RUN: a run id under --runs-dir, or a path.

    \b
    Example:
      promptclimb report 20250101-120000-eurosat-4shot
    """
    from promptclimb.agent.runs.plots import CURVE
    from promptclimb.agent.runs.report import REPORT, report_html, write_report

    loaded = open_run(run, runs_dir)
    if output == "-":  # the page alone on stdout (`report RUN -o - | ...`): where the plot went, on stderr
        click.echo(report_html(loaded), nl=False)
        if (loaded.path / CURVE).exists():
            click.echo(f"plot:   {loaded.path / CURVE}", err=True)
        return
    try:
        path = write_report(loaded, output)
    except OSError as exc:
        if output:
            raise
        # the page went nowhere: say where it can go (the error itself names a temp file)
        raise PromptclimbError(f"cannot write {loaded.path / REPORT}: {exc.strerror or exc}; write the page "
                               "elsewhere with -o FILE, or -o - for stdout") from None
    if (loaded.path / CURVE).exists():
        click.echo(f"plot:   {loaded.path / CURVE}")
    click.echo(f"report: {path}")


# -- transfer -------------------------------------------------------------------------------
@click.command("transfer", context_settings=CONTEXT)
@click.argument("run")
@click.option("--backbone", type=TableText(BY_KEYWORD["backbone"]), required=True,  # '' refused before the run is looked up
              help="Target CLIP backbone (open_clip architecture name, demo, or demo-mpnet).")
@click.option("--pretrained", type=TableText(BY_KEYWORD["pretrained"]), default=None,
              help="open_clip pretrained tag of the target (e.g. openai).")
@click.option("--weights", type=TableText(BY_KEYWORD["weights"]), default=None, help="Local weights file of the target.")
@click.option("--top", "top", type=click.IntRange(min=1), default=5,
              help="How many of the run's best templates to print (every template is re-scored and saved).")
@click.option("--data-root", type=TableText(BY_KEYWORD["data_root"]), default=None,
              help="Where the dataset lives [default: the run's]. Another folder is recorded in the saved "
                   "summary and said by `show`; its files are the backbone's, so they replace the last transfer to it.")
@click.option("--device", type=TableText(BY_KEYWORD["device"]), default=None,
              help="torch device [default: cuda when available, else cpu].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=DEFAULT_PRECISION, show_default=True,
              help=PRECISION_HELP)
@runs_dir_option
@format_option
@user_errors
def transfer_cmd(run, backbone, pretrained, weights, top, data_root, device, precision, runs_dir, fmt):
    """Re-score every template a run scored, plus the baseline "a photo of a {}.", on
    another backbone with the same dataset split (dataset, shots, seed of the run): how well
    the run's ranking carries over. Prints source vs target accuracy of the --top templates,
    the rank correlation (Spearman) over all of them, where the source winner ranks on the
    target, and the run's ensemble on the target. Saves in the run folder
    transfer-<backbone>[-<pretrained>|-<weights>-<hash>][-bf16].csv (every template, with the names it went with),
    .json (the summary, shown
    by `show` and `report`) and .png (source vs target accuracy, one point per template).

    \b
    Examples:
      promptclimb transfer 20250101-120000-eurosat-4shot --backbone ViT-B-16 --pretrained openai
      promptclimb transfer my-run --backbone ViT-B-32 --weights ~/models/vit-b-32.safetensors --top 10
    """
    loaded = open_run(run, runs_dir)
    args = loaded.args
    full = transfer(loaded, backbone, pretrained=pretrained, weights=weights, data_root=data_root, device=device,
                    precision=precision, echo=on_stderr)  # the image-feature lines (and bars) on stderr
    summary, path = full.attrs["transfer"], full.attrs["path"]
    table = full[(full["source_rank"] <= top) | (full["template"] == BASELINE)]
    if fmt in ("csv", "json"):
        click.echo(as_text(table, fmt))
    else:
        cols = ["template", "source_train", "source_val", "source_test", "target_train", "target_val", "target_test"]
        shown = table[cols].rename(columns=lambda c: c.replace("source_", "src ").replace("target_", "tgt "))
        click.echo(f"{loaded.id}: {summary['templates']} templates re-scored on {backbone}"
                   f"{f' ({pretrained})' if pretrained else ''} (source: {loaded.backbone}), "
                   f"{args['dataset']} {shots_said(args.get('shots'))} seed {args.get('seed')}; "
                   + (f"the best {top}:" if top < summary["templates"] else "all of them:"))
        click.echo(as_text(shown, fmt, percent=tuple(shown.columns[1:])))
        click.echo("\n".join(transfer_lines(summary)))
    click.echo(f"saved {path}, {path.with_suffix('.json').name}, {path.with_suffix('.png').name}",
               err=fmt in ("csv", "json"))


def fmt_rho(rho: float | None) -> str:
    if rho is None or math.isnan(rho):
        return "n/a (fewer than 2 templates scored on both, or all tied)"
    return f"{rho:+.2f}"


def transfer_lines(summary: dict) -> list[str]:
    """A transfer (transfer-<backbone>.json) in a few sentences: `transfer` prints them, `show` too."""
    sel, n = summary["select"], summary["templates"]
    rho, winner, best = summary["rank_correlation"], summary["winner"], summary["target_best"]
    baseline = summary["baseline"]["target"]["test"]
    lines = [
        f"rank correlation (Spearman) over the {n} templates the run scored, source {sel} vs target {sel}: "
        f"{fmt_rho(rho['selection'])}; vs target test: {fmt_rho(rho['test'])}",
        f"the source winner ranks {winner['target_rank']}/{n} on target {sel} and {winner['target_test_rank']}/{n} "
        f"on target test: {pct(winner['target']['test'])} on target test (baseline {pct(baseline)}"
        # a transfer saved before the baseline was scored with the start names does not say so
        f"{f', {BASELINE!r} with the start names' if summary['baseline'].get('names') == 'start' else ''}; the "
        f"target's own best on {sel}, source rank {best['source_rank']}: {pct(best['target']['test'])})",
    ]
    if summary.get("data_root"):
        lines.append(f"scored on the images in {summary['data_root']} (--data-root), not on the run's own")
    ensemble = summary.get("ensemble")
    if ensemble:
        lines.append(f"the run's ensemble of {len(ensemble['templates'])}"
                     f"{'' if ensemble.get('chosen') else ' (not chosen)'}: target test {pct(ensemble['target_test'])}"
                     f" (source test {pct(ensemble['source_test'])})")
    return lines


# -- compare --------------------------------------------------------------------------------
@click.command("compare", context_settings=CONTEXT)
@click.argument("run1")
@click.argument("run2")
@click.option("--top", "top", type=click.IntRange(min=1), default=5, help="Winning templates per run.")
@runs_dir_option
@format_option
@user_errors
def compare_cmd(run1, run2, top, runs_dir, fmt):
    """Put two runs' winning templates side by side.

    \b
    Example:
      promptclimb compare 20250101-120000-eurosat-4shot 20250102-090000-eurosat-4shot
    """
    a, b = open_run(run1, runs_dir), open_run(run2, runs_dir)
    wa, wb = a.winners(top), b.winners(top)
    # Rows are matched by rank (1, 2, ..., then the ensemble), whatever each run holds; each
    # rank as `winners` gives it (a number, or "ens"), as `show --format json` writes it
    by_rank = [{r["rank"]: r for r in w.to_dict("records")} for w in (wa, wb)]
    ranks = sorted({k for ranked in by_rank for k in ranked}, key=lambda k: (k == "ens", k if k != "ens" else 0))
    records = fmt in ("csv", "json")
    rows = []
    for rank in ranks:
        row = {"rank": rank}
        for key, ranked in zip("AB", by_rank):
            r = ranked.get(rank)
            row[f"{key} template"] = r["template"] if r is not None else None
            for split in ("train", "test"):
                row[f"{key} {split}"] = r[split] if r is not None else None
            if records:  # the classes renamed in the names each row was scored with ("": the start names)
                row[f"{key} names"] = r["names"] if r is not None else None
        rows.append(row)
    frame = pd.DataFrame(rows)
    if records:  # which run is A and which B, in the rows themselves
        click.echo(as_text(frame.assign(**{"A run": a.id, "B run": b.id}), fmt))
        for note in compare_notes(a, b, top=top):  # beside the records, not in them: their reader still sees them
            click.echo(f"note: {note}", err=True)
        return
    facts = pd.DataFrame([
        {"": key, "run": run.id, "dataset": run.dataset, "backbone": run.backbone, "shots": run.args.get("shots"),
         "seed": run.args.get("seed"), "llm": run.llm, "llm answers": len(run.answers()), "status": run.status}
        for key, run in (("A", a), ("B", b))
    ])
    click.echo(as_text(facts, fmt))
    click.echo("")
    click.echo(as_text(frame, fmt, percent=("A train", "A test", "B train", "B test")))
    # a soft prompt is learned vectors: two that read alike (`<soft: a photo of a> {class}.`) are not shared
    soft = [is_soft_prompt_run(run.config) for run in (a, b)]
    shared = [] if any(soft) else shared_winners(a, b, wa, wb)
    # in markdown, list items (lines in a row would run into one paragraph) of escaped text
    item, literal = ("- ", markdown_text) if fmt == "markdown" else ("", lambda text: text)
    click.echo(f"\n{item}shared among the winners: {len(shared)}"
               + "".join(f"\n  {item}{literal(t)}{literal(f' (with {names})') if names else ''}"
                         for t, names in shared))
    for note in compare_notes(a, b, literal, top):
        click.echo(f"{item}note: {note}")


def winning_prompts(winners: pd.DataFrame) -> set[tuple[str, str]]:
    """A run's winners (`Run.winners`) as prompts, (template, the classes renamed): a template
    scored with renamed classes is another prompt than the same text with the start names (it
    was listed as shared, beside test figures apart); the ensemble's row is no template."""
    names = winners["names"].fillna("") if "names" in winners else [""] * len(winners)
    return {(t, n) for t, n in zip(winners["template"], names)
            if isinstance(t, str) and not t.startswith("ensemble of")}


def starts_differ(a: Run, b: Run) -> bool:
    """Whether two runs start from different class names (--classnames clean beside the
    published labels): each one's `names` ("" for its start names, "Trouser -> jeans") is
    then said from names the other does not hold."""
    return bool(a.start_names and b.start_names and list(a.start_names) != list(b.start_names))


def names_by_label(run: Run) -> dict[str, tuple[str, ...]]:
    """The names a run's winners were scored with, by the label `Run.winners` gives them (the
    classes renamed from its own start; "" its start names): its start names, each names
    change it kept, its result's."""
    start = run.start_names or []
    held = [start, *(e.get("names") for e in run.of("names_change")), run.held_names]
    return {renames(start, names): tuple(names) for names in held if isinstance(names, (list, tuple)) and names}


def shared_winners(a: Run, b: Run, wa: pd.DataFrame, wb: pd.DataFrame) -> list[tuple[str, str]]:
    """The prompts both runs list among their winners (`winning_prompts`), as (template, the
    names said), in order. From different start names the same label is other names in each
    (`a photo of a {}.` with A's Trouser and with B's trousers was listed as shared, and the
    same template with A's rename to B's start name was not): matched by the names
    themselves then, and said as A's."""
    prompts_a, prompts_b = winning_prompts(wa), winning_prompts(wb)
    if not starts_differ(a, b):
        return sorted(prompts_a & prompts_b)
    in_a, in_b = names_by_label(a), names_by_label(b)
    held_b = {(t, in_b[label]) for t, label in prompts_b if label in in_b}
    return sorted((t, f"A's renames {label}" if label else "A's start names") for t, label in prompts_a
                  if label in in_a and (t, in_a[label]) in held_b)


def compare_notes(a: Run, b: Run, literal: Callable[[str], str] = lambda text: text, top: int = 5) -> list[str]:
    """What `compare` says under its table: whether the two runs' accuracies are measured on
    the same images, and which classes each renamed and which of its `top` rows are scored
    with which names (`literal` escapes a run's own text)."""
    notes = []
    differ, names_differ = data_differences(a, b)
    if differ and same_test_images(a, b) and set(differ) <= FEW_SHOT_DRAW:
        notes.append(f"the runs draw different few-shot images ({', '.join(differ)} differ) and are "
                     "tested on the same images: their test accuracies compare, their train accuracies do not.")
    elif differ:
        notes.append(f"the runs use different dataset splits ({', '.join(differ)} differ); "
                     "their accuracies are not measured on the same images.")
    if names_differ and not {"classes", "class names"} & set(differ):  # said above where the data's labels differ
        notes.append(start_names_note(a, b, on_the_same_images=not differ, literal=literal))
    for key, run in (("A", a), ("B", b)):  # a template both list can score apart for this alone
        renamed = renamed_classes(run)
        if renamed:  # its pool's rows keep the start names they were scored with: all were said to be renamed
            notes.append(f"{key} ({literal(run.id)}) renamed {literal(renamed)}: {scored_with(run.winners_said(top))}.")
        adapter = (run.final or {}).get("adapter") or {}
        if adapter.get("result") == "adapter":  # the run's result is not the prompt's the table compares
            test = (adapter.get("accuracy") or {}).get("test")
            notes.append(f"{key} ({literal(run.id)}) keeps a {literal(str(adapter.get('kind')))} adapter"
                         f"{f' (test {pct(test)})' if isinstance(test, (int, float)) else ''}: the accuracies "
                         "above are its prompts' alone.")
    return notes


def start_names_note(a: Run, b: Run, on_the_same_images: bool, literal: Callable[[str], str]) -> str:
    """`compare`'s line for runs that start from different class names: which of B's differ
    from A's, and that each run's renames and names are counted from its own start."""
    start_a = run_start_names(a.config)  # as `data_differences` reads them
    pairs = renamed_pairs(start_a, run_start_names(b.config))
    which = f": {len(pairs)} of {len(start_a)} differ (A -> B: {literal(first_renames(pairs))})" if pairs else ""
    where = " on the same images" if on_the_same_images else ""
    return (f"the runs start from different class names (--classnames){where}{which}; each run's renames are "
            "counted from its own start names.")


def scored_with(winners: pd.DataFrame) -> str:
    """Which rows of a run's winners (`Run.winners_said`) are scored with which names: "rows
    1, ens with the names its search found; 2, 3 with the start names"."""
    ranks = {label: [str(r) for r in winners.loc[winners["names"] == label, "rank"]]
             for label in ("found", "start", "earlier")}
    said = {"found": "the names its search found", "start": "the start names", "earlier": "names it held earlier"}
    return "; ".join(f"{'row' if len(r) == 1 else 'rows'} {', '.join(r)} with {said[label]}"
                     for label, r in ranks.items() if r)


def renamed_classes(run: Run) -> str:
    """The classes a run's names search renamed, as 'n of N classes (a -> b, ...)'; '' when none:
    its result's names table, else (a run not ended has none yet, and said nothing while its
    best rows were scored with other names) the names it holds so far (`held_names`)."""
    names = run.names()
    if not names.empty:
        changed = [(r["start"], r["found"]) for _, r in names[names["changed"]].iterrows()]
        return f"{len(changed)} of {len(names)} classes ({first_renames(changed)})" if changed else ""
    start = run.start_names or []
    changed = renamed_pairs(start, run.held_names)
    return f"{len(changed)} of {len(start)} classes so far ({first_renames(changed)})" if changed else ""


SPLITS_COMPARED = ("train", "val", "test")  # not "unlabeled" (--metric balance): no accuracy is measured on it


# What `data_differences` may find that changes only the few-shot images drawn, not the test set.
FEW_SHOT_DRAW = {"shots", "seed", "images drawn"}


def recorded_data(run: Run) -> tuple[dict, dict]:
    """What a run's config.json records of its data: the dataset, and its split's image ids
    digest per split (`ids_sha256`); {} for what it does not record."""
    evaluator = run.config.get("evaluator") or {}
    return evaluator.get("dataset") or {}, (evaluator.get("split") or {}).get("ids_sha256") or {}


def same_test_images(a: Run, b: Run) -> bool:
    """Whether both runs recorded their test images and they are the same ones (the seed and
    the shots draw train and val; the test split stays)."""
    tests = [recorded_data(run)[1].get("test") for run in (a, b)]
    return bool(tests[0]) and tests[0] == tests[1]


def data_differences(a: Run, b: Run) -> tuple[list[str], bool]:
    """What of their data two runs' config.json say differs, as far as both record it, and
    whether they start from different class names on the same images (--classnames)."""
    (data_a, ids_a), (data_b, ids_b) = recorded_data(a), recorded_data(b)
    differ = [k for k in ("dataset", "shots", "seed") if a.args.get(k) != b.args.get(k)]
    # the dataset's identity covers its root and files (a folder's sizes and times); the root
    # aside, a copy of a folder elsewhere is the same data (a copy under its name draws the same
    # split); runs that recorded none (older, or no evaluator built yet) are told apart by
    # --data-root alone
    if data_a.get("identity") and data_b.get("identity"):
        same_data = without_root(data_a["identity"], a.args.get("data_root")) == \
            without_root(data_b["identity"], b.args.get("data_root"))
    else:
        same_data = a.args.get("data_root") == b.args.get("data_root")
    if not same_data or any(a.args.get(k) != b.args.get(k) for k in ("image_column", "label_column")):
        differ.append("data")
    if any(ids_a.get(k) != ids_b.get(k) for k in SPLITS_COMPARED if k in ids_a and k in ids_b):
        differ.append("images drawn")
    names_a, names_b = run_start_names(a.config), run_start_names(b.config)
    if "classes" in data_a and "classes" in data_b and data_a["classes"] != data_b["classes"]:
        differ.append("classes")
    elif names_a and names_b and names_a != names_b and a.args.get("classnames") == b.args.get("classnames"):
        differ.append("class names")  # the same --classnames: the data's own labels differ
    names_differ = bool(names_a and names_b and names_a != names_b)
    return differ, names_differ
