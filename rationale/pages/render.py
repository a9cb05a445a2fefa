"""The simplified page as text: one element or text run per line, indented by depth.

An element whose content is short text stays on one line (``<a name="faq">FAQ</a>``); any other
gets an opening and a closing line around its children. The lines are kept (`Line`) so that a
token budget can drop whole lines without parsing the text again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from rationale.pages.page import Line

__all__ = ["Out", "render"]

#: Text up to this many characters stays on its element's line.
INLINE_CHARS = 160
_VOID = frozenset({"input", "img"})
#: At most this many wrappers go on one line (and the recursion stays shallow).
_INLINE_DEPTH = 8


@dataclass(eq=False)
class Out:
    """An element of the output; ``attrs`` with value "" render as bare boolean attributes."""

    tag: str
    attrs: dict[str, str]
    children: list[Out | str] = field(default_factory=list)
    action: bool = False


def _open(out: Out) -> str:
    attrs = "".join(f' {k}="{escape(v)}"' if v != "" else f" {k}" for k, v in out.attrs.items())
    return f"<{out.tag}{attrs}" + (" />" if out.tag in _VOID else ">")


def _inline(item: Out, depth: int = 0) -> tuple[str, Out] | None:
    """``item`` on one line, and the element whose name the line carries; None if too long.

    An element holding only short text fits, and so does a chain of wrappers around one such
    element (``<li><a name="faq">FAQ</a></li>``), as long as the line holds at most one name.
    """
    if item.tag in _VOID:
        return _open(item), item
    if len(item.children) == 1 and isinstance(item.children[0], Out):
        if depth >= _INLINE_DEPTH:
            return None
        inner = _inline(item.children[0], depth + 1)
        if inner is None or len(inner[0]) > INLINE_CHARS:
            return None
        if "name" not in item.attrs:
            return _open(item) + inner[0] + f"</{item.tag}>", inner[1]
        if "name" not in inner[1].attrs:  # <a name="home"><img alt="Shop home" /></a>
            return _open(item) + inner[0] + f"</{item.tag}>", item
        return None
    if not all(isinstance(c, str) for c in item.children):
        return None
    text = " ".join(item.children)  # type: ignore[arg-type]
    if len(text) > INLINE_CHARS:
        return None
    return _open(item) + escape(text, quote=False) + f"</{item.tag}>", item


def render(items: list[Out | str]) -> list[Line]:
    """The lines of ``items`` at depth 0, iteratively (deep pages overflow a recursion)."""
    lines: list[Line] = []
    # A stack entry is an item to write at a depth, or the index of an opening line to close.
    stack: list[tuple[Out | str | int, int]] = [(item, 0) for item in reversed(items)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, int):
            opened = lines[item]
            lines[item] = Line(opened.depth, opened.text, "open", opened.name, opened.action,
                               pair=len(lines))  # fmt: skip
            close = f"</{opened.text[1:].split(' ', 1)[0].rstrip('>')}>"
            lines.append(Line(depth, close, "close", pair=item))
        elif isinstance(item, str):
            lines.append(Line(depth, escape(item, quote=False), "text"))
        else:
            inline = _inline(item)
            if inline is not None:
                text, named = inline
                name = named.attrs.get("name")
                lines.append(Line(depth, text, "element", name, named.action))
                continue
            name = item.attrs.get("name")
            lines.append(Line(depth, _open(item), "open", name, item.action))
            stack.append((len(lines) - 1, depth))
            stack.extend((child, depth + 1) for child in reversed(item.children))
    return lines
