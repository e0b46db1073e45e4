"""What a search runs (`Plan`), and the settings checks that a new run (agent/pipeline.py
`new_run`) and a resumed one (agent/resume.py `resumed_run`) both make: options a search does
not use, --confirm, --queries, the endpoints, the LLM's lanes. Its own module so that both
import it, one way (the pipeline imports the resume checks, never the reverse).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from promptclimb.agent import options as option_table
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.settings import EvaluatorSettings, LLMSettings, SoftPromptConfig
from promptclimb.agent.llm import local as local_llm
from promptclimb.agent.llm.secrets import check_api_key, check_endpoint_url
from promptclimb.agent.runs.store import RunStore
from promptclimb.agent.search import SearchConfig

DEFAULTS = SearchConfig()
META_FINGERPRINT = "meta_prompt_sha256"  # config.json: {file: SHA-256} of the meta-prompts the run started with


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


def names_file(spec) -> bool:
    """Whether --classnames `spec` is a file (not a set name, nor the names themselves)."""
    return isinstance(spec, str) and (os.sep in spec or "." in spec or Path(spec).expanduser().is_file())


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
