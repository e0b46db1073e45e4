"""The Python API, re-exported by `import promptclimb`: `search`, `evaluate`, `load_run`,
`transfer`. The commands are built on the same functions (`promptclimb search` and
`search()` both run `agent.pipeline.run_search`; `eval`, `transfer` and `show` call
`score_templates`, `transfer` and `load_run` below), so a notebook and the command line
produce the same run folders and the same numbers.

Nothing heavy is imported here at import time: pandas and torch come in when a
function is called.
"""

from __future__ import annotations

import math
import os
import re
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from promptclimb.agent.core.classnames import renames
from promptclimb.agent.core.defaults import DEFAULT_PRECISION
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.format import as_list, as_text_list, not_text, one_line
from promptclimb.agent.core.paths import absolute, cache_home, check_writable
from promptclimb.agent.core.protocol import SPLITS
from promptclimb.agent.core.templates import BASELINE, check_templates as check_template_list, check_typed_templates

if TYPE_CHECKING:
    import pandas as pd

    from promptclimb.agent.core.protocol import Evaluator, Score
    from promptclimb.agent.runs.run import Run

# The evaluator factory `search`, `evaluate` and `transfer` build their evaluator with
# (None: the CLIP one, `evaluators.build_evaluator`); set it with `using_evaluator`.
_EVALUATOR_FACTORY: ContextVar[Callable | None] = ContextVar("evaluator_factory", default=None)


@contextmanager
def using_evaluator(factory: Callable):
    """Inside this block the API builds every evaluator with `factory(**settings)` (the
    keywords of `evaluators.build_evaluator`): an object with the `Evaluator` protocol of
    `agent.core.protocol`, e.g. an in-memory one in tests or another black-box model."""
    token = _EVALUATOR_FACTORY.set(factory)
    try:
        yield factory
    finally:
        _EVALUATOR_FACTORY.reset(token)


# -- where progress goes -------------------------------------------------------------------
def on_stderr(line: str) -> None:
    """An `echo` that writes each line to stderr, where the commands write the lines of the
    local LLM's start and of the image features."""
    print(line, file=sys.stderr, flush=True)


def nowhere(line: str) -> None:
    """The `echo` of `echo=None`."""


def check_echo(where: str, echo) -> None:
    if echo is not None and not callable(echo):
        raise PromptclimbError(f"{where}: echo {echo!r}: expected a function taking one line of text "
                               "(e.g. print, list.append) or None")


def draws_bars(echo) -> bool:
    """Whether a call with this `echo` draws progress bars (on stderr, where it is a terminal, as
    the commands do): only one that writes its lines to the terminal itself, `print` (the
    default) or `on_stderr`; with None or another function nothing but `echo` gets a line."""
    return echo is print or echo is on_stderr


# -- search ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchResult:
    """What `search()` found. Everything else is in the run folder (`load()` reads it)."""

    run_dir: Path
    best: str  # the best template on the selection split (a soft-prompt run's: its label, "<soft: ...> {class}.")
    accuracy: dict[str, float]  # the best template's accuracy per split (test: measured once, at the end)
    ensemble: list[str] | None  # the top-k ensemble, when it beat the best template alone on val
    summary: dict = field(repr=False)  # summary.json
    classnames: list[str] | None = None  # the class names found with the best template (None: a soft prompt)
    # adapter=...: summary.json's adapter section (its accuracy; "result": "adapter" where prompt + adapter
    # beat the prompt alone on val and is the run's result, which `accuracy` above is not); None without one
    adapter: dict | None = None

    @property
    def templates(self) -> list[str]:
        """What to use: the ensemble when it was chosen, else the best template alone (for
        `evaluate()`; a soft-prompt run's is its label, which nothing scores again: its figures
        are in `summary`)."""
        return list(self.ensemble) if self.ensemble else [self.best]

    def load(self) -> "Run":
        """The whole run read back: `promptclimb.load_run(result.run_dir)`."""
        return load_run(self.run_dir)


def search(dataset: str | None = None, shots: int | None = None, backbone: str | None = None, llm: str | None = None, *,
           echo: Callable[[str], None] | None = print, config: str | os.PathLike | Sequence | None = None,
           **knobs) -> SearchResult:
    """Search for the best prompt template, exactly as `promptclimb search` does.

    The keywords are the command's long options with `_` for `-` (`--max-calls` is
    `max_calls=`, `--llm` is `llm=`, `--ensemble` is `ensemble=`, `--adapter` takes a name or
    a list); each is checked as on the command line, and one that is left out (or None)
    takes the `config=` file's value, else the command's default (`promptclimb search --help`
    lists them all). Progress lines go to `echo` (None: nowhere), every one the command
    prints: the local LLM server's start and each split's image features (which the command
    prints on stderr) too; the progress bars of long steps (encoding images, assembling the
    local LLM's model the first time)
    are drawn on stderr only with `print` (the default) or `on_stderr`. `classnames=` takes
    a set name or a file as --classnames does, or a list of names (one per class, in class
    order) as `evaluate()` does; the list is recorded in config.json. `resume="RUN"` (or a
    `SearchResult`, a `load_run()` run) continues a killed run with its saved settings (an
    option given again with another value, other start names included, is refused).
    `config=` is --config: a TOML file (or a
    list of them, a later one overriding an earlier) whose [search] table sets any option;
    a keyword given here overrides it (its `json` setting, for printing, is left out); a
    keyword spelled as in that table (`**{"pool-sample": 4}`) is taken as its `_` keyword.
    `result.run_dir` is absolute (it holds after an `os.chdir`).
    Raises PromptclimbError with a readable message for bad input.
    """
    from promptclimb.agent.options import (BY_KEYWORD, FROM_FILE, GIVEN, PYTHON_OPTIONS, read_config_file, resolve,
                                           said_from_file, table_keywords, unknown_keys)
    from promptclimb.agent.pipeline import run_search
    from promptclimb.agent.runs.reading import find_run
    from promptclimb.agent.runs.recorded import run_classnames

    check_echo("search()", echo)
    refused = unknown_keys(knobs, [o.keyword for o in PYTHON_OPTIONS], "search(): ")  # said as spelled
    if refused:
        raise refused
    knobs = table_keywords(knobs, "search(): ", dashes=False)  # `**toml["search"]`: pool-sample is pool_sample
    knobs = repeatable_as_lists(knobs)
    if knobs.get("resume") is not None:
        knobs["resume"] = run_to_continue(knobs["resume"])
    files = [] if config is None else [config] if isinstance(config, (str, os.PathLike)) else config
    if not isinstance(files, (list, tuple)) or not all(isinstance(f, (str, os.PathLike)) for f in files):
        raise PromptclimbError(f"search(): config={config!r}: expected a TOML file's path, or a list of them")
    from_files, file_of = {}, {}
    for path in files:
        read = read_config_file(path)
        from_files.update(read)
        file_of.update({BY_KEYWORD[k].name: path for k in read})
    typed = {k: v for k, v in {"dataset": dataset, "shots": shots, "backbone": backbone, "llm": llm, **knobs}.items()
             if v is not None}
    given = {**{k: v for k, v in from_files.items() if not BY_KEYWORD[k].cli_only}, **typed}
    opts = resolve(given, "search(): ", PYTHON_OPTIONS)
    opts[GIVEN] = frozenset(o.name for o in PYTHON_OPTIONS if given.get(o.keyword) is not None)
    opts[FROM_FILE] = {name: path for name, path in file_of.items() if name not in {BY_KEYWORD[k].name for k in typed}}
    try:
        summary = run_search(opts, echo or nowhere, evaluator_factory=_EVALUATOR_FACTORY.get(), aside=echo or nowhere,
                             bars=draws_bars(echo))
    except PromptclimbError as exc:
        raise said_from_file(exc, opts[FROM_FILE])
    runs_dir = Path(opts["runs_dir"])
    run_dir = find_run(opts["resume"], runs_dir) if opts["resume"] is not None else runs_dir / summary["run_id"]
    ensemble = summary.get("ensemble") or {}
    # absolute: a relative one (runs/<id>) no longer led to the run once the notebook changed folder
    return SearchResult(run_dir=Path(absolute(run_dir)), best=summary["best"]["template"],
                        accuracy=dict(summary["best"]["accuracy"]),
                        ensemble=list(ensemble["templates"]) if ensemble.get("chosen") else None,
                        summary=summary, classnames=run_classnames(summary), adapter=summary.get("adapter"))


def repeatable_as_lists(knobs: dict) -> dict:
    """search()'s keywords with a repeatable option (`adapter=`) given as a numpy array or a
    pandas Series of names (`np.array(["cache", "all"])`, a frame's column) as the list it
    holds, as a list or a tuple is taken: the option's check takes those alone, and refused
    the array whole ("expected a name or a list of names")."""
    from promptclimb.agent.options import PYTHON_OPTIONS

    repeatable = {o.keyword for o in PYTHON_OPTIONS if o.multiple}
    return {k: as_list(v) if k in repeatable and as_list(v) is not None else v for k, v in knobs.items()}


def run_to_continue(resume) -> str | os.PathLike:
    """search()'s `resume`: a run's id or path, or the API's own result naming one (`run_path`);
    True and False are refused in words of their own: no run is "the latest"."""
    from promptclimb.agent.options import as_bool

    if as_bool(resume) is not None:
        raise PromptclimbError(f"search(): --resume {resume!r}: expected the run to continue (its id, its path, its "
                               "SearchResult or load_run() of it); leave resume out to start a new run")
    return run_path(resume)


def run_path(run):
    """`run` as a run's path where it is one of the API's own results, a `SearchResult` (its
    run_dir) or a `load_run()` run (its path), so that `transfer(search(...))` and
    `search(resume=result)` take them (they were refused, quoting the whole result); else as it is."""
    from promptclimb.agent.runs.run import Run  # pandas: the caller reads the run anyway

    if isinstance(run, SearchResult):
        return run.run_dir
    return run.path if isinstance(run, Run) else run


# -- checking a call ------------------------------------------------------------------------
def check_call(where: str, unknown: dict, **values) -> dict:
    """An API function's keywords (`values`: its named ones; `unknown`: the rest), checked before
    anything is loaded: an unknown keyword is refused with the valid ones listed, one spelled
    with dashes (`data-root`, a TOML table's key splatted into the call) is its named one unless
    that is given too (`table_keywords`), and a keyword that is a search option is checked as
    that option is (agent/options.py: 1.5 shots, a seed "x", a backbone 5 are refused, never
    converted), `device` by name (agent/core/devices.py). The values as checked, by keyword;
    PromptclimbError naming `where`."""
    from promptclimb.agent.core.devices import check_device_name
    from promptclimb.agent.options import BY_KEYWORD, check_value, table_keywords, unknown_keys

    refused = unknown_keys(sorted(unknown), values, f"{where}: ")
    if refused:
        raise refused
    values = table_keywords(unknown, f"{where}: ", named=values, dashes=False)
    checked = dict(values)
    for keyword, value in values.items():
        if keyword == "device":
            checked[keyword] = check_device_name(value, f"{where}: device")
        elif keyword == "splits":
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, (list, tuple)) or not names or any(n not in SPLITS for n in names):
                raise PromptclimbError(f"{where}: splits {value!r}: expected a list of {', '.join(SPLITS)}")
            checked[keyword] = tuple(names)
        elif keyword in BY_KEYWORD:
            checked[keyword] = check_value(BY_KEYWORD[keyword], value, f"{where}: ")
    return checked


# -- scoring templates ----------------------------------------------------------------------
def check_templates(templates: str | Sequence[str]) -> list[str]:
    """The templates as a list, or PromptclimbError naming the first bad one and why. Any
    sequence of text is a list: a pandas column (`run.ranked().template.head(3)`) or a numpy
    array of them was refused, in an 11-line message."""
    listed = [templates] if isinstance(templates, str) else as_text_list(templates)
    if listed is None:  # a list with one bad item (a NaN in a column): that item, not the whole list
        said = f": {not_text(templates)}" if not_text(templates) else f" {one_line(templates)}"
        raise PromptclimbError(f"templates{said}: expected a template or a list of templates (text with one {{}} "
                               "for the class name)")
    return check_template_list(listed)



def score_templates(templates: Sequence[str], *, splits: Sequence[str] = SPLITS, device: str | None = None,
                    echo: Callable[[str], None] | None = None, bars: bool = True,
                    **settings) -> tuple[list["Score"], "Evaluator"]:
    """The evaluator built from `settings` (the keywords of `EvaluatorSettings`: dataset,
    shots, seed, backbone, pretrained, weights, data_root, precision, ...; None = its
    default) and each template's Score on `splits`: what `evaluate()`, `transfer()` and
    `promptclimb eval` share. `echo`, `bars`: as `evaluator_for`. Imports torch."""
    templates = check_templates(templates)  # before the (slow) evaluator is built
    evaluator = evaluator_for(device=device, echo=echo, bars=bars, **settings)
    return evaluator.score(templates, splits=tuple(splits)), evaluator


def evaluator_for(*, device: str | None = None, echo: Callable[[str], None] | None = None, bars: bool = True,
                  **settings) -> "Evaluator":
    """The evaluator built from `settings` (as `score_templates`), by the factory in use. The
    CLIP evaluator says each split's image features to `echo` (None: stderr, as the commands
    do) and draws a progress bar while it encodes images unless `bars` is False; a factory set
    with `using_evaluator` is given neither (its evaluator says what it says)."""
    from promptclimb.agent.core.devices import check_device_name
    from promptclimb.agent.options import check_dataset_name
    from promptclimb.agent.pipeline import default_evaluator_factory

    check_device_name(device)
    if _EVALUATOR_FACTORY.get() is None:  # the CLIP evaluator's datasets are known before torch is imported
        check_dataset_name(settings.get("dataset"))
        # its image features are cached there: a file in the way had been a NotADirectoryError once the model
        # had loaded (as `search()` and `promptclimb eval` check it)
        check_writable(cache_home(), "the cache folder, PROMPTCLIMB_HOME")
    build_evaluator = _EVALUATOR_FACTORY.get() or partial(default_evaluator_factory, echo=echo, bars=bars)
    return build_evaluator(**{k: v for k, v in settings.items() if v is not None}, device=device)


def scores_frame(templates: Sequence[str], scores: Sequence["Score"]) -> "pd.DataFrame":
    """One row per template: accuracy per split (columns named by the split, as in
    `Run.scores()`), then `<split>_prob` (mean probability of the true class) and
    `<split>_loss` (mean cross-entropy)."""
    import pandas as pd

    rows = []
    for template, score in zip(templates, scores):
        row = {"template": template, **{s: float(v) for s, v in score.accuracy.items()}}
        row |= {f"{s}_prob": float(v) for s, v in score.prob.items()}
        row |= {f"{s}_loss": float(v) for s, v in score.loss.items()}
        rows.append(row)
    return pd.DataFrame(rows)


def evaluate(templates: str | Sequence[str], dataset: str = "fashion-mnist", shots: int = 1, seed: int = 0,
             backbone: str | None = None, *, pretrained: str | None = None, weights: str | None = None,
             data_root: str | None = None, device: str | None = None,
             splits: Sequence[str] = SPLITS, precision: str | None = None,
             classnames: str | Sequence[str] | None = None, image_column: str | None = None,
             label_column: str | None = None, echo: Callable[[str], None] | None = print,
             **unknown) -> "pd.DataFrame":
    """Score templates on a few-shot split, as `promptclimb eval` does: a DataFrame with one
    row per template and the accuracy (`train`, `val`, `test`), `<split>_prob` and
    `<split>_loss` per split. The backbone defaults as in `promptclimb search` (the
    embedded `demo` model for fashion-mnist, else OpenAI's ViT-B-32). `precision`: "fp32"
    (the default, exact) or "bf16" (faster on CPUs with bf16 instructions), as --precision.
    `classnames`: the names filled in: a list (one per class, in class order), a named set
    ("published", the default; "clean" for fashion-mnist, "coop" for eurosat) or a file, as
    --classnames; a run's found names are `SearchResult.classnames`. `image_column`,
    `label_column`: an hf dataset's columns (`dataset="hf"` or "hf:OWNER/NAME"), as
    --image-column / --label-column: where its features do not tell (two Image columns, a
    label that is not a ClassLabel: its distinct values become the classes); refused for
    other datasets. `echo`: where the lines go that say what was encoded or reused of each
    split's images (None: nowhere), as `search()`'s. `shots` or `seed` given as None takes its
    default (1, 0), as in search(). Bad input raises PromptclimbError before anything is loaded."""
    from promptclimb.agent.core.defaults import default_backbone
    from promptclimb.agent.options import defaults

    checked = check_call("evaluate()", unknown, templates=templates, dataset=dataset, shots=shots, seed=seed,
                         backbone=backbone, pretrained=pretrained, weights=weights, data_root=data_root,
                         device=device, splits=splits, precision=precision, image_column=image_column,
                         label_column=label_column, classnames=classnames, echo=echo)
    check_echo("evaluate()", echo)
    if dataset is None:
        raise PromptclimbError("evaluate(): dataset is required")
    from promptclimb.evaluators.datasets import canonical_dataset_name  # numpy and PIL, not torch

    checked["dataset"] = canonical_dataset_name(checked["dataset"])  # hf:o/n:default is hf:o/n, as `eval` says it
    (dataset, shots, seed, backbone, pretrained, weights, data_root, splits, precision, image_column, label_column,
     classnames) = (checked[k] for k in ("dataset", "shots", "seed", "backbone", "pretrained", "weights", "data_root",
                                         "splits", "precision", "image_column", "label_column", "classnames"))
    # None takes the default, as search()'s keywords do: the evaluator has none of its own
    # (shots=None had ended in a TypeError from build_evaluator)
    shots, seed = (defaults()[k] if v is None else v for k, v in (("shots", shots), ("seed", seed)))
    backbone, pretrained = default_backbone(dataset, backbone, pretrained, weights)
    templates = check_typed_templates(check_templates(templates))  # typed: no line break or tab either
    scores, _ = score_templates(templates, dataset=dataset, shots=shots, seed=seed, backbone=backbone,
                                pretrained=pretrained, weights=weights, data_root=data_root, device=device,
                                splits=splits, precision=precision, classnames=classnames,
                                image_column=image_column, label_column=label_column, echo=echo or nowhere,
                                bars=draws_bars(echo))
    return scores_frame(templates, scores)


# -- reading a run --------------------------------------------------------------------------
def load_run(path_or_id: "str | Path | SearchResult | Run", runs_dir: str | Path | None = None) -> "Run":
    """A run folder read back, from its path, its id under `runs_dir` (None: runs, as search()'s)
    or a unique start of one, or the run of a `SearchResult` or a `Run` (read again):
    `.scores()`, `.ranked()`, `.winners()`, `.iterations_frame()` and
    `.conversation_frame()` are pandas frames; `.skipped` lists history lines that could not
    be read (a damaged file still shows what it holds). `run.path` is absolute (it holds after an
    `os.chdir`)."""
    from promptclimb.agent.core.runfiles import CONFIG
    from promptclimb.agent.options import defaults
    from promptclimb.agent.runs.reading import find_run
    from promptclimb.agent.runs.run import load_run as read_run

    path_or_id = run_path(path_or_id)
    if not isinstance(path_or_id, (str, os.PathLike)) or not os.fspath(path_or_id):
        raise PromptclimbError(f"load_run(): {one_line(path_or_id)}: expected a run folder's path or a run id")
    # as search() and transfer() check it: runs_dir='' had been the current folder, unsaid; None is the
    # default, as search()'s (it had been a TypeError)
    runs_dir = check_call("load_run()", {}, runs_dir=runs_dir)["runs_dir"] or defaults()["runs_dir"]
    run = os.fspath(path_or_id)
    if isinstance(path_or_id, os.PathLike) or "/" in run or os.sep in run:  # a path, not an id under runs_dir
        here = Path(run)
        if not any((p / CONFIG).is_file() for p in (here, Path(runs_dir) / run)):
            if here.is_dir():
                raise PromptclimbError(f"{here} is not a run folder (it has no {CONFIG})")
            raise PromptclimbError(f"no run folder {here}" + (" (it is a file)" if here.exists() else ""))
    # absolute, as SearchResult.run_dir: a relative one (runs/<id>) no longer led to the run once the notebook
    # changed folder, and every method that reads a file of it (transfers(), ledger(), ...) broke
    return read_run(Path(absolute(find_run(run, runs_dir))))


# -- transfer -------------------------------------------------------------------------------
def transfer(run: "Run | SearchResult | str | Path", backbone: str, *, pretrained: str | None = None,
             weights: str | None = None, top: int | None = None, data_root: str | None = None,
             device: str | None = None, runs_dir: str | Path | None = None, save: bool = True,
             precision: str | None = None, echo: Callable[[str], None] | None = print, **unknown) -> "pd.DataFrame":
    """Re-score every template a run scored, plus the baseline "a photo of a {}.", on another
    backbone with the run's dataset split (dataset, shots, seed; `data_root` to point at the
    images elsewhere), as `promptclimb transfer` does: how well the run's ranking carries over.
    `run`: a `load_run()` run, a `SearchResult`, or a run's path or id under `runs_dir` (None: runs).

    A DataFrame, one row per template, best first as the run ranked them: `source_rank`,
    `source_train/val/test` (from the run; test only for its best template), `names` (the
    classes renamed in the names it was scored with, "Trouser -> jeans; ..."; "" for the start
    names), `target_train/val/test`, and `target_rank` / `target_test_rank` among the run's
    templates (on the run's selection split(s) / on test). `.attrs["transfer"]` is the
    summary (`transfer_summary`): Spearman's rho of source vs target accuracies, where the
    source winner ranks on the target, the baseline's and the run's ensemble's target test
    accuracy; `.attrs["rank_correlation"]` its two rhos. With `save`, the run folder gets
    transfer-<backbone>.csv (every row), .json (the summary) and .png (the scatter plot);
    `.attrs["path"]` is the csv. `top`: the returned frame keeps only the best `top` rows
    (and the baseline); the summary and the files always cover every template. `precision`:
    the target's encoders, "fp32" (None, the default) or "bf16" (as --precision). `echo`:
    where the lines go that say what was encoded or reused of each split's images on the
    target (None: nowhere), as `search()`'s. Bad input raises PromptclimbError before
    anything is loaded.
    """
    from promptclimb.agent.adapt import check_run_data
    from promptclimb.agent.runs.recorded import run_classnames, start_names_as_built, warn_names_by_position
    from promptclimb.agent.runs.run import Run
    from promptclimb.agent.options import as_bool, as_whole
    from promptclimb.agent.runs.store import run_argument
    from promptclimb.agent.softsearch import is_soft_prompt_run, transfer_refusal

    checked = check_call("transfer()", unknown, run=run, backbone=backbone, pretrained=pretrained, weights=weights,
                         top=top, data_root=data_root, device=device, runs_dir=runs_dir, save=save,
                         precision=precision, echo=echo)
    # as checked: a keyword spelled with dashes (`data-root`) had been dropped, unsaid
    data_root, runs_dir = checked["data_root"], checked["runs_dir"]
    check_echo("transfer()", echo)
    run = run if isinstance(run, Run) else run_path(run)  # a Run is taken as it was read
    if not isinstance(run, (Run, str, Path)):
        raise PromptclimbError(f"transfer(): run {one_line(run)}: expected a run (promptclimb.load_run), "
                               "its id or its path")
    if not isinstance(backbone, str) or not backbone:
        raise PromptclimbError(f"transfer(): backbone {backbone!r}: expected the name of the backbone to transfer to")
    if top is not None and (as_whole(top) is None or top < 1):  # np.int64 too, as a frame's cell gives it
        raise PromptclimbError(f"transfer(): top {top!r}: expected a whole number of at least 1")
    top = None if top is None else as_whole(top)
    if as_bool(save) is None:
        raise PromptclimbError(f"transfer(): save {save!r}: expected True or False")
    loaded = run if isinstance(run, Run) else load_run(run, runs_dir)
    if is_soft_prompt_run(loaded.config):
        raise PromptclimbError(transfer_refusal(loaded))
    args = loaded.args
    if not args.get("dataset"):
        raise PromptclimbError(f"{loaded.path / 'config.json'} does not say which dataset the run used")
    check_run_data(loaded.path, loaded.config, data_root, "transfer", run_argument(loaded.path), "--backbone", backbone)
    table = transfer_table(loaded)
    if loaded.final is None and echo is not None:  # `show` says so of a transfer the run has outgrown since
        echo(f"warning: {loaded.id} has not ended ({loaded.status}): the {int(table['source_rank'].notna().sum())} "
             "templates it has scored so far are transferred; transfer again once it has")
    # Each template goes to the target with the names the run scored it with (a names search
    # scores templates under several), so that source and target differ in the backbone only.
    # The evaluator starts from the run's start names, by the labels of its data where it started
    # from them (other data must hold those classes).
    start = start_names_as_built(loaded.config)
    data = {"dataset": args["dataset"], "data_root": data_root or args.get("data_root"),
            "image_column": args.get("image_column"), "label_column": args.get("label_column")}
    if start and not isinstance(start, dict):  # before the target model loads, as `eval --run` says it
        warn_names_by_position(loaded.path, loaded.config, data, (
            f"`promptclimb eval --run {loaded.id} --data-root {data['data_root']} --prompt TEMPLATE --classnames "
            f"FILE` ('folder,name' lines) scores a template with them matched by class"))
    evaluator = evaluator_for(
        backbone=backbone, pretrained=pretrained, weights=weights, shots=args.get("shots", 1), seed=args.get("seed", 0),
        device=device, precision=precision, echo=echo or nowhere, bars=draws_bars(echo), **data,
        classnames=start or args.get("classnames"))
    from promptclimb.agent.runs.recorded import warn_other_split

    warn_other_split(loaded.path, loaded.config, data, evaluator.info().get("split") or {})
    in_target_order = target_order(start, evaluator)
    by_names: dict = {}
    for i, names in table["names"].items():
        by_names.setdefault(names, []).append(i)
    for names, rows in by_names.items():
        scored = evaluator.score(list(table.loc[rows, "template"]), splits=SPLITS, classnames=in_target_order(names))
        for split in SPLITS:
            table.loc[rows, f"target_{split}"] = [float(s.accuracy[split]) for s in scored]
    # the baseline as the search's "What changed" and the README mean it: with the start names,
    # whatever names the run scored it with (its row in the table keeps those)
    row = table[table["template"] == BASELINE].iloc[0]
    baseline = row if row["names"] is None else {
        f"target_{s}": a for s, a in evaluator.score([BASELINE], splits=SPLITS)[0].accuracy.items()}
    baseline_target = {s: float(baseline[f"target_{s}"]) for s in SPLITS}
    # which names went with each template, in the csv a reader opens without the run: the classes
    # renamed from the start ("" for the start names)
    start_list = list(start.values()) if isinstance(start, dict) else list(start or ())
    table["names"] = [renames(start_list, names) for names in table["names"]]
    ours = table["source_rank"].notna()  # the baseline may be an extra row the run never scored
    target_sel = table[[f"target_{s}" for s in loaded.select_splits]].mean(axis=1)
    table["target_rank"] = target_sel.where(ours).rank(ascending=False, method="min")
    table["target_test_rank"] = table["target_test"].where(ours).rank(ascending=False, method="min")
    table["target_backbone"], table["target_pretrained"], table["target_weights"] = backbone, pretrained, weights
    ensemble = ((loaded.final or {}).get("ensemble") or {}).get("templates")
    best_names = run_classnames({"best": (loaded.final or {}).get("best") or {}})  # the ensemble's, as the run built it
    ensemble_test = float(evaluator.score_ensemble(ensemble, splits=("test",), classnames=in_target_order(
        tuple(best_names) if best_names else None)).accuracy["test"]) if ensemble else None
    summary = transfer_summary(loaded, table, backbone, pretrained, weights, precision or DEFAULT_PRECISION,
                               ensemble_test, baseline_target, other_data_root(data_root, args.get("data_root")))
    table.attrs["transfer"] = summary
    table.attrs["rank_correlation"] = summary["rank_correlation"]
    if save:
        from promptclimb.agent.core.files import write_json_atomic, write_text_atomic
        from promptclimb.agent.runs.plots import plot_transfer

        path = loaded.path / summary["files"]["csv"]
        write_text_atomic(path, table.to_csv(index=False, float_format="%.6g"))
        write_json_atomic(path.with_suffix(".json"), summary)
        plot_transfer(table, summary, loaded.path / summary["files"]["plot"])
        table.attrs["path"] = path
    if top is not None:
        table = table[(table["source_rank"] <= top) | (table["template"] == BASELINE)]
    return table


def target_order(start: dict | list | None, evaluator: "Evaluator"):
    """names (a tuple in the run's class order, None: its start names) -> the same names in
    the class order of the target's data (another folder may list the classes otherwise)."""
    if not isinstance(start, dict):
        return lambda names: names
    start_names = list(start.values())  # by label, in the run's order: the target's start names in its own
    order = [start_names.index(name) for name in evaluator.info()["dataset"]["classnames"]]
    return lambda names: None if names is None else tuple(names[i] for i in order)


def transfer_table(run: "Run") -> "pd.DataFrame":
    """Source accuracies (from the run) of every template it scored, best first, with the names
    it was scored with ("names": a tuple, None for the start names), and the baseline."""
    import pandas as pd

    ranked = run.ranked()
    if ranked.empty:
        raise PromptclimbError(f"run {run.id} has no scored template to transfer")
    ranked = ranked.drop_duplicates("template")
    best = (run.final or {}).get("best") or {}
    templates = list(ranked["template"])
    n = len(templates)
    if BASELINE not in templates:
        templates.append(BASELINE)
    rows = []
    for i, template in enumerate(templates):
        hit = ranked[ranked["template"] == template]
        names = hit["names"].iloc[0] if not hit.empty and "names" in hit else None
        row = {"template": template, "source_rank": i + 1 if i < n else None,
               "names": tuple(names) if isinstance(names, (list, tuple)) else None}
        for split in ("train", "val"):
            row[f"source_{split}"] = hit[split].iloc[0] if not hit.empty and split in hit else math.nan
        row["source_test"] = (best.get("accuracy") or {}).get("test", math.nan) \
            if best.get("template") == template else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def other_data_root(given: str | None, the_runs: str | None) -> str | None:
    """The --data-root a transfer was given, absolute, when it is not the run's own: its
    accuracies are then of other images (a copy, or another set of the same classes), and its
    files say so; the file name does not, so a transfer there writes over the last one to the
    same backbone."""
    return absolute(given) if given and absolute(given) != absolute(the_runs) else None


def transfer_summary(run: "Run", table: "pd.DataFrame", backbone: str, pretrained: str | None,
                     weights: str | None, precision: str, ensemble_test: float | None,
                     baseline_target: dict[str, float], data_root: str | None = None) -> dict:
    """What a transfer shows, JSON-able (saved as transfer-<backbone>.json): Spearman's rho of
    the source and target accuracies of every template the run scored, on the run's
    selection split(s) and against target test; the source winner's ranks and accuracies on
    the target; the baseline (`baseline_target`: `a photo of a {}.` with the start names, on
    the target), the target's own best and the run's ensemble on target test; `data_root`:
    the images scored on the target where they are not the run's own (`other_data_root`)."""
    select = run.select_splits
    ours = table[table["source_rank"].notna()]
    source_sel = ours[[f"source_{s}" for s in select]].mean(axis=1, skipna=False)
    target_sel = ours[[f"target_{s}" for s in select]].mean(axis=1)
    winner = ours.iloc[0]
    baseline = table[table["template"] == BASELINE].iloc[0]
    target_best = ours.loc[target_sel.idxmax()]

    def number(value):
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    ensemble = ((run.final or {}).get("ensemble") or {})
    return {
        "v": 1, "run_id": run.id, "source_backbone": run.backbone,
        "target": {"backbone": backbone, "pretrained": pretrained, "weights": absolute(weights) if weights else None,
                   "precision": precision},
        "select": "+".join(select), "templates": len(ours),
        "rank_correlation": {"selection": number(rank_correlation(source_sel, target_sel)),
                             "test": number(rank_correlation(source_sel, ours["target_test"]))},
        "winner": {"template": winner["template"], "target_rank": int(winner["target_rank"]),
                   "target_test_rank": int(winner["target_test_rank"]),
                   "source": {s: number(winner[f"source_{s}"]) for s in SPLITS},
                   "target": {s: number(winner[f"target_{s}"]) for s in SPLITS}},
        "baseline": {"template": BASELINE, "in_run": number(baseline["source_rank"]) is not None, "names": "start",
                     "target": {s: number(baseline_target[s]) for s in SPLITS}},
        "target_best": {"template": target_best["template"], "source_rank": int(target_best["source_rank"]),
                        "target": {s: number(target_best[f"target_{s}"]) for s in SPLITS}},
        "ensemble": None if not ensemble.get("templates") else {
            "templates": list(ensemble["templates"]), "chosen": ensemble.get("chosen"),
            "source_test": number((ensemble.get("accuracy") or {}).get("test")), "target_test": number(ensemble_test)},
        **({"data_root": data_root} if data_root else {}),
        "files": {"csv": transfer_name(backbone, "csv", pretrained, precision, weights),
                  "plot": transfer_name(backbone, "png", pretrained, precision, weights)},
    }


def rank_correlation(a: "pd.Series", b: "pd.Series") -> float:
    """Spearman's rho (Pearson on the ranks, ties averaged; no scipy needed) over the pairs
    with both values; NaN when fewer than 2 pairs or either side is all ties."""
    import pandas as pd

    both = pd.concat([a, b], axis=1).dropna()
    if len(both) < 2:
        return math.nan
    ranks = both.rank()
    return float(ranks.iloc[:, 0].corr(ranks.iloc[:, 1]))


def transfer_name(backbone: str, ext: str = "csv", pretrained: str | None = None,
                  precision: str | None = None, weights: str | Path | None = None) -> str:
    """transfer-<backbone>[-<pretrained>|-<weights file>-<its path's hash>][-<precision>].<ext>
    (csv: the rows, json: the summary, png: the scatter plot), made safe as a file name
    (hf-hub:org/x): a transfer to other weights of the same backbone (ViT-B-32 openai, then
    laion2b_s34b_b79k, or another --weights file of the same name), or in bf16 beside fp32,
    does not write over the last."""
    import hashlib

    file = [f"{Path(weights).stem}-{hashlib.sha256(absolute(weights).encode()).hexdigest()[:6]}"] if weights else []
    target = "-".join([backbone, *([pretrained] if pretrained else []), *file,
                       *([precision] if precision and precision != DEFAULT_PRECISION else [])])
    return f"transfer-{re.sub(r'[^A-Za-z0-9._-]+', '_', target)}.{ext}"
