"""Collecting ``--batch`` jobs: read each job in flight, and take the results of the ended.

Taking a job's results is three writes, in this order: the results into the run folder's
``batches.sqlite``, one ledger line for the job (what it billed, at the batch price, split by
teacher and verifier; charged once, by job id), then ``collected`` in its history. A kill between
two of them repeats the ones after it and nothing else. A job whose results hold custom ids this
run never sent is not ours: it is dropped, and its part's requests go out again.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from rationale.batch_store import Part
from rationale.errors import FatalTeacherError, TeacherError
from rationale.pricing import batch_price

__all__ = ["collect"]


def _usage(body: dict[str, Any]) -> tuple[int, int]:
    """Billed (prompt, completion) tokens of an answer (chat completion or Anthropic message)."""
    usage = body.get("usage") or {}
    p = usage.get("prompt_tokens", usage.get("input_tokens")) or 0
    c = usage.get("completion_tokens", usage.get("output_tokens")) or 0
    return int(p), int(c)


def _cost(model: str, p: int, c: int) -> float | None:
    price = batch_price(model)
    return None if price is None else p * price[0] + c * price[1]


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
                if state.ended:
                    await _take(engine, part, provider, state)
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


async def _take(engine: Any, part: Part, provider: Any, state: Any) -> None:
    """Store an ended job's results, charge them to the ledger once, mark it collected."""
    results = await provider.results(part.job)
    ids = {cid: kind for cid, _, kind in engine.store.custom_ids(part.part)}
    if any(r.custom_id not in ids for r in results):
        engine.store.abandon(part, f"job {part.job} holds requests this run never sent")
        return
    engine.store.store_results(part, results)
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in ids.values():  # requests: every one submitted, as the ledger counts them
        k = by_kind.setdefault(kind, {"requests": 0, "answered": 0, "prompt_tokens": 0,
                                      "completion_tokens": 0, "cost_usd": 0.0})  # fmt: skip
        k["requests"] += 1
    answered = 0
    for r in results:
        if r.body is None:
            continue
        answered += 1
        p, c = _usage(r.body)
        k = by_kind[ids[r.custom_id]]
        cost = _cost(part.model, p, c)
        k["answered"] += 1
        k["prompt_tokens"] += p
        k["completion_tokens"] += c
        k["cost_usd"] = None if cost is None or k["cost_usd"] is None else k["cost_usd"] + cost
    total = {f: sum(k[f] for k in by_kind.values()) for f in ("prompt_tokens", "completion_tokens")}
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
        "error": state.error,
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
