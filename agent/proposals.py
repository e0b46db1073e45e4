"""From an LLM's answer to validated templates, with a reason for every line refused.

An answer is read one line at a time: numbering, bullets, quotes, code marks and scores
copied from the meta-prompt ("... -> 81.0%") are stripped; lines that do not even mention
a brace (prose such as "Here are 5 templates:") are skipped; every other line either
becomes a template or is rejected with a reason: whatever
`agent.templates.template_problem` refuses (`{0}`, `{name}`, `{.__class__}`, stray or
escaped braces, no or several placeholders, empty, too long) and duplicates - exact, or
equal after normalising case, whitespace and punctuation - of templates already scored or
proposed earlier in the same answer. Nothing here formats a template.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

from promptclimb.agent.templates import MAX_TEMPLATE_CHARS, template_problem

# "1." "1)" "(1)" "#1:" "- " "* " "• " "> " at the start of a line (possibly repeated: "- 1. ")
_LEADER = re.compile(r"^\s*(?:(?:\(?#?\d{1,3}[.):]\)?|[-*•·>–—](?=\s)|template\s*\d*\s*:)\s*)+", re.IGNORECASE)
# Scores copied from the meta-prompt ("a photo of a {}.  ->  81.0%", "(81%) a ...", "a ... - 81%"):
# small models echo the "template -> score" lines they are shown.
_SCORE = r"[(\[]?\s*\d{1,3}(?:[.,]\d+)?\s*%\s*[)\]]?"
_ARROW_TAIL = re.compile(r"\s*(?:->|→|=>|⇒).*$")
_SCORE_TAIL = re.compile(r"\s*(?:[-:–—,]\s*)?" + _SCORE + r"\s*$")
_SCORE_HEAD = re.compile(r"^\s*" + _SCORE + r"\s*(?:[-:–—]\s*)?")
_QUOTES = "\"'`“”‘’«»"
_PUNCT_OR_SPACE = re.compile(r"[\s" + re.escape(string.punctuation.replace("{", "").replace("}", "")) + r"“”‘’«»…–—]+")


@dataclass(frozen=True)
class Rejection:
    line: str  # the candidate as cleaned (what would have been the template)
    reason: str


@dataclass
class Proposals:
    templates: list[str] = field(default_factory=list)  # valid and new, in answer order
    rejected: list[Rejection] = field(default_factory=list)
    skipped_lines: int = 0  # prose lines without any brace


def normalise(template: str) -> str:
    """The duplicate key: lower case, punctuation dropped, whitespace collapsed.
    `A photo of a {}.` and `a photo of a {}` share it."""
    return _PUNCT_OR_SPACE.sub(" ", template.lower()).strip()


def clean_line(line: str) -> str:
    """One answer line without list numbering, bullets, copied scores, surrounding quotes or code marks."""
    text = line.strip()
    text = _LEADER.sub("", text).strip()
    text = _ARROW_TAIL.sub("", text)
    text = _SCORE_HEAD.sub("", _SCORE_TAIL.sub("", text)).strip()
    # Strip matching wrappers repeatedly: `"a photo of a {}."` or **`...`**
    for _ in range(3):
        text = text.strip()
        if text.startswith("**") and text.endswith("**") and len(text) >= 4:
            text = text[2:-2]
        elif len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1]
        else:
            break
    return text.strip()


def parse_proposals(answer: str, already_scored: set[str] | dict[str, object] = frozenset(),
                    max_chars: int = MAX_TEMPLATE_CHARS) -> Proposals:
    """Valid new templates in `answer`, plus every refused candidate with its reason.

    `already_scored` is a collection of normalised keys (see `normalise`) of templates
    already scored anywhere in the run.
    """
    out = Proposals()
    seen = set(already_scored)
    for raw in (answer or "").splitlines():
        if not raw.strip() or raw.strip().startswith("```"):
            continue
        if "{" not in raw and "}" not in raw:
            out.skipped_lines += 1
            continue
        line = clean_line(raw)
        problem = template_problem(line, max_chars=max_chars)
        if problem is None:
            key = normalise(line)
            if key in seen:
                problem = "duplicate of a template already scored or proposed"
            else:
                seen.add(key)
        if problem:
            out.rejected.append(Rejection(line=line[: max_chars + 20], reason=problem))
        else:
            out.templates.append(line)
    return out
