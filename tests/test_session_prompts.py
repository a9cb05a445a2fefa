"""A session-mode student is prompted exactly as it was trained: for every step of a session the
eval prompt (its `prompt_format.json` read back, the chat template applied as the local engines
apply it) is, token for token, the training sequence up to that step's answer. And a student
that saw rationales in its history, evaluated on a file without any, says so once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import record, write_lines

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_model import build_tiny_llama

from distill.data import SFTData, prompt_format
from rationale.eval_cases import eval_cases
from rationale.local_engine import ChatRenderer
from rationale.prompt_format import PromptFormat
from rationale.records import RecordFile

PAGE = '<page><input name="search.box"/><a name="item.red">red hat</a></page>'
MAX_SEQ = 4096


def session_lines(with_rationales: bool = True) -> list[dict]:
    """Two sessions (4 and 3 steps); step s1/2 has no rationale, so it is history, untrained."""
    steps = {
        "s1": [{"type": "type_and_submit", "name": "search.box", "text": "hat"},
               {"type": "click", "name": "item.red"}, {"type": "click", "name": "item.blue"},
               {"type": "terminate"}],
        "s2": [{"type": "click", "name": "item.red"}, {"type": "click", "name": "item.blue"},
               {"type": "terminate"}],
    }  # fmt: skip
    out = []
    for sid, actions in steps.items():
        for i, action in enumerate(actions):
            why = f"I chose step {i} of {sid} because the page showed it."
            if not with_rationales or (sid, i) == ("s1", 2):
                why = None
            out.append(record(sid, i, context=PAGE, instruction="Buy a red hat", action=action,
                              **({"rationale": why} if why else {})))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny"))
    return AutoTokenizer.from_pretrained(str(folder))


def saved_student(folder: Path, data: SFTData, tokenizer) -> PromptFormat:
    """The prompt format as distill saves it, read back as eval reads it."""
    folder.mkdir()
    (folder / "prompt_format.json").write_text(json.dumps(prompt_format(data, tokenizer)))
    return PromptFormat.from_student(folder, max_seq_length=MAX_SEQ)


@pytest.mark.parametrize("history_rationales", [False, True], ids=["plain", "history-r"])
@pytest.mark.parametrize("no_rationale", [False, True], ids=["rationale", "action-only"])
def test_every_eval_prompt_is_the_training_sequence_up_to_its_answer(
    tmp_path: Path, tokenizer, no_rationale: bool, history_rationales: bool
) -> None:
    source = write_lines(tmp_path / "sessions.jsonl", session_lines())
    data = SFTData(source, session_mode=True, no_rationale=no_rationale,
                   history_rationales=history_rationales)  # fmt: skip
    rows, stats = data.tokenize(tokenizer, MAX_SEQ)
    assert stats.examples == 2 and stats.history_entries_dropped == 0
    fmt = saved_student(tmp_path / "student", data, tokenizer)
    assert fmt.session_mode and fmt.with_rationale is not no_rationale
    # the test file is the training file: its records carry the rationales training accepted
    with RecordFile(source) as records:
        cases = list(eval_cases(records, cases="all", history_rationales=fmt.history_rationales))
    assert len(cases) == 7
    gen = ChatRenderer(tokenizer)  # what rationale.hf_batch renders and encodes with
    gen.tokenizer.chat_template = fmt.chat_template
    for example, row in zip(data.examples(), rows, strict=True):
        chat, _ = data.conversation(example)
        answers = [m["content"] for m in chat if m["role"] == "assistant"]
        mine = [c for c in cases if c.key[0] == example.session_id]
        assert len(mine) == len(answers) >= 3
        for case, answer in zip(mine, answers, strict=True):
            prompt = gen.encode([gen.render(fmt.messages(case.step, case.earlier))])[0]
            where = f"{case.key}, no_rationale={no_rationale}"
            assert row["input_ids"][: len(prompt)] == prompt, f"{where}: not the training prefix"
            rest = tokenizer.decode(row["input_ids"][len(prompt) :])
            assert rest.startswith(answer + "<|im_end|>"), f"{where}: {rest[:80]!r}"
        trained = sum('"rationale"' in a for a in answers)
        assert trained == (0 if no_rationale else len(answers) - (example.session_id == "s1"))


def test_a_student_that_saw_rationales_notes_a_file_without_them(tmp_path: Path, tokenizer) -> None:
    source = write_lines(tmp_path / "train.jsonl", session_lines())
    bare = write_lines(tmp_path / "test.jsonl", session_lines(with_rationales=False))
    session = saved_student(tmp_path / "session", SFTData(source, session_mode=True), tokenizer)
    history = saved_student(tmp_path / "history", SFTData(source, history_rationales=True),
                            tokenizer)  # fmt: skip
    plain = saved_student(tmp_path / "plain", SFTData(source), tokenizer)
    no_rationale = SFTData(source, session_mode=True, no_rationale=True)
    action_only = saved_student(tmp_path / "action", no_rationale, tokenizer)

    def cases(path: Path, chained: bool) -> list:
        with RecordFile(path) as records:
            return list(eval_cases(records, cases="all", history_rationales=chained))

    note = session.history_note(cases(bare, False))
    assert note and note.startswith("note: the student was trained with rationales in its "
                                    "history") and "actions only" in note  # fmt: skip
    assert history.history_note(cases(bare, True))
    assert session.history_note(cases(source, False)) is None  # the file has them
    assert history.history_note(cases(source, True)) is None
    assert plain.history_note(cases(bare, False)) is None  # never saw any
    assert action_only.history_note(cases(bare, False)) is None
    baseline = PromptFormat.baseline(history_rationales=True)
    assert baseline.history_note(cases(bare, True)) is None  # not a student
    assert session.history_note(cases(bare, False)[:1]) is None  # a first step: no history


def test_eval_prints_the_note_once(tmp_path: Path, tokenizer, capsys) -> None:
    from rationale.evaluate import EvalConfig, run_eval
    from rationale.predictor import Predictor

    source = write_lines(tmp_path / "train.jsonl", session_lines())
    bare = write_lines(tmp_path / "test.jsonl", session_lines(with_rationales=False))
    folder = tmp_path / "student"
    saved_student(folder, SFTData(source, session_mode=True), tokenizer)
    build_tiny_llama(folder / "model")  # a "fully fine-tuned" student: the tiny base itself
    config = {"base": {"source": str(folder / "model")}, "config": {"max_seq_length": MAX_SEQ}}
    (folder / "config.json").write_text(json.dumps(config))
    predictor = Predictor.load(str(folder), max_new_tokens=2, engine="hf")
    ev = EvalConfig(model=str(folder), data=str(bare), output=str(tmp_path / "ev"),
                    max_tokens=2, bootstrap=5)  # fmt: skip
    run_eval(ev, predictor=predictor)
    err = capsys.readouterr().err
    assert err.count("note: the student was trained with rationales in its history") == 1, err
    run_eval(ev.model_copy(update={"data": str(source), "output": str(tmp_path / "ev2")}),
             predictor=predictor)  # fmt: skip
    assert "note:" not in capsys.readouterr().err


def test_a_tight_budget_drops_whole_leading_steps_as_training_does(
    tmp_path: Path, tokenizer
) -> None:
    from dataclasses import replace

    from rationale.prompts import count_tokens

    source = write_lines(tmp_path / "sessions.jsonl", session_lines())
    data = SFTData(source, session_mode=True)
    fmt = saved_student(tmp_path / "student", data, tokenizer)
    with RecordFile(source) as records:
        case = next(c for c in eval_cases(records, cases="all") if c.key == ("s1", 3))
    example = next(data.examples())
    assert example.session_id == "s1" and len(example.steps) == 4

    def training_prefix(drop: int) -> list[dict[str, str]]:
        """The training chat with ``drop`` leading steps left out, up to step 3's answer."""
        chat, _ = data.conversation(replace(example, drop=drop))
        return chat[: [i for i, m in enumerate(chat) if m["role"] == "assistant"][3 - drop]]

    for drop in range(4):
        expected = training_prefix(drop)
        budget = sum(count_tokens(m["content"]) + 4 for m in expected)  # just fits
        chat = replace(fmt, max_prompt_tokens=budget).messages(case.step, case.earlier)
        assert chat == expected, f"a budget of {budget} should drop {drop} whole steps"
    tiny = replace(fmt, max_prompt_tokens=1).messages(case.step, case.earlier)
    assert tiny == training_prefix(3)  # the step itself always stays, with the system text
