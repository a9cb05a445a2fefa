"""One ``--max-cost``, ``--rpm`` and ``--tpm`` for every shard of a ``--ray`` invocation.

The shards run in separate processes (on separate machines), so the budget and the rate limits
cannot live in any one of them: `Limits` holds them in one place (a Ray actor, made by
`rationale.scale`), and each shard's engine talks to it through `RemoteBudget` and
`RemoteLimiter`, which have the interface of `rationale.accounting.Budget` and of aiolimiter's
``AsyncLimiter``. An actor that reserves and settles each request, rather than a split of the cap
into N parts that hands unspent money back, because a split either idles a shard whose part is
spent while another's is unused, or has to move money between shards as they go: the actor does
the same with one call per request, and the cap is then exactly the unsharded run's.

The cap is the run folder's over every invocation (`rationale.accounting`): the driver counts
what every shard folder was billed before any shard starts (a shard may start only when another
has finished), and each shard's engine, when it starts, replaces that with its own reading. When
Ray retries a shard task whose worker died, the new engine of that shard replaces the old one,
whose bill stays counted until the new one has read the shard's folder: its ledger holds every
request the old one settled, and, at its worst case, every request it had out at the kill (a
capped request's line is written before it is sent: the provider bills a request whose client
went away). A worker that dies for good leaves holds that nobody settles: once they have been
quiet for ``stale_after`` seconds (longer than any request may take) they count as spent and
stop making the other shards wait.

``--concurrency`` stays per process: each shard has its own N workers (``--shards S`` makes up to
S x N requests at once); the provider's limits, ``--rpm`` and ``--tpm``, hold across all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Limits", "RemoteBudget", "RemoteLimiter", "SharedLimits", "shard_scope"]


@dataclass
class _Bucket:
    """A rate limit as aiolimiter's: ``capacity`` units per ``period`` seconds, in bursts of at
    most ``capacity``. Kept as the virtual time at which the bucket is empty again (GCRA), so
    each request is told how long to wait instead of being polled."""

    capacity: float
    period: float
    empty_at: float = 0.0

    def slot(self, amount: float, now: float) -> float:
        step = min(amount, self.capacity) * self.period / self.capacity
        start = max(self.empty_at, now)
        wait = max(0.0, start + step - self.period - now)
        self.empty_at = start + step
        return wait


@dataclass
class _Engine:
    """What one shard's engine has added to the budget."""

    scope: str
    billed: float = 0.0  # from its folder's ledger, and settled since
    held: float = 0.0  # worst cases of its requests in flight (and of its batch jobs out)
    preload: bool = False  # a reading of the shard's folder by someone else (see `preload`)
    seen: float = field(default_factory=time.monotonic)  # its last call
    stale: float = 0.0  # holds moved to ``abandoned`` when it went quiet (it may come back)


@dataclass
class Limits:
    """The budget and rate limits of one invocation's shards (the body of the Ray actor).

    ``stale_after``: seconds after its last call at which an engine's holds are taken for a dead
    worker's (a live one settles every request within its ``--timeout``); a request waiting for
    room stops waiting on them, and they stay spent (the provider may have billed them).
    """

    limit: float | None
    rpm: int | None = None
    tpm: int | None = None
    tpm_window: float = 60.0
    stale_after: float = 120.0
    abandoned: float = 0.0  # held by engines whose worker died: may have been billed
    exhausted: bool = False
    engines: dict[str, _Engine] = field(default_factory=dict)
    buckets: dict[str, _Bucket] = field(default_factory=dict)
    _changed: asyncio.Event | None = None  # set when a hold comes back (made in the loop)

    def __post_init__(self) -> None:
        if self.rpm:  # as `rationale.engine.Engine._limiters` builds them
            burst = max(1.0, self.rpm / 60)
            self.buckets["rpm"] = _Bucket(burst, burst * 60 / self.rpm)
        if self.tpm:
            self.buckets["tpm"] = _Bucket(float(self.tpm), self.tpm_window)

    def state(self) -> tuple[float, float, bool]:
        """(spent, reserved, exhausted) over every shard."""
        spent = sum(e.billed for e in self.engines.values()) + self.abandoned
        return spent, sum(e.held for e in self.engines.values()), self.exhausted

    def preload(self, scope: str, billed: float, held: float) -> None:
        """What a shard folder was billed before this invocation, and the worst case of its
        batch jobs still out, counted from the start: a shard that starts late (more shards
        than CPUs) must not find its money spent. Its engine's own reading replaces it."""
        self.engines[f"preload:{scope}"] = _Engine(scope, billed, held, preload=True)

    def open(self, engine: str, scope: str) -> None:
        """A shard's engine starts. An earlier engine of the same shard (a dead worker's) ends:
        what it was billed stays counted until the new engine has read the shard's folder, which
        also holds what the dead one had out (a request's line is in the ledger before it is
        sent, a job's in ``batches/`` before it is submitted)."""
        for key, old in list(self.engines.items()):
            if old.scope == scope and not old.preload:
                keep = self.engines.setdefault(f"preload:{scope}", _Engine(scope, preload=True))
                keep.billed += old.billed + old.held
                del self.engines[key]
        self.engines[engine] = _Engine(scope)

    def resume(self, engine: str, billed: float, held: float) -> tuple[float, float, bool]:
        """The engine's reading of its folder (its ledger, its batch jobs out), which replaces
        any other reading of it in the same step: the shard's bill is never missing between."""
        e = self._touch(engine)
        self.engines.pop(f"preload:{e.scope}", None)
        e.billed, e.held = e.billed + billed, e.held + held
        return self.state()

    def reserve(self, engine: str, worst: float, wait: bool) -> tuple[bool, bool]:
        """(reserved, exhausted): as `rationale.accounting.Budget.reserve`, over every shard;
        while waiting, the holds of engines gone quiet past ``stale_after`` do not count."""
        e = self._touch(engine)
        if self.exhausted:
            return False, True
        spent, reserved, _ = self.state()
        if self.limit is not None and spent + reserved + worst > self.limit:
            self.exhausted = not wait or self._live_holds() < 1e-12
            return False, self.exhausted
        e.held += worst
        return True, False

    async def reserve_wait(self, engine: str, worst: float, seconds: float) -> tuple[bool, bool]:
        """`reserve` that waits up to ``seconds`` for holds to come back (woken by `settle`);
        (False, False): still no room, ask again."""
        deadline = time.monotonic() + seconds
        while True:
            ok, exhausted = self.reserve(engine, worst, True)
            left = deadline - time.monotonic()
            if ok or exhausted or left <= 0:
                return ok, exhausted
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    def settle(self, engine: str, worst: float, actual: float) -> None:
        e = self.engines.get(engine)
        if e is None:  # replaced by a retry of its shard, which read what it billed
            return
        e.seen = time.monotonic()
        e.held, e.billed = e.held - worst, e.billed + actual
        if e.held < 0 and e.stale > 0:  # it was only slow: what went to abandoned comes back
            back = min(-e.held, e.stale)
            e.held, e.stale, self.abandoned = e.held + back, e.stale - back, self.abandoned - back
        if self._changed is not None:
            self._changed.set()

    def reopen(self) -> None:
        """Room came back (a batch job billed less than it held)."""
        self.exhausted = False

    def slot(self, which: str, amount: float) -> float:
        """Seconds to wait before sending ``amount`` (1 request, or its tokens)."""
        return self.buckets[which].slot(amount, time.monotonic())

    def _touch(self, engine: str) -> _Engine:
        e = self.engines[engine]
        e.seen = time.monotonic()
        return e

    def _live_holds(self) -> float:
        """What engines still alive hold; a quiet engine's holds move to ``abandoned``."""
        now = time.monotonic()
        for e in self.engines.values():
            if not e.preload and e.held > 0 and now - e.seen > self.stale_after:
                self.abandoned, e.stale, e.held = self.abandoned + e.held, e.stale + e.held, 0.0
        return sum(e.held for e in self.engines.values() if not e.preload)


class RemoteBudget:
    """`rationale.accounting.Budget` for one shard's engine, kept by the `Limits` actor. A
    request waits for room in the actor (woken when a hold comes back), not by polling it."""

    def __init__(self, actor: Any, limit: float | None, scope: str) -> None:
        self.actor, self.limit = actor, limit
        self.engine = uuid.uuid4().hex
        self._exhausted = False
        self._settles: list[Any] = []  # sent, not waited for (see `settle`)
        if limit is not None:  # only the rate limits are shared
            self._call("open", self.engine, shard_scope(scope))

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        self.close()  # an async actor keeps no order: the settles sent before go first
        return ray.get(getattr(self.actor, method).remote(*args))

    def close(self) -> None:
        """Wait for the settles sent (the engine's end, and before any call that reads the
        budget: a reserve the actor ran before them would see more held than there is)."""
        if self._settles:
            import ray

            ray.get(self._settles)
            self._settles.clear()

    @property
    def spent(self) -> float:
        return 0.0 if self.limit is None else float(self._call("state")[0])

    @property
    def reserved(self) -> float:
        return 0.0 if self.limit is None else float(self._call("state")[1])

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    @exhausted.setter
    def exhausted(self, value: bool) -> None:
        if not value and self.limit is not None:
            self._call("reopen")
        self._exhausted = value

    async def acquire(self, worst: float) -> bool:
        if self.limit is None:
            return True
        ok, self._exhausted = await self.actor.reserve_wait.remote(self.engine, worst, 2.0)
        return bool(ok)

    def reserve(self, worst: float, *, wait: bool = False) -> bool:
        if self.limit is None:
            return True
        ok, self._exhausted = self._call("reserve", self.engine, worst, wait)
        return bool(ok)

    def resume(self, billed: float, held: float = 0.0) -> None:
        if self.limit is not None:
            self._exhausted = self._call("resume", self.engine, billed, held)[2]

    def settle(self, worst: float, actual: float) -> None:
        """Sent, not waited for (a request's end must not wait on the actor); an online reserve
        the actor runs before it only sees more held, and waits."""
        if self.limit is None:
            return
        import ray

        self._settles.append(self.actor.settle.remote(self.engine, worst, actual))
        if len(self._settles) >= 64:  # keep only those not done yet
            _, self._settles = ray.wait(self._settles, num_returns=len(self._settles), timeout=0)


def shard_scope(folder: str | Path) -> str:
    """The key of a shard in `Limits`: its folder, resolved (the driver and the shard's engine
    name it alike)."""
    return str(Path(folder).resolve())


class RemoteLimiter:
    """aiolimiter's ``AsyncLimiter`` interface over one of the actor's buckets."""

    def __init__(self, actor: Any, which: str) -> None:
        self.actor, self.which = actor, which

    async def acquire(self, amount: float = 1) -> None:
        wait = await self.actor.slot.remote(self.which, amount)
        if wait > 0:
            await asyncio.sleep(wait)


@dataclass(frozen=True)
class SharedLimits:
    """What a shard's engine takes its budget and rate limits from (set in the shard's
    process by `rationale.scale`: `rationale.engine.shared_limits`)."""

    actor: Any

    def budget(self, limit: float | None, scope: str) -> RemoteBudget:
        return RemoteBudget(self.actor, limit, scope)

    def limiters(self, rpm: int | None, tpm: int | None) -> tuple[Any, Any]:
        return (RemoteLimiter(self.actor, "rpm") if rpm else None,
                RemoteLimiter(self.actor, "tpm") if tpm else None)  # fmt: skip
