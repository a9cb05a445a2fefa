"""Raw browser events -> steps: the one grouping shared by MiniWoB and a user's browser logs.

A person's "click Search" is a mousedown, a mouseup and a click; their "type Phoenix" is a
dozen key events. `group_events` turns one session's raw events into the steps a model imitates:

- a pointer gesture (mousedown, then its mouseup and click) is one ``click``; the target is
  what the button went down on, the page the one before the mousedown. A click with no
  mousedown of its own that follows a gesture at once (a ``<label>`` clicking its control) is
  part of that gesture; otherwise (a key that activates a button) it is a click of its own.
  A ``dblclick`` is no step of its own: the two clicks before it are (a page counts both: two
  quick clicks on "+" add two passengers); the second gets ``meta.double_click``.
- key events into one element, until the person acts elsewhere (a pointer event, keys into
  another element, Tab), are one typing step: ``type`` with the text typed (the characters of
  the key presses, Backspace removing the last one), or ``type_and_submit`` when Enter ends
  it. An ``input``/``change`` event's ``value`` (the field's whole value) replaces the text.
  Key events that typed nothing (Shift, arrows alone) make no step.
- anything else (scroll, focus, mousemove) is not an action.

`StepBuilder` then makes each step a record: the page before its first event, simplified by
`rationale.pages`, is the ``context``; the target is the ``name`` its element got there. A
target with no name (a click on a form's background) keeps its step, with a stand-in name and
``meta.target.named`` false. Which element counts as "one element" is the reader's ``key``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rationale.pages import Target, cut_page
from rationale.pages.names import slug

if TYPE_CHECKING:
    from rationale.schema import ActionSpace

__all__ = [
    "IMPORT_ACTIONS",
    "RawEvent",
    "RawStep",
    "StepBuilder",
    "group_events",
    "import_space",
    "target_summary",
    "write_action_space",
]

#: The action space of the event importers: the paper's, plus ``type`` (text typed into a
#: field without submitting it, as when a person types a city and then picks a suggestion).
IMPORT_ACTIONS: dict[str, Any] = {
    "action": {
        "click": {"description": "Click an interactive element.", "fields": {"name": "name"}},
        "type": {
            "description": "Type text into an input element (without submitting it).",
            "fields": {"name": "name", "text": "text"},
        },
        "type_and_submit": {
            "description": "Type text into an input element and submit it (Enter).",
            "fields": {"name": "name", "text": "text"},
        },
        "terminate": {
            "description": "Leave the site or close the window: the session ends.",
            "fields": {},
        },
    },
}


@lru_cache(maxsize=1)
def import_space() -> ActionSpace:
    """`IMPORT_ACTIONS` as an action space (what `write_action_space` writes beside the output)."""
    from rationale.schema import ActionSpace

    return ActionSpace.from_declaration(IMPORT_ACTIONS, source="<import actions>")


def write_action_space(path: Path) -> Path:
    """Write `IMPORT_ACTIONS` as a TOML action-space file (for ``--action-space``)."""
    decl = import_space().declaration()
    lines = [
        "# The action space of `rationale import miniwob` / `browser-log`: pass this file as",
        "# --action-space to validate, synth, eval (or action_space in rationale.toml).",
        f"purchase_pattern = {json.dumps(decl['purchase_pattern'])}",
        f"purchase_type = {json.dumps(decl['purchase_type'])}",
        f"terminate_type = {json.dumps(decl['terminate_type'])}",
    ]
    for name, spec in decl["action"].items():
        lines += ["", f"[action.{name}]", f"description = {json.dumps(spec['description'])}"]
        fields = ", ".join(f"{k} = {json.dumps(v)}" for k, v in spec["fields"].items())
        lines.append(f"fields = {{ {fields} }}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


_PRESS, _RELEASE, _CLICK, _DOUBLE = "mousedown", "mouseup", "click", "dblclick"
_KEYS = frozenset({"keydown", "keypress", "keyup", "input", "change"})
#: A click this soon (ms) after a gesture's last event belongs to it: its own click (right
#: after the mouseup) or one the browser forwards (a label's click to its control).
_FORWARDED_MS = 100


@dataclass
class RawEvent:
    """One browser event as a reader found it.

    ``key`` says which element it happened on (equal keys: the same element; None: none known);
    ``page`` is the page before it and ``node`` its target there, both passed back to the
    reader's resolver untouched. ``char`` is a character typed (a reader puts it on one event per
    key: MiniWoB's keypress, a browser log's keydown), ``special`` a key that edits
    (``Backspace``, ``Enter``, ``Tab``), ``value`` a field's whole value after the event.
    """

    type: str
    key: Hashable | None
    page: Any = None
    node: Any = None
    time: float | None = None
    char: str | None = None
    special: str | None = None
    value: str | None = None
    where: str = ""


@dataclass
class RawStep:
    """A group of events that make one action: ``kind`` is ``click`` or ``type``."""

    kind: str
    first: RawEvent
    events: list[RawEvent] = field(default_factory=list)
    text: str = ""
    submitted: bool = False
    double_click: bool = False
    deleted: int = 0  # Backspaces that removed text already in the field
    clicked: bool = False  # the gesture's own click event arrived
    edited: bool = False  # a key changed the text (a character, Backspace, a value)


def group_events(events: Iterable[RawEvent], tally: dict[str, int] | None = None) -> list[RawStep]:
    """One session's events, in time order, grouped into steps (see the module docstring).

    ``tally`` counts what made no step: typing that typed nothing, clicks on no element.
    """
    steps: list[RawStep] = []
    typing: RawStep | None = None
    gesture: RawStep | None = None
    for ev in events:
        kind = ev.type.lower()
        if kind in _KEYS:
            gesture = None
            if typing is None or ev.key != typing.first.key:
                typing = RawStep("type", ev)
                steps.append(typing)
            typing.events.append(ev)
            _type_into(typing, ev, kind)
            if typing.submitted or ev.special == "Tab":
                typing = None  # Enter and Tab end it: the next keys are a new step
            continue
        if kind not in (_PRESS, _RELEASE, _CLICK, _DOUBLE):
            continue
        typing = None
        if kind == _PRESS:
            gesture = RawStep("click", ev, [ev])
            steps.append(gesture)
        elif kind == _RELEASE:
            if gesture is not None:
                gesture.events.append(ev)
        elif kind == _CLICK:
            if gesture is not None and _soon_after(gesture.events[-1], ev):
                gesture.events.append(ev)  # its own click, or one the browser forwarded
                gesture.clicked = True
            else:
                gesture = RawStep("click", ev, [ev], clicked=True)
                steps.append(gesture)
        else:  # dblclick: the browser's note that the last two clicks were quick
            last = steps[-1] if steps and steps[-1].kind == "click" else None
            if last is not None:
                last.events.append(ev)
                last.double_click = True
    kept = [s for s in steps if s.kind == "click" or s.edited]
    if tally is not None:
        tally["typing_without_text"] = tally.get("typing_without_text", 0) + len(steps) - len(kept)
    # A pointer gesture on no element of the recorded page is outside it: a scrollbar drag (a
    # press no click follows) or a click beside the task's area. There is nothing to name.
    out = [s for s in kept if not (s.kind == "click" and s.first.key is None)]
    if tally is not None:
        tally["clicks_on_no_element"] = tally.get("clicks_on_no_element", 0) + len(kept) - len(out)
    return out


def _soon_after(earlier: RawEvent, later: RawEvent) -> bool:
    if earlier.time is None or later.time is None:
        return True
    return 0 <= later.time - earlier.time <= _FORWARDED_MS


def _type_into(step: RawStep, ev: RawEvent, kind: str) -> None:
    if ev.value is not None and kind in ("input", "change"):
        step.text, step.edited = ev.value, True
    elif ev.special == "Backspace" and kind == "keydown":
        if step.text:
            step.text = step.text[:-1]
        else:
            step.deleted += 1
        step.edited = True
    elif ev.special == "Enter" and kind == "keydown":
        step.submitted = step.edited = True
    elif ev.char is not None:  # the reader puts a typed character on one event per key
        step.text += ev.char
        step.edited = True


# -- steps -> records --------------------------------------------------------------------------


Resolver = Callable[[RawEvent], tuple[Any, Target, dict[str, Any]]]


@dataclass
class StepBuilder:
    """Makes records of grouped steps and keeps the import's tally of targets.

    ``resolve(event)`` gives the simplified page before ``event``, its target's `Target`, and
    what describes the target element (tag, id, classes) for ``meta.target``.
    ``max_page_tokens`` cuts each page with `rationale.pages.cut_page` (None: whole pages).
    """

    resolve: Resolver
    max_page_tokens: int | None = None
    tally: dict[str, int] = field(default_factory=dict)

    def actions(self, steps: list[RawStep]) -> Iterator[tuple[dict[str, Any], str, dict]]:
        """(action, context, meta) for each step, in order."""
        for raw in steps:
            page, target, element = self.resolve(raw.first)
            context = page.html
            survived = target.named
            if self.max_page_tokens is not None:
                shown = cut_page(page, self.max_page_tokens)
                context, survived = shown.text, target.named and shown.survived(target.name)
            name = target.name or _stand_in(element)
            if raw.kind == "click":
                action: dict[str, Any] = {"type": "click", "name": name}
            else:
                kind = "type_and_submit" if raw.submitted else "type"
                action = {"type": kind, "name": name, "text": raw.text}
            self._count(target, bool(survived))
            meta: dict[str, Any] = {
                "events": [e.type for e in raw.events],
                "target": {"named": target.named, "how": target.how, **element},
            }
            if raw.first.time is not None:
                meta["time"] = raw.first.time
            if raw.double_click:
                meta["double_click"] = True
            if raw.deleted:
                meta["deleted_before"] = raw.deleted
            yield action, context, meta

    def _count(self, target: Target, survived: bool) -> None:
        t = self.tally
        t["actions"] = t.get("actions", 0) + 1
        t["named"] = t.get("named", 0) + target.named
        t["in_page"] = t.get("in_page", 0) + survived
        if not target.named:
            key = f"unnamed_{target.how}"
            t[key] = t.get(key, 0) + 1


def _stand_in(element: dict[str, Any]) -> str:
    """A name for a target the page does not name: ``unnamed.<tag>[.<id or first class>]``."""
    label = slug(str(element.get("id") or "")) or slug(
        (str(element.get("classes") or "").split() or [""])[0]
    )
    tag = slug(str(element.get("tag") or "")) or "element"
    return f"unnamed.{tag}" + (f".{label}" if label else "")


def target_summary(tally: dict[str, int]) -> dict[str, Any]:
    """The import's summary of targets: how many actions, how many named in their page."""
    actions, in_page = tally.get("actions", 0), tally.get("in_page", 0)
    return {
        "actions": actions,
        "named": tally.get("named", 0),
        "in_page": in_page,  # named, and still there after the cut (if pages are cut)
        "share_in_page": round(in_page / actions, 4) if actions else None,
        "unnamed": {k.removeprefix("unnamed_"): v for k, v in tally.items() if "unnamed_" in k},
    }
