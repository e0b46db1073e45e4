"""What a Python API call writes on the terminal: the lines its `echo` is given, and nothing
else. `search(echo=None)`, `evaluate(echo=None)` and `transfer(echo=None)` print nothing on
fd 1 or 2 (the local LLM server's start and each split's image features included, which
the commands print on stderr); `echo=list.append` gets those lines; progress bars are
drawn only with `print` (the default). The commands print what they printed before.

The CLIP side is the embedded default (fashion-mnist, the `demo` backbone); the LLM is the
fake OpenAI-compatible server, or the embedded local one with a stand-in for llama.cpp's
server (tests/test_local_llm.py)."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest
from click.testing import CliRunner

import promptclimb
from fake_llm import WordEvaluator
from test_api import SMALL, built, notebook  # noqa: F401 (fixtures)
from test_local_llm import STAND_IN

FEW = dict(iterations=1, resets=1, restarts=1, pool_sample=4, search="template")
FEATURES = re.compile(r"fashion-mnist/(train|val|test): (reused|encoded) .*\(demo fp32\).*")


class Terminal(io.StringIO):
    """sys.stderr as a terminal: where tqdm draws its bars (on a pipe it draws none)."""

    def isatty(self) -> bool:
        return True


def reused(*splits: str) -> list[str]:
    sizes = {"train": "10", "val": "10", "test": "2,000"}
    return [f"fashion-mnist/{s}: reused {sizes[s]} cached image features (demo fp32)" for s in splits]


def test_evaluate_says_each_split_through_its_echo_and_draws_bars_only_with_print(capfd, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    where = dict(dataset="fashion-mnist", shots=1)

    promptclimb.evaluate("a photo of a {}.", splits=("train",), echo=None, **where)  # encodes train
    assert capfd.readouterr() == ("", "") and terminal.getvalue() == ""

    lines = []
    table = promptclimb.evaluate("a photo of a {}.", splits=("train", "val"), echo=lines.append, **where)
    assert list(table["template"]) == ["a photo of a {}."]
    assert lines[0] == reused("train")[0] and len(lines) == 2
    assert re.fullmatch(r"fashion-mnist/val: encoded 10 images in .* s \(.* images/s, demo fp32\); cached", lines[1])
    assert capfd.readouterr() == ("", "") and terminal.getvalue() == ""

    # the default, print: the line on stdout, and the bar while another seed's split is encoded
    promptclimb.evaluate("a photo of a {}.", splits=("train",), seed=1, **where)
    out, err = capfd.readouterr()
    assert re.fullmatch(r"fashion-mnist/train: encoded 10 images in .*; cached\n", out) and err == ""
    assert "encoding fashion-mnist/train images" in terminal.getvalue()


def test_search_and_transfer_on_fashion_mnist_say_everything_through_their_echo(notebook, capfd):
    quiet = promptclimb.search(dataset="fashion-mnist", shots=1, name="quiet", echo=None, adapter="cache", **FEW)
    assert capfd.readouterr() == ("", "")  # the splits were encoded, the LLM asked: nothing said
    # the adapter fit is part of the result (`accuracy` is the prompt's; prompt + adapter may be the run's result)
    assert quiet.adapter == quiet.summary["adapter"] and quiet.adapter["kind"] == "cache"

    lines = []
    promptclimb.search(dataset="fashion-mnist", shots=1, name="heard", echo=lines.append, **FEW)
    assert capfd.readouterr() == ("", "")
    assert [line for line in lines if FEATURES.fullmatch(line)] == reused("train", "val", "test")
    assert any(line.startswith("run folder: ") for line in lines)

    promptclimb.transfer(quiet.load(), "demo", echo=None)
    assert capfd.readouterr() == ("", "")
    moved = []
    promptclimb.transfer(quiet.load(), "demo", echo=moved.append)
    assert moved == reused("train", "val", "test") and capfd.readouterr() == ("", "")

    # the command: progress on stdout, the image features on stderr, as before
    from promptclimb.agent.cli import cli

    runner = CliRunner()
    done = runner.invoke(cli, ["search", "--dataset", "fashion-mnist", "--shots", "1", "--name", "cli",
                               "--iterations", "1", "--resets", "1", "--restarts", "1", "--pool-sample", "4",
                               "--search", "template"])
    assert done.exit_code == 0, done.output
    assert [line for line in done.stderr.splitlines() if FEATURES.fullmatch(line)] == reused("train", "val", "test")
    assert "run folder: " in done.stdout and not FEATURES.search(done.stdout)
    moved = runner.invoke(cli, ["transfer", "quiet", "--backbone", "demo"])
    assert moved.exit_code == 0, moved.output
    assert not FEATURES.search(moved.stdout)
    assert [line for line in moved.stderr.splitlines() if FEATURES.fullmatch(line)] == reused("train", "val", "test")


@pytest.fixture
def local_llm_stand_in(tmp_path, monkeypatch):
    """The embedded local LLM, its server a stand-in for llama.cpp's (it answers "OK"),
    started for each search as llama.cpp's would be; no endpoint in the environment."""
    from promptclimb.agent.llm import local as local_llm

    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    monkeypatch.setattr(local_llm, "_require_llama_cpp", lambda: None)
    monkeypatch.setattr(local_llm, "server_command", lambda model, port, **kwargs: [
        sys.executable, str(script), str(port), "0", kwargs["model_alias"]])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF mine")
    return gguf


def local_llm_lines(text: str) -> list[str]:
    """The server's start: what local_server says (agent/llm/local.py)."""
    return [line for line in text.splitlines() if re.match(r"(starting the local LLM|local LLM ready) ", line)]


def test_the_local_llm_servers_start_goes_to_the_echo(local_llm_stand_in, built, capfd):
    gguf = local_llm_stand_in
    promptclimb.search(dataset="toy", name="quiet", llm_model=str(gguf), echo=None, **SMALL)
    assert capfd.readouterr() == ("", "")

    lines = []
    replayed = promptclimb.search(dataset="toy", name="cached", llm_model=str(gguf), echo=lines.append, **SMALL)
    assert replayed.best and local_llm_lines("\n".join(lines)) == []  # every answer cached: never started
    sources = [json.loads(line).get("source") for line in (replayed.run_dir / "history.jsonl").read_text().splitlines()
               if '"llm_exchange"' in line]
    assert sources and set(sources) == {"cache"}

    lines = []
    promptclimb.search(dataset="toy", name="heard", llm_model=str(gguf), echo=lines.append, no_cache=True, **SMALL)
    assert capfd.readouterr() == ("", "")
    said = local_llm_lines("\n".join(lines))
    assert len(said) == 2, lines
    assert re.fullmatch(r"starting the local LLM \(mine\.gguf\) on 127\.0\.0\.1:\d+ \.\.\.", said[0])
    assert re.fullmatch(r"local LLM ready at http://127\.0\.0\.1:\d+/v1 \(warm-up .*s\)", said[1])

    # the command prints them on stderr, as before
    from promptclimb.agent.cli.search import search_cmd

    done = CliRunner().invoke(search_cmd, ["--dataset", "toy", "--name", "cli", "--llm-model", str(gguf),
                                           "--iterations", "2", "--resets", "1", "--pool-sample", "8",
                                           "--search", "template", "--no-cache"],
                              obj={"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])})
    assert done.exit_code == 0, done.output
    assert len(local_llm_lines(done.stderr)) == 2 and local_llm_lines(done.stdout) == []
    assert "run folder: " in done.stdout


def test_a_local_model_file_is_checked_before_the_run_folder_and_recorded_whole(local_llm_stand_in, built, tmp_path,
                                                                                monkeypatch):
    """`--llm-model` was checked when the server started, after the run folder was made (an
    unfinished run was left behind whose resume failed alike), and recorded as typed: a
    resume from another folder read another file of that name, or none."""
    (tmp_path / "notes.txt").write_text("not a model")
    for bad, why in (("missing.gguf", "no such file"), ("notes.txt", "not a GGUF file")):
        with pytest.raises(promptclimb.PromptclimbError, match=f"--llm-model {tmp_path / bad}: {why}"):
            promptclimb.search(dataset="toy", name="bad", llm_model=bad, echo=None, **SMALL)
        assert not (tmp_path / "runs" / "bad").exists()
    promptclimb.search(dataset="toy", name="rel", llm_model="mine.gguf", echo=None, **SMALL)
    config = json.loads((tmp_path / "runs" / "rel" / "config.json").read_text())
    assert config["llm"]["llm_model_file"] == str(local_llm_stand_in)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (tmp_path / "mine.gguf").rename(tmp_path / "gone.gguf")  # the run's own file, gone
    with pytest.raises(promptclimb.PromptclimbError, match=r"--llm-model .*mine\.gguf: no such file \(the run's"):
        promptclimb.search(resume=str(tmp_path / "runs" / "rel"), echo=None)


def test_a_local_llm_that_fails_to_start_mid_run_leaves_the_command_that_continues(local_llm_stand_in, built,
                                                                                     monkeypatch, tmp_path):
    """The server starts at the first answer the cache does not hold, after the pool was
    scored: its failure to start is an LLM failure like any other, and says how to go on."""
    from promptclimb.agent.llm import local as local_llm

    monkeypatch.setattr(local_llm, "server_command", lambda model, port, **kwargs: [
        sys.executable, "-c", "import sys; sys.exit(1)"])
    with pytest.raises(promptclimb.PromptclimbError) as failed:
        promptclimb.search(dataset="toy", name="cut", llm_model=str(local_llm_stand_in), echo=None, **SMALL)
    said = str(failed.value)
    assert said.startswith("the local LLM did not start: the local LLM server exited with code 1")
    assert "The run is saved; continue it with: promptclimb search --resume " in said
    assert "(a file it cannot load: continue with --llm-model FILE of another model, or --base-url" in said
    assert '"event": "score"' in (tmp_path / "runs" / "cut" / "history.jsonl").read_text()  # the pool: kept


@pytest.mark.parametrize("echo", [None, print])
def test_the_mpnet_folders_assembly_bar_is_drawn_only_with_print(tmp_path, monkeypatch, capfd, echo):
    """demo-mpnet's text tower, assembled on its first use deep inside the model's loading:
    `evaluate(echo=None)` drew its bar on stderr (the local LLM's was already kept quiet)."""
    from promptclimb.agent.core import chunks
    from promptclimb.evaluators.demo import model

    parts = [tmp_path / f"part{i}.bin" for i in (1, 2)]
    for part in parts:
        part.write_bytes(b"x" * 1000)
    monkeypatch.setattr(chunks, "find_parts", lambda spec: parts)
    model._load_sentence_encoder.cache_clear()  # a model loaded by an earlier test is not read again
    with pytest.raises(promptclimb.PromptclimbError, match="has SHA-256"):
        promptclimb.evaluate("a photo of a {}.", backbone="demo-mpnet", splits=["train"], echo=echo)
    _, err = capfd.readouterr()
    assert ("assembling all-mpnet-base-v2" in err) == (echo is print), err


@pytest.mark.parametrize("echo", [None, "list", print])
def test_the_local_models_assembly_bar_is_drawn_only_with_print(tmp_path, monkeypatch, built, capfd, echo):
    """The embedded model assembled the first time (here from parts that do not add up to it,
    so the search stops once they are read): its bar on stderr only for `print`."""
    from promptclimb.agent.core import chunks
    from promptclimb.agent.llm import local as local_llm

    parts = [tmp_path / f"part{i}.bin" for i in (1, 2)]
    for part in parts:
        part.write_bytes(b"x" * 1000)
    monkeypatch.setattr(chunks, "find_parts", lambda spec: parts)
    monkeypatch.setattr(local_llm, "_require_llama_cpp", lambda: None)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    lines = []
    with pytest.raises(promptclimb.PromptclimbError, match="has SHA-256"):
        promptclimb.search(dataset="toy", name="x", echo=lines.append if echo == "list" else echo, **SMALL)
    out, err = capfd.readouterr()
    assert ("assembling qwen2.5-coder" in err) == (echo is print)
    assert "assembling" not in out and "assembling" not in "".join(lines)
    assert (err == "") == (echo is not print)

    if echo is print:  # the command draws it too, as before
        from promptclimb.agent.cli.search import search_cmd

        done = CliRunner().invoke(search_cmd, ["--dataset", "toy", "--name", "cli", "--search", "template"],
                                  obj={"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])})
        assert done.exit_code == 1 and "has SHA-256" in done.stderr
        assert "assembling qwen2.5-coder" in done.stderr and "assembling" not in done.stdout


def test_evaluate_draws_its_bar_in_a_jupyter_kernel_whose_stderr_is_no_terminal(monkeypatch):
    """Jupyter's stderr is no terminal, and tqdm's `disable=None` draws no bar there: encoding
    thousands of images showed nothing for minutes. In an IPython kernel the bar asked for is
    drawn; outside one a pipe still gets none, and `echo=None` none anywhere."""
    import types

    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    where = dict(dataset="fashion-mnist", shots=1, splits=("train",))
    promptclimb.evaluate("a photo of a {}.", seed=2, **where)  # each seed's split is encoded anew
    assert "encoding fashion-mnist/train images" not in pipe.getvalue()
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    promptclimb.evaluate("a photo of a {}.", seed=3, **where)
    drawn = pipe.getvalue()
    assert "encoding fashion-mnist/train images" in drawn
    promptclimb.evaluate("a photo of a {}.", seed=4, echo=None, **where)
    assert pipe.getvalue() == drawn
