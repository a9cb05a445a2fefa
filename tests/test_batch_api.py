"""``--batch`` against a fake as strict as the real batch APIs (issue 21.6, and 21.5's batch half):
list pages, cached input tokens, custom ids and file limits, OpenAI's enqueued-token limit, an
archived Anthropic batch, account-wide errors, a slow cancel, results that are not ours, and a
kill of a ``--wait`` run (each request billed once by the server, over the kill and the rerun).

The formats follow the installed SDK types (openai.types.Batch, anthropic's MessageBatch and
its results); tests/batch_server.py says what the fake checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from batch_server import BatchServer
from openai_server import status
from test_batch import (
    ANTHROPIC,
    OPENAI,
    _cli_until_killed,
    batch,
    ledger_cost,
    records,
    teacher_for,
)
from test_cli_runs import RATIONALE
from test_filter import records_file, responder

from rationale import RationaleError
from rationale.batch_limits import CUSTOM_ID
from rationale.errors import TeacherError
from rationale.pricing import batch_cache_price, batch_price
from rationale.rundir import read_run_json

ONE_ROUND = {"max_attempts": 1, "verifier": "none"}  # one request a record: one round


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-batch")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-batch")
    with BatchServer(responder=responder) as s:
        yield s


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging) when the code under test loops."""

    def alarm(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: it loops")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def provider(server: BatchServer, teacher: str):
    from rationale.batch_providers import provider_for

    return provider_for(teacher, server.url if teacher == OPENAI else server.root)


def lines_of(server: BatchServer, teacher: str, ids: list[str], models: list[str] | None = None):
    p = provider(server, teacher)
    wire = teacher.split("/", 1)[1]
    return p, [
        p.line(cid, {"model": (models or [wire] * len(ids))[i], "max_tokens": 10,
                     "messages": [{"role": "user", "content": f"Hi {i}"}]})
        for i, cid in enumerate(ids)
    ]  # fmt: skip


def submit(p, lines: list[dict], times: int = 1) -> list:
    """Submit ``lines`` as ``times`` jobs (one event loop: the SDK clients keep theirs)."""

    async def go() -> list:
        try:
            return [await p.submit(lines, "t") for _ in range(times)]
        finally:
            if hasattr(p, "aclose"):
                await p.aclose()

    return asyncio.run(go())


def jobs_file(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "batches/jobs.jsonl").read_text().splitlines()]


def ledger(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "ledger.jsonl").read_text().splitlines()]


def server_cost(server: BatchServer, model: str) -> float:
    """What the fake billed, at the batch price, cached prompt tokens at the cached price."""
    (p_in, p_out), (p_cached, _) = batch_price(model), batch_cache_price(model)
    total = 0.0
    for bill in server.billed_jobs.values():
        plain = bill["prompt_tokens"] - bill["cached_tokens"]
        total += plain * p_in + bill["cached_tokens"] * p_cached
        total += bill["completion_tokens"] * p_out
    return total


# -- a. list pages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("teacher", "after"), [(OPENAI, "after"), (ANTHROPIC, "after_id")])
def test_the_fake_lists_jobs_a_page_at_a_time(server, teacher, after) -> None:
    """As both APIs list: newest first, ``limit`` (default 20), a cursor, has_more/last_id."""
    p, lines = lines_of(server, teacher, ["a-1"])
    submit(p, lines, 23)
    path = "/v1/batches" if teacher == OPENAI else "/v1/messages/batches"
    url = server.root + path
    first = httpx.get(url).json()
    assert len(first["data"]) == 20 and first["has_more"] is True
    assert first["first_id"] == first["data"][0]["id"]
    assert first["last_id"] == first["data"][-1]["id"]
    rest = httpx.get(url, params={"limit": 10, after: first["last_id"]}).json()
    assert len(rest["data"]) == 3 and rest["has_more"] is False
    ids = [j["id"] for j in first["data"] + rest["data"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 23
    assert httpx.get(url, params={"limit": 0}).status_code == 400


@pytest.mark.parametrize("teacher", [OPENAI, ANTHROPIC])
def test_a_job_older_than_the_first_page_is_found_again(
    tmp_path, server, monkeypatch, teacher
) -> None:
    """A kill between a job's creation and its record; other runs make jobs after it, so the
    lookup walks pages back to it (the provider's pages are short here: 2 jobs)."""
    _cli_until_killed(tmp_path, server, teacher, before=False)
    (ours,) = server.jobs
    monkeypatch.setenv("RATIONALE_HOME", str(tmp_path / "other_home"))
    p, lines = lines_of(server, teacher, ["zz-1"])
    submit(p, lines, 5)  # another run's jobs (other tags and sizes): two pages and more
    server.max_page = 2
    result = batch(tmp_path, server, teacher, wait=True)
    events = (tmp_path / "run/batches/jobs.jsonl").read_text()
    assert f'"job": "{ours}"' in events and '"recovered": true' in events
    assert result.pending == 0 and len(records(tmp_path / "run")) == 11


# -- b. cached input tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("teacher", [OPENAI, ANTHROPIC])
def test_cached_prompt_tokens_are_billed_at_the_cached_price(tmp_path, server, teacher) -> None:
    server.cached = lambda body: 40  # each prompt's first 40 tokens came from the cache
    result = batch(tmp_path, server, teacher, wait=True, **ONE_ROUND)
    assert result.pending == 0
    (line,) = ledger(tmp_path / "run")
    billed = server_cost(server, teacher)
    assert line["cost_usd"] == pytest.approx(billed, rel=1e-9), (line, server.billed_jobs)
    (bill,) = server.billed_jobs.values()
    assert line["prompt_tokens"] == bill["prompt_tokens"] and bill["cached_tokens"] == 11 * 40
    assert line["cached_prompt_tokens"] == 11 * 40
    run = read_run_json(tmp_path / "run")
    assert run["cost_usd"]["total"] == pytest.approx(billed, abs=1e-7)
    uncached = bill["prompt_tokens"] * batch_price(teacher)[0]
    assert billed < uncached + bill["completion_tokens"] * batch_price(teacher)[1]
    rec = json.loads((tmp_path / "run/rejected.jsonl").read_text().splitlines()[0]) if (
        tmp_path / "run/rejected.jsonl").stat().st_size else None  # fmt: skip
    accepted = (tmp_path / "run/accepted.jsonl").read_text().splitlines()
    costs = [json.loads(x)["provenance"]["cost_usd"] for x in accepted]
    if rec is not None:
        costs.append(rec["provenance"]["cost_usd"])
    assert all(c is not None and c > 0 for c in costs)
    assert sum(costs) <= billed + 1e-9  # each record's share at the cached price too


# -- c. custom ids, one model a file, file limits --------------------------------------------------


def test_the_fake_fails_an_openai_file_the_api_would_refuse(server) -> None:
    p, bad_id = lines_of(server, OPENAI, ["ok-1", "not.ok"])
    _, two_models = lines_of(server, OPENAI, ["a", "b"], ["gpt-4o-mini", "gpt-4o"])
    _, twice = lines_of(server, OPENAI, ["a", "a"])
    server.max_file_requests = 2
    _, too_many = lines_of(server, OPENAI, ["a", "b", "c"])
    cases = [(bad_id, "invalid_custom_id"), (two_models, "mismatched_model"),
             (twice, "duplicate_custom_id"), (too_many, "too_many_requests")]  # fmt: skip
    for lines, code in cases:
        (job,) = submit(p, lines)
        state = asyncio.run(p.retrieve(job.id))
        assert state.state == "failed" and code in state.codes, (code, state)
        assert asyncio.run(p.results(job.id)) == []  # nothing ran, nothing billed
    server.max_file_bytes = 100
    (job,) = submit(p, lines_of(server, OPENAI, ["a"])[1])
    assert "file_too_large" in asyncio.run(p.retrieve(job.id)).codes
    assert not server.billed_jobs


def test_the_fake_refuses_an_anthropic_batch_with_a_bad_custom_id(server) -> None:
    p, lines = lines_of(server, ANTHROPIC, ["ok-1", "x" * 65])
    with pytest.raises(TeacherError) as refused:
        submit(p, lines)
    assert refused.value.category == "bad_request" and server.creates == 0


def test_our_custom_ids_and_files_are_what_the_providers_take(tmp_path, server) -> None:
    batch(tmp_path, server, wait=True)
    ids = [cid for job in server.jobs.values() for cid, _ in job.requests]
    assert ids and all(CUSTOM_ID.match(cid) for cid in ids)
    assert all(len({b["model"] for _, b in job.requests}) == 1 for job in server.jobs.values())
    assert not [job for job in server.jobs.values() if job.errors]


def test_a_job_the_provider_would_refuse_is_never_sent(tmp_path, server, monkeypatch) -> None:
    """Our side checks what the provider checks: a custom id out of the format stops the run
    before the job is made (OpenAI would fail it after its wait, Anthropic refuse it)."""
    from rationale.batch_store import BatchStore

    real = BatchStore.custom_ids

    def dotted(self, part):
        return [(cid.replace("-", "."), key, kind) for cid, key, kind in real(self, part)]

    monkeypatch.setattr(BatchStore, "custom_ids", dotted)
    with pytest.raises(RationaleError, match=r"p00001 was not sent: openai would refuse it .*"
                       r"custom ids .* do not match"):  # fmt: skip
        batch(tmp_path, server, wait=True)
    assert server.creates == 0


def test_a_file_is_split_under_the_byte_limit_whatever_its_characters(
    tmp_path, server, monkeypatch
) -> None:
    """Split by the UTF-8 bytes of the file sent (non-ASCII text included), under the limit."""
    from rationale.batch_providers import OpenAIBatches

    server.max_file_bytes = 12_000
    monkeypatch.setattr(OpenAIBatches, "max_bytes", 12_000)
    result = batch(tmp_path, server, wait=True, **ONE_ROUND)
    assert result.pending == 0 and len(server.jobs) > 1
    assert not [job.errors for job in server.jobs.values() if job.errors]


# -- d. OpenAI's enqueued-token limit --------------------------------------------------------------


def test_the_enqueued_token_limit_splits_the_job_and_burns_no_attempt(tmp_path, server) -> None:
    """OpenAI fails a job over the organization's enqueued tokens at validation
    (token_limit_exceeded): nothing ran; the part goes out again smaller, and the refusal is no
    attempt of its requests (with --request-attempts 1 every record still gets its answer)."""
    from batch_server import prompt_tokens

    def limit(job) -> None:
        if server.enqueued_token_limit is None:  # the first job: 60% of it fits
            total = sum(prompt_tokens("openai", body) for _, body in job.requests)
            server.enqueued_token_limit = int(total * 0.6)

    server.on_create = limit
    with deadline(120):
        result = batch(tmp_path, server, wait=True, request_attempts=1, **ONE_ROUND)
    assert result.pending == 0 and result.counts["failed"] == 0, result.counts
    assert len(records(tmp_path / "run")) == 11
    codes = [job.errors[0]["code"] for job in server.jobs.values() if job.errors]
    assert codes and set(codes) == {"token_limit_exceeded"}
    assert set(server.answered.values()) == {1} and len(server.answered) == 11
    assert '"token_limit": "alone"' in (tmp_path / "run/batches/jobs.jsonl").read_text()


def test_the_enqueued_token_limit_waits_for_the_jobs_in_flight(tmp_path, server) -> None:
    """Behind a job of ours in flight, a refused job waits for it, then goes out whole."""
    from batch_server import prompt_tokens

    from rationale.batch_providers import OpenAIBatches

    def limit(job) -> None:
        if server.enqueued_token_limit is None:  # both jobs fit alone, not together
            total = sum(prompt_tokens("openai", body) for _, body in job.requests)
            server.enqueued_token_limit = int(total * 1.2)

    server.on_create = limit
    OpenAIBatches.max_requests, real = 6, OpenAIBatches.max_requests
    try:
        with deadline(120):
            result = batch(tmp_path, server, wait=True, request_attempts=1, **ONE_ROUND)
    finally:
        OpenAIBatches.max_requests = real
    assert result.pending == 0 and result.counts["failed"] == 0
    sizes = [len(job.requests) for job in server.jobs.values() if not job.errors]
    assert sorted(sizes) == [5, 6]  # the refused job went out whole once the other ended
    assert '"token_limit": "queued"' in (tmp_path / "run/batches/jobs.jsonl").read_text()
    assert set(server.answered.values()) == {1}


# -- e. an archived Anthropic batch ----------------------------------------------------------------


def test_an_archived_batch_stops_wait_with_what_to_do(tmp_path, server) -> None:
    server.hold = True
    batch(tmp_path, server, ANTHROPIC, **ONE_ROUND)
    (job,) = server.jobs
    server.archive(job)  # ended, then its results were archived (no results_url)
    with deadline(60), pytest.raises(RationaleError, match=rf"job {job} of part p00001 ended but "
                                     r"its results are gone .*--forget p00001"):  # fmt: skip
        batch(tmp_path, server, ANTHROPIC, wait=True, **ONE_ROUND)
    assert read_run_json(tmp_path / "run")["stopped"].startswith("fatal")


# -- f. account-wide errors ------------------------------------------------------------------------


@pytest.mark.parametrize("teacher", [OPENAI, ANTHROPIC])
def test_an_account_error_stops_the_run_once_and_a_rerun_sends_again(
    tmp_path, server, teacher
) -> None:
    """Anthropic's billing_error, OpenAI's insufficient_quota: every request of the account
    fails alike, so the run stops once (no record is failed for it); fixed, a rerun sends."""
    server.fault(lambda body: True, status(402), times=None)
    with pytest.raises(RationaleError, match=r"stopped .*fatal.*(billing|quota)"):
        batch(tmp_path, server, teacher, wait=True, **ONE_ROUND)
    assert not [r for r in records(tmp_path / "run").values() if r["state"] == "failed"]
    assert server.creates == 1  # not sent again and again
    server._faults.clear()  # credit added
    result = batch(tmp_path, server, teacher, wait=True, **ONE_ROUND)
    assert result.pending == 0 and result.counts["failed"] == 0
    assert len(records(tmp_path / "run")) == 11


# -- g. a slow cancel ------------------------------------------------------------------------------


@pytest.mark.parametrize("teacher", [OPENAI, ANTHROPIC])
def test_cancel_waits_out_a_slow_cancelling(tmp_path, server, teacher) -> None:
    from rationale.batch_jobs import batch_jobs

    server.hold = True
    batch(tmp_path, server, teacher, **ONE_ROUND)
    server.cancel_polls = 3  # the provider takes a while to cancel
    (row,) = batch_jobs(tmp_path / "run", cancel=True)
    assert row["state"] == ("cancelled" if teacher == OPENAI else "ended"), row
    server.hold = False
    result = batch(tmp_path, server, teacher, wait=True, **ONE_ROUND)
    assert result.pending == 0 and len(records(tmp_path / "run")) == 11
    assert ledger_cost(tmp_path / "run") == pytest.approx(server_cost(server, teacher), rel=1e-9)
    assert set(server.billed_requests.values()) == {1} and len(server.billed_requests) == 11


def test_wait_waits_out_a_slow_cancelling(tmp_path, server) -> None:
    """A job cancelled elsewhere (the provider's console) while a --wait run polls it."""
    server.hold = True
    batch(tmp_path, server, **ONE_ROUND)
    (job,) = server.jobs
    server.cancel_polls = 4
    httpx.post(f"{server.url}/batches/{job}/cancel")
    server.hold = False
    with deadline(60):
        result = batch(tmp_path, server, wait=True, **ONE_ROUND)
    assert result.pending == 0 and len(records(tmp_path / "run")) == 11
    assert ledger_cost(tmp_path / "run") == pytest.approx(server_cost(server, OPENAI), rel=1e-9)
    assert set(server.answered.values()) == {1}


# -- h. results that are not ours ------------------------------------------------------------------


def test_a_job_with_results_not_ours_is_charged_and_counts_as_an_attempt(tmp_path, server) -> None:
    """Whatever put them there, the provider billed them: charged; and the request of ours
    without a result is sent again only up to --request-attempts (then its record fails)."""
    mine = teacher_for("item.good_1")

    def swap(job) -> None:  # the provider answers a request under an id we never sent
        job.requests[:] = [("someone-else", body) if mine(body) else (cid, body)
                           for cid, body in job.requests]  # fmt: skip

    server.on_create = swap
    with deadline(120):
        result = batch(tmp_path, server, wait=True, request_attempts=2, **ONE_ROUND)
    assert result.pending == 0 and result.counts["failed"] == 1
    lines = ledger(tmp_path / "run")
    assert len(lines) == 2 and all(x["by_kind"]["foreign"]["answered"] == 1 for x in lines)
    assert ledger_cost(tmp_path / "run") == pytest.approx(server_cost(server, OPENAI), rel=1e-9)
    assert max(server.submitted.values()) == 2  # the one without an answer: twice, no more
    failed = json.loads((tmp_path / "run/failed.jsonl").read_text())
    assert "never sent" in failed["error"]["message"]


# -- i. a kill of a --wait run: nothing billed twice -----------------------------------------------


def test_a_killed_wait_run_is_billed_once_per_request(tmp_path, server) -> None:
    """The provider finishes (and bills) a job whether or not its client is there: a --wait
    run killed while polling, then rerun, has each request billed exactly once."""
    cmd = [RATIONALE, "synth", str(records_file(tmp_path)), "-o", str(tmp_path / "run"),
           "--teacher", OPENAI, "--api-base", server.url, "--batch", "--wait",
           "--poll-interval", "0.01", "--max-attempts", "2"]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-batch"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    reads: list[str] = []

    def kill(job) -> None:  # the second round's job was recorded and is being polled
        reads.append(job.id)
        if len(set(reads)) == 2 and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)

    server.on_read = kill
    _, err = proc.communicate(timeout=120)
    server.on_read = None
    assert proc.returncode == -signal.SIGKILL, err
    server.finish_all()  # the jobs end at the provider meanwhile: billed, nobody collects
    billed = sum(server.billed_requests.values())
    assert billed > 11
    result = batch(tmp_path, server, wait=True)
    assert result.pending == 0 and len(records(tmp_path / "run")) == 11
    assert set(server.billed_requests.values()) == {1}, server.billed_requests
    assert set(server.submitted.values()) == {1}
    assert ledger_cost(tmp_path / "run") == pytest.approx(server_cost(server, OPENAI), rel=1e-9)


def test_an_ended_job_cannot_be_cancelled_out_of_its_bill(tmp_path, server) -> None:
    """Cancelling a job that already completed changes nothing: its answers were billed."""
    batch(tmp_path, server, **ONE_ROUND)
    server.finish_all()
    (job,) = server.jobs
    assert httpx.post(f"{server.url}/batches/{job}/cancel").json()["status"] == "completed"
    result = batch(tmp_path, server, wait=True, **ONE_ROUND)
    assert result.pending == 0 and set(server.submitted.values()) == {1}
    assert ledger_cost(tmp_path / "run") == pytest.approx(server_cost(server, OPENAI), rel=1e-9)


def test_a_request_over_the_enqueued_token_limit_alone_fails_after_its_attempts(
    tmp_path, server
) -> None:
    """A single request the limit can never hold: split down to itself, then each refusal is
    an attempt, and its record fails with the provider's error (no endless resubmission)."""
    server.enqueued_token_limit = 1
    with deadline(120):
        result = batch(tmp_path, server, wait=True, request_attempts=2, limit=3, **ONE_ROUND)
    assert result.pending == 0 and result.counts["failed"] == 3, result.counts
    failed = [json.loads(x) for x in (tmp_path / "run/failed.jsonl").read_text().splitlines()]
    assert {f["error"]["category"] for f in failed} == {"job_failed"}
    assert "token_limit_exceeded" in failed[0]["error"]["message"]
    assert not server.answered
