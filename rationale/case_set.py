"""Which test cases an eval scored: their identity, their digest, their mode in words, and how two
case sets differ.

`case_set_digest` names the set of (session, step, true action) triples, so `rationale.compare`
can refuse evals made on different cases; `case_mode` reads the ``--cases`` mode an eval.json
was made with (``all`` or ``from-second``, the paper's) and `describe_mode` says it in words for
eval's summary and compare's table; `difference` says how two case sets differ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The ``--cases`` modes in words (`rationale.eval_cases.CASE_MODES`).
MODE_WORDS = {
    "all": "every action",
    "from-second": "second and later actions",
}


def case_key(record: dict[str, Any]) -> tuple[str, int]:
    """A case record's identity: (session_id, step)."""
    return str(record["session_id"]), int(record["step"])


def case_set_digest(records: Sequence[dict[str, Any]]) -> str:
    """sha256 of the canonical JSON of the sorted (session_id, step, truth) triples.

    Two evals were run on the same test cases iff their digests match, whatever the order of
    their records and whatever the models answered.
    """
    items = sorted(
        [*case_key(r), json.dumps(r["truth"], sort_keys=True, ensure_ascii=False)] for r in records
    )
    blob = json.dumps(items, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def case_mode(eval_data: dict[str, Any]) -> str | None:
    """The ``--cases`` mode of an eval (eval.json's ``data.cases``); None if not recorded."""
    mode = (eval_data.get("data") or {}).get("cases")
    return str(mode) if mode else None


def describe_mode(mode: str | None) -> str:
    """A mode in words, e.g. ``second and later actions``; ``mode not recorded`` for None."""
    if mode is None:
        return "mode not recorded"
    return MODE_WORDS.get(mode, mode)


def difference(a: Path, data_a: dict[str, Any], b: Path, data_b: dict[str, Any]) -> str:
    """How the case sets of two evals (their eval.json data) differ, for a refusal message."""
    truths_a = {case_key(r): r["truth"] for r in data_a["cases"]}
    truths_b = {case_key(r): r["truth"] for r in data_b["cases"]}
    sessions_a = len({k[0] for k in truths_a})
    sessions_b = len({k[0] for k in truths_b})
    text = (
        f"{a} and {b} were run on different test cases ({len(truths_a)} cases in {sessions_a} "
        f"sessions vs {len(truths_b)} in {sessions_b})"
    )
    mode_a, mode_b = case_mode(data_a), case_mode(data_b)
    if mode_a != mode_b:
        text += (
            f", with different --cases: {a} {mode_a or '(not recorded)'} "
            f"({describe_mode(mode_a)}), {b} {mode_b or '(not recorded)'} "
            f"({describe_mode(mode_b)})"
        )
    only_a, only_b = truths_a.keys() - truths_b.keys(), truths_b.keys() - truths_a.keys()
    if only_a or only_b:
        first = min(only_a | only_b)
        text += (
            f": {len(only_a)} cases only in {a}, {len(only_b)} only in {b}, the first session "
            f"{first[0]!r} step {first[1]} only in {a if first in only_a else b}"
        )
    else:
        changed = sorted(k for k in truths_a if truths_a[k] != truths_b[k])
        text += (
            f": same keys but different true actions (first at session {changed[0][0]!r} step "
            f"{changed[0][1]}): different test files"
            if changed
            else ": a (session_id, step) appears twice in one of them"
        )
    return text + "; compare evals of the same --data file with the same --cases and --limit"


__all__ = [
    "MODE_WORDS",
    "case_key",
    "case_mode",
    "case_set_digest",
    "describe_mode",
    "difference",
]
