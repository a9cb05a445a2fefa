"""`rationale run`: a workspace's whole chain, raw Mind2Web logs to the comparison table.

The default tier runs it with the scripted API teacher and the tiny test model, so CI covers
every stage; the `slow` tier runs the shipped example cut down, with the local teacher and
SmolLM2-135M. Both check that every stage wrote its artifact, that the counts agree from stage to
stage, and that a second run does nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from openai_server import ScriptedServer
from tiny_model import build_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
RATIONALE = Path(sys.executable).parent / "rationale"
SAMPLE = ROOT / "examples" / "mind2web" / "raw_shopping_sample.json"
EXAMPLE = ROOT / "examples" / "mind2web_shopping" / "rationale.toml"


def env_for(home: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "RATIONALE_HOME": str(home), "OPENAI_API_KEY": "sk-test"}  # fmt: skip


def run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RATIONALE), *args], capture_output=True, text=True, cwd=cwd, env=env)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def check_chain(ws: Path, arms: list[str], base: str = "tiny") -> dict[str, int]:
    """Every stage's artifact is there and the counts agree from stage to stage."""
    runs = ws / "runs"
    records = jsonl(runs / "records.jsonl")
    train, test = jsonl(runs / "split" / "train.jsonl"), jsonl(runs / "split" / "test.jsonl")
    assert len(train) + len(test) == len(records)
    train_sessions = {r["session_id"] for r in train}
    assert train_sessions.isdisjoint(r["session_id"] for r in test)
    synth = runs / "synth" / "train"
    accepted = jsonl(synth / "accepted.jsonl")
    done = sum(len(jsonl(synth / f"{s}.jsonl")) for s in ("accepted", "rejected", "failed")
               if (synth / f"{s}.jsonl").exists())  # fmt: skip
    assert done == len(train)  # every training step was asked once
    assert {r["record"]["session_id"] for r in accepted} <= train_sessions
    for name, no_rationale in (("rationale", False), ("actions", True)):
        if name not in arms:
            continue
        folder = runs / "distill" / (base + ("-actions" if no_rationale else ""))
        stats = json.loads((folder / "data_stats.json").read_text())
        config = json.loads((folder / "config.json").read_text())["config"]
        assert stats["examples"] == len(accepted)  # training examples = accepted training steps
        assert config["no_rationale"] is no_rationale
    n_cases = {}
    # cases: the test steps but each session's first (--cases from-second, the default)
    cases = len(test) - len({r["session_id"] for r in test})
    for arm in arms:
        data = json.loads((runs / "eval" / arm / "eval.json").read_text())
        n_cases[arm] = data["n_cases"]
        assert data["n_cases"] == cases and data["pending"] == 0
    table = (runs / "compare" / "compare.md").read_text()
    assert all(f"| {arm}: " in table for arm in arms)
    return {"train": len(train), "test": len(test), "accepted": len(accepted), "cases": cases}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny")


def write_workspace(ws: Path, tiny: Path, url: str) -> Path:
    ws.mkdir(parents=True, exist_ok=True)
    path = ws / "rationale.toml"
    path.write_text(
        f"""
[import]
source = ["missing/mind2web", "{SAMPLE.as_posix()}"]
first-existing = true
domain = ["shopping"]
max-sessions = 5

[split]
test-frac = 0.4

[synth]
teacher = "openai/test-model"
api-base = "{url}"
verifier = "none"

[distill]
base = "{tiny.as_posix()}"
max-steps = 2
max-seq-length = 1024

[eval]
max-tokens = 24
bootstrap = 50

[compare]
arms = ["base", "actions", "rationale", "teacher"]
""",
        encoding="utf-8",
    )
    return path


def test_run_goes_from_raw_logs_to_the_table_and_a_rerun_does_nothing(
    tmp_path: Path, tiny: Path
) -> None:
    ws = tmp_path / "ws"
    env = env_for(tmp_path / "home")
    with ScriptedServer() as server:
        write_workspace(ws, tiny, server.url)
        first = run("run", cwd=ws, env=env)
        assert first.returncode == 0, first.stderr[-4000:]
        counts = check_chain(ws, ["base", "actions", "rationale", "teacher"])
        asked = server.count
        assert asked >= counts["train"] + counts["cases"]  # synth + the teacher arm's eval
        assert "| rationale" in first.stdout or "rationale" in first.stdout
        for stage in (
            "import",
            "split",
            "synth",
            "distill:rationale",
            "distill:actions",
            "eval:base",
            "eval:actions",
            "eval:rationale",
            "eval:teacher",
            "compare",
        ):
            assert f"] {stage}: done in" in first.stderr, stage  # one progress line per stage
        mtimes = {p: p.stat().st_mtime_ns for p in (ws / "runs").rglob("*") if p.name != ".lock"}

        second = run("run", cwd=ws, env=env)
        assert second.returncode == 0, second.stderr[-4000:]
        assert server.count == asked  # no teacher call
        assert second.stderr.count(": up to date (") == 10 and "done in" not in second.stderr
        after = {p: p.stat().st_mtime_ns for p in (ws / "runs").rglob("*") if p.name != ".lock"}
        assert after == mtimes  # nothing trained, nothing rewritten
        assert first.stdout == second.stdout  # the same table, printed again


def test_a_changed_setting_reruns_its_stage_and_those_after(tmp_path: Path, tiny: Path) -> None:
    ws = tmp_path / "ws"
    env = env_for(tmp_path / "home")
    with ScriptedServer() as server:
        path = write_workspace(ws, tiny, server.url)
        text = path.read_text().replace('arms = ["base", "actions", "rationale", "teacher"]',
                                        'arms = ["base", "rationale"]')  # fmt: skip
        path.write_text(text)
        assert run("run", "--until", "synth", cwd=ws, env=env).returncode == 0
        assert not (ws / "runs" / "distill").exists()
        first = run("run", cwd=ws, env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "synth: up to date" in first.stderr and "distill:rationale: done" in first.stderr
        path.write_text(text.replace("max-tokens = 24", "max-tokens = 20"))
        again = run("run", cwd=ws, env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "distill:rationale: up to date" in again.stderr
        assert "eval:base: done" in again.stderr and "eval:rationale: done" in again.stderr
        moved = list((ws / "runs" / ".outdated").iterdir())  # the earlier evals are kept
        assert sorted(p.name.rsplit("-", 2)[0] for p in moved) == ["eval-base", "eval-rationale"]
        assert all((p / "eval.json").exists() for p in moved)
        eval_json = json.loads((ws / "runs" / "eval" / "base" / "eval.json").read_text())
        assert eval_json["config"]["max_tokens"] == 20


def test_dry_run_prints_the_commands_and_the_estimate_and_runs_nothing(
    tmp_path: Path, tiny: Path
) -> None:
    ws = tmp_path / "ws"
    env = env_for(tmp_path / "home")
    with ScriptedServer() as server:
        write_workspace(ws, tiny, server.url)
        proc = run("run", "--dry-run", cwd=ws, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert server.count == 0 and not (ws / "runs").exists()
    # each stage's command: what the workflow sets, and the workspace file for the rest
    assert "rationale synth -o runs/synth/train --config rationale.toml runs/split/train.jsonl" in (
        proc.stderr
    )
    assert (
        "rationale distill --no-rationale --data runs/synth/train -o runs/distill/tiny-actions "
        "--config rationale.toml" in proc.stderr
    )
    assert "synth estimate:" in proc.stderr and json.loads(proc.stdout)["to_call"] > 0


@pytest.mark.slow
def test_the_shipped_example_cut_down_runs_with_the_local_teacher(tmp_path: Path) -> None:
    """The example's own file with fewer sessions and steps: local teacher, SmolLM2-135M."""
    ws = tmp_path / "ws"
    ws.mkdir()
    text = EXAMPLE.read_text(encoding="utf-8")
    for old, new in (
        ('"../../../shared/data/mind2web", "../mind2web/raw_shopping_sample.json"',
         f'"{SAMPLE.as_posix()}"'),
        ("max-sessions = 16", "max-sessions = 3"),
        ("test-frac = 0.375", "test-frac = 0.34"),
        ("max-steps = 5", "max-steps = 1"),
    ):  # fmt: skip
        assert old in text, f"the example no longer says {old}: update this test"
        text = text.replace(old, new)
    (ws / "rationale.toml").write_text(text + "\n", encoding="utf-8")
    env = env_for(tmp_path / "home")
    first = run("run", cwd=ws, env=env)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "teacher arm left out" in first.stderr
    check_chain(ws, ["base", "actions", "rationale"], base="smollm2-135m")
    second = run("run", cwd=ws, env=env)
    assert second.returncode == 0 and second.stderr.count(": up to date (") == 9


def readme_chain() -> str:
    """The README's "From Python" block of the workspace section, as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("**From Python**, the whole chain")
    block = text[text.index("```python\n", start) + len("```python\n") :]
    return block[: block.index("```")].replace(
        "examples/mind2web/raw_shopping_sample.json", SAMPLE.as_posix()
    )


def run_snippet(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=1800)  # fmt: skip


def check_snippet_output(cwd: Path, proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]
    for arm in ("base", "rationale", "actions"):
        assert f"| {arm}: " in proc.stdout
        # limit=6, but the one test session has 6 steps: its 2nd to 6th (--cases from-second)
        assert json.loads((cwd / "work" / "eval" / arm / "eval.json").read_text())["n_cases"] == 5


def test_the_readme_library_chain_runs(tmp_path: Path, tiny: Path) -> None:
    code = readme_chain()
    with ScriptedServer() as server:
        teacher = (
            f'TEACHER = {{"teacher": "openai/test-model", "api_base": "{server.url}", '
            '"verifier": "none"}'
        )
        for line in code.splitlines():
            if line.startswith("TEACHER = "):
                code = code.replace(line, teacher)
            elif line.startswith("BASE = "):
                code = code.replace(line, f'BASE = "{tiny.as_posix()}"')
        assert teacher in code and tiny.as_posix() in code
        proc = run_snippet(code, tmp_path, env_for(tmp_path / "home"))
    check_snippet_output(tmp_path, proc)


@pytest.mark.slow
def test_the_readme_library_chain_runs_as_written(tmp_path: Path) -> None:
    proc = run_snippet(readme_chain(), tmp_path, env_for(tmp_path / "home"))
    check_snippet_output(tmp_path, proc)


def test_a_kill_during_synth_loses_nothing_and_the_rerun_finishes(
    tmp_path: Path, tiny: Path
) -> None:
    """A kill pays twice only for the request in flight at it (synth's concurrency is 1 here),
    which the server bills though its client was killed, as a provider does."""
    import signal
    import time

    ws = tmp_path / "ws"
    env = env_for(tmp_path / "home")
    with ScriptedServer(latency=0.3) as server:
        path = write_workspace(ws, tiny, server.url)
        path.write_text(path.read_text().replace(
            'arms = ["base", "actions", "rationale", "teacher"]', 'arms = ["base"]'
        ).replace("[synth]\n", "[synth]\nconcurrency = 1\n"))  # fmt: skip
        proc = subprocess.Popen([str(RATIONALE), "run"], cwd=ws, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        accepted = ws / "runs" / "synth" / "train" / "accepted.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            not accepted.exists()
            or len(accepted.read_text().splitlines()) < 3
            or server.count == server.billed["answers"]  # kill with a request in flight (0.3 s)
        ):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(accepted.read_text().splitlines()) >= 3
        assert not (ws / "runs" / ".stamps" / "synth.json").exists()
        again = run("run", "--until", "synth", cwd=ws, env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        billed = server.billed
    assert "import: up to date" in again.stderr and "synth: rationale synth" in again.stderr
    train = jsonl(ws / "runs" / "split" / "train.jsonl")
    synth = ws / "runs" / "synth" / "train"
    keys = [(r["record"]["session_id"], r["record"]["step"])
            for s in ("accepted", "rejected", "failed") if (synth / f"{s}.jsonl").exists()
            for r in jsonl(synth / f"{s}.jsonl")]  # fmt: skip
    assert sorted(keys) == sorted(
        (r["session_id"], r["step"]) for r in train
    )  # none lost, none twice
    # paid twice (billed less one answer per record): the request in flight at the kill, which
    # the server finished for the killed client (abandoned). One the server delivered that the
    # killed process had not cached yet would count as delivered: abandoned is a lower bound.
    assert 1 <= billed["abandoned"] <= billed["answers"] - len(train) <= 1, billed


def test_from_a_stage_whose_inputs_are_missing_says_which_stage_to_run(
    tmp_path: Path, tiny: Path
) -> None:
    ws = tmp_path / "ws"
    write_workspace(ws, tiny, "http://127.0.0.1:9/v1")
    proc = run("run", "--from", "eval", cwd=ws, env=env_for(tmp_path / "home"))
    assert proc.returncode == 1
    # the earliest stage whose output is missing is named, with the command that makes it
    assert "runs/records.jsonl, which import writes" in proc.stderr
    assert "rationale run --from import" in proc.stderr
