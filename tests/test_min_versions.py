"""The lower bounds in pyproject.toml are true (issue 12, item 2): .ci/min-versions installs the
lowest allowed openai, tenacity, jinja2, pandas, click and numpy into a throwaway venv and runs
the LLM-client and search tests there. Slow (a venv and a pip install, 1-3 minutes the first
time; the venv is kept in the temp folder and updated when the bounds change); skipped,
saying why, when pip cannot reach a package index."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NO_INDEX = 75  # .ci/min-versions: nothing was checked, pip reached no index


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_lowest_declared_versions_pass_the_llm_and_search_tests():
    checkout = hashlib.sha256(str(REPO).encode()).hexdigest()[:12]  # one venv per checkout, kept
    venv = Path(tempfile.gettempdir()) / f"promptclimb-min-versions-venv-{checkout}"
    done = subprocess.run([sys.executable, str(REPO / ".ci" / "min-versions"), "--venv", str(venv)],
                          capture_output=True, text=True, timeout=1150)
    output = done.stdout + done.stderr
    if done.returncode == NO_INDEX:
        pytest.skip(f"pip cannot reach a package index, so the lowest versions cannot be installed: "
                    f"{done.stderr.strip()[-300:]}")
    assert done.returncode == 0, output[-5000:]
    assert "passed with openai" in done.stdout
