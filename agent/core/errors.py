"""Problems the user can fix, and the one path by which every command shows them.

Library code raises `PromptclimbError` with a message that names what is wrong and what to
do; every `promptclimb` command is wrapped in `agent.cli.errors.user_errors`, which prints
that message (or an OSError's, naming its file) as one line, without a traceback.
"""

from __future__ import annotations

import signal
import threading

# The exit status of every `promptclimb` command (README, Exit codes).
EXIT_DONE = 0
EXIT_ERROR = 1  # a PromptclimbError or a file error: one line on stderr
EXIT_USAGE = 2  # click's usage errors: an unknown option, a value of the wrong type
EXIT_CELLS_FAILED = 3  # `promptclimb sweep`: it ran to its end, but some cells failed (see sweep-report)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_BROKEN_PIPE = 141  # the reader of the output went away (128 + SIGPIPE): `| head`
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)


class PromptclimbError(Exception):
    """A problem the user can fix; the CLI prints it without a traceback."""


class DataError(PromptclimbError):
    """The data failed where a run was under way (its images no longer decode): once the
    files are fixed, a resume continues the run (agent/pipeline.py `run_is_saved`)."""


def os_error_message(exc: OSError) -> str:
    """'<file>: <reason>' (e.g. 'runs/x/summary.json: Permission denied')."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename else reason


_SIGTERM = threading.Event()


def sigterm_received() -> bool:
    """Whether SIGTERM arrived while the handler of `sigterm_raises_systemexit` was in place:
    Ray turns the SystemExit raised inside its C++ calls (ray.wait) into SystemExit(1), so a
    sweep asks this to end with EXIT_TERMINATED all the same."""
    return _SIGTERM.is_set()


def sigterm_raises_systemexit(replace: bool = False):
    """Make SIGTERM (e.g. `kill`, a CI timeout) unwind like Ctrl-C, so `finally` blocks run
    (the local LLM server is stopped, a search prints how to resume) and the process ends
    with EXIT_TERMINATED; returns a callable restoring the previous handler. Only the main
    thread can set a handler. A handler somebody else installed is left in place, unless
    `replace` (a sweep replaces Ray's, which exits with status 15)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None) and not replace:
        return lambda: None  # somebody else handles it already; leave theirs in place

    def handler(signum, frame):
        _SIGTERM.set()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)
