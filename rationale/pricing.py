"""Token prices from litellm's offline price map, read without importing litellm.

Teachers price their calls with `model_price`; a model the map does not know has no price
(None), which is why ``--max-cost`` refuses to run with it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

__all__ = ["PriceMap", "batch_cache_price", "batch_price", "model_price"]

_PRICES: dict[str, Any] | None = None


def _entry(model: str) -> dict[str, Any] | None:
    """The price map's entry of ``model`` (with or without its provider prefix)."""
    global _PRICES
    if _PRICES is None:
        spec = importlib.util.find_spec("litellm")
        folder = Path(next(iter(spec.submodule_search_locations or []))) if spec else None
        file = folder / "model_prices_and_context_window_backup.json" if folder else None
        _PRICES = json.loads(file.read_text(encoding="utf-8")) if file and file.exists() else {}
    for key in (model, model.split("/", 1)[-1]):
        info = _PRICES.get(key)
        if info and "input_cost_per_token" in info:
            return info  # type: ignore[no-any-return]
    return None


def model_price(model: str) -> tuple[float, float] | None:
    """(input, output) USD per token from litellm's offline price map, or None if unknown.

    The map is the JSON file litellm ships (the one ``LITELLM_LOCAL_MODEL_COST_MAP`` selects),
    read directly so pricing does not cost the ~3 s of importing litellm.
    """
    info = _entry(model)
    if info is None:
        return None
    return float(info["input_cost_per_token"]), float(info.get("output_cost_per_token", 0))


def batch_price(model: str) -> tuple[float, float] | None:
    """(input, output) USD per token through the provider's batch API: the map's own batch
    price where it has one, else half the online price (OpenAI's and Anthropic's discount)."""
    info = _entry(model)
    if info is None:
        return None
    online = model_price(model)
    assert online is not None
    return (
        float(info.get("input_cost_per_token_batches", online[0] / 2)),
        float(info.get("output_cost_per_token_batches", online[1] / 2)),
    )


class PriceMap:
    """Prices a model by litellm's offline price map (``_price`` set by the subclass)."""

    _price: tuple[float, float] | None = None

    def price(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Cost in USD of that many tokens, or None when the model's price is unknown."""
        if self._price is None:
            return None
        return prompt_tokens * self._price[0] + completion_tokens * self._price[1]


def batch_cache_price(model: str) -> tuple[float, float] | None:
    """(cache read, cache write) USD per prompt token through the batch API: the map's own
    batch prices where it has them, else half its online ones, else the batch input price
    (a model the map knows no cache price of is billed as if uncached); None if unknown."""
    info = _entry(model)
    price = batch_price(model)
    if info is None or price is None:
        return None

    def cached(name: str) -> float:
        if f"{name}_batches" in info:
            return float(info[f"{name}_batches"])
        return float(info[name]) / 2 if name in info else price[0]

    return cached("cache_read_input_token_cost"), cached("cache_creation_input_token_cost")
