"""The meta-prompts: jinja2 templates in `prompts/meta/`, overridable with `--meta-prompt DIR`.

Three files make a conversation: `system.j2`, `first_turn.j2` (the opening user message)
and `feedback_turn.j2` (each later user message, after the LLM's templates were scored).
A user folder may hold any subset of them; missing files fall back to ours. The variables
each file receives are listed in its opening comment. Accuracies are 0..1; `| pct` shows
them as "61.2%".
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from promptclimb.agent.errors import PromptclimbError
from promptclimb.agent.format import pct
from promptclimb.agent.paths import prompts_dir
from promptclimb.agent.protocol import Task

FILES = ("system.j2", "first_turn.j2", "feedback_turn.j2")


class MetaPrompt:
    def __init__(self, directory: str | Path | None = None):
        search = [str(prompts_dir() / "meta")]
        if directory is not None:
            directory = Path(directory).expanduser()
            if not directory.is_dir():
                raise PromptclimbError(f"--meta-prompt: {directory} is not a folder")
            if not any((directory / name).is_file() for name in FILES):
                raise PromptclimbError(f"--meta-prompt: {directory} holds none of {', '.join(FILES)}")
            search.insert(0, str(directory))
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(search),
            undefined=jinja2.StrictUndefined,  # a typo in a user's template fails loudly
            trim_blocks=True,
            keep_trailing_newline=False,
            autoescape=False,
        )
        self.env.filters["pct"] = pct

    def render(self, name: str, **context) -> str:
        try:
            return self.env.get_template(name).render(**context).strip()
        except jinja2.TemplateError as exc:
            where = getattr(exc, "filename", None) or name
            raise PromptclimbError(f"meta-prompt {where}: {exc}") from None

    def system(self, task: Task, n: int) -> str:
        return self.render("system.j2", task=task, n=n)

    def first_turn(self, task: Task, n: int, metric: str, top: list[dict], bottom: list[dict]) -> str:
        return self.render("first_turn.j2", task=task, n=n, metric=metric, top=top, bottom=bottom)

    def feedback_turn(self, task: Task, n: int, metric: str, results: list[dict], rejected: list[dict],
                      best: dict, top: list[dict], bottom: list[dict]) -> str:
        return self.render("feedback_turn.j2", task=task, n=n, metric=metric, results=results,
                           rejected=rejected, best=best, top=top, bottom=bottom)
