"""What a run folder keeps of its batch jobs (``RUN_DIR/batches/``), so a kill loses nothing.

- ``jobs.jsonl``: the history of every *part* (one provider job): ``prepared`` (its requests are
  indexed, nothing is sent yet), ``submitted`` (the provider's job id), ``abandoned`` (it was
  never made: refused, or not found at the provider after a kill), ``collected`` (its results
  are in), ``retry_failed`` (``--retry-failed``: earlier errors get fresh attempts). Appended and
  fsynced line by line, before anything waits on what it says.
- ``batches.sqlite``: each part's requests (custom id -> response cache key, kind) and, once
  collected, its results (the provider's answer or error), so a result is read back by key
  without holding a run's answers in memory.

The order of writes is the crash-safety: requests are indexed, then ``prepared``, then the job is
made, then ``submitted``; results are stored, the ledger charged, then ``collected``. A kill
between two steps is found on the next load (`BatchStore.unsettled`) and finished from there.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rationale.errors import RationaleError, redact
from rationale.rundir import read_lines

__all__ = ["BatchStore", "Part"]


@dataclass
class Part:
    """One provider job of a run, as its history in jobs.jsonl tells it."""

    part: str
    tag: str
    round: int
    provider: str
    model: str
    api_base: str | None
    requests: int
    prepared_at: float
    estimate: int = 0  # our count of its prompt tokens (the enqueued-token limit's split)
    reserved: float = 0.0  # its worst case in USD: a rerun holds it against --max-cost till it ends
    job: str | None = None
    state: str = "prepared"  # the provider's last word, or prepared / abandoned
    created: float | None = None
    expires: float | None = None
    collected: bool = False
    abandoned: bool = False
    token_limit: str | None = None  # refused for the enqueued-token limit: "alone" / "queued"
    counts: dict[str, Any] = field(default_factory=dict)  # answered, errored, cost_usd, ...

    @property
    def in_flight(self) -> bool:
        return self.job is not None and not self.collected and not self.abandoned


class BatchStore:
    """The batches folder of one run (see the module docstring). Only the run's lock holder
    writes it; ``rationale batches`` reads it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.jobs_file = self.folder / "jobs.jsonl"
        self.parts: dict[str, Part] = {}
        self.epoch = 0
        self._db: sqlite3.Connection | None = None
        if self.jobs_file.exists():
            self._replay()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.folder / "batches.sqlite", isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(
                "CREATE TABLE IF NOT EXISTS requests (part TEXT, custom_id TEXT, key TEXT, "
                "kind TEXT, PRIMARY KEY (part, custom_id));"
                "CREATE INDEX IF NOT EXISTS requests_key ON requests (key);"
                "CREATE TABLE IF NOT EXISTS results (part TEXT, custom_id TEXT, body TEXT, "
                "category TEXT, message TEXT, PRIMARY KEY (part, custom_id));"
                # a request whose error failed its record, and the retry_failed count then
                "CREATE TABLE IF NOT EXISTS failed (key TEXT, part TEXT, epoch INTEGER, "
                "PRIMARY KEY (key, part));"
            )
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- the history -------------------------------------------------------------------------

    def _replay(self) -> None:
        for line_no, line in read_lines(self.jobs_file):
            try:
                event = json.loads(line)
                self._apply(event)
            except (ValueError, KeyError, TypeError) as exc:
                raise RationaleError(
                    f"{self.jobs_file} line {line_no}: not a batch event ({exc}); the jobs it "
                    "names could be paid twice: restore the line, never delete it"
                ) from None

    def _apply(self, e: dict[str, Any]) -> None:
        kind = e["event"]
        if kind == "retry_failed":
            self.epoch += 1
            return
        if kind == "prepared":
            self.parts[e["part"]] = Part(
                part=e["part"], tag=e["tag"], round=e["round"], provider=e["provider"],
                model=e["model"], api_base=e.get("api_base"), requests=e["requests"],
                prepared_at=e["at"], estimate=e.get("estimate", 0),
                reserved=e.get("reserved", 0.0),
            )  # fmt: skip
            return
        part = self.parts[e["part"]]
        if kind == "submitted":
            part.job, part.state = e["job"], e["state"]
            part.created, part.expires = e.get("created"), e.get("expires")
        elif kind == "state":
            part.state = e["state"]
        elif kind == "abandoned":
            part.abandoned, part.state = True, "abandoned"
            part.token_limit = e.get("token_limit")
        elif kind == "collected":
            part.collected, part.state, part.counts = True, e["state"], e.get("counts", {})
        else:
            raise KeyError(kind)

    def _event(self, **event: Any) -> None:
        """One line of history, on disk (fsynced) before the caller goes on."""
        self.folder.mkdir(parents=True, exist_ok=True)
        event.setdefault("at", round(time.time(), 3))
        for _ in read_lines(self.jobs_file, repair=True):  # a line torn by a kill: cut off
            pass
        with open(self.jobs_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._apply(event)

    # -- writing -----------------------------------------------------------------------------

    def prepare(
        self, *, provider: str, model: str, api_base: str | None, round_: int,
        requests: list[tuple[str, str, str]], estimate: int = 0, reserved: float = 0.0,
    ) -> Part:  # fmt: skip
        """Index a part's requests ((custom_id, key, kind) each) and record it as prepared."""
        n = len(self.parts) + 1
        part = f"p{n:05d}"
        tag = f"{os.urandom(4).hex()}{part}"  # unique over runs: found again by it after a kill
        with self.db:
            self.db.execute("BEGIN")
            # rows a kill left before the part's `prepared` line reached the history
            self.db.execute("DELETE FROM requests WHERE part=?", (part,))
            self.db.execute("DELETE FROM results WHERE part=?", (part,))
            self.db.executemany(
                "INSERT OR REPLACE INTO requests VALUES (?,?,?,?)",
                [(part, f"{tag}-{cid}", key, kind) for cid, key, kind in requests],
            )
        self._event(
            event="prepared", part=part, tag=tag, round=round_, provider=provider, model=model,
            api_base=redact(api_base) if api_base else None, requests=len(requests),
            estimate=estimate, reserved=reserved,
        )  # fmt: skip
        return self.parts[part]

    def custom_ids(self, part: str) -> list[tuple[str, str, str]]:
        """(custom_id, key, kind) of a part's requests, in the order they were indexed."""
        return list(self.db.execute(
            "SELECT custom_id, key, kind FROM requests WHERE part=? ORDER BY rowid", (part,)
        ))  # fmt: skip

    def submitted(self, part: Part, job: Any, *, recovered: bool = False) -> None:
        self._event(event="submitted", part=part.part, job=job.id, state=job.state,
                    created=job.created, expires=job.expires, recovered=recovered)  # fmt: skip

    def note_state(self, part: Part, state: str) -> None:
        if state != part.state:
            self._event(event="state", part=part.part, state=state)

    def abandon(self, part: Part, why: str, *, token_limit: str | None = None) -> None:
        """``part`` never ran (``token_limit``: refused for OpenAI's enqueued-token limit,
        "alone" or "queued" behind other jobs of ours in flight)."""
        extra = {"token_limit": token_limit} if token_limit else {}
        self._event(event="abandoned", part=part.part, why=redact(why), **extra)

    def store_results(self, part: Part, results: list[Any]) -> None:
        """A collected part's results (idempotent: a kill before ``collected`` stores again)."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?)",
                [(part.part, r.custom_id, json.dumps(r.body) if r.body is not None else None,
                  r.category, r.message) for r in results],
            )  # fmt: skip

    def collected(self, part: Part, state: str, counts: dict[str, Any]) -> None:
        self._event(event="collected", part=part.part, state=state, counts=counts)

    def retry_failed(self) -> None:
        self._event(event="retry_failed")

    # -- reading -----------------------------------------------------------------------------

    def latest(self, key: str) -> tuple[Part, str] | None:
        """The newest part (not abandoned) that carries ``key``, and its custom id there."""
        for part_id, custom_id in self.db.execute(
            "SELECT part, custom_id FROM requests WHERE key=? ORDER BY rowid DESC", (key,)
        ):
            part = self.parts.get(part_id)
            if part is not None and not part.abandoned:
                return part, custom_id
        return None

    def mark_failed(self, key: str, part: Part) -> None:
        """``key``'s answer in ``part`` failed its record (it goes out again only once a
        ``retry_failed`` came since: ``--retry-failed``, an eval's next invocation)."""
        self.db.execute("INSERT OR IGNORE INTO failed VALUES (?,?,?)", (key, part.part, self.epoch))

    def failed_before(self, key: str, part: Part) -> bool:
        """Whether ``key`` failed its record in ``part`` before the last ``retry_failed``."""
        row = self.db.execute(
            "SELECT 1 FROM failed WHERE key=? AND part=? AND epoch<?", (key, part.part, self.epoch)
        ).fetchone()
        return row is not None

    def attempts(self, key: str) -> int:
        """How many parts carried ``key`` since it last failed its record before a
        ``retry_failed`` (a fresh start): its submissions toward ``--request-attempts``."""
        anchor = self.db.execute(
            "SELECT MAX(r.rowid) FROM requests r JOIN failed f ON f.part=r.part AND f.key=r.key "
            "WHERE r.key=? AND f.epoch<?", (key, self.epoch),
        ).fetchone()[0] or 0  # fmt: skip
        return sum(
            1
            for (part_id,) in self.db.execute(
                "SELECT part FROM requests WHERE key=? AND rowid>?", (key, anchor)
            )
            if (p := self.parts.get(part_id)) is not None and not p.abandoned
        )

    def result(self, part: Part, custom_id: str) -> tuple[Any, str | None, str | None]:
        """(answer body or None, error category, error message) of a collected request; a
        request its job returned nothing for is ``expired``, or ``job_failed`` when the whole
        job failed (OpenAI's validation)."""
        row = self.db.execute(
            "SELECT body, category, message FROM results WHERE part=? AND custom_id=?",
            (part.part, custom_id),
        ).fetchone()
        if row is None:
            why = f": {part.counts['error']}" if part.counts.get("error") else ""
            category = "job_failed" if part.state == "failed" else "expired"
            return None, category, f"job {part.job} ended ({part.state}) without an answer{why}"
        body, category, message = row
        return (json.loads(body) if body is not None else None), category, message

    def in_flight(self) -> list[Part]:
        return [p for p in self.parts.values() if p.in_flight]

    def unsettled(self) -> list[Part]:
        """Parts prepared but with no job recorded: a kill between submit and record."""
        return [p for p in self.parts.values() if p.job is None and not p.abandoned]

    def token_cap(self, model: str) -> int | None:
        """The most prompt tokens (our estimate) a job of ``model`` may hold: half the smallest
        part the provider refused for its enqueued-token limit with nothing of ours in flight
        (None: no such refusal)."""
        refused = [p.estimate for p in self.parts.values()
                   if p.model == model and p.token_limit == "alone"]  # fmt: skip
        return max(min(refused) // 2, 1) if refused else None

    def token_limited(self, model: str) -> bool:
        """Whether a job of ``model`` was refused for the enqueued-token limit in this run."""
        return any(p.model == model and p.token_limit for p in self.parts.values())

    def rounds(self) -> int:
        return max((p.round for p in self.parts.values() if not p.abandoned), default=0)

    def summary(self) -> dict[str, Any]:
        """For run.json and the report: jobs, rounds, requests, what is still out."""
        live = [p for p in self.parts.values() if not p.abandoned]
        return {
            "jobs": len(live),
            "rounds": self.rounds(),
            "requests_submitted": sum(p.requests for p in live),
            "in_flight_jobs": sum(p.in_flight or p.job is None for p in live),
            "answered": sum(p.counts.get("answered", 0) for p in live),
            "errored": sum(p.counts.get("errored", 0) for p in live),
            "cost_usd": round(sum(p.counts.get("cost_usd") or 0.0 for p in live), 8),
        }
