"""Every option of `promptclimb search`, declared once as data.

The command line (agent/cli/search.py builds its click options and help panels from
`SEARCH_OPTIONS`), `promptclimb sweep` (the same table, less what the grid sets), a
`--config FILE.toml` / sweep grid `[search]` table and the Python API `search(**keywords)`
all read this table, so an option has one name, one default, one check and one help text.
`resolve` turns what a user gave (keywords, a TOML table) into the full settings dict the
pipeline runs on (`agent/pipeline.py`); `scope` says what `--resume` may change.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import sys
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from promptclimb.agent.core.classnames import check_classnames
from promptclimb.agent.core.defaults import DEFAULT_PRECISION, PRECISION_HELP, PRECISIONS, UNLABELED_IMAGES
from promptclimb.agent.core.devices import check_device_name
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.format import as_text_list, not_text, one_line
from promptclimb.agent.core.settings import SoftPromptConfig
from promptclimb.agent.ranking import METRICS
from promptclimb.agent.names import GUARDS
from promptclimb.agent.search import CONFIRMS, SEARCHES, SELECTIONS, SearchConfig, turn_kind

LOCAL = "local"
REMOTE_DEFAULT_MODEL = "gpt-4o-mini"
OPTIMIZERS = ("llm", "craft", "cbbt")
PANELS = ("Essentials", "Model and data", "Loop", "LLM", "Ranking and result", "Output", "Soft prompt (craft, cbbt)")

# What --resume does with an option given again: "run" (part of what the run does: refused
# when it differs from the run's), "session" (how this session runs: applied), "budget"
# (a cap: applied to the whole run while it has not ended).
RUN, SESSION, BUDGET = "run", "session", "budget"


@dataclass(frozen=True)
class Option:
    flag: str  # the long option: "--max-calls"; its keyword (API, TOML) is "max_calls"
    default: Any
    help: str
    panel: str
    kind: Any = str  # str, int, float, bool (a flag), "path" (a file, never empty), "dir" (a folder, never
    # empty), "optional" (a flag that may take a value: "" when given bare), "names" (class names:
    # `names_value`), "name" (text naming a thing, never empty: '' is refused, not read as the default),
    # "device" (agent/core/devices.py check_device_name), or a tuple of choices
    dest: str | None = None  # the settings key when it is not the keyword (--llm: llm_name)
    multiple: bool = False
    metavar: str | None = None
    minimum: float | None = None
    maximum: int | None = None
    scope: str = RUN
    cli_only: bool = False  # not a keyword of the Python API's search()
    recorded: str | None = None  # where a run's config.json records it ("search.iterations"): --resume compares
    expects: str | None = None  # kinds "name", "path" and "dir": what it takes, said when it is given empty

    @property
    def keyword(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def name(self) -> str:
        return self.dest or self.keyword


SEARCH, SOFT = SearchConfig(), SoftPromptConfig()
SEED_MAX = 2 ** 64 - 1  # torch seeds its generators (adapters, soft prompts) with at most 64 bits
_E, _M, _L, _LLM, _R, _O, _S = PANELS
SEARCH_OPTIONS: tuple[Option, ...] = (
    Option("--dataset", None, "Dataset: fashion-mnist (embedded), eurosat, imagefolder, coop, hf (a save_to_disk or "
           "parquet folder: --data-root) or hf:OWNER/NAME[:CONFIG]. Required unless --resume.", _E, recorded="evaluator_args.dataset"),
    Option("--shots", 1, "Training images per class (the few-shot split).", _E, int, minimum=1, recorded="evaluator_args.shots"),
    Option("--seed", 0, "Seed of the few-shot split, the pool samples and the LLM requests.", _E, int, minimum=0, maximum=SEED_MAX, recorded="evaluator_args.seed"),
    Option("--backbone", None, "CLIP backbone [default: demo for fashion-mnist, else ViT-B-32 with --pretrained openai].", _E,
           "name", recorded="evaluator_args.backbone", expects="a backbone name"),
    Option("--llm", None, "LLM model name [default: 'local' (the embedded llama.cpp model) unless --base-url, "
           f"OPENAI_BASE_URL or OPENAI_API_KEY is given, then {REMOTE_DEFAULT_MODEL}].", _E, "name", dest="llm_name",
           recorded="llm.model",
           expects="an LLM model name (e.g. local)"),
    Option("--search", SEARCH.search, "What the LLM rewrites: template (the prompt's wording), names (the class "
           "names, guided by per-class accuracy and confusions) or both (names turns, and a template turn to end "
           "each reset of two or more --iterations; with --iterations 1 a reset's one turn is a names turn, so no "
           "template turn).", _E, SEARCHES, recorded="search.search"),
    Option("--classnames", None, "The class names the search starts from: published (the labels the data comes "
           "with, the default), a named set (clean for fashion-mnist, coop for eurosat) or a FILE (one name per line "
           "in class order, or folder,name lines; # comment lines).", _E, "names", metavar="published|SET|FILE",
           recorded="evaluator_args.classnames"),
    Option("--pool", "curated", "Initial templates: curated (hand-written and OpenAI's 80), captions (generic web "
           "captions, the paper's start) or a file with one template per line (# comments, also after a template: "
           "`a photo of a {}.  # note`).", _E,
           metavar="curated|captions|FILE", recorded="pool.name"),
    Option("--optimizer", "llm", "Who writes the prompts: llm (text templates from a chat LLM), craft (CraFT: CMA-ES "
           "soft prompt + prediction refinement) or cbbt (CBBT: zeroth-order gradient soft prompt + feature adapter); "
           "craft and cbbt need the text tower's embeddings.", _E, OPTIMIZERS, recorded="optimizer"),
    Option("--resume", None, "Continue a killed run (id under --runs-dir, or a path) with its saved settings.", _E,
           scope=SESSION),
    Option("--name", None, "Run id (folder name) [default: time-dataset-shots].", _E, dest="run_name", recorded="run_id"),
    Option("--runs-dir", "runs", "Where run folders go.", _E, "dir", scope=SESSION,
           expects="the folder of run folders (e.g. runs)"),

    Option("--pretrained", None, "open_clip pretrained tag (e.g. openai; downloads once).", _M, "name",
           recorded="evaluator_args.pretrained", expects="a pretrained tag (e.g. openai)"),
    Option("--weights", None, "Local weights file for the backbone.", _M, "path", recorded="evaluator_args.weights",
           expects="a weights file"),
    Option("--data-root", None, "Where the dataset lives (with --resume: where a run's moved data folder is now).", _M, "dir", recorded="evaluator_args.data_root",
           expects="the dataset's folder"),
    Option("--image-column", None, "hf datasets: the image column [default: the one Image feature].", _M, "name",
           recorded="evaluator_args.image_column", expects="an image column name"),
    Option("--label-column", None, "hf datasets: the label column [default: the one ClassLabel feature].", _M, "name",
           recorded="evaluator_args.label_column", expects="a label column name"),
    Option("--device", None, "torch device [default: cuda when available, else cpu].", _M, "device", scope=SESSION),
    Option("--precision", DEFAULT_PRECISION, PRECISION_HELP, _M, PRECISIONS, recorded="evaluator_args.precision"),

    Option("--restarts", SEARCH.restarts, "Restarts, each from a fresh sample of the pool.", _L, int, minimum=1, recorded="search.restarts"),
    Option("--parallel", SEARCH.parallel, "Restarts run at the same time (their LLM calls overlap; the result is the "
           "same as one at a time). Not with --max-calls/--max-tokens where two or more restarts run. The local "
           "LLM answers one request at a time: with it the restarts run one after another.", _L, int, minimum=1, recorded="search.parallel"),
    Option("--resets", SEARCH.resets, "Conversations per restart (the scoreboard is kept).", _L, int, minimum=1, recorded="search.resets"),
    Option("--iterations", SEARCH.iterations, "LLM turns per conversation.", _L, int, minimum=1, recorded="search.iterations"),
    Option("--proposals", SEARCH.proposals, "New templates scored per turn.", _L, int, minimum=1, recorded="search.proposals"),
    Option("--spare", SEARCH.spare, "Extra templates asked for per turn, standing in for repeats (the first "
           "--proposals new ones are scored).", _L, int, minimum=0, recorded="search.spare"),
    # --top-k 0 showed the LLM an empty list of the best templates and asked it to beat them
    Option("--top-k", SEARCH.top_k, "Best templates shown to the LLM.", _L, int, minimum=1, recorded="search.top_k"),
    Option("--bottom-k", SEARCH.bottom_k, "Worst templates shown to the LLM.", _L, int, minimum=0, recorded="search.bottom_k"),
    Option("--pool-sample", SEARCH.pool_sample, "Initial-pool templates scored per restart (0 = the whole pool).", _L,
           int, minimum=0, recorded="search.pool_sample"),
    Option("--names-k", SEARCH.names_k, "Weakest classes a names turn asks new names for.", _L, int, minimum=1,
           recorded="search.names_k"),
    Option("--names-per-class", SEARCH.names_per_class, "Names asked for each of them.", _L, int, minimum=1,
           recorded="search.names_per_class"),
    Option("--guard", SEARCH.guard, "What a new name must pass to be kept: own (its class gets no fewer of its "
           "own train+val images right), judge (the LLM is asked which class the name denotes, the classes "
           "listed in both orders; when both answers name the same other class, or the answer names no class, "
           "the text tower decides: refused unless 'a photo of a {}.' filled with the new name is nearer its own "
           "class's start name than the other's by a margin of 0.01), own+judge (both), or off.", _L, GUARDS,
           recorded="search.guard"),
    Option("--confirm", None, "What a new best (a template or a name the LLM wrote) must also hold up on: "
           "val (no worse there than the best it replaces; it was ranked on train), or off. Nothing is held out "
           f"under --select train+val: the run confirms nothing and records off [default: {SEARCH.confirm}; off "
           "under --select train+val].", _L, CONFIRMS, recorded="search.confirm"),
    Option("--max-calls", None, "Budget: LLM answers in the whole run (then stop cleanly).", _L, int, minimum=0,
           scope=BUDGET),
    Option("--max-tokens", None, "Budget: LLM prompt+completion tokens in the whole run (an answer from the cache "
           "counts the tokens it cost when asked: a rerun stops where the first did).", _L, int, minimum=0,
           scope=BUDGET),

    Option("--base-url", None, "OpenAI-compatible endpoint [default: $OPENAI_BASE_URL, or the OpenAI API].", _LLM,
           "name", scope=SESSION, expects="an http:// or https:// URL (e.g. http://localhost:8080/v1)"),
    Option("--llm-model", None, "GGUF file for --llm local [default: the embedded Qwen2.5-Coder-1.5B].", _LLM, "path",
           scope=SESSION, expects="a GGUF file"),
    # --timeout 0 abandoned every request at once: six tries and a failed run after 45 s
    Option("--timeout", None, "Seconds one LLM request may take in all, to connect and to receive its whole answer, "
           "before it is abandoned (and retried) [default: 120; 3600 for the local LLM, which would go on "
           "computing an abandoned request].", _LLM, float, minimum=1,
           scope=SESSION),
    Option("--max-tries", 6, "Tries per LLM request (429, 5xx, timeouts) before giving up.", _LLM, int, minimum=1,
           scope=SESSION),
    Option("--no-cache", False, "Do not read or write the LLM response cache (--cache: do, undoing a --config "
           "file's no-cache = true). Recorded: a resume of the run keeps it unless given --cache.", _LLM, bool,
           scope=SESSION),
    Option("--meta-prompt", None, "Folder with your own meta-prompts: system.j2 / first_turn.j2 / feedback_turn.j2 "
           "(template turns), names_system.j2 / names_turn.j2 / names_judge.j2 (names turns and the drift guard's "
           "question); missing ones: ours (prompts/meta).", _LLM, "dir", recorded="meta_prompt_dir", expects="a folder of meta-prompt templates (*.j2)"),
    Option("--temperature", None, "LLM sampling temperature [default: 1.0].", _LLM, float, minimum=0, maximum=2, recorded="search.temperature"),
    Option("--presence-penalty", SEARCH.presence_penalty, "LLM sampling: > 0 discourages words already in the "
           "conversation (OpenAI's presence_penalty, -2 to 2; sent only when not 0).", _LLM, float, minimum=-2, maximum=2,
           recorded="search.presence_penalty"),
    Option("--max-answer-tokens", None, "Length cap of one LLM answer [default: 400; 256 for the local LLM].", _LLM,
           int, minimum=1, recorded="search.max_answer_tokens"),

    Option("--metric", SEARCH.metric, "What templates are ranked by and the LLM is shown: accuracy (ties by "
           "cross-entropy), prob (mean probability of the true class), blend (their mean) or balance (how evenly "
           f"the predictions spread over up to {UNLABELED_IMAGES:,} images of the train pool outside the few-shot "
           "split, read without their labels; ties by accuracy; assumes classes about equally common).",
           _R, METRICS, recorded="search.metric"),
    Option("--select", SEARCH.select, "Split(s) the best template is chosen on (ties: lower cross-entropy).", _R,
           tuple(SELECTIONS), recorded="search.select"),
    Option("--ensemble", SEARCH.ensemble_k, "Largest top-k ensemble tried at the end (0 or 1 = none); it is "
           "chosen only when it beats the best template alone on val (on train+val with --select train+val).", _R,
           int, dest="ensemble_k", minimum=0, recorded="search.ensemble_k"),
    Option("--adapter", (), "After the search, fit an output-side adapter on the best prompt: residual-logits, "
           "feature-residual, cache or all (repeatable; the best on val is kept).", _R, dest="adapter_kinds",
           multiple=True, metavar="KIND", scope=SESSION),

    Option("--mlflow", None, "Log the search to MLflow (one run, a metric step per LLM answer, the winning prompt "
           "registered): to TRACKING_URI, else $MLFLOW_TRACKING_URI, else MLflow's default sqlite:///mlflow.db (in the "
           "current folder; artifacts beside it, in mlruns/). Needs the mlflow extra; tracking never fails a search.",
           _O, "optional", metavar="[TRACKING_URI]", scope=SESSION),
    Option("--json", False, "Print the summary as JSON at the end (progress goes to stderr).", _O, bool,
           dest="as_json", scope=SESSION, cli_only=True),

    Option("--queries", None, f"craft/cbbt budget: prompts scored on the train split [default: {SOFT.queries}].", _S,
           int, minimum=1, recorded="soft_prompt.queries"),
    Option("--prompt-tokens", SOFT.prompt_tokens, "craft/cbbt: context vectors before the class name.", _S, int,
           minimum=1, recorded="soft_prompt.prompt_tokens"),
    Option("--prompt-init", SOFT.prompt_init, "craft/cbbt: the words whose embeddings the context starts from.", _S,
           "name", recorded="soft_prompt.prompt_init", expects=f"the words the context starts from (e.g. {SOFT.prompt_init})"),
    Option("--craft-popsize", SOFT.craft_popsize, "craft: CMA-ES population size.", _S, int, minimum=3, recorded="soft_prompt.craft_popsize"),
    Option("--craft-sigma", SOFT.craft_sigma, "craft: CMA-ES initial step size.", _S, float, recorded="soft_prompt.craft_sigma"),
    Option("--craft-bound", SOFT.craft_bound, "craft: CMA-ES box bound on each coordinate of the intrinsic vector.",
           _S, float, recorded="soft_prompt.craft_bound"),
    Option("--craft-intrinsic-dim", SOFT.craft_intrinsic_dim, "craft: dimension of the vector CMA-ES searches.", _S,
           int, minimum=1, recorded="soft_prompt.craft_intrinsic_dim"),
    Option("--craft-lr", SOFT.craft_lr, "craft: Adam learning rate of the refinement module.", _S, float, recorded="soft_prompt.craft_lr"),
    Option("--craft-kl-weight", SOFT.craft_kl_weight, "craft: weight of the KL term tying the refinement and the "
           "prompt's predictions.", _S, float, recorded="soft_prompt.craft_kl_weight"),
    Option("--cbbt-lr", SOFT.cbbt_lr, "cbbt: Adam learning rate of the soft prompt.", _S, float, recorded="soft_prompt.cbbt_lr"),
    Option("--cbbt-directions", SOFT.cbbt_directions, "cbbt: perturbed prompts per gradient estimate (each step costs "
           "this + 1 queries).", _S, int, minimum=1, recorded="soft_prompt.cbbt_directions"),
)
PYTHON_OPTIONS = tuple(o for o in SEARCH_OPTIONS if not o.cli_only)
BY_KEYWORD = {o.keyword: o for o in SEARCH_OPTIONS}
BY_NAME = {o.name: o for o in SEARCH_OPTIONS}
# What only the LLM search reads: its LLM, its loop, its pool, its ranking and the adapters
# fit on its best template (craft and cbbt train their own module along). A soft-prompt
# search (craft, cbbt) records none of them; the LLM search none of the soft-prompt knobs.
LLM_SEARCH_ONLY = ("llm_name", "search", "pool", "metric", "select", "ensemble_k", "adapter_kinds")


# The options only one kind of LLM turn reads: --search template runs no names turn, --search
# names no template turn.
NAMES_TURN_ONLY = ("names_k", "names_per_class", "guard")
TEMPLATE_TURN_ONLY = ("proposals", "spare", "top_k", "bottom_k")


def unused_by(optimizer: str) -> tuple[Option, ...]:
    """The options `optimizer` does not read (--queries aside: the LLM search refuses it);
    given, they are said in one warning line and ignored (agent/plan.py `say_unused`)."""
    if optimizer == "llm":
        return tuple(o for o in SEARCH_OPTIONS if o.panel == _S and o.name != "queries")
    return tuple(o for o in SEARCH_OPTIONS if o.panel in (_L, _LLM) or o.name in LLM_SEARCH_ONLY)


def turns_taken(search: str, iterations: int) -> set[str]:
    """The kinds of LLM turn ("template", "names") a reset of `iterations` turns takes."""
    return {turn_kind(search, i, iterations) for i in range(1, iterations + 1)}


def unused_by_search(search: str, iterations: int) -> tuple[Option, ...]:
    """The LLM search's options that `--search search` with `--iterations iterations` does
    not read: those of a kind of turn it never takes (`both` with one turn a reset takes no
    template turn). Given, they are ignored as `unused_by`'s are."""
    taken = turns_taken(search, iterations)
    turn_only = (() if "names" in taken else NAMES_TURN_ONLY) + (() if "template" in taken else TEMPLATE_TURN_ONLY)
    return tuple(o for o in SEARCH_OPTIONS if o.name in turn_only)


def recorded_value(config: dict, option: Option):
    """What a run's config.json records for `option` (None where it records nothing)."""
    value = config
    for key in option.recorded.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


# Values a new run is refused that runs recorded before the refusal still hold: they resume as they
# were (--top-k 0 showed the LLM an empty list of best templates to beat)
RECORDED_BEFORE_REFUSED = {"top_k": 0}


def recorded_before_refused(name: str, value) -> bool:
    """Whether `value` of option `name` (`Option.name`) is one a new run is refused and a run (or
    sweep) recorded with it keeps: RECORDED_BEFORE_REFUSED, of the same type (not `false` for 0)."""
    allowed = RECORDED_BEFORE_REFUSED.get(name, object())
    return type(value) is type(allowed) and value == allowed


# What a run's config.json holds for an option of each kind, as JSON, and how it is said.
RECORDED_TYPES = {int: (int, "a whole number"), float: ((int, float), "a number"), bool: (bool, "true or false"),
                  str: (str, "text"), "name": (str, "text"), "path": (str, "a path"), "dir": (str, "a path")}


def check_recorded(config: dict, where, under: str | tuple[str, ...] = "") -> None:
    """PromptclimbError in one line naming `where` (config.json) when it records the value of
    an option (of those recorded under `under`: "evaluator_args.") as no run does, edited by
    hand: of another type ("3" or 3.5 for --iterations) or one its option refuses."""
    for option in SEARCH_OPTIONS:
        if option.scope == BUDGET:  # recorded, though not compared as the others are
            option = replace(option, recorded=f"search.{option.name}")
        if not option.recorded or not option.recorded.startswith(under):
            continue
        value = recorded_value(config, option)
        if recorded_before_refused(option.name, value):
            continue
        if value is None or (value == "" and option.kind == "name"):
            # a run started before an empty name was refused recorded --pretrained '' as given (none)
            continue
        kind, said = (str, "text") if isinstance(option.kind, tuple) else RECORDED_TYPES.get(option.kind, (object, ""))
        try:
            if not isinstance(value, kind) or isinstance(value, bool) != (option.kind is bool):
                raise PromptclimbError(f"{option.flag} {value!r}: expected {said}")
            check_value(option, value, "")
        except PromptclimbError as exc:
            raise PromptclimbError(f"{where} is damaged ({option.recorded}: {exc})") from None


def defaults() -> dict:
    """Every setting as it is when no option is given (keyed by `Option.name`)."""
    return {o.name: o.default for o in SEARCH_OPTIONS}


def check_value(option: Option, value, where: str):
    """`value` as `option` takes it, or PromptclimbError naming the option. Strict where a
    silent conversion would run something else: 1.5 shots or `true` is refused, not 1."""
    def refuse(why: str):
        raise PromptclimbError(f"{where}{option.flag} {value!r}: {why}")

    if value is None:
        return None
    if option.multiple:
        values = [value] if isinstance(value, (str, Path)) else value
        if not isinstance(values, (list, tuple)):
            refuse("expected a name or a list of names")
        return tuple(check_value(Option(option.flag, None, "", option.panel, option.kind), v, where) for v in values)
    kind = option.kind
    if kind is bool:
        if as_bool(value) is None:
            # `no-cache = "false"` in a TOML table read as contradicting itself: it is the quotes
            refuse(f"expected true or false{f' (a boolean, not the text {value!r})' if isinstance(value, str) else ''}")
        return as_bool(value)
    if kind is int:
        if as_bool(value) is not None or not isinstance(value, (numbers.Real, str)):
            refuse("expected a whole number")
        try:
            number = as_whole(value) if as_whole(value) is not None else float(value)
        except ValueError:
            refuse("expected a whole number")
        if isinstance(number, float) and (not math.isfinite(number) or not number.is_integer()):
            refuse("expected a whole number")
        value = int(number)
    elif kind is float:
        if as_bool(value) is not None:
            refuse("expected a number")
        try:
            value = float(value)
        except (TypeError, ValueError):
            refuse("expected a number")
        if not math.isfinite(value):
            refuse("expected a finite number")
    elif isinstance(kind, tuple):
        if value not in kind:
            refuse(f"expected one of {', '.join(kind)}")
    elif kind == "names":
        return names_value(value, f"{where}{option.flag}")
    elif kind == "optional" and as_bool(value) is not None:
        # a TOML table or keyword has no bare flag: true is the flag given bare, false not given
        return "" if as_bool(value) else None
    elif kind == "optional" and not isinstance(value, (str, Path)):
        refuse(f"expected true, false or {option.metavar.strip('[]') if option.metavar else 'a value'}")
    elif kind == "device":
        return check_device_name(value, f"{where}{option.flag}")  # '' had been the default device, unsaid
    elif kind in ("name", "path", "dir") and isinstance(value, str) and not value.strip():
        # '' was read as not given: --backbone '' ran the default backbone, --pretrained '' the default
        # tag (or random weights), --llm '' the default LLM, --base-url '' $OPENAI_BASE_URL, --image-column ''
        # the default column, unsaid; --weights '', --runs-dir '', --data-root '' and --meta-prompt '' were
        # the current folder
        refuse(f"expected {option.expects}")
    elif not isinstance(value, (str, Path)):
        refuse("expected text" if kind in (str, "name") else "expected a path")
    else:
        value = str(value)
    below = option.minimum is not None and value < option.minimum
    if below or (option.maximum is not None and value > option.maximum):
        # the whole range, below it or above, as the command line says it (click's `x>=1`, LongBoundInt's
        # `0<=x<2**64`): --seed -1 had said `x>=0`, and 2**64 `0<=x<2**64`
        refuse(f"not in the range {range_text(option.minimum, option.maximum)}")
    return value


def as_bool(value) -> bool | None:
    """`value` as a Python bool where it is a boolean, Python's or numpy's (`np.True_`, what a
    frame's cell or a comparison gives), else None. numpy is not imported for it: a numpy
    boolean exists only where numpy was imported already."""
    numpy = sys.modules.get("numpy")
    if isinstance(value, bool) or (numpy is not None and isinstance(value, numpy.bool_)):
        return bool(value)
    return None


def as_whole(value) -> int | None:
    """`value` as an int where it is an integer, Python's or numpy's (`np.int64`, what a frame's
    cell gives: it is no `int`), never a boolean; else None."""
    if isinstance(value, numbers.Integral) and as_bool(value) is None:
        return int(value)
    return None


def range_text(minimum, maximum: int | None = None) -> str:
    """The range of a bounded option in click's words, as the command line refuses a value
    out of it (click's IntRange and FloatRange, agent/cli/params.py LongBoundInt) and as the
    API and a TOML table do: `x>=1` for a minimum alone, and a maximum one below a power of
    two as that power, `0<=x<2**64`, not --seed's 20 digits."""
    if maximum is None:
        return f"x>={minimum:g}"
    low = "" if minimum is None else f"{minimum:g}<="
    above = maximum + 1
    if above & maximum == 0:
        return f"{low}x<2**{above.bit_length() - 1}"
    return f"{low}x<={maximum}"


def names_value(value, what: str) -> str | tuple[str, ...]:
    """--classnames as a search or `evaluate()` takes it: a set name or a file (text or a
    path), or, from Python or a TOML table, the names themselves (a list, one per class in
    class order) as a tuple, checked now for what needs no dataset (none empty, no braces,
    no two alike); their count is checked once the data is read (evaluators.build_evaluator),
    as a file's is. PromptclimbError naming `what`."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    names = as_text_list(value)  # a list, or a pandas column of them (`run.names()["found"]`)
    if names:
        return check_classnames(names, len(names), what)
    if not_text(value):  # one bad item of the list, not the whole list's repr
        raise PromptclimbError(f"{what}: {not_text(value)}: expected a list of names (one per class, in class order)")
    raise PromptclimbError(f"{what} {one_line(value)}: expected a list of names (one per class, in class "
                           "order), a set name or a file")


def check_dataset_name(name, what: str = "--dataset") -> str:
    """`name` when the CLIP evaluator knows it (evaluators/datasets.py DATASETS, or
    hf:OWNER/NAME[:CONFIG]), else PromptclimbError in one line: checked before a run folder
    is made or a sweep starts, for searches on the CLIP evaluator (an evaluator of one's own,
    `using_evaluator`, knows its own datasets)."""
    from promptclimb.evaluators.datasets import DATASETS  # numpy and PIL, not torch

    if not isinstance(name, str):
        raise PromptclimbError(f"{what} {name!r}: expected a dataset name")
    repo, _, _config = name[len("hf:"):].partition(":") if name.startswith("hf:") else ("", "", "")
    if name in DATASETS:
        return name
    if repo and repo.count("/") <= 1 and ".." not in repo and all(repo.split("/")):
        from promptclimb.evaluators.hf import hub_repo_and_config  # `datasets` only when one loads

        hub_repo_and_config(name)  # a space around its parts was refused only where it loads: in a sweep's cell
        return name
    raise PromptclimbError(f"{what} {name!r}: unknown dataset; known: {', '.join(sorted(DATASETS))} "
                           "(and hf:OWNER/NAME[:CONFIG])")


# The key of a search's settings that holds which options were given (the command line, --config,
# a keyword of search()): `--resume RUN --shots 1` must be compared with the run's shots even where
# 1 is the default. Settings without it (a sweep's cells) count an option as given where it is not
# at its default (agent/plan.py `given`).
GIVEN = "_given"
# The key that holds which options a --config file set, and which file (`Option.name` -> path):
# a refusal of such a value names the file, where a user looks for it (`said_from_file`).
FROM_FILE = "_from_file"


class SettingsChanged(PromptclimbError):
    """--resume with options that would change the run's (agent/resume.py): its message
    lists them, each saying where it was set."""


def said_from_file(exc: PromptclimbError, from_file: dict) -> PromptclimbError:
    """`exc` naming the --config file when the option it refuses (`--pool: 'x.txt' is ...`,
    or `backbone 'x': ...` as the evaluator says it) was set there, not on the command line,
    where a user would look for it. A resume's refused changes say each one's file
    themselves (`SettingsChanged`)."""
    message = str(exc)
    if isinstance(exc, SettingsChanged):
        return exc
    for name, path in from_file.items():
        option = BY_NAME[name]
        if message.startswith(tuple(f"{word}{after}" for word in (option.flag, option.keyword) for after in " :")):
            exc.args = (f"--config {path}: {message}",)
            break
    return exc


def unknown_keys(keys, valid, where: str, dashes: bool = False) -> PromptclimbError | None:
    """The refusal of those `keys` (as the user wrote them) that are not `valid` keywords
    (`_` for `-`), or None: each with the nearest valid ones ("did you mean"), as click says a
    mistyped option on the command line; all the valid ones where one has none near.
    `dashes`: a file's keys, said as the README writes them (`max-calls`)."""
    valid = sorted(valid)
    unknown = [k for k in keys if str(k).replace("-", "_") not in valid]
    if not unknown:
        return None
    spelled = (lambda k: k.replace("_", "-")) if dashes else (lambda k: k)
    said, lost = [], False
    for key in unknown:
        near = difflib.get_close_matches(str(key).replace("-", "_"), valid, n=3, cutoff=0.7)
        lost = lost or not near
        said.append(f"{key}" + (f" (did you mean {' or '.join(map(spelled, near))}?)" if near else ""))
    word = "key" if dashes else "keyword"
    return PromptclimbError(f"{where}unknown {word}{'s' if len(unknown) > 1 else ''} {', '.join(said)}"
                            + (f"; the valid ones: {', '.join(map(spelled, valid))}" if lost else ""))


def resolve(given: dict, where: str = "", table: tuple[Option, ...] = SEARCH_OPTIONS) -> dict:
    """The full settings (`Option.name` -> value): the defaults, overridden by `given`
    (keywords, `_` for `-`; None = the default), each checked. An unknown keyword is refused
    with the nearest valid ones."""
    by_keyword = {o.keyword: o for o in table}
    refused = unknown_keys(given, by_keyword, where)
    if refused:
        raise refused
    settings = {o.name: o.default for o in table}
    for keyword, value in given.items():
        option = by_keyword[keyword]
        if value is not None:
            settings[option.name] = check_value(option, value, where)
    return settings


def read_toml(path: str | Path, what: str) -> dict:
    """A TOML file's tables, or PromptclimbError in one line (missing, not UTF-8, bad TOML)."""
    path = Path(path).expanduser()
    try:
        # utf-8-sig: tomllib refuses a BOM (Notepad writes one) as "Invalid statement (at line 1, column 1)"
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise PromptclimbError(f"{what} {path}: no such file") from None
    except IsADirectoryError:  # the API's search(config=...) had a traceback (click refuses it for --config)
        raise PromptclimbError(f"{what} {path}: a folder, not a file") from None
    except OSError as exc:  # unreadable: permission denied
        raise PromptclimbError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise PromptclimbError(f"{what} {path}: not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as exc:
        raise PromptclimbError(f"{what} {path}: not valid TOML ({exc})") from None


def table_keywords(table: dict, where: str, named: dict | None = None, dashes: bool = True) -> dict:
    """A TOML table of search options, or the keywords of a Python API call (such a table
    splatted into it, `**toml["search"]`), as keywords: a key is the long option's name with
    dashes (`max-calls`, as on the command line and in the README's TOML files) or with
    underscores (`max_calls`, as in the Python API). `named`: the call's own parameters, None
    where not given. A key given both ways (neither None) is refused, naming both spellings;
    `dashes`: said as a file spells it. (The API had dropped `data-root` unsaid, or crashed.)"""
    keywords, spelled = dict(named or {}), {key: [key] for key in named or {}}
    for key, value in table.items():
        keyword = key.replace("-", "_")
        spelled.setdefault(keyword, []).append(key)
        if keywords.get(keyword) is not None and value is not None:
            said = keyword.replace("_", "-") if dashes else keyword
            raise PromptclimbError(f"{where}{said} is given twice ({', '.join(spelled[keyword])}); keep one")
        if value is not None or keyword not in keywords:
            keywords[keyword] = value
    return keywords


def read_config_file(path: str | Path) -> dict:
    """`--config FILE.toml`: its `[search]` table (the table a sweep grid file uses: long
    option names, `max-calls` or `max_calls`), as keywords checked against the search options,
    each value as its option takes it (`check_value`)."""
    tables = read_toml(path, "--config")
    search = tables.get("search", {})
    extra = sorted(set(tables) - {"search", "grid"})
    if not isinstance(search, dict) or extra:
        raise PromptclimbError(f"--config {path}: expected a [search] table of search options"
                               + (f" (found {', '.join(extra)})" if extra else ""))
    where = f"--config {path}: "
    refused = unknown_keys(search, BY_KEYWORD, where, dashes=True)  # said as the file spells them
    if refused:
        raise refused
    search = table_keywords(search, where)
    resolve(search, where)  # every value checked now, with the file named
    # as the options take them (a lone adapter = "cache" as a list of one, mlflow = true as
    # the bare flag): click would refuse or misread the file's own values
    return {keyword: check_value(BY_KEYWORD[keyword], value, where) for keyword, value in search.items()}
