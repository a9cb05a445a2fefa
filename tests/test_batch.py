"""``--batch``: synth and filter through the provider batch APIs, against the fake batch server
(tests/batch_server.py), for OpenAI's Batch API and Anthropic's Message Batches.

Every test checks the records (each input record in exactly one file, once) and the server's
counts: how many jobs were made, how many times each distinct request body was submitted and
answered (an answered request is never sent again; nothing is paid twice).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from batch_server import BatchServer, fingerprint
from openai_server import last_user_text, status
from test_cli_runs import RATIONALE
from test_filter import records_file, responder

from rationale import RationaleError
from rationale.errors import TeacherError
from rationale.filter import run_filter
from rationale.rundir import STATES, read_run_json
from rationale.synth import SynthConfig, run_synth
from rationale.teacher import RetryPolicy

FAST = RetryPolicy(max_attempts=3, backoff=0.01, max_backoff=0.05)
OPENAI = "openai/gpt-4o-mini"
ANTHROPIC = "anthropic/claude-haiku-4-5"
#: (teacher, client): the fast OpenAI client, litellm + instructor for OpenAI, and Anthropic
PROVIDERS = [(OPENAI, "auto"), (OPENAI, "litellm"), (ANTHROPIC, "auto")]
IDS = ["openai-fast", "openai-litellm", "anthropic"]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-batch")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-batch")
    with BatchServer(responder=responder) as s:
        yield s


def config(tmp_path: Path, server: BatchServer, teacher: str = OPENAI, *, out: str = "run",
           client: str = "auto", **overrides) -> SynthConfig:  # fmt: skip
    base = server.url if teacher.startswith("openai") else server.root
    values = {
        "input": str(records_file(tmp_path)), "output": str(tmp_path / out), "teacher": teacher,
        "api_base": base, "client": client, "concurrency": 4, "timeout": 10.0,
        "max_attempts": 2, "poll_interval": 0.01, **overrides,
    }  # fmt: skip
    return SynthConfig(**values)


def batch(tmp_path: Path, server: BatchServer, teacher: str = OPENAI, **overrides):
    return run_synth(config(tmp_path, server, teacher, batch=True, **overrides), retry_policy=FAST)


def records(run: Path) -> dict[tuple[str, int], dict]:
    """Every record of a run folder by key, without what differs between two paths (tokens,
    cost, attempts, cache): its state, rationale, reasons, prediction, candidates and errors.
    A record in two files, or twice in one, fails the test."""
    out: dict[tuple[str, int], dict] = {}
    for state in STATES:
        file = run / f"{state}.jsonl"
        for line in file.read_text().splitlines() if file.exists() else []:
            rec = json.loads(line)
            key = (rec["record"]["session_id"], rec["record"]["step"])
            assert key not in out, f"{key} twice"
            out[key] = {
                "state": state, "rationale": rec["rationale"], "reasons": rec["reasons"],
                "prediction": rec["prediction"],
                "error": rec["error"] and rec["error"]["category"],
                "candidates": [(c["sample"], c["round"], c["state"], c["rationale"], c["reasons"],
                                c["verification"] and c["verification"]["prediction"])
                               for c in rec["candidates"]],
            }  # fmt: skip
    return out


def ledger_cost(run: Path) -> float:
    lines = (run / "ledger.jsonl").read_text().splitlines()
    return sum(json.loads(x).get("cost_usd") or 0.0 for x in lines)


def teacher_for(name: str):
    """A predicate: the teacher's request (not the verifier's) for the record acting on ``name``."""

    def match(body: dict) -> bool:
        text = last_user_text(body)
        done = text.split("## What they did next", 1)[-1].strip()
        return "## What they did next" in text and done.startswith(f"click({name})")

    return match


# -- the same records, the same requests, half the price ------------------------------------------


@pytest.mark.parametrize(("teacher", "client"), PROVIDERS, ids=IDS)
def test_batch_files_the_records_online_would_at_half_the_price(
    tmp_path: Path, server: BatchServer, monkeypatch: pytest.MonkeyPatch, teacher: str, client: str
) -> None:
    """Rounds of jobs (teacher, verifier, regeneration) reach exactly the online records, with
    the same request bodies, each submitted once, at the batch price (half, for these models)."""
    online = run_synth(config(tmp_path, server, teacher, out="online", client=client),
                       retry_policy=FAST)  # fmt: skip
    sent = Counter(fingerprint(r["body"]) for r in server.requests)
    monkeypatch.setenv("RATIONALE_HOME", str(tmp_path / "home2"))  # no cache: a fresh teacher
    result = batch(tmp_path, server, teacher, client=client, wait=True)
    assert records(tmp_path / "run") == records(tmp_path / "online")
    assert sum(result.counts.values()) == 11 and result.pending == 0 and result.stopped is None
    assert server.submitted == sent  # the very bodies online sent, each once
    assert set(server.answered.values()) == {1}
    batch_cost, online_cost = ledger_cost(tmp_path / "run"), ledger_cost(tmp_path / "online")
    assert batch_cost == pytest.approx(online_cost / 2, rel=1e-9) and batch_cost > 0
    run = read_run_json(tmp_path / "run")
    assert run["batch"]["rounds"] == result.batch["rounds"] >= 3  # teacher, verifier, regen...
    assert run["cost_usd"]["total"] == pytest.approx(batch_cost, abs=1e-7)
    assert run["requests"]["total"] == sum(sent.values()) == online.tally.requests
    assert run["report"]["batch"]["rounds"] == run["batch"]["rounds"]
    spend = run["report"]["spend"]
    assert spend["verifier (batch)"]["requests"] == online.tally.verify_requests


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "openai/o3-mini", ANTHROPIC])
@pytest.mark.parametrize("answer", ["rationale", "action", "text"])
def test_a_batch_body_is_the_body_litellm_sends_online(server, model, answer) -> None:
    """For each response model (teacher, verifier, eval's raw text) and provider, including
    OpenAI's reasoning models (max_completion_tokens, no temperature, no system role)."""
    import asyncio

    from rationale.completion import RawText
    from rationale.litellm_teacher import LiteLLMTeacher
    from rationale.schema import ActionSpace

    response_model = {"rationale": None, "action": ActionSpace.default().action_only_model,
                      "text": RawText}[answer]  # fmt: skip
    teacher = LiteLLMTeacher(model, api_base=server.url if "openai" in model else server.root)
    messages = [{"role": "system", "content": "You explain."}, {"role": "user", "content": "Why?"}]
    kwargs = {"temperature": 0.0, "max_tokens": 99, "seed": 4, "response_model": response_model}
    with contextlib.suppress(TeacherError):  # the default answer is no action: only the body
        asyncio.run(teacher.attempt(messages, assistant_prefix=None, **kwargs))
    assert server.requests[-1]["body"] == teacher.request_body(messages, **kwargs)


def test_history_rationales_wait_for_the_earlier_steps(tmp_path, server, monkeypatch) -> None:
    """With --history-rationales a step's prompt holds the earlier steps' accepted rationales:
    in batch mode a step goes out only once the steps before it are filed."""
    chained = {"history_rationales": True, "limit": 5}
    run_synth(config(tmp_path, server, out="online", **chained), retry_policy=FAST)
    sent = Counter(fingerprint(r["body"]) for r in server.requests)
    monkeypatch.setenv("RATIONALE_HOME", str(tmp_path / "home2"))
    batch(tmp_path, server, wait=True, **chained)
    assert records(tmp_path / "run") == records(tmp_path / "online")
    assert server.submitted == sent


def test_batch_and_online_share_the_cache(tmp_path: Path, server: BatchServer) -> None:
    batch(tmp_path, server, wait=True)
    online_before = len(server.requests)
    run_synth(config(tmp_path, server, out="online"), retry_policy=FAST)
    assert len(server.requests) == online_before == 0  # every answer came from the cache
    assert records(tmp_path / "online") == records(tmp_path / "run")
    creates = server.creates
    again = batch(tmp_path, server, out="again", wait=True)
    assert server.creates == creates and again.batch["jobs"] == 0  # nothing sent
    assert records(tmp_path / "again") == records(tmp_path / "run")


# -- submit, exit, collect ------------------------------------------------------------------------


@pytest.mark.parametrize("teacher", [OPENAI, ANTHROPIC])
def test_submit_exit_and_collect_over_reruns(tmp_path, server, teacher) -> None:
    server.hold = True
    first = batch(tmp_path, server, teacher)
    assert first.pending == 11 and first.stopped.startswith("batch: 1 jobs in flight")
    assert server.creates == 1 and records(tmp_path / "run") == {}
    assert batch(tmp_path, server, teacher).pending == 11 and server.creates == 1  # still out
    server.finish_all()
    second = batch(tmp_path, server, teacher)  # collects round 1, sends round 2
    assert second.batch["rounds"] == 2 and server.creates == 2
    assert second.pending == 11  # every record needs a second request: verifier or regeneration
    server.finish_all()
    third = batch(tmp_path, server, teacher)  # files what round 2 settled, sends round 3
    assert 0 < third.pending < 11 and len(records(tmp_path / "run")) == 11 - third.pending
    server.hold = False
    last = batch(tmp_path, server, teacher, wait=True)
    assert last.pending == 0 and len(records(tmp_path / "run")) == 11
    assert set(server.submitted.values()) == {1} and set(server.answered.values()) == {1}
    assert batch(tmp_path, server, teacher).batch["requests_submitted_this_invocation"] == 0


def test_an_online_rerun_is_refused_while_jobs_are_out(tmp_path, server) -> None:
    """Online, the requests already in a job would be paid for a second time."""
    server.hold = True
    batch(tmp_path, server)
    with pytest.raises(RationaleError, match="1 batch jobs not collected yet; continue it with"):
        run_synth(config(tmp_path, server), retry_policy=FAST)
    server.hold = False
    batch(tmp_path, server, wait=True)
    creates = server.creates
    online = run_synth(config(tmp_path, server, max_attempts=3), retry_policy=FAST)
    assert online.pending == 0 and server.creates == creates  # all collected: online may go on


@pytest.mark.parametrize("teacher", [OPENAI, ANTHROPIC])
def test_an_expired_job_keeps_its_answers_and_resends_the_rest(tmp_path, server, teacher) -> None:
    server.plan("expire_half")
    result = batch(tmp_path, server, teacher, wait=True)
    assert result.pending == 0 and len(records(tmp_path / "run")) == 11
    assert set(server.answered.values()) == {1}  # nothing answered twice
    resent = [fp for fp, n in server.submitted.items() if n == 2]
    assert len(resent) == 5 and max(server.submitted.values()) == 2  # the unanswered half
    events = [json.loads(x) for x in (tmp_path / "run/batches/jobs.jsonl").read_text().splitlines()]
    states = [e["state"] for e in events if e["event"] == "collected"]
    assert states[0] == ("expired" if teacher == OPENAI else "ended")


def test_a_job_that_failed_validation_is_sent_again_then_fails_with_its_error(
    tmp_path, server
) -> None:
    server.plan("fail")  # the first job fails validation: nothing answered, nothing billed
    result = batch(tmp_path, server, wait=True, max_attempts=1, verifier="none")
    assert result.pending == 0 and len(records(tmp_path / "run")) == 11
    assert server.creates == 2 and set(server.answered.values()) == {1}
    server.plan(*["fail"] * 2)
    result = batch(tmp_path, server, out="again", wait=True, max_attempts=1, verifier="none",
                   seed=5, request_attempts=2)  # fmt: skip
    failed = [json.loads(x) for x in (tmp_path / "again/failed.jsonl").read_text().splitlines()]
    assert len(failed) == 11 and result.counts["failed"] == 11
    assert "Scripted validation failure" in failed[0]["error"]["message"]
    assert failed[0]["error"]["category"] == "job_failed"


def test_per_request_errors_follow_the_online_categories(tmp_path, server) -> None:
    server.fault(teacher_for("item.good_1"), status(400), times=None)  # fails the record
    server.fault(teacher_for("item.short_1"), status(500), times=1)  # sent again, then answered
    server.fault(teacher_for("item.long_1"), status(500), times=None)  # out of attempts
    server.fault(teacher_for("item.third_1"), status(418), times=None)  # as online: fails
    result = batch(tmp_path, server, wait=True, request_attempts=2)
    recs = {k[1]: r for k, r in records(tmp_path / "run").items() if k[0] == "s1"}
    assert result.pending == 0 and len(records(tmp_path / "run")) == 11
    assert recs[0]["state"] == "failed" and recs[0]["error"] == "bad_request"
    assert recs[2]["state"] == "rejected"  # the 500 was retried: its answer is too short
    assert recs[3]["state"] == "failed" and recs[3]["error"] == "server"
    assert recs[4]["state"] == "failed" and recs[4]["error"] == "other"
    failed = [json.loads(x) for x in (tmp_path / "run/failed.jsonl").read_text().splitlines()]
    long_ = next(f for f in failed if f["record"]["step"] == 3)
    assert long_["provenance"]["attempts"] == 2 and "HTTP 500" in long_["error"]["message"]
    assert sorted(server.submitted.values()).count(2) == 2  # short and long went twice


def test_a_per_request_auth_error_stops_the_run_and_a_rerun_sends_it_again(
    tmp_path, server
) -> None:
    server.fault(teacher_for("item.good_1"), status(401), times=1)  # a key fixed in between
    with pytest.raises(RationaleError, match=r"stopped .*fatal.*rerun"):
        batch(tmp_path, server, wait=True)
    run = read_run_json(tmp_path / "run")
    assert run["pending"] + sum(run["counts"].values()) == 11 and run["pending"] > 0
    result = batch(tmp_path, server, wait=True)
    assert result.pending == 0 and records(tmp_path / "run")[("s1", 0)]["state"] == "accepted"
    assert set(server.answered.values()) == {1}


def test_going_back_online_uses_what_the_jobs_answered(tmp_path, server) -> None:
    """A batch pass that stopped early left answers its records never took: an online rerun
    on the folder takes them from the stored results instead of paying for them again."""
    server.fault(teacher_for("item.good_1"), status(401), times=1)
    with pytest.raises(RationaleError, match="fatal"):
        batch(tmp_path, server, wait=True)
    assert sum(server.answered.values()) == 10
    run_synth(config(tmp_path, server), retry_policy=FAST)
    assert len(records(tmp_path / "run")) == 11
    online = [fingerprint(r["body"]) for r in server.requests]
    assert online and not [fp for fp in online if server.answered[fp]]  # none paid twice


def test_batches_shows_and_cancels_the_jobs_of_a_run(tmp_path, server) -> None:
    """`rationale batches` reads the provider's state of each job; --cancel cancels the ones
    out; the next run keeps the cancelled job's answers and sends only the rest again."""
    server.hold = True
    batch(tmp_path, server, max_attempts=1)
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-batch"}
    shown = subprocess.run([RATIONALE, "batches", str(tmp_path / "run"), "--json"],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    (job,) = json.loads(shown.stdout)
    assert job["state"] == "validating" and job["requests"] == 11 and job["job"] in server.jobs
    from click.testing import CliRunner

    from rationale.cli import main

    table = CliRunner().invoke(main, ["batches", str(tmp_path / "run"), "--cancel"])
    assert table.exit_code == 0 and job["job"] in table.output and "cancelled" in table.output
    assert server.jobs[job["job"]].cancelled
    server.hold = False
    result = batch(tmp_path, server, max_attempts=1, wait=True)
    assert result.pending == 0 and len(records(tmp_path / "run")) == 11
    assert set(server.answered.values()) == {1}
    assert sorted(server.submitted.values()).count(2) == 5  # the half the cancel left unanswered
    text = CliRunner().invoke(main, ["batches", str(tmp_path / "run")]).output
    assert "cancelled" in text and "0 not collected yet" in text


# -- kills between submit and record --------------------------------------------------------------


def _cli_until_killed(tmp_path: Path, server: BatchServer, teacher: str, *, before: bool) -> None:
    """`rationale synth --batch` in a subprocess, SIGKILLed by the server when it makes the job
    (``before``: before making it), so the client never hears the job's id."""
    base = server.url if teacher == OPENAI else server.root
    cmd = [RATIONALE, "synth", str(records_file(tmp_path)), "-o",
           str(tmp_path / "run"), "--teacher", teacher, "--api-base", base, "--batch",
           "--max-attempts", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed: list[bool] = []

    def kill(*_: object) -> None:
        if not killed:
            killed.append(True)
            os.kill(proc.pid, signal.SIGKILL)
            if before:  # the request dies with its client: no job is made
                raise ConnectionAbortedError

    if before:
        server.before_create = kill
    else:
        server.on_create = kill
    _, err = proc.communicate(timeout=120)
    server.before_create = server.on_create = None
    assert proc.returncode == -signal.SIGKILL and killed, err


@pytest.mark.parametrize("teacher", [OPENAI, ANTHROPIC])
def test_a_kill_between_submit_and_record_loses_nothing(tmp_path, server, teacher) -> None:
    _cli_until_killed(tmp_path, server, teacher, before=False)
    assert server.creates == 1
    events = (tmp_path / "run/batches/jobs.jsonl").read_text()
    assert '"prepared"' in events and '"submitted"' not in events  # the id never reached disk
    result = batch(tmp_path, server, teacher, wait=True)
    assert result.pending == 0 and len(records(tmp_path / "run")) == 11
    assert '"recovered": true' in (tmp_path / "run/batches/jobs.jsonl").read_text()
    assert set(server.submitted.values()) == {1} and set(server.answered.values()) == {1}
    assert server.creates == result.batch["jobs"] == result.batch["rounds"]


def test_another_runs_job_of_the_same_size_is_never_taken_for_ours(
    tmp_path, server, monkeypatch
) -> None:
    """Message Batches carry no metadata: after a kill, a job another run made in the meantime
    with as many requests looks the same until its results show their custom ids."""
    _cli_until_killed(tmp_path, server, ANTHROPIC, before=False)
    (ours,) = server.jobs
    server.hold = True
    monkeypatch.setenv("RATIONALE_HOME", str(tmp_path / "other_home"))
    batch(tmp_path, server, ANTHROPIC, out="other", temperature=0.3)  # 11 requests too
    waiting = batch(tmp_path, server, ANTHROPIC)
    assert waiting.pending == 11 and server.creates == 2  # it waits: nothing sent again
    server.finish_all()
    server.hold = False
    result = batch(tmp_path, server, ANTHROPIC, wait=True)
    events = (tmp_path / "run/batches/jobs.jsonl").read_text()
    assert f'"job": "{ours}"' in events and '"recovered": true' in events
    assert result.pending == 0 and set(server.submitted.values()) == {1}


def test_a_kill_after_indexing_a_part_before_recording_it(tmp_path, server, monkeypatch) -> None:
    from rationale.batch_store import BatchStore

    real = BatchStore._event

    def killed(self, **event):
        if event["event"] == "prepared":
            raise KeyboardInterrupt  # the requests are indexed, the history says nothing
        return real(self, **event)

    monkeypatch.setattr(BatchStore, "_event", killed)
    with pytest.raises(KeyboardInterrupt):
        batch(tmp_path, server)
    monkeypatch.setattr(BatchStore, "_event", real)
    result = batch(tmp_path, server, wait=True)
    assert result.pending == 0 and server.creates == result.batch["jobs"]
    assert set(server.submitted.values()) == {1}


def test_a_submission_whose_answer_could_not_be_read_is_looked_up_not_resent(
    tmp_path, server, monkeypatch
) -> None:
    """The provider made the job but its answer did not parse (litellm reads a status it does
    not know): the part may exist, so the next run finds it by its tag."""
    from rationale.batch_providers import OpenAIBatches

    real = OpenAIBatches.submit

    async def unreadable(self, lines, tag):
        await real(self, lines, tag)
        raise TeacherError("ValidationError: status 'queued'", category="invalid_output")

    monkeypatch.setattr(OpenAIBatches, "submit", unreadable)
    with pytest.raises(RationaleError, match=r"submitting batch part p00001 .*looked up"):
        batch(tmp_path, server)
    monkeypatch.setattr(OpenAIBatches, "submit", real)
    result = batch(tmp_path, server, wait=True)
    assert result.pending == 0 and set(server.submitted.values()) == {1}
    assert '"recovered": true' in (tmp_path / "run/batches/jobs.jsonl").read_text()


def test_a_job_the_provider_lost_stops_the_run_until_it_is_forgotten(tmp_path, server) -> None:
    from click.testing import CliRunner

    from rationale.cli import main

    server.hold = True
    batch(tmp_path, server, max_attempts=1)
    (lost,) = server.jobs
    del server.jobs[lost]  # past its retention, or deleted
    with pytest.raises(RationaleError, match=rf"does not know job {lost}.*--forget p00001"):
        batch(tmp_path, server, max_attempts=1)
    assert read_run_json(tmp_path / "run")["stopped"].startswith("fatal")
    out = CliRunner().invoke(main, ["batches", str(tmp_path / "run"), "--forget", lost])
    assert out.exit_code == 0 and "forgot part p00001 (11 requests)" in out.output
    server.hold = False
    result = batch(tmp_path, server, max_attempts=1, wait=True)
    assert result.pending == 0 and len(records(tmp_path / "run")) == 11


def test_a_lookup_that_fails_finalises_the_run(tmp_path, server, monkeypatch) -> None:
    from rationale.batch_providers import OpenAIBatches

    _cli_until_killed(tmp_path, server, OPENAI, before=False)

    async def down(self, *args, **kwargs):
        raise TeacherError("connection refused", category="connection")

    monkeypatch.setattr(OpenAIBatches, "find", down)
    with pytest.raises(RationaleError, match="cannot look up batch part p00001"):
        batch(tmp_path, server)
    assert not read_run_json(tmp_path / "run")["stopped"].startswith("running")


def test_a_kill_before_the_job_was_made_sends_it_once(tmp_path, server) -> None:
    _cli_until_killed(tmp_path, server, OPENAI, before=True)
    assert server.creates == 0
    result = batch(tmp_path, server, wait=True)
    assert result.pending == 0 and len(records(tmp_path / "run")) == 11
    assert '"abandoned"' in (tmp_path / "run/batches/jobs.jsonl").read_text()
    assert set(server.submitted.values()) == {1}


# -- money, limits, refusals ----------------------------------------------------------------------


def test_max_cost_caps_what_is_submitted(tmp_path, server) -> None:
    result = batch(tmp_path, server, max_cost=0.0005)
    assert result.stopped.startswith("budget")
    sent = result.batch["requests_submitted_this_invocation"]
    assert 0 < sent < 11 and sum(server.submitted.values()) == sent
    server.finish_all()
    collected = batch(tmp_path, server, max_cost=0.0005)  # collects, then sends what fits
    run = read_run_json(tmp_path / "run")
    assert run["cost_usd"]["total"] <= 0.0005 * 2
    assert collected.tally.cost_usd <= 0.0005


def test_max_cost_with_wait_files_what_was_paid_for(tmp_path, server) -> None:
    """With --wait a budget stop still waits for the jobs it sent and files their records."""
    result = batch(tmp_path, server, max_cost=0.0005, wait=True, max_attempts=1, verifier="none")
    sent = result.batch["requests_submitted_this_invocation"]
    assert result.stopped.startswith("budget") and result.batch["in_flight_jobs"] == 0
    assert len(records(tmp_path / "run")) == sent == 11 - result.pending and 0 < sent < 11
    assert result.tally.cost_usd <= 0.0005


def test_requests_are_split_to_the_provider_limits(tmp_path, server, monkeypatch) -> None:
    from rationale.batch_providers import OpenAIBatches

    monkeypatch.setattr(OpenAIBatches, "max_requests", 4)
    result = batch(tmp_path, server, wait=True, max_attempts=1, verifier="none")
    assert [len(j.requests) for j in server.jobs.values()] == [4, 4, 3]
    assert result.batch["rounds"] == 1 and len(records(tmp_path / "run")) == 11


@pytest.mark.parametrize(
    ("teacher", "message"),
    [("ollama/llama3", "no batch API for 'ollama/llama3'.*openai/.*anthropic/"),
     ("local", "needs an API model")],
)  # fmt: skip
def test_a_model_without_a_batch_api_is_refused_before_anything(
    tmp_path, server, teacher, message
) -> None:
    with pytest.raises(RationaleError, match=message):
        batch(tmp_path, server, teacher, api_base=None, verifier="none")
    assert not (tmp_path / "run").exists()


def test_a_refused_submission_is_one_line_and_loses_nothing(tmp_path, server) -> None:
    def refuse() -> None:
        raise PermissionError  # the handler fails: the client sees a 500

    server.before_create = refuse
    with pytest.raises(RationaleError, match=r"submitting batch part p00001 .* rerun"):
        batch(tmp_path, server, wait=True)
    server.before_create = None
    result = batch(tmp_path, server, wait=True)  # looked up first (not there), then sent
    assert result.pending == 0 and set(server.submitted.values()) == {1}


# -- filter, --retry-failed, dry run ---------------------------------------------------------------


def test_filter_in_batch_mode_judges_as_online(tmp_path, server, monkeypatch) -> None:
    run_synth(config(tmp_path, server, out="source", verifier="none"), retry_policy=FAST)
    filter_ = {"input": str(tmp_path / "source"), "verifier": OPENAI, "api_base": server.url,
               "poll_interval": 0.01}  # fmt: skip
    run_filter(SynthConfig(output=str(tmp_path / "online"), **filter_), retry_policy=FAST)
    monkeypatch.setenv("RATIONALE_HOME", str(tmp_path / "home2"))
    result = run_filter(
        SynthConfig(output=str(tmp_path / "run"), batch=True, wait=True, **filter_),
        retry_policy=FAST,
    )
    assert records(tmp_path / "run") == records(tmp_path / "online")
    assert result.batch["rounds"] == 1 and result.pending == 0


def test_retry_failed_with_limit_sends_the_failed_again(tmp_path, server) -> None:
    server.fault(teacher_for("item.good_1"), status(400), times=1)
    batch(tmp_path, server, wait=True)
    assert records(tmp_path / "run")[("s1", 0)]["state"] == "failed"
    result = batch(tmp_path, server, wait=True, retry_failed=True, limit=3)
    rec = records(tmp_path / "run")
    assert rec[("s1", 0)]["state"] == "accepted" and len(rec) == 11
    assert result.batch["requests_submitted_this_invocation"] == 2  # its teacher, its verifier


def test_dry_run_shows_the_batch_estimate_beside_the_online_one(tmp_path, server) -> None:
    estimate = run_synth(config(tmp_path, server, batch=True, dry_run=True))
    assert estimate["to_call"] == 11
    assert estimate["max_cost_usd_batch"] == pytest.approx(estimate["max_cost_usd"] / 2, abs=1e-6)
    assert server.creates == 0 and not (tmp_path / "run").exists()


# -- eval -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("teacher", [OPENAI, ANTHROPIC])
def test_eval_in_batch_mode_scores_as_online(tmp_path, server, monkeypatch, teacher) -> None:
    """An API baseline evaluated through a batch job: the same cases and metrics as online,
    submitted once; without --wait the cases stay pending until a rerun collects them."""
    from test_eval_api import first_element, make_test_file

    from rationale.evaluate import EvalConfig, run_eval

    server.responder = first_element
    data = make_test_file(tmp_path)
    base = server.url if teacher == OPENAI else server.root

    def ev(out: str, **kw):
        config = EvalConfig(model=teacher, data=str(data), output=str(tmp_path / out),
                            api_base=base, bootstrap=200, poll_interval=0.01, cases="all",
                            **kw)  # fmt: skip
        return run_eval(config)

    online = ev("online").data
    monkeypatch.setenv("RATIONALE_HOME", str(tmp_path / "home2"))
    server.hold = True
    pending = ev("batch", batch=True).data
    assert pending["pending"] == 12 and pending["batch"]["in_flight_jobs"] == 1
    server.hold = False
    done = ev("batch", batch=True, wait=True).data
    assert done["pending"] == 0 and done["metrics"] == online["metrics"]
    strip = ("cost_usd", "cached", "latency_s")
    assert [{k: v for k, v in c.items() if k not in strip} for c in done["cases"]] == [
        {k: v for k, v in c.items() if k not in strip} for c in online["cases"]
    ]
    assert set(server.submitted.values()) == {1} and server.creates == 1
    assert done["usage"]["cost_usd"] == pytest.approx(online["usage"]["cost_usd"] / 2, abs=1e-7)


def test_eval_files_a_bad_request_once_and_asks_it_again_on_the_next_run(
    tmp_path, server, monkeypatch
) -> None:
    from test_eval_api import first_element, make_test_file

    from rationale.evaluate import EvalConfig, run_eval

    server.responder = first_element
    server.fault(lambda body: "a1" in last_user_text(body), status(400), times=None)
    config = EvalConfig(model=OPENAI, data=str(make_test_file(tmp_path)), bootstrap=200,
                        output=str(tmp_path / "ev"), api_base=server.url, batch=True,
                        cases="all")  # fmt: skip
    assert run_eval(config).data["pending"] == 12  # submitted
    server.finish_all()
    with pytest.raises(RationaleError, match="3 of 12 cases failed"):  # a1's session: 3
        run_eval(config)  # collected: the bad requests are filed failed, not sent again
    out = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert out["pending"] == 0 and out["failed"] == 3 and server.creates == 1
    assert run_eval(config).data["pending"] == 3 and server.creates == 2  # asked again


def test_eval_without_wait_still_gives_up_after_the_request_attempts(tmp_path, server) -> None:
    from test_eval_api import first_element, make_test_file

    from rationale.evaluate import EvalConfig, run_eval

    server.responder = first_element
    server.fault(lambda body: "Task 0" in last_user_text(body), status(500), times=None)
    config = EvalConfig(model=OPENAI, data=str(make_test_file(tmp_path)), bootstrap=200,
                        output=str(tmp_path / "ev"), api_base=server.url, batch=True,
                        request_attempts=2, cases="all")  # fmt: skip
    for _ in range(3):  # submit; collect and send again; collect and give up
        server.finish_all()
        with contextlib.suppress(RationaleError):
            run_eval(config)
    out = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert out["pending"] == 0 and out["failed"] == 3
    assert max(server.submitted.values()) == 2


def test_eval_batch_of_a_model_without_a_batch_api_is_refused_before_writing(tmp_path) -> None:
    from test_eval_api import make_test_file

    from rationale.evaluate import EvalConfig, run_eval

    config = EvalConfig(model="ollama/llama3", data=str(make_test_file(tmp_path)),
                        output=str(tmp_path / "ev"), batch=True)  # fmt: skip
    with pytest.raises(RationaleError, match="no batch API"):
        run_eval(config)
    assert not (tmp_path / "ev").exists()


def test_eval_batch_of_a_local_model_is_refused(tmp_path) -> None:
    from test_eval_api import make_test_file

    from rationale.evaluate import EvalConfig, run_eval

    config = EvalConfig(model="smollm2-135m", data=str(make_test_file(tmp_path)),
                        output=str(tmp_path / "ev"), batch=True)  # fmt: skip
    with pytest.raises(RationaleError, match="--batch is for API models"):
        run_eval(config)
    assert not (tmp_path / "ev").exists()


def doubled(body: dict, index: int):
    """test_filter's answers, each prompt billed at twice our own count (another tokenizer)."""
    from dataclasses import replace

    from openai_server import _text

    from rationale.prompts import count_tokens

    ours = sum(count_tokens(_text(m.get("content"))) + 4 for m in body["messages"])
    return replace(responder(body, index), prompt_tokens=2 * ours)


def server_billed(server: BatchServer, model: str = OPENAI) -> float:
    from rationale.pricing import batch_price

    price_in, price_out = batch_price(model)
    billed = server.billed
    return billed["prompt_tokens"] * price_in + billed["completion_tokens"] * price_out


def test_max_cost_caps_the_run_folder_over_reruns(tmp_path, server) -> None:
    """Issue 21.3: a rerun that collects round 1 and sends round 2 counts round 1's bill; the
    same cap again sends nothing and says what was spent; a higher cap continues."""
    from test_budget import said_billed

    server.responder = doubled
    cap, settings = 0.002, {"max_tokens": 2000}
    first = batch(tmp_path, server, max_cost=cap, **settings)  # submits round 1
    assert first.batch["requests_submitted_this_invocation"] > 0
    second = batch(tmp_path, server, max_cost=cap, wait=True, **settings)  # collects, round 2...
    run = read_run_json(tmp_path / "run")
    assert run["cost_usd"]["total"] <= cap, run["cost_usd"]
    assert server_billed(server) <= cap
    assert second.stopped and second.stopped.startswith("budget"), second.stopped
    assert said_billed(second.stopped) == pytest.approx(run["cost_usd"]["total"], abs=1.5e-6)
    creates = server.creates
    third = batch(tmp_path, server, max_cost=cap, wait=True, **settings)  # the same cap
    assert server.creates == creates and third.tally.cost_usd == 0, third.batch
    assert third.stopped and third.stopped.startswith("budget")
    more = batch(tmp_path, server, max_cost=2 * cap, wait=True, **settings)  # a higher cap
    assert server.creates > creates and more.pending < third.pending
    assert read_run_json(tmp_path / "run")["cost_usd"]["total"] <= 2 * cap
    assert server_billed(server) <= 2 * cap


def greedy(body: dict, index: int):
    """`doubled`, and every answer uses all of its ``max_tokens`` (the worst a provider bills)."""
    from dataclasses import replace

    return replace(doubled(body, index), completion_tokens=int(body["max_tokens"]))


@pytest.mark.parametrize(("teacher", "cap"), [(OPENAI, 0.0015), (ANTHROPIC, 0.01)],
                         ids=["openai", "anthropic"])  # fmt: skip
def test_the_first_round_cannot_pass_the_cap(tmp_path, server, teacher, cap) -> None:
    """Issue 21.2: before any job has told us how the provider counts, a round is reserved at
    each request's worst case, so a provider counting prompts at 2x our estimate and answering
    with every token of max_tokens cannot take the first round past the cap."""
    server.responder = greedy
    result = batch(tmp_path, server, teacher, max_cost=cap, wait=True, max_attempts=1,
                   verifier="none")  # fmt: skip
    assert result.batch["requests_submitted_this_invocation"] > 0
    assert server_billed(server, teacher) <= cap, server_billed(server, teacher)
    assert read_run_json(tmp_path / "run")["cost_usd"]["total"] <= cap


def test_a_second_models_first_round_cannot_pass_the_cap(tmp_path, server) -> None:
    """Found in review: the teacher's collected round must not vouch for another model's count.
    The teacher (gpt-4o-mini) bills our own count; the verifier (gpt-4o) bills 2.5x it and all
    of max_tokens. Before: --max-cost 0.004 billed $0.00528."""
    from dataclasses import replace

    from openai_server import _text

    from rationale.prompts import count_tokens

    def by_model(body: dict, index: int):
        answer = responder(body, index)
        if "mini" in body["model"]:
            return answer
        ours = sum(count_tokens(_text(m.get("content"))) + 4 for m in body["messages"])
        return replace(answer, prompt_tokens=int(2.5 * ours), completion_tokens=body["max_tokens"])

    server.responder = by_model
    for cap in (0.004, 0.008):
        out = f"run-{cap}"
        batch(tmp_path, server, out=out, wait=True, max_cost=cap, verifier="openai/gpt-4o",
              max_attempts=1)  # fmt: skip
        assert read_run_json(tmp_path / out)["cost_usd"]["total"] <= cap
