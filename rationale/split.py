"""Splitting a record file into train and test files with no session (or user) on both sides.

`split_records` assigns whole groups -- sessions, or users with ``by="user"`` -- to one side. Each
group's place comes from a hash of (seed, group key): the groups are sorted by that hash and the
first ``round(test_frac * groups)`` go to test. So the test side holds exactly that many groups
(the fraction of *steps* follows the groups' sizes), the same seed always gives the same split,
and the split does not depend on the order of the lines (no shuffling, no random state).

The output lines are the input lines byte for byte (key order, spacing, line ending), each kept
line in exactly one of ``train.jsonl`` and ``test.jsonl``, in input order. Blank lines are not
records and are left out; so are bad lines and, with ``on_error="skip"``, their whole sessions
(`rationale.records.RecordFile`). Both files are written atomically.

With ``by="user"`` a session belongs to the user named by its records' ``user_id``; a session
without one is a group of its own. A session whose records name two different users is an error,
since it could not be kept on one side without splitting one of the users.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rationale.errors import RationaleError, RecordError
from rationale.record_line import parse_record
from rationale.records import OnError, RecordFile
from rationale.schema import ActionSpace

SplitBy = Literal["session", "user"]
SPLIT_BY_CHOICES: tuple[str, ...] = ("session", "user")
SIDES: tuple[str, ...] = ("train", "test")


class SplitConfig(BaseModel):
    """The split job (a workspace's ``[split]`` table, the flags of ``rationale split``)."""

    model_config = ConfigDict(extra="forbid")

    input: str
    output: str
    test_frac: float = Field(0.2, gt=0, lt=1)
    by: SplitBy = "session"
    seed: int = 0
    on_error: OnError = "fail"
    action_space: str | None = None


@dataclass
class SideCounts:
    """What one side of a split holds."""

    path: Path
    groups: int = 0  # sessions, or users with by="user"
    sessions: int = 0
    steps: int = 0
    action_types: dict[str, int] = field(default_factory=dict)


@dataclass
class SplitResult:
    """The outcome of `split_records`: per-side counts and what was left out."""

    train: SideCounts
    test: SideCounts
    by: str
    seed: int
    test_frac: float
    errors: list[RecordError] = field(default_factory=list)
    skipped_sessions: dict[str, list[int]] = field(default_factory=dict)

    @property
    def achieved_frac(self) -> float:
        """The fraction of groups on the test side (0.0 for an empty input)."""
        total = self.train.groups + self.test.groups
        return self.test.groups / total if total else 0.0


def group_rank(seed: int, kind: str, key: str) -> bytes:
    """The sort key that places a group: sha256 of (seed, kind, key), stable across runs."""
    return hashlib.sha256(f"{seed}\0{kind}\0{key}".encode()).digest()


def assign_groups(groups: list[tuple[str, str]], *, test_frac: float, seed: int) -> set[int]:
    """Indexes of the (kind, key) groups that go to test: the ``round(test_frac * n)`` first by
    `group_rank` (ties, which need a sha256 collision, broken by the key)."""
    order = sorted(range(len(groups)), key=lambda i: (group_rank(seed, *groups[i]), groups[i]))
    return set(order[: round(test_frac * len(groups))])


def split_records(
    input: str | os.PathLike[str] | RecordFile,
    output_dir: str | os.PathLike[str],
    *,
    test_frac: float = 0.2,
    by: SplitBy = "session",
    seed: int = 0,
    on_error: OnError = "fail",
    action_space: ActionSpace | None = None,
) -> SplitResult:
    """Write ``output_dir/train.jsonl`` and ``output_dir/test.jsonl`` from a record file.

    ``input`` is a path (opened with ``on_error`` and ``action_space``) or an open `RecordFile`
    (used as it was opened). A bad line raises `RecordError` with ``on_error="fail"``.
    """
    if not 0.0 < test_frac < 1.0:
        raise RationaleError(f"test fraction must be between 0 and 1 (exclusive), got {test_frac}")
    if by not in SPLIT_BY_CHOICES:
        raise ValueError(f"by must be one of {SPLIT_BY_CHOICES}, got {by!r}")
    if isinstance(input, RecordFile):
        return _split(input, Path(output_dir), test_frac=test_frac, by=by, seed=seed)
    with RecordFile(input, space=action_space, on_error=on_error) as records:
        return _split(records, Path(output_dir), test_frac=test_frac, by=by, seed=seed)


def _split(
    records: RecordFile, output_dir: Path, *, test_frac: float, by: str, seed: int
) -> SplitResult:
    errors = records.errors
    skipped = records.skipped_sessions
    left_out = {e.line for e in errors} | {n for lines in skipped.values() for n in lines}

    # Pass 1: which session each kept line belongs to (-1: left out), and each session's user,
    # steps and action types. Only the session index per line is kept in memory.
    session_of_line = array("q")
    session_index: dict[str, int] = {}
    users: list[str | None] = []
    types: list[Counter[str]] = []
    with open(records.path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            stripped = raw.strip()
            if not stripped or number in left_out:
                session_of_line.append(-1)
                continue
            record = parse_record(stripped, path=records.name, line=number, space=records.space)
            i = session_index.setdefault(record.session_id, len(session_index))
            if i == len(users):
                users.append(record.user_id)
                types.append(Counter())
            elif record.user_id is not None and users[i] not in (None, record.user_id):
                if by == "user":
                    raise RationaleError(
                        f"{records.name} line {number}: session {record.session_id!r} has "
                        f"records of users {users[i]!r} and {record.user_id!r}; split it --by "
                        "session, or give each session one user_id"
                    )
            elif users[i] is None:
                users[i] = record.user_id
            types[i][record.action.type] += 1
            session_of_line.append(i)

    # Each session's group, then each group's side.
    session_ids = list(session_index)
    group_of_session: list[int] = []
    group_index: dict[tuple[str, str], int] = {}
    for i, session_id in enumerate(session_ids):
        user = users[i]
        key = ("user", user) if by == "user" and user is not None else ("session", session_id)
        group_of_session.append(group_index.setdefault(key, len(group_index)))
    test_groups = assign_groups(list(group_index), test_frac=test_frac, seed=seed)
    in_test = [group_of_session[i] in test_groups for i in range(len(session_ids))]

    sides = {name: SideCounts(output_dir / f"{name}.jsonl") for name in SIDES}
    totals: dict[str, Counter[str]] = {name: Counter() for name in SIDES}
    groups_on: dict[str, set[int]] = {name: set() for name in SIDES}
    for i in range(len(session_ids)):
        name = "test" if in_test[i] else "train"
        sides[name].sessions += 1
        totals[name].update(types[i])
        groups_on[name].add(group_of_session[i])
    for name in SIDES:
        sides[name].groups = len(groups_on[name])
        sides[name].steps = sum(totals[name].values())
        sides[name].action_types = dict(
            sorted(totals[name].items(), key=lambda kv: (-kv[1], kv[0]))
        )

    # Pass 2: copy each kept line, unchanged, to its side.
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = {
        name: side.path.with_name(f".{side.path.name}.{os.getpid()}.tmp")
        for name, side in sides.items()
    }
    try:
        with (
            open(records.path, "rb") as f,
            open(tmp["train"], "wb") as train,
            open(tmp["test"], "wb") as test,
        ):
            for raw, i in zip(f, session_of_line, strict=False):
                if i >= 0:
                    (test if in_test[i] else train).write(raw)
            for out in (train, test):
                out.flush()
                os.fsync(out.fileno())
        for name, side in sides.items():
            os.replace(tmp[name], side.path)
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    return SplitResult(
        train=sides["train"],
        test=sides["test"],
        by=by,
        seed=seed,
        test_frac=test_frac,
        errors=errors,
        skipped_sessions=skipped,
    )
