"""`rationale split`, `eval` and `compare` on a tiny student trained in the test: the student is
prompted exactly as it was trained, every case ends in eval.json once, an interrupted eval
resumes, and a prompt-only baseline on the same cases compares side by side."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import record, wait_for_cases, write_lines

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from openai_server import ScriptedServer
from tiny_model import build_tiny_llama

from rationale.eval_cases import eval_cases
from rationale.evaluate import EvalConfig, run_eval
from rationale.prompt_format import PromptFormat
from rationale.records import RecordFile
from rationale.sessions import iter_steps
from rationale.synth import SynthConfig, run_synth

RATIONALE = Path(sys.executable).parent / "rationale"
PAGE = (
    '<div><input name="search.box"/><a name="item.red">Red hat</a>'
    '<a name="item.blue">Blue</a></div>'
)


def lines() -> list[dict[str, Any]]:
    out = []
    for s in range(6):
        sid = f"s{s}"
        out += [
            record(sid, 0, context=PAGE, instruction=f"Buy hat {s}", user_id=f"u{s}",
                   action={"type": "type_and_submit", "name": "search.box", "text": "hat"}),
            record(sid, 1, context=PAGE, instruction=f"Buy hat {s}", user_id=f"u{s}",
                   action={"type": "click", "name": "item.red" if s % 2 else "item.blue"}),
            record(sid, 2, context=PAGE, instruction=f"Buy hat {s}", user_id=f"u{s}",
                   action={"type": "terminate"}),
        ]  # fmt: skip
    return out


def one_thread_env(home: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "RATIONALE_HOME": str(home)}  # fmt: skip


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base, a synth run on the data (scripted teacher), and a student trained on it."""
    import torch

    from distill.config import DistillConfig
    from distill.pipeline import run_distill

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    tiny = build_tiny_llama(root / "tiny")
    data = write_lines(root / "all.jsonl", lines())
    with ScriptedServer() as server:
        run_synth(SynthConfig(input=str(data), output=str(root / "run"),
                              teacher="openai/test-model", api_base=server.url,
                              verifier="none"))  # fmt: skip
    out = root / "student"
    run_distill(DistillConfig(base=str(tiny), data=str(root / "run"), output=str(out), max_steps=2,
                              max_seq_length=1024))  # fmt: skip
    return {"root": root, "tiny": tiny, "data": data, "run": root / "run", "student": out}


def test_the_student_is_prompted_exactly_as_it_was_trained(student: dict[str, Path]) -> None:
    from distill.data import SFTData

    sft = SFTData(student["run"])
    trained = {(ex.session_id, ex.steps[0].record.step): sft.conversation(ex)[0][:-1]
               for ex in sft.examples()}  # fmt: skip
    fmt = PromptFormat.from_student(student["student"])
    with RecordFile(student["data"]) as records:
        cases = list(eval_cases(records, cases="all"))
    assert len(cases) == 18 and set(trained) <= {c.key for c in cases}
    for case in cases:
        if case.key in trained:
            assert fmt.messages(case.step, case.earlier) == trained[case.key]
    assert fmt.template.name == "student" and fmt.with_rationale


def test_a_session_mode_student_sees_earlier_steps_as_turns(student: dict[str, Path],
                                                           tmp_path: Path) -> None:  # fmt: skip
    saved = json.loads((student["student"] / "prompt_format.json").read_text())
    (tmp_path / "config.json").write_text((student["student"] / "config.json").read_text())
    (tmp_path / "prompt_format.json").write_text(json.dumps({**saved, "session_mode": True}))
    fmt = PromptFormat.from_student(tmp_path, max_seq_length=100_000)
    with RecordFile(student["data"]) as records:
        cases = list(eval_cases(records, cases="all"))[:3]  # the first session
    # the training chat of that session; the test records carry the rationales it accepted
    from distill.data import SFTData

    sft = SFTData(student["run"], session_mode=True, max_context_tokens=saved["max_context_tokens"])
    example = next(sft.examples())
    trained = sft.conversation(example)[0]
    replies = [i for i, m in enumerate(trained) if m["role"] == "assistant"]
    assert example.session_id == cases[0].key[0] and len(replies) == 3
    for k, case in enumerate(cases):
        earlier = tuple(r.model_copy(update={"rationale": sft.rationales[(r.session_id, r.step)]})
                        for r in case.earlier)  # fmt: skip
        assert fmt.messages(case.step, earlier) == trained[: replies[k]]
    case = cases[2]
    first = json.loads(trained[replies[0]]["content"])
    assert first["action"] == case.earlier[0].action.model_dump() and first["rationale"]
    # a test file without rationales: earlier turns carry the action alone
    chat = fmt.messages(case.step, case.earlier)
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert json.loads(chat[2]["content"]) == {"action": case.earlier[0].action.model_dump()}
    assert "terminate" not in json.dumps(chat[-1])  # the step's own action is not in it
    short = PromptFormat.from_student(tmp_path, max_seq_length=len(chat[0]["content"]) // 3)
    assert len(short.messages(case.step, case.earlier)) == 2  # oldest turns dropped first


def test_split_eval_compare_end_to_end(student: dict[str, Path], tmp_path: Path) -> None:
    env = one_thread_env(student["root"] / "home")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(RATIONALE), *args], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    run("split", str(student["data"]), "-o", str(tmp_path / "split"), "--test-frac", "0.5")
    test = tmp_path / "split" / "test.jsonl"
    test_steps = [json.loads(line) for line in test.read_text().splitlines()]
    n_test = len(test_steps) - len({r["session_id"] for r in test_steps})  # from-second
    ev = tmp_path / "ev_student"
    first = run("eval", "--model", str(student["student"]), "--data", str(test), "-o", str(ev),
                "--batch-size", "2", "--max-tokens", "12", "--bootstrap", "50")  # fmt: skip
    out = json.loads((ev / "eval.json").read_text())
    assert out["n_cases"] == n_test == len(out["cases"]) and out["pending"] == 0
    assert out["model"]["kind"] == "student" and out["model"]["engine"] == "hf"
    assert out["model"]["prompt"]["template"] == "student"
    assert "no CUDA" in first.stderr and "exact match" in first.stderr
    for case in out["cases"]:
        assert case["status"] in ("ok", "unparsed") and isinstance(case["raw"], str)
        assert case["completion_tokens"] <= 12 and case["stop"] in ("json", "eos", "length")
        assert case["correct"] is False or case["status"] == "ok"
    assert (ev / "per_type.png").read_bytes()[:4] == b"\x89PNG"
    lines_before = (ev / "cases.jsonl").read_text()

    again = run("eval", "--model", str(student["student"]), "--data", str(test), "-o", str(ev),
                "--batch-size", "2", "--max-tokens", "12", "--bootstrap", "50")  # fmt: skip
    assert f"{n_test} done before" in again.stderr
    assert (ev / "cases.jsonl").read_text() == lines_before  # nothing generated twice

    base = tmp_path / "ev_base"  # the tiny base as a prompt-only baseline, the same cases
    run("eval", "--model", str(student["tiny"]), "--data", str(test), "-o", str(base),
        "--max-tokens", "12", "--bootstrap", "50")  # fmt: skip
    table = run("compare", str(base), str(ev), "--reference", str(base), "-o", str(tmp_path / "c"))
    rows = [[c.strip() for c in line.strip("|").split(" | ")]
            for line in table.stdout.splitlines() if line.startswith("| ")]  # fmt: skip
    head, cells = rows[0], rows[1:]
    assert [row[0] for row in cells] == ["tiny", "student"], table.stdout  # in the order given
    col = {name.split(" [")[0]: i for i, name in enumerate(head)}
    session = {}
    for row, folder in zip(cells, (base, ev), strict=True):
        m = json.loads((folder / "eval.json").read_text())["metrics"]
        h = session[folder] = m["session_exact_match"]
        assert row[col["exact match, session avg"]] == (
            f"{100 * h['value']:.1f}% [{100 * h['ci_low']:.1f}, {100 * h['ci_high']:.1f}]"
        )
        assert row[col["step exact match"]] == f"{100 * m['exact_match']['value']:.1f}%"
        assert row[col["unparsed / failed"]] == f"{m['unparsed']} / {m['failed']}"
    assert cells[0][col["Δ vs tiny"]] == cells[0][col["McNemar p"]] == "reference"
    delta = 100 * (session[ev]["value"] - session[base]["value"])
    assert cells[1][col["Δ vs tiny"]].startswith(f"{delta:+.1f} pts"), table.stdout
    assert re.fullmatch(r"<0\.001|[01]\.\d{3}", cells[1][col["McNemar p"]]), table.stdout
    assert (tmp_path / "c" / "compare.md").read_text().strip() == table.stdout.strip()
    assert (tmp_path / "c" / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_an_interrupted_local_eval_resumes_without_repeating(student: dict[str, Path],
                                                            tmp_path: Path) -> None:  # fmt: skip
    from rationale.predictor import Predictor

    predictor = Predictor.load(str(student["student"]), batch_size=4, max_new_tokens=8)
    cfg = EvalConfig(model=str(student["student"]), data=str(student["data"]),
                     output=str(tmp_path / "ev"), batch_size=4, max_new_tokens=8,
                     bootstrap=20, cases="all")  # fmt: skip
    real = predictor.generator.generate
    calls: list[int] = []

    def interrupted(prompts: list[str], **kw: Any) -> Any:
        on_batch = kw.pop("on_batch")

        def once(indices: list[int], outputs: list[Any]) -> None:
            on_batch(indices, outputs)
            calls.append(len(indices))
            if len(calls) == 2:
                raise KeyboardInterrupt

        return real(prompts, on_batch=once, **kw)

    predictor.generator.generate = interrupted
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg, predictor=predictor)
    stopped = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert stopped["pending"] == 18 - 8 and stopped["stopped"].startswith("interrupted")
    predictor.generator.generate = real
    done = run_eval(cfg, predictor=predictor).data
    keys = [(c["session_id"], c["step"]) for c in done["cases"]]
    assert len(keys) == len(set(keys)) == 18 and done["pending"] == 0
    assert len((tmp_path / "ev" / "cases.jsonl").read_text().splitlines()) == 18
    # the same predictions as an uninterrupted eval (greedy, batched the same way)
    whole = run_eval(cfg.model_copy(update={"output": str(tmp_path / "whole")}),
                     predictor=predictor).data  # fmt: skip
    assert [c["raw"] for c in whole["cases"]] == [c["raw"] for c in done["cases"]]


def test_the_predictor_simulates_one_step_from_a_plain_dict(student: dict[str, Path]) -> None:
    from rationale.predictor import Predictor

    predictor = Predictor.load(str(student["student"]), max_new_tokens=8)
    search = {"type": "type_and_submit", "name": "search.box", "text": "hat"}
    step = {"instruction": "Buy a hat", "context": PAGE, "history": [search]}
    one = predictor.predict(step)
    assert one.status in ("ok", "unparsed") and one.completion_tokens <= 8
    batch = predictor.predict_batch([step, step])
    assert [p.raw for p in batch] == [one.raw, one.raw]  # greedy: the same answer
    assert 'type_and_submit(search.box, "hat")' in predictor.messages(step)[-1]["content"]
    with RecordFile(student["data"]) as records:
        session = next(records.sessions())
    step_obj = list(iter_steps(session))[1]
    assert predictor.messages(step_obj) == predictor.prompt.messages(step_obj)


def test_sigterm_during_local_generation_finalises_the_eval(
    student: dict[str, Path], tmp_path: Path
) -> None:
    import signal

    ev = tmp_path / "ev"
    cmd = [str(RATIONALE), "eval", "--model", str(student["student"]), "--data",
           str(student["data"]), "-o", str(ev), "--batch-size", "1", "--max-new-tokens", "200",
           "--bootstrap", "20", "--cases", "all"]  # fmt: skip
    env = one_thread_env(student["root"] / "home")
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    wait_for_cases(ev, 2, timeout=120)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "stopped by SIGTERM" in err and "Traceback" not in err
    stopped = json.loads((ev / "eval.json").read_text())
    assert stopped["stopped"] == "interrupted: SIGTERM" and 0 < stopped["pending"] < 18
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    done = json.loads((ev / "eval.json").read_text())
    keys = [(c["session_id"], c["step"]) for c in done["cases"]]
    assert len(keys) == len(set(keys)) == 18 and done["pending"] == 0
