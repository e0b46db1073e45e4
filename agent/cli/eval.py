"""`promptclimb eval`: score prompt templates on a few-shot split and print the accuracies.

torch and the evaluator are imported inside the command, so `promptclimb --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from promptclimb.agent.core.defaults import DEFAULT_PRECISION, PRECISION_HELP, PRECISIONS, default_backbone
from promptclimb.agent.cli.errors import user_errors
from promptclimb.agent.cli.params import TableText, table_int
from promptclimb.agent.core.classnames import first_renames, renamed_pairs
from promptclimb.agent.core.devices import check_device_name
from promptclimb.agent.core.format import pct
from promptclimb.agent.core.paths import cache_home, check_writable
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.protocol import SPLITS
from promptclimb.agent.core.templates import BASELINE, check_templates, check_typed_templates
from promptclimb.agent.options import BY_KEYWORD


# Used when neither the option nor --run says otherwise.
DEFAULTS = {"dataset": "fashion-mnist", "shots": 1, "seed": 0,  # as `search`; the backbone: default_backbone
            "precision": DEFAULT_PRECISION}


@click.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", default=None,
              help="eurosat, fashion-mnist, imagefolder (with --data-root), coop (with --data-root), "
                   "hf:OWNER/NAME[:CONFIG] (a Hugging Face dataset, from its cache when offline), hf (with "
                   "--data-root: a save_to_disk or parquet folder) [default: fashion-mnist, or the run's with --run].")
@click.option("--data-root", type=TableText(BY_KEYWORD["data_root"]), default=None,
              help="Folder of the data (imagefolder/coop/hf: required; eurosat: the unpacked archive).")
@click.option("--image-column", type=TableText(BY_KEYWORD["image_column"]), default=None,
              help="hf datasets: the image column [default: the one Image feature].")
@click.option("--label-column", type=TableText(BY_KEYWORD["label_column"]), default=None,
              help="hf datasets: the label column [default: the one ClassLabel; another column, named here, "
                   "has its distinct values as the classes].")
@click.option("--classnames", default=None, metavar="published|SET|FILE",
              help="The class names filled in: published (the data's labels), a named set (clean for fashion-mnist, "
                   "coop for eurosat) or a FILE (one name per line, or folder,name lines) [default: published, "
                   "or the names the run found with --run].")
@click.option("--shots", type=click.IntRange(min=1), default=None,
              help="Training images per class (k) [default: 1, or the run's].")
@click.option("--seed", type=table_int(BY_KEYWORD["seed"]), default=None, help="Seed of the few-shot draw [default: 0, or the run's].")
@click.option("--backbone", type=TableText(BY_KEYWORD["backbone"]), default=None,
              help="'demo' (embedded, offline) or an open_clip architecture such as RN50 or ViT-B-32 "
                   "[default: the run's; else demo for fashion-mnist, ViT-B-32 (--pretrained openai) for "
                   "other data, as `search`].")
@click.option("--pretrained", type=TableText(BY_KEYWORD["pretrained"]), default=None,
              help="open_clip pretrained tag, e.g. openai (downloads).")
@click.option("--weights", type=TableText(BY_KEYWORD["weights"]), default=None,
              help="Local .pt/.safetensors weights for the --backbone architecture.")
@click.option("--prompt", "prompts", multiple=True,
              help=f"Template with one {{}} for the class name; repeat to score several "
                   f"[default: {BASELINE!r}, or the run's best template with --run].")
@click.option("--run", "run", default=None,
              help="A search run (id under --runs-dir, or a path): its dataset, split and backbone, and its "
                   "best template, unless the options above say otherwise (e.g. --data-root for new images).")
@click.option("--with-adapter", is_flag=True,
              help="With --run: also apply the run's adapter.pt (from `promptclimb adapt` or `search --adapter`).")
@click.option("--runs-dir", type=TableText(BY_KEYWORD["runs_dir"]), default="runs", show_default=True,
              help="Where run folders are.")
@click.option("--device", type=TableText(BY_KEYWORD["device"]), default=None,
              help="cuda, cpu, ... (default: cuda when available).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help=f"{PRECISION_HELP} [default: {DEFAULT_PRECISION}, or the run's with --run].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.pass_context
@user_errors
def eval_cmd(ctx, dataset, data_root, image_column, label_column, classnames, shots, seed, backbone, pretrained, weights,
             prompts, run, with_adapter, runs_dir, device, precision, as_json):
    """Score prompt templates: train/val/test accuracy on a few-shot split.

    \b
    Examples:
      promptclimb eval --dataset fashion-mnist --backbone demo --prompt "a photo of a {}."
      promptclimb eval --dataset imagefolder --data-root DIR --backbone ViT-B-32 --weights W.safetensors
      promptclimb eval --dataset hf:tanganke/eurosat --backbone ViT-B-32 --pretrained openai
      promptclimb eval --dataset hf --data-root SAVED_OR_PARQUET_DIR --label-column fine_label
      promptclimb eval --dataset eurosat --shots 1 --backbone RN50 --pretrained openai \\
          --prompt "a centered satellite photo of {}."
      promptclimb eval --run RUN --with-adapter        (the run's prompt, with and without its adapter)
      promptclimb eval --dataset eurosat --backbone ViT-B-32 --weights W.pt --precision bf16   (faster on a CPU)
    """
    if with_adapter and run is None:
        raise click.UsageError("--with-adapter needs --run RUN (the adapter belongs to a run)")
    check_device_name(device)  # by name, before anything loads (`--device meta`, `cpu:5`)
    given = {"dataset": dataset, "data_root": data_root, "shots": shots, "seed": seed, "backbone": backbone,
             "pretrained": pretrained, "weights": weights, "precision": precision,
             "image_column": image_column, "label_column": label_column, "classnames": classnames}
    from promptclimb.agent.runs.reading import find_run  # pandas: only now

    run_dir = find_run(run, runs_dir) if run is not None else None
    if with_adapter:
        from promptclimb.agent.adapt import read_run
        from promptclimb.agent.core.runfiles import ADAPTER_FILE
        from promptclimb.evaluators.adapters import read_adapter

        run_config, _ = read_run(run_dir, "eval --run --with-adapter")  # before any slow loading
        adapter = read_adapter(run_dir / ADAPTER_FILE)  # there and readable, before any image is encoded
    try:
        if prompts:
            check_typed_templates(prompts)  # a line break or tab broke the table
    except PromptclimbError as exc:
        raise click.BadParameter(str(exc), param_hint="--prompt") from None
    args, prompts, config = _settings(given, list(dict.fromkeys(prompts)), run_dir)  # a repeated --prompt: once
    dataset, data_root, shots, seed, backbone, pretrained, weights, precision = (
        args[k] for k in ("dataset", "data_root", "shots", "seed", "backbone", "pretrained", "weights", "precision"))
    try:
        check_templates(prompts)  # before any slow loading
    except PromptclimbError as exc:
        raise click.BadParameter(str(exc), param_hint="--prompt") from None
    check_writable(cache_home(), "the cache folder, PROMPTCLIMB_HOME")  # image features go there
    # warnings (skipped images, thin val classes) are one line on stderr: agent/cli/errors.py
    factory = (ctx.obj or {}).get("evaluator_factory") if isinstance(ctx.obj, dict) else None
    loaded = {}
    if with_adapter and classnames is not None and factory is None:
        # names a trained adapter was not fit on, or data whose classes are not the run's, are
        # refused before the model loads and the images are encoded (eval_run_adapter checks
        # again, for a factory's evaluator); the evaluator takes the dataset read for it
        loaded["loaded_dataset"] = _check_names_for_adapter(args, adapter, run_config)
    result, evaluator = _evaluate({**args, **loaded}, list(prompts), device, factory)
    if run_dir is not None:
        from promptclimb.agent.runs.recorded import warn_other_split

        warn_other_split(run_dir, config, args, result["info"].get("split") or {})
    if with_adapter:
        from promptclimb.agent.adapt import eval_run_adapter

        # the adapter rows fill in the names the template rows did: --classnames, else the run's
        names = list(evaluator.task.classnames) if classnames is not None else None
        result["adapter"] = eval_run_adapter(run_dir, evaluator=evaluator, splits=SPLITS, classnames=names)
    if as_json:
        click.echo(json.dumps(result))
        return
    info = result["info"]
    click.echo(f"dataset {dataset} ({info['dataset']['classes']} classes), shots {shots}, seed {seed}, "
               f"backbone {info['backbone']['identity']} on {info['backbone']['device']}"
               # a run's bf16, taken with --run, went unsaid (its figures differ from fp32's in the last digit)
               + (f" ({info['backbone']['precision']})" if info["backbone"].get("precision") else ""))
    sizes, skipped = info["split"]["sizes"], result.get("skipped", {})  # images scored: drawn, less unreadable
    click.echo("split sizes: " + ", ".join(f"{s} {sizes[s] - len(skipped.get(s, ()))}" for s in SPLITS)
               + (f" ({sum(map(len, skipped.values()))} unreadable image(s) left out)" if skipped else ""))
    click.echo(names_line(info["dataset"], classnames, run_found=args["classnames"] is not None and classnames is None))
    header = f"{'train':>7} {'val':>7} {'test':>7}  template"
    click.echo(header)
    for row in result["results"]:
        acc = row["accuracy"]
        click.echo(" ".join(f"{pct(acc[s], 2):>7}" for s in SPLITS) + f"  {row['template']}")
    if with_adapter:
        ad = result["adapter"]
        note = "" if ad["result"] == "adapter" else \
            "   (the run keeps the prompt-only result: the adapter did not beat the prompt alone on val)"
        for name, key in ((f"prompt + {ad['kind']} adapter", "adapter"), ("prompt alone", "prompt")):
            click.echo(" ".join(f"{pct(ad['accuracy'][s][key], 2):>7}" for s in SPLITS) + f"  {name}")
        click.echo(f"adapter on: {' | '.join(ad['templates'])}{note}")


def names_line(dataset: dict, spec, run_found: bool) -> str:
    """Which class names filled the templates (evaluator.info()'s dataset): the data's labels,
    the run's (those it found, or started from), or --classnames SPEC; and those not the
    data's labels, by label."""
    labels = dataset.get("labels")  # recorded only where the names are not the data's labels
    source = "the run's names" if run_found else f"--classnames {spec}" if spec is not None else ""
    if not labels:
        return f"class names: {source} (the data's labels)" if source else "class names: the data's labels"
    changed = renamed_pairs(labels, dataset["classnames"])
    return f"class names: {source} ({len(changed)} of {len(labels)} not the data's labels: {first_renames(changed)})"


RUN_DATA = ("data_root", "image_column", "label_column", "classnames")  # a run's, with its own dataset only


def _settings(given: dict, prompts: list[str], run_dir) -> tuple[dict, list[str], dict | None]:
    """Evaluator settings and templates: the options given, else the run's, else the
    defaults; and the run's config.json (None without --run)."""
    from promptclimb.evaluators.datasets import canonical_dataset_name, same_dataset_name

    args, config = dict(given), None
    args["dataset"] = canonical_dataset_name(args["dataset"])  # hf:owner/name:default is hf:owner/name
    if run_dir is not None:
        from promptclimb.agent.adapt import check_run_data, read_run
        from promptclimb.agent.core.runfiles import CONFIG
        from promptclimb.agent.runs.reading import check_config, read_json, read_summary
        from promptclimb.agent.runs.recorded import run_names_by_label, warn_names_by_position
        from promptclimb.agent.runs.run import load_run
        from promptclimb.agent.runs.listing import result_said
        from promptclimb.agent.runs.store import run_argument

        if prompts:  # templates of one's own on the run's split: a run not ended (no summary) has that too
            config = read_json(run_dir / CONFIG)
            check_config(config, run_dir / CONFIG)
            summary = read_summary(run_dir)
            if summary is None:  # not ended: the names it holds (as show labels them), or its start names
                held = load_run(run_dir).held_names
                summary = {"best": {"names": held}} if held else {}
        else:
            config, summary = read_run(run_dir, "eval --run")
        own = config.get("evaluator_args") or {}
        # another spelling of the run's data is the run's, loaded as the run spelled it (its name draws its split)
        other_dataset = given["dataset"] is not None and not same_dataset_name(given["dataset"], own.get("dataset"))
        if given["dataset"] is not None and not other_dataset:
            args["dataset"] = own["dataset"]
        if not other_dataset:
            check_run_data(run_dir, config, given["data_root"], "eval", "--run", run_argument(run_dir))
        for key, value in own.items():
            # where another --dataset is given, the run's folder and columns are not its (the
            # run's --data-root was blamed for holding no fashion-mnist)
            if key in args and args[key] is None and not (other_dataset and key in RUN_DATA):
                args[key] = value
        if args["dataset"] is None:  # else the default's, fashion-mnist, whatever the run's was
            raise PromptclimbError(f"{Path(run_dir) / 'config.json'} does not say which dataset the run used; "
                                   "give it with --dataset")
        names = run_names_by_label(config, summary)
        if given["classnames"] is None and names:
            args["classnames"] = names  # the names the run found, by the labels of its data
            if not isinstance(names, dict):
                warn_names_by_position(run_dir, config, args, "give --classnames FILE ('folder,name' "
                                       "lines) to match them by class")
        if not prompts:
            prompts = [summary["best"]["template"]]
            # an adapter result has its own way in (--with-adapter), and its own warnings
            result, result_test = result_said({k: v for k, v in summary.items() if k != "adapter"})
            if result not in (None, "best template"):  # an ensemble: its best template was scored, unsaid
                import warnings

                warnings.warn(f"{Path(run_dir).name}'s result is its {result} (test {pct(result_test)}); this "
                              "scores its best template alone (the others: --prompt TEMPLATE each)", stacklevel=2)
    for key, value in DEFAULTS.items():
        if args[key] is None:
            args[key] = value
    args["backbone"], args["pretrained"] = default_backbone(args["dataset"], args["backbone"], args["pretrained"],
                                                            args["weights"])
    return args, prompts or [BASELINE], config


def _check_names_for_adapter(args: dict, adapter: dict, run_config: dict):
    """PromptclimbError where the names `--classnames` gives (`args["classnames"]`, read
    against the data's labels as the evaluator reads them) cannot fill in the run's
    `adapter` (read_adapter's payload): a trained one fit on other names, or data whose
    classes are not the run's. The dataset is read (and returned, for the evaluator), no
    model loads."""
    from promptclimb.agent.adapt import adapter_class_order, check_adapter_names, in_adapter_order
    from promptclimb.evaluators.datasets import load_dataset
    from promptclimb.evaluators.scorer import start_names

    data = load_dataset(args["dataset"], args["data_root"], image_column=args["image_column"],
                        label_column=args["label_column"])
    order = adapter_class_order(run_config, data.classnames, data.folders)
    # the names given, class by class: the adapter's own are taken in whatever order the data holds its classes
    check_adapter_names(adapter, lambda: in_adapter_order(start_names(data, args["classnames"]), order))
    return data


def _evaluate(args: dict, prompts: list[str], device: str | None, factory=None) -> tuple[dict, object]:
    """`factory`: the evaluator factory from click's context object (None: the CLIP one)."""
    from contextlib import nullcontext

    from promptclimb.agent.api import score_templates, using_evaluator  # torch, open_clip: only now

    with using_evaluator(factory) if factory else nullcontext():
        scores, evaluator = score_templates(prompts, splits=SPLITS, device=device, **args)
    result = {
        "dataset": args["dataset"], "shots": args["shots"], "seed": args["seed"],
        "results": [{"template": t, "accuracy": s.accuracy, "loss": s.loss} for t, s in zip(prompts, scores)],
        "info": evaluator.info(),
    }
    skipped = {split: ids for split, ids in getattr(evaluator, "skipped", {}).items() if ids}
    if skipped:  # images of a split that could not be decoded, and so were not scored
        result["skipped"] = skipped
    return result, evaluator
