"""The life of one invocation on a run folder, the same for every job (synth, filter).

Take the folder's lock; refuse a folder made by another input, teacher or template; load what is
done (repairing a torn line); with ``--retry-failed`` put the failed records within ``--limit``
back in the queue (the others stay in failed.jsonl); write run.json; drive the engine; then,
however the engine stopped, flush, write the report and the final run.json, release the lock,
and raise the error that stopped the run as one line.

A job gives: ``config``, ``run_dir``, ``engine``, ``records`` (its `RecordFile`), ``label``,
``check()`` (before the folder is touched), ``identity()``, ``describe()`` (template facts for
run.json), ``keys()``, ``items(done)``, ``process(item)``, ``records_file``, ``judge``,
``verifier_client``, ``price_known()`` and ``aclose()``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rationale.accounting import Tally
from rationale.errors import RationaleError, redact
from rationale.rundir import RunDir, read_run_json
from rationale.schema import SCHEMA_VERSION


@dataclass(frozen=True)
class RunSummary:
    """What `run_synth` and `run_filter` return (and print): counts, spend, why it stopped."""

    run_dir: Path
    counts: dict[str, int]
    pending: int
    tally: Tally
    wall_s: float
    stopped: str | None
    batch: dict[str, Any] | None = None  # --batch: jobs, rounds, requests submitted, in flight


def summary_lines(command: str, result: RunSummary) -> list[str]:
    """The end-of-run summary of a synth or filter run, as the CLI prints it."""
    t = result.tally
    cost = f"${t.cost_usd:.4f}" + (
        f" (+{t.cost_unknown} calls of unknown price)" if t.cost_unknown else ""
    )
    lines = [
        f"{command}: accepted {result.counts['accepted']}, rejected {result.counts['rejected']}, "
        f"failed {result.counts['failed']}, pending {result.pending}; this run: "
        f"{t.requests} requests ({t.verify_requests} to the verifier), {t.cache_hits} cached, "
        f"{t.prompt_tokens}+{t.completion_tokens} tokens, {cost}, {result.wall_s:.1f}s "
        f"-> {result.run_dir}"
    ]
    if t.rule_rejections:
        rules = ", ".join(f"{k} {v}" for k, v in t.rule_rejections.most_common())
        lines.append(f"{command}: candidates rejected by {rules}")
    if t.context_cut_records:
        from rationale.context import survival_note

        survived = survival_note(
            t.context_cut_targets, t.context_cut_target_survived, where="the blind cut"
        )
        lines.append(
            f"{command}: cut {t.context_cut_tokens} context tokens from {t.context_cut_records} "
            f"records (--max-context-tokens){survived}"
        )
    if b := result.batch:
        lines.append(
            f"{command}: batch: {b['jobs']} jobs in {b['rounds']} rounds, "
            f"{b['requests_submitted']} requests submitted "
            f"({b['requests_submitted_this_invocation']} this run), "
            f"{b['in_flight_jobs']} jobs in flight"
        )
    if result.stopped:
        again = "" if result.stopped.startswith("budget") else "; rerun to continue"
        lines.append(f"{command}: stopped early ({result.stopped}){again}")
    return lines


def count_context_cut(tally: Tally, record: Any, cut: Any, max_context_tokens: int | None) -> None:
    """Count a record whose context ``cut`` (its prompt's `rationale.context.ContextCut`) was
    cut, and whether its true target survived the blind cut, the one the verifier, the student
    and eval read (a teacher's cut keeps the target whenever it can, so it would tell nothing)."""
    from rationale.context import cut_context, target_of

    if not cut.cut_tokens:
        return
    tally.context_cut_records += 1
    tally.context_cut_tokens += cut.cut_tokens
    target = target_of(record.action.model_dump())
    if target is None:
        return
    tally.context_cut_targets += 1
    if cut.how not in ("head-tail", "page"):  # the teacher's: cut again as a blind prompt is
        cut = cut_context(record.context, max_context_tokens)
    tally.context_cut_target_survived += cut.survived(target)


def check_same_run(run_dir: RunDir, identity: dict[str, Any]) -> None:
    """A run folder belongs to one input, teacher and template: refuse to mix them."""
    before = read_run_json(run_dir.path)
    if before is None:
        # run.json is written before the first record: records without it are not ours
        if any(f.exists() and f.stat().st_size for f in run_dir.files.values()):
            raise RationaleError(
                f"{run_dir.path} holds records but no run.json, so nothing says which input, "
                "teacher and template made them; use a new -o"
            )
        return
    theirs = before.get("identity", {})
    changed = [k for k in identity if k in theirs and theirs[k] != identity[k]]
    if changed:
        raise RationaleError(
            f"{run_dir.path} holds a run with a different "
            f"{', '.join(changed)} ({', '.join(f'{k}={theirs[k]!r}' for k in changed)}); "
            "use a new -o, or the same flags to resume"
        )


def skipped_input(records: Any, extra: list[str] | None = None) -> dict[str, Any] | None:
    """The lines and sessions ``--on-error skip`` left out, printed on stderr and returned for
    run.json; None when nothing was left out. ``extra``: lines of a source run (filter)."""
    for line in [*(f"skipped: {x}" for x in extra or []), *records.skip_report()]:
        print(line, file=sys.stderr)
    errors = records.errors
    if not errors and not extra:
        return None
    return {
        "lines": [{"line": e.line, "error": str(e)} for e in errors]
        + [{"line": None, "error": line} for line in extra or []],
        "sessions": records.skipped_sessions,
    }


async def run_job(job: Any) -> RunSummary:
    """Run (or resume) ``job`` on its run folder; see the module docstring."""
    run_dir, config, engine = job.run_dir, job.config, job.engine
    job.check()
    engine.check()
    run_dir.open(job.label)
    started, t0 = time.time(), time.monotonic()
    total, skipped = 0, None
    closed = False
    terminated = cancel_on_sigterm()

    async def close_clients() -> None:  # once, however the run ends
        nonlocal closed
        if not closed:
            closed = True
            await job.aclose()

    try:
        check_same_run(run_dir, job.identity())
        skipped = skipped_input(job.records, getattr(job, "skipped_lines", None))
        done = run_dir.load()
        keys = job.keys()
        if config.retry_failed:
            retry = {k for k in keys if done.get(k) == "failed"}
            run_dir.drop_failed(retry)
            done = {k: s for k, s in done.items() if k not in retry}
        todo = sum(1 for k in keys if k not in done)
        total = len(done) + todo
        _write_run_json(job, started, 0.0, f"running (pid {os.getpid()})", total, skipped)
        try:

            def again() -> tuple[Any, int]:  # a further pass (--batch --wait)
                now = run_dir.load(repair=False)
                return job.items(now), sum(1 for k in keys if k not in now)

            await engine.drive(
                job.items(done), job.process, todo=todo, label=job.label, again=again
            )
        finally:
            await close_clients()
    except BaseException as exc:
        # interrupted (Ctrl-C, SIGTERM) or failed before the engine ran: every line is
        # flushed, and run.json says so when it already existed
        try:
            await close_clients()
            run_dir.flush()
            if total and not isinstance(exc, RationaleError):
                why = "SIGTERM" if terminated else "Ctrl-C" if _interrupt(exc) else repr(exc)
                wall = time.monotonic() - t0
                counts = _finalise(job, started, wall, f"interrupted: {why}", total, skipped)
                if terminated:
                    raise RationaleError(
                        f"{job.label} stopped by SIGTERM with {total - sum(counts.values())} "
                        "records pending; rerun the same command to continue"
                    ) from None
        finally:
            run_dir.close()
        raise
    try:
        stopped = engine.stopped_reason()
        wall = time.monotonic() - t0
        counts = _finalise(job, started, wall, stopped, total, skipped)
        if engine.error is not None:  # kept for whoever fixes it; the exit stays one line
            (run_dir.path / "error.txt").write_text(
                redact(engine.error_traceback), encoding="utf-8"
            )
    finally:
        run_dir.close()
    pending = total - sum(counts.values())
    batch = engine.summary() if hasattr(engine, "store") else None
    summary = RunSummary(run_dir.path, counts, pending, engine.tally, wall, stopped, batch)
    if engine.error is not None or engine.fatal is not None:
        where = " (traceback in error.txt)" if engine.error is not None else ""
        raise RationaleError(
            f"{job.label} stopped ({redact(str(stopped))}){where} with {pending} records "
            "pending; every answer paid for is saved: fix the cause and rerun the same command "
            "to continue"
        )
    return summary


def _interrupt(exc: BaseException) -> bool:
    import asyncio

    return isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError))


def cancel_on_sigterm() -> list[bool]:
    """Make SIGTERM (docker stop, a job scheduler's timeout) stop the run like Ctrl-C: the main
    task is cancelled, the run folder finalised. Returns a flag list that is true once it came."""
    import asyncio
    import signal

    came: list[bool] = []
    task = asyncio.current_task()

    def stop() -> None:
        came.append(True)
        if task is not None:
            task.cancel()

    # not in the main thread, or on Windows: SIGTERM keeps its default
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
    return came


def _finalise(
    job: Any, started: float, wall: float, stopped: str | None, total: int, skipped: Any
) -> dict[str, int]:
    from rationale.report import build_report, write_chart

    run_dir = job.run_dir
    run_dir.flush()
    report = build_report(run_dir.path)
    write_chart(report, run_dir.path / "acceptance.png")
    return _write_run_json(job, started, wall, stopped, total, skipped, report)


def _write_run_json(
    job: Any,
    started: float,
    wall: float,
    stopped: str | None,
    total: int,
    skipped: Any,
    report: dict[str, Any] | None = None,
) -> dict[str, int]:
    from rationale.identity import file_digest
    from rationale.tokens import tokenizer_info

    run_dir, tally = job.run_dir, job.engine.tally
    counts = run_dir.counts()
    spent = run_dir.spent()
    verifier = job.verifier_client
    data = {
        "schema_version": SCHEMA_VERSION,
        "command": job.label,
        "config": job.config.resolved(),
        "identity": job.identity(),
        "records_file": str(Path(job.records_file).resolve()),
        # what the records were cut from, by content: merge refuses shards of a changed input
        "records_file_sha256": file_digest(job.records_file, remember=False),
        "records_file_on_error": job.input_on_error,  # how readers must read it too
        "template": job.describe(),
        "tokenizer": tokenizer_info(),
        "records": total,
        "counts": counts,
        "pending": total - sum(counts.values()),
        "skipped_input": skipped,
        "tokens": {"prompt": spent["prompt_tokens"], "completion": spent["completion_tokens"]},
        "cost_usd": {
            "total": round(float(spent["cost_usd"]), 8),
            "this_invocation": round(tally.cost_usd, 8),
            "unknown_for_requests": tally.cost_unknown,
            "paid_invalid_answers": tally.invalid_paid,
            "price_known": job.price_known(),
        },
        "requests": {
            "total": spent["requests"],
            "this_invocation": tally.requests,
            "failed_this_invocation": tally.failed_requests,
            "cache_hits": tally.cache_hits,
        },
        "context_cut": {
            "records": tally.context_cut_records,
            "tokens": tally.context_cut_tokens,
            # cut records whose action names a target; of those, the target in the blind cut
            "targets": tally.context_cut_targets,
            "target_survived": tally.context_cut_target_survived,
        },
        "started": started,
        "wall_s": round(wall, 3),
        "stopped": redact(stopped) if stopped else None,
        "verification": {
            "verifier": verifier.model_id if verifier else None,
            "rules": list(job.judge.rules),
            "requests_this_invocation": tally.verify_requests,
            "cost_usd_this_invocation": round(tally.verify_cost_usd, 8),
        },
        "report": report,
    }
    if hasattr(job.engine, "store"):  # --batch
        data["batch"] = job.engine.summary()
    run_dir.write_run_json(data)
    return counts
