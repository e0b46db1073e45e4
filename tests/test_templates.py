"""promptclimb.agent.core.templates: the one place that decides what a template is."""

import pytest

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.core.templates import MAX_TEMPLATE_CHARS, TemplateError, check_template, fill, template_problem


@pytest.mark.parametrize("template", [
    "a photo of a {}.", "{}", "a {} in the wild, seen from above", "itap of my {}.", "a 100% real {}!",
])
def test_valid_templates_pass(template):
    assert template_problem(template) is None
    assert fill(template, "cat") == template.replace("{}", "cat")


@pytest.mark.parametrize("template, words", [
    ("", "empty"),
    ("   ", "empty"),
    ("a photo of a cat.", "no {}"),
    ("{} and {}", "2 placeholders"),
    ("{0}", "{0}"),
    ("a photo of a {name}.", "{name}"),
    ("{.__class__}", "{.__class__}"),
    ("{0.__class__.__mro__}", "not a plain"),
    ("{!r}", "{!r}"),
    ("{:>100000}", "{:>100000}"),
    ("a {{}} photo", "escaped braces"),
    ("a {{ photo {}", "escaped braces"),
    ("a } photo {}", "stray brace"),
    ("a { photo {}", "stray brace"),
    ("x" * (MAX_TEMPLATE_CHARS + 1) + "{}", "longer than"),
])
def test_hostile_templates_are_refused_with_a_reason(template, words):
    problem = template_problem(template)
    assert problem is not None and words in problem
    with pytest.raises(TemplateError):
        fill(template, "cat")


def test_check_template_returns_valid_template_unchanged():
    assert check_template("a photo of a {}.") == "a photo of a {}."


def test_non_string_is_refused():
    assert template_problem(None) is not None  # type: ignore[arg-type]


def test_a_comment_after_a_template_in_a_pool_file_is_not_part_of_it(tmp_path):
    """`--pool FILE` said "# comments" but scored `a photo of a {}. # my note` as written; a
    `#` joined to a word is still the template's (a caption's hashtag)."""
    from promptclimb.agent.core.pools import read_pool_file

    path = tmp_path / "pool.txt"
    path.write_text("# a whole-line comment\n"
                    "a photo of a {}. # my note\n"
                    "a sketch of a {}.\t#\ttabbed note\n"
                    "a {} on a table #\n"
                    "{} #ootd\n"
                    "the {}#1 pick  # ranked\n"
                    "   # an indented comment\n")
    assert read_pool_file(path) == ["a photo of a {}.", "a sketch of a {}.", "a {} on a table", "{} #ootd",
                                    "the {}#1 pick"]
    path.write_text("# note one\n   # note two\n")
    with pytest.raises(PromptclimbError, match="holds no template"):
        read_pool_file(path)


def test_a_pool_file_saved_with_a_bom_and_crlf_reads_as_its_templates(tmp_path):
    """A BOM (Notepad's UTF-8) was read into the first template, scored as '\\ufeffa photo
    of a {}.' (a prompt other than the one written), or made a first-line comment invalid."""
    from promptclimb.agent.core.pools import read_pool_file

    path = tmp_path / "pool.txt"
    path.write_bytes("a photo of a {}.\r\na sketch of a {}.  # note\r\n".encode("utf-8-sig"))
    assert read_pool_file(path) == ["a photo of a {}.", "a sketch of a {}."]
    path.write_bytes("# my pool\r\na photo of a {}.\r\n".encode("utf-8-sig"))
    assert read_pool_file(path) == ["a photo of a {}."]
