"""The report page shows LLM text as text, never as markup (issue 12, item 10): a search whose
LLM answers hold `<`, `>`, `&` and quotes - in templates that are scored, in lines that are
rejected, in prose - and the page written from it."""

from __future__ import annotations

import re
from dataclasses import asdict

from promptclimb.agent.llm.client import LLMClient
from promptclimb.agent.core.pools import PoolTemplate
from promptclimb.agent.runs.run import load_run
from promptclimb.agent.runs.report import write_report
from promptclimb.agent.runs.store import RunStore
from promptclimb.agent.search import HillClimber, SearchConfig
from fake_llm import FakeLLM, WordEvaluator

SCORED = "a <b>grayscale</b> photo & a {}."  # a valid template: it is scored and can win
HOSTILE = "\n".join([
    SCORED,
    "<script>alert('pwned')</script> a {name}",  # rejected (named field)
    "Tom & Jerry say <img src=x onerror=alert(1)> &amp; goodbye",  # prose
])


def test_llm_text_in_the_report_is_escaped(tmp_path):
    settings = dict(restarts=1, resets=1, iterations=1, proposals=3, pool_sample=0, search="template")
    config = {"run_id": "run", "created": "2025-01-01T12:00:00+0000", "search": asdict(SearchConfig(**settings)),
              "evaluator_args": {"dataset": "toy", "shots": 2, "seed": 0, "backbone": "word"},
              "llm": {"model": "fake"}}
    with FakeLLM(script=[HOSTILE]) as fake:
        llm = LLMClient("fake", base_url=fake.base_url, api_key="sk-test", cache_dir=tmp_path / "cache")
        with RunStore.create(tmp_path / "runs" / "run", config) as store:
            result = HillClimber(WordEvaluator(), llm, store, SearchConfig(**settings),
                                 pool=[PoolTemplate("a {}.", "general")], echo=lambda m: None).run()
    assert result.best["template"] == SCORED  # the hostile template is on the page as the winner

    html = write_report(load_run(tmp_path / "runs" / "run")).read_text()
    # nothing the LLM wrote became markup
    for raw in ("<b>grayscale", "</b> photo", "<script>alert", "<img src=x", "& Jerry", "&amp; goodbye"):
        assert raw not in html, raw
    assert "<script" not in html and not re.search(r"<img [^>]*src=\"?x", html)
    # ... and all of it is there, escaped
    assert "a &lt;b&gt;grayscale&lt;/b&gt; photo &amp; a {}." in html
    assert re.search(r"&lt;script&gt;alert\((&#39;|&#x27;)pwned(&#39;|&#x27;)\)&lt;/script&gt;", html)
    assert "Tom &amp; Jerry say &lt;img src=x onerror=alert(1)&gt; &amp;amp; goodbye" in html


def test_names_an_llm_proposed_are_escaped_in_the_reports_names_turns(tmp_path, monkeypatch):
    """The page's "Names turns" lists the names the LLM proposed: text, never markup."""
    from test_names import climb, scripted

    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    with FakeLLM(responder=scripted(["Dress: <img src=x onerror=alert(1)> & gown\nTrouser: jeans"])) as fake:
        _, _, run_dir = climb(tmp_path, fake.base_url, search="both")
    html = write_report(load_run(run_dir)).read_text()
    turns = html.split("<h2>Names turns</h2>")[1].split("<h2>")[0]
    assert "Dress → &lt;img src=x onerror=alert(1)&gt; &amp; gown</td>" in turns
    assert "<img src=x" not in html and not re.search(r"<img [^>]*src=\"?x", html)
