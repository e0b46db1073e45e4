"""Ctrl-C pressed twice, and signals swallowed by a finalizer, on a real `promptclimb search`
process (the fake LLM of tests/fake_llm.py, the WordEvaluator): the outcome is asserted (exit
status, no traceback on stderr, the line that says how to continue), never a timing.

- A second Ctrl-C while the process exits (threading's _shutdown, an atexit callback, the
  modules' teardown) printed a traceback or killed the process (status -2): main() ignores
  Ctrl-C once the exit status is decided.
- A SIGTERM or Ctrl-C whose exception a finalizer (a __del__, a weakref callback) swallowed
  ("Exception ignored in ...") let the search run to its end and exit 0: the signal is
  delivered again (agent/core/errors.py `keep_signals_finalizers_swallow`), and SIGTERM's
  flag sets 143 where that comes too late (agent/cli/errors.py `user_errors`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from fake_llm import FakeLLM
from test_local_llm import home, serving_child, stand_in  # noqa: F401 - fixtures
from test_search import KEY, responder


TESTS = Path(__file__).resolve().parent
SMALL = ["--iterations", "2", "--resets", "1", "--pool-sample", "6"]
FAILED = ("Traceback", "Exception ignored", "Aborted")

# `promptclimb search` with the WordEvaluator, as tests/fake_cli.py, and hooks a test chooses by
# environment: PC_SECOND_CTRL_C says where the process sends itself a second Ctrl-C while it
# exits (the first comes from the test); PC_SWALLOW=SIGTERM|SIGINT makes the 3rd score call free
# an object whose __del__ receives that signal (its exception is swallowed there);
# PC_NO_REDELIVERY leaves only the exit status' last resort; PC_SCORE_S slows each score call;
# PC_SECOND_SIGTERM says where the process sends itself a second SIGTERM while it unwinds.
CHILD = textwrap.dedent(f"""
    import atexit, os, signal, sys, threading, time
    sys.path.insert(0, {str(TESTS)!r})
    from fake_llm import WordEvaluator
    from promptclimb.agent import cli

    where = os.environ.get("PC_SECOND_CTRL_C")
    swallow = os.environ.get("PC_SWALLOW")

    def ctrl_c_to_the_main_thread():
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(0.5)  # a Ctrl-C not ignored is raised by now, inside this callback or threading's join

    if where == "atexit":
        atexit.register(ctrl_c_to_the_main_thread)
    elif where == "threading-shutdown":  # threading's _shutdown joins this thread as the process exits
        def once_main_has_ended():
            while threading.main_thread().is_alive():
                time.sleep(0.01)
            ctrl_c_to_the_main_thread()
        threading.Thread(target=once_main_has_ended).start()
    elif where == "teardown":  # freed as the modules are torn down, after atexit (Python's handler is gone)
        class AtTeardown:
            def __del__(self, pthread_kill=signal.pthread_kill, ident=threading.get_ident(), sleep=time.sleep):
                pthread_kill(ident, 2)
                sleep(0.5)
        at_teardown = AtTeardown()

    def sigterm_to_the_main_thread():
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
        time.sleep(0.5)  # a SIGTERM not ignored has raised (or killed the process) by now

    second_sigterm = os.environ.get("PC_SECOND_SIGTERM")
    if second_sigterm == "atexit":  # the search's handler is gone by now
        atexit.register(sigterm_to_the_main_thread)
    elif second_sigterm == "resume-line":  # as the search says how to continue: its handler still in place
        from promptclimb.agent import pipeline

        def resume_command(*args, said=pipeline.resume_command, **kwargs):
            sigterm_to_the_main_thread()
            return said(*args, **kwargs)
        pipeline.resume_command = resume_command

    class Swallows:
        def __del__(self):
            signal.raise_signal(getattr(signal, swallow))  # the handler's exception is raised in here

    class Evaluator(WordEvaluator):
        calls = 0

        def score(self, *args, **kwargs):
            Evaluator.calls += 1
            time.sleep(float(os.environ.get("PC_SCORE_S", "0")))
            if swallow and Evaluator.calls == 3:
                Swallows()  # freed at once: its __del__ runs here, in the middle of the search
                time.sleep(0.3)  # the search is still under way when the signal comes again
            return super().score(*args, **kwargs)

    if os.environ.get("PC_NO_REDELIVERY"):
        cli.keep_signals_finalizers_swallow = lambda: (lambda: None)
    cli.main(sys.argv[1:], obj={{"evaluator_factory": lambda **kwargs: Evaluator(kwargs["dataset"])}})
""")


def search(tmp_path: Path, fake: FakeLLM, **env) -> subprocess.Popen:
    """The search in a process of its own, SIGINT at its default there (as a terminal's Ctrl-C:
    a suite run in the background inherits it ignored)."""
    env = {**os.environ, "PROMPTCLIMB_HOME": str(tmp_path / "home"), "OPENAI_API_KEY": KEY,
           "OPENAI_BASE_URL": fake.base_url, **env}
    return subprocess.Popen([sys.executable, "-c", CHILD, "search", "--dataset", "toy", *SMALL,
                             "--runs-dir", str(tmp_path / "runs"), "--name", "t"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finished(child: subprocess.Popen, said: str = "") -> tuple[str, str]:
    try:
        stdout, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    return said + stdout, stderr


def ctrl_c_twice(child: subprocess.Popen, gap_s: float) -> None:
    child.send_signal(signal.SIGINT)
    time.sleep(gap_s)
    if child.poll() is None:
        child.send_signal(signal.SIGINT)


def assert_stopped_with_the_continue_line(child, stdout, stderr, tmp_path, code=130, early=True):
    assert child.returncode == code, (child.returncode, stdout, stderr)
    assert f"interrupted; continue with: promptclimb search --resume {tmp_path / 'runs' / 't'}" in stderr, stderr
    assert not any(word in stderr for word in FAILED), stderr
    if early:
        assert "What changed" not in stdout  # stopped, not run to its end


@pytest.mark.parametrize("where", ["atexit", "threading-shutdown", "teardown"])
def test_a_second_ctrl_c_while_the_process_exits_is_ignored(where, tmp_path):
    """The first Ctrl-C while the search waits for the LLM; the second (sent by the process to
    itself, at a point of its exit) printed "Exception ignored in atexit callback" or "in
    <module 'threading'>" with a traceback, or, during the modules' teardown, killed it (-2)."""
    with FakeLLM(responder=responder, signal_at=2) as fake:
        child = search(tmp_path, fake, PC_SECOND_CTRL_C=where)
        assert fake.reached.wait(120), "the search never reached its second LLM call"
        child.send_signal(signal.SIGINT)
        stdout, stderr = finished(child)
    assert_stopped_with_the_continue_line(child, stdout, stderr, tmp_path)


def wait_for_line(child: subprocess.Popen, start: str) -> str:
    """stdout up to and with the first line that starts with `start` (click.echo flushes each)."""
    said = []
    for line in child.stdout:
        said.append(line)
        if line.startswith(start):
            return "".join(said)
    raise AssertionError(f"no line starting {start!r}: {''.join(said)}")


@pytest.mark.parametrize("gap_s", [0.002, 0.03])
@pytest.mark.parametrize("moment", ["waiting for the LLM", "scoring", "finishing"])
def test_ctrl_c_pressed_twice_ends_with_130_and_no_traceback(moment, gap_s, tmp_path):
    """Two Ctrl-C a few ms apart, as people press it, at several moments of a search: the
    outcome is the one of a single Ctrl-C, whatever part of the stop the second one lands in."""
    with FakeLLM(responder=responder, signal_at=2 if moment == "waiting for the LLM" else None) as fake:
        child = search(tmp_path, fake, PC_SCORE_S="0.05" if moment == "scoring" else "0")
        said = ""
        if moment == "waiting for the LLM":
            assert fake.reached.wait(120), "the search never reached its second LLM call"
        elif moment == "scoring":  # the pool is scored; now the climb, most of whose time is scoring
            said = wait_for_line(child, "restart 1/1:")
        else:  # the best template's test accuracy is said: the ensemble, the plot, "What changed" follow
            said = wait_for_line(child, "best:")
        ctrl_c_twice(child, gap_s)
        stdout, stderr = finished(child, said)
    assert not any(word in stderr for word in FAILED), stderr
    if moment == "finishing" and child.returncode == 0:  # the run ended first: a fast machine
        assert "What changed" in stdout
        return
    assert_stopped_with_the_continue_line(child, stdout, stderr, tmp_path, early=moment != "finishing")


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_a_finalizer_swallowed_still_stops_the_search(sig, code, tmp_path):
    """The signal's exception raised inside a __del__ is "Exception ignored in ...": the search
    went on and exited 0. It is delivered again, outside the finalizer: the search stops as
    on any SIGTERM or Ctrl-C, and says how to continue."""
    with FakeLLM(responder=responder) as fake:
        child = search(tmp_path, fake, PC_SWALLOW=sig)
        stdout, stderr = finished(child)
    assert_stopped_with_the_continue_line(child, stdout, stderr, tmp_path, code)


def test_a_sigterm_swallowed_and_never_delivered_again_still_exits_143(tmp_path):
    """Where the signal is not delivered again (too late: its handler was gone), the search
    runs to its end, and the command exits 143 all the same, not 0 (`lost_signal_status`)."""
    with FakeLLM(responder=responder) as fake:
        child = search(tmp_path, fake, PC_SWALLOW="SIGTERM", PC_NO_REDELIVERY="1")
        stdout, stderr = finished(child)
    assert child.returncode == 143, (child.returncode, stdout, stderr)
    assert "What changed" in stdout  # it ran to its end: nothing to continue


@pytest.mark.parametrize("gap_s", [0.002, 0.03])
def test_llm_serve_stopped_with_ctrl_c_twice_stops_its_server(home, stand_in, gap_s):  # noqa: F811
    """`promptclimb llm serve` (the stand-in server behind it), Ctrl-C twice: 130, no
    traceback, and the server went with it (local_llm.stop_process kills it on a second
    Ctrl-C during its grace)."""
    child, port = serving_child(home, stand_in)
    try:
        said = wait_for_line(child, "serving")
        ctrl_c_twice(child, gap_s)
        output = said + child.communicate(timeout=60)[0]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == 130, (child.returncode, output)
    assert not any(word in output for word in FAILED), output
    with pytest.raises(OSError):  # the server went with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)


def test_a_ctrl_c_delivered_again_wakes_a_wait_of_the_main_thread():
    """Delivered again as Python's pending flag only, a Ctrl-C a finalizer swallowed waited for
    the main thread's wait to end: an LLM answer's, up to --timeout (120 s)."""
    import sys
    import threading
    import time
    import types

    from promptclimb.agent.core.errors import forget_signals, keep_signals_finalizers_swallow

    restore = keep_signals_finalizers_swallow()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            exc = KeyboardInterrupt()
            sys.unraisablehook(types.SimpleNamespace(exc_type=KeyboardInterrupt, exc_value=exc, exc_traceback=None,
                                                     err_msg="in a finalizer", object=None))
            threading.Event().wait(10)
    finally:
        restore()
        forget_signals()
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("where", ["resume-line", "atexit"])
def test_a_second_sigterm_while_the_search_unwinds_is_ignored(where, tmp_path):
    """The first SIGTERM while the search waits for the LLM; the second (sent by the process to
    itself as it unwinds) raised SystemExit again inside the unwinding (the line that says how to
    continue was lost), or, once the handler had been put back (SIG_DFL), killed it (-15, not 143)."""
    with FakeLLM(responder=responder, signal_at=2) as fake:
        child = search(tmp_path, fake, PC_SECOND_SIGTERM=where)
        assert fake.reached.wait(120), "the search never reached its second LLM call"
        child.send_signal(signal.SIGTERM)
        stdout, stderr = finished(child)
    assert_stopped_with_the_continue_line(child, stdout, stderr, tmp_path, code=143)


def test_the_previous_sigterm_handler_is_given_back_unless_a_sigterm_came():
    """In-process (the API): a caller's handler is back once the search ends without a SIGTERM;
    after one, the SIGTERMs that follow are ignored, the restore included (the process exits)."""
    from promptclimb.agent.core.errors import forget_signals, sigterm_raises_systemexit

    def theirs(signum, frame):
        raise AssertionError("the caller's handler ran")

    before = signal.signal(signal.SIGTERM, theirs)
    try:
        sigterm_raises_systemexit(replace=True)()
        assert signal.getsignal(signal.SIGTERM) is theirs
        restore = sigterm_raises_systemexit(replace=True)
        with pytest.raises(SystemExit) as stopped:
            signal.raise_signal(signal.SIGTERM)
        assert stopped.value.code == 143
        signal.raise_signal(signal.SIGTERM)  # while it unwinds: ignored
        restore()
        assert signal.getsignal(signal.SIGTERM) is not theirs
        signal.raise_signal(signal.SIGTERM)  # after the restore too
    finally:
        forget_signals()
        signal.signal(signal.SIGTERM, before)
