"""--resume: a killed run's settings read back from its config.json (`resumed_run`), with the
options given again checked against them: a change refused, a budget cap applied, a moved data
or meta-prompt folder taken where it holds the same files. Its own module: `run_search`
(agent/pipeline.py) calls only `resumed_run`, and `same_data_moved` once the evaluator is built.
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields, replace
from pathlib import Path

from promptclimb.agent import options as option_table
from promptclimb.agent.core.classnames import PUBLISHED
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.paths import absolute, check_writable, prompts_dir
from promptclimb.agent.core.format import shell_command
from promptclimb.agent.core.settings import EvaluatorSettings, LLMSettings, SoftPromptConfig
from promptclimb.agent.llm import local as local_llm
from promptclimb.agent.metaprompt import MetaPrompt
from promptclimb.agent.adapt import check_kinds
from promptclimb.agent.options import BUDGET, recorded_value
from promptclimb.agent.core.pools import PoolTemplate
from promptclimb.agent.plan import (DEFAULTS, META_FINGERPRINT, Plan, check_endpoints, confirm_setting, given,
                                    lanes_for_the_llm, names_file, not_given, refuse_soft_budget, say_unused)
from promptclimb.agent.runs.store import CONFIG, HISTORY, SUMMARY, RunStore, has_summary, run_argument
from promptclimb.agent.names import GUARD_NOT_ASKED
from promptclimb.agent.search import DEFAULT_SEARCH, LLM_EVENTS, RECORDED_BEFORE_IT_EXISTED, SearchConfig

# --resume: an option given again whose scope is SESSION (agent/options.py) only changes how
# this session runs and is applied; a BUDGET cap is applied to the rest of the run while it
# has not ended; every other option would change what the run does (the loop's shape too:
# the history's order depends on it), so given with a value other than the run's, it is refused.
LOOP_SHAPE = ("restarts", "resets", "iterations", "parallel")  # --parallel K: restarts take turns in K lanes


def resumed_evaluator(saved: dict) -> EvaluatorSettings:
    """A resumed run's evaluator settings, with the start names it recorded when its evaluator
    was built (`start_names_as_built`)."""
    from promptclimb.agent.runs.recorded import start_names_as_built

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
        adapter_kinds = check_kinds(opts["adapter_kinds"]) if opts["adapter_kinds"] else \
            saved.get("adapter_kinds") or []
        optimizer = saved.get("optimizer", "llm")
        if optimizer == "llm":
            refuse_soft_budget(opts)
        # as when the run started (its --search as recorded: given again, a change is refused below)
        recorded = saved.get("search") or {}
        opts = say_unused(opts, optimizer, echo, recorded.get("search", DEFAULT_SEARCH),
                          opts["iterations"] if given(opts, "iterations")
                          else recorded.get("iterations", DEFAULTS.iterations))
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
        search = SearchConfig(**{**RECORDED_BEFORE_IT_EXISTED, **{
            f.name: saved["search"][f.name] for f in fields(SearchConfig) if f.name in saved["search"]}})
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
    from promptclimb.agent.runs.recorded import without_root

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
    from promptclimb.agent.runs.recorded import run_labels, run_start_names

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
