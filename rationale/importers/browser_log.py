"""Import a user's own browser logs (one JSONL line per raw page event) into records.

The format (README, "Browser logs") is one JSON object per line:

- ``session`` (required): the session id; ``time``: a number (ms) or an ISO 8601 time, used to
  order a session's events (file order breaks ties and stands in when it is missing).
- ``type`` (required): ``mousedown``, ``mouseup``, ``click``, ``dblclick``, ``keydown``,
  ``keypress``, ``keyup``, ``input`` or ``change``; other types (scroll, focus) are read and
  ignored.
- ``target``: the element, as exactly one of ``{"css": ...}``, ``{"xpath": ...}`` or
  ``{"node_id": ...}`` (matched against a ``data-node-id`` or ``backend_node_id`` attribute).
- ``key``: a key event's ``KeyboardEvent.key`` (``"a"``, ``"Backspace"``, ``"Enter"``, ``"Tab"``);
  a keydown of one character types it. ``value``: an ``input``/``change`` event's field value.
- ``html`` (the page's HTML) or ``page`` (a file holding it, relative to the log file): the page
  before the event. A line without either has the session's last page.
- ``instruction`` and ``user``: optional; the first one given in a session is used.

The events are grouped by `rationale.importers.events`, exactly as MiniWoB's are, and each
step's page is simplified by `rationale.pages`; the target is the ``name`` its locator's element
got there. A bad line raises a `SourceError` naming the file, the line and the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rationale.errors import SourceError
from rationale.importers.events import RawEvent, StepBuilder, group_events, import_space
from rationale.importers.source_json import parse_json
from rationale.pages import SimplePage, Target, simplify_html
from rationale.schema import ActionRecord

__all__ = ["read_browser_log"]

_EVENT_TYPES = frozenset(
    {"mousedown", "mouseup", "click", "dblclick", "keydown", "keypress", "keyup", "input", "change"}
)
_LOCATORS = ("css", "xpath", "node_id")
_NODE_ID_ATTRIBUTES = ("data-node-id", "backend_node_id")
_SPECIAL = {"Backspace", "Enter", "Tab"}


class _Line:
    """One checked line: its event, and where it came from."""

    def __init__(self, where: str, n: int, row: dict[str, Any], page: str | None) -> None:
        self.where, self.n, self.row, self.page = where, n, row, page


def _bad(where: str, field: str, message: str) -> SourceError:
    return SourceError(f"{where}: field '{field}': {message}")


def _check(path: Path, n: int, row: Any) -> _Line:
    """A line's fields checked; the page resolved to its HTML text (or None: the last one)."""
    where = f"{path} line {n}"
    if not isinstance(row, dict):
        raise SourceError(f"{where}: expected a JSON object (one event per line)")
    session = row.get("session")
    if isinstance(session, bool) or not isinstance(session, (str, int)) or not str(session).strip():
        raise _bad(where, "session", "missing or empty; every event needs its session id")
    kind = row.get("type")
    if not isinstance(kind, str) or not kind.strip():
        raise _bad(where, "type", 'missing; give the DOM event type, e.g. "click"')
    target = row.get("target")
    if target is not None:
        if not isinstance(target, dict) or len(target) != 1 or next(iter(target)) not in _LOCATORS:
            raise _bad(
                where,
                "target",
                f'{target!r} must be one of {{"css": ...}}, {{"xpath": ...}} or {{"node_id": ...}}',
            )
        (value,) = target.values()
        if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip():
            raise _bad(where, "target", "the locator is empty")
    elif kind.lower() in _EVENT_TYPES and kind.lower() not in ("keydown", "keypress", "keyup"):
        raise _bad(where, "target", f"a {kind} event needs its element: css, xpath or node_id")
    for field in ("key", "value", "instruction", "user", "html", "page"):
        if row.get(field) is not None and not isinstance(row[field], str):
            raise _bad(where, field, f"must be a string, not {type(row[field]).__name__}")
    if row.get("html") is not None and row.get("page") is not None:
        raise _bad(where, "page", "give the page as 'html' or as 'page' (a file), not both")
    time = row.get("time")
    if time is not None and (isinstance(time, bool) or not isinstance(time, (int, float, str))):
        raise _bad(where, "time", "must be a number (ms) or an ISO 8601 time")
    html = row.get("html")
    if row.get("page") is not None:
        file = path.parent / row["page"]
        try:
            html = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _bad(
                where, "page", f"cannot read {file} ({exc}); the path is relative to the log file"
            ) from None
    return _Line(where, n, row, html)


def _time_key(value: Any) -> tuple[int, float]:
    from datetime import datetime

    if isinstance(value, (int, float)):
        return (0, float(value))
    if isinstance(value, str):
        try:
            return (0, datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            pass
    return (1, 0.0)  # no usable time: file order


def _ms(value: Any) -> float | None:
    known, ms = _time_key(value)
    return ms if known == 0 else None


class _Pages:
    """Pages simplified once per distinct HTML text, and targets located in them."""

    def __init__(self) -> None:
        self.pages: dict[str, SimplePage] = {}

    def page(self, html: str, where: str) -> SimplePage:
        page = self.pages.get(html)
        if page is None:
            try:
                page = self.pages[html] = simplify_html(html)
            except SourceError as exc:
                raise _bad(where, "html", str(exc)) from None
        return page

    def __call__(self, ev: RawEvent) -> tuple[SimplePage, Target, dict[str, Any]]:
        page = self.page(ev.page, ev.where)
        if ev.key is None:
            return page, Target(None, "unknown"), {}
        how, value = ev.key
        if how == "node_id":
            found = []
            for attribute in _NODE_ID_ATTRIBUTES:
                found += page.locate(attribute=(attribute, value))
        else:
            try:
                found = page.locate(**{how: value})
            except SourceError as exc:
                raise _bad(ev.where, "target", str(exc)) from None
        targets = {page.resolve(el) for el in found}
        if not found:
            target = Target(None, "unknown")
        elif len(targets) == 1:
            target = targets.pop()
        else:
            target = Target(None, "ambiguous")
        element: dict[str, Any] = {"locator": {how: value}}
        if found:
            el = found[0]
            element |= {
                "tag": str(el.tag).lower(),
                "id": el.get("id") or None,
                "classes": " ".join((el.get("class") or "").split()) or None,
            }
        return page, target, element


def _events(lines: list[_Line]) -> Iterator[RawEvent]:
    html = None
    for line in lines:
        html = line.page if line.page is not None else html
        row = line.row
        kind = row["type"].lower()
        if kind not in _EVENT_TYPES:
            continue
        if html is None:
            raise _bad(
                line.where,
                "html",
                "no page yet in this session: give the page before "
                "the event as 'html' or 'page' (a file)",
            )
        target = row.get("target")
        key = None if target is None else next((k, str(v)) for k, v in target.items())
        pressed = row.get("key")
        yield RawEvent(
            type=kind,
            key=key,
            page=html,
            time=_ms(row.get("time")),
            char=pressed if kind == "keydown" and pressed and len(pressed) == 1 else None,
            special=pressed if pressed in _SPECIAL else None,
            value=row.get("value"),
            where=line.where,
        )


def read_browser_log(
    path: str | Path,
    *,
    max_page_tokens: int | None = None,
    tally: dict[str, int] | None = None,
) -> Iterator[ActionRecord]:
    """Records from one browser log (the format above), session by session in first-seen order."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    sessions: dict[str, list[_Line]] = {}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if raw.strip():
                line = _check(path, n, parse_json(raw, f"{path} line {n}"))
                sessions.setdefault(str(line.row["session"]).strip(), []).append(line)
    model = import_space().record_model
    tally = {} if tally is None else tally
    for session_id, lines in sessions.items():
        lines.sort(key=lambda ln: (_time_key(ln.row.get("time")), ln.n))
        first = {f: next((ln.row[f] for ln in lines if ln.row.get(f)), None)
                 for f in ("instruction", "user")}  # fmt: skip
        builder = StepBuilder(_Pages(), max_page_tokens=max_page_tokens, tally=tally)
        for step, (action, context, meta) in enumerate(
            builder.actions(group_events(_events(lines), tally))
        ):
            try:
                yield model(
                    session_id=session_id,
                    step=step,
                    context=context,
                    action=action,
                    instruction=first["instruction"],
                    user_id=first["user"],
                    meta=meta,
                )
            except ValidationError as exc:
                raise SourceError(
                    f"{path}: session {session_id!r} step {step}: {exc.errors()[0]['msg']}"
                ) from None
