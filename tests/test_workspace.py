"""The workspace file and the bare commands: rationale.toml is found like pyproject.toml, its keys
are checked, flags win over it, the resolved values are what each stage records, and every default
used is printed."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from helpers import ROOT, record, write_lines
from openai_server import ScriptedServer

from rationale.cli import main
from rationale.errors import ConfigError
from rationale.workspace import STAGES, Workspace, find_workspace, stage_model

EXAMPLE = ROOT / "examples" / "mind2web_shopping" / "rationale.toml"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RATIONALE_CONFIG", raising=False)
    monkeypatch.setenv("RATIONALE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.chdir(tmp_path)


def cli(*args: str) -> click.testing.Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


run = cli  # the name tests/test_cli.py looks for when it checks that each command is run


def records(path: Path, sessions: int = 2) -> Path:
    lines = [record(f"s{s}", k) for s in range(sessions) for k in range(2)]
    return write_lines(path, lines)


# -- finding and checking the file ----------------------------------------------------------------


def test_found_here_or_in_a_parent_or_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert find_workspace() is None
    (tmp_path / "rationale.toml").write_text("[synth]\nteacher = 'local'\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_workspace(start=deep) == tmp_path / "rationale.toml"
    other = tmp_path / "other.toml"
    other.write_text("[split]\ntest-frac = 0.5\n")
    monkeypatch.setenv("RATIONALE_CONFIG", str(other))
    assert find_workspace(start=deep) == other
    assert find_workspace(str(tmp_path / "rationale.toml")) == tmp_path / "rationale.toml"
    with pytest.raises(ConfigError, match=r"\$RATIONALE_CONFIG: no workspace file"):
        monkeypatch.setenv("RATIONALE_CONFIG", str(tmp_path / "nope.toml"))
        find_workspace()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[synth]\nteachr = 'local'\n",
         r"rationale.toml: \[synth\] unknown key 'teachr'; did you mean 'teacher'\?"),
        ("[synth]\nmax_cots = 1\n", r"\[synth\] unknown key 'max_cots'; did you mean 'max-cost'\?"),
        ("[distill]\nlora-rank = 8\n",
         r"\[distill\] unknown key 'lora-rank'; did you mean 'lora-r'\?"),
        ("[synthesis]\nteacher = 'x'\n", r"unknown table \[synthesis\]; did you mean \[synth\]\?"),
        ("teacher = 'local'\n", r"'teacher' is outside a table; put it under \[synth\]"),
        ("[synth]\ndry-run = true\n", r"\[synth\] unknown key 'dry-run'"),
        ("[eval]\nmax-new-tokens = 9\n",
         r"\[eval\] unknown key 'max-new-tokens'; did you mean 'max-tokens'\?"),
        ("[split\n", r"rationale.toml: not valid TOML"),
    ],
)  # fmt: skip
def test_a_bad_key_names_the_file_the_table_and_the_nearest_name(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "rationale.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        Workspace.find()
    result = cli("synth", str(records(tmp_path / "in.jsonl")))
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "prompt.jinja").write_text("x")
    (ws / "rationale.toml").write_text(
        "[split]\ninput = 'data/r.jsonl'\n[synth]\nteacher = 'local'\ntemplate = 'prompt.jinja'\n"
        "[eval]\ntemplate = 'predict'\n[distill]\nbase = 'smollm2-135m'\n"
    )
    w = Workspace.find(start=ws)
    assert w.table("split")["input"] == str(ws / "data" / "r.jsonl")
    assert w.table("synth")["template"] == str(ws / "prompt.jinja")  # a file there: a path
    assert w.table("eval")["template"] == "predict"  # a name: left alone
    assert w.table("distill")["base"] == "smollm2-135m"
    assert w.synth_input() == ws / "runs" / "split" / "train.jsonl"
    assert w.synth_output() == ws / "runs" / "synth" / "train"
    assert w.eval_data() == ws / "runs" / "split" / "test.jsonl"


def test_init_writes_a_starter_that_loads_and_refuses_to_overwrite(tmp_path: Path) -> None:
    data = records(tmp_path / "mine.jsonl")
    result = run("init", str(data))
    assert result.exit_code == 0 and "teacher" in result.output
    w = Workspace.find()
    assert w.table("split")["input"] == str(data)
    assert set(w.tables) == {"split", "synth", "distill", "eval", "compare"}
    again = CliRunner().invoke(main, ["init"])  # exit 1: not an exception to re-raise
    assert again.exit_code == 1 and "--force" in again.output
    assert CliRunner().invoke(main, ["init", "--force"]).exit_code == 0


def test_every_key_of_the_shipped_files_is_valid() -> None:
    w = Workspace.load(EXAMPLE)
    assert set(w.tables) == set(STAGES)


@pytest.mark.parametrize("command", ["synth", "distill", "eval", "split"])
def test_a_flag_and_its_setting_have_one_default(command: str) -> None:
    """The flags' defaults are the job models' defaults, so a setting left out of the workspace
    file means what the flag left out means."""
    cmd = main.commands[command]
    model = stage_model(command)
    for param in cmd.params:
        field = model.model_fields.get(param.name)
        if field is None or field.is_required() or param.default in (None, ()):
            continue
        if type(param.default).__name__ == "Sentinel":  # click 8.2's UNSET: no default
            continue
        default = field.get_default(call_default_factory=True)
        assert param.default == default, (command, param.name, param.default, default)


# -- the bare commands ----------------------------------------------------------------------------


def test_bare_synth_without_a_teacher_says_how_to_choose_one(tmp_path: Path) -> None:
    result = cli("synth", str(records(tmp_path / "input.jsonl")))
    assert result.exit_code == 1
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "--teacher" in line and "'local'" in line
    assert "OPENAI_API_KEY" in line and not (tmp_path / "runs").exists()


def test_bare_synth_takes_the_teacher_and_prints_its_output(tmp_path: Path) -> None:
    data = records(tmp_path / "input.jsonl")
    with ScriptedServer() as server:
        (tmp_path / "rationale.toml").write_text(
            f"[synth]\nteacher = 'openai/test-model'\napi-base = '{server.url}'\n"
            "verifier = 'none'\nmax-tokens = 99\ntimeout = 7\n"
        )
        result = cli("synth", "input.jsonl", "--timeout", "9")
    assert result.exit_code == 0, result.output
    assert "synth: --output runs/synth/input (default; -o to choose)" in result.output
    assert "from rationale.toml [synth]: teacher, api-base, verifier, max-tokens" in result.output
    run = json.loads((tmp_path / "runs" / "synth" / "input" / "run.json").read_text())
    config = run["config"]
    assert config["teacher"] == "openai/test-model" and config["max_tokens"] == 99
    assert config["timeout"] == 9.0  # the flag typed wins over the file
    assert (
        len((tmp_path / "runs" / "synth" / "input" / "accepted.jsonl").read_text().splitlines())
        == 4
    )
    assert data.exists()


def test_bare_distill_takes_the_workspace_synth_output(tmp_path: Path) -> None:
    records(tmp_path / "train.jsonl")
    with ScriptedServer() as server:
        (tmp_path / "rationale.toml").write_text(
            f"[synth]\ninput = 'train.jsonl'\nteacher = 'openai/test-model'\n"
            f"api-base = '{server.url}'\nverifier = 'none'\n"
        )
        assert cli("synth").exit_code == 0
    result = cli("distill", "--base", "llama-3-8b")
    assert "distill: --data runs/synth/train (the workspace's synth output)" in result.output
    assert "distill: --output runs/distill/llama-3-8b (default; -o to choose)" in result.output
    # an 8B base on a CPU is refused before anything loads (nothing downloads)
    assert result.exit_code == 1 and "--allow-cpu" in result.output
    actions = cli("distill", "--base", "llama-3-8b", "--no-rationale")
    assert "--output runs/distill/llama-3-8b-actions" in actions.output


def test_bare_distill_outside_a_workspace(tmp_path: Path) -> None:
    result = cli("distill", "--base", "llama-3-8b")
    assert result.exit_code == 1 and "no --data" in result.output
    for name in ("a", "b"):
        (tmp_path / "runs" / "synth" / name).mkdir(parents=True)
        (tmp_path / "runs" / "synth" / name / "run.json").write_text("{}")
    two = cli("distill", "--base", "llama-3-8b")
    assert two.exit_code == 1 and "several synth runs" in two.output and "a, b" in two.output
