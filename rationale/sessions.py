"""History and outcome: the two things derived from a session's steps, each defined once here.

History is not stored on a record. For step t it is built from the steps of the same session
with a smaller ``step`` number:

- by default, the earlier steps' actions only, so every step can be processed on its own and in
  parallel (its history never depends on another step's *generated* output);
- with ``with_rationales=True``, each earlier step also carries its rationale where the record has
  one (a human-written one from the log, or an accepted synthesized one that a later stage put
  on the record): the paper's setting, f(c_t, a_1..t-1, r_1..t-1).

Earlier steps' contexts are not part of the history (the paper showed them all; with pages of up
to 626k characters we keep only the current context and say so in the README).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from rationale.schema import ActionRecord, ActionSpace, HistoryEntry

Outcome = Literal["purchase", "terminate"]


@dataclass(frozen=True)
class Step:
    """One record with the history derived for it."""

    record: ActionRecord
    history: tuple[HistoryEntry, ...]


def build_history(
    session: Sequence[ActionRecord], step: int, *, with_rationales: bool = False
) -> tuple[HistoryEntry, ...]:
    """The history of ``step``: the session's earlier steps in step order.

    ``session`` holds the steps of one session in any order (and may include ``step`` itself and
    later steps, which are ignored).
    """
    earlier = sorted((r for r in session if r.step < step), key=lambda r: r.step)
    return tuple(_entry(r, with_rationales) for r in earlier)


def iter_steps(session: Sequence[ActionRecord], *, with_rationales: bool = False) -> Iterator[Step]:
    """Each step of one session, in step order, with its history (as `build_history` defines it).

    Entries are built once per session and shared, so a session of n steps costs O(n) entries.
    """
    ordered = sorted(session, key=lambda r: r.step)
    entries = tuple(_entry(r, with_rationales) for r in ordered)
    for i, record in enumerate(ordered):
        yield Step(record, entries[:i])


def _entry(record: ActionRecord, with_rationales: bool) -> HistoryEntry:
    return HistoryEntry(
        step=record.step,
        action=record.action.model_dump(),
        rationale=record.rationale if with_rationales else None,
    )


def session_outcome(
    session: Sequence[ActionRecord], space: ActionSpace | None = None
) -> Outcome | None:
    """``purchase``, ``terminate`` or None, from the last action (see `ActionSpace.outcome`)."""
    if not session:
        return None
    last = max(session, key=lambda r: r.step)
    return (space or ActionSpace.default()).outcome(last.action)


def fill_rationales(step: Step, rationales: Mapping[tuple[str, int], str]) -> Step:
    """``step`` with each history entry that has no rationale given the accepted synthesized one
    from ``rationales`` ((session_id, step) -> rationale), where there is one.

    A human-written rationale on the record wins; this is how ``--history-rationales`` reaches
    logs that have none (Mind2Web): earlier steps carry what the teacher wrote and the filter
    accepted.
    """
    session_id = step.record.session_id
    history = tuple(
        entry
        if entry.rationale or (session_id, entry.step) not in rationales
        else entry.model_copy(update={"rationale": rationales[(session_id, entry.step)]})
        for entry in step.history
    )
    return Step(step.record, history)
