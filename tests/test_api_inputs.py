"""Bad input to the Python API, as a notebook passes it: each is one PromptclimbError with a
readable message naming what was wrong, raised before anything is created or loaded."""

from __future__ import annotations

import json
import re

import pytest

import promptclimb
from test_api import SMALL, built, notebook  # noqa: F401 (fixtures)
from fake_llm import WordEvaluator
from test_search import comparable


@pytest.mark.parametrize("echo", [5, "print", [1]])
def test_search_refuses_an_echo_that_is_not_a_function(notebook, built, tmp_path, echo):
    with pytest.raises(promptclimb.PromptclimbError, match=r"search\(\): echo .*expected a function"):
        promptclimb.search(dataset="toy", name="x", echo=echo, **SMALL)
    assert notebook.count == 0 and not built and not (tmp_path / "runs").exists()


def test_search_takes_any_callable_echo_or_none(notebook, built):
    lines = []
    promptclimb.search(dataset="toy", name="a", echo=lines.append, **SMALL)
    assert any("iteration 2/2" in line for line in lines)
    assert promptclimb.search(dataset="toy", name="b", echo=None, **SMALL).run_dir.name == "b"


def test_load_run_bad_input_is_one_readable_error(notebook, built, tmp_path):
    run_dir = promptclimb.search(dataset="toy", name="nb", echo=None, **SMALL).run_dir
    for bad in (5, None, "", 1.5, ["nb"]):
        with pytest.raises(promptclimb.PromptclimbError, match=r"^load_run\(\): .*expected a run folder's path or a run id$"):
            promptclimb.load_run(bad)
    with pytest.raises(promptclimb.PromptclimbError, match=r"^load_run\(\): --runs-dir 5: expected a path$"):
        promptclimb.load_run("nb", runs_dir=5)
    with pytest.raises(promptclimb.PromptclimbError, match=r"^no run folder .*elsewhere$"):
        promptclimb.load_run(tmp_path / "elsewhere")
    with pytest.raises(promptclimb.PromptclimbError, match=r"^no run folder .*notes.txt \(it is a file\)$"):
        (tmp_path / "notes.txt").write_text("x")
        promptclimb.load_run(str(tmp_path / "notes.txt"))
    for folder in (tmp_path / "empty", tmp_path / "runs"):  # an empty folder, the runs folder itself
        folder.mkdir(exist_ok=True)
        with pytest.raises(promptclimb.PromptclimbError, match=r"is not a run folder \(it has no config.json\)$"):
            promptclimb.load_run(folder)
    # what works: a path (str or Path, relative or absolute), an id, a unique start of one
    for good in (run_dir, str(run_dir), tmp_path / run_dir, "nb", "n"):
        assert promptclimb.load_run(good).id == "nb"
    assert promptclimb.load_run("nb", runs_dir=tmp_path / "runs").id == "nb"
    with pytest.raises(promptclimb.PromptclimbError, match="no run 'zz' under runs"):
        promptclimb.load_run("zz")
    with pytest.raises(promptclimb.PromptclimbError, match=r"^transfer\(\): .*|^no run folder"):
        promptclimb.transfer(tmp_path / "elsewhere", backbone="other")


def test_resuming_under_a_runs_dir_that_is_a_file_says_it_is_a_file(notebook, built, tmp_path):
    """search(resume=..., runs_dir=FILE) said 'FILE holds no runs (use --runs-dir to look
    elsewhere)', as if a folder were empty; `--runs-dir FILE` on the command line says it is
    a file, and so do the API and load_run now, naming the file in the way."""
    (tmp_path / "notes.txt").write_text("x")
    said = r"^no run 'x': {} \(--runs-dir\): {}$"
    with pytest.raises(promptclimb.PromptclimbError, match=said.format("notes.txt", "it is a file, not a folder")):
        promptclimb.search(resume="x", runs_dir="notes.txt", echo=None)
    with pytest.raises(promptclimb.PromptclimbError, match=said.format("notes.txt", "it is a file, not a folder")):
        promptclimb.load_run("x", runs_dir="notes.txt")
    with pytest.raises(promptclimb.PromptclimbError, match=said.format("notes.txt/runs", "notes.txt is a file, not a folder")):
        promptclimb.search(resume="x", runs_dir="notes.txt/runs", echo=None)
    assert notebook.count == 0 and not built and (tmp_path / "notes.txt").read_text() == "x"


def search_and_evaluate_refuse(said: str, **value) -> None:
    """search() and evaluate() given `value` each raise exactly `said`, after their own name."""
    with pytest.raises(promptclimb.PromptclimbError, match=rf"^search\(\): {re.escape(said)}$"):
        promptclimb.search(dataset="toy", name="x", echo=None, **{**SMALL, **value})
    with pytest.raises(promptclimb.PromptclimbError, match=rf"^evaluate\(\): {re.escape(said)}$"):
        promptclimb.evaluate("a {}.", **value)

@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_backbone_is_refused_alike_on_every_path(notebook, built, tmp_path, blank):
    """backbone='' (the API, --backbone '', a --config file's backbone = "") ran the default
    backbone, unsaid, as if none were given; each refuses it now in the same one line."""
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    said = f"--backbone {blank!r}: expected a backbone name"
    search_and_evaluate_refuse(said, backbone=blank)
    config = tmp_path / "bb.toml"
    config.write_text(f'[search]\ndataset = "toy"\nbackbone = "{blank}"\n')
    for command, option in ((["search", "--dataset", "toy", "--backbone", blank], "--backbone"),
                            (["eval", "--backbone", blank], "--backbone"),
                            (["search", "--config", str(config)], "--config")):
        result = CliRunner().invoke(cli, command)
        where = f"--config {config}: " if option == "--config" else ""
        assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == \
            f"Error: Invalid value for '{option}': {where}{said}", result.output
    assert notebook.count == 0 and not built and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("run", ["no-such-run", "nb"])
def test_transfer_refuses_an_empty_backbone_before_it_looks_up_the_run(notebook, built, tmp_path, run):
    """`promptclimb transfer RUN --backbone ''` looked the run up first: a run not there was
    said instead ('no run ...'), and a run there got 'transfer(): --backbone ...', the API's
    prefix. The command line refuses it first now, as `search --backbone ''` does, and
    `transfer()` in the same words."""
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    if run == "nb":
        promptclimb.search(dataset="toy", name="nb", echo=None, **SMALL)
    evaluators = len(built)
    said = "--backbone '': expected a backbone name"
    with pytest.raises(promptclimb.PromptclimbError, match=rf"^transfer\(\): {re.escape(said)}$"):
        promptclimb.transfer(run, "", echo=None)
    result = CliRunner().invoke(cli, ["transfer", run, "--backbone", ""])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == \
        f"Error: Invalid value for '--backbone': {said}", result.output
    assert len(built) == evaluators and not list(tmp_path.glob("runs/*/transfer-*"))


@pytest.mark.parametrize("keyword, expects", [
    ("pretrained", "a pretrained tag (e.g. openai)"), ("weights", "a weights file"),
    ("llm", "an LLM model name (e.g. local)"),
    ("base_url", "an http:// or https:// URL (e.g. http://localhost:8080/v1)")])
def test_an_empty_model_llm_or_endpoint_is_refused_alike_on_every_path(notebook, built, tmp_path, keyword, expects):
    """--pretrained '' ran the default tag (or random weights), --llm '' the default LLM and
    --base-url '' $OPENAI_BASE_URL, unsaid, as if none were given; --weights '' became the
    current folder, refused only once the model loaded ('ships its own weights', 'does not
    exist'). Each is refused in one line, on every path, before anything is made."""
    flag = f"--{keyword.replace('_', '-')}"
    said = f"{flag} '': expected {expects}"
    commands = []
    if keyword in ("pretrained", "weights"):  # the backbone's: eval and transfer take them too
        with pytest.raises(promptclimb.PromptclimbError, match=rf"^evaluate\(\): {re.escape(said)}$"):
            promptclimb.evaluate("a {}.", **{keyword: ""})
        with pytest.raises(promptclimb.PromptclimbError, match=rf"^transfer\(\): {re.escape(said)}$"):
            promptclimb.transfer("no-such-run", "demo", echo=None, **{keyword: ""})
        commands += [["eval", flag, ""], ["transfer", "no-such-run", "--backbone", "demo", flag, ""]]
    refused_empty_on_every_path(keyword, said, tmp_path, commands)
    assert notebook.count == 0 and not built and not (tmp_path / "runs").exists()


def refused_empty_on_every_path(keyword: str, said: str, tmp_path, commands: list[list[str]]) -> None:
    """`keyword` given '' is refused saying `said`: by search(), by `search` on the command line
    and from a --config file, and by each of `commands` (argv lists giving the option '')."""
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    flag = f"--{keyword.replace('_', '-')}"
    with pytest.raises(promptclimb.PromptclimbError, match=rf"^search\(\): {re.escape(said)}$"):
        promptclimb.search(dataset="toy", name="x", echo=None, **{**SMALL, keyword: ""})
    config = tmp_path / "empty.toml"
    config.write_text(f'[search]\ndataset = "toy"\n{keyword.replace("_", "-")} = ""\n')
    for command in [["search", "--dataset", "toy", flag, ""], ["search", "--config", str(config)], *commands]:
        result = CliRunner().invoke(cli, command)
        option, where = ("--config", f"--config {config}: ") if "--config" in command else (flag, "")
        assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == \
            f"Error: Invalid value for '{option}': {where}{said}", (command, result.output)


@pytest.mark.parametrize("keyword, expects", [
    ("runs_dir", "expected the folder of run folders (e.g. runs)"), ("data_root", "expected the dataset's folder"),
    ("meta_prompt", "expected a folder of meta-prompt templates (*.j2)"),
    ("image_column", "expected an image column name"), ("label_column", "expected a label column name"),
    ("prompt_init", "expected the words the context starts from (e.g. a photo of a)"),
    ("device", "not a device promptclimb runs on; use cpu or cuda (cuda:N for one of several GPUs)")])
def test_an_empty_folder_column_device_or_init_is_refused_alike_on_every_path(notebook, built, tmp_path, keyword,
                                                                              expects):
    """--runs-dir '', --data-root '' and --meta-prompt '' were the current folder, --image-column
    '', --label-column '' and --device '' the default, unsaid, and --prompt-init '' was refused
    only by craft and cbbt: each is refused in one line, from search(), the command line and a
    --config file, before anything is made, as --backbone '' is."""
    flag = f"--{keyword.replace('_', '-')}"
    commands = {"runs_dir": [[command, flag, ""] for command in ("runs", "eval", "sweep-report", "show")],
                "data_root": [["eval", flag, ""], ["transfer", "RUN", "--backbone", "demo", flag, ""]],
                "image_column": [["eval", flag, ""]], "label_column": [["eval", flag, ""]]}.get(keyword, [])
    refused_empty_on_every_path(keyword, f"{flag} '': {expects}", tmp_path, commands)
    assert notebook.count == 0 and not built and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("blank", ["", "  "])
def test_every_api_function_taking_runs_dir_refuses_an_empty_one_in_search_s_words(notebook, built, tmp_path, blank,
                                                                                    monkeypatch):
    """search(runs_dir='') was refused, load_run(..., runs_dir='') read the current folder:
    `load_run('nb', runs_dir='')` said "no run 'nb': . holds no runs", and found a run there."""
    run_dir = promptclimb.search(dataset="toy", name="nb", echo=None, **SMALL).run_dir.resolve()
    monkeypatch.chdir(run_dir.parent)  # the current folder holds the run: '' would find it
    said = f"--runs-dir {blank!r}: expected the folder of run folders (e.g. runs)"
    for where, call in (("search", lambda: promptclimb.search(dataset="toy", name="x", runs_dir=blank, **SMALL)),
                        ("load_run", lambda: promptclimb.load_run("nb", runs_dir=blank)),
                        ("load_run", lambda: promptclimb.load_run(run_dir, runs_dir=blank)),
                        ("transfer", lambda: promptclimb.transfer("nb", "demo", runs_dir=blank))):
        with pytest.raises(promptclimb.PromptclimbError, match=rf"^{where}\(\): {re.escape(said)}$"):
            call()
    assert promptclimb.load_run("nb", runs_dir=run_dir.parent).path.resolve() == run_dir


def test_llm_serve_refuses_an_empty_model_file_as_search_does():
    """`promptclimb llm serve --llm-model ''` took '' through click.Path, unchecked (search
    refused it since 74837e6): both say it in the same words."""
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    for command in (["llm", "serve"], ["search", "--dataset", "toy"]):
        result = CliRunner().invoke(cli, [*command, "--llm-model", ""])
        assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == \
            "Error: Invalid value for '--llm-model': --llm-model '': expected a GGUF file", (command, result.output)


def test_a_run_that_recorded_an_empty_pretrained_tag_is_still_read(notebook, built):
    """A run started before --pretrained '' was refused recorded it as given (it meant none):
    it is read, shown and re-scored as before, not called damaged."""
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    run_dir = promptclimb.search(dataset="toy", name="old", echo=None, **SMALL).run_dir
    config = json.loads((run_dir / "config.json").read_text())
    config["evaluator_args"]["pretrained"] = ""
    (run_dir / "config.json").write_text(json.dumps(config))
    assert promptclimb.load_run("old").args["pretrained"] == ""
    shown = CliRunner().invoke(cli, ["show", "old"])
    assert shown.exit_code == 0 and "damaged" not in shown.output, shown.output


@pytest.mark.parametrize("names, said", [
    ([], r"--classnames \[\]: expected a list of names \(one per class, in class order\), a set name or a file"),
    (["tee", "jeans", "Tee"], r"--classnames: class 3 'Tee' repeats class 1"),
    (["tee", "", "bag"], r"--classnames: class 2 '': empty name"),
    (["tee", "a {} jean", "bag"], r"--classnames: class 2 'a \{\} jean': braces \{ \} are not allowed"),
    ([1, 2, 3], r"--classnames: the item at position 0 is 1 \(int\): expected a list of names"),
    (5, r"--classnames 5: expected a list of names"),
])
def test_search_refuses_bad_class_names_before_anything_is_made(notebook, built, tmp_path, names, said):
    """A list of names is checked as evaluate() checks it, in one line, before the run folder,
    the evaluator or the LLM."""
    with pytest.raises(promptclimb.PromptclimbError, match=rf"^search\(\): {said}") as caught:
        promptclimb.search(dataset="toy", name="x", classnames=names, echo=None, **SMALL)
    assert "\n" not in str(caught.value)
    assert notebook.count == 0 and not built and not (tmp_path / "runs").exists()
    with pytest.raises(promptclimb.PromptclimbError, match=rf"^evaluate\(\): {said}"):
        promptclimb.evaluate("a photo of a {}.", dataset="toy", classnames=names)


def test_search_takes_a_list_of_class_names_records_it_and_resumes_it(notebook, tmp_path, tiny_clip_config,
                                                                      tiny_clip_weights, image_folder, torch_threads):
    """The real CLIP evaluator: a list of start names is counted against the data's classes, recorded in
    config.json, and a search stopped midway resumes from it (a different list is refused)."""
    names = ["lake", "field", "square"]  # the folders read "blue lake", "green field", "red square"
    data = dict(dataset="imagefolder", data_root=str(image_folder), shots=2, backbone=tiny_clip_config,
                weights=str(tiny_clip_weights), device="cpu")
    # the classes listed, as a names file's refusal does (it said `classnames: 2 names for 3 classes`)
    with pytest.raises(promptclimb.PromptclimbError, match=r"^--classnames: 2 names for 3 classes \(blue lake, green "
                                                           r"field, red square\): one per class, in class order$"):
        promptclimb.search(**data, name="short", classnames=names[:2], echo=None, **SMALL)
    assert not (tmp_path / "runs" / "short").exists()

    def stop_after_the_first_turn(line: str):  # Ctrl-C once the first LLM turn is recorded
        if "iteration 1/2" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        promptclimb.search(**data, name="nb", classnames=names, echo=stop_after_the_first_turn, **SMALL)
    config = json.loads((tmp_path / "runs" / "nb" / "config.json").read_text())
    assert config["evaluator_args"]["classnames"] == names == config["evaluator"]["dataset"]["classnames"]
    assert len(promptclimb.load_run("nb").of("llm_exchange")) == 1 and promptclimb.load_run("nb").final is None

    with pytest.raises(promptclimb.PromptclimbError, match=r"--classnames \('lake', 'field', 'pond'\) \(the run's: "):
        promptclimb.search(resume="nb", classnames=["lake", "field", "pond"], echo=None)
    resumed = promptclimb.search(resume="nb", classnames=names, echo=None)
    whole = promptclimb.search(**data, name="whole", classnames=tuple(names), echo=None, **SMALL)
    assert comparable(resumed.summary) == comparable(whole.summary) and resumed.classnames == names
    assert promptclimb.search(resume="nb", echo=None).best == resumed.best  # the recorded names, not given again
    same = promptclimb.evaluate(resumed.best, **data, classnames=names)
    assert same.loc[0, "test"] == pytest.approx(resumed.accuracy["test"])


def test_a_seed_torch_cannot_take_is_refused_before_anything_runs(notebook, built, tmp_path):
    """A seed of 2**64 or more (a typo of 20 digits): torch seeds its generators with at most 64
    bits, and `search --optimizer craft`, `adapt` (the run's seed by default) and `search
    --adapter` had ended in a traceback (`Overflow when unpacking long long`) after loading.
    The API and a --config file say the range as the command line does (they had said `must be
    at most 18446744073709551615`, 20 digits to count)."""
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    too_big = 2 ** 64
    range_said = f"--seed {too_big}: not in the range 0<=x<2**64"
    search_and_evaluate_refuse(range_said, seed=too_big)
    config = tmp_path / "seed.toml"
    config.write_text(f"[search]\nseed = {too_big}\n")
    said = CliRunner().invoke(cli, ["search", "--config", str(config)])
    assert said.exit_code == 2 and said.output.strip().splitlines()[-1] == \
        f"Error: Invalid value for '--config': --config {config}: {range_said}", said.output
    assert notebook.count == 0 and not built and not (tmp_path / "runs").exists()
    assert promptclimb.search(dataset="toy", name="y", seed=too_big - 1, echo=None, **SMALL).run_dir.name == "y"
    for command in (["adapt", "RUN", "--kind", "cache"], ["eval"], ["search", "--dataset", "toy"]):
        for seed in (too_big, -1):  # one range in one wording, below it or above (-1 had said `x>=0`)
            said = CliRunner().invoke(cli, [*command, "--seed", str(seed)])
            assert said.exit_code == 2 and said.output.strip().splitlines()[-1] == \
                f"Error: Invalid value for '--seed': {seed} is not in the range 0<=x<2**64.", said.output


@pytest.mark.parametrize("keyword, value, said", [("shots", 0, "0 is not in the range x>=1"),
                                                   ("timeout", 0, "0.0 is not in the range x>=1"),
                                                   ("seed", -1, "-1 is not in the range 0<=x<2**64"),
                                                   ("spare", -1, "-1 is not in the range x>=0"),
                                                   # above a maximum: it said "presence_penalty must be between
                                                   # -2 and 2", not the option as written, and the help no range
                                                   ("presence_penalty", 50, "50.0 is not in the range -2<=x<=2"),
                                                   ("temperature", 3, "3.0 is not in the range 0<=x<=2")])
def test_a_value_below_its_minimum_is_said_alike_on_every_path(notebook, built, tmp_path, keyword, value, said):
    """search(shots=0) and a --config file's shots = 0 said 'must be at least 1' where the
    command line says '0 is not in the range x>=1.': each says the range in click's words now."""
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    flag = f"--{keyword.replace('_', '-')}"
    shown, range_said = said.split(" is ")
    api_said = f"{flag} {shown}: {range_said}"
    with pytest.raises(promptclimb.PromptclimbError, match=rf"^search\(\): {re.escape(api_said)}$"):
        promptclimb.search(dataset="toy", name="x", echo=None, **{**SMALL, keyword: value})
    config = tmp_path / "low.toml"
    config.write_text(f"[search]\ndataset = \"toy\"\n{keyword} = {value}\n")
    for command, where in ((["search", "--dataset", "toy", flag, str(value)], ""),
                           (["search", "--config", str(config)], f"--config {config}: {api_said}")):
        result = CliRunner().invoke(cli, command)
        option = "--config" if where else flag
        assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == \
            f"Error: Invalid value for '{option}': {where or said + '.'}", result.output
    assert notebook.count == 0 and not built and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("dataset", ["nope", "fashion_mnist", "a/b", "hf:/data", "hf:owner/", "hf:/name"])
def test_evaluate_refuses_an_unknown_dataset_before_the_clip_evaluator_is_built(monkeypatch, dataset):
    """evaluate() and `promptclimb eval` imported torch and built the evaluator (seconds) before
    `unknown dataset`, which did not say that hf:OWNER/NAME is one; search() said it at once."""
    from click.testing import CliRunner

    from promptclimb.agent import pipeline
    from promptclimb.agent.cli import cli

    built = []
    monkeypatch.setattr(pipeline, "default_evaluator_factory", lambda **kwargs: built.append(kwargs))
    said = rf"--dataset '{dataset}': unknown dataset; known: .*fashion-mnist.* \(and hf:OWNER/NAME\[:CONFIG\]\)$"
    with pytest.raises(promptclimb.PromptclimbError, match=said):
        promptclimb.evaluate("a photo of a {}.", dataset=dataset, echo=None)
    result = CliRunner().invoke(cli, ["eval", "--dataset", dataset])
    assert result.exit_code == 1 and "unknown dataset" in result.output and "Traceback" not in result.output
    assert built == []


@pytest.mark.parametrize("runs_dir, said", [
    ("notes.txt", "notes.txt (--runs-dir) is not writable (it is a file, not a folder)"),
    ("notes.txt/runs", "notes.txt/runs (--runs-dir) is not writable (notes.txt is a file, not a folder)"),
])
def test_a_runs_dir_that_is_a_file_says_so(notebook, built, tmp_path, runs_dir, said):
    """It said '(File exists)' or '(Not a directory)', the OS's words for a file in the way."""
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(promptclimb.PromptclimbError, match=f"^{re.escape(said)}$"):
        promptclimb.search(dataset="toy", runs_dir=runs_dir, echo=None, **SMALL)
    assert notebook.count == 0 and not built and (tmp_path / "notes.txt").read_text() == "x"


@pytest.mark.parametrize("runs_dir", ["notes.txt", "notes.txt/runs"])
def test_a_runs_dir_that_is_a_file_is_refused_before_anything_is_said(notebook, built, tmp_path, monkeypatch,
                                                                      runs_dir):
    """Without an endpoint, a new search under a --runs-dir that a file is in the way of said
    'No OPENAI_API_KEY or OPENAI_BASE_URL set: using the embedded local LLM' and only then
    refused the folder: the refusal is the one thing said now."""
    from click.testing import CliRunner

    from promptclimb.agent.cli import cli

    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    (tmp_path / "notes.txt").write_text("x")
    why = "it is a file" if runs_dir == "notes.txt" else "notes.txt is a file"
    said = f"{runs_dir} (--runs-dir) is not writable ({why}, not a folder)"
    lines = []
    with pytest.raises(promptclimb.PromptclimbError, match=f"^{re.escape(said)}$"):
        promptclimb.search(dataset="toy", runs_dir=runs_dir, echo=lines.append, **SMALL)
    assert lines == []
    if runs_dir != "notes.txt":  # click refuses a file given as --runs-dir itself, in its own words
        result = CliRunner().invoke(cli, ["search", "--dataset", "toy", "--runs-dir", runs_dir])
        assert result.exit_code == 1 and result.output.strip().splitlines() == [f"Error: {said}"], result.output
    assert notebook.count == 0 and not built and (tmp_path / "notes.txt").read_text() == "x"


@pytest.mark.parametrize("dataset", ["nope", "fashion_mnist"])
def test_an_unknown_dataset_is_refused_before_anything_is_said(tmp_path, monkeypatch, dataset):
    """`promptclimb search --dataset nope` without an endpoint said 'No OPENAI_API_KEY or
    OPENAI_BASE_URL set: using the embedded local LLM (--llm local).' and only then refused the
    dataset: the refusal is the one thing said now, from the command line and from search()."""
    from click.testing import CliRunner

    from promptclimb.agent import pipeline
    from promptclimb.agent.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    built = []
    monkeypatch.setattr(pipeline, "default_evaluator_factory", lambda **kwargs: built.append(kwargs))
    said = rf"--dataset '{dataset}': unknown dataset; known: .*fashion-mnist.* \(and hf:OWNER/NAME\[:CONFIG\]\)"
    lines = []
    with pytest.raises(promptclimb.PromptclimbError, match=f"^{said}$"):
        promptclimb.search(dataset=dataset, echo=lines.append)
    assert lines == []
    result = CliRunner().invoke(cli, ["search", "--dataset", dataset])
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1 and re.fullmatch(f"Error: {said}", result.output.strip()), \
        result.output
    assert built == [] and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("timeout", [0, 0.5])
def test_a_timeout_below_a_second_is_refused_before_anything_is_made(notebook, built, tmp_path, timeout):
    """timeout=0 abandoned every LLM request at once: six tries, then a failed run, after 45 s."""
    with pytest.raises(promptclimb.PromptclimbError, match=rf"^search\(\): --timeout {float(timeout)}: not in the range x>=1$"):
        promptclimb.search(dataset="toy", name="x", timeout=timeout, echo=None, **SMALL)
    assert notebook.count == 0 and not built and not (tmp_path / "runs").exists()
    assert promptclimb.search(dataset="toy", name="y", timeout=1, echo=None, **SMALL).run_dir.name == "y"


@pytest.mark.parametrize("url", ["localhost:8080/v1", "127.0.0.1:8080/v1", "ftp://example.com/v1", "http:/x",
                                 "me:sk-TOPSECRET-0123456789@example.com/v1",
                                 "ftp://example.com/v1?api_key=sk-TOPSECRET-0123456789"])
def test_an_endpoint_that_is_not_an_http_url_is_refused_before_anything_is_made(notebook, built, tmp_path,
                                                                                 monkeypatch, url):
    """'localhost:8080/v1' (no http://) was taken: its connection error was retried for half a
    minute, then the search failed, leaving a run folder to resume against the same URL."""
    said = rf"^--base-url '{re.escape(url.rsplit('@', 1)[-1].split('?')[0])}': expected an http:// or https:// URL"
    with pytest.raises(promptclimb.PromptclimbError, match=said) as caught:
        promptclimb.search(dataset="toy", name="x", base_url=url, echo=None, **SMALL)
    assert "TOPSECRET" not in str(caught.value)
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    with pytest.raises(promptclimb.PromptclimbError, match=said.replace("--base-url", "OPENAI_BASE_URL")):
        promptclimb.search(dataset="toy", name="x", echo=None, **SMALL)
    assert notebook.count == 0 and not built and not (tmp_path / "runs").exists()
    monkeypatch.setenv("OPENAI_BASE_URL", notebook.base_url)
    done = promptclimb.search(dataset="toy", name="r", echo=None, **SMALL)
    with pytest.raises(promptclimb.PromptclimbError, match=said):  # a resume given one too
        promptclimb.search(resume="r", base_url=url, echo=None)
    assert promptclimb.search(resume="r", echo=None).best == done.best


def test_evaluate_takes_none_for_shots_and_seed_as_their_defaults(built):
    """shots=None (as search() takes it: the default) ended in a TypeError from build_evaluator."""
    table = promptclimb.evaluate("a photo of a {}.", dataset="toy", shots=None, seed=None, echo=None)
    assert (built[-1]["shots"], built[-1]["seed"]) == (1, 0)
    assert table.equals(promptclimb.evaluate("a photo of a {}.", dataset="toy", echo=None))


def test_evaluate_takes_the_columns_a_run_hands_out_and_refuses_unreadable_templates_in_one_line(tmp_path):
    """`evaluate(run.ranked().template.head(3), classnames=run.names()["found"])` was refused
    in an 11-line message (a pandas column is not a list); a template with a line break was
    scored (and broke eval's table); a 400-character one was quoted whole, with a hint about {}."""
    import numpy as np
    import pandas as pd

    from promptclimb.agent.api import using_evaluator

    with using_evaluator(lambda **kw: WordEvaluator(kw["dataset"])):
        listed = promptclimb.evaluate(["a dark {}.", "a photo of a {}."], dataset="toy", echo=None)
        column = promptclimb.evaluate(pd.Series(["a dark {}.", "a photo of a {}."]), dataset="toy", echo=None)
        array = promptclimb.evaluate(np.array(["a dark {}.", "a photo of a {}."]), dataset="toy", echo=None)
        assert column.equals(listed) and array.equals(listed)
        names = pd.Series(["tee", "jeans", "dress", "bag"], name="found")
        assert promptclimb.evaluate("a {}.", dataset="toy", classnames=names, echo=None).equals(
            promptclimb.evaluate("a {}.", dataset="toy", classnames=list(names), echo=None))
        with pytest.raises(promptclimb.PromptclimbError) as refused:
            promptclimb.evaluate(pd.Series([1, 2]), dataset="toy", echo=None)
        assert "\n" not in str(refused.value)
        with pytest.raises(promptclimb.PromptclimbError,
                           match=r"invalid template 'a photo\\nof a \{\}\.': a line break, tab or other control"):
            promptclimb.evaluate("a photo\nof a {}.", dataset="toy", echo=None)
        # typed only: a run's own (a pool file's tab, an old run's) is scored again as it was
        from promptclimb.agent.core.templates import check_templates

        assert check_templates(["a photo\tof a {}."]) == ["a photo\tof a {}."]
        with pytest.raises(promptclimb.PromptclimbError, match="expected a list of names"):  # a set keeps no order
            promptclimb.evaluate("a {}.", dataset="toy", classnames=set(names), echo=None)
        with pytest.raises(promptclimb.PromptclimbError) as long:
            promptclimb.evaluate("very " * 80 + "nice photo of a {}.", dataset="toy", echo=None)
        assert str(long.value).endswith("…': longer than 200 characters") and len(str(long.value)) < 140
        with pytest.raises(promptclimb.PromptclimbError) as none:  # the hint where the {} is what is wrong
            promptclimb.evaluate("a photo of a {0}.", dataset="toy", echo=None)
        assert str(none.value).endswith("is not a plain {} (use exactly one {} for the class name)")


def test_a_keyword_spelled_with_dashes_is_its_underscore_one_in_every_function(notebook, built, tmp_path):
    """A TOML [search] table splatted into a call (`**toml["search"]`; the README writes its keys
    with dashes): evaluate() and transfer() dropped `data-root` unsaid (the wrong data scored),
    search() ended in a KeyError 'pool-sample'. Each takes it as its `_` keyword; one given both
    ways is refused, naming both; a mistyped one is said as spelled."""
    settings = {k: v for k, v in SMALL.items() if k != "pool_sample"}
    result = promptclimb.search(dataset="toy", name="nb", echo=None, **settings, **{"pool-sample": 4})
    assert json.loads((result.run_dir / "config.json").read_text())["search"]["pool_sample"] == 4
    promptclimb.evaluate("a {}.", dataset="toy", echo=None, **{"data-root": "sub"})
    assert built[-1].get("data_root") == "sub"
    promptclimb.transfer("nb", "other-net", echo=None, save=False, **{"data-root": "sub2", "runs-dir": "runs"})
    assert (built[-1]["backbone"], built[-1].get("data_root")) == ("other-net", "sub2")
    twice = r"^{}\(\): {} is given twice \({}, {}\); keep one$"
    with pytest.raises(promptclimb.PromptclimbError, match=twice.format("search", *["pool_sample"] * 2, "pool-sample")):
        promptclimb.search(dataset="toy", name="x", echo=None, **SMALL, **{"pool-sample": 4})
    with pytest.raises(promptclimb.PromptclimbError, match=twice.format("evaluate", *["data_root"] * 2, "data-root")):
        promptclimb.evaluate("a {}.", dataset="toy", data_root="a", **{"data-root": "b"})
    with pytest.raises(promptclimb.PromptclimbError, match=twice.format("transfer", *["runs_dir"] * 2, "runs-dir")):
        promptclimb.transfer("nb", "other-net", runs_dir="runs", **{"runs-dir": "elsewhere"})
    with pytest.raises(promptclimb.PromptclimbError, match=r"^evaluate\(\): unknown keyword data-rot \(did you mean "
                                                          r"data_root\?\)$"):
        promptclimb.evaluate("a {}.", dataset="toy", **{"data-rot": "b"})
    assert not (tmp_path / "runs" / "x").exists()


def test_numpy_numbers_and_booleans_are_taken_as_python_ones(notebook, built):
    """A count read from a frame's cell is np.int64, a flag np.True_: `shots=np.int64(2)` was
    refused as not "a whole number", `no_cache=np.True_` as not "true or false", and so was
    `transfer(top=np.int64(2))`. A numpy boolean is still no number."""
    import numpy as np

    promptclimb.search(dataset="toy", name="np", shots=np.int64(2), no_cache=np.True_, echo=None,
                       **{**SMALL, "iterations": np.int32(2)})
    config = json.loads((promptclimb.load_run("np").path / "config.json").read_text())
    assert (built[-1]["shots"], config["search"]["iterations"]) == (2, 2) and type(built[-1]["shots"]) is int
    promptclimb.evaluate("a {}.", dataset="toy", shots=np.int64(3), seed=np.uint8(1), echo=None)
    assert (built[-1]["shots"], built[-1]["seed"]) == (3, 1)
    moved = promptclimb.transfer("np", "other-net", top=np.int64(2), save=np.False_, echo=None)
    assert moved["source_rank"].max() == 2 and "path" not in moved.attrs
    with pytest.raises(promptclimb.PromptclimbError, match=r"^evaluate\(\): --shots np.True_: expected a whole "
                                                          r"number$"):
        promptclimb.evaluate("a {}.", dataset="toy", shots=np.True_)
    with pytest.raises(promptclimb.PromptclimbError, match=r"^transfer\(\): top np.True_: expected a whole number"):
        promptclimb.transfer("np", "other-net", top=np.True_)


@pytest.mark.parametrize("bad, said", [
    ("nan", r"^templates: the item at position 1 is nan \(float\): expected a template or a list of templates "
            r"\(text with one \{\} for the class name\)$"),
    ("names", r"^evaluate\(\): --classnames: the item at position 2 is None \(NoneType\): expected a list of names "
              r"\(one per class, in class order\)$")])
def test_a_bad_item_of_a_list_is_named_not_the_whole_list(built, bad, said):
    """`evaluate(pd.Series(["a photo of a {}.", np.nan]))` was refused quoting the whole
    column's repr: the first item that is not text is named, by its position, value and type."""
    import numpy as np
    import pandas as pd

    with pytest.raises(promptclimb.PromptclimbError, match=said):
        if bad == "nan":
            promptclimb.evaluate(pd.Series(["a photo of a {}.", np.nan]), dataset="toy", echo=None)
        else:
            promptclimb.evaluate("a {}.", dataset="toy", classnames=["tee", "jeans", None], echo=None)
    assert not built


def test_runs_dir_none_is_the_default_in_every_function(notebook, built):
    """search(runs_dir=None) meant runs; load_run() and transfer() ended in a TypeError."""
    promptclimb.search(dataset="toy", name="nb", runs_dir=None, echo=None, **SMALL)
    assert promptclimb.load_run("nb", runs_dir=None).id == "nb"
    assert not promptclimb.transfer("nb", "other-net", runs_dir=None, save=False, echo=None).empty


def test_the_api_takes_its_own_results_where_a_run_is_expected(notebook, built):
    """transfer(search(...)), load_run(result), search(resume=result) and resume=load_run(...)
    were refused, quoting the whole result; resume=True said "expected text", as if a word
    were missing (no run is "the latest")."""
    result = promptclimb.search(dataset="toy", name="nb", echo=None, **SMALL)
    run = promptclimb.load_run(result)
    assert run.id == "nb" and promptclimb.load_run(run).scores().equals(run.scores())
    moved = promptclimb.transfer(result, "other-net", save=False, echo=None)
    assert moved.equals(promptclimb.transfer(run, "other-net", save=False, echo=None))
    assert promptclimb.search(resume=result, echo=None).run_dir == result.run_dir
    assert promptclimb.search(resume=run, echo=None).best == result.best
    for flag in (True, False):
        with pytest.raises(promptclimb.PromptclimbError, match=rf"^search\(\): --resume {flag}: expected the run to "
                                                              r"continue \(its id, its path, its SearchResult or "
                                                              r"load_run\(\) of it\); leave resume out to start a "
                                                              r"new run$"):
            promptclimb.search(resume=flag, echo=None)
