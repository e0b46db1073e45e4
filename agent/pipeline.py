"""`run_search`: one search, whichever optimizer, from settings to a finished run folder.

It reads top to bottom: the settings (a new run's from the options, a killed run's from
its config.json, with the options given again checked against it), the checks that need
no model, the run folder (created before the model loads, so that any kill leaves a run to
resume), the evaluator (built by the factory passed in; torch is imported only then), then
the optimizer: the LLM hill-climb (`agent.search.HillClimber`, with the embedded local LLM
unless an OpenAI-compatible endpoint is configured) or a soft-prompt optimizer
(`agent.softsearch`), then plots and adapters. `promptclimb search`, `promptclimb.search()`
and every sweep cell call it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import time
import warnings
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator

from promptclimb.agent import options as option_table
from promptclimb.agent.core.classnames import PUBLISHED
from promptclimb.agent.core.defaults import UNLABELED_IMAGES, default_backbone
from promptclimb.agent.core.devices import check_device_name
from promptclimb.agent.core.errors import DataError, PromptclimbError, os_error_message, sigterm_raises_systemexit
from promptclimb.agent.core.paths import (absolute, cache_home, check_writable, missing_folders, prompts_dir,
                                          remove_while_empty)
from promptclimb.agent.core.format import pct, shell_command
from promptclimb.agent.core.protocol import Task
from promptclimb.agent.core.templates import BASELINE
from promptclimb.agent.core.settings import EvaluatorSettings, LLMSettings, SoftPromptConfig
from promptclimb.agent.llm import local as local_llm
from promptclimb.agent.llm.client import (LLMClient, LLMError, check_api_key, check_endpoint_url, local_model_served_at,
                                          redact, url_secrets, without_secrets)
from promptclimb.agent.metaprompt import FILES as META_FILES, MetaPrompt, files_recorded, files_rendered
from promptclimb.agent.adapt import check_kinds
from promptclimb.agent.options import BUDGET, LOCAL, REMOTE_DEFAULT_MODEL, recorded_value
from promptclimb.agent.core.pools import POOLS, PoolTemplate, load_pool
from promptclimb.agent.ranking import metric_label
from promptclimb.agent.runs.store import (CONFIG, DECODING_CHANGED, HISTORY, SUMMARY, RunMismatch, RunStore,
                                          check_run_name, has_summary, run_argument)
from promptclimb.agent.names import GUARD_NOT_ASKED
from promptclimb.agent.search import (DEFAULT_SEARCH, LLM_EVENTS, RECORDED_BEFORE_IT_EXISTED, SELECTIONS, HillClimber,
                                      SearchConfig)

DEFAULTS = SearchConfig()
META_FINGERPRINT = "meta_prompt_sha256"  # config.json: {file: SHA-256} of the meta-prompts the run started with
EvaluatorFactory = Callable[..., object]


def default_evaluator_factory(**kwargs):
    """The real CLIP evaluator. It imports torch, so it is only ever called inside a search."""
    from promptclimb.evaluators import build_evaluator

    return build_evaluator(**kwargs)


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("promptclimb", "openai", "open_clip_torch", "torch", "jinja2", "tenacity", "llama_cpp_python"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def default_llm(base_url: str | None = None) -> str:
    """'local' unless an endpoint is configured (OPENAI_API_KEY, --base-url or OPENAI_BASE_URL)."""
    has_endpoint = os.environ.get("OPENAI_API_KEY") or base_url or os.environ.get("OPENAI_BASE_URL")
    return REMOTE_DEFAULT_MODEL if has_endpoint else LOCAL


@dataclass
class Plan:
    """What this search runs: a new run's settings (from the options) or a killed run's
    (from its config.json), with what this session may change. `soft` is set for
    --optimizer craft|cbbt (then `search`, `llm` and the pool are not used)."""

    search: SearchConfig
    evaluator: EvaluatorSettings
    llm: LLMSettings | None  # None for a soft-prompt search
    pool: list  # of agent.core.pools.PoolTemplate
    pool_setting: dict  # for config.json: name, size, templates
    meta_dir: str | None
    adapter_kinds: list[str]
    soft: SoftPromptConfig | None = None
    store: RunStore | None = None  # --resume: the run, opened (and locked) already
    moved_data: tuple[str, str] | None = None  # --resume: (the run's data folder, gone; where it is now)


def run_search(opts: dict, echo, evaluator_factory: EvaluatorFactory | None = None, *,
               aside: Callable[[str], None] | None = None, bars: bool = True,
               stopped: Callable[[str], None] | None = None) -> dict:
    """One search: `opts` holds every setting (`agent.options.resolve`, or the command's
    parsed options); progress goes to `echo`; returns the summary. `evaluator_factory`
    builds the evaluator from the run's evaluator settings (default: the CLIP one).
    `aside`: where the lines go that the commands print on stderr beside the progress (the
    local LLM server's start, each split's image features of the CLIP evaluator; None:
    stderr); `bars`: False draws no progress bar (encoding images, assembling the local
    model) - the API's `search(echo=...)` passes both (agent/api.py). `stopped`: where the
    lines go that say how to continue a search stopped by Ctrl-C or SIGTERM (None: `echo`; the
    command's stderr, which `| tee log` does not cut off as it does stdout)."""
    # a search refused before it keeps a run (a bad option, dataset, names set or meta-prompt
    # found once --runs-dir exists) leaves no folder it created
    created = [] if opts["resume"] is not None else missing_folders(opts["runs_dir"])
    try:
        return planned_search(opts, echo, evaluator_factory, aside, bars, stopped)
    except BaseException:
        remove_while_empty(created)
        raise


def planned_search(opts: dict, echo, evaluator_factory: EvaluatorFactory | None,
                   aside: Callable[[str], None] | None = None, bars: bool = True,
                   stopped: Callable[[str], None] | None = None) -> dict:
    """`run_search` once the folders it may create are noted."""
    if opts["resume"] is not None:
        plan = resumed_run(opts, echo)
    else:
        plan = new_run(opts, echo, clip=evaluator_factory is None)
    store = plan.store
    try:
        meta = checks_before_loading(plan, opts)
        if meta is not None and meta.stray:
            echo(f"note: --meta-prompt {plan.meta_dir}: {', '.join(meta.stray)} "
                 f"{'is' if len(meta.stray) == 1 else 'are'} none of the meta-prompts ({', '.join(META_FILES)}): "
                 "read only where another includes it; ours is used for each of those missing")
        if store is not None and meta is not None:
            say_meta_prompt_changes(store, meta, echo)
        if evaluator_factory is None and store is not None:  # a resumed run's recorded dataset, before it loads
            option_table.check_dataset_name(plan.evaluator.dataset)
        store = store or create_run_folder(plan, opts, meta)
        # the CLIP evaluator says what it encoded or reused where the search says it (a factory
        # given by the caller builds its own evaluator)
        factory = evaluator_factory or partial(default_evaluator_factory, echo=aside, bars=bars)
        with resume_hint_on_interrupt(store, opts.get("mlflow"), stopped or echo):
            with warnings_said(echo):
                try:
                    evaluator = load_evaluator(plan, store, opts["device"], factory, echo)
                except Exception:  # bad input the evaluator found (data, weights), or worse: no unfinished run is left
                    if plan.store is None and not store.events:
                        store.discard()
                    raise
            if plan.store is None:  # said once the folder is sure to stay (a Ctrl-C while loading names it too)
                echo(f"run folder: {store.run_dir}")
            # MLflow hears of the run only now that its folder stays: a search refused while loading
            # discards the folder, and an MLflow run opened before would be left behind empty and
            # FAILED (one more per rerun of a sweep cell), with a warning pointing at a folder gone.
            # A search stopped while loading resumes with --mlflow, which opens the MLflow run then.
            with experiment_tracking(store, opts.get("mlflow"), echo), warnings_said(echo), \
                    failure_recorded(store, opts):
                try:
                    if plan.soft is not None:
                        return soft_prompt_search(plan, store, evaluator, echo)
                    with llm_client(plan, opts, echo, aside, bars) as llm:
                        summary = climb(plan, store, evaluator, llm, meta, echo, opts.get("mlflow"))
                    return after_the_climb(plan, store, evaluator, summary, echo)
                except DataError as exc:  # images of the split that no longer decode
                    raise run_is_saved(exc, store, opts.get("mlflow")) from None
                except BrokenPipeError:  # `search ... | head`: the reader went away (141), the run did not fail
                    raise
                except OSError as exc:  # a full disk, a folder made read-only: the history holds every step
                    raise run_is_saved(PromptclimbError(os_error_message(exc)), store, opts.get("mlflow")) from None
    finally:
        if store is not None:
            store.close()


def new_run(opts: dict, echo, clip: bool = True) -> Plan:
    """A new run's settings from the options, each checked here (nothing slow yet). `clip`:
    the search runs on the CLIP evaluator, whose datasets are known (an evaluator factory of
    the caller's knows its own)."""
    if not opts["dataset"]:
        raise PromptclimbError("--dataset is required (or --resume RUN)")
    if opts["run_name"] is not None:
        check_run_name(opts["run_name"])
    # before any line is said (the LLM chosen, options unused): a file in the way of --runs-dir and
    # an unknown --dataset were refused after "No OPENAI_API_KEY ...: using the embedded local LLM"
    check_writable(opts["runs_dir"], "--runs-dir")
    if clip:
        option_table.check_dataset_name(opts["dataset"])
    adapter_kinds = check_kinds(opts["adapter_kinds"]) if opts["adapter_kinds"] else []
    soft = soft_prompt_config(opts)
    opts = say_unused(opts, soft.optimizer if soft else "llm", echo, opts["search"], opts["iterations"])
    if soft is not None:  # it trains its own output-side module (softsearch.MODULES), not --adapter's
        return Plan(DEFAULTS, evaluator_settings(opts), None, [], {}, None, [], soft)
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
        search=opts["search"], names_k=opts["names_k"], names_per_class=opts["names_per_class"], guard=opts["guard"],
        confirm=confirm_setting(opts["select"], opts["confirm"], echo),
    ).check()
    evaluator_args = evaluator_settings(opts, UNLABELED_IMAGES if search.metric == "balance" else 0)
    pool = load_pool(opts["dataset"], opts["pool"])
    pool_setting = {"name": opts["pool"] if opts["pool"] in POOLS else absolute(opts["pool"]),
                    "size": len(pool), "templates": [[p.template, p.source] for p in pool]}
    if not llm.local:  # the options are sound: said before the run folder and the evaluator, not after them
        check_reachable(llm, opts["base_url"] or os.environ.get("OPENAI_BASE_URL"))
    return Plan(search, evaluator_args, llm, pool, pool_setting, opts["meta_prompt"], adapter_kinds)


def evaluator_settings(opts: dict, unlabeled: int = 0) -> EvaluatorSettings:
    """What the evaluator factory is built from (recorded in config.json as evaluator_args);
    `unlabeled`: images drawn to be scored without labels (--metric balance)."""
    from promptclimb.evaluators.datasets import canonical_dataset_name  # numpy and PIL, not torch

    backbone, pretrained = default_backbone(opts["dataset"], opts["backbone"], opts["pretrained"], opts["weights"])
    # one spelling of the data (hf:owner/name: and hf:owner/name:default are hf:owner/name): its name draws the split
    return EvaluatorSettings(canonical_dataset_name(opts["dataset"]), opts["shots"], opts["seed"], backbone, pretrained,
                             absolute(opts["weights"]), absolute(opts["data_root"]), opts["precision"],
                             opts["image_column"], opts["label_column"], classnames_setting(opts["classnames"]),
                             unlabeled)


def classnames_setting(spec: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
    """--classnames as recorded: the names themselves (a tuple, from Python or TOML: a list
    in config.json) and a set name (a bare word) as given, a file as its absolute path (a
    resumed run or a sweep cell reads the same file from another folder)."""
    return absolute(spec) if names_file(spec) else spec


def names_file(spec) -> bool:
    """Whether --classnames `spec` is a file (not a set name, nor the names themselves)."""
    return isinstance(spec, str) and (os.sep in spec or "." in spec or Path(spec).expanduser().is_file())


def soft_prompt_config(opts: dict) -> SoftPromptConfig | None:
    """--optimizer craft|cbbt: the optimizer's settings; None for the LLM search (which
    refuses the soft-prompt budget, --queries)."""
    if opts["optimizer"] == "llm":
        refuse_soft_budget(opts)
        return None
    names = {f.name for f in fields(SoftPromptConfig)}
    return SoftPromptConfig(**{k: v for k, v in opts.items() if k in names and v is not None}).check()


def refuse_soft_budget(opts: dict) -> None:
    """--queries on the LLM search: refused when it starts and when it resumes alike."""
    if opts["queries"] is not None:
        raise PromptclimbError("--queries is the budget of --optimizer craft|cbbt; the LLM search is budgeted by "
                               "--restarts x --resets x --iterations, --max-calls and --max-tokens")


def say_unused(opts: dict, optimizer: str, echo, search: str = "both", iterations: int = DEFAULTS.iterations) -> dict:
    """The options given that `optimizer` does not read (the LLM loop's for craft and cbbt,
    the soft-prompt knobs for the LLM search; those of the kind of turn `--search search`
    never takes in `iterations` turns a reset), named in one warning line each, and `opts`
    with them at their defaults: ignored alike when a run starts and when it resumes (a craft
    run records no LLM settings for --resume to compare them with)."""
    unused = [o for o in option_table.unused_by(optimizer) if given(opts, o.name)]
    flags = ", ".join(o.flag for o in unused)
    if unused and optimizer == "llm":
        echo(f"warning: the LLM search (--optimizer llm) does not use {flags} (craft and cbbt options): ignored")
    elif unused:
        echo(f"warning: --optimizer {optimizer} does not use {flags} (options of the LLM search): ignored")
    if optimizer == "llm":
        turn_only = [o for o in option_table.unused_by_search(search, iterations) if given(opts, o.name)]
        if turn_only:
            never = "names turn" if "names" not in option_table.turns_taken(search, iterations) else "template turn"
            how = f"--search {search}" + (" with --iterations 1" if search == "both" else "")
            echo(f"warning: {how} takes no {never}, so it does not use "
                 f"{', '.join(o.flag for o in turn_only)}: ignored")
        unused += turn_only
    return not_given(opts, *(o.name for o in unused))


def confirm_setting(select: str, confirm: str | None, echo=None) -> str:
    """--confirm as the run holds and records it: under --select train+val nothing is held
    out, so off (a --confirm val given is said in one warning line); else as given, val by
    default."""
    if select != "train+val":
        return confirm or DEFAULTS.confirm
    if confirm == "val" and echo is not None:
        echo("warning: --confirm val holds nothing back under --select train+val (val is a selection split): "
             "the run confirms nothing, as --confirm off, and records off")
    return "off"


def choose_llm(opts: dict, echo) -> tuple[LLMSettings, dict]:
    """A new run's LLM: its settings for config.json, and the sampling defaults that come
    with it (the local LLM has its own)."""
    check_endpoints(opts, local=opts["llm_name"] == LOCAL)
    endpoint = opts["base_url"] or os.environ.get("OPENAI_BASE_URL")
    # An endpoint that is a `promptclimb llm serve` server (it says so at /models) is the local LLM.
    served_local = local_model_served_at(endpoint) if endpoint and not opts["llm_name"] else None
    llm_name = opts["llm_name"] or (LOCAL if served_local else default_llm(endpoint))
    if served_local:
        echo(f"Using the local LLM served at {without_secrets(endpoint)} ({served_local}).")
    elif opts["llm_name"] is None and llm_name == LOCAL:
        echo("No OPENAI_API_KEY or OPENAI_BASE_URL set: using the embedded local LLM (--llm local).")
    local = llm_name == LOCAL and not served_local  # the embedded server, started by this command
    if opts["llm_model"] and not local:  # it was recorded, as if it had chosen the model
        echo(f"warning: --llm-model is the embedded LLM's model file; the endpoint "
             f"{without_secrets(endpoint) or '(OPENAI_API_KEY)'} serves its own model: ignored")
    model_file = str(local_llm.check_model_file(opts["llm_model"])) if local and opts["llm_model"] else None
    # The endpoint is recorded without userinfo; the key never is.
    served = local_llm.local_model_name(model_file) if local else served_local
    timeout = opts["timeout"]
    if timeout is None:  # a local server would go on computing an abandoned request
        timeout = local_llm.REQUEST_TIMEOUT_S if served else LLMSettings.timeout
    settings = LLMSettings(llm_name, local, model_file, timeout, opts["max_tries"],
                           without_secrets(endpoint), served, request_model=served or llm_name,
                           secrets_left_out=without_secrets(endpoint) != endpoint, no_cache=bool(opts["no_cache"]))
    return settings, (local_llm.LOCAL_SAMPLING if served else {})


def check_endpoints(opts: dict, local: bool, env_url: bool = True) -> None:
    """--base-url, and $OPENAI_BASE_URL where it is asked (`env_url`; never by the embedded
    --llm local), as http(s) URLs, and $OPENAI_API_KEY as a header can carry it, before
    anything is made (`check_endpoint_url`, `check_api_key`)."""
    check_endpoint_url(opts["base_url"], "--base-url")
    if not local:
        if env_url:
            check_endpoint_url(os.environ.get("OPENAI_BASE_URL"), "OPENAI_BASE_URL")
        check_api_key(os.environ.get("OPENAI_API_KEY"))


def lanes_for_the_llm(llm: LLMSettings, parallel: int, restarts: int, echo) -> int:
    """--parallel, or 1 for the local LLM (started here, or a `promptclimb llm serve`; why:
    agent/llm/local.py `ONE_AT_A_TIME`). The result does not depend on --parallel; the run
    records the lanes it ran with."""
    if parallel > 1 and restarts > 1 and llm.served_model:
        echo(f"--parallel {parallel}: {local_llm.ONE_AT_A_TIME}, so the restarts run one "
             "after another (faster with it, and the same result)")
        return 1
    return parallel


# --resume: an option given again whose scope is SESSION (agent/options.py) only changes how
# this session runs and is applied; a BUDGET cap is applied to the rest of the run while it
# has not ended; every other option would change what the run does (the loop's shape too:
# the history's order depends on it), so given with a value other than the run's, it is refused.
LOOP_SHAPE = ("restarts", "resets", "iterations", "parallel")  # --parallel K: restarts take turns in K lanes


def resumed_evaluator(saved: dict) -> EvaluatorSettings:
    """A resumed run's evaluator settings, with the start names it recorded when its evaluator
    was built (`start_names_as_built`)."""
    from promptclimb.agent.runs.reading import start_names_as_built

    settings = EvaluatorSettings.from_config(saved["evaluator_args"])
    start = start_names_as_built(saved)
    return replace(settings, classnames=start) if start else settings


def check_recorded(saved: dict, path: Path) -> None:
    """PromptclimbError in one line when a hand-edited config.json records a setting as no run
    does (iterations "3" or 3.5, shots "x", "search": null, a pool entry that is not a
    [template, source] pair): a resume would pass it on as it is, to a TypeError wherever the
    search first used it."""
    from promptclimb.agent.runs.reading import check_config

    check_config(saved, path)
    needed = ("search", "llm", "pool") if saved.get("optimizer", "llm") == "llm" else ("soft_prompt",)
    missing = [key for key in ("evaluator_args", *needed) if not isinstance(saved.get(key), dict)]
    if missing:
        raise PromptclimbError(f"{path} is damaged ({missing[0]!r} is missing or null)")
    if not isinstance(saved.get(META_FINGERPRINT, {}), dict):  # absent: a run from before it was recorded
        raise PromptclimbError(f"{path} is damaged ({META_FINGERPRINT!r} is not an object)")
    option_table.check_recorded(saved, path)
    # an LLM run's pool is resumed from its templates; a soft-prompt run needs none
    templates = (saved.get("pool") or {}).get("templates", [] if "pool" not in needed else None)
    if not isinstance(templates, list) or not all(
            isinstance(t, list) and len(t) == 2 and all(isinstance(part, str) for part in t) for t in templates):
        raise PromptclimbError(f"{path} is damaged (pool.templates: expected a list of [template, source] pairs)")


def resumed_run(opts: dict, echo) -> Plan:
    """A killed run's settings from its config.json; its folder is opened (and locked)."""
    from promptclimb.agent.runs.reading import find_run

    run_dir = find_run(opts["resume"], Path(opts["runs_dir"]))
    check_writable(run_dir, "the run folder")
    store = RunStore.resume(run_dir)
    try:
        check_recorded(store.config, run_dir / CONFIG)
        moved = moved_data(opts, store)
        saved = store.config if moved is None else \
            {**store.config, "evaluator_args": {**store.config["evaluator_args"], "data_root": moved[1]}}
        meta_moved = moved_meta_prompt(opts, store)
        if meta_moved is not None:
            saved = {**saved, "meta_prompt_dir": meta_moved[1]}
        if not store.stored and has_summary(run_dir):
            # a finished run whose history is gone: its replay would be a new search, whose
            # summary (other LLM answers, with --no-cache or another cache) would replace this one
            raise PromptclimbError(f"{run_dir} has a {SUMMARY} but no events in its {HISTORY}: there is nothing to "
                                   f"continue from (read it with: {shell_command('show', run_argument(run_dir))}), "
                                   "or start a new run")
        adapter_kinds = check_kinds(opts["adapter_kinds"]) if opts["adapter_kinds"] else saved.get("adapter_kinds") or []
        optimizer = saved.get("optimizer", "llm")
        if optimizer == "llm":
            refuse_soft_budget(opts)
        # as when the run started (its --search as recorded: given again, a change is refused below)
        recorded = saved.get("search") or {}
        opts = say_unused(opts, optimizer, echo, recorded.get("search", DEFAULT_SEARCH),
                          opts["iterations"] if given(opts, "iterations") else recorded.get("iterations", DEFAULTS.iterations))
        if optimizer != "llm":
            refuse_changed_settings(opts, saved)
            echo(f"resuming {run_dir} ({len(store.stored)} events recorded)")
            return Plan(DEFAULTS, resumed_evaluator(saved), None, [], {}, None,
                        adapter_kinds, SoftPromptConfig(**saved["soft_prompt"]).check(), store=store, moved_data=moved)
        llm = LLMSettings.from_config(saved["llm"])
        check_endpoints(opts, local=llm.local, env_url=llm.secrets_left_out)  # else it asks the recorded one
        if llm.local and not opts["base_url"] and (opts["llm_model"] or llm.llm_model_file):
            # the GGUF is hashed for the cache's key before any answer: a missing one is said now
            try:
                checked = str(local_llm.check_model_file(opts["llm_model"] or llm.llm_model_file))
            except PromptclimbError as exc:
                raise PromptclimbError(f"{exc}" + ("" if opts["llm_model"] else " (the run's, as its config.json "
                                                   "records it: give the file again with --llm-model FILE)")) from None
            if opts["llm_model"]:
                opts = {**opts, "llm_model": checked}
                llm = same_model_file(llm, checked, store, echo)
        if given(opts, "parallel"):  # the command that started it, again: its --parallel as that one ran it
            opts = {**opts, "parallel": lanes_for_the_llm(llm, opts["parallel"], saved["search"]["restarts"], echo)}
        search = SearchConfig(**{**RECORDED_BEFORE_IT_EXISTED, **{f.name: saved["search"][f.name]
                                                                 for f in fields(SearchConfig) if f.name in saved["search"]}})
        refuse_changed_settings(confirm_as_recorded(opts, search, echo), saved)
        search = apply_budget_caps(opts, search.check(), store, echo)
        llm = replace(llm, **{k: opts[k] for k in ("timeout", "max_tries", "no_cache") if given(opts, k)})
        refuse_an_endpoint_without_its_secret(llm, opts, store)
        pool_setting = saved["pool"]
        pool = [PoolTemplate(t, source) for t, source in pool_setting["templates"]]
        echo(f"resuming {run_dir} ({len(store.stored)} events recorded)")
        if meta_moved is not None:
            store.update_config(meta_prompt_dir=meta_moved[1])
            echo(f"{run_dir.name}'s meta-prompt folder {meta_moved[0]} is gone: reading the same files from "
                 f"{meta_moved[1]} (recorded in its {CONFIG})")
        return Plan(search, resumed_evaluator(saved), llm, pool, pool_setting,
                    saved.get("meta_prompt_dir"), adapter_kinds, store=store, moved_data=moved)
    except BaseException:
        store.close()
        raise


def same_model_file(llm: LLMSettings, given_file: str, store: RunStore, echo) -> LLMSettings:
    """`--resume RUN --llm-model FILE` of an embedded-LLM run: FILE must hold the model the run
    asked (the same SHA-256 as the file it recorded, or the embedded one where it recorded
    none); a moved copy is recorded as the run's file. Another model was served unsaid, while
    config.json and `show` named the first."""
    recorded = llm.llm_model_file
    if recorded and Path(recorded).resolve() == Path(given_file).resolve():
        return llm
    theirs = local_llm.DEFAULT_MODEL.sha256 if not recorded else \
        local_llm.model_sha256(recorded) if Path(recorded).is_file() else None
    if theirs is not None and local_llm.model_sha256(given_file) != theirs:
        if any(e.get("event") in LLM_EVENTS for e in store.stored):
            raise PromptclimbError(f"--llm-model {given_file} is another model than the one {store.run_dir.name} "
                                   f"asked ({recorded or 'the embedded one'}): a run asks one model; drop "
                                   "--llm-model, or start a new run")
        # nothing was asked of the first (a file the server could not load): the run takes the other
        name = local_llm.local_model_name(given_file)
        store.update_config(llm={**store.config["llm"], "llm_model_file": given_file, "served_model": name,
                                 "request_model": name})
        echo(f"the run asks {given_file} (it had asked nothing of {recorded or 'the embedded model'}); recorded in "
             "its config.json")
        return replace(llm, llm_model_file=given_file, served_model=name, request_model=name)
    if recorded is None:
        return llm  # the embedded model's own file, given by its path
    store.update_config(llm={**store.config["llm"], "llm_model_file": given_file})
    echo(f"the run's model file is now {given_file} (it was {recorded}); recorded in its config.json")
    return replace(llm, llm_model_file=given_file)


def moved_data(opts: dict, store: RunStore) -> tuple[str, str] | None:
    """(the run's data folder, where it is now) for a run whose data folder is gone (moved)
    and `--resume RUN --data-root DIR` says where; None where the folder is still there
    (another --data-root is then refused as any change). It is recorded once the evaluator
    has read the same images there (`load_evaluator`). A folder of class folders (and a
    Hugging Face save) keeps its name: its split is drawn from that name, so a renamed one
    would score the rest of the run on another split. Without --data-root, the refusal says
    so (it was "data folder ... does not exist", before anything said how to go on)."""
    args = store.config["evaluator_args"]
    recorded = args.get("data_root")
    if not recorded or Path(recorded).exists():
        return None
    run = run_argument(store.run_dir)
    if not given(opts, "data_root"):
        from promptclimb.agent.adapt import check_run_data  # the one way a gone data folder is said

        check_run_data(store.run_dir, store.config, None, "search", "--resume", run)
    moved = absolute(opts["data_root"])
    if Path(moved).name != Path(recorded).name and args.get("dataset") in SPLIT_BY_FOLDER_NAME:
        raise PromptclimbError(f"--data-root {opts['data_root']}: {store.run_dir.name}'s data folder was named "
                               f"{Path(recorded).name!r} ({recorded}), and its split is drawn from that name: "
                               "give the folder its name back, or start a new run")
    return None if moved == recorded else (recorded, moved)


def moved_meta_prompt(opts: dict, store: RunStore) -> tuple[str, str] | None:
    """(the run's --meta-prompt folder, where it is now) for a run whose folder is gone (a
    project folder renamed) and `--resume RUN --meta-prompt DIR` gives one holding the same
    files (by the texts the run recorded, `meta_prompt_sha256`); None where the run's folder
    is still there or none is given (a change is then refused as any). Another DIR was
    refused as a change: the run could go on only from its old absolute path."""
    recorded = store.config.get("meta_prompt_dir")
    if not recorded or Path(recorded).is_dir() or not given(opts, "meta_prompt") \
            or not store.config.get(META_FINGERPRINT):  # a run from before its texts were recorded: nothing to compare
        return None
    here = absolute(opts["meta_prompt"])
    changed = MetaPrompt(here).changed_since(store.config.get(META_FINGERPRINT))
    if changed:
        differ = f"{', '.join(p.name for p in changed)} {'differs' if len(changed) == 1 else 'differ'}"
        raise PromptclimbError(f"--meta-prompt {opts['meta_prompt']}: {store.run_dir.name}'s meta-prompt folder "
                               f"{recorded} is gone, and this one's files are not those it started with ({differ}): "
                               "give the folder with the run's files, or start a new run")
    return None if here == recorded else (recorded, here)


# the datasets whose split is drawn from their folder's name (evaluators/datasets.py, hf.py)
SPLIT_BY_FOLDER_NAME = ("imagefolder", "hf")


def same_data_moved(info: dict, recorded: dict, moved: tuple[str, str]) -> bool:
    """Whether an evaluator's `info` is the `recorded` one but for the data folder's place: a
    folder's identity is its path, its files and how they are decoded."""
    from promptclimb.agent.runs.reading import without_root

    old, new = moved
    identity, now = ((d.get("dataset") or {}).get("identity") for d in (recorded, info))
    if not isinstance(identity, str) or not isinstance(now, str):
        return info == recorded
    return without_root(identity, old) == without_root(now, new) and \
        {**info, "dataset": {**info["dataset"], "identity": identity}} == recorded


def refuse_an_endpoint_without_its_secret(llm: LLMSettings, opts: dict, store: RunStore) -> None:
    """A run whose endpoint URL held a password or key (never recorded) cannot ask its LLM
    again from the recorded URL: said before anything loads, rather than after the
    endpoint's refusals and retries. A run that has ended only replays its answers."""
    if not llm.secrets_left_out or opts["base_url"] or os.environ.get("OPENAI_BASE_URL") \
            or any(e.get("event") in ("stop", "final") for e in store.stored):
        return
    raise PromptclimbError(f"{store.run_dir.name}'s LLM endpoint had a password or key in its URL, which a run never "
                           f"records ({llm.base_url}): give the URL again with --base-url (or OPENAI_BASE_URL)")


def confirm_as_recorded(opts: dict, search: SearchConfig, echo) -> dict:
    """`opts` with a --confirm given again left out of the comparison when the run holds it so
    (`confirm_setting`: --select train+val --confirm val runs, and now records, off; a run
    recorded before says val, or nothing, and ran the same)."""
    if opts["confirm"] is None:
        return opts
    select = opts["select"] if given(opts, "select") else search.select
    if confirm_setting(select, opts["confirm"], echo) == confirm_setting(search.select, search.confirm):
        return not_given(opts, "confirm")
    return opts


def refuse_changed_settings(opts: dict, saved: dict) -> None:
    """PromptclimbError listing the options given with --resume that differ from the run's."""
    changed = {o: why for o in option_table.SEARCH_OPTIONS if o.recorded and given(opts, o.name)
               if (why := setting_change(o, opts[o.name], saved))}
    if changed:
        files = opts.get(option_table.FROM_FILE) or {}  # a value a --config file set is looked for there
        listed = ", ".join(f"{o.flag} {opts[o.name]} ({why}" + (f"; set by --config {files[o.name]}" if o.name in files
                                                                 else "") + ")" for o, why in changed.items())
        shape = {o.name for o in changed} & set(LOOP_SHAPE)
        why = (" (the number of LLM turns is fixed when a run starts: the history's order depends on it)"
               if shape - {"parallel"} else " (the history's order of the restarts depends on it)" if shape else "")
        raise option_table.SettingsChanged(
            f"--resume continues a run with the settings it started with; these options would change them: "
            f"{listed}{why}. Drop them, or start a new run without --resume.")


def apply_budget_caps(opts: dict, search: SearchConfig, store: RunStore, echo) -> SearchConfig:
    """--max-calls / --max-tokens with --resume: the new cap holds for the whole run (answers
    already recorded count) and is recorded in config.json. Refused when the run has ended,
    or has already used more than the cap (its replay would stop short of its own history)."""
    caps = {o.name: opts[o.name] for o in option_table.SEARCH_OPTIONS if o.scope == BUDGET
            and opts[o.name] is not None and opts[o.name] != getattr(search, o.name)}
    if not caps:
        return search
    flags = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in caps.items())
    # A names turn cut by the budget ended the run even where a kill came before its stop event:
    # under a larger cap the replay would ask the guard where the history says it could not.
    ended = [e for e in store.stored if e.get("event") in ("stop", "final") or e.get("reason") == GUARD_NOT_ASKED]
    if ended:
        what = "a names turn cut by the budget" if ended[0]["event"] == "name_reject" else f"{ended[0]['event']} event"
        raise PromptclimbError(f"{store.run_dir.name} has already ended ({what} in its history): "
                               f"{flags} cannot change it; start a new run without --resume")
    answers = [e for e in store.stored if e.get("event") in LLM_EVENTS]  # template, names and guard answers
    used = {"max_calls": len(answers),
            "max_tokens": sum(sum((e.get("usage") or {}).get(k) or 0 for k in ("prompt_tokens", "completion_tokens"))
                              for e in answers)}
    for name, cap in caps.items():
        if cap < used[name]:
            what = "LLM answers" if name == "max_calls" else "LLM tokens"
            raise PromptclimbError(f"--{name.replace('_', '-')} {cap} is below the {used[name]} {what} "
                                   f"{store.run_dir.name} has already used; give at least {used[name]}")
    was = ", ".join(f"{name.replace('_', '-')} {getattr(search, name)}" if getattr(search, name) is not None
                    else f"no {name.replace('_', '-')} cap" for name in caps)
    search = replace(search, **caps).check()
    store.update_config(search=asdict(search))
    echo(f"applying {flags} to this run (it had {was}); recorded in its config.json")
    return search


def setting_change(option: option_table.Option, value, saved: dict) -> str | None:
    """How `value`, given with --resume, differs from what the run recorded for `option`
    ("the run's: ..."), or None where it is the same. A --classnames FILE is the same start
    when it names what the run started from, read now against the run's labels: a copy of
    the file elsewhere is the same start, the file edited since is another."""
    from promptclimb.agent.core.classnames import read_classnames
    from promptclimb.agent.runs.reading import run_labels, run_start_names

    recorded = recorded_setting(saved, option)
    if option.name == "meta_prompt" and recorded is None:  # the run read ours: given, it is the same folder
        ours = prompts_dir() / "meta"
        return None if same_setting(value, str(ours)) else f"the run's: ours ({ours})"
    if option.name == "dataset":
        from promptclimb.evaluators.datasets import same_dataset_name

        if same_dataset_name(value, recorded):  # hf:owner/name:default given for a run of hf:owner/name: its data
            return None
    started, labels = run_start_names(saved), run_labels(saved)
    if option.name != "classnames" or not names_file(value) or not (started and labels):
        return None if same_setting(value, recorded) else f"the run's: {shown_setting(recorded)}"
    try:
        now = read_classnames(value, labels)
    except PromptclimbError as exc:
        return f"the run's: {shown_setting(recorded)}; {exc}"
    moved = [c for c, (a, b) in enumerate(zip(now, started)) if a != b]
    if not moved:
        return None
    c = moved[0]
    return (f"it now names class {c + 1} {now[c]!r} where the run started from {started[c]!r}"
            f"{f' ({len(moved) - 1} more)' if len(moved) > 1 else ''}")


def given(opts: dict, name: str) -> bool:
    """Whether option `name` was given: on the command line, by --config or as a keyword of
    search() (`option_table.GIVEN`); in settings that do not say (a sweep's cells), where it
    is not at its default."""
    if option_table.GIVEN in opts:
        return name in opts[option_table.GIVEN]
    default = option_table.BY_NAME[name].default
    return opts.get(name, default) != default


def not_given(opts: dict, *names: str) -> dict:
    """`opts` with options `names` as if they had not been given: at their defaults."""
    left = {**opts, **{name: option_table.BY_NAME[name].default for name in names}}
    if option_table.GIVEN in opts:
        left[option_table.GIVEN] = opts[option_table.GIVEN] - set(names)
    return left


def recorded_setting(saved: dict, option: option_table.Option):
    """What a run's config.json records for `option`, as the run took it: a run started
    without --classnames recorded none and started from the published names; a setting a
    run does not record (an LLM run's optimizer, one older than the option) is what its
    resume runs with: the default (`RECORDED_BEFORE_IT_EXISTED` for the search's)."""
    value = recorded_value(saved, option)
    if value is not None:
        return value
    if option.name == "classnames":
        return PUBLISHED
    if option.recorded.startswith("search.") and option.recorded.split(".", 1)[1] in RECORDED_BEFORE_IT_EXISTED:
        return RECORDED_BEFORE_IT_EXISTED[option.recorded.split(".", 1)[1]]
    return option.default


def shown_setting(value) -> str:
    """A recorded setting as an error line says it: nothing recorded as "none", not Python's None."""
    return "none" if value is None else str(value)


def same_setting(mine, theirs) -> bool:
    """Equal, or two spellings of the same path (or the same names: a tuple given, the list
    config.json holds)."""
    if mine == theirs:
        return True
    if isinstance(mine, tuple) and isinstance(theirs, list):
        return list(mine) == theirs
    if isinstance(mine, str) and isinstance(theirs, str):
        return Path(mine).expanduser().resolve() == Path(theirs).expanduser().resolve()
    return False


def checks_before_loading(plan: Plan, opts: dict) -> MetaPrompt | None:
    """What can fail without the model fails now: the device, the cache folder (a new run's
    --runs-dir is checked by `new_run`, before anything is said), and the meta-prompts
    (rendered once, with a stand-in task)."""
    if opts["device"]:
        check_device_name(opts["device"])  # by name, before torch is imported
        from promptclimb.evaluators.backbones import check_device  # imports torch: the model loads next anyway

        check_device(opts["device"])
    check_writable(cache_home(), "the cache folder, PROMPTCLIMB_HOME")
    if plan.soft is not None:
        return None
    try:
        meta = MetaPrompt(plan.meta_dir)
    except PromptclimbError as exc:
        if opts["resume"] is None:
            raise
        # not given this time: say whose folder it is, and that the resume reads it again
        raise PromptclimbError(f"{exc} (the run's --meta-prompt, as it started; a resume reads it again: "
                               "put it back, or give where it is now with --meta-prompt DIR)") from None
    render_meta_prompts_once(meta, plan.search, every_branch=opts["resume"] is None)
    return meta


def say_meta_prompt_changes(store: RunStore, meta: MetaPrompt, echo) -> None:
    """A resume whose meta-prompt files differ from those the run started with says which, in
    one warning line, and goes on: editing a meta-prompt between sessions is a fair experiment,
    and the LLM turns still to come are asked with the new text. A file whose text is part of
    a turn already recorded is refused before anything is asked: that turn's request cannot
    be replayed with the new text (it would be sent to the LLM, and its answer end the resume
    in a `RunMismatch`); the refusal names the other changed files too, so that the resume
    after restoring the first ones does not come as a surprise."""
    changed = meta.changed_since(store.config.get(META_FINGERPRINT))
    recorded = files_recorded(store.stored)
    replayed = [path for path in changed if path.name in recorded]
    unused = [path for path in changed if path.name not in recorded]
    if replayed:
        also = (f"; also changed, in no recorded turn (the turns still to come would use the new text): "
                f"{', '.join(map(str, unused))}" if unused else "")
        raise PromptclimbError(
            f"cannot resume {store.run_dir.name}: the meta-prompt changed since this run started: "
            f"{', '.join(map(str, replayed))}; the LLM turns recorded in its history were asked with the old text, "
            f"and a resume must replay them: restore the file (e.g. from git) or start a new run without --resume{also}")
    if changed:
        echo(f"warning: the meta-prompt changed since this run started: {', '.join(map(str, changed))}; "
             "the LLM turns still to come use the new text")
        # the run's text from here on: the turns this session records are asked with it, and the
        # next resume replays them (it refused them as asked with the old text, and so did the old text)
        fingerprint = store.config[META_FINGERPRINT]
        store.update_config(**{META_FINGERPRINT: {**fingerprint, **meta.fingerprint(
            tuple(name for name in fingerprint if meta.path(name) in changed))}})


def render_meta_prompts_once(meta: MetaPrompt, search: SearchConfig, every_branch: bool = True) -> None:
    """Every meta-prompt rendered with stand-in values shaped as HillClimber's, twice: once
    with every list empty, once with every kind of entry (each verdict, refusals of each kind,
    hidden classes, a task of many classes), so that every branch of a template is rendered.
    A template error in a --meta-prompt folder is then reported before the model loads and the
    pool is scored, not at the turn that first reaches its branch, where a resume after the fix
    was refused as a changed meta-prompt (tests/test_search.py checks that ours pass). A
    resume (not `every_branch`) checks the empty lists only, as runs started before were
    checked: a branch their data never reaches (over 40 classes) must not refuse them now."""
    n = search.proposals + search.spare
    label = metric_label(search.metric, SELECTIONS[search.select])
    row = {"template": "a photo of a {}.", "value": 0.5}
    results = [{**row, "previous_best": 0.5, "verdict": verdict} for verdict in ("better", "worse", "equal")]
    held = {**row, "value": 0.6, "previous_best": 0.5, "verdict": "held", "why": "val 40.0% vs 50.0%"}
    rejected = [{"line": "a photo", "reason": "no {} placeholder", "duplicate": False, "refused_before": False},
                {"line": "a {}.", "reason": "duplicate", "duplicate": True, "refused_before": True}]
    cls = {"index": 0, "name": "first class", "start": "first", "accuracy": 0.5, "prob": 0.5, "count": 1,
           "mistaken_for": [{"name": "second class", "count": 1}]}
    scored = [{"class": "first class", "name": name, "value": 0.5, "previous_best": 0.5, "verdict": verdict,
               "kept": kept} for name, verdict, kept in (("one", "better", True), ("uno", "equal", True),
                                                          ("eins", "worse", False))]
    refused = [{"class": "first class", "name": "two", "reason": "repeat", "repeat": True, "other_class": False},
               {"class": "first class", "name": "second class", "reason": "another class's name", "repeat": False,
                "other_class": True}]
    many = tuple(f"class {i}" for i in range(41))  # past 40 classes the system message lists none
    for full in (False, True) if every_branch else (False,):
        task = Task("stand-in", "images", many if full else ("first class", "second class"))
        meta.system(task, n)
        meta.first_turn(task, n, label, [row], [row] if full else [])
        meta.feedback_turn(task, n, label, [*results, held] if full else [], rejected if full else [], row, [row],
                           [row] if full else [])
        if search.search != "template":
            k, per_class = search.names_k, search.names_per_class
            meta.names_system(task, per_class, k)
            meta.names_turn(task, per_class, label, row["template"], 0.5,
                            [cls, {**cls, "name": "second class", "start": "second class", "mistaken_for": []}],
                            ["first class"], scored if full else [], refused if full else [], hidden=1 if full else 0)
            meta.names_judge(task, list(task.classnames), "one")


def new_run_store(runs_dir: str | Path, run_name: str | None, dataset: str, shots: int, config: dict) -> RunStore:
    """A new run's folder, with its config.json: --name as given, else
    `<time>-<dataset>-<shots>shot`, or that with -2, -3, ... when another search took it."""
    if run_name:
        return RunStore.create(Path(runs_dir) / check_run_name(run_name), {"run_id": run_name, **config})
    dataset = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset)  # hf:owner/name names no folder
    return RunStore.create_numbered(runs_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-{dataset}-{shots}shot", config)


def create_run_folder(plan: Plan, opts: dict, meta: MetaPrompt | None) -> RunStore:
    """The run folder, before the model loads: a search killed while loading resumes by name.
    (The evaluator's description joins config.json once the evaluator is built.) `meta`:
    the meta-prompts of an LLM search, whose files' hashes it records."""
    if plan.soft is not None:
        config = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "optimizer": plan.soft.optimizer,
                  "soft_prompt": asdict(plan.soft), "evaluator_args": plan.evaluator.kwargs(),
                  "adapter_kinds": plan.adapter_kinds, "versions": package_versions()}
        return new_run_store(opts["runs_dir"], opts["run_name"], plan.evaluator.dataset, plan.evaluator.shots, config)
    config = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "search": asdict(plan.search),
        "evaluator_args": plan.evaluator.kwargs(),
        "llm": asdict(plan.llm),
        "pool": plan.pool_setting,
        "meta_prompt_dir": str(Path(plan.meta_dir).resolve()) if plan.meta_dir else None,
        META_FINGERPRINT: meta.fingerprint(files_rendered(plan.search.search)),
        "adapter_kinds": plan.adapter_kinds,
        "versions": package_versions(),
    }
    return new_run_store(opts["runs_dir"], opts["run_name"], plan.evaluator.dataset, plan.evaluator.shots, config)


def resume_command(run_dir: Path, tracking_uri: str | None) -> tuple[str, str | None]:
    """The command that continues this run, and a note to say with it (or None). A resumed
    search tracks to MLflow only when given --mlflow again (it is not recorded), so the
    command of a tracked run carries `--mlflow STORE`, the store it tracked to, absolute
    (`tracked_store`: a bare --mlflow or a relative sqlite path, run from another folder, is
    another database): then the resumed search continues the same MLflow run from anywhere.
    Never a secret: a password or key in the URI is left out, and the note asks for it again."""
    if tracking_uri is None:
        return shell_command("search", "--resume", run_dir), None
    from promptclimb.agent.tracking import tracked_store

    shown = tracked_store(tracking_uri)
    command = shell_command("search", "--resume", run_dir, "--mlflow", *([shown] if shown else []))
    note = None if without_secrets(tracking_uri) == tracking_uri else \
        "the --mlflow URI had a password or key, left out of that command: give the URI with it again"
    return command, note


@contextmanager
def resume_hint_on_interrupt(store: RunStore, tracking_uri: str | None, echo) -> Iterator[None]:
    """Ctrl-C, or SIGTERM (made to unwind the same way, exit status 143): say how to go on
    (`resume_command`)."""
    restore = sigterm_raises_systemexit()
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        command, note = resume_command(store.run_dir, tracking_uri)
        echo(f"interrupted; continue with: {command}")
        if note:
            echo(f"note: {note}")
        raise
    finally:
        restore()


@contextmanager
def experiment_tracking(store: RunStore, tracking_uri: str | None, echo) -> Iterator[None]:
    """--mlflow: the run mirrored to MLflow as it is written (agent/tracking.py); it never
    fails the search. A resumed run continues its MLflow run. A search that fails ends it
    FAILED, one stopped KILLED (a resume continues either)."""
    if tracking_uri is None:
        yield
        return
    from promptclimb.agent.tracking import Tracker

    tracker = Tracker.attach(store, tracking_uri or None, echo)
    failed = False
    try:
        yield
    except Exception:  # an LLM that failed for good, data that no longer reads: FAILED, not KILLED as a Ctrl-C
        failed = True  # (KeyboardInterrupt, SystemExit: Ctrl-C, SIGTERM, stay KILLED where the run did not end)
        raise
    finally:
        tracker.finish(failed)


@contextmanager
def failure_recorded(store: RunStore, opts: dict) -> Iterator[None]:
    """A search that ends in an error (an LLM that failed for good, data that no longer reads,
    a full disk) writes it as the history's last event (`RunStore.record_failure`), so that
    `runs`, `show` and `mlflow-sync` tell it from a run killed (Ctrl-C, SIGTERM, SIGKILL: no
    such event), as the live MLflow run does (`experiment_tracking`). Not a resume refused
    for what changed since (`RunMismatch`): the run is as it was. Never hides the error."""
    try:
        yield
    except (RunMismatch, BrokenPipeError):  # (the reader of the output went away: stopped, as by a Ctrl-C)
        raise
    except Exception as exc:
        with suppress(Exception):  # the same full disk, a folder gone: the error itself is what to say
            store.record_failure(failure_line(exc, opts))
        raise


def failure_line(exc: Exception, opts: dict) -> str:
    """The first line of the error's message (the next ones say how to continue: the
    command, which names the run folder the event is in), without a key or password: those
    the search was given (OPENAI_API_KEY, and in --base-url, OPENAI_BASE_URL or --mlflow) and
    anything shaped like a key, as the LLM client's messages are made safe (`redact`)."""
    text = (str(exc).strip().splitlines() or [""])[0].strip()
    if not isinstance(exc, PromptclimbError):  # a bug's message ("'best'") says little without its kind
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    secrets = (os.environ.get("OPENAI_API_KEY"),
               *(s for url in (opts.get("base_url"), os.environ.get("OPENAI_BASE_URL"), opts.get("mlflow"))
                 for s in url_secrets(url)))
    return redact(text, tuple(s for s in secrets if s))


@contextmanager
def warnings_said(echo) -> Iterator[None]:
    """Warnings raised during the search (images skipped as unreadable when a split is first
    encoded, a library's) as one `warning:` line each through the search's own echo: where
    it runs without the command line (a sweep's cell, whose echo is its search.log; the API)
    too. Every command does the same on stderr (agent/cli/errors.py, `user_errors`)."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *args, **kwargs: echo(f"warning: {message}")
        yield


def load_evaluator(plan: Plan, store: RunStore, device: str | None, factory: EvaluatorFactory, echo):
    """The CLIP evaluator (the slow step); its description is recorded in config.json, or,
    on resume, compared with the one recorded."""
    from promptclimb.agent.runs.reading import check_class_order, images_drawn_otherwise, splits_drawn_otherwise

    with warnings.catch_warnings(record=True) as caught:  # counted skips, random weights: said plainly
        warnings.simplefilter("always")
        evaluator = factory(**plan.evaluator.kwargs(), device=device)
    for w in caught:
        echo(f"warning: {w.message}")
    info = json.loads(json.dumps(evaluator.info()))
    changed = splits_drawn_otherwise(store.config, info.get("split") or {})  # a resume's, on its data now
    if "evaluator" in store.config:  # a resume: the run's names and scores go by its class order
        check_class_order(store.run_dir, store.config, info)
        if set(changed) - {"test"} and any(e.get("event") in LLM_EVENTS for e in store.stored):
            # it warned that it went on, then failed on the first recorded turn, its scores not the same
            raise PromptclimbError(f"cannot resume {store.run_dir.name}: "
                                   f"{images_drawn_otherwise(store.run_dir, changed)}; the LLM turns in its history "
                                   "were asked with scores on those images and cannot be replayed on others: put its "
                                   "data back as it was, or start a new run")
    if plan.moved_data is not None:  # a resume from where the data folder went: the same images there?
        old, new = plan.moved_data
        if "evaluator" in store.config and not same_data_moved(
                unrecorded_labels_dropped(info, store.config["evaluator"]), store.config["evaluator"], plan.moved_data):
            # not recorded: another folder of the same name, given by mistake, would stay the run's
            echo(f"warning: the images in {new} are not those {store.run_dir.name} started with in {old} (files "
                 "added, removed or changed, or copied without their times): scores already recorded are kept, new "
                 f"ones use these; {old} stays the run's data folder (give --data-root again to resume from here)")
            return evaluator
        store.update_config(evaluator_args={**store.config["evaluator_args"], "data_root": new},
                            **({"evaluator": info} if "evaluator" in store.config else {}))
        echo(f"{store.run_dir.name}'s data folder {old} is gone: reading it from {new} (recorded in its {CONFIG})")
    if "evaluator" not in store.config:
        store.update_config(evaluator=info)
        return evaluator
    if changed:
        echo(f"warning: {images_drawn_otherwise(store.run_dir, changed)}: scores already recorded are kept, new "
             "ones use these images")
    recorded, now = store.config["evaluator"], unrecorded_labels_dropped(info, store.config["evaluator"])
    if (beside_split(recorded) != beside_split(now)) if changed else recorded != now:  # what else differs
        store.evaluator_changed = evaluator_changes(*map(beside_split, (recorded, now))) if changed else \
            evaluator_changes(recorded, now)
        echo(f"warning: the evaluator is not identical to the one this run started with: {store.evaluator_changed} "
             "(see config.json); scores already recorded are kept, new ones use this one.")
    return evaluator


def evaluator_changes(recorded: dict, now: dict) -> str:
    """What differs between two evaluator descriptions (`info()`), said: the data's files by
    what happens to them (an image edited in place keeps its name and changes the data's
    identity, which holds sizes and times), anything else by its key in config.json."""
    def leaves(info, prefix=""):
        if not isinstance(info, dict):
            return {prefix: info}
        return {k: v for key, value in info.items() for k, v in leaves(value, f"{prefix}{key}.").items()}

    old, new = leaves(recorded), leaves(now)
    keys = [k.rstrip(".") for k in sorted(old.keys() | new.keys(), key=lambda k: (k.count("."), k))
            if old.get(k) != new.get(k)]
    said = [data_change(old[k + "."], new[k + "."]) if k == "dataset.identity" else f"{k} differs" for k in keys]
    return ", ".join(said[:4]) + (f" and {len(said) - 4} more" if len(said) > 4 else "")


def data_change(recorded: str | None, now: str | None) -> str:
    """How a data's identity changed, said: its files, or only how a newer promptclimb decodes
    them (`:decoded:N` at its end, evaluators/datasets.py DECODING), which no put-back undoes."""
    decoding = re.compile(r":decoded:\d+$")
    if recorded and now and decoding.sub("", recorded) == decoding.sub("", now) and recorded != now:
        return (f"{DECODING_CHANGED} (a newer promptclimb: photos turned as their EXIF orientation says, images "
                "of more than 8 bits no longer read near black)")
    return "the data's files changed (images edited, replaced or touched)"


def beside_split(info: dict) -> dict:
    """An evaluator's description less its few-shot split and the data's identity (which holds
    its files): what else differs where the images drawn did (said split by split)."""
    dataset = {k: v for k, v in (info.get("dataset") or {}).items() if k != "identity"}
    return {**{k: v for k, v in info.items() if k != "split"}, "dataset": dataset}


def unrecorded_labels_dropped(info: dict, recorded: dict) -> dict:
    """An evaluator's `info`, less the data's labels where the `recorded` one (a run started
    before they were recorded beside start names of its own) lacks them: the same evaluator."""
    if "labels" in (recorded.get("dataset") or {}) or "labels" not in (info.get("dataset") or {}):
        return info
    return {**info, "dataset": {k: v for k, v in info["dataset"].items() if k != "labels"}}


@contextmanager
def llm_client(plan: Plan, opts: dict, echo, aside: Callable[[str], None] | None = None,
               bars: bool = True) -> Iterator[LLMClient]:
    """The LLM: the embedded local one (a llama.cpp server started for the climb and stopped
    after it; its start lines go to `aside`, None: stderr), or an OpenAI-compatible endpoint."""
    settings = plan.llm

    def client(base_url: str | None, api_key: str | None, model: str, **lazy) -> LLMClient:
        return LLMClient(model, base_url=base_url, api_key=api_key, timeout=settings.timeout,
                         max_tries=settings.max_tries, use_cache=not settings.no_cache,
                         max_calls=plan.search.max_calls, max_tokens=plan.search.max_tokens, echo=echo,
                         # the local LLM's, embedded or served (an API model's context is not known)
                         context_tokens=local_llm.CONTEXT_TOKENS if settings.served_model else None, **lazy)

    if settings.local and not opts["base_url"]:
        model_file = opts["llm_model"] or settings.llm_model_file
        model = settings.request_model or local_llm.local_model_name(model_file)
        # no key: the embedded server checks none, and a placeholder key would be a "secret"
        # that error messages redact wherever the word appears (the model name `local`)
        started = opts.get("local_llm_url")
        if started:  # a sweep's cell asks the one server its driver started (agent/sweep/driver.py)
            with closing(client(started, None, model)) as llm:
                yield llm
            return
        # started on the first request that the run's history and the cache cannot answer: a
        # replay, a resume of a finished run or --max-calls 0 never waits for it (about 13 s)
        # It is started on the thread that asks first: the search's own (the embedded server runs
        # one request at a time, so restarts share one lane: `lanes_for_the_llm`), which lives as
        # long as the search; the server dies with the thread that started it (local.py).
        with ExitStack() as server:
            def start() -> str:
                try:
                    return server.enter_context(local_llm.local_server(model_path=model_file, echo=aside, bars=bars))
                except PromptclimbError as exc:  # mid-run: said with the command that continues it (`climb`)
                    raise LLMError(f"the local LLM did not start: {exc}\n(a file it cannot load: continue with "
                                   "--llm-model FILE of another model, or --base-url of an endpoint)") from None

            with closing(client(None, None, model, connect=start,
                                served_model=local_llm.served_model_id(model_file))) as llm:
                yield llm
        return
    base_url = endpoint_asked(settings, opts, echo)
    check_reachable(settings, base_url)
    with closing(client(base_url, os.environ.get("OPENAI_API_KEY"), settings.request_model or settings.model)) as llm:
        yield llm


def endpoint_asked(settings: LLMSettings, opts: dict, echo) -> str | None:
    """The endpoint a search asks: --base-url, else a resumed run's recorded one (an
    OPENAI_BASE_URL set for another tool went on with another LLM, unsaid), else
    OPENAI_BASE_URL, else the recorded one (whose key, left out of the record, it gives again)."""
    env = os.environ.get("OPENAI_BASE_URL")
    if opts["base_url"]:
        return opts["base_url"]
    if opts.get("resume") is None:
        return env or settings.base_url
    recorded = settings.base_url  # None: the OpenAI API (a run records OPENAI_BASE_URL as it found it)
    other = bool(env) and without_secrets(env).rstrip("/") != (recorded or "").rstrip("/")
    if settings.secrets_left_out:  # its key was left out of the record: OPENAI_BASE_URL may give it again
        if other:
            echo(f"note: OPENAI_BASE_URL is not the LLM endpoint the run recorded ({recorded}); asking it, "
                 "as the run's URL had a key that was not recorded")
        return env or recorded
    if other:
        echo(f"note: OPENAI_BASE_URL is set; the run asks the LLM endpoint it recorded "
             f"({recorded or 'the OpenAI API'}): give --base-url to ask another")
    return recorded  # None: the OpenAI API (LLMClient never reads OPENAI_BASE_URL itself)


def check_reachable(settings: LLMSettings, base_url: str | None) -> None:
    """An API model needs a key, or an endpoint of its own (a new run is told before its
    folder is made, a resume before it asks)."""
    if not os.environ.get("OPENAI_API_KEY") and not base_url:
        raise PromptclimbError(f"--llm {settings.model} needs OPENAI_API_KEY (or an endpoint: --base-url / "
                               "OPENAI_BASE_URL); or use --llm local")


def soft_prompt_search(plan: Plan, store: RunStore, evaluator, echo) -> dict:
    """--optimizer craft|cbbt: the soft-prompt optimizer on the loaded evaluator (agent/softsearch.py)."""
    from promptclimb.agent.softsearch import SoftPromptSearch
    from promptclimb.evaluators.softprompt import build_optimizer  # pycma and the token embeddings: only now

    try:
        optimizer = build_optimizer(evaluator, plan.soft)
    except PromptclimbError:
        # a --prompt-init this text tower cannot take: known only now that the tokenizer is
        # loaded; a folder that recorded nothing is not left behind as an unfinished run
        if plan.store is None and not store.events:
            store.discard()
        raise
    return SoftPromptSearch(evaluator, optimizer, store, plan.soft, echo).run()


def climb(plan: Plan, store: RunStore, evaluator, llm: LLMClient, meta: MetaPrompt, echo,
          tracking_uri: str | None = None) -> dict:
    """The hill-climb (agent/search.py); an LLM that fails for good leaves a resumable run."""
    llm.asker = run_asker(store.config)
    climber = HillClimber(evaluator, llm, store, plan.search, meta=meta, pool=plan.pool, echo=echo)
    try:
        return climber.run().summary
    except LLMError as exc:
        moved = None
        if llm.base_url and not plan.llm.local:  # `llm serve` restarted on another port, a moved server
            moved = "with --base-url URL added where the endpoint has moved: a resume asks the one the run recorded"
            if exc.cause == "no route":  # a URL given wrong: nothing moved
                moved = "with --base-url URL added, the endpoint's URL corrected: a resume asks the one the run " \
                        "recorded"
            elif plan.llm.served_model and exc.cause == "connection":  # the hint had not named what to start again
                moved = f"is `promptclimb llm serve` still running? start it again, or continue {moved}"
        if exc.cause == "refused" and not any(e.get("event") in LLM_EVENTS for e in store.events):
            # a resume asks the same again (the settings are the run's), and the same command again is
            # refused for the folder it left: said in a loop, with nothing recorded worth keeping
            moved = f"or, as no answer is recorded in it, to change --llm or another setting: remove it first " \
                    f"(rm -r {shlex.quote(str(store.run_dir))}) and run the command again"
        raise run_is_saved(exc, store, tracking_uri, moved) from None


def run_asker(config: dict) -> str | None:
    """A run as the LLM cache knows who asked (the same across its sessions, and in a copy of
    its folder): an answer the cache holds for a request the run made before it was stopped,
    with no history line yet, was read back on resume as another run's, its tokens uncounted."""
    return f"{config['run_id']}@{config['created']}" if config.get("run_id") and config.get("created") else None


def run_is_saved(exc: Exception, store: RunStore, tracking_uri: str | None, more: str | None = None) -> Exception:
    """A failure once the run folder stays that a resume gets past once it is fixed (an LLM
    that fails for good, data that no longer reads), said with the command that continues
    the run; as it is where the folder was discarded."""
    if not store.run_dir.is_dir():
        return exc
    command, note = resume_command(store.run_dir, tracking_uri)
    note = "; ".join(n for n in (note, more) if n)
    return PromptclimbError(f"{exc}\nThe run is saved; continue it with: {command}" + (f"\n({note})" if note else ""))


def what_changed(summary: dict, evaluator, echo) -> None:
    """The search in two lines: the class names it changed, and test accuracy from where a
    user starts ("a photo of a {}." with the start names) to what it found. Test is only read.
    The start's figure goes into `summary` ("baseline"), for `show` and the API the day after."""
    start = evaluator.score([BASELINE], splits=("test",))[0].accuracy["test"]
    summary["baseline"] = {"template": BASELINE, "names": "start", "accuracy": {"test": float(start)}}
    echo("\nWhat changed")
    names = summary.get("names")
    if names:
        changed = [f"{c['start']} -> {c['found']}" for c in names["classes"] if c["changed"]]
        echo(f"  class names ({len(changed)} of {len(names['classes'])} changed): {', '.join(changed) or 'none'}")
    if summary.get("winner") == "ensemble":  # what to use, as summary.json and the console say
        found = summary["ensemble"]
        what = f"the ensemble of {len(found['templates'])} templates"
    else:
        found = summary["best"]
        what = repr(found["template"])
    echo(f"  test accuracy: {pct(start)} ({BASELINE!r} with the start names) -> {pct(found['accuracy']['test'])} "
         f"({what}{' with the found names' if names and names['changed'] else ''})")
    adapter = summary.get("adapter") or {}
    if adapter.get("result") == "adapter":  # the result a user gets: the line above read as the run's
        echo(f"  with the {adapter['kind']} adapter (the run's result): {pct(adapter['accuracy']['test'])}")


def after_the_climb(plan: Plan, store: RunStore, evaluator, summary: dict, echo) -> dict:
    """Plots, the adapters asked for (fit on the winning prompt), and where to read the run."""
    from promptclimb.agent.adapt import fit_run_adapter
    from promptclimb.agent.runs.plots import write_plots

    for path in write_plots(store.run_dir):
        echo(f"plot: {path}")
    if plan.adapter_kinds:
        try:
            summary["adapter"] = fit_run_adapter(store.run_dir, plan.adapter_kinds, evaluator=evaluator, echo=echo)
        except Exception:  # the prompt found stays the result so far: said before the failure is
            with suppress(Exception):  # the same fault (a full disk, a lost GPU) must not hide the adapter's error
                what_changed(summary, evaluator, echo)
                store.write_json(SUMMARY, summary)
            raise
    what_changed(summary, evaluator, echo)  # after the adapter: it may be the run's result
    store.write_json(SUMMARY, summary)  # with the baseline it scored
    echo(f"run folder: {store.run_dir}   (read it with: {shell_command('show', run_argument(store.run_dir))})")
    return summary
