"""Problems the user can fix, and the one path by which every command shows them.

Library code raises `PromptclimbError` with a message that names what is wrong and what to
do; every `promptclimb` command is wrapped in `user_errors`, which prints that message (or
an OSError's, naming its file) as one line, without a traceback.
"""

from __future__ import annotations

import functools

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
