"""End to end, offline: the README's main command, shortened, with the embedded local LLM.

Slow (about a minute on 2 cores: the llama.cpp server starts and answers twice), so it is
marked `slow`; it runs whenever the `local` extra is installed and is skipped otherwise.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("llama_cpp", reason='the local LLM extra is not installed (pip install "promptclimb[local]")')

@pytest.mark.slow
@pytest.mark.timeout(900)
def test_search_runs_offline_with_the_local_llm(tmp_path, isolated_home, model_file):
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update(PROMPTCLIMB_HOME=str(isolated_home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "promptclimb.agent.cli", "search", "--dataset", "fashion-mnist", "--shots", "1",
        "--restarts", "1", "--resets", "1", "--iterations", "2", "--pool-sample", "10",
        "--runs-dir", str(runs), "--name", "e2e", "--llm-model", str(model_file),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=850)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "using the embedded local LLM" in output  # the default, said plainly

    run = runs / "e2e"
    config = json.loads((run / "config.json").read_text())
    assert config["llm"]["local"] is True
    assert "api_key" not in json.dumps(config).lower()

    events = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    # the default climb: a names turn, then a template turn (then the guard's questions, if a name was kept)
    exchanges = [e for e in events if e["event"] in ("names_exchange", "llm_exchange")]
    assert [e["event"] for e in exchanges] == ["names_exchange", "llm_exchange"]
    assert all(e["answer"].strip() and e["usage"]["completion_tokens"] > 0 for e in exchanges)
    assert all(not e["cached"] for e in exchanges)  # a fresh cache: real answers from the server

    summary = json.loads((run / "summary.json").read_text())
    best = summary["best"]
    assert "{}" in best["template"]
    assert 0.0 <= best["accuracy"]["test"] <= 1.0
    names = summary["names"]  # from Fashion-MNIST's published labels
    assert names["start"][:2] == ["T-shirt/top", "Trouser"] and len(best["names"]) == 10
    assert "What changed" in output and "'a photo of a {}.' with the start names" in output

    with open(run / "prompts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert best["template"] in {row["template"] for row in rows}
    assert len(rows) >= 10  # the pool sample, plus whatever the LLM added
    assert (run / "curve.png").stat().st_size > 1000  # the plot, written after the search

    # The server was stopped: its port (named in its log file) no longer answers.
    logs = list((isolated_home / "logs").glob("llama-server-*.log"))
    assert len(logs) == 1
    port = int(logs[0].stem.rsplit("-", 1)[1])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
