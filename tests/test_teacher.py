"""The retry layer and fault classification, with a scripted in-process teacher."""

from __future__ import annotations

import asyncio
import time

import pytest

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
