"""Property: any mutated or random line is a valid record or the package's error with its line."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from helpers import record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rationale import ActionRecord, RecordError, RecordFile, parse_record

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "session_id",
        "step",
        "context",
        "action",
        "user_id",
        "instruction",
        "persona",
        "rationale",
        "meta",
        "schema_version",
        "type",
        "name",
        "text",
        "extra",
    ]
)
VALID = [
    record("s1", 3),
    record("s2", 0, action={"type": "type_and_submit", "name": "q", "text": "hat"}, meta={"a": 1}),
    record("s3", 9, action={"type": "terminate"}, context=None, rationale="I leave."),
]


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    data = json.loads(json.dumps(draw(st.sampled_from(VALID))))
    for _ in range(draw(st.integers(1, 3))):
        target = (
            data["action"] if draw(st.booleans()) and isinstance(data.get("action"), dict) else data
        )
        how = draw(st.sampled_from(["delete", "replace", "add"]))
        key = draw(field_names)
        if how == "delete":
            target.pop(key, None)
        else:
            target[key] = draw(json_values)
    raw = json.dumps(data).encode()
    cut = draw(st.sampled_from(["none", "truncate", "splice"]))
    if cut == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif cut == "splice":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(max_size=8)) + raw[at:]
    return raw


any_line = (
    mutated_lines() | json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=60)
)


@settings(max_examples=400, deadline=None)
@given(raw=any_line, line=st.integers(1, 10**6))
def test_any_line_is_a_record_or_a_record_error(raw: bytes, line: int) -> None:
    try:
        result = parse_record(raw, path="input.jsonl", line=line)
    except RecordError as err:
        assert err.line == line
        assert str(err).startswith(f"input.jsonl line {line}: ")
        assert len(str(err)) < 2000
    else:
        assert isinstance(result, ActionRecord)
        # A valid record survives a round trip unchanged.
        assert parse_record(json.dumps(result.dump()), line=line) == result


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(any_line.filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=6))
def test_any_file_reads_or_fails_with_a_line_number(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input.jsonl"
        path.write_bytes(b"".join(raw + b"\n" for raw in lines))
        with RecordFile(path, on_error="skip") as records:
            kept = sum(1 for _ in records.steps())
            bad = {e.line for e in records.errors}
            assert bad <= set(range(1, len(lines) + 1))
            assert kept <= len(lines) - len(bad)
        try:
            RecordFile(path).close()
        except RecordError as err:
            assert err.line == min(bad)
        else:
            assert not bad
