"""`BatchEngine`: the engine of ``--batch``, whose requests go out as provider batch jobs.

A job's records go through the same ``process`` as online (same prompts, rounds and judging),
in *passes*. In a pass a request is answered from the response cache or from a collected job;
otherwise it is deferred and its record stays pending. After the pass the deferred requests go
out as new jobs (a *round*): the bodies the online client would send (`request_body`), keyed by
the same cache key, split to the provider's limits, reserved against ``--max-cost`` at the batch
price, and recorded in the run folder (`rationale.batch_store`) before anything waits on them.
The next pass (a rerun, or with ``--wait`` once the jobs end) files the records whose answers
came in and defers their next requests: the verifier's, a regeneration round's. A record is
final only when its last request is in.

What comes back is sorted as the online path sorts faults (`rationale.retry`): an answer is
parsed by the online client's own code (`parse`); a bad request fails its record; an auth or
unknown-model error stops the run; rate limits, server errors, answers that do not parse, and
requests an expired or cancelled job never ran go out again in the next round, up to
``--request-attempts`` submissions, after which the record fails with the provider's error.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from rationale.batch_providers import batch_target
from rationale.batch_store import BatchStore, Part
from rationale.batch_submit import submit_round
from rationale.engine import Engine, Limited, Pending
from rationale.errors import FatalTeacherError, RationaleError, TeacherError, redact
from rationale.pricing import batch_price
from rationale.retry import FATAL, RETRYABLE

__all__ = ["BatchEngine", "make_engine"]

#: What goes out again in the next round (besides the online path's retryable faults).
RESUBMIT = RETRYABLE | {"expired", "cancelled", "job_failed"}


def make_engine(config: Any, run_dir: Any, *, retry_policy: Any = None) -> Engine:
    """The engine a job runs on: `BatchEngine` with ``--batch``, else the online `Engine`."""
    if getattr(config, "batch", False):
        return BatchEngine(config, run_dir, retry_policy=retry_policy)
    if (run_dir.path / "batches" / "jobs.jsonl").exists():
        store = BatchStore(run_dir.path / "batches")
        out = store.in_flight() + store.unsettled()
        if out:  # online, their requests would be sent (and paid for) a second time
            raise RationaleError(
                f"{run_dir.path} has {len(out)} batch jobs not collected yet; continue it with "
                f"--batch (--wait to finish here), or cancel them first with `rationale batches "
                f"{run_dir.path} --cancel` and collect what they answered with --batch"
            )
    return Engine(config, run_dir, retry_policy=retry_policy)


def _usage(body: dict[str, Any]) -> tuple[int, int]:
    """Billed (prompt, completion) tokens of an answer (chat completion or Anthropic message)."""
    usage = body.get("usage") or {}
    p = usage.get("prompt_tokens", usage.get("input_tokens")) or 0
    c = usage.get("completion_tokens", usage.get("output_tokens")) or 0
    return int(p), int(c)


class BatchEngine(Engine):
    """Passes over the records, rounds of provider jobs (see the module docstring)."""

    def __init__(self, config: Any, run_dir: Any, *, retry_policy: Any = None) -> None:
        super().__init__(config, run_dir, retry_policy=retry_policy)
        self.store = BatchStore(run_dir.path / "batches")
        self.clients: list[Any] = []
        self.deferred: dict[str, tuple[Limited, list[dict[str, str]], dict[str, Any]]] = {}
        self._providers: dict[tuple[str, str | None], Any] = {}
        self._reserved: dict[str, float] = {}  # parts this invocation submitted -> worst case
        self._invalid: set[str] = set()
        self._charged: set[str] = set()
        self.submitted_now = 0
        self.rounds_now = 0

    def limited(self, client: Any, kind: str) -> Limited:
        if client is not None and client not in self.clients:
            self.clients.append(client)
        return super().limited(client, kind)

    def check(self) -> None:
        """Before the run folder is touched: every model of the run has a batch API."""
        for client in self.clients:
            model, api_base = batch_target(client)
            self._provider(model, api_base)

    def _provider(self, model: str, api_base: str | None) -> Any:
        from rationale.batch_providers import provider_for

        key = (model, api_base)
        if key not in self._providers:
            self._providers[key] = provider_for(model, api_base, timeout=self.config.timeout)
        return self._providers[key]

    def _provider_of(self, part: Part) -> Any:
        """The provider of a part an earlier invocation made (its api_base is stored
        redacted: the real one comes from this run's clients or config)."""
        for client in self.clients:
            model, api_base = batch_target(client)
            if model == part.model and (redact(api_base) if api_base else None) == part.api_base:
                return self._provider(model, api_base)
        api_base = self.config.api_base
        if part.api_base and (not api_base or redact(api_base) != part.api_base):
            api_base = part.api_base
        return self._provider(part.model, api_base if part.api_base else None)

    def summary(self) -> dict[str, Any]:
        return {**self.store.summary(), "requests_submitted_this_invocation": self.submitted_now,
                "rounds_this_invocation": self.rounds_now}  # fmt: skip

    def stopped_reason(self) -> str | None:
        reason = super().stopped_reason()
        if reason is None and (out := self.store.in_flight()):
            jobs = ", ".join(f"{p.job} {p.state}" for p in out[:4])
            more = f" and {len(out) - 4} more" if len(out) > 4 else ""
            reason = f"batch: {len(out)} jobs in flight ({jobs}{more}); rerun to collect"
        return reason

    # -- one request ---------------------------------------------------------------------------

    async def call(
        self, client: Limited, messages: list[dict[str, str]], *, key: str, **kwargs: Any
    ) -> tuple[Any, bool]:
        """The answer from the cache or a collected job; else the request is deferred to the
        next round and `Pending` raised (the record waits for it)."""
        from rationale.teacher import Completion

        latest = self.store.latest(key)
        cached = self.cache.get(key)
        if cached is not None:
            mine = latest is not None and latest[0].collected
            self.tally.cache_hits += 0 if mine else 1
            attempts = self.store.attempts(key) if mine else 0
            return Completion(**cached, attempts=max(attempts, 1) if mine else 0), not mine
        if latest is None:
            return self._defer(client, messages, key, kwargs)
        part, custom_id = latest
        if not part.collected:
            raise Pending  # in flight, or its job is being looked for
        body, category, message = self.store.result(part, custom_id)
        attempts = self.store.attempts(key)
        error: TeacherError
        if body is not None:
            try:
                completion = client.client.parse(body, kwargs.get("response_model"))
            except TeacherError as exc:
                if key not in self._invalid:  # billed (charged when collected), not valid
                    self._invalid.add(key)
                    self.tally.invalid_paid += 1
                error = exc
            else:
                p, c = completion.prompt_tokens or 0, completion.completion_tokens or 0
                completion = replace(
                    completion, cost_usd=self._cost(part.model, p, c), attempts=max(attempts, 1)
                )
                self.cache.put(key, completion.to_cache())
                return completion, False
        else:
            cls = FatalTeacherError if category in FATAL else TeacherError
            error = cls(message or f"the provider's job {part.job} failed it", category=category)
        if part.epoch != self.store.epoch:  # failed before --retry-failed: a fresh start
            return self._defer(client, messages, key, kwargs)
        if isinstance(error, FatalTeacherError):
            self.fatal = self.fatal or error
            raise Pending
        if error.category in RESUBMIT and attempts < self.config.request_attempts:
            return self._defer(client, messages, key, kwargs)
        error.attempts = attempts
        raise error

    def _defer(self, client: Limited, messages: Any, key: str, kwargs: dict[str, Any]) -> Any:
        if not self.stopping():
            self.deferred.setdefault(key, (client, messages, kwargs))
        raise Pending

    def _cost(self, model: str, p: int, c: int) -> float | None:
        price = batch_price(model)
        return None if price is None else p * price[0] + c * price[1]

    # -- passes and rounds ---------------------------------------------------------------------

    async def drive(
        self,
        items: Iterator[Any],
        process: Callable[[Any], Any],
        *,
        todo: int,
        label: str,
        unit: str = "records",
        progress: bool = True,
        again: Callable[[], tuple[Iterator[Any], int]] | None = None,
    ) -> None:
        """Collect what came in, make a pass, submit what it deferred; with ``--wait``, wait
        for those jobs and go again until nothing is pending or out."""
        from rationale.rundir import ledger_entries

        try:
            self._charged = {e["batch"] for e in ledger_entries(self.run_dir.ledger)
                             if e.get("kind") == "batch"}  # fmt: skip
            # --retry-failed (an eval always asks its failed cases again): fresh attempts
            if getattr(self.config, "retry_failed", True) and self.store.parts:
                self.store.retry_failed()
            await self._settle()
            await self._collect(wait=False)
            while True:
                self.deferred = {}
                await super().drive(items, process, todo=todo, label=label, unit=unit,
                                    progress=progress)  # fmt: skip
                if self.deferred and not self.stopping():
                    await self._submit()
                if self.stopping() or not self.config.wait or not self.store.in_flight():
                    break
                await self._collect(wait=True)
                if self.stopping() or again is None:
                    break
                items, todo = again()
        finally:
            for provider in self._providers.values():
                if hasattr(provider, "aclose"):
                    await provider.aclose()
            self.store.close()
        if out := self.store.in_flight():
            print(
                f"{label}: {len(out)} batch jobs in flight; they end within 24 h: rerun the same "
                "command to collect them (--wait waits here; `rationale batches RUN_DIR` shows "
                "them)",
                file=sys.stderr,
            )

    async def _settle(self) -> None:
        """Parts prepared but never recorded as submitted (a kill in between): found again at
        the provider by their tag, or marked abandoned when the provider never made them."""
        known = {p.job for p in self.store.parts.values() if p.job}
        for part in self.store.unsettled():
            provider = self._provider_of(part)
            try:
                found = await provider.find(part.tag, part.prepared_at, known, size=part.requests)
            except TeacherError as exc:
                raise RationaleError(
                    f"cannot look up batch part {part.part} at {provider.name} ({exc}); it may "
                    "exist, so nothing is sent again until it is found: rerun when the provider "
                    "answers"
                ) from None
            if found:
                self.store.submitted(part, found[0], recovered=True)
                known.add(found[0].id)
                print(f"batch: found job {found[0].id} of part {part.part} again (a stop came "
                      "between its submission and its record)", file=sys.stderr)  # fmt: skip
            else:
                self.store.abandon(part, "not at the provider: it was never made")

    async def _submit(self) -> None:
        """The deferred requests as new jobs (`rationale.batch_submit`)."""
        await submit_round(self)

    async def _collect(self, *, wait: bool) -> None:
        """Read every job in flight; store the results of the ones that ended. With ``wait``,
        poll every ``--poll-interval`` seconds until none is left in flight."""
        while parts := self.store.in_flight():
            line = []
            for part in parts:
                provider = self._provider_of(part)
                try:
                    state = await provider.retrieve(part.job)
                    self.store.note_state(part, state.state)
                    if state.ended:
                        await self._take(part, provider, state)
                except FatalTeacherError as exc:
                    self.fatal = self.fatal or exc
                    return
                except TeacherError as exc:  # the provider is unreachable: try again later
                    line.append(f"{part.job} unreachable ({exc.category})")
                    continue
                line.append(f"{part.job} {state.state} {state.answered + state.errored}/"
                            f"{state.total}")  # fmt: skip
            print(f"batch: round {self.store.rounds()}: {', '.join(line)}", file=sys.stderr)
            if not wait or self.stopping() or not self.store.in_flight():
                return
            await asyncio.sleep(self.config.poll_interval)

    async def _take(self, part: Part, provider: Any, state: Any) -> None:
        """Store an ended job's results, charge them to the ledger once, mark it collected."""
        results = await provider.results(part.job)
        ids = {cid: kind for cid, _, kind in self.store.custom_ids(part.part)}
        if any(r.custom_id not in ids for r in results):
            self.store.abandon(part, f"job {part.job} holds requests this run never sent")
            return
        self.store.store_results(part, results)
        by_kind: dict[str, dict[str, Any]] = {}
        answered = 0
        for r in results:
            if r.body is None:
                continue
            answered += 1
            p, c = _usage(r.body)
            k = by_kind.setdefault(
                ids[r.custom_id],
                {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0},
            )
            cost = self._cost(part.model, p, c)
            k["requests"] += 1
            k["prompt_tokens"] += p
            k["completion_tokens"] += c
            k["cost_usd"] = None if cost is None or k["cost_usd"] is None else k["cost_usd"] + cost
        total = {
            f: sum(k[f] for k in by_kind.values()) for f in ("prompt_tokens", "completion_tokens")
        }
        costs = [k["cost_usd"] for k in by_kind.values()]
        cost_usd = None if None in costs else sum(costs)
        if part.job not in self._charged:
            self.run_dir.charge({
                "kind": "batch", "batch": part.job, "part": part.part, "requests": part.requests,
                "ok": answered, **total, "cost_usd": cost_usd, "by_kind": by_kind,
            })  # fmt: skip
            self._charged.add(part.job)
            self._tally(part, answered, total, cost_usd, by_kind)
        if part.part in self._reserved:
            self.budget.settle(self._reserved.pop(part.part), cost_usd or 0.0)
        self.store.collected(part, state.state, {
            "answered": answered, "errored": part.requests - answered,
            "prompt_tokens": total["prompt_tokens"],
            "completion_tokens": total["completion_tokens"], "cost_usd": cost_usd,
            "error": state.error,
        })  # fmt: skip

    def _tally(
        self, part: Part, answered: int, total: dict[str, int], cost: Any, by_kind: Any
    ) -> None:
        t = self.tally
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
