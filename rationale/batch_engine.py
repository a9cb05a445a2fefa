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
from pathlib import Path
from typing import Any

from rationale.batch_collect import collect
from rationale.batch_providers import batch_target
from rationale.batch_store import BatchStore, Part
from rationale.batch_submit import submit_round
from rationale.batch_usage import answer_cost
from rationale.engine import Engine, Limited, Pending
from rationale.errors import FatalTeacherError, RationaleError, TeacherError, redact
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
        if out and not getattr(
            config, "dry_run", False
        ):  # online, their requests would be sent (and paid for) a second time
            raise RationaleError(
                f"{run_dir.path} has {len(out)} batch jobs not collected yet; continue it with "
                f"--batch (--wait to finish here), or cancel them first with `rationale batches "
                f"{run_dir.path} --cancel` and collect what they answered with --batch"
            )
        return CollectedFirst(config, run_dir, store, retry_policy=retry_policy)
    return Engine(config, run_dir, retry_policy=retry_policy)


def jobs_out(store: BatchStore, ledger: Path) -> list[Part]:
    """The parts of a run folder whose jobs may still bill: in flight, or made but not recorded,
    and not charged to the ledger yet (a kill can write a job's ledger line before `collected`)."""
    from rationale.rundir import ledger_entries

    charged = {e["batch"] for e in ledger_entries(ledger) if e.get("kind") == "batch"}
    return [p for p in store.in_flight() + store.unsettled() if p.job not in charged]


def held_by_jobs(folder: Path) -> float:
    """The worst case of what a run folder's jobs still out may bill (`rationale.scale` counts
    it for a shard before the shard starts)."""
    if not (folder / "batches" / "jobs.jsonl").exists():
        return 0.0
    out = jobs_out(BatchStore(folder / "batches"), folder / "ledger.jsonl")
    return sum(p.reserved for p in out)


def stored_answer(
    store: BatchStore, key: str, found: tuple[Part, str], client: Any, kwargs: dict[str, Any]
) -> tuple[Any, TeacherError | None]:
    """(completion, None) from a collected job's answer, parsed by the online client's own code
    and priced at the batch price; or (None, the error the job gave or the parser raised)."""
    part, custom_id = found
    body, category, message = store.result(part, custom_id)
    if body is None:
        cls = FatalTeacherError if category in FATAL else TeacherError
        return None, cls(message or f"job {part.job} failed it", category=category)
    try:
        completion = client.parse(body, kwargs.get("response_model"))
    except TeacherError as exc:
        return None, exc
    cost = answer_cost(part.model, body)  # cached prompt tokens at the cached price
    attempts = max(store.attempts(key), 1)
    return replace(completion, cost_usd=cost, attempts=attempts), None


class CollectedFirst(Engine):
    """The online engine on a run folder with batch history: an answer a collected job holds
    is used (and cached) before anything is sent, so going back online never pays for it twice
    (a batch pass that stopped early leaves answers its records never took)."""

    def __init__(self, config: Any, run_dir: Any, batches: BatchStore, **kwargs: Any) -> None:
        super().__init__(config, run_dir, **kwargs)
        self.batches = batches

    async def call(
        self, client: Limited, messages: list[dict[str, str]], *, key: str, **kwargs: Any
    ) -> tuple[Any, bool]:
        found = self.batches.latest(key)
        if found is not None and found[0].collected and self.cache.get(key) is None:
            completion, _ = stored_answer(self.batches, key, found, client.client, kwargs)
            if completion is not None:
                self.cache.put(key, completion.to_cache())
                return completion, False
        return await super().call(client, messages, key=key, **kwargs)

    async def drive(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().drive(*args, **kwargs)
        finally:
            self.batches.close()


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
        self._collected_now: set[str] = set()  # parts collected by this invocation
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

    def jobs_held(self) -> float:
        """The worst case of the jobs earlier invocations left out: held until they are
        collected (a rerun must not spend what they may still bill)."""
        held = 0.0
        for part in jobs_out(self.store, self.run_dir.ledger):
            if part.part not in self._reserved:
                self._reserved[part.part] = part.reserved
                held += part.reserved
        return held

    def release(self, part: Part) -> None:
        """A part that will never bill (never made, refused): its hold goes back."""
        if part.part in self._reserved:
            self.budget.settle(self._reserved.pop(part.part), 0.0)

    def stopping(self) -> bool:
        """Only a fatal fault or an error stop a pass: ``--max-cost`` stops what is submitted
        (`rationale.batch_submit`), never the filing of answers already paid for."""
        return self.fatal is not None or self.error is not None

    def summary(self) -> dict[str, Any]:
        return {**self.store.summary(), "requests_submitted_this_invocation": self.submitted_now,
                "rounds_this_invocation": self.rounds_now}  # fmt: skip

    def stopped_reason(self) -> str | None:
        reason = super().stopped_reason()
        if reason is None and (out := self.store.in_flight() + self.store.unsettled()):
            jobs = ", ".join(f"{p.job or p.part} {p.state}" for p in out[:4])
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
        part = latest[0]
        if not part.collected:
            raise Pending  # in flight, or its job is being looked for
        completion, error = stored_answer(self.store, key, latest, client.client, kwargs)
        if completion is not None:
            self.cache.put(key, completion.to_cache())
            return completion, False
        assert error is not None
        if error.category == "invalid_output" and key not in self._invalid:
            self._invalid.add(key)  # billed (charged when its job was collected), not valid
            self.tally.invalid_paid += 1
        if self.store.failed_before(key, part):  # --retry-failed (an eval's rerun): anew
            return self._defer(client, messages, key, kwargs)
        attempts = self.store.attempts(key)
        fatal = isinstance(error, FatalTeacherError)
        if fatal and part.part in self._collected_now:
            self.fatal = self.fatal or error  # stop: every other request would fail alike
            raise Pending
        # a fatal fault an earlier invocation stopped on may be fixed now: sent again
        if (fatal or error.category in RESUBMIT) and attempts < self.config.request_attempts:
            return self._defer(client, messages, key, kwargs)
        error.attempts = attempts
        self.store.mark_failed(key, part)
        raise error

    def _defer(self, client: Limited, messages: Any, key: str, kwargs: dict[str, Any]) -> Any:
        if not self.stopping():
            self.deferred.setdefault(key, (client, messages, kwargs))
        raise Pending

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
            self.resume_budget()
            await self._settle()
            if not self.stopping():
                await self._collect(wait=False)
            while not self.stopping():
                self.deferred = {}
                await super().drive(items, process, todo=todo, label=label, unit=unit,
                                    progress=progress)  # fmt: skip
                if self.deferred and not self.stopping():
                    await self._submit()
                out = self.store.in_flight() or self.store.unsettled()
                if self.stopping() or not self.config.wait or not out:
                    break
                await self._wait()
                if self.stopping() or again is None:
                    break
                items, todo = again()
        finally:
            for provider in self._providers.values():
                if hasattr(provider, "aclose"):
                    await provider.aclose()
            self.store.close()
        if out := self.store.in_flight() + self.store.unsettled():
            print(
                f"{label}: {len(out)} batch jobs in flight; they end within 24 h: rerun the same "
                "command to collect them (--wait waits here; `rationale batches RUN_DIR` shows "
                "them)",
                file=sys.stderr,
            )

    async def _wait(self) -> None:
        """--wait: until no job is out and every part is known to be made or not."""
        while not self.stopping():
            if self.store.unsettled():
                await self._settle()
            await self._collect(wait=True)
            if not self.store.unsettled() or self.stopping():
                return
            await asyncio.sleep(self.config.poll_interval)

    async def _settle(self) -> None:
        """Parts prepared but never recorded as submitted (a kill in between): found again at
        the provider, or marked abandoned when the provider never made them. An OpenAI job is
        known by the tag in its metadata; an Anthropic job (no metadata) only by the tag that
        prefixes its custom ids, which its results show once it ended: until every job made
        since then has ended and been read, the part waits and nothing is sent again."""
        known = {p.job for p in self.store.parts.values() if p.job}
        for part in self.store.unsettled():
            provider = self._provider_of(part)
            try:
                found = await provider.find(part.tag, part.prepared_at, known, size=part.requests)
                job, waiting = await self._ours(provider, part, found)
            except TeacherError as exc:
                self.fail(RationaleError(
                    f"cannot look up batch part {part.part} at {provider.name} ({exc}); it may "
                    "exist, so nothing is sent again until it is found: rerun when the provider "
                    f"answers (or, if it never made it, `rationale batches RUN_DIR --forget "
                    f"{part.part}`)"
                ))  # fmt: skip
                return
            if job is not None:
                self.store.submitted(part, job, recovered=True)
                known.add(job.id)
                print(f"batch: found job {job.id} of part {part.part} again (a stop came "
                      "between its submission and its record)", file=sys.stderr)  # fmt: skip
            elif waiting:
                print(f"batch: part {part.part}: {waiting} jobs made since it was prepared may be "
                      "it; it waits until they end to tell (its requests are not sent again "
                      "meanwhile)", file=sys.stderr)  # fmt: skip
            else:
                self.store.abandon(part, "not at the provider: it was never made")
                self.release(part)

    async def _ours(self, provider: Any, part: Part, found: list[Any]) -> tuple[Any, int]:
        """The job of ``part`` among ``found`` (or None), and how many could still be it."""
        for job in found:
            if job.tag == part.tag:
                return job, 0
        waiting = 0
        for job in found:
            if job.tag is not None:
                continue  # another run's (its own tag)
            if not job.ended:
                job = await provider.retrieve(job.id)  # a list's states may be behind
            if not job.ended:
                waiting += 1
                continue
            results = await provider.results(job.id)
            if results and all(r.custom_id.startswith(f"{part.tag}-") for r in results):
                return job, 0
        return None, waiting

    async def _submit(self) -> None:
        """The deferred requests as new jobs (`rationale.batch_submit`)."""
        await submit_round(self)

    async def _collect(self, *, wait: bool) -> None:
        """Read the jobs in flight, collect the ended (`rationale.batch_collect`)."""
        await collect(self, wait=wait)
