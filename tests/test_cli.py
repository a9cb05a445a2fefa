"""The `rationale` command, run as users run it: the installed entry point in a subprocess.

Every command is run at least once by the test suite; `test_every_command_is_run_by_a_test` keeps
the list of which test runs which, and reads each listed test's source to see that it does, so a
new command without a CLI test fails. The runs of synth, filter, report and export-sft against the
local OpenAI-compatible server are in test_cli_runs.py.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from helpers import EXAMPLES, FIXTURES, ROOT, record, write_lines

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
    # --base has no default: without it (and no workspace), one line says how to give it
    missing = run("distill", "--data", str(FIXTURES), "-o", "unused")
    assert missing.returncode == 1
    assert "base: missing (--base or base in [distill]" in missing.stderr


# -- every command has a test that runs it ------------------------------------------------------

#: Each command (its words after `rationale`) and the test that runs it through the CLI, as
#: "tests/FILE.py::TEST". A new command needs a line here, and so a test that runs it.
RUN_BY = {
    "import mind2web": "tests/test_cli.py::test_import_then_validate_json",
    "import opera": "tests/test_cli.py::test_import_opera_folder",
    "import miniwob": "tests/test_import_miniwob.py::test_cli_import_then_validate",
    "import browser-log": "tests/test_import_browser_log.py::test_the_import_summary_and_validate",
    "validate": "tests/test_cli.py::test_validate_reports_every_error_and_exits_1",
    "steps": "tests/test_cli.py::test_steps_fail_and_skip_modes",
    "render": "tests/test_cli.py::test_render_text_and_json",
    "split": "tests/test_split.py::test_cli_splits_the_shipped_example",
    "eval": "tests/test_eval.py::test_split_eval_compare_end_to_end",
    "compare": "tests/test_compare.py::test_compare_cli_writes_table_and_chart",
    "synth": "tests/test_cli_runs.py::test_synth_then_filter",
    "filter": "tests/test_cli_runs.py::test_synth_then_filter",
    "report": "tests/test_cli_runs.py::test_report_text_and_json",
    "batches": "tests/test_batch.py::test_batches_shows_and_cancels_the_jobs_of_a_run",
    "merge": "tests/test_shards.py::test_merged_shard_runs_are_the_unsharded_run",
    "export-sft": "tests/test_cli_runs.py::test_export_sft",
    "distill": "tests/test_distill_data.py::test_distill_command_end_to_end",
    "init": "tests/test_workspace.py::test_init_writes_a_starter_that_loads_and_refuses_to_overwrite",  # noqa: E501
    "run": "tests/test_run_chain.py::test_run_goes_from_raw_logs_to_the_table_and_a_rerun_does_nothing",  # noqa: E501
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


def runs_command(source: str, test: str, command: str) -> bool:
    """Whether function ``test`` of ``source``, or a fixture or helper of that file it reaches
    (through its parameters and the names it uses, transitively), runs ``rationale COMMAND``:
    calls ``run("<word>", ...)`` with the command's words first, or builds a list
    ``[RATIONALE, "<word>", ...]`` for a subprocess."""
    words = command.split()
    funcs = {n.name: n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}

    def lead(nodes: list[ast.expr]) -> list[object]:
        return [n.value if isinstance(n, ast.Constant) else None for n in nodes[: len(words)]]

    todo, seen = [test], set()
    while todo:
        fn = funcs.get(todo.pop())
        if fn is None or fn.name in seen:
            continue
        seen.add(fn.name)
        todo += [a.arg for a in fn.args.args]
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run":
                if lead(node.args) == words:
                    return True
            elif (
                isinstance(node, ast.List)
                and node.elts
                and "RATIONALE" in ast.unparse(node.elts[0])
                and lead(node.elts[1:]) == words
            ):
                return True
            elif isinstance(node, ast.Name):
                todo.append(node.id)
    return False


def test_every_command_is_run_by_a_test() -> None:
    assert _command_paths(main) == set(RUN_BY)
    for command, where in RUN_BY.items():
        file, test = where.split("::")
        source = (ROOT / file).read_text(encoding="utf-8")
        assert f"\ndef {test}(" in source, f"{where} (listed for {command!r}) does not exist"
        runs = runs_command(source, test, command)
        assert runs, f"{where} does not run `rationale {command}`"


def test_runs_command_sees_which_command_a_test_runs() -> None:
    """The check above can fail: a test (or its fixture) that runs another command, or none."""
    source = (ROOT / "tests" / "test_cli.py").read_text(encoding="utf-8")
    runs = (ROOT / "tests" / "test_cli_runs.py").read_text(encoding="utf-8")
    distill = (ROOT / "tests" / "test_distill_data.py").read_text(encoding="utf-8")
    assert runs_command(source, "test_import_opera_folder", "import opera")
    assert not runs_command(source, "test_import_opera_folder", "import mind2web")
    assert not runs_command(source, "test_render_text_and_json", "validate")
    assert not runs_command(source, "test_bad_flags_exit_2", "import opera")
    assert not runs_command(source, "no_such_test", "validate")
    assert runs_command(runs, "test_report_text_and_json", "filter")  # through its fixture
    assert not runs_command(runs, "test_synth_dry_run_calls_nothing", "filter")
    assert not runs_command(runs, "test_export_sft", "distill")
    assert runs_command(distill, "test_distill_command_end_to_end", "distill")
    assert not runs_command(distill, "test_export_sft_loads_in_datasets", "distill")
