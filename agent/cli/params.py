"""click types for the options that the search's table (agent/options.py) bounds, shared by
every command that takes one (search, eval and adapt all take --seed; search, eval and
transfer --backbone, --pretrained and --weights; every command that reads runs --runs-dir;
`llm serve` --llm-model)."""

from __future__ import annotations

import click

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.options import Option, check_value, range_text


class LongBoundInt(click.IntRange):
    """An integer with a maximum too long to read in the help: --seed's 2**64 - 1 (torch's
    64-bit seeds) had made every help show `[0<=x<=18446744073709551615]`. The help shows the
    minimum only (`[x>=0]`, click's own range text); a value out of the range, below or above,
    is refused in click's one line, in the words the API and a TOML table use (`range_text`):
    `18446744073709551616 is not in the range 0<=x<2**64.`, and `-1` in the same words (click's
    own `x>=0` had said the range otherwise)."""

    def __init__(self, minimum: int, maximum: int):
        super().__init__(min=minimum)
        self.maximum = maximum

    def convert(self, value, param, ctx):
        number = click.INT.convert(value, param, ctx)  # the bounds are checked here, not by IntRange
        if number < self.min or number > self.maximum:
            self.fail(f"{number} is not in the range {range_text(self.min, self.maximum)}.", param, ctx)
        return number


def table_int(option: Option) -> click.ParamType:
    """The click type of an integer row of the table: its bounds, if any, as click checks
    them (the table stays their one source)."""
    if option.maximum is not None:
        return LongBoundInt(option.minimum, option.maximum)
    if option.minimum is not None:
        return click.IntRange(min=option.minimum)
    return click.INT


class TableText(click.ParamType):
    """Text, a file or a folder (the row's kind "name", "device", "path" or "dir") checked as
    the table's row checks it (`check_value`), so that the command line refuses what the API
    and a --config file refuse, in their words: `--backbone ''` had run the default backbone,
    and `--runs-dir ''` had been the current folder, unsaid."""

    FOLDER = click.Path(file_okay=False)  # a file in the way of a folder: said in click's words, as before

    def __init__(self, option: Option):
        self.option = option
        # the metavar: PATH, DIRECTORY or TEXT, as before
        self.name = {"path": "path", "dir": self.FOLDER.name}.get(option.kind, "text")

    def shell_complete(self, ctx, param, incomplete):
        if self.option.kind in ("path", "dir"):  # file or folder names, as click.Path completes them
            kind = "file" if self.option.kind == "path" else "dir"
            return [click.shell_completion.CompletionItem(incomplete, type=kind)]
        return super().shell_complete(ctx, param, incomplete)

    def convert(self, value, param, ctx):
        try:
            value = check_value(self.option, value, "")
        except PromptclimbError as exc:
            self.fail(str(exc), param, ctx)
        return self.FOLDER.convert(value, param, ctx) if self.option.kind == "dir" else value
