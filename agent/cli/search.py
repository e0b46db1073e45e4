"""`promptclimb search`: parse the options, call `agent.pipeline.run_search`, print.

The options are built from the one table in agent/options.py, grouped into help panels
(essentials first); `--config FILE.toml` supplies any of them from a `[search]` table (the
one a sweep grid file uses), and the command line overrides the file. The evaluator
factory comes from click's context object (`obj={"evaluator_factory": ...}`): how tests and
embedding programs put their own evaluator behind the command.
"""

from __future__ import annotations

import json

import rich_click as click
from click.core import ParameterSource

from promptclimb.agent import options as option_table
from promptclimb.agent.cli.errors import user_errors
from promptclimb.agent.cli.params import TableText, table_int
from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.options import FROM_FILE, GIVEN, PANELS, SEARCH_OPTIONS, Option, said_from_file

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


class NamesType(click.ParamType):
    """--classnames: text on the command line; from --config, a TOML list of the names
    themselves, already checked (`options.names_value`), which click's text type would turn
    into the text of a Python list."""

    name = "text"

    def convert(self, value, param, ctx):
        return value if isinstance(value, tuple) else str(value)


NAMES = NamesType()


def click_option(option: Option, default=None, help: str | None = None):
    """One table row as a click option (`default` and `help` override the table's, e.g. for a
    sweep)."""
    kind = option.kind
    extra: dict = {}
    declared = option.flag
    if kind is bool:
        # with its opposite (--no-cache/--cache): `no-cache = true` in a --config file could not be
        # undone on the command line
        declared = f"{option.flag}/{opposite_flag(option.flag)}"
    elif kind is int:
        extra["type"] = table_int(option)
    elif kind is float:
        extra["type"] = click.FloatRange(min=option.minimum, max=option.maximum) \
            if option.minimum is not None or option.maximum is not None else float
    elif kind in ("name", "path", "dir", "device"):
        extra["type"] = TableText(option)
    elif isinstance(kind, tuple):
        extra["type"] = click.Choice(kind)
    elif kind == "optional":
        extra.update(is_flag=False, flag_value="")
    elif kind == "names":
        extra["type"] = NAMES
    value = option.default if default is None else default
    return click.option(declared, option.name, default=value, multiple=option.multiple, metavar=option.metavar,
                        # `is`, not `in`: 0 == False, and --seed's default 0 went unshown
                        help=help or option.help, show_default=not (value is None or value is False or value == ()),
                        **extra)


def opposite_flag(flag: str) -> str:
    """The flag that turns a boolean option off: --no-cache's is --cache, --json's --no-json."""
    return f"--{flag[len('--no-'):]}" if flag.startswith("--no-") else f"--no-{flag[2:]}"


def table_options(skip: frozenset | set = frozenset(), helps: dict | None = None):
    """A decorator adding every table option not in `skip` (by name), in table order; `helps`
    (by name) says what an option does in this command where the search's text would not."""
    def decorate(command):
        for option in reversed(SEARCH_OPTIONS):
            if option.name not in skip:
                command = click_option(option, help=(helps or {}).get(option.name))(command)
        return command
    return decorate


def help_panels(command_name: str, first: list[str] = (), skip: set = frozenset()) -> list[dict]:
    """rich-click's option panels for a command built from the table: the table's panels in
    order, with the command's own options (`first`) heading the essentials."""
    panels = {name: [] for name in PANELS}
    for option in SEARCH_OPTIONS:
        if option.name not in skip:
            panels[option.panel].append(option.flag)
    panels[PANELS[0]] = [*first, *panels[PANELS[0]], "--help"]
    return [{"name": name, "options": flags} for name, flags in panels.items() if flags]


CONFIG_FILES = "promptclimb.config_files"  # ctx.meta: option name -> the --config file that set it


def load_config_file(ctx: click.Context, param, paths):
    """--config FILE.toml (repeatable: a later file overrides an earlier one; all but the last
    were dropped, unsaid): each [search] table becomes the options' defaults (the command line
    still overrides them). Runs before the other options are read (is_eager)."""
    for path in paths:
        try:
            given = option_table.read_config_file(path)
        except PromptclimbError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
        by_keyword = option_table.BY_KEYWORD
        ctx.default_map = {**(ctx.default_map or {}), **{by_keyword[k].name: v for k, v in given.items()}}
        ctx.meta.setdefault(CONFIG_FILES, {}).update({by_keyword[k].name: path for k in given})
        if "grid" in option_table.read_toml(path, "--config"):  # a sweep's grid file: its grid was passed over, unsaid
            click.echo(f"note: --config {path}: its [grid] table is for `promptclimb sweep NAME --grid {path}`; "
                       "a search reads its [search] table only", err=True)
    return paths


config_option = click.option("--config", type=click.Path(dir_okay=False), multiple=True, is_eager=True,
                             expose_value=False, callback=load_config_file,
                             help="A TOML file whose [search] table sets any of these options by long name, "
                             "max-calls = 3 or max_calls = 3 (the command line overrides it; repeat it for several "
                             "files, a later one overriding an earlier one). A relative path in it is read from the "
                             "current folder, as on the command line.")

click.rich_click.OPTION_GROUPS["promptclimb search"] = help_panels("search", ["--config"])
click.rich_click.OPTION_GROUPS["search"] = click.rich_click.OPTION_GROUPS["promptclimb search"]


@click.command("search", context_settings=CONTEXT)
@config_option
@table_options()
@click.pass_context
@user_errors
def search_cmd(ctx: click.Context, **opts):
    """Search for the best prompt for a CLIP-like model, with a chat LLM as the optimizer.

    \b
    Examples:
      promptclimb search --dataset fashion-mnist --shots 1
      OPENAI_API_KEY=... promptclimb search --dataset eurosat --shots 4 --llm gpt-4o-mini
      promptclimb search --config my-search.toml
      promptclimb search --resume 20250101-120000-eurosat-4shot
    """
    from promptclimb.agent.pipeline import run_search

    if not opts["dataset"] and opts["resume"] is None:  # a usage error (exit 2), as click's missing options are
        raise click.UsageError("--dataset is required (or --resume RUN)", ctx)
    # typed, or set by --config: compared with a resumed run's settings even at their defaults
    opts[GIVEN] = frozenset(name for name in opts if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT))
    opts[FROM_FILE] = {name: path for name, path in ctx.meta.get(CONFIG_FILES, {}).items()
                       if ctx.get_parameter_source(name) == ParameterSource.DEFAULT_MAP}  # not typed over
    echo = (lambda msg: click.echo(msg, err=True)) if opts["as_json"] else click.echo
    factory = (ctx.obj or {}).get("evaluator_factory") if isinstance(ctx.obj, dict) else None
    try:
        # how to go on after Ctrl-C: on stderr, as errors are (`| tee log` dies with the same Ctrl-C)
        summary = run_search(opts, echo, evaluator_factory=factory, stopped=lambda msg: click.echo(msg, err=True))
    except PromptclimbError as exc:
        raise said_from_file(exc, opts[FROM_FILE])
    if opts["as_json"]:
        click.echo(json.dumps(summary, indent=2))
