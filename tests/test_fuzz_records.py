"""Fuzzing a record file: valid lines mixed with mutated ones, read by `RecordFile` and the CLI.

Every mutation below is known to make a line invalid (deleted fields, wrong types and bools,
steps the index cannot store, nesting past the parser's limit, truncation, bytes that are not
UTF-8, unknown fields, repeated keys, lines that are not objects), and every transformation of a
valid line is known to keep it valid (key order, whitespace, CRLF, escapes, nesting up to the
limit). So the test checks more than "no crash": every invalid line is reported with its line
number, no valid line is, and only the sessions of bad lines are left out.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner
from helpers import record
from hypothesis import given, settings
from hypothesis import strategies as st

from rationale import ActionRecord, RecordError, RecordFile, parse_record
from rationale.cli import main
from rationale.record_line import JSON_MAX_DEPTH
from rationale.schema import MAX_STEP, ActionSpace

SPACE = ActionSpace.default()
RECORD_FIELDS = set(ActionRecord.model_fields)
SESSIONS = ["a", "b", "c", 7]  # 7 is written as a JSON integer and read as the session "7"

BASES: list[dict] = [
    record(),
    record(
        action={"type": "type_and_submit", "name": "search_bar", "text": ""},
        user_id=12,
        persona={"age": 31, "likes": ["hiking", {"k": None}]},
        meta={"site": "shop", "n": 10**30, "f": 1.5},
    ),
    record(
        action={"type": "terminate"},
        context=None,
        instruction="Buy a hat",
        rationale="I am done.",
        schema_version=1,
    ),
    record(
        # Keys, colons, brackets and escapes inside strings are text, not structure.
        context='<script>{"a": 1, "a": 2, "b": [[[[</script> Prix : 5 € \\ "q" : ✓ \u0000',
        action={"type": "click", "name": 'button "buy" : now'},
        meta={"k": {"k": {"k": []}}, "": "empty key", "é": "ü"},
    ),
]

# Values that are never valid for a field, by dotted path (action.<field> is resolved per type).
WRONG = {
    "step": [True, False, "x", "", 2.5, None, [], {}, [1]],
    "session_id": [True, False, None, [], {}, 1.5, "", "  "],
    "action": [True, None, "click", 1, [], ["click"]],
    "action.type": [True, 1, None, "clik", "", "CLICK"],
    "name": [True, 1, None, "", " ", []],
    "text": [True, 1, None, []],
    "context": [True, 1, [], {}],
    "user_id": [True, [], {}, 1.5],
    "instruction": [True, 1, []],
    "persona": [True, 1, []],
    "rationale": [True, 1, {}],
    "meta": [True, 1, [], "x", None],
    "schema_version": [True, False, 0, 2, "1", None],
}
BAD_UTF8 = [b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf"]
HUGE_STEPS = [str(2**63), str(10**40), "-1", str(-(2**63)), "9" * 5000]


@dataclass
class Line:
    raw: bytes
    kind: str  # "valid", "invalid", "blank" or "unknown" (random bytes spliced into a record)
    key: tuple[str, int] | None = None  # (session_id, step) of a valid line


def _dumps(data: object, draw: st.DrawFn) -> bytes:
    """JSON in one of the layouts a producer might use; all read the same."""
    item, key = draw(
        st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : "), (",\t", "\t:\t"), (",", "  :")])
    )
    ascii_only = draw(st.booleans())
    return json.dumps(data, ensure_ascii=ascii_only, separators=(item, key)).encode()


def _with_raw(data: dict, path: str, raw_value: str) -> bytes:
    """``data`` as JSON with the value at ``path`` (``a`` or ``a.b``) replaced by raw JSON text."""
    marker = "\ue000MARK\ue000"
    target = data
    *parents, leaf = path.split(".")
    for part in parents:
        target = target[part]
    target[leaf] = marker
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace(json.dumps(marker, ensure_ascii=False), raw_value).encode()


def _nested(depth: int, closed: bool, as_object: bool) -> str:
    opening, closing = ('{"k":', "}") if as_object else ("[", "]")
    return opening * depth + "1" + (closing * depth if closed else "")


@st.composite
def valid_line(draw: st.DrawFn, session: object, step: int) -> Line:
    data = json.loads(json.dumps(draw(st.sampled_from(BASES))))
    data["session_id"], data["step"] = session, step
    if draw(st.booleans()):  # nesting right up to the limit is fine
        lists = draw(st.integers(0, JSON_MAX_DEPTH - 2))  # the record and meta are 2 levels
        raw = _with_raw(data, "meta", '{"deep":' + _nested(lists, True, False) + "}")
    else:
        keys = draw(st.permutations(list(data)))
        raw = _dumps({k: data[k] for k in keys}, draw)
    raw = draw(st.sampled_from([b"", b" ", b"\t"])) + raw + draw(st.sampled_from([b"", b"\r"]))
    return Line(raw, "valid", (str(session), step))


@st.composite
def invalid_line(draw: st.DrawFn, session: object, step: int) -> Line:
    data = json.loads(json.dumps(draw(st.sampled_from(BASES))))
    data["session_id"], data["step"] = session, step
    action = data["action"]
    fields = list(SPACE.types[action["type"]].fields)
    how = draw(
        st.sampled_from(
            [
                "delete",
                "wrong_type",
                "huge_step",
                "deep",
                "truncate",
                "bad_utf8",
                "unknown_field",
                "duplicate_key",
                "not_object",
                "garbage",
            ]
        )
    )
    if how == "delete":
        path = draw(st.sampled_from(["session_id", "step", "action", "action.type", *fields]))
        if path in fields or path == "action.type":
            del action[path.removeprefix("action.")]
        else:
            del data[path]
        raw = _dumps(data, draw)
    elif how == "wrong_type":
        path = draw(st.sampled_from([p for p in WRONG if p not in ("name", "text")] + fields))
        value = draw(st.sampled_from(WRONG[path]))
        if path in fields:
            action[path] = value
        elif path == "action.type":
            action["type"] = value
        else:
            data[path] = value
        raw = _dumps(data, draw)
    elif how == "huge_step":
        raw = _with_raw(data, "step", draw(st.sampled_from(HUGE_STEPS)))
    elif how == "deep":
        depth = draw(st.integers(JSON_MAX_DEPTH, 3000))
        deep = _nested(depth, draw(st.booleans()), draw(st.booleans()))
        where = draw(st.sampled_from(["", "meta", "context", "step", "action", "persona", "zz"]))
        raw = deep.encode() if not where else _with_raw(data, where, deep)
    elif how == "truncate":
        raw = _dumps(data, draw)
        raw = raw[: draw(st.integers(1, len(raw) - 1))]
    elif how == "bad_utf8":
        raw = _dumps(data, draw)
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from(BAD_UTF8)) + raw[at:]
    elif how == "unknown_field":
        if draw(st.booleans()):
            data[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in RECORD_FIELDS))] = 1
        else:
            known = {"type", *fields}
            action[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in known))] = "x"
        raw = _dumps(data, draw)
    elif how == "duplicate_key":
        where = draw(st.sampled_from(["", "action", "meta"]))
        obj = data if not where else action if where == "action" else {"k": 1}
        key = draw(st.sampled_from(list(obj)))
        again = draw(st.sampled_from([obj[key], "other", 0]))
        text = json.dumps(obj)[:-1] + draw(st.sampled_from([", ", ",", ",\t"]))
        text += json.dumps(key) + draw(st.sampled_from([": ", ":", " :", "\t:"]))
        text += json.dumps(again) + "}"
        raw = text.encode() if not where else _with_raw(data, where, text)
    elif how == "not_object":
        raw = json.dumps(
            draw(st.sampled_from([[data], list(data.values()), None, True, 12, "text", []]))
        ).encode()
    else:  # garbage: random bytes after a character that cannot start JSON
        raw = b"#" + draw(st.binary(max_size=40)).replace(b"\n", b"")
    return Line(raw, "invalid")


@st.composite
def record_files(draw: st.DrawFn) -> list[Line]:
    lines = []
    for i in range(draw(st.integers(1, 12))):
        session = draw(st.sampled_from(SESSIONS))
        step = i if draw(st.booleans()) else MAX_STEP - i  # unique, up to the largest
        kind = draw(st.sampled_from(["valid", "valid", "invalid", "invalid", "blank", "splice"]))
        if kind == "valid":
            lines.append(draw(valid_line(session, step)))
        elif kind == "invalid":
            lines.append(draw(invalid_line(session, step)))
        elif kind == "blank":
            lines.append(Line(draw(st.sampled_from([b"", b"  ", b"\t", b"\r"])), "blank"))
        else:
            raw = draw(valid_line(session, step)).raw
            at = draw(st.integers(0, len(raw)))
            noise = draw(st.binary(min_size=1, max_size=6)).replace(b"\n", b"")
            lines.append(Line(raw[:at] + noise + raw[at:], "unknown"))
    return lines


def _parses(raw: bytes) -> ActionRecord | None:
    try:
        return parse_record(raw.strip())
    except RecordError:
        return None


@settings(max_examples=80, deadline=None)
@given(lines=record_files())
def test_mixed_file_reports_exactly_the_bad_lines(lines: list[Line]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input.jsonl"
        path.write_bytes(b"".join(line.raw + b"\n" for line in lines))
        numbered = list(enumerate(lines, start=1))
        unknown_ok = {n: _parses(line.raw) for n, line in numbered if line.kind == "unknown"}
        invalid = {n for n, line in numbered if line.kind == "invalid"}
        invalid |= {n for n, rec in unknown_ok.items() if rec is None}
        valid = {n: line.key for n, line in numbered if line.kind == "valid"}
        valid |= {n: (r.session_id, r.step) for n, r in unknown_ok.items() if r is not None}

        # The library: every bad line, and only those, is a RecordError with its line number.
        with RecordFile(path, on_error="skip") as records:
            errors = records.errors
            skipped = records.skipped_sessions
            kept = [(s.record.session_id, s.record.step) for s in records.steps()]
        reported = {e.line for e in errors}
        assert reported == invalid | _repeated(valid)
        for err in errors:
            assert isinstance(err, RecordError)
            assert str(err).startswith(f"{path} line {err.line}: ")
            assert "\n" not in str(err) and len(str(err)) < 3000
        # Only the sessions of bad lines are left out, and all of such a session's lines.
        dropped = set(skipped)
        assert sorted(kept) == sorted(k for n, k in valid.items() if k[0] not in dropped)
        for session, at in skipped.items():
            assert reported & set(at)
            assert set(at) >= {n for n, k in valid.items() if k[0] == session}
        try:
            RecordFile(path).close()
        except RecordError as err:
            assert err.line == min(reported)
        else:
            assert not reported

        # The CLI: a one-line error per bad line, never a traceback.
        runner = CliRunner()
        result = runner.invoke(main, ["validate", "--json", str(path)])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        assert result.exit_code == (1 if reported else 0)
        assert [e["line"] for e in json.loads(result.stdout)["errors"]] == sorted(reported)
        result = runner.invoke(main, ["steps", "--on-error", "skip", str(path)])
        assert result.exit_code == 0, result.output
        assert len(result.stdout.splitlines()) == len(kept)
        assert sum(x.startswith("skipped: ") for x in result.stderr.splitlines()) == len(reported)
        result = runner.invoke(main, ["steps", str(path)])
        assert result.exit_code == (1 if reported else 0)
        assert "Traceback" not in result.output
        if reported:
            assert f"line {min(reported)}: " in result.stderr


def _repeated(valid: dict[int, tuple[str, int] | None]) -> set[int]:
    """Lines whose (session_id, step) an earlier valid line already has (a spliced line can)."""
    seen: set[tuple[str, int] | None] = set()
    out = set()
    for n, key in sorted(valid.items()):
        if key in seen:
            out.add(n)
        seen.add(key)
    return out


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_mutation_is_a_record_error_and_every_transform_is_valid(
    data: st.DataObject,
) -> None:
    session = data.draw(st.sampled_from(SESSIONS))
    step = data.draw(st.sampled_from([0, 5, MAX_STEP]))
    bad = data.draw(invalid_line(session, step))
    try:
        parse_record(bad.raw.strip(), path="f.jsonl", line=3)
    except RecordError as err:
        assert str(err).startswith("f.jsonl line 3: ")
    else:
        raise AssertionError(f"accepted an invalid line: {bad.raw[:200]!r}")
    good = data.draw(valid_line(session, step))
    parsed = parse_record(good.raw.strip(), path="f.jsonl", line=3)
    assert (parsed.session_id, parsed.step) == good.key
