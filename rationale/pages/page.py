"""The simplifier's result: the simplified HTML, and what became of each element of the input.

`SimplePage.html` is what a model reads; it is the same whichever element was acted on.
`SimplePage.resolve` answers the importer's question, "what is the name of the element this
event happened on?", for an input node it holds (a MiniWoB dict, an lxml element), and
`SimplePage.locate` finds input nodes of an HTML page by CSS selector, XPath or attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rationale.errors import SourceError

__all__ = ["Line", "SimplePage", "Target"]

How = Literal["element", "inside", "label", "not_actionable", "hidden", "unknown", "ambiguous"]


@dataclass(frozen=True)
class Target:
    """The name an input element got, or None and why not.

    ``how``: ``element`` (the element itself is named), ``inside`` (it lies inside a named
    element, e.g. the text of a button: a click on it is a click on the button), ``label`` (a
    ``<label>`` of a named control), ``not_actionable`` (a container or text no person acts on,
    e.g. a click on a form's background), ``hidden`` (removed: hidden, zero-size, a script),
    ``unknown`` (not a node of this page), ``ambiguous`` (a locator matched several nodes).
    """

    name: str | None
    how: How

    @property
    def named(self) -> bool:
        return self.name is not None


@dataclass(frozen=True)
class Line:
    """One line of the simplified HTML, as `cut_page` sees it.

    ``kind``: ``open``/``close`` (a multi-line element's tags; ``pair`` is the other one's
    index), ``element`` (a whole element on one line), ``text``. ``name`` is set on an
    actionable element's line (``element`` or ``open``); ``action`` says whether it is one.
    """

    depth: int
    text: str
    kind: Literal["open", "close", "element", "text"]
    name: str | None = None
    action: bool = False
    pair: int = -1


@dataclass(frozen=True, eq=False)
class SimplePage:
    """A simplified page: ``html`` (what the model reads), ``names`` (its actionable elements'
    names in document order) and the answer to `resolve` for every input node."""

    html: str
    names: tuple[str, ...]
    lines: tuple[Line, ...] = field(repr=False)
    _targets: dict[int, Target] = field(repr=False)
    # The input tree, held so that the ids in _targets stay the ids of live objects.
    _source: Any = field(repr=False)
    _tree: Any = field(default=None, repr=False)

    def resolve(self, node: Any) -> Target:
        """The name ``node`` (an input MiniWoB dict or lxml element of this page) got."""
        return self._targets.get(id(node), Target(None, "unknown"))

    def locate(
        self,
        *,
        css: str | None = None,
        xpath: str | None = None,
        attribute: tuple[str, str] | None = None,
    ) -> list[Any]:
        """Input elements of an HTML page matched by one locator, in document order.

        ``attribute=("backend_node_id", "136")`` finds Mind2Web's candidates; ``css`` needs the
        ``cssselect`` package (a dependency). A MiniWoB page has no tree to search: pass its
        dict to `resolve` (`rationale.pages.find_flagged` finds the event's node).
        """
        if self._tree is None:
            raise SourceError(
                "locate works on pages simplified from HTML; for a MiniWoB DOM pass the node "
                "itself to resolve()"
            )
        if sum(x is not None for x in (css, xpath, attribute)) != 1:
            raise SourceError("locate takes exactly one of css=, xpath= or attribute=")
        import lxml.etree

        root = self._tree.getroot()
        try:
            if css is not None:
                from lxml.cssselect import CSSSelector

                return list(CSSSelector(css)(root))
            if xpath is not None:
                found = self._tree.xpath(xpath)
                return [x for x in found if isinstance(x, lxml.etree._Element)]
        except (lxml.etree.XPathError, SyntaxError, ValueError) as err:
            raise SourceError(f"cannot use locator {css or xpath!r}: {err}") from err
        key, value = attribute  # type: ignore[misc]
        return [el for el in root.iter() if el.get(key) == value]

    def resolve_target(
        self,
        *,
        css: str | None = None,
        xpath: str | None = None,
        attribute: tuple[str, str] | None = None,
    ) -> Target:
        """`resolve` of the one element a locator matches (``unknown`` if none, ``ambiguous``
        if several resolve to different names)."""
        found = self.locate(css=css, xpath=xpath, attribute=attribute)
        targets = {self.resolve(el) for el in found}
        if not targets:
            return Target(None, "unknown")
        return targets.pop() if len(targets) == 1 else Target(None, "ambiguous")
