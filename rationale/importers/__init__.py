"""Importers that turn real human action logs into records (one module per source format).

`ImportConfig` is the import job (the ``[import]`` table of a workspace file, the flags of
``rationale import``); `run_import` reads the sources with the format's reader and writes the
record file atomically.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rationale.errors import SourceError

__all__ = ["ImportConfig", "ImportResult", "run_import"]


class ImportConfig(BaseModel):
    """Everything that decides an import."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["mind2web", "opera", "miniwob", "browser-log"] = "mind2web"
    source: list[str] = Field(description="Files or folders of the raw log.")
    output: str = Field(description="The record file (JSONL) to write.")
    first_existing: bool = Field(
        default=False,
        description="Read only the first source that exists (the full data, then a sample).",
    )
    add_terminate: bool = Field(
        default=False, description="mind2web: a terminate step per session."
    )
    domain: list[str] = Field(default_factory=list, description="mind2web: keep these domains.")
    max_sessions: int | None = Field(
        default=None, ge=1, description="mind2web: keep this many sessions, chosen by hash."
    )
    sessions: list[str] = Field(default_factory=list, description="opera: session rows.")
    users: list[str] = Field(default_factory=list, description="opera: user rows.")
    max_page_tokens: int | None = Field(
        default=None,
        ge=32,
        description="miniwob, browser-log: cut each page to this many tokens (None: whole).",
    )


@dataclass
class ImportResult:
    """What `run_import` wrote."""

    output: Path
    sources: list[str]
    steps: int
    sessions: int
    #: miniwob, browser-log: `rationale.importers.events.target_summary` of the import
    targets: dict[str, Any] | None = None
    #: miniwob, browser-log: the action-space file written beside the output
    action_space: Path | None = None


def chosen_sources(config: ImportConfig) -> list[str]:
    """The sources to read: all of them, or with ``first_existing`` the first that exists."""
    if not config.source:
        raise SourceError("import: no source to read (give one or more files or folders)")
    if config.first_existing:
        for source in config.source:
            if Path(source).exists():
                return [source]
        raise SourceError(f"import: none of the sources exists: {', '.join(config.source)}")
    missing = [s for s in config.source if not Path(s).exists()]
    if missing:
        raise SourceError(f"import: no such file or folder: {', '.join(missing)}")
    return list(config.source)


def run_import(config: ImportConfig) -> ImportResult:
    """Read the sources in the configured format and write them as one record file."""
    from rationale.records import write_records

    sources = chosen_sources(config)
    if config.format == "mind2web":
        from rationale.importers.mind2web import read_mind2web

        records = read_mind2web(
            sources,
            add_terminate=config.add_terminate,
            domains=config.domain,
            max_sessions=config.max_sessions,
        )
    elif config.format in ("miniwob", "browser-log"):
        return _import_events(config, sources)
    else:
        from rationale.importers.opera import read_opera

        if len(sources) != 1:
            raise SourceError("import opera: give one source (a file or a folder)")
        records = read_opera(sources[0], sessions=config.sessions, users=config.users)  # type: ignore[arg-type]
    first = next(iter(records), None)
    if first is None:  # checked before the output is replaced: a bad filter loses nothing
        raise SourceError(
            f"import: no step in {', '.join(sources)}" + _domain_hint(config, sources)
        )
    seen: set[str] = set()

    def counted():  # type: ignore[no-untyped-def]
        seen.add(first.session_id)
        yield first
        for record in records:
            seen.add(record.session_id)
            yield record

    steps = write_records(config.output, counted())
    return ImportResult(Path(config.output), sources, steps, len(seen))


def _import_events(config: ImportConfig, sources: list[str]) -> ImportResult:
    """MiniWoB demonstrations or a browser log: records of the event importers' action space,
    written with that space beside them and the summary of targets found in their pages."""
    from rationale.importers.events import target_summary, write_action_space
    from rationale.records import write_records

    tally: dict[str, int] = {}
    if config.format == "miniwob":
        from rationale.importers.miniwob import read_miniwob

        records = read_miniwob(sources, max_page_tokens=config.max_page_tokens, tally=tally)
    else:
        from rationale.importers.browser_log import read_browser_log

        if len(sources) != 1:
            raise SourceError("import browser-log: give one log file")
        records = read_browser_log(sources[0], max_page_tokens=config.max_page_tokens, tally=tally)
    first = next(iter(records), None)
    if first is None:  # checked before the output is replaced
        raise SourceError(f"import {config.format}: no action in {', '.join(sources)}")
    sessions: set[str] = set()

    def counted():  # type: ignore[no-untyped-def]
        for record in itertools.chain([first], records):
            sessions.add(record.session_id)
            yield record

    steps = write_records(config.output, counted())
    space = write_action_space(action_space_path(config.output))
    summary = target_summary(tally) | {
        k: v
        for k, v in tally.items()
        if k in ("clicks_on_no_element", "typing_without_text", "sessions_without_actions")
    }
    return ImportResult(Path(config.output), sources, steps, len(sessions), summary, space)


def action_space_path(output: str | Path) -> Path:
    """Where an event import writes its action space: ``OUT.jsonl`` -> ``OUT.actions.toml``."""
    output = Path(output)
    return output.with_name(output.stem + ".actions.toml")


def _domain_hint(config: ImportConfig, sources: list[str]) -> str:
    """Which domains the sources hold, when a --domain matched none of them."""
    if config.format != "mind2web" or not config.domain:
        return ""
    import difflib

    from rationale.importers.mind2web import read_domains

    found = read_domains(sources)
    hints = [m for d in config.domain for m in difflib.get_close_matches(d, found, n=1)]
    return f" of the domain {', '.join(config.domain)} (the domains there: {', '.join(found)}" + (
        f"; did you mean {', '.join(hints)}?)" if hints else ")"
    )
