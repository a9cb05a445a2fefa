"""Anthropic's Message Batches, behind the interface of `rationale.batch_providers`.

A batch carries no metadata, so a job is told by the tag that prefixes its custom ids; an ended
batch whose results were archived raises `ResultsGone`; ``billing_error`` is account-wide.
"""

from __future__ import annotations

import os
from typing import Any

from rationale.batch_types import (
    ACCOUNT_CODES,
    ACCOUNT_HINT,
    UPLOAD_TIMEOUT,
    JobState,
    Result,
    ResultsGone,
    epoch,
)
from rationale.errors import ConfigError, redact
from rationale.retry import classify

__all__ = ["AnthropicBatches"]


class AnthropicBatches:
    """Anthropic's Message Batches through the anthropic SDK (up to 100,000 requests a job)."""

    name = "anthropic"
    max_requests = 100_000
    max_bytes = 240 * 1024 * 1024  # Anthropic takes up to 256 MB a batch

    def __init__(self, model: str, *, api_base: str | None = None, timeout: float = 60.0) -> None:
        try:
            import anthropic
        except ImportError:  # pragma: no cover  (a dependency; a broken install)
            raise ConfigError("--batch with anthropic/... needs the anthropic package") from None
        if not os.environ.get("ANTHROPIC_API_KEY"):
            raise ConfigError("--batch with anthropic/...: set ANTHROPIC_API_KEY")
        self.model = model
        self.timeout = timeout
        self.client = anthropic.AsyncAnthropic(
            base_url=api_base or None, max_retries=0, timeout=timeout
        )

    def line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "params": body}

    def _state(self, job: Any) -> JobState:
        c = job.request_counts
        total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
        return JobState(
            id=job.id,
            state=str(job.processing_status),
            ended=job.processing_status == "ended",
            total=total,
            answered=c.succeeded,
            errored=c.errored + c.canceled + c.expired,
            created=epoch(job.created_at),
            expires=epoch(job.expires_at),
            results_url=job.results_url,
            archived=f"archived at {job.archived_at}" if job.archived_at else None,
        )

    async def submit(self, lines: list[dict[str, Any]], tag: str) -> JobState:
        # Message Batches carry no metadata: the tag is the prefix of every custom_id.
        try:
            created = await self.client.messages.batches.create(
                requests=lines, timeout=max(self.timeout, UPLOAD_TIMEOUT)
            )
            return self._state(created)
        except Exception as exc:
            raise classify(exc) from None

    async def retrieve(self, job_id: str) -> JobState:
        try:
            return self._state(await self.client.messages.batches.retrieve(job_id))
        except Exception as exc:
            raise classify(exc) from None

    async def cancel(self, job_id: str) -> JobState:
        try:
            return self._state(await self.client.messages.batches.cancel(job_id))
        except Exception as exc:
            raise classify(exc) from None

    async def results(self, job_id: str) -> list[Result]:
        """Every request's result; `ResultsGone` when the job ended but its results cannot be
        read any more (archived: no ``results_url``, or the results are not found)."""
        job = await self.retrieve(job_id)  # (the SDK reads it too, and says less)
        if job.ended and not job.results_url:
            raise ResultsGone(f"{job.archived or 'archived'}, no results_url", category="not_found")
        out: list[Result] = []
        try:
            async for item in await self.client.messages.batches.results(job_id):
                out.append(self._result(item.custom_id, item.result))
        except Exception as exc:
            error = classify(exc)
            if error.category == "not_found":  # the job was just read: its results are gone
                gone = ResultsGone(f"its results are not found: {error}", category="not_found")
                raise gone from None
            raise error from None
        return out

    def _result(self, custom_id: str, result: Any) -> Result:
        kind = result.type
        if kind == "succeeded":
            return Result(custom_id, body=result.message.model_dump(mode="json"))
        if kind in ("canceled", "expired"):
            category = "cancelled" if kind == "canceled" else "expired"
            return Result(custom_id, category=category, message=f"the request was {kind}")
        error = getattr(getattr(result, "error", None), "error", None)
        etype = str(getattr(error, "type", "api_error"))
        category = {
            "invalid_request_error": "bad_request", "authentication_error": "auth",
            "permission_error": "auth", "not_found_error": "not_found",
            "rate_limit_error": "rate_limit", "request_too_large": "bad_request",
            "api_error": "server", "overloaded_error": "server", "timeout_error": "timeout",
        }.get(etype, "auth" if etype in ACCOUNT_CODES else "other")  # fmt: skip
        hint = ACCOUNT_HINT if etype in ACCOUNT_CODES else ""
        message = redact(f"{etype}: {getattr(error, 'message', '')}{hint}")
        return Result(custom_id, category=category, message=message)

    async def find(self, tag: str, since: float, known: set[str], size: int = 0) -> list[JobState]:
        """Jobs made since ``since`` that no part of the run knows, with ``size`` requests: the
        candidates. Message Batches carry no metadata, so which one (if any) is the part's own
        is told by the tag in its custom ids once its results can be read
        (`rationale.batch_engine`); until then none is taken for it."""
        found: list[JobState] = []
        try:
            async for job in self.client.messages.batches.list(limit=100):
                state = self._state(job)
                if (state.created or 0) < since - 3600:  # an hour of clock skew
                    break
                if state.id not in known and (not size or state.total == size):
                    found.append(state)
        except Exception as exc:
            raise classify(exc) from None
        return found

    async def aclose(self) -> None:
        await self.client.close()
