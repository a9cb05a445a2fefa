"""Cutting a context (an HTML page, an accessibility tree) to a token budget, marking the cut.

A teacher prompt keeps a window around the acted-on element (``focus``) so the teacher sees what
was clicked; a blind prompt keeps the head and tail, so nothing in it depends on the action.
Cuts fall on token boundaries of `rationale.tokens`, and every result is re-counted to fit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from rationale.errors import ConfigError
from rationale.tokens import Tokenizer, tokenizer

__all__ = ["MIN_CONTEXT_TOKENS", "ContextCut", "cut_context"]

#: The smallest context budget: two cut markers and a little text must fit.
MIN_CONTEXT_TOKENS = 32


@dataclass(frozen=True)
class ContextCut:
    """A context as shown to a model, and how much of it was cut.

    ``original_tokens`` counts the whole context; ``kept_tokens`` counts the tokens of that same
    encoding that were kept (markers excluded); ``cut_tokens = original_tokens - kept_tokens``,
    which is also the sum of the numbers written in the markers. ``count_tokens(text)`` is at
    most the budget.
    """

    text: str | None
    original_tokens: int
    kept_tokens: int
    cut_tokens: int
    how: Literal["none", "around-target", "head-tail"]


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
