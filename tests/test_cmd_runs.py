"""`promptclimb runs / show / report / compare / transfer` through the CLI, on run folders
made by real tiny searches (tests/test_reading.make_run: the real loop with the fake LLM
server and the in-memory evaluator; the transfer test: `promptclimb search` with a tiny
open_clip model and generated images)."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from html import unescape
from pathlib import Path

import markupsafe
import pandas as pd
import pytest
from click.testing import CliRunner

from promptclimb.agent.cli import cli
from promptclimb.agent.api import rank_correlation, transfer_name
from promptclimb.agent.core.format import pct
from promptclimb.agent.runs.run import load_run
from promptclimb.agent.runs.store import RunStore, run_lock
from fake_llm import FakeLLM, WordEvaluator
from test_reading import make_run, responder


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_runs_lists_newest_first(tmp_path):
    make_run(tmp_path, "older", created="2025-01-01T12:00:00+0000")
    make_run(tmp_path, "newer", created="2025-03-01T12:00:00+0000")
    result = invoke("runs", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    header, rule, first, second = result.output.splitlines()
    for column in ("id", "dataset", "backbone", "shots", "seed", "llm", "best template", "train", "test",
                   "llm answers", "date"):
        assert column in header
    assert first.startswith("newer") and second.startswith("older")
    summary = json.loads((tmp_path / "runs" / "newer" / "summary.json").read_text())
    assert summary["best"]["template"] in first and f"{100 * summary['best']['accuracy']['test']:.1f}%" in first

    as_json = json.loads(invoke("runs", "--runs-dir", tmp_path / "runs", "--format", "json").output)
    assert [r["id"] for r in as_json] == ["newer", "older"] and as_json[0]["llm answers"] == 6

    # many runs (a sweep's cells, weeks of searches): filtered, then the newest N, where only grep could
    other = make_run(tmp_path, "other", created="2025-02-01T12:00:00+0000") / "config.json"
    other.write_text(other.read_text().replace('"dataset": "toy"', '"dataset": "toy2"'))
    cut_history(tmp_path / "runs" / "older", lambda e: e["event"] == "llm_exchange")  # stopped: unfinished

    def listed(*flags):
        return [r["id"] for r in json.loads(invoke("runs", "--runs-dir", tmp_path / "runs", "--format", "json",
                                                   *flags).output)]

    assert listed() == ["newer", "other", "older"] and listed("--limit", "2") == ["newer", "other"]
    assert listed("--dataset", "toy") == ["newer", "older"] and listed("--dataset", "toy2") == ["other"]
    assert listed("--status", "unfinished") == ["older"] and listed("--status", "done", "--limit", "1") == ["newer"]
    none = invoke("runs", "--runs-dir", tmp_path / "runs", "--dataset", "toy2", "--status", "unfinished")
    assert none.exit_code == 1 and "match --dataset toy2 and --status unfinished" in none.output, none.output
    capped = make_run(tmp_path, "capped", created="2025-04-01T12:00:00+0000") / "summary.json"
    capped.write_text(json.dumps({**json.loads(capped.read_text()), "stopped": "budget: max calls (1) reached"}))
    assert listed("--status", "stopped-early") == ["capped"] and "capped" not in listed("--status", "done")


def test_runs_and_report_write_each_time_with_its_utc_offset(tmp_path, monkeypatch):
    """`report RUN` wrote "report written 2026-12-06 05:12" (this machine's clock, zone unsaid)
    and `runs` the runs' dates in UTC, unsaid: each time now says its offset, as the report's
    "started" row did (the run's own offset, from config.json)."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        make_run(tmp_path, "east", created="2025-01-01T12:00:00+0100")
        result = invoke("report", "east", "--runs-dir", tmp_path / "runs", "-o", "-")
        assert result.exit_code == 0, result.output
        html = unescape(result.stdout)
        assert "<dt>started</dt><dd>2025-01-01 12:00 UTC+01:00</dd>" in html
        assert re.search(r"report written \d{4}-\d\d-\d\d \d\d:\d\d UTC-0[45]:00<", html), html[:3000]
        table = invoke("runs", "--runs-dir", tmp_path / "runs")
        assert table.exit_code == 0 and "2025-01-01 11:00 UTC" in table.output, table.output
    finally:  # this process's zone back as it was, for the tests that follow
        monkeypatch.undo()
        time.tzset()


def test_runs_shows_whole_numbers_as_such_beside_an_unreadable_run(tmp_path):
    """An unreadable run's row has no shots, seed or LLM calls: pandas made the columns floats
    and every other row read `2.0  0.0 ... 6.0`."""
    make_run(tmp_path, "good")
    (tmp_path / "runs" / "damaged").mkdir()
    (tmp_path / "runs" / "damaged" / "config.json").write_text("not JSON")
    table = invoke("runs", "--runs-dir", tmp_path / "runs")
    assert table.exit_code == 0, table.output
    header, _, *rows = table.output.splitlines()
    good = next(row for row in rows if row.startswith("good"))
    columns = {name: header.index(name) for name in ("shots", "seed", "llm answers")}
    assert {name: good[at:].split()[0] for name, at in columns.items()} == {"shots": "2", "seed": "0", "llm answers": "6"}
    assert "unreadable" in next(row for row in rows if row.startswith("damaged"))

    csv = pd.read_csv(io.StringIO(invoke("runs", "--runs-dir", tmp_path / "runs", "--format", "csv").output),
                      dtype=str, keep_default_na=False).set_index("id")
    assert list(csv.loc["good", ["shots", "seed", "llm answers"]]) == ["2", "0", "6"]
    assert list(csv.loc["damaged", ["shots", "seed", "llm answers"]]) == ["", "", ""]
    records = {r["id"]: r for r in json.loads(invoke("runs", "--runs-dir", tmp_path / "runs", "--format", "json").output)}
    assert [records["good"][k] for k in ("shots", "seed", "llm answers")] == [2, 0, 6]
    assert all(isinstance(records["good"][k], int) for k in ("shots", "seed", "llm answers"))
    assert records["damaged"]["shots"] is None


def test_show_in_every_format(tmp_path):
    run_dir = make_run(tmp_path)
    runs = tmp_path / "runs"
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary["best"]["template"]

    table = invoke("show", "run", "--runs-dir", runs)
    assert table.exit_code == 0, table.output
    text = table.output
    assert text.index("Winning templates") < text.index("Iteration by iteration")
    assert best in text.split("Iteration by iteration")[0]
    assert text.count("answer ") >= 6 and "shown:" in text and "top " in text and "bottom " in text
    assert "rejected  a {name} with a named field" in text and "<- best so far" in text
    assert re.fullmatch(r"6 LLM answers; \d+ from the cache, \d+ prompt \+ \d+ completion tokens; "
                        r"\d+ templates scored, [1-9]\d* template lines refused", text.splitlines()[1])

    markdown = invoke("show", "run", "--runs-dir", runs, "--format", "markdown").output
    assert "## Winning templates" in markdown and "| rank" in markdown and f"`{best}`" in markdown

    rows = pd.read_csv(io.StringIO(invoke("show", "run", "--runs-dir", runs, "--format", "csv").output))
    events = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert (rows["status"] == "scored").sum() == sum(e["event"] == "score" for e in events)
    assert (rows["status"] == "rejected").sum() == sum(e["event"] == "reject" for e in events) > 0

    doc = json.loads(invoke("show", "run", "--runs-dir", runs, "--format", "json").output)
    assert doc["winners"][0]["template"] == best and len(doc["iterations"]) == 6 and "conversation" not in doc

    conversation = invoke("show", "run", "--runs-dir", runs, "--conversation").output
    first = events[[e["event"] for e in events].index("llm_exchange")]
    assert "[system]" in conversation and first["messages"][0]["content"].splitlines()[0] in conversation
    assert first["answer"].splitlines()[0] in conversation
    doc = json.loads(invoke("show", "run", "--runs-dir", runs, "--format", "json", "--conversation").output)
    assert doc["conversation"][0]["answer"] == first["answer"]


def test_show_says_which_formats_count_from_0_and_each_does(tmp_path):
    """csv and json write restart, reset and call as history.jsonl holds them (from 0) while
    the table says "answer 1 (restart 1, reset 1, ...)" of the same answer, and nothing said
    so: `show --help` does, and each format keeps to what it says (scripts read csv/json)."""
    make_run(tmp_path)
    runs = tmp_path / "runs"
    said = " ".join(invoke("show", "--help").output.split())
    assert "csv and json write restart, reset and call (the LLM answer) counted from 0" in said
    assert "the table, markdown and the report count restarts, resets and answers from 1" in said

    rows = pd.read_csv(io.StringIO(invoke("show", "run", "--runs-dir", runs, "--format", "csv").output))
    assert set(rows.loc[rows["origin"] == "pool", "iteration"]) == {0}
    for status in ("scored", "rejected"):
        first = rows[(rows["origin"] == "llm") & (rows["status"] == status)].iloc[0]
        assert [int(first[k]) for k in ("call", "restart", "reset", "iteration")] == [0, 0, 0, 1], status
    iteration = json.loads(invoke("show", "run", "--runs-dir", runs, "--format", "json").output)["iterations"][0]
    assert [iteration[k] for k in ("call", "restart", "reset", "iteration")] == [0, 0, 0, 1]
    text = invoke("show", "run", "--runs-dir", runs).output
    assert "\nanswer 1 (restart 1, reset 1, iteration 1): " in text and "answer 0 " not in text


# An answer as LLMs write them: templates quoted in a ``` block, markup inside them.
FENCED = "\n".join(["Here you go:", "```", "a `quoted` photo of a {}.", "a *starred* <script>x</script> photo of a {}.",
                     "an &amp; photo of the {} [x](http://e.com).", "```"])
MARKED_CLASSES = ("T-shirt/top", "<b>Trouser", "Dress", "Bag")  # the weak class's name holds markup
MARKED_RUN = "my_*best*_run_"  # a run id that is markup too
# a transfer-<backbone>.json as `promptclimb transfer` writes it (what `show` reads of it)
TRANSFER = {"v": 1, "target": {"backbone": "net"}, "select": "train", "templates": 3,
            "rank_correlation": {"selection": 0.5, "test": 0.5},
            "winner": {"template": "a {}.", "target_rank": 1, "target_test_rank": 1, "target": {"test": 0.5}},
            "baseline": {"template": "a photo of a {}.", "in_run": False, "target": {"test": 0.25}},
            "target_best": {"template": "a {}.", "source_rank": 1, "target": {"test": 0.5}},
            "ensemble": None, "files": {"plot": "transfer-net.png"}}


def test_show_markdown_renders_templates_names_and_answers_as_written(tmp_path, monkeypatch):
    """`show --format markdown` rendered as CommonMark (GitHub) shows every template, class
    name and LLM answer as written: `<script>`, `*x*`, `&amp;` and `[x](y)` were markup in the
    tables and the names turns, and an answer's ``` closed the block holding it, so the rest
    of the answer was rendered (a live <script> tag and a link)."""
    markdown_it = pytest.importorskip("markdown_it")
    from test_names import climb, scripted

    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    with FakeLLM(responder=scripted(["<b>Trouser: jeans"], templates=FENCED)) as fake:
        ev = WordEvaluator(classnames=MARKED_CLASSES, class_bias={1: -0.25}, name_bonus={"jeans": 0.2})
        _, _, run_dir = climb(tmp_path, fake.base_url, name=MARKED_RUN, ev=ev, search="both", iterations=2,
                              resets=1, guard="off")
    run = load_run(run_dir)
    templates = set(run.scores()["template"])
    assert {"a `quoted` photo of a {}.", "an &amp; photo of the {} [x](http://e.com)."} <= templates
    # a transfer to a backbone whose name is markup too: its "## Transfer to" heading was not escaped
    (run_dir / "transfer-net.json").write_text(json.dumps(TRANSFER | {"target": {"backbone": "a_*wide*_net",
                                                                                 "pretrained": "<b>web"}}))
    page = invoke("show", MARKED_RUN, "--runs-dir", tmp_path / "runs", "--format", "markdown", "--conversation").output
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(page)
    assert not re.search(r"<(script|b|em|strong|a)\b", html), html  # nothing written became markup
    assert re.search(r"<h1>run my_\*best\*_run_: ", html), html  # the run id as named
    assert "<h2>Transfer to a_*wide*_net (&lt;b&gt;web)</h2>" in html, html
    assert f"plot: {run_dir / 'transfer-net.png'}" in {unescape(i) for i in re.findall(r"<li>(.*?)</li>", html)}
    cells = {unescape(c) for c in re.findall(r"<td>(.*?)</td>", html)}
    assert {t for t in run.winners()["template"] if "{}" in t} <= cells
    assert "asked about <b>Trouser" in unescape(re.sub(r"<[^>]+>", "", html))
    blocks = [unescape(b) for b in re.findall(r'<pre><code class="language-text">(.*?)</code></pre>', html, re.S)]
    assert FENCED + "\n" in blocks  # the answer whole, in one block

    compared = invoke("compare", MARKED_RUN, MARKED_RUN, "--runs-dir", tmp_path / "runs", "--format", "markdown").output
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(compared)
    assert not re.search(r"<(script|b|em|strong|a)\b", html), html
    items = {unescape(i) for i in re.findall(r"<li>(.*?)</li>", html)}
    winners = run.winners()  # shared among the winners: each a template with the names it was scored with
    assert {t + (f" (with {names})" if names else "") for t, names in zip(winners["template"], winners["names"])
            if "{}" in t} <= items
    assert any(i.startswith(f"note: A ({MARKED_RUN}) renamed 1 of 4 classes (<b>Trouser -> jeans): row") and
               "with the names its search found" in i for i in items), items


def test_show_markdown_nests_the_lines_under_a_turn_as_list_items(tmp_path, monkeypatch):
    """The lines under a turn's "shown:", "proposed:" and names turn items began "-     "
    (four spaces after the bullet, as the terminal indents them): CommonMark made each an
    indented code block, the templates' backticks shown and a class name's markup kept. They
    are nested list items now, names escaped; the terminal's text is as it was."""
    markdown_it = pytest.importorskip("markdown_it")
    from test_names import climb, scripted

    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    names_answer = "<b>Trouser: jeans\nNo_such: x\nBag: a {name} bag"  # kept, an unknown class, braces
    with FakeLLM(responder=scripted([names_answer], templates="a *starred* photo of a {}.\na {name} photo")) as fake:
        ev = WordEvaluator(classnames=MARKED_CLASSES, class_bias={1: -0.25}, name_bonus={"jeans": 0.2})
        climb(tmp_path, fake.base_url, name="nested", ev=ev, search="both", iterations=2, resets=1, guard="off")
    page = invoke("show", "nested", "--runs-dir", tmp_path / "runs", "--format", "markdown").output
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(page)
    assert "<pre>" not in html and not re.search(r"<(script|b|em|strong|a)\b", html), html
    nested = [unescape(re.sub(r"\s+", " ", item)) for item in re.findall(r"<ul>\s*<li>(.*?)</li>\s*</ul>\s*</li>", html, re.S)]
    turn = next(i for i in nested if i.startswith("answer 1 ") and "asked about" in i)
    assert re.fullmatch(r".*kept <b>Trouser -> jeans <ul> <li>\d+\.\d% <b>Trouser -> jeans \(kept\)</li> "
                        r"<li>refused: 1 unknown class, 1 braces", turn), turn
    items = [unescape(re.sub(r"\s+", " ", i)) for i in re.findall(r"<li>([^<]*(?:<code>.*?</code>[^<]*)?)</li>", html)]
    assert any(re.fullmatch(r"top \d+\.\d% <code>a photo of a {}\.</code>", i) for i in items), items
    assert any(re.fullmatch(r"\d+\.\d% <code>a \*starred\* photo of a {}\.</code>( <- best so far)?", i)
               for i in items), items
    assert "rejected <code>a {name} photo</code>: placeholder {name} is not a plain {}" in items
    text = invoke("show", "nested", "--runs-dir", tmp_path / "runs").output.splitlines()
    assert "      refused: 1 unknown class, 1 braces" in text and "      rejected  x: unknown class" in text
    assert any(re.fullmatch(r"      top     +\d+\.\d%  a photo of a {}\.", line) for line in text), text
    assert any(re.fullmatch(r"       ?\d+\.\d%  <b>Trouser -> jeans", line) for line in text), text


def make_soft_run(root: Path, adapter: dict | None = None, classnames=None, shots: int = 2) -> Path:
    """A finished soft-prompt run (--optimizer craft) of 2 steps and 80 queries, as its search
    writes it, under root/runs/soft; `adapter`: its output-side module's section; `classnames`:
    its --classnames as recorded."""
    config = {"run_id": "soft", "optimizer": "craft", "soft_prompt": {"queries": 80},
              "evaluator_args": {"dataset": "toy", "shots": shots, "seed": 0, "backbone": "word", "classnames": classnames}}
    best = {"template": "<soft: a photo of a> {class}.", "origin": "craft", "accuracy": {"train": 0.5, "val": 0.4}}
    soft = {"file": "soft_prompt.safetensors", "tokens": 2, "init": "a_photo", "nearest_tokens": ["*a*", "<b>"]}
    with RunStore.create(root / "runs" / "soft", config) as store:
        for step in range(3):
            store.append("step", iteration=step, queries=40 * step,
                         prompt={"accuracy": {"train": 0.3 + step / 10, "val": 0.25 + step / 10}})
        store.append("final", stopped="completed", best=best, ensemble=None, top=[best], adapter=adapter,
                     soft_prompt=soft)
        store.write_json("summary.json", {"v": 1, "best": best, "ensemble": None, "top": [best], "soft_prompt": soft,
                                          "adapter": adapter, "counts": {"queries": 80, "steps": 2, "budget": 80}})
    return root / "runs" / "soft"


def test_show_markdown_of_a_soft_prompt_run_has_its_steps_as_a_table(tmp_path):
    """A soft-prompt run's (--optimizer craft|cbbt) steps table, written as aligned lines after
    its facts, rendered as one paragraph: the facts, the header and every step run together."""
    markdown_it = pytest.importorskip("markdown_it")
    make_soft_run(tmp_path)
    page = invoke("show", "soft", "--runs-dir", tmp_path / "runs", "--format", "markdown").output
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(page)
    assert "<h2>Soft prompt (craft; " in html
    items = [unescape(i) for i in re.findall(r"<li>(.*?)</li>", html)]
    assert items == ["2 vectors in soft_prompt.safetensors, started from 'a_photo'; nearest tokens: '*a* <b>' "
                     "(a readable hint: these words do not score the same)", "2 steps, 80 of 80 queries"]
    tables = re.findall(r"<table>(.*?)</table>", html, re.S)
    steps = [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", tables[-1], re.S)]
    assert steps == [["step", "queries", "train", "val"], ["0", "0", "30.0%", "25.0%"], ["1", "40", "40.0%", "35.0%"],
                     ["2", "80", "50.0%", "45.0%"]]
    text = invoke("show", "soft", "--runs-dir", tmp_path / "runs").output  # the terminal's table as it was
    assert "  step  queries   train     val\n     0        0   30.0%   25.0%\n" in text
    # its headline said "0 LLM answers; 0 from the cache, 0 prompt + 0 completion tokens; 0 templates
    # scored": a run without an LLM spends queries, as its steps table counts them
    assert text.splitlines()[:2] == ["run soft: toy, backbone word, 2 shots, seed 0, optimizer craft; done",
                                     "2 steps, 80 of 80 queries (prompts scored on train)"]
    assert "LLM answers" not in text and "LLM answers" not in page


@pytest.mark.parametrize("classnames, said", [
    ("clean", "start names clean, "), ("/data/names.txt", "start names /data/names.txt, "),
    (["tee", "pants", "gown", "bag", "purse"], "start names tee, pants, gown, bag, ..., "),
    ("published", ""), (None, "")])
def test_show_says_the_names_a_run_started_from_where_they_are_not_the_datas_own(tmp_path, classnames, said):
    """A craft or cbbt run has no names table: its headline is the one place `show` says which
    names its prompts were filled with."""
    make_soft_run(tmp_path, classnames=classnames)
    headline = invoke("show", "soft", "--runs-dir", tmp_path / "runs").output.splitlines()[0]
    assert headline == f"run soft: toy, backbone word, 2 shots, seed 0, {said}optimizer craft; done"


@pytest.mark.parametrize("shots, said", [(1, "1 shot"), (2, "2 shots")])
def test_show_and_report_count_one_shot_in_the_singular(tmp_path, shots, said):
    make_soft_run(tmp_path, shots=shots)
    runs = tmp_path / "runs"
    assert invoke("show", "soft", "--runs-dir", runs).output.startswith(f"run soft: toy, backbone word, {said}, seed 0")
    assert f"toy · word · {said} · seed 0 ·" in unescape(invoke("report", "soft", "--runs-dir", runs, "-o", "-").stdout)


@pytest.mark.parametrize("beats, verdict", [(True, "kept: it beat the prompt alone on val"),
                                            (False, "not kept: it did not beat the prompt alone on val")])
def test_show_of_a_soft_prompt_run_says_whether_its_module_was_kept_in_one_clause(tmp_path, beats, verdict):
    """`show` of a soft-prompt run whose module lost on val ended its line in nested brackets,
    '(not kept (val))': it says why now, as a module kept does."""
    make_soft_run(tmp_path, {"kind": "residual-logits", "accuracy": {"train": 0.6, "val": 0.5, "test": 0.4},
                             "beats_prompt_on_val": beats})
    for markdown in ([], ["--format", "markdown"]):
        lines = invoke("show", "soft", "--runs-dir", tmp_path / "runs", *markdown).output.splitlines()
        said = [line for line in lines if "with residual-logits" in line]
        assert len(said) == 1 and said[0].endswith(f"val 50.0%  test 40.0%  ({verdict})"), lines


def test_bad_input_is_a_message_not_a_traceback(tmp_path):
    run_dir = make_run(tmp_path, "20250101-toy")
    runs = tmp_path / "runs"
    for command in (["show", "nope"], ["report", "nope"], ["compare", "20250101-toy", "nope"],
                    ["transfer", "nope", "--backbone", "x"]):
        result = invoke(*command, "--runs-dir", runs)
        assert result.exit_code == 1, (command, result.output)
        assert "no run 'nope'" in result.output and "runs there: 20250101-toy" in result.output
        assert "Traceback" not in result.output
    # a path that is not there is said as one (it read "no run 'PATH' under runs")
    from promptclimb.agent.core.errors import PromptclimbError
    from promptclimb.agent.runs.reading import find_run

    for path in (tmp_path / "elsewhere" / "nope", "elsewhere/nope"):
        with pytest.raises(PromptclimbError, match=f"^no run folder {re.escape(str(path))}: it does not exist$"):
            find_run(str(path), runs)
    result = invoke("runs", "--runs-dir", tmp_path / "empty")
    assert result.exit_code == 1 and "no runs under" in result.output
    one = invoke("runs", "--runs-dir", tmp_path / "runs" / "20250101-toy")  # a run folder, not a folder of runs
    assert one.exit_code == 1 and f"is a run, not a folder of runs: read it with promptclimb show " in one.output
    # records: an empty folder lists none; a folder that is not there (a typo) was an empty list too
    (tmp_path / "empty").mkdir()
    for fmt, none in (("json", []), ("csv", None), ("markdown", None)):
        listed = invoke("runs", "--runs-dir", tmp_path / "empty", "--format", fmt)
        assert listed.exit_code == 0, listed.output
        if none is not None:
            assert json.loads(listed.output) == none
        missing = invoke("runs", "--runs-dir", tmp_path / "emtpy", "--format", fmt)
        assert missing.exit_code == 1 and f"Error: no folder {tmp_path / 'emtpy'} (--runs-dir): no runs to list" \
            in missing.output

    # partly corrupt history: what is valid is shown, what was skipped is named
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    lines[3] = "{not json"
    (run_dir / "history.jsonl").write_text("\n".join(lines) + "\n" + lines[-1][:20])
    result = invoke("show", "20250101", "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    assert "2 line(s)" in result.stderr and "line 4: not valid JSON" in result.stderr
    assert "incomplete (no end of line" in result.stderr
    assert "Winning templates" in result.stdout and "answer 6" in result.stdout

    # a newer format
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "v": 7}))
    result = invoke("show", "20250101-toy", "--runs-dir", runs)
    assert result.exit_code == 1 and "run format v7" in result.output and "Upgrade promptclimb" in result.output
    assert "newer format" in invoke("runs", "--runs-dir", runs).output


def test_show_and_runs_say_where_a_sweeps_runs_are(tmp_path):
    """`show SWEEP` said "no run 'grid' under runs" of a folder that is there, and `runs` left a
    sweep's cells out without a word."""
    runs = tmp_path / "runs"
    (runs / "grid").mkdir(parents=True)
    (runs / "grid" / "sweep.json").write_text("{}")
    only_sweep = invoke("runs", "--runs-dir", runs)
    assert only_sweep.exit_code == 1 and f"promptclimb runs --runs-dir {runs / 'grid'}" in only_sweep.output
    make_run(tmp_path, "plain")
    shown = invoke("show", "grid", "--runs-dir", runs)
    assert shown.exit_code == 1
    assert f"{runs / 'grid'} is a sweep, not a run: promptclimb sweep-report {runs / 'grid'} reports it" in shown.output
    listed = invoke("runs", "--runs-dir", runs, "--format", "json")
    assert listed.exit_code == 0 and [r["id"] for r in json.loads(listed.stdout)] == ["plain"]
    assert listed.stderr == f"sweeps here (their runs not listed above): promptclimb runs --runs-dir {runs / 'grid'}\n"


def test_a_line_being_written_is_not_said_to_be_cut_short_by_a_stop(tmp_path):
    """`show` of a run whose search is writing its last history line (locked, no newline yet)
    said the line was "cut short (the run was stopped while writing it)"; a reader cannot know
    that the run was stopped, only that the line has no end yet."""
    run_dir = make_run(tmp_path)
    (run_dir / "summary.json").unlink()  # the search has not finished: no summary, no final event
    lines = [line for line in (run_dir / "history.jsonl").read_text().splitlines()
             if json.loads(line)["event"] != "final"]
    (run_dir / "history.jsonl").write_text("\n".join(lines) + "\n")
    with run_lock(run_dir), open(run_dir / "history.jsonl", "ab") as history:  # as the search holds them
        history.write(b'{"v": 2, "seq": 999, "event": "sco')
        history.flush()
        result = invoke("show", "run", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert f"line {len(lines) + 1}: incomplete (no end of line: a search still running is writing it, or was stopped " \
           "while writing it)" in result.stderr
    assert "the run was stopped" not in result.stderr and "running" in result.stdout and "unfinished" not in result.stdout


@pytest.mark.parametrize("empty", ["", "\n"])
def test_an_empty_summary_reads_as_a_missing_one(tmp_path, empty):
    """An empty summary.json (a crash between creating and writing it, `: > summary.json`) was
    refused by show, report, compare and adapt as damaged ("not valid JSON: Expecting value")
    and listed by runs as unreadable, while a missing one is read from the history."""
    from fake_llm import one_line_error

    runs = tmp_path / "runs"
    shutil.copytree(make_run(tmp_path, "missing"), runs / "empty")
    (runs / "missing" / "summary.json").unlink()
    (runs / "empty" / "summary.json").write_text(empty)
    assert load_run(runs / "empty").summary is None

    def shown(name, *options):
        result = invoke("show", name, "--runs-dir", runs, *options)
        assert result.exit_code == 0, result.output
        return result.output.replace(str(runs / name), "PATH").replace(name, "RUN")

    assert shown("empty") == shown("missing") and "; done\n" in shown("empty")  # the history's final event
    assert shown("empty", "--format", "json") == shown("missing", "--format", "json")
    listed = json.loads(invoke("runs", "--runs-dir", runs, "--format", "json").output)
    assert {r["id"]: r["status"] for r in listed} == {"empty": "done", "missing": "done"}
    one_line_error(invoke("adapt", "empty", "--kind", "cache", "--runs-dir", runs),
                   f"{runs / 'empty'} has an empty summary.json: the search has not finished")

    (runs / "empty" / "summary.json").write_text("{")  # something, not JSON: damaged, as before
    one_line_error(invoke("show", "empty", "--runs-dir", runs), f"{runs / 'empty' / 'summary.json'} is damaged")


def test_a_finished_run_without_its_history_says_so(tmp_path):
    """`show` of a run whose history.jsonl was lost (config.json and summary.json kept) printed
    "0 LLM answers" beside summary.json's token counts with nothing said of why."""
    run_dir = make_run(tmp_path)
    history = run_dir / "history.jsonl"
    assert "warning" not in invoke("show", "run", "--runs-dir", tmp_path / "runs").stderr
    for lost, state in ((lambda: history.write_text(""), "empty"), (history.unlink, "missing")):
        lost()
        for command in ("show", "report"):
            result = invoke(command, "run", "--runs-dir", tmp_path / "runs")
            assert result.exit_code == 0, result.output
            assert result.stderr == f"warning: {history} is {state}: showing what summary.json holds (the result " \
                                    "and its cost), not the run's LLM answers, scores or steps\n"
        assert "0 LLM answers" in invoke("show", "run", "--runs-dir", tmp_path / "runs").stdout
    (run_dir / "summary.json").unlink()  # config.json alone: a search just started, nothing lost
    assert invoke("show", "run", "--runs-dir", tmp_path / "runs").stderr == ""


def test_a_soft_prompt_run_without_its_history_says_what_it_lost(tmp_path):
    """A soft-prompt run (no LLM) whose history.jsonl was lost was said to have lost "the run's
    LLM answers", and its headline said "0 steps, 0 of 80 queries": it lost its steps table,
    and its summary.json counts what it spent."""
    history = make_soft_run(tmp_path) / "history.jsonl"
    history.unlink()
    for command in ("show", "report"):
        result = invoke(command, "soft", "--runs-dir", tmp_path / "runs")
        assert result.exit_code == 0, result.output
        assert result.stderr == f"warning: {history} is missing: showing what summary.json holds (the result, its " \
                                "steps and queries in all), not the run's steps one by one\n"
    shown = invoke("show", "soft", "--runs-dir", tmp_path / "runs").stdout
    assert shown.splitlines()[1] == "2 steps, 80 of 80 queries (prompts scored on train)"
    assert "  2 steps, 80 of 80 queries" in shown.splitlines()  # its section, as its headline
    # it printed the header of an empty steps table under that warning
    assert shown.splitlines()[-2:] == ["  2 steps, 80 of 80 queries", "  its steps one by one were lost with history.jsonl"]
    markdown = invoke("show", "soft", "--runs-dir", tmp_path / "runs", "--format", "markdown").stdout
    assert "| step |" not in markdown and markdown.splitlines()[-1] == "- its steps one by one were lost with history.jsonl"


def test_the_report_of_a_soft_prompt_run_shows_its_steps(tmp_path):
    """`report` of a soft-prompt run (it asks no LLM) said "No LLM answer was recorded." where
    an LLM run has its answers, "No exchange recorded." and "LLM None": its steps instead, as
    `show` prints them, and, its history lost, one line that says so."""
    run_dir = make_soft_run(tmp_path)

    def page() -> str:
        result = invoke("report", "soft", "--runs-dir", tmp_path / "runs", "-o", "-")
        assert result.exit_code == 0, result.output
        return unescape(result.stdout)

    html = page()
    assert "· optimizer craft ·" in html and "LLM None" not in html
    assert "No LLM answer" not in html and "The conversation" not in html and "Iteration by iteration" not in html
    section = html.split("<h2>Step by step</h2>")[1].split("<h2>")[0]
    rows = [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", section)]
    assert rows == [["step", "queries", "train", "val"], ["0", "0", "30.0%", "25.0%"], ["1", "40", "40.0%", "35.0%"],
                    ["2", "80", "50.0%", "45.0%"]]
    (run_dir / "history.jsonl").unlink()
    section = page().split("<h2>Step by step</h2>")[1].split("<h2>")[0]
    assert "<table>" not in section and "Its steps one by one were lost with history.jsonl." in section


def test_a_path_that_is_not_a_run_folder_is_named_as_such(tmp_path):
    """`show PATH` where PATH is there but is no run folder (config.json lost, a history.jsonl,
    the runs folder itself) said "no run 'PATH': runs holds no runs (use --runs-dir to look
    elsewhere)", about a --runs-dir the user never meant."""
    run_dir = make_run(tmp_path, "r")
    lost = tmp_path / "lost"
    lost.mkdir()
    (lost / "history.jsonl").write_text((run_dir / "history.jsonl").read_text())
    said = {lost: f"{lost} is not a run folder (it has no config.json)",
            run_dir / "history.jsonl": f"{run_dir / 'history.jsonl'} is a file, not a run folder (a run folder "
                                       "holds config.json)",
            tmp_path / "runs": f"{tmp_path / 'runs'} is not a run folder but holds runs (r): give one of them"}
    for path, message in said.items():
        for command in (["show", path], ["report", path], ["compare", run_dir, path]):
            result = invoke(*command, "--runs-dir", tmp_path / "elsewhere")
            assert result.exit_code == 1 and result.output.strip() == f"Error: {message}", (command, result.output)


def test_an_empty_run_argument_is_refused_not_read_as_every_runs_prefix(tmp_path):
    """"" is a prefix of every run id: with one run under --runs-dir, `adapt ""` adapted it,
    `eval --run ""` scored fashion-mnist instead and `search --resume ""` started a new search."""
    run_dir = make_run(tmp_path, "only")
    runs = tmp_path / "runs"
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    for command in (["show", ""], ["report", " "], ["compare", "", "only"], ["transfer", "", "--backbone", "x"],
                    ["adapt", "", "--kind", "cache"], ["eval", "--run", ""], ["search", "--resume", ""],
                    ["mlflow-sync", ""]):
        result = invoke(*command, "--runs-dir", runs)
        assert result.exit_code == 1, (command, result.output)
        assert result.output.strip().splitlines()[-1].startswith("Error: run '") and "expected a run folder's path " \
            "or a run id" in result.output and "load_run()" not in result.output, (command, result.output)
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


def test_report_is_one_self_contained_page(tmp_path):
    run_dir = make_run(tmp_path)
    result = invoke("report", "run", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert f"report: {run_dir / 'report.html'}" in result.output and f"plot:   {run_dir / 'curve.png'}" in result.output
    html = (run_dir / "report.html").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best"]["template"] in html
    assert re.search(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', html)
    # nothing fetched from elsewhere: no external src/href, no stylesheet or script links
    assert not re.search(r'(src|href)\s*=\s*"(?!data:|#)', html)
    assert "<link" not in html and "<script" not in html and "@import" not in html
    assert html.count("<details>") >= 6  # the conversation is folded away
    # LLM text is escaped, never markup
    assert "a {name} with a named field" in html and "<name>" not in html


def test_the_reports_first_box_says_the_ensemble_when_it_is_what_to_use(tmp_path):
    """The page's headline gave the best template alone where summary.json says the ensemble,
    chosen on val, is what to use; the ensemble's templates were listed nowhere."""
    run_dir = make_run(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["winner"] == "ensemble"
    html = invoke("report", "run", "--runs-dir", tmp_path / "runs", "-o", "-").stdout
    ensemble = summary["ensemble"]
    box = re.search(r'<div class="best">What to use: (.*?)</div>', html, flags=re.S)
    assert box and f"the ensemble of {len(ensemble['templates'])} templates" in box[1]
    assert all(f"<code>{markupsafe.escape(t)}</code>" in box[1] for t in ensemble["templates"])  # as jinja escapes
    assert f"test <b>{pct(ensemble['accuracy']['test'])}</b>" in box[1]
    summary["winner"] = "best"  # the best alone: no such box
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert "What to use" not in invoke("report", "run", "--runs-dir", tmp_path / "runs", "-o", "-").stdout


def test_the_reports_first_box_says_a_kept_adapter_and_where_the_search_started(tmp_path):
    """After `adapt` kept an adapter as the run's result, the page's first box still gave the best
    template's test figure alone (the adapter's was a row of a table further down), and the page
    never said what `show` says: test accuracy from "a photo of a {}." with the start names."""
    run_dir = make_run(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary["best"]["template"]
    summary["adapter"] = {"kind": "cache", "on": "best", "templates": [best], "result": "adapter", "file": "adapter.pt",
                          "accuracy": {"train": 0.9, "val": 0.8, "test": 0.7}}
    summary["baseline"] = {"template": "a photo of a {}.", "names": "start", "accuracy": {"test": 0.25}}
    (run_dir / "summary.json").write_text(json.dumps(summary))

    def boxes():
        html = invoke("report", "run", "--runs-dir", tmp_path / "runs", "-o", "-").stdout
        return (re.search(r'<div class="best">Best template: (.*?)</div>', html, flags=re.S)[1],
                re.search(r'<div class="best">What to use: (.*?)</div>', html, flags=re.S))

    first, use = boxes()
    assert use and use[1].startswith("the prompt + cache adapter (adapter.pt; it beat the prompt alone on val): ")
    assert f"<code>{markupsafe.escape(best)}</code>" in use[1] and "test <b>70.0%</b>" in use[1]
    said = "test accuracy: 25.0% (<code>a photo of a {}.</code> with the start names) → <b>{}</b> ({})"
    assert said.replace("<b>{}</b> ({})", "<b>70.0%</b> (prompt + cache adapter)") in first
    shown = invoke("show", "run", "--runs-dir", tmp_path / "runs").stdout  # as `show` says it
    assert "test accuracy: 25.0% ('a photo of a {}.' with the start names) -> 70.0% (prompt + cache adapter)" in shown
    # an adapter not kept: the ensemble the run chose stays what to use, and the figure its own
    summary["adapter"]["result"] = "prompt-only"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    first, use = boxes()
    ensemble = summary["ensemble"]
    assert use and use[1].startswith(f"the ensemble of {len(ensemble['templates'])} templates (it beat the best ")
    assert said.replace("<b>{}</b> ({})", f"<b>{pct(ensemble['accuracy']['test'])}</b> "
                                          f"(ensemble of {len(ensemble['templates'])})") in first
    del summary["baseline"]  # a run written before the baseline was kept: no such line
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert "test accuracy:" not in boxes()[0]


def test_report_writes_through_a_symlink_and_to_stdout(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path)
    monkeypatch.chdir(tmp_path)  # where a file named "-" would be written
    target = tmp_path / "site" / "page.html"
    target.parent.mkdir()
    target.write_text("old page")
    link = tmp_path / "link.html"
    link.symlink_to(target)
    result = invoke("report", "run", "--runs-dir", tmp_path / "runs", "-o", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == target and "report: " + str(link) in result.output
    page = target.read_text()
    assert page.startswith("<!DOCTYPE html>") and json.loads((run_dir / "summary.json").read_text())[
        "best"]["template"] in page

    out = CliRunner().invoke(cli, ["report", "run", "--runs-dir", str(tmp_path / "runs"), "-o", "-"])
    assert out.exit_code == 0, out.output
    written = re.compile(r"report written [^<]*<")  # the minute each page was written: two runs may straddle one
    assert written.sub("", out.stdout) == written.sub("", page)  # the page alone on stdout; the plot's path on stderr
    assert len(written.findall(page)) == 1
    assert f"plot:   {run_dir / 'curve.png'}" in out.stderr and not (tmp_path / "-").exists()


def test_report_never_writes_over_the_runs_own_files(tmp_path, monkeypatch):
    """`report RUN -o RUN/history.jsonl` wrote the page over the run's history (through a
    symlink too): `show` could not read it and the run could not be resumed."""
    run_dir = make_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.json").symlink_to(run_dir / "summary.json")
    for target in (run_dir / "history.jsonl", Path("runs") / "run" / "config.json", tmp_path / "link.json"):
        kept = target.read_bytes()
        result = invoke("report", "run", "--runs-dir", tmp_path / "runs", "-o", target)
        assert result.exit_code == 1 and f"-o {target}: that is run's own " in result.output, result.output
        assert target.read_bytes() == kept
    assert invoke("report", "run", "--runs-dir", tmp_path / "runs", "-o", run_dir / "mine.html").exit_code == 0
    other = make_run(tmp_path, "other")  # another run's files as well
    kept = (other / "history.jsonl").read_bytes()
    refused = invoke("report", "run", "--runs-dir", tmp_path / "runs", "-o", other / "history.jsonl")
    assert refused.exit_code == 1 and "that is other's own history.jsonl" in refused.output, refused.output
    assert (other / "history.jsonl").read_bytes() == kept


def test_report_of_a_run_whose_folder_cannot_be_written(tmp_path, monkeypatch):
    """Someone else's runs, or a read-only copy: `report -o elsewhere` and `-o -` still give the
    page, its plot embedded (they failed on writing curve.png into the run's folder); without
    -o, one line says the folder cannot be written and what to do."""
    import errno
    import tempfile

    run_dir = make_run(tmp_path)
    real_mkstemp = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):  # what a read-only file system answers there
        if dir is not None and Path(dir) == run_dir:
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    before = sorted(p.name for p in run_dir.iterdir())
    page = tmp_path / "page.html"
    result = invoke("report", "run", "--runs-dir", tmp_path / "runs", "-o", page)
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert re.search(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', html)
    out = CliRunner().invoke(cli, ["report", "run", "--runs-dir", str(tmp_path / "runs"), "-o", "-"])
    assert out.exit_code == 0, out.output
    assert out.stdout.startswith("<!DOCTYPE html>") and "data:image/png;base64," in out.stdout
    assert sorted(p.name for p in run_dir.iterdir()) == before

    result = invoke("report", "run", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == (f"Error: cannot write {run_dir / 'report.html'}: Read-only file system; "
                                     "write the page elsewhere with -o FILE, or -o - for stdout")


def test_compare_puts_winners_side_by_side(tmp_path):
    make_run(tmp_path, "a")
    make_run(tmp_path, "b", iterations=1)
    result = invoke("compare", "a", "b", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    best_a = json.loads((tmp_path / "runs" / "a" / "summary.json").read_text())["best"]["template"]
    best_b = json.loads((tmp_path / "runs" / "b" / "summary.json").read_text())["best"]["template"]
    row = next(line for line in result.output.splitlines() if line.startswith("1 "))
    assert row.index(best_a) < row.rindex(best_b)
    assert "shared among the winners" in result.output
    rows = json.loads(invoke("compare", "a", "b", "--runs-dir", tmp_path / "runs", "--format", "json").output)
    assert rows[0]["A template"] == best_a and rows[0]["B template"] == best_b
    assert (rows[0]["A run"], rows[0]["B run"]) == ("a", "b")
    # ranks as `show --format json` writes them: numbers, then "ens" (they were "1", "2", ...)
    shown = json.loads(invoke("show", "a", "--runs-dir", tmp_path / "runs", "--format", "json").output)["winners"]
    assert [r["rank"] for r in rows] == [w["rank"] for w in shown] == [1, 2, 3, 4, 5, "ens"]
    assert invoke("compare", "a", "b", "--runs-dir", tmp_path / "runs", "--top", "0").exit_code == 2

    # An unfinished run (no ensemble yet, more ranks listed) still lines up rank by rank.
    b = tmp_path / "runs" / "b"
    (b / "history.jsonl").write_text("".join(line + "\n" for line in b.joinpath("history.jsonl").read_text()
                                             .splitlines() if json.loads(line)["event"] != "final"))
    (b / "summary.json").unlink()
    rows = json.loads(invoke("compare", "a", "b", "--runs-dir", tmp_path / "runs", "--format", "json").output)
    ens = [r for r in rows if r["rank"] == "ens"]
    assert len(ens) == 1 and ens[0]["A template"].startswith("ensemble of") and ens[0]["B template"] is None
    assert [r["rank"] for r in rows[:-1]] == list(range(1, len(rows)))


def test_compare_says_when_the_runs_data_differs(tmp_path):
    """Same dataset, shots and seed, but other data (another image folder, other classes):
    `compare` says the accuracies are not measured on the same images, from what config.json records."""
    runs = tmp_path / "runs"
    make_run(tmp_path, "a")
    make_run(tmp_path, "b")

    def record(name, data_root=None, names=("coat", "shirt", "bag"), classnames=None, identity=None, ids="1"):
        path = runs / name / "config.json"
        config = json.loads(path.read_text())
        config["evaluator_args"].update(data_root=data_root, classnames=classnames)
        config["evaluator"] = {"dataset": {"name": "toy", "classes": len(names), "classnames": list(names),
                                           **({"identity": identity} if identity else {})},
                               "split": {"ids_sha256": {"train": ids, "val": ids, "test": ids, "unlabeled": name}}}
        path.write_text(json.dumps(config))

    def note():
        result = invoke("compare", "a", "b", "--runs-dir", runs)
        assert result.exit_code == 0, result.output
        return [line for line in result.output.splitlines() if line.startswith("note:")]

    assert note() == []  # neither records its data: the same dataset, shots and seed
    record("a", "/data/five", names=("coat", "shirt", "bag", "sandal", "boot"), ids="5")
    record("b", "/data/three", ids="3")
    assert note() == ["note: the runs use different dataset splits (data, images drawn, classes differ); their "
                      "accuracies are not measured on the same images."]
    record("a", "/data/toy", names=("coat", "shirt", "dress"))  # as many classes, of other names
    record("b", "/data/toy")
    assert "(class names differ)" in note()[0]
    record("a", "/data/toy", names=("jacket", "blouse", "bag"), classnames="clean")  # the same images, renamed
    assert note() == ["note: the runs start from different class names (--classnames) on the same images: 2 of 3 "
                      "differ (A -> B: jacket -> coat, blouse -> shirt); each run's renames are counted from its own "
                      "start names."]
    record("a", "/copy/of/toy", identity="toy:abc")  # the same data elsewhere: its identity says so
    record("b", "/data/toy", identity="toy:abc")
    assert note() == []
    record("a", "/data/toy", identity="toy:abd")  # files changed in place
    assert "(data differ)" in note()[0]
    # a folder's identity starts with its path: a copy of the same files elsewhere was "data differ"
    record("a", "/copy/toy", identity="/copy/toy:files123:decoded:2")
    record("b", "/data/toy", identity="/data/toy:files123:decoded:2")
    assert note() == []
    record("a", "/copy/toy", identity="/copy/toy:files124:decoded:2")
    assert "(data differ)" in note()[0]


def test_compare_says_when_only_the_few_shot_images_differ_and_the_test_images_are_shared(tmp_path):
    """Two seeds of one dataset draw other train and val images from the same test set: their
    test accuracies compare (it had said no accuracy was measured on the same images)."""
    runs = tmp_path / "runs"
    for name, seed in (("a", 0), ("b", 7)):
        make_run(tmp_path, name)
        path = runs / name / "config.json"
        config = json.loads(path.read_text())
        config["evaluator_args"]["seed"] = seed
        config["evaluator"] = {"dataset": {"name": "toy", "classes": 3, "identity": "toy:abc"},
                               "split": {"ids_sha256": {"train": f"t{seed}", "val": f"v{seed}", "test": "same"}}}
        path.write_text(json.dumps(config))
    result = invoke("compare", "a", "b", "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("note:")] == [
        "note: the runs draw different few-shot images (seed, images drawn differ) and are tested on the same "
        "images: their test accuracies compare, their train accuracies do not."]
    for fmt in ("json", "csv"):  # the records stay records; the note comes beside them
        result = invoke("compare", "a", "b", "--runs-dir", runs, "--format", fmt)
        assert result.exit_code == 0, result.output
        assert "note:" not in result.stdout and result.stderr.startswith("note: the runs draw different few-shot")
    assert [row["rank"] for row in json.loads(invoke("compare", "a", "b", "--runs-dir", runs, "--format",
                                                     "json").stdout)][:1] == [1]
    config = json.loads((runs / "b" / "config.json").read_text())
    config["evaluator"]["split"]["ids_sha256"]["test"] = "other"
    (runs / "b" / "config.json").write_text(json.dumps(config))
    assert "note: the runs use different dataset splits (seed, images drawn differ)" in invoke(
        "compare", "a", "b", "--runs-dir", runs).output


def test_compare_says_which_run_renamed_classes(tmp_path, monkeypatch):
    """Beside a template-only run, a names search's winners are scored with the names it
    found: a template both runs list read 79.2% and 90.6% test, as "shared among the winners",
    with nothing said of why."""
    from test_reading import make_names_run

    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    names_dir, _ = make_names_run(tmp_path)
    make_run(tmp_path, "plain")
    changed = [c for c in json.loads((names_dir / "summary.json").read_text())["names"]["classes"] if c["changed"]]
    assert changed
    renamed = ", ".join(f"{c['start']} -> {c['found']}" for c in changed)
    result = invoke("compare", "plain", names_dir.name, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    # which rows are scored with which names: a pool template's keep the start names (all were said renamed)
    records = json.loads(invoke("compare", "plain", names_dir.name, "--runs-dir", tmp_path / "runs",
                                "--format", "json").stdout)
    found = renamed.replace(", ", "; ")
    groups = {"the names its search found": [str(r["rank"]) for r in records if r["B names"] == found],
              "the start names": [str(r["rank"]) for r in records if r["B names"] == ""],
              "names it held earlier": [str(r["rank"]) for r in records if r["B names"] not in ("", found)]}
    assert {"1", "ens"} <= set(groups["the names its search found"]) and groups["the start names"]  # the best's
    assert {r["A names"] for r in records} == {""}  # the records say each row's renames in full
    said = "; ".join(f"{'row' if len(ranks) == 1 else 'rows'} {', '.join(ranks)} with {names}"
                     for names, ranks in groups.items() if ranks)
    notes = [line for line in result.output.splitlines() if "renamed" in line]
    assert notes == [f"note: B ({names_dir.name}) renamed {len(changed)} of 4 classes ({renamed}): {said}."]


def test_compare_and_show_list_as_many_distinct_winners_as_asked_after_a_rename(tmp_path, monkeypatch):
    """A names search's summary.json holds its best template once per set of names: `compare`
    and `show` still list --top (5) distinct templates, as `transfer` ranks them."""
    from test_reading import make_names_run

    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    make_run(tmp_path, "a")
    run_dir, _ = make_names_run(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len({t["template"] for t in summary["top"]}) < len(summary["top"])
    rows = json.loads(invoke("compare", "a", run_dir.name, "--runs-dir", tmp_path / "runs", "--format", "json").stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5, "ens"]
    listed = [r["B template"] for r in rows[:5]]
    assert None not in listed and len(set(listed)) == 5 and listed[0] == summary["best"]["template"]
    shown = json.loads(invoke("show", run_dir.name, "--runs-dir", tmp_path / "runs", "--format", "json").output)
    assert [w["template"] for w in shown["winners"][:5]] == listed

def cut_history(run_dir: Path, keep) -> None:
    """The run as a search killed (Ctrl-C, or stopped by an LLM failure) leaves it: no summary.json,
    and its history's events up to the last one `keep` holds (no final event)."""
    (run_dir / "summary.json").unlink()
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if keep(json.loads(line)))
    (run_dir / "history.jsonl").write_text("\n".join(lines[: last + 1]) + "\n")


def test_show_of_an_unfinished_run_says_how_to_continue_it(tmp_path):
    """`show` of a run killed mid-search (no lock held) said only "unfinished"; `eval --run`
    says how to finish it, `show` said nothing of it. A running or finished run has no such line."""
    run_dir = make_run(tmp_path)
    runs = tmp_path / "runs"
    resume = f"promptclimb search --resume {run_dir}"
    assert "continue it with" not in invoke("show", "run", "--runs-dir", runs).output
    cut_history(run_dir, lambda e: e["event"] != "final")
    text = invoke("show", "run", "--runs-dir", runs)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0].endswith("; unfinished") and lines[2] == f"continue it with: {resume}"
    markdown = invoke("show", "run", "--runs-dir", runs, "--format", "markdown").stdout.splitlines()
    assert markdown[2:4] == ["", f"continue it with: `{resume}`"]  # a paragraph of its own
    with run_lock(run_dir):  # a search at it: nothing to continue
        running = invoke("show", "run", "--runs-dir", runs).stdout
    assert "; running\n" in running and "continue it with" not in running


def test_show_and_report_say_what_each_drift_guard_answer_judged(tmp_path, monkeypatch):
    """A guard answer read `answer 2 (...) [guard]: best so far 35.5%` / `answered: Trouser`, not
    which change was judged; the report marked neither guard nor names answers, and gave each
    an empty "shown to the LLM" table (a guard one an empty "proposed" table too)."""
    from test_reading import make_names_run

    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    run_dir, _ = make_names_run(tmp_path)
    judges = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "names_judge"]
    assert [(e["class"], e["name"], e["answer"]) for e in judges] == [(1, "jeans", "Trouser"),
                                                                      (0, "tee", "T-shirt/top")]
    text = invoke("show", run_dir.name, "--runs-dir", tmp_path / "runs").stdout.splitlines()
    assert "answer 2 (restart 1, reset 1, iteration 1) [guard] Trouser -> jeans: judged Trouser" in text
    assert "answer 5 (restart 1, reset 2, iteration 1) [guard] T-shirt/top -> tee: judged T-shirt/top" in text
    assert not any("answered:" in line for line in text)
    markdown = invoke("show", run_dir.name, "--runs-dir", tmp_path / "runs", "--format", "markdown").stdout
    assert "### answer 2 (restart 1, reset 1, iteration 1) [guard] Trouser -\\> jeans: judged `Trouser`\n" in markdown

    html = invoke("report", run_dir.name, "--runs-dir", tmp_path / "runs", "-o", "-").stdout
    climb = html.split("<h2>Iteration by iteration</h2>")[1].split("<h2>The conversation</h2>")[0]
    assert re.findall(r'<tr><td class="num">(\d+(?: \[\w+\])?)</td>', climb) == \
        ["1 [names]", "2 [guard]", "3", "4 [names]", "5 [guard]", "6"]
    assert "<p>Answer 2 [guard] (restart 1, reset 1, iteration 1): judged <code>Trouser</code></p>" in climb
    details = re.findall(r"<details><summary>Answer (.*?)</details>", climb, re.S)
    assert [d.split(" (")[0] for d in details] == ["1 [names]", "3", "4 [names]", "6"]
    assert ["shown to the LLM" in d for d in details] == [False, True, False, True]


def test_show_says_a_names_turn_cut_off_by_a_stop_has_not_decided(tmp_path, monkeypatch):
    """Ctrl-C during a names turn's guard questions: `show` said the turn "kept nothing",
    though its decision was still to come (a resume asks the guard and decides)."""
    from test_reading import make_names_run

    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    run_dir, _ = make_names_run(tmp_path)
    runs = tmp_path / "runs"
    first = "answer 1 (restart 1, reset 1, iteration 1): asked about Trouser, T-shirt/top, Dress; "
    assert f"  {first}kept Trouser -> jeans" in invoke("show", run_dir.name, "--runs-dir", runs).stdout.splitlines()
    # the first turn's score, its guard not answered
    cut_history(run_dir, lambda e: e["event"] == "name_score" and e["call"] == 0)
    text = invoke("show", run_dir.name, "--runs-dir", runs).stdout
    assert f"  {first}kept nothing so far (the run stopped in this turn: a resume goes on from it)\n" in text
    with run_lock(run_dir):
        running = invoke("show", run_dir.name, "--runs-dir", runs).stdout
    assert f"  {first}kept nothing so far\n" in running


def names_turns_said(html: str) -> str:
    """The report's "Names turns" section, its whitespace collapsed ('' where it has none)."""
    section = html.split("<h2>Names turns</h2>")[1].split("<h2>")[0] if "<h2>Names turns</h2>" in html else ""
    return " ".join(section.split())


def test_the_report_says_what_each_names_turn_asked_about_and_kept_as_show_does(tmp_path, monkeypatch):
    """The report had no names turns: a run killed after a turn kept Trouser -> jeans never said
    which names were found or kept (`show` did), and a finished one never marked which of a
    turn's proposals was kept (its answer's table lists them all, unmarked)."""
    from test_names import climb, scripted

    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    with FakeLLM(responder=scripted(["Trouser: slacks\nTrouser: jeans\nTrouser: pants\nDress: {x}"])) as fake:
        _, _, run_dir = climb(tmp_path, fake.base_url, search="both", proposals=5)
    runs = tmp_path / "runs"
    shutil.copytree(run_dir, runs / "early")
    asked = "Answer 1 (restart 1, reset 1, iteration 1): asked about Trouser, T-shirt/top, Dress;"

    def report(name):
        return invoke("report", name, "--runs-dir", runs, "-o", "-").stdout

    html = report(run_dir.name)
    said = names_turns_said(html)
    assert f"{asked} kept <b>Trouser → jeans</b>; 3 scored, 1 refused" in said
    assert re.findall(r'<td class="num">[\d.]+%</td><td>(.*?)</td>', said) == \
        ['Trouser → jeans <span class="up">kept</span>', "Trouser → pants", "Trouser → slacks"]
    assert "refused: 1 braces" in said
    answer = html.split("<h2>Iteration by iteration</h2>")[1]  # the answer's own table marks it too
    assert '<code>Trouser -&gt; jeans</code> <span class="up">kept</span>' in answer
    assert '<code>Trouser -&gt; pants</code></td>' in answer
    # killed after the turn kept jeans: what it found and kept is said, as `show` says it
    cut_history(run_dir, lambda e: e["event"] == "names_change")
    assert f"{asked} kept <b>Trouser → jeans</b>; 3 scored, 1 refused" in names_turns_said(report(run_dir.name))
    # killed before the guard answered: its decision is still to come
    cut_history(runs / "early", lambda e: e["event"] == "name_score")
    assert f"{asked} kept nothing so far (the run stopped in this turn: a resume goes on from it);" in \
        names_turns_said(report("early"))


def test_the_reports_names_turns_say_a_cut_by_the_budget_and_a_combination_not_kept(tmp_path, monkeypatch):
    """The lines `show` writes under a names turn cut by the budget, or one that kept a change but
    not its combination with another, are on the page too."""
    from test_names import climb, scripted, tee_takes_the_trousers

    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    answer = scripted(["Trouser: jeans\nT-shirt/top: tee"])
    with FakeLLM(responder=answer) as fake:  # jeans's guard question is answered, tee's not
        _, _, run_dir = climb(tmp_path, fake.base_url, name="cut", caps={"max_tokens": 40})
    said = names_turns_said(invoke("report", "cut", "--runs-dir", tmp_path / "runs", "-o", "-").stdout)
    assert "kept <b>Trouser → jeans</b>; 2 scored, 1 refused" in said and "refused:" not in said
    assert ("cut by the budget (max tokens (40) reached): the drift guard could not finish its questions about "
            "T-shirt/top → tee (31.8%), so not kept; the search stopped here") in said
    with FakeLLM(responder=answer) as fake:
        climb(tmp_path, fake.base_url, name="pair", ev=tee_takes_the_trousers())
    said = names_turns_said(invoke("report", "pair", "--runs-dir", tmp_path / "runs", "-o", "-").stdout)
    assert ("not combined: Trouser → jeans, T-shirt/top → tee (own images lost: Trouser: right on train and val: "
            "2 -&gt; 0)") in said


def test_compare_tells_an_unfinished_names_runs_renamed_winner_from_the_same_text_with_the_start_names(
        tmp_path, monkeypatch):
    """A names run killed after a turn kept Trouser -> jeans, beside a run of the start names:
    the template both list (scored with jeans in one, Trouser in the other) was "shared among
    the winners", and no note said A renamed anything (its result's names table, read for the
    note, is written when a run ends)."""
    from test_reading import make_names_run

    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    names_dir, _ = make_names_run(tmp_path)
    runs = tmp_path / "runs"
    shutil.copytree(names_dir, runs / "start")
    cut_history(names_dir, lambda e: e["event"] == "names_change" and e["call"] == 0)
    cut_history(runs / "start", lambda e: e["event"] == "score" and e.get("call") is None)  # its pool alone
    shutil.copytree(names_dir, runs / "again")
    records = json.loads(invoke("compare", names_dir.name, "start", "--runs-dir", runs, "--format", "json").stdout)
    assert [records[0][k] for k in ("A template", "A names", "B template", "B names")] == \
        ["a photo of a {}.", "Trouser -> jeans", "a photo of a {}.", ""]

    def compared(other):
        lines = invoke("compare", names_dir.name, other, "--runs-dir", runs).stdout.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith("shared among the winners: "))
        listed = [line.strip() for line in lines[at + 1:] if line.startswith("  ")]
        return lines[at], listed, [line for line in lines if line.startswith("note: ")]

    head, listed, notes = compared("start")
    assert head == "shared among the winners: 3" and "a photo of a {}." not in listed
    assert notes == [f"note: A ({names_dir.name}) renamed 1 of 4 classes so far (Trouser -> jeans): row 1 with the "
                     "names its search found; rows 2, 3, 4 with the start names."]
    head, listed, notes = compared("again")  # the same prompt in both: the template with the same names
    assert head == "shared among the winners: 4" and "a photo of a {}. (with Trouser -> jeans)" in listed
    assert len(notes) == 2


def test_show_conversation_csv_of_a_soft_prompt_run_has_no_messages(tmp_path):
    """`show --conversation --format csv` of a soft-prompt run printed its steps table, not
    messages; json gives its conversation as [], so csv gives the message columns, no rows."""
    make_soft_run(tmp_path)
    runs = tmp_path / "runs"
    csv = invoke("show", "soft", "--runs-dir", runs, "--conversation", "--format", "csv")
    assert csv.exit_code == 0, csv.output
    assert csv.stdout == "call,kind,restart,reset,iteration,role,content\n"
    assert json.loads(invoke("show", "soft", "--runs-dir", runs, "--conversation", "--format", "json").stdout)[
        "conversation"] == []
    assert invoke("show", "soft", "--runs-dir", runs, "--format", "csv").stdout.startswith("step,queries,")


def test_rank_correlation():
    a = pd.Series([0.9, 0.8, 0.7, 0.6])
    assert rank_correlation(a, pd.Series([0.5, 0.4, 0.3, 0.2])) == 1.0
    assert rank_correlation(a, pd.Series([0.2, 0.3, 0.4, 0.5])) == -1.0
    # a pair with a NaN is left out: (0.9, 0.5), (0.7, 0.1), (0.6, 0.3) rank 3 2 1 against 3 1 2
    assert rank_correlation(a, pd.Series([0.5, float("nan"), 0.1, 0.3])) == pytest.approx(0.5)
    assert math.isnan(rank_correlation(a, pd.Series([0.5, float("nan"), float("nan"), float("nan")])))  # one pair
    assert math.isnan(rank_correlation(a, pd.Series([0.5, 0.5, 0.5, 0.5])))  # all ties: no order to compare
    assert transfer_name("hf-hub:org/model") == "transfer-hf-hub_org_model.csv"


def test_transfer_with_the_real_clip_evaluator(tmp_path, tiny_clip_config, tiny_clip_weights, image_folder,
                                               isolated_home, torch_threads):
    """A real tiny search, then its winners re-scored on the same backbone (same numbers)
    and on another backbone whose features are not cached yet (computed on the way)."""
    import open_clip
    from safetensors.torch import save_file

    runs = tmp_path / "runs"
    with FakeLLM(responder=responder) as fake:
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake.base_url}
        search = CliRunner().invoke(cli, [
            "search", "--dataset", "imagefolder", "--data-root", str(image_folder), "--shots", "2",
            "--backbone", tiny_clip_config, "--weights", str(tiny_clip_weights), "--device", "cpu",
            "--iterations", "2", "--search", "template", "--resets", "1", "--pool-sample", "6", "--runs-dir", str(runs), "--name", "real"],
            env=env)
    assert search.exit_code == 0, search.output
    run_dir = runs / "real"
    for command in (["show", "real"], ["report", "real"]):
        assert invoke(*command, "--runs-dir", runs).exit_code == 0

    same = invoke("transfer", "real", "--backbone", tiny_clip_config, "--weights", tiny_clip_weights,
                  "--device", "cpu", "--top", "3", "--runs-dir", runs)
    assert same.exit_code == 0, same.output
    saved = run_dir / transfer_name("pc-tiny-vit", weights=tiny_clip_weights)
    assert "rank correlation (Spearman)" in same.output and f"saved {saved}" in same.output
    table = pd.read_csv(saved)
    scored = set(json.loads(line)["template"] for line in (run_dir / "history.jsonl").read_text().splitlines()
                 if json.loads(line)["event"] == "score")
    assert set(table["template"]) == scored | {"a photo of a {}."}  # every template the run scored, + the baseline
    in_run = table.dropna(subset=["source_train"])
    assert len(in_run) == len(scored)
    assert (in_run["source_train"] - in_run["target_train"]).abs().max() < 1e-5  # same backbone, same split

    torch_threads.manual_seed(1)
    wide = open_clip.create_model("pc-tiny-wide", pretrained=None)
    wide_weights = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(wide_weights))
    features = isolated_home / "features" / "images"
    before = set(features.rglob("*.safetensors"))
    other = invoke("transfer", "real", "--backbone", "pc-tiny-wide", "--weights", wide_weights,
                   "--device", "cpu", "--top", "2", "--runs-dir", runs, "--format", "json")
    assert other.exit_code == 0, other.output
    rows = json.loads(other.stdout)
    assert len(set(features.rglob("*.safetensors")) - before) == 3  # train, val, test features of the new backbone
    assert [r["template"] for r in rows][-1] == "a photo of a {}." and len(rows) == 3
    assert all(0.0 <= r[f"target_{s}"] <= 1.0 for r in rows for s in ("train", "val", "test"))
    assert (run_dir / transfer_name("pc-tiny-wide", weights=wide_weights)).exists()


def test_show_says_the_settings_a_run_cannot_tell_from_its_results(tmp_path):
    """A `--guard off` run, a template-only one and one with `--confirm off` had the same
    headline as a default run: renames kept with no drift check looked like guarded ones."""
    run_dir = make_run(tmp_path)  # search template (make_run's), confirm val, guard own+judge
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text())
    first = invoke("show", run_dir).output.splitlines()[0]
    assert first.endswith("ranked by accuracy on train, search template; done"), first
    config["search"].update(search="both", guard="off", confirm="off")
    config_path.write_text(json.dumps(config))
    first = invoke("show", run_dir).output.splitlines()[0]
    assert first.endswith("ranked by accuracy on train, guard off, confirm off; done"), first
