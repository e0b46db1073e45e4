"""How numbers and long texts are shown to people and to the LLM: one place, so the console,
`show`, the HTML report and the meta-prompts all write an accuracy the same way."""

from __future__ import annotations

import math
import re
import shlex
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


def as_text_list(values) -> list[str] | None:
    """`values` as a list of text when it is a sequence of text (a list, a tuple, a pandas
    Series, a numpy array), else None: not a set, whose order (of class names) is not kept."""
    if isinstance(values, (list, tuple)):
        listed = list(values)
    elif hasattr(values, "tolist") and not isinstance(values, (str, bytes)):
        listed = values.tolist()
        if not isinstance(listed, list):  # a numpy scalar
            return None
    else:
        return None
    return listed if all(isinstance(v, str) for v in listed) else None


def one_line(value, width: int = 80) -> str:
    """`value`'s repr on one line, shortened: a pandas Series' was 11 lines of an error."""
    return shortened(" ".join(repr(value).split()), width)
