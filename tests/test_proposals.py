"""promptclimb.agent.proposals: from an LLM answer to validated templates, with reasons for the rest."""

from promptclimb.agent.proposals import clean_line, normalise, parse_proposals


def test_numbering_bullets_and_quotes_are_stripped():
    answer = "\n".join([
        "1. a photo of a {}.",
        "2) 'a sketch of a {}'",
        "(3) \"a drawing of the {}.\"",
        "- a {} on a table",
        "* `a close-up of a {}`",
        "• **a product shot of a {}**",
        "Template 7: a {} seen from above",
    ])
    parsed = parse_proposals(answer)
    assert parsed.templates == [
        "a photo of a {}.", "a sketch of a {}", "a drawing of the {}.", "a {} on a table",
        "a close-up of a {}", "a product shot of a {}", "a {} seen from above",
    ]
    assert parsed.rejected == []


def test_scores_copied_from_the_meta_prompt_are_stripped():
    # What Qwen2.5-Coder-1.5B answered when shown "template  ->  81.0%" lines.
    answer = "\n".join([
        "a picture of my {}.  ->  81.0%",
        "a photo of someone in a {}.  ->  87.0%  ->  92.0%, better than the best before it (92.0%)",
        "(83.5%) a product photo of a {}.",
        "4. \"a studio photo of a {}.\" - 84%",
        "a {} made of 100% cotton.",
    ])
    parsed = parse_proposals(answer, already_scored={normalise("a picture of my {}.")})
    assert parsed.templates == ["a photo of someone in a {}.", "a product photo of a {}.",
                                "a studio photo of a {}.", "a {} made of 100% cotton."]
    assert [(r.line, r.reason) for r in parsed.rejected] == [
        ("a picture of my {}.", "duplicate of a template already scored or proposed")]


def test_notes_copied_after_a_template_are_stripped():
    # What Qwen2.5-Coder-1.5B wrote after the feedback's "template  (verdict)" lines (the
    # bench's histories); a parenthesis one space after the text is the template's own.
    answer = "\n".join([
        "A photo of a {} with a unique logo or brand mark.  (better than the best before it, 90.0%, but worse on "
        "held-out images, val cross-entropy 0.673 vs 0.532: not kept)",
        "A close-up photo of the {}.  (This template could be new or repeat an existing one but should have a good "
        "description to stand out)  (as good as the best before it",
        "a high-resolution picture of the {}.  (even more accurate)",
        "a photo of a {} (a type of clothing).",
    ])
    assert parse_proposals(answer).templates == [
        "A photo of a {} with a unique logo or brand mark.", "A close-up photo of the {}.",
        "a high-resolution picture of the {}.", "a photo of a {} (a type of clothing)."]


def test_a_template_that_names_a_class_beside_its_placeholder_is_refused():
    # Templates Qwen2.5-Coder-1.5B wrote on the bench; `a photo of a {}, a coat.` ended a run at 76.6%.
    classes = ["T-shirt/top", "Trouser", "Coat", "boots", "jeans"]
    answer = "\n".join([
        "a photo of a {}, a coat.",
        "a boot with a {} on it.",
        "a photo of a {}, your Coats.",
        "an item of clothing, anything from T-shirt/top to {}.",
        "A photo of a {}, a pair of Boots",
        "a photo of {} in jeans",
        "a photo of a {}, a type of clothing.",
        "a photo of a {} on a coatrack",
        "a photo of a trouser with pleats",
    ])
    parsed = parse_proposals(answer, classnames=classes)
    assert parsed.templates == ["a photo of a {}, a type of clothing.", "a photo of a {} on a coatrack",
                                "a photo of a {} with pleats"]
    assert [r.reason for r in parsed.rejected] == [
        'names the class "coat": a class name goes only where {} is',
        'names the class "boot": a class name goes only where {} is',
        'names the class "Coats": a class name goes only where {} is',
        'names the class "T-shirt/top": a class name goes only where {} is',
        'names the class "Boots": a class name goes only where {} is',
        'names the class "jeans": a class name goes only where {} is']
    assert parse_proposals(answer).rejected == []  # without class names nothing is known to refuse


def test_each_side_of_a_class_name_written_with_a_slash_names_that_class():
    # `a photo of a {}, a t-shirt.` ended two bench runs: the check knew only "T-shirt/top" whole.
    classes = ["T-shirt/top", "Trouser", "Bag"]
    answer = "\n".join([
        "a photo of a {}, a t-shirt.",
        "a photo of someone wearing a {} top.",
        "a photo of a {}, two T-shirts",
        "a photo of a {} on a tabletop",
        "a photo of a t-shirt with a pocket",
    ])
    parsed = parse_proposals(answer, classnames=classes)
    assert parsed.templates == ["a photo of a {} on a tabletop", "a photo of a {} with a pocket"]
    assert [r.reason for r in parsed.rejected] == [
        'names the class "t-shirt": a class name goes only where {} is',
        'names the class "top": a class name goes only where {} is',
        'names the class "T-shirts": a class name goes only where {} is']


def test_a_class_named_with_a_letter_is_not_the_article_or_a_capital_opening_a_sentence():
    # An ASL alphabet's classes: every template with "a" was refused as naming the class "A".
    classes = ["A", "B", "C", "I", "space"]
    answer = "\n".join([
        "1. a photo of a {}.",
        "2. a close-up photo of the {}.",
        "3. the sign for the letter {}.",
        "4. A dark photo of a {}. A hand.",
        "5. a {} as I'd sign it.",
        "6. a {}, as in As and Is",
        "7. a photo of a {}, not the letter B.",
        "8. a hand signing {} (like A)",
        "9. a photo of a {} in space.",
    ])
    parsed = parse_proposals(answer, classnames=classes)
    assert parsed.templates == ["a photo of a {}.", "a close-up photo of the {}.", "the sign for the letter {}.",
                                "A dark photo of a {}. A hand.", "a {} as I'd sign it.", "a {}, as in As and Is"]
    assert [r.reason for r in parsed.rejected] == [
        'names the class "B": a class name goes only where {} is',
        'names the class "A": a class name goes only where {} is',
        'names the class "space": a class name goes only where {} is']


def test_a_class_named_with_a_lower_case_function_word_is_never_taken_for_it():
    # "in", "one", "on" are the grammar of templates; the classes "a" and "one" cannot be told from them.
    answer = "a photo of one {} in a box.\na photo of a {} on a table.\nOne {} from above."
    parsed = parse_proposals(answer, classnames=["a", "in", "one", "ones", "on", "left"])
    assert parsed.templates == ["a photo of one {} in a box.", "a photo of a {} on a table.", "One {} from above."]
    assert [r.reason for r in parse_proposals("a {} on the left", classnames=["on", "left"]).rejected] == [
        'names the class "left": a class name goes only where {} is']


def test_a_letter_or_a_heading_is_not_turned_into_a_template():
    # The prose line became `Here are five new templates for {} classifier:` and was scored.
    classes = ["A", "B", "C", "I", "space"]
    answer = "\n".join([
        "Here are five new templates for a classifier:",
        "Templates for the sign for space:",
        "a photo of the letter A.",
        "I think these are good.",
        "a photo of a hand signing space",
        "A close-up of a hand signing space",
        "a photo of the letter B in space",
    ])
    parsed = parse_proposals(answer, classnames=classes)
    assert parsed.templates == ["a photo of a hand signing {}", "A close-up of a hand signing {}"]
    assert parsed.unfilled == parsed.templates and parsed.rejected == [] and parsed.skipped_lines == 5
    # A heading naming a class that is no word is no template either.
    assert parse_proposals("Here are templates for a coat classifier:", classnames=["Coat"]).templates == []


def test_prose_lines_and_code_fences_are_skipped_not_rejected():
    parsed = parse_proposals("Sure! Here are 2 templates:\n```\na photo of a {}.\n```\nHope this helps.")
    assert parsed.templates == ["a photo of a {}."]
    assert parsed.skipped_lines == 2 and parsed.rejected == []


def test_hostile_lines_are_rejected_with_reasons():
    answer = "\n".join([
        "{0} photo", "a {name} photo", "{.__class__}", "{0.__globals__}", "a photo of {} and {}",
        "a {{}} photo", "a } photo {}", "{!r} x", "{:>99999}", "x" * 300 + " {}",
    ])
    parsed = parse_proposals(answer)
    assert parsed.templates == []
    reasons = {r.line: r.reason for r in parsed.rejected}
    assert len(parsed.rejected) == 10
    assert "not a plain {}" in reasons["{0} photo"]
    assert "not a plain {}" in reasons["{.__class__}"]
    assert "2 placeholders" in reasons["a photo of {} and {}"]
    assert "escaped braces" in reasons["a {{}} photo"]
    assert "stray brace" in reasons["a } photo {}"]
    assert any("longer than" in r for r in reasons.values())


def test_duplicates_exact_and_normalised_are_rejected():
    already = {normalise("a photo of a {}.")}
    parsed = parse_proposals("A Photo of a {}!\na photo  of a {}\nan image of a {}\nAn image of a {}.", already)
    assert parsed.templates == ["an image of a {}"]
    assert [r.reason for r in parsed.rejected] == ["duplicate of a template already scored or proposed"] * 3


def test_normalise_keeps_the_placeholder_and_words():
    assert normalise("  A  Photo, of a {}!! ") == "a photo of a {}"
    assert normalise("a photo of a {}") != normalise("a photo of the {}")


def test_empty_and_missing_answers_give_nothing():
    for answer in ("", "   \n\n", None):
        parsed = parse_proposals(answer)
        assert parsed.templates == [] and parsed.rejected == []


def test_clean_line_takes_a_dashed_number_and_a_quoted_list_items_comma_off():
    """`4 - a studio shot of a {}.` kept `4 - `; `"a studio photo of a {}.",` its quotes and comma."""
    assert clean_line("4 - a studio shot of a {}.") == "a studio shot of a {}."
    assert clean_line('"a studio photo of a {}.",') == "a studio photo of a {}."
    assert clean_line("  'a {} in the wild';") == "a {} in the wild"
    assert clean_line("4 -legged {} photo") == "4 -legged {} photo"  # no space after the dash: words
    assert clean_line('a "{}", up close') == 'a "{}", up close'


def test_clean_line_leaves_inner_text_alone():
    assert clean_line("3. a '{}' shaped object") == "a '{}' shaped object"
    assert clean_line("- 12 photos of a {}") == "12 photos of a {}"


def test_a_reasoning_models_thinking_is_not_read_as_templates():
    """A prose line of the thinking that names one class ("The Trouser class seems weak") was
    turned into a template and scored."""
    answer = ("<think>\nOkay, the user wants templates. The Trouser class seems weak.\n"
              "Maybe 'a photo of the weird {}.'\n</think>\na studio photo of a {}.\na close-up of a {}.")
    parsed = parse_proposals(answer, classnames=["Trouser", "Dress"])
    assert parsed.templates == ["a studio photo of a {}.", "a close-up of a {}."]
    assert parsed.rejected == [] and parsed.unfilled == []
    assert parse_proposals("<THINKING>a photo of a {}.", classnames=["Trouser"]).templates == []  # cut inside it


def test_reasoning_nested_unopened_or_cut_leaves_the_answer():
    from promptclimb.agent.proposals import without_reasoning

    assert without_reasoning("<think>a<think>b</think>c</think>\na photo of a {}.").strip() == "a photo of a {}."
    assert without_reasoning("Hmm, a {}? </think>\na photo of a {}.").strip() == "a photo of a {}."
    assert without_reasoning("a photo of a {}.\n<think>more thoughts").strip() == "a photo of a {}."
    assert without_reasoning("a {} with </reasoning> in it") == "a {} with </reasoning> in it"  # no block: text
    assert without_reasoning("a photo of a {}.") == "a photo of a {}."
