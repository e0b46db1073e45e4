"""Problems the user can fix, and the one path by which every command shows them.

Library code raises `PromptclimbError` with a message that names what is wrong and what to
do; every `promptclimb` command is wrapped in `agent.cli.errors.user_errors`, which prints
that message (or an OSError's, naming its file) as one line, without a traceback.
"""

from __future__ import annotations

import _thread
import signal
import sys
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
# A SIGTERM's SystemExit is unwinding the command: the SIGTERMs after it are ignored until the process
# exits (`sigterm_raises_systemexit`), as Ctrl-C is once the exit is decided (agent/cli `main`)
_SIGTERM_UNWINDING = threading.Event()
# Ctrl-C's whose KeyboardInterrupt a finalizer swallowed since the command began (`keep_signals_finalizers_swallow`)
_SWALLOWED_CTRL_C = threading.Event()
# How long after a swallowed signal it is delivered again: time for the finalizer that swallowed it to end.
REDELIVER_AFTER_S = 0.05


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
    `replace` (a sweep replaces Ray's, which exits with status 15). Once a SIGTERM has raised,
    the next ones are ignored until the process exits, and the restore leaves them ignored: a
    second `kill` had raised SystemExit again inside the `finally` blocks (the resume line lost,
    the local LLM server's stop cut short), or, once the previous handler (SIG_DFL) was back,
    killed the process (status -15, not 143)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None) and not replace:
        return lambda: None  # somebody else handles it already; leave theirs in place

    def handler(signum, frame):
        if _SIGTERM_UNWINDING.is_set():
            return  # the first one's unwinding runs to its end
        _SIGTERM.set()
        _SIGTERM_UNWINDING.set()
        raise SystemExit(128 + signum)

    def restore():
        # after a SIGTERM, this handler stays (it ignores them): not SIG_IGN, which a child started now would inherit
        if not _SIGTERM_UNWINDING.is_set():
            signal.signal(signal.SIGTERM, previous)

    signal.signal(signal.SIGTERM, handler)
    return restore


def forget_signals() -> None:
    """A command begins: a SIGTERM or a swallowed Ctrl-C of an earlier command run in this
    process (a test's) is not this one's."""
    _SIGTERM.clear()
    _SIGTERM_UNWINDING.clear()
    _SWALLOWED_CTRL_C.clear()


def lost_signal_status() -> int | None:
    """The exit status a signal asked for that did not end the command (its exception was
    swallowed: `keep_signals_finalizers_swallow`, or Ray's SystemExit(1)): EXIT_TERMINATED
    after SIGTERM, EXIT_INTERRUPTED after a Ctrl-C a finalizer swallowed; None: none came."""
    if _SIGTERM.is_set():
        return EXIT_TERMINATED
    return EXIT_INTERRUPTED if _SWALLOWED_CTRL_C.is_set() else None


def _signal_behind(exc: BaseException | None) -> int | None:
    """The signal whose handler raised `exc` (Ctrl-C's KeyboardInterrupt, the SystemExit of
    `sigterm_raises_systemexit`), or None."""
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(exc, SystemExit) and exc.code == EXIT_TERMINATED and _SIGTERM.is_set():
        return signal.SIGTERM
    return None


def keep_signals_finalizers_swallow():
    """Python runs a weakref callback or a `__del__` wherever an object is freed, and the
    exception a signal's handler raises inside one (Ctrl-C, SIGTERM) goes to
    sys.unraisablehook, which prints "Exception ignored in ..." and drops it: the search went on
    to its end and exited 0. This hook says nothing and delivers the signal again a moment
    later, from a thread (`_thread.interrupt_main`), once the finalizer has ended; where that
    comes too late (the handler is gone), `lost_signal_status` is the command's exit status.
    Returns a callable restoring the previous hook."""
    previous = sys.unraisablehook

    def hook(unraisable):
        signum = _signal_behind(unraisable.exc_value)
        if signum is None or threading.current_thread() is not threading.main_thread():  # handlers run there only
            if not _ctrl_c_ignored_in_a_race(unraisable):
                previous(unraisable)
            return
        if signum == signal.SIGINT:
            _SWALLOWED_CTRL_C.set()
        else:  # its SystemExit unwinds nothing: the one delivered again must raise
            _SIGTERM_UNWINDING.clear()
        again = threading.Timer(REDELIVER_AFTER_S, _deliver_again, args=(signum,))
        again.daemon = True
        again.start()

    sys.unraisablehook = hook
    return lambda: setattr(sys, "unraisablehook", previous)


def _deliver_again(signum: int) -> None:
    """The signal once more, to the main thread: as a signal (`pthread_kill`), which also wakes
    a wait there (an LLM answer's, up to --timeout), where its handler is still Python's;
    else only as Python's pending flag (`interrupt_main`: a default SIGTERM would kill)."""
    if callable(signal.getsignal(signum)) and hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident, signum)
    else:
        _thread.interrupt_main(signum)


def _ctrl_c_ignored_in_a_race(unraisable) -> bool:
    """Python's note on a Ctrl-C that arrived as its handler became SIG_IGN ("Signal 2 ignored
    due to race condition"): a second Ctrl-C while the command exits, ignored on purpose
    (agent/cli `main`)."""
    exc = unraisable.exc_value
    return isinstance(exc, OSError) and str(exc) == f"Signal {signal.SIGINT:d} ignored due to race condition"
