"""A local fake of the provider batch APIs, for tests: OpenAI's files + batches endpoints and
Anthropic's Message Batches, on the `ScriptedServer` (which still answers chat requests online).

A job walks through its provider's states, one state per time a client reads it
(OpenAI: validating, in_progress, finalizing, completed; Anthropic: in_progress, ended), unless
``hold`` is set (it stays in progress until ``finish_all()``). When it ends, each request gets
the reply the chat server would give the same body (scripts, faults, the responder), so a
fault injected with ``server.fault(...)`` is a per-request error in the job's results.

``plan(...)`` sets what the next jobs do: ``"ok"``, ``"expire_half"`` (the job expires with the
first half of its requests answered), ``"fail"`` (OpenAI: validation fails, nothing answered).
A cancelled job also keeps the first half of its answers (those done before the cancel); it
stays ``cancelling`` for ``cancel_polls`` reads first. A job that ended is never cancelled.
``on_create(job)`` runs when a job is made, before the client hears of it (a test kills the
client there); ``on_read(job)`` each time a client reads a job's state.

As strict as the real APIs (checked against the openai and anthropic SDK types): custom ids match
``^[a-zA-Z0-9_-]{1,64}$`` and are unique in a job; an OpenAI input file holds one model and one
endpoint, at most ``max_file_requests`` requests and ``max_file_bytes`` bytes, and the prompt
tokens of the jobs not ended (this one included) stay within ``enqueued_token_limit`` (None: no
limit), else the job fails validation with OpenAI's error codes (``token_limit_exceeded``, ...);
an Anthropic create with such requests is refused (HTTP 400). Lists come in pages (``limit``,
``after`` / ``after_id``; ``max_page`` caps a page, as a provider may). ``cached(body)`` (None:
no caching) is how many prompt tokens of a request were read from the prompt cache: reported in
``usage`` as each provider does. ``archive(job_id)``: an Anthropic job whose results are gone.
A scripted 402 is the provider's account-wide billing error (Anthropic ``billing_error``,
OpenAI ``insufficient_quota``).

What it counts: ``creates`` (jobs made), ``submitted`` (how many times each distinct request body
was submitted, over every job), ``answered`` (how many times each was answered), ``billed_requests``
(each distinct request body: how many times it was billed, which is when its job ended with an
answer for it, whether or not anyone collects it), ``billed_jobs`` (job id: its billed usage).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from openai_server import ScriptedServer, _completion, _prompt_chars, error_body, ok

__all__ = ["BatchServer", "anthropic_as_chat", "fingerprint"]

OPENAI_STATES = ("validating", "in_progress", "finalizing", "completed")
ANTHROPIC_STATES = ("in_progress", "in_progress", "ended")
#: Both providers' custom_id rule (Anthropic documents it; OpenAI's ids are held to it too).
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
#: OpenAI's limits on one batch input file; Anthropic's on one batch.
OPENAI_MAX_REQUESTS, OPENAI_MAX_BYTES = 50_000, 200 * 1_000_000
ANTHROPIC_MAX_REQUESTS, ANTHROPIC_MAX_BYTES = 100_000, 256 * 1_000_000


def fingerprint(body: dict) -> str:
    """One distinct request: the hash of its body."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def anthropic_as_chat(params: dict) -> dict:
    """An Anthropic Messages body as the chat body the responder reads (system first)."""
    messages = (
        [{"role": "system", "content": _text(params.get("system"))}] if params.get("system") else []
    )
    messages += [{"role": m["role"], "content": _text(m["content"])} for m in params["messages"]]
    return {**params, "messages": messages}


def as_message(c: dict) -> dict:
    """A chat completion the responder made, as an Anthropic Messages answer (its input_tokens
    are the uncached ones: cached prompt tokens are ``cache_read_input_tokens``)."""
    cached = (c["usage"].get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    usage = {"input_tokens": c["usage"]["prompt_tokens"] - cached,
             "output_tokens": c["usage"]["completion_tokens"]}  # fmt: skip
    if cached:
        usage.update(cache_read_input_tokens=cached, cache_creation_input_tokens=0)
    return {
        "id": f"msg_{c['id']}", "type": "message", "role": "assistant", "model": c["model"],
        "stop_reason": "end_turn", "stop_sequence": None,
        "content": [{"type": "text", "text": c["choices"][0]["message"]["content"]}],
        "usage": usage,
    }  # fmt: skip


def prompt_tokens(provider: str, body: dict) -> int:
    """The prompt tokens a provider counts for a request (as the chat server's default usage):
    what OpenAI's enqueued-token limit adds up."""
    chat = body if provider == "openai" else anthropic_as_chat(body)
    return max(1, _prompt_chars(chat) // 4)


@dataclass
class Job:
    id: str
    provider: str
    requests: list[tuple[str, dict]]
    metadata: dict
    created: float
    plan: str = "ok"
    step: int = 0
    cancelled: bool = False
    results: list[dict] | None = None
    extra: dict = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)  # OpenAI validation errors
    cancel_reads: int = 0  # reads left in ``cancelling``
    archived: bool = False

    @property
    def states(self) -> tuple[str, ...]:
        return OPENAI_STATES if self.provider == "openai" else ANTHROPIC_STATES


class BatchServer(ScriptedServer):
    """`ScriptedServer` plus the OpenAI and Anthropic batch endpoints (see the module doc)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.jobs: dict[str, Job] = {}
        self.files: dict[str, bytes] = {}
        self.hold = False
        self.creates = 0
        self.submitted: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.on_create: Callable[[Job], None] | None = None
        self.on_read: Callable[[Job], None] | None = None
        self.before_create: Callable[[], None] | None = None
        self.billed_requests: Counter[str] = Counter()
        self.billed_jobs: dict[str, dict[str, int]] = {}
        self.cached: Callable[[dict], int] | None = None
        self.max_page: int | None = None
        self.cancel_polls = 0
        self.enqueued_token_limit: int | None = None
        self.max_file_requests = OPENAI_MAX_REQUESTS
        self.max_file_bytes = OPENAI_MAX_BYTES
        self._plans: deque[str] = deque()
        self._ids = 0
        self._batch_lock = threading.RLock()

    @property
    def root(self) -> str:
        """The base URL for Anthropic's SDK (it adds /v1/...)."""
        return self.url.removesuffix("/v1")

    def plan(self, *plans: str) -> BatchServer:
        self._plans.extend(plans)
        return self

    def finish_all(self) -> None:
        """End every job now (held or not)."""
        with self._batch_lock:
            for job in self.jobs.values():
                job.step = len(job.states) - 1
                self._end(job)

    def _id(self, prefix: str) -> str:
        with self._batch_lock:
            self._ids += 1
            return f"{prefix}_{self._ids:04d}"

    # -- jobs ----------------------------------------------------------------------------------

    def _make(self, provider: str, requests: list[tuple[str, dict]], metadata: dict) -> Job:
        if self.before_create is not None:
            self.before_create()
        with self._batch_lock:
            job = Job(
                self._id("batch" if provider == "openai" else "msgbatch"),
                provider,
                requests,
                metadata,
                time.time(),
                self._plans.popleft() if self._plans else "ok",
            )
            self.jobs[job.id] = job
            self.creates += 1
            for _, body in requests:
                self.submitted[fingerprint(body)] += 1
        if self.on_create is not None:
            self.on_create(job)
        return job

    def archive(self, job_id: str) -> None:
        """An Anthropic job past its results' retention: ended, no results_url, results 404."""
        with self._batch_lock:
            job = self.jobs[job_id]
            job.step = len(job.states) - 1
            self._end(job)
            job.archived = True

    def _validate(self, job: Job) -> list[dict]:
        """OpenAI's validation of a job's input file: its errors (none: it goes on)."""
        if job.plan == "fail":
            return [{"code": "invalid_request", "message": "Scripted validation failure.",
                     "param": None, "line": None}]  # fmt: skip
        errors = self._line_errors(job.requests, job.extra.get("urls", []))
        if len(job.requests) > self.max_file_requests:
            errors.append({"code": "too_many_requests", "message": f"The input file holds "
                           f"{len(job.requests)} requests; the limit is "
                           f"{self.max_file_requests}.", "param": None, "line": None})  # fmt: skip
        if job.extra.get("bytes", 0) > self.max_file_bytes:
            errors.append({"code": "file_too_large", "message": f"The input file is "
                           f"{job.extra['bytes']} bytes; the limit is {self.max_file_bytes}.",
                           "param": None, "line": None})  # fmt: skip
        models = {body.get("model") for _, body in job.requests}
        if len(models) > 1:
            errors.append({"code": "mismatched_model", "message": "Every request of a batch "
                           f"must use one model; this file uses {sorted(map(str, models))}.",
                           "param": "body.model", "line": None})  # fmt: skip
        if not errors and self.enqueued_token_limit is not None:
            queued = sum(j.extra.get("tokens", 0) for j in self.jobs.values()
                         if j.provider == "openai" and j.id < job.id
                         and j.results is None)  # fmt: skip
            if queued + job.extra.get("tokens", 0) > self.enqueued_token_limit:
                errors.append({"code": "token_limit_exceeded", "message": "Enqueued token "
                               f"limit reached for {next(iter(models))} in organization "
                               f"org-test. Limit: {self.enqueued_token_limit} enqueued tokens. "
                               "Please try submitting an empty batch again once your batch "
                               "queue has completed.", "param": None, "line": None})  # fmt: skip
        return errors

    def _line_errors(self, requests: list[tuple[str, dict]], urls: list[str]) -> list[dict]:
        errors, seen = [], set()
        for line, (custom_id, _) in enumerate(requests, 1):
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
                errors.append({"code": "invalid_custom_id", "message": f"custom_id "
                               f"{custom_id!r} does not match ^[a-zA-Z0-9_-]{{1,64}}$.",
                               "param": "custom_id", "line": line})  # fmt: skip
            elif custom_id in seen:
                errors.append({"code": "duplicate_custom_id", "message": f"custom_id "
                               f"{custom_id!r} is not unique.", "param": "custom_id",
                               "line": line})  # fmt: skip
            seen.add(custom_id)
        for line, url in enumerate(urls, 1):
            if url != "/v1/chat/completions":
                errors.append({"code": "invalid_url", "message": f"url {url!r} is not the "
                               "batch's endpoint /v1/chat/completions.", "param": "url",
                               "line": line})  # fmt: skip
        return errors

    def _read(self, job: Job) -> None:
        """A client read the job: it moves one state on (unless held)."""
        if self.on_read is not None:
            self.on_read(job)
        with self._batch_lock:
            if job.results is not None:
                return
            if job.provider == "openai" and not job.extra.get("validated"):
                job.extra["validated"] = True
                job.errors = self._validate(job)
                if job.errors:
                    job.step = -1
                    job.results = []
                    return
            if job.cancelled:
                job.cancel_reads -= 1
                if job.cancel_reads < 0:
                    self._end(job)
                return
            if not self.hold:
                job.step = min(job.step + 1, len(job.states) - 1)
            if job.step == len(job.states) - 1:
                self._end(job)

    def _end(self, job: Job) -> None:
        """The job ends: each request is answered (and billed) or not; nobody need read it."""
        if job.results is not None:
            return
        n = len(job.requests)
        cut = (n + 1) // 2 if job.plan == "expire_half" or job.cancelled else n
        job.results = []
        bill = self.billed_jobs.setdefault(
            job.id, {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0,
                     "completion_tokens": 0},
        )  # fmt: skip
        for i, (custom_id, body) in enumerate(job.requests):
            if i >= cut:
                job.results.append(
                    {"custom_id": custom_id, "kind": "cancelled" if job.cancelled else "expired"}
                )
                continue
            chat = body if job.provider == "openai" else anthropic_as_chat(body)
            with self._lock:
                index = self._count
                self._count += 1
            reply = self._choose(chat, index) or ok()
            if reply.kind != "ok":
                code = reply.code if reply.kind == "status" else 500
                job.results.append({"custom_id": custom_id, "kind": "error", "code": code})
                continue
            self.answered[fingerprint(body)] += 1
            self.billed_requests[fingerprint(body)] += 1
            completion = self._bill(_completion(reply, chat, index))
            cached = min(self.cached(chat), completion["usage"]["prompt_tokens"]) if (
                self.cached is not None) else 0  # fmt: skip
            if cached:
                completion["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
            bill["requests"] += 1
            bill["prompt_tokens"] += completion["usage"]["prompt_tokens"]
            bill["cached_tokens"] += cached
            bill["completion_tokens"] += completion["usage"]["completion_tokens"]
            job.results.append({"custom_id": custom_id, "kind": "ok", "completion": completion})

    def _openai_state(self, job: Job) -> str:
        if job.step < 0:
            return "failed"
        if job.results is not None:
            if job.cancelled:
                return "cancelled"
            return "expired" if job.plan == "expire_half" else "completed"
        return "cancelling" if job.cancelled else job.states[job.step]

    # -- OpenAI --------------------------------------------------------------------------------

    def _openai_batch(self, job: Job) -> dict:
        results = job.results or []
        done = sum(r["kind"] == "ok" for r in results)
        failed = len(results) - done if job.results is not None else 0
        state = self._openai_state(job)
        ended = job.results is not None and state != "failed"
        return {
            "id": job.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": {"object": "list", "data": job.errors} if state == "failed" else None,
            "input_file_id": job.extra.get("file"),
            "completion_window": "24h",
            "status": state,
            "output_file_id": f"file-out-{job.id}" if ended and done else None,
            "error_file_id": f"file-err-{job.id}" if ended and failed else None,
            "created_at": int(job.created),
            "expires_at": int(job.created) + 86400,
            "request_counts": {"total": len(job.requests), "completed": done, "failed": failed},
            "metadata": job.metadata or None,
        }

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        data = upload.file.read() if hasattr(upload, "file") else bytes(upload)
        file_id = self._id("file")
        self.files[file_id] = data
        return web.json_response(
            {
                "id": file_id,
                "object": "file",
                "bytes": len(data),
                "created_at": int(time.time()),
                "filename": getattr(upload, "filename", "batch.jsonl"),
                "purpose": form["purpose"],
                "status": "processed",
            }
        )

    async def _create(self, request: web.Request) -> web.Response:
        spec = await request.json()
        raw = self.files[spec["input_file_id"]]
        lines = [json.loads(x) for x in raw.decode().splitlines() if x.strip()]
        requests = [(x["custom_id"], x["body"]) for x in lines]
        job = self._make("openai", requests, spec.get("metadata") or {})
        job.extra.update(file=spec["input_file_id"], bytes=len(raw), urls=[x["url"] for x in lines],
                         tokens=sum(prompt_tokens("openai", b) for _, b in requests))  # fmt: skip
        return web.json_response(self._openai_batch(job))

    async def _get(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return web.json_response(error_body(404), status=404)
        self._read(job)
        return web.json_response(self._openai_batch(job))

    async def _cancel(self, request: web.Request) -> web.Response:
        """A job not ended goes ``cancelling`` (for ``cancel_polls`` reads); one that ended
        stays as it is (what it answered was billed already)."""
        job = self.jobs[request.match_info["id"]]
        with self._batch_lock:
            if job.results is None and not job.cancelled:
                job.cancelled = True
                job.cancel_reads = self.cancel_polls
        render = self._openai_batch if job.provider == "openai" else self._anthropic_batch
        return web.json_response(render(job))

    async def _list(self, request: web.Request) -> web.Response:
        """Newest first, as both providers list, a page at a time (``limit``: default 20;
        ``after`` / ``after_id``: the last id of the page before); the path tells which
        provider's jobs."""
        provider = "anthropic" if "/messages/" in request.path else "openai"
        render = self._openai_batch if provider == "openai" else self._anthropic_batch
        query = request.query
        try:
            limit = int(query.get("limit", 20))
        except ValueError:
            limit = 0
        if not 1 <= limit <= (100 if provider == "openai" else 1000):
            return web.json_response(error_body(400), status=400)
        limit = min(limit, self.max_page or limit)
        with self._batch_lock:
            jobs = sorted((j for j in self.jobs.values() if j.provider == provider),
                          key=lambda j: j.id, reverse=True)  # fmt: skip
        after = query.get("after" if provider == "openai" else "after_id")
        if after:
            ids = [j.id for j in jobs]
            if after not in ids:
                return web.json_response(error_body(400), status=400)
            jobs = jobs[ids.index(after) + 1 :]
        data = [render(j) for j in jobs[:limit]]
        page = {"data": data, "has_more": len(jobs) > limit,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}  # fmt: skip
        return web.json_response({"object": "list", **page} if provider == "openai" else page)

    async def _content(self, request: web.Request) -> web.Response:
        file_id = request.match_info["id"]
        if file_id in self.files:
            return web.Response(body=self.files[file_id])
        kind, _, job_id = file_id.removeprefix("file-").partition("-")
        job = self.jobs[job_id]
        lines = []
        for r in job.results or []:
            if kind == "out" and r["kind"] == "ok":
                lines.append(
                    {
                        "id": f"req-{r['custom_id']}",
                        "custom_id": r["custom_id"],
                        "response": {
                            "status_code": 200,
                            "request_id": "r",
                            "body": r["completion"],
                        },
                        "error": None,
                    }
                )
            elif kind == "err" and r["kind"] == "error":
                code, body = r["code"], error_body(r["code"])
                if code == 402:  # how OpenAI answers a request of an account out of credit
                    code, body = 429, {"error": {"message": "You exceeded your current quota, "
                                       "please check your plan and billing details.",
                                       "type": "insufficient_quota", "param": None,
                                       "code": "insufficient_quota"}}  # fmt: skip
                lines.append(
                    {
                        "id": f"req-{r['custom_id']}",
                        "custom_id": r["custom_id"],
                        "response": {"status_code": code, "request_id": "r", "body": body},
                        "error": None,
                    }
                )
            elif kind == "err" and r["kind"] in ("expired", "cancelled"):
                code = "batch_expired" if r["kind"] == "expired" else "batch_cancelled"
                lines.append(
                    {
                        "id": f"req-{r['custom_id']}",
                        "custom_id": r["custom_id"],
                        "response": None,
                        "error": {
                            "code": code,
                            "message": f"This request could not be executed ({code}).",
                        },
                    }
                )
        return web.Response(body="".join(json.dumps(x) + "\n" for x in lines).encode())

    # -- Anthropic ------------------------------------------------------------------------------

    def _anthropic_batch(self, job: Job) -> dict:
        results = job.results
        counts = {
            "processing": len(job.requests) if results is None else 0,
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
        for r in results or []:
            counts[
                {
                    "ok": "succeeded",
                    "error": "errored",
                    "cancelled": "canceled",
                    "expired": "expired",
                }[r["kind"]]
            ] += 1
        ended = results is not None
        results_url = f"{self.root}/v1/messages/batches/{job.id}/results"
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.created))
        return {
            "id": job.id,
            "type": "message_batch",
            "processing_status": "ended"
            if ended
            else ("canceling" if job.cancelled else "in_progress"),
            "request_counts": counts,
            "created_at": iso,
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.created + 86400)),
            "ended_at": iso if ended else None,
            "archived_at": iso if job.archived else None,
            "cancel_initiated_at": iso if job.cancelled else None,
            "results_url": results_url if ended and not job.archived else None,
        }

    async def _a_create(self, request: web.Request) -> web.Response:
        """Anthropic checks a batch when it is made: a bad one is refused (HTTP 400)."""
        raw = await request.read()
        spec = json.loads(raw)
        requests = [(r["custom_id"], r["params"]) for r in spec["requests"]]
        errors = [e["message"] for e in self._line_errors(requests, [])]
        if len(requests) > ANTHROPIC_MAX_REQUESTS or len(raw) > ANTHROPIC_MAX_BYTES:
            errors.append(f"a batch takes at most {ANTHROPIC_MAX_REQUESTS} requests and "
                          f"{ANTHROPIC_MAX_BYTES} bytes")  # fmt: skip
        if errors:
            return web.json_response(
                {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "; ".join(errors[:3])},
                },
                status=400,
            )
        job = self._make("anthropic", requests, {})
        return web.json_response(self._anthropic_batch(job))

    async def _a_get(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return web.json_response(
                {"type": "error", "error": {"type": "not_found_error", "message": "no such batch"}},
                status=404,
            )
        self._read(job)
        return web.json_response(self._anthropic_batch(job))

    async def _a_results(self, request: web.Request) -> web.Response:
        job = self.jobs[request.match_info["id"]]
        if job.archived or job.results is None:
            return web.json_response(
                {
                    "type": "error",
                    "error": {"type": "not_found_error", "message": "no results for this batch"},
                },
                status=404,
            )
        lines = []
        for r in job.results or []:
            if r["kind"] == "ok":
                result = {"type": "succeeded", "message": as_message(r["completion"])}
            elif r["kind"] == "error":
                kind = {
                    400: "invalid_request_error",
                    401: "authentication_error",
                    402: "billing_error",
                    429: "rate_limit_error",
                }.get(r["code"], "api_error")
                result = {
                    "type": "errored",
                    "error": {
                        "type": "error",
                        "error": {"type": kind, "message": f"Scripted error {r['code']}."},
                    },
                }
            else:
                result = {"type": "canceled" if r["kind"] == "cancelled" else "expired"}
            lines.append({"custom_id": r["custom_id"], "result": result})
        return web.Response(body="".join(json.dumps(x) + "\n" for x in lines).encode())

    async def _a_message(self, request: web.Request) -> web.Response:
        """Anthropic's Messages API online (what litellm calls for anthropic/... models)."""
        body = await request.json()
        chat = anthropic_as_chat(body)
        index = self._arrive(request, body, json.dumps(body))
        reply = self._choose(chat, index) or ok()
        if reply.kind != "ok":
            return web.json_response(
                {
                    "type": "error",
                    "error": {"type": "api_error", "message": f"Scripted error {reply.code}."},
                },
                status=reply.code if reply.kind == "status" else 500,
            )
        c = self._bill(_completion(reply, chat, index))
        return web.json_response(as_message(c))

    def _app(self) -> web.Application:
        app = super()._app()
        r = app.router
        r.add_post("/v1/files", self._upload)
        r.add_get("/v1/files/{id}/content", self._content)
        r.add_post("/v1/batches", self._create)
        r.add_get("/v1/batches", self._list)
        r.add_get("/v1/batches/{id}", self._get)
        r.add_post("/v1/batches/{id}/cancel", self._cancel)
        r.add_post("/v1/messages", self._a_message)
        r.add_post("/v1/messages/batches", self._a_create)
        r.add_get("/v1/messages/batches", self._list)
        r.add_get("/v1/messages/batches/{id}", self._a_get)
        r.add_get("/v1/messages/batches/{id}/results", self._a_results)
        r.add_post("/v1/messages/batches/{id}/cancel", self._cancel)
        return app


# -- program mode: a fake provider for trying --batch by hand ------------------------------------


def demo_responder(body: dict, index: int) -> Any:
    """A plausible teacher and a blind verifier that follows a rationale naming the element, for
    any record file: the teacher names the acted-on element; the verifier clicks what the
    rationale names (or types what it says it searches for)."""
    import re

    text = next((m["content"] for m in body["messages"] if m["role"] == "user"), "")
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    if system.startswith("You predict the next action"):
        thought = text.split("## Their thought right before acting", 1)[-1]
        if m := re.search(r"search for '(.*)' in ([\w.]+)", thought):
            action = {"type": "type_and_submit", "name": m.group(2), "text": m.group(1)}
        elif names := re.findall(r"\b[a-z_]+\.[\w.]*\w", thought):
            action = {"type": "click", "name": names[0]}
        else:
            action = {"type": "terminate"}
        return ok(json.dumps({"action": action}))
    done = text.split("## What they did next", 1)[-1].strip().splitlines()[0]
    if m := re.match(r'type_and_submit\(([^,]+), "(.*)"\)', done):
        rationale = f"I want to search for '{m.group(2)}' in {m.group(1)} to find it."
    elif m := re.match(r"click\((.+)\)", done):
        rationale = f"I want to open {m.group(1)} because it looks like exactly what I need."
    else:
        rationale = "I have found what I was looking for, so I am done here."
    return ok(json.dumps({"rationale": rationale}))


def main(argv: list[str] | None = None) -> int:
    import argparse
    import asyncio
    import contextlib

    parser = argparse.ArgumentParser(description="A local fake of the provider batch APIs.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--plan", nargs="*", default=[], help="what the first jobs do: ok, "
                        "expire_half, fail")  # fmt: skip
    args = parser.parse_args(argv)
    server = BatchServer(responder=demo_responder, port=args.port)
    server.plan(*args.plan)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve_forever())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
