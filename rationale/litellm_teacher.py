"""`LiteLLMTeacher`: any litellm model, structured output through instructor in JSON mode.

Covers ``openai/...``, ``anthropic/...``, ``bedrock/...``, ``ollama/...``, ``hosted_vllm/...``
and any OpenAI-compatible server through ``api_base``. JSON mode, because TOOLS mode would need
``litellm[mcp]``. litellm and instructor are imported when a teacher is built, not before.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from rationale.completion import BilledUsage, Completion, RawText
from rationale.errors import TeacherError
from rationale.pricing import PriceMap, model_price
from rationale.retry import classify

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["LiteLLMTeacher"]


def _quiet_litellm() -> Any:
    """Import litellm offline and silent (no price-map fetch, no banner on stdout)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    for logger in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "instructor"):
        logging.getLogger(logger).setLevel(logging.CRITICAL)
    return litellm


def _split_credentials(api_base: str | None) -> tuple[str | None, dict[str, str]]:
    """``user:password@`` taken out of ``api_base`` and sent as basic authentication instead
    (an HTTP client refuses a URL with credentials beside its own Authorization header), as the
    fast client does."""
    if not api_base:
        return api_base, {}
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    url = urlsplit(api_base)
    if url.username is None and url.password is None:
        return api_base, {}
    user, password = unquote(url.username or ""), unquote(url.password or "")
    host = url.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{url.port}" if url.port else "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return urlunsplit(url._replace(netloc=netloc)), {"Authorization": f"Basic {token}"}


class LiteLLMTeacher(PriceMap):
    """Any litellm model, structured output through instructor (JSON mode)."""

    def __init__(self, model: str, *, api_base: str | None = None, timeout: float = 60.0) -> None:
        litellm = _quiet_litellm()
        import instructor

        from rationale.identity import effective_api_base
        from rationale.schema import Rationale

        self.model_id = model
        # whole, for `rationale.identity.answered_by`; litellm's own default comes from the
        # environment (HOSTED_VLLM_API_BASE, OPENAI_BASE_URL, ...), and is an endpoint too
        self.endpoint_url = effective_api_base(model, api_base)
        self.api_base, self._headers = _split_credentials(api_base)
        self.timeout = timeout
        self._default_model = Rationale
        self._acompletion = litellm.acompletion
        self._client = instructor.from_litellm(litellm.acompletion, mode=instructor.Mode.JSON)
        self._price = model_price(model)

    async def aclose(self) -> None:
        """Nothing to release: litellm owns its connections."""
        return None

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
        """One request, no retries; every provider error becomes a categorised `TeacherError`."""
        kwargs: dict[str, Any] = {
            "model": self.model_id,
            "messages": messages,
            "response_model": response_model or self._default_model,
            "max_retries": 0,  # no instructor re-asks: call_with_retries is the retry layer
            "num_retries": 0,  # no litellm retries either
            "timeout": self.timeout,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
            "drop_params": True,  # providers without `seed` ignore it instead of failing
        }
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self._headers:
            kwargs["extra_headers"] = self._headers
        if response_model is RawText:  # the text as it came, in JSON mode, without instructor
            del kwargs["response_model"], kwargs["max_retries"]
            kwargs["response_format"] = {"type": "json_object"}
        try:
            if response_model is RawText:
                raw = await asyncio.wait_for(self._acompletion(**kwargs), self.timeout + 10)
                parsed = RawText(text=raw.choices[0].message.content or "")
            else:
                parsed, raw = await asyncio.wait_for(
                    self._client.chat.completions.create_with_completion(**kwargs),
                    timeout=self.timeout + 10,  # a safety net over litellm's own timeout
                )
        except asyncio.TimeoutError:
            raise TeacherError("no answer within the timeout", category="timeout") from None
        except Exception as exc:  # every provider error becomes a categorised TeacherError
            error = classify(exc)
            if (billed := self._billed(exc)) is not None:
                error.usage = billed  # type: ignore[attr-defined]
            raise error from None
        usage = getattr(raw, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        cost = (
            self.price(prompt_tokens, completion_tokens)
            if prompt_tokens is not None and completion_tokens is not None
            else None
        )
        return Completion(parsed.model_dump(), prompt_tokens, completion_tokens, cost)

    # -- the same request as a provider batch line (rationale.batch_engine) ------------------

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
        """The provider's own request body for what `attempt` sends: instructor's JSON-mode
        messages (its schema message included), then litellm's translation for the provider
        (Anthropic's Messages API for ``anthropic/...``, the chat body for OpenAI)."""
        from instructor import Mode
        from instructor.v2.core.response import handle_response_model

        litellm = _quiet_litellm()
        model, provider, _, _ = litellm.get_llm_provider(self.model_id)
        kwargs: dict[str, Any] = {"messages": messages, "temperature": temperature,
                                  "max_tokens": max_tokens, "seed": seed}  # fmt: skip
        if response_model is RawText:
            kwargs["response_format"] = {"type": "json_object"}
        else:
            _, kwargs = handle_response_model(
                response_model or self._default_model, mode=Mode.JSON, **kwargs
            )
        messages = kwargs.pop("messages")
        # litellm's own mapping of the parameters, as online: max_tokens becomes
        # max_completion_tokens and temperature goes for OpenAI's reasoning models; Anthropic's
        # Messages API has its own names
        optional = litellm.get_optional_params(
            model=model, drop_params=True, messages=messages,
            custom_llm_provider="anthropic" if provider == "anthropic" else "openai", **kwargs,
        )  # fmt: skip
        if provider != "anthropic":  # OpenAI's chat body (o-series: no system role either)
            from litellm.types.utils import LlmProviders
            from litellm.utils import ProviderConfigManager

            config = ProviderConfigManager.get_provider_chat_config(
                model=model, provider=LlmProviders.OPENAI
            )
            body = dict(config.transform_request(  # type: ignore[union-attr]
                model=model, messages=messages, optional_params=optional, litellm_params={},
                headers={},
            ))  # fmt: skip
            body.update(body.pop("extra_body", None) or {})
            if body.get("stream") is False:  # the SDK does not send it
                del body["stream"]
            return body
        from litellm.llms.anthropic.chat.transformation import AnthropicConfig

        body = dict(
            AnthropicConfig().transform_request(
                model=model,
                messages=messages,
                optional_params=optional,
                litellm_params={},
                headers={},
            )
        )
        body.pop("json_mode", None)  # litellm's own flag, taken out before it sends a request
        return body

    def parse(self, data: Any, response_model: type[BaseModel] | None = None) -> Completion:
        """A provider's answer (a chat completion, or an Anthropic message) as the `Completion`
        `attempt` makes of it: litellm's translation, then instructor's JSON-mode parser."""
        import httpx
        from instructor import Mode
        from instructor.v2.core.response import prepare_response_model, process_response

        litellm = _quiet_litellm()
        try:
            if data.get("type") == "message":  # Anthropic's Messages API
                from litellm.llms.anthropic.chat.transformation import AnthropicConfig

                raw = AnthropicConfig().transform_parsed_response(
                    completion_response=data, raw_response=httpx.Response(200),
                    model_response=litellm.ModelResponse(),
                )  # fmt: skip
            else:
                raw = litellm.ModelResponse(**data)
        except Exception as exc:
            raise TeacherError(
                f"the provider's answer is not a completion: {type(exc).__name__}",
                category="server",
            ) from None
        usage = getattr(raw, "usage", None)
        p = getattr(usage, "prompt_tokens", None)
        c = getattr(usage, "completion_tokens", None)
        cost = self.price(p, c) if p is not None and c is not None else None
        try:
            if response_model is RawText:
                return Completion({"text": raw.choices[0].message.content or ""}, p, c, cost)
            model = prepare_response_model(response_model or self._default_model)
            parsed = process_response(raw, response_model=model, stream=False, mode=Mode.JSON)
        except Exception as exc:
            error = classify(exc)
            error.usage = BilledUsage(p, c, cost)  # type: ignore[attr-defined]  # billed anyway
            raise error from None
        return Completion(parsed.model_dump(), p, c, cost)

    def _billed(self, exc: BaseException) -> BilledUsage | None:
        """The usage of an answer that came back but did not validate (instructor keeps it)."""
        # Only the answer itself says it was billed: instructor's ``total_usage`` is a zero
        # usage on connection errors, 429s and 5xx alike.
        usage = getattr(getattr(exc, "last_completion", None), "usage", None)
        p = getattr(usage, "prompt_tokens", None)
        c = getattr(usage, "completion_tokens", None)
        if not isinstance(p, int) or not isinstance(c, int) or p + c == 0:
            return None
        return BilledUsage(p, c, self.price(p, c))
