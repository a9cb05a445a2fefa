"""A simplified page cut to a token budget, without knowing the target.

`rationale.context.cut_context` keeps a window around the target (for teacher prompts) or the
head and tail (blind prompts), which on a long page may keep a product description and lose the
buttons. A page knows its structure, so this cut gives up what a person needs least first:
long text is shortened, then other text goes, and only then actionable elements, always from the
end of the page backward. The containers around what is kept stay, so every kept name keeps its
context. The same page and budget always give the same cut, whatever was acted on.
"""

from __future__ import annotations

from dataclasses import dataclass

from rationale.errors import ConfigError
from rationale.pages.page import Line, SimplePage
from rationale.tokens import tokenizer

__all__ = ["MIN_PAGE_TOKENS", "PageCut", "cut_page"]

#: The smallest budget: the cut marker and a few elements must fit.
MIN_PAGE_TOKENS = 32
#: A text line longer than this many tokens is shortened to `_SHORT` tokens before anything goes.
_LONG = 24
_SHORT = 16


@dataclass(frozen=True)
class PageCut:
    """A page as shown to a model: ``text`` (at most the budget), the token counts before and
    after, and ``names``, the actionable names still in it."""

    text: str
    original_tokens: int
    tokens: int
    names: frozenset[str]
    cut: bool

    def survived(self, name: str) -> bool:
        """Whether the element named ``name`` is still in the cut page."""
        return name in self.names


def _marker(n: int) -> str:
    return f"[... {n} tokens cut ...]"


def cut_page(page: SimplePage, max_tokens: int | None, *, keep: str | None = None) -> PageCut:
    """Fit ``page`` into ``max_tokens`` tokens (`rationale.tokens`), ending with a cut marker.

    ``keep`` (a teacher prompt's acted-on name) is never dropped, with what is inside it and
    the elements around it; when that alone is over the budget the result is too (callers check
    ``tokens``). Blind prompts pass no ``keep``, so their cut never depends on the action.
    """
    tok = tokenizer()
    total = tok.count(page.html)
    if max_tokens is None or total <= max_tokens:
        return PageCut(page.html, total, total, frozenset(page.names), cut=False)
    if max_tokens < MIN_PAGE_TOKENS:
        raise ConfigError(
            f"a page budget of {max_tokens} tokens is too small: use at least {MIN_PAGE_TOKENS}, "
            "or no limit"
        )
    lines = page.lines
    full = ["  " * line.depth + line.text for line in lines]
    content = [ln.kind in ("text", "element") or (ln.kind == "open" and ln.action) for ln in lines]
    backward = range(len(lines) - 1, -1, -1)
    kept_whole = _protected(lines, keep)
    ops = (
        [("shorten", i) for i in backward if lines[i].kind == "text" and tok.count(full[i]) > _LONG]
        + [("drop", i) for i in backward if content[i] and not lines[i].action]
        + [("drop", i) for i in backward if content[i] and lines[i].action]
    )
    ops = [(op, i) for op, i in ops if op == "shorten" or i not in kept_whole]

    def attempt(k: int) -> PageCut:
        """The page after the first ``k`` operations, with its marker, counted."""
        texts, kept = list(full), [True] * len(lines)
        for op, i in ops[:k]:
            if op == "shorten":
                short = tok.decode(tok.encode(lines[i].text)[:_SHORT]).rstrip()
                texts[i] = "  " * lines[i].depth + short + " …"
                continue
            end = lines[i].pair if lines[i].kind == "open" else i + 1
            for j in range(i, end):  # an actionable element goes with everything inside it
                kept[j] = False
        body, names = _assemble(page, texts, kept, content)
        text = (body + "\n" if body else "") + _marker(total - tok.count(body))
        return PageCut(text, total, tok.count(text), names, cut=True)

    # More operations never make the page longer: find the fewest that fit, by bisection.
    low, high = 0, len(ops)
    while low < high:
        middle = (low + high) // 2
        if attempt(middle).tokens <= max_tokens:
            high = middle
        else:
            low = middle + 1
    return attempt(low)


def _protected(lines: tuple[Line, ...], keep: str | None) -> set[int]:
    """The lines a cut keeping ``keep`` may not drop: its own (and all inside it) and the
    actionable elements that hold it."""
    at = next((i for i, ln in enumerate(lines) if keep and ln.action and ln.name == keep), None)
    if at is None:
        return set()
    end = lines[at].pair + 1 if lines[at].kind == "open" else at + 1
    out = set(range(at, end))
    out.update(
        i for i, ln in enumerate(lines[:at]) if ln.kind == "open" and ln.action and ln.pair > at
    )
    return out


def _assemble(
    page: SimplePage, texts: list[str], kept: list[bool], content: list[bool]
) -> tuple[str, frozenset[str]]:
    """The kept lines, with each container kept when anything inside it is."""
    lines = page.lines
    before = [0]  # before[i]: kept content lines among lines[:i]
    for i in range(len(lines)):
        before.append(before[-1] + (kept[i] and content[i]))
    show = [False] * len(lines)
    for i, line in enumerate(lines):
        if content[i]:
            show[i] = kept[i]
        elif line.kind == "open":
            show[i] = before[line.pair] - before[i + 1] > 0
        # a close line copies its opening line's decision below (its pair comes first)
    for i, line in enumerate(lines):
        if line.kind == "close":
            show[i] = show[line.pair]
    out = [texts[i] for i in range(len(lines)) if show[i]]
    names = frozenset(ln.name for i, ln in enumerate(lines) if show[i] and ln.action and ln.name)
    return "\n".join(out), names
