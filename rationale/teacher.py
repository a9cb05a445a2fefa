"""Teachers: the models that write rationales, built from a ``--teacher`` string.

A teacher turns a rendered prompt into a `Completion` with one *attempt* (one request); the
retry layer (`call_with_retries` in `rationale.retry`) is the only place calls are retried.

Teachers (one module per client):
- `rationale.litellm_teacher.LiteLLMTeacher`: any litellm model string, structured output
  through instructor in JSON mode.
- `rationale.fast_teacher.OpenAICompatibleTeacher`: the fast path for an OpenAI-compatible
  ``--api-base`` (one aiohttp session, no litellm per-call overhead).
- `LocalTeacher` (here): a small local model in-process (``--teacher local``), plain text primed
  with the template's assistant prefix, no key and no network.

`make_teacher` picks one; `describe_error` is the stored form of a failure. The contract
(`Completion`, `Teacher`) and the retry layer are re-exported here for callers.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from rationale.completion import Completion, Teacher
from rationale.errors import ConfigError, FatalTeacherError, RationaleError, TeacherError, redact
from rationale.fast_teacher import OpenAICompatibleTeacher, fast_path_eligible
from rationale.litellm_teacher import LiteLLMTeacher
from rationale.retry import RetryPolicy, call_with_retries, classify

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "Completion",
    "LocalTeacher",
    "RetryPolicy",
    "Teacher",
    "call_with_retries",
    "classify",
    "describe_error",
    "make_teacher",
]


class LocalTeacher:
    """A small instruct model run in-process: plain text, primed with the assistant prefix.

    A 135M model does not follow JSON instructions, so it is not asked for JSON; its reply is
    the rationale. Calls run one at a time in a worker thread.
    """

    def __init__(self, model: str = "smollm2-135m") -> None:
        from rationale.local_teacher import LocalModel

        self._model = LocalModel(model)
        self.model_id = self._model.model_id

    def price(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """A local model costs nothing."""
        return 0.0

    async def aclose(self) -> None:
        """Nothing to release."""
        return None

    async def attempt(
        self,
        messages: list[dict[str, str]],
        *,
        assistant_prefix: str | None,
        temperature: float,
        max_tokens: int,
        seed: int,
        response_model: type[BaseModel] | None = None,
    ) -> Completion:
        """One generation; only plain-text rationales (``response_model`` with one field)."""
        if response_model is not None and set(response_model.model_fields) != {"rationale"}:
            raise FatalTeacherError(
                "the local model writes plain-text rationales only; it cannot verify or predict "
                "actions: use --verifier none or an API model",
                category="local_model",
            )
        cancelled = threading.Event()  # set when this call is cancelled: the thread stops too
        try:
            out = await asyncio.to_thread(
                self._model.generate,
                messages,
                prefix=assistant_prefix if assistant_prefix is not None else "I ",
                max_new_tokens=min(max_tokens, 120),
                temperature=temperature,
                seed=seed,
                cancelled=cancelled,
            )
        except asyncio.CancelledError:
            cancelled.set()
            raise
        except RationaleError as exc:
            # The model cannot be loaded (not installed, bad path): every record would fail.
            raise FatalTeacherError(str(exc), category="local_model") from None
        except Exception as exc:
            raise TeacherError(f"{type(exc).__name__}: {exc}", category="other") from None
        return Completion({"rationale": out.text}, out.prompt_tokens, out.completion_tokens, 0.0)


def make_teacher(
    name: str, *, api_base: str | None = None, timeout: float = 60.0, client: str = "auto"
) -> Teacher:
    """``local`` / ``local:<alias or path>``: a `LocalTeacher`. Otherwise a litellm model string:
    with ``client="auto"`` an OpenAI-compatible ``--api-base`` takes the fast path
    (`OpenAICompatibleTeacher`), everything else goes through litellm + instructor."""
    if name == "local" or name.startswith("local:"):
        return LocalTeacher(name.partition(":")[2] or "smollm2-135m")
    if not name.strip():
        raise ConfigError("--teacher is empty: give a litellm model string or 'local'")
    _check_api_base(api_base)
    eligible = fast_path_eligible(name, api_base)
    if client == "fast" and not eligible:
        raise ConfigError(
            f"--client fast needs an openai/... or hosted_vllm/... model and --api-base, "
            f"got {name!r}"
        )
    if client in ("auto", "fast") and eligible:
        return OpenAICompatibleTeacher(name, api_base=str(api_base), timeout=timeout)
    return LiteLLMTeacher(name, api_base=api_base, timeout=timeout)


def _check_api_base(api_base: str | None) -> None:
    """A malformed ``--api-base`` is a one-line error (its credentials redacted), not a
    traceback from deep inside an HTTP client."""
    if not api_base:
        return
    from urllib.parse import urlsplit

    try:
        url = urlsplit(api_base)
        url.port  # noqa: B018  (parses the port: "host:notaport" raises here)
    except ValueError as exc:
        raise ConfigError(f"--api-base {redact(api_base)!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(
            f"--api-base {redact(api_base)!r} is not an http(s) URL with a host, "
            "e.g. http://127.0.0.1:8000/v1"
        )


def describe_error(exc: TeacherError) -> dict[str, str]:
    """The stored form of a failure: class, category and the redacted message."""
    return {"type": type(exc).__name__, "category": exc.category, "message": redact(str(exc))}
