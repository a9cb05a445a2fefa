"""The teacher contract: `Completion`, one answer, and `Teacher`, what every client implements.

An answer that was billed but failed (it did not validate) is no `Completion`: its `BilledUsage`
rides on the `TeacherError` as ``usage``, so the ledger and ``--max-cost`` still count it.

Every client module (`rationale.litellm_teacher`, `rationale.fast_teacher`, the local model in
`rationale.teacher`) and the retry layer (`rationale.retry`) build on these two, so they sit
below all of them; `rationale.teacher` re-exports both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

__all__ = ["BilledUsage", "Completion", "RawText", "Teacher"]


@dataclass(frozen=True)
class Completion:
    """One successful answer: the parsed response model as a dict, tokens, cost, attempts."""

    data: dict[str, Any]
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    attempts: int = 1

    @property
    def text(self) -> str:
        """The rationale of a teacher's answer."""
        return str(self.data.get("rationale") or "").strip()

    def to_cache(self) -> dict[str, Any]:
        """The cached form: everything but ``attempts`` (a cache hit makes no request)."""
        return {
            "data": self.data,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }


class RawText(BaseModel):
    """The response model that asks a client for the answer's text as it came, unparsed:
    ``Completion.data == {"text": ...}``. Evaluation reads it with its own forgiving parser
    (`rationale.predictions`), so an answer that is not clean JSON is a wrong prediction, not a
    failed request that the retry layer would pay for again."""

    text: str


@dataclass(frozen=True)
class BilledUsage:
    """The tokens (and their cost, if priced) of an answer the provider billed but that failed."""

    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None


class Teacher(Protocol):
    """What the synthesis engine needs from a teacher."""

    model_id: str  # identifies the model in cache keys and provenance
    # an optional ``endpoint_url`` (the whole --api-base) joins the model id in cache keys:
    # one model string served by two endpoints is two models (`rationale.identity`)

    async def attempt(
        self,
        messages: list[dict[str, str]],
        *,
        assistant_prefix: str | None,
        temperature: float,
        max_tokens: int,
        seed: int,
        response_model: type[BaseModel] | None = None,
    ) -> Completion:
        """Make exactly one request; raise `TeacherError` with a category on failure (with a
        `BilledUsage` as its ``usage`` when the failed answer was billed).

        ``response_model`` is the structured answer to parse (default: `Rationale`).
        """
        ...

    def price(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Cost in USD of that many tokens, or None when the price is unknown."""
        ...

    async def aclose(self) -> None:
        """Release connections (called once at the end of a run)."""
        ...
