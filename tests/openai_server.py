"""A local HTTP server that speaks the OpenAI chat-completions API, for tests and benchmarks.

Every request gets a scripted ``Reply`` (a normal answer or an injected fault); without a script it
gets a deterministic default answer derived from the request, so a test can tell which answer
belongs to which request. The server listens on 127.0.0.1 only.

In a test (or with the ``openai_server`` fixture from conftest.py)::

    with ScriptedServer() as server:
        server.script(status(429, headers={"Retry-After": "2"}), ok())
        server.fault(lambda body: "poison" in last_user_text(body), drop(), times=None)
        ...  # point the client at server.url ("http://127.0.0.1:PORT/v1")
        assert server.count == 2

As a program (a subprocess for kill -9 tests and the throughput benchmark)::

    python tests/openai_server.py --port 0 --latency 0.2 [--fail-every N --fail-status 500]

prints exactly one line ``PORT <n>`` on stdout once it listens, then serves until killed.

Which reply a request gets, first match wins: a matching ``fault()``, the next ``script()``ed
reply, ``fail_every``, the ``responder`` option, the default answer.

Billing is a provider's: an answer is billed when it is complete, whether or not its client is
still connected (a client that hangs up, or is killed, mid-request is billed all the same); an
answer billed but never delivered is counted in ``billed["abandoned"]``. ``GET /_billed`` returns
``billed`` and ``count`` as JSON, for a test that runs the server as a program.

Only stdlib and aiohttp are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = [
    "Headers",
    "Reply",
    "ScriptedServer",
    "default_content",
    "default_rationale",
    "delay",
    "drop",
    "error_body",
    "garbage",
    "last_user_text",
    "not_json_content",
    "ok",
    "ref",
    "schema_violation",
    "status",
]

HOST = "127.0.0.1"
#: The port a server started with ``port=0`` tries first (tests/conftest.py sets one per test):
#: servers started one after another in a test serve one URL, as a real server restarted on its
#: address does, so a resume asks the same endpoint (an endpoint is part of a run's identity);
#: a server started while another holds it gets a free port, so two at once are two endpoints.
DEFAULT_PORT: int | None = None
MODEL_ID = "test-model"

# ---------------------------------------------------------------------------------------------
# Replies
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What the server does for one request. Build these with the factory functions below."""

    kind: str  # "ok" | "status" | "delay" | "garbage" | "drop"
    content: str | None = None  # ok: the message content (None: the default answer's)
    prompt_tokens: int | None = None  # ok: usage (None: len(text) // 4, at least 1)
    completion_tokens: int | None = None
    finish_reason: str = "stop"  # ok
    code: int = 200  # status
    body: dict | str | None = None  # status: the response body (None: an OpenAI error body)
    headers: dict | None = None  # status/ok: extra response headers
    seconds: float = 0.0  # delay
    then: Reply | None = None  # delay: the reply after sleeping (None: what it would have got)
    usage: bool = True  # ok: False bills the answer (see `billed`) but sends no usage block


def ok(
    content: str | None = None,
    *,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    finish_reason: str = "stop",
    headers: dict | None = None,
    usage: bool = True,
) -> Reply:
    """HTTP 200, a chat.completion with this message content (None: the default answer's).
    ``usage=False``: billed as usual, but the answer carries no usage block."""
    return Reply(
        "ok",
        content=content,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=finish_reason,
        headers=headers,
        usage=usage,
    )


def status(code: int, *, body: dict | str | None = None, headers: dict | None = None) -> Reply:
    """An HTTP error (or any status). Default body: OpenAI's ``{"error": {...}}`` shape."""
    return Reply("status", code=code, body=body, headers=headers)


def delay(seconds: float, then: Reply | None = None) -> Reply:
    """Sleep ``seconds``, then send ``then`` (None: the reply the request would have got)."""
    return Reply("delay", seconds=seconds, then=then)


def garbage() -> Reply:
    """HTTP 200 (content-type application/json) whose body is not valid JSON."""
    return Reply("garbage")


def drop() -> Reply:
    """Close the connection without sending any response."""
    return Reply("drop")


def schema_violation() -> Reply:
    """HTTP 200, a valid chat.completion whose content is JSON of the wrong shape."""
    return ok(json.dumps({"reason": 5}))


def not_json_content() -> Reply:
    """HTTP 200, a valid chat.completion whose content is prose, not JSON."""
    return ok("Sure! I picked it because it looked right to me.")


# ---------------------------------------------------------------------------------------------
# The default answer
# ---------------------------------------------------------------------------------------------


def _text(content: Any) -> str:
    """The text of a message's content (a string, or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in content
        )
    return str(content)


def last_user_text(body: dict) -> str:
    """The text of the last user message of a request body ("" if none)."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def ref(text: str) -> str:
    """The 8 hex characters that tie a default answer to its request."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def default_rationale(body: dict) -> str:
    """The sentence of the default answer for a request body."""
    return f"I pick this because it matches what I need (ref {ref(last_user_text(body))})."


def default_content(body: dict) -> str:
    """The default answer's message content: ``{"rationale": default_rationale(body)}``."""
    return json.dumps({"rationale": default_rationale(body)})


def _prompt_chars(body: dict) -> int:
    return sum(
        len(_text(m.get("content"))) for m in body.get("messages") or [] if isinstance(m, dict)
    )


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

Responder = Callable[[dict, int], "Reply | None"]
Predicate = Callable[[dict], bool]

# The default error bodies, shaped like OpenAI's own: (message, type, code). litellm classifies
# errors by the text of the body before it looks at the status (a 401 whose body says
# "invalid_request_error" without "Incorrect API key provided" becomes a BadRequestError, any
# body that says "rate limit" becomes a RateLimitError), so these messages are chosen with care.
_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Scripted error 400: the request is invalid.", "invalid_request_error", None),
    401: (
        "Incorrect API key provided: sk-***. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: ("Scripted error 403: not allowed.", "permission_error", None),
    404: (
        f"The model `{MODEL_ID}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: ("Scripted error 429: rate limit reached.", "requests", "rate_limit_exceeded"),
}


def error_body(code: int) -> dict:
    """The default body of ``status(code)``: ``{"error": {"message", "type", "param", "code"}}``."""
    message, kind, error_code = _ERRORS.get(
        code, (f"Scripted error {code}.", "server_error" if code >= 500 else "error", None)
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": error_code}}


class Headers(dict):
    """A plain dict of request headers, names lower-cased, looked up in any case."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name.lower() if isinstance(name, str) else name)

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


_GARBAGE = b'{"id": "chatcmpl-garbage", "object": "chat.completion", "choices": [ <<< not json'


class ScriptedServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 with scripted replies.

    ``start()`` runs it in a background thread with its own event loop (or use it as a context
    manager); ``serve_forever()`` runs it in the current event loop (the program mode).

    Options: ``latency`` (seconds added to every chat request; may be changed while running),
    ``responder`` (``callable(body, index) -> Reply | None``, None falling back to the default
    answer), ``fail_every``/``fail_status`` (every Nth chat request, N = 1, 2, ..., gets that HTTP
    status), ``record`` (False: keep no per-request records, only ``count``), ``port`` (0: a free
    one).

    Only chat-completion requests are recorded and counted; ``GET /v1/models`` is not.
    A record is a dict: ``index`` (0, 1, ... in arrival order), ``time`` (time.time() on
    arrival), ``body`` (the parsed JSON body; {} if it was not JSON), ``raw`` (the body text),
    ``headers`` (a ``Headers`` dict: names lower-cased, looked up in any case), ``path``.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        responder: Responder | None = None,
        fail_every: int | None = None,
        fail_status: int = 500,
        record: bool = True,
        port: int = 0,
    ) -> None:
        self.latency = latency
        self.responder = responder
        self.fail_every = fail_every
        self.fail_status = fail_status
        self.record = record
        self.port = port
        self._lock = threading.RLock()  # a predicate may read server.count
        self._queue: deque[Reply] = deque()
        self._faults: list[list[Any]] = []  # [predicate, reply, times left or None]
        self._records: list[dict] = []
        self._count = 0
        self._billed = [0, 0, 0]  # answers completed (delivered or not), prompt, completion tokens
        self._abandoned = 0  # billed answers whose client had gone
        self._working: set[asyncio.Task] = set()  # answers being worked out (shielded)
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- scripting ---------------------------------------------------------------------------

    def script(self, *replies: Reply) -> ScriptedServer:
        """The next chat requests get these replies, in order; then the default again."""
        with self._lock:
            self._queue.extend(replies)
        return self

    def fault(self, predicate: Predicate, reply: Reply, times: int | None = 1) -> ScriptedServer:
        """Requests whose body matches get ``reply``, ``times`` times (None: always).

        Checked before the script queue; faults are tried in the order they were added.
        """
        with self._lock:
            self._faults.append([predicate, reply, times])
        return self

    def reset(self) -> None:
        """Forget the records, the count, the script queue and the faults."""
        with self._lock:
            self._queue.clear()
            self._faults.clear()
            self._records.clear()
            self._count = 0
            self._billed = [0, 0, 0]
            self._abandoned = 0

    @property
    def requests(self) -> list[dict]:
        """A snapshot of the records of the chat requests so far."""
        with self._lock:
            return list(self._records)

    @property
    def count(self) -> int:
        """How many chat requests have arrived (including ones that got faults)."""
        with self._lock:
            return self._count

    @property
    def billed(self) -> dict[str, int]:
        """What the server billed: every answer it completed (valid or not, delivered or not),
        as a provider bills, and their tokens; ``abandoned``: how many of those answers were
        never delivered because the client had gone (hung up, timed out, killed)."""
        with self._lock:
            answers, prompt, completion = self._billed
            abandoned = self._abandoned
        return {
            "answers": answers,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "abandoned": abandoned,
        }

    @property
    def abandoned(self) -> int:
        """How many billed answers were never delivered (``billed["abandoned"]``)."""
        with self._lock:
            return self._abandoned

    def _abandon(self) -> None:
        with self._lock:
            self._abandoned += 1

    def _bill(self, completion: dict) -> dict:
        usage = completion["usage"]
        with self._lock:
            self._billed[0] += 1
            self._billed[1] += usage["prompt_tokens"]
            self._billed[2] += usage["completion_tokens"]
        return completion

    @property
    def pending(self) -> int:
        """How many scripted replies have not been used yet."""
        with self._lock:
            return len(self._queue)

    @property
    def url(self) -> str:
        """The base URL for an OpenAI client, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://{HOST}:{self.port}/v1"

    # -- choosing a reply --------------------------------------------------------------------

    def _choose(self, body: dict, index: int) -> Reply | None:
        with self._lock:
            for entry in self._faults:
                predicate, reply, times = entry
                if times is not None and times <= 0:
                    continue
                try:
                    matched = bool(predicate(body))
                except Exception:
                    matched = False
                if matched:
                    if times is not None:
                        entry[2] = times - 1
                    return reply
            if self._queue:
                return self._queue.popleft()
        if self.fail_every and (index + 1) % self.fail_every == 0:
            return status(self.fail_status)
        return self._respond(body, index)

    def _respond(self, body: dict, index: int) -> Reply | None:
        if self.responder is not None:
            return self.responder(body, index)
        return None  # the default answer

    # -- HTTP --------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.text()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                body = {}
        except ValueError:
            body = {}
        index = self._arrive(request, body, raw)
        reply = self._choose(body, index)  # on arrival: scripted replies go in arrival order
        # aiohttp cancels this handler when the client hangs up; the answer is worked out and
        # billed to the end all the same (shielded), as a provider bills a request whose client
        # went away, and counted abandoned.
        work = asyncio.ensure_future(self._work(reply, body, index))
        self._working.add(work)
        work.add_done_callback(self._working.discard)
        try:
            reply, answer = await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(self._abandon_if_billed)
            raise
        return await self._send(request, reply, body, index, answer)

    async def _work(self, reply: Reply | None, body: dict, index: int) -> tuple[Reply, dict | None]:
        """Sleep the latency and any delay; an ``ok`` answer is built and billed here, complete."""
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        while reply is not None and reply.kind == "delay":
            await asyncio.sleep(reply.seconds)
            if reply.then is not None:
                reply = reply.then
            else:  # what it would have got; a responder's own delay is not slept twice
                reply = self._respond(body, index)
                if reply is not None and reply.kind == "delay":
                    reply = reply.then
        if reply is None:
            reply = ok()
        if reply.kind != "ok":
            return reply, None
        return reply, self._bill(_completion(reply, body, index))

    def _abandon_if_billed(self, work: asyncio.Future) -> None:
        if not work.cancelled() and work.exception() is None and work.result()[1] is not None:
            self._abandon()

    async def _deliver(
        self, request: web.Request, response: web.StreamResponse, *chunks: bytes
    ) -> web.StreamResponse:
        """Write a billed answer; one whose client has gone is counted abandoned."""
        try:
            await response.prepare(request)
            for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:  # aiohttp then finds the transport closed and gives up quietly
            self._abandon()
        except asyncio.CancelledError:
            self._abandon()
            raise
        return response

    def _arrive(self, request: web.Request, body: dict, raw: str) -> int:
        """Count (and record) a request that arrived; returns its index."""
        with self._lock:
            index = self._count
            self._count += 1
            if self.record:
                self._records.append(
                    {
                        "index": index,
                        "time": time.time(),
                        "body": body,
                        "raw": raw,
                        "headers": Headers((k.lower(), v) for k, v in request.headers.items()),
                        "path": request.path,
                    }
                )
        return index

    async def _send(
        self, request: web.Request, reply: Reply, body: dict, index: int, answer: dict | None
    ) -> web.StreamResponse:
        if reply.kind == "ok":
            assert answer is not None  # built and billed by _work
            if body.get("stream"):
                return await self._stream(request, reply, body, answer)
            if not reply.usage:
                answer.pop("usage")
            return await self._deliver(request, web.json_response(answer, headers=reply.headers))
        if reply.kind == "status":
            if reply.body is None:
                return web.json_response(
                    error_body(reply.code), status=reply.code, headers=reply.headers
                )
            if isinstance(reply.body, str):
                return web.Response(text=reply.body, status=reply.code, headers=reply.headers)
            return web.json_response(reply.body, status=reply.code, headers=reply.headers)
        if reply.kind == "garbage":
            return web.Response(body=_GARBAGE, content_type="application/json")
        if reply.kind == "drop":
            if request.transport is not None:
                request.transport.close()
            # Nothing is written: aiohttp finds the transport closed and gives up quietly.
            return web.Response(status=500)
        raise ValueError(f"unknown reply kind {reply.kind!r}")

    async def _stream(
        self, request: web.Request, reply: Reply, body: dict, full: dict
    ) -> web.StreamResponse:
        """The same (billed) answer as server-sent events (when the request asks for ``stream``)."""
        choice = full["choices"][0]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        if reply.headers:
            response.headers.update(reply.headers)
        base = {k: full[k] for k in ("id", "created", "model")} | {
            "object": "chat.completion.chunk"
        }
        message = choice["message"]
        deltas: list[dict] = [{"role": "assistant", "content": ""}]
        if message.get("tool_calls"):
            deltas.append({"tool_calls": [dict(message["tool_calls"][0], index=0)]})
        else:
            deltas.append({"content": message["content"]})
        events = [
            dict(base, choices=[{"index": 0, "delta": d, "finish_reason": None}]) for d in deltas
        ]
        events.append(
            dict(
                base, choices=[{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]
            )
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(dict(base, choices=[], usage=full["usage"]))
        chunks = [b"data: " + json.dumps(event).encode() + b"\n\n" for event in events]
        return await self._deliver(request, response, *chunks, b"data: [DONE]\n\n")

    async def _billed_json(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.billed, count=self.count))

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "tests"}],
            }
        )

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/models", self._models)
        app.router.add_get("/_billed", self._billed_json)
        return app

    async def _astart(self) -> None:
        runner = web.AppRunner(
            self._app(),
            access_log=None,
            shutdown_timeout=0.25,  # don't wait for sleeping (delay) handlers on stop
            handler_cancellation=True,  # a client that hangs up cancels its handler
        )
        await runner.setup()
        ports = [DEFAULT_PORT, 0] if self.port == 0 and DEFAULT_PORT else [self.port]
        for i, port in enumerate(ports):
            site = web.TCPSite(runner, HOST, port, backlog=1024, reuse_address=True)
            try:
                await site.start()
                break
            except OSError:  # the test's port is held by a server still running
                if i == len(ports) - 1:
                    raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def _astop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for work in list(self._working):  # a server that stops finishes no more answers
            work.cancel()

    # -- running in a background thread ------------------------------------------------------

    def start(self) -> ScriptedServer:
        """Listen (on a free port if ``port`` is 0) in a background thread; returns self."""
        if self._thread is not None:
            return self
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._astart())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._astop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"openai-server-{id(self)}", daemon=True)
        self._thread.start()
        started.wait(30)
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        if not started.is_set():
            raise RuntimeError("the OpenAI test server did not start within 30 s")
        return self

    def stop(self) -> None:
        """Stop listening and close every connection (waits at most ~0.25 s for handlers)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- running in the current event loop (the program mode) --------------------------------

    async def serve_forever(self, announce: bool = True) -> None:
        """Listen in the running event loop; print ``PORT <n>`` (flushed) once listening."""
        await self._astart()
        if announce:
            sys.stdout.write(f"PORT {self.port}\n")
            sys.stdout.flush()
        try:
            await asyncio.Event().wait()
        finally:
            await self._astop()


def _completion(reply: Reply, body: dict, index: int) -> dict:
    content = reply.content if reply.content is not None else default_content(body)
    prompt_tokens = reply.prompt_tokens
    if prompt_tokens is None:
        prompt_tokens = max(1, _prompt_chars(body) // 4)
    completion_tokens = reply.completion_tokens
    if completion_tokens is None:
        completion_tokens = max(1, len(content) // 4)
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    finish_reason = reply.finish_reason
    tool = _requested_tool(body)
    if tool is not None:  # the client asked for a tool call (e.g. instructor's TOOLS mode)
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": f"call_{index}",
                "type": "function",
                "function": {"name": tool, "arguments": content},
            }
        ]
        if finish_reason == "stop":
            finish_reason = "tool_calls"
    return {
        "id": f"chatcmpl-{index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or MODEL_ID,
        "system_fingerprint": None,
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _requested_tool(body: dict) -> str | None:
    """The function the request wants called: its tool_choice's, else its only tool's."""
    tools = body.get("tools")
    if not tools:
        return None
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name:
            return name
    if choice == "none":
        return None
    if len(tools) == 1 or choice == "required":
        return (tools[0].get("function") or {}).get("name")
    return None


# ---------------------------------------------------------------------------------------------
# Program mode
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A local OpenAI chat-completions test server.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--fail-every", type=int, default=None, help="every Nth request fails")
    parser.add_argument("--fail-status", type=int, default=500, help="the status of failures")
    args = parser.parse_args(argv)
    server = ScriptedServer(
        latency=args.latency,
        fail_every=args.fail_every,
        fail_status=args.fail_status,
        record=False,  # a benchmark sends many requests: keep no records
        port=args.port,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve_forever())
    return 0


if __name__ == "__main__":
    sys.exit(main())
