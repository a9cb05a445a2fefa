"""What the batch providers (`rationale.batch_providers`, `rationale.batch_anthropic`) report:
a job's state, one request's result, and the provider words the run acts on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rationale.errors import FatalTeacherError

__all__ = [
    "ACCOUNT_CODES",
    "ACCOUNT_HINT",
    "TOKEN_LIMIT",
    "UPLOAD_TIMEOUT",
    "JobState",
    "Result",
    "ResultsGone",
    "epoch",
    "http_category",
]

#: OpenAI's validation error of a job over the organization's enqueued-token limit: it never ran.
TOKEN_LIMIT = "token_limit_exceeded"
#: Per-request error codes that say the account cannot pay (OpenAI's, Anthropic's
#: ``billing_error``): every other request would fail alike, so they stop the run (as ``auth``).
ACCOUNT_CODES = frozenset({
    "insufficient_quota", "billing_hard_limit_reached", "billing_not_active",
    "account_deactivated", "access_terminated", "billing_error",
})  # fmt: skip
ACCOUNT_HINT = " (the provider's account cannot pay: fix its billing, then rerun to send again)"

#: Seconds an upload (a job's requests, up to ~200 MB) may take, at least.
UPLOAD_TIMEOUT = 600.0


@dataclass(frozen=True)
class JobState:
    """A job as the provider reports it; ``state`` is the provider's own word."""

    id: str
    state: str
    ended: bool
    total: int
    answered: int
    errored: int
    created: float | None = None
    expires: float | None = None
    error: str | None = None  # why the whole job failed (OpenAI's validation errors)
    tag: str | None = None
    codes: tuple[str, ...] = ()  # the codes of those errors (`TOKEN_LIMIT`, ...)
    results_url: str | None = None  # Anthropic: where an ended job's results are
    archived: str | None = None  # Anthropic: when its results were archived (gone)


class ResultsGone(FatalTeacherError):
    """A job ended but its results can no longer be read (Anthropic archives them)."""


@dataclass(frozen=True)
class Result:
    """One request's outcome in a finished job: the provider's answer, or its error."""

    custom_id: str
    body: dict[str, Any] | None = None
    category: str | None = None  # as `rationale.retry` names faults, or expired / cancelled
    message: str | None = None


def epoch(value: Any) -> float | None:
    """A provider's time (epoch seconds, a datetime, an ISO string) in epoch seconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None


def http_category(status: int | None) -> str:
    """As `rationale.retry.http_error` sorts an online answer's status."""
    status = status or 0
    fallback = "server" if status >= 500 or status == 408 else "other"
    return {401: "auth", 403: "auth", 404: "not_found", 400: "bad_request", 422: "bad_request",
            429: "rate_limit"}.get(status, fallback)  # fmt: skip
