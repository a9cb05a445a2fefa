"""Raw HTML or a MiniWoB DOM -> simplified HTML, with a name on every actionable element.

Three passes over the `Node` tree: what is visible and what can be acted on (bottom-up, since a
wrapper is judged by what it holds), the names (top-down, so a section's name is known before
the names it prefixes), and the output with its map from input nodes to names. Nothing here
reads which element was acted on, so two steps that differ only in their action render alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rationale.pages.cards import find_cards
from rationale.pages.dom import Node, from_html, from_miniwob
from rationale.pages.names import NameBook, base_name, readable_id, slug
from rationale.pages.page import SimplePage, Target
from rationale.pages.render import Out, render
from rationale.pages.rules import (
    CONTROL_TAGS,
    STRUCTURE_TAGS,
    is_actionable,
    is_hidden,
    is_section,
)

__all__ = ["simplify", "simplify_dom", "simplify_html"]

_HEADINGS = ("legend", "caption", "h1", "h2", "h3", "h4", "h5", "h6")
_SECTION_WORDS = {"nav": "nav", "header": "header", "footer": "footer", "form": "form",
                  "dialog": "dialog", "aside": "aside"}  # fmt: skip


def simplify(page: str | Mapping[str, Any]) -> SimplePage:
    """`simplify_html` for a string, `simplify_dom` for a MiniWoB DOM dict."""
    return simplify_html(page) if isinstance(page, str) else simplify_dom(page)


def simplify_html(html: str) -> SimplePage:
    """Simplify a raw HTML page (a document or a fragment)."""
    root, tree = from_html(html)
    return _Simplifier(root).page(tree)


def simplify_dom(dom: Mapping[str, Any]) -> SimplePage:
    """Simplify a page recorded as a MiniWoB DOM tree (a state's ``dom``)."""
    return _Simplifier(from_miniwob(dom)).page(None)


def _collapse(text: str) -> str:
    return " ".join(text.split())


class _Simplifier:
    def __init__(self, root: Node) -> None:
        self.root = root
        self.order = list(root.elements())  # document order
        self.parent: dict[Node, Node] = {}
        for node in self.order:
            for child in node.children:
                if isinstance(child, Node):
                    self.parent[child] = node
        self.hidden: set[Node] = set()
        self.actionable: set[Node] = set()
        self.inside: set[Node] = set()  # nodes with an actionable element below them
        self.control_of: dict[Node, Node] = {}  # label -> the control it labels
        self.label_text: dict[Node, str] = {}  # control -> its label's text
        self.names: dict[Node, str] = {}
        self.section_names: dict[Node, str] = {}
        self._visible()
        self._labels()
        self.cards = find_cards(self.order, self.parent, self.hidden, self.actionable)
        self._name()

    # -- pass 1: visible, actionable --------------------------------------------------------
    def _visible(self) -> None:
        in_form: set[Node] = set()
        for node in self.order:
            parent = self.parent.get(node)
            if (parent is not None and parent in self.hidden) or is_hidden(node):
                self.hidden.add(node)
            if parent is not None and (parent.tag == "form" or parent in in_form):
                in_form.add(node)
        for node in reversed(self.order):
            if node in self.hidden:
                continue
            kids = [c for c in node.children if isinstance(c, Node) and c not in self.hidden]
            if any(c in self.actionable or c in self.inside for c in kids):
                self.inside.add(node)
            if node.tag != "label" and is_actionable(node, has_action_inside=node in self.inside):
                self.actionable.add(node)
            if node.tag in ("ul", "ol") and (
                node in in_form or any(k in self.actionable for k in kids)
            ):
                # A list of plain items inside a form (suggestions under a text box), or with one
                # clickable item, is a list of choices: an item's class may change on hover
                # (MiniWoB records no handlers), and its name must not.
                for kid in kids:
                    if kid.tag == "li" and kid not in self.inside and self.text(kid, limit=20):
                        self.actionable.add(kid)

    def _labels(self) -> None:
        """Pair each ``<label>`` with its control (``for=``, else one inside it); a label with
        no control present is itself what a person clicks (a styled checkbox, say)."""
        by_id: dict[str, Node] = {}
        for node in self.order:
            if node not in self.hidden and node.attrs.get("id"):
                by_id.setdefault(node.attrs["id"], node)
        for node in self.order:
            if node in self.hidden:
                continue
            labelledby = node.attrs.get("aria-labelledby", "").split()
            if labelledby and node in self.actionable:
                texts = (self.text(by_id[i]) for i in labelledby if i in by_id)
                self.label_text[node] = " ".join(t for t in texts if t)
            if node.tag != "label":
                continue
            control = by_id.get(node.attrs.get("for", ""))
            if control is None or control.tag not in CONTROL_TAGS:
                control = next(
                    (n for n in node.elements() if n.tag in CONTROL_TAGS and n in self.actionable),
                    None,
                )
            if control is None or control not in self.actionable:
                self.actionable.add(node)
                up = self.parent.get(node)
                while up is not None and up not in self.inside:
                    self.inside.add(up)
                    up = self.parent.get(up)
                continue
            self.control_of[node] = control
            self.label_text.setdefault(control, self.text(node, skip=control))

    def text(self, node: Node, *, skip: Node | None = None, limit: int = 200) -> str:
        """The visible text under ``node`` (without ``skip``'s), whitespace collapsed."""
        parts: list[str] = []
        size = 0
        stack: list[Node | str] = [node]
        while stack and size < limit:
            item = stack.pop()
            if isinstance(item, str):
                parts.append(item)
                size += len(item)
            elif item is not skip and item not in self.hidden:
                stack.extend(reversed(item.children))
        return _collapse(" ".join(parts))[:limit]

    # -- pass 2: names ------------------------------------------------------------------------
    def _name(self) -> None:
        book = NameBook()
        prefix: dict[Node, str] = {}
        for node in self.order:
            parent = self.parent.get(node)
            here = prefix.get(parent, "") if parent is not None else ""
            if node in self.hidden:
                continue
            if node in self.actionable:
                base = base_name(
                    node,
                    label=self.label_text.get(node, ""),
                    text=self._own_text(node),
                    wrapper_id=self._wrapper_id(node),
                )
                self.names[node] = book.claim(f"{here}.{base}" if here else base)
                if is_section(node):  # a <select> prefixes its options
                    here = self.names[node]
            elif node in self.inside and self._is_section(node):
                base = self._section_base(node)
                if base:
                    here = self.section_names[node] = book.claim(f"{here}.{base}" if here else base)
            prefix[node] = here

    def _own_text(self, node: Node) -> str:
        """What a person reads on the element: its text, else the alt text of an image in it."""
        if node.tag == "select":
            return ""  # its options' text, which names the options
        text = self.text(node, limit=80)
        if text:
            return text
        for inner in node.elements():
            if inner.tag == "img" and inner not in self.hidden and inner.attrs.get("alt"):
                return inner.attrs["alt"]
        return ""

    def _section_base(self, node: Node) -> str:
        attrs = node.attrs
        for candidate in (
            slug(self.text(self.cards[node], limit=80), max_words=4) if node in self.cards else "",
            slug(self.label_text.get(node, "")),
            slug(attrs.get("aria-label", "")),
            readable_id(attrs.get("id")),
            readable_id(attrs.get("name")),
        ):
            if candidate:
                return candidate
        for child in node.children:  # a fieldset's legend, a table's caption, a first heading
            if isinstance(child, Node) and child.tag in _HEADINGS and child not in self.hidden:
                return slug(self.text(child, limit=80), max_words=4)
        return _SECTION_WORDS.get(node.tag, "")

    def _is_section(self, node: Node) -> bool:
        """A section by its tag, role or class, or a card (see `rationale.pages.cards`)."""
        if is_section(node):
            return not self._wraps_one(node)
        return node in self.cards

    def _wraps_one(self, node: Node) -> bool:
        """A ``<div id="modal-background">`` around only a dialog: the inner one names it."""
        if node.tag in _SECTION_WORDS or "role" in node.attrs:
            return False
        kids = [c for c in node.children if isinstance(c, Node) and c not in self.hidden]
        if len(kids) != 1 or any(isinstance(c, str) and c.strip() for c in node.children):
            return False
        return is_section(kids[0])

    def _wrapper_id(self, node: Node) -> str:
        """The id of the nearest of three ancestors that holds only ``node`` (an icon link
        inside ``<span id="next-month">``); used only when nothing better names it."""
        for _ in range(3):
            parent = self.parent.get(node)
            if parent is None:
                return ""
            kids = [c for c in parent.children if isinstance(c, Node) or c.strip()]
            if kids != [node]:
                return ""
            if readable_id(parent.attrs.get("id")):
                return parent.attrs["id"]
            node = parent
        return ""

    # -- pass 3: output -----------------------------------------------------------------------
    def page(self, tree: Any) -> SimplePage:
        built: dict[Node, list[Out | str]] = {}
        for node in reversed(self.order):
            if node in self.hidden:
                continue
            items: list[Out | str] = []
            for child in node.children:
                if isinstance(child, str):
                    text = _collapse(child)
                    if text:
                        if items and isinstance(items[-1], str):
                            items[-1] = f"{items[-1]} {text}"
                        else:
                            items.append(text)
                elif child in built:
                    for item in built.pop(child):
                        if isinstance(item, str) and items and isinstance(items[-1], str):
                            items[-1] = f"{items[-1]} {item}"
                        else:
                            items.append(item)
            built[node] = self._element(node, items)
        lines = render(built.pop(self.root, []))
        targets = self._targets()
        return SimplePage(
            html="\n".join("  " * line.depth + line.text for line in lines),
            names=tuple(self.names[n] for n in self.order if n in self.names),
            lines=tuple(lines),
            _targets=targets,
            _source=[n.source for n in self.order],
            _tree=tree,
        )

    def _element(self, node: Node, items: list[Out | str]) -> list[Out | str]:
        attrs = node.attrs
        if node in self.names:
            out: dict[str, str] = {"name": self.names[node]}
            for key in ("type", "value", "placeholder", "role"):
                if attrs.get(key) and not (key == "type" and node.tag != "input"):
                    out[key] = attrs[key]
            if attrs.get("aria-label") and not items:
                out["aria-label"] = attrs["aria-label"]
            for key in ("checked", "selected", "disabled"):
                if key in attrs:
                    out[key] = ""
            tag = node.tag if not node.tag.startswith("#") else "span"
            return [Out(tag, out, items, action=True)]
        if node in self.section_names:
            tag = node.tag if node.tag in STRUCTURE_TAGS or node.tag in _SECTION_WORDS else "div"
            return [Out(tag, {"name": self.section_names[node]}, items)] if items else []
        if node.tag == "img":
            alt = _collapse(attrs.get("alt", ""))
            return [Out("img", {"alt": alt}, [])] if alt else []
        if node.tag in STRUCTURE_TAGS and items:
            return [Out(node.tag, {}, items)]
        return items

    def _targets(self) -> dict[int, Target]:
        targets: dict[int, Target] = {}
        for node in self.order:
            parent = self.parent.get(node)
            if node in self.hidden:
                target = Target(None, "hidden")
            elif node in self.names:
                target = Target(self.names[node], "element")
            elif node in self.control_of and self.control_of[node] in self.names:
                target = Target(self.names[self.control_of[node]], "label")
            elif parent is not None and targets[id(parent.source)].name is not None:
                target = Target(targets[id(parent.source)].name, "inside")
            else:
                target = Target(None, "not_actionable")
            targets[id(node.source)] = target
        return targets
