"""`promptclimb search`: the prompt search, from the command line (and `promptclimb.search()`).

`run_search` reads top to bottom: the settings (a new run's from the options, a killed
run's from its config.json), the checks that need no model, the run folder (created before
the model loads, so that any kill leaves a run to resume), the evaluator (torch is imported
only then), the LLM (the embedded local LLM unless an OpenAI-compatible endpoint is
configured), the climb (`agent.search.HillClimber`), then plots and adapters.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Iterator

import click

from promptclimb.agent.defaults import DEFAULT_PRECISION, PRECISION_HELP, PRECISIONS, default_backbone
from promptclimb.agent.errors import PromptclimbError, sigterm_raises_systemexit, user_errors
from promptclimb.agent.llm import LLMClient, LLMError, local_model_served_at, strip_userinfo
from promptclimb.agent import local_llm
from promptclimb.agent.metaprompt import MetaPrompt
from promptclimb.agent.paths import cache_home, check_writable
from promptclimb.agent.pools import POOLS, PoolTemplate, load_pool
from promptclimb.agent.protocol import Task
from promptclimb.agent.ranking import LEGACY_METRIC, METRICS, metric_label
from promptclimb.agent.runstore import RunStore, check_run_name
from promptclimb.agent.search import SELECTIONS, HillClimber, SearchConfig
from promptclimb.agent.softsearch import run_soft_prompt_search, soft_prompt_options, soft_prompt_search_wanted

DEFAULTS = SearchConfig()
LOCAL = "local"
REMOTE_DEFAULT_MODEL = "gpt-4o-mini"


def default_llm(base_url: str | None = None) -> str:
    """'local' unless an endpoint is configured (OPENAI_API_KEY, --base-url or OPENAI_BASE_URL)."""
    has_endpoint = os.environ.get("OPENAI_API_KEY") or base_url or os.environ.get("OPENAI_BASE_URL")
    return REMOTE_DEFAULT_MODEL if has_endpoint else LOCAL


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
@click.option("--precision", type=click.Choice(PRECISIONS), default=DEFAULT_PRECISION, help=PRECISION_HELP)
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
@click.option("--parallel", type=int, default=DEFAULTS.parallel,
              help="Restarts run at the same time (their LLM calls overlap; the result is the same as one "
                   "at a time). Not with --max-calls/--max-tokens. The local LLM answers one request at a "
                   "time: with it the restarts run one after another.")
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
@click.option("--presence-penalty", type=float, default=DEFAULTS.presence_penalty, show_default=True,
              help="LLM sampling: > 0 discourages words already in the conversation (OpenAI's presence_penalty, "
                   "-2 to 2; sent only when not 0). On the local LLM 0.8 gave no more new templates per answer (README).")
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
@soft_prompt_options  # --optimizer craft|cbbt, --queries and their knobs (agent/softsearch.py)
@user_errors
def search_cmd(**opts):
    """Search for the best prompt template with a chat LLM as the optimizer.

    \b
    Examples:
      promptclimb search --dataset fashion-mnist --shots 1
      OPENAI_API_KEY=... promptclimb search --dataset eurosat --shots 4 --llm gpt-4o-mini
      promptclimb search --resume 20250101-120000-eurosat-4shot
    """
    echo = (lambda msg: click.echo(msg, err=True)) if opts["as_json"] else click.echo
    summary = run_search(opts, echo)
    if opts["as_json"]:
        click.echo(json.dumps(summary, indent=2))


# -- one search, step by step ---------------------------------------------------------------------
@dataclass
class Plan:
    """What this search runs: a new run's settings (from the options) or a killed run's
    (from its config.json), with what this session may change."""

    search: SearchConfig
    evaluator_args: dict  # dataset, shots, seed, backbone, pretrained, weights, data_root
    llm: dict  # model, local, llm_model_file, timeout, max_tries, base_url, served_model
    pool: list  # of agent.pools.PoolTemplate
    pool_setting: dict  # for config.json: name, size, templates
    meta_dir: str | None
    adapter_kinds: list[str]
    store: RunStore | None = None  # --resume: the run, opened (and locked) already


def run_search(opts: dict, echo) -> dict:
    """`promptclimb search` (and `promptclimb.search()`): `opts` holds the command's options
    (click's names and defaults); progress goes to `echo`; returns the summary."""
    if soft_prompt_search_wanted(opts):  # --optimizer craft|cbbt, or --resume of such a run
        return run_soft_prompt_search(opts, echo)
    plan = resumed_run(opts, echo) if opts["resume"] else new_run(opts, echo)
    store = plan.store
    try:
        meta = checks_before_loading(plan, opts)
        store = store or create_run_folder(plan, opts, echo)
        with resume_hint_on_interrupt(store, echo):
            evaluator = load_evaluator(plan, store, opts["device"], echo)
            with llm_client(plan, opts, echo) as llm:
                summary = climb(plan, store, evaluator, llm, meta, echo)
            return after_the_climb(plan, store, evaluator, summary, echo)
    finally:
        if store is not None:
            store.close()


def new_run(opts: dict, echo) -> Plan:
    """A new run's settings from the options, each checked here (nothing slow yet)."""
    if not opts["dataset"]:
        raise PromptclimbError("--dataset is required (or --resume RUN)")
    if opts["run_name"] is not None:
        check_run_name(opts["run_name"])
    from promptclimb.agent.cmd_adapt import check_kinds

    adapter_kinds = check_kinds(opts["adapter_kinds"]) if opts["adapter_kinds"] else []
    llm, sampling = choose_llm(opts, echo)
    parallel = lanes_for_the_llm(llm, opts["parallel"], opts["restarts"], echo)
    search = SearchConfig(
        restarts=opts["restarts"], resets=opts["resets"], iterations=opts["iterations"],
        proposals=opts["proposals"], spare=opts["spare"], top_k=opts["top_k"], bottom_k=opts["bottom_k"],
        pool_sample=opts["pool_sample"], seed=opts["seed"], select=opts["select"], metric=opts["metric"],
        ensemble_k=opts["ensemble_k"],
        temperature=opts["temperature"] if opts["temperature"] is not None
        else sampling.get("temperature", DEFAULTS.temperature),
        presence_penalty=opts["presence_penalty"],
        max_answer_tokens=opts["max_answer_tokens"] if opts["max_answer_tokens"] is not None
        else sampling.get("max_tokens", DEFAULTS.max_answer_tokens),
        max_calls=opts["max_calls"], max_tokens=opts["max_tokens"], parallel=parallel,
    ).check()
    backbone, pretrained = default_backbone(opts["dataset"], opts["backbone"], opts["pretrained"], opts["weights"])
    evaluator_args = {
        "dataset": opts["dataset"], "shots": opts["shots"], "seed": opts["seed"],
        "backbone": backbone, "pretrained": pretrained, "weights": opts["weights"], "data_root": opts["data_root"],
        "precision": opts["precision"],
    }
    pool = load_pool(opts["dataset"], opts["pool"])
    pool_setting = {"name": opts["pool"] if opts["pool"] in POOLS else str(Path(opts["pool"]).expanduser().resolve()),
                    "size": len(pool), "templates": [[p.template, p.source] for p in pool]}
    return Plan(search, evaluator_args, llm, pool, pool_setting, opts["meta_prompt"], adapter_kinds)


def choose_llm(opts: dict, echo) -> tuple[dict, dict]:
    """A new run's LLM: its settings for config.json, and the sampling defaults that come
    with it (the local LLM has its own)."""
    endpoint = opts["base_url"] or os.environ.get("OPENAI_BASE_URL")
    # An endpoint that is a `promptclimb llm serve` server (it says so at /models) is the local LLM.
    served_local = local_model_served_at(endpoint) if endpoint and not opts["llm_name"] else None
    llm_name = opts["llm_name"] or (LOCAL if served_local else default_llm(endpoint))
    if served_local:
        echo(f"Using the local LLM served at {strip_userinfo(endpoint)} ({served_local}).")
    elif opts["llm_name"] is None and llm_name == LOCAL:
        echo("No OPENAI_API_KEY or OPENAI_BASE_URL set: using the embedded local LLM (--llm local).")
    local = llm_name == LOCAL and not served_local  # the embedded server, started by this command
    # The endpoint is recorded without userinfo; the key never is.
    settings = {"model": llm_name, "local": local, "llm_model_file": opts["llm_model"], "timeout": opts["timeout"],
                "max_tries": opts["max_tries"], "base_url": strip_userinfo(endpoint)}
    if local:
        settings["served_model"] = local_llm.local_model_name(opts["llm_model"])
    elif served_local:
        settings["served_model"] = served_local
    return settings, (local_llm.LOCAL_SAMPLING if local or served_local else {})


def lanes_for_the_llm(llm: dict, parallel: int, restarts: int, echo) -> int:
    """--parallel, or 1 for the local LLM (started here, or a `promptclimb llm serve`): its
    server answers one request at a time and keeps only the last request's prefix, so
    restarts taking turns at it would each reprocess their whole conversation per answer
    (README, Sweeps: 15 answers in 300 s at --parallel 3, 122 s one after another).
    The result does not depend on --parallel; the run records the lanes it ran with."""
    if parallel > 1 and restarts > 1 and llm.get("served_model"):
        echo(f"--parallel {parallel}: the local LLM answers one request at a time, so the restarts run one "
             "after another (faster with it, and the same result)")
        return 1
    return parallel


# --resume: options that only change how this session runs are applied; the budget caps
# are applied to the rest of the run while it has not ended; every other option would
# change what the run does (the loop's shape too: the history's order depends on it), so
# given with a value other than the run's, it is refused.
SESSION_OPTIONS = ("device", "base_url", "llm_model", "timeout", "max_tries", "no_cache", "adapter_kinds",
                   "runs_dir", "resume", "as_json")
BUDGET_CAPS = ("max_calls", "max_tokens")
LOOP_SHAPE = ("restarts", "resets", "iterations", "parallel")  # --parallel K: restarts take turns in K lanes


def resumed_run(opts: dict, echo) -> Plan:
    """A killed run's settings from its config.json; its folder is opened (and locked)."""
    from promptclimb.agent.cmd_adapt import check_kinds
    from promptclimb.agent.reading import find_run

    run_dir = find_run(opts["resume"], Path(opts["runs_dir"]))
    check_writable(run_dir, "the run folder")
    store = RunStore.resume(run_dir)
    try:
        saved = store.config
        if given(opts, "parallel") and saved["search"].get("parallel") == 1:  # the command that started it,
            # again: its --parallel as that one ran it (runs from before lanes_for_the_llm keep theirs)
            opts = {**opts, "parallel": lanes_for_the_llm(saved["llm"], opts["parallel"],
                                                          saved["search"]["restarts"], echo)}
        refuse_changed_settings(opts, saved)
        search = SearchConfig(**{"metric": LEGACY_METRIC, "spare": 0, "unfill": False,  # runs from before these knobs
                                 **{f.name: saved["search"][f.name] for f in fields(SearchConfig)
                                    if f.name in saved["search"]}})
        search = apply_budget_caps(opts, search.check(), store, echo)
        llm = {**saved["llm"], **{k: opts[k] for k in ("timeout", "max_tries") if given(opts, k)}}
        pool_setting = saved.get("pool") or {"name": "curated"}
        pool = ([PoolTemplate(t, source) for t, source in pool_setting["templates"]] if "templates" in pool_setting
                else load_pool(saved["evaluator_args"]["dataset"], "curated"))
        adapter_kinds = check_kinds(opts["adapter_kinds"]) if opts["adapter_kinds"] else saved.get("adapter_kinds") or []
        echo(f"resuming {run_dir} ({len(store.stored)} events recorded)")
        return Plan(search, saved["evaluator_args"], llm, pool, pool_setting, saved.get("meta_prompt_dir"),
                    adapter_kinds, store)
    except BaseException:
        store.close()
        raise


def refuse_changed_settings(opts: dict, saved: dict) -> None:
    """PromptclimbError listing the options given with --resume that differ from the run's."""
    flags = {p.name: max(p.opts, key=len) for p in search_cmd.params}
    changed = [name for name in option_defaults()
               if name not in SESSION_OPTIONS + BUDGET_CAPS and given(opts, name)
               and not same_setting(opts[name], saved_setting(saved, name))]
    if changed:
        listed = ", ".join(f"{flags[n]} {opts[n]} (the run's: {saved_setting(saved, n)})" for n in changed)
        why = (" (the number of LLM turns is fixed when a run starts: the history's order depends on it)"
               if set(changed) & set(LOOP_SHAPE) else "")
        raise PromptclimbError(f"--resume continues a run with the settings it started with; these options would "
                               f"change them: {listed}{why}. Drop them, or start a new run without --resume.")


def apply_budget_caps(opts: dict, search: SearchConfig, store: RunStore, echo) -> SearchConfig:
    """--max-calls / --max-tokens with --resume: the new cap holds for the whole run (answers
    already recorded count) and is recorded in config.json. Refused when the run has ended,
    or has already used more than the cap (its replay would stop short of its own history)."""
    caps = {name: opts[name] for name in BUDGET_CAPS
            if opts[name] is not None and opts[name] != getattr(search, name)}
    if not caps:
        return search
    flags = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in caps.items())
    ended = [e for e in store.stored if e.get("event") in ("stop", "final")]
    if ended:
        raise PromptclimbError(f"{store.run_dir.name} has already ended ({ended[0]['event']} event in its history): "
                               f"{flags} cannot change it; start a new run without --resume")
    answers = [e for e in store.stored if e.get("event") == "llm_exchange"]
    used = {"max_calls": len(answers),
            "max_tokens": sum(sum((e.get("usage") or {}).get(k) or 0 for k in ("prompt_tokens", "completion_tokens"))
                              for e in answers)}
    for name, cap in caps.items():
        if cap < used[name]:
            what = "LLM answers" if name == "max_calls" else "LLM tokens"
            raise PromptclimbError(f"--{name.replace('_', '-')} {cap} is below the {used[name]} {what} "
                                   f"{store.run_dir.name} has already used; give at least {used[name]}")
    was = ", ".join(f"{name.replace('_', '-')} {getattr(search, name)}" for name in caps)
    search = replace(search, **caps).check()
    store.update_config(search=asdict(search))
    echo(f"applying {flags} to this run (it had {was}); recorded in its config.json")
    return search


@functools.cache
def option_defaults() -> dict:
    """Every option's value when it is not given (what `run_search` gets from click)."""
    return dict(search_cmd.make_context("search", []).params)


def given(opts: dict, name: str) -> bool:
    return opts.get(name, option_defaults()[name]) != option_defaults()[name]


def saved_setting(saved: dict, name: str):
    """What a run's config.json holds for a search option (None where it holds nothing)."""
    for section in ("evaluator_args", "search"):
        if name in (saved.get(section) or {}):
            return saved[section][name]
    return {"llm_name": (saved.get("llm") or {}).get("model"),
            "precision": "fp32",  # runs from before --precision encoded in fp32
            "pool": (saved.get("pool") or {}).get("name", "curated"),
            "meta_prompt": saved.get("meta_prompt_dir"),
            "run_name": saved.get("run_id")}.get(name)


def same_setting(mine, theirs) -> bool:
    """Equal, or two spellings of the same path."""
    if mine == theirs:
        return True
    if isinstance(mine, str) and isinstance(theirs, str):
        return Path(mine).expanduser().resolve() == Path(theirs).expanduser().resolve()
    return False


def checks_before_loading(plan: Plan, opts: dict) -> MetaPrompt:
    """What can fail without the model fails now: the device, the folders that will be
    written, and the meta-prompts (rendered once, with a stand-in task)."""
    if opts["device"]:
        from promptclimb.evaluators.backbones import check_device  # imports torch: the model loads next anyway

        check_device(opts["device"])
    if plan.store is None:
        check_writable(opts["runs_dir"], "--runs-dir")
    check_writable(cache_home(), "the cache folder, PROMPTCLIMB_HOME")
    meta = MetaPrompt(plan.meta_dir)
    render_meta_prompts_once(meta, plan.search)
    return meta


def render_meta_prompts_once(meta: MetaPrompt, search: SearchConfig) -> None:
    """Every meta-prompt rendered with stand-in values shaped as HillClimber's: a template
    error in a --meta-prompt folder is reported before the model loads and the pool is scored
    (tests/test_search.py checks that our own meta-prompts pass)."""
    task = Task("stand-in", "images", ("first class", "second class"))
    n = search.proposals + search.spare
    row = {"template": "a photo of a {}.", "accuracy": 0.5}
    result = {**row, "previous_best": 0.5, "verdict": "equal"}
    rejected = {"line": "a photo", "reason": "no {} placeholder", "duplicate": False}
    metric = metric_label(search.metric, SELECTIONS[search.select])
    meta.system(task, n)
    meta.first_turn(task, n, metric, [row], [row])
    meta.feedback_turn(task, n, metric, [result], [rejected], row, [row], [row])


def new_run_store(runs_dir: str | Path, run_name: str | None, dataset: str, shots: int, config: dict) -> RunStore:
    """A new run's folder, with its config.json: --name as given, else
    `<time>-<dataset>-<shots>shot`, or that with -2, -3, ... when another search took it."""
    if run_name:
        return RunStore.create(Path(runs_dir) / check_run_name(run_name), {"run_id": run_name, **config})
    return RunStore.create_numbered(runs_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-{dataset}-{shots}shot", config)


def create_run_folder(plan: Plan, opts: dict, echo) -> RunStore:
    """The run folder, before the model loads: a search killed while loading resumes by name.
    (The evaluator's description joins config.json once the evaluator is built.)"""
    config = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "search": asdict(plan.search),
        "evaluator_args": plan.evaluator_args,
        "llm": plan.llm,
        "pool": plan.pool_setting,
        "meta_prompt_dir": str(Path(plan.meta_dir).resolve()) if plan.meta_dir else None,
        "adapter_kinds": plan.adapter_kinds,
        "versions": package_versions(),
    }
    args = plan.evaluator_args
    store = new_run_store(opts["runs_dir"], opts["run_name"], args["dataset"], args["shots"], config)
    echo(f"run folder: {store.run_dir}")
    return store


@contextmanager
def resume_hint_on_interrupt(store: RunStore, echo) -> Iterator[None]:
    """Ctrl-C, or SIGTERM (made to unwind the same way, exit status 143): say how to go on."""
    restore = sigterm_raises_systemexit()
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        echo(f"interrupted; continue with: promptclimb search --resume {store.run_dir}")
        raise
    finally:
        restore()


def load_evaluator(plan: Plan, store: RunStore, device: str | None, echo):
    """The CLIP evaluator (the slow step); its description is recorded in config.json, or,
    on resume, compared with the one recorded."""
    with warnings.catch_warnings(record=True) as caught:  # counted skips, random weights: said plainly
        warnings.simplefilter("always")
        evaluator = build_evaluator(**plan.evaluator_args, device=device)
    for w in caught:
        echo(f"warning: {w.message}")
    info = json.loads(json.dumps(evaluator.info()))
    if "evaluator" not in store.config:
        store.update_config(evaluator=info)
    elif store.config["evaluator"] != info:
        echo("warning: the evaluator is not identical to the one this run started with "
             "(see config.json); scores already recorded are kept, new ones use this one.")
    return evaluator


@contextmanager
def llm_client(plan: Plan, opts: dict, echo) -> Iterator[LLMClient]:
    """The LLM: the embedded local one (a llama.cpp server started for the climb and stopped
    after it), or an OpenAI-compatible endpoint."""
    settings = plan.llm

    def client(base_url: str | None, api_key: str | None, model: str) -> LLMClient:
        return LLMClient(model, base_url=base_url, api_key=api_key, timeout=settings["timeout"],
                         max_tries=settings["max_tries"], use_cache=not opts["no_cache"],
                         max_calls=plan.search.max_calls, max_tokens=plan.search.max_tokens, echo=echo)

    if settings["local"] and not opts["base_url"]:
        model_file = opts["llm_model"] or settings.get("llm_model_file")
        with local_llm.local_server(model_path=model_file) as base_url:
            yield client(base_url, "local", local_llm.local_model_name(model_file))
        return
    base_url = opts["base_url"] or os.environ.get("OPENAI_BASE_URL") or settings.get("base_url")
    api_key = os.environ.get("OPENAI_API_KEY")
    if not api_key and not base_url:
        raise PromptclimbError(f"--llm {settings['model']} needs OPENAI_API_KEY (or an endpoint: --base-url / "
                               "OPENAI_BASE_URL); or use --llm local")
    yield client(base_url, api_key, settings["model"])


def climb(plan: Plan, store: RunStore, evaluator, llm: LLMClient, meta: MetaPrompt, echo) -> dict:
    """The hill-climb (agent/search.py); an LLM that fails for good leaves a resumable run."""
    climber = HillClimber(evaluator, llm, store, plan.search, meta=meta, pool=plan.pool, echo=echo)
    try:
        return climber.run().summary
    except LLMError as exc:
        raise PromptclimbError(f"{exc}\nThe run is saved; continue it with: "
                               f"promptclimb search --resume {store.run_dir}") from None


def after_the_climb(plan: Plan, store: RunStore, evaluator, summary: dict, echo) -> dict:
    """Plots, the adapters asked for (fit on the winning prompt), and where to read the run."""
    from promptclimb.agent.cmd_adapt import fit_run_adapter
    from promptclimb.agent.plots import write_plots

    for path in write_plots(store.run_dir):
        echo(f"plot: {path}")
    if plan.adapter_kinds:
        summary["adapter"] = fit_run_adapter(store.run_dir, plan.adapter_kinds, evaluator=evaluator, echo=echo)
    echo(f"run folder: {store.run_dir}   (read it with: promptclimb show {store.run_dir.name})")
    return summary
