"""`promptclimb report` as a person sees it: report.html loaded in a real browser (headless
Chromium, Debian's package), and the rendered page read back through the DevTools protocol
(over a pipe: no port, no extra package). The run is a real tiny search (fake LLM server,
in-memory evaluator) whose LLM proposed templates that are HTML: they must be shown as
text, never run.

Skipped where Chromium is not installed; `.ci/run` installs it and sets
PROMPTCLIMB_REQUIRE_BROWSER=1, so in CI a missing browser is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from promptclimb.agent.cli import cli
from promptclimb.agent.llm.client import LLMClient
from promptclimb.agent.runs.run import load_run
from promptclimb.agent.core.pools import PoolTemplate
from promptclimb.agent.runs.store import RunStore
from promptclimb.agent.search import HillClimber, SearchConfig
from fake_llm import FakeLLM, WordEvaluator

SCRIPT = "<script>window.pwned = 1; document.title = 'pwned'</script> grayscale clothing photo {}"
IMG = '<img src="x" onerror="window.pwned = 2"> a {}.'
POOL = [PoolTemplate(t, "general") for t in ["a {}.", "a photo of a {}.", "a sketch of the {}.", "the {}."]]
# The flags this machine's browser tests use: no sandbox as root, no network chatter, a fresh profile.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("PROMPTCLIMB_REQUIRE_BROWSER"):
        pytest.fail("PROMPTCLIMB_REQUIRE_BROWSER is set but Chromium is not installed")
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")


class DevTools:
    """Chromium driven over --remote-debugging-pipe: JSON messages ending in NUL, the
    browser reading fd 3 and writing fd 4."""

    def __init__(self, executable: str, profile: Path, timeout: float = 60.0):
        self.timeout = timeout
        to_browser, self._ours_out = os.pipe()
        self._ours_in, from_browser = os.pipe()

        def wire_fds():  # in the child, before exec: the pipe ends become fds 3 and 4
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=wire_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._id = 0
        self.session = None

    def close(self) -> None:
        try:
            self._send("Browser.close")
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            os.close(self._ours_out)
            os.close(self._ours_in)

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._ours_out, json.dumps(message).encode() + b"\0")
        return self._id

    def _next(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._ours_in], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._ours_in, 1 << 16)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def wait_for(self, match) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._next(deadline)
            if match(message):
                if "error" in message:
                    raise RuntimeError(f"DevTools: {message['error']}")
                return message

    def call(self, method: str, params: dict | None = None, page: bool = True) -> dict:
        sent = self._send(method, params, self.session if page else None)
        return self.wait_for(lambda m: m.get("id") == sent)["result"]

    def open(self, url: str) -> None:
        """A new tab at `url`, returned once its load event fired (images decoded)."""
        target = self.call("Target.createTarget", {"url": "about:blank"}, page=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, page=False)["sessionId"]
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})
        self.wait_for(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == self.session)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"in the page: {result['exceptionDetails']}")
        return result["result"]["value"]


# What the test reads off the rendered page.
READ_PAGE = """(async () => {
  const plot = document.querySelector("img.plot");
  if (plot) await plot.decode();
  const h2 = [...document.querySelectorAll("h2")];
  const tableAfter = (title) => h2.find(h => h.textContent === title).nextElementSibling;
  const rows = (table) => [...table.querySelectorAll("tr")].slice(1)
      .map(tr => [...tr.querySelectorAll("td")].map(td => td.textContent.trim()));
  const facts = {};
  for (const dt of document.querySelectorAll("dl.facts dt")) facts[dt.textContent] = dt.nextElementSibling.textContent;
  return {
    title: document.title,
    best: document.querySelector(".best code").textContent,
    facts: facts,
    winners: rows(tableAfter("Winning templates")),
    iterations: rows(tableAfter("Iteration by iteration")),
    plot: plot && {width: plot.naturalWidth, height: plot.naturalHeight, complete: plot.complete},
    images: document.images.length,
    scripts: document.scripts.length,
    pwned: window.pwned === undefined ? null : window.pwned,
    codeTexts: [...document.querySelectorAll("code")].map(c => c.textContent),
  };
})()"""


def make_run(root: Path) -> Path:
    """A finished tiny search whose LLM answered with HTML templates (the script one wins)."""
    config = {"run_id": "html", "created": "2025-01-01T12:00:00+0000",
              "evaluator_args": {"dataset": "toy", "shots": 1, "seed": 0, "backbone": "word"}, "llm": {"model": "fake"}}
    settings = SearchConfig(restarts=1, resets=1, iterations=2, proposals=3, pool_sample=0, search="template")
    with FakeLLM(script=[f"1. {SCRIPT}\n2. {IMG}", "a dark {}."]) as fake:
        llm = LLMClient("fake", base_url=fake.base_url, api_key="sk-test", cache_dir=root / "llm-cache")
        with RunStore.create(root / "runs" / "html", config) as store:
            HillClimber(WordEvaluator(), llm, store, settings, pool=POOL, echo=lambda m: None).run()
    return root / "runs" / "html"


def test_the_report_renders_in_a_real_browser(tmp_path):
    executable = browser()
    run_dir = make_run(tmp_path)
    result = CliRunner().invoke(cli, ["report", "html", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best"]["template"] == SCRIPT

    devtools = DevTools(executable, tmp_path / "profile")
    try:
        devtools.open((run_dir / "report.html").as_uri())
        page = devtools.evaluate(READ_PAGE)
    finally:
        devtools.close()

    # the summary block
    assert page["title"] == "promptclimb run html"
    assert page["facts"]["run"] == "html" and page["facts"]["dataset"] == "toy" and page["facts"]["LLM"] == "fake"
    assert page["facts"]["status"] == "done" and page["facts"]["LLM answers"].startswith("2 ")
    assert page["facts"]["templates scored"] == str(summary["counts"]["scored"])
    # the tables: the winners, best first, with their accuracies as percentages; one row per LLM answer
    best = page["winners"][0]
    assert best[:3] == ["1", SCRIPT, "llm"]
    assert best[3:] == [f"{100 * summary['best']['accuracy'][s]:.1f}%" for s in ("train", "val", "test")]
    # the best 5 templates the run scored (summary.json's top keeps fewer), then the ensemble
    assert [row[1] for row in page["winners"][:-1]] == list(load_run(run_dir).ranked()["template"][:5])
    assert page["winners"][-1][1].startswith("ensemble of") and len(summary["top"]) < 5
    assert [row[0] for row in page["iterations"]] == ["1", "2"]
    # the plot: decoded by the browser, the size matplotlib wrote
    with Image.open(run_dir / "curve.png") as png:
        assert page["plot"] == {"width": png.width, "height": png.height, "complete": True}
    # the LLM's HTML is text on the page: shown as written, never run, never an element
    assert page["best"] == SCRIPT and IMG in page["codeTexts"]
    assert page["pwned"] is None and page["scripts"] == 0 and page["images"] == 1
