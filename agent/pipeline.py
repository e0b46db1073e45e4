"""`run_search`: one search, whichever optimizer, from settings to a finished run folder.

It reads top to bottom: the settings (a new run's from the options, a killed run's from
its config.json, with the options given again checked against it: agent/resume.py), the
checks that need no model, the run folder (created before the model loads, so that any
kill leaves a run to resume), the evaluator (built by the factory passed in; torch is
imported only then), then the optimizer: the LLM hill-climb (`agent.search.HillClimber`,
with the embedded local LLM unless an OpenAI-compatible endpoint is configured) or a
soft-prompt optimizer (`agent.softsearch`), then plots and adapters. `promptclimb search`,
`promptclimb.search()` and every sweep cell call it.
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
from dataclasses import asdict, fields
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator

from promptclimb.agent import options as option_table
from promptclimb.agent.core.defaults import UNLABELED_IMAGES, default_backbone
from promptclimb.agent.core.devices import check_device_name
from promptclimb.agent.core.errors import DataError, PromptclimbError, os_error_message, sigterm_raises_systemexit
from promptclimb.agent.core.paths import absolute, cache_home, check_writable, missing_folders, remove_while_empty
from promptclimb.agent.core.format import pct, shell_command
from promptclimb.agent.core.protocol import Task
from promptclimb.agent.core.templates import BASELINE
from promptclimb.agent.core.settings import EvaluatorSettings, LLMSettings, SoftPromptConfig
from promptclimb.agent.llm import local as local_llm
from promptclimb.agent.llm.answers import LLMError
from promptclimb.agent.llm.client import LLMClient, local_model_served_at
from promptclimb.agent.llm.secrets import redact, url_secrets, without_secrets
from promptclimb.agent.metaprompt import FILES as META_FILES, MetaPrompt, files_recorded, files_rendered
from promptclimb.agent.adapt import check_kinds
from promptclimb.agent.options import LOCAL, REMOTE_DEFAULT_MODEL
from promptclimb.agent.core.pools import POOLS, load_pool
from promptclimb.agent.plan import (DEFAULTS, META_FINGERPRINT, Plan, check_endpoints, confirm_setting,
                                    lanes_for_the_llm, names_file, refuse_soft_budget, say_unused)
from promptclimb.agent.ranking import metric_label
from promptclimb.agent.resume import resumed_run, same_data_moved
from promptclimb.agent.runs.store import (CONFIG, DECODING_CHANGED, SUMMARY, RunMismatch, RunStore, check_run_name,
                                          run_argument)
from promptclimb.agent.search import LLM_EVENTS, SELECTIONS, HillClimber, SearchConfig

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


def soft_prompt_config(opts: dict) -> SoftPromptConfig | None:
    """--optimizer craft|cbbt: the optimizer's settings; None for the LLM search (which
    refuses the soft-prompt budget, --queries)."""
    if opts["optimizer"] == "llm":
        refuse_soft_budget(opts)
        return None
    names = {f.name for f in fields(SoftPromptConfig)}
    return SoftPromptConfig(**{k: v for k, v in opts.items() if k in names and v is not None}).check()


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
        cut = {"tokens": 64, "chars": 300} if full else None  # the last answer cut to nothing (search.cut_to_nothing)
        meta.system(task, n)
        meta.first_turn(task, n, label, [row], [row] if full else [], cut=cut)
        meta.feedback_turn(task, n, label, [*results, held] if full else [], rejected if full else [], row, [row],
                           [row] if full else [])
        if search.search != "template":
            k, per_class = search.names_k, search.names_per_class
            meta.names_system(task, per_class, k)
            meta.names_turn(task, per_class, label, row["template"], 0.5,
                            [cls, {**cls, "name": "second class", "start": "second class", "mistaken_for": []}],
                            ["first class"], scored if full else [], refused if full else [], hidden=1 if full else 0,
                            cut=cut)
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
    from promptclimb.agent.tracking.store import tracked_store

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
    """--mlflow: the run mirrored to MLflow as it is written (agent/tracking/); it never
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
    from promptclimb.agent.runs.recorded import check_class_order, images_drawn_otherwise, splits_drawn_otherwise

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
