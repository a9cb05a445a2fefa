"""The one layer that retries teacher calls, and the classification of faults it relies on.

A teacher makes one *attempt* (one request) per call; retrying is done here, once, by
`call_with_retries` (tenacity). litellm is called with ``num_retries=0`` (its own retries would
make up to 2N+1 requests and retry 400/401/404 too) and instructor with ``max_retries=0`` (it
re-asks only on validation errors, and each re-ask is a paid request). So one fault costs exactly
one extra request, and the attempt count on every record is the number of requests it really
made.

What is retried: rate limits (429, waiting at least its Retry-After), server errors (5xx),
timeouts, dropped or refused connections, and answers that do not parse into the response model.
What fails at once: bad requests (400, 422) fail the record; authentication, permission and
unknown-model errors (401, 403, 404) stop the whole run with a `FatalTeacherError`, since every
later request would fail the same way.

Every fault becomes a `TeacherError`, whose message is redacted (`rationale.errors.redact`): a
key or a credential in ``--api-base`` never reaches a record, a log or the terminal.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rationale.completion import Completion
from rationale.errors import FatalTeacherError, TeacherError

if TYPE_CHECKING:
    from rationale.completion import Teacher

__all__ = ["FATAL", "RETRYABLE", "RetryPolicy", "call_with_retries", "classify", "http_error"]

RETRYABLE = frozenset({"rate_limit", "server", "timeout", "connection", "invalid_output"})
FATAL = frozenset({"auth", "not_found"})


@dataclass(frozen=True)
class RetryPolicy:
    """How `call_with_retries` retries: attempts in all, and exponential backoff with jitter."""

    max_attempts: int = 6
    backoff: float = 1.0  # first wait, seconds (random between 0 and this, doubling)
    max_backoff: float = 60.0
    max_retry_after: float = 300.0  # a longer Retry-After fails the record instead


async def call_with_retries(
    teacher: Teacher,
    messages: list[dict[str, str]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    **kwargs: Any,
) -> Completion:
    """`teacher.attempt` until it succeeds or a fault is not worth retrying.

    Raises `TeacherError` (with ``attempts``) when out of attempts, at once for a non-retryable
    fault, and `FatalTeacherError` for faults that would hit every record. ``sleep`` waits
    between attempts (the engine passes one that wakes early when the run is stopping).
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
            **({"sleep": sleep} if sleep is not None else {}),
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


def http_error(status: int, raw: bytes, headers: Any) -> TeacherError:
    """A non-200 answer of an OpenAI-compatible endpoint as a `TeacherError` with a category."""
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


_HINTS = {
    "auth": " (check the key in the provider's environment variable, e.g. OPENAI_API_KEY or "
    "ANTHROPIC_API_KEY)",
    "not_found": " (check the model name and --api-base)",
}


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
