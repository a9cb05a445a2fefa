"""``--ray``: the shards of a job as Ray tasks on a local 2-CPU cluster against the scripted
teacher, with a worker killed mid-run: Ray retries its task, the task resumes from its shard
folder, every record ends once and no answered request is paid for again."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from batch_server import fingerprint
from helpers import record, write_lines
from openai_server import delay, last_user_text
from test_batch import records
from test_filter import responder

pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")

from rationale.rundir import read_run_json
from rationale.scale import run_on_ray
from rationale.synth import SynthConfig

SESSIONS, STEPS = 8, 2


def records_file(tmp_path: Path) -> Path:
    page = "<page>" + "".join(f'<a name="item.good_{i}">x</a>' for i in range(SESSIONS)) + "</page>"
    lines = [
        record(f"s{i}", j, context=page, action={"type": "click", "name": f"item.good_{i}"})
        for i in range(SESSIONS) for j in range(STEPS)
    ]  # fmt: skip
    return write_lines(tmp_path / "input.jsonl", lines)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


#: The title Ray gives a worker while it runs a shard task (`rationale.scale._run_shard`).
SHARD_TITLE = "ray::_run_shard"


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:  # gone
        return ""


def _descendants(root: int) -> set[int]:
    """Every process under ``root``, from the parent pids in /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                # the field after the ")" that closes the name is the state, then the parent
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(stat[1])
    tree = {root}
    while grown := {pid for pid, parent in parents.items() if parent in tree} - tree:
        tree |= grown
    return tree - {root}


def _kill_shard_workers() -> list[int]:
    """SIGKILL this test's own shard workers, by pid; returns them. The local cluster's raylet
    is a child of this process (`ray.init` in `ray_cluster`) and forks its workers, so they are
    the processes under this one that run a shard task: a Ray worker of any other cluster on
    the machine is not among them."""
    pids = [pid for pid in _descendants(os.getpid()) if _title(pid) == SHARD_TITLE]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


@contextlib.contextmanager
def _decoy_worker() -> Iterator[int]:
    """A process outside this test's cluster under a shard worker's title (as another run's Ray
    worker on this machine would be): the kill must leave it alone. Forked twice and in a
    session of its own, so it is no descendant of this process; killed by its pid after."""
    script = (
        "import os\n"
        "pid = os.fork()\n"
        "if pid:\n"
        "    os.write(1, str(pid).encode())\n"
        "    os._exit(0)\n"
        "os.setsid()\n"
        "null = os.open(os.devnull, os.O_RDWR)\n"
        "for fd in (0, 1, 2):\n"
        "    os.dup2(null, fd)\n"
        f"os.execv({shutil.which('sleep')!r}, [{SHARD_TITLE!r}, '600'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    pid = int(out.stdout)
    for _ in range(100):  # until it has taken the title
        if _title(pid) == SHARD_TITLE:
            break
        time.sleep(0.05)
    assert pid not in _descendants(os.getpid()), "the decoy is under this process"
    try:
        yield pid
    finally:
        if _title(pid) == SHARD_TITLE:  # still the decoy, not a pid reused since
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="finds its own Ray workers in /proc (Linux)"
)
def test_a_ray_run_with_a_killed_worker_files_every_record_once_and_pays_nothing_twice(
    tmp_path: Path, openai_server, monkeypatch: pytest.MonkeyPatch, ray_cluster
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-ray")
    killed: list[bool] = []
    shot: list[int] = []  # the pids of the shard workers killed
    holding = threading.Event()
    held: set[str] = set()

    def kill_when_both_wait() -> None:
        # every request arriving now is held unanswered, so once each worker is waiting on one
        # (its earlier answers received and cached), no answer is in flight when they die
        time.sleep(1.5)
        shot.extend(_kill_shard_workers())
        holding.clear()

    def respond(body: dict, index: int):
        # the first request for step 1 of session s3 holds every request, then kills the workers
        if not killed and "click(item.good_3)" in last_user_text(body) and index > 4:
            killed.append(True)
            holding.set()
            threading.Thread(target=kill_when_both_wait).start()
        if holding.is_set():
            held.add(fingerprint(body))
            return delay(30)
        return responder(body, index)

    openai_server.responder = respond
    config = SynthConfig(input=str(records_file(tmp_path)), output=str(tmp_path / "run"),
                         teacher="openai/test-model", api_base=openai_server.url,
                         concurrency=1, timeout=60.0)  # fmt: skip
    with _decoy_worker() as decoy:
        result = run_on_ray("synth", config, shards=2)
        assert _title(decoy) == SHARD_TITLE, "a process outside the test's cluster was killed"
    assert killed and shot, "no worker was killed: the test did not test a retry"
    merged = records(tmp_path / "run")
    assert len(merged) == SESSIONS * STEPS and result.records == SESSIONS * STEPS
    run = read_run_json(tmp_path / "run")
    assert run["pending"] == 0 and len(run["merged_from"]) == 2
    assert run["config"]["output"] == str((tmp_path / "run").resolve())
    sent = Counter(fingerprint(r["body"]) for r in openai_server.requests)
    assert openai_server.billed["answers"] == len(sent)  # no answer paid for twice
    again = {fp for fp, n in sent.items() if n > 1}
    assert again and again <= held  # asked again: only requests the kill left unanswered


def test_an_eval_on_ray_scores_as_the_unsharded_eval(
    tmp_path: Path, openai_server, monkeypatch: pytest.MonkeyPatch, ray_cluster
) -> None:
    import json

    from test_eval_api import first_element, make_test_file

    from rationale.evaluate import EvalConfig, run_eval

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-ray")
    openai_server.responder = first_element
    data = make_test_file(tmp_path, sessions=6)
    config = EvalConfig(model="openai/gpt-4o-mini", data=str(data), bootstrap=200,
                        output=str(tmp_path / "whole"), api_base=openai_server.url)  # fmt: skip
    whole = run_eval(config).data
    run_on_ray("eval", config.model_copy(update={"output": str(tmp_path / "ray")}), shards=2)
    merged = json.loads((tmp_path / "ray" / "eval.json").read_text())
    assert merged["case_set"] == whole["case_set"] and merged["metrics"] == whole["metrics"]
    assert sorted((tmp_path / "ray" / "shards").iterdir())[0].name == "1-of-2"


def test_a_shard_that_stops_is_one_line_and_a_rerun_resumes(
    tmp_path: Path, openai_server, monkeypatch: pytest.MonkeyPatch, ray_cluster
) -> None:
    from openai_server import status

    from rationale import RationaleError

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-ray")
    openai_server.responder = lambda body, index: status(401)  # a bad key: every shard stops
    config = SynthConfig(input=str(records_file(tmp_path)), output=str(tmp_path / "run"),
                         teacher="openai/test-model", api_base=openai_server.url, verifier="none",
                         concurrency=1, request_attempts=1)  # fmt: skip
    with pytest.raises(RationaleError, match=r"a shard stopped \(.*401.*\); fix the cause") as info:
        run_on_ray("synth", config, shards=2)
    assert "\n" not in str(info.value) and "sk-test-ray" not in str(info.value)
    openai_server.responder = responder  # the key fixed
    result = run_on_ray("synth", config, shards=2)
    assert result.records == SESSIONS * STEPS


def _arrivals(server) -> list[float]:
    return sorted(r["time"] for r in server.requests)


def _most_within(times: list[float], seconds: float) -> int:
    """The most requests that arrived within any ``seconds`` (a closed window)."""
    return max((sum(1 for u in times if t <= u <= t + seconds) for t in times), default=0)


def test_one_max_cost_for_every_shard(
    tmp_path: Path, openai_server, monkeypatch: pytest.MonkeyPatch, ray_cluster
) -> None:
    """Issue 21.1: ``--max-cost C`` over the shards bills at most C in all (not N x C), with a
    provider that bills prompts at 2x our count; a rerun with the same cap stops on it (each
    shard counts what the others were billed before, even before they start); a higher cap
    finishes the job."""
    from test_batch import doubled
    from test_budget import billed_usd

    from rationale import RationaleError

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-ray")
    openai_server.responder = doubled
    cap = 0.006  # room for both shards' first requests, whichever starts first
    config = SynthConfig(input=str(records_file(tmp_path)), output=str(tmp_path / "run"),
                         teacher="openai/gpt-4o-mini", api_base=openai_server.url,
                         concurrency=2, max_cost=cap, max_tokens=100)  # fmt: skip
    with pytest.raises(RationaleError, match=r"stopped early \(budget: \$0\.00\d+ billed"):
        run_on_ray("synth", config, shards=2)
    assert 0 < billed_usd(openai_server) <= cap, billed_usd(openai_server)
    by_shard = [read_run_json(folder)["cost_usd"]["total"]
                for folder in sorted((tmp_path / "run" / "shards").iterdir())]  # fmt: skip
    assert sum(by_shard) == pytest.approx(billed_usd(openai_server))
    assert all(by_shard), by_shard  # both shards spent: each must count the other's bill
    with pytest.raises(RationaleError, match="budget"):  # the same cap: no room left
        run_on_ray("synth", config, shards=2)
    # (a request smaller than the one the first run stopped on may still fit: never past the cap)
    assert billed_usd(openai_server) <= cap, billed_usd(openai_server)
    result = run_on_ray("synth", config.model_copy(update={"max_cost": 1.0}), shards=2)
    assert result.records == SESSIONS * STEPS


def test_a_shard_that_starts_late_finds_the_others_bills_counted(
    tmp_path: Path, ray_cluster
) -> None:
    """With more shards than CPUs a shard starts when another has finished: what every shard
    folder was billed before is counted from the start, and a shard's own reading replaces the
    driver's when it starts (not counted twice)."""
    import json

    from rationale.scale import _limits
    from rationale.shared_limits import shard_scope

    folders = [tmp_path / "shards" / f"{k}-of-3" for k in (1, 2, 3)]
    for folder, cost in zip(folders, (0.0015, 0.002, 0.0), strict=True):
        folder.mkdir(parents=True)
        line = {"kind": "teacher", "requests": 1, "ok": True, "cost_usd": cost}
        (folder / "ledger.jsonl").write_text(json.dumps(line) + "\n")
    config = SynthConfig(input="in.jsonl", output=str(tmp_path), teacher="openai/gpt-4o-mini",
                         max_cost=0.004)  # fmt: skip
    actor = _limits(ray_cluster, config, folders)
    try:
        assert ray_cluster.get(actor.state.remote())[0] == pytest.approx(0.0035)
        ray_cluster.get(actor.open.remote("engine-of-3", shard_scope(folders[2])))  # 3 first
        assert not ray_cluster.get(actor.reserve.remote("engine-of-3", 0.001, False))[0]
        ray_cluster.get(actor.open.remote("engine-of-1", shard_scope(folders[0])))
        ray_cluster.get(actor.resume.remote("engine-of-1", 0.0015, 0.0))  # its own ledger
        assert ray_cluster.get(actor.state.remote())[0] == pytest.approx(0.0035)
    finally:
        ray_cluster.kill(actor)


def test_rpm_holds_across_shards_and_concurrency_is_per_shard(
    tmp_path: Path, openai_server, monkeypatch: pytest.MonkeyPatch, ray_cluster
) -> None:
    """Issue 21.1: ``--rpm`` is the provider's limit, so 2 shards together send no faster than
    it allows (a burst of rpm/60, then rpm/60 a second); ``--concurrency`` is per shard, as the
    README says: 2 shards of ``--concurrency 2`` have at most 4 requests out at once."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-ray")
    openai_server.responder = responder
    rpm = 240  # 4 a second
    config = SynthConfig(input=str(records_file(tmp_path)), output=str(tmp_path / "run"),
                         teacher="openai/test-model", api_base=openai_server.url, rpm=rpm,
                         concurrency=2, verifier="none")  # fmt: skip
    run_on_ray("synth", config, shards=2)
    times = _arrivals(openai_server)
    assert len(times) == SESSIONS * STEPS
    for seconds in (1.0, 2.0):  # what one limiter would let through in that time, + 1 of jitter
        assert _most_within(times, seconds) <= rpm / 60 * (1 + seconds) + 1, times
    openai_server.responder = lambda body, index: delay(0.4)  # every answer takes 0.4 s
    run_on_ray("synth", config.model_copy(update={"rpm": None, "output": str(tmp_path / "b"),
                                                  "seed": 1}), shards=2)  # fmt: skip
    late = _arrivals(openai_server)[len(times) :]
    # a worker sends its next request only after its answer: 0.4 s apart at the least
    assert _most_within(late, 0.35) <= 2 * 2, late


def test_limit_with_ray_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """Found using it: each shard took its own first N records, paid for them, and the merge then
    refused shards that do not cover the input."""
    from rationale.errors import ConfigError

    config = SynthConfig(input=str(records_file(tmp_path)), output=str(tmp_path / "run"),
                         teacher="openai/test-model", limit=4)  # fmt: skip
    with pytest.raises(ConfigError, match="--limit 4 with --ray"):
        run_on_ray("synth", config, shards=2)
    assert not (tmp_path / "run").exists()
