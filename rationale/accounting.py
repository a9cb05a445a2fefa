"""Money and counts of one invocation: the budget, the tally, and the ledger they feed.

``--max-cost`` is a hard cap on what a run folder is billed, over every invocation on it (a batch
run is finished by reruns, an interrupted run resumed by one): the budget starts from what the
ledger holds and from the worst case of the jobs earlier invocations left out. The unit is the
request, not the record or the retried call: before each request (each retry too) the most it
could cost is reserved, and no request starts that could take spent + reserved over the cap.
After it, the reservation is settled with what the provider billed, also for answers that were
paid for but did not validate (their usage rides on the `TeacherError`); an answer that reports
no usage is settled at its whole reservation. Each request is one ledger line, so the ledger's
tokens are the provider's.

The most a request could cost is its prompt at `worst_prompt_tokens` (a token per byte of the
body it sends) plus all of ``max_tokens``: our tokenizer is not the provider's, a client adds a
schema to the prompt, and a ratio learned from earlier answers bounds nothing for the next one
(more markup, another language). Near the cap this holds back a little more than a learned ratio
would; it never lets a request through that could pass the cap.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Budget:
    """Money the run folder may still be billed, with reservations for requests in flight."""

    limit: float | None
    spent: float = 0.0
    reserved: float = 0.0
    exhausted: bool = False

    async def acquire(self, worst: float) -> bool:
        """`reserve` for a request that may wait for room: False (after a short wait) while
        requests in flight hold part of the cap; the caller asks again unless the run stops."""
        if self.reserve(worst, wait=True):
            return True
        await asyncio.sleep(0.005)
        return False

    def reserve(self, worst: float, *, wait: bool = False) -> bool:
        """Hold ``worst`` for one request; False when it would pass the cap, and exhausted
        unless ``wait`` and requests in flight hold part of the cap (the caller waits for them
        to settle for less; ``reserved`` is a float sum of settled holds: near zero, not zero,
        when none is left)."""
        if self.limit is not None and self.spent + self.reserved + worst > self.limit:
            self.exhausted = self.exhausted or not wait or self.reserved < 1e-12
            return False
        self.reserved += worst
        return True

    def resume(self, billed: float, held: float = 0.0) -> None:
        """Count what earlier invocations were billed (``billed``, from the ledger) and the worst
        case of their jobs still out (``held``): the cap is the run folder's, not one call's."""
        self.spent += billed
        self.reserved += held

    def settle(self, worst: float, actual: float) -> None:
        self.reserved -= worst
        self.spent += actual

    def close(self) -> None:
        """Nothing to wait for (a budget shared by ``--ray`` shards sends its last settles)."""


@dataclass
class Tally:
    """What this invocation did (the ledger has the same requests, tokens and cost)."""

    states: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    failed_requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cost_unknown: int = 0
    invalid_paid: int = 0  # answers billed but not valid (not JSON, wrong shape)
    context_cut_records: int = 0
    context_cut_tokens: int = 0
    # of the cut records, those whose action names a target, and those whose target is still in
    # the blind cut (what the verifier, the student and eval read)
    context_cut_targets: int = 0
    context_cut_target_survived: int = 0
    # the verifier's share of the above
    verify_requests: int = 0
    verify_prompt_tokens: int = 0
    verify_completion_tokens: int = 0
    verify_cost_usd: float = 0.0
    rule_rejections: Counter[str] = field(default_factory=Counter)
    confusion: Counter[tuple[str, str, bool]] = field(default_factory=Counter)

    def charge(self, kind: str, usage: Usage | None, *, ok: bool, unknown: bool = False) -> None:
        """Count one request sent (``usage`` None when nothing came back to bill; ``unknown``
        when an answer came back without usage)."""
        p = usage.prompt_tokens if usage else 0
        c = usage.completion_tokens if usage else 0
        cost = (usage.cost_usd or 0.0) if usage else 0.0
        self.requests += 1
        self.failed_requests += 0 if ok else 1
        self.prompt_tokens += p
        self.completion_tokens += c
        self.cost_usd += cost
        if unknown or (usage is not None and usage.cost_usd is None):
            self.cost_unknown += 1
        if usage is not None and not ok:
            self.invalid_paid += 1
        if kind == "verifier":
            self.verify_requests += 1
            self.verify_prompt_tokens += p
            self.verify_completion_tokens += c
            self.verify_cost_usd += cost


@dataclass(frozen=True)
class Usage:
    """What one request was billed: tokens as the provider counted them, and their price."""

    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None

    @classmethod
    def of(cls, source: Any, price: Any) -> Usage | None:
        """From a `Completion` (or an error carrying ``usage``), priced with ``price(p, c)``
        where the source has no cost of its own. None when no tokens were reported."""
        p = getattr(source, "prompt_tokens", None)
        c = getattr(source, "completion_tokens", None)
        if p is None and c is None:
            return None
        cost = getattr(source, "cost_usd", None)
        if cost is None:
            cost = price(p or 0, c or 0)
        return cls(p or 0, c or 0, cost)

    def ledger_entry(self, kind: str, *, ok: bool) -> dict[str, Any]:
        return {
            "kind": kind,
            "requests": 1,
            "ok": ok,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }


def worst_case_cost(price: Any, prompt_tokens: int, max_tokens: int) -> float | None:
    """The most one request could cost: ``prompt_tokens`` (its `worst_prompt_tokens`) plus a
    full completion. None when the model's price is unknown."""
    return price(prompt_tokens, max_tokens)  # type: ignore[no-any-return]


def worst_prompt_tokens(prompt: Any) -> int:
    """The most prompt tokens a provider can bill for ``prompt`` (a request body, or its
    messages) when nothing is known of its tokenizer: one per byte of the prompt as JSON. A
    byte-level tokenizer never makes a token of less than a byte, and the JSON's keys and quotes
    (some 30 bytes a message) outweigh the few tokens of chat framing a provider adds."""
    return len(json.dumps(prompt, ensure_ascii=False).encode("utf-8"))
