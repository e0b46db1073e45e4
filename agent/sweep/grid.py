"""A sweep's grid and settings: its cells (dataset x backbone x shots x seed), every cell's search
options checked before Ray starts, and sweep.json written and read back. Its own module: the driver,
sweep-report and MLflow's sync of a sweep all read these settings, and none of it needs Ray."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import time
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.files import write_json_atomic
from promptclimb.agent.core.paths import absolute
from promptclimb.agent.core.runfiles import HISTORY, LOCK, SWEEP_FILE
from promptclimb.agent.runs.store import SWEEP, check_folder_name, claim_folder
from promptclimb.agent.sweep.cell import cell_summary

GRID_AXES = ("dataset", "backbone", "shots", "seeds")
# Search options that say how and where a cell runs, not what it computes: they may change
# between two runs of the same sweep, and apply to that run only (sweep.json keeps the ones
# the sweep was started with). --parallel gives the same results (docs/sweeps.md); a killed
# cell resumes with the lanes it was started with; --mlflow only says where the cells are logged.
EXECUTION_OPTIONS = ("base_url", "device", "timeout", "max_tries", "no_cache", "runs_dir", "parallel", "mlflow")
# What a cell's search takes from the grid (and its folder) instead of the options.
CELL_OPTIONS = ("dataset", "backbone", "shots", "seed", "name", "resume", "json")
# The most cells a grid may have (datasets x backbones x shots x seeds), refused before anything
# starts: --seeds 0-99999999999 had built a set of 10**11 seeds, and would have run as many cells.
MAX_CELLS = 10_000


@dataclass(frozen=True)
class Cell:
    dataset: str
    backbone: str  # resolved: the search's default backbone when the grid names none
    pretrained: str | None
    shots: int
    seed: int

    @property
    def name(self) -> str:
        """The cell's folder name: its grid point, each value made safe as one folder name
        (hf:org/data, hf-hub:org/model)."""
        dataset, backbone = (re.sub(r"[^A-Za-z0-9._+-]+", "_", v) for v in (self.dataset, self.backbone))
        return f"{dataset}-{backbone}-{self.shots}shot-seed{self.seed}"


def parse_seeds(values: Sequence) -> list[int]:
    """Seeds from "1-3", "1,4,7", 5 or a list of those: sorted, each once. Each seed is
    checked as `search --seed` checks it, and the seeds are counted before any set is
    built: --seeds 18446744073709551616 had failed inside Ray, --seeds 0-99999999999 had
    built a set of 10**11 seeds."""
    from promptclimb.agent.options import BY_KEYWORD, check_value

    seed = replace(BY_KEYWORD["seed"], flag="--seeds")
    spans: list[tuple[int, int]] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise PromptclimbError(f"seeds: {value!r} is not a seed, a range like 1-3 or a list like 1,4")
        if isinstance(value, int):  # a TOML number: -1 or 2**64 is out of --seed's range, not "not a seed"
            value = str(check_value(seed, value, "grid: "))
        for part in value.replace(" ", "").split(","):
            found = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not found or (found[2] and int(found[2]) < int(found[1])):
                raise PromptclimbError(f"seeds: {part!r} is not a seed, a range like 1-3 or a list like 1,4")
            spans.append((int(found[1]), check_value(seed, int(found[2] or found[1]), "grid: ")))
    merged: list[list[int]] = []  # 1-3 with 2 is 3 seeds, not 4
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    count = sum(high - low + 1 for low, high in merged)
    if count > MAX_CELLS:
        raise PromptclimbError(f"grid: --seeds {','.join(map(str, values))}: {count:,} seeds, more than the "
                               f"{MAX_CELLS:,} cells a sweep may have; give fewer seeds")
    return [s for low, high in merged for s in range(low, high + 1)]


def read_grid_file(path: str | Path) -> tuple[dict, dict]:
    """(grid, search options) from a TOML file with a [grid] table (dataset, backbone, shots,
    seeds) and a [search] table (any `promptclimb search` option, by its long name: read as
    `search --config` reads its table, `max-calls` or `max_calls`, a key given both ways
    refused). The [search] keys and values are checked here, naming the file; the grid's by
    `check_grid`."""
    from promptclimb.agent.options import BY_KEYWORD, read_toml, resolve, table_keywords, unknown_keys

    data = read_toml(path, "grid file")  # missing, not UTF-8, not TOML: one line naming the file
    unknown = sorted(set(data) - {"grid", "search"})
    if unknown:
        raise PromptclimbError(f"{path}: unknown table(s) {', '.join(unknown)}; a grid file has [grid] and [search]")
    grid, search = data.get("grid", {}), data.get("search", {})
    for table, value in (("grid", grid), ("search", search)):
        if not isinstance(value, dict):
            raise PromptclimbError(f"{path}: {table} must be a [{table}] table, not {value!r}")
    bad = sorted(set(grid) - set(GRID_AXES))
    if bad:
        raise PromptclimbError(f"{path}: unknown [grid] key(s) {', '.join(bad)}; the axes are {', '.join(GRID_AXES)}")
    grid = {axis: value if isinstance(value, list) else [value] for axis, value in grid.items()}
    where = f"{path}: [search] "
    not_here = [key for key in search if key.replace("-", "_") in (*CELL_OPTIONS, *GRID_AXES)]
    if not_here:
        raise PromptclimbError(where + not_a_sweep_option(not_here))
    if any(key.replace("-", "_") == "runs_dir" for key in search):  # stored in sweep.json, and not used
        raise PromptclimbError(f"{where}runs-dir: a grid file does not say where the sweep goes; give --runs-dir on "
                               "the command line (and to its reruns)")
    # as the file spells them, each with its nearest: a sweep's own, not those the grid and each cell set
    refused = unknown_keys(search, [k for k in BY_KEYWORD if k not in (*CELL_OPTIONS, "runs_dir")], where,
                           dashes=True)
    if refused:
        raise refused
    search = table_keywords(search, where)
    resolve(search, where)  # every value checked now, with the file named
    return grid, search


def not_a_sweep_option(keys) -> str:
    """Why search options (`keys`) that the grid and each cell set are refused in a sweep's."""
    axes = [k for k in keys if k.replace("-", "_") in ("dataset", "backbone", "shots", "seed", "seeds")]
    others = [k for k in keys if k not in axes]
    said = [f"{', '.join(axes)}: an axis of the grid ([grid] dataset, backbone, shots, seeds; or --dataset, "
            "--backbone, --shots, --seeds)"] if axes else []
    said += [f"{', '.join(others)}: not for a sweep (each cell's run is named and continued by the sweep; "
             "sweep-report prints its results, --format json)"] if others else []
    return "; ".join(said)


def check_grid(grid: dict) -> dict:
    """The grid with every axis filled in (defaults, for an axis not given: the search's
    backbone, 1 shot, seed 0; `backbone: []` is how sweep.json keeps that default, an empty
    list of shots or seeds is refused), each value checked as strictly as the search option
    it becomes: a dataset the CLIP evaluator knows (so no value can name a folder outside the
    sweep), a backbone name, whole shots of at least 1 (1.7 or true is refused, never run as
    1), seeds."""
    from promptclimb.agent.options import BY_KEYWORD, check_dataset_name, check_value

    def names(axis: str) -> list[str]:
        values = grid.get(axis) or []
        for value in values:
            if not isinstance(value, str) or not value.strip():
                raise PromptclimbError(f"grid {axis} {value!r}: expected a {axis} name")
        return list(values)

    def given(axis: str, default: list) -> list:
        values = grid.get(axis)
        if values is None:
            return default
        if not values:  # `shots = []` in a grid file had become 1 shot, where `dataset = []` was refused
            raise PromptclimbError(f"grid {axis}: an empty list; give at least one value, or leave the key out")
        return values

    # a value given twice is one grid point, on every axis as for seeds (1-3 with 2 is 1, 2, 3)
    datasets = [check_dataset_name(d, "grid dataset") for d in names("dataset")]
    shots = [check_value(BY_KEYWORD["shots"], s, "grid: ") for s in given("shots", [1])]
    grid = {"dataset": _once(datasets), "backbone": _once(names("backbone")), "shots": _once(shots),
            "seeds": parse_seeds(given("seeds", [0]))}
    if not grid["dataset"]:
        raise PromptclimbError("a sweep needs at least one --dataset (or a [grid] dataset list in --grid FILE)")
    sizes = [len(grid["dataset"]), len(grid["backbone"]) or 1, len(grid["shots"]), len(grid["seeds"])]
    if math.prod(sizes) > MAX_CELLS:
        axes = " x ".join(f"{size:,} {axis}" for size, axis in zip(sizes, ("datasets", "backbones", "shots", "seeds")))
        raise PromptclimbError(f"grid of {math.prod(sizes):,} cells ({axes}): a sweep may have at most "
                               f"{MAX_CELLS:,} cells; split it into several sweeps")
    return grid


def _once(values: list) -> list:
    """Each value once, where it first came."""
    return list(dict.fromkeys(values))


def check_each_dataset_once(datasets: list[str]) -> None:
    """PromptclimbError in one line where two of a grid's dataset names (each given once:
    `_once`) are spellings of one dataset (`hf:a/b`, `hf:a/b:` and `hf:a/b:default`): each had
    its own cell, folder and search, on the same data."""
    from promptclimb.evaluators.datasets import canonical_dataset_name  # numpy and PIL, not torch

    spellings: dict[str, list[str]] = {}
    for name in datasets:
        spellings.setdefault(canonical_dataset_name(name), []).append(name)
    twice = [names for names in spellings.values() if len(names) > 1]
    if twice:
        said = "; ".join(f"one dataset {'twice' if len(names) == 2 else f'{len(names)} times'}: "
                         + ", ".join(names[:-1]) + f" and {names[-1]}" for names in twice)
        raise PromptclimbError(f"the grid lists {said}; give {'it' if len(twice) == 1 else 'each'} once")


def grid_cells(settings: dict) -> list[Cell]:
    """Every cell of the grid, in a fixed order (dataset, backbone, shots, seed)."""
    from promptclimb.agent.core.defaults import default_backbone

    grid, search = settings["grid"], settings["search"]
    if search.get("weights") and len(grid["backbone"]) > 1:
        raise PromptclimbError("--weights applies to every cell: give a single --backbone with it")
    cells = []
    for dataset in grid["dataset"]:
        for backbone in grid["backbone"] or [None]:
            name, pretrained = default_backbone(dataset, backbone, search.get("pretrained"), search.get("weights"))
            cells += [Cell(dataset, name, pretrained, shots, seed) for shots in grid["shots"] for seed in grid["seeds"]]
    names = [check_folder_name(c.name, "cell") for c in cells]
    if len(set(names)) < len(names):
        raise PromptclimbError("two cells of the grid would share a folder name (" + ", ".join(
            sorted({n for n in names if names.count(n) > 1})) + "): two values of an axis differ only in characters "
            "a folder name cannot hold")
    return cells


def search_options(search: dict) -> dict:
    """The options of every cell's search: the command's defaults, overridden by `search`
    (long option names, `_` for `-`), checked as on the command line, but for a value a sweep
    recorded before it was refused (`resolve_recorded`; one given now is refused by
    `prepare_sweep`). Paths are made absolute: a Ray worker does not start in the driver's folder."""
    from promptclimb.agent.adapt import check_kinds
    from promptclimb.agent.core.devices import check_device_name
    from promptclimb.agent.core.pools import POOLS

    not_here = sorted(set(search) & set(CELL_OPTIONS))
    if not_here:
        raise PromptclimbError(not_a_sweep_option(not_here))
    opts = resolve_recorded(search, "sweep: ")
    check_device_name(opts["device"])
    if opts["adapter_kinds"]:
        check_kinds(opts["adapter_kinds"])
    opts = {name: absolute_path(name, value) for name, value in opts.items()}
    if opts["pool"] not in POOLS and not Path(opts["pool"]).is_file():
        raise PromptclimbError(f"--pool {opts['pool']}: not {', '.join(POOLS)} nor a file")
    return opts


def recorded_before_refused(search: dict) -> dict:
    """The options of `search` (keywords) at a value a new run is refused and a run recorded with
    it resumes with (agent/options.py `recorded_before_refused`: `top_k: 0`)."""
    from promptclimb.agent import options

    return {k: v for k, v in search.items()
            if k in options.BY_KEYWORD and options.recorded_before_refused(options.BY_KEYWORD[k].name, v)}


def resolve_recorded(search: dict, where: str = "") -> dict:
    """`resolve(search)`, with the values a sweep recorded before they were refused kept as
    recorded (`recorded_before_refused`): its rerun and sweep-report had refused sweep.json as
    damaged, where a run recorded with them resumes."""
    from promptclimb.agent.options import BY_KEYWORD, resolve

    kept = recorded_before_refused(search)
    opts = resolve({k: v for k, v in search.items() if k not in kept}, where)
    return {**opts, **{BY_KEYWORD[k].name: v for k, v in kept.items()}}


def absolute_path(name: str, value):
    """An option's value (by `Option.name`) with a path in it made absolute, other values as
    given: the folders and files of the path options, a --pool file (not a pool's name), a
    --classnames file (not a set name nor the names themselves)."""
    from promptclimb.agent.core.pools import POOLS
    from promptclimb.agent.options import BY_NAME

    if name == "classnames":
        from promptclimb.agent.pipeline import classnames_setting

        return classnames_setting(value)
    option = BY_NAME.get(name)
    is_path = (option is not None and option.kind in ("path", "dir")) or (name == "pool" and value not in POOLS)
    if is_path and value and isinstance(value, (str, os.PathLike)):
        return absolute(value)
    return value


def stored_search(search: dict) -> dict:
    """A new sweep's search options (keywords) as sweep.json keeps them: each path resolved
    against the folder the sweep was started in, which a rerun from another folder would
    otherwise resolve against its own (reading other data, or a same-named folder there)."""
    from promptclimb.agent.options import BY_KEYWORD

    return {k: absolute_path(BY_KEYWORD[k].name, v) if k in BY_KEYWORD else v for k, v in search.items()}


def cell_options(cell: Cell, opts: dict, sweep_dir: Path, base_url: str | None = None, llm_name: str | None = None,
                 local_llm_url: str | None = None) -> dict:
    """What `run_search` gets for one cell (`resume` is decided by the cell itself): the
    sweep's options as `promptclimb search` gets them, so that a cell records the settings
    and sends the LLM requests of a standalone search of its grid point (then either can
    resume the other's run, and they share the LLM's cache). Only what the driver settled
    for every cell (`llm_endpoint`) is set here: `base_url`, the endpoint from the driver's
    environment (a node may lack it); `llm_name`, the embedded LLM's; `local_llm_url`,
    where the embedded LLM that the driver started answers. None leaves the option as given."""
    settled = {"base_url": base_url, "llm_name": llm_name, "local_llm_url": local_llm_url}
    return {**opts, "dataset": cell.dataset, "backbone": cell.backbone, "pretrained": cell.pretrained,
            "shots": cell.shots, "seed": cell.seed, "runs_dir": str(sweep_dir), "run_name": cell.name,
            "resume": None, "as_json": False, **{k: v for k, v in settled.items() if v is not None}}


def check_cells(cells: list[Cell], opts: dict, sweep_dir: Path, echo: Callable[[str], None] = lambda _: None) -> None:
    """Every cell's search settings checked as `run_search` checks a new run's (the options
    together, the pool, the budget, the soft-prompt settings; the --meta-prompt folder
    rendered once, and a --classnames file there), once, in the driver: a bad value is one
    line before Ray and the LLM start, not a failure of every cell inside them. What a names
    file holds is checked against each cell's dataset by the cell, which reads its data. The
    first cell's warnings (options the search ignores: every cell's alike) go to `echo`; they
    were in each cell's search.log only."""
    from promptclimb.agent.metaprompt import MetaPrompt
    from promptclimb.agent.pipeline import default_llm, new_run, render_meta_prompts_once
    from promptclimb.agent.plan import names_file

    asks_llm = opts["optimizer"] == "llm"  # a soft-prompt cell asks none: nothing to settle (nor to warn of)
    base_url = sweep_endpoint(opts) if asks_llm else None
    llm_name = (opts["llm_name"] or default_llm(base_url)) if asks_llm else None
    plans = []
    for i, cell in enumerate(cells):
        check_dataset_options(cell.dataset, opts)
        said = (lambda message: echo(message) if message.startswith("warning:") else None) if i == 0 else \
            (lambda message: None)
        plans.append(new_run(cell_options(cell, opts, sweep_dir, base_url, llm_name), said))
    if names_file(opts["classnames"]) and not Path(opts["classnames"]).is_file():
        raise PromptclimbError(f"--classnames {opts['classnames']}: no such file")
    searched = next((plan for plan in plans if plan.soft is None), None)
    if searched is not None:  # the same folder and loop settings in every cell
        render_meta_prompts_once(MetaPrompt(searched.meta_dir), searched.search)


def check_dataset_options(dataset: str, opts: dict) -> None:
    """The options only some datasets take, against one grid dataset, as its evaluator would
    refuse them when it loads: a grid mixing `hf` with other datasets gives them to every
    cell, and the other cells failed inside Ray, each after the sweep had started."""
    hub = dataset.startswith("hf:")
    columns = [f"--{k.replace('_', '-')}" for k in ("image_column", "label_column") if opts.get(k)]
    if columns and not (hub or dataset == "hf"):
        verb = "are" if len(columns) > 1 else "is"
        raise PromptclimbError(f"grid dataset {dataset!r}: {' and '.join(columns)} {verb} for hf datasets, and a "
                               "sweep gives its options to every cell: sweep the hf dataset on its own")
    if opts.get("data_root") and hub:
        raise PromptclimbError(f"grid dataset {dataset!r}: --data-root is for --dataset hf (a local folder), and a "
                               f"sweep gives its options to every cell: sweep {dataset} on its own")


def sweep_endpoint(opts: dict) -> str | None:
    """The endpoint every cell asks: --base-url (or the one sweep.json keeps), else
    OPENAI_BASE_URL, except under --llm local: the embedded LLM whatever OPENAI_BASE_URL says,
    as for a search (`pipeline.choose_llm`)."""
    from promptclimb.agent.options import LOCAL

    return opts["base_url"] or (None if opts["llm_name"] == LOCAL else os.environ.get("OPENAI_BASE_URL"))


# sweep.json: the options whose URL held a password or key, left out; a rerun must give them again
SECRETS_LEFT_OUT = "secrets_left_out"
SECRET_HOLDING = ("base_url", "mlflow")  # the sweep's options that are URLs


def prepare_sweep(sweep_dir: Path, grid: dict | None, search: dict,
                  echo: Callable[[str], None] = lambda _: None) -> dict:
    """The sweep's settings {grid, search, cells}, every value checked before anything is
    written, then the folder claimed (`claim_sweep`: new, empty, or this sweep's own) and
    sweep.json written. A sweep that exists continues with its stored settings: `grid`
    None takes its grid, options not given take their stored values, and what is given
    must match what shapes the results (all but EXECUTION_OPTIONS, which apply to this run
    only and are not stored over the ones the sweep was started with). The cells' warnings
    (options the search ignores) go to `echo`, once."""
    claim_sweep(sweep_dir, create=False)
    path = sweep_dir / SWEEP_FILE
    stored = read_sweep(sweep_dir) if path.exists() else None
    search = tracking_resolved(search)
    refused_now = recorded_before_refused(search)
    if refused_now:  # given now (a new sweep's, or a rerun's): refused as for a new run; only recorded ones go on
        from promptclimb.agent.options import resolve

        resolve(refused_now, "sweep: ")
    if grid is None and stored is None:
        raise PromptclimbError(f"{sweep_dir} holds no sweep yet: give its grid (--dataset ..., or --grid FILE)")
    settings = {"grid": check_grid(grid if grid is not None else stored["grid"]),
                "search": {**stored["search"], **search} if stored else llm_pinned(search)}
    env_url = os.environ.get("OPENAI_BASE_URL")
    if stored and "base_url" in stored.get(SECRETS_LEFT_OUT, []) and "base_url" not in search and env_url:
        # its key was left out of sweep.json: OPENAI_BASE_URL gives it again (the cells had the URL without it)
        from promptclimb.agent.llm.secrets import without_secrets

        recorded = stored["search"].get("base_url")
        if without_secrets(env_url).rstrip("/") != (recorded or "").rstrip("/"):  # as a search's resume says it
            echo(f"note: OPENAI_BASE_URL is not the LLM endpoint the sweep recorded ({recorded}); asking it, as the "
                 "sweep's URL had a key that was not recorded")
        settings["search"]["base_url"] = env_url
    from promptclimb.agent.core.backbones import check_backbone_name

    # a name no cell could load fails every cell inside Ray; checked here, not in check_grid,
    # because sweep-report reads a sweep back after its model configs may have gone
    for backbone in settings["grid"]["backbone"]:
        check_backbone_name(backbone, "grid backbone")
    if stored is None or settings["grid"]["dataset"] != check_grid(stored["grid"])["dataset"]:
        # a sweep that ran as it was recorded continues; sweep-report still reads it
        check_each_dataset_once(settings["grid"]["dataset"])
    cells = grid_cells(settings)
    settings["cells"] = [c.name for c in cells]
    check_cells(cells, search_options(settings["search"]), sweep_dir, echo)
    if stored is not None:
        mine, theirs = _comparable(settings), _comparable(stored)
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differ:
            # by the options' flags, with the sweep's values (it said `adapter_kinds`, `grid.seeds`)
            said = ", ".join(f"{setting_said(k)} {said_value(mine.get(k))} (the sweep's: {said_value(theirs.get(k))})"
                             for k in differ)
            raise PromptclimbError(f"sweep {sweep_dir.name} was started with other settings ({said}); rerun it as it "
                                   "was, or give the new grid another name" + nothing_finished_note(sweep_dir, stored))
    left_out = stored.get(SECRETS_LEFT_OUT, []) if stored else []
    for option in left_out:
        if option not in search and not (option == "base_url" and os.environ.get("OPENAI_BASE_URL")):
            flag = "--" + option.replace("_", "-")
            raise PromptclimbError(f"sweep {sweep_dir.name}'s {flag} URL had a password or key in it, which a sweep "
                                   f"never records ({stored['search'].get(option)}): give it again with {flag}"
                                   + (" (or OPENAI_BASE_URL)" if option == "base_url" else ""))
    claim_sweep(sweep_dir)
    created = stored["created"] if stored else time.strftime("%Y-%m-%dT%H:%M:%S%z")
    # a rerun's execution options are its own; an older sweep.json's relative paths stay as they
    # were, still read from the folder it was started in (where they were never resolved)
    kept = stored["search"] if stored else stored_search(settings["search"])
    from promptclimb.agent.llm.secrets import without_secrets

    for option in SECRET_HOLDING:  # written as a run's config.json writes it: no password, no key in the query
        if isinstance(kept.get(option), str) and without_secrets(kept[option]) != kept[option]:
            left_out = sorted({*left_out, option})
            kept = {**kept, option: without_secrets(kept[option])}
    write_json_atomic(path, {**settings, "search": kept, "created": created,
                             **({SECRETS_LEFT_OUT: left_out} if left_out else {})})
    return settings


def tracking_resolved(search: dict) -> dict:
    """The sweep's options with --mlflow, where given, as sweep.json keeps it and the cells get
    it: a local store (`sqlite:///mlflow.db`, `./mlruns`, bare) by its absolute path, which a
    rerun or a report from another folder (or a cell in another working folder) would read
    as another database; a server's URI as typed (agent/tracking/store.py `stored_tracking_uri`)."""
    if not isinstance(search.get("mlflow"), str):
        return search
    from promptclimb.agent.tracking.store import stored_tracking_uri

    return {**search, "mlflow": stored_tracking_uri(search["mlflow"])}


def claim_sweep(sweep_dir: Path, create: bool = True) -> None:
    """The sweep's folder, taken by `claim_folder`'s rule for a sweep, with the sweep's lock
    counted as its own: a new sweep takes it (`sweep_lock`) before sweep.json is written, and
    one killed in between leaves it there (with the temp file of a write it was killed in,
    which `claim_folder` ignores too)."""
    if sweep_dir.is_dir() and (sweep_dir / LOCK).is_file() and not (sweep_dir / SWEEP_FILE).exists() \
            and all(p.name == LOCK or p.name.startswith(".") and p.name.endswith(".tmp") for p in sweep_dir.iterdir()):
        return
    claim_folder(sweep_dir, SWEEP, create=create)


def read_sweep(sweep_dir: str | Path) -> dict:
    """A sweep's sweep.json, checked: a JSON object with its grid and search tables, or
    PromptclimbError in one line naming the file (missing, damaged, of another shape)."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / SWEEP_FILE
    if not path.exists():
        raise PromptclimbError(f"{sweep_dir} is not a sweep folder (no {SWEEP_FILE})")
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PromptclimbError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise PromptclimbError(f"{path} is damaged (not valid JSON: {exc})") from None
    if not isinstance(settings, dict) or not isinstance(settings.get("grid"), dict) \
            or not isinstance(settings.get("search", {}), dict):
        raise PromptclimbError(f"{path} is damaged (not a sweep's settings: a JSON object with grid and search)")
    try:  # a value edited by hand: its rerun blamed a flag never given (`sweep: --resets 'x': ...`)
        resolve_recorded(settings.get("search", {}))
    except PromptclimbError as exc:
        raise PromptclimbError(f"{path} is damaged ({exc})") from None
    return {"search": {}, "created": "", **settings}


def setting_said(key: str) -> str:
    """A key of `_comparable` as a user gives it: `--llm`, or `the grid's seeds`."""
    from promptclimb.agent.options import BY_NAME

    if key.startswith("grid."):
        return f"the grid's {key[len('grid.'):]}"
    return BY_NAME[key].flag if key in BY_NAME else key


def said_value(value) -> str:
    """A setting's value as the refusal says it: lists as `1, 2`, not given as `the default`."""
    if value is None:
        return "the default"
    if value == []:
        return "none"
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def llm_pinned(search: dict) -> dict:
    """A new LLM sweep's options with the LLM its environment chose written in, so that sweep.json
    keeps it: a rerun from a shell with other OPENAI_* variables went on with another LLM
    (local cells resumed against an endpoint, still recorded as the local model), unsaid. The
    endpoint OPENAI_BASE_URL names, and without one, --llm local or the API's default model."""
    from promptclimb.agent.options import LOCAL
    from promptclimb.agent.pipeline import default_llm

    if search.get("optimizer", "llm") != "llm":
        return dict(search)
    pinned, env_url = dict(search), os.environ.get("OPENAI_BASE_URL")
    if pinned.get("llm") is None and not (pinned.get("base_url") or env_url):
        pinned["llm"] = default_llm()  # local, or the API's default model with OPENAI_API_KEY
    if pinned.get("base_url") is None and env_url and pinned.get("llm") != LOCAL:
        pinned["base_url"] = env_url  # the served model a cell finds there decides its --llm, as a search's
    return pinned


def nothing_finished_note(sweep_dir: Path, stored: dict) -> str:
    """The end of the "other settings" refusal for a sweep none of whose cells finished (a
    wrong --llm or a names file that fits no cell's dataset fails them all): the fix the
    cells' errors name is a new setting. What the removal would lose is said: the LLM
    answers of cells killed on their way."""
    cells = stored.get("cells", [])
    if any(cell_summary(sweep_dir / cell) is not None for cell in cells):
        return ""
    answers = sum(llm_answers_in(sweep_dir / cell) for cell in cells)
    lost = f"; their histories hold {answers} LLM answer{'' if answers == 1 else 's'}, which that removes" \
        if answers else ""
    return (f" (none of its {len(cells)} cells finished{lost}: to start it again with these settings, remove it "
            f"first: rm -r {shlex.quote(str(sweep_dir))})")


def llm_answers_in(cell_dir: Path) -> int:
    """How many LLM answers a cell's history holds (lines that do not read are not counted)."""
    from promptclimb.agent.runs.store import ANSWER_KINDS

    try:
        lines = (cell_dir / HISTORY).read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0
    count = 0
    for line in lines:
        with suppress(ValueError, AttributeError):
            count += json.loads(line).get("event") in ANSWER_KINDS
    return count


def _comparable(settings: dict) -> dict:
    """Every resolved setting that shapes a cell's result, by name; the grid's backbones as its
    cells resolve them (a rerun given `--backbone demo`, every cell's default, was refused as
    other settings than none)."""
    resolved = search_options({k: v for k, v in settings["search"].items() if k not in EXECUTION_OPTIONS})
    backbones = [f"{c.dataset}: {c.backbone}" + (f" ({c.pretrained})" if c.pretrained else "")
                 for c in grid_cells(settings)]
    grid = {**settings["grid"], "backbone": _once(backbones)}
    return {**{f"grid.{k}": v for k, v in grid.items()},
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in resolved.items() if k not in EXECUTION_OPTIONS}}
