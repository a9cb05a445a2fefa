"""Reading messy model answers as predictions: a corpus of real-looking outputs, and fuzzing."""

from __future__ import annotations

import time
from typing import Any
from unittest.mock import ANY

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rationale.predictions import MAX_SCAN, ParsedPrediction, parse_prediction
from rationale.schema import ActionSpace

SPACE = ActionSpace.default()

CLICK = {"type": "click", "name": "search.box"}
SEARCH = {"type": "type_and_submit", "name": "search.box", "text": "red shoes"}
END = {"type": "terminate"}
WHY = "I want red shoes."

# (model output, expected action or None for unparsed, expected rationale or ANY)
CORPUS: list[tuple[str, dict[str, Any] | None, Any]] = [
    # clean and fenced JSON
    (
        '{"rationale": "I want red shoes.", "action": {"type": "click", "name": "search.box"}}',
        CLICK,
        WHY,
    ),
    (
        '```json\n{"rationale": "I want red shoes.",\n "action": {"type": "terminate"}}\n```',
        END,
        WHY,
    ),
    ('```\n{"action": {"type": "click", "name": "search.box"}}\n```', CLICK, None),
    # JSON in prose, with trailing text, several objects
    (
        'Sure! Here is my answer: {"rationale": "I want red shoes.", "action": {"type": '
        '"click", "name": "search.box"}} Hope this helps.',
        CLICK,
        WHY,
    ),
    (
        '{"note": "thinking"} then {"rationale": "I want red shoes.", "action": '
        '{"type": "terminate"}}',
        END,
        WHY,
    ),
    (
        '{"rationale": "a", "action": {"type": "terminate"}} {"rationale": "b", "action": '
        '{"type": "click", "name": "x"}}',
        END,
        "a",
    ),
    (
        'Example format: {"rationale": "...", "action": {...}}\nAnswer: {"rationale": '
        '"I want red shoes.", "action": {"type": "click", "name": "search.box"}}',
        CLICK,
        WHY,
    ),
    # Python-dict style, trailing commas, raw newlines in strings
    ("{'action': {'type': 'click', 'name': 'search.box'}}", CLICK, None),
    ("{'rationale': \"I'm done here.\", 'action': {'type': 'terminate',},}", END, "I'm done here."),
    (
        '{"rationale": "I want red shoes.", "action": {"type": "click", "name": "search.box",},}',
        CLICK,
        WHY,
    ),
    (
        '{"rationale": "I want\nred shoes.", "action": {"type": "terminate"}}',
        END,
        "I want\nred shoes.",
    ),
    # bare action objects, odd keys and type names
    ('{"type": "click", "name": "search.box"}', CLICK, None),
    ('{"type": "Click", "name": "search.box"}', CLICK, None),
    ('{"type": " click ", "name": "search.box"}', CLICK, None),
    (
        '{"Rationale": "I want red shoes.", "Action": {"Type": "TYPE_AND_SUBMIT", '
        '"Name": "search.box", "Text": "red shoes"}}',
        SEARCH,
        WHY,
    ),
    (
        '{"action": {"type": "type and submit", "name": "search.box", "text": "red shoes"}}',
        SEARCH,
        None,
    ),
    ('{"action": {"type": "click", "name": "search.box", "confidence": 0.9}}', CLICK, None),
    ('{"rationale": "I want red shoes.", "action": "click", "name": "search.box"}', CLICK, WHY),
    ('{"action": "terminate"}', END, None),
    ('{"action": {"click": {"name": "search.box"}}}', CLICK, None),
    ('{"rationale": "   ", "action": {"type": "terminate"}}', END, None),
    # the action space's own words
    ("click(search.box)", CLICK, None),
    ('click("search.box")', CLICK, None),
    ('type_and_submit(search.box, "red shoes")', SEARCH, None),
    ("type_and_submit(name='search.box', text='red shoes')", SEARCH, None),
    ("type_and_submit(search.box, red shoes)", SEARCH, None),
    ('type_and_submit(search.box, "a, b")', {**SEARCH, "text": "a, b"}, None),
    ("terminate()", END, None),
    ("Terminate()", END, None),
    ("Rationale: I want red shoes.\nAction: click(search.box)", CLICK, WHY),
    ("**Rationale:** I want red shoes.\n**Action:** `terminate()`", END, WHY),
    ("Action: terminate", END, None),
    ('{"rationale": "I want red shoes.", "action": "click(search.box)"}', CLICK, WHY),
    ("I will click(`search.box`) now.", CLICK, None),
    (
        '<think>maybe {"action": {"type": "click", "name": "a"}}</think>\n'
        '{"action": {"type": "terminate"}}',
        END,
        None,
    ),
    # a cut-off answer: the object is closed for it
    ('{"rationale": "I want red shoes.", "action": {"type": "terminate"}', END, WHY),
    # unparsed
    ("", None, None),
    ("I think the person would search for shoes.", None, None),
    ('{"rationale": "I want red shoes."}', None, None),
    ('{"action": {"type": "scroll", "direction": "down"}}', None, None),
    ('{"action": {"type": "click"}}', None, None),
    ('{"action": {"type": "click", "name": "   "}}', None, None),
    ('{"action": {"type": "click", "name": 5}}', None, None),
    ("Action: scroll(down)", None, None),
    ("click(search.box", None, None),
    ('{"action": ["click", "x"]}', None, None),
    ("{{{{{{{{{{", None, None),
]

# The answer is read, not the words inside it (issue 20): the first object with an ``action``
# key is the verdict, valid or not; calls and ``Action:`` labels are read only when there is no
# such object, never inside a JSON string, never in thinking.
ANSWER_NOT_WORDS: list[tuple[str, dict[str, Any] | None, Any]] = [
    # an invalid action in the object is not rescued by the words of its rationale
    ('{"rationale":"Nothing fits, so my action: terminate","action":{"type":"leave"}}', None, None),
    ('{"rationale":"I will click(product.buy_now) now","action":{"type":"click"}}', None, None),
    ('I\'ll terminate. Action: terminate\n{"action": {"type": "leave"}}', None, None),
    # the first object with an action decides: a later one does not overrule it
    ('{"action": {"type": "scroll"}} no wait: {"action": {"type": "terminate"}}', None, None),
    ('{"action": "leave"} {"type": "terminate"}', None, None),
    # a rationale cut by the token limit, in JSON or Python style, cut in a string or a key
    ('{"rationale": "The list has nothing I want. My action: terminate since', None, None),
    ("{'rationale': 'The list has nothing I want. My action: terminate since", None, None),
    ('{"rationale": "My action: terminate", "act', None, None),
    # a call inside a string of an object without an action is data, not the answer
    ('{"rationale": "click(a.b)"}', None, None),
    ("{'rationale': 'I would click(a.b)'}", None, None),
    ('{"rationale": "I\'d click(a.b)" "action": {"type": "leave"}}', None, None),
    ('(My answer: {"rationale": "click(a.b)"}', None, None),
    # thinking is not the answer: cut inside <think>, or closed with no answer after it
    ("<think>Options: click(item.red) or", None, None),
    ("Sure. <think>Options: click(item.red) or", None, None),
    ("<think>I could click(item.red).</think>I am not sure.", None, None),
    ("<think>a</think>Hmm. <think>Action: terminate", None, None),
    # what still reads
    ('Maybe click(a.b)? No: {"action": {"type": "terminate"}} Action: click(c.d)', END, None),
    ('I\'d click(a.b).\n```json\n{"action": {"type": "terminate"}}\n```', END, None),
    ('{"type": "product", "name": "x"} {"action": "terminate"}', END, None),
    ('{"rationale": "I skip <think> tags.", "action": {"type": "terminate"}}', END, ANY),
    ('{"action": {"type": "terminate"}}\n<think>and then', END, None),
    ('{"rationale": "why" "action": "click(search.box)"}', CLICK, None),
    ('{"rationale": "x", "action": type_and_submit(search.box, "red shoes")}', SEARCH, None),
    ('{"rationale": "...", "action": "..."} {"action": {"type": "terminate"}}', END, None),
    ("Rationale: I want red shoes.\nAction: click(search.box)", CLICK, WHY),
]


@pytest.mark.parametrize(("text", "action", "rationale"), ANSWER_NOT_WORDS)
def test_the_answer_not_words_inside_it(
    text: str, action: dict[str, Any] | None, rationale: Any
) -> None:
    test_corpus(text, action, rationale)


@pytest.mark.parametrize(("text", "action", "rationale"), CORPUS)
def test_corpus(text: str, action: dict[str, Any] | None, rationale: Any) -> None:
    got = parse_prediction(text, SPACE)
    assert got.raw == text
    assert got.action == action, got.problem
    if action is None:
        assert got.status == "unparsed"
        assert got.problem and "\n" not in got.problem
        assert got.rationale is None
    else:
        assert got.status == "ok" and got.problem is None
        assert got.rationale == rationale


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"action": {"type": "scroll"}}', "is not one of click, type_and_submit, terminate"),
        ("Action: scroll(down)", "'scroll' is not one of click"),
        ('{"action": {"type": "click"}}', "click action: name"),
        ("type_and_submit(a, b)(c)", None),
        ("nothing here", "no JSON object or action call found"),
        ("x" * (MAX_SCAN + 1), "searched the first and last"),
        ('{"rationale": "my action: terminate", "action": {"type": "leave"}}', "'leave' is not"),
        ('{"rationale": "click(a.b)", "action": {"type": "click"}}', "click action: name"),
        ("<think>Options: click(item.red) or", "inside <think>"),
        ("<think>click(item.red)</think>", "nothing after </think>"),
    ],
)
def test_problem_says_why(text: str, says: str | None) -> None:
    got = parse_prediction(text, SPACE)
    if says is None:
        assert got.ok
    else:
        assert not got.ok and says in (got.problem or "")


def test_result_is_frozen() -> None:
    got = parse_prediction("terminate()", SPACE)
    assert isinstance(got, ParsedPrediction) and got.ok
    with pytest.raises(AttributeError):
        got.status = "unparsed"  # type: ignore[misc]


def test_custom_space() -> None:
    space = ActionSpace.from_declaration(
        {"action": {"scroll": {"fields": {"direction": "name"}}, "stop": {}}}
    )
    assert parse_prediction("scroll(down)", space).action == {
        "type": "scroll",
        "direction": "down",
    }
    got = parse_prediction("click(search.box)", space)
    assert not got.ok


def test_non_string_input_is_unparsed() -> None:
    got = parse_prediction(None, SPACE)  # type: ignore[arg-type]
    assert got.status == "unparsed" and got.raw == ""


def test_never_evaluates_code() -> None:
    got = parse_prediction("{'action': __import__('os').system('echo hi')}", SPACE)
    assert not got.ok


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises(text: str) -> None:
    got = parse_prediction(text, SPACE)
    assert got.status in ("ok", "unparsed") and got.raw == text


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "{",
                "}",
                '"',
                "'",
                "\\",
                ",",
                "(",
                ")",
                "click",
                "terminate()",
                "type",
                "action",
                ":",
                " ",
                "\n",
                "```",
                "</think>",
                "Action:",
                "Rationale:",
            ]
        ),
        max_size=60,
    )
)
def test_never_raises_on_json_like_noise(parts: list[str]) -> None:
    got = parse_prediction("".join(parts), SPACE)
    assert got.status in ("ok", "unparsed")


@pytest.mark.parametrize(
    "garbage",
    [
        "{" * 500_000 + "}" * 500_000,
        '{"type": "action", ' * 55_000,
        "{'a" * 350_000,
        "click(" * 170_000,
        "Action: scroll(" * 70_000,
        "{'type': " * 100 + "[" + "1," * 9000 + "x" + "}" * 100,  # nested, fails late
        "".join(chr(32 + (i * 7919) % 95) for i in range(1_000_000)),
        "<think>" * 150_000,
        "{" + '"<think>", ' * 100_000,
        "{" + " " * 1_000_000 + "'",
    ],
)
def test_huge_input_is_fast(garbage: str) -> None:
    start = time.perf_counter()
    got = parse_prediction(garbage, SPACE)
    assert time.perf_counter() - start < 0.5
    assert got.raw is garbage


def test_a_rationale_without_an_action_says_so() -> None:
    from rationale.predictions import parse_prediction
    from rationale.schema import ActionSpace

    out = parse_prediction('{"rationale": "I like the red one."}', ActionSpace.default())
    assert out.status == "unparsed" and out.problem == "the answer has a rationale but no action"
