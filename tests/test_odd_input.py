"""Odd bytes and odd files that used to break a reader after `validate` had passed them:
U+2028 inside a string, lines that are not UTF-8, bad lines in JSONL training data, a run
chain made with ``--on-error skip``, and a few CLI corners (issue 9, points 4 and 12)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import record, write_lines

from rationale.rundir import read_synth_records
from rationale.synth import SynthConfig, run_synth
from rationale.teacher import RetryPolicy

FAST = RetryPolicy(max_attempts=2, backoff=0.01, max_backoff=0.02)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-odd")


def rationale_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rationale.cli", *args], capture_output=True, text=True
    )


def synth(tmp_path: Path, server, data: Path, **overrides):
    config = {
        "input": str(data), "output": str(tmp_path / "run"), "teacher": "openai/test-model",
        "api_base": server.url, "verifier": "none", "timeout": 5.0, **overrides,
    }  # fmt: skip
    return run_synth(SynthConfig(**config), retry_policy=FAST)


def test_line_separators_inside_strings_do_not_split_run_files(
    tmp_path: Path, openai_server
) -> None:
    pages = ["<p>one\u2028two</p>", "<p>next\x85line</p>", "<p>group\x1dsep</p>"]
    data = write_lines(
        tmp_path / "in.jsonl", [record("s1", i, context=p) for i, p in enumerate(pages)]
    )
    summary = synth(tmp_path, openai_server, data)
    assert summary.counts["accepted"] == 3
    recs = [r for _, r in read_synth_records(tmp_path / "run" / "accepted.jsonl")]
    assert sorted(r.record["context"] for r in recs) == sorted(pages)
    again = synth(tmp_path, openai_server, data)  # the resume reads them back too
    assert again.counts["accepted"] == 3 and openai_server.count == 3
    out = rationale_cli("export-sft", str(tmp_path / "run"), "-o", str(tmp_path / "sft.jsonl"))
    assert out.returncode == 0, out.stderr
    assert len((tmp_path / "sft.jsonl").read_text(encoding="utf-8").split("\n")) == 4


def test_a_line_that_is_not_utf8_is_one_bad_line(tmp_path: Path) -> None:
    from rationale import RationaleError

    file = tmp_path / "accepted.jsonl"
    good = json.dumps({"state": "failed", "record": record("s1", 0)})
    file.write_bytes(good.encode() + b"\n" + b'{"state": "caf\xe9"}\n')
    with pytest.raises(RationaleError, match=r"accepted\.jsonl line 2: not a synthesis record"):
        list(read_synth_records(file))
    skipped: list[str] = []
    kept = list(read_synth_records(file, on_error="skip", skipped=skipped))
    assert len(kept) == 1 and "line 2" in skipped[0]


def test_a_record_line_that_is_not_utf8_leaves_its_session_out(tmp_path: Path) -> None:
    lines = [json.dumps(record("s1", i)).encode() for i in range(4)]
    lines[2] = lines[2].replace(b"search", b"caf\xe9")
    lines.append(json.dumps(record("s2", 0)).encode())
    data = tmp_path / "in.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    proc = rationale_cli("steps", str(data), "--on-error", "skip")
    assert proc.returncode == 0, proc.stderr
    steps = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [(s["record"]["session_id"], s["record"]["step"]) for s in steps] == [("s2", 0)]
    assert "line 3" in proc.stderr and "skipped session 's1'" in proc.stderr
    # asking for that session by name says it was left out, and prints none of it
    proc = rationale_cli("steps", str(data), "--on-error", "skip", "--session", "s1")
    assert proc.returncode == 0 and proc.stdout == "" and "left out" in proc.stderr


def test_bad_lines_in_jsonl_training_data_name_the_users_file(tmp_path: Path) -> None:
    from distill import DistillError
    from distill.data import SFTData

    data = tmp_path / "train.jsonl"
    data.write_bytes(
        json.dumps(record("s1", 0, rationale="I search for it.")).encode() + b"\n\n"
        + b'{"session_id": "s", "rationale": "no step"}\n'
        + json.dumps({"state": "accepted", "record": {"step": 1}, "rationale": "x"}).encode()
        + b"\n" + b'{"session_id": "s3", "caf\xe9": 1}\n'
        + json.dumps(record("s1", 0, rationale="again")).encode() + b"\n"
    )  # fmt: skip
    with pytest.raises(DistillError, match=rf"{data} line 3: step is missing"):
        SFTData(data)
    lenient = SFTData(data, on_error="skip")
    problems = "\n".join(lenient.skipped)
    for line in (3, 4, 5, 6):
        assert f"{data} line {line}:" in problems
    assert "there twice" in problems
    assert [len(e.steps) for e in lenient.examples()] == [1]


def test_a_filter_of_a_skip_run_is_distill_data(tmp_path: Path, openai_server) -> None:
    """synth --on-error skip -> filter -> export-sft: every stage reads the input as the run
    did (its bad session left out), though only the synth was told to skip."""
    from openai_server import ok

    from rationale.filter import run_filter

    def verifier_sees_search(body: dict, index: int):  # every record here clicks "search"
        if body["messages"][0]["content"].startswith("You predict the next action"):
            return ok(json.dumps({"action": {"type": "click", "name": "search"}}))
        return None

    openai_server.responder = verifier_sees_search
    data = write_lines(
        tmp_path / "in.jsonl",
        [record("s1", 0), {**record("s1", 1), "step": True}, record("s2", 0), record("s2", 1)],
    )
    synth(tmp_path, openai_server, data, on_error="skip")
    config = SynthConfig(
        input=str(tmp_path / "run"), output=str(tmp_path / "filtered"), timeout=5.0,
        verifier="openai/test-model", api_base=openai_server.url,
    )  # fmt: skip
    run_filter(config, retry_policy=FAST)
    out = rationale_cli("export-sft", str(tmp_path / "filtered"), "-o", str(tmp_path / "x.jsonl"))
    assert out.returncode == 0, out.stderr
    rows = (tmp_path / "x.jsonl").read_text().splitlines()
    assert len(rows) == 2  # s2's two steps; s1 was left out by the synth run


def test_export_sft_with_nothing_to_export_writes_nothing(tmp_path: Path) -> None:
    data = write_lines(tmp_path / "in.jsonl", [record("s1", 0)])  # no rationale anywhere
    out = tmp_path / "sft.jsonl"
    proc = rationale_cli("export-sft", str(data), "-o", str(out))
    assert proc.returncode == 1 and "no step with an accepted rationale" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_bytes(b'teacher = "caf\xe9"\n')
    data = write_lines(tmp_path / "in.jsonl", [record("s1", 0)])
    proc = rationale_cli("synth", str(data), "-o", str(tmp_path / "r"), "--config", str(config))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "UTF-8" in proc.stderr


def test_report_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    proc = rationale_cli("report", str(tmp_path))
    assert proc.returncode == 1 and "not a run folder" in proc.stderr
