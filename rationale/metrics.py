"""Next-action metrics over evaluated cases, as in the paper's evaluation (shared/PAPER.md).

A `Case` is one predicted step of one session: the true action, the model's parsed action (or
None) and whether parsing worked. Everything here is a plain function over a list of cases, with
no model code and no heavy imports:

- exact match: `exact_match`, `accuracy` (mean over cases), `session_accuracy` (mean over
  sessions of each session's accuracy, the paper's headline number);
- action types: `type_accuracy`, `macro_f1`, `weighted_f1`, `per_type`; an unparsed prediction
  counts as its own wrong class, ``"unparsed"``; F1 is scikit-learn's (see `macro_f1`);
- session outcomes: `outcome_metrics`, over the sessions that end in a purchase or a terminate;
- uncertainty and comparison: `bootstrap_ci` (resamples sessions, not cases), `mcnemar_exact`;
- failures: `unparsed_rate`, `error_breakdown`.

Action equality is `ActionSpace.equal`, the one definition the filter uses too.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from rationale.action_space import normalize_name
from rationale.schema import ActionSpace

#: The class label of a prediction that could not be parsed into an action.
UNPARSED = "unparsed"
#: The session outcomes that are scored: the two classes of outcome accuracy and F1.
OUTCOME_LABELS: tuple[str, ...] = ("purchase", "terminate")
#: The label of a predicted last action with no outcome (another click, a type, unparsed,
#: failed): never right, and not a class of the outcome F1's average.
NO_OUTCOME = "none"


@dataclass(frozen=True)
class Case:
    """One evaluated step: the true action and the prediction (None or ``parsed=False`` if none)."""

    session_id: str
    step: int
    truth: dict[str, Any]
    prediction: dict[str, Any] | None
    parsed: bool = True

    @property
    def is_parsed(self) -> bool:
        """True when the model produced an action that was parsed."""
        return self.parsed and self.prediction is not None


@dataclass(frozen=True)
class TypeStats:
    """Metrics for the cases whose true action has one type."""

    support: int
    exact_match: float
    type_accuracy: float
    precision: float
    recall: float
    f1: float


class McNemar(NamedTuple):
    """An exact McNemar test: the two-sided p-value and the discordant counts."""

    p_value: float
    b01: int  # a wrong, b right
    b10: int  # a right, b wrong


# -- helpers ----------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no cases to score: the metric of an empty set is undefined")
    return sum(values) / len(values)


def _type_of(action: dict[str, Any]) -> str:
    return normalize_name(str(action.get("type", "")))


def true_type(case: Case) -> str:
    """The class label of a case's true action: its normalised type."""
    return _type_of(case.truth)


def predicted_type(case: Case) -> str:
    """The class label of a case's prediction: its normalised type, or ``"unparsed"``."""
    if not case.is_parsed:
        return UNPARSED
    return _type_of(case.prediction)  # type: ignore[arg-type]


def _by_session(cases: Sequence[Case]) -> dict[str, list[Case]]:
    """Cases grouped by session, sessions in order of first appearance."""
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.session_id, []).append(case)
    return groups


# -- exact match ------------------------------------------------------------------------------


def exact_match(cases: Sequence[Case], space: ActionSpace | None = None) -> list[bool]:
    """Per case: did the parsed prediction equal the true action under ``space.equal``?"""
    space = space or ActionSpace.default()
    return [c.is_parsed and space.equal(c.prediction, c.truth) for c in cases]


def accuracy(cases: Sequence[Case], space: ActionSpace | None = None) -> float:
    """Exact-match accuracy, the mean over cases (long sessions weigh more)."""
    return _mean([float(x) for x in exact_match(cases, space)])


def session_accuracy(cases: Sequence[Case], space: ActionSpace | None = None) -> float:
    """The paper's headline: the mean over sessions of each session's exact-match accuracy."""
    groups = _by_session(cases)
    return _mean([accuracy(group, space) for group in groups.values()])


# -- action types -----------------------------------------------------------------------------


def type_accuracy(cases: Sequence[Case], space: ActionSpace | None = None) -> float:
    """Share of cases whose predicted type equals the true type (unparsed is always wrong)."""
    return _mean([float(true_type(c) == predicted_type(c)) for c in cases])


def f1_scores(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> dict[Any, float]:
    """Per-label F1, ``2TP / (2TP + FP + FN)``, over every label seen in either sequence.

    Matches scikit-learn's `f1_score(average=None)` over the union of labels: a label that is
    predicted but never true scores 0 and counts in the macro mean.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true labels but {len(predicted)} predicted labels")
    tp: Counter[Hashable] = Counter()
    n_true: Counter[Hashable] = Counter(truth)
    n_pred: Counter[Hashable] = Counter(predicted)
    for t, p in zip(truth, predicted, strict=True):
        if t == p:
            tp[t] += 1
    labels = list(dict.fromkeys([*truth, *predicted]))
    return {lab: 2 * tp[lab] / (n_true[lab] + n_pred[lab]) for lab in labels}


def macro_f1_labels(
    truth: Sequence[Hashable],
    predicted: Sequence[Hashable],
    *,
    labels: Sequence[Hashable] | None = None,
) -> float:
    """Unweighted mean of the per-label F1 over ``labels`` (scikit-learn's ``average="macro"``
    with ``labels=``); every label seen in either sequence when None, as scikit-learn's default.
    """
    scores = f1_scores(truth, predicted)
    return _mean([scores.get(lab, 0.0) for lab in labels] if labels is not None else
                 list(scores.values()))  # fmt: skip


def weighted_f1_labels(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> float:
    """Per-label F1 weighted by true support (scikit-learn's ``average="weighted"``)."""
    scores = f1_scores(truth, predicted)
    support = Counter(truth)
    return sum(scores[lab] * n for lab, n in support.items()) / len(truth)


def _type_labels(cases: Sequence[Case]) -> tuple[list[str], list[str]]:
    return [true_type(c) for c in cases], [predicted_type(c) for c in cases]


def macro_f1(cases: Sequence[Case], space: ActionSpace | None = None) -> float:
    """Macro F1 over action types, as scikit-learn computes it: ``f1_score(true_types,
    predicted_types, average="macro", zero_division=0)``, the unweighted mean over the UNION of
    true and predicted labels. So ``"unparsed"`` and a type that is predicted but never true are
    classes too, each with F1 0: one unreadable answer lowers the true type's recall and adds a
    zero class to the mean, as in the papers' reported numbers."""
    return macro_f1_labels(*_type_labels(cases))


def weighted_f1(cases: Sequence[Case], space: ActionSpace | None = None) -> float:
    """Support-weighted F1 over action types, scikit-learn's ``f1_score(average="weighted",
    zero_division=0)``: labels never true (``"unparsed"`` among them) weigh 0."""
    return weighted_f1_labels(*_type_labels(cases))


def per_type(cases: Sequence[Case], space: ActionSpace | None = None) -> dict[str, TypeStats]:
    """Metrics per true action type: support, exact match, type accuracy, precision, recall, F1.

    Type accuracy within a true type is that type's recall; both are given for readability.
    Precision counts every case predicted as the type, whatever its true type.
    """
    truth, predicted = _type_labels(cases)
    matches = exact_match(cases, space)
    scores = f1_scores(truth, predicted)
    n_pred = Counter(predicted)
    out: dict[str, TypeStats] = {}
    for label in dict.fromkeys(truth):
        rows = [i for i, t in enumerate(truth) if t == label]
        hits = sum(predicted[i] == label for i in rows)
        recall = hits / len(rows)
        out[label] = TypeStats(
            support=len(rows),
            exact_match=sum(matches[i] for i in rows) / len(rows),
            type_accuracy=recall,
            precision=hits / n_pred[label] if n_pred[label] else 0.0,
            recall=recall,
            f1=scores[label],
        )
    return out


# -- session outcomes -------------------------------------------------------------------------


def outcome_metrics(
    sessions_outcomes: Sequence[tuple[str | None, str | None]],
) -> dict[str, Any]:
    """Accuracy and macro F1 of session outcomes over the sessions that END in an outcome.

    Each pair is (true outcome, predicted outcome) of one session's last step. As in the paper
    (does the session end in a purchase or a terminate?), only pairs whose true outcome is one of
    `OUTCOME_LABELS` are scored; a true None is left out. A predicted label outside them (None
    for another click or a type, ``UNPARSED`` for an unreadable or failed answer) becomes
    ``"none"``: always wrong, it lowers the true class's recall without being a class of the
    average. The numbers are scikit-learn's on the scored pairs: ``accuracy_score(truth, pred)``
    and ``f1_score(truth, pred, labels=L, average="macro")`` with ``L`` the outcome classes
    that occur, true or predicted (scikit-learn's own default less ``"none"``): a test set in
    which nobody buys and nobody is predicted to buy is not marked down for an empty class.
    Returns ``n`` (sessions scored), ``accuracy``, ``macro_f1`` and ``support`` (true sessions
    per class).
    """
    scored = [(t, p) for t, p in sessions_outcomes if t in OUTCOME_LABELS]
    if not scored:
        raise ValueError("no session ends in a purchase or a terminate: no outcome to score")
    truth = [t for t, _ in scored]
    predicted = [p if p in OUTCOME_LABELS else NO_OUTCOME for _, p in scored]
    return {
        "n": len(truth),
        "accuracy": _mean([float(t == p) for t, p in zip(truth, predicted, strict=True)]),
        "macro_f1": macro_f1_labels(
            truth, predicted, labels=[c for c in OUTCOME_LABELS if c in {*truth, *predicted}]
        ),
        "support": {lab: truth.count(lab) for lab in OUTCOME_LABELS},
    }


# -- uncertainty and comparison ---------------------------------------------------------------


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_ci(
    cases: Sequence[Case],
    metric_fn: Callable[[list[Case]], float],
    *,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric_fn``, resampling whole sessions with replacement.

    Steps of one session are correlated, so sessions are the unit of resampling. A session drawn
    twice gets two distinct ids (``id#k``) so session-level metrics count it twice. The same seed
    gives the same interval.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    sessions = list(_by_session(cases).values())
    if not sessions:
        raise ValueError("no cases to bootstrap")
    rng = random.Random(seed)
    stats = []
    for _ in range(n):
        sample: list[Case] = []
        for k, group in enumerate(rng.choices(sessions, k=len(sessions))):
            sample.extend(dataclasses.replace(c, session_id=f"{c.session_id}#{k}") for c in group)
        stats.append(metric_fn(sample))
    stats.sort()
    alpha = (1 - level) / 2
    return quantile(stats, alpha), quantile(stats, 1 - alpha)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """Exact two-sided McNemar test of two systems' per-case correctness on the same cases.

    Under the null the discordant pairs split 50/50, so the p-value is
    ``min(1, 2 * P(X <= min(b01, b10)))`` with ``X ~ Binomial(b01 + b10, 1/2)``.
    """
    if len(a) != len(b):
        raise ValueError(f"cases do not align: {len(a)} results for a but {len(b)} for b")
    b01 = sum(1 for x, y in zip(a, b, strict=True) if not x and y)
    b10 = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    total = b01 + b10
    if total == 0:
        return McNemar(1.0, b01, b10)
    tail = sum(math.comb(total, k) for k in range(min(b01, b10) + 1))
    return McNemar(min(1.0, 2 * tail / 2**total), b01, b10)


# -- failures ---------------------------------------------------------------------------------


def unparsed_rate(cases: Sequence[Case]) -> float:
    """Share of cases whose prediction could not be parsed into an action."""
    return _mean([float(not c.is_parsed) for c in cases])


ERROR_KINDS: tuple[str, ...] = (
    "correct",
    "wrong_type",
    "right_type_wrong_target",
    "right_target_wrong_text",
    "unparsed",
)


def error_kind(case: Case, space: ActionSpace | None = None) -> str:
    """Which of `ERROR_KINDS` a case falls in; target is the ``name`` field, text is ``text``.

    Any other mismatch of a right-typed action (e.g. a malformed one) counts as wrong text.
    """
    space = space or ActionSpace.default()
    if not case.is_parsed:
        return "unparsed"
    pred: dict[str, Any] = case.prediction  # type: ignore[assignment]
    if space.equal(pred, case.truth):
        return "correct"
    if _type_of(pred) != _type_of(case.truth):
        return "wrong_type"
    if _norm(pred, "name", normalize_name) != _norm(case.truth, "name", normalize_name):
        return "right_type_wrong_target"
    return "right_target_wrong_text"


def _norm(action: dict[str, Any], key: str, fn: Callable[[str], str]) -> str | None:
    value = action.get(key)
    return fn(value) if isinstance(value, str) else None


def error_breakdown(cases: Sequence[Case], space: ActionSpace | None = None) -> dict[str, int]:
    """Counts of each error kind, as in the paper's error analysis (every kind present)."""
    space = space or ActionSpace.default()
    counts = dict.fromkeys(ERROR_KINDS, 0)
    for case in cases:
        counts[error_kind(case, space)] += 1
    return counts


__all__ = [
    "ERROR_KINDS",
    "NO_OUTCOME",
    "OUTCOME_LABELS",
    "UNPARSED",
    "Case",
    "McNemar",
    "TypeStats",
    "accuracy",
    "bootstrap_ci",
    "error_breakdown",
    "error_kind",
    "exact_match",
    "f1_scores",
    "macro_f1",
    "macro_f1_labels",
    "mcnemar_exact",
    "outcome_metrics",
    "per_type",
    "predicted_type",
    "quantile",
    "session_accuracy",
    "true_type",
    "type_accuracy",
    "unparsed_rate",
    "weighted_f1",
    "weighted_f1_labels",
]
