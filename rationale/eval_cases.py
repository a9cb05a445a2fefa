"""The test cases of an evaluation: which steps of a test file are predicted, with what history.

As in the paper, every case is one step of a test session with the session's *true* history
(teacher forcing): the earlier steps' recorded actions, never the model's own earlier
predictions, so one wrong step does not derail the rest of its session. ``cases="from-second"``
(the default, the paper's case set) skips each session's first step, whose only evidence is the
page; ``"all"`` predicts every step. ``limit`` keeps the first N cases in session order.

A case also carries the session's earlier records (a student trained in session mode is
prompted with them as earlier turns) and whether it is the session's last step (its prediction
is the predicted session outcome). `score_test_file` scores a list of predictions made
elsewhere on the same cases.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rationale.schema import ActionRecord, ActionSpace
from rationale.sessions import Step, iter_steps

__all__ = ["CASE_MODES", "EvalCase", "as_step", "eval_cases", "score_test_file"]

CaseMode = Literal["all", "from-second"]
CASE_MODES: tuple[str, ...] = ("all", "from-second")


@dataclass(frozen=True)
class EvalCase:
    """One step to predict: the step (record and true history), the session's earlier records,
    and whether it is the session's last step."""

    step: Step
    earlier: tuple[ActionRecord, ...]
    last: bool

    @property
    def key(self) -> tuple[str, int]:
        return self.step.record.session_id, self.step.record.step

    @property
    def truth(self) -> dict[str, Any]:
        return self.step.record.action.model_dump()


def eval_cases(
    records: Any,
    *,
    cases: CaseMode = "from-second",
    limit: int | None = None,
    history_rationales: bool = False,
) -> Iterator[EvalCase]:
    """The cases of ``records`` (a `rationale.records.RecordFile`), in session and step order.

    ``history_rationales``: each history entry carries the rationale the log holds for that
    step (a human-written one), where it has one.
    """
    if cases not in CASE_MODES:
        raise ValueError(f"cases must be one of {', '.join(CASE_MODES)}, got {cases!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return itertools.islice(_cases(records, cases, history_rationales), limit)


def _cases(records: Any, mode: str, history_rationales: bool) -> Iterator[EvalCase]:
    for session in records.sessions():
        ordered = tuple(sorted(session, key=lambda r: r.step))
        steps = iter_steps(ordered, with_rationales=history_rationales)
        for i, step in enumerate(steps):
            if mode == "from-second" and i == 0:
                continue
            yield EvalCase(step, ordered[:i], last=i == len(ordered) - 1)


def as_step(step: Any, space: ActionSpace | None = None) -> Step:
    """A `Step` from a plain dict: ``instruction``, ``persona``, ``context``, ``history`` (earlier
    actions, each an action dict or ``{"action": ..., "rationale": ...}``), ``step``,
    ``session_id``. The step's own action is unknown (it is what is predicted): a placeholder
    stands in, which a blind prompt never shows."""
    from pydantic import TypeAdapter, ValidationError

    from rationale.errors import RationaleError
    from rationale.schema import HistoryEntry

    if isinstance(step, Step):
        return step
    if not isinstance(step, dict):
        raise TypeError(f"a step is a Step, an EvalCase or a dict, not {type(step).__name__}")
    space = space or ActionSpace.default()
    kind = next(iter(space.types.values()))
    placeholder = {"type": kind.name, **{f: "placeholder" for f in kind.fields}}
    check = TypeAdapter(space.action_type)
    history = []
    for i, entry in enumerate(step.get("history") or []):
        action = entry.get("action", entry) if isinstance(entry, dict) else entry
        rationale = entry.get("rationale") if isinstance(entry, dict) else None
        try:
            action = check.validate_python(action).model_dump()
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]
            where = ".".join(map(str, problem["loc"])) or "action"
            raise RationaleError(f"history entry {i}: {problem['msg']} (at {where})") from None
        history.append(HistoryEntry(step=i, action=action, rationale=rationale))
    fields = {k: step[k] for k in ("instruction", "persona", "context") if step.get(k) is not None}
    record = space.record_model.model_validate({
        "session_id": str(step.get("session_id", "session")),
        "step": int(step.get("step", len(history))),
        "action": placeholder, **fields,
    })  # fmt: skip
    return Step(record, tuple(history))


def score_test_file(
    data: str | Path,
    predictions: Sequence[Any],
    *,
    cases: CaseMode = "from-second",
    limit: int | None = None,
    action_space: str | Path | None = None,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Score another project's predictions on a test file with the metrics of ``rationale eval``.

    ``predictions`` follow the order of `eval_cases` (session order, then step; by default,
    ``cases="from-second"``, each session's first step left out): each an action dict, a
    ``{"rationale", "action"}`` dict, a model's raw text, or None. Returns the metrics dict
    of eval.json (`rationale.scoring.score`).
    """
    from rationale.records import RecordFile
    from rationale.scoring import score_predictions

    space = ActionSpace.from_file(action_space) if action_space else ActionSpace.default()
    with RecordFile(data, space=space) as records:
        found = list(eval_cases(records, cases=cases, limit=limit))
    if len(found) != len(predictions):
        raise ValueError(
            f"{data}: {len(found)} test cases (with cases={cases!r}) but {len(predictions)} "
            "predictions; give one per case, in eval_cases order"
        )
    return score_predictions(
        [c.truth for c in found], list(predictions),
        session_ids=[c.key[0] for c in found], steps=[c.key[1] for c in found],
        space=space, last=[c.last for c in found], seed=seed, n_boot=n_boot,
    )  # fmt: skip
