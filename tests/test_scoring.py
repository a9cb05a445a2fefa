"""rationale.scoring: an eval's metrics from its case records, checked against hand-computed
numbers; the case-set digest; the session bootstrap; scoring a project's own predictions; the
summary and the per-type chart."""

from __future__ import annotations

import random

import pytest

from rationale.metrics import accuracy, bootstrap_ci, session_accuracy
from rationale.schema import ActionSpace
from rationale.scoring import (
    case_set_digest,
    score,
    score_predictions,
    summary_lines,
    to_case,
    write_type_chart,
)

SPACE = ActionSpace.default()
PNG = b"\x89PNG\r\n\x1a\n"


def click(name: str) -> dict:
    return {"type": "click", "name": name}


def typed(name: str, text: str) -> dict:
    return {"type": "type_and_submit", "name": name, "text": text}


TERM = {"type": "terminate"}


def rec(sid: str, step: int, truth: dict, pred: dict | None, status: str = "ok", last=False):
    """A case record as an eval writes it (correctness fields left out: score recomputes)."""
    return {
        "session_id": sid, "step": step, "last": last, "truth": truth, "status": status,
        "prediction": pred, "rationale": None, "raw": None, "problem": None,
    }  # fmt: skip


# s1: right, right type wrong text, right (a purchase): 2/3, outcome purchase -> purchase.
# s2: unparsed, terminate predicted as a click: 0/2, outcome terminate -> none (wrong).
# s3: right (case and spacing differ), the request failed: 1/2; it ends in a plain click, so it
# has no outcome and is not scored for outcomes.
RECORDS = [
    rec("s1", 0, click("search.box"), click("search.box")),
    rec("s1", 1, typed("search.box", "red shoes"), typed("search.box", "blue shoes")),
    rec("s1", 2, click("product.buy_now"), click("product.buy_now"), last=True),
    rec("s2", 0, click("a.link"), None, status="unparsed"),
    rec("s2", 1, TERM, click("a.link"), last=True),
    rec("s3", 0, click("x.y"), click("X.Y ")),
    rec("s3", 1, click("x.z"), None, status="failed", last=True),
]


def test_score_by_hand() -> None:
    m = score(RECORDS, SPACE)
    assert (m["n_cases"], m["n_sessions"]) == (7, 3)
    assert m["exact_match"]["value"] == pytest.approx(3 / 7)
    assert m["session_exact_match"]["value"] == pytest.approx((2 / 3 + 0 + 1 / 2) / 3)
    # truth types: click, type, click, click, terminate, click, click
    # predicted:   click, type, click, unparsed, click, click, unparsed
    assert m["type_accuracy"] == pytest.approx(4 / 7)
    # F1: click 2*3/(5+4), type_and_submit 1, terminate 0, unparsed 0 (predicted, never true:
    # a class of the macro mean, as in scikit-learn).
    assert m["type_macro_f1"] == pytest.approx((2 / 3 + 1 + 0 + 0) / 4)
    assert m["type_weighted_f1"] == pytest.approx((2 / 3 * 5 + 1) / 7)
    c = m["per_type"]["click"]
    assert c == pytest.approx({"support": 5, "exact_match": 3 / 5, "type_accuracy": 3 / 5,
                               "precision": 3 / 4, "recall": 3 / 5, "f1": 2 / 3})  # fmt: skip
    assert list(m["per_type"]) == ["click", "terminate", "type_and_submit"]  # by support, name
    assert m["per_type"]["terminate"]["type_accuracy"] == 0.0
    # outcomes of s1 (purchase, purchase) and s2 (terminate, none); s3 ends in a click: not
    # scored. Macro over purchase 1 and terminate 0.
    assert m["outcome"] == {
        "n": 2, "accuracy": 0.5, "macro_f1": 0.5, "support": {"purchase": 1, "terminate": 1},
        "sessions": ["s1", "s2"],
    }  # fmt: skip
    assert (m["unparsed"], m["failed"]) == (1, 1)
    assert m["unparsed_rate"] == pytest.approx(2 / 7)
    assert m["errors"] == {"correct": 3, "wrong_type": 1, "right_type_wrong_target": 0,
                           "right_target_wrong_text": 1, "unparsed": 1, "failed": 1}  # fmt: skip
    assert m["bootstrap"] == {"n": 1000, "seed": 0, "level": 0.95, "unit": "session"}


def random_records(seed: int) -> list[dict]:
    """Sessions of 1 to 6 steps of clicks, types, purchases and terminates, answered right,
    with another action, unparsed or failed."""
    rng = random.Random(seed)
    actions = [click("a.b"), click("c.d"), click("product.buy_now"), typed("q.box", "hat"), TERM]
    out = []
    for s in range(rng.randint(2, 9)):
        n = rng.randint(1, 6)
        for step in range(n):
            truth = rng.choice(actions)
            status = rng.choice(["ok", "ok", "ok", "unparsed", "failed"])
            pred = truth if rng.random() < 0.4 else rng.choice(actions)
            pred = pred if status == "ok" else None
            out.append(rec(f"s{s}", step, truth, pred, status=status, last=step == n - 1))
    return out


def kind(action: dict | None) -> str:
    return "unparsed" if action is None else action["type"]


def outcome_label(action: dict | None) -> str | None:
    if action == click("product.buy_now"):
        return "purchase"
    return "terminate" if action == TERM else None


@pytest.mark.parametrize("seed", range(8))
def test_score_matches_hand_and_sklearn(seed: int) -> None:
    """score()'s numbers from the records alone: exact match and its session average counted
    here; type accuracy, F1 and the outcome with scikit-learn, called as documented."""
    skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a dev dependency")
    records = random_records(seed)
    m = score(records, SPACE, n_boot=50)
    # every right prediction here is the true dict itself, every wrong one another action
    right = [r["status"] == "ok" and r["prediction"] == r["truth"] for r in records]
    assert m["exact_match"]["value"] == pytest.approx(sum(right) / len(records))
    per_session: dict[str, list[bool]] = {}
    for r, ok in zip(records, right, strict=True):
        per_session.setdefault(r["session_id"], []).append(ok)
    rates = [sum(v) / len(v) for v in per_session.values()]
    assert m["session_exact_match"]["value"] == pytest.approx(sum(rates) / len(rates))
    truth = [kind(r["truth"]) for r in records]
    pred = [kind(r["prediction"]) for r in records]
    assert m["type_accuracy"] == pytest.approx(skm.accuracy_score(truth, pred))
    for key, average in (("type_macro_f1", "macro"), ("type_weighted_f1", "weighted")):
        expected = skm.f1_score(truth, pred, average=average, zero_division=0)
        assert m[key] == pytest.approx(expected), key
    labels = sorted(set(truth))
    p, r, f, n = skm.precision_recall_fscore_support(truth, pred, labels=labels, zero_division=0)
    for i, label in enumerate(labels):
        row = m["per_type"][label]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (p[i], r[i], f[i], n[i])
        ), label
    last = [(r["session_id"], outcome_label(r["truth"]), outcome_label(r["prediction"]))
            for r in records if r["last"]]  # fmt: skip
    scored = [(sid, t, "none" if o is None else o) for sid, t, o in last if t is not None]
    if not scored:
        assert m["outcome"] is None
        return
    o_truth, o_pred = [t for _, t, _ in scored], [o for _, _, o in scored]
    assert m["outcome"]["n"] == len(scored)
    assert m["outcome"]["sessions"] == [sid for sid, _, _ in scored]
    assert m["outcome"]["accuracy"] == pytest.approx(skm.accuracy_score(o_truth, o_pred))
    labels = [c for c in ("purchase", "terminate") if c in o_truth or c in o_pred]
    expected = skm.f1_score(o_truth, o_pred, labels=labels, average="macro")
    assert m["outcome"]["macro_f1"] == pytest.approx(expected)


def test_only_ok_records_carry_a_prediction() -> None:
    # An unparsed record with a prediction left in it is still wrong.
    record = rec("s", 0, click("a.b"), click("a.b"), status="unparsed")
    case = to_case(record)
    assert case.prediction is None and not case.is_parsed
    assert score([record], SPACE)["exact_match"]["value"] == 0.0


def test_no_outcome_without_a_last_step_or_a_defined_outcome() -> None:
    assert score([r | {"last": False} for r in RECORDS], SPACE)["outcome"] is None
    plain = [rec("s", 0, click("a.b"), click("a.b"), last=True)]  # the session ends in a click
    assert score(plain, SPACE)["outcome"] is None


def test_empty_and_duplicated_records() -> None:
    empty = score([], SPACE)
    assert empty["n_cases"] == 0 and empty["session_exact_match"]["value"] is None
    with pytest.raises(ValueError, match="'s1' step 0 is scored twice"):
        score([*RECORDS, RECORDS[0]], SPACE)


def test_case_set_digest() -> None:
    digest = case_set_digest(RECORDS)
    assert case_set_digest(list(reversed(RECORDS))) == digest
    # What the model said does not matter; what the test case is does.
    assert case_set_digest([r | {"prediction": None} for r in RECORDS]) == digest
    changed = [*RECORDS[:-1], RECORDS[-1] | {"truth": click("x.w")}]
    assert case_set_digest(changed) != digest
    assert case_set_digest(RECORDS[:-1]) != digest


def sessions(n: int, seed: int) -> list[dict]:
    """n sessions of 1 to 5 steps, each step right with probability 0.5."""
    rng = random.Random(seed)
    out = []
    for s in range(n):
        for step in range(rng.randint(1, 5)):
            pred = click("a.b") if rng.random() < 0.5 else click("c.d")
            out.append(rec(f"s{s}", step, click("a.b"), pred))
    return out


def test_bootstrap_matches_metrics_bootstrap_ci_and_is_reproducible() -> None:
    records = sessions(30, seed=1)
    cases = [to_case(r) for r in records]
    m = score(records, SPACE, seed=7, n_boot=300)
    step = (m["exact_match"]["ci_low"], m["exact_match"]["ci_high"])
    session = (m["session_exact_match"]["ci_low"], m["session_exact_match"]["ci_high"])
    # The same resamples as metrics.bootstrap_ci, only faster (session means are summed in
    # another order: equal up to rounding).
    assert step == bootstrap_ci(cases, lambda c: accuracy(c, SPACE), n=300, seed=7)
    slow = bootstrap_ci(cases, lambda c: session_accuracy(c, SPACE), n=300, seed=7)
    assert session == pytest.approx(slow, rel=1e-12, abs=0)
    assert score(records, SPACE, seed=7, n_boot=300) == m
    assert score(records, SPACE, seed=8, n_boot=300)["exact_match"] != m["exact_match"]
    assert step[0] <= m["exact_match"]["value"] <= step[1]
    assert m["bootstrap"] == {"n": 300, "seed": 7, "level": 0.95, "unit": "session"}


def test_fast_draws_are_pythons_across_blocks() -> None:
    """The numpy draws behind the bootstrap are `random.choices`'s, also past a block boundary."""
    import numpy as np

    from rationale.scoring import _draws

    blocks = list(_draws(3, 700, 1500))
    assert len(blocks) == 2
    rng = random.Random(3)
    expected = np.array([rng.choices(range(1500), k=1500) for _ in range(700)])
    assert (np.concatenate(blocks) == expected).all()


def test_bootstrap_is_wider_for_fewer_sessions() -> None:
    def width(n: int) -> float:
        h = score(sessions(n, seed=3), SPACE, n_boot=400)["session_exact_match"]
        return h["ci_high"] - h["ci_low"]

    assert width(15) > 1.5 * width(300)
    with pytest.raises(ValueError, match="level"):
        score(RECORDS, SPACE, level=1.0)


def test_score_predictions_takes_dicts_strings_and_none() -> None:
    truths = [click("search.box"), typed("search.box", "hat"), TERM, click("a.b"), click("b.c")]
    predictions = [
        click("search.box"),  # an action dict
        'Sure! {"rationale": "I want a hat.", "action": {"type": "type_and_submit", '
        '"name": "search.box", "text": " hat"}} Hope that helps.',  # raw text: parsed
        "I would probably leave now, I think.",  # unreadable: unparsed
        None,  # no answer: unparsed
        {"rationale": "that one", "action": click("b.c")},  # a prediction dict
    ]
    m = score_predictions(
        truths, predictions, session_ids=["s1", "s1", "s1", "s2", "s2"], steps=[0, 1, 2, 0, 1]
    )
    assert m["n_cases"] == 5 and m["n_sessions"] == 2
    assert m["exact_match"]["value"] == pytest.approx(3 / 5)
    assert m["session_exact_match"]["value"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert (m["unparsed"], m["failed"]) == (2, 0)
    # Each session's highest step is its last: s1 ends in terminate (predicted: nothing), s2 in
    # a plain click (no outcome: not scored).
    assert m["outcome"]["n"] == 1 and m["outcome"]["accuracy"] == 0.0
    assert m["outcome"]["sessions"] == ["s1"]
    explicit = score_predictions(
        truths, predictions, session_ids=["s1"] * 3 + ["s2"] * 2, steps=[0, 1, 2, 0, 1],
        last=[False] * 5,
    )  # fmt: skip
    assert explicit["outcome"] is None
    with pytest.raises(ValueError, match="5 truths but 4 predictions"):
        score_predictions(truths, predictions[:4], session_ids=["s"] * 5, steps=range(5))


def test_summary_lines() -> None:
    m = score(RECORDS, SPACE)
    data = {
        "model": {"name": "openai/gpt-x", "label": "gpt-x", "engine": "api"},
        "data": {"file": "test.jsonl", "cases": "from-second", "limit": None},
        "pending": 0, "metrics": m,
        "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "cost_usd": 0.0123,
                  "requests": 9, "this_invocation": {"cases": 7, "requests": 5, "cache_hits": 2,
                                                     "wall_s": 3.5, "cases_per_s": 2.0}},
    }  # fmt: skip
    text = "\n".join(summary_lines(data, folder="out/eval"))
    assert "gpt-x via api" in text
    assert "cases: 7 in 3 sessions (second and later actions)" in text
    headline = m["session_exact_match"]
    assert f"{100 * headline['value']:.1f}%" in text
    assert f"{100 * headline['ci_low']:.1f}%" in text
    assert "unparsed: 1, failed: 1" in text
    assert "1200 prompt + 300 completion" in text and "$0.0123" in text
    assert "billed $0.0123 for 9 requests (every run on this folder)" in text
    assert "this run: 7 cases in 3.5 s (2.00 cases/s), 5 requests, 2 answers from the cache" in text
    assert "out/eval/eval.json" in text and "per_type.png" in text
    assert "outcome: macro-F1 50.0%, accuracy 50.0% over 2 sessions ending in purchase or" in text
    every = summary_lines(data | {"data": {"cases": "all"}})
    assert "cases: 7 in 3 sessions (every action)" in every


def test_type_chart_is_a_png(tmp_path) -> None:
    path = tmp_path / "per_type.png"
    write_type_chart(score(RECORDS, SPACE), path, "tiny student on 7 cases")
    assert path.read_bytes().startswith(PNG)
    write_type_chart(score([], SPACE), tmp_path / "empty.png", "no cases")
    assert (tmp_path / "empty.png").read_bytes().startswith(PNG)
