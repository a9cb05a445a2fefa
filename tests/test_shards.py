"""``--shard K/N`` and `rationale merge`: N shard runs cover the input once, and their merge is
the unsharded run (synth, filter, eval), or a refusal that names what is missing."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from helpers import record, write_lines
from hypothesis import given, settings
from hypothesis import strategies as st
from test_batch import records
from test_filter import FAST, PAGE, records_file, responder

from rationale import RationaleError
from rationale.merge import merge
from rationale.records import RecordFile
from rationale.rundir import read_run_json
from rationale.shards import parse_shard, shard_of
from rationale.synth import SynthConfig, run_synth


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=60, unique=True),
       st.integers(min_value=1, max_value=7))  # fmt: skip
def test_shards_are_disjoint_complete_and_stable(ids: list[str], n: int) -> None:
    shards = {k: {s for s in ids if shard_of(s, n) == k} for k in range(1, n + 1)}
    assert set().union(*shards.values()) == set(ids)  # complete
    assert sum(len(v) for v in shards.values()) == len(ids)  # disjoint
    shuffled = random.Random(0).sample(ids, len(ids))
    assert all(shard_of(s, n) == shard_of(s, n) for s in shuffled)  # by the id alone
    assert shard_of(ids[0], n) == shard_of(str(ids[0]), n) and 1 <= shard_of(ids[0], n) <= n


#: Computed once (sha256 of the id, first 8 bytes, mod N, + 1) and written down: a shard must be
#: the same in every process and on every machine, so a per-process hash (Python's `hash()`,
#: salted by PYTHONHASHSEED) or a changed hash would move some of them.
PINNED = {
    ("s0", 2): 2, ("s0", 3): 3, ("s0", 7): 1, ("s1", 2): 2, ("s1", 3): 1, ("s1", 7): 4,
    ("s2", 2): 1, ("s2", 3): 2, ("s2", 7): 3, ("s3", 2): 1, ("s3", 3): 3, ("s3", 7): 1,
    ("session-042", 2): 2, ("session-042", 3): 1, ("session-042", 7): 1,
    ("user/7", 2): 2, ("user/7", 3): 3, ("user/7", 7): 1,
    ("\u00fcn\u00efcode", 2): 1, ("\u00fcn\u00efcode", 3): 3, ("\u00fcn\u00efcode", 7): 2,
    ("a" * 40, 2): 2, ("a" * 40, 3): 2, ("a" * 40, 7): 3,
}  # fmt: skip


def test_a_session_has_the_same_shard_in_every_process() -> None:
    assert {key: shard_of(*key) for key in PINNED} == PINNED


def test_a_shard_of_a_file_does_not_depend_on_its_line_order(tmp_path: Path) -> None:
    lines = [record(f"s{i}", j) for i in range(20) for j in range(2)]
    a = RecordFile(write_lines(tmp_path / "a.jsonl", lines), shard=(2, 3))
    b = RecordFile(write_lines(tmp_path / "b.jsonl", lines[::-1]), shard=(2, 3))
    assert set(a.step_keys()) == set(b.step_keys()) and list(a.step_keys())
    every = [set(RecordFile(tmp_path / "a.jsonl", shard=(k, 3)).step_keys()) for k in (1, 2, 3)]
    assert set().union(*every) == {(f"s{i}", j) for i in range(20) for j in range(2)}


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "a/b", "1-3", ""])
def test_a_bad_shard_is_a_clear_error(text: str) -> None:
    with pytest.raises(RationaleError, match=r"--shard .*K/N"):
        parse_shard(text)


@pytest.fixture
def server(openai_server, monkeypatch: pytest.MonkeyPatch):
    openai_server.responder = responder
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-shards")
    return openai_server


def synth(tmp_path: Path, server, out: str, input_file: Path | None = None, **kw):
    source = input_file or records_file(tmp_path)
    config = SynthConfig(input=str(source), output=str(tmp_path / out),
                         teacher="openai/test-model", api_base=server.url, concurrency=4,
                         timeout=5.0, max_attempts=2, **kw)  # fmt: skip
    return run_synth(config, retry_policy=FAST)


def test_merged_shard_runs_are_the_unsharded_run(tmp_path: Path, server) -> None:
    synth(tmp_path, server, "whole")
    for k in (1, 2, 3):
        synth(tmp_path, server, f"s{k}", shard=f"{k}/3")
    sizes = [sum(read_run_json(tmp_path / f"s{k}")["counts"].values()) for k in (1, 2, 3)]
    assert sum(sizes) == 11
    import subprocess

    from test_cli_runs import RATIONALE

    shards = [str(tmp_path / f"s{k}") for k in (3, 1, 2)]
    done = subprocess.run([RATIONALE, "merge", *shards, "-o", str(tmp_path / "merged")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and "merge: 3 shards, 11 records" in done.stderr, done.stderr
    assert records(tmp_path / "merged") == records(tmp_path / "whole")
    merged = read_run_json(tmp_path / "merged")
    assert merged["report"]["counts"] == read_run_json(tmp_path / "whole")["report"]["counts"]
    assert merged["identity"]["shard"] is None and len(merged["merged_from"]) == 3
    shard_cost = sum(read_run_json(tmp_path / f"s{k}")["cost_usd"]["total"] for k in (1, 2, 3))
    assert merged["cost_usd"]["total"] == pytest.approx(shard_cost)
    from click.testing import CliRunner

    from rationale.cli import main

    shown = CliRunner().invoke(main, ["report", str(tmp_path / "merged"), "--json"])
    assert json.loads(shown.output)["counts"] == merged["counts"]


def test_merge_refuses_a_missing_a_twice_given_or_a_foreign_shard(tmp_path: Path, server) -> None:
    for k in (1, 2, 3):
        synth(tmp_path, server, f"s{k}", shard=f"{k}/3")
    with pytest.raises(RationaleError, match=r"shard 2/3 is missing: run the synth with --shard"):
        merge([tmp_path / "s1", tmp_path / "s3"], tmp_path / "m1")
    with pytest.raises(RationaleError, match="shard 1/3 is given twice"):
        merge([tmp_path / "s1", tmp_path / "s1", tmp_path / "s2"], tmp_path / "m2")
    synth(tmp_path, server, "other", shard="2/3", seed=5)
    with pytest.raises(RationaleError, match=r"another synth .*seed 0 vs 5"):
        merge([tmp_path / "s1", tmp_path / "other", tmp_path / "s3"], tmp_path / "m3")
    with pytest.raises(RationaleError, match="not a shard"):
        synth(tmp_path, server, "whole")
        merge([tmp_path / "whole", tmp_path / "s1"], tmp_path / "m4")
    assert not any((tmp_path / m).exists() for m in ("m1", "m2", "m3", "m4"))


def test_merge_refuses_a_shard_with_records_pending(tmp_path: Path, server) -> None:
    for k in (1, 2):
        synth(tmp_path, server, f"s{k}", shard=f"{k}/2")
    run = read_run_json(tmp_path / "s2")
    run["pending"] = 2
    (tmp_path / "s2" / "run.json").write_text(json.dumps(run))
    with pytest.raises(RationaleError, match=r"shard 2/2.* has 2 pending; finish it first"):
        merge([tmp_path / "s1", tmp_path / "s2"], tmp_path / "m")


def sixteen_steps(tmp_path: Path) -> Path:
    """4 sessions of 4 steps: shard 1/2 holds s2 and s3, shard 2/2 s0 and s1 (see PINNED)."""
    lines = [record(f"s{i}", j, context=PAGE, action={"type": "click", "name": f"item.good_{j}"})
             for i in range(4) for j in range(4)]  # fmt: skip
    return write_lines(tmp_path / "sixteen.jsonl", lines)


def test_merge_refuses_shards_run_with_other_settings(tmp_path: Path, server) -> None:
    data = sixteen_steps(tmp_path)
    synth(tmp_path, server, "s1", data, shard="1/2", limit=1)  # the reproduction of issue 21
    synth(tmp_path, server, "s2", data, shard="2/2")
    with pytest.raises(RationaleError, match=r"another synth .*\(limit 1 vs None\)"):
        merge([tmp_path / "s1", tmp_path / "s2"], tmp_path / "m1")
    synth(tmp_path, server, "f1", data, shard="1/2", max_tokens=100)
    with pytest.raises(RationaleError, match=r"another synth .*\(max_tokens 100 vs 200\)"):
        merge([tmp_path / "f1", tmp_path / "s2"], tmp_path / "m2")
    synth(tmp_path, server, "o1", data, shard="1/2", on_error="skip", request_attempts=3, rpm=6000)
    with pytest.raises(RationaleError, match=r"\(on_error 'skip' vs 'fail'\)"):  # not the rpm
        merge([tmp_path / "o1", tmp_path / "s2"], tmp_path / "m3")
    assert not any((tmp_path / m).exists() for m in ("m1", "m2", "m3"))


def test_merge_of_limited_shards_names_the_steps_they_left_out(tmp_path: Path, server) -> None:
    data = sixteen_steps(tmp_path)
    for k in (1, 2):
        synth(tmp_path, server, f"s{k}", data, shard=f"{k}/2", limit=1)
    with pytest.raises(RationaleError) as refused:
        merge([tmp_path / "s1", tmp_path / "s2"], tmp_path / "m")
    message = str(refused.value)
    assert "cover 2 of the 16 steps of" in message and str(data.resolve()) in message, message
    assert "session 's0' step 1, session 's0' step 2, session 's0' step 3" in message, message
    assert "and 11 more" in message and not (tmp_path / "m").exists()
    for k in (1, 2):  # a limit each shard stays within: the shards are the whole input
        synth(tmp_path, server, f"w{k}", data, shard=f"{k}/2", limit=8)
    result = merge([tmp_path / "w1", tmp_path / "w2"], tmp_path / "whole")
    assert result.records == 16 and read_run_json(tmp_path / "whole")["config"]["limit"] is None


def test_merge_refuses_shards_of_an_input_that_changed_since(tmp_path: Path, server) -> None:
    data = sixteen_steps(tmp_path)
    for k in (1, 2):
        synth(tmp_path, server, f"s{k}", data, shard=f"{k}/2")
    lines = data.read_text().splitlines()
    lines[5] = lines[5].replace("item.good_1", "item.good_9")  # the same steps, other content
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(RationaleError, match=r"sixteen.jsonl changed since .*s1 ran"):
        merge([tmp_path / "s1", tmp_path / "s2"], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_merged_eval_shards_score_as_the_unsharded_eval(tmp_path: Path, openai_server) -> None:
    from test_eval_api import first_element, make_test_file

    from rationale.compare import compare
    from rationale.evaluate import EvalConfig, run_eval

    openai_server.responder = first_element
    data = make_test_file(tmp_path, sessions=6)

    def ev(out: str, **kw):
        config = EvalConfig(model="openai/gpt-4o-mini", data=str(data), bootstrap=200,
                            output=str(tmp_path / out), api_base=openai_server.url,
                            **kw)  # fmt: skip
        return run_eval(config)

    whole = ev("whole").data
    for k in (1, 2):
        ev(f"e{k}", shard=f"{k}/2")
    result = merge([tmp_path / "e1", tmp_path / "e2"], tmp_path / "merged")
    merged = json.loads((tmp_path / "merged" / "eval.json").read_text())
    assert result.records == whole["n_cases"] == merged["n_cases"]
    assert merged["case_set"] == whole["case_set"] and merged["metrics"] == whole["metrics"]
    table = compare([tmp_path / "whole", tmp_path / "merged"])
    assert table.n_cases == whole["n_cases"]
    for k in (1, 2):  # --limit is per shard: 1 case each, of the 12 the test file has
        ev(f"l{k}", shard=f"{k}/2", limit=1)
    with pytest.raises(RationaleError, match=r"cover 2 of the 12 cases .*and 7 more"):
        merge([tmp_path / "l1", tmp_path / "l2"], tmp_path / "m1")
    ev("t2", shard="2/2", on_error="skip", concurrency=2)  # on_error decides which cases exist
    with pytest.raises(RationaleError, match=r"another eval .*\(on_error 'fail' vs 'skip'\)"):
        merge([tmp_path / "e1", tmp_path / "t2"], tmp_path / "m2")
    data.write_text(data.read_text().replace('"Task 0"', '"Task zero"'))
    with pytest.raises(RationaleError, match=r"test.jsonl changed since .*e1 ran"):
        merge([tmp_path / "e1", tmp_path / "e2"], tmp_path / "m3")
    assert not any((tmp_path / m).exists() for m in ("m1", "m2", "m3"))


def test_merged_filter_shards_are_the_unsharded_filter(tmp_path: Path, server) -> None:
    from rationale.filter import run_filter

    synth(tmp_path, server, "source", verifier="none")

    def filter_(out: str, **kw):
        config = SynthConfig(input=str(tmp_path / "source"), output=str(tmp_path / out),
                             verifier="openai/test-model", api_base=server.url, **kw)  # fmt: skip
        return run_filter(config, retry_policy=FAST)

    filter_("whole")
    for k in (1, 2):
        filter_(f"f{k}", shard=f"{k}/2")
    merge([tmp_path / "f1", tmp_path / "f2"], tmp_path / "merged")
    assert records(tmp_path / "merged") == records(tmp_path / "whole")
