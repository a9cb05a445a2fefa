"""`rationale synth` end to end against a real local OpenAI-compatible server, through litellm."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import EXAMPLES, ROOT
from openai_server import (
    delay,
    drop,
    garbage,
    last_user_text,
    not_json_content,
    ok,
    ref,
    schema_violation,
    status,
)

from rationale import RationaleError
from rationale.prompts import format_action
from rationale.synth import SynthConfig, run_synth
from rationale.teacher import RetryPolicy

SAMPLE = EXAMPLES / "mind2web" / "shopping_sample.jsonl"
KEY = "sk-sentinel-DO-NOT-LEAK-0123456789"
FAST = RetryPolicy(max_attempts=4, backoff=0.01, max_backoff=0.05)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture(params=["fast", "litellm"])
def client(request: pytest.FixtureRequest) -> str:
    """Both ways to reach an OpenAI-compatible server: the aiohttp fast path and litellm."""
    return request.param


def synth(tmp_path: Path, server, *, policy: RetryPolicy = FAST, **overrides):
    config = {
        "input": str(SAMPLE),
        "output": str(tmp_path / "run"),
        "teacher": "openai/test-model",
        "api_base": server.url,
        "limit": 12,
        "concurrency": 4,
        "timeout": 5.0,
        "verifier": "none",  # the consistency filter has its own tests (test_filter.py)
        **overrides,
    }
    return run_synth(SynthConfig(**config), retry_policy=policy)


def lines(run: Path, state: str) -> list[dict]:
    file = run / f"{state}.jsonl"
    return [json.loads(x) for x in file.read_text().splitlines()] if file.exists() else []


def keys(run: Path) -> list[tuple[str, int]]:
    return [
        (r["record"]["session_id"], r["record"]["step"])
        for state in ("accepted", "rejected", "failed")
        for r in lines(run, state)
    ]


def expected_keys(n: int) -> list[tuple[str, int]]:
    out = []
    for line in SAMPLE.read_text().splitlines()[:n]:
        r = json.loads(line)
        out.append((r["session_id"], r["step"]))
    return out


def test_accepts_every_record_with_provenance(tmp_path: Path, openai_server, client) -> None:
    summary = synth(tmp_path, openai_server, client=client)
    run = tmp_path / "run"
    assert summary.counts == {"accepted": 12, "rejected": 0, "failed": 0} and summary.pending == 0
    assert openai_server.count == 12
    accepted = lines(run, "accepted")
    assert sorted(keys(run)) == sorted(expected_keys(12))
    bodies = {json.dumps(r["body"]["messages"]) for r in openai_server.requests}
    for rec in accepted:
        prov = rec["provenance"]
        assert prov["teacher"] == "openai/test-model" and prov["attempts"] == 1
        assert prov["template"] == "web_shopping" and len(prov["template_version"]) == 16
        assert prov["prompt_tokens"] > 0 and prov["completion_tokens"] > 0 and not prov["cached"]
        assert rec["rationale"].startswith("I ")
        assert "meta" in rec["record"]  # the input record is carried unchanged
    # each answer belongs to its own request: the ref in a record's rationale names the prompt
    # that asked for it, and that prompt is about this record's task and action
    users = {
        ref(last_user_text(r["body"])): last_user_text(r["body"]) for r in openai_server.requests
    }
    for rec in accepted:
        user = users[re.search(r"\(ref ([0-9a-f]{8})\)", rec["rationale"]).group(1)]
        assert f"What they did next\n{format_action(rec['record']['action'])}" in user
        assert rec["record"]["instruction"] in user
    assert len(bodies) == 12 and len(users) == 12
    report = json.loads((run / "run.json").read_text())
    assert report["counts"] == {"accepted": 12, "rejected": 0, "failed": 0}
    assert report["requests"]["total"] == 12 and report["tokens"]["prompt"] > 0
    assert report["cost_usd"]["price_known"] is False  # test-model is not in the price map


def test_rerun_makes_no_calls_and_a_lost_run_folder_is_served_from_cache(
    tmp_path: Path, openai_server
) -> None:
    synth(tmp_path, openai_server)
    assert openai_server.count == 12
    synth(tmp_path, openai_server)  # same command again: everything is done
    assert openai_server.count == 12
    assert len(keys(tmp_path / "run")) == 12
    summary = synth(
        tmp_path, openai_server, output=str(tmp_path / "run2")
    )  # new folder, same cache
    assert openai_server.count == 12 and summary.tally.cache_hits == 12
    assert all(r["provenance"]["cached"] for r in lines(tmp_path / "run2", "accepted"))
    more = synth(tmp_path, openai_server, limit=15)  # only the 3 new records are called
    assert openai_server.count == 15 and more.counts["accepted"] == 15


@pytest.mark.parametrize(
    "fault",
    [
        status(429, headers={"Retry-After": "0.3"}),
        status(500),
        status(502),
        status(503),
        delay(3.0),  # slower than the 1 s timeout
        garbage(),
        drop(),
        schema_violation(),
        not_json_content(),
    ],
    ids=["429", "500", "502", "503", "timeout", "garbage", "drop", "schema", "prose"],
)
def test_one_fault_costs_one_extra_request(tmp_path: Path, openai_server, fault, client) -> None:
    openai_server.script(fault)
    started = time.monotonic()
    summary = synth(tmp_path, openai_server, limit=3, concurrency=1, timeout=1.0, client=client)
    assert summary.counts["accepted"] == 3
    assert openai_server.count == 4  # exactly one extra request
    attempts = sorted(r["provenance"]["attempts"] for r in lines(tmp_path / "run", "accepted"))
    assert attempts == [1, 1, 2]
    if fault.code == 429:
        times = [r["time"] for r in openai_server.requests]
        assert times[1] - times[0] >= 0.3  # Retry-After honoured
    assert time.monotonic() - started < 30


def test_persistent_faults_end_in_failed_with_their_cause_then_retry_failed(
    tmp_path: Path, openai_server
) -> None:
    openai_server.fault(lambda body: True, status(500), times=4)  # the first record's 4 attempts
    summary = synth(tmp_path, openai_server, limit=6, concurrency=1)
    run = tmp_path / "run"
    assert summary.counts == {"accepted": 5, "rejected": 0, "failed": 1}
    (failed,) = lines(run, "failed")
    assert failed["error"]["category"] == "server"
    assert failed["error"]["type"] == "TeacherError"
    assert "500" in failed["error"]["message"] or "Internal" in failed["error"]["message"]
    assert failed["provenance"]["attempts"] == 4
    # a plain rerun leaves failures alone; --retry-failed retries them
    synth(tmp_path, openai_server, limit=6)
    assert lines(run, "failed") and openai_server.count == 4 + 5
    summary = synth(tmp_path, openai_server, limit=6, retry_failed=True)
    assert summary.counts == {"accepted": 6, "rejected": 0, "failed": 0}
    assert sorted(keys(run)) == sorted(expected_keys(6))  # one line per record, none twice


def test_bad_request_fails_the_record_without_retrying(tmp_path: Path, openai_server) -> None:
    openai_server.script(status(400))
    summary = synth(tmp_path, openai_server, limit=3, concurrency=1)
    assert summary.counts == {"accepted": 2, "rejected": 0, "failed": 1}
    assert openai_server.count == 3
    assert lines(tmp_path / "run", "failed")[0]["error"]["category"] == "bad_request"


def test_authentication_error_stops_the_run_and_a_rerun_continues(
    tmp_path: Path, openai_server, client
) -> None:
    openai_server.script(ok(), status(401))
    with pytest.raises(RationaleError, match=r"401|AuthenticationError") as info:
        synth(tmp_path, openai_server, limit=8, concurrency=1, client=client)
    assert KEY not in str(info.value)
    assert openai_server.count == 2  # no retry of a 401, no further requests
    assert len(keys(tmp_path / "run")) == 1
    report = json.loads((tmp_path / "run" / "run.json").read_text())
    assert report["pending"] == 7 and report["stopped"].startswith("fatal")
    summary = synth(tmp_path, openai_server, limit=8)
    assert summary.counts["accepted"] == 8 and openai_server.count == 9


def test_the_api_key_reaches_no_file(
    tmp_path: Path, openai_server, rationale_home: Path, client
) -> None:
    openai_server.script(
        status(401, body={"error": {"message": f"Incorrect API key provided: {KEY}"}})
    )
    with pytest.raises(RationaleError) as info:
        synth(tmp_path, openai_server, limit=2, concurrency=1, client=client)
    assert KEY not in str(info.value)
    openai_server.script(status(400, body={"error": {"message": f"bad: {KEY}"}}))
    synth(tmp_path, openai_server, limit=4, client=client)
    assert openai_server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"  # it was sent
    leaked = [
        p
        for folder in (tmp_path / "run", rationale_home)
        for p in folder.rglob("*")
        if p.is_file() and KEY.encode() in p.read_bytes()
    ]
    assert leaked == []
    assert lines(tmp_path / "run", "failed")[0]["error"]["category"] == "bad_request"


def test_max_cost_stops_before_the_budget_and_a_rerun_continues(
    tmp_path: Path, openai_server
) -> None:
    # gpt-4o-mini is in litellm's offline price map; the server answers for it.
    summary = synth(
        tmp_path,
        openai_server,
        teacher="openai/gpt-4o-mini",
        limit=10,
        concurrency=2,
        max_tokens=50,
        max_cost=0.0012,
    )
    report = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary.stopped and summary.stopped.startswith("budget")
    assert 0 < summary.counts["accepted"] < 10
    assert report["cost_usd"]["this_invocation"] <= 0.0012
    assert summary.pending == 10 - summary.counts["accepted"]
    first_total = report["cost_usd"]["total"]
    done = summary.counts["accepted"]
    summary = synth(
        tmp_path,
        openai_server,
        teacher="openai/gpt-4o-mini",
        limit=10,
        concurrency=2,
        max_tokens=50,
        max_cost=1.0,
    )
    report = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary.counts["accepted"] == 10 and summary.stopped is None
    assert report["cost_usd"]["total"] > first_total  # cumulative across invocations
    assert openai_server.count == 10 and done < 10


def test_dry_run_calls_nothing(tmp_path: Path, openai_server) -> None:
    estimate = synth(
        tmp_path, openai_server, teacher="openai/gpt-4o-mini", dry_run=True, max_tokens=100
    )
    assert openai_server.count == 0 and not (tmp_path / "run").exists()
    assert estimate["to_call"] == 12 and estimate["max_completion_tokens"] == 1200
    assert estimate["prompt_tokens"] > 0 and estimate["max_cost_usd"] > 0


def test_a_torn_line_is_cut_off_on_resume(tmp_path: Path, openai_server) -> None:
    synth(tmp_path, openai_server, limit=4)
    accepted = tmp_path / "run" / "accepted.jsonl"
    full = accepted.read_text().splitlines()
    accepted.write_text("\n".join(full[:3]) + "\n" + full[3][:40])  # the 4th line torn mid-write
    synth(tmp_path, openai_server, limit=4)
    assert sorted(keys(tmp_path / "run")) == sorted(expected_keys(4))
    assert openai_server.count == 4  # the torn record came back from the cache


def test_a_run_folder_refuses_another_teacher(tmp_path: Path, openai_server) -> None:
    synth(tmp_path, openai_server, limit=2)
    with pytest.raises(RationaleError, match="different teacher"):
        synth(tmp_path, openai_server, limit=2, teacher="openai/other-model")


def _serve(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "openai_server.py"),
            "--port",
            "0",
            "--latency",
            str(latency),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("PORT "), line
    return proc, f"http://127.0.0.1:{line.split()[1]}/v1"


def server_billed(url: str) -> dict[str, int]:
    """What a server started by `_serve` billed: answers (abandoned ones too), and count."""
    from urllib.request import urlopen

    with urlopen(url.removesuffix("/v1") + "/_billed", timeout=10) as response:
        return json.loads(response.read())


def test_kill_9_then_rerun_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """A kill pays twice for the requests in flight at it, at most --concurrency (4): the
    server bills an answer whose client was killed, as a provider does; nothing else is paid
    twice (the server's own counts, not our ledger)."""
    server, url = _serve(latency=0.1)
    rationale = Path(sys.executable).parent / "rationale"
    env = {**os.environ, "OPENAI_API_KEY": KEY}

    def command(out: Path) -> list[str]:
        return [
            str(rationale),
            "synth",
            str(SAMPLE),
            "-o",
            str(out),
            "--teacher",
            "openai/test-model",
            "--api-base",
            url,
            "--concurrency",
            "4",
            "--limit",
            "60",
            "--verifier",
            "none",
        ]

    try:
        # the uninterrupted run, with its own state folder (so its cache cannot help the other)
        reference = tmp_path / "reference"
        done = subprocess.run(
            command(reference),
            env={**env, "RATIONALE_HOME": str(tmp_path / "h1")},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        reference_billed = server_billed(url)
        assert (reference_billed["answers"], reference_billed["abandoned"]) == (60, 0)
        killed = tmp_path / "killed"
        env2 = {**env, "RATIONALE_HOME": str(tmp_path / "h2")}
        proc = subprocess.Popen(
            command(killed), env=env2, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once some records are written...
            f = killed / "accepted.jsonl"
            if f.exists() and f.read_text().count("\n") >= 10:
                at = server_billed(url)
                if at["count"] > at["answers"]:  # ...and a request is in flight (0.1 s each)
                    break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = len(keys(killed))
        assert 10 <= partial < 60
        again = subprocess.run(
            command(killed), env=env2, capture_output=True, text=True, timeout=300
        )
        assert again.returncode == 0, again.stderr
        assert len(keys(killed)) == len(set(keys(killed))) == 60
        assert sorted(keys(killed)) == sorted(keys(reference)) == sorted(expected_keys(60))
        # Paid twice: what the server billed for the killed run and its rerun, less the 60
        # answers the run needs; at most the requests in flight at the kill (--concurrency 4).
        # The answers the server finished for the killed client (abandoned) are among them; so
        # may be one the server delivered that the killed process had not yet put in its cache
        # (delivered, to the server), so abandoned is a lower bound, not always all of it.
        billed = server_billed(url)
        paid_twice = billed["answers"] - reference_billed["answers"] - 60
        assert 1 <= billed["abandoned"] <= paid_twice <= 4, billed
    finally:
        server.kill()
        server.wait()


def test_rpm_spreads_requests_over_time(tmp_path: Path, openai_server) -> None:
    synth(tmp_path, openai_server, limit=8, concurrency=8, rpm=120)  # 2 per second
    times = sorted(r["time"] for r in openai_server.requests)
    assert len(times) == 8
    assert times[-1] - times[0] >= 2.5  # 8 requests at 2/s: at least ~3 s, not a burst
    for i in range(len(times) - 3):
        assert times[i + 3] - times[i] >= 0.9  # never more than 3 within a second


def test_tpm_holds_requests_back(tmp_path: Path, openai_server, monkeypatch) -> None:
    import rationale.engine

    monkeypatch.setattr(rationale.engine, "TPM_WINDOW_S", 2.0)  # a 2 s bucket instead of 60 s
    estimate = synth(tmp_path, openai_server, limit=4, dry_run=True, max_tokens=50)
    per_request = estimate["prompt_tokens"] // 4 + 50
    started = time.monotonic()
    synth(tmp_path, openai_server, limit=4, concurrency=4, max_tokens=50, tpm=per_request * 2)
    times = sorted(r["time"] for r in openai_server.requests)
    assert len(times) == 4
    assert times[2] - times[0] >= 0.5  # the third request waited for the bucket to refill
    assert time.monotonic() - started < 20
