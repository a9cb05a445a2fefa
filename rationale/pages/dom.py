"""One tree for both inputs: raw HTML (parsed by lxml) and a MiniWoB DOM (nested dicts).

The simplifier works on `Node`s only. Each node keeps ``source``, the input object it came from
(an lxml element, or a MiniWoB dict), so a caller can ask what became of an element it holds.
Only the fields that describe the page are read: MiniWoB's ``recordingTarget`` (which element
the person acted on) and ``focused`` are never copied, so nothing downstream can see the action.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from rationale.errors import SourceError

__all__ = ["Node", "find_flagged", "from_html", "from_miniwob"]

#: Tags whose content is never page text a person reads or acts on.
_DROPPED_TAGS = frozenset(
    {"script", "style", "noscript", "template", "head", "meta", "link", "title", "base", "iframe",
     "object", "embed", "canvas", "svg", "math", "audio", "video", "source", "track", "param"}
)  # fmt: skip


@dataclass(eq=False)
class Node:
    """An element: lower-case ``tag``, ``attrs``, ``children`` (nodes and text strings in order).

    ``size`` is MiniWoB's rendered ``(width, height)``; None for parsed HTML (no layout).
    ``source`` is the input object this node was built from. ``dropped`` marks a subtree removed
    before simplification (a script, a style, a comment's element).
    """

    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Node | str] = field(default_factory=list)
    source: Any = None
    size: tuple[float, float] | None = None
    dropped: bool = False

    def elements(self) -> Iterator[Node]:
        """This node and every element below it, in document order."""
        stack: list[Node] = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(c for c in reversed(node.children) if isinstance(c, Node))


def from_html(html: str) -> tuple[Node, Any]:
    """Parse ``html`` with lxml's HTML parser; returns the root node and the lxml tree.

    The tree is returned so callers can locate elements in it by CSS selector, XPath or
    attribute; its elements are the ``source`` of the nodes.
    """
    import lxml.etree
    import lxml.html

    if not html.strip():
        raise SourceError("page HTML is empty: pass the page's HTML, or no page at all")
    # huge_tree: libxml2 otherwise drops everything below 256 levels of nesting, which real
    # pages of nested <div>s reach; with it, 2048 levels.
    parser = lxml.html.HTMLParser(huge_tree=True)
    try:
        root = lxml.html.document_fromstring(html, parser=parser)
    except (lxml.etree.ParserError, ValueError) as err:
        raise SourceError(f"page HTML cannot be parsed ({err}): pass an HTML document") from err
    return _convert(root, lxml.etree), root.getroottree()


def _convert(root: Any, etree: Any) -> Node:
    """lxml element tree -> Node tree, iteratively (deep pages overflow a recursion)."""
    top = Node(_tag(root), dict(root.attrib), source=root)
    stack: list[tuple[Any, Node]] = [(root, top)]
    while stack:
        element, node = stack.pop()
        if element.text:
            node.children.append(element.text)
        for child in element:
            if isinstance(child.tag, str):
                tag = _tag(child)
                sub = Node(tag, dict(child.attrib), source=child, dropped=tag in _DROPPED_TAGS)
                node.children.append(sub)
                if not sub.dropped:
                    stack.append((child, sub))
            # Comments and processing instructions are skipped, but not the text after them.
            if child.tail:
                node.children.append(child.tail)
    return top


def _tag(element: Any) -> str:
    tag = element.tag
    return tag.rsplit("}", 1)[-1].lower() if isinstance(tag, str) else "#other"


def from_miniwob(dom: Mapping[str, Any]) -> Node:
    """A MiniWoB ``dom`` tree -> Node tree.

    ``INPUT_text`` becomes ``input`` with ``type="text"``; the ``t`` pseudo-elements (text runs
    between elements) become ``#text`` nodes, which the simplifier unwraps; ``text`` is the
    element's own text (before its children), ``value`` a form control's current value.
    """
    if not isinstance(dom, Mapping) or "tag" not in dom:
        raise SourceError(
            "a MiniWoB DOM is a dict with 'tag' and 'children' (a state's 'dom' field): "
            f"got {type(dom).__name__}"
        )
    top = _miniwob_node(dom)
    stack = [(dom, top)]
    while stack:
        item, node = stack.pop()
        for child in item.get("children") or ():
            sub = _miniwob_node(child)
            node.children.append(sub)
            stack.append((child, sub))
    return top


def _miniwob_node(item: Mapping[str, Any]) -> Node:
    raw = str(item.get("tag") or "")
    tag, _, kind = raw.partition("_")
    tag = "#text" if raw == "t" else tag.lower()
    attrs: dict[str, str] = {}
    if kind:
        attrs["type"] = kind.lower()
    for key in ("id", "classes"):
        if item.get(key):
            attrs["class" if key == "classes" else key] = str(item[key])
    if item.get("value") not in (None, ""):
        attrs["value"] = str(item["value"])
    width, height = item.get("width"), item.get("height")
    size = None
    if isinstance(width, (int, float)) and isinstance(height, (int, float)):
        size = (float(width), float(height))
    node = Node(tag, attrs, source=item, size=size, dropped=tag in _DROPPED_TAGS)
    if item.get("text"):
        node.children.append(str(item["text"]))
    return node


def find_flagged(dom: Mapping[str, Any], flag: str = "recordingTarget") -> list[Mapping[str, Any]]:
    """The nodes of a MiniWoB ``dom`` that carry ``flag`` (the element an event happened on).

    An importer passes the one it finds to `SimplePage.resolve`; the simplifier never reads it.
    """
    found = []
    stack = [dom]
    while stack:
        item = stack.pop()
        if item.get(flag):
            found.append(item)
        stack.extend(reversed(item.get("children") or ()))
    return found
