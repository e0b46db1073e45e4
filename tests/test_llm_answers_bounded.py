"""What a search keeps of an LLM answer, and what it says about answers it cannot use
(issue 12, item 7): a runaway answer is cut before it reaches the history, the cache, the
report or the next turn of the conversation, and the cut is recorded; an empty or prose-only
answer is named as such on the console. The real loop, the fake server, the word evaluator."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from promptclimb.agent.cli import cli
from promptclimb.agent.llm.client import LLMClient
from promptclimb.agent.core.pools import PoolTemplate
from promptclimb.agent.runs.store import RunStore
from promptclimb.agent.search import HillClimber, SearchConfig
from fake_llm import FakeLLM, WordEvaluator

POOL = [PoolTemplate(t, "general") for t in ["a {}.", "a photo of a {}.", "the {}."]]


def search(tmp_path: Path, fake: FakeLLM, **config):
    lines: list[str] = []
    llm = LLMClient("fake", base_url=fake.base_url, api_key="sk-test", cache_dir=tmp_path / "cache",
                    echo=lines.append)
    settings = {**dict(restarts=1, resets=1, iterations=2, proposals=3, pool_sample=0, search="template"), **config}
    with RunStore.create(tmp_path / "runs" / "run", {"t": 1}) as store:
        HillClimber(WordEvaluator(), llm, store, SearchConfig(**settings), pool=POOL, echo=lines.append).run()
    return tmp_path / "runs" / "run", lines


def test_a_runaway_answer_is_cut_everywhere_it_would_be_kept(tmp_path):
    lines = "\n".join(f"a studio photo number {i} of a {{}}." for i in range(40_000))  # about 1.5 MB
    with FakeLLM(script=[lines, "a grayscale photo of a {}."]) as fake:
        run_dir, console = search(tmp_path, fake, max_answer_tokens=50)  # kept: 400 characters
    events = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    first = [e for e in events if e["event"] == "llm_exchange"][0]
    assert len(first["answer"]) <= 400
    assert first["answer_truncated"] == {"kept_chars": len(first["answer"]), "received_chars": len(lines)}
    # what is sent back to the LLM in the next turn is the cut answer too
    sent_back = [m for m in fake.requests[1]["messages"] if m["role"] == "assistant"]
    assert [m["content"] for m in sent_back] == [first["answer"]]
    assert (run_dir / "history.jsonl").stat().st_size < 50_000
    assert sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*.json")) < 20_000
    assert any("cut to its first" in line for line in console)

    from promptclimb.agent.runs.run import load_run
    from promptclimb.agent.runs.report import write_report

    assert write_report(load_run(run_dir)).stat().st_size < 500_000


def test_the_console_says_why_nothing_was_scored(tmp_path):
    prose = "Sure! Here are some better templates for your task.\nI hope they help."
    with FakeLLM(script=["", prose]) as fake:
        _, console = search(tmp_path, fake)
    turns = [line for line in console if line.startswith("[restart")]
    assert len(turns) == 2
    assert "0 new, 0 rejected (the answer was empty)" in turns[0]
    assert "0 new, 0 rejected (no line had a {} placeholder)" in turns[1]


def test_a_usable_answer_gets_no_excuse(tmp_path):
    with FakeLLM(script=["a grayscale photo of a {}.\na {name}"]) as fake:
        _, console = search(tmp_path, fake, iterations=1)
    turn = [line for line in console if line.startswith("[restart")][0]
    assert "1 new, 1 rejected |" in turn


def test_a_line_cut_in_half_at_the_cap_is_never_scored(tmp_path):
    """An answer stopped at --max-answer-tokens (by the endpoint: finish_reason "length"; or
    cut here) had its half-written last line scored as a template (`a photo of a {} num`) or
    a name (`Dress: su`), and it could win."""
    cut = "a grayscale photo of a {}.\na dark photo of a {} num"
    with FakeLLM(script=[cut, "a clean photo of a {}."]) as fake:
        fake.faults.append("cut")
        run_dir, console = search(tmp_path, fake)
    events = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    first = [e for e in events if e["event"] == "llm_exchange"][0]
    assert first["answer"] == "a grayscale photo of a {}." and first["answer_truncated"]["received_chars"] == len(cut)
    scored = {e["template"] for e in events if e["event"] == "score"}
    assert "a grayscale photo of a {}." in scored and not any("num" in t for t in scored)
    assert any("its last line, cut in half, left out" in line for line in console)
    # promptclimb's own cap on an answer of one line: none of it is a whole template
    from promptclimb.agent.llm.answers import cap_answer

    assert cap_answer("a photo of a {} with a very long tail", 20, whole_lines=True) == ("", 37)
    assert cap_answer("Trouser", 4) == ("Trou", 7)  # a judge's word: read from its start


def test_a_template_answer_cut_to_nothing_is_handed_to_the_first_turn_of_the_next_conversation(tmp_path):
    """Nothing of an answer whose one line the cap cut is kept, so the next template turn opens
    a new conversation (`starts_over`): its first turn tells the LLM to write shorter lines, no
    other turn does, the console says the answer was cut, not empty, and a resume makes the
    same requests (the cut read back from the history)."""
    runaway = "a photo of a {} with a long tail that the cap cut in h"

    def climb(fake):
        lines: list[str] = []
        llm = LLMClient("fake", base_url=fake.base_url, api_key="sk-test", cache_dir=tmp_path / "cache",
                        echo=lines.append)
        settings = SearchConfig(restarts=1, resets=2, iterations=2, proposals=3, pool_sample=0, search="template",
                                max_answer_tokens=64)
        run_dir = tmp_path / "runs" / "run"
        store = RunStore.resume(run_dir) if run_dir.exists() else RunStore.create(run_dir, {"t": 1})
        with store:
            HillClimber(WordEvaluator(), llm, store, settings, pool=POOL, echo=lines.append).run()
        return run_dir, lines

    with FakeLLM(script=[runaway, "a grayscale photo of a {}.", "a clean photo of a {}.", "a photo of the {}."]) \
            as fake:
        fake.faults.append("cut")
        run_dir, console = climb(fake)
        users = [[m["content"] for m in r["messages"] if m["role"] == "user"][-1] for r in fake.requests]
    told = "Your last answer was cut off at 64 tokens before its first line ended: keep each line short."
    assert len(users) == 4 and [(told in u) for u in users] == [False, True, False, False]
    turns = [line for line in console if line.startswith("[restart")]
    assert f"0 new, 0 rejected (the answer was cut at the answer cap inside its first line: none of its " \
           f"{len(runaway)} characters kept)" in turns[0], turns
    shown = CliRunner().invoke(cli, ["show", str(run_dir)])  # afterwards, as the turn line said it
    assert shown.exit_code == 0 and f"proposed: 0 scored, 0 rejected (the answer was cut at the answer cap inside its " \
        f"first line: none of its {len(runaway)} characters kept)" in shown.output, shown.output
    events = (run_dir / "history.jsonl").read_text().splitlines()
    with FakeLLM(script=["a photo of a {} again."]) as fake:  # resumed: every request replayed, none sent
        climb(fake)
        assert fake.count == 0
    assert (run_dir / "history.jsonl").read_text().splitlines()[:len(events)] == events
