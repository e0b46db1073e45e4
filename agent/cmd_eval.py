"""`promptclimb eval`: score prompt templates on a few-shot split and print the accuracies.

torch and the evaluator are imported inside the command, so `promptclimb --help` stays fast.
"""

from __future__ import annotations

import json
import warnings

import click

from agent.errors import PromptclimbError
from agent.templates import template_problem

SPLITS = ("train", "val", "test")


@click.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", default="fashion-mnist", show_default=True,
              help="eurosat, fashion-mnist, imagefolder (with --data-root), coop (with --data-root).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Folder of the data (imagefolder/coop: required; eurosat: the unpacked archive).")
@click.option("--shots", type=int, default=1, show_default=True, help="Training images per class (k).")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the few-shot draw.")
@click.option("--backbone", default="demo", show_default=True,
              help="'demo' (embedded, offline) or an open_clip architecture such as RN50 or ViT-B-32.")
@click.option("--pretrained", default=None, help="open_clip pretrained tag, e.g. openai (downloads).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Local .pt/.safetensors weights for the --backbone architecture.")
@click.option("--prompt", "prompts", multiple=True, default=("a photo of a {}.",), show_default=True,
              help="Template with one {} for the class name; repeat to score several.")
@click.option("--device", default=None, help="cuda, cpu, ... (default: cuda when available).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def eval_cmd(dataset, data_root, shots, seed, backbone, pretrained, weights, prompts, device, as_json):
    """Score prompt templates: train/val/test accuracy on a few-shot split.

    \b
    Examples:
      promptclimb eval --dataset fashion-mnist --backbone demo --prompt "a photo of a {}."
      promptclimb eval --dataset imagefolder --data-root DIR --backbone ViT-B-32 --weights W.safetensors
      promptclimb eval --dataset eurosat --shots 1 --backbone RN50 --pretrained openai \\
          --prompt "a centered satellite photo of {}."
    """
    for p in prompts:  # before any slow loading
        problem = template_problem(p)
        if problem:
            raise click.BadParameter(f"{p!r}: {problem} (use exactly one {{}} for the class name)",
                                     param_hint="--prompt")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _evaluate(dataset, data_root, shots, seed, backbone, pretrained, weights,
                               list(prompts), device)
    except PromptclimbError as exc:
        raise click.ClickException(str(exc)) from None
    for w in caught:  # counted warnings (skipped images, thin val classes) go to stderr
        click.echo(f"warning: {w.message}", err=True)
    if as_json:
        click.echo(json.dumps(result))
        return
    info = result["info"]
    click.echo(f"dataset {dataset} ({info['dataset']['classes']} classes), shots {shots}, seed {seed}, "
               f"backbone {info['backbone']['identity']} on {info['backbone']['device']}")
    sizes = info["split"]["sizes"]
    click.echo("split sizes: " + ", ".join(f"{s} {sizes[s]}" for s in SPLITS))
    header = f"{'train':>7} {'val':>7} {'test':>7}  template"
    click.echo(header)
    for row in result["results"]:
        acc = row["accuracy"]
        click.echo(" ".join(f"{100 * acc[s]:6.2f}%" for s in SPLITS) + f"  {row['template']}")


def _evaluate(dataset, data_root, shots, seed, backbone, pretrained, weights, prompts, device) -> dict:
    from evaluators import build_evaluator  # torch, open_clip: only now

    evaluator = build_evaluator(dataset, shots, seed, backbone, pretrained=pretrained, weights=weights,
                                data_root=data_root, device=device)
    scores = evaluator.score(prompts, splits=SPLITS)
    return {
        "dataset": dataset, "shots": shots, "seed": seed,
        "results": [{"template": t, "accuracy": s.accuracy, "loss": s.loss} for t, s in zip(prompts, scores)],
        "info": evaluator.info(),
    }
