"""Reading runs back: the report of a stopped run says how to continue it, a
`load_run()` run outlives an `os.chdir`, `search(adapter=np.array([...]))` is a list of kinds,
and `compare` of runs that start from different class names."""

from __future__ import annotations

import json
import re
from html import unescape

from click.testing import CliRunner

from promptclimb.agent.cli import cli
from promptclimb.agent.runs.store import run_lock
from fake_llm import FakeLLM
from test_cmd_runs import cut_history
from test_api import SMALL, built, notebook  # noqa: F401 (fixtures)
from test_reading import make_run


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def report_facts(html: str) -> dict[str, str]:
    """The report's summary block, label -> value, as text."""
    block = html.split("<h2>Summary</h2>")[1].split("</dl>")[0]
    return {unescape(k): unescape(v) for k, v in re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", block, re.S)}


def test_the_report_of_an_unfinished_run_says_how_to_continue_it_as_show_does(tmp_path):
    """`show` of a killed run printed "continue it with: promptclimb search --resume RUN"; the
    page shared of it said only "unfinished". A finished or a running run has no such row."""
    run_dir = make_run(tmp_path)
    runs = tmp_path / "runs"

    def report():
        result = invoke("report", "run", "--runs-dir", runs, "-o", "-")
        assert result.exit_code == 0, result.output
        return report_facts(result.stdout)

    assert "continue it with" not in report()
    cut_history(run_dir, lambda e: e["event"] != "final")
    facts = report()
    assert facts["status"] == "unfinished"
    assert facts["continue it with"] == f"promptclimb search --resume {run_dir}"
    shown = invoke("show", "run", "--runs-dir", runs).stdout.splitlines()
    assert shown[2] == f"continue it with: {facts['continue it with']}"  # one line, said alike
    with run_lock(run_dir):  # a search at it: nothing to continue
        assert "continue it with" not in report()
    # tracked on a server: the command leaves its URI out (it may need credentials), the row names it
    (run_dir / "mlflow.json").write_text(json.dumps({"v": 1, "runs": {
        "http://mlflow.example:5000": {"experiment_id": "1", "run_id": "abc"}}}))
    assert report()["continue it with"] == (
        f"promptclimb search --resume {run_dir} (its MLflow run is on http://mlflow.example:5000: add --mlflow "
        "with that server's URI, and the credentials it needs, to continue that MLflow run)")


def test_a_run_loaded_from_a_relative_path_still_reads_after_a_chdir(tmp_path, monkeypatch):
    """`load_run("runs/run")` kept the relative path: after `os.chdir` (a notebook changing
    folder) `run.created`, `run.transfers()`, `load_run(run)` and `transfer(run)` looked for the
    run in the new folder. It is absolute now, as `SearchResult.run_dir` is."""
    import promptclimb

    run_dir = make_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    for given in ("runs/run", "run", "./runs/../runs/run"):  # a path, an id under runs/, a path with ..
        run = promptclimb.load_run(given)
        assert run.path == run_dir.resolve() and run.id == "run"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert run.created.year == 2025 and run.transfers() == []
    assert promptclimb.load_run(run).path == run.path  # read again from its path
    assert repr(run).startswith(f"Run({str(run_dir.resolve())!r}, done")


def test_search_takes_a_numpy_array_of_adapter_kinds_as_a_list(notebook, built, monkeypatch):
    """`adapter=np.array(["cache", "feature-residual"])` (a frame's column of kinds) was refused
    whole ("--adapter array([...]): expected a name or a list of names"), where a list or a
    tuple of the same kinds is taken: each is checked and fitted as the list's."""
    import numpy as np
    import pandas as pd
    import pytest

    import promptclimb
    from promptclimb.agent import adapt

    fitted = []
    monkeypatch.setattr(adapt, "fit_run_adapter", lambda run_dir, kinds, **_: fitted.append(kinds) or None)
    for name, kinds in (("array", np.array(["cache", "feature-residual"])), ("series", pd.Series(["cache"]))):
        result = promptclimb.search(dataset="toy", adapter=kinds, name=name, echo=None, **SMALL)
        recorded = json.loads((result.run_dir / "config.json").read_text())["adapter_kinds"]
        assert recorded == fitted[-1] == list(kinds)
    with pytest.raises(promptclimb.PromptclimbError, match=r"^unknown adapter kind 'lora'; known kinds: "):
        promptclimb.search(dataset="toy", adapter=np.array(["cache", "lora"]), echo=None, **SMALL)
    with pytest.raises(promptclimb.PromptclimbError, match=r"^search\(\): --adapter 1: expected text$"):
        promptclimb.search(dataset="toy", adapter=np.array([1, 2]), echo=None, **SMALL)


def record_start_names(run_dir, names, classnames=None) -> None:
    """config.json as a search writes what its evaluator read: the start names, and --classnames."""
    path = run_dir / "config.json"
    config = json.loads(path.read_text())
    config["evaluator_args"] = {"dataset": "toy", "shots": 2, "seed": 0, "backbone": "word", "classnames": classnames}
    config["evaluator"] = {"dataset": {"name": "toy", "classes": len(names), "classnames": list(names)}}
    path.write_text(json.dumps(config))


def test_compare_of_runs_from_different_start_names_matches_prompts_by_their_names(tmp_path, monkeypatch):
    """A names search from the published labels (it renamed T-shirt/top -> tee, Trouser ->
    jeans) beside a template search from tee, jeans, Dress, Bag: `compare` listed `a {}.` as
    shared among the winners (scored with Trouser in A, jeans in B: each run's "start names"),
    and not `a grayscale photo of a {}.`, scored with the same names in both. It matches the
    names themselves, and says in one line which start names differ."""
    from test_names import CLASSES, climb, evaluator, scripted
    from test_reading import make_names_run

    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    names_dir, _ = make_names_run(tmp_path)
    found = ("tee", "jeans", "Dress", "Bag")
    ev = evaluator()
    ev.task = ev.task.__class__(ev.task.dataset, ev.task.description, found)
    with FakeLLM(responder=scripted([""], templates="a grayscale photo of a {}.\na photo of the {}.")) as fake:
        _, _, clean_dir = climb(tmp_path, fake.base_url, name="clean", ev=ev, search="template", iterations=2,
                                resets=2)
    record_start_names(names_dir, CLASSES)
    record_start_names(clean_dir, found, classnames="clean.txt")
    runs = tmp_path / "runs"
    records = json.loads(invoke("compare", names_dir.name, "clean", "--runs-dir", runs, "--format", "json").stdout)
    a_rows = {r["A template"]: r["A names"] for r in records}
    b_rows = {r["B template"]: r["B names"] for r in records}
    assert a_rows["a grayscale photo of a {}."] == "T-shirt/top -> tee; Trouser -> jeans"
    assert b_rows["a grayscale photo of a {}."] == ""  # B's start names: A's found ones
    both_start = sorted(t for t, n in a_rows.items() if n == "" and b_rows.get(t) == "")
    assert both_start  # the same text, "" in both: Trouser in A, jeans in B

    result = invoke("compare", names_dir.name, "clean", "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("shared among the winners: "))
    listed = [line.strip() for line in lines[at + 1:] if line.startswith("  ")]
    assert "a grayscale photo of a {}. (with A's renames T-shirt/top -> tee; Trouser -> jeans)" in listed
    assert not {t for t in both_start} & {line.split(" (with")[0] for line in listed}
    assert lines[at] == f"shared among the winners: {len(listed)}"
    notes = [line for line in lines if line.startswith("note: ")]
    assert notes[0] == ("note: the runs start from different class names (--classnames) on the same images: 2 of 4 "
                        "differ (A -> B: T-shirt/top -> tee, Trouser -> jeans); each run's renames are counted from "
                        "its own start names.")
    # other data too: the splits' line, and still the start names' (it had been left out)
    record_start_names(clean_dir, found, classnames="clean.txt")
    config = json.loads((clean_dir / "config.json").read_text())
    config["evaluator_args"]["data_root"] = "/elsewhere"
    (clean_dir / "config.json").write_text(json.dumps(config))
    notes = [line for line in invoke("compare", names_dir.name, "clean", "--runs-dir", runs).stdout.splitlines()
             if line.startswith("note: ")]
    assert notes[:2] == ["note: the runs use different dataset splits (data differ); their accuracies are not "
                         "measured on the same images.",
                         "note: the runs start from different class names (--classnames): 2 of 4 differ (A -> B: "
                         "T-shirt/top -> tee, Trouser -> jeans); each run's renames are counted from its own start "
                         "names."]
