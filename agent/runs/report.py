"""`promptclimb report`: one self-contained HTML page of a run, for sharing.

The page is rendered from the jinja2 template prompts/report/report.html.j2 (text, editable
like the meta-prompts). Self-contained means a single file: inline styles, the plot
embedded as a data: URI, nothing fetched from elsewhere.
"""

from __future__ import annotations

import base64
import json
import math
import tempfile
from pathlib import Path

import jinja2

from promptclimb.agent.adapt import adapter_said
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.files import write_text_atomic
from promptclimb.agent.core.format import moment, pct, shots_said
from promptclimb.agent.core.paths import prompts_dir
from promptclimb.agent.runs.compact import CLASSES_IN_FULL, confusion_matrix
from promptclimb.agent.runs.run import Run
from promptclimb.agent.runs.listing import continue_said, names_turns_shown, result_said
from promptclimb.agent.runs.store import kept_result
from promptclimb.agent.softsearch import STEPS_LOST, is_soft_prompt_run, steps_shown, steps_table

from promptclimb.agent.core.runfiles import ADAPTER_FILE, CONFIG, REPORT, SWEEP_FILE
from promptclimb.agent.core.templates import BASELINE

TEMPLATE = "report.html.j2"


def _clean(value):
    """NaN -> None, so the template can test `is none`."""
    return None if isinstance(value, float) and math.isnan(value) else value


def facts(run: Run) -> list[tuple[str, str]]:
    """The summary block: what was searched, how, at what cost."""
    search = run.config.get("search") or {}
    ledger = run.ledger()
    counts = (run.summary or {}).get("counts") or {}
    final = run.final or {}
    out = [
        ("run", run.id), ("status", run.status_said),
        *continuing(run),
        ("dataset", run.dataset), ("backbone", run.backbone),
        ("shots", run.args.get("shots")), ("seed", run.args.get("seed")),
    ]
    if is_soft_prompt_run(run.config):  # no LLM, pool or turns: the optimizer and what it learned
        soft, settings = final.get("soft_prompt") or {}, run.config.get("soft_prompt") or {}
        out += [("optimizer", f"{run.config.get('optimizer')}, {settings.get('queries', '?')} queries"),
                ("soft prompt", f"{soft.get('tokens', '?')} vectors ({soft.get('file', '?')}), started from "
                                f"{soft.get('init')!r}; nearest tokens {' '.join(soft.get('nearest_tokens') or [])!r}"),
                ("started", moment(run.created))]
    else:
        out += [
            ("LLM", run.llm), ("pool", run.pool), ("ranked by", run.ranked_by),
            ("search", f"{search.get('restarts', '?')} restart(s) × {search.get('resets', '?')} reset(s) × "
                       f"{search.get('iterations', '?')} iteration(s), {search.get('proposals', '?')} proposals each"),
            ("started", moment(run.created)),
            ("LLM answers", f"{len(run.answers())} ({ledger.get('cache_hits', 0)} from the cache)"),
            ("tokens", f"{ledger.get('prompt_tokens', 0):,} prompt + {ledger.get('completion_tokens', 0):,} completion"),
            ("templates scored", counts.get("scored", len(run.of("score")))),
            ("template lines refused", counts.get("rejected", len(run.of("reject")))),
        ]
        counted = run.names_counted()
        if counted:  # names refused were counted nowhere on the page
            out += [("names scored", counted[0]), ("names refused", counted[1])]
    if final.get("adapter"):  # what `adapt` (or a soft-prompt search) fitted on top, and whether it is kept
        out.append(("adapter", adapter_said(final["adapter"])))
    return [(label, "" if value is None else str(value)) for label, value in out]


def continuing(run: Run) -> list[tuple[str, str]]:
    """The summary block's row that says how to continue an unfinished run (`continue_said`,
    the line `show` prints); none for another run."""
    said = continue_said(run)
    if said is None:
        return []
    command, note = said
    return [("continue it with", command + (f" ({note})" if note else ""))]


def render(run: Run, plot_png: Path | None = None) -> str:
    """The report page as a string."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(prompts_dir() / "report")),
        autoescape=True,  # templates and LLM answers are untrusted text
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = pct
    env.filters["shots"] = shots_said
    plot = _data_uri(plot_png)
    transfers = [{**t, "plot": _data_uri(run.path / t["files"]["plot"])} for t in run.transfers()]
    winners = [{k: _clean(v) for k, v in row.items()} for row in run.winners_said().to_dict("records")]
    config = {k: v for k, v in run.config.items()}
    names_table = (run.final or {}).get("names") or {}
    confusion = {when: confusion_matrix(names_table, when, "test") for when in ("before", "after")}
    confusion = {k: v for k, v in confusion.items() if v}
    labels = names_table.get("start") or []
    many = len(labels) > CLASSES_IN_FULL
    soft = is_soft_prompt_run(run.config)  # no LLM answers or conversation: its steps instead
    turns = names_turns_shown(run)
    return env.get_template(TEMPLATE).render(
        use=what_to_use(run.final), baseline=baseline_said(run.final),
        names_turns=turns, kept_changes={t["call"]: [f"{c['from']} -> {c['to']}" for c in t["kept"]] for t in turns},
        soft=soft, steps=steps_shown(steps_table(run.events)) if soft else [], steps_lost=STEPS_LOST,
        names=run.names().to_dict("records"), class_labels=labels,
        confusion={} if many else confusion,
        largest_confusions=largest_confusions(confusion, labels) if many and confusion else [],
        run=run, head=facts(run), winners=winners, plot=plot, transfers=transfers, iterations=run.iterations(),
        conversation=run.conversation(), skipped=run.skipped,
        config_json=json.dumps(config, indent=2, ensure_ascii=False),
        generated=moment(),
    )


def what_to_use(summary: dict | None) -> dict | None:
    """The run's result where it is not its best template alone, as summary.json keeps it and
    `runs` and `show` say it (`kept_result`, `result_said`): the ensemble chosen on val, or the
    adapter kept on top of the prompt (its figure was a row of a table further down); None for
    the best template, which the page's first box says."""
    what, _ = result_said(summary)
    if what in (None, "best template"):
        return None
    result = kept_result(summary)
    if result is summary.get("ensemble"):
        return {"what": f"the ensemble of {len(result.get('templates') or [])} templates",
                "why": "it beat the best template alone on val", "templates": result.get("templates") or [],
                "accuracy": result.get("accuracy") or {}}
    # an adapter fit with `adapt --on ensemble` sits on the ensemble's templates: it beat those alone
    on = result.get("templates") or []
    alone = f"the ensemble of {len(on)} templates" if result.get("on") == "ensemble" else "the prompt"
    return {"what": f"the {what}", "why": f"{result.get('file', ADAPTER_FILE)}; it beat {alone} alone on val",
            "templates": on, "accuracy": result.get("accuracy") or {}}


def baseline_said(final: dict | None) -> dict | None:
    """Where the search started and where it ended, on test, as `show` says it: "a photo of a
    {}." with the start names (summary.json "baseline") -> the run's result; None for a run
    whose result holds no baseline (older, or not ended)."""
    start = (((final or {}).get("baseline") or {}).get("accuracy") or {}).get("test")
    what, test = result_said(final)
    if start is None or test is None:
        return None
    return {"template": BASELINE, "start": start, "result": what, "test": test}


def largest_confusions(confusion: dict[str, list[list[int]]], labels: list[str],
                       k: int = CLASSES_IN_FULL) -> list[dict]:
    """k off-diagonal cells of the test confusion matrices ("before", "after"): those the
    found names changed most, then the largest (by the larger of the two), then class order:
    {true, predicted, before, after}."""
    import numpy as np

    shape = (len(labels), len(labels))
    before, after = (np.asarray(confusion.get(when) or np.zeros(shape, int)) for when in ("before", "after"))
    larger = np.maximum(before, after)
    np.fill_diagonal(larger, 0)
    true, predicted = np.nonzero(larger)
    change = np.abs(after - before)
    order = sorted(zip(true.tolist(), predicted.tolist()), key=lambda ij: (-change[ij], -larger[ij], ij))[:k]
    return [{"true": labels[i], "predicted": labels[j], "before": int(before[i, j]), "after": int(after[i, j])}
            for i, j in order]


def _data_uri(png: Path | None) -> str | None:
    """A PNG file as a data: URI (the page stays one file); None when there is none."""
    if png is None or not png.exists():
        return None
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def report_html(run: Run) -> str:
    """The page of a run, with curve.png (which it embeds) written first: into the run's
    folder, or, where that folder cannot be written (someone else's runs, a read-only copy),
    into a temporary one, since reading a run must not need the right to change it."""
    from promptclimb.agent.runs.plots import CURVE, plot_curve, write_plots

    try:
        write_plots(run.path)
    except OSError:
        with tempfile.TemporaryDirectory(prefix="promptclimb-report-") as tmp:
            return render(run, plot_curve(run, Path(tmp) / CURVE))
    return render(run, run.path / CURVE)


def write_report(run: Run, output: str | Path | None = None) -> Path:
    """report.html in the run folder (or `output`: a symlink is written through, a FIFO or a
    device written to, as `write_atomic` does)."""
    path = Path(output) if output else run.path / REPORT
    own = path.resolve()
    folder = own.parent  # a run's (or a sweep's) folder: any file there but a page is one of its own
    if own.is_file() and own.suffix.lower() not in (".html", ".htm") and \
            any((folder / name).is_file() for name in (CONFIG, SWEEP_FILE)):
        # `-o RUN/history.jsonl` replaced a run's history with the page: the run could not go on
        raise PromptclimbError(f"-o {output}: that is {folder.name}'s own {own.name}, which the page would "
                               "replace; write it to another file")
    return write_text_atomic(path, report_html(run))
