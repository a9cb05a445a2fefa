"""The `rationale` command, run as users run it: the installed entry point in a subprocess.

Every command is run at least once by the test suite; `test_every_command_is_run_by_a_test` keeps
the list of which test runs which, so a new command without a CLI test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from helpers import EXAMPLES, FIXTURES, ROOT, record, write_lines
from openai_server import ScriptedServer, ok

import rationale
from rationale.cli import main

RATIONALE = shutil.which("rationale", path=str(Path(sys.executable).parent)) or "rationale"


def run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RATIONALE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


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


def test_steps_of_one_session_with_a_limit_and_an_unknown_session() -> None:
    sample = str(EXAMPLES / "mind2web" / "shopping_sample.jsonl")
    first = json.loads(run("steps", sample, "--limit", "1").stdout)
    session = first["record"]["session_id"]
    proc = run("steps", sample, "--session", session, "--limit", "3")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [x["record"]["step"] for x in lines] == [0, 1, 2]
    assert {x["record"]["session_id"] for x in lines} == {session}
    assert [len(x["history"]) for x in lines] == [0, 1, 2]
    proc = run("steps", sample, "--session", "no-such-session")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == f"Error: {sample}: no session 'no-such-session'"


def test_render_text_and_json() -> None:
    sample = str(EXAMPLES / "mind2web" / "shopping_sample.jsonl")
    proc = run("render", sample, "--limit", "2")
    assert proc.returncode == 0, proc.stderr
    headers = re.findall(
        r"^=== session \S+ step (\d+) \((\S+)@\S+, (\d+) context", proc.stdout, re.M
    )
    assert [(step, name) for step, name, _ in headers] == [
        ("0", "web_shopping"),
        ("1", "web_shopping"),
    ]
    assert proc.stdout.count("--- system ---") == 2 and proc.stdout.count("--- user ---") == 2
    assert proc.stdout.count("## What they did next") == 2  # the teacher sees the action
    proc = run("render", sample, "--limit", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    prompts = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [p["step"] for p in prompts] == [0, 1, 2]
    assert all(p["template"] == "web_shopping" and p["messages"] for p in prompts)
    assert all(p["messages"][-1]["role"] == "user" for p in prompts)
    assert all(p["context_cut_tokens"] == 0 for p in prompts)  # Mind2Web: no page contexts
    # a teacher template needs the action: rendering it blind is a one-line error
    proc = run("render", sample, "--blind")
    assert proc.returncode == 1 and "only in prompts that may see the action" in proc.stderr
    no_traceback(proc)


@pytest.mark.parametrize("template", ["student", "verifier"])
def test_render_blind_templates(template: str) -> None:
    sample = str(EXAMPLES / "mind2web" / "shopping_sample.jsonl")
    proc = run("render", sample, "--limit", "2", "--blind", "--json", "--template", template)
    assert proc.returncode == 0, proc.stderr
    prompts = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [p["template"] for p in prompts] == [template, template]
    assert "What they did next" not in proc.stdout  # blind: no action in the prompt


def test_distill_help_lists_its_options() -> None:
    # A real `rationale distill` run is in test_distill_data.py (test_distill_command_end_to_end).
    proc = run("distill", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: rationale distill [OPTIONS]")
    for flag in ("--base", "--data", "--output", "--backend", "--max-steps", "--config"):
        assert flag in proc.stdout
    assert run("distill", "--data", str(FIXTURES)).returncode == 2  # --base is required


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


def test_report_text_and_json(runs: Runs) -> None:
    assert runs.filter.returncode == 0, runs.filter.stderr
    chart = runs.filtered / "acceptance.png"
    chart.unlink(missing_ok=True)  # the filter run drew it too
    proc = run("report", str(runs.filtered))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        "records: 4  accepted 2, rejected 2, failed 0  (acceptance 50.0%)"
    )
    assert re.search(r"^  verifier\s+2 / 2$", proc.stdout, re.M)
    assert proc.stderr.strip() == f"chart: {chart}"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
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


# -- every command has a test that runs it ------------------------------------------------------

#: Each command (its words after `rationale`) and the test that runs it through the CLI, as
#: "tests/FILE.py::TEST". A new command needs a line here, and so a test that runs it.
RUN_BY = {
    "import mind2web": "tests/test_cli.py::test_import_then_validate_json",
    "import opera": "tests/test_cli.py::test_import_opera_folder",
    "validate": "tests/test_cli.py::test_validate_reports_every_error_and_exits_1",
    "steps": "tests/test_cli.py::test_steps_fail_and_skip_modes",
    "render": "tests/test_cli.py::test_render_text_and_json",
    "synth": "tests/test_cli.py::test_synth_then_filter",
    "filter": "tests/test_cli.py::test_synth_then_filter",
    "report": "tests/test_cli.py::test_report_text_and_json",
    "export-sft": "tests/test_cli.py::test_export_sft",
    "distill": "tests/test_distill_data.py::test_distill_command_end_to_end",
}


def _command_paths(group: click.Group, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            paths |= _command_paths(command, f"{path} ")
        else:
            paths.add(path)
    return paths


def test_every_command_is_run_by_a_test() -> None:
    assert _command_paths(main) == set(RUN_BY)
    for command, where in RUN_BY.items():
        file, test = where.split("::")
        source = (ROOT / file).read_text(encoding="utf-8")
        assert f"\ndef {test}(" in source, f"{where} (listed for {command!r}) does not exist"
        # the test, or a fixture or helper in its file, passes the command's name to `rationale`
        name = command.split()[-1]
        assert f'"{name}"' in source, f"{file} does not run `rationale {command}`"
