"""The run folder's promises: one writer, read-only readers, nothing vanishes, no secrets,
no silent fallbacks, and a crash that keeps every answer paid for (issue 9, points 2-6, 8, 9)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import EXAMPLES, record, write_lines

from rationale import RationaleError
from rationale.rundir import RunDir, read_run_json
from rationale.synth import SynthConfig, run_synth
from rationale.teacher import RetryPolicy

SAMPLE = EXAMPLES / "mind2web" / "shopping_sample.jsonl"
FAST = RetryPolicy(max_attempts=3, backoff=0.01, max_backoff=0.05)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")


def synth(tmp_path: Path, server, **overrides):
    config = {
        "input": str(SAMPLE),
        "output": str(tmp_path / "run"),
        "teacher": "openai/test-model",
        "api_base": server.url,
        "limit": 8,
        "concurrency": 4,
        "timeout": 5.0,
        "verifier": "none",
        **overrides,
    }
    return run_synth(SynthConfig(**config), retry_policy=FAST)


def lines(run: Path, state: str) -> list[dict]:
    file = run / f"{state}.jsonl"
    return [json.loads(x) for x in file.read_text().splitlines()] if file.exists() else []


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- point 5: one writer; dry runs and reports never write ---------------------------------------


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path: Path) -> None:
    first = RunDir(tmp_path / "run")
    first.open("synth")
    try:
        with pytest.raises(RationaleError, match=r"being written by rationale synth \(pid"):
            RunDir(tmp_path / "run").open("filter")
        # and from another process too (flock is per open file, across processes)
        code = (
            "import sys\nfrom rationale.rundir import RunDir\n"
            "try:\n    RunDir(sys.argv[1]).open('synth')\n"
            "except Exception as e:\n    print(e); sys.exit(3)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True
        )
        assert out.returncode == 3 and "being written by" in out.stdout
    finally:
        first.close()
    second = RunDir(tmp_path / "run")  # released: the next writer gets it
    second.open("synth")
    second.close()


def test_synth_on_a_folder_being_written_stops_and_touches_nothing(
    tmp_path: Path, openai_server
) -> None:
    synth(tmp_path, openai_server, limit=2)
    run = tmp_path / "run"
    before = snapshot(run)
    holder = RunDir(run)
    holder.open("synth")
    try:
        with pytest.raises(RationaleError, match="being written by"):
            synth(tmp_path, openai_server, limit=4)
    finally:
        holder.close()
    after = snapshot(run)
    after.pop(".lock", None), before.pop(".lock", None)
    assert after == before


def test_dry_run_and_report_never_repair_or_write(tmp_path: Path, openai_server) -> None:
    from rationale.report import build_report

    synth(tmp_path, openai_server, limit=3)
    run = tmp_path / "run"
    with open(run / "accepted.jsonl", "a") as f:
        f.write('{"schema_version": 1, "state": "acc')  # a line torn by a kill
    before = snapshot(run)
    estimate = synth(tmp_path, openai_server, limit=5, dry_run=True)
    assert estimate["already_done"] == 3 and estimate["to_call"] == 2
    report = build_report(run)
    assert report["counts"]["accepted"] == 3
    assert snapshot(run) == before  # the torn line is still there: only a writer repairs


# -- point 8: unreadable run.json, tokenizer fallback --------------------------------------------


def test_an_unreadable_run_json_is_an_error_not_a_skipped_check(
    tmp_path: Path, openai_server
) -> None:
    synth(tmp_path, openai_server, limit=2)
    (tmp_path / "run" / "run.json").write_text("{not json")
    with pytest.raises(RationaleError, match=r"run\.json: unreadable"):
        synth(tmp_path, openai_server, limit=2, teacher="openai/another-model")


def test_run_json_records_the_tokenizer_and_a_fallback(
    tmp_path: Path, openai_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    synth(tmp_path, openai_server, limit=1)
    info = read_run_json(tmp_path / "run")["tokenizer"]
    assert info == {"name": "cl100k_base", "fallback": None}  # litellm ships the file offline
    monkeypatch.setattr(
        "rationale.tokens.tokenizer_info",
        lambda: {"name": "chars/4", "fallback": "cl100k_base could not load (test)"},
    )
    synth(tmp_path, openai_server, limit=2, output=str(tmp_path / "run2"))
    info = read_run_json(tmp_path / "run2")["tokenizer"]
    assert info == {"name": "chars/4", "fallback": "cl100k_base could not load (test)"}


# -- point 9: credentials in --api-base ----------------------------------------------------------


def test_credentials_in_api_base_never_reach_run_json_or_errors(
    tmp_path: Path, openai_server
) -> None:
    host = openai_server.url.removeprefix("http://")
    secret_url = f"http://alice:hunter2-PASSWORD@{host}?api_key=qs-SECRET-42&keep=1"
    ok = synth(tmp_path, openai_server, limit=2, api_base=secret_url)
    assert ok.counts == {"accepted": 2, "rejected": 0, "failed": 0}
    assert openai_server.count == 2
    run = tmp_path / "run"
    everything = "".join(p.read_text(errors="replace") for p in run.iterdir() if p.is_file())
    assert "hunter2-PASSWORD" not in everything and "qs-SECRET-42" not in everything
    assert host.split(":")[0] in read_run_json(run)["config"]["api_base"]  # the host stays
    # an error naming the endpoint: nothing listens on port 9 (discard)
    bad = "http://bob:s3cr3t-PW@127.0.0.1:9/v1?token=tok-SECRET-7"
    summary = synth(
        tmp_path, openai_server, limit=1, api_base=bad, output=str(tmp_path / "r2"),
        teacher="openai/unreached-model",
    )  # fmt: skip
    assert summary.counts["failed"] == 1
    text = "".join(
        p.read_text(errors="replace") for p in (tmp_path / "r2").iterdir() if p.is_file()
    )
    assert "s3cr3t-PW" not in text and "tok-SECRET-7" not in text


# -- point 4: nothing vanishes -------------------------------------------------------------------


def test_on_error_skip_reports_every_line_and_session_in_run_json_and_stderr(
    tmp_path: Path, openai_server, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_lines(
        tmp_path / "in.jsonl",
        [
            record("s1", 0),
            record("s1", 1, action={"type": "clik", "name": "x"}),  # bad: its session goes
            record("s2", 0),
            "{not json",  # bad, session unknown
            record("s3", 0),
        ],
    )
    summary = synth(tmp_path, openai_server, input=str(data), on_error="skip", limit=None)
    assert summary.counts["accepted"] == 2  # s2 and s3
    skipped = read_run_json(tmp_path / "run")["skipped_input"]
    assert sorted(x["line"] for x in skipped["lines"]) == [2, 4]
    assert skipped["sessions"] == {"s1": [1, 2]}
    err = capsys.readouterr().err
    assert "line 2" in err and "line 4" in err and "skipped session 's1'" in err


def test_retry_failed_with_limit_keeps_the_failed_records_past_the_limit(
    tmp_path: Path, openai_server
) -> None:
    from openai_server import status

    # every request of the first run fails (400 is not retried): 6 records in failed.jsonl
    openai_server.fault(lambda body: True, status(400), times=None)
    first = synth(tmp_path, openai_server, limit=6)
    assert first.counts["failed"] == 6
    openai_server.reset()
    second = synth(tmp_path, openai_server, limit=2, retry_failed=True)
    run = tmp_path / "run"
    assert second.counts == {"accepted": 2, "rejected": 0, "failed": 4}
    assert len(lines(run, "accepted")) == 2 and len(lines(run, "failed")) == 4
    assert openai_server.count == 2


# -- point 3: history rationales from the run ----------------------------------------------------


def test_history_rationales_carry_accepted_synthesized_ones(tmp_path: Path, openai_server) -> None:
    # no record has a human rationale: before, the history carried none
    data = write_lines(
        tmp_path / "in.jsonl",
        [record("s1", i, context=f"<button name='search'>page {i}</button>") for i in range(4)],
    )
    synth(tmp_path, openai_server, input=str(data), history_rationales=True, limit=None)
    accepted = {r["record"]["step"]: r["rationale"] for r in lines(tmp_path / "run", "accepted")}
    assert len(accepted) == 4
    prompts = {}
    for req in openai_server.requests:
        text = json.dumps(req["body"]["messages"])
        step = next(i for i in range(4) if f"page {i}<" in text)
        prompts[step] = text
    for step in range(1, 4):  # every earlier step's accepted rationale is in the prompt
        for earlier in range(step):
            assert json.dumps(accepted[earlier])[1:-1] in prompts[step]
    assert json.dumps(accepted[3])[1:-1] not in prompts[2]


# -- point 6: a worker's unexpected error ---------------------------------------------------------


def test_an_unexpected_error_mid_run_keeps_every_paid_answer(tmp_path: Path, openai_server) -> None:
    from rationale.cache import ResponseCache

    source = (Path(__file__).parent.parent / "prompts" / "generic.jinja").read_text()
    # renders every step but the third step of a session: an error in the middle of the run
    broken = source.replace("{% block system %}", "{% block system %}{% if step == 3 %}"
                            "{{ no_such_function() }}{% endif %}", 1)  # fmt: skip
    template = tmp_path / "broken.jinja"
    template.write_text(broken)
    openai_server.latency = 0.2  # several requests in flight when the error comes
    with pytest.raises(RationaleError) as info:
        synth(tmp_path, openai_server, template=str(template), limit=40, concurrency=4)
    message = str(info.value)
    assert "\n" not in message and "no_such_function" in message and "pending" in message
    run = tmp_path / "run"
    filed = sum(len(lines(run, s)) for s in ("accepted", "rejected", "failed"))
    ledger = (run / "ledger.jsonl").read_text().splitlines()
    assert 0 < filed < 40
    # every request that was answered is in the ledger, the cache and a flushed line
    assert openai_server.count == len(ledger) == filed
    cache = ResponseCache()
    try:
        assert len(cache) == filed
    finally:
        cache.close()
    state = read_run_json(run)
    assert state["stopped"].startswith("error: PromptError")
    assert state["pending"] == state["records"] - filed
    again = RunDir(run)  # the lock was released
    again.open("synth")
    again.close()


def test_a_run_made_with_skip_is_read_by_filter_distill_data_and_export_sft(
    tmp_path: Path, openai_server
) -> None:
    from distill.data import SFTData
    from rationale.filter import run_filter

    data = write_lines(
        tmp_path / "in.jsonl",
        [record("s1", 0), {**record("s1", 1), "step": "x"}, record("s2", 0), record("s2", 1)],
    )
    synth(tmp_path, openai_server, input=str(data), on_error="skip", limit=None)
    run = tmp_path / "run"
    # the run's input still has its bad line: readers follow the run's own --on-error skip
    examples = list(SFTData(run).examples())
    assert sorted((e.session_id, len(e.steps)) for e in examples) == [("s2", 1), ("s2", 1)]
    config = SynthConfig(
        input=str(run), output=str(tmp_path / "filtered"), verifier="openai/test-model",
        api_base=openai_server.url, timeout=5.0,
    )  # fmt: skip
    summary = run_filter(config, retry_policy=FAST)
    assert sum(summary.counts.values()) == 2
    # a torn or foreign line inside accepted.jsonl: an error naming it, or left out with skip
    with open(run / "accepted.jsonl", "a") as f:
        f.write('{"state": "accepted"}\n')
    with pytest.raises(Exception, match=r"accepted\.jsonl line 3"):
        SFTData(run)
    lenient = SFTData(run, on_error="skip")
    assert len(list(lenient.examples())) == 2
    assert lenient.skipped and "line 3" in lenient.skipped[0]
    out = subprocess.run(
        [sys.executable, "-m", "rationale.cli", "export-sft", str(run), "-o",
         str(tmp_path / "sft.jsonl"), "--on-error", "skip"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len((tmp_path / "sft.jsonl").read_text().splitlines()) == 2
    assert "skipped:" in out.stderr and "line 3" in out.stderr


# -- found in review: the ledger, foreign folders, multi-line errors, SIGTERM, dry runs -----------


def test_a_torn_ledger_line_is_repaired_and_a_bad_one_named(tmp_path: Path, openai_server) -> None:
    from rationale.report import build_report

    synth(tmp_path, openai_server, limit=3)
    run = tmp_path / "run"
    with open(run / "ledger.jsonl", "a") as f:
        f.write('{"kind": "teacher", "requests": 1, "ok": tr')  # torn by a kill
    synth(tmp_path, openai_server, limit=5)  # the writer cuts the torn line first
    assert read_run_json(run)["requests"]["total"] == 5
    assert build_report(run)["spend"]["teacher"]["requests"] == 5
    with open(run / "ledger.jsonl", "a") as f:
        f.write("not a ledger entry\n")
    with pytest.raises(RationaleError, match=r"ledger\.jsonl line 6: not a ledger entry"):
        build_report(run)


def test_a_folder_with_records_but_no_run_json_is_refused(tmp_path: Path, openai_server) -> None:
    synth(tmp_path, openai_server, limit=2)
    (tmp_path / "run" / "run.json").unlink()
    with pytest.raises(RationaleError, match=r"holds records but no run\.json"):
        synth(tmp_path, openai_server, limit=2)


def test_a_multi_line_error_exits_as_one_line_with_the_traceback_kept(
    tmp_path: Path, openai_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rationale.judging

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("first line of the bug\nsecond line\nthird line")

    monkeypatch.setattr(rationale.judging, "outcome", boom)
    monkeypatch.setattr("rationale.synth.outcome", boom)
    with pytest.raises(RationaleError) as info:
        synth(tmp_path, openai_server, limit=4)
    assert "\n" not in str(info.value) and "first line of the bug" in str(info.value)
    assert "error.txt" in str(info.value)
    run = tmp_path / "run"
    assert read_run_json(run)["stopped"] == "error: RuntimeError: first line of the bug"
    trace = (run / "error.txt").read_text()
    assert "Traceback" in trace and "third line" in trace


def test_sigterm_finalises_the_run_and_a_rerun_finishes_it(tmp_path: Path) -> None:
    import os
    import signal
    import time

    env = {**os.environ, "RATIONALE_HOME": str(tmp_path / "home"), "OPENAI_API_KEY": "sk-t"}
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "openai_server.py"), "--port", "0",
         "--latency", "0.3"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = server.stdout.readline().split()[1]  # type: ignore[union-attr]
        cmd = [sys.executable, "-m", "rationale.cli", "synth", str(SAMPLE), "-o",
               str(tmp_path / "run"), "--teacher", "openai/test-model", "--api-base",
               f"http://127.0.0.1:{port}/v1", "--limit", "40", "--concurrency", "2",
               "--verifier", "none"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        accepted = tmp_path / "run" / "accepted.jsonl"
        while time.monotonic() < deadline and (
            not accepted.exists() or len(accepted.read_text().splitlines()) < 3
        ):
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("Error: synth stopped by SIGTERM with") and "pending" in last
        state = read_run_json(tmp_path / "run")
        assert state["stopped"] == "interrupted: SIGTERM"
        filed = len(accepted.read_text().splitlines())
        assert 3 <= filed < 40 and state["counts"]["accepted"] == filed
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert read_run_json(tmp_path / "run")["counts"]["accepted"] == 40
    finally:
        server.kill()
        server.wait()


def test_dry_run_counts_retried_failures_and_refuses_another_runs_folder(
    tmp_path: Path, openai_server
) -> None:
    from openai_server import status

    openai_server.fault(lambda body: True, status(400), times=None)
    synth(tmp_path, openai_server, limit=4)  # 4 failed
    openai_server.reset()
    estimate = synth(tmp_path, openai_server, limit=3, dry_run=True, retry_failed=True)
    assert estimate["already_done"] == 0 and estimate["to_call"] == 3
    assert synth(tmp_path, openai_server, limit=3, dry_run=True)["already_done"] == 3
    with pytest.raises(RationaleError, match="different teacher"):
        synth(tmp_path, openai_server, limit=3, dry_run=True, teacher="openai/other-model")


def test_a_template_comment_keeps_the_version_and_the_rules_are_in_the_identity(
    tmp_path: Path, openai_server
) -> None:
    from rationale.prompts import load_template

    source = (Path(__file__).parent.parent / "prompts" / "generic.jinja").read_text()
    first, second = tmp_path / "a.jinja", tmp_path / "b.jinja"
    first.write_text(source)
    second.write_text(source.replace(" copied_example repeated_sentence", "", 1))  # rules line
    assert load_template(str(first)).version == load_template(str(second)).version
    synth(tmp_path, openai_server, limit=2, template=str(first))
    assert openai_server.count == 2
    # same prompts (so the cache answers), but other rules: not the same run
    with pytest.raises(RationaleError, match="different rules"):
        synth(tmp_path, openai_server, limit=2, template=str(second))
    synth(tmp_path, openai_server, limit=2, template=str(second), output=str(tmp_path / "r2"))
    assert openai_server.count == 2  # answered from the cache
