"""The retry layer and fault classification (a scripted in-process teacher), and the modules
of the teacher layer."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers import modules_loaded_by

from rationale.errors import FatalTeacherError, TeacherError, redact
from rationale.teacher import Completion, RetryPolicy, call_with_retries, classify

FAST = RetryPolicy(max_attempts=4, backoff=0.01, max_backoff=0.05)


class ScriptedTeacher:
    """Raises the scripted errors in order, then answers."""

    model_id = "scripted"

    def __init__(self, *faults: TeacherError) -> None:
        self.faults = list(faults)
        self.calls: list[float] = []

    def price(self, p: int, c: int) -> float:
        return 0.0

    async def attempt(self, messages, **kwargs) -> Completion:
        self.calls.append(time.monotonic())
        if self.faults:
            raise self.faults.pop(0)
        return Completion({"rationale": "I want it."}, 10, 5, 0.001)


def run(teacher: ScriptedTeacher, policy: RetryPolicy = FAST) -> Completion:
    return asyncio.run(
        call_with_retries(
            teacher,
            [{"role": "user", "content": "x"}],
            policy,
            assistant_prefix=None,
            temperature=0.0,
            max_tokens=10,
            seed=0,
        )
    )


@pytest.mark.parametrize(
    "category", ["rate_limit", "server", "timeout", "connection", "invalid_output"]
)
def test_one_transient_fault_costs_exactly_one_extra_call(category: str) -> None:
    teacher = ScriptedTeacher(TeacherError("boom", category=category))
    out = run(teacher)
    assert len(teacher.calls) == 2 and out.attempts == 2 and out.text == "I want it."


def test_retry_after_is_honoured() -> None:
    teacher = ScriptedTeacher(TeacherError("slow down", category="rate_limit", retry_after=0.4))
    run(teacher)
    assert teacher.calls[1] - teacher.calls[0] >= 0.4


def test_gives_up_after_max_attempts_and_counts_them() -> None:
    teacher = ScriptedTeacher(*[TeacherError("down", category="server") for _ in range(10)])
    with pytest.raises(TeacherError) as info:
        run(teacher)
    assert info.value.attempts == 4 and len(teacher.calls) == 4


@pytest.mark.parametrize("category", ["bad_request", "other"])
def test_non_retryable_faults_fail_at_once(category: str) -> None:
    teacher = ScriptedTeacher(TeacherError("no", category=category))
    with pytest.raises(TeacherError) as info:
        run(teacher)
    assert len(teacher.calls) == 1 and info.value.attempts == 1


def test_auth_is_fatal_and_not_retried() -> None:
    teacher = ScriptedTeacher(FatalTeacherError("bad key", category="auth"))
    with pytest.raises(FatalTeacherError):
        run(teacher)
    assert len(teacher.calls) == 1


def test_a_retry_after_beyond_the_cap_fails_the_record() -> None:
    teacher = ScriptedTeacher(TeacherError("later", category="rate_limit", retry_after=3600))
    with pytest.raises(TeacherError):
        run(teacher)
    assert len(teacher.calls) == 1


class _Status(Exception):
    def __init__(self, status_code: int, headers: dict | None = None) -> None:
        super().__init__(f"status {status_code}")
        self.status_code = status_code
        self.litellm_response_headers = headers or {}


@pytest.mark.parametrize(
    ("exc", "category", "fatal"),
    [
        (_Status(429, {"retry-after": "7"}), "rate_limit", False),
        (_Status(500), "server", False),
        (_Status(503), "server", False),
        (_Status(400), "bad_request", False),
        (_Status(401), "auth", True),
        (_Status(404), "not_found", True),
        (ValueError("nope"), "other", False),
        (asyncio.TimeoutError(), "timeout", False),
    ],
)
def test_classify(exc: Exception, category: str, fatal: bool) -> None:
    err = classify(exc)
    assert err.category == category
    assert isinstance(err, FatalTeacherError) is fatal
    if category == "rate_limit":
        assert err.retry_after == 7.0


def test_secrets_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-sentinel-1234567890")
    text = "Incorrect API key provided: sk-sentinel-1234567890. Authorization: Bearer abcdefghijkl"
    out = redact(text)
    assert "sk-sentinel-1234567890" not in out and "abcdefghijkl" not in out
    assert "sk-sentinel" not in str(TeacherError(text))


# -- the modules of the teacher layer ------------------------------------------------------------

# Each module, and the only rationale modules importing it may load: imports run one way,
# errors <- completion <- retry <- clients <- teacher, and nothing heavy (litellm, aiohttp) loads.
LAYERS = {
    "rationale.completion": set(),
    "rationale.pricing": set(),
    "rationale.retry": {"rationale.completion", "rationale.errors"},
    "rationale.litellm_teacher": {
        "rationale.completion",
        "rationale.errors",
        "rationale.pricing",
        "rationale.retry",
    },
    "rationale.fast_teacher": {
        "rationale.completion",
        "rationale.errors",
        "rationale.pricing",
        "rationale.retry",
    },
}


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_teacher_modules_import_one_way(module: str) -> None:
    loaded = modules_loaded_by(module, ("rationale.", "litellm", "aiohttp", "instructor"))
    assert loaded == LAYERS[module] | {module}


def test_rationale_teacher_keeps_the_names_callers_import() -> None:
    from rationale import completion, fast_teacher, litellm_teacher, retry, teacher

    assert teacher.Completion is completion.Completion and teacher.Teacher is completion.Teacher
    assert teacher.RetryPolicy is retry.RetryPolicy
    assert teacher.call_with_retries is retry.call_with_retries
    assert teacher.classify is retry.classify
    assert teacher.make_teacher("openai/m", api_base="http://h/v1").__class__ is (
        fast_teacher.OpenAICompatibleTeacher
    )
    assert teacher.make_teacher("openai/m", client="litellm").__class__ is (
        litellm_teacher.LiteLLMTeacher
    )


@pytest.mark.parametrize(
    ("api_base", "url"),
    [
        ("http://h:8000/v1", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/", "http://h:8000/v1/chat/completions"),
        ("http://h:8000", "http://h:8000/chat/completions"),
        (
            "http://u:p@h/v1?api-version=2024&key=k",
            "http://u:p@h/v1/chat/completions?api-version=2024&key=k",
        ),
    ],
)
def test_the_fast_client_puts_the_path_before_the_query(api_base: str, url: str) -> None:
    from rationale.fast_teacher import OpenAICompatibleTeacher

    assert OpenAICompatibleTeacher("openai/m", api_base=api_base).url == url


@pytest.mark.parametrize("client", ["fast", "litellm"])
@pytest.mark.parametrize("fault", ["not_json_content", "schema_violation"])
def test_a_billed_answer_that_does_not_validate_carries_its_usage(
    client: str, fault: str, openai_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai_server as scripted

    from rationale.completion import BilledUsage
    from rationale.pricing import model_price
    from rationale.teacher import make_teacher

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-usage")
    openai_server.script(getattr(scripted, fault)())
    teacher = make_teacher("openai/gpt-4o-mini", api_base=openai_server.url, client=client)

    async def go() -> TeacherError:
        try:
            await teacher.attempt(
                [{"role": "user", "content": "x"}],
                assistant_prefix=None, temperature=0.0, max_tokens=20, seed=0,
            )  # fmt: skip
        except TeacherError as exc:
            return exc
        finally:
            await teacher.aclose()
        raise AssertionError("the answer validated")

    error = asyncio.run(go())
    assert error.category == "invalid_output"
    usage = error.usage  # type: ignore[attr-defined]
    assert isinstance(usage, BilledUsage) and usage.prompt_tokens and usage.completion_tokens
    price_in, price_out = model_price("openai/gpt-4o-mini")  # type: ignore[misc]
    expected = usage.prompt_tokens * price_in + usage.completion_tokens * price_out
    assert usage.cost_usd == pytest.approx(expected)
