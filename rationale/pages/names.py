"""Readable, unique, stable names for the elements of a page (``search_form.departure_city``).

A name comes from what identifies the element to a person or to the page's author, in order:
its label, ``aria-label``, a readable id, placeholder, ``name`` attribute, its own text or value,
``title``/``alt``, the id of a wrapper that holds only it; the tag's word (``link``, ``button``)
is the last resort. Names never depend on where an event happened, and a suffix by document order
(``_2``, ``_3``) tells apart elements whose names would otherwise be equal.

The slug is `rationale.importers.mind2web.slug`'s (NFKC, case folded, runs of anything but
letters and digits become ``_``), rewritten here because importers call this package, not the
other way round; it also splits camelCase ids (``searchForm`` -> ``search_form``) and keeps
names short (six words, 40 characters).
"""

from __future__ import annotations

import unicodedata
from collections import Counter

from rationale.pages.dom import Node
from rationale.pages.rules import words

__all__ = ["NameBook", "base_name", "readable_id", "slug"]

MAX_NAME = 40
MAX_WORDS = 6

#: Text made only of a symbol names the element by what the symbol means.
_SYMBOLS = {
    "+": "plus", "-": "minus", "−": "minus", "×": "close", "✕": "close", "✖": "close",
    "x": "close", "<": "previous", "‹": "previous", "«": "previous", "←": "previous",
    ">": "next", "›": "next", "»": "next", "→": "next", "☰": "menu", "≡": "menu",
    "…": "more", "...": "more", "?": "help", "★": "star", "☆": "star", "♥": "like",
}  # fmt: skip
_BUTTON_TYPES = frozenset({"submit", "button", "reset", "image"})
_TAG_WORDS = {"a": "link", "textarea": "text", "summary": "details"}


def slug(text: str, *, max_words: int = MAX_WORDS) -> str:
    """A lower-case identifier of at most ``max_words`` words and `MAX_NAME` characters."""
    text = unicodedata.normalize("NFKC", text)
    parts: list[str] = []
    for word in words_any_script(text):
        parts.extend(words(word) if word.isascii() else [word.casefold()])
    out = "_".join(parts[:max_words])
    return out[:MAX_NAME].rstrip("_") if len(out) > MAX_NAME else out


def words_any_script(text: str) -> list[str]:
    """Runs of letters and digits (any script); everything else separates words."""
    out, current = [], []
    for ch in text:
        if ch.isalnum():
            current.append(ch)
        elif current:
            out.append("".join(current))
            current = []
    if current:
        out.append("".join(current))
    return out


def readable_id(value: str | None) -> str:
    """The slug of an id a person could read (``geo-from``), or "" for a generated one.

    Generated ids (``ember1234``, ``react-select-3-input``'s siblings ``r:1a2b3c``, hashes) would
    make names that mean nothing and change between page loads, so they are skipped.
    """
    if not value:
        return ""
    name = slug(value)
    if not name or not any(ch.isalpha() for ch in name) or len(value) > MAX_NAME:
        return ""
    for part in name.split("_"):
        digits = sum(ch.isdigit() for ch in part)
        if digits >= 4 or (
            digits and len(part) >= 8 and all(c in "0123456789abcdef" for c in part)
        ):
            return ""
    return name


def symbol_name(text: str) -> str:
    """``"+"`` -> ``"plus"``; "" when the text is not one known symbol."""
    return _SYMBOLS.get(text.strip().lower(), "")


def base_name(
    node: Node,
    *,
    label: str = "",
    text: str = "",
    wrapper_id: str = "",
) -> str:
    """The element's own name, before any section prefix and before de-duplication.

    ``label`` is the text of its ``<label>`` (``for=`` or wrapping) or of ``aria-labelledby``;
    ``text`` its visible text; ``wrapper_id`` the id of an ancestor that holds only it.
    """
    attrs = node.attrs
    # A text box's value is what was typed, which changes from step to step: never a name.
    kind = attrs.get("type", "").lower()
    value = attrs.get("value", "")
    if not (node.tag == "button" or (node.tag == "input" and kind in _BUTTON_TYPES)):
        value = ""
    own_text = slug(text) or symbol_name(text)
    candidates = (
        own_text if node.tag == "label" else "",  # a label's text is what it is
        slug(label),
        slug(attrs.get("aria-label", "")),
        readable_id(attrs.get("id")),
        slug(attrs.get("placeholder", "")),
        readable_id(attrs.get("name")),
        own_text,
        slug(value),
        slug(attrs.get("title", "")) or slug(attrs.get("alt", "")),
        readable_id(wrapper_id),
    )
    for candidate in candidates:
        if candidate:
            return candidate
    hints = [w for w in words(attrs.get("class", "")) if len(w) > 2]
    kind = (kind or "text") if node.tag == "input" else ""  # HTML's default type
    return kind or _TAG_WORDS.get(node.tag) or (hints[0] if hints else node.tag)


class NameBook:
    """Hands out names unique in one page: the second ``x`` is ``x_2``, the third ``x_3``."""

    def __init__(self) -> None:
        self._taken: set[str] = set()
        self._next: Counter[str] = Counter()

    def claim(self, name: str) -> str:
        if name not in self._taken:
            self._taken.add(name)
            return name
        n = max(self._next[name], 1)
        while True:
            n += 1
            candidate = f"{name}_{n}"
            if candidate not in self._taken:
                self._next[name] = n
                self._taken.add(candidate)
                return candidate
