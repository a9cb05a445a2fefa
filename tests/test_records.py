"""Reading record files: every error path, skip mode, grouping of unsorted lines, the index."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import record, write_lines

from rationale import DuplicateStepError, RationaleError, RecordError, RecordFile, parse_record
from rationale.records import write_records
from rationale.schema import ActionRecord


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        (
            json.dumps(record(action={"type": "clik", "name": "x"})),
            "action.type",
            "action.type 'clik' is not one of click, type_and_submit, terminate",
        ),
        (json.dumps(record(action={"name": "x"})), "action.type", "action.type is missing"),
        (
            json.dumps(record(action={"type": "type_and_submit", "name": "q"})),
            "action.text",
            "action.text is missing: a type_and_submit action needs name, text",
        ),
        (
            json.dumps(record(action={"type": "click", "name": "x", "text": "y"})),
            "action.text",
            "action.text is not a field of click actions (their fields: name)",
        ),
        (
            json.dumps(record(action={"type": "click", "name": ""})),
            "action.name",
            "must not be empty",
        ),
        (json.dumps(record(action="click")), "action", "action must be an object"),
        (json.dumps(record(step="three")), "step", "step must be an integer, got 'three'"),
        (json.dumps(record(step=2.5)), "step", "step must be an integer"),
        (json.dumps(record(session_id=None)), "session_id", "session_id must be a string"),
        (json.dumps(record(session_id="  ")), "session_id", "session_id must not be empty"),
        (json.dumps(record(contxt="x")), "contxt", "move the data under meta"),
        (json.dumps(record(meta=[1])), "meta", "meta must be a JSON object"),
        (json.dumps(record(context=5)), "context", "context must be a string"),
        (
            json.dumps(record(schema_version=2)),
            "schema_version",
            "schema_version 2 is not supported",
        ),
        (
            json.dumps({k: v for k, v in record().items() if k != "step"}),
            "step",
            "step is missing; every record needs session_id, step and action",
        ),
        ('{"session_id": "s1", "step": 1,', None, "not valid JSON"),
        # Issue 9: a bool is not an integer, a step must fit the index, nesting has a limit.
        (json.dumps(record(step=True)), "step", "step must be an integer, got true"),
        (json.dumps(record(schema_version=True)), "schema_version", "true is not supported"),
        (
            json.dumps(record(step=10**40)),
            "step",
            "step must be an integer from 0 to 9223372036854775807, got 1000000",
        ),
        (json.dumps(record(step=-1)), "step", "step must be an integer from 0 to"),
        ("[" * 100_000 + "]" * 100_000, None, "is nested too deeply"),
        ('{"a":' + "[" * 100_000, "a", "a is nested too deeply"),
        (
            json.dumps(record(meta={"x": "[" * 300})),  # brackets inside a string do not count
            None,
            None,
        ),
        (json.dumps(record(meta=_nested(300))), "meta", "meta is nested too deeply"),
        (json.dumps(record(**{"a\nb": 1})), "'a\\nb'", "'a\\nb' is not a record field"),
        (
            '{"session_id": "s1", "step": 1, "step": 2, "action": {"type": "terminate"}}',
            "step",
            "step appears twice; keep one",
        ),
        (
            '{"session_id": "s1", "step": 1, "action": {"type": "click", "name": "a", '
            '"name" : "b"}}',
            "action.name",
            "action.name appears twice",
        ),
        (
            json.dumps(record())[:-1] + ', "meta": {"k": [{"x": 1,\t"x": 2}]}}',
            "meta",
            "meta has the key 'x' twice in one object",
        ),
        ("[1, 2]", None, "not a JSON object"),
        ('"just a string"', None, "not a JSON object"),
        ("null", None, "not a JSON object"),
    ],
)
def test_each_bad_line_names_file_line_and_field(
    line: str, field: str | None, message: str | None
) -> None:
    if message is None:  # a valid line among the bad ones: nothing to report
        parse_record(line, path="input.jsonl", line=14)
        return
    with pytest.raises(RecordError) as info:
        parse_record(line, path="input.jsonl", line=14)
    err = info.value
    assert str(err).startswith("input.jsonl line 14: ")
    assert message in str(err)
    assert err.field == field
    assert err.line == 14
    assert "\n" not in str(err) and len(str(err)) < 1000


def test_the_issue_example_message_exactly() -> None:
    line = json.dumps(record(action={"type": "clik", "name": "x"}))
    with pytest.raises(RecordError) as info:
        parse_record(line, path="input.jsonl", line=14)
    assert str(info.value) == (
        "input.jsonl line 14: action.type 'clik' is not one of click, type_and_submit, terminate"
    )


def test_non_utf8_line() -> None:
    with pytest.raises(RecordError, match="is not UTF-8"):
        parse_record(b'{"session_id": "\xff"}', path="f.jsonl", line=2)


def test_a_bad_line_still_tells_its_session() -> None:
    with pytest.raises(RecordError) as info:
        parse_record('{"session_id": "s\\"7", "step": 1, "action": {"type": "clik"}}', line=1)
    assert info.value.session_id == 's"7'
    with pytest.raises(RecordError) as torn:
        parse_record('{"session_id": "s8", "step": 1, "action": {"ty', line=1)
    assert torn.value.session_id == "s8"


def _records_file(tmp_path: Path, lines: list[object]) -> Path:
    return write_lines(tmp_path / "input.jsonl", lines)


def test_unsorted_interleaved_lines_group_into_sorted_sessions(tmp_path: Path) -> None:
    path = _records_file(
        tmp_path,
        [
            record("b", 2, action={"type": "terminate"}),
            record("a", 5),
            "",
            record("b", 0),
            record("a", 1, action={"type": "type_and_submit", "name": "q", "text": "hat"}),
            "   ",
            record("b", 1),
        ],
    )
    with RecordFile(path) as records:
        assert records.session_ids() == ["b", "a"]  # order of first appearance
        assert [r.step for r in records.session("b")] == [0, 1, 2]
        steps = list(records.steps())
        assert [(s.record.session_id, s.record.step) for s in steps] == [
            ("b", 0),
            ("b", 1),
            ("b", 2),
            ("a", 1),
            ("a", 5),
        ]
        assert [h.step for h in steps[2].history] == [0, 1]
        assert steps[4].history[0].action == {"type": "type_and_submit", "name": "q", "text": "hat"}
        stats = records.stats()
    assert stats["sessions"] == 2 and stats["steps"] == 5 and stats["lines"] == 7
    assert stats["action_types"] == {"click": 3, "terminate": 1, "type_and_submit": 1}
    assert stats["outcomes"] == {"purchase": 0, "terminate": 1, "none": 1}


def test_duplicate_step_fails_naming_both_lines(tmp_path: Path) -> None:
    path = _records_file(tmp_path, [record("a", 0), record("a", 1), record("a", 0)])
    with pytest.raises(DuplicateStepError) as info:
        RecordFile(path)
    assert str(info.value).startswith(f"{path} line 3: session 'a' step 0 repeats line 1")
    assert info.value.first_line == 1


def test_fail_mode_raises_first_bad_line(tmp_path: Path) -> None:
    path = _records_file(
        tmp_path, [record("a", 0), record("a", 1, action={"type": "clik"}), "{oops"]
    )
    with pytest.raises(RecordError, match=r"line 2: action.type 'clik'"):
        RecordFile(path)


def test_skip_mode_drops_whole_sessions_and_reports_every_line(tmp_path: Path) -> None:
    path = _records_file(
        tmp_path,
        [
            record("good", 0),
            record("bad", 0),
            {**record("bad", 1), "step": "x"},  # bad step: its session is dropped
            record("good", 1),
            record("bad", 2),
            record("dup", 0),
            record("dup", 0),  # duplicate: session dropped too
            '{"session_id": "torn", "step": 3, "act',  # torn line: session read from raw text
            record("torn", 1),
            "not json at all",  # no session: dropped alone
        ],
    )
    with RecordFile(path, on_error="skip") as records:
        assert records.session_ids() == ["good"]
        assert [e.line for e in records.errors] == [3, 7, 8, 10]
        assert records.skipped_sessions == {"bad": [2, 3, 5], "dup": [6, 7], "torn": [8, 9]}
        assert records.errors[3].session_id is None
        assert sum(1 for _ in records.steps()) == 2
        assert records.stats()["steps"] == 2


def test_issue_9_fuzzed_lines_are_line_errors_not_crashes(tmp_path: Path) -> None:
    # Before the fix: RecursionError, OverflowError from sqlite, and "step": true read as 1.
    deep_array = "[" * 100_000 + "]" * 100_000
    deep_object = '{"session_id": "d", "step": 0, "a":' + "[" * 100_000
    path = _records_file(
        tmp_path,
        [
            record("a", 0),
            deep_array,
            deep_object,
            record("b", 10**40),
            record("c", True),
            record("b", 1),
            record("c", 0),
            record("a", 1),
        ],
    )
    with RecordFile(path, on_error="skip") as records:
        errors = records.errors
        assert [(e.line, e.field) for e in errors] == [
            (2, None),
            (3, "a"),
            (4, "step"),
            (5, "step"),
        ]
        assert records.skipped_sessions == {"b": [4, 6], "c": [5, 7], "d": [3]}
        assert records.session_ids() == ["a"]
        assert [r.step for r in records.session("a")] == [0, 1]
    assert "is nested too deeply" in str(errors[0])
    assert str(errors[2]).startswith(f"{path} line 4: step must be an integer from 0 to ")
    assert str(errors[3]) == f"{path} line 5: step must be an integer, got true"
    for lines, at in (([deep_array], 1), ([record("b", 10**40)], 1), ([record(), deep_object], 2)):
        with pytest.raises(RecordError) as info:
            RecordFile(_records_file(tmp_path, lines))
        assert info.value.line == at
    # The process is unharmed: the next line parses normally.
    assert parse_record(json.dumps(record("z", 2))).step == 2


def test_largest_step_round_trips_through_the_index(tmp_path: Path) -> None:
    path = _records_file(tmp_path, [record("a", 2**63 - 1), record("a", 0)])
    with RecordFile(path) as records:
        assert [r.step for r in records.session("a")] == [0, 2**63 - 1]


def test_index_is_reused_and_rebuilt_when_the_file_changes(
    tmp_path: Path, rationale_home: Path
) -> None:
    path = _records_file(tmp_path, [record("a", 0)])
    RecordFile(path).close()
    indexes = list((rationale_home / "index").glob("*.sqlite"))
    assert len(indexes) == 1
    before = indexes[0].stat().st_mtime_ns
    RecordFile(path).close()
    assert indexes[0].stat().st_mtime_ns == before  # reused
    write_lines(path, [record("a", 0), record("a", 1)])
    os.utime(path, ns=(before + 10**9, before + 10**9))
    with RecordFile(path) as records:
        assert records.stats()["steps"] == 2
    assert len(list((rationale_home / "index").glob("*.sqlite"))) == 1  # the stale one is gone


def test_errors_use_the_name_the_caller_gave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _records_file(tmp_path, [record("a", 0, action={"type": "clik"})])
    RecordFile(path, on_error="skip").close()  # builds and keeps the index
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecordError) as info:
        RecordFile("input.jsonl")  # reuses it under another name
    assert str(info.value).startswith("input.jsonl line 1: ")


def test_missing_file_is_a_package_error(tmp_path: Path) -> None:
    with pytest.raises(RationaleError, match="no such file"):
        RecordFile(tmp_path / "nope.jsonl")


def test_write_records_is_atomic_and_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out.jsonl"
    recs = [ActionRecord.model_validate(record("s", i, meta={"i": i})) for i in range(3)]
    assert write_records(out, recs) == 3
    with RecordFile(out) as records:
        assert records.session("s") == recs

    def exploding():
        yield recs[0]
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_records(out, exploding())
    with RecordFile(out) as records:  # the old file is intact, no temp file left behind
        assert records.session("s") == recs
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]


def test_infinity_in_meta_is_written_back_not_nulled(tmp_path: Path) -> None:
    # meta is carried through untouched: a non-finite number used to come back as null.
    line = '{"session_id": "a", "step": 0, "action": {"type": "terminate"}, '
    line += '"meta": {"x": Infinity, "y": -1e400}, "persona": {"z": Infinity}}'
    rec = parse_record(line)
    out = tmp_path / "out.jsonl"
    write_records(out, [rec])
    with RecordFile(out) as records:
        (back,) = records.session("a")
    assert back == rec
    assert back.meta == {"x": float("inf"), "y": float("-inf")}
