"""One round of ``--batch``: the requests a pass deferred, sent as provider jobs.

The bodies are the online client's own (`request_body`); they are grouped by model and
endpoint, reserved against ``--max-cost`` at the batch price (what does not fit waits), split to
the provider's limits (requests and bytes per job), and each job is recorded in the run folder:
its requests indexed and ``prepared`` before it is sent, ``submitted`` once the provider has
made it (`rationale.batch_store`). A send that failed without an answer may still have made the
job: it stays ``prepared`` and the next run looks for it by its tag before sending anything again.
A job the provider would refuse (`rationale.batch_limits`) is never sent. Once OpenAI refused a
job of a model for its enqueued-token limit, that model's next job waits until none of ours is
in flight, one job a round, and a job refused with none in flight is halved.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rationale.accounting import worst_case_cost, worst_prompt_tokens
from rationale.batch_limits import problems
from rationale.batch_providers import batch_target
from rationale.errors import FatalTeacherError, RationaleError, TeacherError
from rationale.pricing import batch_price

__all__ = ["submit_round"]

#: Answers to a submission that prove no job was made (HTTP 400, 401/403, 404, 429): the part
#: is abandoned at once. Anything else leaves it prepared, to be looked up by its tag.
REFUSED = frozenset({"bad_request", "auth", "not_found", "rate_limit"})


def _body_tokens(body: dict[str, Any]) -> int:
    """Our estimate of a request body's prompt tokens (messages and system, with framing)."""
    from rationale.prompts import count_tokens

    def text(content: Any) -> str:
        if isinstance(content, list):
            return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return str(content or "")

    parts = [text(m.get("content")) for m in body.get("messages", [])]
    parts.append(text(body.get("system")))
    return sum(count_tokens(p) + 4 for p in parts if p)


async def submit_round(engine: Any) -> None:
    """The deferred requests as new jobs: one round, split by model and provider limits.
    Nothing goes out once ``--max-cost`` (the run folder's, every invocation's bills and the
    jobs still out counted) was reached."""
    if engine.budget.exhausted:
        return
    round_ = engine.store.rounds() + 1
    groups: dict[tuple[str, str | None], list[tuple[str, str, dict[str, Any], int]]] = {}
    for key, (client, messages, kwargs) in engine.deferred.items():
        body = client.client.request_body(messages, **kwargs)
        groups.setdefault(batch_target(client.client), []).append(
            (key, client.kind, body, int(kwargs.get("max_tokens") or 0))
        )
    engine.rounds_now += 1
    for (model, api_base), requests in groups.items():
        provider = engine._provider(model, api_base)
        limited, cap = engine.store.token_limited(model), engine.store.token_cap(model)
        if limited and (out := [p for p in engine.store.in_flight() if p.model == model]):
            print(f"batch: {len(requests)} requests to {model} wait for its {len(out)} jobs in "
                  "flight (the provider's enqueued-token limit)", file=sys.stderr)  # fmt: skip
            continue
        price = batch_price(model)
        chunk: list[tuple[str, str, dict[str, Any]]] = []
        size, reserved, estimate = 0, 0.0, 0
        for key, kind, body, max_tokens in requests:
            worst, tokens = 0.0, _body_tokens(body)
            if engine.budget.limit is not None and price is not None:
                # the most it can bill: a token per byte of its body, all of max_tokens
                worst = worst_case_cost(
                    lambda p, c, price=price: p * price[0] + c * price[1],
                    worst_prompt_tokens(body), max_tokens,
                ) or 0.0  # fmt: skip
                if not engine.budget.reserve(worst):
                    break  # what fits under --max-cost goes out; the rest waits
            line = len(json.dumps(provider.line("x" * 32, body))) + 1
            full = cap is not None and estimate + tokens > cap
            if chunk and (len(chunk) >= provider.max_requests or size + line > provider.max_bytes
                          or full):  # fmt: skip
                if limited:  # one job at a time: the rest waits for the next round
                    engine.budget.settle(worst, 0.0)
                    break
                await _send(engine, provider, (model, api_base, round_), chunk, reserved, estimate)
                chunk, size, reserved, estimate = [], 0, 0.0, 0
                if engine.fatal or engine.error:
                    return
            chunk.append((key, kind, body))
            size, reserved, estimate = size + line, reserved + worst, estimate + tokens
        if chunk:
            await _send(engine, provider, (model, api_base, round_), chunk, reserved, estimate)
        if engine.fatal or engine.error:
            return


async def _send(
    engine: Any, provider: Any, where: tuple[str, str | None, int],
    chunk: list[tuple[str, str, dict[str, Any]]], reserved: float, estimate: int,
) -> None:  # fmt: skip
    model, api_base, round_ = where
    part = engine.store.prepare(
        provider=provider.name, model=model, api_base=api_base, round_=round_,
        requests=[(str(i), key, kind) for i, (key, kind, _) in enumerate(chunk)],
        estimate=estimate, reserved=reserved,
    )  # fmt: skip
    ids = engine.store.custom_ids(part.part)
    lines = [provider.line(cid, body) for (cid, _, _), (_, _, body) in zip(ids, chunk, strict=True)]
    if wrong := problems(provider, [cid for cid, _, _ in ids], [body for _, _, body in chunk]):
        engine.budget.settle(reserved, 0.0)
        engine.store.abandon(part, "; ".join(wrong))
        engine.fail(RationaleError(
            f"batch part {part.part} was not sent: {provider.name} would refuse it "
            f"({'; '.join(wrong)}); this is a bug of rationale's batch splitting: report it"
        ))  # fmt: skip
        return
    try:
        job = await provider.submit(lines, part.tag)
    except TeacherError as exc:
        engine.budget.settle(reserved, 0.0)
        if exc.category not in REFUSED:
            # it may have been made (a timeout, a dropped answer, an answer litellm could not
            # read): the next run looks for it by its tag before anything is sent again
            engine.fail(RationaleError(
                f"submitting batch part {part.part} to {provider.name} failed ({exc}); rerun "
                "to continue (the part is looked up at the provider before it is sent again)"
            ))  # fmt: skip
            return
        engine.store.abandon(part, str(exc))
        if isinstance(exc, FatalTeacherError):
            engine.fatal = engine.fatal or exc
        else:
            engine.fail(RationaleError(f"{provider.name} refused batch part {part.part}: {exc}"))
        return
    engine.store.submitted(part, job)
    engine._reserved[part.part] = reserved
    engine.submitted_now += len(chunk)
    print(f"batch: round {round_}: sent {len(chunk)} requests to {provider.name} as job "
          f"{job.id}", file=sys.stderr)  # fmt: skip
