"""Pages: the page a person saw, as simplified HTML with a `name` on what they can act on.

Takes a page as raw HTML (a string) or as a MiniWoB DOM (a state's ``dom``: nested dicts with
``tag``, ``id``, ``classes``, ``text``, ``value``, ``width``/``height``, ``children``). Gives a
`SimplePage`: ``html``, the simplified page (scripts, styles, hidden and zero-size nodes and
empty wrappers gone; forms, sections, lists, tables, headings, labels kept; links, buttons,
inputs, selects, options, textareas, labels and elements with click roles or handlers named),
``names``, the names of its actionable elements, and `SimplePage.resolve`, the name a given
input element got. Names are readable (``search_form.departure_city``), unique in the page and
the same across the steps of a session for the same element. The text never depends on which
element was acted on. `cut_page` fits a page into a token budget, actionable elements last to go.

How an importer uses it, one step at a time::

    from rationale.pages import cut_page, find_flagged, simplify_dom, simplify_html

    # MiniWoB: an event's timing-1 state is the page before it, with the target flagged
    dom = state["dom"]
    page = simplify_dom(dom)
    target = page.resolve(find_flagged(dom)[0])

    # HTML (Mind2Web's cleaned_html, a user's logged page): locate the element, then resolve
    page = simplify_html(html)
    target = page.resolve_target(attribute=("backend_node_id", "136"))  # or css= / xpath=

    if target.name is None:  # target.how says why: not_actionable, hidden, unknown, ...
        ...  # keep the step and flag it: a click on a form's background has no name
    shown = cut_page(page, max_tokens=8000)
    shown.survived(target.name)  # whether the target is still in the cut page

    read_page(record.context)  # a record's context back as a SimplePage (None: not a page)

`resolve` takes the very objects of the input (the MiniWoB dicts of the ``dom`` that was
simplified, lxml elements from `locate`), not copies: a copy is ``unknown``. The flag is never
read by the simplifier, so the page of a step is the same whichever element it flags.
"""

from __future__ import annotations

from rationale.pages.cut import MIN_PAGE_TOKENS, PageCut, cut_page
from rationale.pages.dom import find_flagged
from rationale.pages.page import SimplePage, Target
from rationale.pages.reread import read_page
from rationale.pages.simplify import simplify, simplify_dom, simplify_html

__all__ = [
    "MIN_PAGE_TOKENS",
    "PageCut",
    "SimplePage",
    "Target",
    "cut_page",
    "find_flagged",
    "read_page",
    "simplify",
    "simplify_dom",
    "simplify_html",
]
