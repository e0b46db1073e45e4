"""Sweeps: a grid of ordinary searches (dataset x backbone x shots x seed) run as Ray tasks
(`promptclimb sweep`), and their results read back (`promptclimb sweep-report`).

    runs/<sweep>/
      sweep.json                                  the grid and the search options of every cell
      <dataset>-<backbone>-<shots>shot-seed<k>/   one ordinary run folder per cell, plus
          search.log                              what its search printed
          error.txt                               why its last run failed (gone once it runs again)
      report.png                                  written by sweep-report
      .lock                                       held by the `sweep` command running it (`sweep_lock`)

Each cell is one Ray task (`cell_task`) that calls the same `run_search` as `promptclimb
search`: a new run, or the resume of a killed one through its own history. Rerunning a
sweep skips finished cells (summary.json written, with the adapter in it when one was
asked for), resumes killed ones and retries failed ones. Ray does all the scheduling: a
local Ray started in-process (on the loopback only) by default, or an existing cluster
(`address`); `cpus_per_run` / `gpus_per_run` are each task's Ray resources.

On a cluster, every node must see the sweep folder at the same path (shared storage); the
feature cache is per node (`PROMPTCLIMB_HOME`, which may point at shared storage too), and
so is `OPENAI_API_KEY`. All cells use one LLM endpoint: `--base-url`, or the embedded
local LLM started once by the driver (then the cells run on the driver's node), asked as a
standalone search asks its own; a soft-prompt sweep (craft, cbbt) asks none.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shlex
import signal
import sys
import time
import traceback
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from promptclimb.agent.core.errors import (EXIT_TERMINATED, PromptclimbError, sigterm_raises_systemexit,
                                            sigterm_received)
from promptclimb.agent.core.files import write_json_atomic, write_text_atomic
from promptclimb.agent.core.format import bar_disable, moment, shell_command
from promptclimb.agent.core.paths import absolute, missing_folders, remove_while_empty
from promptclimb.agent.core.runfiles import CELL_ERROR, CELL_LOG, CONFIG, HISTORY, LOCK, SUMMARY, SWEEP_FILE
from promptclimb.agent.runs.store import (LOCK_TRIES, RUN, SWEEP, RunLocked, check_folder_name, claim_folder,
                                          ended_with_adapter, has_summary, kept_result, lock_folder,
                                          lock_holder_said)

if TYPE_CHECKING:
    import pandas as pd

LOG_FILE, ERROR_FILE, PLOT_FILE = CELL_LOG, CELL_ERROR, "report.png"
GRID_AXES = ("dataset", "backbone", "shots", "seeds")
# Search options that say how and where a cell runs, not what it computes: they may change
# between two runs of the same sweep, and apply to that run only (sweep.json keeps the ones
# the sweep was started with). --parallel gives the same results (docs/sweeps.md); a killed
# cell resumes with the lanes it was started with; --mlflow only says where the cells are logged.
EXECUTION_OPTIONS = ("base_url", "device", "timeout", "max_tries", "no_cache", "runs_dir", "parallel", "mlflow")
RAY_CONNECT_TIMEOUT_S = 20  # --address: a cluster that has not answered by then is reported as unreachable
# What a cell's search takes from the grid (and its folder) instead of the options.
CELL_OPTIONS = ("dataset", "backbone", "shots", "seed", "name", "resume", "json")
CELL_LOCK_WAIT_S = 30  # how long a cell waits for another process to let go of its run
CELL_STOP_GRACE_S = 10  # how long a stopped sweep waits for its running cells to say where they stopped
# test accuracies the report aggregates: what each run keeps (`kept_result`), its best template, and
# its ensemble and adapter, kept or not (a candidate ensemble, an adapter that lost on val)
RESULTS = ("result", "best", "ensemble", "adapter")
QUEUED = "queued"  # a cell's state in a running sweep before its task starts (`run_sweep`, `watch`)
# The most cells a grid may have (datasets x backbones x shots x seeds), refused before anything
# starts: --seeds 0-99999999999 had built a set of 10**11 seeds, and would have run as many cells.
MAX_CELLS = 10_000


# -- the grid -------------------------------------------------------------------------------
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
    (long option names, `_` for `-`), checked as on the command line. Paths are made
    absolute: a Ray worker does not start in the driver's folder."""
    from promptclimb.agent.adapt import check_kinds
    from promptclimb.agent.core.devices import check_device_name
    from promptclimb.agent.core.pools import POOLS
    from promptclimb.agent.options import resolve

    not_here = sorted(set(search) & set(CELL_OPTIONS))
    if not_here:
        raise PromptclimbError(not_a_sweep_option(not_here))
    opts = resolve(search, "sweep: ")
    check_device_name(opts["device"])
    if opts["adapter_kinds"]:
        check_kinds(opts["adapter_kinds"])
    opts = {name: absolute_path(name, value) for name, value in opts.items()}
    if opts["pool"] not in POOLS and not Path(opts["pool"]).is_file():
        raise PromptclimbError(f"--pool {opts['pool']}: not {', '.join(POOLS)} nor a file")
    return opts


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
    from promptclimb.agent.pipeline import default_llm, names_file, new_run, render_meta_prompts_once

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
    if grid is None and stored is None:
        raise PromptclimbError(f"{sweep_dir} holds no sweep yet: give its grid (--dataset ..., or --grid FILE)")
    settings = {"grid": check_grid(grid if grid is not None else stored["grid"]),
                "search": {**stored["search"], **search} if stored else llm_pinned(search)}
    env_url = os.environ.get("OPENAI_BASE_URL")
    if stored and "base_url" in stored.get(SECRETS_LEFT_OUT, []) and "base_url" not in search and env_url:
        # its key was left out of sweep.json: OPENAI_BASE_URL gives it again (the cells had the URL without it)
        from promptclimb.agent.llm.client import without_secrets

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
    from promptclimb.agent.llm.client import without_secrets

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
    as another database; a server's URI as typed (agent/tracking.py `stored_tracking_uri`)."""
    if not isinstance(search.get("mlflow"), str):
        return search
    from promptclimb.agent.tracking import stored_tracking_uri

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


# -- one cell, inside a Ray worker ---------------------------------------------------------------
def cell_summary(cell_dir: Path) -> dict | None:
    """A cell's summary.json when it is whole (a JSON object with a best result), else None:
    missing, cut short or damaged, the cell is not finished, and its rerun resumes it
    through its history, which writes the summary again."""
    try:
        summary = json.loads((cell_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and isinstance(summary.get("best"), dict) else None


def cell_state(cell_dir: Path, adapter_wanted: bool) -> str:
    """"finished" (a whole summary.json, with the adapter when one was asked for), "failed"
    (error.txt), "killed" (started, not finished: a damaged summary too) or "new"."""
    if ended_with_adapter(cell_summary(cell_dir), adapter_wanted):
        return "finished"
    if (cell_dir / ERROR_FILE).exists():
        return "failed"
    return "killed" if (cell_dir / CONFIG).exists() else "new"


def run_cell(cell_dir: str, opts: dict) -> dict:
    """One cell: a new search, or the resume of a killed one. What it prints goes to
    search.log; an error to error.txt. Returns {"state": "finished" | "failed" |
    "interrupted", ...}; a failure where no error.txt can be written (the folder is not seen
    from this node, or not ours) says so ("error_file": False). Interrupted (SIGTERM of its
    worker: `stop_cells`; Ray's cancel), the cell's log says how to continue (its search says
    it once its run folder exists) and the task ends: a worker left with SystemExit would be
    retried by Ray."""
    cell_dir = Path(cell_dir)
    if not cell_dir.parent.is_dir():
        return {"state": "failed", "error_file": False,
                "error": f"{cell_dir.parent} does not exist on node {platform.node()}: "
                         "a sweep folder must be on storage every node sees (--runs-dir)"}
    try:
        claim_cell(cell_dir)
    except PromptclimbError as exc:  # not ours to write into, error.txt included
        return {"state": "failed", "error": str(exc), "error_file": False}
    (cell_dir / ERROR_FILE).unlink(missing_ok=True)
    said_interrupted = False
    with open(cell_dir / LOG_FILE, "a", encoding="utf-8") as log:
        def echo(message: str) -> None:
            nonlocal said_interrupted
            said_interrupted = said_interrupted or message.startswith(INTERRUPTED)
            log.write(f"{message}\n")
            log.flush()

        echo(f"--- {moment(seconds=True)} "
             f"{'resuming' if (cell_dir / CONFIG).exists() else 'starting'} "
             f"on {platform.node()} (pid {os.getpid()})")
        try:
            search_when_free(cell_dir, opts, echo)
            return {"state": "finished"}
        except PromptclimbError as exc:
            error = str(exc)
        except (KeyboardInterrupt, SystemExit):
            if not said_interrupted:
                echo(interrupted_line(cell_dir, opts.get("mlflow")))
            return {"state": "interrupted"}
        except Exception as exc:  # noqa: BLE001 - any failure of one cell is recorded, the sweep goes on
            error = f"{type(exc).__name__}: {exc}"
            echo(traceback.format_exc())
        echo(f"failed: {error}")
    write_text_atomic(cell_dir / ERROR_FILE, error + "\n")
    return {"state": "failed", "error": error}


def claim_cell(cell_dir: Path, create: bool = True) -> None:
    """The cell's folder, taken as its search takes a run's (`claim_folder`): new, or this
    cell's own (a folder its sweep.json lists, a run in it resumed). Not `create`: only
    checked, by the driver before Ray starts (`run_sweep`): a file in the cell's place, or a
    folder of someone else's files, is then one line, not a cell failing inside Ray with no
    error.txt to say why (none can be written there)."""
    check_folder_name(cell_dir.name, "cell")
    if not (cell_dir / CONFIG).exists():
        claim_folder(cell_dir, RUN, create=create)


INTERRUPTED = "interrupted"  # how a search.log line that records an interruption begins


def interrupted_line(cell_dir: Path, tracking_uri: str | None = None) -> str:
    """What a cell's search.log says when it was stopped: what its search says once the run
    folder exists (agent/pipeline.py, `resume_command`)."""
    from promptclimb.agent.pipeline import resume_command

    if (cell_dir / CONFIG).exists():
        return f"{INTERRUPTED}; continue with: {resume_command(cell_dir, tracking_uri)[0]}"
    return f"{INTERRUPTED} before its run began; the sweep starts it again when rerun"


def search_when_free(cell_dir: Path, opts: dict, echo: Callable[[str], None]) -> None:
    """The cell's search (resumed when its folder holds a config). While another process
    holds the run's lock, wait for it, up to CELL_LOCK_WAIT_S: Ray's workers are the
    raylet's children, so after a sweep's driver is killed one may still be finishing this
    cell's last write."""
    from promptclimb.agent.pipeline import run_search

    deadline, waiting = time.monotonic() + CELL_LOCK_WAIT_S, False
    while True:
        resume = (cell_dir / CONFIG).exists()
        try:
            run_search({**resumed_options(opts), "resume": str(cell_dir)} if resume else opts, echo)
            return
        except RunLocked as exc:
            if time.monotonic() >= deadline:
                raise
            if not waiting:
                echo(f"{exc}: waiting up to {CELL_LOCK_WAIT_S} s for it")
                waiting = True
            time.sleep(0.5)


def resumed_options(opts: dict) -> dict:
    """A killed cell's options for its resume: every option that says what the run does
    (scope "run": agent/options.py) at its default, the others (device, endpoint, budget)
    as given. The run continues with the settings its config.json records, which matched
    sweep.json's already; given again, they would only be compared with them, and a
    soft-prompt run records no LLM settings to compare with (--llm local was refused).
    --parallel of this run is for new cells: a killed one resumes with its own lanes."""
    from promptclimb.agent.options import RUN as WHAT_THE_RUN_DOES, SEARCH_OPTIONS

    return {**opts, **{o.name: o.default for o in SEARCH_OPTIONS if o.scope == WHAT_THE_RUN_DOES}}


def cell_task(cell_dir: str, opts: dict) -> Iterator[dict]:
    """The Ray task of a cell (a streaming generator): first that it runs, and in which
    process (`stop_cells` signals it), then its end."""
    import ray

    from promptclimb.agent.sweep.reaper import start_time

    yield {"state": "running", "node": platform.node(), "node_id": ray.get_runtime_context().get_node_id(),
           "pid": os.getpid(), "started": start_time(os.getpid())}
    yield run_cell(cell_dir, opts)


# -- the driver -----------------------------------------------------------------------------
@contextmanager
def llm_endpoint(opts: dict, echo: Callable[[str], None]) -> Iterator[tuple[str | None, dict]]:
    """(where every cell's LLM answers, what the driver sets in every cell's options
    (`cell_options`)): no LLM for a soft-prompt sweep (--optimizer craft|cbbt asks none);
    --base-url, or the driver's $OPENAI_BASE_URL; for the embedded local LLM without one, a
    llama.cpp server started here once for the whole sweep, which each cell's search asks
    instead of starting its own; None: the OpenAI API (with each node's OPENAI_API_KEY)."""
    from promptclimb.agent.options import LOCAL
    from promptclimb.agent.pipeline import default_llm

    if opts["optimizer"] != "llm":
        yield None, {}
        return
    base_url = sweep_endpoint(opts)
    if base_url or (opts["llm_name"] or default_llm()) != LOCAL:
        yield base_url, {"base_url": base_url}
        return
    from promptclimb.agent.llm.local import local_server

    with local_server(model_path=opts["llm_model"], echo=echo) as url:
        # --llm local whatever a node's environment says: the LLM the driver started for it
        yield url, {"llm_name": LOCAL, "local_llm_url": url}


def sweep_endpoint(opts: dict) -> str | None:
    """The endpoint every cell asks: --base-url (or the one sweep.json keeps), else
    OPENAI_BASE_URL, except under --llm local: the embedded LLM whatever OPENAI_BASE_URL says,
    as for a search (`pipeline.choose_llm`)."""
    from promptclimb.agent.options import LOCAL

    return opts["base_url"] or (None if opts["llm_name"] == LOCAL else os.environ.get("OPENAI_BASE_URL"))


def on_this_machine(base_url: str | None) -> bool:
    return bool(base_url and re.match(r"https?://(127\.|localhost)", base_url))


def cell_resources(ray, base_url: str | None, address: str | None, cpus_per_run: float, gpus_per_run: float,
                   echo: Callable[[str], None]) -> dict:
    """The Ray options of every cell's task. An endpoint on this machine keeps the cells on
    this node. When it is promptclimb's local LLM (started by the sweep, or a `promptclimb llm
    serve`: it lists its GGUF at /models), each cell asks for all of the node's CPUs, so Ray
    runs one at a time: that server answers one request at a time and keeps only the last
    request's prefix, and cells taking turns at it would reprocess their conversations
    (docs/sweeps.md has the measurement)."""
    from promptclimb.agent.llm.client import local_model_served_at
    from promptclimb.agent.llm.local import ONE_AT_A_TIME

    resources = {"num_cpus": cpus_per_run, "num_gpus": gpus_per_run, "max_retries": 1}
    if not on_this_machine(base_url):
        return resources
    here = ray.get_runtime_context().get_node_id()
    if local_model_served_at(base_url):
        node_cpus = next(n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] == here)
        resources["num_cpus"] = max(cpus_per_run, node_cpus)
        echo(f"{ONE_AT_A_TIME}: the cells run one after another")
    if address is not None:
        if address.startswith("ray://"):
            raise PromptclimbError(f"the LLM at {base_url} serves this machine only: give the cells an "
                                   "endpoint they can reach (--base-url) when the cluster is reached with ray://")
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        resources["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    return resources


@contextmanager
def ray_session(address: str | None, echo: Callable[[str], None], num_cpus: int | None = None):
    """Ray, connected: an existing cluster at `address` ("auto", "HOST:PORT",
    "ray://HOST:PORT"), or a local one started in this process with `num_cpus` (default:
    the machine's), reachable on 127.0.0.1 only, whose processes end with this one however
    it ends (agent/sweep/reaper.py). While connected, SIGTERM ends the process with status
    143, as every command: our handler replaces both Ray's Python one (exit status 15, or 1
    when it interrupts ray.wait) and the C++ failure-signal handler that ray.init installs
    over it, which printed a "SIGTERM received ... PC: @" stack."""
    ray = import_ray(local=address is None)
    if address is not None:
        reachable(address)
    watchdog = None
    if address is None:
        from promptclimb.agent.sweep.reaper import watch_driver

        watchdog = watch_driver(os.path.dirname(ray.__file__))
    try:
        try:
            connect(ray, address, num_cpus)
        except SystemExit as stop:  # SIGTERM while ray.init ran: its handler, set first, exits with status 15
            if stop.code != signal.SIGTERM:
                raise
            ray.shutdown()
            raise SystemExit(EXIT_TERMINATED) from None
        restore = sigterm_raises_systemexit(replace=True)  # over Ray's two handlers
        try:
            resources = ray.cluster_resources()
            echo(f"Ray: {'local' if address is None else address}, {resources.get('CPU', 0):g} CPUs, "
                 f"{resources.get('GPU', 0):g} GPUs")
            yield ray
        finally:
            ray.shutdown()
            restore()
    finally:
        if watchdog is not None:
            watchdog.close()


def import_ray(local: bool):
    """The ray module (PromptclimbError saying how to install it when it is missing)."""
    if local and "ray" not in sys.modules:  # a local Ray serves this process only: keep it off the network
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise PromptclimbError("promptclimb sweep needs Ray: pip install 'promptclimb[sweep]'") from None
    return ray


def reachable(address: str, timeout_s: float = 10.0) -> None:
    """PromptclimbError in one line when nothing answers at a cluster's address (Ray itself
    would retry for minutes, printing warnings): a TCP connection to its GCS (or Ray
    client) port, with `auto` resolved as Ray resolves it."""
    import socket

    target = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address(address) or ""
        except Exception as exc:  # noqa: BLE001 - Ray says why in its own words
            raise PromptclimbError(f"cannot find a Ray cluster for --address {address}: {exc}") from None
        if not target:
            raise PromptclimbError(f"--address {address}: no running Ray cluster found on this machine "
                                   "(start one with `ray start --head`, or give HOST:PORT)")
    try:
        with socket.create_connection(host_and_port(address, target), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or (f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError) else str(exc))
        port_hint = "its Ray client port, 10001" if address.startswith("ray://") else "its GCS port, 6379"
        raise PromptclimbError(f"cannot reach Ray at {address}: {reason} (is the cluster up, and is this "
                               f"{port_hint} unless `ray start` said otherwise?)") from None


def host_and_port(address: str, target: str | None = None) -> tuple[str, int]:
    """(host, port) of a cluster's `address` (or of `target`, what `auto` resolved to)."""
    host, _, port = (target or address).removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise PromptclimbError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def connect(ray, address: str | None, num_cpus: int | None) -> None:
    """ray.init: a local Ray, or the cluster at `address`. For a cluster, what Ray prints
    while it connects is kept out of the terminal and read for the cause when it fails (a
    token the cluster refuses is named: Ray 2.60 only says "Failed to connect"), and a
    cluster that has not answered within RAY_CONNECT_TIMEOUT_S ends the command in one line."""
    import logging
    import tempfile

    if address is None:
        try:
            ray.init(include_dashboard=False, num_cpus=num_cpus, log_to_driver=False, logging_level=logging.ERROR)
        except Exception as exc:  # noqa: BLE001 - Ray raises bare Exceptions too (a node that does not start)
            ray.shutdown()  # whatever it had started
            raise PromptclimbError(f"cannot start a local Ray: {first_line(exc)}") from None
        return
    with tempfile.NamedTemporaryFile(prefix="promptclimb-ray-", suffix=".log") as said:
        def printed() -> str:
            return Path(said.name).read_text(errors="replace")

        def too_late() -> str:
            return f"Error: cannot reach Ray at {address}: " + connect_cause(
                printed(), f"no answer within {RAY_CONNECT_TIMEOUT_S} s (is this a Ray cluster's GCS port, 6379 "
                           "unless `ray start --port` said otherwise?)")

        with stderr_into(said) as terminal, deadline(RAY_CONNECT_TIMEOUT_S, terminal, too_late):
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
                return
            except Exception as exc:  # noqa: BLE001
                ray.shutdown()
                error = exc
        cause = connect_cause(printed(), first_line(error), type(error).__name__ == "AuthenticationError")
    raise PromptclimbError(f"cannot reach Ray at {address}: {cause}")


TOKEN_REFUSED = ("Unauthenticated", "InvalidAuthToken", "token is missing or incorrect")


def connect_cause(printed: str, otherwise: str, token_refused: bool = False) -> str:
    """Why a connection to a cluster failed, from what Ray printed meanwhile."""
    if token_refused or any(mark in printed for mark in TOKEN_REFUSED):
        return ("the cluster refused this machine's Ray token (token authentication: the cluster's token must be in "
                "RAY_AUTH_TOKEN, in the file RAY_AUTH_TOKEN_PATH names, or in ~/.ray/auth_token, which may be a stale "
                "one from an earlier cluster; docs/sweeps.md)")
    return otherwise


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def stderr_into(file) -> Iterator[int]:
    """This process's file descriptor 2 (what Ray's C++ core prints to) into `file`; yields a
    descriptor of the terminal's stderr."""
    sys.stderr.flush()
    terminal = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield terminal
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)


@contextmanager
def deadline(seconds: float, terminal: int, message: Callable[[], str]) -> Iterator[None]:
    """End the process with `message()` and status 1 unless the block ends within `seconds`:
    ray.init blocks in C++ (no Python signal handler runs there) for as long as it retries."""
    import threading

    from promptclimb.agent.core.errors import EXIT_ERROR

    def give_up() -> None:
        os.write(terminal, (message() + "\n").encode())
        os._exit(EXIT_ERROR)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def continue_command(name: str, runs_dir: Path, address: str | None, num_cpus: int | None, cpus_per_run: float,
                     gpus_per_run: float) -> str:
    """The command that continues a sweep (its grid and search options are in sweep.json)."""
    words = ["sweep", name, "--runs-dir", runs_dir]
    words += ["--address", address] if address else []
    words += ["--num-cpus", num_cpus] if num_cpus else []
    words += ["--cpus-per-run", f"{cpus_per_run:g}"] if cpus_per_run != 1.0 else []
    words += ["--gpus-per-run", f"{gpus_per_run:g}"] if gpus_per_run else []
    return shell_command(*words)


def check_ray_options(address: str | None, num_cpus: int | None, cpus_per_run: float, gpus_per_run: float) -> None:
    """The options that say where the cells run, checked before anything is written: a
    sweep.json written for a command that is then refused would keep that command's
    settings, and refuse a corrected one with others."""
    if cpus_per_run <= 0 or gpus_per_run < 0:
        raise PromptclimbError("--cpus-per-run must be above 0 and --gpus-per-run at least 0")
    if address is not None and num_cpus is not None:
        raise PromptclimbError("--num-cpus sizes the local Ray; a cluster's CPUs are its own (ray start --num-cpus)")
    if num_cpus is not None and cpus_per_run > num_cpus:
        raise PromptclimbError(f"each cell asks for {cpus_per_run:g} CPUs (--cpus-per-run), but the local Ray has "
                               f"{num_cpus} (--num-cpus)")
    if address not in (None, "auto"):
        host_and_port(address)  # its shape; whether a cluster answers there is known once Ray connects


@contextmanager
def forgotten_if_refused(sweep_dir: Path, new_sweep: bool, created: list[Path]) -> Iterator[Callable[[], None]]:
    """A new sweep refused before its first cell starts (a bad value, a cluster it cannot
    reach, resources this machine lacks, an LLM that does not start, a file it cannot write)
    leaves nothing behind: not its sweep.json, which would keep the refused command's
    settings and refuse a corrected command with others, nor the folders it created
    (`created`: the sweep's, and --runs-dir and the folders above it that did not exist),
    each removed only while it is empty. Yields what to call when the cells start."""
    started = False

    def cells_started() -> None:
        nonlocal started
        started = True

    try:
        yield cells_started
    except (PromptclimbError, OSError):
        if new_sweep and not started:
            with suppress(OSError):
                (sweep_dir / SWEEP_FILE).unlink(missing_ok=True)
            remove_while_empty(created)
        raise


@contextmanager
def sweep_lock(sweep_dir: Path, name: str, created: list[Path]) -> Iterator[None]:
    """Hold the sweep's lock (its .lock, flock'd as a run's writer holds a run's: agent/runs/store.py)
    while this command runs the sweep, from before it writes anything: a second `sweep NAME`
    meanwhile is refused in one line before Ray starts, where it had run the cells beside the
    first (two results in a search.log) or failed the cell the first was finishing (its run
    lock). The lock file is there only while the sweep runs (or after a kill -9): a refused
    rerun leaves the folder as it was, and a new sweep refused or stopped before it wrote
    sweep.json leaves nothing, the folders in `created` going again while empty (as
    `forgotten_if_refused` says)."""
    try:
        handle = _take_sweep_lock(sweep_dir, name)
    except BaseException:
        remove_while_empty(created)
        raise
    try:
        yield
    finally:
        with suppress(OSError):
            (sweep_dir / LOCK).unlink(missing_ok=True)  # while held: one waiting for it takes a new file
        remove_while_empty(created)
        handle.close()  # releases the flock


def _take_sweep_lock(sweep_dir: Path, name: str):
    """The sweep's lock file, locked by this process (`sweep_lock`)."""
    for _ in range(LOCK_TRIES):
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            handle = lock_folder(sweep_dir)
        except FileNotFoundError:  # a new sweep refused meanwhile removed the folder
            continue
        except RunLocked:
            raise PromptclimbError(f"sweep {name} is {lock_holder_said(sweep_dir, 'being run')}") from None
        with suppress(OSError):
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(sweep_dir / LOCK)):
                return handle
        handle.close()  # a lock file that its holder removed as it let go (`sweep_lock`) while this one waited
    raise PromptclimbError(f"sweep {name}: its lock file {sweep_dir / LOCK} keeps being removed by another "
                           "process; try again")


def run_sweep(name: str, runs_dir: str | Path, grid: dict | None, search: dict, *, address: str | None = None,
              num_cpus: int | None = None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0,
              echo: Callable[[str], None] = print) -> dict:
    """Run (or continue) the sweep `runs_dir/name`: every cell not finished yet, as Ray
    tasks. `grid` None continues a stored sweep. Returns the cells' states by name. A
    failed cell does not stop the others; Ctrl-C or SIGTERM cancels the running ones and
    says how to continue."""
    check_folder_name(name, "sweep name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise PromptclimbError(f"sweep name {name!r}: use letters, digits and . _ + - (it names a folder)")
    check_ray_options(address, num_cpus, cpus_per_run, gpus_per_run)
    runs_dir = Path(runs_dir).expanduser().resolve()
    sweep_dir = runs_dir / name
    created = missing_folders(sweep_dir)
    claim_sweep(sweep_dir, create=False)  # a run's folder or a file: refused before its lock is touched
    with sweep_lock(sweep_dir, name, created):
        new_sweep = not (sweep_dir / SWEEP_FILE).exists()  # under the lock: no other command is writing it
        with forgotten_if_refused(sweep_dir, new_sweep, created):
            settings = prepare_sweep(sweep_dir, grid, search, echo)
        opts = search_options(settings["search"])
        cells = grid_cells(settings)
        states = {c.name: cell_state(sweep_dir / c.name, bool(opts["adapter_kinds"])) for c in cells}
        todo = [c for c in cells if states[c.name] != "finished"]
        for cell in todo:
            claim_cell(sweep_dir / cell.name, create=False)
        counts = {s: sum(v == s for v in states.values()) for s in ("finished", "killed", "failed", "new")}
        echo(f"sweep {name}: {len(cells)} cells; {counts['finished']} finished, {counts['killed']} to resume, "
             f"{counts['failed']} to retry, {counts['new']} to start   ({sweep_dir})")
        if not todo:
            return states
        # cells this run retries or resumes are to do, not failed: its progress counts its own failures
        states.update(dict.fromkeys((c.name for c in todo), QUEUED))
        log_sizes: dict[str, int] = {}  # what the cells' search.log held before this run
        unwritten: dict[str, str] = {}  # cell -> why it failed, where no error.txt could say it
        try:
            with forgotten_if_refused(sweep_dir, new_sweep, created) as cells_started, \
                    ray_session(address, echo, num_cpus) as ray, llm_endpoint(opts, echo) as (base_url, settled):
                total = ray.cluster_resources()
                if address is None and (cpus_per_run > total.get("CPU", 0) or gpus_per_run > total.get("GPU", 0)):
                    raise PromptclimbError(f"each cell asks for {cpus_per_run:g} CPUs and {gpus_per_run:g} GPUs, but "
                                           f"this machine has {total.get('CPU', 0):g} and {total.get('GPU', 0):g}")
                resources = cell_resources(ray, base_url, address, cpus_per_run, gpus_per_run, echo)
                task = ray.remote(num_returns="streaming")(cell_task).options(**resources)
                cells_started()
                log_sizes = {c.name: log_size(sweep_dir / c.name) for c in todo}
                running = {task.remote(str(sweep_dir / c.name), cell_options(c, opts, sweep_dir, **settled)): c
                           for c in todo}
                unwritten = watch(ray, running, sweep_dir, states, echo)
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (SystemExit 143: ray_session), at any step
            # The running cells were stopped through their own interrupt path (watch: stop_cells)
            # before Ray went; one whose process ended before it said so is recorded here.
            record_interruptions(sweep_dir, log_sizes, bool(opts["adapter_kinds"]), opts.get("mlflow"))
            echo(f"stopped; finished cells are kept, the others resume from their history. Continue with:\n"
                 f"  {continue_command(name, runs_dir, address, num_cpus, cpus_per_run, gpus_per_run)}")
            if sigterm_received():  # Ray may have turned it into SystemExit(1)
                raise SystemExit(EXIT_TERMINATED) from None
            raise
        failed = [n for n, s in states.items() if s == "failed"]
        report = shell_command("sweep-report", name, "--runs-dir", runs_dir)
        echo(f"sweep {name}: {sum(s == 'finished' for s in states.values())}/{len(cells)} cells finished"
             + failed_note(len(failed), unwritten, report))
        track_sweep(sweep_dir, opts.get("mlflow"), echo)
        return states


def failed_note(failed: int, unwritten: dict[str, str], report: str) -> str:
    """The end of a sweep's last line for its `failed` cells: where to read why. A cell whose
    error no error.txt holds (`unwritten`: cell -> error; its node could not see or claim its
    folder) is not a failed cell to sweep-report either, so its error is said here."""
    if not failed:
        return ""
    written = f"see their error.txt, or: {report}"
    if not unwritten:
        return f", {failed} failed ({written})"
    errors = sorted(set(unwritten.values()))
    why = errors[0] if len(errors) == 1 else "in their FAILED lines above"
    if len(unwritten) == failed:
        return f", {failed} failed (no error.txt written): {why}"
    return f", {failed} failed ({failed - len(unwritten)}: {written}; {len(unwritten)}, no error.txt written: {why})"


def track_sweep(sweep_dir: Path, tracking_uri: str | None, echo: Callable[[str], None]) -> None:
    """--mlflow: the sweep as one MLflow parent run, each cell's run (logged live by the
    cell's own search) nested under it. Like a search's tracking, it never fails the sweep."""
    if tracking_uri is None:
        return
    from promptclimb.agent.tracking import sync_sweep

    try:
        synced = sync_sweep(sweep_dir, tracking_uri or None)
        echo(f"MLflow: sweep run {synced.run_id} with its cells nested ({synced.tracking_uri})")
    except PromptclimbError as exc:
        echo(f"warning: MLflow tracking of the sweep failed ({exc}); log it afterwards with: "
             f"{shell_command('mlflow-sync', sweep_dir)}")


def watch(ray, running: dict, sweep_dir: Path, states: dict, echo: Callable[[str], None]) -> dict[str, str]:
    """Follow the cells' tasks (generator -> Cell) to their end, with a progress bar of
    cells done / running / failed (on a terminal; a line per change otherwise), kept in
    `states` (every cell's; the tasks' cells QUEUED, so that an earlier run's failure is not
    counted as this run's while its retry waits or runs). Ctrl-C or SIGTERM stops the cells
    not ended yet (`stop_cells`) before it goes on. Returns the errors of the cells that
    failed with no error.txt written (cell -> error)."""
    from tqdm import tqdm

    total, active = len(states), set()
    bar = tqdm(total=total, initial=sum(s == "finished" for s in states.values()), unit="cell", file=sys.stderr,
               disable=bar_disable(True), dynamic_ncols=True)
    say = echo if bar.disable else bar.write

    def progress() -> str:
        done, failed = (sum(s == state for s in states.values()) for state in ("finished", "failed"))
        bar.set_postfix_str(f"done {done}, running {len(active)}, failed {failed}", refresh=False)
        return f"[{done}/{total} done, {len(active)} running, {failed} failed]"

    pending, started, ended = list(running), {}, set()  # started: generator -> its "running" message
    unwritten = {}
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for generator in ready:
                cell = running[generator]
                try:
                    message = ray.get(next(generator))
                except StopIteration:
                    ended.add(generator)
                    continue
                except Exception as exc:  # noqa: BLE001 - the worker died, or the task could not run
                    message = {"state": "failed", "error": task_error(exc)}
                    write_text_atomic(sweep_dir / cell.name / ERROR_FILE, message["error"] + "\n")
                if message["state"] == "interrupted":  # its worker was stopped, not the sweep
                    message = {"state": "failed", "error": CELL_INTERRUPTED}
                    write_text_atomic(sweep_dir / cell.name / ERROR_FILE, message["error"] + "\n")
                if message["state"] == "running":
                    started[generator] = message
                    active.add(cell.name)
                    states[cell.name] = "running"
                    pending.append(generator)
                    say(f"{progress()} {cell.name}: running on {message['node']}")
                    continue
                active.discard(cell.name)
                ended.add(generator)
                states[cell.name] = message["state"]
                if message["state"] == "finished":
                    bar.update(1)
                    say(f"{progress()} {cell.name}: finished")
                else:
                    say(f"{progress()} {cell.name}: FAILED: {message['error'].splitlines()[0]}")
                    if message.get("error_file") is False:
                        unwritten[cell.name] = message["error"].splitlines()[0]
                        forget_earlier_error(sweep_dir / cell.name)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C or SIGTERM of the driver
        try:
            stop_cells(ray, [g for g in running if g not in ended], started, say)
        except Exception:  # noqa: BLE001 - a Ray that cannot stop them: leaving it ends them (run_sweep)
            pass
        raise
    finally:
        bar.close()
    return unwritten


def forget_earlier_error(cell_dir: Path) -> None:
    """A cell that failed where it could write no error.txt (its node does not see, or could not
    claim, its folder; `run_cell` removes an earlier error.txt only once it has claimed it): an
    error.txt there is an earlier run's, which sweep-report would give as this run's failure
    (and count the cell as failed, where the sweep's last line says no error.txt was written).
    The driver removes it where it sees the folder (a cell's own file: `claim_folder`)."""
    with suppress(OSError):  # not seen from here either: nothing there to be read as this run's
        (cell_dir / ERROR_FILE).unlink(missing_ok=True)


CELL_INTERRUPTED = ("interrupted: its worker was stopped (SIGTERM, or Ray's cancel) while the sweep ran; "
                    "a rerun of the sweep resumes it")


def stop_cells(ray, unfinished: list, started: dict, say: Callable[[str], None]) -> None:
    """The sweep was stopped: its cells not ended yet (generators; `started` maps the
    running ones to their "running" message) end through their own interrupt path while Ray
    is still there (leaving Ray ends every worker of the job at once, a cell's last lines
    written or not). Cells waiting for a slot are cancelled first, so that none starts now.
    A running cell on this node gets SIGTERM in its worker, by id (Ray's handler raises
    SystemExit in the search, which says how to continue as on Ctrl-C; Ray blocks SIGINT in
    its workers; Linux: /proc tells the worker from a reused pid); any other gets Ray's
    cancel (KeyboardInterrupt at its next Python step: a search waiting for an LLM answer
    sees it once the answer is in). Waits up to CELL_STOP_GRACE_S for them to end; a second
    Ctrl-C or SIGTERM waits no more. A cell still running then is recorded by
    `record_interruptions`."""
    from promptclimb.agent.sweep.reaper import signal_process

    for generator in unfinished:
        if generator not in started:
            ray.cancel(generator)
    try:
        here = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - a Ray client knows no node of its own
        here = None
    running = [g for g in unfinished if g in started]
    if running:
        say(f"stopping {len(running)} running cell(s); each says in its search.log where it stopped "
            f"(waiting up to {CELL_STOP_GRACE_S} s)")
    for generator in running:
        where = started[generator]
        if where.get("node_id") != here or not signal_process(where["pid"], where.get("started"), signal.SIGTERM):
            ray.cancel(generator)
    deadline, pending = time.monotonic() + CELL_STOP_GRACE_S, list(unfinished)
    while pending and time.monotonic() < deadline:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        for generator in ready:
            try:
                ray.get(next(generator))
            except StopIteration:
                continue
            except Exception:  # noqa: BLE001 - cancelled before it ran, or its worker ended
                continue
            pending.append(generator)  # its last message was ready; its end follows


def log_size(cell_dir: Path) -> int:
    """How many bytes a cell's search.log holds (0: none yet)."""
    try:
        return (cell_dir / LOG_FILE).stat().st_size
    except OSError:
        return 0


def record_interruptions(sweep_dir: Path, log_sizes: dict[str, int], adapter_wanted: bool,
                         tracking_uri: str | None = None) -> list[str]:
    """After a stopped sweep has left Ray: every cell that started in this run (its
    search.log grew beyond `log_sizes`) and neither finished, failed nor said it was
    interrupted (its worker ended before it could: a cell on another node still busy when
    `stop_cells` stopped waiting, a stop before the cells' tasks were followed) gets the
    line its search would have written, from the driver. Returns those cells' names."""
    recorded = []
    for name, before in log_sizes.items():
        cell_dir = sweep_dir / name
        try:
            with open(cell_dir / LOG_FILE, "rb") as log:
                log.seek(before)
                said = log.read().decode("utf-8", errors="replace")
            if not said or cell_state(cell_dir, adapter_wanted) in ("finished", "failed") \
                    or any(line.startswith(INTERRUPTED) for line in said.splitlines()):
                continue
            with open(cell_dir / LOG_FILE, "a", encoding="utf-8") as log:
                log.write(f"the sweep was stopped; this cell's process ended before it said so (written by the "
                          f"sweep's driver)\n{interrupted_line(cell_dir, tracking_uri)}\n")
        except OSError:  # not started in this run, or not ours to write: the stop goes on
            continue
        recorded.append(name)
    return recorded


def task_error(exc: BaseException) -> str:
    """One line from a Ray error (a task's own exception, or a worker that died)."""
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


# -- reading a sweep back ---------------------------------------------------------------------
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
    from promptclimb.agent.options import resolve

    try:  # a value edited by hand: its rerun blamed a flag never given (`sweep: --resets 'x': ...`)
        resolve(settings.get("search", {}))
    except PromptclimbError as exc:
        raise PromptclimbError(f"{path} is damaged ({exc})") from None
    return {"search": {}, "created": "", **settings}


def sweep_cells(sweep_dir: str | Path) -> "pd.DataFrame":
    """One row per cell of the grid: its state, the test accuracy of the best template, of
    the top-k ensemble and of the adapter (when fit), the LLM cost, and the error of a
    failed cell (or why a summary could not be read)."""
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    settings = read_sweep(sweep_dir)
    try:
        settings["grid"] = check_grid(settings["grid"])
        adapter_wanted = bool(search_options(settings["search"])["adapter_kinds"])
        cells = grid_cells(settings)
    except PromptclimbError as exc:
        raise PromptclimbError(f"{sweep_dir / SWEEP_FILE} is damaged ({exc})") from None
    rows = []
    for cell in cells:
        cell_dir = sweep_dir / cell.name
        row = {"dataset": cell.dataset, "backbone": cell.backbone, "shots": cell.shots, "seed": cell.seed,
               "cell": cell.name, "state": cell_state(cell_dir, adapter_wanted), "error": ""}
        if row["state"] == "failed":
            try:
                row["error"] = (cell_dir / ERROR_FILE).read_text(encoding="utf-8", errors="replace").strip()
            except OSError as exc:
                row["error"] = f"{ERROR_FILE} cannot be read: {exc.strerror or exc}"
        summary = cell_summary(cell_dir)
        if summary is None and has_summary(cell_dir):  # an empty one holds no result: a cell not finished yet
            row["error"] = row["error"] or f"{SUMMARY} is damaged; rerun the sweep to write it again"
        summary = summary or {}
        ledger = summary.get("ledger") if isinstance(summary.get("ledger"), dict) else {}
        row |= {
            "result": _test(kept_result(summary)),
            "best": _test(summary.get("best")),
            "ensemble": _test(summary.get("ensemble")),
            "adapter": _test(summary.get("adapter")),
            "llm_calls": _number(ledger.get("calls")),
            "llm_tokens": _number(ledger.get("prompt_tokens")) + _number(ledger.get("completion_tokens"), 0.0),
            "llm_s": _number(ledger.get("latency_s")),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def _number(value, missing: float = math.nan) -> float:
    """A figure read from a summary: a number, else `missing` (a summary of wrong types is
    shown as not measured, never a traceback)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return missing
    return float(value)


def _test(section) -> float:
    accuracy = section.get("accuracy") if isinstance(section, dict) else None
    return _number(accuracy.get("test")) if isinstance(accuracy, dict) else math.nan


def sweep_summary(cells: "pd.DataFrame") -> "pd.DataFrame":
    """Per dataset x backbone x shots: finished seeds, failed cells, mean and sd over the
    finished seeds of each test accuracy (0..1) and the mean LLM cost per cell."""
    import pandas as pd

    rows = []
    for (dataset, backbone, shots), group in cells.groupby(["dataset", "backbone", "shots"], sort=False):
        done = group[group["state"] == "finished"]
        row = {"dataset": dataset, "backbone": backbone, "shots": shots, "seeds": len(done),
               "failed": int((group["state"] == "failed").sum())}
        for result in RESULTS:
            values = done[result].dropna()
            row[f"{result}_mean"] = values.mean() if len(values) else math.nan
            row[f"{result}_sd"] = values.std(ddof=1) if len(values) > 1 else math.nan
            row[f"{result}_seeds"] = len(values)  # an adapter fit on some seeds only: over those
        for cost in ("llm_calls", "llm_tokens", "llm_s"):
            row[f"{cost}_mean"] = done[cost].mean() if len(done) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def mean_sd(mean: float, sd: float) -> str:
    """"87.5 ± 1.2" (percent); "87.5" for one seed; "" when nothing was measured."""
    if math.isnan(mean):
        return ""
    return f"{100 * mean:.1f}" + (f" ± {100 * sd:.1f}" if not math.isnan(sd) else "")


def plot_sweep(summary: "pd.DataFrame", path: Path, title: str) -> Path | None:
    """Test accuracy against shots, one colour per dataset x backbone: the best template
    (solid, error bars = sd over seeds), the ensemble (dashed), the adapter (dotted)."""
    if summary.empty or summary["best_mean"].isna().all():
        return None
    from promptclimb.agent.runs.plots import new_figure, save_figure

    fig, ax = new_figure(figsize=(7, 4.5))
    styles = {"best": "-o", "ensemble": "--s", "adapter": ":^"}
    for i, ((dataset, backbone), group) in enumerate(summary.groupby(["dataset", "backbone"], sort=False)):
        group = group.sort_values("shots")
        for result, style in styles.items():
            if group[f"{result}_mean"].isna().all():
                continue
            ax.errorbar(group["shots"], 100 * group[f"{result}_mean"], yerr=100 * group[f"{result}_sd"].fillna(0),
                        fmt=style, color=f"C{i}", capsize=3, label=f"{dataset} / {backbone}: {result}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(summary["shots"].unique()), [str(s) for s in sorted(summary["shots"].unique())])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("test accuracy (%), mean ± sd over seeds")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
