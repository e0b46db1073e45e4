"""promptclimb: black-box prompt search for CLIP-like models, with a chat LLM as the optimizer.

The Python API (the `promptclimb` commands are built on the same functions)::

    import promptclimb

    result = promptclimb.search(dataset="fashion-mnist", shots=1)    # any `search` option as a keyword
    result.best, result.accuracy["test"], result.run_dir
    run = promptclimb.load_run(result.run_dir)                         # pandas frames: run.scores(), ...
    promptclimb.evaluate(["a photo of a {}."], dataset="fashion-mnist")  # a DataFrame
    promptclimb.transfer(run, backbone="ViT-B-16", pretrained="openai")  # a DataFrame

Each function's docstring says more (`help(promptclimb.search)`); the README has examples.
Bad input raises `promptclimb.PromptclimbError` with a readable message.

The repository root is the installed package `promptclimb`; its folders are its
sub-packages: `promptclimb.agent` (the search, the LLM client, the run folder, the CLI and
the API behind these names), `promptclimb.evaluators` (CLIP scoring; the only side that
imports torch) and `promptclimb.prompts` (meta-prompts and template pools, text only).
`import promptclimb` is light: the API is loaded on first use, and torch and pandas only
when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> the module that defines it (imported on first use)
_API = {
    "search": "promptclimb.agent.api",
    "SearchResult": "promptclimb.agent.api",
    "evaluate": "promptclimb.agent.api",
    "load_run": "promptclimb.agent.api",
    "transfer": "promptclimb.agent.api",
    "PromptclimbError": "promptclimb.agent.core.errors",
}
__all__ = list(_API)

if TYPE_CHECKING:  # for editors and type checkers; at run time `__getattr__` loads them
    from promptclimb.agent.api import SearchResult, evaluate, load_run, search, transfer
    from promptclimb.agent.core.errors import PromptclimbError


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'promptclimb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
