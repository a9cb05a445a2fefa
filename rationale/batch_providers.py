"""Provider batch APIs: OpenAI's Batch API and Anthropic's Message Batches, one interface.

- `OpenAIBatches`: ``openai/...`` models, and any OpenAI-compatible ``--api-base`` that serves
  the files and batches endpoints (a LiteLLM proxy), through litellm's file and batch functions:
  a JSONL file is uploaded, a job is made of it, its output and error files are read back.
  ``hosted_vllm/...`` is refused: vLLM's server has no such endpoints (`NO_VLLM_BATCHES`).
- `AnthropicBatches` (`rationale.batch_anthropic`): ``anthropic/...`` models through the
  anthropic SDK (litellm can read an Anthropic batch but not create one).

A provider submits request bodies as one job tagged with the run's own id, reads a job's state,
reads its results, cancels it, and finds a job again by its tag: a kill between the provider's
answer to a submission and the run folder's record of it loses nothing. Nothing here retries a
submission (the clients are built with ``max_retries=0``): a create that timed out may still
have made a job, so the caller looks for it by tag before it sends the requests again.
"""

from __future__ import annotations

import json
from typing import Any

from rationale.batch_types import (
    ACCOUNT_CODES,
    ACCOUNT_HINT,
    TOKEN_LIMIT,
    UPLOAD_TIMEOUT,
    JobState,
    Result,
    ResultsGone,
    epoch,
    http_category,
)
from rationale.errors import ConfigError, TeacherError, redact
from rationale.retry import classify

__all__ = [
    "NO_VLLM_BATCHES",
    "SUPPORTED",
    "TOKEN_LIMIT",
    "JobState",
    "OpenAIBatches",
    "Result",
    "ResultsGone",
    "batch_target",
    "check_batchable",
    "provider_for",
]

SUPPORTED = "openai/... (OpenAI, or an OpenAI-compatible --api-base with the batches endpoints) "
SUPPORTED += "and anthropic/... (Message Batches)"
#: Why ``hosted_vllm/...`` is refused: its OpenAI-compatible server serves chat completions only
#: (vLLM's offline ``run_batch`` reads a file, it is no HTTP Batch API).
NO_VLLM_BATCHES = (
    "vLLM's OpenAI-compatible server has no /v1/files and /v1/batches routes; run without --batch "
    "(the online path is already fast against vLLM)"
)


def provider_for(model: str, api_base: str | None = None, *, timeout: float = 60.0) -> Any:
    """The batch API that serves ``model``, or a `ConfigError` naming the ones supported."""
    from rationale.litellm_teacher import _quiet_litellm

    if model == "local" or model.startswith("local:"):
        raise ConfigError("--batch needs an API model: a local model has no batch API")
    litellm = _quiet_litellm()
    try:
        wire, provider, _, _ = litellm.get_llm_provider(model)
    except Exception:
        provider, wire = model.split("/", 1)[0], model.split("/", 1)[-1]
    if provider == "hosted_vllm":
        raise ConfigError(f"--batch with {model!r}: {NO_VLLM_BATCHES}")
    if provider in ("openai", "text-completion-openai"):
        return OpenAIBatches(wire, api_base=api_base, timeout=timeout)
    if provider == "anthropic":
        from rationale.batch_anthropic import AnthropicBatches

        return AnthropicBatches(wire, api_base=api_base, timeout=timeout)
    raise ConfigError(f"--batch: no batch API for {model!r} (provider {provider!r}); {SUPPORTED}")


def batch_target(client: Any) -> tuple[str, str | None]:
    """(model, api_base) of a client that can go into a batch, or a `ConfigError`."""
    if not hasattr(client, "request_body"):
        raise ConfigError(f"--batch needs an API model; {client.model_id!r} has no batch API")
    from urllib.parse import urlsplit

    headers = getattr(client, "_headers", None) or {}
    api_base = getattr(client, "api_base", None)
    url = urlsplit(api_base or "")
    if str(headers.get("Authorization", "")).startswith("Basic ") or url.username or url.password:
        raise ConfigError(
            "--batch cannot send credentials written in --api-base; put the key in the "
            "provider's environment variable (OPENAI_API_KEY, ANTHROPIC_API_KEY)"
        )
    return client.model_id, api_base


def check_batchable(client: Any, *, timeout: float = 60.0) -> Any:
    """The batch provider of a model client, or a `ConfigError` (before anything is written)."""
    model, api_base = batch_target(client)
    return provider_for(model, api_base, timeout=timeout)


class OpenAIBatches:
    """OpenAI's Batch API through litellm: a JSONL file of chat requests, a 24 h window."""

    name = "openai"
    max_requests = 50_000
    max_bytes = 190 * 1024 * 1024  # OpenAI takes files up to 200 MB

    def __init__(
        self, model: str, *, api_base: str | None = None, timeout: float = 60.0,
        api_key: str | None = None,
    ) -> None:  # fmt: skip
        from rationale.litellm_teacher import _quiet_litellm

        self.litellm = _quiet_litellm()
        self.model = model
        self.api_base = api_base
        self.timeout = timeout
        self._api_key = api_key

    def _kwargs(self, *, upload: bool = False) -> dict[str, Any]:
        # an upload of up to 190 MB gets at least 10 minutes, whatever --timeout says
        timeout = max(self.timeout, UPLOAD_TIMEOUT) if upload else self.timeout
        kwargs: dict[str, Any] = {"custom_llm_provider": "openai", "max_retries": 0,
                                  "timeout": timeout}  # fmt: skip
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self._api_key:
            kwargs["api_key"] = self._api_key
        return kwargs

    def line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                "body": body}  # fmt: skip

    async def submit(self, lines: list[dict[str, Any]], tag: str) -> JobState:
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        try:
            file = await self.litellm.acreate_file(
                file=(f"rationale-{tag}.jsonl", data, "application/jsonl"), purpose="batch",
                **self._kwargs(upload=True),
            )  # fmt: skip
            job = await self.litellm.acreate_batch(
                completion_window="24h", endpoint="/v1/chat/completions",
                input_file_id=file.id, metadata={"rationale_tag": tag}, **self._kwargs(),
            )  # fmt: skip
        except Exception as exc:
            raise classify(exc) from None
        return self._state(job)

    def _state(self, job: Any) -> JobState:
        counts = getattr(job, "request_counts", None)
        errors = getattr(getattr(job, "errors", None), "data", None) or []
        error = "; ".join(f"{getattr(e, 'code', '')}: {getattr(e, 'message', '')}" for e in errors)
        status = str(job.status)
        return JobState(
            id=job.id,
            state=status,
            ended=status in ("completed", "expired", "cancelled", "failed"),
            total=getattr(counts, "total", 0) or 0,
            answered=getattr(counts, "completed", 0) or 0,
            errored=getattr(counts, "failed", 0) or 0,
            created=epoch(getattr(job, "created_at", None)),
            expires=epoch(getattr(job, "expires_at", None)),
            error=redact(error) or None,
            tag=(getattr(job, "metadata", None) or {}).get("rationale_tag"),
            codes=tuple(str(getattr(e, "code", "") or "") for e in errors),
        )

    async def retrieve(self, job_id: str) -> JobState:
        try:
            return self._state(await self.litellm.aretrieve_batch(job_id, **self._kwargs()))
        except TeacherError:
            raise
        except Exception as exc:
            raise classify(exc) from None

    async def cancel(self, job_id: str) -> JobState:
        try:
            return self._state(await self.litellm.acancel_batch(job_id, **self._kwargs()))
        except Exception as exc:
            raise classify(exc) from None

    async def results(self, job_id: str) -> list[Result]:
        """Every line of the job's output and error files (none for a job that failed)."""
        try:
            job = await self.litellm.aretrieve_batch(job_id, **self._kwargs())
            out: list[Result] = []
            for file_id in (job.output_file_id, job.error_file_id):
                if file_id:
                    content = await self.litellm.afile_content(file_id, **self._kwargs())
                    out += [self._result(json.loads(x)) for x in content.text.splitlines() if x]
        except Exception as exc:
            raise classify(exc) from None
        return out

    def _result(self, line: dict[str, Any]) -> Result:
        response = line.get("response") or {}
        error = line.get("error")
        status = response.get("status_code")
        if not error and status == 200:
            return Result(line["custom_id"], body=response.get("body"))
        if error:  # the request never ran: batch_expired, batch_cancelled, ...
            code = str(error.get("code") or "")
            category = {"batch_expired": "expired", "batch_cancelled": "cancelled"}.get(
                code, "rate_limit" if "limit" in code else "server"
            )
            return Result(line["custom_id"], category=category, message=redact(
                f"{code}: {error.get('message', '')}"))  # fmt: skip
        body = response.get("body") or {}
        error = (body.get("error") or {}) if isinstance(body, dict) else {}
        error = error if isinstance(error, dict) else {}
        message = error.get("message")
        codes = {str(error.get("code") or ""), str(error.get("type") or "")}
        if status == 402 or codes & ACCOUNT_CODES:  # the account, not the request
            return Result(line["custom_id"], category="auth", message=redact(
                f"HTTP {status}: {message or str(body)[:300]}{ACCOUNT_HINT}"))  # fmt: skip
        return Result(
            line["custom_id"], category=http_category(status),
            message=redact(f"HTTP {status}: {message or str(body)[:300]}"),
        )  # fmt: skip

    async def find(self, tag: str, since: float, known: set[str], size: int = 0) -> list[JobState]:
        """The jobs sent with ``tag`` (newest first), looking back to ``since``."""
        found: list[JobState] = []
        after: str | None = None
        try:
            while True:
                page = await self.litellm.alist_batches(after=after, limit=100, **self._kwargs())
                data = getattr(page, "data", None)
                data = list(page.get("data", []) if data is None else data)
                for job in data:
                    state = self._state(job)
                    if state.tag == tag and state.id not in known:
                        found.append(state)
                last = epoch(getattr(data[-1], "created_at", None)) if data else None
                if not data or not getattr(page, "has_more", False) or (last or 0) < since - 600:
                    return found
                after = data[-1].id
        except Exception as exc:
            raise classify(exc) from None
