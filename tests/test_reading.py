"""Reading run folders back (agent.runs.reading, agent.runs.plots): on folders written by a real, tiny
search (the real loop and run store, the fake OpenAI-compatible server, the in-memory
WordEvaluator), then damaged in the ways real folders get damaged. No torch."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.llm.client import LLMClient
from promptclimb.agent.core.pools import PoolTemplate
from promptclimb.agent.runs.reading import NewerFormat, find_run, read_events
from promptclimb.agent.runs.run import load_run
from promptclimb.agent.runs.listing import runs_frame
from promptclimb.agent.ranking import selection_value
from promptclimb.agent.runs.store import RunStore
from promptclimb.agent.search import HillClimber, SearchConfig
from fake_llm import FakeLLM, WordEvaluator

REPO = Path(__file__).resolve().parents[1]
POOL = [PoolTemplate(t, "general") for t in
        ["a {}.", "itap of a {}.", "a drawing of a {}.", "a photo of a {}.", "a sketch of the {}.", "the {}."]]
WORDS = ["photo", "clothing", "grayscale", "product", "garment", "studio", "blurry", "tiny", "dark", "bright"]


def responder(body: dict) -> str:
    """Three templates that depend on the request, plus one that must be rejected."""
    h = int(hashlib.sha256(json.dumps([body["messages"], body["seed"]]).encode()).hexdigest(), 16)
    lines = [f"a {WORDS[(h >> 4 * i) % 10]} {WORDS[(h >> 4 * i + 24) % 10]} picture of a {{}}." for i in range(3)]
    return "\n".join([*lines, "a {name} with a named field"])


def make_run(root: Path, name: str = "run", created: str = "2025-01-01T12:00:00+0000", **config) -> Path:
    """A finished run folder from a real (tiny) search."""
    settings = {**dict(restarts=1, resets=2, iterations=3, proposals=4, pool_sample=0, search="template"), **config}
    config_json = {"run_id": name, "created": created, "search": asdict(SearchConfig(**settings)),
                   "evaluator_args": {"dataset": "toy", "shots": 2, "seed": 0, "backbone": "word"},
                   "llm": {"model": "fake"}}
    with FakeLLM(responder=responder) as fake:
        llm = LLMClient("fake", base_url=fake.base_url, api_key="sk-test", cache_dir=root / "llm-cache",
                        wait_initial=0.001, wait_max=0.01)
        with RunStore.create(root / "runs" / name, config_json) as store:
            HillClimber(WordEvaluator(), llm, store, SearchConfig(**settings), pool=POOL, echo=lambda m: None).run()
    return root / "runs" / name


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path)


def lines_of(run_dir: Path) -> list[str]:
    return (run_dir / "history.jsonl").read_text().splitlines()


def test_a_finished_run_reads_back_consistently(run_dir):
    run = load_run(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    history = [json.loads(line) for line in lines_of(run_dir)]
    assert run.skipped == [] and run.status == "done" and run.dataset == "toy" and run.llm == "fake"
    config = json.loads((run_dir / "config.json").read_text())["evaluator_args"]
    assert (run.shots, run.seed) == (config["shots"], config["seed"]) and run.shots is not None  # AttributeError

    winners = run.winners()
    assert winners.loc[0, "template"] == summary["best"]["template"]
    assert winners.loc[0, "test"] == summary["best"]["accuracy"]["test"]
    assert winners.iloc[-1]["rank"] == "ens" and winners.iloc[-1]["test"] == summary["ensemble"]["accuracy"]["test"]
    # the reader ranks the way the search does
    assert run.ranked().loc[0, "template"] == summary["best"]["template"]

    scores = run.scores()
    assert len(scores) == sum(e["event"] == "score" for e in history)
    assert list(scores["best_so_far"]) == sorted(scores["best_so_far"])  # best so far never drops

    iterations = run.iterations()
    exchanges = [e for e in history if e["event"] == "llm_exchange"]
    assert len(iterations) == len(exchanges) == 6
    for it, ex in zip(iterations, exchanges):
        proposed = [line for line in ex["answer"].splitlines() if "{" in line]
        assert len(it["scored"]) + len(it["rejected"]) == len(proposed)
        assert any("named field" in r["template"] for r in it["rejected"])
    best = summary["best"]
    assert iterations[-1]["best_so_far"] == selection_value(best["accuracy"], best["prob"], ("train",), summary["metric"])
    assert iterations[-1]["best_template"] == summary["best"]["template"]


def test_a_run_shows_itself_in_one_short_line(run_dir):
    # a notebook cell ending in `run` printed every event of the history
    run = load_run(run_dir)
    assert repr(run) == f"Run({str(run_dir)!r}, done, {len(run.events)} events)" and len(run.events) > 10


def test_what_the_llm_was_shown_matches_the_prompt_it_got(run_dir):
    """The scoreboard is rebuilt from events; check it against the first turn of every
    conversation, which lists exactly the top and bottom templates."""
    run = load_run(run_dir)
    for it, ex in zip(run.iterations(), run.of("llm_exchange")):
        if ex["iteration"] != 1:
            continue
        first_turn = ex["messages"][-1]["content"]
        listed = re.findall(r"^([\d.]+)%  (.*)$", first_turn, flags=re.M)
        shown = it["shown_top"] + it["shown_bottom"]
        assert [t for _, t in listed] == [s["template"] for s in shown]
        assert [float(a) for a, _ in listed] == [round(100 * s["selection"], 1) for s in shown]


def test_damaged_history_shows_what_is_valid_and_says_what_was_skipped(run_dir):
    lines = lines_of(run_dir)
    kinds = [json.loads(line)["event"] for line in lines]
    n, scores = len(lines), kinds.count("score")
    assert kinds[3] == kinds[5] == "score"
    first_answer = kinds.index("llm_exchange")
    lines[3] = lines[3][: len(lines[3]) // 2]  # a half-written line in the middle
    newer = json.loads(lines[5])
    newer["v"] = 3
    lines[5] = json.dumps(newer)
    lines[first_answer] = "[1, 2, 3]"
    text = "\n".join(lines) + "\n" + '{"v": 1, "seq": 999, "event": "sco'  # cut short by a kill
    (run_dir / "history.jsonl").write_text(text)

    events, skipped = read_events(run_dir / "history.jsonl")
    assert [s.line for s in skipped] == [4, 6, first_answer + 1, n + 1]
    assert "not valid JSON" in skipped[0].reason and "v3" in skipped[1].reason
    assert "not an event" in skipped[2].reason and skipped[3].reason.startswith("incomplete (no end of line")
    assert len(events) == n - 3

    run = load_run(run_dir)
    assert len(run.skipped) == 4
    assert len(run.scores()) == scores - 2
    assert run.winners().loc[0, "template"]  # the summary and the rest still read
    assert [it["call"] for it in run.iterations()] == [1, 2, 3, 4, 5]  # answer 0 is the one lost


def test_newer_format_is_refused_with_a_clear_message(run_dir, tmp_path):
    config = json.loads((run_dir / "config.json").read_text())
    config["v"] = 3
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(NewerFormat, match="run format v3; this promptclimb reads v2. Upgrade promptclimb"):
        load_run(run_dir)
    make_run(tmp_path, "other", created="2025-02-01T12:00:00+0000")
    frame = runs_frame(tmp_path / "runs")  # one unreadable folder does not hide the others
    assert dict(zip(frame["id"], frame["status"])) == {"other": "done", "run": "newer format"}


def test_find_run_by_id_prefix_or_path_and_unknown_ids(tmp_path):
    a = make_run(tmp_path, "20250101-eurosat")
    b = make_run(tmp_path, "20250102-eurosat")
    # the runs there are listed newest first by folder mtime: made a moment apart, two may tie
    os.utime(a, (1_700_000_000, 1_700_000_000))
    os.utime(b, (1_700_000_100, 1_700_000_100))
    runs = tmp_path / "runs"
    assert find_run("20250101-eurosat", runs) == a
    assert find_run(str(a), tmp_path / "elsewhere") == a
    assert find_run("20250101", runs) == a
    with pytest.raises(PromptclimbError, match="ambiguous.*20250101-eurosat, 20250102-eurosat"):
        find_run("2025", runs)
    with pytest.raises(PromptclimbError, match="no run 'nope' under .*runs there: 20250102-eurosat, 20250101-eurosat"):
        find_run("nope", runs)
    with pytest.raises(PromptclimbError, match="holds no runs"):
        find_run("nope", tmp_path / "empty")


def test_an_unfinished_run_is_shown_from_its_scores(run_dir):
    lines = lines_of(run_dir)
    keep = [line for line in lines if json.loads(line)["event"] != "final"]
    (run_dir / "history.jsonl").write_text("\n".join(keep[: len(keep) - 3]) + "\n")
    (run_dir / "summary.json").unlink()
    run = load_run(run_dir)
    assert run.final is None and run.status == "unfinished"
    winners = run.winners()
    assert winners["test"].isna().all() and winners.loc[0, "template"] == run.ranked().loc[0, "template"]
    assert runs_frame(run_dir.parent).loc[0, "status"] == "unfinished"
    with RunStore.resume(run_dir):  # a search holds it: not stopped, still at it
        assert load_run(run_dir).status == "running" and runs_frame(run_dir.parent).loc[0, "status"] == "running"


def test_write_plots_writes_the_curve_and_leaves_the_backend_as_it_was(run_dir):
    """A notebook's backend (inline, here svg) stays: the plots switched the process to Agg."""
    import matplotlib

    from promptclimb.agent.runs.plots import write_plots

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        paths = write_plots(run_dir)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert paths == [run_dir / "curve.png"]
    data = paths[0].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_reading_modules_do_not_import_torch():
    code = ("import sys, promptclimb.agent.cli.runs, promptclimb.agent.runs.reading, promptclimb.agent.runs.plots, promptclimb.agent.runs.report; "
            "print('torch' in sys.modules, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_the_reader_ranks_ties_as_the_search_does(tmp_path):
    """Templates that tie on the selection value: broken by lower cross-entropy (the mean
    over the selection splits that have one), then by (restart, place), not by the order
    of the history's lines (parallel restarts interleave them)."""
    from promptclimb.agent.search import Scored, rank

    config = {"search": asdict(SearchConfig(select="train+val", metric="blend"))}
    acc, prob = {"train": 0.5, "val": 0.5}, {"train": 0.4, "val": 0.4}
    # (template, restart, loss): written to the history in this order
    rows = [("r1 first", 1, {"train": 1.0, "val": 1.0}), ("r0 first", 0, {"train": 1.0, "val": 1.0}),
            ("lower loss", 1, {"train": 0.5, "val": 0.6}), ("no val loss", 0, {"train": 0.6}),
            ("r0 second", 0, {"train": 1.0, "val": 1.0}), ("no loss", 0, {}),
            ("better", 1, {"train": 9.0, "val": 9.0})]
    board, places = [], {0: 0, 1: 0}
    with RunStore.create(tmp_path / "run", config) as store:
        for template, restart, loss in rows:
            a = {"train": 0.9, "val": 0.9} if template == "better" else acc
            store.append("score", restart=restart, template=template, origin="llm", accuracy=a, loss=loss, prob=prob)
            board.append(Scored(template, "llm", a, loss, order=(restart, places[restart]), prob=prob))
            places[restart] += 1
    expected = [s.template for s in rank(board, ("train", "val"), "blend")]
    assert list(load_run(tmp_path / "run").ranked()["template"]) == expected
    assert expected == ["better", "lower loss", "no val loss", "r0 first", "r0 second", "r1 first", "no loss"]


def test_an_unfinished_runs_ledger_is_counted_as_the_summary_counts_it(run_dir):
    """`Run.ledger()` without summary.json counts the history's answers with the function
    that wrote summary.json's ledger."""
    from dataclasses import replace

    run = load_run(run_dir)
    assert replace(run, summary=None).ledger() == {k: v for k, v in run.summary["ledger"].items()
                                                   if k not in ("this_session", "by_kind")}


# -- a names search (--search both): a template is on the board with several sets of names ------
def make_names_run(root: Path) -> tuple[Path, list[str]]:
    """A finished `--search both` run (2 resets of a names turn, then a template turn) whose
    renames raise the board's best, and the console lines the search printed."""
    from test_names import climb, scripted

    console = []
    respond = scripted(["Trouser: jeans", "T-shirt/top: tee"], templates="a grayscale photo of a {}.\na photo of the {}.")
    with FakeLLM(responder=respond) as fake:
        _, _, run_dir = climb(root, fake.base_url, search="both", iterations=2, resets=2, echo=console.append)
    return run_dir, console


@pytest.fixture
def names_run(tmp_path, monkeypatch) -> tuple[Path, list[str]]:
    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    return make_names_run(tmp_path)


def test_after_a_rename_what_the_llm_was_shown_matches_the_prompt_it_got(names_run):
    """A template turn after a names turn: the renamed template is shown (and ranked) with the
    figures of its names at that turn, not those of its first score under the start names."""
    run = load_run(names_run[0])
    turns = [(it, ex) for it, ex in zip([i for i in run.iterations() if i["kind"] == "template"],
                                        run.of("llm_exchange")) if ex["messages"][0]["role"] == "system"]
    assert len(turns) == 2 and all(len(ex["messages"]) == 2 for _, ex in turns)  # each opens its conversation
    for it, ex in turns:
        listed = re.findall(r"^([\d.]+)%  (.*)$", ex["messages"][-1]["content"], flags=re.M)
        shown = it["shown_top"] + it["shown_bottom"]
        assert [(float(a), t) for a, t in listed] == [(round(100 * s["selection"], 1), s["template"]) for s in shown]
    renamed = run.of("names_change")[0]
    assert turns[0][0]["shown_top"][0] == {"template": renamed["template"], "selection": renamed["accuracy"]["train"]}


def test_the_best_so_far_of_a_names_search_never_falls_and_is_what_the_console_said(names_run):
    """A names turn's kept change is recorded after the guard's answers: the turn's best so far
    counts it, and so does each guard answer inside the turn."""
    run_dir, console = names_run
    said = [float(m.group(1)) for line in console if (m := re.search(r"\| best ([\d.]+)%", line))]
    run = load_run(run_dir)
    iterations = run.iterations()
    assert [it["kind"] for it in iterations] == ["names", "guard", "template"] * 2
    turns = [it for it in iterations if it["kind"] != "guard"]
    assert [round(100 * it["best_so_far"], 1) for it in turns] == said
    assert turns[0]["best_so_far"] > run.scores().query("origin == 'pool'")["selection"].max()  # the rename raised it
    bests = [it["best_so_far"] for it in iterations]
    assert bests == sorted(bests)
    for i, it in enumerate(iterations):
        if it["kind"] == "guard":
            assert it["best_so_far"] == iterations[i - 1]["best_so_far"]


def test_the_winners_of_a_names_search_are_distinct_templates_as_many_as_asked(names_run):
    """summary.json's top holds a template once per set of names (here 2 templates in its 3
    entries): the winners list each template once, at its best, as many as asked when the run
    scored them, in the order `transfer` ranks them; the best's test accuracy on rank 1."""
    from promptclimb.agent.api import transfer_table

    run = load_run(names_run[0])
    assert len({t["template"] for t in run.summary["top"]}) < len(run.summary["top"]) == 3
    ranked = list(transfer_table(run)["template"])
    for k in (1, 3, 5, 10):
        winners = run.winners(k)
        listed = list(winners.loc[winners["rank"] != "ens", "template"])
        assert listed == ranked[:min(k, len(run.ranked().drop_duplicates("template")))]
    winners = run.winners(5)
    assert list(winners["rank"]) == [1, 2, 3, 4, 5, "ens"]
    assert winners.loc[0, "test"] == run.summary["best"]["accuracy"]["test"] and winners.loc[1:4, "test"].isna().all()
    best_of = run.ranked().drop_duplicates("template").set_index("template")
    for row in winners.iloc[:5].itertuples():  # a pair a names turn kept: where its template came from, renamed
        origin = best_of.loc[row.template, "origin"]
        first = run.scores().query("template == @row.template").origin.iloc[0]
        said = origin if origin != "names" else f"{first} + names"
        assert (row.train, row.origin) == (best_of.loc[row.template, "train"], said)
    assert "llm + names" in set(winners["origin"])


@pytest.mark.parametrize("call, said", [
    (lambda run: run.winners(-1), r"Run.winners\(\): k -1: expected a whole number of at least 1"),
    (lambda run: run.winners(0), r"Run.winners\(\): k 0: expected a whole number of at least 1"),
    (lambda run: run.winners(2.5), r"Run.winners\(\): k 2.5: expected a whole number"),
    (lambda run: run.winners("3"), r"Run.winners\(\): k '3': expected a whole number"),
    (lambda run: run.winners(True), r"Run.winners\(\): k True: expected a whole number"),
    (lambda run: run.confusion("x"), r"Run.confusion\(\): split 'x': expected one of train, val, test"),
    (lambda run: run.confusion(0), r"Run.confusion\(\): split 0: expected one of train, val, test"),
    (lambda run: run.of("scores"), r"Run.of\(\): kind 'scores': expected one of run_start, restart, .*names_change"),
    (lambda run: run.of(None), r"Run.of\(\): kind None: expected one of"),
    (lambda run: run.scoreboard(3, 10), r"Run.scoreboard\(\): restart 3: expected one of the run's restarts \(0\)"),
    (lambda run: run.scoreboard("0", 10), r"Run.scoreboard\(\): restart '0': expected a whole number of at least 0"),
    (lambda run: run.scoreboard(0, 0), r"Run.scoreboard\(\): before_line 0: expected a whole number of at least 1"),
    (lambda run: run.scoreboard(0, 1.5), r"Run.scoreboard\(\): before_line 1.5: expected a whole number"),
])
def test_a_runs_methods_refuse_bad_arguments_in_one_line(names_run, call, said):
    """A notebook's slip is one PromptclimbError saying what was wrong and what is accepted:
    not a KeyError from inside pandas, an empty list, or winners(-1) quietly dropping the last."""
    with pytest.raises(PromptclimbError, match=f"^{said}") as caught:
        call(load_run(names_run[0]))
    assert "\n" not in str(caught.value)


def test_a_runs_methods_still_answer_what_they_accept(names_run):
    import numpy as np

    run = load_run(names_run[0])
    assert list(run.winners(np.int64(2))["rank"]) == [1, 2, "ens"]  # a count read from a frame
    for split in ("train", "val", "test"):
        matrices = run.confusion(split)
        assert set(matrices) == {"before", "after"}
        assert matrices["after"].values.tolist() == run.summary["names"]["confusion"]["after"][split]
    assert run.of("step") == [] and len(run.of("names_change")) == 2
    first = next(it for it in run.iterations() if it["kind"] == "template")
    line = run.of("llm_exchange")[0]["_line"]
    assert run.scoreboard(0, line) == (first["shown_top"], first["shown_bottom"])
    assert run.scoreboard(0, 10 ** 6) == run.scoreboard(0, len(lines_of(names_run[0])) + 1)  # past the end: the end


def test_an_answer_from_the_cache_costs_no_tokens_per_answer_as_in_the_ledger(tmp_path):
    """iterations_frame() and MLflow's per-answer tokens gave a cached answer the tokens of
    the request that made it: they summed past summary.json's ledger, which leaves them out."""
    from test_search import climb

    from promptclimb.agent.tracking.logged import answer_metrics

    with FakeLLM(responder=lambda body: "a dark {}.\na bright {}.") as fake:
        climb(tmp_path, fake.base_url, name="first", iterations=2, resets=1)
        climb(tmp_path, fake.base_url, name="again", iterations=2, resets=1)  # every answer from the cache
    for name, cached in (("first", False), ("again", True)):
        run = load_run(tmp_path / "runs" / name)
        frame, ledger = run.iterations_frame(), run.ledger()
        assert len(frame) == 2 and list(frame["cached"]) == [cached, cached]
        assert frame["prompt_tokens"].sum() == ledger["prompt_tokens"] and (ledger["prompt_tokens"] > 0) != cached
        assert frame["completion_tokens"].sum() == ledger["completion_tokens"]
        logged = [values for _, _, values in answer_metrics(run)]
        assert sum(v["prompt_tokens"] for v in logged) == ledger["prompt_tokens"]
        assert sum(v["completion_tokens"] for v in logged) == ledger["completion_tokens"]


def test_runs_lists_each_runs_result_beside_its_best_template(tmp_path):
    """`runs` listed the best template's test accuracy alone, where the search had ended on an
    ensemble (chosen on val) or a kept adapter: its figure was not the run's result."""
    for name in ("plain", "ensemble", "adapter"):
        make_run(tmp_path, name)
    summaries = {name: json.loads((tmp_path / "runs" / name / "summary.json").read_text())
                 for name in ("plain", "ensemble", "adapter")}
    best_test = summaries["plain"]["best"]["accuracy"]["test"]
    ensemble = {**summaries["ensemble"].get("ensemble", {}), "templates": ["a {}.", "an {}."],
                "accuracy": {"test": 0.25}, "chosen": True}
    summaries["ensemble"].update(winner="ensemble", ensemble=ensemble)
    summaries["plain"]["winner"] = "best"
    summaries["adapter"]["adapter"] = {"kind": "cache", "result": "adapter", "accuracy": {"test": 0.75}}
    for name, summary in summaries.items():
        (tmp_path / "runs" / name / "summary.json").write_text(json.dumps(summary))
    frame = runs_frame(tmp_path / "runs").set_index("id")
    assert frame.loc["plain", ["result", "result test"]].tolist() == ["best template", best_test]
    assert frame.loc["ensemble", ["result", "result test"]].tolist() == ["ensemble of 2", 0.25]
    assert frame.loc["adapter", ["result", "result test"]].tolist() == ["prompt + cache adapter", 0.75]
    assert set(frame["test"]) == {best_test}  # the best template's own figure stays beside it
