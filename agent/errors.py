"""Problems the user can fix, and the one path by which every command shows them.

Library code raises `PromptclimbError` with a message that names what is wrong and what to
do; every `promptclimb` command is wrapped in `user_errors`, which prints that message (or
an OSError's, naming its file) as one line, without a traceback.
"""

from __future__ import annotations

import functools
import signal
import threading

import click


class PromptclimbError(Exception):
    """A problem the user can fix; the CLI prints it without a traceback."""


def os_error_message(exc: OSError) -> str:
    """'<file>: <reason>' (e.g. 'runs/x/summary.json: Permission denied')."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename else reason


def user_errors(fn):
    """A command's PromptclimbError, and an OSError on a file (permission denied, disk full,
    read-only folder), as one line on stderr and exit status 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PromptclimbError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(os_error_message(exc)) from None

    return wrapper


def sigterm_raises_systemexit():
    """Make SIGTERM (e.g. `kill`, a CI timeout) unwind like Ctrl-C, so `finally` blocks run
    (the local LLM server is stopped, a search prints how to resume); returns a callable
    restoring the previous handler. Only the main thread can set a handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        return lambda: None  # somebody else handles it already; leave theirs in place

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)
