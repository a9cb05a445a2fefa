"""`rationale split`: whole sessions (or users) on one side, lines unchanged, the same split for a
seed whatever the line order, exactly round(frac * groups) groups on the test side."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import EXAMPLES, record, write_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rationale import RecordError
from rationale.split import split_records

RATIONALE = shutil.which("rationale", path=str(Path(sys.executable).parent)) or "rationale"
SAMPLE = EXAMPLES / "mind2web" / "shopping_sample.jsonl"
ACTIONS = [
    {"type": "click", "name": "search"},
    {"type": "type_and_submit", "name": "q", "text": "hat"},
    {"type": "terminate"},
]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RATIONALE, *args], capture_output=True, text=True, timeout=120)


def read_bytes_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def session_of(line: bytes) -> str:
    return str(json.loads(line)["session_id"])


@st.composite
def record_lines(draw: st.DrawFn) -> list[bytes]:
    """Lines of a valid record file: sessions of a few steps, some with a user, interleaved,
    written with varied key order and spacing so that byte-for-byte copying is visible."""
    n_sessions = draw(st.integers(1, 12))
    lines = []
    for s in range(n_sessions):
        user = draw(st.none() | st.sampled_from(["u1", "u2", "u3", "u4"]))
        for step in range(draw(st.integers(1, 4))):
            data = record(f"s{s}", step, action=draw(st.sampled_from(ACTIONS)), user_id=user)
            items = list(data.items())
            if draw(st.booleans()):
                items.reverse()
            sep = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
            lines.append(json.dumps(dict(items), separators=sep).encode() + b"\n")
    return draw(st.permutations(lines))


def split_lines(lines: list[bytes], **kwargs: object) -> tuple[list[bytes], list[bytes], object]:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        src.write_bytes(b"".join(lines))
        result = split_records(src, Path(tmp) / "out", **kwargs)  # type: ignore[arg-type]
        train = read_bytes_lines(Path(tmp) / "out" / "train.jsonl")
        test = read_bytes_lines(Path(tmp) / "out" / "test.jsonl")
    return train, test, result


FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(
    lines=record_lines(),
    frac=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**32),
    by=st.sampled_from(["session", "user"]),
)
def test_split_properties(lines: list[bytes], frac: float, seed: int, by: str) -> None:
    train, test, result = split_lines(lines, test_frac=frac, seed=seed, by=by)
    # complete and unchanged: every input line in exactly one output, in input order
    assert sorted(train + test) == sorted(lines)
    assert train == [line for line in lines if line in set(train)]
    assert test == [line for line in lines if line in set(test)]
    # disjoint groups
    assert not {session_of(x) for x in train} & {session_of(x) for x in test}
    if by == "user":
        users = [{json.loads(x)["user_id"] for x in side} - {None} for side in (train, test)]
        assert not users[0] & users[1]
    # exactly round(frac * groups) groups on the test side
    groups = result.train.groups + result.test.groups  # type: ignore[attr-defined]
    sessions = {session_of(x) for x in lines}
    if by == "session":
        assert groups == len(sessions)
    else:
        keyed = {(json.loads(x)["user_id"] or "session:" + session_of(x)) for x in lines}
        assert groups == len(keyed)
    assert result.test.groups == round(frac * groups)  # type: ignore[attr-defined]
    assert result.test.steps == len(test) and result.train.steps == len(train)  # type: ignore[attr-defined]
    # deterministic for a seed, independent of line order
    shuffled = lines[:]
    random.Random(seed).shuffle(shuffled)
    train2, test2, _ = split_lines(shuffled, test_frac=frac, seed=seed, by=by)
    assert sorted(train2) == sorted(train) and sorted(test2) == sorted(test)


def test_seed_changes_the_split_and_sessions_stay_whole(tmp_path: Path) -> None:
    tests = set()
    for seed in range(5):
        split_records(SAMPLE, tmp_path / str(seed), seed=seed)
        test = read_bytes_lines(tmp_path / str(seed) / "test.jsonl")
        train = read_bytes_lines(tmp_path / str(seed) / "train.jsonl")
        assert not {session_of(x) for x in train} & {session_of(x) for x in test}
        tests.add(frozenset(session_of(x) for x in test))
    assert len(tests) > 1


def test_by_user_keeps_a_user_on_one_side(tmp_path: Path) -> None:
    lines = [record(f"s{i}", 0, user_id=f"u{i % 3}") for i in range(12)]
    lines += [record("lonely", 0), record("lonely", 1)]  # no user_id: its own group
    src = write_lines(tmp_path / "in.jsonl", lines)
    result = split_records(src, tmp_path / "out", by="user", test_frac=0.5, seed=3)
    assert result.train.groups + result.test.groups == 4
    assert result.test.groups == 2
    sides = [
        {json.loads(x).get("user_id") for x in read_bytes_lines(tmp_path / "out" / f"{n}.jsonl")}
        for n in ("train", "test")
    ]
    assert not (sides[0] & sides[1]) - {None}
    assert result.train.sessions + result.test.sessions == 13


def test_a_session_of_two_users_cannot_be_split_by_user(tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "in.jsonl", [record("s", 0, user_id="a"), record("s", 1, user_id="b")]
    )
    with pytest.raises(Exception, match="session 's' has records of users 'a' and 'b'"):
        split_records(src, tmp_path / "out", by="user")
    split_records(src, tmp_path / "out")  # by session it is fine


def test_bad_line_fail_and_skip(tmp_path: Path) -> None:
    lines = [record(f"s{i}", 0) for i in range(6)]
    lines.insert(3, record("s1", 1, action={"type": "clik"}))
    src = write_lines(tmp_path / "in.jsonl", lines)
    with pytest.raises(RecordError, match="line 4"):
        split_records(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    result = split_records(src, tmp_path / "out", on_error="skip", test_frac=0.4)
    kept = read_bytes_lines(tmp_path / "out" / "train.jsonl")
    kept += read_bytes_lines(tmp_path / "out" / "test.jsonl")
    assert sorted(session_of(x) for x in kept) == ["s0", "s2", "s3", "s4", "s5"]
    assert result.skipped_sessions == {"s1": [2, 4]} and len(result.errors) == 1
    assert result.test.groups == 2  # round(0.4 * 5)

    proc = run("split", str(src), "-o", str(tmp_path / "cli"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "line 4" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run("split", str(src), "-o", str(tmp_path / "cli"), "--on-error", "skip")
    assert proc.returncode == 0, proc.stderr
    assert "skipped session 's1': lines 2, 4" in proc.stderr


def test_cli_splits_the_shipped_example(tmp_path: Path) -> None:
    out = tmp_path / "split"
    proc = run("split", str(SAMPLE), "-o", str(out), "--test-frac", "0.25", "--seed", "7")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    train, test = read_bytes_lines(out / "train.jsonl"), read_bytes_lines(out / "test.jsonl")
    source = read_bytes_lines(SAMPLE)
    assert sorted(train + test) == sorted(source)
    assert not {session_of(x) for x in train} & {session_of(x) for x in test}
    assert len({session_of(x) for x in test}) == 4  # round(0.25 * 16)
    assert f"wrote 12 sessions, {len(train)} steps (" in proc.stderr
    assert f"wrote 4 sessions, {len(test)} steps (" in proc.stderr
    assert "test: 4 of 16 sessions (0.250; asked 0.25), seed 7" in proc.stderr
    assert "click" in proc.stderr
    again = run(
        "split", str(SAMPLE), "-o", str(tmp_path / "again"), "--test-frac", "0.25", "--seed", "7"
    )
    assert (tmp_path / "again" / "test.jsonl").read_bytes() == (out / "test.jsonl").read_bytes()
    assert again.returncode == 0
    for bad in ("0", "1", "1.5"):
        assert run("split", str(SAMPLE), "-o", str(out), "--test-frac", bad).returncode == 2
