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
