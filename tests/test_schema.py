"""The record schema, the action space, and the one definition of action equality."""

from __future__ import annotations

import json

import pytest
from helpers import record
from pydantic import ValidationError

from rationale import ActionRecord, ActionSpace, ConfigError, build_history, session_outcome
from rationale.schema import (
    MAX_STEP,
    SCHEMA_VERSION,
    Candidate,
    HistoryEntry,
    Provenance,
    SynthRecord,
    normalize_name,
    normalize_text,
)
from rationale.sessions import iter_steps

SPACE = ActionSpace.default()


def test_round_trip_keeps_every_field() -> None:
    data = record(
        "sess-9",
        4,
        action={"type": "type_and_submit", "name": "search_bar.input", "text": "red  shoes"},
        user_id="u1",
        instruction="buy shoes",
        persona={"age": 31, "likes": ["hiking"]},
        rationale="I want red shoes.",
        meta={"nested": {"kept": [1, 2, None]}, "url": "https://shop.example/x"},
    )
    parsed = ActionRecord.model_validate_json(json.dumps(data))
    dumped = parsed.dump()
    assert dumped["schema_version"] == SCHEMA_VERSION
    assert {k: v for k, v in dumped.items() if k != "schema_version"} == data
    assert ActionRecord.model_validate(dumped) == parsed


def test_integer_ids_become_strings_but_bools_do_not() -> None:
    assert ActionRecord.model_validate(record(session_id=17, user_id=3)).session_id == "17"
    with pytest.raises(ValidationError):
        ActionRecord.model_validate(record(session_id=True))


@pytest.mark.parametrize(
    "fields",
    [
        {"step": True},
        {"step": False},
        {"schema_version": True},
        {"step": -1},
        {"step": 2**63},
        {"step": 10**40},
    ],
)
def test_bools_and_out_of_range_steps_are_rejected(fields: dict) -> None:
    # pydantic's lax mode would read true as 1; the sqlite index stores steps as 64-bit ints.
    for validate in (
        ActionRecord.model_validate,
        lambda d: ActionRecord.model_validate_json(json.dumps(d)),
    ):
        with pytest.raises(ValidationError):
            validate(record(**fields))
    assert ActionRecord.model_validate(record(step=2**63 - 1)).step == MAX_STEP


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (HistoryEntry, {"step": True, "action": {}}),
        (
            Provenance,
            {
                "teacher": "t",
                "template": "x",
                "template_version": "1",
                "prompt_hash": "h",
                "seed": True,
            },
        ),
        (
            Provenance,
            {
                "teacher": "t",
                "template": "x",
                "template_version": "1",
                "prompt_hash": "h",
                "seed": 0,
                "cost_usd": True,
            },
        ),
        (Candidate, {"state": "accepted", "round": False}),
        (SynthRecord, {"state": "accepted", "record": {}, "context_cut_tokens": True}),
        (SynthRecord, {"state": "accepted", "record": {}, "schema_version": True}),
    ],
)
def test_no_integer_field_reads_a_bool(model: type, fields: dict) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(fields)
    with pytest.raises(ValidationError):
        model.model_validate_json(json.dumps(fields))


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "click"},  # no name
        {"type": "click", "name": "   "},  # blank name
        {"type": "click", "name": "x", "text": "t"},  # click has no text
        {"type": "type_and_submit", "name": "x"},  # no text
        {"type": "scroll"},
        "click",
    ],
)
def test_invalid_actions_are_rejected(bad: object) -> None:
    with pytest.raises(ValidationError):
        ActionRecord.model_validate(record(action=bad))


def test_unknown_record_field_is_rejected_not_dropped() -> None:
    with pytest.raises(ValidationError, match="contxt"):
        ActionRecord.model_validate(record(contxt="typo"))


def test_normalisation_rules() -> None:
    assert normalize_name("  Search_Results.Columbia  Shirt ") == "search_results.columbia shirt"
    assert normalize_name("ＢＵＹ_NOW") == "buy_now"  # NFKC folds full-width letters
    assert normalize_text("  Red\t\tShoes \n") == "Red Shoes"
    assert normalize_text("cafe\u0301") == "café"  # NFC


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ({"type": "click", "name": "A.B"}, {"type": "click", "name": " a.b "}, True),
        ({"type": "click", "name": "a.b"}, {"type": "click", "name": "a.c"}, False),
        ({"type": "Click", "name": "a"}, {"type": "click", "name": "a"}, True),
        (
            {"type": "click", "name": "a"},
            {"type": "type_and_submit", "name": "a", "text": ""},
            False,
        ),
        (
            {"type": "type_and_submit", "name": "q", "text": "Red  shoes "},
            {"type": "type_and_submit", "name": "Q", "text": "Red shoes"},
            True,
        ),
        (
            {"type": "type_and_submit", "name": "q", "text": "red shoes"},
            {"type": "type_and_submit", "name": "q", "text": "Red shoes"},
            False,  # typed text is case-sensitive
        ),
        ({"type": "terminate"}, {"type": "terminate"}, True),
        ({"type": "teleport"}, {"type": "terminate"}, False),  # malformed never equals
        ({"name": "a"}, {"type": "click", "name": "a"}, False),
        ("click a", {"type": "click", "name": "a"}, False),
    ],
)
def test_action_equality(a: object, b: object, equal: bool) -> None:
    assert SPACE.equal(a, b) is equal
    assert SPACE.equal(b, a) is equal


def test_equality_accepts_models_and_dicts() -> None:
    rec = ActionRecord.model_validate(record(action={"type": "click", "name": "Buy_Now"}))
    assert SPACE.equal(rec.action, {"type": "click", "name": "buy_now"})
    assert SPACE.canonical(rec.action) == (("type", "click"), ("name", "buy_now"))


def test_custom_action_space_from_toml(tmp_path) -> None:
    path = tmp_path / "actions.toml"
    path.write_text(
        """
purchase_pattern = "(^|\\\\.)checkout_confirm$"
[action.click]
fields = { name = "name" }
[action.scroll]
description = "Scroll the page."
fields = { direction = "name" }
[action.review]
fields = { name = "name", text = "text" }
[action.terminate]
""",
        encoding="utf-8",
    )
    space = ActionSpace.from_file(path)
    assert list(space.types) == ["click", "scroll", "review", "terminate"]
    rec = space.record_model.model_validate(record(action={"type": "scroll", "direction": "Down"}))
    assert rec.action.direction == "Down"
    assert space.equal(rec.action, {"type": "scroll", "direction": "down"})
    with pytest.raises(ValidationError):
        ActionRecord.model_validate(record(action={"type": "scroll", "direction": "down"}))
    # The same declaration yields the structured-output models.
    pred = space.prediction_model.model_validate(
        {
            "rationale": "I want to see more.",
            "action": {"type": "review", "name": "r", "text": "ok"},
        }
    )
    assert pred.action.text == "ok"
    schema = space.prediction_model.model_json_schema()
    assert set(schema["$defs"]) == {
        "ClickAction",
        "ScrollAction",
        "ReviewAction",
        "TerminateAction",
    }
    only = space.action_only_model.model_validate({"action": {"type": "terminate"}})
    assert only.model_dump() == {"action": {"type": "terminate"}}
    assert space.is_purchase({"type": "click", "name": "cart.checkout_confirm"})
    assert not space.is_purchase({"type": "click", "name": "product.buy_now"})
    assert ActionSpace.from_declaration(space.declaration()).declaration() == space.declaration()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[action.Click]\n", "lower_snake_case"),
        ("[action.click]\nfields = { name = 'string' }\n", "kind must be one of name, text"),
        ("[action.click]\nfields = { type = 'name' }\n", "not 'type'"),
        (
            "purchase_pattern = '('\n[action.click]\nfields = { name = 'name' }\n",
            "not a valid regex",
        ),
        ("colour = 'red'\n[action.click]\n", "unknown key"),
        ("x = [\n", "not valid TOML"),
        ("purchase_pattern = 'x'\n", "at least one action type"),
        ("[action.click]\nfield = {}\n", "may only have the keys"),
    ],
)
def test_bad_action_space_files_name_the_problem(tmp_path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        ActionSpace.from_file(path)
    assert str(path) in str(info.value)


def test_default_prediction_model_is_the_papers_output_format() -> None:
    out = SPACE.prediction_model.model_validate_json(
        '{"rationale": "I need a cheaper one.", "action": {"type": "click", "name": "sort.price"}}'
    )
    assert out.model_dump() == {
        "rationale": "I need a cheaper one.",
        "action": {"type": "click", "name": "sort.price"},
    }


def _session(*actions: dict, rationales: tuple[str | None, ...] = ()) -> list[ActionRecord]:
    return [
        ActionRecord.model_validate(
            record("s", step, action=a, rationale=rationales[i] if i < len(rationales) else None)
        )
        for i, (step, a) in enumerate(zip([3, 7, 9, 12], actions, strict=False))
    ]


def test_history_is_earlier_actions_in_step_order() -> None:
    session = _session(
        {"type": "click", "name": "a"},
        {"type": "type_and_submit", "name": "q", "text": "shoes"},
        {"type": "click", "name": "b"},
        rationales=("I look.", None, "I pick."),
    )
    shuffled = [session[2], session[0], session[1]]
    history = build_history(shuffled, 9)
    assert [h.step for h in history] == [3, 7]
    assert [h.action["type"] for h in history] == ["click", "type_and_submit"]
    assert all(h.rationale is None for h in history)  # actions only by default
    with_r = build_history(shuffled, 12, with_rationales=True)
    assert [h.rationale for h in with_r] == ["I look.", None, "I pick."]
    assert build_history(shuffled, 3) == ()
    for flag in (False, True):  # iter_steps derives exactly what build_history defines
        steps = list(iter_steps(shuffled, with_rationales=flag))
        assert [s.record.step for s in steps] == [3, 7, 9]
        for s in steps:
            assert s.history == build_history(shuffled, s.record.step, with_rationales=flag)


@pytest.mark.parametrize(
    ("last", "outcome"),
    [
        ({"type": "click", "name": "product.Buy_Now"}, "purchase"),
        ({"type": "click", "name": "checkout.place_your_order"}, "purchase"),
        ({"type": "click", "name": "tab.purchase_price"}, None),
        ({"type": "click", "name": "product.add_to_cart"}, None),
        ({"type": "terminate"}, "terminate"),
        ({"type": "type_and_submit", "name": "buy_now", "text": "x"}, None),
    ],
)
def test_session_outcome_comes_from_the_last_action(last: dict, outcome: str | None) -> None:
    session = _session({"type": "click", "name": "product.buy_now"}, last)
    assert session_outcome(list(reversed(session))) == outcome
    assert session_outcome([]) is None
