"""The engine every job that calls models drives (synth, filter; eval next).

It owns what is the same for all of them: a bounded queue from a producer to ``--concurrency``
workers, the rate limits, the one retry layer, the response cache, the budget and the ledger,
progress, and the way a run stops. A job gives it prepared items and an async ``process(item)``
that returns True when the item reached its final state (False: left pending for a rerun).

How a run stops, and what is kept:

- the budget (``--max-cost``, the run folder's cap: earlier invocations' bills count) or a fatal
  fault (bad key, unknown model): no new request starts; requests in flight finish; their
  records are filed or left pending;
- an unexpected error in one worker or in the producer: the same, and the error is raised after
  every answer already paid for is in the cache, in the ledger, and its record's line is flushed;
- a kill: whole lines only are on disk; answers already cached are not paid for again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from rationale.accounting import Budget, Tally, Usage, worst_case_cost, worst_prompt_tokens
from rationale.errors import FatalTeacherError, TeacherError
from rationale.progress import Progress
from rationale.rundir import RunDir

TPM_WINDOW_S = 60.0  # the --tpm bucket's period (tests shorten it)

#: Where a shard of a ``--ray`` invocation takes its budget and rate limits from
#: (`rationale.shared_limits.SharedLimits`, set in the shard's process by `rationale.scale`);
#: None: this process has its own.
shared_limits: Any = None


class Pending(Exception):
    """A record left for a rerun: the run is stopping (budget, fatal fault or an error)."""


class _Stopping(Exception):
    """Raised before a request (or a retry) that must not start; never a `TeacherError`, so the
    retry layer passes it through at once."""


class Limited:
    """A model client each of whose requests (every retry too) passes the run's rate limits,
    reserves its worst case from the budget, and is charged to the ledger and the tally.

    ``--rpm`` and ``--tpm`` are the provider's limits, shared by the teacher and the verifier.
    """

    def __init__(self, client: Any, engine: Engine, kind: str) -> None:
        self.client, self.engine, self.kind = client, engine, kind
        self.model_id = client.model_id
        self.endpoint_url = getattr(client, "endpoint_url", None)

    async def attempt(self, messages: list[dict[str, str]], **kwargs: Any) -> Any:
        engine = self.engine
        if engine.stopping():
            raise _Stopping
        max_tokens = kwargs.get("max_tokens", 0)
        if engine.rpm is not None:
            await engine.rpm.acquire()
        if engine.tpm is not None:  # our count: tokenizing every prompt costs the fast path
            need = engine.prompt_tokens(messages) + max_tokens
            await engine.tpm.acquire(min(need, engine.config.tpm or need))
        capped, held, worst = engine.budget.limit is not None, False, 0.0
        if capped:  # the most it can bill: a token per byte of what is sent, all of max_tokens
            prompt = worst_prompt_tokens(self._body(messages, kwargs))
            worst = worst_case_cost(self.price, prompt, max_tokens) or 0.0
            # what requests in flight hold comes back when they settle: the run stops on the
            # cap only when nothing is held, so a rerun with the same cap has no room
            while not engine.stopping() and not (held := await engine.budget.acquire(worst)):
                pass
        if engine.stopping():
            if held:
                engine.budget.settle(worst, 0.0)
            raise _Stopping
        sent = uuid.uuid4().hex[:16] if capped else None
        if sent:  # on disk before it goes out: a kill while it is out cannot hide what it bills
            engine.run_dir.charge({"sent": sent, "kind": self.kind, "reserved_usd": worst})
        usage: Usage | None = None
        ok = answered = billed = False
        try:
            completion = await self.client.attempt(messages, **kwargs)
            usage, ok, answered = Usage.of(completion, self.price), True, True
            return completion
        except TeacherError as exc:
            # an answer that was billed but did not validate carries its usage; a request that
            # timed out was still answered (and billed) by the provider
            usage = Usage.of(getattr(exc, "usage", None), self.price)
            billed = exc.category == "timeout"
            raise
        except BaseException:  # cancelled while it was out (SIGTERM, Ctrl-C): billed all the same
            billed = True
            raise
        finally:
            # billed without usage (no usage block, or never seen): its whole reservation
            unknown = usage is None and (answered or billed)
            cost = (usage.cost_usd or 0.0) if usage is not None else (worst if unknown else 0.0)
            engine.tally.charge(self.kind, usage, ok=ok, unknown=unknown)
            entry = usage.ledger_entry(self.kind, ok=ok) if usage else {
                "kind": self.kind, "requests": 1, "ok": ok,
                **({"usage_unknown": True, "reserved_usd": worst} if unknown else {}),
            }  # fmt: skip
            if sent:
                entry["id"] = sent
            engine.run_dir.charge(entry)  # first: what was billed is on disk before a kill
            if capped:
                engine.budget.settle(worst, cost)

    def price(self, p: int, c: int) -> float | None:
        return self.client.price(p, c)  # type: ignore[no-any-return]

    def _body(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> Any:
        """What the client sends for ``messages`` (its schema message or tools included), or
        the messages where the client cannot tell."""
        request_body = getattr(self.client, "request_body", None)
        return messages if request_body is None else request_body(messages, **kwargs)

    async def aclose(self) -> None:
        await self.client.aclose()


class Engine:
    """Queue, workers, limits, retries, cache, budget, progress and stopping of one run."""

    def __init__(self, config: Any, run_dir: RunDir, *, retry_policy: Any = None) -> None:
        from rationale.teacher import RetryPolicy

        shared = shared_limits

        self.config = config
        self.run_dir = run_dir
        self.tally = Tally()
        # one budget and rate limits for every shard of a --ray invocation (`shared_limits`)
        self.shared = shared
        scope = str(getattr(run_dir, "path", ""))  # which shard: its folder
        self.budget: Any = (Budget(config.max_cost) if shared is None
                            else shared.budget(config.max_cost, scope))  # fmt: skip
        self.policy = retry_policy or RetryPolicy(
            max_attempts=config.request_attempts, backoff=config.backoff
        )
        self.fatal: FatalTeacherError | None = None
        self.error: BaseException | None = None  # the first unexpected error
        self.error_traceback = ""
        self.cache: Any = None
        self.rpm: Any = None
        self.tpm: Any = None
        self._limited: list[Limited] = []
        self._resumed = False

    def limited(self, client: Any, kind: str) -> Limited:
        limited = Limited(client, self, kind)
        self._limited.append(limited)
        return limited

    def resume_budget(self) -> None:
        """Once, under the folder's lock, before the first request: ``--max-cost`` caps the run
        folder, so what earlier invocations were billed counts."""
        from rationale.rundir import ledger_billed

        ledger = getattr(self.run_dir, "ledger", None)  # a library call keeps no ledger file
        if self._resumed or ledger is None:
            return
        self._resumed = True
        self.budget.resume(ledger_billed(ledger), self.jobs_held())

    def jobs_held(self) -> float:
        """The worst case of what jobs earlier invocations left out may still bill (the batch
        engine's), counted in the same step as the ledger."""
        return 0.0

    def check(self) -> None:
        """Before the run folder is touched (the batch engine checks its models here)."""

    def stopping(self) -> bool:
        return self.budget.exhausted or self.fatal is not None or self.error is not None

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        from rationale.prompts import count_tokens

        # 4 tokens of chat framing per message, a common provider overhead.
        return sum(count_tokens(m["content"]) + 4 for m in messages)

    async def call(
        self, client: Limited, messages: list[dict[str, str]], *, key: str, **kwargs: Any
    ) -> tuple[Any, bool]:
        """One model answer, from the cache or paid for: (completion, cached).

        Raises `Pending` when the run is stopping (the record stays pending; whatever was paid
        for is in the cache), `TeacherError` after retries.
        """
        from rationale.teacher import Completion, call_with_retries

        cached = self.cache.get(key)
        if cached is not None:
            self.tally.cache_hits += 1
            return Completion(**cached, attempts=0), True
        if self.stopping():
            raise Pending
        try:
            completion = await call_with_retries(
                client, messages, self.policy, sleep=self._backoff, **kwargs
            )
        except _Stopping:
            raise Pending from None
        except FatalTeacherError as exc:
            self.fatal = self.fatal or exc
            raise Pending from None
        self.cache.put(key, completion.to_cache())
        return completion, False

    async def _backoff(self, seconds: float) -> None:
        """The wait between two attempts, cut short when the run is stopping (the next
        attempt then raises `_Stopping`): a long Retry-After never holds up a shutdown."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not self.stopping() and (left := end - loop.time()) > 0:
            await asyncio.sleep(min(left, 0.05))

    def _limiters(self) -> None:
        from aiolimiter import AsyncLimiter

        # Requests are spread over the minute (a burst of at most rpm/60, or 1, at a time), since
        # many providers enforce their limit per second; tokens use the whole minute as bucket,
        # since one request may need more than a second's share.
        rpm = self.config.rpm
        if self.shared is not None:
            self.rpm, self.tpm = self.shared.limiters(rpm, self.config.tpm)
            return
        self.rpm = AsyncLimiter(max(1.0, rpm / 60), max(1.0, rpm / 60) * 60 / rpm) if rpm else None
        tpm = self.config.tpm
        self.tpm = AsyncLimiter(tpm, TPM_WINDOW_S) if tpm else None

    async def drive(
        self,
        items: Iterator[Any],
        process: Callable[[Any], Awaitable[bool]],
        *,
        todo: int,
        label: str,
        unit: str = "records",
        progress: bool = True,
        again: Any = None,
    ) -> None:
        """Feed ``items`` (prepared lazily, in the loop's idle moments) to the workers.
        (``again``, a fresh pass over what is left, is for engines that make several passes.)

        Returns when every item was processed or the run stopped; an unexpected error is in
        ``self.error`` (the caller finalises the run folder, then raises it).
        """
        from rationale.cache import ResponseCache

        self.resume_budget()
        self.cache = ResponseCache()
        self._limiters()
        bar = Progress(todo, label=label, unit=unit, show=progress)
        workers = min(self.config.concurrency, todo) or 1
        # Items stream through a bounded queue: a big run never holds its records.
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * workers)

        async def producer() -> None:
            try:
                while not self.stopping():
                    item = next(items, None)
                    if item is None:
                        break
                    await queue.put(item)
                    await asyncio.sleep(0)  # let answers in between two renders
            except Exception as exc:  # a template that cannot render a step, a bad line...
                self.fail(exc)
            finally:
                for _ in range(workers):
                    await queue.put(None)

        async def worker() -> None:
            while (item := await queue.get()) is not None:
                if self.stopping():
                    continue  # drain: the producer must never block on a full queue
                try:
                    if await process(item):
                        bar.update(self.tally)
                except Pending:
                    pass
                except Exception as exc:
                    self.fail(exc)

        finished = asyncio.Event()

        async def filer() -> None:
            # Writes the finished records' lines every few ms, between waves of answers.
            try:
                while not finished.is_set():
                    self.run_dir.flush()
                    await asyncio.sleep(0.005)
            except Exception as exc:  # a full disk: the workers stop, the error is raised
                self.fail(exc)
                await finished.wait()

        async def work() -> None:
            try:
                await asyncio.gather(producer(), *(worker() for _ in range(workers)))
            finally:
                finished.set()

        try:
            await asyncio.gather(work(), filer())
        finally:
            bar.close()
            self.run_dir.flush()
            self.cache.close()
            self.budget.close()

    def fail(self, exc: BaseException) -> None:
        """Record an unexpected error (the first one wins) with its traceback: the run stops
        the way the budget stops it."""
        import traceback

        if self.error is None:
            self.error = exc
            self.error_traceback = "".join(traceback.format_exception(exc))

    def stopped_reason(self) -> str | None:
        """Why the run stopped early, for run.json and the summary (one line); None if it
        did not."""
        if self.error is not None:
            first = (str(self.error).strip().splitlines() or [""])[0]
            return f"error: {type(self.error).__name__}: {first}"
        if self.fatal is not None:
            return f"fatal: {self.fatal}"
        if self.budget.exhausted:
            return (
                f"budget: ${self.budget.spent:.6f} billed to this run folder over every "
                f"invocation; the next request could pass --max-cost ${self.config.max_cost}: "
                "rerun with a higher --max-cost to continue"
            )
        return None
