"""Text generation for the local teacher: the prompt, the decoding rules, the cleaned reply.

`rationale.local_teacher.LocalModel` loads a model and calls these. Here is what does not need
the model's state: the prompt format for a model without a chat template, the logits processor
that makes the first generated token start with a space, the stopping rule, decoding the
continuation, and `clean_generation`, which cuts the reply to a short rationale.

torch and transformers are imported inside the functions that need them, so importing this
module stays cheap.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# A sentence ends at . ! or ? (plus closing quotes or brackets) followed by whitespace or the end.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
_QUOTE_PAIRS = (('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("`", "`"))


@dataclass(frozen=True)
class LocalGeneration:
    """One reply: the cleaned text (starting with the prefix) and the tokens it took."""

    text: str
    prompt_tokens: int
    completion_tokens: int


def plain_chat_prompt(messages: list[dict[str, str]]) -> str:
    """The prompt format for a model without a chat template.

    One ``Role: content`` line per message (roles capitalised), then ``Assistant: `` to start
    the reply, e.g. ``"System: ...\\nUser: ...\\nAssistant: "``.
    """
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant: "])


def clean_generation(prefix: str, continuation: str, *, truncated: bool = False) -> str:
    """``prefix + continuation``, trimmed to a clean short rationale.

    Cut at the first newline, keep at most the first two sentences, drop markdown emphasis and
    stray quotes at either end, and strip whitespace. ``truncated`` (the token cap ended the
    generation): an unfinished sentence after a finished one goes too ("... Denver. I had to
    find a" -> "... Denver."); a period after an abbreviation ("St. Louis", "e.g.") or before
    a lowercase word does not finish a sentence. Nothing is added: if the model wrote nothing,
    the result is the stripped prefix alone.
    """
    text = (prefix + continuation).split("\n", 1)[0]
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if len(ends) >= 2:
        text = text[: ends[1]]
    if truncated:
        finished = [e for e in ends if _finishes_sentence(text, e)]
        if finished and finished[-1] < len(text.rstrip()):
            text = text[: finished[-1]]
    text = text.replace("**", "").replace("__", "").lstrip("#>*- \t")
    return re.sub(r"\s+", " ", _drop_stray_quotes(text.strip()))


_ABBREVIATION = re.compile(
    r"(?:^|[\s(])(?:[A-Z][a-z]{0,3}|[A-Za-z](?:\.[A-Za-z])+|etc|vs|approx)\.$"
)


def _finishes_sentence(text: str, end: int) -> bool:
    """Whether the sentence end at ``end`` finishes a sentence: not an abbreviation's period
    (Dr., St., U.S., e.g., etc.) and not followed by a lowercase word."""
    head = text[:end].rstrip("\"'”’)]")
    if head.endswith(".") and _ABBREVIATION.search(head):
        return False
    rest = text[end:].lstrip()
    return not rest or not rest[0].islower()


def _drop_stray_quotes(text: str) -> str:
    """Remove quotes that wrap the whole text, and an unbalanced quote (the cut's leftover)."""
    for opening, closing in _QUOTE_PAIRS:
        inner = text[1:-1]
        if (
            len(text) >= 2
            and text[0] == opening
            and text[-1] == closing
            and opening not in inner
            and closing not in inner
        ):
            text = inner.strip()
    for quote in ('"', "`"):
        if text.count(quote) % 2:
            at = len(text) - 1 if text.endswith(quote) else 0 if text.startswith(quote) else None
            at = text.rfind(quote) if at is None else at
            text = (text[:at] + text[at + 1 :]).strip()
    if text.count("“") != text.count("”"):
        text = text.strip("“”").strip()
    return text


def decode_continuation(tokenizer: Any, ids: torch.Tensor, prompt_len: int) -> str:
    """The text of ``ids[prompt_len:]``, with its leading space.

    Decoded as the whole sequence minus the prompt's text, because some decoders (SentencePiece)
    drop the leading space of a sequence decoded on its own.
    """
    full = tokenizer.decode(ids, skip_special_tokens=True)
    head = tokenizer.decode(ids[:prompt_len], skip_special_tokens=True)
    if full.startswith(head):
        return str(full[len(head) :])
    return str(tokenizer.decode(ids[prompt_len:], skip_special_tokens=True))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Set torch's CPU thread count to ``threads`` for the block (None: leave it alone)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def first_token_mask(allowed: torch.Tensor, prompt_len: int) -> Any:
    """A logits processor that leaves only ``allowed`` tokens at the first generated position."""
    from transformers import LogitsProcessor

    class _FirstTokenMask(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if input_ids.shape[1] != prompt_len:
                return scores
            mask = allowed[: scores.shape[-1]].to(scores.device)
            return scores.masked_fill(~mask, float("-inf"))

    return _FirstTokenMask()


def stopping_criteria(tokenizer: Any, prompt_len: int, cancelled: Any = None) -> Any:
    """Stop once the reply has a newline or two finished sentences: the rest would be cut; or
    at once when ``cancelled`` (a `threading.Event`) is set: its caller has gone."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _EnoughText(StoppingCriteria):
        def __call__(
            self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
        ) -> torch.Tensor:
            if cancelled is not None and cancelled.is_set():  # before decoding anything
                return torch.ones(len(input_ids), dtype=torch.bool, device=input_ids.device)
            done = []
            for row in input_ids:
                text = tokenizer.decode(row[prompt_len:], skip_special_tokens=True)
                # Two sentence ends followed by whitespace: the second is really finished.
                ends = sum(1 for m in _SENTENCE_END.finditer(text) if m.end() < len(text))
                done.append("\n" in text or ends >= 2)
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_EnoughText()])
