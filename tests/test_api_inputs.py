"""Bad input to the Python API, as a notebook passes it: each is one PromptclimbError with a
readable message naming what was wrong, raised before anything is created or loaded."""

from __future__ import annotations

import pytest

import promptclimb
from test_api import SMALL, built, notebook  # noqa: F401 (fixtures)


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
    with pytest.raises(promptclimb.PromptclimbError, match=r"^load_run\(\): runs_dir 5: expected the folder"):
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
