"""`rationale eval` of an API model (a prompt-only baseline) through the local test server:
the engine's retries, cache, ledger and budget; a kill and a resume; the prompt never leaks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import record, wait_for_cases, write_lines
from openai_server import ScriptedServer, last_user_text, ok, status

from rationale.errors import RationaleError
from rationale.eval_cases import eval_cases
from rationale.evaluate import EvalConfig, run_eval
from rationale.predictor import Predictor
from rationale.records import RecordFile

RATIONALE = Path(sys.executable).parent / "rationale"
NAME = re.compile(r'name="([^"]+)"')


def page(*names: str) -> str:
    return "".join(f'<button name="{n}">{n}</button>' for n in names)


def make_test_file(tmp_path: Path, sessions: int = 4) -> Path:
    """Sessions of 3 steps; the first element on each page is the true click at steps 0 and 2,
    not at step 1 (so a model that clicks the first element is right on 2 of 3 steps)."""
    lines = []
    for s in range(sessions):
        sid = f"s{s}"
        lines += [
            record(sid, 0, context=page(f"a{s}", f"b{s}"), instruction=f"Task {s}",
                   action={"type": "click", "name": f"a{s}"}),
            record(sid, 1, context=page(f"c{s}", f"d{s}"), instruction=f"Task {s}",
                   action={"type": "click", "name": f"d{s}"}),
            record(sid, 2, context=page(f"e{s}"), instruction=f"Task {s}",
                   action={"type": "click", "name": f"e{s}"}),
        ]  # fmt: skip
    return write_lines(tmp_path / "test.jsonl", lines)


def first_element(body: dict, index: int) -> Any:
    """Answer with a click on the first element of the page, in prose around a code fence."""
    names = NAME.findall(last_user_text(body))
    action = {"type": "click", "name": names[0]} if names else {"type": "terminate"}
    answer = json.dumps({"rationale": "I go for the first thing I see.", "action": action})
    return ok(f"Sure! Here is my answer:\n```json\n{answer}\n```", prompt_tokens=100,
              completion_tokens=20)  # fmt: skip


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv("RATIONALE_HOME", str(folder))  # a cache of its own: requests are counted
    return folder


def config(data: Path, out: Path, url: str, **kw: Any) -> EvalConfig:
    kw.setdefault("cases", "all")  # these tests count every step
    return EvalConfig(model="openai/gpt-4o-mini", data=str(data), output=str(out), api_base=url,
                      backoff=0.01, bootstrap=200, **kw)  # fmt: skip


def test_api_eval_scores_retries_and_reuses_the_cache(tmp_path: Path, home: Path) -> None:
    data = make_test_file(tmp_path)
    with ScriptedServer(responder=first_element) as server:
        server.script(status(500), status(429))  # two faults, retried
        url = server.url
        result = run_eval(config(data, tmp_path / "ev", url))
        assert server.count == 12 + 2
    out = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert out == result.data
    assert out["n_cases"] == 12 and out["pending"] == 0 and out["failed"] == 0
    assert [(c["session_id"], c["step"]) for c in out["cases"]] == [
        (f"s{s}", i) for s in range(4) for i in range(3)
    ]
    assert [c["correct"] for c in out["cases"]] == [True, False, True] * 4
    assert out["metrics"]["exact_match"]["value"] == pytest.approx(8 / 12)
    assert out["metrics"]["session_exact_match"]["value"] == pytest.approx(2 / 3)
    assert all(c["status"] == "ok" and "```json" in c["raw"] for c in out["cases"])
    assert out["model"]["kind"] == "api" and out["model"]["prompt"]["template"] == "predict"
    # cost: 12 answers of 100 + 20 tokens at gpt-4o-mini's price, from the ledger
    assert out["usage"]["prompt_tokens"] == 1200 and out["usage"]["completion_tokens"] == 240
    assert out["usage"]["cost_usd"] == pytest.approx(12 * (100 * 0.15e-6 + 20 * 0.6e-6))
    assert (tmp_path / "ev" / "per_type.png").read_bytes()[:4] == b"\x89PNG"
    # another project's predictions (here the same raw answers) scored by the library call
    from rationale import score_test_file

    raws = [c["raw"] for c in out["cases"]]
    assert score_test_file(data, raws, cases="all", n_boot=200) == out["metrics"]
    with pytest.raises(ValueError, match="12 test cases"):
        score_test_file(data, [None] * 11, cases="all")

    # the same eval in a new folder, against the same endpoint (a server restarted on its
    # port), is answered from the cache: no request, nothing billed
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with ScriptedServer(responder=first_element, port=port) as server:
        assert server.url == url
        again = run_eval(config(data, tmp_path / "ev2", server.url))
        assert server.count == 0
    assert [c["correct"] for c in again.data["cases"]] == [c["correct"] for c in out["cases"]]
    assert again.data["usage"]["cost_usd"] == 0 and again.data["case_set"] == out["case_set"]


def test_api_eval_keeps_failed_and_unparsed_cases_and_retries_failed_on_rerun(
    tmp_path: Path, home: Path
) -> None:
    data = make_test_file(tmp_path, sessions=2)
    with ScriptedServer(responder=first_element) as server:
        server.fault(lambda b: "Task 1" in last_user_text(b) and 'name="c1"' in
                     last_user_text(b), status(400), times=None)  # fmt: skip
        server.fault(lambda b: 'name="e0"' in last_user_text(b), ok("I would rather not say."),
                     times=None)  # fmt: skip
        with pytest.raises(RationaleError, match=r"1 of 6 cases failed .*HTTP 400.*rerun"):
            run_eval(config(data, tmp_path / "ev", server.url))
    first = json.loads((tmp_path / "ev" / "eval.json").read_text())
    by_key = {(c["session_id"], c["step"]): c for c in first["cases"]}
    assert len(by_key) == 6 == first["n_cases"]
    assert by_key[("s1", 1)]["status"] == "failed" and by_key[("s1", 1)]["correct"] is False
    assert "400" in by_key[("s1", 1)]["problem"] or "invalid" in by_key[("s1", 1)]["problem"]
    assert by_key[("s0", 2)]["status"] == "unparsed"
    assert by_key[("s0", 2)]["raw"] == "I would rather not say."
    assert first["failed"] == 1 and first["metrics"]["unparsed"] == 1
    # a rerun asks the failed case again (and only it); the unparsed answer is final
    with ScriptedServer(responder=first_element) as server:
        second = run_eval(config(data, tmp_path / "ev", server.url)).data
        assert server.count == 1
    again = {(c["session_id"], c["step"]): c for c in second["cases"]}
    assert again[("s1", 1)]["status"] == "ok" and second["failed"] == 0
    assert again[("s0", 2)]["status"] == "unparsed"


def test_api_eval_stops_at_the_budget_and_resumes(tmp_path: Path, home: Path) -> None:
    data = make_test_file(tmp_path)
    with ScriptedServer(responder=first_element) as server:
        cfg = config(data, tmp_path / "ev", server.url, max_cost=0.0004, concurrency=1)
        first = run_eval(cfg).data
        billed = server.billed
    assert first["pending"] > 0 and first["stopped"].startswith("budget")
    assert first["usage"]["cost_usd"] <= 0.0004
    assert billed["prompt_tokens"] == first["usage"]["prompt_tokens"]
    with ScriptedServer(responder=first_element) as server:
        second = run_eval(cfg.model_copy(update={"max_cost": None, "api_base": server.url})).data
        assert server.count == first["pending"]  # only what was left
    assert second["pending"] == 0 and len(second["cases"]) == 12


def test_a_folder_of_another_eval_is_refused(tmp_path: Path, home: Path) -> None:
    data = make_test_file(tmp_path, sessions=1)
    with ScriptedServer(responder=first_element) as server:
        run_eval(config(data, tmp_path / "ev", server.url))
        refused = r"other model, test file or settings .*cases 'all' -> 'from-second'"
        with pytest.raises(RationaleError, match=refused):
            run_eval(config(data, tmp_path / "ev", server.url, cases="from-second"))


def test_kill_mid_eval_then_resume_loses_nothing_and_repeats_nothing(
    tmp_path: Path, home: Path
) -> None:
    """A kill pays twice for the requests in flight at it, at most --concurrency (2): the
    server bills an answer whose client was killed, as a provider does (its own counts)."""
    import time

    data = make_test_file(tmp_path, sessions=8)
    out = tmp_path / "ev"
    env = {**os.environ, "RATIONALE_HOME": str(home)}
    with ScriptedServer(responder=first_element, latency=0.15) as server:
        cmd = [str(RATIONALE), "eval", "--model", "openai/gpt-4o-mini", "--data", str(data),
               "-o", str(out), "--api-base", server.url, "--concurrency", "2",
               "--bootstrap", "100", "--cases", "all"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        wait_for_cases(out, 5)
        deadline = time.monotonic() + 30
        while server.count == server.billed["answers"] and time.monotonic() < deadline:
            time.sleep(0.01)  # kill with a request in flight (0.15 s each)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = len((out / "cases.jsonl").read_text().splitlines())
        assert 5 <= done_before < 24
        asked_before = server.count
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        # answers already paid for come from the cache: at most the ones in flight are re-asked
        assert server.count - asked_before <= 24 - done_before
        # Paid twice: billed over both runs less the 24 answers needed; at most --concurrency.
        # The answers finished for the killed client (abandoned) are among them; so may be one
        # delivered that the killed process had not yet cached, so abandoned is a lower bound.
        billed = server.billed
        assert 1 <= billed["abandoned"] <= billed["answers"] - 24 <= 2, billed
    result = json.loads((out / "eval.json").read_text())
    keys = [(c["session_id"], c["step"]) for c in result["cases"]]
    assert len(keys) == len(set(keys)) == 24 and result["pending"] == 0
    assert f"{done_before} done before" in rerun.stderr


def test_no_prompt_shows_the_true_action(tmp_path: Path) -> None:
    """Two test files that differ only in the actions of the steps predicted last (never
    anyone's history) and in meta give identical prompts."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = make_test_file(tmp_path / "one")
    lines = [json.loads(x) for x in one.read_text().splitlines()]
    for line in lines:
        if line["step"] == 2:
            line["action"] = {"type": "type_and_submit", "name": "secret.box", "text": "SECRET"}
        line["meta"] = {"answer": "SECRET"}
    two = write_lines(tmp_path / "two" / "test.jsonl", lines)
    predictor = Predictor.load("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1")
    prompts = []
    for file in (one, two):
        with RecordFile(file) as records:
            cases = list(eval_cases(records, cases="all"))
        prompts.append([predictor.messages(c) for c in cases])
    assert prompts[0] == prompts[1]
    assert "SECRET" not in json.dumps(prompts[1])
    assert "Earlier actions" in prompts[0][1][-1]["content"]  # the true history is there
    assert "click(a0)" in prompts[0][1][-1]["content"]


def test_a_wrong_model_or_key_stops_after_a_few_cases_and_exits_1(
    tmp_path: Path, home: Path
) -> None:
    data = make_test_file(tmp_path, sessions=4)
    with ScriptedServer() as server:
        server.fault(lambda b: True, status(400), times=None)  # every request refused
        with pytest.raises(RationaleError, match="first 5 cases all failed"):
            run_eval(config(data, tmp_path / "ev", server.url, concurrency=1))
        assert server.count == 5  # not one refused request per case of the file
    out = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert out["pending"] == 7 and out["failed"] == 5 and "fatal" in out["stopped"]


def test_bad_models_fail_before_the_folder_is_touched(tmp_path: Path, home: Path) -> None:
    data = make_test_file(tmp_path, sessions=1)
    for model, message in [
        (str(data), "is a file but not a model"),
        (str(tmp_path / "nope"), "not found"),
        ("smollm2-13", "not a distill output folder"),
    ]:
        with pytest.raises(RationaleError, match=message):
            run_eval(EvalConfig(model=model, data=str(data), output=str(tmp_path / "ev")))
        assert not (tmp_path / "ev").exists()


def test_a_folder_without_finished_cases_is_taken_over(tmp_path: Path, home: Path) -> None:
    data = make_test_file(tmp_path, sessions=1)
    with ScriptedServer() as server:
        server.fault(lambda b: True, status(500), times=None)
        with pytest.raises(RationaleError):
            run_eval(config(data, tmp_path / "ev", server.url, request_attempts=1,
                            cases="from-second"))  # fmt: skip
    (tmp_path / "ev" / "cases.jsonl").unlink()  # as if nothing had finished
    with ScriptedServer(responder=first_element) as server:
        out = run_eval(config(data, tmp_path / "ev", server.url)).data
    assert out["n_cases"] == 3 and out["identity"]["cases"] == "all"


def test_sigterm_finalises_the_eval(tmp_path: Path, home: Path) -> None:
    data = make_test_file(tmp_path, sessions=8)
    out = tmp_path / "ev"
    env = {**os.environ, "RATIONALE_HOME": str(home)}
    with ScriptedServer(responder=first_element, latency=0.2) as server:
        cmd = [str(RATIONALE), "eval", "--model", "openai/gpt-4o-mini", "--data", str(data),
               "-o", str(out), "--api-base", server.url, "--concurrency", "1",
               "--bootstrap", "50", "--cases", "all"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        wait_for_cases(out, 3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err
    assert "stopped by SIGTERM" in err and "rerun the same command" in err
    result = json.loads((out / "eval.json").read_text())
    assert result["stopped"] == "interrupted: SIGTERM" and result["metrics"] is not None
    assert result["pending"] == 24 - len(result["cases"]) > 0


def test_model_strings_are_resolved_without_loading_anything() -> None:
    from rationale.predictor import resolve_model

    assert resolve_model("gpt-4o").kind == "api"  # a bare name litellm's price map knows
    assert resolve_model("hosted_vllm/my-model").kind == "api"
    assert resolve_model("smollm2-135m").kind == "local"
    with pytest.raises(RationaleError, match="--model: base model"):
        resolve_model("hf:not a repo")


def test_the_predictor_as_a_library_simulates_quietly(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    step = {"instruction": "Buy", "context": page("x1", "x2"),
            "history": [{"type": "click", "name": "start"}]}  # fmt: skip
    with ScriptedServer(responder=first_element) as server:
        greedy = Predictor.load("openai/gpt-4o-mini", api_base=server.url)
        first = greedy.predict(step)
        assert first.as_dict() == {"rationale": "I go for the first thing I see.",
                                   "action": {"type": "click", "name": "x1"}}  # fmt: skip
        assert greedy.predict(step).cached and server.count == 1  # greedy: the same answer
        sampled = Predictor.load("openai/gpt-4o-mini", api_base=server.url, temperature=0.7)
        sampled.predict(step)
        sampled.predict(step)
        assert server.count == 3  # a new draw per call, not the cached one

        async def in_a_loop() -> list[Any]:
            with pytest.raises(RationaleError, match="apredict_batch"):
                greedy.predict_batch([step])
            return await greedy.apredict_batch([step, step])

        assert [p.action for p in asyncio.run(in_a_loop())] == [first.action, first.action]
    assert capsys.readouterr().err == ""  # no progress lines from a library call
    with pytest.raises(RationaleError, match="history entry 0"):
        greedy.predict({**step, "history": [{"type": "fly"}]})


def test_skipped_input_lines_are_recorded_in_eval_json(tmp_path: Path, home: Path) -> None:
    data = make_test_file(tmp_path, sessions=2)
    lines = data.read_text().splitlines()
    lines.insert(4, '{"session_id": "s1", "step": "one"}')  # a bad line in session s1
    data.write_text("\n".join(lines) + "\n")
    with ScriptedServer(responder=first_element) as server:
        with pytest.raises(RationaleError, match="line 5"):
            run_eval(config(data, tmp_path / "ev", server.url))
        out = run_eval(config(data, tmp_path / "ev", server.url, on_error="skip")).data
    assert out["n_cases"] == 3  # session s1 left out whole
    assert [x["line"] for x in out["skipped_input"]["lines"]] == [5]
    assert out["skipped_input"]["sessions"]
