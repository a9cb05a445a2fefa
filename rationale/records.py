"""Reading and writing record files (JSONL, one `ActionRecord` per line).

A file is never held in memory. `RecordFile` streams it once, validates every line, and writes an
index of (session_id, step) -> byte offset into a **sqlite side file** under
``$RATIONALE_HOME/index/``. Grouping a session then means one indexed query plus a few seeks, so
sessions can arrive interleaved and unsorted. The side file is keyed by the file's absolute path,
size, modification time and action space, so it is rebuilt when any of them changes and reused
otherwise. Its PRIMARY KEY (session_id, step) is also what finds a repeated step. Each line is
validated by `rationale.record_line.parse_record` (re-exported here).

Error handling (``on_error``):

- ``fail`` (default): the first bad line raises a `RecordError` naming file, line and field.
- ``skip``: every bad line is recorded in `RecordFile.errors`, and the *whole session* of each bad
  line is left out, so no kept step has a hole in its history. `RecordFile.skipped_sessions` lists
  them. A line so broken that its session_id cannot be read is dropped alone, and its error says so.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import sqlite3
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from rationale.errors import DuplicateStepError, RationaleError, RecordError
from rationale.paths import state_dir
from rationale.record_line import parse_record
from rationale.schema import ActionRecord, ActionSpace
from rationale.sessions import Step, iter_steps

OnError = Literal["fail", "skip"]
ON_ERROR_CHOICES: tuple[str, ...] = ("fail", "skip")

_INDEX_VERSION = 3  # bumped whenever what a valid line is changes, so old indexes are rebuilt


# -- a whole file ---------------------------------------------------------------------------------


class RecordFile:
    """A JSONL file of records, validated once and indexed by session in a sqlite side file.

    >>> records = RecordFile("input.jsonl", on_error="skip")
    >>> for step in records.steps():          # every kept step with its history
    ...     step.record, step.history
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        space: ActionSpace | None = None,
        on_error: OnError = "fail",
        shard: tuple[int, int] | None = None,
    ) -> None:
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.path = Path(path)
        self.name = os.fspath(path)  # as the user gave it: this is what error messages show
        self.space = space or ActionSpace.default()
        self.on_error = on_error
        self.shard = shard  # (K, N): only the sessions of shard K of N (rationale.shards)
        if not self.path.is_file():
            raise RationaleError(f"{self.name}: no such file")
        self._db = self._open_index()
        if on_error == "fail" and (first := self._first_error()) is not None:
            self._db.close()
            raise first

    # -- index ----------------------------------------------------------------------------------

    def _index_path(self) -> Path:
        """``<hash of the path>-<hash of size, mtime, action space>.sqlite``."""
        st = self.path.stat()
        version = json.dumps(
            [_INDEX_VERSION, st.st_size, st.st_mtime_ns, self.space.declaration()], sort_keys=True
        )
        folder = state_dir() / "index"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{_digest(str(self.path.resolve()))}-{_digest(version)}.sqlite"

    def _open_index(self) -> sqlite3.Connection:
        index = self._index_path()
        if not index.exists():
            tmp = index.with_suffix(f".{os.getpid()}.tmp")
            try:
                self._build_index(tmp)
                os.replace(tmp, index)  # only a complete index is ever reused
            finally:
                tmp.unlink(missing_ok=True)
            # Indexes of earlier versions of this file are stale: remove them.
            path_key = index.name.split("-")[0]
            for stale in index.parent.glob(f"{path_key}-*.sqlite"):
                if stale != index:
                    stale.unlink(missing_ok=True)
        return sqlite3.connect(f"file:{index}?mode=ro", uri=True)

    def _build_index(self, target: Path) -> None:
        target.unlink(missing_ok=True)
        db = sqlite3.connect(target)
        db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            CREATE TABLE steps (
                session_id TEXT NOT NULL, step INTEGER NOT NULL, line INTEGER NOT NULL,
                offset INTEGER NOT NULL, length INTEGER NOT NULL, action_type TEXT NOT NULL,
                context_chars INTEGER, outcome TEXT, target_in_page INTEGER,
                PRIMARY KEY (session_id, step)) WITHOUT ROWID;
            CREATE TABLE errors (line INTEGER NOT NULL, session_id TEXT, error TEXT NOT NULL);
            CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT);
            """
        )
        lines = 0
        with open(self.path, "rb") as f:
            offset = 0
            for lines, raw in enumerate(f, start=1):
                start, offset = offset, offset + len(raw)
                stripped = raw.strip()
                if not stripped:
                    continue  # blank lines are allowed and ignored
                try:
                    record = parse_record(stripped, path=self.name, line=lines, space=self.space)
                    try:
                        db.execute(
                            "INSERT INTO steps VALUES (?,?,?,?,?,?,?,?,?)",
                            (
                                record.session_id,
                                record.step,
                                lines,
                                start,
                                len(raw),
                                record.action.type,
                                None if record.context is None else len(record.context),
                                self.space.outcome(record.action),
                                target_in_page(record, self.space),
                            ),
                        )
                    except sqlite3.IntegrityError:
                        (first_line,) = db.execute(
                            "SELECT line FROM steps WHERE session_id=? AND step=?",
                            (record.session_id, record.step),
                        ).fetchone()
                        raise DuplicateStepError(
                            self.name,
                            lines,
                            session_id=record.session_id,
                            step=record.step,
                            first_line=first_line,
                        ) from None
                except RecordError as err:
                    if self.on_error == "fail":
                        db.close()
                        raise
                    db.execute(
                        "INSERT INTO errors VALUES (?,?,?)",
                        (lines, err.session_id, json.dumps(_error_to_json(err))),
                    )
        db.execute("INSERT INTO info VALUES ('lines', ?)", (str(lines),))
        db.commit()
        db.close()

    def _first_error(self) -> RecordError | None:
        row = self._db.execute("SELECT error FROM errors ORDER BY line LIMIT 1").fetchone()
        return _error_from_json(row[0], self.name) if row else None

    # -- what was found -------------------------------------------------------------------------

    @property
    def errors(self) -> list[RecordError]:
        """Every bad line, in line order (empty unless ``on_error="skip"``)."""
        rows = self._db.execute("SELECT error FROM errors ORDER BY line")
        return [_error_from_json(e, self.name) for (e,) in rows]

    @property
    def skipped_sessions(self) -> dict[str, list[int]]:
        """Sessions left out because of a bad line: session_id -> every line of it left out."""
        rows = self._db.execute(
            """
            SELECT session_id, line FROM errors WHERE session_id IS NOT NULL
            UNION SELECT session_id, line FROM steps
              WHERE session_id IN (SELECT session_id FROM errors)
            ORDER BY 1, 2
            """
        )
        out: dict[str, list[int]] = {}
        for session_id, line in rows:
            out.setdefault(session_id, []).append(line)
        return out

    def skip_report(self) -> list[str]:
        """What ``--on-error skip`` left out, as the lines every command shows on stderr:
        each bad line, each session left out with its lines, and a total (empty if none)."""
        errors = self.errors
        if not errors:
            return []
        skipped = self.skipped_sessions
        alone = sum(1 for e in errors if e.session_id is None)
        return [
            *(f"skipped: {err}" for err in errors),
            *(
                f"skipped session {sid!r}: lines {', '.join(map(str, lines))}"
                for sid, lines in skipped.items()
            ),
            f"{self.name}: {len(errors)} bad lines; left out {len(skipped)} sessions"
            + (f" and {alone} lines whose session could not be read" if alone else ""),
        ]

    _KEPT = "session_id NOT IN (SELECT session_id FROM errors WHERE session_id IS NOT NULL)"

    def session_ids(self) -> list[str]:
        """Kept sessions (of the shard, if one is set) in order of their first line."""
        rows = self._db.execute(
            f"SELECT session_id FROM steps WHERE {self._KEPT} "
            "GROUP BY session_id ORDER BY MIN(line)"
        )
        if self.shard is None:
            return [s for (s,) in rows]
        from rationale.shards import shard_of

        k, n = self.shard
        return [s for (s,) in rows if shard_of(s, n) == k]

    def step_keys(self) -> Iterator[tuple[str, int]]:
        """(session_id, step) of every kept step, in the order of `steps` (no record is read)."""
        for session_id in self.session_ids():
            rows = self._db.execute(
                "SELECT step FROM steps WHERE session_id=? ORDER BY step", (session_id,)
            )
            for (step,) in rows.fetchall():
                yield session_id, step

    def session(self, session_id: str) -> list[ActionRecord]:
        """One session's records, sorted by step."""
        rows = self._db.execute(
            "SELECT line, offset, length FROM steps WHERE session_id=? ORDER BY step",
            (session_id,),
        ).fetchall()
        out = []
        with open(self.path, "rb") as f:
            for line, offset, length in rows:
                f.seek(offset)
                out.append(
                    parse_record(
                        f.read(length).strip(), path=self.name, line=line, space=self.space
                    )
                )
        return out

    def sessions(self) -> Iterator[list[ActionRecord]]:
        """Every kept session, each sorted by step."""
        for session_id in self.session_ids():
            yield self.session(session_id)

    def steps(self, *, with_rationales: bool = False) -> Iterator[Step]:
        """Every kept step with its history (`rationale.sessions.build_history`)."""
        for session in self.sessions():
            yield from iter_steps(session, with_rationales=with_rationales)

    def stats(self) -> dict[str, Any]:
        """Counts over the kept steps, for `rationale validate`."""
        kept = self._KEPT
        q = self._db.execute
        sessions, steps = q(
            f"SELECT COUNT(DISTINCT session_id), COUNT(*) FROM steps WHERE {kept}"
        ).fetchone()
        action_types = dict(
            q(
                f"SELECT action_type, COUNT(*) FROM steps WHERE {kept} "
                "GROUP BY action_type ORDER BY COUNT(*) DESC, action_type"
            ).fetchall()
        )
        lengths = array(
            "q",
            (
                n
                for (n,) in q(
                    f"SELECT context_chars FROM steps WHERE {kept} AND context_chars "
                    "IS NOT NULL ORDER BY context_chars"
                )
            ),
        )
        outcomes = {"purchase": 0, "terminate": 0, "none": 0}
        for (outcome,) in q(
            f"""SELECT s.outcome FROM steps s JOIN
                  (SELECT session_id, MAX(step) AS last FROM steps WHERE {kept}
                   GROUP BY session_id) m
                ON s.session_id = m.session_id AND s.step = m.last"""
        ):
            outcomes[outcome or "none"] += 1
        checked, in_page = q(
            f"SELECT COUNT(target_in_page), COALESCE(SUM(target_in_page), 0) FROM steps "
            f"WHERE {kept}"
        ).fetchone()
        (lines,) = q("SELECT value FROM info WHERE key='lines'").fetchone()
        return {
            "file": self.name,
            "lines": int(lines),
            "sessions": sessions,
            "steps": steps,
            "action_types": action_types,
            "outcomes": outcomes,
            "context_chars": _percentiles(lengths, steps),
            "target_in_page": {
                "checked": checked,
                "in_page": in_page,
                "share": round(in_page / checked, 4) if checked else None,
            },
        }

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RecordFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def target_in_page(record: ActionRecord, space: ActionSpace) -> bool | None:
    """Whether the action's target (its ``name`` field) is in the step's page, as
    ``name="..."`` in ``context``; None without a page or a target (a terminate)."""
    spec = space.types.get(record.action.type)
    fields = [f for f, kind in spec.fields.items() if kind == "name"] if spec else []
    if record.context is None or not fields:
        return None
    value = str(getattr(record.action, fields[0]))
    return any(
        f"name={q}{v}{q}" in record.context for v in {value, html.escape(value)} for q in "\"'"
    )


def _percentiles(sorted_values: array, steps: int) -> dict[str, Any]:
    """Nearest-rank percentiles of context length in characters; nulls counted apart."""
    n = len(sorted_values)
    out: dict[str, Any] = {"with_context": n, "null": steps - n}
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        out[name] = sorted_values[max(0, -(-q * n // 100) - 1)] if n else None
    out["max"] = sorted_values[-1] if n else None
    return out


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _error_to_json(err: RecordError) -> dict[str, Any]:
    data = err.to_dict()
    if isinstance(err, DuplicateStepError):
        data |= {"duplicate": True, "step": err.step, "first_line": err.first_line}
    return data


def _error_from_json(text: str, name: str) -> RecordError:
    """Rebuild a stored error; ``name`` is the file as this caller named it."""
    d = json.loads(text)
    if d.get("duplicate"):
        return DuplicateStepError(
            name, d["line"], session_id=d["session_id"], step=d["step"], first_line=d["first_line"]
        )
    return RecordError(name, d["line"], d["message"], field=d["field"], session_id=d["session_id"])


# -- writing --------------------------------------------------------------------------------------


def write_records(path: str | os.PathLike[str], records: Iterable[ActionRecord]) -> int:
    """Write records as JSONL, atomically: a crash leaves the old file or none, never half."""
    import jsonlines

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            writer = jsonlines.Writer(f, compact=True, dumps=_dumps)
            for record in records:
                writer.write(record.dump())
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
