"""The one place that checks and fills prompt templates.

A template is a string with exactly one plain `{}` where the class name goes. Anything else
`str.format` would interpret (`{0}`, `{name}`, `{.__class__}`, `{!r}`, `{:>10}`, escaped
`{{`/`}}`, stray braces) is refused, so a template from an LLM is never formatted before
it has passed `template_problem`.
"""

from __future__ import annotations

import string
from typing import Sequence

from promptclimb.agent.core.errors import PromptclimbError

MAX_TEMPLATE_CHARS = 200
BASELINE = "a photo of a {}."  # the template every CLIP paper starts from: the reference in tables and plots


class TemplateError(ValueError):
    pass


def template_problem(template: str, max_chars: int = MAX_TEMPLATE_CHARS) -> str | None:
    """Why `template` is not a valid template, or None when it is."""
    if not isinstance(template, str) or not template.strip():
        return "empty template"
    if len(template) > max_chars:
        return f"longer than {max_chars} characters"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"stray brace ({exc})"
    fields = [(name, spec, conv) for _, name, spec, conv in parts if name is not None]
    if any("{" in text or "}" in text for text, *_ in parts):
        return "escaped braces ({{ or }}) are not allowed"
    if not fields:
        return "no {} placeholder for the class name"
    if len(fields) > 1:
        return f"{len(fields)} placeholders; exactly one {{}} is allowed"
    name, spec, conv = fields[0]
    if name or spec or conv:
        shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        return f"placeholder {shown} is not a plain {{}}"
    return None


def check_template(template: str) -> str:
    """`template`, or a TemplateError saying what is wrong with it."""
    problem = template_problem(template)
    if problem:
        raise TemplateError(f"invalid template {template!r}: {problem}")
    return template


def check_templates(templates: Sequence[str]) -> list[str]:
    """`templates` as a list, or PromptclimbError naming the first bad one and why: the one
    check of templates a user gives (`promptclimb eval --prompt`, the Python API, the scorer)."""
    templates = list(templates)
    if not templates:
        raise PromptclimbError("no template given")
    for t in templates:
        problem = template_problem(t)
        if problem:
            too_long = isinstance(t, str) and t.strip() and len(t) > MAX_TEMPLATE_CHARS  # all else: the {}
            shown = t if not isinstance(t, str) or len(t) <= 80 else t[:79] + "…"  # a 400-character one was quoted whole
            raise PromptclimbError(f"invalid template {shown!r}: {problem}"
                                   + ("" if too_long else " (use exactly one {} for the class name)"))
    return templates


def check_typed_templates(templates: Sequence[str]) -> list[str]:
    """`check_templates` for templates a user types (`eval --prompt`, `evaluate()`): one with a
    line break or tab broke eval's table. Not for a run's own or a pool's (a run that recorded
    one is read and scored again as it was)."""
    templates = check_templates(templates)
    for t in templates:
        if any(ord(c) < 32 for c in t):
            raise PromptclimbError(f"invalid template {t!r}: a line break, tab or other control character in it")
    return templates


def fill(template: str, classname: str) -> str:
    """The text for one class. Only ever called on checked templates."""
    return check_template(template).format(classname)
