"""How numbers and long texts are shown to people and to the LLM: one place, so the console,
`show`, the HTML report and the meta-prompts all write an accuracy the same way (and where a
progress bar is drawn: `bar_disable`)."""

from __future__ import annotations

import math
import re
import shlex
import sys
from datetime import datetime, timezone


def pct(value, decimals: int = 1) -> str:
    """A 0..1 value as a percentage with one decimal ("61.2%"; `decimals` for more, as
    `promptclimb eval`'s table); "" when it is missing (None or NaN), so tables show an
    empty cell rather than "nan%"; never "-0.0%"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    shown = round(100.0 * float(value), decimals) + 0.0  # + 0.0: a value rounded to -0 shows as 0
    return f"{shown:.{decimals}f}%"


def shots_said(shots) -> str:
    """'1 shot', '4 shots' (a count the run did not record: as given, '? shots')."""
    return f"{shots} shot" if shots == 1 else f"{'?' if shots is None else shots} shots"


def pct_by_split(values: dict) -> str:
    """Per-split values on one line: "train 61.2%  val 58.0%" (console summaries)."""
    return "  ".join(f"{split} {pct(value)}" for split, value in values.items())


def moment(when: datetime | None = None, seconds: bool = False) -> str:
    """A time as `runs` and the report write it: to the minute, with its UTC offset
    ("2025-01-01 12:00 UTC+01:00", "... UTC" at offset 0), as the run recorded it (a run's
    config.json `created`); `when` None or without a zone is now / that time on this machine's
    clock. A time without its zone is ambiguous to whoever reads it elsewhere. `seconds` for
    a log's lines ("2025-01-01 12:00:07 UTC+01:00"), where two starts may fall in one minute."""
    if when is None or when.tzinfo is None:
        when = (when or datetime.now()).astimezone()
    clock = "%H:%M:%S" if seconds else "%H:%M"
    return f"{when:%Y-%m-%d {clock}} {timezone(when.utcoffset()).tzname(None)}"


def shortened(text: str, width: int) -> str:
    """`text` cut to at most `width` characters, ending in "…" where it was cut, so a reader
    knows there is more (the run folder keeps it whole)."""
    return text if len(text) <= width else text[: width - 1] + "…"


def shell_command(*words) -> str:
    """A promptclimb command line as printed for a user to paste: every word shell-quoted, so
    that a run folder under `My Drive/runs`, or a run named `x y`, is one argument again."""
    return " ".join(shlex.quote(str(word)) for word in ("promptclimb", *words))


# What markdown reads as markup inside a line: a template or a class name holding `<b>`, `*x*`,
# `&amp;` or `[x](y)` (an LLM writes them) would show as bold, a link or `&`, not as the text
# the model was given; `|` ends a table cell. Each is written backslash-escaped.
MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]<>&|~])")


def markdown_text(text: str) -> str:
    """`text` as markdown that renders as exactly this text."""
    return MARKDOWN_INLINE.sub(r"\\\1", text)


def as_list(values) -> list | None:
    """`values` as a list when it is a sequence (a list, a tuple, a pandas Series, a numpy
    array), else None: not a set, whose order (of class names) is not kept."""
    if isinstance(values, (list, tuple)):
        return list(values)
    if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):
        listed = values.tolist()
        return listed if isinstance(listed, list) else None  # not a numpy scalar
    return None


def as_text_list(values) -> list[str] | None:
    """`values` as a list of text when it is a sequence of text (`as_list`), else None."""
    listed = as_list(values)
    return listed if listed is not None and not_text(listed) is None else None


def not_text(values) -> str | None:
    """The first item of a sequence (`as_list`) that is not text, said for a message ("the item
    at position 1 is nan (float)"): a column of 50 templates with one NaN was refused by the
    whole column's repr. None where every item is text, or `values` is no sequence."""
    for position, value in enumerate(as_list(values) or ()):
        if not isinstance(value, str):
            return f"the item at position {position} is {one_line(value, 40)} ({type(value).__name__})"
    return None


def one_line(value, width: int = 80) -> str:
    """`value`'s repr on one line, shortened: a pandas Series' was 11 lines of an error."""
    return shortened(" ".join(repr(value).split()), width)


def bar_disable(asked: bool) -> bool | None:
    """tqdm's `disable=` for a progress bar of the work a command does (encoding images, a
    sweep's cells; a download and the local model's one-time assembly are drawn everywhere, a
    log included): not drawn unless `asked`;
    drawn in a Jupyter (IPython) kernel, whose stderr is no terminal; elsewhere tqdm's None,
    drawn on a terminal and left out of a pipe or a log file. tqdm's None alone drew no bar in
    a notebook: encoding thousands of images showed nothing for minutes."""
    if not asked:
        return True
    return False if "ipykernel" in sys.modules else None
