"""A record's context read back as a `SimplePage`, when it is the simplifier's output.

A record carries its page as text, so a prompt that must cut it (`rationale.context`) needs the
page's lines again. The simplifier's text is regular enough to be read back exactly: one element
or text run per line, two spaces of indent per depth, only the attributes it writes, unnamed
elements only of the structure tags it keeps. `read_page` checks all of that and gives None for
anything else (raw HTML, an accessibility tree, a page written by hand), so a plain context keeps
the plain cut. This reads the project's own line format, never arbitrary HTML.
"""

from __future__ import annotations

from html import unescape

from rationale.pages.page import Line, SimplePage
from rationale.pages.rules import STRUCTURE_TAGS

__all__ = ["read_page"]

#: The attributes `rationale.pages.simplify` writes.
_ATTRS = frozenset(
    {"name", "type", "value", "placeholder", "role", "aria-label", "checked", "selected",
     "disabled", "alt"}
)  # fmt: skip
_VOID = frozenset({"input", "img"})


class _NotAPage(Exception):
    pass


def read_page(text: str) -> SimplePage | None:
    """``text`` as a `SimplePage` (lines, names; no input nodes to resolve), or None when it is
    not exactly what the simplifier writes. A trailing cut marker line (an import's
    ``--max-page-tokens``) reads as a text line."""
    if not text or "name=" not in text:
        return None
    try:
        lines = _lines(text)
    except _NotAPage:
        return None
    if "\n".join("  " * ln.depth + ln.text for ln in lines) != text:
        return None
    names = tuple(ln.name for ln in lines if ln.action and ln.name)
    if not names:
        return None
    return SimplePage(text, names, tuple(lines), _targets={}, _source=None)


def _lines(text: str) -> list[Line]:
    lines: list[Line] = []
    opened: list[tuple[int, str]] = []  # (line index, tag) of the elements still open
    for raw in text.split("\n"):
        body = raw.lstrip(" ")
        indent = len(raw) - len(body)
        depth = indent // 2
        closing = body.startswith("</")
        if not body or indent % 2 or depth != len(opened) - closing:
            raise _NotAPage
        if closing:
            if not opened or body != f"</{opened[-1][1]}>":
                raise _NotAPage
            start, _ = opened.pop()
            first = lines[start]
            lines[start] = Line(first.depth, first.text, "open", first.name, first.action,
                                pair=len(lines))  # fmt: skip
            lines.append(Line(depth, body, "close", pair=start))
        elif body.startswith("<"):
            tag, attrs, end = _tag(body, 0)
            if end == len(body) and tag not in _VOID:
                opened.append((len(lines), tag))
                lines.append(Line(depth, body, "open", attrs.get("name"), action=False))
            else:
                name = _element_name(body)
                lines.append(Line(depth, body, "element", name, action=name is not None))
        else:
            lines.append(Line(depth, body, "text"))
    if opened:
        raise _NotAPage
    return _mark_sections(lines)


def _tag(line: str, pos: int) -> tuple[str, dict[str, str], int]:
    """The opening tag at ``pos`` as the simplifier writes it: tag, attributes, end position."""
    end = line.find(">", pos)
    if end < 0:
        raise _NotAPage
    inner = line[pos + 1 : end]
    void = inner.endswith(" /")
    parts = (inner[:-2] if void else inner).split(" ")
    tag = parts[0]
    if not tag or not all(ch.isalnum() or ch == "-" for ch in tag) or void != (tag in _VOID):
        raise _NotAPage
    attrs: dict[str, str] = {}
    rest = " ".join(parts[1:])
    while rest:  # values are escaped (no quote, < or > inside), so `"` ends a value
        key, eq, after = rest.partition('="')
        if eq and " " not in key:
            value, quote, rest = after.partition('"')
            if not quote or (rest and not rest.startswith(" ")):
                raise _NotAPage
            rest, attrs[key] = rest[1:], unescape(value)
        else:
            key, _, rest = rest.partition(" ")
            if key not in ("checked", "selected", "disabled"):
                raise _NotAPage
            attrs[key] = ""
    if set(attrs) - _ATTRS or ("name" not in attrs and tag not in STRUCTURE_TAGS):
        raise _NotAPage  # the simplifier unwraps unnamed elements other than these
    if "name" not in attrs and set(attrs) - ({"alt"} if tag == "img" else set()):
        raise _NotAPage
    return tag, attrs, end + 1


def _element_name(line: str) -> str | None:
    """The one name on a whole-element line: ``<li><a name="faq">FAQ</a></li>``."""
    tags: list[str] = []
    names: list[str] = []
    pos = 0
    while pos < len(line) and line.startswith("<", pos) and not line.startswith("</", pos):
        tag, attrs, pos = _tag(line, pos)
        if "name" in attrs:
            names.append(attrs["name"])
        if tag in _VOID:
            break
        tags.append(tag)
    text_end = line.find("<", pos)
    text_end = len(line) if text_end < 0 else text_end
    if "<" in line[pos:text_end] or ">" in line[pos:text_end]:
        raise _NotAPage
    closes = "".join(f"</{t}>" for t in reversed(tags))
    if line[text_end:] != closes or len(names) > 1:
        raise _NotAPage
    return names[0] if names else None


def _mark_sections(lines: list[Line]) -> list[Line]:
    """Tell a named section from a named element on an opening line: every name inside a
    section (a form, a card) has the section's name as its prefix; an element is acted on."""
    out = list(lines)
    for i, line in enumerate(lines):
        if line.kind != "open" or line.name is None:
            continue
        inside = [ln.name for ln in lines[i + 1 : line.pair] if ln.name]
        section = (
            not line.text.startswith("<select ")
            and bool(inside)
            and all(n.startswith(line.name + ".") for n in inside)
        )
        out[i] = Line(line.depth, line.text, "open", line.name, not section, line.pair)
    return out
