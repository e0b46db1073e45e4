"""The `promptclimb` command line. Each sub-command lives in its own `agent/cli/*.py`
module and is imported only when used, so `promptclimb --help` stays instant and the
agent side never pays for torch unless a command needs the evaluator."""

from __future__ import annotations

import importlib
import signal
import sys

import click

from promptclimb import __version__
from promptclimb.agent.core.errors import EXIT_INTERRUPTED, keep_signals_finalizers_swallow

# name -> "module:attribute"
COMMANDS = {
    "eval": "promptclimb.agent.cli.eval:eval_cmd",
    "search": "promptclimb.agent.cli.search:search_cmd",
    "llm": "promptclimb.agent.cli.llm:llm_group",
    "runs": "promptclimb.agent.cli.runs:runs_cmd",
    "show": "promptclimb.agent.cli.runs:show_cmd",
    "report": "promptclimb.agent.cli.runs:report_cmd",
    "transfer": "promptclimb.agent.cli.runs:transfer_cmd",
    "compare": "promptclimb.agent.cli.runs:compare_cmd",
    "adapt": "promptclimb.agent.cli.adapt:adapt_cmd",
    "sweep": "promptclimb.agent.cli.sweep:sweep_cmd",
    "sweep-report": "promptclimb.agent.cli.sweep:sweep_report_cmd",
    "mlflow-sync": "promptclimb.agent.cli.mlflow:mlflow_sync_cmd",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except KeyboardInterrupt:  # Ctrl-C while the command loads: 130, as inside it (click says "Aborted!", 1)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="promptclimb")
def cli():
    """Find strong prompt templates for a CLIP-like model, with a chat LLM as the optimizer.

    \b
    Try it (offline, embedded model and LLM):
      promptclimb search --dataset fashion-mnist --shots 1
    Score one template:
      promptclimb eval --dataset fashion-mnist --backbone demo --prompt "a photo of a {}."
    """


def main(argv=None, obj=None):
    """The `promptclimb` console script. `obj` reaches every command's context (a test or
    an embedding program passes {"evaluator_factory": ...} to put its own evaluator behind
    `search`). It ends the program (SystemExit), with Ctrl-C ignored from then on: a program
    that catches that SystemExit to go on sets its own SIGINT handler again."""
    keep_signals_finalizers_swallow()
    try:
        cli.main(args=argv, prog_name="promptclimb", standalone_mode=True, obj=obj)  # always ends in SystemExit
    except KeyboardInterrupt:  # in click's own code, outside the command (there: user_errors, quietly)
        pass  # said below, once Ctrl-C is ignored
    finally:
        # The exit status is decided. People press Ctrl-C twice: the second one, raised inside the
        # exit's cleanup (threading's _shutdown, an atexit callback), was printed as a traceback,
        # and during the modules' teardown it killed the process (status -2, not 130). Inline, in
        # a loop: one pending as we get here is raised on the way into signal.signal (Python code).
        while True:
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                break
            except KeyboardInterrupt:  # that pending one: ignored, as those after it
                continue
            except ValueError:  # not the main thread (an embedding program's): its Ctrl-C stays its own
                break
    click.echo("interrupted", err=True)
    sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
