"""The package's exceptions.

Every error the tool raises on purpose derives from one base class, so a caller (and the CLI
boundary, which turns them into exit code 1 without a traceback) can catch them all:

    RationaleError
     ├── RecordError          a bad input line: carries path, line, field
     │    └── DuplicateStepError   a repeated (session_id, step)
     ├── ConfigError          a bad config or action-space file
     └── SourceError          an importer's source cannot be read as that format

Messages say what went wrong, where, and how to fix it, and never contain secrets.
"""

from __future__ import annotations


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
