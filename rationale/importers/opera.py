"""Import OPeRA action records (JSONL or parquet) into records.

OPeRA (Wang et al. 2025, NEU-HAI/OPeRA, CC-BY-4.0) ships one row per action with the string
fields listed in ../shared/PAPER.md, plus session rows (session_id, user_id, action_count) and
user rows (user_id, survey). The mapping:

- ``action_type`` click / input / terminate -> ``click`` / ``type_and_submit`` / ``terminate``;
  ``semantic_id`` is the target ``name``, ``input_text`` the typed ``text``.
- ``simplified_html`` -> ``context``, ``rationale`` -> ``rationale`` (empty strings -> null).
- steps are numbered from 0 within a session, ordered by ``timestamp`` (numbers, then ISO times,
  else text), then ``action_id``, then source order.
- ``user_id`` comes from the session rows, ``persona`` from that user's ``survey`` (parsed as JSON
  when it is JSON); every other field is kept unchanged in ``meta``.

The file is read twice (once for the ordering keys, once to convert), so it is never held in
memory; rows are written in source order and `rationale.records.RecordFile` groups
them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rationale.errors import SourceError
from rationale.importers.source_json import loads, parse_json
from rationale.schema import ActionRecord

ACTION_TYPES = {"click": "click", "input": "type_and_submit", "terminate": "terminate"}
_MAPPED = {"session_id", "action_type", "semantic_id", "input_text", "simplified_html", "rationale"}
_KEY_COLUMNS = ["session_id", "timestamp", "action_id"]


def _rows(path: Path, columns: list[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for each row of a JSONL or parquet file; ``where`` is "file line N"."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SourceError(
                f"{path}: reading parquet needs pyarrow: pip install 'rationale-distill[parquet]'"
            ) from None
        pf = pq.ParquetFile(path)
        present = set(pf.schema_arrow.names)
        cols = [c for c in columns if c in present] if columns else None
        n = 0
        for batch in pf.iter_batches(batch_size=256, columns=cols):
            for row in batch.to_pylist():
                n += 1
                yield f"{path} row {n}", row
        return
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = parse_json(line, f"{path} line {n}")
            if not isinstance(row, dict):
                raise SourceError(f"{path} line {n}: expected a JSON object")
            yield f"{path} line {n}", row


def _columns(path: Path) -> set[str]:
    for _, row in _rows(path):
        return set(row)
    return set()


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _time_key(value: Any) -> tuple[int, Any]:
    text = _text(value).strip()
    try:
        number = float(text)
        if math.isfinite(number):
            return (0, number)
    except ValueError:
        pass
    try:
        return (1, datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return (2, text)


def _id_key(value: Any) -> tuple[int, Any]:
    text = _text(value)
    return (0, int(text)) if text.isdigit() else (1, text)


def classify(folder: Path) -> dict[str, list[Path]]:
    """Sort a folder's .jsonl/.parquet files into actions, sessions and users by their columns."""
    kinds: dict[str, list[Path]] = {"actions": [], "sessions": [], "users": []}
    for path in sorted(folder.rglob("*")):
        if path.suffix not in (".jsonl", ".parquet") or not path.is_file():
            continue
        cols = _columns(path)
        if "action_type" in cols:
            kinds["actions"].append(path)
        elif "action_count" in cols or {"session_id", "user_id"} <= cols:
            kinds["sessions"].append(path)
        elif "survey" in cols:
            kinds["users"].append(path)
    if not kinds["actions"]:
        raise SourceError(f"{folder}: no .jsonl or .parquet file with an action_type column")
    return kinds


def _persona(survey: Any) -> Any:
    if isinstance(survey, str):
        try:
            parsed = loads(survey.encode("utf-8", errors="surrogatepass"))
            return parsed if isinstance(parsed, (dict, str)) else survey
        except ValueError:
            return survey or None
    return survey


def read_opera(
    src: str | Path,
    *,
    sessions: list[str | Path] | None = None,
    users: list[str | Path] | None = None,
) -> Iterator[ActionRecord]:
    """Records from OPeRA action files (a file, or a folder classified by `classify`)."""
    src = Path(src)
    if src.is_dir():
        kinds = classify(src)
        action_files = kinds["actions"]
        session_files = [Path(p) for p in sessions or []] or kinds["sessions"]
        user_files = [Path(p) for p in users or []] or kinds["users"]
    elif src.is_file():
        action_files = [src]
        session_files = [Path(p) for p in sessions or []]
        user_files = [Path(p) for p in users or []]
    else:
        raise SourceError(f"{src}: no such file or folder")

    user_of = {
        _text(r.get("session_id")): _text(r.get("user_id")) or None
        for f in session_files
        for _, r in _rows(f, ["session_id", "user_id"])
    }
    persona_of = {
        _text(r.get("user_id")): _persona(r.get("survey"))
        for f in user_files
        for _, r in _rows(f, ["user_id", "survey"])
    }

    # Pass 1: only the ordering keys, to number steps within each session.
    keys: list[tuple[str, tuple[Any, ...]]] = []
    for index, (where, row) in enumerate(r for f in action_files for r in _rows(f, _KEY_COLUMNS)):
        session_id = _text(row.get("session_id")).strip()
        if not session_id:
            raise SourceError(f"{where}: session_id is empty; every action row needs one")
        keys.append(
            (session_id, (_time_key(row.get("timestamp")), _id_key(row.get("action_id")), index))
        )
    step_of = _number_steps(keys)
    del keys

    # Pass 2: convert in source order.
    for index, (where, row) in enumerate(r for f in action_files for r in _rows(f)):
        yield _convert(row, step_of[index], where, user_of, persona_of)


def _number_steps(keys: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
    """Step numbers (from 0 within each session) for rows given as (session_id, sort key)."""
    step_of = [0] * len(keys)
    previous, step = None, 0
    for i in sorted(range(len(keys)), key=keys.__getitem__):
        step = step + 1 if keys[i][0] == previous else 0
        previous = keys[i][0]
        step_of[i] = step
    return step_of


def _convert(
    row: dict[str, Any], step: int, where: str, user_of: dict[str, Any], persona_of: dict[str, Any]
) -> ActionRecord:
    kind = _text(row.get("action_type")).strip().lower()
    if kind not in ACTION_TYPES:
        raise SourceError(
            f"{where}: action_type {row.get('action_type')!r} is not one of "
            f"{', '.join(ACTION_TYPES)}"
        )
    name = _text(row.get("semantic_id")).strip()
    action: dict[str, Any] = {"type": ACTION_TYPES[kind]}
    if kind in ("click", "input"):
        if not name:
            raise SourceError(f"{where}: semantic_id is empty; a {kind} action needs its target")
        action["name"] = name
    if kind == "input":
        action["text"] = _text(row.get("input_text"))
    session_id = _text(row.get("session_id")).strip()
    user_id = user_of.get(session_id)
    try:
        return ActionRecord(
            session_id=session_id,
            step=step,
            context=_text(row.get("simplified_html")) or None,
            action=action,
            user_id=user_id,
            persona=persona_of.get(user_id) if user_id else None,
            rationale=_text(row.get("rationale")).strip() or None,
            meta={k: v for k, v in row.items() if k not in _MAPPED},
        )
    except ValidationError as exc:
        raise SourceError(f"{where}: {exc.errors(include_url=False)[0]['msg']}") from None
