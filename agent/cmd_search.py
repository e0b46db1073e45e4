"""`promptclimb search`: the prompt search, from the command line.

Builds the evaluator (lazily: torch is imported only here, inside the command), the LLM
client (the embedded local LLM unless an OpenAI-compatible endpoint is configured), the
run folder, and runs `agent.search.HillClimber`.
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from dataclasses import asdict, fields
from importlib import metadata
from pathlib import Path

import click

from promptclimb.agent.errors import PromptclimbError
from promptclimb.agent.pools import POOLS
from promptclimb.agent.ranking import LEGACY_METRIC, METRICS
from promptclimb.agent.search import SELECTIONS, SearchConfig

DEFAULTS = SearchConfig()
LOCAL = "local"
REMOTE_DEFAULT_MODEL = "gpt-4o-mini"


def default_llm() -> str:
    has_endpoint = os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")
    return REMOTE_DEFAULT_MODEL if has_endpoint else LOCAL


def default_backbone(dataset: str, backbone: str | None, pretrained: str | None, weights: str | None):
    """(backbone, pretrained): the embedded model for the embedded dataset; for anything
    else OpenAI's ViT-B-32 unless the user named a backbone or weights."""
    if backbone:
        return backbone, pretrained
    if dataset == "fashion-mnist":
        return "demo", pretrained
    return "ViT-B-32", pretrained or (None if weights else "openai")


def build_evaluator(**kwargs):
    """The real CLIP evaluator. It imports torch, so it is only ever called inside the command."""
    from promptclimb.evaluators import build_evaluator as build

    return build(**kwargs)


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("promptclimb", "openai", "open_clip_torch", "torch", "jinja2", "tenacity", "llama_cpp_python"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def new_run_id(dataset: str, shots: int, runs_dir: Path) -> str:
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{dataset}-{shots}shot"
    run_id, n = base, 1
    while (runs_dir / run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    return run_id


@click.command("search", context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--dataset", help="Dataset name (fashion-mnist, eurosat, imagefolder, coop). Required unless --resume.")
@click.option("--shots", type=int, default=1, help="Training images per class (the few-shot split).")
@click.option("--seed", type=int, default=0, help="Seed of the few-shot split, the pool samples and the LLM requests.")
@click.option("--backbone", default=None,
              help="CLIP backbone [default: demo for fashion-mnist, else ViT-B-32 with --pretrained openai].")
@click.option("--pretrained", default=None, help="open_clip pretrained tag (e.g. openai; downloads once).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="Local weights file for the backbone.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Where the dataset lives.")
@click.option("--device", default=None, help="torch device [default: cuda when available, else cpu].")
@click.option("--llm", "llm_name", default=None,
              help="LLM model name [default: 'local' (the embedded llama.cpp model) unless OPENAI_API_KEY "
                   f"or OPENAI_BASE_URL is set, then {REMOTE_DEFAULT_MODEL}].")
@click.option("--base-url", default=None, help="OpenAI-compatible endpoint [default: $OPENAI_BASE_URL, or the OpenAI API].")
@click.option("--llm-model", type=click.Path(dir_okay=False), default=None,
              help="GGUF file for --llm local [default: the embedded Qwen2.5-Coder-1.5B].")
@click.option("--timeout", type=float, default=120.0, help="Seconds before one LLM request is abandoned (and retried).")
@click.option("--max-tries", type=int, default=6, help="Tries per LLM request (429, 5xx, timeouts) before giving up.")
@click.option("--no-cache", is_flag=True, help="Do not read or write the LLM response cache.")
@click.option("--meta-prompt", type=click.Path(file_okay=False), default=None,
              help="Folder with your own system.j2 / first_turn.j2 / feedback_turn.j2 (missing ones: ours).")
@click.option("--pool", default="curated", metavar="curated|captions|FILE",
              help="Initial templates: curated (hand-written and OpenAI's 80), captions (generic web "
                   "captions, the paper's start) or a file with one template per line (# comments).")
@click.option("--metric", type=click.Choice(METRICS), default=DEFAULTS.metric,
              help="What templates are ranked by and the LLM is shown: accuracy (ties by cross-entropy), "
                   "prob (mean probability of the true class) or blend (their mean).")
@click.option("--restarts", type=int, default=DEFAULTS.restarts, help="Restarts, each from a fresh sample of the pool.")
@click.option("--resets", type=int, default=DEFAULTS.resets, help="Conversations per restart (the scoreboard is kept).")
@click.option("--iterations", type=int, default=DEFAULTS.iterations, help="LLM turns per conversation.")
@click.option("--proposals", type=int, default=DEFAULTS.proposals, help="New templates scored per turn.")
@click.option("--spare", type=int, default=DEFAULTS.spare,
              help="Extra templates asked for per turn, standing in for repeats (the first --proposals new ones are scored).")
@click.option("--top-k", type=int, default=DEFAULTS.top_k, help="Best templates shown to the LLM.")
@click.option("--bottom-k", type=int, default=DEFAULTS.bottom_k, help="Worst templates shown to the LLM.")
@click.option("--pool-sample", type=int, default=DEFAULTS.pool_sample,
              help="Initial-pool templates scored per restart (0 = the whole pool).")
@click.option("--temperature", type=float, default=None,
              help="LLM sampling temperature [default: 1.0].")
@click.option("--max-answer-tokens", type=int, default=None,
              help="Length cap of one LLM answer [default: 400; 256 for the local LLM].")
@click.option("--select", type=click.Choice(list(SELECTIONS)), default=DEFAULTS.select,
              help="Split(s) the best template is chosen on (ties: lower cross-entropy).")
@click.option("--ensemble", "ensemble_k", type=int, default=DEFAULTS.ensemble_k,
              help="Largest top-k ensemble tried at the end (0 = none); it is chosen only when it beats the "
                   "best template alone on val.")
@click.option("--adapter", "adapter_kinds", multiple=True, metavar="KIND",
              help="After the search, fit an output-side adapter on the best prompt: residual-logits, "
                   "feature-residual, cache or all (repeatable; the best on val is kept). "
                   "See `promptclimb adapt --help`.")
@click.option("--max-calls", type=int, default=None, help="Budget: LLM answers in the whole run (then stop cleanly).")
@click.option("--max-tokens", type=int, default=None, help="Budget: LLM prompt+completion tokens in the whole run.")
@click.option("--runs-dir", type=click.Path(file_okay=False), default="runs", help="Where run folders go.")
@click.option("--name", "run_name", default=None, help="Run id (folder name) [default: time-dataset-shots].")
@click.option("--resume", default=None,
              help="Continue a killed run (id under --runs-dir, or a path) with its saved settings.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON at the end (progress goes to stderr).")
def search_cmd(**opts):
    """Search for the best prompt template with a chat LLM as the optimizer.

    \b
    Examples:
      promptclimb search --dataset fashion-mnist --shots 1
      OPENAI_API_KEY=... promptclimb search --dataset eurosat --shots 4 --llm gpt-4o-mini
      promptclimb search --resume 20250101-120000-eurosat-4shot
    """
    echo = (lambda msg: click.echo(msg, err=True)) if opts["as_json"] else click.echo
    try:
        summary = run_search(opts, echo)
    except PromptclimbError as exc:
        raise click.ClickException(str(exc)) from None
    if opts["as_json"]:
        click.echo(json.dumps(summary, indent=2))


def run_search(opts: dict, echo) -> dict:
    """The command's work, separated from click for readability (and tests)."""
    from promptclimb.agent.cmd_adapt import check_kinds
    from promptclimb.agent.llm import LLMClient, LLMError, strip_userinfo
    from promptclimb.agent.metaprompt import MetaPrompt
    from promptclimb.agent.pools import PoolTemplate, load_pool
    from promptclimb.agent.reading import find_run
    from promptclimb.agent.runstore import RunStore
    from promptclimb.agent.search import HillClimber

    adapter_kinds = check_kinds(opts["adapter_kinds"]) if opts["adapter_kinds"] else []  # before slow loading
    runs_dir = Path(opts["runs_dir"])
    if opts["resume"]:
        run_dir = find_run(opts["resume"], runs_dir)
        store = RunStore.resume(run_dir)
        saved = store.config
        search_config = SearchConfig(**{"metric": LEGACY_METRIC, "spare": 0,  # runs from before these knobs
                                        **{f.name: saved["search"][f.name] for f in fields(SearchConfig)
                                           if f.name in saved["search"]}})
        pool_setting = saved.get("pool") or {"name": "curated"}
        pool = ([PoolTemplate(t, source) for t, source in pool_setting["templates"]] if "templates" in pool_setting
                else load_pool(saved["evaluator_args"]["dataset"], "curated"))
        evaluator_args, llm_settings = saved["evaluator_args"], saved["llm"]
        meta_dir = saved.get("meta_prompt_dir")
        adapter_kinds = adapter_kinds or saved.get("adapter_kinds") or []
        echo(f"resuming {run_dir} ({len(store.stored)} events recorded)")
    else:
        if not opts["dataset"]:
            raise PromptclimbError("--dataset is required (or --resume RUN)")
        store = None
        llm_name = opts["llm_name"] or default_llm()
        if opts["llm_name"] is None and llm_name == LOCAL:
            echo("No OPENAI_API_KEY or OPENAI_BASE_URL set: using the embedded local LLM (--llm local).")
        local = llm_name == LOCAL
        from_local = {}
        if local:
            from promptclimb.agent.local_llm import LOCAL_SAMPLING

            from_local = LOCAL_SAMPLING
        search_config = SearchConfig(
            restarts=opts["restarts"], resets=opts["resets"], iterations=opts["iterations"],
            proposals=opts["proposals"], spare=opts["spare"], top_k=opts["top_k"], bottom_k=opts["bottom_k"],
            pool_sample=opts["pool_sample"], seed=opts["seed"], select=opts["select"], metric=opts["metric"],
            ensemble_k=opts["ensemble_k"],
            temperature=opts["temperature"] if opts["temperature"] is not None
            else from_local.get("temperature", DEFAULTS.temperature),
            max_answer_tokens=opts["max_answer_tokens"] if opts["max_answer_tokens"] is not None
            else from_local.get("max_tokens", DEFAULTS.max_answer_tokens),
            max_calls=opts["max_calls"], max_tokens=opts["max_tokens"],
        ).check()
        backbone, pretrained = default_backbone(opts["dataset"], opts["backbone"], opts["pretrained"], opts["weights"])
        evaluator_args = {
            "dataset": opts["dataset"], "shots": opts["shots"], "seed": opts["seed"],
            "backbone": backbone, "pretrained": pretrained, "weights": opts["weights"], "data_root": opts["data_root"],
        }
        llm_settings = {"model": llm_name, "local": local, "llm_model_file": opts["llm_model"],
                        "timeout": opts["timeout"], "max_tries": opts["max_tries"]}
        if local:
            from promptclimb.agent.local_llm import local_model_name

            llm_settings["served_model"] = local_model_name(opts["llm_model"])
        meta_dir = opts["meta_prompt"]
        pool = load_pool(opts["dataset"], opts["pool"])  # a bad pool file is reported before slow loading
        pool_setting = {"name": opts["pool"] if opts["pool"] in POOLS else str(Path(opts["pool"]).expanduser().resolve()),
                        "size": len(pool), "templates": [[p.template, p.source] for p in pool]}
    meta = MetaPrompt(meta_dir)  # checked before the (slow) evaluator is built

    try:
        with warnings.catch_warnings(record=True) as caught:  # counted skips, random weights: said plainly
            warnings.simplefilter("always")
            evaluator = build_evaluator(**evaluator_args, device=opts["device"])
        for w in caught:
            echo(f"warning: {w.message}")
        if store is not None and store.config.get("evaluator") != json.loads(json.dumps(evaluator.info())):
            echo("warning: the evaluator is not identical to the one this run started with "
                 "(see config.json); scores already recorded are kept, new ones use this one.")
        if store is None:
            run_id = opts["run_name"] or new_run_id(opts["dataset"], opts["shots"], runs_dir)
            config = {
                "run_id": run_id,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "search": asdict(search_config),
                "evaluator_args": evaluator_args,
                "evaluator": evaluator.info(),
                "llm": llm_settings,
                "pool": pool_setting,
                "meta_prompt_dir": str(Path(meta_dir).resolve()) if meta_dir else None,
                "adapter_kinds": adapter_kinds,
                "versions": package_versions(),
            }
            # The endpoint is recorded without userinfo; the key never is.
            config["llm"]["base_url"] = strip_userinfo(opts["base_url"] or os.environ.get("OPENAI_BASE_URL"))
            store = RunStore.create(runs_dir / run_id, config)
            echo(f"run folder: {store.run_dir}")

        def climb(base_url: str | None, api_key: str | None, model: str) -> dict:
            llm = LLMClient(
                model, base_url=base_url, api_key=api_key, timeout=llm_settings["timeout"],
                max_tries=llm_settings["max_tries"], use_cache=not opts["no_cache"],
                max_calls=search_config.max_calls, max_tokens=search_config.max_tokens,
            )
            climber = HillClimber(evaluator, llm, store, search_config, meta=meta, pool=pool, echo=echo)
            try:
                result = climber.run()
            except LLMError as exc:
                raise PromptclimbError(f"{exc}\nThe run is saved; continue it with: "
                                       f"promptclimb search --resume {store.run_dir}") from None
            summary = result.summary
            from promptclimb.agent.plots import write_plots

            for path in write_plots(store.run_dir):
                echo(f"plot: {path}")
            if adapter_kinds:
                from promptclimb.agent.cmd_adapt import fit_run_adapter

                summary["adapter"] = fit_run_adapter(store.run_dir, adapter_kinds, evaluator=evaluator, echo=echo)
            echo(f"run folder: {store.run_dir}   (read it with: promptclimb show {store.run_dir.name})")
            return summary

        try:
            if llm_settings["local"] and not opts["base_url"]:
                from promptclimb.agent.local_llm import local_model_name, local_server

                model_file = opts["llm_model"] or llm_settings.get("llm_model_file")
                with local_server(model_path=model_file) as base_url:
                    return climb(base_url, "local", local_model_name(model_file))
            base_url = opts["base_url"] or os.environ.get("OPENAI_BASE_URL") or (llm_settings.get("base_url") if opts["resume"] else None)
            api_key = os.environ.get("OPENAI_API_KEY")
            if not api_key and not base_url:
                raise PromptclimbError(
                    f"--llm {llm_settings['model']} needs OPENAI_API_KEY (or an endpoint: --base-url / OPENAI_BASE_URL); "
                    "or use --llm local"
                )
            return climb(base_url, api_key, llm_settings["model"])
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (agent.local_llm turns it into SystemExit)
            echo(f"interrupted; continue with: promptclimb search --resume {store.run_dir}")
            raise
    finally:
        if store is not None:
            store.close()
