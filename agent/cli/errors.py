"""The one path by which every command shows a problem the user can fix: one line on
stderr and exit status 1, never a traceback; and by which Ctrl-C ends a command with 130,
and a reader that stops reading (`| head`) with 141 (the exit codes: agent/core/errors.py,
README's Exit codes)."""

from __future__ import annotations

import functools
import os
import sys
import warnings

import click

from promptclimb.agent.core.errors import (EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, PromptclimbError, forget_signals,
                                            lost_signal_status, os_error_message)


def user_errors(fn):
    """A command's PromptclimbError, and an OSError on a file (permission denied, disk full,
    read-only folder), as one line on stderr and exit status 1, instead of a traceback.
    Ctrl-C (KeyboardInterrupt) ends it with status 130, without click's "Aborted!" and its
    status 1: a search or sweep has already printed the command that continues it.
    SIGTERM (SystemExit 143, agent/core/errors.py) passes through as it is; a closed output
    pipe (BrokenPipeError) ends it quietly with 141. A signal whose exception was swallowed
    (raised inside a finalizer, "Exception ignored in ...") still sets the exit status of a
    command that went on to its end: 143 or 130 (`lost_signal_status`). A warning (images
    skipped as unreadable, random weights, a library's) is one `warning:` line on stderr when
    it happens, not Python's file and source line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        forget_signals()
        try:
            with warnings.catch_warnings():
                warnings.showwarning = lambda message, *_, **__: click.echo(f"warning: {message}", err=True)
                result = fn(*args, **kwargs)
        except PromptclimbError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:  # `promptclimb sweep-report s | head -1`: the reader has what it wanted
            try:  # the exit's flush of what is left would fail again, said as "Exception ignored"
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):  # a stdout that is no file (a test's)
                pass
            raise click.exceptions.Exit(EXIT_BROKEN_PIPE) from None
        except OSError as exc:
            raise click.ClickException(os_error_message(exc)) from None
        except KeyboardInterrupt:
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        lost = lost_signal_status()
        if lost is not None:  # the user asked it to stop: not 0, which a script's `&&` reads as done
            raise click.exceptions.Exit(lost)
        return result

    return wrapper
