"""`rationale import miniwob`: raw MiniWoB++ events -> steps whose targets are names in their page.

Fixtures: tests/fixtures/miniwob/ (seven real sessions of five kinds of task; see the README
beside them). The share of targets in their page on all 403 sessions of ../shared/data/miniwob is
checked by a slow test when that folder is there.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FIXTURES, ROOT, record, write_lines

from rationale.errors import SourceError
from rationale.importers import ImportConfig, run_import
from rationale.importers.events import RawEvent, group_events, import_space
from rationale.importers.miniwob import outcome_of, read_miniwob, readable_utterance
from rationale.pages import simplify_dom
from rationale.records import RecordFile, target_in_page

MINIWOB = FIXTURES / "miniwob"
SHARED_MINIWOB = ROOT.parent / "shared" / "data" / "miniwob"
RATIONALE = shutil.which("rationale", path=str(Path(sys.executable).parent)) or "rationale"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RATIONALE, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def session(name: str) -> list:
    (path,) = MINIWOB.rglob(f"{name}*.json.gz")
    return list(read_miniwob([path]))


def ev(kind: str, key: object = "a", time: float | None = None, **fields: object) -> RawEvent:
    return RawEvent(type=kind, key=key, time=time, **fields)  # type: ignore[arg-type]


# -- grouping raw events ------------------------------------------------------------------------


def test_mousedown_mouseup_click_on_one_element_is_one_click() -> None:
    steps = group_events(
        [ev("mousedown", "a", 0), ev("mouseup", "a", 80), ev("click", "a", 82),
         ev("mousedown", "b", 900), ev("mouseup", "b", 990), ev("click", "b", 991)]
    )  # fmt: skip
    assert [(s.kind, s.first.key, len(s.events)) for s in steps] == [
        ("click", "a", 3),
        ("click", "b", 3),
    ]


def test_a_forwarded_click_joins_its_gesture_and_a_keyboard_click_stands_alone() -> None:
    steps = group_events(
        [ev("mousedown", "label", 0), ev("mouseup", "label", 70), ev("click", "label", 72),
         ev("click", "checkbox", 75),  # the browser forwards a label's click to its control
         ev("click", "button", 4000)]  # Enter on a focused button: a click of its own
    )  # fmt: skip
    assert [(s.first.key, [e.key for e in s.events]) for s in steps] == [
        ("label", ["label", "label", "label", "checkbox"]),
        ("button", ["button"]),
    ]


def test_a_double_click_is_two_clicks_the_second_flagged() -> None:
    # Two quick clicks on "+" add two passengers: both are kept.
    steps = group_events(
        [ev("mousedown", "plus", 0), ev("mouseup", "plus", 50), ev("click", "plus", 51),
         ev("mousedown", "plus", 150), ev("mouseup", "plus", 200), ev("click", "plus", 201),
         ev("dblclick", "plus", 201)]
    )  # fmt: skip
    assert [(s.kind, s.double_click) for s in steps] == [("click", False), ("click", True)]


def test_key_events_into_one_element_are_one_typing_step() -> None:
    keys = [
        ev("keydown", "from"),  # Shift: types nothing
        ev("keypress", "from", char="P"),
        ev("keypress", "from", char="x"),
        ev("keydown", "from", special="Backspace"),
        ev("keypress", "from", char="h"),
        ev("keyup", "from"),
        ev("keypress", "to", char="B"),  # another element: a new step
        ev("keydown", "to", special="Tab"),  # Tab ends it
        ev("keypress", "to", char="u"),
        ev("keydown", "to", special="Enter"),
        ev("keydown", "date", special="Backspace"),  # deletes what was there before
        ev("keydown", "date"),  # a lone arrow key: no step
        ev("mousedown", "x"),
        ev("keydown", "x"),
    ]
    steps = group_events(keys)
    assert [(s.kind, s.first.key, s.text, s.submitted, s.deleted) for s in steps] == [
        ("type", "from", "Ph", False, 0),
        ("type", "to", "B", False, 0),
        ("type", "to", "u", True, 0),
        ("type", "date", "", False, 1),
        ("click", "x", "", False, 0),
    ]


def test_a_press_on_no_element_makes_no_step_and_is_counted() -> None:
    tally: dict[str, int] = {}
    raw = [ev("mousedown", None, 0), ev("mouseup", None, 50), ev("click", "a", 3000)]
    steps = group_events(raw, tally)
    assert [s.first.key for s in steps] == ["a"] and tally["clicks_on_no_element"] == 1


# -- real sessions -------------------------------------------------------------------------------


def test_two_kinds_of_task_import_with_every_target_named_in_its_page() -> None:
    records = list(read_miniwob([MINIWOB]))  # a folder, searched recursively
    tasks = {r.meta["task"] for r in records}
    assert {"click-checkboxes", "enter-text", "flight.Alaska-auto"} <= tasks
    assert len({r.session_id for r in records}) == 7
    for r in records:
        if r.meta["target"]["named"]:
            assert f'name="{r.action.name}"' in r.context, (r.session_id, r.step)
        assert target_in_page(r, import_space()) is r.meta["target"]["named"]


def test_real_click_and_typing_steps() -> None:
    checkboxes = session("click-checkboxes_")
    assert [r.action.type for r in checkboxes] == ["click", "click"]
    assert checkboxes[0].meta["events"] == ["mousedown", "mouseup", "click", "click"]
    typed = session("enter-text_")
    assert [r.action.model_dump() for r in typed] == [
        {"type": "click", "name": "mturk_form.tt"},
        # T e o d r o, two Backspaces, o r o, Enter
        {"type": "type_and_submit", "name": "mturk_form.tt", "text": "Teodoro"},
        {"type": "click", "name": "mturk_form.subbtn"},
    ]
    assert typed[0].instruction == 'Enter "Teodoro" into the text field and press Submit.'
    flight = session("flight.Alaska-auto_3DQQ")
    assert [r.meta.get("double_click", False) for r in flight].count(True) == 1


def test_the_page_is_the_dom_before_the_first_event() -> None:
    (path,) = MINIWOB.rglob("enter-text_*.json.gz")
    states = json.loads(gzip.decompress(path.read_bytes()))["states"]
    firsts = [s for s in states if s["action"] and s["action"]["timing"] == 1]
    first_key = next(s for s in firsts if s["action"]["type"].startswith("key"))
    typed = session("enter-text_")
    assert typed[0].context == simplify_dom(firsts[0]["dom"]).html  # before the mousedown
    assert typed[1].context == simplify_dom(first_key["dom"]).html  # before the first key
    assert 'value="Teodoro"' not in typed[1].context  # not yet typed
    assert 'value="Teodoro"' in typed[2].context  # the page the Submit click saw


def test_unnamed_targets_are_kept_and_flagged() -> None:
    flight = session("flight.Alaska-auto_3B83")
    first = flight[0]  # a click on the form's background
    assert first.action.model_dump() == {"type": "click", "name": "unnamed.form.search_form"}
    assert first.meta["target"] == {
        "named": False,
        "how": "not_actionable",
        "tag": "form",
        "id": "searchForm",
        "classes": "miniwob-main-form",
    }
    assert all(r.meta["target"]["named"] for r in flight[1:])


def test_failed_and_partial_sessions_are_kept_and_marked() -> None:
    records = list(read_miniwob([MINIWOB / "click-checkboxes-large"]))
    outcomes = {r.session_id: (r.meta["outcome"], r.meta["raw_reward"]) for r in records}
    assert sorted(o for o, _ in outcomes.values()) == ["failure", "partial"]
    assert [outcome_of(x) for x in (1, 0.5, -0.2, -1, None, True)] == [
        "success", "partial", "partial", "failure", "unknown", "unknown"
    ]  # fmt: skip
    assert readable_utterance('{"Departure City":"Phoenix","Passengers":3}') == (
        "Departure City: Phoenix, Passengers: 3"
    )


def test_import_summary_and_validate_agree_on_the_share(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    result = run_import(ImportConfig(format="miniwob", source=[str(MINIWOB)], output=str(out)))
    targets = result.targets
    assert targets is not None and result.action_space == tmp_path / "x.actions.toml"
    assert targets["actions"] == result.steps and targets["unnamed"] == {"not_actionable": 1}
    assert targets["in_page"] == result.steps - 1
    with RecordFile(out, space=import_space()) as records:
        stats = records.stats()["target_in_page"]
    assert stats == {
        "checked": result.steps,
        "in_page": result.steps - 1,
        "share": targets["share_in_page"],
    }


def test_a_cut_page_keeps_or_loses_targets_and_says_so(tmp_path: Path) -> None:
    tally: dict[str, int] = {}
    cut = list(read_miniwob([MINIWOB / "flight.Alaska-auto"], max_page_tokens=60, tally=tally))
    assert all(len(r.context) < 600 for r in cut)
    assert 0 < tally["in_page"] < tally["named"]  # some targets were cut away, and counted
    for r in cut:
        assert (f'name="{r.action.name}"' in r.context) == target_in_page(r, import_space())


def test_validate_counts_targets_in_any_record_file(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "r.jsonl",
        [
            record("s", 0),  # <button name='search'> and a click on search: in the page
            record("s", 1, action={"type": "click", "name": "elsewhere"}),
            record("s", 2, context=None),  # no page: not counted
            record("s", 3, action={"type": "terminate"}),  # no target: not counted
        ],
    )
    with RecordFile(path) as records:
        assert records.stats()["target_in_page"] == {"checked": 2, "in_page": 1, "share": 0.5}


def test_not_a_demonstration_is_an_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"utterance": "hi"}')
    with pytest.raises(SourceError, match=r"x\.json: not a MiniWoB demonstration"):
        list(read_miniwob([bad]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"empty: folder has no \.json or \.json\.gz files"):
        list(read_miniwob([tmp_path / "empty"]))


def test_cli_import_then_validate(tmp_path: Path) -> None:
    proc = run("import", "miniwob", str(MINIWOB), "-o", "x.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "targets in their page: " in proc.stderr and "(97." in proc.stderr
    assert "x.actions.toml" in proc.stderr
    assert "made no step: clicks on no element of the page 2" in proc.stderr
    valid = run("validate", "x.jsonl", "--action-space", "x.actions.toml", "--json", cwd=tmp_path)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    stats = json.loads(valid.stdout)
    assert stats["sessions"] == 7 and stats["action_types"]["type"] >= 2
    assert stats["target_in_page"]["in_page"] == stats["target_in_page"]["checked"] - 1
    text = run("validate", "x.jsonl", "--action-space", "x.actions.toml", cwd=tmp_path).stdout
    assert "targets in their page: " in text
    # without the space, 'type' is not an action type: validate says so
    assert run("validate", "x.jsonl", cwd=tmp_path).returncode == 1


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MINIWOB.is_dir(), reason="../shared/data/miniwob is not here")
def test_all_shared_sessions_have_97_percent_of_targets_in_their_page(tmp_path: Path) -> None:
    result = run_import(
        ImportConfig(format="miniwob", source=[str(SHARED_MINIWOB)], output=str(tmp_path / "x"))
    )
    assert result.sessions == 403 and result.targets is not None
    assert result.targets["share_in_page"] >= 0.97, result.targets
