"""The Python API (`import promptclimb`), driven the way a notebook drives it: keyword calls,
results read as objects and pandas frames. The LLM is the fake OpenAI-compatible server;
the CLIP side is the in-memory WordEvaluator (or, once, a tiny open_clip model on generated
images). `search()` is also checked against `promptclimb search`: the same run, the same
numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import promptclimb
from fake_llm import FakeLLM, WordEvaluator
from test_search import KEY, comparable, responder

SMALL = dict(iterations=2, resets=1, pool_sample=8, search="template")


@pytest.fixture
def built():
    """Every evaluator the API builds in the test is an in-memory WordEvaluator, through
    `using_evaluator` (torch is never imported); the list holds the settings asked for."""
    from promptclimb.agent.api import using_evaluator

    asked = []

    def build_evaluator(**kwargs):
        asked.append(kwargs)
        return WordEvaluator(kwargs["dataset"])

    with using_evaluator(build_evaluator):
        yield asked


@pytest.fixture
def notebook(tmp_path, monkeypatch):
    """A notebook's surroundings: its own working folder (runs/ goes there) and an endpoint."""
    monkeypatch.chdir(tmp_path)
    with FakeLLM(responder=responder) as fake:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        yield fake


def test_search_takes_config_files_as_the_command_does(notebook, tmp_path, built):
    """search(config=...) was refused as an unknown keyword, though the README says its
    keywords are the command's options: the files' [search] tables, a later file and then a
    keyword overriding; the file's `json` (for printing) is left out."""
    first, later = tmp_path / "first.toml", tmp_path / "later.toml"
    first.write_text('[search]\ndataset = "toy"\nshots = 3\niterations = 2\njson = true\nname = "from-file"\n')
    later.write_text('[search]\nshots = 2\nresets = 1\nsearch = "template"\npool-sample = 8\n')
    result = promptclimb.search(config=[first, str(later)], iterations=1, echo=None)
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert result.run_dir == tmp_path / "runs" / "from-file" and built[-1]["shots"] == 2
    assert (saved["search"]["iterations"], saved["search"]["resets"]) == (1, 1) and notebook.count == 1
    with pytest.raises(promptclimb.PromptclimbError, match=r"^search\(\): config=3: expected a TOML file's path"):
        promptclimb.search(config=3)
    with pytest.raises(promptclimb.PromptclimbError, match=r": a folder, not a file$"):  # was IsADirectoryError
        promptclimb.search(config=tmp_path)


def test_search_load_run_evaluate_transfer_like_a_notebook(notebook, tmp_path, built):
    progress = []
    result = promptclimb.search(dataset="toy", shots=2, name="nb", echo=progress.append, **SMALL)

    summary = json.loads((tmp_path / "runs" / "nb" / "summary.json").read_text())
    assert result.run_dir == tmp_path / "runs" / "nb" and result.summary == summary  # absolute: survives a chdir
    assert result.best == summary["best"]["template"] and result.accuracy == summary["best"]["accuracy"]
    assert set(result.accuracy) == {"train", "val", "test"}
    assert result.ensemble == (summary["ensemble"]["templates"] if summary["ensemble"]["chosen"] else None)
    assert result.templates == (result.ensemble or [result.best])
    assert any("iteration 2/2" in line for line in progress) and notebook.count == 2
    assert built[0]["dataset"] == "toy" and built[0]["shots"] == 2

    # the command line, same settings: the same search (it is built on the same function)
    from promptclimb.agent.cli.search import search_cmd

    cli = CliRunner().invoke(search_cmd,
                             ["--dataset", "toy", "--shots", "2", "--name", "cli", "--iterations", "2", "--search", "template",
                              "--resets", "1", "--pool-sample", "8", "--json"],
                             obj={"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])})
    assert cli.exit_code == 0, cli.output
    assert comparable(json.loads(cli.stdout)) == comparable(summary)

    run = promptclimb.load_run("nb")  # an id under ./runs, as `promptclimb show nb`
    assert run.path.resolve() == result.run_dir and run.status == "done"
    history = [json.loads(x) for x in (result.run_dir / "history.jsonl").read_text().splitlines()]
    scores = run.scores()
    assert isinstance(scores, pd.DataFrame) and len(scores) == sum(e["event"] == "score" for e in history)
    assert run.ranked()["template"].iloc[0] == result.best
    iterations = run.iterations_frame()
    assert list(iterations["call"]) == [0, 1] and iterations["best_so_far"].is_monotonic_increasing
    # a run without an answer: no rows, the same columns to select (it had none: a KeyError)
    unasked = promptclimb.search(dataset="toy", shots=2, name="unasked", echo=None, max_calls=0, **SMALL).load()
    assert unasked.iterations_frame().empty and list(unasked.iterations_frame()) == list(iterations)
    conversation = run.conversation_frame()
    assert list(conversation["role"][:3]) == ["system", "user", "assistant"]
    answers = conversation[conversation["role"] == "assistant"]["content"].tolist()
    assert answers == [e["answer"] for e in history if e["event"] == "llm_exchange"]
    assert conversation["content"].iloc[0] == notebook.requests[0]["messages"][0]["content"]
    assert promptclimb.load_run(tmp_path / "runs" / "nb").scores().equals(scores)  # a path works too
    assert result.load().winners().equals(run.winners())

    table = promptclimb.evaluate(["a photo of a {}.", "a grayscale clothing photo of a {}."], dataset="toy", shots=4)
    word = WordEvaluator()
    assert list(table["template"]) == ["a photo of a {}.", "a grayscale clothing photo of a {}."]
    for split in ("train", "val", "test"):
        assert list(table[split]) == [word._value(t, split)[0] for t in table["template"]]
        assert list(table[f"{split}_prob"]) == [word._prob(t, split) for t in table["template"]]
    # no backbone named: the search's rule (not the embedded dataset -> OpenAI's ViT-B-32)
    assert (built[-1]["backbone"], built[-1]["pretrained"], built[-1]["shots"]) == ("ViT-B-32", "openai", 4)

    moved = promptclimb.transfer(run, backbone="other-net", top=3)
    assert (built[-1]["backbone"], built[-1]["dataset"], built[-1]["shots"]) == ("other-net", "toy", 2)
    ranked = run.ranked()["template"].drop_duplicates().tolist()
    assert moved["template"].tolist()[:3] == ranked[:3] and "a photo of a {}." in set(moved["template"])
    # the same evaluator on both sides: the same accuracies, the same order
    in_run = moved.dropna(subset=["source_train"])
    assert (in_run["source_train"] == in_run["target_train"]).all()
    assert moved.attrs["rank_correlation"]["selection"] == pytest.approx(1.0)
    assert moved.attrs["path"].resolve() == result.run_dir / "transfer-other-net.csv"
    assert set(pd.read_csv(moved.attrs["path"])["template"]) == {*ranked, "a photo of a {}."}
    # other weights of that backbone: files of their own, beside the first transfer's
    for tag in ("tag-a", "tag_b"):
        promptclimb.transfer(run, backbone="other-net", pretrained=tag, top=3)
        assert built[-1]["pretrained"] == tag
    assert sorted(p.name for p in result.run_dir.glob("transfer-*.csv")) == [
        "transfer-other-net-tag-a.csv", "transfer-other-net-tag_b.csv", "transfer-other-net.csv"]
    assert {json.loads(p.read_text())["target"]["pretrained"] for p in result.run_dir.glob("transfer-*.json")} == {
        None, "tag-a", "tag_b"}


def test_bad_input_is_one_readable_error(notebook, built):
    with pytest.raises(promptclimb.PromptclimbError) as caught:
        promptclimb.search(dataset="toy", iteratons=2)
    assert "unknown keyword iteratons (did you mean iterations?)" == str(caught.value).split(": ", 1)[1]
    with pytest.raises(promptclimb.PromptclimbError) as caught:
        promptclimb.search(dataset="toy", zz=2)
    message = str(caught.value)
    assert "unknown keyword zz; the valid ones: " in message and "max_calls" in message
    assert "json" not in message.split("valid ones:")[1].split(", ")  # a CLI-only option
    with pytest.raises(promptclimb.PromptclimbError, match=r"search\(\): --metric 'best': expected one of"):
        promptclimb.search(dataset="toy", metric="best")
    with pytest.raises(promptclimb.PromptclimbError, match=r"search\(\): --shots 'two': expected a whole number"):
        promptclimb.search(dataset="toy", shots="two")
    with pytest.raises(promptclimb.PromptclimbError, match=r"search\(\): --shots 1.5: expected a whole number"):
        promptclimb.search(dataset="toy", shots=1.5)
    with pytest.raises(promptclimb.PromptclimbError, match=r"search\(\): --iterations \[1\]: expected a whole number"):
        promptclimb.search(dataset="toy", iterations=[1])
    # a quoted "false" (as a TOML table may hold it) is the text, not the boolean: said so
    with pytest.raises(promptclimb.PromptclimbError, match=r"--no-cache 'false': expected true or false \(a boolean, "
                                                          r"not the text 'false'\)$"):
        promptclimb.search(dataset="toy", no_cache="false")
    with pytest.raises(promptclimb.PromptclimbError, match=r"--no-cache 1: expected true or false$"):
        promptclimb.search(dataset="toy", no_cache=1)
    with pytest.raises(promptclimb.PromptclimbError, match="unknown adapter kind 'lora'"):
        promptclimb.search(dataset="toy", adapter="lora")
    with pytest.raises(promptclimb.PromptclimbError, match="--dataset is required"):
        promptclimb.search()
    with pytest.raises(promptclimb.PromptclimbError, match=r"'a photo': no \{\} placeholder"):
        promptclimb.evaluate(["a photo of a {}.", "a photo"], dataset="toy")
    with pytest.raises(promptclimb.PromptclimbError, match="no run 'nope'"):
        promptclimb.load_run("nope")
    assert notebook.count == 0


def test_evaluate_with_a_real_clip_model(tiny_clip_config, tiny_clip_weights, image_folder, torch_threads):
    """The real evaluator once: the same numbers as `promptclimb eval --json`."""
    from promptclimb.agent.cli import cli

    settings = dict(dataset="imagefolder", data_root=str(image_folder), shots=2, seed=3, backbone=tiny_clip_config,
                    weights=str(tiny_clip_weights), device="cpu")
    table = promptclimb.evaluate(["a photo of a {}.", "a {} thing."], **settings)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    out = CliRunner().invoke(cli, ["eval", *args, "--prompt", "a photo of a {}.", "--prompt", "a {} thing.", "--json"])
    assert out.exit_code == 0, out.output
    for row, expected in zip(table.to_dict("records"), json.loads(out.stdout)["results"]):
        assert row["template"] == expected["template"]
        for split in ("train", "val", "test"):
            assert row[split] == pytest.approx(expected["accuracy"][split])
            assert row[f"{split}_loss"] == pytest.approx(expected["loss"][split])
    names = image_folder.parent / "names.txt"  # a names file as a Path, as data_root may be
    names.write_text("lake\nfield\nsquare\n")
    named = promptclimb.evaluate(["a photo of a {}."], **settings, classnames=names)
    assert named.to_dict("records") == promptclimb.evaluate(["a photo of a {}."], **settings,
                                                             classnames=["lake", "field", "square"]).to_dict("records")
    bad_seed = CliRunner().invoke(cli, ["eval", *args, "--seed", "-3"])
    assert bad_seed.exit_code == 2 and "-3 is not in the range 0<=x<2**64." in bad_seed.output


def test_import_promptclimb_stays_light():
    code = ("import sys, promptclimb; promptclimb.search, promptclimb.evaluate, promptclimb.load_run, "
            "promptclimb.transfer; print(sorted(m for m in ('torch', 'pandas', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


REPO = Path(__file__).resolve().parents[1]


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_the_readme_api_examples_run(notebook, tmp_path, built):
    """The README's "Python API" section, its ```python blocks exactly as written, run against
    the fake LLM and the in-memory evaluator (whatever backbone it names)."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", readme_section("Python API"), flags=re.S)
    code = "\n".join(blocks)
    for name in ("search", "load_run", "evaluate", "transfer"):
        assert f"promptclimb.{name}(" in code, f"the README's API examples do not show {name}()"
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    assert isinstance(namespace["result"], promptclimb.SearchResult)
    assert (tmp_path / namespace["result"].run_dir / "summary.json").is_file()
    assert len(namespace["answers"]) == notebook.count == 6  # 2 resets x 3 iterations
    assert len(namespace["table"]) == 2 and not namespace["moved"].empty
    assert [b["backbone"] for b in built] == ["demo", "demo", "ViT-B-16"]


def test_resuming_a_finished_run_keeps_the_adapter_adapt_recorded(notebook, built, tmp_path):
    """`promptclimb adapt RUN` records its adapter in summary.json only (the history does not
    hold it); `search --resume RUN` (or `search(resume=RUN)`) on the finished run wrote the
    summary anew from the history and dropped that section, leaving adapter.pt unexplained."""
    promptclimb.search(dataset="toy", name="done", echo=None, **SMALL)
    path = tmp_path / "runs" / "done" / "summary.json"
    adapter = {"kind": "cache", "result": "adapter", "accuracy": {"train": 1.0, "val": 1.0, "test": 1.0}}
    path.write_text(json.dumps({**json.loads(path.read_text()), "adapter": adapter}))
    again = promptclimb.search(resume="done", echo=None)
    assert again.summary["adapter"] == adapter
    assert json.loads(path.read_text())["adapter"] == adapter


def test_a_search_result_still_leads_to_its_run_after_the_notebook_changes_folder(notebook, built, tmp_path,
                                                                                  monkeypatch):
    """`result.run_dir` was relative to the working folder at call time (runs/nb): after an
    `os.chdir` in the notebook, `result.load()` found no run. It is absolute now."""
    result = promptclimb.search(dataset="toy", name="nb", echo=None, **SMALL)
    assert result.run_dir.is_absolute() and result.run_dir == tmp_path / "runs" / "nb"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert result.load().id == "nb" and result.load().status == "done"


def test_evaluate_and_transfer_check_the_cache_folder_before_the_model_loads(notebook, tmp_path, monkeypatch):
    """A file in PROMPTCLIMB_HOME's path: evaluate() and transfer() raised a raw
    NotADirectoryError once the model had loaded, where search() and `promptclimb eval` say
    it in one line first. With an evaluator of one's own (`using_evaluator`) nothing is
    checked: where it keeps what it keeps is its own business."""
    from promptclimb.agent import pipeline
    from promptclimb.agent.api import using_evaluator

    with using_evaluator(lambda **kw: WordEvaluator(kw["dataset"])):
        promptclimb.search(dataset="fashion-mnist", name="nb", echo=None, **SMALL)
    (tmp_path / "afile").write_text("in the way")
    monkeypatch.setenv("PROMPTCLIMB_HOME", str(tmp_path / "afile" / "home"))
    def load(**settings):
        raise AssertionError("the CLIP evaluator was built before the cache folder was checked")

    monkeypatch.setattr(pipeline, "default_evaluator_factory", load)
    said = r"afile/home \(the cache folder, PROMPTCLIMB_HOME\) is not writable \(.*afile is a file, not a folder\)$"
    with pytest.raises(promptclimb.PromptclimbError, match=said):
        promptclimb.evaluate("a photo of a {}.", echo=None)
    with pytest.raises(promptclimb.PromptclimbError, match=said):
        promptclimb.transfer("nb", "demo", echo=None)
    with using_evaluator(lambda **kw: WordEvaluator(kw["dataset"])):
        assert len(promptclimb.evaluate("a photo of a {}.", echo=None)) == 1


def test_a_fashion_mnist_subset_replaced_in_the_same_process_is_read_again(tmp_path):
    """The subset was cached by its path alone: one rebuilt in the same process (a notebook)
    gave the old images and the old digest, which a run records as the data's identity."""
    import os

    import numpy as np

    from promptclimb.evaluators.demo.fashion_mnist import SUBSET_FILE, load_fashion_mnist

    def write(pixel: int, images: int) -> None:
        arrays = {}
        for split in ("train", "test"):
            arrays[f"{split}_images"] = np.full((images, 28, 28), pixel, dtype=np.uint8)
            arrays[f"{split}_labels"] = np.arange(images, dtype=np.uint8)
            arrays[f"{split}_source_index"] = np.arange(images) + (0 if split == "train" else 100)
        np.savez(tmp_path / SUBSET_FILE, **arrays)

    write(1, images=2)
    first, before = load_fashion_mnist(str(tmp_path)), (tmp_path / SUBSET_FILE).stat().st_mtime_ns
    write(2, images=2)  # the same size: only its time of change tells
    os.utime(tmp_path / SUBSET_FILE, ns=(before, before + 1_000_000_000))
    second = load_fashion_mnist(str(tmp_path))
    assert second.identity != first.identity and np.asarray(second.load_image("t10k-00000")).max() == 2
    write(3, images=3)
    assert len(load_fashion_mnist(str(tmp_path)).splits["train"]) == 3
