"""`rationale run`'s bookkeeping: which stage runs again and which is skipped, what a kill leaves,
what is printed (no secret), and bad input that must lose nothing. Mostly the cheap stages
(import, split); the few that train use the tiny test model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import ROOT

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from openai_server import ScriptedServer
from test_run_chain import SAMPLE, env_for, jsonl, run, write_workspace
from tiny_model import build_tiny_llama

from rationale.workspace import Workspace

IMPORT_SPLIT = f"""
[import]
source = ["{SAMPLE.as_posix()}"]
max-sessions = 4

[split]
test-frac = 0.5
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny")


def test_a_stage_run_alone_makes_the_stages_reading_it_run_again(tmp_path: Path) -> None:
    """--from/--until: a stage that ran on an old input is not 'up to date' once its producer
    has run again (the stamps chain by what actually ran, not by what is planned)."""
    env = env_for(tmp_path / "home")
    toml = tmp_path / "rationale.toml"
    toml.write_text(IMPORT_SPLIT)
    assert run("run", "--until", "split", cwd=tmp_path, env=env).returncode == 0
    toml.write_text(IMPORT_SPLIT.replace("max-sessions = 4", "max-sessions = 8"))
    alone = run("run", "--from", "split", "--until", "split", cwd=tmp_path, env=env)
    assert alone.returncode == 0, alone.stderr  # split of the old records: its inputs are there
    full = run("run", "--until", "split", cwd=tmp_path, env=env)
    assert full.returncode == 0, full.stderr
    assert "[1/2] import: rationale import" in full.stderr
    assert "[2/2] split: rationale split" in full.stderr  # not "up to date"
    runs = tmp_path / "runs"
    split = jsonl(runs / "split" / "train.jsonl") + jsonl(runs / "split" / "test.jsonl")
    assert len(split) == len(jsonl(runs / "records.jsonl"))
    assert len({r["session_id"] for r in split}) == 8


def test_an_edited_input_file_reruns_the_stage(tmp_path: Path) -> None:
    env = env_for(tmp_path / "home")
    (tmp_path / "rationale.toml").write_text(IMPORT_SPLIT)
    assert run("run", cwd=tmp_path, env=env).returncode == 0
    assert ": up to date (" in run("run", cwd=tmp_path, env=env).stderr
    raw = tmp_path / "raw.json"
    raw.write_bytes(SAMPLE.read_bytes())
    (tmp_path / "rationale.toml").write_text(IMPORT_SPLIT.replace(SAMPLE.as_posix(), "raw.json"))
    assert "import: up to date" not in run("run", cwd=tmp_path, env=env).stderr  # another path
    assert "import: up to date" in run("run", cwd=tmp_path, env=env).stderr
    data = json.loads(raw.read_text())
    data[0]["confirmed_task"] += " (edited)"
    raw.write_text(json.dumps(data))
    again = run("run", cwd=tmp_path, env=env)
    assert "import: up to date" not in again.stderr and "split: up to date" not in again.stderr


def test_a_domain_that_matches_nothing_keeps_the_old_records(tmp_path: Path) -> None:
    env = env_for(tmp_path / "home")
    (tmp_path / "rationale.toml").write_text(IMPORT_SPLIT)
    assert run("run", "--until", "import", cwd=tmp_path, env=env).returncode == 0
    records = tmp_path / "runs" / "records.jsonl"
    before = records.read_bytes()
    bad = run("import", "mind2web", str(SAMPLE), "-o", str(records), "--domain", "Shoping",
              cwd=tmp_path, env=env)  # fmt: skip
    errors = [line for line in bad.stderr.splitlines() if line.startswith("Error")]
    assert bad.returncode == 1 and len(errors) == 1  # one line (after the workspace note)
    assert "the domains there: Shopping; did you mean Shopping?" in bad.stderr
    assert records.read_bytes() == before


def test_bare_import_takes_its_sources_from_the_workspace(tmp_path: Path) -> None:
    (tmp_path / "rationale.toml").write_text(IMPORT_SPLIT)
    proc = run("import", "mind2web", cwd=tmp_path, env=env_for(tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    assert "import: --output runs/records.jsonl (default)" in proc.stderr
    assert len({r["session_id"] for r in jsonl(tmp_path / "runs" / "records.jsonl")}) == 4


def test_no_secret_in_the_commands_the_summary_or_the_stamps(tmp_path: Path, tiny: Path) -> None:
    secret_url = "https://alice:s3cretpw@llm.example.com/v1?api_key=abcdef123456"
    ws = tmp_path / "ws"
    write_workspace(ws, tiny, secret_url)
    env = env_for(tmp_path / "home")
    dry = run("run", "--dry-run", cwd=ws, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "--api-base 'https://***@llm.example.com/v1?api_key=***'" in dry.stderr  # eval:teacher
    real = run("run", "--until", "split", cwd=ws, env=env)
    for text in (dry.stdout, dry.stderr, real.stdout, real.stderr,
                 *(p.read_text() for p in (ws / "runs" / ".stamps").glob("*.json"))):  # fmt: skip
        assert "s3cretpw" not in text and "abcdef123456" not in text


def test_a_speed_setting_reruns_nothing_and_a_larger_limit_resumes_the_eval(
    tmp_path: Path, tiny: Path
) -> None:
    ws = tmp_path / "ws"
    env = env_for(tmp_path / "home")
    with ScriptedServer() as server:
        toml = write_workspace(ws, tiny, server.url)
        text = toml.read_text().replace('"base", "actions", "rationale", "teacher"', '"base"')
        toml.write_text(text.replace("[eval]\n", "[eval]\nlimit = 3\n"))
        assert run("run", cwd=ws, env=env).returncode == 0
        calls = server.count
        toml.write_text(
            text.replace("[eval]\n", "[eval]\nlimit = 3\nbatch-size = 2\n").replace(
                "[synth]\n", "[synth]\nconcurrency = 3\nrpm = 500\n"
            )
        )
        same = run("run", cwd=ws, env=env)
        assert same.stderr.count(": up to date (") == 5 and server.count == calls
        toml.write_text(text.replace("[eval]\n", "[eval]\nlimit = 5\n"))
        more = run("run", cwd=ws, env=env)
    assert more.returncode == 0, more.stderr
    assert "moved" not in more.stderr and "5 cases" in more.stderr  # resumed, not redone
    assert json.loads((ws / "runs" / "eval" / "base" / "eval.json").read_text())["n_cases"] == 5
    assert not (ws / "runs" / ".outdated").exists()


def test_a_student_whose_stamp_was_lost_is_adopted_not_retrained(
    tmp_path: Path, tiny: Path
) -> None:
    """A kill between a student's save and its stamp: the rerun sees the same settings in the
    student's config.json and keeps it; a folder of other settings is refused, named."""
    ws = tmp_path / "ws"
    env = env_for(tmp_path / "home")
    with ScriptedServer() as server:
        toml = write_workspace(ws, tiny, server.url)
        text = toml.read_text().replace('"base", "actions", "rationale", "teacher"', '"rationale"')
        toml.write_text(text.replace("[eval]\n", "[eval]\nlimit = 2\n"))
        assert run("run", cwd=ws, env=env).returncode == 0
        student = ws / "runs" / "distill" / "tiny"
        adapter = (student / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
        (ws / "runs" / ".stamps" / "distill-rationale.json").unlink()
        again = run("run", cwd=ws, env=env)
        assert again.returncode == 0, again.stderr
        assert "holds a student trained with these settings" in again.stderr
        assert (student / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == adapter
        assert "eval:rationale: up to date" not in again.stderr  # its producer's stamp is new
        (ws / "runs" / ".stamps" / "distill-rationale.json").unlink()
        toml.write_text(toml.read_text().replace("max-steps = 2", "max-steps = 3"))
        other = run("run", cwd=ws, env=env)
    assert other.returncode == 1
    assert "holds a student trained with other settings (max_steps 2 -> 3)" in other.stderr


def test_an_interrupted_student_of_other_settings_is_moved_and_trained_afresh(
    tmp_path: Path, tiny: Path
) -> None:
    """A distill stage stopped after its first checkpoint, then another [distill] learning rate:
    the rerun moves the half-trained folder to runs/.outdated/ and trains from step 0, rather
    than continue its weights under settings that its stamp and config.json would then claim."""
    ws = tmp_path / "ws"
    env = env_for(tmp_path / "home")
    with ScriptedServer() as server:
        toml = write_workspace(ws, tiny, server.url)
        text = toml.read_text().replace('"base", "actions", "rationale", "teacher"', '"rationale"')
        toml.write_text(text.replace("max-steps = 2", "max-steps = 2\nsave-steps = 1"))
        first = run("run", "--until", "distill", cwd=ws, env=env)
        assert first.returncode == 0, first.stderr[-3000:]
    # What a kill after the step-1 checkpoint leaves: no stamp, no model card, no step 2.
    student = ws / "runs" / "distill" / "tiny"
    (ws / "runs" / ".stamps" / "distill-rationale.json").unlink()
    (student / "README.md").unlink()
    shutil.rmtree(student / "checkpoints" / "checkpoint-2")
    text = toml.read_text()
    toml.write_text(text.replace("save-steps = 1", "save-steps = 1\nlearning-rate = 0.001"))
    again = run("run", "--until", "distill", cwd=ws, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(its interrupted training differs: learning_rate 0.0002 -> 0.001); training " \
        "starts from scratch" in again.stderr  # fmt: skip
    assert "continuing from the last checkpoint" not in again.stderr
    (moved,) = (ws / "runs" / ".outdated").iterdir()
    assert (moved / "checkpoints" / "checkpoint-1").is_dir()
    log = [json.loads(line) for line in (student / "training_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2]
    assert json.loads((student / "config.json").read_text())["config"]["learning_rate"] == 1e-3


def test_eval_without_compare_still_evaluates_the_arms(tmp_path: Path, tiny: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "rationale.toml").write_text(
        IMPORT_SPLIT + f'[distill]\nbase = "{tiny.as_posix()}"\n[eval]\nlimit = 2\nmax-tokens = 8\n'
    )
    names = [
        s.name for s in __import__("rationale.workflow").workflow.plan(Workspace.find(start=ws))
    ]
    assert names == ["import", "split", "eval:base"]  # no synth: no students; no [compare]


def test_relative_paths_tilde_arm_names_and_a_second_workspace_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "rationale").mkdir()  # a folder named like an arm, beside the file
    other = tmp_path / "gpt4.toml"
    other.write_text(
        '[split]\ninput = "~/recs.jsonl"\n[compare]\nreference = "rationale"\n'
        "[synth]\nteacher = 'local'\n[synth.rules]\nmin-words = 3\n"
    )
    w = Workspace.load(other)
    assert w.table("split")["input"] == str(tmp_path / "home" / "recs.jsonl")
    assert w.table("compare")["reference"] == "rationale"
    assert w.table("synth")["rules"] == {"min_words": 3}
    assert w.default("split") == tmp_path / "runs-gpt4" / "split"  # not rationale.toml's runs/
    other.write_text("[synth]\nteacher = 'local'\n[synth.rules]\nmin_word = 3\n")
    with pytest.raises(Exception, match=r"\[synth.rules\] unknown key 'min_word'; did you mean"):
        Workspace.load(other)


def test_the_example_workspace_plans_every_arm_but_the_local_teacher() -> None:
    w = Workspace.load(ROOT / "examples" / "mind2web_shopping" / "rationale.toml")
    from rationale.workflow import plan

    stages = plan(w)
    assert [s.name for s in stages] == [
        "import", "split", "synth", "distill:rationale", "distill:actions", "eval:base",
        "eval:actions", "eval:rationale", "compare",
    ]  # fmt: skip
    assert "teacher arm left out" in stages[-1].note


def test_a_second_run_on_the_same_workspace_is_refused_while_one_runs(
    tmp_path: Path, tiny: Path
) -> None:
    import subprocess
    import time

    from test_run_chain import RATIONALE

    ws = tmp_path / "ws"
    env = env_for(tmp_path / "home")
    with ScriptedServer(latency=0.5) as server:
        write_workspace(ws, tiny, server.url)
        first = subprocess.Popen([str(RATIONALE), "run", "--until", "synth"], cwd=ws, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and server.count == 0:
                time.sleep(0.1)
            second = run("run", cwd=ws, env=env)
        finally:
            first.kill()
            first.wait()
    assert second.returncode == 1
    assert "is being written by rationale run (pid" in second.stderr


def test_a_bad_line_is_named_and_with_skip_its_session_is_reported(tmp_path: Path) -> None:
    lines = (ROOT / "examples" / "mind2web" / "shopping_sample.jsonl").read_text().splitlines()
    lines[6] = lines[6].replace('"type":"click"', '"type":"clik"')
    (tmp_path / "recs.jsonl").write_text("\n".join(lines[:20]) + "\n")
    (tmp_path / "rationale.toml").write_text('[split]\ninput = "recs.jsonl"\n')
    env = env_for(tmp_path / "home")
    bad = run("run", cwd=tmp_path, env=env)
    assert bad.returncode == 1
    assert "recs.jsonl line 7: action.type 'clik' is not one of" in bad.stderr
    assert not (tmp_path / "runs" / "split").exists()
    (tmp_path / "rationale.toml").write_text('[split]\ninput = "recs.jsonl"\non-error = "skip"\n')
    skip = run("run", cwd=tmp_path, env=env)
    assert skip.returncode == 0, skip.stderr
    assert "skipped: " in skip.stderr and "left out 1 sessions" in skip.stderr


MINIWOB = ROOT / "tests" / "fixtures" / "miniwob"


def test_a_miniwob_import_gives_its_action_space_to_every_later_stage(
    tmp_path: Path, tiny: Path
) -> None:
    """[import] format = "miniwob" writes records with `type` actions and their action space
    beside them: split, synth (and so distill, which reads the synth run's) and each eval arm
    get that space without a word in rationale.toml, and the chain runs to the table. Before,
    split stopped at the first typing step: "action.type 'type' is not one of click,
    type_and_submit, terminate". The libraries' per-sub-step bars are not printed."""
    ws = tmp_path / "ws"
    env = env_for(tmp_path / "home")
    with ScriptedServer() as server:
        write_workspace(ws, tiny, server.url)
        toml = ws / "rationale.toml"
        text = toml.read_text().split("[split]", 1)[1].replace("test-frac = 0.4", "test-frac = 0.3")
        text = text.replace('"base", "actions", "rationale", "teacher"', '"base", "rationale"')
        text = text.replace("[eval]", "[eval]\nlimit = 3")  # a page is long in the tiny model's
        text = text.replace("max-seq-length = 1024", "max-seq-length = 6144")  # 400 tokens
        toml.write_text(f'[import]\nformat = "miniwob"\nsource = ["{MINIWOB.as_posix()}"]\n'
                        f"[split]{text}")  # fmt: skip
        until = run("run", "--until", "synth", cwd=ws, env=env)
        assert until.returncode == 0, until.stderr[-3000:]
        asked = server.count
        done = run("run", cwd=ws, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| rationale" in done.stdout
    for noise in ("Masking prompt tokens", "Loading weights"):
        assert noise not in done.stderr, noise
    space = ws / "runs" / "records.actions.toml"
    assert space.is_file() and "type" in space.read_text()
    train = jsonl(ws / "runs" / "split" / "train.jsonl")
    assert asked == len(train) and any(r["action"]["type"] == "type" for r in train)
    synth = json.loads((ws / "runs" / "synth" / "train" / "run.json").read_text())
    assert Path(synth["config"]["action_space"]) == space  # distill reads the space from here
    from rationale.workflow import plan

    stages = {s.name: s for s in plan(Workspace.load(toml))}
    for name in ("split", "synth", "eval:base", "eval:rationale"):
        assert Path(stages[name].config.action_space) == space, name
    assert space in stages["import"].outputs  # a missing space is the import's to write again


def test_a_dry_run_of_a_fresh_miniwob_workspace_estimates_its_synth(tmp_path: Path) -> None:
    """The estimate's import and split in a temporary folder read the action space written
    there; before, synth looked for runs/records.actions.toml: "action-space file not found"."""
    with ScriptedServer() as server:
        ws = tmp_path / "ws"
        write_workspace(ws, Path("tiny"), server.url)
        toml = ws / "rationale.toml"
        text = toml.read_text().split("[split]", 1)[1]
        toml.write_text(f'[import]\nformat = "miniwob"\nsource = ["{MINIWOB.as_posix()}"]\n'
                        f"[split]{text}")  # fmt: skip
        dry = run("run", "--dry-run", cwd=ws, env=env_for(tmp_path / "home"))
        assert server.count == 0
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "synth estimate: " in dry.stderr and not (ws / "runs" / "records.jsonl").exists()


def test_model_stages_silence_the_gguf_tensor_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GGUF base prints a de-quantizing bar of its own tqdm, which transformers' switch does
    not reach: `rationale run` turns it off with the other libraries' bars."""
    import io

    from transformers import modeling_gguf_pytorch_utils as gguf_loading

    from rationale.workflow import _quiet_libraries

    monkeypatch.setattr(gguf_loading, "tqdm", gguf_loading.tqdm)  # restored after the test
    _quiet_libraries()
    _quiet_libraries()  # twice: still one wrapper, still silent
    out = io.StringIO()
    for _ in gguf_loading.tqdm(range(3), desc="Converting and de-quantizing", file=out):
        pass
    assert out.getvalue() == ""
