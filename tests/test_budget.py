"""``--max-cost`` is a hard cap on what the provider bills, retries and invalid answers included,
and the ledger holds the provider's own token counts (issue 9, point 7).

The scripted server bills like a provider: every 200 answer carries a usage block and is billed,
whether or not its content is the JSON asked for; 429s and 500s are not billed.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from helpers import EXAMPLES
from openai_server import not_json_content, status

from rationale import RationaleError
from rationale.pricing import model_price
from rationale.rundir import ledger_entries, ledger_totals, read_run_json
from rationale.synth import SynthConfig, run_synth
from rationale.teacher import RetryPolicy

SAMPLE = EXAMPLES / "mind2web" / "shopping_sample.jsonl"
PRICED = "openai/gpt-4o-mini"  # in litellm's offline price map
FAST = RetryPolicy(max_attempts=6, backoff=0.005, max_backoff=0.02)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-budget")


def billed_usd(server) -> float:
    """What the server billed, priced as litellm's map prices the model."""
    price_in, price_out = model_price(PRICED)
    billed = server.billed
    return billed["prompt_tokens"] * price_in + billed["completion_tokens"] * price_out


def said_billed(stopped: str | None) -> float:
    """The figure a budget stop says was billed to the run folder (rounded to 6 places)."""
    import re

    found = re.search(r"\$([0-9.]+) billed to this run folder", stopped or "")
    assert found, stopped
    return float(found.group(1))


def capped(tmp_path: Path, server, cap: float, **overrides):
    """A synth run of the shipped sample under ``--max-cost cap`` against the local server."""
    settings = {"concurrency": 8, "verifier": "none", "timeout": 5.0, **overrides}
    config = SynthConfig(
        input=str(SAMPLE), output=str(tmp_path / "run"), teacher=PRICED, api_base=server.url,
        max_cost=cap, **settings,
    )  # fmt: skip
    return run_synth(config, retry_policy=FAST)


def faulty(seed: int):
    """30% 429/500 (not billed), 30% billed answers that are not JSON, the rest good."""
    rng = random.Random(seed)

    def responder(body: dict, index: int):
        r = rng.random()
        if r < 0.15:
            return status(429)
        if r < 0.30:
            return status(500)
        if r < 0.60:
            return not_json_content()
        return None  # the default (valid) answer

    return responder


@pytest.mark.parametrize("client", ["fast", "litellm"])
def test_max_cost_holds_against_retries_and_paid_invalid_answers(
    tmp_path: Path, openai_server, client: str
) -> None:
    cap = 0.004
    openai_server.responder = faulty(seed=3)
    summary = capped(tmp_path, openai_server, cap, client=client)
    assert summary.stopped and summary.stopped.startswith("budget")
    billed, billed_cost = openai_server.billed, billed_usd(openai_server)
    assert billed["answers"] > 10  # the cap was reached through many billed answers
    assert billed_cost <= cap  # never spend past the cap, by the provider's own count
    run = tmp_path / "run"
    ledger = ledger_totals(run / "ledger.jsonl")
    # the ledger holds exactly what the server billed, invalid answers included
    assert ledger["prompt_tokens"] == billed["prompt_tokens"]
    assert ledger["completion_tokens"] == billed["completion_tokens"]
    assert ledger["requests"] == openai_server.count
    assert ledger["cost_usd"] == pytest.approx(billed_cost, rel=1e-9)
    state = read_run_json(run)
    assert state["cost_usd"]["total"] == pytest.approx(billed_cost, abs=1e-8)
    assert state["cost_usd"]["paid_invalid_answers"] > 0
    assert summary.tally.cost_usd == pytest.approx(billed_cost, rel=1e-9)
    entries = list(ledger_entries(run / "ledger.jsonl"))  # (not the lines written before)
    invalid = [e for e in entries if not e["ok"] and e.get("completion_tokens")]
    assert invalid and all(e["cost_usd"] > 0 for e in invalid)


def doubled(body: dict, index: int):
    """A valid answer whose prompt is billed at twice our own count (another tokenizer)."""
    from openai_server import _text, ok

    from rationale.prompts import count_tokens

    ours = sum(count_tokens(_text(m.get("content"))) + 4 for m in body["messages"])
    return ok(prompt_tokens=2 * ours)


def test_the_cap_is_the_run_folders_over_reruns(tmp_path: Path, openai_server) -> None:
    """Issue 21.3: a rerun with the same --max-cost bills nothing more and says what was spent;
    a higher one continues, and the folder's total stays under it."""
    from rationale.runner import summary_lines

    openai_server.responder = doubled
    cap = 0.002
    first = capped(tmp_path, openai_server, cap, concurrency=4)
    assert first.stopped and first.stopped.startswith("budget")
    sent, total = openai_server.count, read_run_json(tmp_path / "run")["cost_usd"]["total"]
    assert 0 < total <= cap and billed_usd(openai_server) <= cap
    second = capped(tmp_path, openai_server, cap, concurrency=4)  # the same cap
    assert openai_server.count == sent and second.tally.cost_usd == 0
    assert said_billed(second.stopped) == pytest.approx(total, abs=1.5e-6)
    said = [x for x in summary_lines("synth", second) if "stopped early" in x]
    assert len(said) == 1 and "higher --max-cost" in said[0], said
    third = capped(tmp_path, openai_server, 2 * cap, concurrency=4)  # a higher cap continues
    assert openai_server.count > sent and third.counts["accepted"] > second.counts["accepted"]
    total = read_run_json(tmp_path / "run")["cost_usd"]["total"]
    assert total == pytest.approx(billed_usd(openai_server), abs=1e-8)
    assert total <= 2 * cap and third.tally.cost_usd <= cap


def test_an_unpriced_verifier_makes_max_cost_refuse_to_start(tmp_path: Path, openai_server) -> None:
    config = SynthConfig(
        input=str(SAMPLE), output=str(tmp_path / "run"), teacher=PRICED,
        api_base=openai_server.url, max_cost=1.0, verifier="openai/test-model", limit=2,
    )  # fmt: skip
    with pytest.raises(RationaleError, match="price of the verifier 'openai/test-model'"):
        run_synth(config, retry_policy=FAST)
    assert openai_server.count == 0 and not (tmp_path / "run").exists()


def test_answers_without_usage_are_charged_their_whole_reservation(
    tmp_path: Path, openai_server
) -> None:
    """A provider that reports no usage still bills: the cap holds by the server's count."""
    from openai_server import ok

    cap = 0.003
    openai_server.responder = lambda body, index: ok(usage=False)
    summary = capped(tmp_path, openai_server, cap)
    assert summary.stopped and summary.stopped.startswith("budget")
    assert billed_usd(openai_server) <= cap
    state = read_run_json(tmp_path / "run")
    assert state["cost_usd"]["unknown_for_requests"] == openai_server.count > 0
    entries = list(ledger_entries(tmp_path / "run" / "ledger.jsonl"))
    assert all(e["usage_unknown"] and e["reserved_usd"] > 0 for e in entries)


@pytest.mark.parametrize("client", ["fast", "litellm"])
def test_a_provider_counting_more_tokens_than_we_do_cannot_break_the_cap(
    tmp_path: Path, openai_server, client: str
) -> None:
    """The provider bills 3x the prompt tokens our tokenizer counts (another tokenizer, a
    schema the client adds): the margin is learned from the first answer."""
    from openai_server import ok

    def counts_triple(body: dict, index: int):
        chars = sum(len(m.get("content") or "") for m in body["messages"])
        return ok(prompt_tokens=3 * max(1, chars // 4))

    cap = 0.004
    openai_server.responder = counts_triple
    summary = capped(tmp_path, openai_server, cap, client=client)
    assert summary.stopped and summary.stopped.startswith("budget")
    assert billed_usd(openai_server) <= cap
    assert summary.tally.cost_usd <= cap and summary.counts["accepted"] > 3


def test_a_failed_request_is_not_a_paid_invalid_answer(tmp_path: Path) -> None:
    """Nothing listens on port 9: no answer, nothing billed, nothing of unknown price."""
    config = SynthConfig(
        input=str(SAMPLE), output=str(tmp_path / "run"), teacher=PRICED, client="litellm",
        api_base="http://127.0.0.1:9/v1", verifier="none", limit=2, timeout=2.0,
    )  # fmt: skip
    summary = run_synth(config, retry_policy=RetryPolicy(max_attempts=2, backoff=0.01))
    assert summary.counts["failed"] == 2
    cost = read_run_json(tmp_path / "run")["cost_usd"]
    assert cost["paid_invalid_answers"] == 0 and cost["unknown_for_requests"] == 0
    assert cost["total"] == 0


@pytest.mark.parametrize("client", ["fast", "litellm"])
def test_the_first_request_is_reserved_at_its_worst(tmp_path: Path, openai_server, client) -> None:
    """Issue 21.2, online: before any answer has told how the provider counts, the first request
    is reserved as if every byte of its body were a token, so a provider that bills 3x our count
    and every token of max_tokens cannot take a fresh run past caps just above our own estimate."""
    from openai_server import _text, ok

    from rationale.prompts import count_tokens

    def greedy(body: dict, index: int):
        ours = sum(count_tokens(_text(m.get("content"))) + 4 for m in body["messages"])
        return ok(prompt_tokens=3 * ours, completion_tokens=body["max_tokens"])

    openai_server.responder = greedy
    over, spent = [], 0.0
    for seed, cap in enumerate([0.00018, 0.0002, 0.00022, 0.00025, 0.0003, 0.0004, 0.0015]):
        before = billed_usd(openai_server)
        capped(tmp_path / str(seed), openai_server, cap, client=client, seed=seed, limit=2)
        if (spent := billed_usd(openai_server) - before) > cap:
            over.append((cap, spent))
    assert not over, over
    assert spent > 0  # a cap that holds the worst case lets the run go on


def test_a_request_that_timed_out_counts_at_its_worst(tmp_path: Path, openai_server) -> None:
    """Found in review: the provider answers (and bills) a request our client gave up on. Every
    answer comes after the client's timeout: before, the run counted $0 and the server billed
    $0.0066 against --max-cost 0.004."""
    from openai_server import delay

    openai_server.responder = lambda body, index: delay(1.2)
    cap = 0.004
    summary = capped(tmp_path, openai_server, cap, timeout=0.5, concurrency=4, limit=12)
    assert summary.stopped and summary.stopped.startswith("budget"), summary.stopped
    time.sleep(1.5)  # the answers the client gave up on, billed as they complete
    assert 0 < billed_usd(openai_server) <= cap
    state = read_run_json(tmp_path / "run")
    assert state["cost_usd"]["unknown_for_requests"] > 0


def test_a_rerun_counts_what_a_kill_left_in_flight(tmp_path: Path, openai_server) -> None:
    """Found in review: a kill -9 with requests out leaves them billed by the provider but not
    settled in the ledger; each went into the ledger before it was sent, so a rerun with the
    same cap counts it at its worst case and the cap holds by the server's own count."""
    import os
    import signal
    import subprocess
    import sys

    from openai_server import delay, ok

    from rationale.prompts import count_tokens

    def greedy(body: dict, index: int):  # 3x our count, all of max_tokens, 0.6 s to answer
        ours = sum(count_tokens(m["content"]) + 4 for m in body["messages"])
        return delay(0.6, then=ok(prompt_tokens=3 * ours, completion_tokens=body["max_tokens"]))

    openai_server.responder = greedy
    cap, out = 0.006, tmp_path / "run"
    cmd = [str(Path(sys.executable).parent / "rationale"), "synth", str(SAMPLE), "-o", str(out),
           "--teacher", PRICED, "--api-base", openai_server.url, "--verifier", "none",
           "--concurrency", "4", "--max-cost", str(cap), "--limit", "40"]  # fmt: skip
    env = {**os.environ, "RATIONALE_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and openai_server.count < 6:
        time.sleep(0.01)
    while time.monotonic() < deadline and openai_server.count == openai_server.billed["answers"]:
        time.sleep(0.01)  # until a request is out
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.8)  # what was in flight is answered, and billed
    assert openai_server.billed["abandoned"] >= 1
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "stopped early (budget" in rerun.stderr
    assert billed_usd(openai_server) <= cap, (billed_usd(openai_server), openai_server.billed)
