"""The eval folder (``-o EVAL_DIR``) of `rationale eval`: its files, its lock, the case records.

``cases.jsonl`` gets one line per finished case as it finishes (the resume log: a torn last line
is cut off by the next writer, a later line for the same case wins, failed cases are asked
again); ``ledger.jsonl`` one line per API request; ``eval.json`` the whole result, replaced
atomically. One process writes a folder at a time (``.lock``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rationale.errors import RationaleError
from rationale.rundir import read_lines, take_lock, write_json

__all__ = ["EvalDir", "case_record"]


class EvalDir:
    """The files of one eval folder, its lock, and the ledger the engine charges."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise RationaleError(f"{self.path}: -o must be a folder (the eval folder)")
        self.cases = self.path / "cases.jsonl"
        self.ledger = self.path / "ledger.jsonl"
        self.eval_json = self.path / "eval.json"
        self._lock: Any = None
        self._handles: dict[Path, Any] = {}

    def open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = take_lock(self.path, "eval")

    def previous(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.eval_json.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None
        except ValueError:
            raise RationaleError(f"{self.eval_json} is not JSON; use a new -o") from None

    def has_cases(self) -> bool:
        """Whether any case has finished in this folder."""
        return any(True for _ in read_lines(self.cases))

    def done(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The finished case records (a torn last line repaired; a later line for the same case
        wins; failed cases are left out, to be asked again)."""
        for _ in read_lines(self.ledger, repair=True):
            pass
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for n, line in read_lines(self.cases, repair=True):
            try:
                rec = json.loads(line)
                key = (str(rec["session_id"]), int(rec["step"]))
            except (ValueError, KeyError, TypeError):
                raise RationaleError(f"{self.cases} line {n}: not a case record; remove the "
                                     "line or use a new -o") from None  # fmt: skip
            out[key] = rec
        return {k: r for k, r in out.items() if r.get("status") != "failed"}

    def _write(self, file: Path, text: str) -> None:
        handle = self._handles.get(file)
        if handle is None:
            handle = self._handles[file] = open(file, "a", encoding="utf-8")  # noqa: SIM115
        handle.write(text)
        handle.flush()

    def append(self, records: list[dict[str, Any]]) -> None:
        """Case lines, written at once (whole lines: a kill tears at most the last)."""
        if records:
            self._write(self.cases, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                            for r in records))  # fmt: skip

    def charge(self, entry: dict[str, Any]) -> None:
        self._write(self.ledger, json.dumps(entry) + "\n")

    def flush(self) -> None:
        return None  # every line is written when it is added

    def write_json(self, data: dict[str, Any]) -> None:
        write_json(self.eval_json, data, ensure_ascii=False)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def case_record(case: Any, pred: Any, space: Any) -> dict[str, Any]:
    """The stored form of one predicted case (see the eval.json contract in the README)."""
    from rationale.scoring import judge

    truth = case.truth
    correct, type_correct = judge(truth, pred.action if pred.status == "ok" else None, space)
    return {
        "session_id": case.key[0], "step": case.key[1], "last": case.last, "truth": truth,
        "status": pred.status, "prediction": pred.action, "rationale": pred.rationale,
        "raw": pred.raw, "problem": pred.problem, "correct": correct,
        "type_correct": type_correct, "prompt_tokens": pred.prompt_tokens,
        "completion_tokens": pred.completion_tokens, "cost_usd": pred.cost_usd,
        "cached": pred.cached, "stop": pred.stop,
    }  # fmt: skip
