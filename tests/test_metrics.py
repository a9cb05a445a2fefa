"""Tests for rationale.metrics: each metric against hand-computed cases, F1 against scikit-learn."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rationale.metrics import (
    Case,
    accuracy,
    bootstrap_ci,
    error_breakdown,
    exact_match,
    f1_scores,
    macro_f1,
    macro_f1_labels,
    mcnemar_exact,
    outcome_metrics,
    per_type,
    predicted_type,
    session_accuracy,
    true_type,
    type_accuracy,
    unparsed_rate,
    weighted_f1,
    weighted_f1_labels,
)
from rationale.schema import ActionSpace

SPACE = ActionSpace.default()


def click(name: str) -> dict:
    return {"type": "click", "name": name}


def typed(name: str, text: str) -> dict:
    return {"type": "type_and_submit", "name": name, "text": text}


TERM = {"type": "terminate"}


def case(sid: str, step: int, truth: dict, pred: dict | None, parsed: bool = True) -> Case:
    return Case(session_id=sid, step=step, truth=truth, prediction=pred, parsed=parsed)


# Session s1 has three steps (all right), s2 one step (wrong): cases 3/4, sessions (1 + 0) / 2.
UNBALANCED = [
    case("s1", 0, click("Add to cart"), click("  add TO   cart ")),
    case("s1", 1, typed("search", "red shoes"), typed("Search", "red shoes")),
    case("s1", 2, TERM, TERM),
    case("s2", 0, click("Buy now"), click("Add to cart")),
]

# One case of each error kind, plus an unparsed one flagged by parsed=False.
MIXED = [
    case("a", 0, click("Buy"), click("buy")),  # correct
    case("a", 1, click("Buy"), TERM),  # wrong_type
    case("a", 2, typed("search", "shoes"), typed("filter", "shoes")),  # wrong target
    case("b", 0, typed("search", "shoes"), typed("search", "Shoes")),  # wrong text
    case("b", 1, TERM, None),  # unparsed
    case("b", 2, click("Buy"), click("Buy"), parsed=False),  # unparsed, despite an action
]


def test_exact_match_uses_action_space_equality() -> None:
    assert exact_match(UNBALANCED, SPACE) == [True, True, True, False]
    assert exact_match(MIXED, SPACE) == [True, False, False, False, False, False]


def test_session_and_case_accuracy_differ_when_unbalanced() -> None:
    assert accuracy(UNBALANCED, SPACE) == pytest.approx(0.75)
    assert session_accuracy(UNBALANCED, SPACE) == pytest.approx(0.5)


def test_empty_cases_raise() -> None:
    with pytest.raises(ValueError, match="empty"):
        accuracy([], SPACE)


def test_type_accuracy_counts_unparsed_as_wrong() -> None:
    # Types right: cases 0, 2, 3 (case 5 is right in content but unparsed).
    assert type_accuracy(MIXED, SPACE) == pytest.approx(3 / 6)


def test_f1_by_hand() -> None:
    # truth: click, click, type, type, terminate, click; predicted: click, terminate, type,
    # type, unparsed, unparsed.
    # click: TP 1, true 3, pred 1 -> 2/4; type_and_submit: TP 2, 2, 2 -> 1;
    # terminate: TP 0, true 1, pred 1 -> 0; unparsed: TP 0, true 0, pred 2 -> 0, and it is a
    # class of the macro mean (scikit-learn's union of true and predicted labels).
    assert macro_f1(MIXED, SPACE) == pytest.approx((0.5 + 1 + 0 + 0) / 4)
    assert weighted_f1(MIXED, SPACE) == pytest.approx((0.5 * 3 + 1 * 2 + 0 * 1) / 6)


def test_per_type_breakdown() -> None:
    stats = per_type(MIXED, SPACE)
    assert set(stats) == {"click", "type_and_submit", "terminate"}
    c = stats["click"]
    assert c.support == 3
    assert c.exact_match == pytest.approx(1 / 3)
    assert c.type_accuracy == c.recall == pytest.approx(1 / 3)
    assert c.precision == pytest.approx(1.0)
    assert c.f1 == pytest.approx(0.5)
    t = stats["type_and_submit"]
    assert (t.support, t.exact_match, t.type_accuracy, t.precision, t.f1) == (2, 0.0, 1.0, 1.0, 1.0)
    term = stats["terminate"]
    assert (term.support, term.precision, term.recall, term.f1) == (1, 0.0, 0.0, 0.0)


labels = st.lists(
    st.tuples(st.sampled_from("abcd"), st.sampled_from("abcde")), min_size=1, max_size=40
)


@settings(max_examples=60, deadline=None)
@given(labels)
def test_f1_matches_sklearn(pairs: list[tuple[str, str]]) -> None:
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a dev dependency")
    truth = [t for t, _ in pairs]
    pred = [p for _, p in pairs]
    kw = {"zero_division": 0}
    assert macro_f1_labels(truth, pred) == pytest.approx(
        metrics.f1_score(truth, pred, average="macro", **kw)
    )
    assert weighted_f1_labels(truth, pred) == pytest.approx(
        metrics.f1_score(truth, pred, average="weighted", **kw)
    )
    true_labels = sorted(set(truth))
    assert macro_f1_labels(truth, pred, labels=true_labels) == pytest.approx(
        metrics.f1_score(truth, pred, labels=true_labels, average="macro", **kw)
    )
    ours = f1_scores(truth, pred)
    union = sorted(ours)
    theirs = metrics.f1_score(truth, pred, labels=union, average=None, **kw)
    assert [ours[lab] for lab in union] == pytest.approx(list(theirs))


def test_outcome_metrics_score_only_sessions_that_end_in_an_outcome() -> None:
    pairs = [
        ("purchase", "purchase"),
        ("terminate", "purchase"),
        ("terminate", None),  # the last answer was another click: no outcome, wrong
        ("purchase", "unparsed"),  # unreadable: wrong
        (None, None),  # ends in a click: not scored, although "nothing" was predicted
        (None, "terminate"),  # not scored either
    ]
    out = outcome_metrics(pairs)
    assert out["n"] == 4 and out["support"] == {"purchase": 2, "terminate": 2}
    assert out["accuracy"] == pytest.approx(1 / 4)
    # purchase: TP 1, true 2, predicted 2 -> 2/4; terminate: TP 0 -> 0; "none" (predicted
    # twice) is not a class of the mean.
    assert out["macro_f1"] == pytest.approx((1 / 2 + 0) / 2)
    with pytest.raises(ValueError, match="purchase or a terminate"):
        outcome_metrics([(None, "purchase"), (None, None)])


OUTCOME_PREDICTIONS = ["purchase", "terminate", None, "unparsed"]


@pytest.mark.parametrize("seed", range(12))
def test_outcome_metrics_match_sklearn(seed: int) -> None:
    """How scikit-learn is called, pinned: on the sessions whose true outcome is purchase or
    terminate, a prediction without an outcome class replaced by "none" (any third label gives
    the same numbers), ``accuracy_score(truth, pred)`` and ``f1_score(truth, pred, labels=L,
    average="macro")``, L the outcome classes that occur (true or predicted)."""
    skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a dev dependency")
    rng = random.Random(seed)
    pairs = [(rng.choice(["purchase", "terminate", None]), rng.choice(OUTCOME_PREDICTIONS))
             for _ in range(rng.randint(2, 30))]  # fmt: skip
    pairs += [("terminate", None), ("terminate", "unparsed")]  # both kinds of "no outcome"
    if seed % 2:  # half the draws have purchases; the others none at all, true or predicted
        pairs += [("purchase", None)]
    else:
        pairs = [(t, p) for t, p in pairs if "purchase" not in (t, p)]
    scored = [(t, p) for t, p in pairs if t is not None]
    truth = [t for t, _ in scored]
    pred = [p if p in ("purchase", "terminate") else "none" for _, p in scored]
    out = outcome_metrics(pairs)
    assert out["n"] == len(scored)
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(truth, pred))
    labels = [c for c in ("purchase", "terminate") if c in truth or c in pred]
    expected = skm.f1_score(truth, pred, labels=labels, average="macro", zero_division=0)
    assert out["macro_f1"] == pytest.approx(expected)


def test_an_unparsed_type_is_a_class_of_the_macro_mean() -> None:
    truth = ["click"] * 99 + ["terminate"]
    cases = [case("s", i, click("x") if t == "click" else TERM, click("x") if t == "click" else
                  TERM) for i, t in enumerate(truth)]  # fmt: skip
    assert macro_f1(cases, SPACE) == 1.0
    cases[0] = case("s", 0, click("x"), None)
    # click 2*98/(99+98), terminate 1, unparsed 0 (predicted once, never true)
    assert macro_f1(cases, SPACE) == pytest.approx((2 * 98 / (99 + 98) + 1 + 0) / 3)


TYPE_ACTIONS = {"click": click("x"), "type_and_submit": typed("q", "t"), "terminate": TERM}


@pytest.mark.parametrize("seed", range(10))
def test_type_f1_matches_sklearn_on_cases(seed: int) -> None:
    """macro_f1 and weighted_f1 of Cases are scikit-learn's ``f1_score(true_types,
    predicted_types, average=..., zero_division=0)``, with no ``labels=`` (the union of labels),
    on label sets with "unparsed" and with a type that is predicted but never true."""
    skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a dev dependency")
    rng = random.Random(seed)
    true_types = ["click", "type_and_submit"]  # terminate is never true...
    cases = []
    for i in range(rng.randint(3, 40)):
        t = rng.choice(true_types)
        p = rng.choice([*TYPE_ACTIONS, "unparsed"])
        pred = None if p == "unparsed" else TYPE_ACTIONS[p]
        cases.append(case("s", i, TYPE_ACTIONS[t], pred))
    cases.append(case("s", 98, click("x"), TERM))  # ...but predicted
    cases.append(case("s", 99, typed("q", "t"), None))  # and one unparsed
    truth = [true_type(c) for c in cases]
    pred = [predicted_type(c) for c in cases]
    assert {"terminate", "unparsed"} <= set(pred) and "terminate" not in truth
    for ours, average in ((macro_f1, "macro"), (weighted_f1, "weighted")):
        expected = skm.f1_score(truth, pred, average=average, zero_division=0)
        assert ours(cases, SPACE) == pytest.approx(expected), average


def _sessions(n_sessions: int, steps: int = 3) -> list[Case]:
    """Sessions whose accuracy alternates between 0, 1/3, 2/3 and 1."""
    out = []
    for s in range(n_sessions):
        right = s % (steps + 1)
        for i in range(steps):
            pred = click("x") if i < right else click("y")
            out.append(case(f"s{s}", i, click("x"), pred))
    return out


def _session_acc(cs: list[Case]) -> float:
    return session_accuracy(cs, SPACE)


def test_bootstrap_reproducible_and_narrower_with_more_sessions() -> None:
    few, many = _sessions(8), _sessions(80)
    a = bootstrap_ci(few, _session_acc, n=200, seed=7)
    assert a == bootstrap_ci(few, _session_acc, n=200, seed=7)
    low, high = a
    assert low <= session_accuracy(few, SPACE) <= high
    m_low, m_high = bootstrap_ci(many, _session_acc, n=200, seed=7)
    assert high - low > m_high - m_low > 0


def test_bootstrap_resamples_sessions_not_cases() -> None:
    # One session: every resample is that session, so the interval is a point.
    one = _sessions(3)[3:6]
    assert bootstrap_ci(one, lambda cs: accuracy(cs, SPACE), n=50) == (
        pytest.approx(1 / 3),
        pytest.approx(1 / 3),
    )


def _percentile_interval(stats: list[float], level: float) -> tuple[float, float]:
    """numpy's default (linear) percentile interval, written out independently."""
    stats = sorted(stats)

    def q(x: float) -> float:
        pos = x * (len(stats) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(stats) - 1)
        return stats[lo] + (stats[hi] - stats[lo]) * (pos - lo)

    return q((1 - level) / 2), q(1 - (1 - level) / 2)


def test_bootstrap_weights_sessions_as_drawn() -> None:
    """bootstrap_ci against a computation from per-session counts: each resample draws
    ``len(sessions)`` sessions with replacement (``random.Random(seed).choices``, sessions in order
    of first appearance); a session drawn k times counts k times, in the session-weighted mean
    (each drawn session's accuracy) and in the case-weighted one (hits over steps)."""
    # a: 1 step, right; b: 4 steps, wrong; c: 2 steps, 1 right. Session means and case
    # means of one resample differ, so the two intervals differ.
    spec = {"a": (1, 1), "b": (0, 4), "c": (1, 2)}  # hits, steps
    cases = [case(sid, i, click("x"), click("x") if i < hits else click("y"))
             for sid, (hits, steps) in spec.items() for i in range(steps)]  # fmt: skip
    n, seed, level = 400, 5, 0.8
    rng = random.Random(seed)
    by_session, by_case = [], []
    for _ in range(n):
        drawn = rng.choices(list(spec), k=len(spec))
        by_session.append(sum(spec[s][0] / spec[s][1] for s in drawn) / len(drawn))
        by_case.append(sum(spec[s][0] for s in drawn) / sum(spec[s][1] for s in drawn))
    session_ci = bootstrap_ci(cases, _session_acc, n=n, seed=seed, level=level)
    case_ci = bootstrap_ci(cases, lambda cs: accuracy(cs, SPACE), n=n, seed=seed, level=level)
    assert session_ci == pytest.approx(_percentile_interval(by_session, level))
    assert case_ci == pytest.approx(_percentile_interval(by_case, level))
    assert session_ci != pytest.approx(case_ci)


def test_bootstrap_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        bootstrap_ci([], _session_acc)
    with pytest.raises(ValueError):
        bootstrap_ci(_sessions(2), _session_acc, level=1.0)


def test_mcnemar_exact_by_hand() -> None:
    # b01 = 1 (a wrong, b right), b10 = 9, plus 5 concordant pairs.
    a = [False] + [True] * 9 + [True] * 3 + [False] * 2
    b = [True] + [False] * 9 + [True] * 3 + [False] * 2
    result = mcnemar_exact(a, b)
    assert (result.b01, result.b10) == (1, 9)
    assert result.p_value == pytest.approx(2 * (1 + 10) / 2**10)
    assert result.p_value == pytest.approx(0.021484375)
    assert mcnemar_exact(b, a).p_value == result.p_value
    assert mcnemar_exact([True, False], [True, False]) == (1.0, 0, 0)
    assert mcnemar_exact([True, False], [False, True]).p_value == 1.0  # capped at 1
    assert math.isclose(mcnemar_exact([False] * 5, [True] * 5).p_value, 2 / 32)


def test_mcnemar_requires_aligned_cases() -> None:
    with pytest.raises(ValueError, match="align"):
        mcnemar_exact([True], [True, False])


def test_unparsed_rate() -> None:
    assert unparsed_rate(MIXED) == pytest.approx(2 / 6)
    assert unparsed_rate(UNBALANCED) == 0.0


def test_error_breakdown() -> None:
    assert error_breakdown(MIXED, SPACE) == {
        "correct": 1,
        "wrong_type": 1,
        "right_type_wrong_target": 1,
        "right_target_wrong_text": 1,
        "unparsed": 2,
    }
    assert error_breakdown([], SPACE)["correct"] == 0
