"""Where a model's answer ends: just after its first complete top-level JSON object.

Prediction prompts ask for one JSON object, so local generation stops as soon as the object
closes (everything after it would be thrown away by the parser). `JsonScanner` finds that point
incrementally, a chunk of decoded text at a time, so a stopping rule can feed it one token's
text per generation step without decoding the whole reply again; `json_object_end` runs it over
a whole text. `RowStops` keeps one scanner per row of a batch, and `row_stopper` wraps it as
a transformers stopping criterion.

The scan follows JSON's lexical rules only as far as braces need: text before the first ``{`` is
skipped, braces inside double-quoted strings do not count, and a backslash escapes the next
character inside a string. It does not check that the object is valid JSON (the parser does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["JsonScanner", "RowStops", "json_object_end", "row_stopper"]

_OUTSIDE = re.compile(r'[{}"]')  # what matters between strings, inside the object
_INSIDE = re.compile(r'["\\]')  # what matters inside a string


class JsonScanner:
    """Feed text in chunks; `end` becomes the index (in all text fed) just after the first
    complete top-level ``{...}`` object once it has closed."""

    __slots__ = ("_carry", "_depth", "_escape", "_fed", "_in_string", "_thinking", "end")

    def __init__(self) -> None:
        self._depth = 0
        self._thinking = False  # inside <think>...</think>: objects there are not the answer
        self._carry = ""  # the end of the text before this chunk, where a marker may begin
        self._in_string = False
        self._escape = False  # the previous character was a backslash inside a string
        self._fed = 0  # characters fed before the current chunk
        self.end: int | None = None

    def feed(self, chunk: str) -> bool:
        """Scan ``chunk``, the text after what was fed before; True once the object closed."""
        if self.end is not None:
            return True
        i, n = 0, len(chunk)
        while i < n:
            if self._escape:
                self._escape = False
                i += 1
            elif self._in_string:
                m = _INSIDE.search(chunk, i)
                if m is None:
                    break
                i = m.end()
                if m.group() == "\\":
                    self._escape = True
                else:
                    self._in_string = False
            elif self._thinking:  # the markers may come split over chunks: keep a tail
                window = self._carry + chunk[i:]
                at = window.find("</think>")
                if at < 0:
                    self._carry = window[-7:]
                    break
                i += at + len("</think>") - len(self._carry)
                self._thinking, self._carry = False, ""
            elif self._depth == 0:
                window = self._carry + chunk[i:]
                at, think = window.find("{"), window.find("<think>")
                if think >= 0 and (at < 0 or think < at):  # a reasoning model thinks first
                    i += think + len("<think>") - len(self._carry)
                    self._thinking, self._carry = True, ""
                    continue
                if at < 0:
                    self._carry = window[-6:]
                    break
                self._depth, i, self._carry = 1, i + at + 1 - len(self._carry), ""
            else:
                m = _OUTSIDE.search(chunk, i)
                if m is None:
                    break
                i, char = m.end(), m.group()
                if char == '"':
                    self._in_string = True
                elif char == "{":
                    self._depth += 1
                else:
                    self._depth -= 1
                    if self._depth == 0:
                        self.end = self._fed + i
                        self._fed += n
                        return True
        self._fed += n
        return False


def json_object_end(text: str) -> int | None:
    """The index just after the first complete top-level ``{...}`` object in ``text``, else None.

    String- and escape-aware: ``'{"a": "}"}'`` ends at 10, not at 8; prose before the first
    ``{`` is skipped; an object that never closes gives None.
    """
    scanner = JsonScanner()
    scanner.feed(text)
    return scanner.end


class RowStops:
    """The stop state of each row of a batch: feed each row its new tokens one at a time.

    A row stops at an end-of-sequence token in ``eos_ids`` or at the token that closes its first
    complete JSON object (found by feeding ``piece(token_id)``, the token's text, to the row's
    `JsonScanner`). ``reason[row]`` is then ``"eos"`` or ``"json"`` and ``count[row]`` the
    tokens the row generated up to and including that one; tokens fed after a stop are ignored.
    """

    def __init__(self, piece: Callable[[int], str], eos_ids: Sequence[int], rows: int) -> None:
        self._piece = piece
        self._eos = frozenset(eos_ids)
        self._scanners = [JsonScanner() for _ in range(rows)]
        self.reason: list[str | None] = [None] * rows
        self.count = [0] * rows

    def feed(self, row: int, token: int) -> bool:
        """Add ``token`` to ``row``; True once the row has stopped."""
        if self.reason[row] is not None:
            return True
        self.count[row] += 1
        if token in self._eos:
            self.reason[row] = "eos"
        elif self._scanners[row].feed(self._piece(token)):
            self.reason[row] = "json"
        return self.reason[row] is not None


def row_stopper(piece: Callable[[int], str], eos_ids: Sequence[int], prompt_len: int) -> Any:
    """`RowStops` as a transformers ``StoppingCriteria``, for ``model.generate``.

    Each call reads only the tokens added since the last call (the prompt is ``prompt_len``
    tokens wide), so a step costs O(batch), not a decode of every reply. After generation,
    ``done_at[row]`` is the number of tokens the row generated up to and including its stop
    token and ``reason[row]`` is ``"eos"`` or ``"json"`` (both None for a row stopped by the
    length limit).
    """
    import torch
    from transformers import StoppingCriteria

    class _RowStop(StoppingCriteria):
        def __init__(self) -> None:
            self.seen = prompt_len
            self.stops: RowStops | None = None
            self.done_at: list[int | None] = []
            self.reason: list[str | None] = []

        def __call__(
            self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
        ) -> torch.Tensor:
            if self.stops is None:
                self.stops = RowStops(piece, eos_ids, input_ids.shape[0])
                self.reason = self.stops.reason
            for row, ids in enumerate(input_ids[:, self.seen :].tolist()):
                for token in ids:
                    if self.stops.feed(row, token):
                        break  # what generate appends to a stopped row is padding
            self.seen = int(input_ids.shape[1])
            self.done_at = [
                c if r is not None else None
                for c, r in zip(self.stops.count, self.stops.reason, strict=True)
            ]
            done = [r is not None for r in self.reason]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return _RowStop()
