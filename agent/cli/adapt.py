"""`promptclimb adapt RUN --kind K`: fit an output-side adapter on top of a run's winning
prompt (the work is in agent/adapt.py)."""

from __future__ import annotations

import json

import click

from promptclimb.agent.adapt import ADAPTER_KINDS, check_kinds, check_run_data, fit_run_adapter, read_run
from promptclimb.agent.cli.errors import user_errors
from promptclimb.agent.cli.params import TableText, table_int
from promptclimb.agent.core.devices import check_device_name
from promptclimb.agent.core.paths import cache_home, check_writable
from promptclimb.agent.options import BY_KEYWORD
from promptclimb.agent.runs.reading import find_run
from promptclimb.agent.runs.store import run_argument, run_lock


@click.command("adapt", context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("run")
@click.option("--kind", "kinds", multiple=True, required=True, metavar="KIND",
              help=f"Adapter kind: {', '.join(ADAPTER_KINDS)}, or all. Repeat to fit several; the best on val is kept.")
@click.option("--on", type=click.Choice(["best", "ensemble"]), default="best",
              help="Which prompt the adapter sits on: the best template or the run's top-k ensemble.")
@click.option("--seed", type=table_int(BY_KEYWORD["seed"]), default=None, help="Seed of the adapter's initialisation [default: the run's seed].")
@click.option("--runs-dir", type=TableText(BY_KEYWORD["runs_dir"]), default="runs", help="Where run folders are.")
@click.option("--device", type=TableText(BY_KEYWORD["device"]), default=None,
              help="torch device for (re)computing features [default: cuda when available].")
@click.option("--data-root", type=TableText(BY_KEYWORD["data_root"]), default=None,
              help="Where the run's data folder is now, when it has moved [default: where the run read it].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary's adapter section as JSON at the end.")
@user_errors
def adapt_cmd(run, kinds, on, seed, runs_dir, device, data_root, as_json):
    """Fit an output-side adapter on top of a run's winning prompt.

    Works on the run's cached image features and the prompt's class embeddings (fits in
    seconds on CPU). Hyper-parameters are chosen on val, never on test. Writes RUN/adapter.pt
    and an "adapter" section in RUN/summary.json; if the adapter does not beat the prompt
    alone on val, the run's result stays the prompt-only one. An adapter the run keeps is
    replaced only by one better on val (ties keep it): remove RUN/adapter.pt to fit another.

    \b
    Kinds:
      residual-logits   logits + MLP(logits), cross-entropy + KL to the prompt-only prediction (CraFT)
      feature-residual  f' = a*MLP(f) + (1-a)*f on image features (CLIP-Adapter / CBBT)
      cache             training-free key-value cache of the train features (Tip-Adapter)
    \b
    Examples:
      promptclimb adapt 20250101-120000-fashion-mnist-4shot --kind cache
      promptclimb adapt runs/my-run --kind all --json
      promptclimb eval --run runs/my-run --with-adapter
    """
    echo = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo
    kinds = check_kinds(kinds)  # before any slow loading
    check_device_name(device)
    run_dir = find_run(run, runs_dir)
    config, _ = read_run(run_dir, "adapt")  # finished, readable and a template run, before any slow loading
    kind_args = [word for kind in kinds for word in ("--kind", kind)]
    check_run_data(run_dir, config, data_root, "adapt", run_argument(run_dir), *kind_args)
    check_writable(run_dir, "the run folder")
    check_writable(cache_home(), "the cache folder, PROMPTCLIMB_HOME")
    with run_lock(run_dir):  # a search resuming this run would rewrite summary.json too
        section = fit_run_adapter(run_dir, kinds, on=on, seed=seed, device=device, echo=echo, data_root=data_root)
    if as_json:
        click.echo(json.dumps(section, indent=2))
