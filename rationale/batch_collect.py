"""Collecting ``--batch`` jobs: read each job in flight, and take the results of the ended.

Taking a job's results is three writes, in this order: the results into the run folder's
``batches.sqlite``, one ledger line for the job (what it billed, at the batch price, split by
teacher and verifier; charged once, by job id), then ``collected`` in its history. A kill between
two of them repeats the ones after it and nothing else. Answers with cached prompt tokens are
billed at the cached price (`rationale.batch_usage`).

A job whose results hold custom ids this run never sent was billed all the same: every answer in
it is charged (as ``foreign`` in the ledger line), and it counts as one submission of each of its
part's requests (those it did not answer go out again, up to ``--request-attempts``). A job that
failed OpenAI's validation on the enqueued-token limit (``token_limit_exceeded``) never ran: its
part is abandoned, not counted as an attempt, and the next round waits for the jobs in flight or
sends smaller jobs (`rationale.batch_submit`). An Anthropic job whose results are gone
(archived) stops the run with what to do.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from rationale.batch_store import Part
from rationale.batch_types import TOKEN_LIMIT, ResultsGone
from rationale.batch_usage import usage_of
from rationale.errors import FatalTeacherError, TeacherError

__all__ = ["collect"]


async def collect(engine: Any, *, wait: bool) -> None:
    """Read every job in flight; store the results of the ones that ended. With ``wait``,
    poll every ``--poll-interval`` seconds until none is left in flight."""
    while parts := engine.store.in_flight():
        line = []
        for part in parts:
            provider = engine._provider_of(part)
            try:
                state = await provider.retrieve(part.job)
                engine.store.note_state(part, state.state)
                if state.ended and not _token_limited(engine, part, state):
                    await _take(engine, part, provider, state)
            except ResultsGone as exc:
                engine.fatal = engine.fatal or FatalTeacherError(
                    f"{provider.name} job {part.job} of part {part.part} ended but its results "
                    f"are gone ({exc}): its answers were billed and cannot be read; "
                    f"`rationale batches RUN_DIR --forget {part.part}` sends its requests again "
                    "in the next round (billed a second time)", category="not_found",
                )  # fmt: skip
                return
            except FatalTeacherError as exc:
                if exc.category == "not_found":  # gone (deleted, past retention) or elsewhere
                    exc = FatalTeacherError(
                        f"{provider.name} does not know job {part.job} of part {part.part} "
                        f"({exc}); if the key or --api-base changed, restore it; if the job is "
                        f"gone for good, `rationale batches RUN_DIR --forget {part.part}` sends "
                        "its requests again in the next round", category="not_found",
                    )  # fmt: skip
                engine.fatal = engine.fatal or exc
                return
            except TeacherError as exc:  # the provider is unreachable: try again later
                line.append(f"{part.job} unreachable ({exc.category})")
                continue
            line.append(f"{part.job} {state.state} {state.answered + state.errored}/"
                        f"{state.total}")  # fmt: skip
        print(f"batch: round {engine.store.rounds()}: {', '.join(line)}", file=sys.stderr)
        if not wait or engine.stopping() or not engine.store.in_flight():
            return
        await asyncio.sleep(engine.config.poll_interval)


def _token_limited(engine: Any, part: Part, state: Any) -> bool:
    """Whether OpenAI refused the job at validation for its enqueued-token limit: then nothing
    ran, nothing is billed, and its requests wait for the next round (not an attempt of theirs).
    One request refused alone never fits: that job fails as any other (an attempt)."""
    if TOKEN_LIMIT not in state.codes:
        return False
    others = [p for p in engine.store.in_flight() if p.part != part.part and p.model == part.model]
    if not others and part.requests == 1:
        return False
    engine.store.abandon(part, f"{state.error}", token_limit="queued" if others else "alone")
    engine.release(part)
    then = (f"the next round waits for the {len(others)} jobs in flight" if others
            else "the next round sends it as smaller jobs")  # fmt: skip
    print(f"batch: job {part.job} of part {part.part} was over {part.model}'s enqueued-token "
          f"limit ({TOKEN_LIMIT}): {then}", file=sys.stderr)  # fmt: skip
    return True


def _kind() -> dict[str, Any]:
    return {"requests": 0, "answered": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0,
            "completion_tokens": 0, "cost_usd": 0.0}  # fmt: skip


async def _take(engine: Any, part: Part, provider: Any, state: Any) -> None:
    """Store an ended job's results, charge them to the ledger once, mark it collected."""
    results = await provider.results(part.job)
    ids = {cid: kind for cid, _, kind in engine.store.custom_ids(part.part)}
    foreign = sum(r.custom_id not in ids for r in results)
    engine.store.store_results(part, [r for r in results if r.custom_id in ids])
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in ids.values():  # requests: every one submitted, as the ledger counts them
        by_kind.setdefault(kind, _kind())["requests"] += 1
    answered = 0
    for r in results:
        if r.body is None:
            continue
        usage = usage_of(r.body)
        k = by_kind.setdefault(ids.get(r.custom_id, "foreign"), _kind())  # billed all the same
        answered += r.custom_id in ids
        cost = usage.cost(part.model)
        k["answered"] += 1
        k["prompt_tokens"] += usage.prompt
        k["cached_prompt_tokens"] += usage.cache_read
        k["completion_tokens"] += usage.completion
        k["cost_usd"] = None if cost is None or k["cost_usd"] is None else k["cost_usd"] + cost
    fields = ("prompt_tokens", "cached_prompt_tokens", "completion_tokens")
    total = {f: sum(k[f] for k in by_kind.values()) for f in fields}
    costs = [k["cost_usd"] for k in by_kind.values()]
    cost_usd = None if None in costs else sum(costs)
    billed_now = part.job not in engine._charged
    if billed_now:
        engine.run_dir.charge({
            "kind": "batch", "batch": part.job, "part": part.part, "requests": part.requests,
            "ok": answered, **total, "cost_usd": cost_usd, "by_kind": by_kind,
        })  # fmt: skip
        engine._charged.add(part.job)
        _tally(engine, part, answered, total, cost_usd, by_kind)
    if part.part in engine._reserved:
        engine.budget.settle(engine._reserved.pop(part.part), (cost_usd or 0.0) * billed_now)
        engine.budget.exhausted = False  # held at its worst case, billed less: room came back
    engine._collected_now.add(part.part)
    engine.store.collected(part, state.state, {
        "answered": answered, "errored": part.requests - answered,
        "prompt_tokens": total["prompt_tokens"],
        "completion_tokens": total["completion_tokens"], "cost_usd": cost_usd,
        "error": state.error or (foreign and f"the job held {foreign} results with custom ids "
                                 "this run never sent (charged; ours without one go out again)"),
    })  # fmt: skip


def _tally(
    engine: Any, part: Part, answered: int, total: dict[str, int], cost: Any, by_kind: Any
) -> None:
    t = engine.tally
    t.requests += part.requests
    t.failed_requests += part.requests - answered
    t.prompt_tokens += total["prompt_tokens"]
    t.completion_tokens += total["completion_tokens"]
    t.cost_usd += cost or 0.0
    t.cost_unknown += answered if cost is None else 0
    v = by_kind.get("verifier")
    if v:
        t.verify_requests += v["requests"]
        t.verify_prompt_tokens += v["prompt_tokens"]
        t.verify_completion_tokens += v["completion_tokens"]
        t.verify_cost_usd += v["cost_usd"] or 0.0
