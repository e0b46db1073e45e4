"""The names climb through the commands and the API: the options, config.json and resume,
`show`, `report`, `eval --run`, `search()`; with the in-memory WordEvaluator (no torch) and
the fake LLM of tests/test_names.py."""

from __future__ import annotations

import io
import json
import re

import pandas as pd
import pytest
from click.testing import CliRunner
from fake_llm import FakeLLM, WordEvaluator, one_line_error
from test_names import BONUS, CLASSES, KEY, scripted

import promptclimb
from promptclimb.agent.cli import cli
from promptclimb.agent.core.classnames import read_classnames
from promptclimb.agent.runs.reading import read_history

ANSWER = "Trouser: jeans; pants; slacks"
SMALL = ["--iterations", "2", "--resets", "1", "--pool-sample", "4", "--proposals", "3"]


class Factory:
    """Builds the WordEvaluator for whatever --classnames says; remembers what it was asked."""

    def __init__(self):
        self.asked: list[dict] = []
        self.published = CLASSES  # the labels the data comes with, as this promptclimb reads them
        self.labels_recorded = False  # whether config.json records them beside names of its own, as CLIP's does

    def __call__(self, **settings):
        self.asked.append(settings)
        spec = settings.get("classnames")
        if isinstance(spec, dict):  # a run's names, by the labels it started from
            names = tuple(spec[label] for label in CLASSES)
        else:
            names = tuple(spec) if isinstance(spec, (list, tuple)) else read_classnames(spec, self.published, {"plain": (
                "top", "trousers", "dress", "bag")})
        return WordEvaluator(settings["dataset"], classnames=names, name_bonus=BONUS, class_bias={1: -0.25},
                             labels=self.published if self.labels_recorded else ())


@pytest.fixture
def run(tmp_path):
    """`promptclimb ARGS...` against the scripted LLM, with the Factory's evaluators."""
    factory = Factory()
    fake = FakeLLM(responder=scripted([ANSWER]))
    fake.__enter__()

    def invoke(*args):
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
        return CliRunner().invoke(cli, [str(a) for a in args], env=env, obj={"evaluator_factory": factory})

    invoke.factory, invoke.runs, invoke.fake = factory, tmp_path / "runs", fake
    yield invoke
    fake.__exit__(None, None, None)


def test_a_run_not_ended_labels_its_winners_by_the_names_it_holds_and_its_report_renders(run):
    """With no result yet, every rename read as "earlier" and the start names as "found"; a
    run with nothing scored had its report fail on the names column (a traceback)."""
    assert run("search", "--dataset", "toy", "--name", "n", *SMALL, "--runs-dir", run.runs).exit_code == 0
    folder = run.runs / "n"
    (folder / "summary.json").unlink()
    lines = (folder / "history.jsonl").read_text().splitlines()
    (folder / "history.jsonl").write_text("".join(f"{line}\n" for line in lines if '"final"' not in line))
    read = promptclimb.load_run(folder)
    assert read.final is None
    said, names = read.winners_said(), read.winners()["names"]
    assert set(said["names"]) == {"found", "start"}
    assert list(said["names"]) == ["found" if n == "Trouser -> jeans" else "start" for n in names]
    assert read.names().empty and "found" in read.names().columns  # no table yet: a KeyError before
    # templates of one's own on its split go with the names it holds (they had the start names)
    run.factory.labels_recorded = True  # as CLIP's evaluator: the names line can say which differ
    scored = run("eval", "--run", "n", "--runs-dir", run.runs, "--prompt", "a photo of a {}.")
    assert scored.exit_code == 0 and "Trouser -> jeans" in scored.output, scored.output
    assert {"train_prob", "val_prob"} <= set(read.scores().columns)  # as the Run docstring says
    assert run("report", "n", "--runs-dir", run.runs).exit_code == 0
    best = re.search(r'<div class="best">Best template: .*?<br>\s*(.*?)\s*</div>', (folder / "report.html").read_text())
    assert re.fullmatch(r"train <b>[\d.]+%</b> · val <b>[\d.]+%</b>", best[1]), best[1]  # no test yet: no "· "
    empty = run.runs / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((folder / "config.json").read_text())
    report = run("report", "empty", "--runs-dir", run.runs)
    assert report.exit_code == 0, report.output


def test_search_renames_a_class_and_every_reader_carries_the_names(run):
    result = run("search", "--dataset", "toy", "--name", "n", *SMALL, "--runs-dir", run.runs, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["best"]["names"][1] == "jeans" and summary["names"]["found"][1] == "jeans"
    assert summary["names"]["start"] == list(CLASSES)
    # the closing block: what changed, from "a photo of a {}." with the start names
    assert "  class names (1 of 4 changed): Trouser -> jeans" in result.stderr
    start = WordEvaluator("toy", classnames=CLASSES, name_bonus=BONUS, class_bias={1: -0.25}).score(
        ["a photo of a {}."], splits=("test",))[0].accuracy["test"]
    used = summary["ensemble"] if summary["winner"] == "ensemble" else summary["best"]  # what to use
    assert f"test accuracy: {100 * start:.1f}% ('a photo of a {{}}.' with the start names) -> " \
           f"{100 * used['accuracy']['test']:.1f}%" in result.stderr
    config = json.loads((run.runs / "n" / "config.json").read_text())
    assert config["search"]["search"] == "both" and config["evaluator_args"]["classnames"] is None

    # the reader ranks the (template, names) pair the names turn kept, as the search did
    read = promptclimb.load_run(run.runs / "n")
    top = read.ranked().iloc[0]
    assert (top["template"], list(top["names"])) == (summary["best"]["template"], summary["best"]["names"])
    assert "names" in set(read.scores()["origin"])  # the pair the names turn kept
    assert read.iterations()[-1]["best_so_far"] == pytest.approx(summary["best"]["accuracy"]["train"])

    shown = run("show", "n", "--runs-dir", run.runs).output
    assert "Class names (1 of 4 changed" in shown and "jeans" in shown and "Names turns" in shown
    # the pair the names turn kept (the search tags it "names") is listed by where its template came
    # from: `show` had said "names", as if a names turn had written the template
    kept = next(t for t in json.loads((run.runs / "n" / "summary.json").read_text())["top"] if t["origin"] == "names")
    assert read.winners().set_index("template").loc[kept["template"], "origin"] == "pool + names"
    assert re.search(rf"^2 +{re.escape(kept['template'])} +pool \+ names +", shown, flags=re.M), shown
    # which names each winner was scored with: the result's, or the start names a pool template kept
    said = read.winners_said().set_index("rank")["names"]
    assert said[1] == "found" and said["ens"] == "found" and "start" in set(said), said
    assert re.search(rf"^1 +{re.escape(summary['best']['template'])} +.* found$", shown, flags=re.M), shown
    summary_path = run.runs / "n" / "summary.json"
    long_name = "a very long folder name " * 8  # 192 characters: the terminal's table is not that wide
    kept = summary_path.read_text()
    edited = json.loads(kept)
    edited["names"]["classes"][2]["start"] = edited["names"]["classes"][2]["found"] = long_name
    summary_path.write_text(json.dumps(edited))
    cut = run("show", "n", "--runs-dir", run.runs).output
    assert long_name not in cut and f"{long_name[:39]}…" in cut
    assert long_name in run("show", "n", "--runs-dir", run.runs, "--format", "markdown").output
    summary_path.write_text(kept)
    kinds = [e["event"] for e in read.answers()]  # every kind of LLM answer counted, by kind
    assert f"{len(kinds)} LLM answers ({kinds.count('llm_exchange')} template, {kinds.count('names_exchange')} " \
           f"names, {kinds.count('names_judge')} guard);" in shown and kinds.count("names_judge") > 0
    # the names turns' proposals are counted beside the templates' (only template lines were, as "proposals")
    scored = summary["names"]["counts"]["scored"]
    assert scored == sum(len(e["changes"]) == 1 for e in read.of("name_score")) > 0
    assert f"template lines refused; {scored} names scored, {len(read.of('name_reject'))} refused\n" in shown
    assert "asked about Trouser" in shown
    as_json = json.loads(run("show", "n", "--runs-dir", run.runs, "--format", "json").output)
    assert [(r["start"], r["found"]) for r in as_json["names"] if r["changed"]] == [("Trouser", "jeans")]
    # a template scored with the found names is told from the same one with the start names
    rows = pd.read_csv(run.runs / "n" / "prompts.csv", keep_default_na=False)
    assert set(rows["names"]) == {"", "Trouser -> jeans"}
    assert rows.duplicated(["template", "names"]).sum() == 0
    # the pair the names turn kept is a row of its own (only score events were: a winner could be missing)
    pair = next(t for t in json.loads(kept)["top"] if t["origin"] == "names")
    row = rows[(rows["template"] == pair["template"]) & (rows["names"] == "Trouser -> jeans")]
    assert list(row["origin"]) == ["names"] and row["train_accuracy"].item() == pair["accuracy"]["train"]
    as_csv = pd.read_csv(io.StringIO(run("show", "n", "--runs-dir", run.runs, "--format", "csv").output),
                         keep_default_na=False)
    assert set(as_csv.loc[as_csv["origin"] == "names", "names"]) == {"Trouser -> jeans"}
    assert "" in set(as_csv.loc[as_csv["origin"] == "pool", "names"])

    # the raw exchanges hold every answer: names turns and guard questions too
    talk = run("show", "n", "--runs-dir", run.runs, "--conversation")
    assert talk.exit_code == 0, talk.output
    for event in ("names_exchange", "names_judge"):
        asked = next(e for e in read.answers() if e["event"] == event)
        assert asked["messages"][-1]["content"].splitlines()[-1] in talk.output
    frame = read.conversation_frame()
    assert (frame["role"] == "assistant").sum() == len(kinds) and set(frame["kind"]) == {"template", "names", "guard"}

    report = run("report", "n", "--runs-dir", run.runs)
    assert report.exit_code == 0, report.output
    html = (run.runs / "n" / "report.html").read_text()
    assert "<h2>Class names</h2>" in html and "<b>jeans</b>" in html
    assert html.count("Confusion on test") == 2  # with the start names, and with the found ones
    assert html.count(" [names]: what was sent") == kinds.count("names_exchange")
    assert f"<dt>names scored</dt><dd>{scored}</dd>" in html

    evaluated = run("eval", "--run", "n", "--runs-dir", run.runs, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    by_label = run.factory.asked[-1]["classnames"]  # the found names, by the labels the run started from
    assert list(by_label) == list(CLASSES) and list(by_label.values()) == summary["best"]["names"]
    assert json.loads(evaluated.stdout)["results"][0]["accuracy"]["test"] == pytest.approx(
        summary["best"]["accuracy"]["test"])
    # the table says which names filled the template: the run's, or those given
    run.factory.labels_recorded = True  # the data's labels beside the run's names, as CLIP's evaluator says them
    table = run("eval", "--run", "n", "--runs-dir", run.runs).stdout
    assert "class names: the run's names (1 of 4 not the data's labels: Trouser -> jeans)" in table
    table = run("eval", "--run", "n", "--runs-dir", run.runs, "--classnames", "published").stdout
    assert "class names: --classnames published (the data's labels)" in table


def test_a_resume_may_not_change_what_the_search_rewrites_or_its_start_names(run, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("tee\npants\ngown\nbag\n")
    first = run("search", "--dataset", "toy", "--name", "r", *SMALL, "--runs-dir", run.runs, "--classnames", names)
    assert first.exit_code == 0, first.output
    assert run.factory.asked[0]["classnames"] == str(names.resolve())
    for option, value, recorded in (("--search", "template", "both"), ("--classnames", "plain", names.resolve())):
        refused = run("search", "--resume", "r", "--runs-dir", run.runs, option, value)
        assert refused.exit_code == 1 and f"{option} {value} (the run's: {recorded})" in refused.output


def test_a_killed_run_resumes_with_the_start_names_it_read_whatever_became_of_its_names_file(run, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("tee\npants\ngown\nbag\n")
    first = run("search", "--dataset", "toy", "--name", "k", *SMALL, "--runs-dir", run.runs, "--classnames", names,
                "--json")
    assert first.exit_code == 0, first.output
    run_dir = run.runs / "k"
    history = (run_dir / "history.jsonl").read_text().splitlines()
    for change in (lambda: names.write_text("top\ntrousers\ndress\npurse\n"), names.unlink):
        (run_dir / "summary.json").unlink(missing_ok=True)  # as if killed halfway
        (run_dir / "history.jsonl").write_text("\n".join(history[: len(history) // 2]) + "\n")
        change()
        again = run("search", "--resume", "k", "--runs-dir", run.runs, "--json")
        assert again.exit_code == 0, again.output
        assert tuple(run.factory.asked[-1]["classnames"]) == ("tee", "pants", "gown", "bag")
        assert json.loads(again.stdout)["best"] == json.loads(first.stdout)["best"]


def test_a_names_file_given_again_on_resume_is_compared_by_the_names_it_holds(run, tmp_path):
    """--classnames FILE with --resume: a copy of the file elsewhere is the same start (it
    resumes), the file edited since is another (refused, naming the class that changed)."""
    names, copy = tmp_path / "names.txt", tmp_path / "elsewhere" / "copy.txt"
    names.write_text("tee\npants\ngown\nbag\n")
    copy.parent.mkdir()
    copy.write_text(names.read_text())
    run.factory.labels_recorded = True
    first = run("search", "--dataset", "toy", "--name", "f", *SMALL, "--runs-dir", run.runs, "--classnames", names,
                "--json")
    assert first.exit_code == 0, first.output
    run_dir = run.runs / "f"
    history = (run_dir / "history.jsonl").read_text().splitlines()
    (run_dir / "summary.json").unlink()  # as if killed halfway
    (run_dir / "history.jsonl").write_text("\n".join(history[: len(history) // 2]) + "\n")
    again = run("search", "--resume", "f", "--runs-dir", run.runs, "--classnames", copy, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["best"] == json.loads(first.stdout)["best"]
    (run_dir / "summary.json").unlink()
    names.write_text("tee\njeans\ngown\nbag\n")
    refused = run("search", "--resume", "f", "--runs-dir", run.runs, "--classnames", names)
    one_line_error(refused, f"--classnames {names} (it now names class 2 'jeans' where the run started from 'pants')")


def test_a_killed_run_resumes_with_the_published_names_it_started_from_if_they_now_read_otherwise(run):
    first = run("search", "--dataset", "toy", "--name", "p", *SMALL, "--runs-dir", run.runs, "--json")
    assert first.exit_code == 0, first.output
    run_dir = run.runs / "p"
    history = (run_dir / "history.jsonl").read_text().splitlines()
    (run_dir / "summary.json").unlink()  # as if killed halfway
    (run_dir / "history.jsonl").write_text("\n".join(history[: len(history) // 2]) + "\n")
    run.factory.published = ("tee", "pants", "gown", "purse")  # as a newer promptclimb might read the labels
    again = run("search", "--resume", "p", "--runs-dir", run.runs, "--json")
    assert again.exit_code == 0, again.output
    assert tuple(run.factory.asked[-1]["classnames"]) == CLASSES
    assert json.loads(again.stdout)["best"] == json.loads(first.stdout)["best"]


def test_a_run_recorded_before_confirm_existed_resumes_as_it_ran(tmp_path):
    """A config.json without search.confirm ran unconfirmed: --resume replays it so, where
    the default (val) would refuse purse for its val images and no longer match the history."""
    with FakeLLM(responder=scripted(["Bag: purse\nTrouser: jeans"])) as fake:
        def invoke(*args):
            env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
            return CliRunner().invoke(cli, [str(a) for a in args], env=env, obj={"evaluator_factory": Factory()})

        runs = tmp_path / "runs"
        first = invoke("search", "--dataset", "toy", "--name", "old", *SMALL, "--runs-dir", runs, "--confirm", "off",
                       "--guard", "judge")
        assert first.exit_code == 0, first.output
        config_file, history = runs / "old" / "config.json", runs / "old" / "history.jsonl"
        config = json.loads(config_file.read_text())
        del config["search"]["confirm"]
        config_file.write_text(json.dumps(config))
        events = history.read_text().splitlines()
        assert any(e["event"] == "names_change" and "purse" in e["names"] for e in read_history(history))
        history.write_text("\n".join(events[:-1]) + "\n")  # killed before its final event
        resumed = invoke("search", "--resume", "old", "--runs-dir", runs, "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["best"]["names"][3] == "purse"


@pytest.mark.parametrize("text, line", [("tee\npants\n", "2 of the dataset's 4 classes have no name"),
                                        ("tee\n\ngown\nbag\n", "line 2"),
                                        ("tee\npants\ntee\nbag\n", "line 3"),
                                        ("tee\np{a}nts\ngown\nbag\n", "line 2")])
def test_a_bad_classnames_file_is_one_line_and_leaves_no_run(run, tmp_path, text, line):
    names = tmp_path / "names.txt"
    names.write_text(text)
    result = run("search", "--dataset", "toy", "--name", "bad", *SMALL, "--runs-dir", run.runs, "--classnames", names)
    assert result.exit_code == 1, result.output
    errors = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and line in errors[0] and str(names) in errors[0]
    assert not (run.runs / "bad").exists()


def test_the_api_returns_the_found_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with FakeLLM(responder=scripted([ANSWER])) as fake, promptclimb.agent.api.using_evaluator(Factory()):
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        result = promptclimb.search(dataset="toy", iterations=2, resets=1, pool_sample=4, proposals=3)
        template = promptclimb.search(dataset="toy", iterations=2, resets=1, pool_sample=4, proposals=3,
                                      search="template")
    assert result.classnames[1] == "jeans" and result.summary["names"]["changed"] == 1
    assert template.classnames == list(CLASSES) and "names" not in template.summary  # no names climbed


def test_a_template_search_from_a_names_file_keeps_those_names_after_the_file_changes(run, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("tee\npants\ngown\nbag\n")
    first = run("search", "--dataset", "toy", "--name", "t", *SMALL, "--runs-dir", run.runs, "--classnames", names,
                "--search", "template", "--json")
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["best"]["names"] == ["tee", "pants", "gown", "bag"]
    names.write_text("top\ntrousers\ndress\npurse\n")  # edited after the run: the run's names stand
    evaluated = run("eval", "--run", "t", "--runs-dir", run.runs, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert tuple(run.factory.asked[-1]["classnames"]) == ("tee", "pants", "gown", "bag")
    assert json.loads(evaluated.stdout)["results"][0]["accuracy"]["test"] == pytest.approx(
        summary["best"]["accuracy"]["test"])
    run.factory.labels_recorded = True
    assert "class names: the run's names (4 of 4 not the data's labels: T-shirt/top -> tee, Trouser -> pants, " \
           "Dress -> gown ...)" in run("eval", "--run", "t", "--runs-dir", run.runs).stdout
    names.unlink()
    assert promptclimb.load_run(run.runs / "t").summary["best"]["names"][0] == "tee"
    assert run("eval", "--run", "t", "--runs-dir", run.runs, "--json").exit_code == 0  # the file is not needed


def test_with_many_classes_show_and_report_list_what_changed_and_summary_json_stays_small(tmp_path):
    from test_names import MANY

    def factory(**settings):
        return WordEvaluator(settings["dataset"], classnames=MANY, name_bonus=BONUS, class_bias={1: -0.25})

    with FakeLLM(responder=scripted([ANSWER])) as fake:
        def invoke(*args):
            env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
            return CliRunner().invoke(cli, [str(a) for a in args], env=env, obj={"evaluator_factory": factory})

        runs = tmp_path / "runs"
        result = invoke("search", "--dataset", "toy", "--name", "m", *SMALL, "--runs-dir", runs)
        assert result.exit_code == 0, result.output
        shown = invoke("show", "m", "--runs-dir", runs).output
        assert invoke("report", "m", "--runs-dir", runs).exit_code == 0
    summary = json.loads((runs / "m" / "summary.json").read_text())
    assert summary["names"]["found"][1] == "jeans"
    # past 20 classes each confusion matrix is its non-zero cells, not 30 x 30 numbers (mostly 0)
    after = summary["names"]["confusion"]["after"]["test"]
    assert after["shape"] == [30, 30] and 30 <= len(after["cells"]) < 200
    assert len((runs / "m" / "summary.json").read_text().splitlines()) < 2000
    # read back whole, the same matrices as the history's own
    run = promptclimb.load_run(runs / "m")
    final = run.of("final")[-1]["names"]["confusion"]
    for split in ("train", "val", "test"):
        matrices = run.confusion(split)
        for when in ("before", "after"):
            assert matrices[when].shape == (30, 30) and matrices[when].values.tolist() == final[when][split]
    table = shown[shown.index("Class names (1 of 30 changed"):shown.index("Names turns")]
    assert "all 30 in summary.json" in table and "jeans" in table and "Item 7" not in table
    html = (runs / "m" / "report.html").read_text()
    assert "Confusion on test" not in html and "Confusions on test: the most changed" in html
    # Trouser's images, read as Dress under its start name, stay its own as jeans: the first cell
    first = re.search(r"<tr><td>(.*?)</td><td>(.*?)</td><td class=\"num\">(\d+)</td><td class=\"num\">(\d+)</td>",
                      html[html.index("Confusions on test"):]).groups()
    assert first[:2] == ("Trouser", "Dress") and int(first[2]) > int(first[3])
    assert "<td>Item 7</td>" in html  # the names table still lists every class


def test_largest_confusions_lists_the_cells_the_names_changed_first_then_the_largest():
    from promptclimb.agent.runs.report import largest_confusions

    before = [[5, 9, 0], [1, 8, 1], [0, 4, 6]]
    after = [[5, 9, 0], [3, 8, 0], [0, 1, 6]]
    cells = largest_confusions({"before": before, "after": after}, ["a", "b", "c"], k=4)
    assert [(c["true"], c["predicted"], c["before"], c["after"]) for c in cells] == [
        ("c", "b", 4, 1), ("b", "a", 1, 3), ("b", "c", 1, 0), ("a", "b", 9, 9)]


def test_a_relative_data_root_and_weights_are_recorded_absolute_for_use_from_any_folder(run, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "w.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    first = run("search", "--dataset", "toy", "--name", "rel", *SMALL, "--runs-dir", run.runs, "--search", "template",
                "--data-root", "data", "--weights", "w.pt")
    assert first.exit_code == 0, first.output
    recorded = json.loads((run.runs / "rel" / "config.json").read_text())["evaluator_args"]
    assert (recorded["data_root"], recorded["weights"]) == (str(tmp_path.resolve() / "data"),
                                                            str(tmp_path.resolve() / "w.pt"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    evaluated = run("eval", "--run", "rel", "--runs-dir", run.runs, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert run.factory.asked[-1]["data_root"] == str(tmp_path.resolve() / "data")


def test_a_transfer_to_the_same_evaluator_gives_back_every_source_figure(run):
    """Each template goes to the target with the names the run scored it with: a names
    search scores templates under the start names and under found ones, and a transfer that
    gave every template the found names measured the renaming along with the backbone."""
    result = run("search", "--dataset", "toy", "--name", "t", *SMALL, "--runs-dir", run.runs)
    assert result.exit_code == 0, result.output
    ranked = promptclimb.load_run(run.runs / "t").ranked()
    assert ranked["names"].isna().any() and ranked["names"].notna().any()  # scored under both
    with promptclimb.agent.api.using_evaluator(run.factory):
        table = promptclimb.transfer(run.runs / "t", backbone="same")
    ours = table[table["source_rank"].notna()]
    assert list(ours["target_train"]) == pytest.approx(list(ours["source_train"]))
    assert table.attrs["rank_correlation"]["selection"] == pytest.approx(1.0)


def test_a_transfers_baseline_is_a_photo_of_a_with_the_start_names_whatever_names_the_run_scored_it_with(
        run, tmp_path):
    """The run's template turn wrote `a photo of a {}.` after Trouser was renamed: the summary's
    baseline had been that row, with `jeans`, where `search` and the README mean the start names."""
    pool = tmp_path / "pool.txt"
    pool.write_text("a {}.\nthe {}.\na drawing of a {}.\n")
    run.fake.responder = scripted([ANSWER], templates="a photo of a {}.")
    result = run("search", "--dataset", "toy", "--name", "b", *SMALL, "--pool", pool, "--runs-dir", run.runs)
    assert result.exit_code == 0, result.output
    ranked = promptclimb.load_run(run.runs / "b").ranked()
    scored_with = [names for t, names in zip(ranked["template"], ranked["names"]) if t == "a photo of a {}."]
    assert scored_with and scored_with[0][1] == "jeans"  # the run scored it under its found names only
    with promptclimb.agent.api.using_evaluator(run.factory):
        table = promptclimb.transfer(run.runs / "b", backbone="same")
    start = run.factory(dataset="toy", classnames=None).score(["a photo of a {}."], splits=("train", "val", "test"))[0]
    renamed = table[table["template"] == "a photo of a {}."].iloc[0]
    assert renamed["target_test"] != pytest.approx(start.accuracy["test"])  # the two tell apart here
    baseline = table.attrs["transfer"]["baseline"]
    assert baseline["names"] == "start" and baseline["target"] == pytest.approx(dict(start.accuracy))
    # which names each template went with, in the frame and the csv a reader opens without the run
    assert renamed["names"] == "Trouser -> jeans"
    assert set(table.loc[table["template"] != "a photo of a {}.", "names"]) <= {"", "Trouser -> jeans"}
    saved = pd.read_csv(table.attrs["path"], keep_default_na=False)
    assert saved.loc[saved["template"] == "a photo of a {}.", "names"].tolist() == ["Trouser -> jeans"]


def test_a_names_turn_cut_by_max_calls_at_the_guard_is_shown_and_ends_the_run_for_good(run):
    cut = ("cut by the budget (max calls (1) reached): the drift guard could not finish its questions about "
           "Trouser -> jeans")
    result = run("search", "--dataset", "toy", "--name", "b", *SMALL, "--runs-dir", run.runs, "--max-calls", "1",
                 "--json")
    assert result.exit_code == 0, result.output
    console = result.stderr
    assert "names: 3 tried, 1 refused, none kept" in console
    assert console.index(cut) < console.index("stopping early: max calls (1) reached")
    summary = json.loads(result.stdout)
    assert summary["stopped"] == "budget: max calls (1) reached" and summary["names"]["counts"]["kept"] == 0
    shown = run("show", "b", "--runs-dir", run.runs).output
    assert "; kept nothing\n" in shown and f"    {cut} (" in shown and "the search stopped here" in shown

    # killed after the turn recorded its cut but before the stop: a larger cap would ask the
    # guard where the history says it could not, so it is refused; the same cap finishes the run
    run_dir = run.runs / "b"
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if '"guard not asked"' in line)
    (run_dir / "history.jsonl").write_text("\n".join(lines[: last + 1]) + "\n")
    (run_dir / "summary.json").unlink()
    refused = run("search", "--resume", "b", "--runs-dir", run.runs, "--max-calls", "3")
    assert refused.exit_code == 1 and "has already ended (a names turn cut by the budget in its history)" in \
        refused.output
    again = run("search", "--resume", "b", "--runs-dir", run.runs, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["best"] == summary["best"] and cut in again.stderr
    resumed = (run_dir / "history.jsonl").read_text().splitlines()
    assert resumed[: last + 1] == lines[: last + 1]
    assert [json.loads(line)["event"] for line in resumed] == [json.loads(line)["event"] for line in lines]
