"""The lower bounds in pyproject.toml are true (issue 12, item 2): .ci/min-versions installs the
lowest allowed openai, tenacity, jinja2, pandas, click and numpy into a throwaway venv and runs
the LLM-client and search tests there. Slow (a venv and a pip install, 1-3 minutes the first
time; the venv is kept in the temp folder and updated when the bounds change); skipped,
saying why, when pip cannot reach a package index, before or during the install."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NO_INDEX = 75  # .ci/min-versions: nothing was checked, pip reached no index
# pip's words (pip 23's and 26's) for an index or file host it could not reach
UNREACHABLE = re.compile(r"Could not fetch URL|ConnectionError|Max retries exceeded|Temporary failure in name "
                         r"resolution|Name or service not known|Network is unreachable|Connection refused|Connection "
                         r"reset|Connection aborted|Read timed out|ReadTimeoutError|IncompleteRead|RemoteDisconnected|"
                         r"HTTP error 5\d\d|error: connection-|Failed to connect|Unable to fetch|didn't respond within")
# pip's words for declared versions that cannot be installed together: a finding, whatever else it said
CONFLICT = re.compile(r"ResolutionImpossible|conflicting dependencies")


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
    skip_if_pip_lost_the_index(done)
    assert done.returncode == 0, output[-5000:]
    assert "passed with openai" in done.stdout


def skip_if_pip_lost_the_index(done: subprocess.CompletedProcess) -> None:
    lost = index_lost(done)
    if lost:
        pytest.skip(f"pip lost the package index during the install, so the lowest versions were not checked: "
                    f"{lost[:500]}")


def index_lost(done: subprocess.CompletedProcess) -> str | None:
    """pip's lines that say .ci/min-versions' install failed because an index or a file host
    stopped answering (the probe before it had reached one): nothing was checked, as with
    NO_INDEX. None for every other outcome, each a failure when it is not a pass: the tests
    ran (whatever they printed), or pip failed for a reason of its own (a conflict among the
    declared versions, a pinned version the index does not have)."""
    if done.returncode == 0 or "lowest versions:" in done.stdout:
        return None
    return unreachable_in(done.stderr)


def unreachable_in(pip_output: str) -> str | None:
    """The lines of a failed pip install's output that blame the network: its error itself
    (a download that failed, mid-install), or "No matching distribution" for a package whose
    index page pip could not fetch (its warnings name that page). pip's warnings alone do
    not count: a retry may have succeeded before pip failed for another reason."""
    lines = [line.strip() for line in pip_output.splitlines() if line.strip()]
    first_error = next((i for i, line in enumerate(lines) if line.startswith(("ERROR:", "error:"))), len(lines))
    warnings, errors = lines[:first_error], lines[first_error:]
    if any(CONFLICT.search(line) for line in errors):
        return None
    said = [line for line in errors if UNREACHABLE.search(line)]
    if said:
        return " | ".join(said)
    for line in errors:
        missing = re.match(r"ERROR: No matching distribution found for ([A-Za-z0-9_.\-]+)", line)
        page = missing and "/simple/" + re.sub(r"[-_.]+", "-", missing.group(1).lower()) + "/"
        unfetched = [warning for warning in warnings if page and page in warning and UNREACHABLE.search(warning)]
        if unfetched:
            return f"{line}, after {unfetched[-1]}"
    return None


# Failed installs as pip 23.2 and 26.3 print them with --quiet (as .ci/min-versions runs it),
# captured against a port that refuses or never answers, or a host with no name.
DOWNLOAD_REFUSED = (
    "  WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7fbaca493a10>: "
    "Failed to establish a new connection: [Errno 111] Connection refused')': /packages/pandas-2.0.0.whl\n"
    "ERROR: Could not install packages due to an OSError: HTTPSConnectionPool(host='files.pythonhosted.org', "
    "port=443): Max retries exceeded with url: /packages/pandas-2.0.0.whl (Caused by NewConnectionError("
    "'<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7fbaca464710>: Failed to establish a new "
    "connection: [Errno 111] Connection refused'))\n\n")
DOWNLOAD_TIMED_OUT = (
    "  WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'ReadTimeoutError(\"HTTPSConnectionPool(host='files.pythonhosted.org', port=443): Read timed out. "
    "(read timeout=15)\")': /packages/pandas-2.0.0.whl\n"
    "error: connection-timeout\n\n"
    "\u00d7 Unable to fetch https://files.pythonhosted.org/packages/pandas-2.0.0.whl\n"
    "\u2570\u2500> files.pythonhosted.org didn't respond within 15 seconds\n\n"
    "hint: This is probably a temporary issue with the remote server or the network connection.\n")
PAGE_UNREACHABLE = (
    "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7fd76f32f650>: "
    "Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')': /simple/pandas/\n"
    "ERROR: Could not find a version that satisfies the requirement pandas==2.0.0 (from versions: none)\n"
    "ERROR: No matching distribution found for pandas==2.0.0\n")
CONFLICT_FOUND = (
    "ERROR: Cannot install openai==1.40.0 and pydantic==1.10.0 because these package versions have conflicting "
    "dependencies.\n"
    "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/"
    "#dealing-with-dependency-conflicts\n")
# a pin the index does not have, after a retry on another package's page that then came through
NO_SUCH_PIN = (
    "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'ReadTimeoutError(\"HTTPSConnectionPool(host='pypi.org', port=443): Read timed out. (read "
    "timeout=15)\")': /simple/numpy/\n"
    "ERROR: Could not find a version that satisfies the requirement pandas==1.9.9 (from versions: 2.0.0, 2.0.1)\n"
    "ERROR: No matching distribution found for pandas==1.9.9\n")


@pytest.mark.parametrize("pip_output, quoted", [
    (DOWNLOAD_REFUSED, ["Max retries exceeded with url: /packages/pandas-2.0.0.whl"]),
    (DOWNLOAD_TIMED_OUT, ["error: connection-timeout", "files.pythonhosted.org didn't respond within 15 seconds"]),
    (PAGE_UNREACHABLE, ["No matching distribution found for pandas==2.0.0, after WARNING: Retrying",
                        "Temporary failure in name resolution')': /simple/pandas/"]),
], ids=["download-refused", "download-timed-out", "index-page-unreachable"])
def test_an_install_that_lost_the_index_is_a_skip_quoting_pip(pip_output, quoted):
    done = subprocess.CompletedProcess([], 1, stdout="+ venv/bin/python -m pip install --quiet ...\n",
                                       stderr=f"\n{pip_output}")
    with pytest.raises(pytest.skip.Exception, match="pip lost the package index during the install") as skipped:
        skip_if_pip_lost_the_index(done)
    assert all(line in str(skipped.value) for line in quoted), skipped.value


@pytest.mark.parametrize("stdout, stderr", [
    ("+ venv/bin/python -m pip install --quiet ...\n", CONFLICT_FOUND),
    ("+ venv/bin/python -m pip install --quiet ...\n", NO_SUCH_PIN),
    # the tests ran at the lowest versions and failed: what they printed is no install's failure
    ("lowest versions: openai 1.40.0, tenacity 8.2.0\n1 failed, 90 passed\nFAILED with openai 1.40.0\n",
     DOWNLOAD_REFUSED),
], ids=["conflict", "no-such-pin", "tests-failed"])
def test_an_install_or_a_test_that_failed_for_another_reason_is_no_skip(stdout, stderr):
    done = subprocess.CompletedProcess([], 1, stdout=stdout, stderr=stderr)
    assert index_lost(done) is None
    skip_if_pip_lost_the_index(done)  # no skip: the lowest-versions test then fails on the exit status
