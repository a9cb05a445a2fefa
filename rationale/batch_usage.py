"""What one batch answer billed: its usage as each provider reports it, priced at the batch price.

OpenAI counts cached prompt tokens inside ``prompt_tokens``
(``usage.prompt_tokens_details.cached_tokens``); Anthropic counts them apart from
``input_tokens`` (``cache_read_input_tokens``, ``cache_creation_input_tokens``). Both are billed
at the price map's cache prices where it has them (`rationale.pricing.batch_cache_price`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rationale.pricing import batch_cache_price, batch_price

__all__ = ["Usage", "answer_cost", "usage_of"]


@dataclass(frozen=True)
class Usage:
    """Billed tokens of one answer: ``prompt`` is every prompt token, cached ones included."""

    prompt: int = 0
    completion: int = 0
    cache_read: int = 0
    cache_write: int = 0

    def cost(self, model: str) -> float | None:
        """USD at the batch price (None: the model has no price)."""
        price, cache = batch_price(model), batch_cache_price(model)
        if price is None or cache is None:
            return None
        plain = self.prompt - self.cache_read - self.cache_write
        return (
            plain * price[0] + self.cache_read * cache[0] + self.cache_write * cache[1]
            + self.completion * price[1]
        )  # fmt: skip


def _int(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0


def usage_of(body: dict[str, Any]) -> Usage:
    """The billed usage of an answer (chat completion or Anthropic message)."""
    usage = body.get("usage") or {}
    if "input_tokens" in usage or "output_tokens" in usage:  # Anthropic: cache apart
        read = _int(usage.get("cache_read_input_tokens"))
        write = _int(usage.get("cache_creation_input_tokens"))
        prompt = _int(usage.get("input_tokens")) + read + write
        return Usage(prompt, _int(usage.get("output_tokens")), read, write)
    prompt = _int(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details") or {}
    read = min(_int(details.get("cached_tokens")), prompt)
    return Usage(prompt, _int(usage.get("completion_tokens")), read)


def answer_cost(model: str, body: dict[str, Any]) -> float | None:
    """USD an answer billed through the batch API, cached prompt tokens at the cached price."""
    return usage_of(body).cost(model)
