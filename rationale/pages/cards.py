"""Cards: the unmarked sections of a page, each named by its own heading.

A product listing rarely says "section": it is ``<div class="col"><div class="card">...<h3>Columbia
shirt</h3>...<button>Add to cart</button>``. The card of a heading is the largest element around
it that holds no other heading, stopping below the body, ``main`` and any marked section; its
heading names it, so the button is ``results.columbia_shirt.add_to_cart``, as in the paper.
"""

from __future__ import annotations

from rationale.pages.dom import Node
from rationale.pages.rules import is_section

__all__ = ["CARD_HEADINGS", "find_cards"]

#: Headings that name a card; an ``h1`` names the whole page, so it names no card.
CARD_HEADINGS = frozenset({"h2", "h3", "h4", "h5", "h6"})
_TOP = frozenset({"html", "body", "main"})


def find_cards(
    order: list[Node], parent: dict[Node, Node], hidden: set[Node], actionable: set[Node]
) -> dict[Node, Node]:
    """Card element -> its heading, for the visible headings that are not themselves actionable
    (a clickable ``<h2>`` is a control, not a title). ``order`` is document order."""
    headings = [
        n for n in order if n.tag in CARD_HEADINGS and n not in hidden and n not in actionable
    ]
    count: dict[Node, int] = {}  # headings at or below each element
    for heading in headings:
        node: Node | None = heading
        while node is not None:
            count[node] = count.get(node, 0) + 1
            node = parent.get(node)
    cards: dict[Node, Node] = {}
    for heading in headings:
        card = heading
        while True:
            up = parent.get(card)
            if up is None or up.tag in _TOP or count[up] > 1 or is_section(up):
                break
            card = up
        if card is not heading:
            cards.setdefault(card, heading)
    return cards
