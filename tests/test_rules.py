"""The cheap rules that catch what a small local teacher does: copy a sentence of its own prompt
(`copied_example`, against `template_examples`) and say one sentence twice (`repeated_sentence`).

The copied sentence is the one SmolLM2-135M returned on `make demo`: web_shopping's own
instruction example, word for word.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rationale.prompts import PromptTemplate, load_template, shipped_templates
from rationale.rules import (
    DEFAULT_RULES,
    RulesConfig,
    check_rules,
    template_examples,
    template_rules,
)

#: What the local teacher answered on `make demo`, copied from prompts/web_shopping.jinja.
DEMO_COPY = (
    "I want to find a comfortable piece of clothing, so I'm looking for options with high ratings."
)
#: A light paraphrase of it: "I am" for "I'm", "good" for "high".
PARAPHRASE = DEMO_COPY.replace("I'm", "I am").replace("high", "good")
HONEST = (
    "The reviews say the strap broke within a month, so I'd rather compare two sturdier bags first."
)
ACTION = {"type": "click", "name": "product.buy_now"}
NEW_RULES = ("copied_example", "repeated_sentence")


def _failed(rationale: str, examples: tuple[str, ...] = (), **thresholds: float) -> list[str]:
    """The names of the new rules that reject ``rationale``."""
    reasons = check_rules(
        rationale, ACTION, NEW_RULES, RulesConfig(**thresholds), examples=examples
    )
    return [r.split(":")[0] for r in reasons]


@pytest.fixture(scope="module")
def shopping() -> tuple[str, ...]:
    return template_examples(load_template("web_shopping"))


def test_the_demo_copy_of_the_instruction_example_is_rejected(shopping: tuple[str, ...]) -> None:
    assert _failed(DEMO_COPY, shopping) == ["copied_example"]
    reason = check_rules(DEMO_COPY, ACTION, NEW_RULES, examples=shopping)[0]
    assert "comfortable piece of clothing" in reason  # the reason shows what was copied


@pytest.mark.parametrize(
    "copy",
    [
        DEMO_COPY.lower().replace(",", "").replace("'", "").rstrip("."),
        PARAPHRASE,
        "  " + DEMO_COPY.upper().replace(",", " --").replace(".", "!!  "),
        DEMO_COPY.replace("'", "’"),
        # A copy with a tail: the copied sentence is caught on its own.
        DEMO_COPY + " The blue one is on sale.",
        # The four think-aloud examples are copied too.
        "Summer is coming and my cotton shirts are too warm, so I'm looking for a linen one!",
        "These lamps all cost more than I wanted to spend so I will stop here and look again "
        "another day.",
    ],
)
def test_a_near_duplicate_of_a_template_example_is_rejected(
    copy: str, shopping: tuple[str, ...]
) -> None:
    assert _failed(copy, shopping) == ["copied_example"]


@pytest.mark.parametrize(
    "honest",
    [
        HONEST,
        "I want a linen shirt for the summer, so I search for one.",
        "I want to find a warm winter coat, so I'm looking at the ones with a hood.",
        "I stop here because none of these kettles fit under my cabinet.",
        "I want to see the reviews before I decide.",
    ],
)
def test_an_honest_rationale_is_accepted(honest: str, shopping: tuple[str, ...]) -> None:
    assert _failed(honest, shopping) == []


@pytest.mark.parametrize(
    "repeated",
    [
        "I want to check the reviews. I want to check the reviews.",
        "I want to check the reviews.\nI want to check the reviews.",
        "I want the cheaper pack. It fits my budget. i want the CHEAPER pack!",
        # Near-duplicates: one word more.
        "I want to compare the prices first. I want to compare the prices first now.",
    ],
)
def test_a_sentence_said_twice_is_rejected(repeated: str) -> None:
    assert _failed(repeated) == ["repeated_sentence"]


@pytest.mark.parametrize(
    "different",
    [
        "I want the cheaper pack. It fits my budget.",
        "I want the blue one. I want the red one.",  # alike in form, not the same thought
        HONEST,
    ],
)
def test_two_different_sentences_pass(different: str) -> None:
    assert _failed(different) == []


def test_the_thresholds_come_from_rules_config(shopping: tuple[str, ...]) -> None:
    assert _failed(PARAPHRASE, shopping) == ["copied_example"]
    assert _failed(PARAPHRASE, shopping, copied_example_similarity=1.0) == []
    assert _failed(DEMO_COPY.upper(), shopping, copied_example_similarity=1.0) == ["copied_example"]
    looser = "I want to find comfortable clothing so I look for options with high ratings."
    assert _failed(looser, shopping) == []
    assert _failed(looser, shopping, copied_example_similarity=0.7) == ["copied_example"]

    near = "I want to compare the prices first. I want to compare all the prices first."
    assert _failed(near, repeated_sentence_similarity=1.0) == []
    assert _failed("I do it. i do it!", repeated_sentence_similarity=1.0) == ["repeated_sentence"]
    alike = "I want the blue one. I want the red one."
    assert _failed(alike, repeated_sentence_similarity=0.75) == ["repeated_sentence"]
    with pytest.raises(ValueError):
        RulesConfig(copied_example_similarity=0)
    with pytest.raises(ValueError):
        RulesConfig(repeated_sentence_similarity=1.5)


def test_without_examples_copied_example_has_nothing_to_compare() -> None:
    assert _failed(DEMO_COPY) == []


def _no_render(*args: object, **kwargs: object) -> None:
    raise AssertionError("template_examples must not render the template")


@pytest.mark.parametrize("name", sorted(shipped_templates()))
def test_every_shipped_template_has_examples_that_cannot_be_copied(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = load_template(name)
    monkeypatch.setattr(PromptTemplate, "render", _no_render)
    examples = template_examples(template)
    assert examples, name
    rules = tuple(dict.fromkeys(template_rules(template) + NEW_RULES))
    for example in examples:
        reasons = check_rules(example, ACTION, rules, examples=examples)
        assert "copied_example" in [r.split(":")[0] for r in reasons], (name, example)
    assert check_rules(HONEST, ACTION, rules, examples=examples) == [], name


@pytest.mark.parametrize("name", ["web_shopping", "generic"])
def test_the_teacher_templates_declare_the_new_rules(name: str) -> None:
    assert set(NEW_RULES) <= set(template_rules(load_template(name)))


@pytest.mark.parametrize(
    "first_line", ["", "{# mine: a template of my own, with no rules line. #}\n"]
)
def test_templates_that_declare_no_rules_get_the_new_rules(tmp_path: Path, first_line: str) -> None:
    path = tmp_path / "mine.jinja"
    body = "{% block system %}Say why.{% endblock %}\n{% block user %}{{ context }}{% endblock %}\n"
    path.write_text(first_line + body)
    rules = template_rules(load_template(path))
    assert set(NEW_RULES) <= set(rules)
    assert rules == DEFAULT_RULES
    # a template that declares its rules gets those only
    path.write_text("{# mine: my own.\n   rules: empty too_short #}\n" + body)
    assert template_rules(load_template(path)) == ("empty", "too_short")


def test_examples_come_from_the_static_text_and_includes_only(tmp_path: Path) -> None:
    (tmp_path / "_examples.jinja").write_text(
        'Example: {"rationale": "I need a charger that works with my old phone."}\n'
    )
    (tmp_path / "mine.jinja").write_text(
        "{# mine: a comment sentence that no prompt shows. #}\n"
        "{% block system %}Write why the person did it, in one short sentence.\n"
        '{% include "_examples.jinja" %}{% endblock %}\n'
        "{% block user %}{{ instruction }} and {{ context }}{% endblock %}\n"
        "{% block assistant_prefix %}I want to{% endblock %}\n"
    )
    examples = template_examples(load_template(tmp_path / "mine.jinja"))
    assert "Write why the person did it, in one short sentence." in examples
    assert "I need a charger that works with my old phone." in examples  # from the include
    assert not any("comment" in e or "instruction" in e or "I want to" in e for e in examples)
    assert _failed("I need a charger that works with my old phone!", examples) == ["copied_example"]


def test_a_clause_said_again_inside_another_sentence_is_a_repeat() -> None:
    """The demo's accepted loop: the second sentence repeats the first one's clause."""
    looped = (
        "I want to add a new item to my cart, but I'm not sure what that item is. "
        "I'm not sure what the item is."
    )
    reasons = check_rules(looped, ACTION, ("repeated_sentence",))
    assert reasons and reasons[0].startswith("repeated_sentence:")
    honest = (
        "I want to add the green shirt to my cart. "
        "The cheapest one is first, so I open it to check the size."
    )
    assert check_rules(honest, ACTION, ("repeated_sentence",)) == []
    short = "I want a shirt. I want it cheap."  # a short shared phrase is no loop
    assert check_rules(short, ACTION, ("repeated_sentence",)) == []
