"""The local OpenAI test server (tests/openai_server.py), checked with the real clients.

These tests also document how litellm 1.106.12, instructor (JSON mode, over litellm) and a raw
aiohttp client see each fault, and how many HTTP requests each one makes: the synthesis engine's
retry layer relies on exactly this.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported

import asyncio
import importlib.util
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import instructor
import litellm
import pydantic
import pytest
from instructor.core import InstructorRetryException
from openai_server import (
    ScriptedServer,
    default_content,
    default_rationale,
    delay,
    drop,
    error_body,
    garbage,
    last_user_text,
    not_json_content,
    ok,
    ref,
    schema_violation,
    status,
)

litellm.suppress_debug_info = True  # otherwise litellm prints a banner to stdout on each error

KEY = "sk-test-sentinel"
MODEL = "openai/test-model"
MESSAGES = [
    {"role": "system", "content": "You explain why people act."},
    {"role": "user", "content": "Why did the user click 'Search'?"},
]
SERVER_SCRIPT = Path(__file__).resolve().parent / "openai_server.py"
exc = litellm.exceptions


class Rationale(pydantic.BaseModel):
    rationale: str


def run(coro):
    return asyncio.run(coro)


async def chat(server: ScriptedServer, **kwargs):
    params = {
        "model": MODEL,
        "api_base": server.url,
        "api_key": KEY,
        "messages": MESSAGES,
        "num_retries": 0,
        "timeout": 5,
    }
    params.update(kwargs)
    return await litellm.acompletion(**params)


async def structured(server: ScriptedServer, **kwargs):
    client = instructor.from_litellm(litellm.acompletion, mode=instructor.Mode.JSON)
    params = {
        "model": MODEL,
        "api_base": server.url,
        "api_key": KEY,
        "messages": MESSAGES,
        "response_model": Rationale,
        "max_retries": 0,
        "num_retries": 0,
        "timeout": 5,
    }
    params.update(kwargs)
    return await client.chat.completions.create_with_completion(**params)


async def capture(coro) -> BaseException:
    try:
        await coro
    except Exception as error:
        return error
    raise AssertionError("no exception was raised")


# Each fault, the exact class litellm raises for it (num_retries=0), and its status_code.
# garbage and drop are NOT APIConnectionError / APIError: litellm reports both as a 500.
FAULTS = {
    "429": (lambda: status(429, headers={"Retry-After": "2"}), exc.RateLimitError, 429),
    "500": (lambda: status(500), exc.InternalServerError, 500),
    "502": (lambda: status(502), exc.BadGatewayError, 502),
    "503": (lambda: status(503), exc.ServiceUnavailableError, 503),
    "400": (lambda: status(400), exc.BadRequestError, 400),
    "401": (lambda: status(401), exc.AuthenticationError, 401),
    "404": (lambda: status(404), exc.NotFoundError, 404),
    "timeout": (lambda: delay(5), exc.Timeout, 408),
    "garbage": (garbage, exc.InternalServerError, 500),
    "drop": (drop, exc.InternalServerError, 500),
}


# -- the default answer, through litellm --------------------------------------------------------


def test_litellm_gets_the_default_answer_and_usage(openai_server: ScriptedServer) -> None:
    response = run(chat(openai_server))

    content = response.choices[0].message.content
    assert content == default_content({"messages": MESSAGES})
    assert json.loads(content)["rationale"].endswith(f"(ref {ref(MESSAGES[-1]['content'])}).")
    prompt_chars = sum(len(m["content"]) for m in MESSAGES)
    assert response.usage.prompt_tokens == prompt_chars // 4
    assert response.usage.completion_tokens == len(content) // 4
    assert response.usage.total_tokens == prompt_chars // 4 + len(content) // 4
    assert response.choices[0].finish_reason == "stop"

    assert openai_server.count == 1
    (request,) = openai_server.requests
    assert request["index"] == 0
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "test-model"  # litellm strips the "openai/" prefix
    assert request["body"]["messages"] == MESSAGES
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"  # looked up in any case
    assert request["headers"].get("authorization") == f"Bearer {KEY}"
    assert "authorization" in request["headers"] and "AUTHORIZATION" in request["headers"]
    assert "authorization" in list(request["headers"])  # stored lower-cased
    assert KEY not in request["raw"]  # raw is the body text only


def test_scripted_content_and_usage(openai_server: ScriptedServer) -> None:
    openai_server.script(ok("hello", prompt_tokens=7, completion_tokens=3, finish_reason="length"))
    response = run(chat(openai_server))
    assert response.choices[0].message.content == "hello"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (7, 3)
    assert response.choices[0].finish_reason == "length"


def test_litellm_streaming_gets_the_same_answer(openai_server: ScriptedServer) -> None:
    async def go():
        stream = await chat(openai_server, stream=True, stream_options={"include_usage": True})
        parts, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            usage = getattr(chunk, "usage", None) or usage
        return "".join(parts), usage

    text, usage = run(go())
    assert text == default_content({"messages": MESSAGES})
    assert usage.completion_tokens == len(text) // 4


def test_concurrent_answers_belong_to_their_requests(openai_server: ScriptedServer) -> None:
    async def one(i: int):
        messages = [{"role": "user", "content": f"question {i}"}]
        response = await chat(openai_server, messages=messages)
        return i, response.choices[0].message.content

    async def go():
        return await asyncio.gather(*(one(i) for i in range(24)))

    for i, content in run(go()):
        assert json.loads(content)["rationale"].endswith(f"(ref {ref(f'question {i}')}).")
    assert openai_server.count == 24
    assert sorted(r["index"] for r in openai_server.requests) == list(range(24))


# -- faults through litellm ---------------------------------------------------------------------


@pytest.mark.parametrize("fault", list(FAULTS))
def test_litellm_exception_per_fault(
    openai_server: ScriptedServer, fault: str, capfd: pytest.CaptureFixture[str]
) -> None:
    make, cls, code = FAULTS[fault]
    openai_server.script(make())
    started = time.monotonic()
    error = run(capture(chat(openai_server, timeout=0.5)))

    assert type(error) is cls, repr(error)
    assert error.status_code == code
    assert openai_server.count == 1  # num_retries=0: no retry anywhere (litellm nor openai SDK)
    assert time.monotonic() - started < 3
    out, _ = capfd.readouterr()
    assert out == ""  # suppress_debug_info: nothing on stdout
    if fault == "429":
        # Retry-After is on litellm_response_headers (httpx.Headers, any case), not on
        # error.response (a synthetic httpx.Response with no headers) nor error.headers.
        assert error.litellm_response_headers["Retry-After"] == "2"
        assert error.litellm_response_headers["retry-after"] == "2"
        assert "retry-after" not in error.response.headers


def test_delay_then_a_fault(openai_server: ScriptedServer) -> None:
    openai_server.script(delay(0.1, then=status(503)))
    started = time.monotonic()
    error = run(capture(chat(openai_server)))
    assert type(error) is exc.ServiceUnavailableError
    assert time.monotonic() - started >= 0.1


def test_litellm_classifies_errors_by_body_text_before_status(
    openai_server: ScriptedServer,
) -> None:
    # A 401 whose body says "invalid_request_error" without "Incorrect API key provided" is a
    # BadRequestError (status_code still 401); any body that says "rate limit" is a
    # RateLimitError, whatever the status.
    bare_401 = {"error": {"message": "bad key", "type": "invalid_request_error", "code": None}}
    openai_server.script(
        status(401, body=bare_401),
        status(500, body={"error": {"message": "upstream rate limit hit", "type": "x"}}),
        status(500, body="<html>nginx</html>"),
        status(418),
    )
    error = run(capture(chat(openai_server)))
    assert (type(error), error.status_code) == (exc.BadRequestError, 401)
    error = run(capture(chat(openai_server)))
    assert (type(error), error.status_code) == (exc.RateLimitError, 429)
    error = run(capture(chat(openai_server)))
    assert (type(error), error.status_code) == (exc.InternalServerError, 500)
    error = run(capture(chat(openai_server)))
    assert (type(error), error.status_code) == (exc.APIError, 418)  # odd status: bare APIError
    assert openai_server.count == 4


def test_litellm_retries_by_itself_unless_num_retries_is_0(openai_server: ScriptedServer) -> None:
    # retry-after-ms keeps the openai SDK's own backoff short.
    fast = {"retry-after-ms": "5"}
    openai_server.fault(lambda body: True, status(500, headers=fast), times=None)
    params = {"model": MODEL, "api_base": openai_server.url, "api_key": KEY, "messages": MESSAGES}

    error = run(capture(litellm.acompletion(**params)))
    assert type(error) is exc.InternalServerError
    assert openai_server.count == 3  # no num_retries: the openai SDK retries twice

    openai_server.reset()
    openai_server.fault(lambda body: True, status(500, headers=fast), times=None)
    run(capture(litellm.acompletion(**params, num_retries=1)))
    assert openai_server.count == 3  # num_retries=N makes up to 2N+1 requests

    openai_server.reset()
    openai_server.fault(lambda body: True, status(400), times=None)
    run(capture(litellm.acompletion(**params, num_retries=1)))
    assert openai_server.count == 2  # ... and litellm's own retry retries a 400 too


# -- instructor (JSON mode) over litellm --------------------------------------------------------


def test_instructor_json_mode_parses_the_default_answer(openai_server: ScriptedServer) -> None:
    result, completion = run(structured(openai_server))
    assert isinstance(result, Rationale)
    assert result.rationale == default_rationale({"messages": MESSAGES})
    assert completion.usage.completion_tokens >= 1
    assert openai_server.count == 1
    body = openai_server.requests[0]["body"]
    assert body["response_format"] == {"type": "json_object"}
    assert "tools" not in body
    # instructor puts the JSON schema in the system message; the user message is untouched.
    assert last_user_text(body) == MESSAGES[-1]["content"]
    assert '"rationale"' in body["messages"][0]["content"]


@pytest.mark.parametrize("reply", [schema_violation, not_json_content])
def test_instructor_invalid_output_is_one_request(
    openai_server: ScriptedServer, reply, caplog: pytest.LogCaptureFixture
) -> None:
    # A LiteLLMTeacher built earlier in this process silenced the "instructor" logger.
    caplog.set_level(logging.ERROR, logger="instructor")
    openai_server.script(reply())
    error = run(capture(structured(openai_server)))
    assert type(error) is InstructorRetryException
    assert isinstance(error.__cause__, pydantic.ValidationError)
    assert error.n_attempts == 1
    assert openai_server.count == 1
    # instructor logs the failure at ERROR on "instructor.v2.retry" (stderr when logging is not
    # configured).
    assert any(r.name.startswith("instructor") and r.levelname == "ERROR" for r in caplog.records)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_instructor_wraps_http_faults(openai_server: ScriptedServer, fault: str) -> None:
    make, cls, code = FAULTS[fault]
    openai_server.script(make())
    error = run(capture(structured(openai_server, timeout=0.5)))
    assert type(error) is InstructorRetryException
    assert type(error.__cause__) is cls  # the litellm exception, unchanged
    assert error.__cause__.status_code == code
    assert error.n_attempts == 1
    assert openai_server.count == 1
    if fault == "429":
        assert error.__cause__.litellm_response_headers["retry-after"] == "2"


def test_litellm_tools_need_the_mcp_package(openai_server: ScriptedServer) -> None:
    # litellm 1.106.12 imports its MCP handler whenever `tools` is passed; without the `mcp`
    # package the call fails before any request (so instructor's TOOLS mode fails too).
    tools = [{"type": "function", "function": {"name": "Rationale", "parameters": {}}}]
    if importlib.util.find_spec("mcp") is None:
        error = run(capture(chat(openai_server, tools=tools)))
        assert type(error) is exc.APIConnectionError
        assert "mcp" in str(error)
        assert openai_server.count == 0
    # The server itself answers a tool request with a tool call (instructor's TOOLS mode).
    client = instructor.from_litellm(litellm.acompletion, mode=instructor.Mode.TOOLS)
    result, _ = run(
        client.chat.completions.create_with_completion(
            model=MODEL,
            api_base=openai_server.url,
            api_key=KEY,
            messages=MESSAGES,
            response_model=Rationale,
            max_retries=0,
            num_retries=0,
            _skip_mcp_handler=True,  # a private litellm kwarg that skips the MCP import
        )
    )
    assert result.rationale == default_rationale({"messages": MESSAGES})


# -- a raw aiohttp client (a fast path) ---------------------------------------------------------


def test_raw_aiohttp_client_sees_each_fault(openai_server: ScriptedServer) -> None:
    payload = {"model": "test-model", "messages": MESSAGES}
    url = f"{openai_server.url}/chat/completions"

    async def go():
        timeout = aiohttp.ClientTimeout(total=0.5)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def post():
                async with session.post(url, json=payload) as response:
                    return response.status, response.headers, await response.read()

            openai_server.script(
                ok(), status(429, headers={"Retry-After": "2"}), garbage(), drop(), delay(5)
            )
            code, _, body = await post()
            assert code == 200
            assert json.loads(body)["choices"][0]["message"]["content"] == default_content(payload)
            code, headers, body = await post()
            assert (code, headers["Retry-After"]) == (429, "2")
            assert json.loads(body) == error_body(429)
            code, _, body = await post()
            assert code == 200
            with pytest.raises(ValueError):
                json.loads(body)
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await post()
            with pytest.raises(asyncio.TimeoutError):
                await post()

    run(go())
    assert openai_server.count == 5


# -- the server's own features ------------------------------------------------------------------


def test_script_is_a_queue_and_faults_come_first() -> None:
    async def go(server: ScriptedServer, n: int):
        async with aiohttp.ClientSession() as session:
            out = []
            for i in range(n):
                body = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}
                async with session.post(f"{server.url}/chat/completions", json=body) as response:
                    out.append((response.status, await response.text()))
            return out

    with ScriptedServer() as server:
        server.script(status(500), ok("second"))
        server.fault(lambda body: last_user_text(body) == "q2", status(404), times=2)
        server.fault(lambda body: 1 / 0, status(400))  # a predicate that raises never matches
        assert server.pending == 2
        replies = run(go(server, 4))
        assert [code for code, _ in replies] == [500, 200, 404, 200]
        assert json.loads(replies[1][1])["choices"][0]["message"]["content"] == "second"
        assert "q3" not in replies[3][1]  # the default answer carries a hash, not the text
        assert ref("q3") in replies[3][1]
        assert server.pending == 0
        assert server.count == 4

        server.reset()
        assert (server.count, server.requests, server.pending) == (0, [], 0)


def test_responder_option_and_plain_path_and_models() -> None:
    def responder(body: dict, index: int):
        return ok(f"answer {index}") if index % 2 == 0 else None  # None: the default answer

    async def go(server: ScriptedServer):
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{server.port}"
            async with session.get(f"{base}/v1/models") as response:
                models = await response.json()
            contents = []
            for path in ("/chat/completions", "/v1/chat/completions"):
                async with session.post(base + path, json={"messages": []}) as response:
                    contents.append((await response.json())["choices"][0]["message"]["content"])
            return models, contents

    with ScriptedServer(responder=responder) as server:
        models, contents = run(go(server))
        assert models["data"][0]["id"] == "test-model"
        assert contents == ["answer 0", default_content({"messages": []})]
        assert [r["path"] for r in server.requests] == ["/chat/completions", "/v1/chat/completions"]
        assert server.count == 2  # GET /v1/models is not counted
    assert server.url.startswith("http://127.0.0.1:")


def test_latency_option(openai_server: ScriptedServer) -> None:
    openai_server.latency = 0.2
    started = time.monotonic()
    run(chat(openai_server))
    assert time.monotonic() - started >= 0.2


def test_stop_is_quick_even_with_a_sleeping_request() -> None:
    server = ScriptedServer().start()
    server.script(delay(30))

    async def go():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as session:
            with pytest.raises(asyncio.TimeoutError):
                await session.post(f"{server.url}/chat/completions", json={})

    run(go())
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    server.stop()  # idempotent


def test_program_mode_prints_its_port_and_dies_on_kill_9() -> None:
    process = subprocess.Popen(
        [
            *(sys.executable, str(SERVER_SCRIPT), "--port", "0", "--latency", "0.05"),
            *("--fail-every", "3", "--fail-status", "503"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("PORT ")
        port = int(line.split()[1])

        async def go():
            async with aiohttp.ClientSession() as session:
                codes = []
                for i in range(6):
                    body = {"messages": [{"role": "user", "content": f"q{i}"}]}
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    async with session.post(url, json=body) as response:
                        await response.read()
                        codes.append(response.status)
                async with session.get(f"http://127.0.0.1:{port}/_billed") as response:
                    return codes, await response.json()

        started = time.monotonic()
        codes, billed = run(go())
        assert codes == [200, 200, 503, 200, 200, 503]
        assert time.monotonic() - started >= 6 * 0.05
        # what the program billed, for a test that kills its client: the 4 answers, none lost
        assert (billed["count"], billed["answers"], billed["abandoned"]) == (6, 4, 0), billed
    finally:
        process.kill()
        rest, err = process.communicate(timeout=10)
    assert process.returncode == -9
    assert rest == ""  # exactly one line on stdout
    assert err == ""  # no per-request logging


def test_a_client_that_hangs_up_is_billed_and_counted_abandoned(
    openai_server: ScriptedServer,
) -> None:
    """A provider finishes (and bills) an answer whose client went away, as the real APIs do:
    the server bills it on completion and counts it abandoned; a delivered one is not."""
    openai_server.latency = 0.3

    async def go():
        url = f"{openai_server.url}/chat/completions"
        body = {"messages": MESSAGES}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.05)) as session:
            with pytest.raises(asyncio.TimeoutError):  # the client gives up and hangs up
                await session.post(url, json=body)
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
            assert response.status == 200
            await response.json()

    run(go())
    deadline = time.monotonic() + 5
    while openai_server.billed["answers"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    billed = openai_server.billed
    assert billed["answers"] == 2, billed  # the one nobody read is billed all the same
    assert billed["abandoned"] == 1 == openai_server.abandoned, billed
    openai_server.reset()
    assert openai_server.billed["abandoned"] == 0
