"""From an LLM's answer to validated templates, with a reason for every line refused.

An answer is read one line at a time: numbering, bullets, quotes, code marks, and scores
and verdicts copied from the meta-prompt ("... -> 81.0%", "...  (better than ...)") are
stripped; lines that do not even mention a brace (prose such as "Here are 5 templates:")
are skipped; every other line either becomes a template or is rejected with a reason:
whatever `agent.core.templates.template_problem` refuses (`{0}`, `{name}`, `{.__class__}`,
stray or escaped braces, no or several placeholders, empty, too long) and duplicates -
exact, or equal after normalising case, whitespace and punctuation - of templates already
scored or proposed earlier in the same answer. Nothing here formats a template.

Given the class names, a template that writes a class out beside its {} ("a photo of a {},
a coat.", "a photo of a {}, your shirt.") is refused too: every class's prompt would then
name that class, and pull images toward it. Of the 8,225 LLM templates scored in the
bench folders, 549 did, and 7 runs ended on one (`a photo of a {}, a coat.`: 76.6% on test
where the same seed's template-only run reached 88.2%).

Small models often write the sentence for one class instead of the template ("a photo of a
dress with a belt"). Given the class names, such a line that names exactly one class is
turned back into a template ("a photo of a {} with a belt"): `unfill`.

A class named with a word that templates need for their grammar - one character ("A", "I"
of a letters set) or a function word ("in", "one", "on") - is told from that word only by
its spelling: it counts as written where it is spelled exactly as the class is, that
spelling is not all lower case, and it does not open a sentence. So for the class "A",
`a photo of a {}.` and `A photo of a {}.` name no class and `a {} or the letter A.` does;
the classes "a" and "in" are never recognised. Such a word is too little to turn a line
into a template, and neither is a line ending with ':' (a heading over the list).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Sequence

from promptclimb.agent.core.classnames import number_forms, sides_of
from promptclimb.agent.core.templates import MAX_TEMPLATE_CHARS, template_problem

# "1." "1)" "(1)" "#1:" "- " "* " "• " "> " at the start of a line (possibly repeated: "- 1. ")
_LEADER = re.compile(r"^\s*(?:(?:\(?#?\d{1,3}[.):]\)?|\d{1,3}\s+[-–—](?=\s)|[-*•·>–—](?=\s)|template\s*\d*\s*:)\s*)+",
                     re.IGNORECASE)
# Scores copied from the meta-prompt ("a photo of a {}.  ->  81.0%", "(81%) a ...", "a ... - 81%"):
# small models echo the "template -> score" lines they are shown.
_SCORE = r"[(\[]?\s*\d{1,3}(?:[.,]\d+)?\s*%\s*[)\]]?"
_ARROW_TAIL = re.compile(r"\s*(?:->|→|=>|⇒).*$")
# "Trouser -> jeans; chinos": a names line with an arrow for its colon (read as no line at all:
# the arrow is the meta-prompt's own "Class -> name: 61%", which a small model copies)
_ARROW_NAMES = re.compile(r"\w\s*(?:->|→|=>|⇒)\s*\w")  # on a line without ':'
_SCORE_TAIL = re.compile(r"\s*(?:[-:–—,]\s*)?" + _SCORE + r"\s*$")
_SCORE_HEAD = re.compile(r"^\s*" + _SCORE + r"\s*(?:[-:–—]\s*)?")
# A note in parentheses after two or more spaces, the shape of the verdicts the meta-prompt
# writes after a template ("a photo of a {}.  (better than the best before it, 81.0%)"):
# small models copy it, or add their own ("  (This template could be new or ...)").
_NOTE_TAIL = re.compile(r"\s{2,}\(.*$")
_QUOTES = "\"'`“”‘’«»"
_PUNCT_OR_SPACE = re.compile(r"[\s" + re.escape(string.punctuation.replace("{", "").replace("}", "")) + r"“”‘’«»…–—]+")


DUPLICATE = "duplicate of a template already scored or proposed"


def names_a_class(name: str) -> str:
    """The reason a template that writes out the class `name` is refused, as the LLM reads it."""
    return f'names the class "{name}": a class name goes only where {{}} is'


@dataclass(frozen=True)
class Rejection:
    line: str  # the candidate as cleaned (what would have been the template)
    reason: str


@dataclass
class Proposals:
    templates: list[str] = field(default_factory=list)  # valid and new, in answer order
    rejected: list[Rejection] = field(default_factory=list)
    skipped_lines: int = 0  # prose lines without any brace
    unfilled: list[str] = field(default_factory=list)  # templates recovered from filled-in lines


def normalise(template: str) -> str:
    """The duplicate key: lower case, punctuation dropped, whitespace collapsed.
    `A photo of a {}.` and `a photo of a {}` share it."""
    return _PUNCT_OR_SPACE.sub(" ", template.lower()).strip()


# A reasoning model (DeepSeek-R1, Qwen3 behind Ollama or vLLM) writes its thinking before the
# answer, in <think>...</think>; its lines read like proposals ("Trouser: hmm, maybe shorts"),
# and were scored, and a name from them kept. Some servers drop the opening tag; an answer
# cut at --max-answer-tokens ends inside the block.
_TAGS = r"(?:think|thinking|reasoning)"
_REASONING = re.compile(rf"<{_TAGS}>.*?</{_TAGS}>", re.IGNORECASE | re.DOTALL)
_UNCLOSED = re.compile(rf"<{_TAGS}>.*\Z", re.IGNORECASE | re.DOTALL)
_UNOPENED = re.compile(r"\A.*</think>", re.IGNORECASE | re.DOTALL)  # up to the last one left


def without_reasoning(answer: str) -> str:
    """An answer without a reasoning model's thinking: what it gives as its answer. Whole
    blocks go first; then what is left before a closing tag (its opening one dropped, or a
    block nested in another) and after an opening one (cut inside the block)."""
    return _UNCLOSED.sub("", _UNOPENED.sub("", _REASONING.sub("", answer)))


def why_nothing_read(answer: str, kind: str = "template", cut_from: int = 0) -> str:
    """Why an answer gave nothing to score or refuse, as the search says it live and `show`
    afterwards (`kind`: a "template" or a "names" turn's; `cut_from`: the characters it had
    when a cap cut it, `Answer.truncated_from`)."""
    if not answer.strip() and cut_from:  # not "empty": the LLM wrote a line too long for the cap
        return f"the answer was cut at the answer cap inside its first line: none of its {cut_from:,} characters kept"
    if not answer.strip():
        return "the answer was empty"
    if not without_reasoning(answer).strip():
        return "the answer was all reasoning (<think>): was it cut by --max-answer-tokens, a new run's setting?"
    if kind == "template":
        return "no line had a {} placeholder"
    if any(":" not in line and _ARROW_NAMES.search(line) for line in without_reasoning(answer).splitlines()):
        return "names written 'Class -> name', not 'Class: name; name'"
    return "no 'Class: name; name' line"


def numbering_ends(line: str, within: int = 24) -> list[int]:
    """Where list numbering or bullets at `line`'s start may end (0 first: none), as
    `clean_line` strips them: a line may start with a class named like a list number."""
    return [0] + [p for p in range(1, min(len(line), within) + 1) if _LEADER.fullmatch(line[:p])]


def clean_line(line: str) -> str:
    """One answer line without list numbering, bullets, copied scores, surrounding quotes or code marks."""
    text = line.strip()
    text = _LEADER.sub("", text).strip()
    text = _ARROW_TAIL.sub("", text)
    text = _SCORE_HEAD.sub("", _SCORE_TAIL.sub("", text)).strip()
    # Strip matching wrappers repeatedly: `"a photo of a {}."` or **`...`**, and the comma after
    # a quoted item of a list written as code (`"a photo of a {}.",`: a coding model's habit)
    for _ in range(3):
        text = text.strip()
        if len(text) >= 3 and text[-1] in ",;" and text[-2] in _QUOTES and text[0] in _QUOTES:
            text = text[:-1]
        if text.startswith("**") and text.endswith("**") and len(text) >= 4:
            text = text[2:-2]
        elif len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1]
        else:
            break
    return text.strip()


# English function words: a class named with one (the "in", "on", "off" of a commands set) is
# the word a template needs for its grammar, not a mention of that class.
FUNCTION_WORDS = frozenset("""
    a an the i me my we us our you your he him his she her it its they them their this that these those
    what which who whom whose one some any all each every no not nor yes so as if or and but than then
    there here be is am are was were been being do does did have has had can could will would shall should
    may might must of in on at to for from by with without about above below over under up down out off
    into onto upon through across after before between near per via like unlike""".split())


def word_like(name: str) -> bool:
    """Whether the class name is also a word templates are written with: one character, or a function word."""
    return len(name) == 1 or name.lower() in FUNCTION_WORDS


def _opens_sentence(text: str, start: int) -> bool:
    before = text[:start].rstrip()
    return not before or before[-1] in ".!?:"


@dataclass(frozen=True)
class Mention:
    text: str  # as the line writes it
    start: int
    end: int
    word: bool  # a word-like class name (see `word_like`)


@dataclass(frozen=True)
class ClassPattern:
    names: re.Pattern | None  # names that are not words: any case, plural endings
    words: re.Pattern | None  # word-like names spelled with a capital or a non-letter: only as spelled

    def mentions(self, text: str) -> list[Mention]:
        """Where `text` writes a class's name, in order: the one rule for refusing and unfilling."""
        found = []
        if self.names:
            found += [Mention(m.group(0), m.start(), m.end(), False) for m in self.names.finditer(text)]
        if self.words:
            # A capital opening a sentence is grammar ("A photo of a {}."), not the letter.
            found += [Mention(m.group(0), m.start(), m.end(), True) for m in self.words.finditer(text)
                      if not _opens_sentence(text, m.start())]
        return sorted(found, key=lambda f: f.start)


def class_pattern(classnames: Sequence[str]) -> ClassPattern | None:
    """Any one class name as a whole word, in the plural or the singular ("boot" for a class
    named "boots": `number_forms`), longest first ("T-shirt" before "shirt"), case-insensitive;
    a word-like name (`word_like`) only as the class spells it, where that is not all lower
    case (the "a" of `a photo of a {}.` is not the class "a" or "A"). A name written with '/'
    names each of its sides too: "a photo of a {}, a t-shirt." names the class "T-shirt/top"
    (two bench runs had ended on that template)."""
    spellings = {part.strip() for c in classnames for part in (c, *sides_of(c))} - {""}
    forms = {form for name in spellings for form in number_forms(name)}
    words = {form for form in forms if word_like(form)}
    names = sorted(forms - words, key=len, reverse=True)
    # All lower case, a word-like name is indistinguishable from the word; no plural endings,
    # which would make "As" and "Is" the letters A and I; an apostrophe after is "I'm", "I'd".
    spelled = sorted((w for w in words if not w.islower()), key=len, reverse=True)
    if not names and not spelled:
        return None
    return ClassPattern(
        names=re.compile(rf"(?<![\w-])(?:{'|'.join(map(re.escape, names))})(?:s|es)?(?![\w-])", re.IGNORECASE)
        if names else None,
        words=re.compile(rf"(?<![\w-])(?:{'|'.join(map(re.escape, spelled))})(?![\w'’-])") if spelled else None)


def unfill(line: str, pattern: ClassPattern | None) -> str | None:
    """`line` with its one class name replaced by {}, or None when it names no class or
    several (then it is prose, or a sentence about two classes), when that name is word-like
    (a letter or "one" is as likely a count or a word), or when the line ends with ':' (it
    introduces the list: "Here are five templates for a coat classifier:")."""
    if pattern is None or line.rstrip().endswith(":"):
        return None
    found = pattern.mentions(line)
    if len(found) != 1 or found[0].word:
        return None
    return line[: found[0].start] + "{}" + line[found[0].end:]


def parse_proposals(answer: str, already_scored: set[str] | dict[str, object] = frozenset(),
                    max_chars: int = MAX_TEMPLATE_CHARS, classnames: Sequence[str] = (),
                    unfill_lines: bool = True) -> Proposals:
    """Valid new templates in `answer`, plus every refused candidate with its reason.

    `already_scored` is a collection of normalised keys (see `normalise`) of templates
    already scored anywhere in the run. With `classnames`, a template that names a class
    beside its {} is refused, and (unless `unfill_lines` is off) a line without braces that
    names exactly one class becomes a template (see `unfill`).
    """
    out = Proposals()
    seen = set(already_scored)
    pattern = class_pattern(classnames)
    for raw in without_reasoning(answer or "").splitlines():
        if not raw.strip() or raw.strip().startswith("```"):
            continue
        raw = _NOTE_TAIL.sub("", raw)
        if "{" not in raw and "}" not in raw:
            recovered = unfill(clean_line(raw), pattern) if unfill_lines else None
            if recovered is None:
                out.skipped_lines += 1
                continue
            raw = recovered
            out.unfilled.append(recovered)
        line = clean_line(raw)
        problem = template_problem(line, max_chars=max_chars)
        named = pattern.mentions(line.replace("{}", " ")) if pattern is not None and problem is None else []
        if named:
            problem = names_a_class(named[0].text)
        if problem is None:
            key = normalise(line)
            if key in seen:
                problem = DUPLICATE
            else:
                seen.add(key)
        if problem:
            out.rejected.append(Rejection(line=line[: max_chars + 20], reason=problem))
        else:
            out.templates.append(line)
    return out
