"""Teachers: the models that write rationales, and the one layer that retries their calls.

A teacher turns a rendered prompt into a `Completion` with one *attempt* (one request). Retrying
is done here, once, by `call_with_retries` (tenacity): litellm is called with ``num_retries=0``
(its own retries would make up to 2N+1 requests and retry 400/401/404 too) and instructor with
``max_retries=0`` (it re-asks only on validation errors, and each re-ask is a paid request). So one
fault costs exactly one extra request, and the attempt count on every record is the number of
requests it really made.

What is retried: rate limits (429, waiting at least its Retry-After), server errors (5xx),
timeouts, dropped or refused connections, and answers that do not parse into the response model.
What fails at once: bad requests (400, 422) fail the record; authentication, permission and
unknown-model errors (401, 403, 404) stop the whole run with a `FatalTeacherError`, since every
later request would fail the same way.

Teachers:
- `LiteLLMTeacher`: any litellm model string (``openai/...``, ``anthropic/...``, ``bedrock/...``,
  ``ollama/...``, ``hosted_vllm/...``, or any OpenAI-compatible server through ``api_base``),
  structured output through instructor in JSON mode (TOOLS mode would need ``litellm[mcp]``).
- `LocalTeacher`: a small local model in-process (``--teacher local``), plain text primed with
  the template's assistant prefix, no key and no network.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pydantic import BaseModel

from rationale.errors import ConfigError, FatalTeacherError, RationaleError, TeacherError, redact

RETRYABLE = frozenset({"rate_limit", "server", "timeout", "connection", "invalid_output"})
FATAL = frozenset({"auth", "not_found"})


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
        return {
            "data": self.data,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }


class Teacher(Protocol):
    """What the synthesis engine needs from a teacher."""

    model_id: str  # identifies the model in cache keys and provenance

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
        """Make exactly one request; raise `TeacherError` with a category on failure.

        ``response_model`` is the structured answer to parse (default: `Rationale`).
        """
        ...

    def price(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Cost in USD of that many tokens, or None when the price is unknown."""
        ...

    async def aclose(self) -> None:
        """Release connections (called once at the end of a run)."""
        ...


# -- retry layer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How `call_with_retries` retries: attempts in all, and exponential backoff with jitter."""

    max_attempts: int = 6
    backoff: float = 1.0  # first wait, seconds (random between 0 and this, doubling)
    max_backoff: float = 60.0
    max_retry_after: float = 300.0  # a longer Retry-After fails the record instead


async def call_with_retries(
    teacher: Teacher, messages: list[dict[str, str]], policy: RetryPolicy, **kwargs: Any
) -> Completion:
    """`teacher.attempt` until it succeeds or a fault is not worth retrying.

    Raises `TeacherError` (with ``attempts``) when out of attempts, at once for a non-retryable
    fault, and `FatalTeacherError` for faults that would hit every record.
    """
    from tenacity import (
        AsyncRetrying,
        retry_if_exception,
        stop_after_attempt,
        wait_random_exponential,
    )

    backoff = wait_random_exponential(multiplier=policy.backoff, max=policy.max_backoff)

    def wait(state: Any) -> float:
        exc = state.outcome.exception()
        base = backoff(state)
        retry_after = getattr(exc, "retry_after", None)
        return max(base, retry_after) if retry_after is not None else base

    def retryable(exc: BaseException) -> bool:
        return (
            isinstance(exc, TeacherError)
            and not isinstance(exc, FatalTeacherError)
            and exc.category in RETRYABLE
            and (exc.retry_after or 0) <= policy.max_retry_after
        )

    attempts = 0
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts),
            wait=wait,
            retry=retry_if_exception(retryable),
            reraise=True,
        ):
            with attempt:
                attempts += 1
                completion = await teacher.attempt(messages, **kwargs)
                return Completion(
                    completion.data,
                    completion.prompt_tokens,
                    completion.completion_tokens,
                    completion.cost_usd,
                    attempts,
                )
    except TeacherError as exc:
        exc.attempts = attempts
        raise
    raise AssertionError("unreachable")  # pragma: no cover


# -- fault classification ------------------------------------------------------------------------


def _retry_after(exc: BaseException) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), if the error carries one."""
    for attr in ("litellm_response_headers", "headers"):
        headers = getattr(exc, attr, None)
        if headers is None:
            response = getattr(exc, "response", None)
            headers = getattr(response, "headers", None) if attr == "headers" else None
        if not headers:
            continue
        try:
            value = headers.get("retry-after") or headers.get("Retry-After")
        except AttributeError:
            continue
        if value is not None:
            return _retry_after_value(value)
    return None


def classify(exc: BaseException) -> TeacherError:
    """Any exception from a model call as a `TeacherError` with a category (message redacted)."""
    if isinstance(exc, TeacherError):
        return exc
    # instructor wraps everything in InstructorRetryException; the cause is what happened.
    if type(exc).__name__ == "InstructorRetryException" and exc.__cause__ is not None:
        return classify(exc.__cause__)
    name = type(exc).__name__
    message = f"{name}: {str(exc).strip()}"[:2000]
    status = getattr(exc, "status_code", None)
    mro = {c.__name__ for c in type(exc).__mro__}
    if {"ValidationError", "JSONDecodeError", "IncompleteOutputException"} & mro or name in (
        "APIResponseValidationError",
        "JSONSchemaValidationError",
    ):
        category = "invalid_output"
    elif "RateLimitError" in mro or status == 429:
        category = "rate_limit"
    elif {"Timeout", "APITimeoutError", "TimeoutError"} & mro:
        category = "timeout"
    elif "AuthenticationError" in mro or "PermissionDeniedError" in mro or status in (401, 403):
        category = "auth"
    elif "NotFoundError" in mro or status == 404:
        category = "not_found"
    elif "BadRequestError" in mro or "UnprocessableEntityError" in mro or status in (400, 422):
        category = "bad_request"
    elif {"InternalServerError", "ServiceUnavailableError", "BadGatewayError"} & mro or (
        isinstance(status, int) and status >= 500
    ):
        category = "server"
    elif {"APIConnectionError", "ConnectionError", "ClientError", "ServerDisconnectedError"} & mro:
        category = "connection"
    elif "APIError" in mro:
        # litellm raises a bare APIError for unparsable bodies and odd statuses: transient.
        category = "server"
    else:
        category = "other"
    cls = FatalTeacherError if category in FATAL else TeacherError
    return cls(message + _HINTS.get(category, ""), category=category, retry_after=_retry_after(exc))


_HINTS = {
    "auth": " (check the key in the provider's environment variable, e.g. OPENAI_API_KEY or "
    "ANTHROPIC_API_KEY)",
    "not_found": " (check the model name and --api-base)",
}


# -- teachers ---------------------------------------------------------------------------------


def _quiet_litellm() -> Any:
    """Import litellm offline and silent (no price-map fetch, no banner on stdout)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    for logger in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "instructor"):
        logging.getLogger(logger).setLevel(logging.CRITICAL)
    return litellm


_PRICES: dict[str, Any] | None = None


def model_price(model: str) -> tuple[float, float] | None:
    """(input, output) USD per token from litellm's offline price map, or None if unknown.

    The map is the JSON file litellm ships (the one ``LITELLM_LOCAL_MODEL_COST_MAP`` selects),
    read directly so pricing does not cost the ~3 s of importing litellm.
    """
    global _PRICES
    if _PRICES is None:
        import importlib.util
        from pathlib import Path

        spec = importlib.util.find_spec("litellm")
        folder = Path(next(iter(spec.submodule_search_locations or []))) if spec else None
        file = folder / "model_prices_and_context_window_backup.json" if folder else None
        _PRICES = json.loads(file.read_text(encoding="utf-8")) if file and file.exists() else {}
    for key in (model, model.split("/", 1)[-1]):
        info = _PRICES.get(key)
        if info and "input_cost_per_token" in info:
            return float(info["input_cost_per_token"]), float(info.get("output_cost_per_token", 0))
    return None


class _PriceMap:
    """Prices a model by litellm's offline price map (``_price`` set by the subclass)."""

    _price: tuple[float, float] | None = None

    def price(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self._price is None:
            return None
        return prompt_tokens * self._price[0] + completion_tokens * self._price[1]


class LiteLLMTeacher(_PriceMap):
    """Any litellm model, structured output through instructor (JSON mode)."""

    def __init__(self, model: str, *, api_base: str | None = None, timeout: float = 60.0) -> None:
        litellm = _quiet_litellm()
        import instructor

        from rationale.schema import Rationale

        self.model_id = model
        self.api_base = api_base
        self.timeout = timeout
        self._default_model = Rationale
        self._client = instructor.from_litellm(litellm.acompletion, mode=instructor.Mode.JSON)
        self._price = model_price(model)

    async def aclose(self) -> None:
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
        try:
            parsed, raw = await asyncio.wait_for(
                self._client.chat.completions.create_with_completion(**kwargs),
                timeout=self.timeout + 10,  # a safety net over litellm's own timeout
            )
        except asyncio.TimeoutError:
            raise TeacherError("no answer within the timeout", category="timeout") from None
        except Exception as exc:  # every provider error becomes a categorised TeacherError
            raise classify(exc) from None
        usage = getattr(raw, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        cost = (
            self.price(prompt_tokens, completion_tokens)
            if prompt_tokens is not None and completion_tokens is not None
            else None
        )
        return Completion(parsed.model_dump(), prompt_tokens, completion_tokens, cost)


#: litellm provider prefixes whose endpoints speak the OpenAI chat API, and the environment
#: variable litellm reads their key from.
FAST_PROVIDERS = {"openai": "OPENAI_API_KEY", "hosted_vllm": "HOSTED_VLLM_API_KEY"}


def fast_path_eligible(model: str, api_base: str | None) -> bool:
    """An OpenAI-compatible endpoint named by ``--api-base`` under an openai/hosted_vllm string."""
    return bool(api_base) and model.split("/", 1)[0] in FAST_PROVIDERS and "/" in model


class OpenAICompatibleTeacher(_PriceMap):
    """The fast path for OpenAI-compatible endpoints: one aiohttp session, JSON mode, pydantic.

    Same model strings, same response model and same retry layer as `LiteLLMTeacher`, without
    litellm's and instructor's per-call overhead (several ms of CPU per request, which caps a
    2-core client far below what a self-hosted server can answer). The key comes from the
    environment variable litellm would read (`FAST_PROVIDERS`).
    """

    def __init__(self, model: str, *, api_base: str, timeout: float = 60.0) -> None:
        from rationale.schema import Rationale

        provider, _, self.wire_model = model.partition("/")
        self.model_id = model
        self.url = api_base.rstrip("/") + "/chat/completions"
        self.timeout = timeout
        self._default_model = Rationale
        key = os.environ.get(FAST_PROVIDERS[provider])
        self._headers = {"Content-Type": "application/json"}
        if key:
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
        import aiohttp

        body = {
            "model": self.wire_model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
            "response_format": {"type": "json_object"},
        }
        session = await self._client()
        try:
            async with session.post(self.url, json=body, headers=self._headers) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise _http_error(resp.status, raw, resp.headers)
        except asyncio.TimeoutError:
            raise TeacherError("no answer within the timeout", category="timeout") from None
        except aiohttp.ClientError as exc:
            raise TeacherError(f"{type(exc).__name__}: {exc}", category="connection") from None
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"] or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise TeacherError(
                f"the server's answer is not a chat completion: {raw[:200]!r}", category="server"
            ) from None
        try:
            model = response_model or self._default_model
            parsed = model.model_validate_json(_json_object(content))
        except ValueError as exc:
            raise TeacherError(
                f"the answer does not match the response model: {str(exc)[:300]}",
                category="invalid_output",
            ) from None
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        cost = self.price(p, c) if p is not None and c is not None else None
        return Completion(parsed.model_dump(), p, c, cost)


def _json_object(content: str) -> str:
    """The JSON object in a reply, without a Markdown fence around it."""
    start, end = content.find("{"), content.rfind("}")
    return content[start : end + 1] if 0 <= start < end else content


def _http_error(status: int, raw: bytes, headers: Any) -> TeacherError:
    try:
        message = json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = raw[:300].decode("utf-8", "replace")
    category = {
        429: "rate_limit",
        401: "auth",
        403: "auth",
        404: "not_found",
        400: "bad_request",
        422: "bad_request",
    }.get(status, "server" if status >= 500 or status == 408 else "other")
    cls = FatalTeacherError if category in FATAL else TeacherError
    return cls(
        f"HTTP {status}: {message}{_HINTS.get(category, '')}",
        category=category,
        retry_after=_retry_after_value(headers.get("Retry-After")),
    )


def _retry_after_value(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(str(value))
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time())


class LocalTeacher:
    """A small instruct model run in-process: plain text, primed with the assistant prefix.

    A 135M model does not follow JSON instructions, so it is not asked for JSON; its reply is
    the rationale. Calls run one at a time in a worker thread.
    """

    def __init__(self, model: str = "smollm2-135m") -> None:
        from rationale.local_teacher import LocalModel

        self._model = LocalModel(model)
        self.model_id = self._model.model_id

    def price(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        return 0.0

    async def aclose(self) -> None:
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
        if response_model is not None and set(response_model.model_fields) != {"rationale"}:
            raise FatalTeacherError(
                "the local model writes plain-text rationales only; it cannot verify or predict "
                "actions: use --verifier none or an API model",
                category="local_model",
            )
        try:
            out = await asyncio.to_thread(
                self._model.generate,
                messages,
                prefix=assistant_prefix if assistant_prefix is not None else "I ",
                max_new_tokens=min(max_tokens, 120),
                temperature=temperature,
                seed=seed,
            )
        except RationaleError as exc:
            # The model cannot be loaded (not installed, bad path): every record would fail.
            raise FatalTeacherError(str(exc), category="local_model") from None
        except Exception as exc:
            raise TeacherError(f"{type(exc).__name__}: {exc}", category="other") from None
        return Completion({"rationale": out.text}, out.prompt_tokens, out.completion_tokens, 0.0)


def make_teacher(
    name: str, *, api_base: str | None = None, timeout: float = 60.0, client: str = "auto"
) -> Teacher:
    """``local`` / ``local:<alias or path>``: a `LocalTeacher`. Otherwise a litellm model string:
    with ``client="auto"`` an OpenAI-compatible ``--api-base`` takes the fast path
    (`OpenAICompatibleTeacher`), everything else goes through litellm + instructor."""
    if name == "local" or name.startswith("local:"):
        return LocalTeacher(name.partition(":")[2] or "smollm2-135m")
    if not name.strip():
        raise ConfigError("--teacher is empty: give a litellm model string or 'local'")
    eligible = fast_path_eligible(name, api_base)
    if client == "fast" and not eligible:
        raise ConfigError(
            f"--client fast needs an openai/... or hosted_vllm/... model and --api-base, "
            f"got {name!r}"
        )
    if client in ("auto", "fast") and eligible:
        return OpenAICompatibleTeacher(name, api_base=str(api_base), timeout=timeout)
    return LiteLLMTeacher(name, api_base=api_base, timeout=timeout)


def describe_error(exc: TeacherError) -> dict[str, str]:
    """The stored form of a failure: class, category and the redacted message."""
    return {"type": type(exc).__name__, "category": exc.category, "message": redact(str(exc))}
