"""Cutting a context (an HTML page, an accessibility tree) to a token budget, marking the cut.

A teacher prompt keeps a window around the acted-on element (``focus``) so the teacher sees what
was clicked; a blind prompt keeps the head and tail, so nothing in it depends on the action.
Cuts fall on token boundaries of `rationale.tokens`, and every result is re-counted to fit.

A simplified page (`rationale.pages`' text, recognised by `rationale.pages.read_page`) is cut by
its structure instead (`rationale.pages.cut_page`): long text goes before what a person can act
on. A blind prompt's cut never looks at the action; a teacher's keeps the acted-on element too.
`ContextCut.survived` says whether an element is still in the cut text, which the summaries of
synth, filter and eval count for the true target (`target_of`, `survival_note`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from rationale.errors import ConfigError
from rationale.tokens import Tokenizer, tokenizer

if TYPE_CHECKING:
    from rationale.pages import SimplePage

__all__ = ["MIN_CONTEXT_TOKENS", "ContextCut", "cut_context", "survival_note", "target_of"]

#: The smallest context budget: two cut markers and a little text must fit.
MIN_CONTEXT_TOKENS = 32


@dataclass(frozen=True)
class ContextCut:
    """A context as shown to a model, and how much of it was cut.

    ``original_tokens`` counts the whole context; ``kept_tokens`` counts the tokens of that same
    encoding that were kept (markers excluded); ``cut_tokens = original_tokens - kept_tokens``,
    which is also the sum of the numbers written in the markers. ``count_tokens(text)`` is at
    most the budget. ``names``: for a simplified page cut by its structure ("page", or
    "page-target" when the acted-on element was kept), the actionable names still shown.
    """

    text: str | None
    original_tokens: int
    kept_tokens: int
    cut_tokens: int
    how: Literal["none", "around-target", "head-tail", "page", "page-target"]
    names: frozenset[str] | None = None

    def survived(self, name: str) -> bool:
        """Whether the element ``name`` is still in the text: among a page cut's names, else
        found as `cut_context`'s focus is (``name="..."`` or the bare name)."""
        if self.names is not None:
            return name in self.names
        return self.text is not None and _find_focus(self.text, name) is not None


def _marker(n: int) -> str:
    return f"[... {n} tokens cut ...]"


def cut_context(
    context: str | None, max_tokens: int | None, *, focus: str | None = None
) -> ContextCut:
    """Fit ``context`` into ``max_tokens`` tokens, marking where text was removed.

    A context that fits (or no budget, or no context) comes back unchanged. Otherwise:

    - with ``focus`` (the acted-on element's name; only teacher prompts pass it) found in the
      context (first ``name="focus"``, then ``name='focus'``, then the bare string, ignoring
      case), a window centred on its first occurrence is kept, with ``[... N tokens cut ...]``
      on its own line before and/or after it ("around-target");
    - else the first two thirds of the room go to the head and the rest to the tail, with
      ``\\n[... N tokens cut ...]\\n`` between them ("head-tail").

    A simplified page is cut by `rationale.pages.cut_page` instead, interactive elements kept
    before long text ("page"); with ``focus`` among its names, that element is kept as well
    ("page-target"), unless it alone is over the budget (then the window above).

    Cuts fall on token boundaries and the result is re-counted, so ``count_tokens(text)`` never
    exceeds ``max_tokens``.
    """
    if max_tokens is not None and max_tokens < MIN_CONTEXT_TOKENS:
        raise ConfigError(
            f"max_context_tokens={max_tokens} is too small to cut a context into: use at least "
            f"{MIN_CONTEXT_TOKENS}, or no limit"
        )
    if context is None:
        return ContextCut(None, 0, 0, 0, "none")
    tok = tokenizer()
    tokens = tok.encode(context)
    n = len(tokens)
    if max_tokens is None or n <= max_tokens:
        return ContextCut(context, n, n, 0, "none")

    from rationale.pages import read_page  # only a context over the budget needs it

    page = read_page(context)
    if page is not None and (cut := _page_cut(page, n, max_tokens, focus)) is not None:
        return cut
    span = _find_focus(context, focus) if focus else None
    if span is not None:
        first, last = tok.token_span(context, tokens, *span)  # type: ignore[arg-type]

        def around(room: int) -> tuple[str, int]:
            centre = (first + last + 1) // 2
            start = max(0, min(centre - room // 2, n - room, first))
            end = min(n, start + room)
            text = tok.decode(tokens[start:end])
            if start > 0:
                text = _marker(start) + "\n" + text
            if end < n:
                text = text + "\n" + _marker(n - end)
            return text, end - start

        overhead = 2 * tok.count(_marker(n) + "\n")
        text, kept = _fit(around, max_tokens, max_tokens - overhead, tok)
        return ContextCut(text, n, kept, n - kept, "around-target")

    def head_tail(room: int) -> tuple[str, int]:
        head = math.ceil(room * 2 / 3)
        tail = room - head
        text = tok.decode(tokens[:head]) + "\n" + _marker(n - room) + "\n"
        return text + (tok.decode(tokens[n - tail :]) if tail else ""), room

    overhead = tok.count("\n" + _marker(n) + "\n")
    text, kept = _fit(head_tail, max_tokens, max_tokens - overhead, tok)
    return ContextCut(text, n, kept, n - kept, "head-tail")


def _page_cut(page: SimplePage, n: int, max_tokens: int, focus: str | None) -> ContextCut | None:
    """A simplified page cut by its structure; None when the kept focus alone does not fit."""
    from rationale.pages import cut_page

    by_case = {name.casefold(): name for name in reversed(page.names)}  # focus ignores case
    keep = by_case.get(focus.casefold()) if focus else None
    shown = cut_page(page, max_tokens, keep=keep)
    if shown.tokens > max_tokens:
        return None
    body = shown.text.rsplit("\n", 1)[0] if "\n" in shown.text else ""  # less the marker
    kept = tokenizer().count(body)
    how: Literal["page", "page-target"] = "page-target" if keep else "page"
    return ContextCut(shown.text, n, kept, n - kept, how, shown.names)


def target_of(action: Mapping[str, Any]) -> str | None:
    """The name of the element an action acts on (a click's, a typing's), None if it has none."""
    name = action.get("name")
    return name if isinstance(name, str) and name else None


def survival_note(with_target: int, survived: int, *, where: str = "") -> str:
    """How often the true target survived the cut, for a summary line ("" with no targets)."""
    if not with_target:
        return ""
    where = f" {where}" if where else ""
    return (
        f"; the target survived{where} in {survived} of the {with_target} with a target "
        f"({100 * survived / with_target:.0f}%)"
    )


def _fit(build: Any, budget: int, room: int, tok: Tokenizer) -> tuple[str, int]:
    """The largest ``room`` (context tokens kept) found whose built text fits ``budget``.

    Re-tokenising decoded slices and markers can differ by a few tokens from the estimate (and
    a window at one end needs one marker, not two), so the result is counted: shrunk by the
    overshoot until it fits, then grown into the slack a few times while it still fits.
    """
    room = max(room, 0)
    while True:
        text, kept = build(room)
        over = tok.count(text) - budget
        if over <= 0 or room == 0:
            break
        room = max(0, room - over)
    for _ in range(3):
        if over >= 0:
            break
        grown_text, grown_kept = build(room - over)
        grown_over = tok.count(grown_text) - budget
        if grown_over > 0:
            break
        room, over, text, kept = room - over, grown_over, grown_text, grown_kept
    return text, kept


def _find_focus(context: str, focus: str) -> tuple[int, int] | None:
    """Character span of the first ``name="focus"``, ``name='focus'`` or bare ``focus``."""
    escaped = re.escape(focus)
    for pattern in (rf'name="{escaped}"', rf"name='{escaped}'", escaped):
        if match := re.search(pattern, context, re.IGNORECASE):
            return match.span()
    return None
