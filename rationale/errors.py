"""The package's exceptions.

Every error the tool raises on purpose derives from one base class, so a caller (and the CLI
boundary, which turns them into exit code 1 without a traceback) can catch them all:

    RationaleError
     ├── RecordError          a bad input line: carries path, line, field
     │    └── DuplicateStepError   a repeated (session_id, step)
     ├── ConfigError          a bad config, template or action-space file
     ├── SourceError          an importer's source cannot be read as that format
     └── TeacherError         a model call failed (carries its category and attempts)
          └── FatalTeacherError    a fault no retry can fix (authentication, unknown model)

Messages say what went wrong, where, and how to fix it, and never contain secrets.
"""

from __future__ import annotations

import os
import re


class RationaleError(Exception):
    """Base class of every error raised on purpose by `rationale` and `distill`."""


class ConfigError(RationaleError):
    """A configuration or action-space file is invalid."""


class SourceError(RationaleError):
    """An importer's source file is missing or not in the expected format."""


class RecordError(RationaleError):
    """One input line is not a valid record.

    `str(err)` reads like ``input.jsonl line 14: action.type 'clik' is not one of click,
    type_and_submit, terminate``.
    """

    def __init__(
        self,
        path: str,
        line: int,
        message: str,
        *,
        field: str | None = None,
        session_id: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        self.session_id = session_id
        super().__init__(f"{path} line {line}: {message}")

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "field": self.field,
            "session_id": self.session_id,
            "message": self.message,
        }


class DuplicateStepError(RecordError):
    """A (session_id, step) pair appears on two lines."""

    def __init__(self, path: str, line: int, *, session_id: str, step: int, first_line: int):
        self.step = step
        self.first_line = first_line
        super().__init__(
            path,
            line,
            f"session {session_id!r} step {step} repeats line {first_line}; "
            "each (session_id, step) must appear once: renumber or remove one of them",
            field="step",
            session_id=session_id,
        )


class TeacherError(RationaleError):
    """A model call failed; `category` says how (rate_limit, server, timeout, connection,
    invalid_output, bad_request, auth, not_found, other)."""

    def __init__(
        self,
        message: str,
        *,
        category: str = "other",
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        self.category = category
        self.retry_after = retry_after
        self.attempts = attempts
        super().__init__(redact(message))


class FatalTeacherError(TeacherError):
    """A fault every later request would hit too: the run stops instead of failing each record."""


_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)S?$|^AWS_SESSION", re.IGNORECASE)
_BEARER = re.compile(
    r"(Bearer\s+|Authorization[\"']?\s*[:=]\s*[\"']?Basic\s+|api[_-]?key[\"']?\s*[:=]\s*[\"']?)"
    r"([A-Za-z0-9._\-+/=]{8,})",
    re.IGNORECASE,
)
# The userinfo of a URL (``scheme://user:password@host``): everything between ``//`` and the
# last ``@`` before the path, query or fragment. Quotes end it too, so JSON stays valid.
_URL_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s?#\"'<>]*@")
# A query parameter that carries a credential: ``?api_key=``, ``&key=``, ``?token=``,
# ``?access_token=``, ``?sig=`` (Azure SAS), ``X-Amz-Signature=``, ``?password=``...
_SECRET_PARAM = re.compile(
    r"([?&;](?:[\w.\-]*(?:key|token|secret|passw(?:or)?d|pwd|auth|credential|signature)"
    r"[\w.\-]*|sig)=)[^&#\s\"'<>]+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with every secret-looking environment value, bearer token and URL credential
    replaced.

    Applied to every error message the tool stores or prints, and to the config saved in
    ``run.json``, so API keys never reach a log, an output file or an exception message. A URL
    keeps its scheme, host, port and path: ``http://user:pw@host:8000/v1?api_key=k`` becomes
    ``http://***@host:8000/v1?api_key=***``.
    """
    for name, value in os.environ.items():
        if len(value) >= 8 and _SECRET_NAME.search(name) and value in text:
            text = text.replace(value, "[redacted]")
    text = _URL_USERINFO.sub(r"\1***@", text)
    text = _SECRET_PARAM.sub(r"\1***", text)
    return _BEARER.sub(lambda m: m.group(1) + "[redacted]", text)
