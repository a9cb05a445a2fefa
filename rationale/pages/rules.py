"""What a person can see, what they can act on, and which containers name a part of the page.

Plain HTML says it with tags, roles, handlers and attributes. A MiniWoB DOM carries no attributes
but an id, classes and a rendered size, so there the class and id words are the only hint that a
``<div>`` is a button (``tnum-button``, ``button-link``) or a ``<div>`` a dialog (``modal``).
"""

from __future__ import annotations

import functools
import re

from rationale.pages.dom import Node

__all__ = [
    "CONTROL_TAGS",
    "STRUCTURE_TAGS",
    "is_actionable",
    "is_hidden",
    "is_section",
    "words",
]

#: Elements that act by their tag alone (``a`` needs an ``href`` in HTML, see `is_actionable`).
_ACTION_TAGS = frozenset({"button", "select", "textarea", "option", "summary", "input"})
#: Form controls a ``<label>`` can point at.
CONTROL_TAGS = frozenset({"input", "select", "textarea", "button"})
_ACTION_ROLES = frozenset(
    {"button", "link", "checkbox", "radio", "tab", "menuitem", "menuitemcheckbox",
     "menuitemradio", "option", "switch", "combobox", "textbox", "searchbox", "slider",
     "spinbutton", "treeitem", "gridcell"}
)  # fmt: skip
_HANDLERS = frozenset(
    {"onclick", "onmousedown", "onmouseup", "onpointerdown", "ontouchstart", "ng-click",
     "data-ng-click", "v-on:click", "@click", "(click)"}
)  # fmt: skip
#: Class or id words that mark a clickable element where no tag or role says so.
_ACTION_WORDS = frozenset(
    {"button", "btn", "link", "clickable", "toggle", "trigger", "dropdown", "drop", "expand",
     "collapse", "close", "selection", "suggestion", "option", "choice", "tab", "menuitem", "cta",
     "chip"}
)  # fmt: skip
#: Kept in the output (when they hold something); every other tag is unwrapped.
STRUCTURE_TAGS = frozenset(
    {"form", "fieldset", "legend", "section", "article", "aside", "nav", "header", "footer",
     "main", "dialog", "details", "ul", "ol", "li", "dl", "dt", "dd", "table", "tr", "td", "th",
     "caption", "h1", "h2", "h3", "h4", "h5", "h6", "p", "label", "img"}
)  # fmt: skip
_CONTAINER_TAGS = frozenset(
    {"body", "html", "form", "fieldset", "section", "article", "aside", "nav", "header", "footer",
     "main", "dialog", "ul", "ol", "dl", "table", "tbody", "thead", "tr"}
)  # fmt: skip
_SECTION_TAGS = frozenset({"form", "fieldset", "section", "article", "aside", "nav", "dialog",
                           "header", "footer", "select"})  # fmt: skip
_SECTION_ROLES = frozenset(
    {"form", "search", "region", "dialog", "alertdialog", "navigation", "group", "radiogroup",
     "menu", "menubar", "listbox", "tablist", "toolbar", "tree", "grid", "banner",
     "contentinfo", "complementary"}
)  # fmt: skip
_SECTION_WORDS = frozenset({"modal", "dialog", "popup", "popover"})


@functools.lru_cache(maxsize=4096)  # class strings repeat across a page's elements
def words(value: str) -> tuple[str, ...]:
    """``"btnDone tnum-button"`` -> ``("btn", "done", "tnum", "button")`` (lower case).

    A class or id string, not HTML: a regular expression splits it into words.
    """
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", value)
    return tuple(w for w in re.split(r"[^0-9A-Za-z]+", spaced.lower()) if w)


def _style(node: Node) -> dict[str, str]:
    """The inline ``style`` declarations, property -> value (lower case)."""
    out = {}
    for declaration in node.attrs.get("style", "").split(";"):
        prop, sep, value = declaration.partition(":")
        if sep:
            out[prop.strip().lower()] = value.strip().lower()
    return out


def is_hidden(node: Node) -> bool:
    """Not seen by a person: hidden by an attribute or inline style, or rendered with no area."""
    if node.dropped:
        return True
    attrs = node.attrs
    if "hidden" in attrs or attrs.get("aria-hidden", "").lower() == "true":
        return True
    if node.tag == "input" and attrs.get("type", "").lower() == "hidden":
        return True
    style = _style(node)
    if style.get("display") == "none" or style.get("visibility") in ("hidden", "collapse"):
        return True
    return node.size is not None and (node.size[0] <= 0 or node.size[1] <= 0)


def is_actionable(node: Node, *, has_action_inside: bool) -> bool:
    """Something a person acts on: a control, a link, a role, a click handler, a focus stop.

    The weakest hint, a class or id word such as ``button``, counts only on an element with no
    actionable element inside, so a wrapper ``<div class="dropdown">`` does not shadow its items.
    """
    tag, attrs = node.tag, node.attrs
    if tag in _ACTION_TAGS:
        return True
    if tag == "a" and ("href" in attrs or node.size is not None or not has_action_inside):
        return True
    if attrs.get("role", "").lower() in _ACTION_ROLES:
        return True
    if attrs.get("contenteditable", "").lower() in ("", "true") and "contenteditable" in attrs:
        return True
    if any(key in _HANDLERS for key in attrs):
        return True
    if "click" in attrs.get("jsaction", ""):
        return True
    if _style(node).get("cursor") == "pointer":
        return True
    tabindex = attrs.get("tabindex", "").strip()
    if tabindex.lstrip("-").isdigit() and int(tabindex) >= 0 and tag not in STRUCTURE_TAGS:
        return True
    if has_action_inside or tag in _CONTAINER_TAGS:
        return False
    hints = (*words(attrs.get("class", "")), *words(attrs.get("id", "")))
    return any(w in _ACTION_WORDS for w in hints)


def is_section(node: Node) -> bool:
    """A container whose name prefixes the names inside it (``search_form.departure_city``)."""
    if node.tag in _SECTION_TAGS or node.attrs.get("role", "").lower() in _SECTION_ROLES:
        return True
    hints = (*words(node.attrs.get("class", "")), *words(node.attrs.get("id", "")))
    return any(w in _SECTION_WORDS for w in hints)
