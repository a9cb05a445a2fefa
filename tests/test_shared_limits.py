"""`rationale.shared_limits.Limits`, the one budget and rate limits of a ``--ray`` invocation's
shards, without Ray (test_scale.py runs it as the actor it is)."""

from __future__ import annotations

import pytest

from rationale.shared_limits import Limits, _Bucket


def test_a_tpm_bucket_lets_a_minutes_tokens_through_then_paces_them() -> None:
    bucket = _Bucket(1000.0, 60.0)
    assert bucket.slot(600, now=100.0) == 0.0
    assert bucket.slot(400, now=100.0) == 0.0  # the whole minute's tokens at once
    assert bucket.slot(200, now=100.0) == pytest.approx(12.0)  # then 1000 a minute
    assert bucket.slot(5000, now=200.0) == 0.0  # a request over the limit waits for it all


def test_an_rpm_bucket_is_the_engines_limiter() -> None:
    limits = Limits(None, rpm=120)  # a burst of 2, then 2 a second
    bucket = limits.buckets["rpm"]
    waits = [bucket.slot(1, now=0.0) for _ in range(6)]
    assert waits == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5, 2.0])


def test_shards_share_the_cap_and_a_dead_workers_holds_stay_spent() -> None:
    limits = Limits(1.0)
    limits.open("a1", "shard-a")
    limits.open("b1", "shard-b")
    limits.resume("a1", 0.2, 0.0)  # what shard a's ledger holds
    assert limits.reserve("a1", 0.3, False) == (True, False)
    assert limits.reserve("b1", 0.6, True) == (False, False)  # a request of a is in flight: wait
    limits.settle("a1", 0.3, 0.1)
    assert limits.reserve("b1", 0.6, True) == (True, False)
    assert limits.state()[:2] == pytest.approx((0.3, 0.6))
    # shard b's worker dies with its request in flight; Ray's retry opens a new engine for b,
    # which reads b's ledger (nothing settled there); the held 0.6 may have been billed
    limits.open("b2", "shard-b")
    assert limits.state()[:2] == pytest.approx((0.9, 0.0))
    assert limits.reserve("a1", 0.2, True) == (False, True)  # nothing in flight: exhausted
    limits.reopen()
    assert limits.reserve("b2", 0.1, False) == (True, False)


def test_the_drivers_reading_of_a_shard_holds_until_the_shard_has_read_its_own() -> None:
    limits = Limits(0.004)
    limits.preload("shard-a", 0.0015, 0.0)
    limits.preload("shard-b", 0.002, 0.0)
    limits.open("a1", "shard-a")  # shard a starts: the driver's reading stays until a's own
    assert limits.state()[0] == pytest.approx(0.0035)
    limits.resume("a1", 0.0015, 0.0)
    assert limits.state()[0] == pytest.approx(0.0035)
    assert limits.reserve("a1", 0.001, True) == (False, True)  # b's bill counts: no room


def test_a_retried_shards_bill_stays_counted_until_its_new_engine_has_read_it() -> None:
    """A retried shard's engine starts long before it reads its ledger: what the dead engine
    was billed stays counted in between, and is not counted twice after."""
    limits = Limits(1.0)
    limits.open("b1", "shard-b")
    limits.resume("b1", 0.8, 0.0)
    limits.open("b2", "shard-b")  # Ray's retry of shard b
    limits.open("a1", "shard-a")
    assert limits.reserve("a1", 0.3, False) == (False, True)  # b's $0.8 still counts
    limits.reopen()
    limits.resume("b2", 0.8, 0.0)  # b's ledger, read again
    assert limits.state()[:2] == pytest.approx((0.8, 0.0))


def test_nothing_is_held_once_the_budget_is_exhausted() -> None:
    limits = Limits(1.0)
    limits.open("a", "shard-a")
    assert limits.reserve("a", 2.0, False) == (False, True)
    assert limits.reserve("a", 0.1, True) == (False, True)
    assert limits.state()[1] == 0.0  # no hold left behind by a stopping shard


def test_a_waiting_request_is_woken_when_a_hold_comes_back() -> None:
    import asyncio
    import time

    async def scenario() -> tuple[tuple[bool, bool], float]:
        limits = Limits(1.0)
        limits.open("a", "shard-a")
        limits.open("b", "shard-b")
        assert limits.reserve("a", 0.6, True) == (True, False)
        waiting = asyncio.create_task(limits.reserve_wait("b", 0.6, 5.0))
        await asyncio.sleep(0.05)
        start = time.monotonic()
        limits.settle("a", 0.6, 0.1)
        return await waiting, time.monotonic() - start

    got, took = asyncio.run(scenario())
    assert got == (True, False) and took < 0.3


def test_a_dead_workers_holds_do_not_make_the_others_wait_forever() -> None:
    """Its retries spent, a dead worker's engine never comes back: once its holds are quiet
    past ``stale_after`` a request that does not fit stops the run instead of waiting, and
    those holds stay spent."""
    import asyncio

    limits = Limits(1.0, stale_after=0.1)
    limits.open("dead", "shard-a")
    limits.open("b", "shard-b")
    assert limits.reserve("dead", 0.7, True) == (True, False)  # in flight when it was killed

    async def scenario() -> tuple[tuple[bool, bool], tuple[bool, bool]]:
        early = await limits.reserve_wait("b", 0.5, 0.05)  # the holds may be live: it waits
        return early, await limits.reserve_wait("b", 0.5, 5.0)

    assert asyncio.run(scenario()) == ((False, False), (False, True))
    assert limits.state()[:2] == pytest.approx((0.7, 0.0))
