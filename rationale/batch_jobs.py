"""`rationale batches RUN_DIR`: every provider job of a run, as the provider sees it now.

Reads the run folder's batch history (`rationale.batch_store`) without writing it; a job still
out is asked for its state (validating, in progress, finalizing, ...). ``cancel`` cancels every
job still out and waits while the provider is still cancelling (it may take minutes): a cancelled
job's answered requests are kept (and billed) when the run is next collected, and the rest go out
again only if the run is rerun.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from rationale.batch_store import BatchStore
from rationale.errors import RationaleError, TeacherError

__all__ = ["batch_jobs", "forget", "render_jobs"]


#: How long ``--cancel`` waits for jobs still cancelling, and its first and longest poll.
CANCEL_WAIT_S, FIRST_POLL_S, LONGEST_POLL_S = 600.0, 0.2, 10.0


def batch_jobs(
    run_dir: str | Path, *, cancel: bool = False, api_base: str | None = None,
    wait_s: float = CANCEL_WAIT_S,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per job of the run (oldest first): provider id, state, counts, created/expires,
    cost. ``api_base``: the endpoint, where the run's own was given with credentials.
    ``cancel``: each job out is cancelled, and waited for up to ``wait_s`` seconds until it
    ended (a job still cancelling then shows so)."""
    run_dir = Path(run_dir)
    store = BatchStore(run_dir / "batches")
    if not store.parts:
        raise RationaleError(f"{run_dir}: no batch jobs (was it run with --batch?)")
    return asyncio.run(_rows(store, cancel, api_base, wait_s))


async def _cancelled(provider: Any, job: str, wait_s: float) -> Any:
    """Cancel ``job``, then read it until it ended (or ``wait_s`` passed)."""
    state = await provider.cancel(job)
    deadline, poll = time.monotonic() + wait_s, FIRST_POLL_S
    while not state.ended and time.monotonic() < deadline:
        await asyncio.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))
        poll = min(poll * 2, LONGEST_POLL_S)
        state = await provider.retrieve(job)
    return state


async def _rows(
    store: BatchStore, cancel: bool, api_base: str | None, wait_s: float = CANCEL_WAIT_S
) -> list[dict[str, Any]]:
    from rationale.batch_providers import provider_for

    providers: dict[tuple[str, str | None], Any] = {}
    rows = []
    try:
        for part in store.parts.values():
            row: dict[str, Any] = {
                "part": part.part, "round": part.round, "provider": part.provider,
                "model": part.model, "job": part.job, "requests": part.requests,
                "state": part.state, "answered": part.counts.get("answered"),
                "errored": part.counts.get("errored"), "created": part.created,
                "expires": part.expires, "cost_usd": part.counts.get("cost_usd"),
                "collected": part.collected,
            }  # fmt: skip
            if part.in_flight:
                base = _endpoint(part.api_base, api_base)
                key = (part.model, base)
                if key not in providers:
                    providers[key] = provider_for(part.model, base)
                provider = providers[key]
                try:
                    if cancel:
                        state = await _cancelled(provider, part.job, wait_s)
                    else:
                        state = await provider.retrieve(part.job)
                except TeacherError as exc:
                    row["state"] = f"unreachable ({exc.category}: {exc})"
                else:
                    row.update(state=state.state, answered=state.answered, errored=state.errored)
            rows.append(row)
    finally:
        for provider in providers.values():
            if hasattr(provider, "aclose"):
                await provider.aclose()
    return rows


def forget(run_dir: str | Path, which: str) -> str:
    """Mark a part (by part or job id) that is not collected as abandoned, so the next run
    sends its requests again: for a job the provider lost or never made. Takes the run's lock.
    Returns what was done, in a line."""
    from rationale.rundir import take_lock

    run_dir = Path(run_dir)
    lock = take_lock(run_dir, "batches --forget")
    try:
        store = BatchStore(run_dir / "batches")
        part = next((p for p in store.parts.values() if which in (p.part, p.job)), None)
        if part is None:
            raise RationaleError(f"{run_dir}: no batch part or job {which!r}")
        if part.collected or part.abandoned:
            raise RationaleError(f"part {part.part} is {part.state}: nothing to forget")
        store.abandon(part, "forgotten with `rationale batches --forget`")
        store.close()
    finally:
        lock.close()
    billed = f"; job {part.job} is billed if it still runs: cancel it first" if part.job else ""
    return (
        f"forgot part {part.part} ({part.requests} requests): the next run sends them again"
        + billed
    )


def _endpoint(stored: str | None, given: str | None) -> str | None:
    """The real endpoint of a part: stored redacted, so one with credentials must be given."""
    if not stored:
        return None
    if given:
        return given
    if "***" in stored:
        raise RationaleError(
            f"the run's --api-base held credentials ({stored}); give it again with --api-base"
        )
    return stored


def render_jobs(rows: list[dict[str, Any]]) -> str:
    """The jobs as a table."""

    def when(t: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"

    head = (f"{'part':<8}{'round':>5}  {'provider':<10}{'job':<28}{'state':<12}"
            f"{'requests':>9}{'answered':>9}{'errored':>8}  {'created':<17}{'expires':<17}"
            f"{'cost':>10}")  # fmt: skip
    out = [head]
    for r in rows:
        cost = f"${r['cost_usd']:.4f}" if r["cost_usd"] is not None else "-"
        out.append(
            f"{r['part']:<8}{r['round']:>5}  {r['provider']:<10}{r['job'] or '-':<28}"
            f"{r['state']:<12}{r['requests']:>9}{_n(r['answered']):>9}{_n(r['errored']):>8}  "
            f"{when(r['created']):<17}{when(r['expires']):<17}{cost:>10}"
        )
    billed = sum(r["cost_usd"] or 0.0 for r in rows)
    out_now = sum(1 for r in rows if r["job"] and not r["collected"] and r["state"] != "abandoned")
    out.append(f"{len(rows)} jobs, {out_now} not collected yet, ${billed:.4f} billed so far")
    return "\n".join(out)


def _n(value: Any) -> str:
    return "-" if value is None else str(value)
