"""One JSONL line to one `ActionRecord`, or a `RecordError` that says what is wrong and where.

`parse_record` is the only reader of a record line: `rationale.records.RecordFile` calls it for
every line of a file. It raises nothing but `RecordError` (its message names the file, the line
and the field, and says how to fix it), whatever the bytes: torn or invalid JSON, bytes that are
not UTF-8, values nested deeper than the JSON parser's limit, integers too large for the index,
``true`` where an integer belongs, and keys that appear twice in one object (JSON readers keep
only the last one, so the other value would be lost without a word).

A line is parsed once, by jiter (the Rust JSON parser inside pydantic): it bounds the nesting
depth, so no line can exhaust Python's stack, and it finds repeated keys. The parsed value is then
validated by the record model.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jiter
from pydantic import ValidationError

from rationale.errors import RecordError
from rationale.schema import MAX_STEP, ActionRecord, ActionSpace

#: jiter refuses arrays and objects nested deeper than this, counting the line's own object
#: (it lets an empty innermost one be the 201st, a harmless edge).
JSON_MAX_DEPTH = 200

_SHOWN = 60  # characters of a bad value quoted in an error message
_SHOWN_ERRORS = 5  # problems described for one line; the rest are counted
_SESSION_ID_IN_RAW = re.compile(rb'"session_id"\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(-?\d+))')
# A JSON string or a structural character, scanned from the start of a line: strings are
# matched whole, so brackets and colons inside them are never seen as structure.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:]')
_KEEP_ONE = "keep one (a JSON reader silently keeps only the last)"


def _show(value: Any) -> str:
    # Strings as 'text' (like the example), everything else as JSON.
    try:
        text = (
            repr(value)
            if isinstance(value, (str, bytes))
            else json.dumps(value, ensure_ascii=False)
        )
    except (ValueError, TypeError, RecursionError):  # an int past str()'s digit limit, say
        text = f"a {type(value).__name__}"
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _name(key: str) -> str:
    """A key as shown in a message: as is, or quoted and cut when it would break the line."""
    return key if key.isprintable() and len(key) <= _SHOWN else _show(key)


def _field_path(loc: tuple[Any, ...], space: ActionSpace) -> str:
    parts = [_name(str(p)) for p in loc]
    # pydantic puts the union member (the action type) into the location: action.click.name
    if len(parts) > 2 and parts[0] == "action" and parts[1] in space.types:
        del parts[1]
    return ".".join(parts)


def _describe(err: dict[str, Any], space: ActionSpace) -> tuple[str | None, str]:
    """One pydantic error as (field, message with its fix)."""
    kind, loc, value = err["type"], tuple(err["loc"]), err.get("input")
    field = _field_path(loc, space) or None
    types = ", ".join(space.types)
    record_fields = ", ".join(ActionRecord.model_fields)
    if not loc and kind in ("model_type", "model_attributes_type", "dict_type"):
        return None, (
            f"is {_show(value)}, not a JSON object; each line must be one object with "
            "session_id, step and action"
        )
    if kind == "union_tag_invalid":
        return "action.type", f"action.type {_show(err['ctx']['tag'])} is not one of {types}"
    if kind == "union_tag_not_found":
        return "action.type", f"action.type is missing; it must be one of {types}"
    if kind in ("dict_type", "model_type", "model_attributes_type") and field == "action":
        return field, (
            f'action must be an object such as {{"type": "click", "name": "..."}}, '
            f"got {_show(value)}"
        )
    if kind == "missing":
        if len(loc) > 1 and loc[0] == "action" and str(loc[1]) in space.types:
            needed = ", ".join(space.types[str(loc[1])].fields) or "no fields"
            return field, f"{field} is missing: a {loc[1]} action needs {needed}"
        return field, f"{field} is missing; every record needs session_id, step and action"
    if kind == "extra_forbidden":
        if len(loc) > 1 and loc[0] == "action" and str(loc[1]) in space.types:
            allowed = ", ".join(space.types[str(loc[1])].fields) or "none"
            return field, (
                f"{field} is not a field of {loc[1]} actions (their fields: {allowed}); "
                "remove it or declare it in an action-space file (--action-space)"
            )
        return field, (
            f"{field} is not a record field (fields: {record_fields}); "
            "fix its spelling or move the data under meta"
        )
    if kind.startswith("int_"):
        return field, f"{field} must be an integer, got {_show(value)}"
    if field == "step" and kind in ("greater_than_equal", "less_than_equal"):
        return field, f"step must be an integer from 0 to {MAX_STEP}, got {_show(value)}"
    if kind in ("string_too_short", "string_pattern_mismatch"):
        return field, f"{field} must not be empty"
    if kind == "string_type":
        return field, f"{field} must be a string, got {_show(value)}"
    if kind == "literal_error" and field == "schema_version":
        return field, (
            f"schema_version {_show(value)} is not supported (this version reads 1); "
            "upgrade rationale-distill or convert the file"
        )
    if kind == "dict_type" and field == "meta":
        return field, f"meta must be a JSON object, got {_show(value)}"
    message = err["msg"][0].lower() + err["msg"][1:]
    if message.startswith("value error, "):
        message = message[len("value error, ") :]
    return field, f"{field}: {message}, got {_show(value)}"


def _json_problem(error: str, raw: bytes) -> tuple[str | None, str]:
    """jiter's complaint about a line as (field, message with its fix)."""
    if "recursion limit" in error:
        field = _deep_field(raw)
        return field, (
            f"{field + ' ' if field else ''}is nested too deeply: more than "
            f"{JSON_MAX_DEPTH} levels of arrays and objects; flatten it"
        )
    if error.startswith("Detected duplicate key"):
        return _duplicate_key(raw, error)
    return None, f"not valid JSON ({error}); each line must be one complete JSON object"


def _deep_field(raw: bytes) -> str | None:
    """The top-level key whose value nests past the parser's limit (None for a top-level array)."""
    depth, key, last = 0, None, None
    for match in _JSON_TOKEN.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > JSON_MAX_DEPTH:
                return key
        elif token in (b"]", b"}"):
            depth -= 1
        elif token == b":":
            if depth == 1:
                text = _decode_string(last) if last else None
                key = None if text is None else _name(text)
        else:
            last = token
    return key


def _duplicate_key(raw: bytes, error: str) -> tuple[str | None, str]:
    """(field, message) for a key that jiter found twice in one object; the field is its path
    (``step``, ``action.name``) or, deeper down, the record field that holds it (``meta``)."""
    found: list[tuple[str, dict[str, Any]]] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) < len(pairs) and not found:
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    found.append((key, obj))
                    break
                seen.add(key)
        return obj

    try:  # jiter stopped at the repeat: read the whole line again to place it
        top = json.loads(raw, object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError):  # invalid further on, too
        top = None
    if not found or not isinstance(top, dict):
        match = re.match(r'Detected duplicate key "(.*)" at ', error)
        key_text = repr(match.group(1)) if match else "a key"
        return None, f"{key_text} appears twice in one object; {_KEEP_ONE}"
    key, obj = _name(found[0][0]), found[0][1]
    if obj is top:
        return key, f"{key} appears twice; {_KEEP_ONE}"
    if obj is top.get("action"):
        return f"action.{key}", f"action.{key} appears twice; {_KEEP_ONE}"
    field = next((_name(k) for k, v in top.items() if _contains(v, obj)), None)
    return field, f"{field} has the key {_show(found[0][0])} twice in one object; {_KEEP_ONE}"


def _contains(value: Any, target: object) -> bool:
    """Whether ``target`` (by identity) is ``value`` or inside it (no recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if item is target:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _decode_string(token: bytes) -> str | None:
    """A JSON string token as text, or None if it is malformed or not printable UTF-8."""
    try:
        text = json.loads(token)
        text.encode("utf-8")  # a lone surrogate ("\ud800") could never be printed
    except (ValueError, UnicodeError):
        return None
    return text if isinstance(text, str) else None


def _session_id_in(data: Any) -> str | None:
    value = data.get("session_id") if isinstance(data, dict) else None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value)
    return None


def _session_id_of(raw: bytes) -> str | None:
    """Best effort: the session_id of a line that is not valid JSON (torn, say)."""
    try:
        return _session_id_in(jiter.from_json(raw, cache_mode="keys"))  # its last session_id
    except ValueError:
        pass
    if match := _SESSION_ID_IN_RAW.search(raw):
        if match.group(1) is not None:
            return _decode_string(b'"' + match.group(1) + b'"')
        return match.group(2).decode()
    return None


def parse_record(
    raw: bytes | str,
    *,
    path: str = "<input>",
    line: int = 1,
    space: ActionSpace | None = None,
) -> ActionRecord:
    """Validate one JSONL line. Raises `RecordError` naming path, line and field, never else."""
    space = space or ActionSpace.default()
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="surrogatepass")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(
            path,
            line,
            f"is not UTF-8 (byte {exc.start}); re-encode the file as UTF-8",
            session_id=_session_id_of(raw),
        ) from None
    try:
        data = jiter.from_json(raw, catch_duplicate_keys=True, cache_mode="keys")
    except ValueError as exc:
        field, message = _json_problem(str(exc), raw)
        raise RecordError(
            path, line, message, field=field, session_id=_session_id_of(raw)
        ) from None
    try:
        return space.record_model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        described = [_describe(e, space) for e in errors[:_SHOWN_ERRORS]]
        message = "; ".join(m for _, m in described)
        if (more := len(errors) - _SHOWN_ERRORS) > 0:
            message += f"; and {more} more problem{'s' if more > 1 else ''}"
        raise RecordError(
            path, line, message, field=described[0][0], session_id=_session_id_in(data)
        ) from None
    except RecursionError:  # not expected: jiter bounds the depth of what it returns
        raise RecordError(path, line, "is nested too deeply to read; flatten it") from None
