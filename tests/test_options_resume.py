"""Start and --resume take the same command line: an option the start accepted is not
refused when the same command is run again with --resume, and what a run records is what
it does (--select train+val --confirm val holds nothing out: recorded off). The LLM search
on an in-memory evaluator; the craft side is in tests/test_soft_prompt_search.py."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from fake_llm import FakeLLM, WordEvaluator, one_line_error

from promptclimb.agent.runs.store import RunStore
from test_names_cli import SMALL as NAMES_SMALL
from test_names_cli import run as names_run  # noqa: F401 - a fixture: the names climb's commands
from test_search import KEY, comparable, responder

FACTORY = {"evaluator_factory": lambda **kw: WordEvaluator(kw["dataset"])}
CONFIRM_WARNING = "warning: --confirm val holds nothing back under --select train+val"


@pytest.fixture
def search(tmp_path):
    runs = tmp_path / "runs"
    with FakeLLM(responder=responder) as fake:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}

        def run(*extra, name="run"):
            from promptclimb.agent.cli import cli

            args = ["search", "--dataset", "toy", "--iterations", "1", "--resets", "1", "--pool-sample", "4", "--search",
                    "template", "--runs-dir", str(runs), "--name", name, *extra]
            return CliRunner().invoke(cli, args, obj=FACTORY, env=env)

        run.runs, run.fake = runs, fake
        yield run


def config(search, name="run") -> dict:
    return json.loads((search.runs / name / "config.json").read_text())


@pytest.mark.parametrize("given, recorded, warned", [
    (["--select", "train+val", "--confirm", "val"], "off", True),
    (["--select", "train+val"], "off", False),  # the default: nothing to confirm on, nothing said
    (["--select", "train+val", "--confirm", "off"], "off", False),
    (["--select", "train"], "val", False),
    (["--confirm", "off"], "off", False),
])
def test_confirm_is_recorded_as_the_run_does_it(search, given, recorded, warned):
    result = search(*given, "--json")
    assert result.exit_code == 0, result.output
    assert config(search)["search"]["confirm"] == recorded
    assert result.stderr.count(CONFIRM_WARNING) == (1 if warned else 0)
    again = search(*given, "--resume", "run", "--json")  # the same command, resumed: accepted
    assert again.exit_code == 0, again.output
    assert comparable(json.loads(again.stdout)) == comparable(json.loads(result.stdout))


def test_a_run_recorded_with_confirm_val_under_train_val_resumes(search):
    """Recorded the old way (confirm val, though nothing was held out): the command that
    started it, and --confirm off (what it ran as), both resume it to the same end."""
    first = search("--select", "train+val", "--json")
    assert first.exit_code == 0, first.output
    path = search.runs / "run" / "config.json"
    old = config(search)
    old["search"]["confirm"] = "val"
    path.write_text(json.dumps(old))
    for given in (["--confirm", "val"], ["--confirm", "off"], []):
        again = search("--select", "train+val", *given, "--resume", "run", "--json")
        assert again.exit_code == 0, again.output
        mine, theirs = comparable(json.loads(again.stdout)), comparable(json.loads(first.stdout))
        assert mine.pop("config")["confirm"] == "val" and theirs.pop("config")["confirm"] == "off"
        assert mine == theirs  # the same search: nothing was held out either way
    assert config(search)["search"]["confirm"] == "val"  # a resume rewrites nothing it was not asked to


def test_a_confirm_that_would_change_the_run_is_still_refused(search):
    assert search("--select", "train").exit_code == 0
    one_line_error(search("--confirm", "off", "--resume", "run"), "--confirm off (the run's: val)")


def test_a_no_cache_run_resumed_asks_its_llm_again_unless_told_cache(search):
    """--no-cache was this session's only: a run stopped and resumed with the command it printed
    read the rest of its answers from the cache, and ended as a copy of another run that had
    asked the same (a measure of the LLM's variance, silently undone)."""
    assert search(name="a").exit_code == 0  # the cache holds every answer these runs ask
    assert search("--no-cache", name="b").exit_code == 0
    assert config(search, "b")["llm"]["no_cache"] is True and config(search, "a")["llm"]["no_cache"] is False

    def cut(name):  # stopped before its last answer was recorded
        history = search.runs / name / "history.jsonl"
        lines = history.read_text().splitlines(keepends=True)
        history.write_text("".join(lines[:max(i for i, line in enumerate(lines) if '"llm_exchange"' in line)]))
        (search.runs / name / "summary.json").unlink()

    cut("b")
    asked = search.fake.count
    resumed = search("--resume", "b", name="b")
    assert resumed.exit_code == 0, resumed.output
    assert search.fake.count == asked + 1  # asked anew, as the run was started
    cut("b")
    assert search("--resume", "b", "--cache", name="b").exit_code == 0
    assert search.fake.count == asked + 1  # --cache given: read from the cache


def test_a_refused_parallel_says_why_and_our_meta_prompt_folder_given_is_the_runs(search):
    """--parallel 2 was refused for "the number of LLM turns", which it does not change; the
    folder of our own meta-prompts given to a run that read them was "(the run's: none)"."""
    assert search().exit_code == 0
    one_line_error(search("--parallel", "2", "--resume", "run"),
                   "--parallel 2 (the run's: 1) (the history's order of the restarts depends on it)")
    from promptclimb.agent.core.paths import prompts_dir

    ours = search("--meta-prompt", str(prompts_dir() / "meta"), "--resume", "run")
    assert ours.exit_code == 0, ours.output
    elsewhere = search.runs.parent / "meta"
    shutil.copytree(prompts_dir() / "meta", elsewhere)
    one_line_error(search("--meta-prompt", str(elsewhere), "--resume", "run"),
                   f"--meta-prompt {elsewhere} (the run's: ours ({prompts_dir() / 'meta'}))")


def test_an_option_given_at_its_default_is_compared_with_the_run_too(search, monkeypatch):
    """`--resume RUN --shots 1 --seed 0` of a run of 2 shots, seed 3: refused as any other
    change (it went on with the run's shots, unsaid, as 1 and 0 are the defaults); from
    search() too, where a keyword given is given whatever its value."""
    assert search("--shots", "2", "--seed", "3").exit_code == 0
    one_line_error(search("--shots", "1", "--seed", "0", "--resume", "run"),
                   "--shots 1 (the run's: 2), --seed 0 (the run's: 3)")
    # what a run does not record is what its resume runs with: an LLM run records no optimizer
    assert "optimizer" not in config(search)
    again = search("--shots", "2", "--seed", "3", "--optimizer", "llm", "--resume", "run")
    assert again.exit_code == 0, again.output
    one_line_error(search("--optimizer", "craft", "--resume", "run"), "--optimizer craft (the run's: llm)")
    import promptclimb
    from promptclimb.agent.api import using_evaluator
    from promptclimb.agent.core.errors import PromptclimbError

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", search.fake.base_url)
    with using_evaluator(FACTORY["evaluator_factory"]):
        with pytest.raises(PromptclimbError, match=re.escape("--shots 1 (the run's: 2)")):
            promptclimb.search(resume="run", runs_dir=str(search.runs), shots=1, echo=None)


def test_a_refused_change_a_config_file_set_names_the_file_and_a_typed_one_does_not(search, tmp_path, monkeypatch):
    """`--config c.toml --resume RUN` listed `--iterations 1 (the run's: 2)`, and a user looked
    for it on the command line; a resume set in the file had the file blamed for a typed value."""
    assert search("--shots", "2").exit_code == 0
    shots = tmp_path / "shots.toml"
    shots.write_text("[search]\nshots = 3\n")
    one_line_error(search("--config", str(shots), "--resume", "run"),
                   f"--shots 3 (the run's: 2; set by --config {shots})")
    resume = tmp_path / "resume.toml"
    resume.write_text('[search]\nresume = "run"\n')
    typed = search("--config", str(resume), "--shots", "1")
    one_line_error(typed, "--shots 1 (the run's: 2)")
    assert "--config" not in typed.output
    import promptclimb
    from promptclimb.agent.api import using_evaluator

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", search.fake.base_url)
    with using_evaluator(FACTORY["evaluator_factory"]):  # search(config=...) alike
        with pytest.raises(promptclimb.PromptclimbError, match=re.escape(f"(the run's: 2; set by --config {shots})")):
            promptclimb.search(config=shots, resume="run", runs_dir=str(search.runs), echo=None)
        pool = tmp_path / "pool.toml"
        pool.write_text('[search]\npool = "missing.txt"\n')
        with pytest.raises(promptclimb.PromptclimbError, match=re.escape(f"--config {pool}: --pool: 'missing.txt'")):
            promptclimb.search(config=pool, dataset="toy", runs_dir=str(search.runs), echo=None)


def test_a_resume_asks_the_endpoint_it_recorded_not_one_openai_base_url_names(search, tmp_path):
    """A run started with --base-url A, killed, resumed in a shell whose OPENAI_BASE_URL names
    another endpoint B (set for another tool): it asks A, and says so; --base-url B asks B."""
    from promptclimb.agent.cli import cli

    with FakeLLM(responder=responder) as other:
        def run(*extra):
            args = ["search", "--dataset", "toy", "--iterations", "2", "--resets", "1", "--pool-sample", "4",
                    "--search", "template", "--runs-dir", str(search.runs), "--name", "ep", "--no-cache", *extra]
            return CliRunner().invoke(cli, args, obj=FACTORY, env={"OPENAI_API_KEY": KEY,
                                                                   "OPENAI_BASE_URL": other.base_url})

        assert run("--base-url", search.fake.base_url).exit_code == 0
        history = search.runs / "ep" / "history.jsonl"
        lines = history.read_text().splitlines(keepends=True)
        first_answer = next(i for i, line in enumerate(lines) if '"llm_exchange"' in line)
        history.write_text("".join(lines[:first_answer]))  # killed before its first answer was recorded
        (search.runs / "ep" / "summary.json").unlink()
        asked_a = len(search.fake.requests)
        resumed = run("--resume", "ep")
        assert resumed.exit_code == 0, resumed.output
        assert len(search.fake.requests) > asked_a and not other.requests
        assert f"note: OPENAI_BASE_URL is set; the run asks the LLM endpoint it recorded ({search.fake.base_url})" \
            in resumed.output
        history.write_text("".join(lines[:first_answer]))
        (search.runs / "ep" / "summary.json").unlink()
        assert run("--resume", "ep", "--base-url", other.base_url).exit_code == 0
        assert other.requests


def test_soft_prompt_options_are_ignored_alike_at_start_and_on_resume(search):
    """The LLM search does not read the craft/cbbt knobs: said once at start, and again on
    resume rather than refused (its config.json records none of them); --queries is refused
    both times with the same message."""
    result = search("--craft-popsize", "5", "--prompt-tokens", "2")
    assert result.exit_code == 0, result.output
    warning = ("warning: the LLM search (--optimizer llm) does not use --prompt-tokens, --craft-popsize "
               "(craft and cbbt options): ignored")
    assert result.output.count(warning) == 1
    assert "soft_prompt" not in config(search)
    again = search("--craft-popsize", "5", "--prompt-tokens", "2", "--resume", "run")
    assert again.exit_code == 0, again.output
    assert again.output.count(warning) == 1
    start = search("--queries", "40", name="other")
    resume = search("--queries", "40", "--resume", "run")
    for refused in (start, resume):
        one_line_error(refused, "--queries is the budget of --optimizer craft|cbbt")


def test_a_names_turn_option_with_search_template_is_said_and_ignored_alike_on_resume(search):
    """--search template takes no names turn: --names-k and --guard given to it are said in one
    warning and ignored, recorded at their defaults, and a resume with them (with or without
    --search again) is warned the same way, not refused as a change of the run's settings."""
    result = search("--names-k", "5", "--guard", "off")
    assert result.exit_code == 0, result.output
    warning = "warning: --search template takes no names turn, so it does not use --names-k, --guard: ignored"
    assert result.output.count(warning) == 1
    recorded = config(search)["search"]
    assert (recorded["names_k"], recorded["guard"]) == (3, "own+judge")
    killed_before_turn(search, 1)
    for again in (search("--names-k", "5", "--guard", "off", "--resume", "run"),
                  search("--names-k", "5", "--guard", "off", "--resume", "run", "--search", "template")):
        assert again.exit_code == 0, again.output
        assert again.output.count(warning) == 1
    both = search("--names-k", "5", "--search", "both", name="both")  # read there: recorded, nothing said
    assert both.exit_code == 0, both.output
    assert "does not use" not in both.output and config(search, "both")["search"]["names_k"] == 5


def test_a_template_turn_option_with_search_both_of_one_turn_a_reset_is_said_and_ignored(search):
    """--search both takes its template turn last in a reset of two turns or more: with
    --iterations 1 it takes none, and --top-k / --proposals given are said and ignored."""
    one = search("--search", "both", "--top-k", "2", "--proposals", "3", name="one")
    assert one.exit_code == 0, one.output
    assert one.output.count("warning: --search both with --iterations 1 takes no template turn, so it does not use "
                            "--proposals, --top-k: ignored") == 1
    assert (config(search, "one")["search"]["top_k"], config(search, "one")["search"]["proposals"]) == (3, 5)
    two = search("--search", "both", "--iterations", "2", "--top-k", "2", name="two")  # read there
    assert two.exit_code == 0, two.output
    assert "does not use" not in two.output and config(search, "two")["search"]["top_k"] == 2


META = Path(__file__).resolve().parent.parent / "prompts" / "meta"
META_WARNING = "warning: the meta-prompt changed since this run started: "


def killed_before_the_second_turn(search, name="run") -> None:
    """The run folder as a kill after the first LLM turn leaves it."""
    killed_before_turn(search, 2, name=name)


def killed_before_turn(search, turn: int, event: str = "llm_exchange", name: str = "run") -> list[dict]:
    """The run folder as a kill after LLM turn `turn` - 1 (of kind `event`) leaves it; the
    turns recorded."""
    history = search.runs / name / "history.jsonl"
    lines = history.read_text().splitlines()
    turns = [i for i, line in enumerate(lines) if json.loads(line)["event"] == event]
    history.write_text("\n".join(lines[:turns[turn - 1]]) + "\n")
    (search.runs / name / "summary.json").unlink()
    return [json.loads(lines[i]) for i in turns[:turn - 1]]


def meta_warnings(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith(META_WARNING)]


@pytest.fixture
def meta(tmp_path):
    """A --meta-prompt folder: ours, copied (the feedback turn and a names file)."""
    folder = tmp_path / "meta"
    folder.mkdir()
    for name in ("feedback_turn.j2", "names_turn.j2"):
        shutil.copy(META / name, folder / name)
    return folder


def test_a_resume_with_an_edited_meta_prompt_says_which_file_once_and_asks_with_the_new_text(search, meta):
    """It went on silently: the turns after the kill were asked with the edited text."""
    first = search("--iterations", "2", "--meta-prompt", str(meta))
    assert first.exit_code == 0, first.output
    # the files a template search renders, each as it was read: the folder's, else ours
    started = config(search)["meta_prompt_sha256"]
    assert sorted(started) == ["feedback_turn.j2", "first_turn.j2", "system.j2"]
    assert all(re.fullmatch("[0-9a-f]{64}", digest) for digest in started.values())
    assert meta_warnings(first) == []
    killed_before_the_second_turn(search)
    (meta / "feedback_turn.j2").write_text((meta / "feedback_turn.j2").read_text() + "\nEDITED-TEXT\n")
    asked = len(search.fake.requests)
    again = search("--iterations", "2", "--meta-prompt", str(meta), "--resume", "run")
    assert again.exit_code == 0, again.output
    [warning] = meta_warnings(again)
    assert str(meta / "feedback_turn.j2") in warning and "system.j2" not in warning
    assert any("EDITED-TEXT" in message["content"] for request in search.fake.requests[asked:]
               for message in request["messages"])  # the turn still to come: the new text, as said
    # the run's text from here on: a turn asked with it is recorded, and a later resume replays it
    # (it kept the start's, and refused that resume as asked with the old text; the old text failed it too)
    now = config(search)["meta_prompt_sha256"]
    assert now["feedback_turn.j2"] != started["feedback_turn.j2"] and {**now, "feedback_turn.j2": None} == {
        **started, "feedback_turn.j2": None}
    history = search.runs / "run" / "history.jsonl"
    lines = history.read_text().splitlines()
    turns = [i for i, line in enumerate(lines) if json.loads(line)["event"] == "llm_exchange"]
    assert any("EDITED-TEXT" in m["content"] for m in json.loads(lines[turns[-1]])["messages"])
    history.write_text("\n".join(lines[:turns[-1] + 1]) + "\n")  # killed once the edited turn was recorded
    (search.runs / "run" / "summary.json").unlink()
    asked = len(search.fake.requests)
    third = search("--iterations", "2", "--meta-prompt", str(meta), "--resume", "run")
    assert third.exit_code == 0 and meta_warnings(third) == [], third.output
    assert len(search.fake.requests) == asked  # the recorded turn replayed, not asked again


@pytest.mark.parametrize("edited, kind, turn", [
    ("system.j2", "template", 2),  # the first template turn opened its conversation with it
    ("first_turn.j2", "template", 2),
    ("feedback_turn.j2", "template", 3),  # the second template turn continued the conversation
    ("names_turn.j2", "names", 2),
    ("names_system.j2", "names", 2),
])
def test_a_resume_is_refused_before_asking_when_a_recorded_turn_used_an_edited_meta_prompt(search, meta, edited,
                                                                                           kind, turn):
    """It sent the recorded turn's request again, with the new text (a new, maybe paid, LLM
    request), then stopped in a request_key mismatch."""
    shutil.copy(META / edited, meta / edited)
    flags = ("--search", kind, "--iterations", str(turn), "--meta-prompt", str(meta))
    assert search(*flags).exit_code == 0
    event = "llm_exchange" if kind == "template" else "names_exchange"
    recorded = killed_before_turn(search, turn, event)
    if edited == "feedback_turn.j2":  # the turn recorded last is a continuation: it sent the feedback turn
        assert recorded[-1]["messages"][0]["role"] == "assistant"
    (meta / edited).write_text((meta / edited).read_text() + "\nEDITED-TEXT\n")
    history = (search.runs / "run" / "history.jsonl").read_text()
    asked = len(search.fake.requests)
    again = search(*flags, "--resume", "run")
    one_line_error(again, f"cannot resume run: the meta-prompt changed since this run started: {meta / edited};",
                   "were asked with the old text", "restore the file (e.g. from git) or start a new run")
    assert len(search.fake.requests) == asked  # nothing asked
    assert (search.runs / "run" / "history.jsonl").read_text() == history
    assert meta_warnings(again) == []


def test_a_refused_resume_names_the_other_changed_meta_prompt_files_too(search, meta):
    """system.j2 (in the recorded first turn) and feedback_turn.j2 (in none yet) both edited:
    the refusal named system.j2 only, and the resume after restoring it then warned of a
    second file the user had not been told of. The one line names both, each for what it is."""
    shutil.copy(META / "system.j2", meta / "system.j2")
    flags = ("--iterations", "2", "--meta-prompt", str(meta))
    assert search(*flags).exit_code == 0
    killed_before_the_second_turn(search)
    for name in ("system.j2", "feedback_turn.j2"):
        (meta / name).write_text((meta / name).read_text() + "\nEDITED-TEXT\n")
    said = one_line_error(search(*flags, "--resume", "run"))
    assert said == (f"Error: cannot resume run: the meta-prompt changed since this run started: {meta / 'system.j2'}; "
                    "the LLM turns recorded in its history were asked with the old text, and a resume must replay "
                    "them: restore the file (e.g. from git) or start a new run without --resume; also changed, in no "
                    "recorded turn (the turns still to come would use the new text): "
                    f"{meta / 'feedback_turn.j2'}"), said
    shutil.copy(META / "system.j2", meta / "system.j2")  # restored: the other file is the warning it was said to be
    again = search(*flags, "--resume", "run")
    assert again.exit_code == 0, again.output
    assert meta_warnings(again) == [f"{META_WARNING}{meta / 'feedback_turn.j2'}; the LLM turns still to come use "
                                    "the new text"]


def test_a_resume_is_refused_when_a_recorded_refusal_for_the_context_was_a_feedback_turn(tmp_path, meta):
    """The endpoint refused the second turn's continued conversation (feedback_turn.j2's
    message) as longer than its context, and the turn opened a new one: the history records
    that turn as opening (system.j2, first_turn.j2) with the refused request's key in
    `context_refused`, which a resume replays, so an edited feedback_turn.j2 is refused, not
    warned of, though no recorded exchange continues a conversation."""
    runs = tmp_path / "runs"
    flags = ["search", "--dataset", "toy", "--iterations", "3", "--resets", "1", "--pool-sample", "4", "--search",
             "template", "--runs-dir", str(runs), "--name", "run", "--meta-prompt", str(meta)]
    # the fake counts 10 tokens a message and 400 for the answer: the first request (2 messages)
    # fits in 430 tokens, the second turn's continued conversation (4 messages) does not
    from promptclimb.agent.cli import cli

    with FakeLLM(responder=responder, context=430) as fake:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.base_url}
        assert CliRunner().invoke(cli, flags, obj=FACTORY, env=env).exit_code == 0
        recorded = killed_before_turn(SimpleNamespace(runs=runs), 3)
        assert fake.refused == 1 and "context_refused" in recorded[1]
        assert all(e["messages"][0]["role"] == "system" for e in recorded)  # both open a conversation
        (meta / "feedback_turn.j2").write_text((meta / "feedback_turn.j2").read_text() + "\nEDITED-TEXT\n")
        asked = len(fake.requests)
        again = CliRunner().invoke(cli, [*flags, "--resume", "run"], obj=FACTORY, env=env)
        one_line_error(again, "cannot resume run: the meta-prompt changed since this run started: "
                              f"{meta / 'feedback_turn.j2'};")
        assert len(fake.requests) == asked and meta_warnings(again) == []


def test_a_resume_goes_on_silently_when_only_the_comments_of_a_recorded_meta_prompt_changed(search, meta):
    """Our meta-prompts' {# comments #} document their variables and change between versions:
    a run killed before an upgrade that only reworded them resumes, as it did before hashes."""
    shutil.copy(META / "system.j2", meta / "system.j2")
    flags = ("--iterations", "2", "--meta-prompt", str(meta))
    assert search(*flags).exit_code == 0
    killed_before_the_second_turn(search)
    text = (meta / "system.j2").read_text()
    assert "{#-" in text  # a comment to reword
    (meta / "system.j2").write_text("{# a note added #}" + text.replace("{#-", "{#- reworded:", 1))
    again = search(*flags, "--resume", "run")
    assert again.exit_code == 0, again.output
    assert meta_warnings(again) == []
    (meta / "system.j2").write_text(text.replace("You help", "You aid", 1))  # the text itself: refused
    killed_before_the_second_turn(search)
    one_line_error(search(*flags, "--resume", "run"), "cannot resume run: the meta-prompt changed")


@pytest.mark.parametrize("comment", ["after a tag", "as the last line", "on a line of its own"])
def test_a_comment_added_anywhere_in_a_recorded_meta_prompt_lets_the_run_resume(search, meta, comment):
    """The lexer hands the newline that trim_blocks drops to a comment written right after a
    tag, and a comment as the file's last line keeps the text's last newline: a note added
    there read as a changed meta-prompt, and the resume was refused."""
    shutil.copy(META / "feedback_turn.j2", meta / "feedback_turn.j2")
    flags = ("--iterations", "3", "--meta-prompt", str(meta))
    assert search(*flags).exit_code == 0
    killed_before_turn(search, 3)
    text = (meta / "feedback_turn.j2").read_text()
    lines = text.splitlines(keepends=True)
    tag = next(i for i, line in enumerate(lines) if line.rstrip().endswith("%}") and i > 0)
    noted = {"after a tag": lines[:tag] + [lines[tag].rstrip("\n") + "{# my note #}\n"] + lines[tag + 1:],
             "as the last line": lines + ["\n{# my note #}\n"],
             "on a line of its own": lines[:tag + 1] + ["{# my note #}\n"] + lines[tag + 1:]}[comment]
    (meta / "feedback_turn.j2").write_text("".join(noted))
    again = search(*flags, "--resume", "run")
    assert again.exit_code == 0, again.output
    assert meta_warnings(again) == []


def test_a_run_that_recorded_its_meta_prompt_as_hashed_before_resumes(search, meta):
    """Runs recorded the tokens less comments as they were (the newline a tag drops kept with
    it): a resume of such a run, its files unchanged, goes on silently."""
    import hashlib

    from promptclimb.agent.metaprompt import _NOT_RENDERED, MetaPrompt

    assert search("--iterations", "2", "--meta-prompt", str(meta)).exit_code == 0
    killed_before_the_second_turn(search)
    env = MetaPrompt(str(meta)).env
    config_path = search.runs / "run" / "config.json"
    config = json.loads(config_path.read_text())
    for name in config["meta_prompt_sha256"]:
        path = meta / name if (meta / name).is_file() else META / name
        tokens = [(kind, value) for _, kind, value in env.lex(path.read_text()) if kind not in _NOT_RENDERED]
        config["meta_prompt_sha256"][name] = hashlib.sha256(json.dumps(tokens).encode()).hexdigest()
    config_path.write_text(json.dumps(config))
    again = search("--iterations", "2", "--meta-prompt", str(meta), "--resume", "run")
    assert again.exit_code == 0, again.output
    assert meta_warnings(again) == []


def test_a_resume_says_nothing_of_meta_prompt_files_unchanged_or_unused(search, meta):
    assert search("--iterations", "2", "--meta-prompt", str(meta)).exit_code == 0
    killed_before_the_second_turn(search)
    (meta / "names_turn.j2").write_text("edited, but a template search never renders it")
    again = search("--iterations", "2", "--meta-prompt", str(meta), "--resume", "run")
    assert again.exit_code == 0, again.output
    assert meta_warnings(again) == []


def test_a_run_recorded_before_meta_prompt_hashes_resumes_without_a_warning(search, meta):
    assert search("--iterations", "2", "--meta-prompt", str(meta)).exit_code == 0
    killed_before_the_second_turn(search)
    old = config(search)
    del old["meta_prompt_sha256"]
    (search.runs / "run" / "config.json").write_text(json.dumps(old))
    (meta / "feedback_turn.j2").write_text((meta / "feedback_turn.j2").read_text() + "\nEDITED-TEXT\n")
    again = search("--iterations", "2", "--meta-prompt", str(meta), "--resume", "run")
    assert again.exit_code == 0, again.output
    assert meta_warnings(again) == []


def test_a_meta_prompt_hash_that_is_not_an_object_is_a_damaged_config(search):
    assert search().exit_code == 0
    (search.runs / "run" / "config.json").write_text(json.dumps({**config(search), "meta_prompt_sha256": "x"}))
    one_line_error(search("--resume", "run"), "config.json is damaged ('meta_prompt_sha256' is not an object)")


def test_a_resume_is_refused_when_a_recorded_guard_question_used_an_edited_meta_prompt(names_run, meta):
    """The guard's question (names_judge.j2) is part of the history too: a kill right after
    the first one was recorded, and the file edited."""
    shutil.copy(META / "names_judge.j2", meta / "names_judge.j2")
    flags = ("search", "--dataset", "toy", "--name", "n", *NAMES_SMALL, "--runs-dir", names_run.runs,
             "--meta-prompt", meta)
    assert names_run(*flags).exit_code == 0
    history = names_run.runs / "n" / "history.jsonl"
    lines = history.read_text().splitlines()
    judged = next(i for i, line in enumerate(lines) if json.loads(line)["event"] == "names_judge")
    history.write_text("\n".join(lines[:judged + 1]) + "\n")
    (names_run.runs / "n" / "summary.json").unlink()
    (meta / "names_judge.j2").write_text((meta / "names_judge.j2").read_text() + "\nEDITED-TEXT\n")
    kept, asked = history.read_text(), len(names_run.fake.requests)
    again = names_run(*flags, "--resume", "n")
    one_line_error(again, "cannot resume n: the meta-prompt changed since this run started: "
                          f"{meta / 'names_judge.j2'};")
    assert len(names_run.fake.requests) == asked and history.read_text() == kept


class LabelledWordEvaluator(WordEvaluator):
    """Records the data's labels beside its start names, as the CLIP evaluator does for
    start names of their own (--classnames clean or FILE)."""

    def info(self):
        info = super().info()
        info["dataset"]["labels"] = [f"label {i}" for i in range(len(self.task.classnames))]
        return info


def test_a_run_started_before_the_labels_were_recorded_resumes_without_a_warning(search, monkeypatch):
    """A run whose config.json records no labels beside its own start names (started before
    they were recorded) is resumed by an evaluator that says them: the same evaluator, not
    'not identical'; labels recorded otherwise are still told."""
    monkeypatch.setitem(FACTORY, "evaluator_factory", lambda **kw: LabelledWordEvaluator(kw["dataset"]))
    for name, recorded, warned in (("old", None, False), ("other", ["x", "y", "z"], True)):
        assert search("--iterations", "2", name=name).exit_code == 0
        killed_before_the_second_turn(search, name=name)
        saved = config(search, name)
        assert saved["evaluator"]["dataset"].pop("labels") == ["label 0", "label 1", "label 2"]
        if recorded:
            saved["evaluator"]["dataset"]["labels"] = recorded
        (search.runs / name / "config.json").write_text(json.dumps(saved))
        again = search("--iterations", "2", "--resume", name, name=name)
        assert again.exit_code == 0, again.output
        assert ("the evaluator is not identical" in again.output) == warned, again.output


def test_a_resume_with_another_model_file_is_refused_and_a_moved_copy_recorded(tmp_path):
    """`--resume RUN --llm-model OTHER.gguf` of an embedded-LLM run served the other model,
    unsaid, while config.json and `show` went on naming the first."""
    from promptclimb.agent.cli import cli

    first, other = tmp_path / "first.gguf", tmp_path / "other.gguf"
    first.write_bytes(b"GGUF\x03\x00\x00\x00" + b"one model")
    other.write_bytes(b"GGUF\x03\x00\x00\x00" + b"another model")

    def run(*extra):
        args = ["search", "--dataset", "toy", "--iterations", "1", "--resets", "1", "--pool-sample", "4",
                "--search", "template", "--runs-dir", str(tmp_path / "runs"), "--llm", "local", *extra]
        return CliRunner().invoke(cli, args, obj=FACTORY, env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})

    assert run("--name", "m", "--llm-model", first, "--max-calls", "0").exit_code == 0
    history = tmp_path / "runs" / "m" / "history.jsonl"
    kept = history.read_text()
    with RunStore.resume(tmp_path / "runs" / "m") as store:  # an answer of the first model, as a run holds one
        for event in store.stored:
            store.append(event["event"], **{k: v for k, v in event.items() if k not in ("v", "seq", "time", "event")})
        store.append("llm_exchange", restart=0, reset=0, iteration=1, call=0, messages=[], answer="a {}.")
    refused = run("--resume", "m", "--llm-model", other)
    assert f"--llm-model {other} is another model than the one m asked ({first})" in refused.output, refused.output
    history.write_text(kept)  # nothing asked of it (a file the server could not load): the other is taken
    taken = run("--resume", "m", "--llm-model", other)
    assert f"the run asks {other} (it had asked nothing of {first})" in taken.output, taken.output
    assert json.loads((tmp_path / "runs" / "m" / "config.json").read_text())["llm"]["served_model"] == "other"
    config = tmp_path / "runs" / "m" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "llm": {
        **json.loads(config.read_text())["llm"], "llm_model_file": str(first), "served_model": "first",
        "request_model": "first"}}))
    moved = tmp_path / "moved.gguf"
    first.rename(moved)
    again = run("--resume", "m", "--llm-model", moved)
    assert again.exit_code == 0, again.output
    assert f"the run's model file is now {moved} (it was {first})" in again.output
    assert json.loads((tmp_path / "runs" / "m" / "config.json").read_text())["llm"]["llm_model_file"] == str(moved)
