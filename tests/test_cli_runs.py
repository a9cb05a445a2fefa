"""`rationale synth`, `filter`, `report` and `export-sft`, run as users run them (the installed
entry point in a subprocess) against the local OpenAI-compatible server of the tests.

`test_every_command_is_run_by_a_test` (test_cli.py) names tests of this file as the ones that
run these commands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import record, write_lines
from openai_server import ScriptedServer, ok

RATIONALE = shutil.which("rationale", path=str(Path(sys.executable).parent)) or "rationale"


def run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RATIONALE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


# -- synth, filter, report and export-sft against the local OpenAI-compatible server ------------

GOOD = "I want to open {name} because it looks like exactly what I need."
VAGUE = "I want to look around a bit more before I decide anything."
NAMES = ["item.good_0", "item.vague_1", "item.good_2", "item.vague_3"]


def _responder(body: dict, index: int):
    """Teacher: names the element for item.good_*, vague otherwise. Verifier: clicks the element
    the rationale names (page.body when it names none)."""
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    if system.startswith("You predict the next action"):
        thought = user.split("## Their thought right before acting", 1)[1]
        names = re.findall(r"\bitem\.\w+", thought)
        action = {"type": "click", "name": names[0] if names else "page.body"}
        return ok(json.dumps({"action": action}))
    done = user.split("## What they did next", 1)[1]
    name = re.search(r"click\((item\.\w+)\)", done).group(1)
    return ok(json.dumps({"rationale": GOOD.format(name=name) if "good" in name else VAGUE}))


@pytest.fixture
def server(openai_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    openai_server.responder = _responder
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-cli")
    # a state folder of this test's own, so no response cache answers for the server
    monkeypatch.setenv("RATIONALE_HOME", str(tmp_path / "home"))
    return openai_server


def _records(tmp_path: Path) -> Path:
    page = "<page>" + "".join(f'<a name="{n}">{n}</a>' for n in NAMES) + "</page>"
    lines = [
        record("s1", i, context=page, action={"type": "click", "name": n})
        for i, n in enumerate(NAMES)
    ]
    return write_lines(tmp_path / "input.jsonl", lines)


def _names(run_dir: Path, state: str) -> list[str]:
    file = run_dir / f"{state}.jsonl"
    if not file.exists():
        return []
    return [json.loads(x)["record"]["action"]["name"] for x in file.read_text().splitlines()]


@dataclass
class Runs:
    """`rationale synth` without the verifier, then `rationale filter` of its run with it."""

    synth_dir: Path
    filtered: Path
    synth: subprocess.CompletedProcess[str]
    filter: subprocess.CompletedProcess[str]
    requests_of_synth: int
    requests_of_filter: int


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """One synth run and its filter run, shared by the tests that read them (each command runs
    in a subprocess, which is slow): a server of its own and a state folder of its own, so no
    response cache answers for the server."""
    tmp = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-cli", "RATIONALE_HOME": str(tmp / "home")}
    synth_dir, filtered = tmp / "run", tmp / "filtered"
    with ScriptedServer(responder=_responder) as server:
        synth = run("synth", str(_records(tmp)), "-o", str(synth_dir), "--teacher",
                    "openai/test-model", "--api-base", server.url, "--verifier", "none",
                    env=env)  # fmt: skip
        requests_of_synth = server.count
        filter_ = run("filter", str(synth_dir), "-o", str(filtered), "--api-base", server.url,
                      env=env)  # fmt: skip
        requests_of_filter = server.count - requests_of_synth
    return Runs(synth_dir, filtered, synth, filter_, requests_of_synth, requests_of_filter)


def test_synth_then_filter(runs: Runs) -> None:
    assert runs.synth.returncode == 0, runs.synth.stderr
    assert runs.synth.stdout == ""  # the records go to the run folder, the summary to stderr
    assert (
        "synth: accepted 4, rejected 0, failed 0, pending 0; this run: 4 requests"
        in runs.synth.stderr
    )
    assert sorted(_names(runs.synth_dir, "accepted")) == sorted(NAMES)
    assert runs.requests_of_synth == 4
    assert runs.filter.returncode == 0, runs.filter.stderr
    assert runs.filter.stdout == ""
    assert (
        "filter: accepted 2, rejected 2, failed 0, pending 0; this run: "
        "4 requests (4 to the verifier)"
    ) in runs.filter.stderr
    assert runs.requests_of_filter == 4  # the verifier once per rationale, the teacher not again
    assert _names(runs.filtered, "accepted") == ["item.good_0", "item.good_2"]
    assert _names(runs.filtered, "rejected") == ["item.vague_1", "item.vague_3"]


def test_report_text_and_json(runs: Runs, tmp_path: Path) -> None:
    assert runs.filter.returncode == 0, runs.filter.stderr
    folder = {p.name: p.read_bytes() for p in runs.filtered.iterdir() if p.is_file()}
    proc = run("report", str(runs.filtered))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        "records: 4  accepted 2, rejected 2, failed 0  (acceptance 50.0%)"
    )
    assert re.search(r"^  verifier\s+2 / 2$", proc.stdout, re.M)
    chart = tmp_path / "chart.png"
    proc = run("report", str(runs.filtered), "--chart", str(chart))
    assert proc.returncode == 0 and proc.stderr.strip() == f"chart: {chart}"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # report only reads: the run folder is byte for byte what it was
    assert {p.name: p.read_bytes() for p in runs.filtered.iterdir() if p.is_file()} == folder
    proc = run("report", str(runs.filtered), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["records"] == 4
    assert report["counts"] == {"accepted": 2, "rejected": 2, "failed": 0}
    assert report["rejections_per_rule"]["records"] == {"verifier": 2}
    assert report["verifier_confusion"]["click"]["exact_match"] == 2


def test_export_sft(runs: Runs, tmp_path: Path) -> None:
    assert runs.filter.returncode == 0, runs.filter.stderr
    # the accepted steps of the synth run, as TRL conversational rows
    out = tmp_path / "sft" / "train.jsonl"
    proc = run("export-sft", str(runs.synth_dir), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == (
        f"wrote 4 examples (1 sessions; 0 steps without an accepted rationale left out) to {out}"
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 4 and all(set(r) == {"prompt", "completion"} for r in rows)
    targets = [json.loads(r["completion"][0]["content"]) for r in rows]
    assert targets[0]["rationale"] == GOOD.format(name="item.good_0")
    assert targets[1]["rationale"] == VAGUE
    assert [t["action"]["name"] for t in targets] == NAMES
    assert not list(out.parent.glob(".*.tmp"))  # written atomically
    # the filtered records only, with action-only targets (the ablation)
    accepted = runs.filtered / "accepted.jsonl"
    proc = run("export-sft", str(accepted), "-o", str(out), "--no-rationale")
    assert proc.returncode == 0, proc.stderr
    targets = [json.loads(json.loads(x)["completion"][0]["content"])
               for x in out.read_text().splitlines()]  # fmt: skip
    assert targets == [
        {"action": {"type": "click", "name": n}} for n in ("item.good_0", "item.good_2")
    ]


def test_export_sft_of_a_filter_run_folder(runs: Runs, tmp_path: Path) -> None:
    """A filter run's input is the synth run folder; its history comes from that run's input."""
    assert runs.filter.returncode == 0, runs.filter.stderr
    out = tmp_path / "sft.jsonl"
    proc = run("export-sft", str(runs.filtered), "-o", str(out), "--history-rationales")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == (
        f"wrote 2 examples (1 sessions; 2 steps without an accepted rationale left out) to {out}"
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    targets = [json.loads(r["completion"][0]["content"]) for r in rows]
    assert [t["action"]["name"] for t in targets] == ["item.good_0", "item.good_2"]
    # the second example's history carries the first one's accepted rationale
    assert GOOD.format(name="item.good_0") in json.dumps(rows[1]["prompt"])


def test_synth_dry_run_calls_nothing(tmp_path: Path, server) -> None:
    out = tmp_path / "run"
    proc = run("synth", str(_records(tmp_path)), "-o", str(out), "--teacher",
               "openai/test-model", "--api-base", server.url, "--dry-run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    estimate = json.loads(proc.stdout)
    assert estimate["to_call"] == 4 and estimate["prompt_tokens"] > 0
    assert proc.stderr.startswith("dry run: 4 calls to make (0 cached, 0 done)")
    assert server.count == 0 and not (out / "accepted.jsonl").exists()


# -- eval: SIGTERM while eval.json is finalised --------------------------------------------------

#: `rationale eval` in a subprocess whose finalisation is slow: scoring prints a line and sleeps,
#: so the test can send SIGTERM while `_finish` is writing eval.json (no hook in the product).
SLOW_FINISH = """
import sys, time
import rationale.scoring as scoring
real = scoring.score
def slow(*args, **kwargs):
    print("finalising", file=sys.stderr, flush=True)
    time.sleep(2)
    return real(*args, **kwargs)
scoring.score = slow
from rationale.cli import main
sys.argv[0] = "rationale"
main()
"""


def test_sigterm_while_eval_finalises_leaves_a_finished_eval_json(tmp_path: Path, server) -> None:
    """asyncio's loop close resets SIGTERM to its default action: a SIGTERM that came while
    eval.json was finalised killed the process and left it "running"."""
    server.responder = lambda body, index: ok('{"action": {"type": "click", "name": "search"}}')
    data = write_lines(tmp_path / "test.jsonl", [record("s1", i) for i in range(3)])
    out = tmp_path / "ev"
    cmd = [sys.executable, "-c", SLOW_FINISH, "eval", "--model", "openai/test-model", "--data",
           str(data), "-o", str(out), "--api-base", server.url, "--bootstrap", "20"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # type: ignore[union-attr]
        seen.append(line)
        if line.startswith("finalising"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=60)
    err = "".join(seen) + err
    assert proc.returncode == 1, (proc.returncode, err[-2000:])
    assert "SIGTERM" in err and "Traceback" not in err
    result = json.loads((out / "eval.json").read_text())
    assert result["stopped"] is None and result["pending"] == 0, result["stopped"]
    assert len(result["cases"]) == result["n_cases"] == result["metrics"]["n_cases"] > 0
