"""The run folder of `rationale synth` and `rationale filter`, and the config that made it.

A run folder (``-o RUN_DIR``) holds:

- ``accepted.jsonl``, ``rejected.jsonl``, ``failed.jsonl``: one `SynthRecord` line per input
  record, in exactly one of the three files, appended and flushed as results arrive;
- ``run.json``: the resolved config (paths absolute, secrets redacted), the record file the run's
  history comes from, counts per state, tokens, cost, wall time, what was skipped, how it stopped;
- ``ledger.jsonl``: one line per request that was sent (tokens, cost), so the cumulative cost
  survives a killed process;
- ``.lock``: held (``flock``) by the one process writing the folder; the OS releases it when that
  process ends, however it ends.

Only the process holding the lock writes or repairs the folder. Everything else (report, distill,
export-sft, a dry run, another run's filter) reads it as it is: a torn last line is skipped, never
cut off.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rationale.errors import RationaleError, redact
from rationale.rules import RulesConfig
from rationale.schema import SynthRecord
from rationale.shards import normal_shard

STATES = ("accepted", "rejected", "failed")


class SynthConfig(BaseModel):
    """Everything that decides a synthesis (or filter) run; saved resolved in run.json."""

    model_config = ConfigDict(extra="forbid")

    input: str
    output: str
    teacher: str = "local"
    api_base: str | None = None
    client: Literal["auto", "litellm", "fast"] = "auto"
    concurrency: int = Field(16, ge=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    template: str | None = None
    max_context_tokens: int | None = Field(6000, ge=16)
    limit: int | None = Field(None, ge=1)
    seed: int = 0
    temperature: float = Field(0.0, ge=0.0)
    max_tokens: int = Field(200, ge=1)
    timeout: float = Field(60.0, gt=0)
    request_attempts: int = Field(6, ge=1)
    backoff: float = Field(1.0, ge=0)
    dry_run: bool = False
    max_cost: float | None = Field(None, ge=0)
    retry_failed: bool = False
    on_error: Literal["fail", "skip"] = "fail"
    history_rationales: bool = False
    action_space: str | None = None
    # the consistency filter
    verifier: str = "auto"  # auto: the teacher (none for a local teacher); none: off
    verifier_template: str | None = None
    verify_max_tokens: int = Field(150, ge=1)
    samples: int = Field(1, ge=1)
    keep: Literal["first", "all"] = "first"
    max_attempts: int = Field(1, ge=1)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    # provider batch APIs (rationale.batch_engine)
    batch: bool = False
    wait: bool = False
    poll_interval: float = Field(60.0, gt=0)
    # one shard of the sessions (rationale.shards): "K/N"
    shard: str | None = None
    _shard = field_validator("shard")(normal_shard)

    def resolved(self) -> dict[str, Any]:
        """The config as run.json stores it: file paths absolute (so the run can be read from
        any working directory), credentials redacted."""
        data = json.loads(redact(self.model_dump_json()))
        for name in ("input", "output", "action_space", "template", "verifier_template"):
            value = data.get(name)
            if value and (name in ("input", "output") or Path(value).exists()):
                data[name] = str(Path(value).resolve())
        return data  # type: ignore[no-any-return]


# -- reading ------------------------------------------------------------------------------------


def read_lines(file: Path, *, repair: bool = False) -> Iterator[tuple[int, str]]:
    """Complete lines of a JSONL file. A torn last line (no newline) is skipped, and with
    ``repair`` (only by the run's lock holder, before it writes) cut off the file.

    Lines end at ``\n`` only: U+2028, NEL and the like are text inside a JSON string (scraped
    pages hold them), not line ends. A line that is not UTF-8 comes back as text that is not
    JSON, so its reader reports that line as bad instead of the whole file failing.
    """
    if not file.exists():
        return
    with open(file, "rb+" if repair else "rb") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            if repair:
                f.truncate(data.rfind(b"\n") + 1)
            data = data[: data.rfind(b"\n") + 1]
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if raw.strip():
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield n, "<a line that is not UTF-8>"


def read_synth_records(
    file: str | Path,
    *,
    repair: bool = False,
    on_error: str = "fail",
    skipped: list[str] | None = None,
) -> Iterator[tuple[int, SynthRecord]]:
    """(line number, record) of a run's accepted/rejected/failed file (or any synth JSONL).

    A torn last line is skipped (cut off with ``repair``). Any other bad line is an error naming
    the file and line, or with ``on_error="skip"`` is left out and described in ``skipped``.
    """
    file = Path(file)
    for line_no, line in read_lines(file, repair=repair):
        try:
            yield line_no, SynthRecord.model_validate_json(line)
        except ValueError as exc:
            where = f"{file} line {line_no}: not a synthesis record (rationale synth output)"
            if on_error == "skip" and skipped is not None:
                first = str(exc).splitlines()[1:2] or [""]
                skipped.append(f"{where}: {first[0].strip()}")
                continue
            raise RationaleError(
                f"{where}; move that line out, use --on-error skip, or use a new -o"
            ) from None


def read_run_json(folder: str | Path) -> dict[str, Any] | None:
    """A run folder's run.json, or None when it has none. An unreadable one is an error: the
    checks that depend on it (same input, same teacher) must not be skipped silently."""
    path = Path(folder) / "run.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RationaleError(
            f"{path}: unreadable ({exc}); restore it, or move the folder aside and use a new -o"
        ) from None
    if not isinstance(data, dict):
        raise RationaleError(f"{path}: not a run.json object; use a new -o")
    return data


def run_records_file(folder: str | Path) -> Path:
    """The record file (input JSONL) a run folder's steps and histories come from.

    A synth run names its input; a filter run names the input of the run it judged (or a copy of
    its records), so ``synth -> filter -> distill`` reads the same steps.
    """
    folder = Path(folder)
    data = read_run_json(folder)
    if data is None:
        raise RationaleError(f"{folder}: no run.json (not a finished or running run folder)")
    source = data.get("records_file") or data.get("config", {}).get("input")
    if not source:
        raise RationaleError(f"{folder}/run.json names no input file")
    path = Path(source)
    if not path.is_absolute():  # runs written before paths were stored resolved
        path = (folder / path) if (folder / path).is_file() else path
    if not path.is_file():
        raise RationaleError(
            f"{folder}: its input {str(path)!r} is gone; history is built from the run's "
            "input, so restore it or pass the accepted.jsonl file instead"
        )
    return path


# -- writing ------------------------------------------------------------------------------------


class RunDir:
    """The three output files, the ledger and run.json of one run folder, and its lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise RationaleError(f"{self.path}: -o must be a folder (the run folder)")
        self.files = {state: self.path / f"{state}.jsonl" for state in STATES}
        self.ledger = self.path / "ledger.jsonl"
        self.run_json = self.path / "run.json"
        self._handles: dict[str, Any] = {}
        self._pending: dict[str, list[str]] = {}
        self._lock: Any = None

    def open(self, command: str) -> None:
        """Create the folder and take its lock; a second writer stops with a clear message."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = take_lock(self.path, command)

    def load(self, *, repair: bool = True) -> dict[tuple[str, int], str]:
        """Every record already done -> its state. The lock holder repairs a line torn by a
        kill first; anyone else (``repair=False``: a dry run) only reads."""
        assert self._lock is not None or not repair, "only the lock holder repairs a run folder"
        if repair:  # a ledger line torn by a kill would glue onto the next one written
            for _ in read_lines(self.ledger, repair=True):
                pass
        done: dict[tuple[str, int], str] = {}
        for state, file in self.files.items():
            for line_no, rec in read_synth_records(file, repair=repair):
                if rec.key in done:
                    raise RationaleError(
                        f"{file} line {line_no}: session {rec.key[0]!r} step {rec.key[1]} is "
                        f"already in {done[rec.key]}.jsonl; remove one of them"
                    )
                done[rec.key] = state
        return done

    def accepted_rationales(self) -> dict[tuple[str, int], str]:
        """(session_id, step) -> accepted rationale, of the records already in the folder."""
        return {
            rec.key: rec.rationale
            for _, rec in read_synth_records(self.files["accepted"])
            if rec.rationale
        }

    def drop_failed(self, keys: set[tuple[str, int]]) -> None:
        """Rewrite failed.jsonl without ``keys`` (atomically), so they can be retried; every
        other failed record stays."""
        file = self.files["failed"]
        kept = [rec for _, rec in read_synth_records(file, repair=True) if rec.key not in keys]
        tmp = file.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(rec.model_dump_json() + "\n" for rec in kept), encoding="utf-8")
        os.replace(tmp, file)

    def append(self, rec: SynthRecord, *, now: bool = True) -> None:
        """Add a record's line; with ``now=False`` it waits for the next `flush` (the engine
        flushes every few milliseconds, off the requests' critical path: a kill in between costs
        nothing, since the answer is already in the response cache)."""
        self._pending.setdefault(rec.state, []).append(rec.model_dump_json())
        if now:
            self.flush()

    def flush(self) -> None:
        for state, lines in self._pending.items():
            if lines:
                self._write(state, self.files[state], "".join(line + "\n" for line in lines))
                lines.clear()

    def _write(self, name: str, file: Path, text: str) -> None:
        handle = self._handles.get(name)
        if handle is None:
            # kept open for the whole run (closed in `close`): one open per file, not per line
            handle = open(file, "a", encoding="utf-8")  # noqa: SIM115
            self._handles[name] = handle
        handle.write(text)
        handle.flush()  # whole lines only: a kill can tear at most the last one

    def charge(self, entry: dict[str, Any]) -> None:
        """One ledger line, written at once: the cost of a request must survive a kill."""
        self._write("ledger", self.ledger, json.dumps(entry) + "\n")

    def spent(self) -> dict[str, float | int]:
        """Totals over every invocation, from the ledger."""
        return ledger_totals(self.ledger)

    def counts(self) -> dict[str, int]:
        return {state: sum(1 for _ in read_lines(file)) for state, file in self.files.items()}

    def write_run_json(self, data: dict[str, Any]) -> None:
        write_json(self.run_json, data)

    def close(self) -> None:
        """Flush every pending line, close the files and release the lock."""
        self.flush()
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None


def write_json(path: Path, data: Any, *, ensure_ascii: bool = True) -> None:
    """``data`` as indented JSON in ``path``, atomically (a kill leaves the old file or the new)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=ensure_ascii) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def take_lock(folder: Path, command: str) -> Any:
    """Hold ``folder/.lock`` (``flock``) for this process, writing who holds it; the open handle
    is returned (closing it releases the lock). A second writer stops with a clear message."""
    import fcntl

    handle = open(folder / ".lock", "a+", encoding="utf-8")  # noqa: SIM115  (held for the run)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RationaleError(
            f"{folder} is being written by {holder}; wait for it to finish (or stop it), "
            "or use another -o"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"rationale {command} (pid {os.getpid()})\n")
    handle.flush()
    return handle


def ledger_entries(ledger: Path, *, sent: bool = False) -> Iterator[dict[str, Any]]:
    """The entries of a ledger file (a torn last line skipped); a line that is not an entry is
    an error naming it, never a silent zero. ``sent``: also the lines a capped run writes before
    a request goes out (``{"sent": ID, "reserved_usd": ...}``, closed by the request's own line
    with that ``id``), which only `ledger_billed` reads."""
    for line_no, line in read_lines(ledger):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            raise RationaleError(
                f"{ledger} line {line_no}: not a ledger entry; the cost totals cannot be "
                "trusted: restore the line or move the run folder aside"
            )
        if sent or "sent" not in entry:
            yield entry


def ledger_totals(ledger: Path) -> dict[str, float | int]:
    """Requests, tokens and cost summed over a ledger file."""
    total: dict[str, float | int] = {
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_usd": 0.0,
    }
    for entry in ledger_entries(ledger):
        for k in total:
            total[k] += entry.get(k) or 0
    return total


def ledger_billed(ledger: Path) -> float:
    """USD billed over a ledger file, as ``--max-cost`` counts it: an answer that came without
    usage counts the whole reservation it was charged, and so does a request that went out but
    never came back (a kill while it was in flight: the provider bills it all the same)."""
    total, out = 0.0, {}
    for entry in ledger_entries(ledger, sent=True):
        if "sent" in entry:
            out[entry["sent"]] = entry.get("reserved_usd") or 0.0
            continue
        out.pop(entry.get("id"), None)
        cost = entry.get("cost_usd")
        total += cost if cost is not None else entry.get("reserved_usd") or 0.0
    return total + sum(out.values())
