"""The meta-prompts: jinja2 templates in `prompts/meta/`, overridable with `--meta-prompt DIR`.

Three files make a conversation: `system.j2`, `first_turn.j2` (the opening user message)
and `feedback_turn.j2` (each later user message, after the LLM's templates were scored).
A names turn (`--search names|both`, agent/names.py) is `names_system.j2` and
`names_turn.j2`; the drift guard asks `names_judge.j2`. A user folder may hold any subset; missing files fall back to ours. The variables
each file receives are listed in its opening comment: a template's or a name's `value` is
what the run ranks by (--metric, agent/ranking.py) and `metric_label` says what that is;
values are 0..1, and `| pct` shows them as "61.2%".

A run records the SHA-256 of each file its search renders (`fingerprint`, in config.json
as `meta_prompt_sha256`): a resume that reads other text says so, and is refused where a
recorded LLM turn was asked with the old text (`files_recorded`, agent/pipeline.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jinja2

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.files import sha256_of
from promptclimb.agent.core.format import pct
from promptclimb.agent.core.paths import prompts_dir
from promptclimb.agent.core.protocol import Task

_NOT_RENDERED = ("comment_begin", "comment", "comment_end", "whitespace")  # jinja's lexer tokens


def rendered_alike(tokens: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A template's lexer tokens as two files that render alike have them: without comments;
    without the newline that trim_blocks drops after a tag (the lexer gives it to the tag, or
    to a comment written after it: `{% endfor %}{# note #}`); text that a comment split, as
    one; and the text's ends as `render` strips them (a comment as the file's last line)."""
    kept: list[list[str]] = []
    for kind, value in tokens:
        if kind in _NOT_RENDERED:
            continue
        if kind == "block_end":
            value = value.rstrip("\r\n")
        if kind == "data" and kept and kept[-1][0] == "data":
            kept[-1][1] += value
        else:
            kept.append([kind, value])
    if kept and kept[0][0] == "data":
        kept[0][1] = kept[0][1].lstrip()
    if kept and kept[-1][0] == "data":
        kept[-1][1] = kept[-1][1].rstrip()
    return [(kind, value) for kind, value in kept if kind != "data" or value]


# A run records its files' hashes (`text_hashes`); these are those of earlier versions of ours, each
# with the hash of the version after it that renders every turn they rendered byte for byte: it
# only adds a branch their turns never reached. A run started with the earlier one resumes without
# a refusal or a warning. names_turn.j2: the sentence after an answer cut to nothing (`cut`); a run
# whose history holds such an answer asks its next names turn anew, and the resume ends there as
# after any changed rule.
RENDERS_AS_BEFORE = {
    "names_turn.j2": dict.fromkeys(
        ("524e06344df2a7534dcd9206ea67a3054bde370c6f19994bff707211cbce0ae5",
         "cc4103477a67d7a3a43fe9ac66baad2282e6ab42da9505142d8656318a178411"),
        "68ad3c2d6ddaccff3779ed00941f06239dae48b4ab9709487f2904e7861ad978"),
    # the same sentence at the end of first_turn.j2 (the template turn after such an answer)
    "first_turn.j2": dict.fromkeys(
        ("52f3493f768694b6ade9a89e05c90b52cdf321e9c9f20b8230ee1bf16750a86d",
         "eb5b19a3966bf663d3c49055b5be7895f08ebe12a9480c40234a4dec6d75b908"),
        "318c67b7760e0081ce11f79770e1006d738c7025283f9e25ecd17f253825337f"),
}

FILES = ("system.j2", "first_turn.j2", "feedback_turn.j2", "names_system.j2", "names_turn.j2", "names_judge.j2")
TEMPLATE_FILES = FILES[:3]  # the template turns' conversation; the names turns and the guard add the rest


def files_rendered(search: str) -> tuple[str, ...]:
    """The files a search of kind `search` (--search: template, names, both) renders."""
    return TEMPLATE_FILES if search == "template" else FILES


def files_recorded(events) -> set[str]:
    """The files whose text is part of a request that the history's LLM answers (`events`)
    were given for: a resume replays those requests, so their text must be the same. A
    template turn that opens a conversation records its system message (`system.j2`, then
    `first_turn.j2`); a later one records the answer before it and `feedback_turn.j2`'s
    message, and so did the request refused as too long (`context_refused`) before a turn
    that opened a new conversation; a names turn is `names_system.j2` and `names_turn.j2`,
    a guard question `names_judge.j2` (agent/search.py `new_conversation`, `names_messages`,
    `ask_judge`)."""
    files = set()
    for e in events:
        if e.get("event") == "llm_exchange":
            opens = any(m.get("role") == "system" for m in e.get("messages") or [])
            files |= {"system.j2", "first_turn.j2"} if opens else {"feedback_turn.j2"}
            if e.get("context_refused"):
                files.add("feedback_turn.j2")
        elif e.get("event") == "names_exchange":
            files |= {"names_system.j2", "names_turn.j2"}
        elif e.get("event") == "names_judge":
            files.add("names_judge.j2")
    return files


def template_line(exc: BaseException) -> tuple[str, int] | None:
    """The .j2 file and line an error was raised at while it rendered (jinja maps its code's
    frames to the template's lines: an {% include %}d file's own), or None."""
    import traceback

    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename.endswith(".j2")]
    return (frames[-1].filename, frames[-1].lineno) if frames else None


class MetaPrompt:
    def __init__(self, directory: str | Path | None = None):
        search = [str(prompts_dir() / "meta")]
        if directory is not None:
            directory = Path(directory).expanduser()
            if not directory.is_dir():
                raise PromptclimbError(f"--meta-prompt: {directory} is not a folder")
            if not any((directory / name).is_file() for name in FILES):
                raise PromptclimbError(f"--meta-prompt: {directory} holds none of {', '.join(FILES)}")
            for name in FILES:  # missing falls back to ours; empty would send an empty message, unsaid
                if (directory / name).is_file() and not (directory / name).read_bytes().strip():
                    raise PromptclimbError(f"--meta-prompt: {directory / name} is empty (remove it to use ours)")
            search.insert(0, str(directory))
        # .j2 files in the folder that are none of ours: a misspelt name (feedback.j2) is not
        # read, and ours is used in its place; or a file the others {% include %}
        self.stray = sorted(p.name for p in Path(directory).glob("*.j2") if p.name not in FILES) if directory else []
        self.folders = [Path(folder) for folder in search]
        self.env = jinja2.Environment(
            # utf-8-sig: a BOM a Windows editor wrote was sent as the message's first character
            loader=jinja2.FileSystemLoader(search, encoding="utf-8-sig"),
            undefined=jinja2.StrictUndefined,  # a typo in a user's template fails loudly
            trim_blocks=True,
            keep_trailing_newline=False,
            autoescape=False,
        )
        self.env.filters["pct"] = pct

    def path(self, name: str) -> Path:
        """The file `name` is read from: the --meta-prompt folder's, else ours (as the loader finds it)."""
        return next(folder / name for folder in self.folders if (folder / name).is_file())

    def fingerprint(self, names: tuple[str, ...]) -> dict[str, str]:
        """The SHA-256 of each of the files `names` as they are read now (`text_hash`)."""
        return {name: self.text_hash(self.path(name)) for name in names}

    def text_hash(self, path: Path) -> str:
        """The SHA-256 of what a file renders from: its template tokens as `rendered_alike`
        keeps them (no {# comments #}, no spaces inside its tags). Our own files' comments
        document their variables and change between versions; a resume must not be refused
        over them (a changed file a recorded turn used is, agent/pipeline.py). A file jinja
        cannot read: its bytes'."""
        return self.text_hashes(path)[0]

    def text_hashes(self, path: Path) -> tuple[str, ...]:
        """`text_hash`, then the hash a run recorded before it (the tokens less comments as
        they were, the newline a tag drops kept with it): either one recorded is this text."""
        try:
            text = path.read_text(encoding="utf-8")
            # read as rendered, without a BOM (an editor that adds or drops one changes nothing sent);
            # as read before, with it: a run that recorded such a file resumes
            texts = dict.fromkeys([text.removeprefix("\ufeff"), text])
            lexed = [[(kind, value) for _, kind, value in self.env.lex(t)] for t in texts]
        except (jinja2.TemplateSyntaxError, UnicodeDecodeError):
            return (sha256_of(path),)
        return tuple(hashlib.sha256(json.dumps(kept).encode()).hexdigest() for tokens in lexed
                     for kept in (rendered_alike(tokens), [t for t in tokens if t[0] not in _NOT_RENDERED]))

    def changed_since(self, recorded) -> list[Path]:
        """The files whose text differs from the `fingerprint` a run recorded (none recorded:
        a run from before fingerprints, which resumes as it did)."""
        if not recorded:
            return []
        return [self.path(name) for name in FILES if name in recorded and not self.reads_as(name, recorded[name])]

    def reads_as(self, name: str, recorded: str) -> bool:
        """Whether file `name` as read now renders what a run that recorded hash `recorded` of it
        rendered: the same text, or a later version of ours that renders alike (RENDERS_AS_BEFORE)."""
        hashes = self.text_hashes(self.path(name))
        return recorded in hashes or RENDERS_AS_BEFORE.get(name, {}).get(recorded) in hashes

    def render(self, name: str, **context) -> str:
        try:
            text = self.env.get_template(name).render(**context).strip()
        except jinja2.TemplateError as exc:
            # a syntax error knows its file and line; an undefined name, found while rendering, only the traceback
            where, line = (exc.filename, exc.lineno) if getattr(exc, "lineno", None) else \
                template_line(exc) or (getattr(exc, "filename", None) or self.path(name), None)
            raise PromptclimbError(f"meta-prompt {where}{f' line {line}' if line else ''}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise PromptclimbError(f"meta-prompt {self.path(name)}: not UTF-8 text ({exc.reason} at byte "
                                   f"{exc.start}): save it as UTF-8") from None
        except Exception as exc:  # noqa: BLE001 - a user's template runs its own code ({{ 1 / 0 }})
            where, line = template_line(exc) or (self.path(name), None)
            raise PromptclimbError(f"meta-prompt {where}{f' line {line}' if line else ''}: "
                                   f"{type(exc).__name__}: {exc}") from None
        if not text:  # every branch of a user's file skipped: the LLM was sent an empty message
            raise PromptclimbError(f"meta-prompt {self.path(name)}: rendered an empty message for this turn "
                                   "(each of its {% if %} branches left out?): the LLM would be asked nothing")
        return text

    def system(self, task: Task, n: int) -> str:
        return self.render("system.j2", task=task, n=n)

    def first_turn(self, task: Task, n: int, metric_label: str, top: list[dict], bottom: list[dict],
                   cut: dict | None = None) -> str:
        return self.render("first_turn.j2", task=task, n=n, metric_label=metric_label, top=top, bottom=bottom, cut=cut)

    def feedback_turn(self, task: Task, n: int, metric_label: str, results: list[dict], rejected: list[dict],
                      best: dict, top: list[dict], bottom: list[dict]) -> str:
        return self.render("feedback_turn.j2", task=task, n=n, metric_label=metric_label, results=results,
                           rejected=rejected, best=best, top=top, bottom=bottom)

    def names_system(self, task: Task, n: int, k: int) -> str:
        return self.render("names_system.j2", task=task, n=n, k=k)

    def names_turn(self, task: Task, n: int, metric_label: str, template: str, best: float, classes: list[dict],
                   asked: list[str], results: list[dict], rejected: list[dict], hidden: int = 0,
                   cut: dict | None = None) -> str:
        return self.render("names_turn.j2", task=task, n=n, metric_label=metric_label, template=template, best=best,
                           classes=classes, asked=asked, results=results, rejected=rejected, hidden=hidden, cut=cut)

    def names_judge(self, task: Task, classes: list[str], proposed: str) -> str:
        return self.render("names_judge.j2", task=task, classes=classes, proposed=proposed)
