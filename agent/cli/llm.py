"""`promptclimb llm`: the embedded local LLM on its own (serve it, or locate its model file)."""

from __future__ import annotations

import threading

import click

from promptclimb.agent.cli.errors import user_errors
from promptclimb.agent.cli.params import TableText
from promptclimb.agent.llm.local import CONTEXT_TOKENS
from promptclimb.agent.options import BY_KEYWORD


@click.group("llm")
def llm_group():
    """The embedded local LLM (llama.cpp serving Qwen2.5-Coder-1.5B-Instruct, offline)."""


@llm_group.command("serve")
@click.option("--llm-model", "model_path", type=TableText(BY_KEYWORD["llm_model"]), default=None,
              help="A GGUF file to serve instead of the embedded model.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port on 127.0.0.1 (default: a free one).")
@click.option("--n-ctx", type=click.IntRange(min=512), default=CONTEXT_TOKENS, show_default=True,
              help="Context length in tokens (a search assumes the default until the server refuses a longer request).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all cores).")
@user_errors
def serve_cmd(model_path, port, n_ctx, threads):
    """Start the local LLM server and keep it running until Ctrl-C (exit status 130; SIGTERM: 143).

    It prints its base URL; pass it to several runs so they share one server. It answers
    one request at a time, so runs are fastest one after another (searches and sweeps run
    their restarts and cells that way against it):

    \b
      promptclimb llm serve
      promptclimb search --dataset fashion-mnist --base-url http://127.0.0.1:PORT/v1
    """
    from promptclimb.agent.llm.local import local_server

    with local_server(model_path, port=port, n_ctx=n_ctx, n_threads=threads,
                      echo=lambda m: click.echo(m, err=True)) as base_url:
        try:
            click.echo(base_url)
            click.echo("serving; press Ctrl-C to stop", err=True)
            threading.Event().wait()  # until Ctrl-C or SIGTERM; local_server stops the child on the way out
        except (KeyboardInterrupt, SystemExit):
            # then the exit status every command has (README, Exit codes): 130 for Ctrl-C
            # (user_errors), 143 for SIGTERM (local_server makes it SystemExit(143))
            click.echo("stopping the local LLM server", err=True)
            raise


@llm_group.command("path")
@user_errors
def path_cmd():
    """Assemble and verify the embedded model file if needed, and print where it is."""
    from promptclimb.agent.llm.local import ensure_model

    click.echo(str(ensure_model()))
