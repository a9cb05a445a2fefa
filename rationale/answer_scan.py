"""Where the answer is in a model's reply, as text: `rationale.predictions` reads what this finds.

- `answer_text`: the reply without its thinking. The answer follows the last ``</think>``; a
  ``<think>`` with no ``</think>`` after it (outside any ``{...}``, as `rationale.json_stop`
  sees one; past the first `MAX_SCAN` characters of the answer, any) opens thinking the token
  limit cut, so the answer ends there.
- `windows`: the parts searched, the first and last `MAX_SCAN` characters.
- `objects`: balanced ``{...}`` spans that mention a type or an action, in order of position.
- `decode`: JSON, JSON without trailing commas, or a Python literal, under a shared budget.
- `outside_strings`: a window with the quoted strings of its objects blanked, so the fallbacks
  (``click(x)`` calls, ``Action: X`` labels) never read words inside a rationale; the value of
  an ``action`` key stays, being the answer even where its object does not decode.

Work is bounded: every scan is one linear pass over a window (`str.find` past it), at most
`MAX_CANDIDATES` objects are returned per window and scan, and the decoders read at most
`DECODE_BUDGET` (`ast.literal_eval` at most `LITERAL_BUDGET`) characters per answer.
"""

from __future__ import annotations

import ast
import bisect
import json
import re
from typing import Any

__all__ = [
    "DECODE_BUDGET",
    "LITERAL_BUDGET",
    "MAX_CANDIDATES",
    "MAX_SCAN",
    "answer_text",
    "decode",
    "objects",
    "outside_strings",
    "windows",
]

#: How many characters at each end of an answer are searched.
MAX_SCAN = 20_000
#: How many objects (that mention a type or an action), and calls, are tried per window.
MAX_CANDIDATES = 50
#: How many characters the JSON decoders, and `ast.literal_eval`, may read per answer in all.
DECODE_BUDGET = 10 * MAX_SCAN
LITERAL_BUDGET = 3 * MAX_SCAN

_SPECIAL = re.compile(r"[{}\"'\\]")
_LAYOUT = re.compile(r"[{}()\"'\\]|<think>")
_HINT = re.compile(r"(?i)type|action")
_TRAILING_COMMA = re.compile(r"(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')|,\s*([}\]])", re.S)
_OPEN, _CLOSE = "<think>", "</think>"


def answer_text(text: str) -> tuple[str, str]:
    """The answer in ``text`` and, when thinking hides part of it, which: ``""`` (none),
    ``"closed"`` (the answer follows a ``</think>``) or ``"cut"`` (a ``<think>`` never closed)."""
    end = text.rfind(_CLOSE)
    start = end + len(_CLOSE) if end != -1 else 0
    _, think = _layout(text[start : start + MAX_SCAN])
    if think == -1 and len(text) - start > MAX_SCAN:  # past the head, any <think> counts
        think = text.find(_OPEN, start + MAX_SCAN - len(_OPEN) + 1)
        think = think - start if think != -1 else -1
    if think != -1:
        return text[start : start + think], "cut"
    return text[start:], "closed" if end != -1 else ""


def windows(answer: str) -> list[str]:
    """The parts searched, in order: the head of the answer, and its tail if it is longer."""
    return [answer[:MAX_SCAN], answer[-MAX_SCAN:]] if len(answer) > MAX_SCAN else [answer]


def objects(window: str) -> list[str]:
    """Balanced ``{...}`` spans of ``window`` that mention a type or an action, by position
    (an outer object before those inside it).

    Apostrophes in prose can derail a scan that reads them as quotes, so a window that has one
    is scanned twice, with and without single quotes, and the spans merged.
    """
    found: dict[tuple[int, str], None] = {}
    for quotes in ("\"'", '"') if "'" in window else ('"',):
        found.update(dict.fromkeys(_spans(window, quotes)))
    return [text for _, text in sorted(found, key=lambda k: (k[0], -len(k[1])))]


def _spans(s: str, quotes: str) -> list[tuple[int, str]]:
    """One linear pass; quote characters in ``quotes`` open strings inside braces. An object
    left open at the end (a cut-off answer) is closed and tried too."""
    spans: list[tuple[int, int]] = []
    stack: list[int] = []
    quote, escaped = "", -1
    for m in _SPECIAL.finditer(s):
        i, c = m.start(), m.group()
        if i == escaped:
            continue
        if quote:
            if c == "\\":
                escaped = i + 1
            elif c == quote:
                quote = ""
        elif c == "{":
            stack.append(i)
        elif c == "}" and stack:
            spans.append((stack.pop(), i + 1))
        elif stack and c in quotes:
            quote = c
    if stack:
        spans.append((stack[0], -1))
    spans.sort()
    hints = [m.start() for m in _HINT.finditer(s)]
    out: list[tuple[int, str]] = []
    for start, end in spans:
        stop = len(s) if end == -1 else end
        k = bisect.bisect_left(hints, start)
        if k == len(hints) or hints[k] >= stop:
            continue
        out.append((start, s[start:end] if end != -1 else s[start:] + quote + "}" * len(stack)))
        if len(out) >= MAX_CANDIDATES:
            break
    return out


def decode(candidate: str, budget: list[int]) -> Any:
    """JSON, then JSON without trailing commas, then a Python literal; None if none reads.

    ``budget`` holds how many characters the decoders, and `ast.literal_eval` (slow: a Python
    parser), may still read; nested candidates would otherwise re-read the same text.
    """
    if len(candidate) > budget[0]:
        return None
    budget[0] -= len(candidate)
    for attempt in (candidate, _TRAILING_COMMA.sub(lambda m: m.group(1) or m.group(2), candidate)):
        try:
            return json.loads(attempt, strict=False)
        except Exception:  # ValueError, RecursionError, ...
            pass
    if len(candidate) > budget[1]:
        return None
    budget[1] -= len(candidate)
    try:
        return ast.literal_eval(candidate)  # literals only: never runs code
    except Exception:  # SyntaxError, ValueError, RecursionError, MemoryError...
        return None


def outside_strings(window: str) -> str:
    """``window`` with the quoted strings inside its braces blanked (an open one to the end)."""
    spans, _ = _layout(window)
    parts, at = [], 0
    for start, end in spans:
        parts += [window[at:start], " " * (end - start)]
        at = end
    return "".join([*parts, window[at:]])


def _layout(s: str) -> tuple[list[tuple[int, int]], int]:
    """The quoted strings inside braces, as ``(start, end)`` spans, except an ``action`` key's
    value; and where the first ``<think>`` outside braces starts, -1 if none does.

    A quote opens a string only where a JSON or Python value or key can start (after ``{``,
    ``[``, ``,``, ``:`` or another string, outside parentheses), so an apostrophe in prose and
    the arguments of ``type_and_submit(x, "text")`` do not.
    """
    spans: list[tuple[int, int]] = []
    think, depth, parens, quote, opened, escaped, keep = -1, 0, 0, "", 0, -1, False
    last = (0, 0)  # the last string closed: its span, to tell an ``"action":`` key before a value
    for m in _LAYOUT.finditer(s):
        i, c = m.start(), m.group()
        if quote:
            if i == escaped:
                continue
            if c == "\\":
                escaped = i + 1
            elif c == quote:
                quote, last = "", (opened, i + 1)
                if not keep:
                    spans.append(last)
        elif c == _OPEN:
            if not depth and think == -1:
                think = i
        elif c == "{":
            depth, parens = depth + 1, 0  # a "(" in prose before an object is not its call
        elif c == "}":
            depth = max(depth - 1, 0)
        elif c in "()":
            parens = parens + 1 if c == "(" else max(parens - 1, 0)
        elif depth and not parens and c in "\"'":
            j = i - 1
            while j >= 0 and s[j].isspace():  # each run of spaces is walked once: linear
                j -= 1
            if j >= 0 and (s[j] in "{[,:" or j == last[1] - 1):  # or a missing comma
                quote, opened = c, i
                keep = s[j] == ":" and _is_action_key(s, last, j)
    if quote and not keep:
        spans.append((opened, len(s)))
    return spans, think


def _is_action_key(s: str, key: tuple[int, int], colon: int) -> bool:
    """Whether the string ``key`` is ``"action"`` and only spaces part it from the colon."""
    start, end = key
    return (
        end - start < 16
        and s[start + 1 : end - 1].strip().casefold() == "action"
        and not s[end:colon].strip()
    )
