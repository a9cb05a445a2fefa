"""`OpenAICompatibleTeacher`: the fast path for OpenAI-compatible endpoints (vLLM, SGLang, ...).

One aiohttp session, JSON mode and pydantic, without litellm's and instructor's per-call
overhead (several ms of CPU per request, which caps a 2-core client far below what a self-hosted
server can answer). Same model strings, response model and retry layer as `LiteLLMTeacher`.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from rationale.completion import BilledUsage, Completion, RawText
from rationale.errors import TeacherError
from rationale.pricing import PriceMap, model_price
from rationale.retry import classify, http_error

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["FAST_PROVIDERS", "OpenAICompatibleTeacher", "fast_path_eligible"]

#: litellm provider prefixes whose endpoints speak the OpenAI chat API, and the environment
#: variable litellm reads their key from.
FAST_PROVIDERS = {"openai": "OPENAI_API_KEY", "hosted_vllm": "HOSTED_VLLM_API_KEY"}


def fast_path_eligible(model: str, api_base: str | None) -> bool:
    """An OpenAI-compatible endpoint named by ``--api-base`` under an openai/hosted_vllm string."""
    return bool(api_base) and model.split("/", 1)[0] in FAST_PROVIDERS and "/" in model


class OpenAICompatibleTeacher(PriceMap):
    """The fast path for OpenAI-compatible endpoints: one aiohttp session, JSON mode, pydantic.

    The key comes from the environment variable litellm would read (`FAST_PROVIDERS`). A
    ``user:password@`` in ``api_base`` is sent as basic authentication instead of the key, as
    litellm's HTTP client does; a query string in it (``?api-version=...``) is kept.
    """

    def __init__(self, model: str, *, api_base: str, timeout: float = 60.0) -> None:
        from rationale.schema import Rationale

        provider, _, self.wire_model = model.partition("/")
        self.model_id = model
        self.api_base = self.endpoint_url = api_base  # see `rationale.identity.answered_by`
        base = urlsplit(api_base)
        # The path goes before the query: http://h/v1?key=k -> http://h/v1/chat/completions?key=k
        self.url = urlunsplit(base._replace(path=base.path.rstrip("/") + "/chat/completions"))
        self.timeout = timeout
        self._default_model = Rationale
        key = os.environ.get(FAST_PROVIDERS[provider])
        self._headers = {"Content-Type": "application/json"}
        # aiohttp refuses an Authorization header next to credentials in the URL.
        if key and base.username is None and base.password is None:
            self._headers["Authorization"] = f"Bearer {key}"
        self._session: Any = None
        self._price = model_price(model)

    async def _client(self) -> Any:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                json_serialize=json.dumps,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the aiohttp session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        """One POST to ``/chat/completions``; a failure becomes a categorised `TeacherError`."""
        import aiohttp

        body = self.request_body(
            messages, temperature=temperature, max_tokens=max_tokens, seed=seed
        )
        session = await self._client()
        try:
            async with session.post(self.url, json=body, headers=self._headers) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise http_error(resp.status, raw, resp.headers)
        except asyncio.TimeoutError:
            raise TeacherError("no answer within the timeout", category="timeout") from None
        except aiohttp.ClientError as exc:
            # TeacherError redacts the message: aiohttp may name the URL, query string included.
            raise TeacherError(f"{type(exc).__name__}: {exc}", category="connection") from None
        except TeacherError:
            raise
        except Exception as exc:  # e.g. a URL aiohttp cannot use: never raw, always redacted
            raise classify(exc) from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise TeacherError(
                f"the server's answer is not a chat completion: {raw[:200]!r}", category="server"
            ) from None
        return self.parse(data, response_model)

    def request_body(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float,
        max_tokens: int,
        seed: int,
        assistant_prefix: str | None = None,
        response_model: type[BaseModel] | None = None,
    ) -> dict[str, Any]:
        """The chat-completions body of one request (also what a batch sends for it)."""
        return {
            "model": self.wire_model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
            "response_format": {"type": "json_object"},
        }

    def parse(self, data: Any, response_model: type[BaseModel] | None = None) -> Completion:
        """A chat completion (a dict) as a `Completion` of ``response_model``; an answer that does
        not match it is a billed `TeacherError` (``invalid_output``)."""
        try:
            content = data["choices"][0]["message"]["content"] or ""
            usage = data.get("usage") or {}
        except (KeyError, IndexError, TypeError):
            raise TeacherError(
                f"the server's answer is not a chat completion: {str(data)[:200]!r}",
                category="server",
            ) from None
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        cost = self.price(p, c) if p is not None and c is not None else None
        if response_model is RawText:
            return Completion({"text": content}, p, c, cost)
        try:
            model = response_model or self._default_model
            parsed = model.model_validate_json(_json_object(content))
        except ValueError as exc:
            error = TeacherError(
                f"the answer does not match the response model: {str(exc)[:300]}",
                category="invalid_output",
            )
            error.usage = BilledUsage(p, c, cost)  # type: ignore[attr-defined]  # billed anyway
            raise error from None
        return Completion(parsed.model_dump(), p, c, cost)


def _json_object(content: str) -> str:
    """The JSON object in a reply, without a Markdown fence around it."""
    start, end = content.find("{"), content.rfind("}")
    return content[start : end + 1] if 0 <= start < end else content
