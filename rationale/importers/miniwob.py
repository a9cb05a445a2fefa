"""Import MiniWoB++ human demonstrations (``.json`` or ``.json.gz``, files or folders) into records.

The format is the same for every MiniWoB task: ``{taskName, utterance, reward, rawReward,
states}``; ``states[0]`` is the page before anything happened, then each browser event has a
state with ``action.timing`` 1 (before it resolves: the page the person saw, with the event's
element flagged ``recordingTarget``) and usually one with timing 3 (after). The mapping:

- one file is one session, its id the file name without ``.json[.gz]``; steps from 0.
- the timing-1 events are grouped into clicks and typing by `rationale.importers.events`; a
  step's ``context`` is the simplified DOM of its first event's state, its target the ``name``
  that the flagged element got there (`rationale.pages`).
- ``utterance`` is the ``instruction`` (a JSON object is written ``Key: value, ...``).
- ``meta`` carries ``task`` (``taskName``, else the file name up to its first ``_``),
  ``reward``, ``raw_reward`` and the session ``outcome``: ``success`` (rawReward 1),
  ``failure`` (-1 or below), ``partial`` (anything between; MiniWoB gives partial credit on
  some tasks) or ``unknown``; failed and partial sessions are kept.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rationale.errors import SourceError
from rationale.importers.events import RawEvent, StepBuilder, group_events, import_space
from rationale.importers.source_json import loads, parse_json
from rationale.importers.source_json import source_files as json_source_files
from rationale.pages import SimplePage, Target, find_flagged, simplify_dom
from rationale.schema import ActionRecord

__all__ = ["outcome_of", "read_miniwob", "readable_utterance", "source_files"]

_SUFFIXES = (".json", ".json.gz")
_SPECIAL_KEYS = {8: "Backspace", 9: "Tab", 13: "Enter"}


def source_files(sources: Iterable[str | Path]) -> list[Path]:
    """The demonstration files named, folders searched recursively (sorted by path)."""
    return json_source_files(
        sources, lambda folder: filter(_is_demo, folder.rglob("*")), ".json or .json.gz"
    )


def _is_demo(path: Path) -> bool:
    return path.name.endswith(_SUFFIXES)


def _session_id(path: Path) -> str:
    name = path.name
    for suffix in (".json.gz", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_demo(path: Path) -> dict[str, Any]:
    """One demonstration file (gzipped or not), checked to have a list of ``states``."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise SourceError(f"{path}: not a readable gzip file ({exc})") from None
    demo = parse_json(raw, str(path), not_json="not a JSON file")
    if not isinstance(demo, dict) or not isinstance(demo.get("states"), list):
        raise SourceError(
            f"{path}: not a MiniWoB demonstration (expected an object with a 'states' list)"
        )
    return demo


def readable_utterance(utterance: Any) -> str | None:
    """The task as a person reads it: a JSON object's pairs as ``Key: value, ...``."""
    if utterance is None:
        return None
    text = str(utterance).strip()
    if text.startswith("{"):
        try:
            fields = loads(text.encode("utf-8", errors="surrogatepass"))
        except ValueError:
            return text
        if isinstance(fields, dict):
            return ", ".join(f"{k}: {v}" for k, v in fields.items())
    return text or None


def outcome_of(raw_reward: Any) -> str:
    """``success``, ``partial``, ``failure`` or ``unknown`` from a session's ``rawReward``."""
    if isinstance(raw_reward, bool) or not isinstance(raw_reward, (int, float)):
        return "unknown"
    if raw_reward >= 1:
        return "success"
    return "failure" if raw_reward <= -1 else "partial"


def _events(demo: dict[str, Any], where: str) -> Iterator[RawEvent]:
    """The timing-1 events of a demonstration: the page before each, and its flagged node."""
    for i, state in enumerate(demo["states"]):
        action = state.get("action") if isinstance(state, dict) else None
        if not isinstance(action, dict) or action.get("timing") != 1:
            continue
        dom = state.get("dom")
        if not isinstance(dom, Mapping):
            raise SourceError(f"{where}: states[{i}] has no 'dom' (the page before the event)")
        flagged = find_flagged(dom)
        node = flagged[0] if flagged else None
        key = None if node is None else (node.get("ref"), node.get("tag"), node.get("id"))
        kind = str(action.get("type") or "")
        char_code, key_code = action.get("charCode"), action.get("keyCode")
        yield RawEvent(
            type=kind,
            key=key,
            page=dom,
            node=node,
            time=state.get("time"),
            char=chr(char_code) if isinstance(char_code, int) and char_code >= 32 else None,
            special=_SPECIAL_KEYS.get(key_code) if isinstance(key_code, int) else None,
            where=f"{where}: states[{i}]",
        )


class _Pages:
    """The simplified page of each DOM a step starts on (a session's DOMs are simplified once)."""

    def __init__(self) -> None:
        self.pages: dict[int, SimplePage] = {}

    def __call__(self, ev: RawEvent) -> tuple[SimplePage, Target, dict[str, Any]]:
        page = self.pages.get(id(ev.page))
        if page is None:
            try:
                page = self.pages[id(ev.page)] = simplify_dom(ev.page)
            except SourceError as exc:
                raise SourceError(f"{ev.where}: {exc}") from None
        node = ev.node
        if node is None:
            return page, Target(None, "unknown"), {}
        element = {
            "tag": str(node.get("tag") or "").lower(),
            "id": node.get("id") or None,
            "classes": " ".join(str(node.get("classes") or "").split()) or None,
        }
        return page, page.resolve(node), element


def read_miniwob(
    sources: Iterable[str | Path],
    *,
    max_page_tokens: int | None = None,
    tally: dict[str, int] | None = None,
) -> Iterator[ActionRecord]:
    """Records from MiniWoB++ demonstration files or folders, session by session.

    The records are of `import_space` (with a ``type`` action). ``tally`` collects the
    target counts (`rationale.importers.events.target_summary` reads it).
    """
    model = import_space().record_model
    seen: dict[str, Path] = {}
    tally = {} if tally is None else tally
    for path in source_files(sources):
        session_id = _session_id(path)
        if session_id in seen:
            raise SourceError(
                f"{path}: session {session_id!r} is also {seen[session_id]}; pass each file once"
            )
        seen[session_id] = path
        demo = read_demo(path)
        builder = StepBuilder(_Pages(), max_page_tokens=max_page_tokens, tally=tally)
        steps = group_events(_events(demo, str(path)), tally)
        if not steps:
            tally["sessions_without_actions"] = tally.get("sessions_without_actions", 0) + 1
        shared = {
            # early recordings have no taskName; their file names start with it
            "task": demo.get("taskName") or session_id.split("_", 1)[0],
            "reward": demo.get("reward"),
            "raw_reward": demo.get("rawReward"),
            "outcome": outcome_of(demo.get("rawReward")),
        }
        instruction = readable_utterance(demo.get("utterance"))
        for step, (action, context, meta) in enumerate(builder.actions(steps)):
            try:
                yield model(
                    session_id=session_id,
                    step=step,
                    context=context,
                    action=action,
                    instruction=instruction,
                    meta={**shared, **meta},
                )
            except ValidationError as exc:
                raise SourceError(f"{path}: step {step}: {exc.errors()[0]['msg']}") from None
