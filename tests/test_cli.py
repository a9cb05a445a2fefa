"""The `rationale` command, run as users run it: the installed entry point in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import EXAMPLES, FIXTURES, record, write_lines

import rationale

RATIONALE = shutil.which("rationale", path=str(Path(sys.executable).parent)) or "rationale"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RATIONALE, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr


def test_version_and_help() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and rationale.__version__ in proc.stdout
    proc = run("-h")
    assert proc.returncode == 0
    for command in ("import", "validate", "steps"):
        assert command in proc.stdout


def test_bad_flags_exit_2() -> None:
    assert run("validate", "--no-such-flag", "x").returncode == 2
    assert run("no-such-command").returncode == 2
    assert (
        run(
            "steps", str(EXAMPLES / "mind2web" / "shopping_sample.jsonl"), "--on-error", "maybe"
        ).returncode
        == 2
    )


def test_import_then_validate_json(tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    proc = run(
        "import",
        "mind2web",
        str(EXAMPLES / "mind2web" / "raw_shopping_sample.json"),
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # data goes to the file, the summary to stderr
    assert "wrote 169 steps of 16 sessions" in proc.stderr
    proc = run("validate", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["sessions"] == 16 and report["steps"] == 169 and report["errors"] == []
    assert sum(report["action_types"].values()) == 169
    text = run("validate", str(out))
    assert text.returncode == 0 and "16 sessions, 169 steps" in text.stdout


def test_import_opera_folder(tmp_path: Path) -> None:
    out = tmp_path / "opera.jsonl"
    proc = run("import", "opera", str(FIXTURES / "opera"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "wrote 5 steps of 2 sessions" in proc.stderr
    report = json.loads(run("validate", str(out), "--json").stdout)
    assert report["outcomes"] == {"purchase": 1, "terminate": 1, "none": 0}


def test_validate_reports_every_error_and_exits_1(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "input.jsonl",
        [record("a", 0), record("a", 1, action={"type": "clik"}), "{oops", record("b", 0)],
    )
    proc = run("validate", "input.jsonl", "--json", cwd=tmp_path)
    assert proc.returncode == 1
    no_traceback(proc)
    report = json.loads(proc.stdout)
    assert [e["line"] for e in report["errors"]] == [2, 3]
    assert report["errors"][0]["error"] == (
        "input.jsonl line 2: action.type 'clik' is not one of click, type_and_submit, terminate"
    )
    assert report["errors"][0]["field"] == "action.type"
    assert report["skipped_sessions"] == ["a"]
    assert report["sessions"] == 1 and report["steps"] == 1
    text = run("validate", str(path))
    assert text.returncode == 1 and "errors: 2" in text.stdout


def test_steps_fail_and_skip_modes(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "input.jsonl",
        [
            record("a", 1, action={"type": "click", "name": "product.buy_now"}),
            record("a", 0, rationale="I look for a hat."),
            record("b", 0),
            {**record("b", 1), "step": "one"},
        ],
    )
    proc = run("steps", "input.jsonl", cwd=tmp_path)
    assert proc.returncode == 1
    no_traceback(proc)
    assert proc.stderr.strip().splitlines()[-1] == (
        "Error: input.jsonl line 4: step must be an integer, got 'one'"
    )
    proc = run("steps", "input.jsonl", "--on-error", "skip", "--history-rationales", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipped: input.jsonl line 4: step must be an integer" in proc.stderr
    assert "skipped session 'b': lines 3, 4" in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(x["record"]["session_id"], x["record"]["step"]) for x in lines] == [("a", 0), ("a", 1)]
    assert lines[1]["history"] == [
        {"step": 0, "action": {"type": "click", "name": "search"}, "rationale": "I look for a hat."}
    ]
    assert lines[1]["session_outcome"] == "purchase"


def test_run_time_errors_are_one_line_exit_1(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    proc = run(
        "import",
        "mind2web",
        str(EXAMPLES / "mind2web" / "raw_shopping_sample.json"),
        "-o",
        str(blocker / "out.jsonl"),
    )
    assert proc.returncode == 1
    no_traceback(proc)
    bad_space = tmp_path / "space.toml"
    bad_space.write_text("[action.Click]\n")
    proc = run(
        "validate",
        str(EXAMPLES / "mind2web" / "shopping_sample.jsonl"),
        "--action-space",
        str(bad_space),
    )
    assert proc.returncode == 1 and "lower_snake_case" in proc.stderr
    no_traceback(proc)


@pytest.mark.parametrize("module", ["pydantic", "litellm", "torch", "jinja2", "instructor"])
def test_cli_start_up_imports_nothing_heavy(module: str) -> None:
    code = f"import sys, rationale.cli; sys.exit(1 if {module!r} in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
