"""Secrets never reach a message: `rationale.errors.redact`, and both HTTP clients end to end.

A credential can sit in ``--api-base`` itself (``http://user:password@host/v1``, or a query
parameter such as ``?api_key=``); every error a client raises is a `TeacherError`, whose message
is redacted, and `describe_error` (what a rejected record stores) redacts again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from typing import Any

import pytest
from openai_server import ScriptedServer, status

from rationale.errors import ConfigError, TeacherError, redact
from rationale.teacher import describe_error, make_teacher

USER, PASSWORD, QUERY_KEY = "alice-sentinel", "pw-hunter2-sentinel", "qs-secret-9876"
SECRETS = (USER, PASSWORD, QUERY_KEY)
ENV_KEY = "sk-env-sentinel-1234567890"


# -- redact, unit by unit -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://user:password@host:8000/v1", "http://***@host:8000/v1"),
        ("https://token@api.example.com/v1/", "https://***@api.example.com/v1/"),
        ("http://u:p@ss:w0rd@10.0.0.1:80/v1 refused", "http://***@10.0.0.1:80/v1 refused"),
        ("http://host:8000/v1?api_key=secret", "http://host:8000/v1?api_key=***"),
        ("http://host/v1?x=1&key=secret#top", "http://host/v1?x=1&key=***#top"),
        ("http://host/v1?token=a&access_token=b", "http://host/v1?token=***&access_token=***"),
        (
            "https://acct.blob.core/c?sv=2022&sig=abc%2Fdef",
            "https://acct.blob.core/c?sv=2022&sig=***",
        ),
        (
            "https://h/v1?api-key=a&apiKey=b&password=c",
            "https://h/v1?api-key=***&apiKey=***&password=***",
        ),
        (
            "https://s3/o?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ff",
            "https://s3/o?X-Amz-Credential=***&X-Amz-Signature=***",
        ),
        (
            "POST http://me:pw@h:1/v1/chat/completions?api_key=k failed",
            "POST http://***@h:1/v1/chat/completions?api_key=*** failed",
        ),
        ("Bearer abcdefghijkl", "Bearer [redacted]"),
        ("Authorization: Basic YWxpY2U6cHc=", "Authorization: Basic [redacted]"),
        ('{"api_key": "sk-abcdefgh1234"}', '{"api_key": "[redacted]"}'),
    ],
)
def test_redact_hides_credentials(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:8000/v1",
        "https://api.openai.com/v1/chat/completions?api-version=2024-06-01&stream=true",
        "write to me@example.com, see http://example.com/a@b",
        "Basic authentication required",
        "HTTP 404: The model `test-model` does not exist (check the model name and --api-base)",
    ],
)
def test_redact_leaves_what_is_not_a_secret(text: str) -> None:
    assert redact(text) == text


def test_redact_keeps_json_valid() -> None:
    config = {"api_base": f"http://{USER}:{PASSWORD}@h:1/v1?api_key={QUERY_KEY}", "n": 1}
    out = json.loads(redact(json.dumps(config)))
    assert out == {"api_base": "http://***@h:1/v1?api_key=***", "n": 1}


def test_redact_hides_secret_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", ENV_KEY)
    monkeypatch.setenv("SOME_PASSWORD", "correct-horse-battery")
    out = redact(f"key {ENV_KEY} and correct-horse-battery, path /tmp/x")
    assert out == "key [redacted] and [redacted], path /tmp/x"


# -- the clients, end to end --------------------------------------------------------------------


def closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_credentials(url: str, *, query: bool = True) -> str:
    """``url`` with ``user:password@`` and, if ``query``, ``?api_key=...`` added."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{USER}:{PASSWORD}@{rest}" + (f"?api_key={QUERY_KEY}" if query else "")


def attempt(client: str, api_base: str) -> Any:
    """One attempt of a ``client`` teacher at ``api_base``: the Completion or the raised error."""
    teacher = make_teacher("openai/test-model", api_base=api_base, timeout=5, client=client)

    async def go() -> Any:
        try:
            return await teacher.attempt(
                [{"role": "user", "content": "Why click?"}],
                assistant_prefix=None,
                temperature=0.0,
                max_tokens=20,
                seed=0,
            )
        except Exception as exc:
            return exc
        finally:
            await teacher.aclose()

    return asyncio.run(go())


def assert_no_secret(error: Any) -> None:
    assert isinstance(error, TeacherError), repr(error)  # never a raw exception
    stored = json.dumps(describe_error(error))
    for text in (str(error), repr(error), *map(str, error.args), stored):
        for secret in SECRETS:
            assert secret not in text, text


@pytest.fixture(autouse=True)
def env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)  # litellm refuses an openai/ model without one


@pytest.mark.parametrize("client", ["fast", "litellm"])
def test_an_unreachable_endpoint_names_no_credential(client: str) -> None:
    error = attempt(client, with_credentials(f"http://127.0.0.1:{closed_port()}/v1"))
    assert_no_secret(error)
    assert error.category in ("connection", "server")


@pytest.mark.parametrize("client", ["fast", "litellm"])
@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:notaport/v1", "http://[::1/v1", "127.0.0.1:8000/v1"]
)
def test_an_unusable_url_is_a_redacted_config_error(client: str, url: str) -> None:
    """Refused when the teacher is built, before any request, with the credentials redacted
    (aiohttp and urlsplit name the whole URL in their own errors)."""
    bad = with_credentials(url) if "://" in url else url
    with pytest.raises(ConfigError, match="--api-base") as info:
        make_teacher("openai/test-model", api_base=bad, timeout=5, client=client)
    for secret in SECRETS:
        assert secret not in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("client", ["fast", "litellm"])
def test_an_error_that_echoes_the_url_is_redacted(
    client: str, openai_server: ScriptedServer
) -> None:
    echoed = with_credentials(openai_server.url)
    openai_server.script(status(401, body={"error": {"message": f"bad credentials for {echoed}"}}))
    # litellm appends its path to the whole URL, so it gets the credentials without the query;
    # the server's message still carries every secret.
    api_base = echoed if client == "fast" else with_credentials(openai_server.url, query=False)
    error = attempt(client, api_base)
    assert_no_secret(error)
    assert error.category == "auth" and "127.0.0.1" in str(error)  # the host stays visible


def test_litellm_with_a_key_in_the_query_names_no_credential(openai_server: ScriptedServer) -> None:
    assert_no_secret(attempt("litellm", openai_server.url + f"?api_key={QUERY_KEY}"))


@pytest.mark.parametrize("client", ["fast", "litellm"])
def test_both_clients_send_url_credentials_as_basic_auth(
    openai_server: ScriptedServer, client: str
) -> None:
    # litellm appends its path to the whole URL, so a query string there breaks the path
    completion = attempt(client, with_credentials(openai_server.url, query=client == "fast"))
    assert completion.text  # the query string no longer swallows the path
    (request,) = openai_server.requests
    assert request["path"] == "/v1/chat/completions"
    kind, token = request["headers"]["authorization"].split()
    assert kind == "Basic" and base64.b64decode(token).decode() == f"{USER}:{PASSWORD}"
    assert ENV_KEY not in json.dumps(dict(request["headers"]))  # not the env key as well
