"""Issue 21.3: ``--max-cost`` is the cap of the run folder, for filter and eval as for synth
(tests/test_budget.py, tests/test_batch.py), online and batch: a rerun counts what every earlier
invocation was billed, a rerun with the same cap sends nothing and says what was spent, a higher
cap continues. The provider bills prompts at 2x our own count (another tokenizer), and its own
count is the one checked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from batch_server import BatchServer
from openai_server import ScriptedServer, _text
from test_batch import server_billed
from test_budget import billed_usd, said_billed
from test_eval_api import first_element, make_test_file

from rationale.evaluate import EvalConfig, run_eval
from rationale.filter import run_filter
from rationale.rundir import read_run_json
from rationale.synth import SynthConfig, run_synth
from rationale.teacher import RetryPolicy

FAST = RetryPolicy(max_attempts=3, backoff=0.01, max_backoff=0.05)
MODEL = "openai/gpt-4o-mini"


def twice_ours(body: dict) -> int:
    """The prompt tokens the provider bills: twice our own count (another tokenizer)."""
    from rationale.prompts import count_tokens

    return 2 * sum(count_tokens(_text(m.get("content"))) + 4 for m in body["messages"])


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-cap")
    monkeypatch.setenv("RATIONALE_HOME", str(tmp_path / "home"))  # a cache of its own
    with BatchServer() as s:
        yield s


def sent(server: ScriptedServer) -> int:
    """Requests that cost: online ones, and requests submitted in jobs."""
    return server.count + sum(server.submitted.values())


def rerun_semantics(server: BatchServer, run: Callable[[float], tuple[str | None, float]],
                    cap: float, batch: bool) -> None:  # fmt: skip
    """``run(cap)`` is one invocation: (why it stopped, the folder's total billed)."""

    def billed() -> float:  # by the server's own count, at the batch or the online price
        return server_billed(server, MODEL) if batch else billed_usd(server)

    stopped, total = run(cap)
    assert stopped and stopped.startswith("budget"), stopped
    assert 0 < total <= cap and billed() <= cap, (total, server.billed)
    assert total == pytest.approx(billed(), abs=1e-8)
    before = sent(server)
    stopped, again = run(cap)  # the same cap: nothing sent, and it says what was spent
    assert sent(server) == before and again == total
    assert said_billed(stopped) == pytest.approx(total, abs=1.5e-6)
    stopped, more = run(2 * cap)  # a higher cap continues
    assert sent(server) > before and total < more <= 2 * cap
    assert more == pytest.approx(billed(), abs=1e-8) and billed() <= 2 * cap


@pytest.mark.parametrize("batch", [False, True], ids=["online", "batch"])
def test_eval_caps_its_folder_over_reruns(tmp_path: Path, server: BatchServer, batch) -> None:

    def answer(body: dict, index: int):
        return replace(first_element(body, index), prompt_tokens=twice_ours(body))

    server.responder = answer
    data = make_test_file(tmp_path, sessions=8)

    def run(cap: float) -> tuple[str | None, float]:
        config = EvalConfig(model=MODEL, data=str(data), output=str(tmp_path / "ev"),
                            api_base=server.url, bootstrap=50, cases="all", backoff=0.01,
                            concurrency=2, max_cost=cap, batch=batch, wait=batch,
                            poll_interval=0.01, max_tokens=100)  # fmt: skip
        out = run_eval(config).data
        return out["stopped"], out["usage"]["cost_usd"]

    rerun_semantics(server, run, 0.0006 if batch else 0.0012, batch)


@pytest.mark.parametrize("batch", [False, True], ids=["online", "batch"])
def test_filter_caps_its_folder_over_reruns(tmp_path: Path, server: BatchServer, batch) -> None:
    from test_filter import records_file, responder

    def answer(body: dict, index: int):
        return replace(responder(body, index), prompt_tokens=twice_ours(body))

    server.responder = answer
    source = SynthConfig(
        input=str(records_file(tmp_path)),
        output=str(tmp_path / "source"),
        teacher="openai/test-model",
        api_base=server.url,
        verifier="none",
    )
    run_synth(source, retry_policy=FAST)  # fmt: skip
    cost = read_run_json(tmp_path / "source")["cost_usd"]["total"]
    server.reset()  # what the filter is billed, apart

    def run(cap: float) -> tuple[str | None, float]:
        config = SynthConfig(input=str(tmp_path / "source"), output=str(tmp_path / "run"),
                             verifier=MODEL, api_base=server.url, max_cost=cap, concurrency=2,
                             batch=batch, wait=batch, poll_interval=0.01,
                             verify_max_tokens=100)  # fmt: skip
        summary = run_filter(config, retry_policy=FAST)
        return summary.stopped, read_run_json(tmp_path / "run")["cost_usd"]["total"]

    assert cost == 0  # the source's teacher is unpriced: only the filter's bill is counted
    rerun_semantics(server, run, 0.0004 if batch else 0.0008, batch)
