"""Import raw Mind2Web train files (JSON lists of sessions) into records.

The mapping, fixed here so every later stage agrees:

- one Mind2Web task (``annotation_id``) is one session; its k-th action is step k (from 0);
  ``confirmed_task`` becomes ``instruction``.
- ``context`` is the action's ``cleaned_html`` (else its ``raw_html``) through the page
  simplifier (`rationale.pages`), and the target ``name`` is the name the positive candidate's
  ``backend_node_id`` element got there (see `page_target`); an action without HTML (the public
  copy strips it) keeps ``context`` null and the name below.
- ``TYPE`` becomes ``type_and_submit`` with the typed ``value`` as ``text``;
  ``SELECT`` becomes a ``click`` on ``<select name>.<option slug>``;
  ``CLICK`` (including the original ``HOVER`` and ``ENTER``) becomes ``click``.
- without a page, or when the target got no name in it (a container, a node not in the page),
  the target ``name`` is `element_name`: ``<role>.<label>`` slugged, from ``action_reprs``;
  ``meta.target_in_page`` says which (see `convert_session`).
- when several positive candidates exist, the first with ``is_original_target`` wins (else the
  first one); its tag and attributes go into ``meta.target``, with the original op, website,
  domain, subdomain, action_uid and the raw ``action_repr``.
- no terminate step is added unless ``add_terminate`` is set.
"""

from __future__ import annotations

import hashlib
import heapq
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rationale.errors import SourceError
from rationale.importers.source_json import loads, parse_json
from rationale.importers.source_json import source_files as json_source_files
from rationale.schema import ActionRecord

#: Attributes tried, in order, when the visible label is empty. The first four are the ones the
#: Mind2Web convention names (id, aria-label, name, placeholder); title, alt and value follow,
#: then the first CSS class; an element with none of them is ``unlabeled``.
LABEL_FALLBACK_ATTRIBUTES = (
    "id",
    "aria_label",
    "aria-label",
    "name",
    "placeholder",
    "title",
    "alt",
    "value",
)
MAX_SLUG = 60

_REPR = re.compile(
    r"^\[(?P<role>[^\]]*)\]\s*(?P<label>.*?)\s*->\s*(?P<op>[A-Z]+)(?::\s?(?P<value>.*))?$", re.S
)


def slug(text: str) -> str:
    """A deterministic identifier: NFKC, case folded, runs of anything but letters and digits
    (of any script) become one ``_``, trimmed, at most 60 characters."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[\W_]+", "_", text).strip("_")
    return text[:MAX_SLUG].rstrip("_")


def _candidate(action: dict[str, Any]) -> dict[str, Any] | None:
    candidates = action.get("pos_candidates") or []
    for c in candidates:
        if c.get("is_original_target"):
            return c
    return candidates[0] if candidates else None


def _attributes(candidate: dict[str, Any] | None) -> dict[str, Any]:
    if not candidate:
        return {}
    attrs = candidate.get("attributes") or {}
    if isinstance(attrs, str):
        try:
            attrs = loads(attrs.encode("utf-8", errors="surrogatepass"))
        except ValueError:
            return {}
    return attrs if isinstance(attrs, dict) else {}


def element_name(role: str, label: str, attributes: dict[str, Any]) -> str:
    """``<role slug>.<label slug>``; an empty label falls back to `LABEL_FALLBACK_ATTRIBUTES`,
    then the first CSS class, then ``unlabeled``."""
    role_slug = slug(role) or "element"
    label_slug = slug(label)
    if not label_slug:
        for key in LABEL_FALLBACK_ATTRIBUTES:
            value = attributes.get(key)
            if isinstance(value, str) and (label_slug := slug(value)):
                break
    if not label_slug:
        classes = str(attributes.get("class") or "").split()
        label_slug = slug(classes[0]) if classes else ""
    return f"{role_slug}.{label_slug or 'unlabeled'}"


#: Mind2Web's recorder writes DOM properties as attributes of its own names. Each is given its
#: HTML meaning before simplification, on every element alike (the page stays blind to the
#: action): ``is_clickable`` (a click listener) becomes an ``onclick`` the simplifier counts as a
#: handler and never prints; the flags count only when ``"true"``.
_RECORDED_ATTRIBUTES = {
    "aria_label": "aria-label",
    "input_value": "value",
    "input_checked": "checked",
    "option_selected": "selected",
    "is_clickable": "onclick",
}
_FLAGS = frozenset({"input_checked", "option_selected", "is_clickable"})


@dataclass(frozen=True)
class PageTarget:
    """An action's target in its page: ``name`` (None when it got none) and ``how``, one of
    `rationale.pages.Target`'s (``element``, ``inside``, ``label``; ``not_actionable``,
    ``hidden``, ``unknown``, ``ambiguous``) or ``no_candidate`` (no positive candidate) or
    ``option_not_in_page`` (a SELECT whose chosen option is not among the select's options)."""

    name: str | None
    how: str


def page_html(action: dict[str, Any]) -> tuple[str, str] | None:
    """``(field, html)``: the action's ``cleaned_html``, else its ``raw_html``; None if both
    are empty (the public copy)."""
    for key in ("cleaned_html", "raw_html"):
        html = action.get(key)
        if isinstance(html, str) and html.strip():
            return key, html
    return None


def html_for_simplifier(html: str) -> str:
    """The page with Mind2Web's recorded attributes renamed to HTML's (`_RECORDED_ATTRIBUTES`)."""
    if not any(key in html for key in _RECORDED_ATTRIBUTES):
        return html  # nothing to rename: skip a second parse
    import lxml.etree
    import lxml.html

    try:
        root = lxml.html.document_fromstring(html, parser=lxml.html.HTMLParser(huge_tree=True))
    except (lxml.etree.ParserError, ValueError) as err:
        raise SourceError(f"page HTML cannot be parsed ({err})") from err
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue  # a comment
        for key in _RECORDED_ATTRIBUTES.keys() & element.attrib.keys():
            value = element.attrib.pop(key)
            html_key = _RECORDED_ATTRIBUTES[key]
            if key in _FLAGS:
                if value.strip().lower() == "true" and html_key not in element.attrib:
                    element.set(html_key, "")
            elif html_key not in element.attrib:
                element.set(html_key, value)
    return lxml.html.tostring(root, encoding="unicode")


def page_target(page: Any, candidate: dict[str, Any] | None, op: str, value: str) -> PageTarget:
    """The name, in ``page`` (a `rationale.pages.SimplePage`), of the candidate's element.

    Found by its ``backend_node_id``. A click on an ``<svg>`` icon (or a shape inside it),
    which the simplifier drops, is a click on the element around the icon. A SELECT's target
    is the chosen ``<option>`` (matched by its text or value), named under its select.
    """
    if candidate is None:
        return PageTarget(None, "no_candidate")
    found = page.locate(attribute=("backend_node_id", str(candidate.get("backend_node_id"))))
    if len(found) != 1:
        return PageTarget(None, "ambiguous" if found else "unknown")
    element = found[0]
    if op == "SELECT":
        wanted = " ".join(value.split()).casefold()
        options = [
            o
            for o in element.iter("option")
            if " ".join(o.text_content().split()).casefold() == wanted
            or (o.get("value") or "").casefold() == wanted
        ]
        if not options:
            return PageTarget(None, "option_not_in_page")
        element = options[0]
    target = page.resolve(element)
    if target.name is None and target.how in ("hidden", "unknown"):
        icon = next((e for e in reversed(list(element.iterancestors())) if e.tag == "svg"), None)
        icon = element if icon is None and element.tag == "svg" else icon
        if icon is not None and icon.getparent() is not None:
            around = page.resolve(icon.getparent())
            if around.name is not None:
                return PageTarget(around.name, "inside")
    return PageTarget(target.name, target.how)


def convert_session(task: dict[str, Any], *, add_terminate: bool = False) -> list[ActionRecord]:
    """One raw Mind2Web task as records.

    An action with a page adds to ``meta``: ``page`` (``cleaned_html`` or ``raw_html``, the
    field simplified into ``context``), ``target_in_page`` (whether the action names an element
    of that page), ``target_how`` (`PageTarget.how`: how it was found, or why it got no name,
    when the name is then `element_name`'s) and ``repr_name`` (`element_name`'s name).
    """
    session_id = str(task["annotation_id"])
    reprs, actions = task.get("action_reprs") or [], task.get("actions") or []
    if len(reprs) != len(actions):
        raise ValueError(f"{len(reprs)} action_reprs for {len(actions)} actions")
    shared_meta = {k: task.get(k) for k in ("website", "domain", "subdomain")}
    records = []
    for step, (action_repr, action) in enumerate(zip(reprs, actions, strict=True)):
        m = _REPR.match(action_repr.strip())
        if not m:
            raise ValueError(f"action_reprs[{step}] {action_repr!r} is not '[role] label -> OP'")
        operation = action.get("operation") or {}
        op = operation.get("op") or m["op"]
        value = operation.get("value")
        if value is None:
            value = m["value"] or ""
        candidate = _candidate(action)
        attributes = _attributes(candidate)
        name = element_name(m["role"], m["label"], attributes)
        if op == "SELECT":
            name = f"{name}.{slug(value) or 'unlabeled'}"
        elif op not in ("TYPE", "CLICK"):
            raise ValueError(f"actions[{step}].operation.op {op!r} is not CLICK, TYPE or SELECT")
        context: str | None = None
        page_meta: dict[str, Any] = {}
        if (html := page_html(action)) is not None:
            context, target = _simplified(html, candidate, op, value, where=f"actions[{step}]")
            page_meta = {
                "page": html[0],
                "target_in_page": target.name is not None,
                "target_how": target.how,
                "repr_name": name,
            }
            name = target.name or name
        if op == "TYPE":
            act: dict[str, Any] = {"type": "type_and_submit", "name": name, "text": value}
        else:
            act = {"type": "click", "name": name}
        meta = {
            **shared_meta,
            "action_uid": action.get("action_uid"),
            "op": op,
            "original_op": operation.get("original_op") or op,
            "value": value,
            "action_repr": action_repr,
            "target": None
            if candidate is None
            else {
                "tag": candidate.get("tag"),
                "attributes": attributes,
                "backend_node_id": candidate.get("backend_node_id"),
            },
            "positive_candidates": len(action.get("pos_candidates") or []),
            **page_meta,
        }
        records.append(
            ActionRecord(
                session_id=session_id,
                step=step,
                context=context,
                action=act,
                instruction=task.get("confirmed_task"),
                meta=meta,
            )
        )
    if add_terminate:
        records.append(
            ActionRecord(
                session_id=session_id,
                step=len(records),
                action={"type": "terminate"},
                instruction=task.get("confirmed_task"),
                meta={**shared_meta, "added": "terminate"},
            )
        )
    return records


def _simplified(
    html: tuple[str, str], candidate: dict[str, Any] | None, op: str, value: str, *, where: str
) -> tuple[str, PageTarget]:
    """The simplified page of ``html`` (field, text) and the target's name in it."""
    from rationale.pages import simplify_html

    try:
        page = simplify_html(html_for_simplifier(html[1]))
    except SourceError as err:
        raise ValueError(f"{where}.{html[0]}: {err}") from None
    return page.html, page_target(page, candidate, op, value)


def source_files(sources: Iterable[str | Path]) -> list[Path]:
    """The JSON files named, with folders expanded to their ``*.json`` files (sorted)."""
    return json_source_files(sources, lambda folder: folder.glob("*.json"), ".json")


def read_mind2web(
    sources: Iterable[str | Path],
    *,
    add_terminate: bool = False,
    domains: Iterable[str] = (),
    max_sessions: int | None = None,
) -> Iterator[ActionRecord]:
    """Records from raw Mind2Web files or folders, session by session in file order.

    ``domains`` keeps the sessions of those domains (``Shopping``, ``Travel``, ...; any case).
    ``max_sessions`` keeps that many of them, chosen by a hash of their ``annotation_id``: the
    same sessions every time, spread over every file and website, whatever the files' order.
    """
    tasks: Iterable[tuple[str, dict[str, Any]]] = _tasks(sources)
    wanted = {d.casefold() for d in domains}
    if wanted:
        tasks = (t for t in tasks if str(t[1].get("domain", "")).casefold() in wanted)
    if max_sessions is not None:
        if max_sessions < 1:
            raise SourceError(f"max_sessions must be at least 1, not {max_sessions}")
        ranked = heapq.nsmallest(
            max_sessions, enumerate(tasks), key=lambda t: _rank(t[1][1]["annotation_id"])
        )
        tasks = (task for _, task in sorted(ranked, key=lambda t: t[0]))
    for where, task in tasks:
        try:
            yield from convert_session(task, add_terminate=add_terminate)
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"{where}: {exc}") from None


def read_domains(sources: Iterable[str | Path]) -> list[str]:
    """The domains of the sessions in the sources, sorted."""
    return sorted({str(task.get("domain", "")) for _, task in _tasks(sources)})


def _rank(annotation_id: Any) -> str:
    return hashlib.sha256(str(annotation_id).encode("utf-8")).hexdigest()


def _tasks(sources: Iterable[str | Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every task of the files, with where it is; an annotation_id twice is an error."""
    seen: dict[str, str] = {}
    for path in source_files(sources):
        tasks = parse_json(path.read_bytes(), str(path), not_json="not a JSON file")
        if not isinstance(tasks, list):
            raise SourceError(f"{path}: expected a JSON list of Mind2Web tasks")
        for i, task in enumerate(tasks):
            where = f"{path}: task {i}"
            if not isinstance(task, dict) or "annotation_id" not in task:
                raise SourceError(f"{where}: not a Mind2Web task (no annotation_id)")
            where += f" ({task['annotation_id']})"
            if task["annotation_id"] in seen:
                raise SourceError(
                    f"{where}: annotation_id also in {seen[task['annotation_id']]}; "
                    "pass each file once"
                )
            seen[task["annotation_id"]] = str(path)
            yield where, task
