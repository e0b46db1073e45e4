"""Faults and bad input (issue 12): damaged run files, unwritable folders, bad weights files,
run names, races, flags on --resume, stale features, broken meta-prompts, SIGTERM, kills
before the run folder exists. Each is a message or a recovery, never a traceback."""

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from fake_llm import FakeLLM, WordEvaluator, one_line_error, signal_child_at_request
from test_search import KEY, comparable, responder

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.runs.store import RunStore

TESTS = Path(__file__).resolve().parent
SMALL = ["--iterations", "2", "--resets", "1", "--pool-sample", "6", "--search", "template"]


EVALUATOR = {"factory": None}  # the evaluator factory the commands get (None: the real CLIP one)


def cli(*args, env=None):
    from promptclimb.agent.cli import cli as command

    return CliRunner().invoke(command, [str(a) for a in args], env=env, obj={"evaluator_factory": EVALUATOR["factory"]})


@pytest.fixture
def evaluators_built(monkeypatch):
    """The search builds WordEvaluators; the list says which datasets, in order."""
    built = []

    def build(**kwargs):
        built.append(kwargs["dataset"])
        return WordEvaluator(kwargs["dataset"])

    monkeypatch.setitem(EVALUATOR, "factory", build)
    return built


def finished_run(runs: Path, name: str = "r") -> Path:
    """A run folder as `promptclimb search` leaves it (only what adapt / eval --run read)."""
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"v": 1, "run_id": name, "evaluator_args": {
        "dataset": "fashion-mnist", "shots": 1, "seed": 0, "backbone": "demo", "pretrained": None,
        "weights": None, "data_root": None}}))
    best = {"template": "a photo of a {}.", "accuracy": {"train": 0.5, "val": 0.5, "test": 0.5}}
    (run / "summary.json").write_text(json.dumps({"v": 1, "best": best, "ensemble": None}))
    return run


# -- 3: damaged run files, unwritable folders, bad weights files ------------------------------------
def test_a_damaged_summary_is_one_line_for_adapt_and_eval_run(tmp_path):
    run = finished_run(tmp_path / "runs")
    (run / "summary.json").write_text('{"v": 1, "best": {"templ')  # cut short
    for args in (["adapt", "r", "--kind", "cache"], ["eval", "--run", "r"]):
        one_line_error(cli(*args, "--runs-dir", tmp_path / "runs"), str(run / "summary.json"), "damaged")


def test_templates_of_ones_own_are_scored_on_the_split_of_a_run_not_ended(tmp_path):
    """`eval --run RUN --prompt T` of a run whose search has not finished was refused for its
    missing summary.json, though only its split is read (a soft-prompt run's was not)."""
    run = finished_run(tmp_path / "runs")
    (run / "summary.json").unlink()
    scored = cli("eval", "--run", "r", "--prompt", "a dark {}.", "--runs-dir", tmp_path / "runs")
    assert scored.exit_code == 0 and "a dark {}." in scored.output, scored.output
    one_line_error(cli("eval", "--run", "r", "--runs-dir", tmp_path / "runs"), "has no summary.json")


@pytest.mark.parametrize("best", [None, 5, "a photo of a {}."])
def test_a_summary_whose_result_is_not_an_object_is_one_line_and_hides_no_other_run(tmp_path, best):
    runs = tmp_path / "runs"
    finished_run(runs, "ok")
    run = finished_run(runs, "bad")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "best": best}))
    for args in (["show", "bad"], ["compare", "bad", "ok"], ["report", "bad"]):
        one_line_error(cli(*args, "--runs-dir", runs), str(run / "summary.json"), "damaged ('best' is")
    listed = cli("runs", "--runs-dir", runs, "--format", "json")
    assert listed.exit_code == 0, listed.output
    assert {r["id"]: r["status"] for r in json.loads(listed.output)} == {"ok": "done", "bad": "unreadable"}


@pytest.mark.parametrize("edit, said", [
    (lambda s: s.pop("best"), "damaged (no 'best': the result it should hold)"),
    (lambda s: s.update(top=[1, "x"]), "damaged ('top' is [1, \"x\"], not a list of objects)"),
    (lambda s: s.update(names={"classes": "oops"}), "damaged ('names.classes' is \"oops\", not a list of objects)"),
    (lambda s: s.update(ledger=[1]), "damaged ('ledger' is [1], not an object)"),
    (lambda s: s["best"].pop("template"), "damaged ('best' has no template: {\"accuracy\""),
])
def test_a_summary_missing_its_result_or_with_lists_of_other_things_is_one_line(tmp_path, edit, said,
                                                                                evaluators_built):
    """Hand-edited summary.json files that show, compare, report, adapt and eval --run met with
    a traceback (KeyError 'best', "'int' object has no attribute 'get'"), while runs listed
    them as done."""
    runs = tmp_path / "runs"
    finished_run(runs, "ok")
    run = finished_run(runs, "bad")
    summary = json.loads((run / "summary.json").read_text())
    edit(summary)
    (run / "summary.json").write_text(json.dumps(summary))
    for args in (["show", "bad"], ["compare", "bad", "ok"], ["report", "bad"], ["adapt", "bad", "--kind", "cache"],
                 ["eval", "--run", "bad"]):
        one_line_error(cli(*args, "--runs-dir", runs), f"{run / 'summary.json'} is {said}")
    listed = cli("runs", "--runs-dir", runs, "--format", "json")
    assert {r["id"]: r["status"] for r in json.loads(listed.output)} == {"ok": "done", "bad": "unreadable"}
    assert evaluators_built == []  # refused before any model or image loads


def test_compare_never_calls_two_soft_prompts_shared(tmp_path):
    runs = tmp_path / "runs"
    for name, optimizer in (("craft", "craft"), ("cbbt", "cbbt"), ("a", None), ("b", None)):
        run = finished_run(runs, name)
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**config, "optimizer": optimizer} if optimizer else config))
        summary = json.loads((run / "summary.json").read_text())
        best = {**summary["best"], "template": "<soft: a photo of a> {class}." if optimizer else "a photo of a {}."}
        (run / "summary.json").write_text(json.dumps({**summary, "best": best}))
    soft = cli("compare", "craft", "cbbt", "--runs-dir", runs)  # different vectors that read alike
    assert soft.exit_code == 0, soft.output
    assert "shared among the winners: 0" in soft.output
    assert "shared among the winners: 1" in cli("compare", "a", "b", "--runs-dir", runs).output


def test_show_and_report_say_what_a_run_keeps_an_adapter_and_a_soft_prompt(tmp_path):
    runs = tmp_path / "runs"
    adapter = {"kind": "cache", "result": "adapter", "accuracy": {"train": 0.9, "val": 0.8, "test": 0.75},
               "file": "adapter.pt"}
    for name, optimizer in (("llm", None), ("soft", "craft")):
        run = finished_run(runs, name)
        config = json.loads((run / "config.json").read_text())
        if optimizer:
            config |= {"optimizer": optimizer, "soft_prompt": {"queries": 200}}
        (run / "config.json").write_text(json.dumps(config))
        summary = json.loads((run / "summary.json").read_text()) | {"adapter": adapter}
        if optimizer:
            summary["soft_prompt"] = {"tokens": 4, "file": "soft_prompt.pt", "init": "a photo of a",
                                      "nearest_tokens": ["a", "photo", "of", "a"]}
        (run / "summary.json").write_text(json.dumps(summary))
    said = "prompt + cache adapter: train 90.0%  val 80.0%  test 75.0% (kept: it beat the prompt alone on val"
    assert said in cli("show", "llm", "--runs-dir", runs).output
    assert json.loads(cli("show", "soft", "--runs-dir", runs, "--format", "json").stdout)["soft_prompt"]["tokens"] == 4
    for name in ("llm", "soft"):
        assert cli("report", name, "--runs-dir", runs).exit_code == 0
        assert said in (runs / name / "report.html").read_text()
    soft = (runs / "soft" / "report.html").read_text()
    assert "craft, 200 queries" in soft and "LLM</dt>" not in soft and "? restart(s)" not in soft
    # `adapt --on ensemble`: said to sit on the ensemble (it read as on the best template)
    summary = json.loads((runs / "llm" / "summary.json").read_text())
    summary["adapter"] |= {"on": "ensemble", "templates": ["a photo of a {}.", "a {}."], "result": "prompt-only"}
    (runs / "llm" / "summary.json").write_text(json.dumps(summary))
    assert ("the ensemble of 2 templates + cache adapter: train 90.0%  val 80.0%  test 75.0% (not kept: it did not "
            "beat the ensemble of 2 templates alone on val") in cli("show", "llm", "--runs-dir", runs).output


def test_eval_with_a_missing_adapter_is_one_line_before_the_evaluator_loads(tmp_path, evaluators_built):
    finished_run(tmp_path / "runs")
    one_line_error(cli("eval", "--run", "r", "--with-adapter", "--runs-dir", tmp_path / "runs"), "no adapter at",
                   f"fit one with: promptclimb adapt {tmp_path / 'runs' / 'r'} --kind KIND")  # the run, not RUN
    assert evaluators_built == []


def test_resume_of_a_damaged_config_is_one_line(tmp_path, llm, evaluators_built):
    run = finished_run(tmp_path / "runs")
    (run / "config.json").write_text("{not json")
    one_line_error(cli("search", "--resume", "r", "--runs-dir", tmp_path / "runs"),
                   str(run / "config.json"), "damaged")
    assert evaluators_built == []


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c["search"].update(iterations="3"), "(search.iterations: --iterations '3': expected a whole number)"),
    (lambda c: c["search"].update(iterations=3.5), "(search.iterations: --iterations 3.5: expected a whole number)"),
    (lambda c: c["search"].update(max_calls="3"), "(search.max_calls: --max-calls '3': expected a whole number)"),
    (lambda c: c["evaluator_args"].update(shots="x"), "(evaluator_args.shots: --shots 'x': expected a whole number)"),
    (lambda c: c["search"].update(guard=["own"]), "(search.guard: --guard ['own']: expected text)"),
    (lambda c: c.update(search=None), "('search' is missing or null)"),
    (lambda c: c.update(llm=None), "('llm' is missing or null)"),
    (lambda c: c["pool"].update(templates=[["a {}", "general"], 5]), "(pool.templates: expected a list of"),
    (lambda c: c["pool"].pop("templates"), "(pool.templates: expected a list of"),  # had been a KeyError
])
def test_resume_of_a_hand_edited_config_is_one_line(edit, needle, tmp_path, llm, evaluators_built):
    """Values of the wrong type in a config.json edited by hand went on into the resumed
    search, to a TypeError (`'<' not supported between 'str' and 'int'`) and a traceback."""
    runs = tmp_path / "runs"
    assert cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "r").exit_code == 0
    config = json.loads((runs / "r" / "config.json").read_text())
    edit(config)
    (runs / "r" / "config.json").write_text(json.dumps(config))
    one_line_error(cli("search", "--resume", "r", "--runs-dir", runs), f"{runs / 'r' / 'config.json'} is damaged {needle}")


def test_a_config_whose_metric_or_part_readers_use_is_wrong_is_one_line_for_every_reader(tmp_path, llm,
                                                                                        evaluators_built):
    """`show`, `report` and `compare` of a run whose config.json says metric "nope" ended in
    a ValueError's traceback, and "llm": "x" in an AttributeError's; `runs` lists it as unreadable."""
    runs = tmp_path / "runs"
    for name in ("r", "other"):
        assert cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", name).exit_code == 0
    config = json.loads((runs / "r" / "config.json").read_text())
    for edit, needle in ((lambda c: c["search"].update(metric="nope"), "search.metric: --metric 'nope': expected one of"),
                         (lambda c: c.update(llm="x"), "'llm' is \"x\", not an object")):
        edited = json.loads(json.dumps(config))
        edit(edited)
        (runs / "r" / "config.json").write_text(json.dumps(edited))
        for args in (["show", "r"], ["report", "r", "-o", tmp_path / "r.html"], ["compare", "r", "other"],
                     ["search", "--resume", "r"]):
            one_line_error(cli(*args, "--runs-dir", runs), "config.json is damaged", needle)
        listed = cli("runs", "--runs-dir", runs)
        assert listed.exit_code == 0 and "unreadable" in listed.output and "other" in listed.output


@pytest.mark.parametrize("edit, needle", [
    ({"shots": "x"}, "evaluator_args.shots: --shots 'x': expected a whole number"),
    ({"seed": 1.5}, "evaluator_args.seed: --seed 1.5: expected a whole number"),
    ({"backbone": 5}, "evaluator_args.backbone: --backbone 5: expected text"),
])
def test_a_run_whose_evaluator_settings_were_edited_by_hand_is_one_line_for_what_rebuilds_it(tmp_path, edit, needle,
                                                                                            evaluators_built):
    """`eval --run`, `adapt` and `transfer` build the run's evaluator from config.json's
    evaluator_args: shots "x" was a TypeError there, backbone 5 an AttributeError."""
    run = finished_run(tmp_path / "runs")
    config = json.loads((run / "config.json").read_text())
    config["evaluator_args"].update(edit)
    (run / "config.json").write_text(json.dumps(config))
    for args in (["eval", "--run", "r"], ["adapt", "r", "--kind", "cache"], ["transfer", "r", "--backbone", "demo"]):
        one_line_error(cli(*args, "--runs-dir", tmp_path / "runs"), f"{run / 'config.json'} is damaged ({needle})")
    assert evaluators_built == []


def test_eval_of_a_run_whose_config_names_no_dataset_is_refused_not_scored_on_the_default(tmp_path, evaluators_built):
    """With evaluator_args gone from config.json, `eval --run` scored the run's template on
    fashion-mnist (the default), whatever data the run had; `adapt` and `transfer` refuse."""
    run = finished_run(tmp_path / "runs")
    config = json.loads((run / "config.json").read_text())
    for damaged in (None, {"shots": 1}):
        (run / "config.json").write_text(json.dumps({**config, "evaluator_args": damaged}))
        one_line_error(cli("eval", "--run", "r", "--runs-dir", tmp_path / "runs"),
                       f"{run / 'config.json'} does not say which dataset the run used")
    assert evaluators_built == []


@pytest.mark.parametrize("lost", ["deleted", "emptied"])
def test_resume_of_a_finished_run_whose_history_is_gone_keeps_its_summary(lost, tmp_path, llm, evaluators_built):
    """It ran the whole search again from no events and wrote its summary over the run's
    (the same only while the LLM cache held every answer)."""
    runs = tmp_path / "runs"
    assert cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "r").exit_code == 0
    history, summary = runs / "r" / "history.jsonl", (runs / "r" / "summary.json").read_text()
    history.unlink() if lost == "deleted" else history.write_text("")
    one_line_error(cli("search", "--resume", "r", "--runs-dir", runs), "has a summary.json but no events",
                   "nothing to continue from")
    assert (runs / "r" / "summary.json").read_text() == summary



def test_a_run_whose_data_folder_moved_resumes_with_data_root_and_records_where(tmp_path, llm, evaluators_built):
    """Its data folder moved, a run could not be resumed: `data folder ... does not exist`, and
    `--resume RUN --data-root NEW` was refused as a change of settings; its work was lost."""
    runs, data = tmp_path / "runs", tmp_path / "disk1" / "photos"
    data.mkdir(parents=True)
    assert cli("search", "--dataset", "imagefolder", "--data-root", data, *SMALL, "--runs-dir", runs,
               "--name", "r").exit_code == 0
    moved = tmp_path / "disk2" / "photos"
    moved.parent.mkdir()
    data.rename(moved)
    one_line_error(cli("search", "--resume", "r", "--runs-dir", runs),
                   f"r's data folder {data} does not exist: moved, give where it is now: promptclimb search "
                   f"--resume {runs / 'r'} --data-root DIR")
    renamed = tmp_path / "disk2" / "pictures"
    moved.rename(renamed)
    one_line_error(cli("search", "--resume", "r", "--runs-dir", runs, "--data-root", renamed),
                   "r's data folder was named 'photos'", "its split is drawn from that name")
    renamed.rename(moved)
    resumed = cli("search", "--resume", "r", "--runs-dir", runs, "--data-root", moved)
    assert resumed.exit_code == 0, resumed.output
    assert f"r's data folder {data} is gone: reading it from {moved} (recorded in its config.json)" in resumed.output
    assert json.loads((runs / "r" / "config.json").read_text())["evaluator_args"]["data_root"] == str(moved)
    assert evaluators_built == ["imagefolder", "imagefolder"]
    (tmp_path / "disk3" / "photos").mkdir(parents=True)  # the run's folder is there: another one is a change
    one_line_error(cli("search", "--resume", "r", "--runs-dir", runs, "--data-root", tmp_path / "disk3" / "photos"),
                   "--resume continues a run with the settings it started with")


def test_a_moved_image_folder_is_recorded_only_where_it_holds_the_runs_images(tmp_path, llm, tiny_clip_config,
                                                                                tiny_clip_weights):
    """With the CLIP evaluator, whose folder identity holds its path: the resume from the moved
    folder warned that the evaluator was not identical, and recorded whatever folder it was
    given (another one of the same name stayed the run's, and the right one was then refused)."""
    import os
    import shutil

    from conftest import make_image_folder

    data, runs = make_image_folder(tmp_path / "disk1" / "photos", per_class=4), tmp_path / "runs"
    clip = ["--backbone", tiny_clip_config, "--weights", tiny_clip_weights, "--device", "cpu"]
    assert cli("search", "--dataset", "imagefolder", "--data-root", data, *clip, *SMALL, "--runs-dir", runs,
               "--name", "r").exit_code == 0
    copy = tmp_path / "disk3" / "photos"
    shutil.copytree(data, copy)
    first = sorted(copy.rglob("*.png"))[0]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))  # another file, as far as it knows
    moved = tmp_path / "disk2" / "photos"
    moved.parent.mkdir()
    data.rename(moved)
    config = json.loads((runs / "r" / "config.json").read_text())
    other = cli("search", "--resume", "r", "--runs-dir", runs, "--data-root", copy)
    assert other.exit_code == 0, other.output
    assert f"warning: the images in {copy} are not those r started with in {data} (" in other.output
    assert json.loads((runs / "r" / "config.json").read_text())["evaluator_args"] == config["evaluator_args"]
    same = cli("search", "--resume", "r", "--runs-dir", runs, "--data-root", moved)
    assert same.exit_code == 0, same.output
    assert f"r's data folder {data} is gone: reading it from {moved} (recorded in its config.json)" in same.output
    assert "warning" not in same.output
    recorded = json.loads((runs / "r" / "config.json").read_text())
    assert recorded["evaluator_args"]["data_root"] == str(moved)
    assert recorded["evaluator"]["dataset"]["identity"].startswith(f"{moved}:")


def test_a_runs_data_folder_changed_since_is_said_by_eval_adapt_and_transfer(tmp_path, llm, tiny_clip_config,
                                                                              tiny_clip_weights):
    """Images added to a run's data folder after the search: `eval --run`, `adapt` and
    `transfer` drew another split from it and scored it, unsaid (adapt wrote its val figure
    into the run's summary). And `eval --run RUN --dataset OTHER` blamed the run's --data-root."""
    from conftest import make_image_folder

    data, runs = make_image_folder(tmp_path / "photos", per_class=6), tmp_path / "runs"
    clip = ["--backbone", tiny_clip_config, "--weights", tiny_clip_weights, "--device", "cpu"]
    assert cli("search", "--dataset", "imagefolder", "--data-root", data, *clip, *SMALL, "--runs-dir", runs,
               "--name", "r").exit_code == 0
    said = "warning: the train, val, test images drawn now from r's data are not the ones it was searched on"
    before = cli("eval", "--run", "r", "--runs-dir", runs, "--device", "cpu")
    assert before.exit_code == 0 and "warning" not in before.output, before.output
    make_image_folder(tmp_path / "more", per_class=4)
    for folder in (tmp_path / "more").iterdir():
        for image in folder.iterdir():
            image.rename(data / folder.name / f"new-{image.name}")
    for command in (["eval", "--run", "r"],
                    ["transfer", "r", "--backbone", tiny_clip_config, "--weights", tiny_clip_weights]):
        out = cli(*command, "--runs-dir", runs, "--device", "cpu")
        assert out.exit_code == 0 and said in out.output, (command, out.output)
    # adapt wrote its fit on the other images into the run, as its result: refused
    one_line_error(cli("adapt", "r", "--kind", "cache", "--runs-dir", runs, "--device", "cpu"),
                   "cannot fit r's adapter: the train, val, test images drawn now", "put its data back as it was")
    assert "adapter" not in json.loads((runs / "r" / "summary.json").read_text())
    # the same images in a folder of another name draw another split (by the folder's name)
    assert cli("search", "--dataset", "imagefolder", "--data-root", make_image_folder(tmp_path / "flat", per_class=6),
               *clip, *SMALL, "--runs-dir", runs, "--name", "flat").exit_code == 0
    (tmp_path / "flat").rename(tmp_path / "renamed")
    one_line_error(cli("adapt", "flat", "--kind", "cache", "--runs-dir", runs, "--device", "cpu", "--data-root",
                       tmp_path / "renamed"), "cannot fit flat's adapter",
                   "or a folder without train/ and test/ renamed: its split is drawn by its name)")
    other = cli("eval", "--run", "r", "--runs-dir", runs, "--dataset", "fashion-mnist", "--device", "cpu")
    one_line_error(other, "the run's classes are not the data's")  # its names name no fashion-mnist class
    assert str(data) not in other.output and "fashion_mnist_subset.npz" not in other.output


def test_a_resume_whose_class_folders_changed_is_refused_by_class_and_images_added_are_said(
        tmp_path, llm, tiny_clip_config, tiny_clip_weights):
    """A class folder renamed since a run was killed: the resume went on with each recorded
    name filled in to another class's images, unsaid ('not identical'); a class folder added
    blamed `--classnames`, never given. `adapt` fit on names in the old order. Images added
    were only 'not identical'."""
    import shutil

    from conftest import make_image_folder

    classes = {"AnnualCrop": (220, 30, 30), "sea-lake": (30, 200, 40), "sea_a": (30, 40, 220)}
    runs = tmp_path / "runs"
    clip = ["--backbone", tiny_clip_config, "--weights", tiny_clip_weights, "--device", "cpu"]

    def killed_run(name, kill=True, search="template"):
        data = make_image_folder(tmp_path / name, per_class=4, classes=classes)
        assert cli("search", "--dataset", "imagefolder", "--data-root", data, *clip, *SMALL, "--runs-dir", runs,
                   "--name", name, "--search", search).exit_code == 0
        if not kill:
            return data
        history = runs / name / "history.jsonl"
        history.write_text("".join(history.read_text().splitlines(keepends=True)[:3]))
        (runs / name / "summary.json").unlink()
        return data

    def resume(name):
        return cli("search", "--resume", name, "--runs-dir", runs, "--device", "cpu")

    data = killed_run("renamed")  # 'sea a' now comes before 'sea lake'
    (data / "sea-lake").rename(data / "sea_lake")
    order = "renamed's classes now come in another order than when it started (a class folder or label renamed " \
            "since?): class 2 is 'sea a', the run's was 'sea lake'"
    one_line_error(resume("renamed"), order)
    data = killed_run("fit", kill=False)
    (data / "sea-lake").rename(data / "sea_lake")
    one_line_error(cli("adapt", "fit", "--kind", "cache", "--runs-dir", runs, "--device", "cpu"),
                   order.replace("renamed's", "fit's"))
    data = tmp_path / "renamed"
    (data / "AnnualCrop").rename(data / "Crop")
    one_line_error(resume("renamed"), "the run's classes are not the data's: the data has 'Crop' and the run does "
                                      "not; the run has 'AnnualCrop' and the data does not")
    data = killed_run("moved")  # moved elsewhere as well: the order was not checked there
    (data / "sea-lake").rename(data / "sea_lake")
    (tmp_path / "disk2").mkdir()
    data.rename(tmp_path / "disk2" / "moved")
    one_line_error(cli("search", "--resume", "moved", "--runs-dir", runs, "--device", "cpu", "--data-root",
                       tmp_path / "disk2" / "moved"), order.replace("renamed's", "moved's"))
    data = killed_run("added")
    shutil.copytree(data / "sea_a", data / "forest")
    added = resume("added")
    one_line_error(added, "the run's classes are not the data's: the data has 'forest' and the run does not")
    assert "--classnames" not in added.output
    data = killed_run("more")
    for image in sorted((data / "sea_a").iterdir()):
        shutil.copy(image, data / "sea_a" / f"new-{image.name}")
    more = resume("more")
    assert more.exit_code == 0, more.output
    assert ("images drawn now from more's data are not the ones it was searched on (images added, removed or renamed, "
            "or labels changed, in its data since; or a folder without train/ and test/ renamed: its split is drawn "
            "by its name): scores already recorded are kept, new ones use these images") \
        in more.output
    assert "not identical" not in more.output
    data = killed_run("asked", kill=False)  # killed once an LLM turn was recorded: its scores cannot be replayed
    history = runs / "asked" / "history.jsonl"
    lines = history.read_text().splitlines(keepends=True)
    asked = next(i for i, line in enumerate(lines) if '"llm_exchange"' in line)
    history.write_text("".join(lines[:asked + 1]))
    (runs / "asked" / "summary.json").unlink()
    for image in sorted((data / "sea_a").iterdir()):
        shutil.copy(image, data / "sea_a" / f"new-{image.name}")
    one_line_error(resume("asked"), "cannot resume asked: the ", "cannot be replayed on others: put its data back")
    # the same files, other pixels: said where the replay breaks (a names turn shows the probabilities)
    data = killed_run("edited", kill=False, search="names")
    history = runs / "edited" / "history.jsonl"
    lines = history.read_text().splitlines(keepends=True)
    history.write_text("".join(lines[:1 + next(i for i, line in enumerate(lines) if '"names_exchange"' in line)]))
    (runs / "edited" / "summary.json").unlink()
    one = (data / "AnnualCrop" / "AnnualCrop_000.png").read_bytes()  # every image that one: one class predicted
    for image in data.glob("*/*.png"):
        image.write_bytes(one)
    edited = resume("edited")
    one_line_error(edited, "cannot resume edited: at event ", "Its evaluator changed since the run started: the data's "
                   "files changed (images edited, replaced or touched). The scores its recorded turns showed")
    assert "warning: the evaluator is not identical to the one this run started with: the data's files changed" \
        in edited.output


def test_an_answer_cached_but_not_yet_recorded_when_stopped_counts_as_the_runs_own(tmp_path, llm, evaluators_built):
    """A search stopped between the cache's write of an answer and its history line (a full
    disk, `--parallel` lanes' answers held for the history's order): its resume read the answer
    from the cache as another run's, one call fewer and its tokens uncounted; another run's
    answers from the cache still cost nothing."""
    runs = tmp_path / "runs"
    assert cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "r").exit_code == 0
    whole = json.loads((runs / "r" / "summary.json").read_text())["ledger"]
    history = runs / "r" / "history.jsonl"
    lines = history.read_text().splitlines(keepends=True)
    last = max(i for i, line in enumerate(lines) if '"llm_exchange"' in line)
    history.write_text("".join(lines[:last]))  # the last answer in the cache only
    (runs / "r" / "summary.json").unlink()
    asked = llm.count
    assert cli("search", "--resume", "r", "--runs-dir", runs).exit_code == 0
    assert llm.count == asked  # from the cache
    resumed = json.loads((runs / "r" / "summary.json").read_text())["ledger"]
    assert {k: resumed[k] for k in ("calls", "cache_hits", "prompt_tokens", "completion_tokens")} == \
        {k: whole[k] for k in ("calls", "cache_hits", "prompt_tokens", "completion_tokens")} and whole["calls"] > 0
    assert cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "other").exit_code == 0
    other = json.loads((runs / "other" / "summary.json").read_text())["ledger"]
    assert (other["calls"], other["prompt_tokens"]) == (0, 0) and other["cache_hits"] == whole["calls"]


def test_a_runs_moved_data_folder_is_given_to_eval_adapt_and_transfer_with_data_root(tmp_path, llm, tiny_clip_config,
                                                                                      tiny_clip_weights):
    """`adapt` took no --data-root: a run whose image folder moved could not be fit at all;
    each command said `data folder X does not exist`, and nothing of how to go on."""
    from conftest import make_image_folder

    data, runs = make_image_folder(tmp_path / "photos", per_class=4), tmp_path / "runs"
    clip = ["--backbone", tiny_clip_config, "--weights", tiny_clip_weights, "--device", "cpu"]
    assert cli("search", "--dataset", "imagefolder", "--data-root", data, *clip, *SMALL, "--runs-dir", runs,
               "--name", "r").exit_code == 0
    moved = tmp_path / "moved" / "photos"
    moved.parent.mkdir()
    data.rename(moved)
    for command in (["eval", "--run", "r"], ["adapt", "r", "--kind", "cache"],
                    ["transfer", "r", "--backbone", tiny_clip_config, "--weights", tiny_clip_weights]):
        gone = cli(*command, "--runs-dir", runs, "--device", "cpu")
        one_line_error(gone, f"r's data folder {data} does not exist: moved, give where it is now: promptclimb "
                             f"{command[0]} ")
        assert "--data-root DIR" in gone.output, gone.output
        there = cli(*command, "--runs-dir", runs, "--device", "cpu", "--data-root", moved)
        assert there.exit_code == 0 and "warning" not in there.output, (command, there.output)
    assert json.loads((runs / "r" / "summary.json").read_text())["adapter"]["kind"] == "cache"


def test_data_that_fails_once_the_run_folder_stays_says_how_to_continue(tmp_path, llm, monkeypatch):
    """Every image of a class chosen for train failed to decode once the pool was scored: the
    error said to replace or remove the files, but not that the run was kept nor how to go on
    (the same command again: `runs/r already holds a run`). Other errors of a run under way
    get no such line (a history that does not replay: resuming it again cannot help)."""
    from promptclimb.agent.core.errors import DataError
    class Undecodable(WordEvaluator):
        def score(self, templates, splits=("train", "val"), classnames=None):
            if (tmp_path / "broken").exists():
                raise DataError("imagefolder/train: no readable image of class(es) 'boot' (every one chosen "
                                "failed to decode: boot/b4.jpg); replace or remove those files")
            return super().score(templates, splits, classnames)

    monkeypatch.setitem(EVALUATOR, "factory", lambda **kwargs: Undecodable(kwargs["dataset"]))
    runs = tmp_path / "runs"
    (tmp_path / "broken").touch()
    failed = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "r")
    one_line_error(failed, "replace or remove those files")
    assert failed.output.splitlines()[-1] == f"The run is saved; continue it with: promptclimb search --resume " \
                                             f"{runs / 'r'}"
    (tmp_path / "broken").unlink()
    resumed = cli("search", "--resume", runs / "r")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((runs / "r" / "summary.json").read_text())["stopped"] == "completed"

    def not_replayed(*args, **kwargs):
        raise PromptclimbError("cannot resume r: its history does not replay; start a new run instead")

    monkeypatch.setattr(Undecodable, "score", not_replayed)
    (runs / "r" / "summary.json").unlink()
    refused = cli("search", "--resume", runs / "r")
    one_line_error(refused, "start a new run instead")
    assert "continue it with" not in refused.output


def test_a_full_disk_ends_a_search_saying_the_file_and_how_to_continue_and_caches_only_warn(tmp_path, llm,
                                                                                            evaluators_built, monkeypatch):
    """A full disk under way: the history's write ended the search with `No space left on
    device` and no file named nor a way on; the LLM cache's write ended it too (the answer was
    in hand, and a resume asked for it again); the feature cache's, in a traceback."""
    import errno

    import torch

    from promptclimb.agent.llm import cache as llm_cache
    from promptclimb.agent.runs import store as run_store
    from promptclimb.evaluators import features

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    runs = tmp_path / "runs"
    # the LLM cache: said once, and the search goes on to its end
    monkeypatch.setattr(llm_cache, "write_json_atomic", full)
    cached = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "c")
    assert cached.exit_code == 0, cached.output
    assert cached.output.count("cannot be written (No space left on device): the answers are in the run's history") \
        == 1 and llm.count == 2
    monkeypatch.undo()
    monkeypatch.setitem(EVALUATOR, "factory", lambda **kwargs: WordEvaluator(kwargs["dataset"]))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
    # the run's history: after its first events, the disk is full (half a line goes through)
    class FullAfter:
        def __init__(self, raw, lines):
            self.raw, self.lines = raw, lines

        def write(self, data):
            self.lines -= 1
            if self.lines < 0:
                self.raw.write(bytes(data[: len(data) // 2]))
                full()
            return self.raw.write(data)

        def fileno(self):
            return self.raw.fileno()

        def close(self):
            self.raw.close()

    real_open = RunStore._open_history

    def open_then_fill(store):
        real_open(store)
        store._history = FullAfter(store._history, 3)
        return store

    monkeypatch.setattr(RunStore, "_open_history", open_then_fill)
    failed = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "h")
    one_line_error(failed, f"{runs / 'h' / 'history.jsonl'}: No space left on device")
    assert failed.output.splitlines()[-1] == f"The run is saved; continue it with: promptclimb search --resume " \
                                             f"{runs / 'h'}"
    assert not run_store.being_written(runs / "h")  # its lock let go: a resume in this process may take it
    monkeypatch.setattr(RunStore, "_open_history", real_open)
    resumed = cli("search", "--resume", runs / "h")  # the half line is dropped, the run goes on
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((runs / "h" / "summary.json").read_text())["stopped"] == "completed"
    # the feature cache: a warning once per folder, and the features kept in memory
    monkeypatch.setattr(features, "write_atomic", full)
    texts = features.TextFeatureCache("b", root=tmp_path / "texts")
    with pytest.warns(UserWarning, match="cannot be written \\(No space left on device\\)") as said:
        texts.add(["a"], torch.ones(1, 2))
        texts.add(["b"], torch.ones(1, 2))
    assert len(said) == 1 and texts.get(["a", "b"]).shape == (2, 2)


def test_a_cut_summary_of_a_run_with_its_history_says_the_resume_that_writes_it_again(tmp_path, llm, evaluators_built):
    """summary.json cut short (a kill or a full disk as it was written): the readers said it
    was damaged and no more, though `search --resume` writes it again from the history."""
    runs = tmp_path / "runs"
    assert cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "r").exit_code == 0
    path = runs / "r" / "summary.json"
    whole = json.loads(path.read_text())
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
    for command in (["show", "r"], ["eval", "--run", "r"]):
        one_line_error(cli(*command, "--runs-dir", runs), "summary.json is damaged (not valid JSON",
                       f"; write it again from the run's history with: promptclimb search --resume {runs / 'r'}")
    assert cli("search", "--resume", runs / "r").exit_code == 0
    again = json.loads(path.read_text())
    assert again["best"] == whole["best"] and again["stopped"] == "completed"


def test_resume_of_a_run_whose_summary_and_history_are_empty_starts_it_again(tmp_path, llm, evaluators_built):
    """With summary.json empty (a crash between creating and writing it) and no history, the
    resume refused the run as one that "has a summary.json but no events", a finished run's
    refusal; such a summary holds no result (show reads the run as unfinished), and the
    resume runs the search from its config.json, as for a run killed before its first event."""
    runs = tmp_path / "runs"
    assert cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "r").exit_code == 0
    (runs / "r" / "summary.json").write_text("")
    (runs / "r" / "history.jsonl").unlink()
    resumed = cli("search", "--resume", "r", "--runs-dir", runs)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((runs / "r" / "summary.json").read_text())["stopped"] == "completed"

@contextmanager
def read_only(folder: Path):
    """`folder` read-only for this process: by its mode, or for root (who writes whatever the
    mode) by a read-only file system mounted over it, skipped where mounting is not allowed."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root, and no read-only mount allowed here ({mounted.stderr.strip()})")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("which", ["runs", "home"])
def test_read_only_folders_are_one_line_before_anything_loads(which, tmp_path, monkeypatch, llm, evaluators_built):
    for name in ("runs", "home"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "home"))
    with read_only(tmp_path / which):
        results = [cli("search", "--dataset", "toy", "--runs-dir", tmp_path / "runs")]
        if which == "home":  # eval writes image features there
            results.append(cli("eval", "--dataset", "fashion-mnist"))
        for result in results:
            line = one_line_error(result, str(tmp_path / which), "not writable")
            assert "Read-only file system" in line or "Permission denied" in line
    assert evaluators_built == [] and not list((tmp_path / "runs").iterdir())


def test_an_unwritable_runs_folder_is_found_before_the_model_loads(tmp_path, llm, evaluators_built):
    (tmp_path / "a-file").write_text("in the way")
    one_line_error(cli("search", "--dataset", "toy", "--runs-dir", tmp_path / "a-file" / "runs"),
                   "(--runs-dir) is not writable")
    assert evaluators_built == []


@pytest.mark.parametrize("content, needle", [
    (b"", "is empty"), (b"\x80\x02garbage, not a checkpoint" * 50, "cannot be read"),
    # no pickle at all: torch's legacy reader said KeyError(174812789), shown as a bare number
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab", "safetensors weights (it begins "
                                                                  "b'version https://git-lfs.github.com/spec/')")])
def test_a_bad_weights_file_is_one_line(content, needle, tiny_clip_config, image_folder, tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(content)
    one_line_error(cli("eval", "--dataset", "imagefolder", "--data-root", image_folder,
                       "--backbone", tiny_clip_config, "--weights", weights), str(weights), needle)


@pytest.mark.parametrize("folders, needle", [
    (("cat", "{x}"), "folder '{x}' (class 2) reads as '{x}': braces"),
    (("sea_lake", "sea-lake"), "folder 'sea_lake' (class 2) reads as 'sea lake', the same as folder 'sea-lake' "
                               "(class 1)"),
    (("_", "cat"), "folder '_' (class 1) reads as an empty name"),
    (("cat", "sea\nlake"), "folder 'sea\\nlake' (class 2) reads as 'sea\\nlake': a line break in a class name")])
def test_class_folders_that_make_no_class_names_are_one_line_before_a_run_folder(folders, needle, tiny_clip_config,
                                                                                 tmp_path):
    from conftest import make_image_folder

    root = make_image_folder(tmp_path / "data", per_class=4, classes=dict.fromkeys(folders, (90, 90, 90)))
    runs = tmp_path / "runs"
    one_line_error(cli("search", "--dataset", "imagefolder", "--data-root", root, "--backbone", tiny_clip_config,
                       "--runs-dir", runs), needle, "the dataset's own class names: ",
                   ": give your own names with --classnames FILE (")
    assert not runs.exists() or not any(runs.iterdir())
    one_line_error(cli("eval", "--dataset", "imagefolder", "--data-root", root, "--backbone", tiny_clip_config), needle)


def test_a_warning_during_the_search_is_one_line(evaluators_built, tmp_path, monkeypatch):
    import warnings

    score = WordEvaluator.score

    def warned(self, *args, **kwargs):
        warnings.warn("toy/test: skipped 1 unreadable image(s): a.png")
        return score(self, *args, **kwargs)

    monkeypatch.setattr(WordEvaluator, "score", warned)
    with FakeLLM(responder=responder) as fake:
        result = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", tmp_path / "runs",
                     env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url})
    assert result.exit_code == 0, result.output
    assert "warning: toy/test: skipped 1 unreadable image(s): a.png" in result.output
    assert "UserWarning" not in result.output and "warnings.warn" not in result.output


def test_a_damaged_adapter_file_is_one_line_naming_it(tmp_path, torch_threads):
    from promptclimb.evaluators.adapters import read_adapter

    adapter = tmp_path / "adapter.pt"
    adapter.write_bytes(b"\x80\x02 not an adapter" * 100)
    with pytest.raises(PromptclimbError) as info:
        read_adapter(adapter)
    assert str(adapter) in str(info.value) and "\n" not in str(info.value) and "weights_only" not in str(info.value)


def test_weights_load_once_into_the_same_model_as_open_clip(tiny_clip_config, tiny_clip_weights, torch_threads):
    """The weights file's tensors become the parameters (no random init, no second copy):
    the model is exactly open_clip's own, buffers (the causal mask) included."""
    import open_clip
    import torch

    from promptclimb.evaluators.backbones import load_backbone

    loaded = load_backbone(tiny_clip_config, weights=tiny_clip_weights, device="cpu").model
    reference = open_clip.create_model(tiny_clip_config, pretrained=str(tiny_clip_weights))
    mine, theirs = loaded.state_dict(keep_vars=True), reference.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(not t.is_meta and torch.equal(t, theirs[k]) for k, t in mine.items())
    assert torch.equal(loaded.attn_mask, reference.attn_mask)  # a buffer outside the file
    tokens = open_clip.get_tokenizer(tiny_clip_config)(["a photo of a cat."])
    assert torch.equal(loaded.eval().encode_text(tokens), reference.eval().encode_text(tokens))


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory map (Linux)")
@pytest.mark.parametrize("zip_format", [True, False])
def test_a_torch_save_weights_file_is_mapped_not_read(zip_format, tiny_clip_config, tiny_clip_weights, tmp_path,
                                                      torch_threads):
    """A torch.save file is mapped, so only the pages a command uses become resident (a search
    reading cached image features never touches the image tower); the legacy format, which
    cannot be mapped, is read as before. Both give open_clip's own model."""
    import open_clip
    import torch

    from promptclimb.evaluators.backbones import load_backbone

    reference = open_clip.create_model(tiny_clip_config, pretrained=str(tiny_clip_weights))
    weights = tmp_path / f"tiny-{zip_format}.pt"
    torch.save(reference.state_dict(), weights, _use_new_zipfile_serialization=zip_format)
    loaded = load_backbone(tiny_clip_config, weights=weights, device="cpu").model
    mapped = str(weights) in Path("/proc/self/maps").read_text()
    assert mapped == zip_format
    theirs = reference.state_dict()
    assert all(torch.equal(t, theirs[k]) for k, t in loaded.state_dict().items())


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory map (Linux)")
def test_a_pretrained_tag_whose_file_is_cached_loads_like_a_weights_file(tiny_clip_config, tiny_clip_weights,
                                                                          tmp_path, monkeypatch, torch_threads):
    """`--pretrained TAG` with the tag's file already on disk takes the `--weights` loader (built
    on the meta device, the file mapped: held once, not twice) and still applies what comes with
    the tag (quick GELU, preprocessing mean/std), as open_clip's create_model does."""
    import open_clip
    import torch

    from promptclimb.evaluators.backbones import load_backbone

    cached = tmp_path / "tag-cache" / "open_clip_model.pt"
    cached.parent.mkdir()
    torch.save(open_clip.create_model(tiny_clip_config, pretrained=str(tiny_clip_weights)).state_dict(), cached)
    tag_cfg = {"file": str(cached), "quick_gelu": True, "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    real_cfg = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda model, tag: tag_cfg if tag == "cached-tag" else real_cfg(model, tag))

    backbone = load_backbone(tiny_clip_config, pretrained="cached-tag", device="cpu")
    assert str(cached) in Path("/proc/self/maps").read_text()  # mapped, not read into a second copy
    reference = open_clip.create_model(tiny_clip_config, pretrained=str(cached), force_quick_gelu=True,
                                       force_preprocess_cfg={"mean": tag_cfg["mean"], "std": tag_cfg["std"]}).eval()
    theirs = reference.state_dict()
    assert all(torch.equal(t, theirs[k]) for k, t in backbone.model.state_dict().items())
    assert backbone.model.visual.preprocess_cfg == reference.visual.preprocess_cfg
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():  # quick GELU changes the activations: equal features say it was applied
        assert torch.allclose(backbone.model.encode_image(images), reference.encode_image(images), atol=1e-6)
    assert backbone.identity.endswith(":cached-tag")


def test_a_device_torch_cannot_use_here_is_one_readable_line(tiny_clip_config, monkeypatch, tmp_path):
    import torch

    from promptclimb.evaluators.backbones import load_backbone

    with pytest.raises(PromptclimbError, match="unknown device 'gpu'; use cpu or cuda"):
        load_backbone(tiny_clip_config, device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for precision in ("fp32", "bf16"):  # no GPU: said before anything about bf16 support
        with pytest.raises(PromptclimbError, match="sees no CUDA GPU on this machine; use --device cpu"):
            load_backbone(tiny_clip_config, device="cuda", precision=precision)
    one_line_error(cli("eval", "--dataset", "fashion-mnist", "--device", "cuda"), "sees no CUDA GPU on this machine")
    runs = tmp_path / "runs"
    for optimizer in ("llm", "craft"):  # said before a run folder is made
        one_line_error(cli("search", "--dataset", "fashion-mnist", "--device", "cuda", "--optimizer", optimizer,
                           "--runs-dir", runs, env={"OPENAI_API_KEY": "sk-test"}), "sees no CUDA GPU on this machine")
        assert not runs.exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(PromptclimbError, match="has 2 CUDA GPU\\(s\\), cuda:0 to cuda:1"):
        load_backbone(tiny_clip_config, device="cuda:2")


# -- 4: run names ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../outside", "/abs/path", "a/b", "..", "."])
def test_a_run_name_is_one_folder_name(name, tmp_path, llm, evaluators_built):
    runs = tmp_path / "deep" / "runs"
    one_line_error(cli("search", "--dataset", "toy", "--name", name, "--runs-dir", runs), "--name", "plain folder name")
    assert evaluators_built == [] and not (tmp_path / "deep" / "outside").exists() and not runs.exists()


@pytest.mark.parametrize("name", ["bad\nname", "a\tb", "x\r", "red\x1b[31m", "a\u2028b"])
def test_a_run_name_with_a_control_character_is_refused_before_anything_is_made(name, tmp_path, llm, evaluators_built):
    """A line break or a tab in --name was taken: the run folder was made and the search ran,
    and then `runs` printed the id over two rows and `show` its heading over two lines."""
    runs = tmp_path / "runs"
    said = one_line_error(cli("search", "--dataset", "toy", "--name", name, "--runs-dir", runs), "--name")
    assert said == f"Error: --name {name!r} has a control character ({next(c for c in name if not c.isprintable())!r}); " \
        "it names a folder that `promptclimb runs` and `show` print on one line", said
    assert evaluators_built == [] and not runs.exists()
    assert cli("search", "--dataset", "toy", "--name", "fine name-1.x", "--runs-dir", runs).exit_code == 0
    assert [p.name for p in runs.iterdir()] == ["fine name-1.x"]


@pytest.mark.parametrize("name", ["evil\u202etxt.exe", "zero\u200bwidth", "\ufeffbom", "soft\u00adhyphen"])
def test_a_run_name_with_an_invisible_formatting_character_is_refused(name, tmp_path, llm, evaluators_built):
    """A right-to-left override (U+202E) or a zero-width space in --name was taken: `runs`
    printed 'evil\u202etxt.exe' as 'evilexe.txt', and a zero-width space out of sight."""
    runs = tmp_path / "runs"
    said = one_line_error(cli("search", "--dataset", "toy", "--name", name, "--runs-dir", runs), "--name")
    hidden = next(c for c in name if not c.isprintable())
    assert said == f"Error: --name {name!r} has an invisible formatting character ({hidden!r}); it names a folder " \
        "that `promptclimb runs` and `show` would print as another name", said
    assert "\u202e" not in said and "\u200b" not in said  # the message shows the character escaped
    assert evaluators_built == [] and not runs.exists()


def test_a_run_name_in_any_script_is_taken(tmp_path, llm, evaluators_built):
    runs = tmp_path / "runs"
    for name in ("café-élan", "日本-run", "e\u0301t\u00e9"):  # a combining accent is no formatting character
        assert cli("search", "--dataset", "toy", "--name", name, "--runs-dir", runs).exit_code == 0
    assert sorted(p.name for p in runs.iterdir()) == sorted(["café-élan", "日本-run", "e\u0301t\u00e9"])


# -- 5: races --------------------------------------------------------------------------------------
def test_a_run_folder_another_search_claims_at_the_same_moment_is_left_to_it(tmp_path, monkeypatch):
    """Two searches started in the same second: the other one creates the folder between
    this one's choice of the name and its mkdir. This one must take the next name."""
    from promptclimb.agent import pipeline

    monkeypatch.setattr(pipeline.time, "strftime", lambda fmt, *a: "20250101-120000")
    theirs = tmp_path / "runs" / "20250101-120000-toy-1shot"
    mkdir = Path.mkdir

    def their_mkdir_lands_first(self, *args, **kwargs):
        if self == theirs and not theirs.exists():
            mkdir(theirs, parents=True)
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", their_mkdir_lands_first)
    with pipeline.new_run_store(tmp_path / "runs", None, "toy", 1, {"t": 1}) as store:
        assert store.run_dir.name == "20250101-120000-toy-1shot-2"
        assert json.loads((store.run_dir / "config.json").read_text())["run_id"] == store.run_dir.name
    assert not any(theirs.iterdir())  # their folder is untouched, for them to fill


def test_adapt_waits_for_no_one_while_a_search_holds_the_run(tmp_path):
    run = finished_run(tmp_path / "runs")
    before = (run / "summary.json").read_text()
    with RunStore.resume(run):  # a `search --resume` of this run, in progress
        one_line_error(cli("adapt", "r", "--kind", "cache", "--runs-dir", tmp_path / "runs"),
                       "being written by this process", f"pid {os.getpid()}: another thread of it")
    assert (run / "summary.json").read_text() == before


# -- 6: silent surprises ---------------------------------------------------------------------------
def test_eval_of_a_users_images_never_uses_the_embedded_fashion_tower(image_folder):
    from promptclimb.agent.core.defaults import default_backbone

    # The one rule, as `search` applies it: ViT-B-32 with OpenAI's weights, here offline.
    assert default_backbone("imagefolder", None, None, None) == ("ViT-B-32", "openai")
    assert default_backbone("fashion-mnist", None, None, None) == ("demo", None)
    one_line_error(cli("eval", "--dataset", "imagefolder", "--data-root", image_folder), "ViT-B-32", "HF_HUB_OFFLINE")


def test_a_moved_run_resumes_under_its_new_name(tmp_path, llm, evaluators_built):
    import shutil

    runs = tmp_path / "runs"
    assert cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "first").exit_code == 0
    summary = json.loads((runs / "first" / "summary.json").read_text())
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(runs / "first", moved)
    (moved / "summary.json").unlink()  # as if killed before the end: the whole history is replayed
    asked = llm.count
    again = cli("search", "--resume", moved, "--json")
    assert again.exit_code == 0, again.output
    assert llm.count == asked  # every answer came from the history
    resumed = json.loads(again.stdout)
    assert resumed["run_id"] == "renamed" and resumed["best"] == summary["best"]


def test_resume_refuses_settings_it_cannot_change_and_says_what_it_applies(tmp_path, llm, evaluators_built):
    runs = tmp_path / "runs"
    assert cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "done").exit_code == 0
    asked = llm.count
    refused = one_line_error(cli("search", "--resume", "done", "--iterations", "10", "--shots", "8",
                                 "--runs-dir", runs), "--iterations 10", "--shots 8", "the run's: 2")
    assert "--resets" not in refused  # given with the run's own value: accepted
    one_line_error(cli("search", "--resume", "done", "--max-calls", "1", "--runs-dir", runs), "already ended")
    again = cli("search", "--resume", "done", "--iterations", "2", "--timeout", "7", "--runs-dir", runs)
    assert again.exit_code == 0, again.output
    assert llm.count == asked  # nothing asked again

    # A run stopped part-way takes a new cap for the rest of the run, and says so.
    llm.faults.extend(["ok"] + ["500"] * 20)  # one answer, then the LLM is down
    broken = cli("search", "--dataset", "toy", "--iterations", "6", "--resets", "1", "--pool-sample", "6",
                 "--max-tries", "1", "--no-cache", "--runs-dir", runs, "--name", "cut")
    assert broken.exit_code == 1 and "--resume" in broken.output
    llm.faults.clear()
    one_line_error(cli("search", "--resume", "cut", "--max-calls", "0", "--runs-dir", runs),
                   "below the 1 LLM answers")
    capped = cli("search", "--resume", "cut", "--max-calls", "3", "--runs-dir", runs, "--json")
    assert capped.exit_code == 0, capped.output
    assert "applying --max-calls 3 to this run (it had no max-calls cap)" in capped.output
    summary = json.loads(capped.stdout)
    assert summary["stopped"].startswith("budget") and summary["counts"]["llm_answers"] == 3
    assert json.loads((runs / "cut" / "config.json").read_text())["search"]["max_calls"] == 3


def test_images_replaced_in_place_are_encoded_anew(tiny_clip_config, tiny_clip_weights, image_folder, torch_threads):
    from PIL import Image

    from promptclimb.evaluators import build_evaluator

    def train_features():
        evaluator = build_evaluator("imagefolder", 2, 0, tiny_clip_config, weights=str(tiny_clip_weights),
                                    data_root=str(image_folder), device="cpu")
        return evaluator.image_features("train")[0], evaluator

    before, evaluator = train_features()
    first = sorted(evaluator.split.splits["train"])[0][0]
    Image.new("RGB", (48, 48), (250, 250, 0)).save(image_folder / first)  # same name, other picture
    after, _ = train_features()
    assert not bool((before == after).all())


def test_a_broken_meta_prompt_is_reported_before_anything_loads(tmp_path, llm, evaluators_built):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "feedback_turn.j2").write_text("Scores: {{ results | no_such_filter }}")
    one_line_error(cli("search", "--dataset", "toy", "--meta-prompt", tmp_path / "meta", "--runs-dir",
                       tmp_path / "runs"), "feedback_turn.j2")
    (tmp_path / "meta" / "feedback_turn.j2").write_text("Scores:\n{% for r in results }{{ r }}{% endfor %}")
    one_line_error(cli("search", "--dataset", "toy", "--meta-prompt", tmp_path / "meta", "--runs-dir",
                       tmp_path / "runs"), "feedback_turn.j2 line 2: ")  # a syntax error says where
    (tmp_path / "meta" / "feedback_turn.j2").write_text("Best so far: {{ best.nope }}")  # renders only with values
    one_line_error(cli("search", "--dataset", "toy", "--meta-prompt", tmp_path / "meta", "--runs-dir",
                       tmp_path / "runs"), "feedback_turn.j2", "nope")
    # written before held-back results existed: every verdict it knows, but not "held"
    (tmp_path / "meta" / "feedback_turn.j2").write_text(
        'Results: {% for r in results %}{{ {"better": "up", "worse": "down", "equal": "level"}[r.verdict] }}'
        '{% endfor %}')
    one_line_error(cli("search", "--dataset", "toy", "--meta-prompt", tmp_path / "meta", "--runs-dir",
                       tmp_path / "runs"), "feedback_turn.j2", "held")
    assert evaluators_built == [] and llm.count == 0 and not list((tmp_path / "runs").glob("*"))


@pytest.mark.parametrize("name, content", [
    # a branch only a refusal that is not a repeat reaches (the check's stand-in had repeats only)
    ("names_turn.j2", "{% set invalid = rejected | rejectattr('repeat') | list %}"
                      "{% if invalid %}Not used ({{ invalid[0].nosuch.deeper }}){% endif %}"),
    ("feedback_turn.j2", "{% if rejected | selectattr('duplicate') | list %}{{ 1 / 0 }}{% endif %}"),  # repeats
    ("system.j2", "{% if task.classnames | length > 40 %}{{ task.nope.deeper }}{% endif %}"),  # many classes
    ("first_turn.j2", "{% if not bottom %}{{ none_such.x }}{% endif %}"),  # --bottom-k 0
])
def test_a_meta_prompt_error_in_a_branch_few_turns_reach_is_reported_before_anything_loads(
        name, content, tmp_path, llm, evaluators_built):
    """An error in a branch the up-front check did not render failed mid-run, and once the file
    was fixed the resume was refused: the meta-prompt had changed since the run started."""
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / name).write_text("Hello. " + content)  # a message in the branches it renders
    one_line_error(cli("search", "--dataset", "toy", "--search", "both", "--meta-prompt", tmp_path / "meta",
                       "--runs-dir", tmp_path / "runs"), f"meta-prompt {tmp_path / 'meta' / name} line 1: ")
    assert evaluators_built == [] and llm.count == 0 and not list((tmp_path / "runs").glob("*"))
    if name == "system.j2":  # a run started before this check, on data that never reaches the branch, resumes
        from promptclimb.agent import pipeline

        checked = pipeline.render_meta_prompts_once
        with pytest.MonkeyPatch.context() as before:
            before.setattr(pipeline, "render_meta_prompts_once", lambda meta, search, **_: checked(
                meta, search, every_branch=False))
            assert cli("search", "--dataset", "toy", *SMALL, "--search", "both", "--meta-prompt", tmp_path / "meta",
                       "--runs-dir", tmp_path / "runs", "--name", "old").exit_code == 0
        (tmp_path / "runs" / "old" / "summary.json").unlink()
        resumed = cli("search", "--resume", "old", "--runs-dir", tmp_path / "runs")
        assert resumed.exit_code == 0, resumed.output


def test_a_meta_prompt_folder_with_a_misspelt_or_an_empty_file_says_so(tmp_path, llm, evaluators_built):
    """`feedback.j2` for feedback_turn.j2 was passed over, and ours used, unsaid; an empty
    first_turn.j2 sent an empty user message."""
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "system.j2").write_text("You write prompt templates.")
    (meta / "feedback.j2").write_text("Scores: {{ results }}")
    done = cli("search", "--dataset", "toy", *SMALL, "--meta-prompt", meta, "--runs-dir", tmp_path / "runs")
    assert done.exit_code == 0, done.output
    assert (f"note: --meta-prompt {meta}: feedback.j2 is none of the meta-prompts (system.j2, first_turn.j2, "
            "feedback_turn.j2, names_system.j2, names_turn.j2, names_judge.j2): read only where another includes "
            "it; ours is used for each of those missing") in done.output
    (meta / "feedback.j2").unlink()
    assert "note: --meta-prompt" not in cli("search", "--dataset", "toy", *SMALL, "--meta-prompt", meta,
                                            "--runs-dir", tmp_path / "runs").output
    (meta / "first_turn.j2").write_text("\n  \n")
    one_line_error(cli("search", "--dataset", "toy", "--meta-prompt", meta, "--runs-dir", tmp_path / "other"),
                   f"--meta-prompt: {meta / 'first_turn.j2'} is empty (remove it to use ours)")
    assert not (tmp_path / "other").exists()


def test_a_resume_whose_meta_prompt_folder_is_gone_says_it_is_the_runs(tmp_path, llm, evaluators_built):
    """The resume said `--meta-prompt: DIR is not a folder`, an option the user had not given."""
    import shutil

    (tmp_path / "meta").mkdir()
    shutil.copy(TESTS.parent / "prompts" / "meta" / "system.j2", tmp_path / "meta" / "system.j2")
    runs = tmp_path / "runs"
    assert cli("search", "--dataset", "toy", *SMALL, "--meta-prompt", tmp_path / "meta", "--runs-dir", runs,
               "--name", "m").exit_code == 0
    history = (runs / "m" / "history.jsonl").read_text().splitlines()
    (runs / "m" / "history.jsonl").write_text("\n".join(history[: len(history) // 2]) + "\n")  # as if killed
    (runs / "m" / "summary.json").unlink()
    shutil.move(tmp_path / "meta", tmp_path / "moved")
    one_line_error(cli("search", "--resume", "m", "--runs-dir", runs),
                   f"--meta-prompt: {tmp_path / 'meta'} is not a folder (the run's --meta-prompt, as it started",
                   "give where it is now with --meta-prompt DIR")
    # moved with its files as they were: the run goes on from there (it was refused as a change of settings)
    shutil.copytree(tmp_path / "moved", tmp_path / "edited")
    (tmp_path / "edited" / "system.j2").write_text("Other words.\n")
    one_line_error(cli("search", "--resume", "m", "--runs-dir", runs, "--meta-prompt", tmp_path / "edited"),
                   f"m's meta-prompt folder {tmp_path / 'meta'} is gone, and this one's files are not those it "
                   "started with (system.j2 differs)")
    resumed = cli("search", "--resume", "m", "--runs-dir", runs, "--meta-prompt", tmp_path / "moved")
    assert resumed.exit_code == 0, resumed.output
    assert f"m's meta-prompt folder {tmp_path / 'meta'} is gone: reading the same files from {tmp_path / 'moved'}" \
           in resumed.output
    assert json.loads((runs / "m" / "config.json").read_text())["meta_prompt_dir"] == str(tmp_path / "moved")


@pytest.mark.parametrize("name, content, needle", [
    ("feedback_turn.j2", b"Best: {{ 1 / 0 }}", "line 1: ZeroDivisionError"),  # the template's own expression fails
    ("first_turn.j2", b"Here:\n{{ n + 'x' }}", "line 2: TypeError"),
    ("first_turn.j2", b"Here:\n\n{{ metric_lable }}", "line 3: 'metric_lable' is undefined"),  # named neither
    ("system.j2", b"\xff\xfe not UTF-8", ": not UTF-8 text (invalid start byte at byte 0): save it as UTF-8"),
])
def test_a_meta_prompt_that_raises_while_rendered_is_one_line(name, content, needle, tmp_path, llm, evaluators_built):
    """Only jinja's own errors were one line: a template whose expression raised, or a file
    that is not UTF-8, ended the search with a traceback; and they named the file as ours
    does, `first_turn.j2`, with no folder nor line."""
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / name).write_bytes(content)
    one_line_error(cli("search", "--dataset", "toy", "--meta-prompt", tmp_path / "meta", "--runs-dir",
                       tmp_path / "runs"), f"meta-prompt {tmp_path / 'meta' / name}{' ' if 'line' in needle else ''}"
                   f"{needle}")
    assert evaluators_built == [] and llm.count == 0 and not list((tmp_path / "runs").glob("*"))


def test_a_meta_prompt_that_renders_nothing_is_refused_before_anything_loads(tmp_path, llm, evaluators_built):
    """A file whose every branch is left out rendered an empty system message, sent as is."""
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "system.j2").write_text("{% if n > 100 %}Many templates, please.{% endif %}\n")
    one_line_error(cli("search", "--dataset", "toy", "--meta-prompt", tmp_path / "meta", "--runs-dir",
                       tmp_path / "runs"), f"meta-prompt {tmp_path / 'meta' / 'system.j2'}: rendered an empty message")
    assert evaluators_built == [] and llm.count == 0


def test_a_meta_prompt_saved_with_a_byte_order_mark_sends_no_bom():
    """A Windows editor's BOM (U+FEFF) was the first character of the message the LLM got."""
    import tempfile
    from promptclimb.agent.metaprompt import MetaPrompt

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "system.j2").write_text("Give me {{ n }} templates.", encoding="utf-8-sig")
        meta = MetaPrompt(folder)
        assert meta.render("system.j2", n=3) == "Give me 3 templates."
        # an editor that drops the BOM changes nothing sent: the file is not said to have changed
        recorded = meta.fingerprint(("system.j2",))
        (Path(folder) / "system.j2").write_text("Give me {{ n }} templates.", encoding="utf-8")
        assert meta.changed_since(recorded) == []


@pytest.mark.parametrize("metric", ["accuracy", "prob", "blend"])
@pytest.mark.parametrize("select", ["train", "train+val"])
def test_our_meta_prompts_pass_the_check_they_are_rendered_with(metric, select):
    from promptclimb.agent.pipeline import render_meta_prompts_once
    from promptclimb.agent.metaprompt import MetaPrompt
    from promptclimb.agent.search import SearchConfig

    render_meta_prompts_once(MetaPrompt(), SearchConfig(metric=metric, select=select))


def test_sigterm_with_a_remote_llm_prints_how_to_resume(tmp_path):
    with FakeLLM(responder=responder, signal_at=2) as fake:
        env = {**os.environ, "PROMPTCLIMB_HOME": str(tmp_path / "home"), "OPENAI_API_KEY": KEY,
               "OPENAI_BASE_URL": fake.base_url}
        returncode, output = signal_child_at_request(
            fake, [sys.executable, str(TESTS / "fake_cli.py"), "search", "--dataset", "toy", *SMALL,
                   "--runs-dir", str(tmp_path / "runs"), "--name", "t"], env, signal.SIGTERM, wait_s=300)
    assert returncode == 143, output
    assert f"interrupted; continue with: promptclimb search --resume {tmp_path / 'runs' / 't'}" in output


# -- 9: a kill before the run folder existed ----------------------------------------------------------
def test_a_search_stopped_while_the_model_loads_resumes_by_name(tmp_path, llm, monkeypatch):
    def interrupted_load(**kwargs):
        raise KeyboardInterrupt  # Ctrl-C (or a kill) while the model loads

    monkeypatch.setitem(EVALUATOR, "factory", interrupted_load)
    runs = tmp_path / "runs"
    stopped = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "early")
    assert f"continue with: promptclimb search --resume {runs / 'early'}" in stopped.output
    config = json.loads((runs / "early" / "config.json").read_text())
    assert config["run_id"] == "early" and "evaluator" not in config

    monkeypatch.setitem(EVALUATOR, "factory", lambda **kwargs: WordEvaluator(kwargs["dataset"]))
    resumed = cli("search", "--resume", "early", "--runs-dir", runs, "--json")
    assert resumed.exit_code == 0, resumed.output
    fresh = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "whole", "--json")
    assert comparable(json.loads(resumed.stdout)) == comparable(json.loads(fresh.stdout))
    assert json.loads((runs / "early" / "config.json").read_text())["evaluator"] == WordEvaluator("toy").info()


def test_bad_input_the_evaluator_finds_names_no_run_folder(tmp_path, llm, monkeypatch):
    """A --classnames file with a wrong count is found once the dataset is read, after the
    folder was made: the folder goes, and no line has named it as the run's."""
    def refused(**kwargs):
        raise PromptclimbError("--classnames names.txt: line 2 is the last, but 8 of the dataset's 10 classes "
                               "have no name")

    monkeypatch.setitem(EVALUATOR, "factory", refused)
    runs = tmp_path / "runs"
    result = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs)
    one_line_error(result, "line 2 is the last")
    assert "run folder" not in result.output and not runs.exists()  # nor the --runs-dir it created
    monkeypatch.setitem(EVALUATOR, "factory", lambda **kwargs: WordEvaluator(kwargs["dataset"]))
    result = cli("search", "--dataset", "toy", *SMALL, "--runs-dir", runs, "--name", "kept")
    assert result.exit_code == 0 and result.output.count(f"run folder: {runs / 'kept'}\n") == 1, result.output


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temp_files_of_a_killed_write_are_removed_when_the_run_is_reopened(tmp_path):
    run = finished_run(tmp_path / "runs")
    dead = dead_pid()
    leftovers = [run / f".summary.json.{dead}.k1lled.tmp", run / f".prompts.csv.{dead}.x.tmp"]
    in_progress = run / f".report.html.{os.getpid()}.z.tmp"  # `promptclimb report`, writing right now
    for path in [*leftovers, in_progress]:
        path.write_text("half")
    with RunStore.resume(run):
        pass
    assert not any(p.exists() for p in leftovers) and in_progress.exists()


def test_the_llm_cache_drops_what_a_killed_writer_left(tmp_path):
    from promptclimb.agent.llm.cache import ResponseCache

    leftover = tmp_path / "llm" / "0f" / f".0f12.json.{dead_pid()}.abc.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_text('{"half')
    ResponseCache(tmp_path / "llm")
    assert not leftover.exists()


def test_a_last_line_without_its_newline_is_dropped_even_when_it_parses(tmp_path):
    from promptclimb.agent.runs.reading import read_history

    run = tmp_path / "r"
    with RunStore.create(run, {}) as store:
        for i in range(3):
            store.append("score", template=f"t{i} {{}}", origin="pool")
    history = run / "history.jsonl"
    history.write_bytes(history.read_bytes()[:-1])  # killed just before the newline
    assert len(read_history(history, repair=True)) == 2
    with RunStore.resume(run) as store:
        for i in range(3):
            store.append("score", template=f"t{i} {{}}", origin="pool")
    assert [json.loads(line)["seq"] for line in history.read_text().splitlines()] == [0, 1, 2]


def test_user_errors_turn_a_file_error_into_one_line():
    import click

    from promptclimb.agent.cli.errors import user_errors

    @click.command()
    @user_errors
    def command():
        raise PermissionError(13, "Permission denied", "/some/where/summary.json")

    @click.command()
    @user_errors
    def other():
        raise PromptclimbError("what to do")

    assert one_line_error(CliRunner().invoke(command, [])) == "Error: /some/where/summary.json: Permission denied"
    assert one_line_error(CliRunner().invoke(other, [])) == "Error: what to do"


# -- a refused search leaves no folder it created ---------------------------------------------------------------
@pytest.mark.parametrize("refusal, said", [
    (["--dataset", "nope"], "unknown dataset"),  # found once --runs-dir was checked
    (["--dataset", "fashion-mnist", "--classnames", "cleen"], "neither a name set"),  # found by the evaluator
    (["--dataset", "fashion-mnist", "--meta-prompt", "EMPTY"], "holds none of system.j2"),
])
def test_a_refused_search_leaves_no_runs_dir_it_created_and_keeps_one_that_existed(tmp_path, refusal, said):
    """`check_writable` made --runs-dir (and the folders above it) before the options were
    all checked: a refused search left them behind, empty. The real CLIP evaluator (demo)."""
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in refusal]
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}  # never asked
    refused = cli("search", *args, "--runs-dir", tmp_path / "new" / "runs", env=env)
    one_line_error(refused, said)
    assert not (tmp_path / "new").exists()
    (tmp_path / "existing").mkdir()
    one_line_error(cli("search", *args, "--runs-dir", tmp_path / "existing", env=env), said)
    assert (tmp_path / "existing").is_dir() and not list((tmp_path / "existing").iterdir())


def test_a_refused_search_from_python_leaves_no_runs_folder(tmp_path, monkeypatch):
    import promptclimb

    monkeypatch.chdir(tmp_path)
    with pytest.raises(PromptclimbError, match="unknown dataset"):
        promptclimb.search(dataset="nope", echo=None)
    assert not (tmp_path / "runs").exists()


def test_an_api_model_without_a_key_is_refused_before_a_run_folder_or_the_evaluator(tmp_path, evaluators_built):
    """It was refused once the evaluator had loaded, leaving config.json and an empty history."""
    env = {"OPENAI_API_KEY": None, "OPENAI_BASE_URL": None}
    refused = cli("search", "--dataset", "toy", "--llm", "gpt-4o-mini", "--runs-dir", tmp_path / "runs",
                  "--name", "nokey", env=env)
    one_line_error(refused, "--llm gpt-4o-mini needs OPENAI_API_KEY")
    assert not (tmp_path / "runs").exists() and evaluators_built == []


def test_a_search_leaves_no_connection_to_its_llm_open(tmp_path, monkeypatch, evaluators_built):
    from promptclimb.agent import pipeline

    closed = []

    class Recording(pipeline.LLMClient):
        def close(self):
            closed.append(self.model)
            super().close()

    monkeypatch.setattr(pipeline, "LLMClient", Recording)
    with FakeLLM(responder=lambda body: "a photo of a {}.") as fake:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
        done = cli("search", "--dataset", "toy", "--iterations", "1", "--resets", "1", "--runs-dir", tmp_path / "runs",
                   env=env)
        assert done.exit_code == 0, done.output
    assert closed == ["gpt-4o-mini"]


def test_a_reader_that_stops_reading_ends_a_command_quietly_with_141():
    """`promptclimb sweep-report s | head -1` ended with `Error: Broken pipe` and status 1 (a
    report printed in several pieces; show's one piece fits the pipe). Every command is
    wrapped alike (agent/cli/errors.py `user_errors`)."""
    import click

    from promptclimb.agent.cli.errors import user_errors

    @click.command()
    @user_errors
    def report():
        click.echo("first line")
        raise BrokenPipeError(32, "Broken pipe")  # what the next echo raises once `head` is gone

    result = CliRunner().invoke(report, [])
    assert (result.exit_code, result.output) == (141, "first line\n")


def test_ctrl_c_while_a_command_loads_ends_with_130_not_aborted(monkeypatch):
    """Ctrl-C in the first fraction of a second, while the sub-command's module is imported:
    click said `Aborted!` and ended with 1; inside the command it ends with 130, unsaid."""
    import importlib

    from promptclimb.agent import cli as cli_package

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", interrupted)
    result = CliRunner().invoke(cli_package.cli, ["show", "x"])
    assert result.exit_code == 130 and "Aborted" not in result.output


def test_a_run_stopped_before_the_adapter_it_asked_for_is_unfinished_not_done(tmp_path):
    """summary.json is written before the adapter is fit: a search with --adapter stopped in
    between was listed `done`, with no adapter, though its resume fits it."""
    from promptclimb import load_run

    run = finished_run(tmp_path / "runs")
    assert load_run(run).status == "done"
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "adapter_kinds": ["cache"]}))
    assert load_run(run).status == "unfinished"
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "adapter": {"kind": "cache", "result": "prompt"}}))
    assert load_run(run).status == "done"


def test_a_budget_stopped_run_without_the_adapter_it_asked_for_reads_unfinished_everywhere(tmp_path):
    """`show` and the report said `stopped early (budget ...)` of such a run, where `runs` said
    unfinished: its resume still fits the adapter."""
    from promptclimb import load_run
    from promptclimb.agent.cli import cli
    from promptclimb.agent.runs.report import facts

    runs = tmp_path / "runs"
    run = finished_run(runs)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "stopped": "budget: --max-calls 2 reached"}))
    said = "stopped early (budget: --max-calls 2 reached)"
    assert load_run(run).status_said == said and dict(facts(load_run(run)))["status"] == said
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "adapter_kinds": ["cache"]}))
    assert dict(facts(load_run(run)))["status"] == "unfinished"
    shown = CliRunner().invoke(cli, ["show", run.name, "--runs-dir", str(runs)])
    assert shown.exit_code == 0, shown.output
    assert "; unfinished" in shown.output and "stopped early" not in shown.output


def test_compare_says_a_run_whose_result_is_prompt_plus_adapter(tmp_path):
    """compare's table holds the prompts' accuracies: a run that keeps an adapter was read as
    scoring those, unsaid (its result is prompt + adapter)."""
    runs = tmp_path / "runs"
    finished_run(runs, "a")
    b = finished_run(runs, "b")
    summary = json.loads((b / "summary.json").read_text())
    summary["adapter"] = {"kind": "cache", "result": "adapter", "accuracy": {"train": 1.0, "val": 0.75, "test": 0.9}}
    (b / "summary.json").write_text(json.dumps(summary))
    note = "keeps a cache adapter (test 90.0%): the accuracies above are its prompts' alone."
    table = cli("compare", "a", "b", "--runs-dir", runs)
    assert table.exit_code == 0, table.output
    assert f"note: B (b) {note}" in table.output and "A (a) keeps" not in table.output
    records = cli("compare", "a", "b", "--runs-dir", runs, "--format", "json")
    assert f"note: B (b) {note}" in records.stderr and note not in records.stdout
    summary["adapter"]["result"] = "prompt-only"
    (b / "summary.json").write_text(json.dumps(summary))
    assert "keeps a" not in cli("compare", "a", "b", "--runs-dir", runs).output


def test_a_meta_prompt_error_in_an_included_file_names_that_file(tmp_path, llm, evaluators_built):
    """The line of an {% include %}d file was said with the including file's name."""
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "system.j2").write_text("Hello\n{% include 'part.j2' %}\n")
    (tmp_path / "meta" / "part.j2").write_text("one\ntwo\n{{ nosuch }}\n")
    one_line_error(cli("search", "--dataset", "toy", "--meta-prompt", tmp_path / "meta", "--runs-dir",
                       tmp_path / "runs"), f"meta-prompt {tmp_path / 'meta' / 'part.j2'} line 3: 'nosuch' is undefined")
