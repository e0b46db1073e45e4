"""The meta-prompts: jinja2 templates in `prompts/meta/`, overridable with `--meta-prompt DIR`.

Three files make a conversation: `system.j2`, `first_turn.j2` (the opening user message)
and `feedback_turn.j2` (each later user message, after the LLM's templates were scored).
A names turn (`--search names|both`, agent/names.py) is `names_system.j2` and
`names_turn.j2`; the drift guard asks `names_judge.j2`. A user folder may hold any subset; missing files fall back to ours. The variables
each file receives are listed in its opening comment: a template's or a name's `value` is
what the run ranks by (--metric, agent/ranking.py) and `metric_label` says what that is;
values are 0..1, and `| pct` shows them as "61.2%".
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.format import pct
from promptclimb.agent.core.paths import prompts_dir
from promptclimb.agent.core.protocol import Task

FILES = ("system.j2", "first_turn.j2", "feedback_turn.j2", "names_system.j2", "names_turn.j2", "names_judge.j2")


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
        except Exception as exc:  # noqa: BLE001 - a user's template runs its own code ({{ 1 / 0 }}), may not be UTF-8
            raise PromptclimbError(f"meta-prompt {name}: {type(exc).__name__}: {exc}") from None

    def system(self, task: Task, n: int) -> str:
        return self.render("system.j2", task=task, n=n)

    def first_turn(self, task: Task, n: int, metric_label: str, top: list[dict], bottom: list[dict]) -> str:
        return self.render("first_turn.j2", task=task, n=n, metric_label=metric_label, top=top, bottom=bottom)

    def feedback_turn(self, task: Task, n: int, metric_label: str, results: list[dict], rejected: list[dict],
                      best: dict, top: list[dict], bottom: list[dict]) -> str:
        return self.render("feedback_turn.j2", task=task, n=n, metric_label=metric_label, results=results,
                           rejected=rejected, best=best, top=top, bottom=bottom)

    def names_system(self, task: Task, n: int, k: int) -> str:
        return self.render("names_system.j2", task=task, n=n, k=k)

    def names_turn(self, task: Task, n: int, metric_label: str, template: str, best: float, classes: list[dict],
                   asked: list[str], results: list[dict], rejected: list[dict], hidden: int = 0) -> str:
        return self.render("names_turn.j2", task=task, n=n, metric_label=metric_label, template=template, best=best,
                           classes=classes, asked=asked, results=results, rejected=rejected, hidden=hidden)

    def names_judge(self, task: Task, classes: list[str], proposed: str) -> str:
        return self.render("names_judge.j2", task=task, classes=classes, proposed=proposed)
