"""From an eval's case records to its metrics, its summary and its per-type chart.

A case record is one evaluated step, a line of an eval folder's ``cases.jsonl`` and an element of
``eval.json["cases"]``: ``session_id``, ``step``, ``last`` (the session's last step), ``truth``,
``status`` (``ok``, ``unparsed`` or ``failed``: the request failed after retries), ``prediction``,
``rationale``, ``raw``, ``problem``, ``correct``, ``type_correct`` and the usage fields.

`score` turns records into ``eval.json["metrics"]`` with the functions of `rationale.metrics`
(nothing is re-defined here but a faster session bootstrap with `bootstrap_ci`'s semantics);
`case_set_digest` (`rationale.case_set`) names the set of test cases, so `rationale.compare`
can refuse runs made on different ones; `summary_lines` and `write_type_chart` are the stderr
summary and ``per_type.png``; `score_predictions` scores a project's own predictions without
any model.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rationale import metrics
from rationale.case_set import case_key, case_mode, case_set_digest, describe_mode
from rationale.metrics import Case
from rationale.schema import ActionSpace

#: The files of an eval folder that this module describes.
EVAL_FILE = "eval.json"
TYPE_CHART_FILE = "per_type.png"
STATUSES = ("ok", "unparsed", "failed")


def to_case(record: dict[str, Any]) -> Case:
    """The `metrics.Case` of a case record: no prediction unless its status is ``ok``."""
    ok = record.get("status") == "ok"
    return Case(
        session_id=str(record["session_id"]),
        step=int(record["step"]),
        truth=record["truth"],
        prediction=record.get("prediction") if ok else None,
        parsed=ok,
    )


def _draws(seed: int, n: int, k: int) -> Iterator[Any]:
    """``random.Random(seed).choices(range(k), k=k)`` drawn ``n`` times, as blocks of rows of a
    numpy array.

    numpy's legacy ``RandomState`` is the same Mersenne Twister with the same 53-bit doubles as
    Python's `random`, so started from Python's state it yields the same numbers, and
    ``floor(u * k)`` is how ``choices`` picks; only much faster than a Python loop.
    """
    import numpy as np

    state = random.Random(seed).getstate()[1]
    rs = np.random.RandomState()
    rs.set_state(("MT19937", np.array(state[:-1], dtype=np.uint32), state[-1]))
    rows = max(1, 1_000_000 // k)  # a block of about 8 MB of doubles
    for start in range(0, n, rows):
        u = rs.random_sample((min(rows, n - start), k))
        yield np.floor(u * float(k)).astype(np.intp)


def _session_bootstrap(
    matches: Sequence[bool], session_ids: Sequence[str], *, n: int, seed: int, level: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Intervals of step and session exact match from the same resamples of sessions.

    The draws are `metrics.bootstrap_ci`'s for this seed (sessions in order of first appearance,
    ``rng.choices`` over them), so each interval is ``bootstrap_ci``'s with `metrics.accuracy`
    or `metrics.session_accuracy` (up to float rounding of sums); but a resample adds
    precomputed per-session counts instead of copying every case.
    """
    import numpy as np

    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    counts: dict[str, list[int]] = {}
    for sid, hit in zip(session_ids, matches, strict=True):
        c = counts.setdefault(sid, [0, 0])
        c[0] += hit
        c[1] += 1
    hits, sizes = np.array(list(counts.values()), dtype=np.int64).T
    rates = hits / sizes
    step_stats, session_stats = [], []
    for block in _draws(seed, n, len(rates)):
        step_stats.extend((hits[block].sum(axis=1) / sizes[block].sum(axis=1)).tolist())
        session_stats.extend(rates[block].mean(axis=1).tolist())
    alpha = (1 - level) / 2

    def interval(stats: list[float]) -> tuple[float, float]:
        stats.sort()
        return metrics.quantile(stats, alpha), metrics.quantile(stats, 1 - alpha)

    return interval(step_stats), interval(session_stats)


def score(
    records: Sequence[dict[str, Any]],
    space: ActionSpace | None = None,
    *,
    seed: int = 0,
    n_boot: int = 1000,
    level: float = 0.95,
) -> dict[str, Any]:
    """The metrics of an eval (``eval.json["metrics"]``) from its case records.

    Exact match per case and per session (the headline) with session-bootstrap intervals, action
    type accuracy and F1 (overall and per true type), session outcomes (`_outcome`) over the
    sessions whose last step is among the records and ends in an outcome, unparsed and failed
    counts and the
    error breakdown (``failed`` kept apart from ``unparsed``). With no records every value is
    None or 0. Raises ValueError for a (session_id, step) that appears twice.
    """
    space = space or ActionSpace.default()
    records = list(records)
    keys = Counter(case_key(r) for r in records)
    twice = [k for k, count in keys.items() if count > 1]
    if twice:
        raise ValueError(f"session {twice[0][0]!r} step {twice[0][1]} is scored twice")
    cases = [to_case(r) for r in records]
    failed = sum(r.get("status") == "failed" for r in records)
    bootstrap = {"n": n_boot, "seed": seed, "level": level, "unit": "session"}
    if not cases:
        none = {"value": None, "ci_low": None, "ci_high": None}
        return {
            "n_cases": 0, "n_sessions": 0, "exact_match": none, "session_exact_match": none,
            "type_accuracy": None, "type_macro_f1": None, "type_weighted_f1": None,
            "per_type": {}, "outcome": None, "unparsed": 0, "failed": 0, "unparsed_rate": None,
            "errors": {**dict.fromkeys(metrics.ERROR_KINDS, 0), "failed": 0},
            "bootstrap": bootstrap,
        }  # fmt: skip
    matches = metrics.exact_match(cases, space)
    step_ci, session_ci = _session_bootstrap(
        matches, [c.session_id for c in cases], n=n_boot, seed=seed, level=level
    )
    per_type = metrics.per_type(cases, space)
    errors = metrics.error_breakdown(cases, space)
    errors["unparsed"] -= failed  # a failed request has no answer: not the model's parse failure
    errors["failed"] = failed
    return {
        "n_cases": len(cases),
        "n_sessions": len({c.session_id for c in cases}),
        "exact_match": _interval(metrics.accuracy(cases, space), step_ci),
        "session_exact_match": _interval(metrics.session_accuracy(cases, space), session_ci),
        "type_accuracy": metrics.type_accuracy(cases),
        "type_macro_f1": metrics.macro_f1(cases),
        "type_weighted_f1": metrics.weighted_f1(cases),
        "per_type": {
            t: dataclasses.asdict(per_type[t])
            for t in sorted(per_type, key=lambda t: (-per_type[t].support, t))
        },
        "outcome": _outcome(records, cases, space),
        "unparsed": errors["unparsed"],
        "failed": failed,
        "unparsed_rate": metrics.unparsed_rate(cases),
        "errors": errors,
        "bootstrap": bootstrap,
    }


def _interval(value: float, ci: tuple[float, float]) -> dict[str, float]:
    return {"value": value, "ci_low": ci[0], "ci_high": ci[1]}


def _outcome(
    records: Sequence[dict[str, Any]], cases: Sequence[Case], space: ActionSpace
) -> dict[str, Any] | None:
    """Outcome accuracy and F1 (`metrics.outcome_metrics`) over the sessions whose last step was
    evaluated and whose true last action is a purchase or a terminate: ``n`` of them, listed in
    ``sessions``; None when there is no such session."""
    last = [(c.session_id, space.outcome(c.truth), c) for r, c in zip(records, cases, strict=True)
            if r.get("last")]  # fmt: skip
    scored = [(sid, truth, c) for sid, truth, c in last if truth is not None]
    if not scored:
        return None
    result = metrics.outcome_metrics([
        # an unreadable (or failed) last answer predicts no outcome: always wrong
        (truth, space.outcome(c.prediction) if c.is_parsed else metrics.UNPARSED)  # type: ignore[arg-type]
        for _, truth, c in scored
    ])  # fmt: skip
    return {**result, "sessions": [sid for sid, _, _ in scored]}


# -- the library call for a project's own predictions -----------------------------------------


def judge(
    truth: dict[str, Any], prediction: dict[str, Any] | None, space: ActionSpace
) -> tuple[bool, bool]:
    """(exact match, type match) of one prediction (None: no answer) under the metrics' rules."""
    case = Case("", 0, truth, prediction, prediction is not None)
    return metrics.exact_match([case], space)[0], metrics.true_type(case) == metrics.predicted_type(
        case
    )


def score_predictions(
    truths: Sequence[dict[str, Any]],
    predictions: Sequence[dict[str, Any] | str | None],
    *,
    session_ids: Sequence[str],
    steps: Sequence[int],
    space: ActionSpace | None = None,
    last: Sequence[bool] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """`score` a project's own predictions, aligned with the true actions, without any model.

    A prediction is an action dict (or a ``{"rationale", "action"}`` dict), a model's raw answer
    (read with `rationale.predictions.parse_prediction`: unreadable text counts as unparsed) or
    None (no answer: unparsed). ``last`` marks each session's last step, for outcomes; without it
    the highest step given for each session is taken as its last.
    """
    from rationale.predictions import parse_prediction

    space = space or ActionSpace.default()
    n = len(truths)
    for name, seq in (("predictions", predictions), ("session_ids", session_ids), ("steps", steps),
                      ("last", last)):  # fmt: skip
        if seq is not None and len(seq) != n:
            raise ValueError(f"{n} truths but {len(seq)} {name}: give one per case")
    if last is None:
        final: dict[str, int] = {}
        for sid, step in zip(session_ids, steps, strict=True):
            final[str(sid)] = max(int(step), final.get(str(sid), int(step)))
        last = [final[str(sid)] == int(step) for sid, step in zip(session_ids, steps, strict=True)]
    records = []
    for truth, pred, sid, step, is_last in zip(
        truths, predictions, session_ids, steps, last, strict=True
    ):
        truth = truth.model_dump() if hasattr(truth, "model_dump") else dict(truth)
        rationale, raw, problem = None, None, None
        if isinstance(pred, str):
            parsed = parse_prediction(pred, space)
            action, rationale, raw, problem = parsed.action, parsed.rationale, pred, parsed.problem
        elif isinstance(pred, dict) and "type" not in pred and isinstance(pred.get("action"), dict):
            action, rationale = pred["action"], pred.get("rationale")
        else:
            action = dict(pred) if pred is not None else None
        correct, type_correct = judge(truth, action, space)
        records.append({
            "session_id": str(sid), "step": int(step), "last": bool(is_last), "truth": truth,
            "status": "ok" if action is not None else "unparsed", "prediction": action,
            "rationale": rationale, "raw": raw,
            "problem": problem or (None if action is not None else "no prediction"),
            "correct": correct, "type_correct": type_correct,
        })  # fmt: skip
    return score(records, space, seed=seed, n_boot=n_boot)


# -- the summary and the chart ----------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _with_ci(m: dict[str, Any], level: float) -> str:
    if m["value"] is None:
        return "-"
    return f"{_pct(m['value'])} ({level:.0%} CI {_pct(m['ci_low'])} to {_pct(m['ci_high'])})"


def summary_lines(eval_data: dict[str, Any], *, folder: str | Path | None = None) -> list[str]:
    """The short summary of an eval (``eval.json``'s content) printed on stderr; with ``folder``,
    a last line says where eval.json and the chart are."""
    m = eval_data.get("metrics") or score([])
    model = eval_data.get("model") or {}
    level = m["bootstrap"]["level"]
    name = model.get("label") or model.get("name") or "predictions"
    engine = f" via {model['engine']}" if model.get("engine") else ""
    lines = [f"model: {name}{engine}"]
    pending = eval_data.get("pending") or 0
    mode = case_mode(eval_data)
    lines.append(
        f"cases: {m['n_cases']} in {m['n_sessions']} session{'s' if m['n_sessions'] != 1 else ''}"
        + (f" ({describe_mode(mode)})" if mode else "")
        + (f", {pending} pending" if pending else "")
        + (f" (stopped: {eval_data['stopped']})" if eval_data.get("stopped") else "")
    )
    lines.append(f"exact match, session average: {_with_ci(m['session_exact_match'], level)}")
    lines.append(f"exact match, per step: {_with_ci(m['exact_match'], level)}")
    if m["type_macro_f1"] is not None:
        lines.append(
            f"action type: accuracy {_pct(m['type_accuracy'])}, macro-F1 "
            f"{_pct(m['type_macro_f1'])}, weighted-F1 {_pct(m['type_weighted_f1'])}"
        )
    if m["outcome"]:
        o = m["outcome"]
        lines.append(
            f"outcome: macro-F1 {_pct(o['macro_f1'])}, accuracy {_pct(o['accuracy'])} over "
            f"{o['n']} sessions ending in purchase or terminate"
        )
    lines.append(
        f"unparsed: {m['unparsed']}, failed: {m['failed']} (together "
        f"{_pct(m['unparsed_rate'])} of cases)"
    )
    usage = eval_data.get("usage")
    if usage:
        lines.append(
            f"tokens of these cases: {usage.get('prompt_tokens') or 0} prompt + "
            f"{usage.get('completion_tokens') or 0} completion; billed "
            f"${usage.get('cost_usd') or 0:.4f} for {usage.get('requests') or 0} requests "
            "(every run on this folder)"
        )
        now = usage.get("this_invocation") or {}
        if now.get("wall_s") is not None:
            rate = now.get("cases_per_s")
            lines.append(
                f"this run: {now.get('cases', 0)} cases in {now['wall_s']:.1f} s"
                + (f" ({rate:.2f} cases/s)" if rate else "")
                + f", {now.get('requests') or 0} requests, {now.get('cache_hits') or 0} answers "
                "from the cache"
            )
    if folder is not None:
        lines.append(
            f"wrote {Path(folder) / EVAL_FILE} and the chart {Path(folder) / TYPE_CHART_FILE}"
        )
    return lines


def write_type_chart(metrics: dict[str, Any], path: str | Path, title: str) -> None:
    """A PNG of exact match and type accuracy per true action type (support in the labels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = metrics.get("per_type") or {}
    types = list(rows)
    labels = [f"{t}\n(n={rows[t]['support']})" for t in types] or ["(no cases)"]
    width = 0.38
    fig = Figure(figsize=(max(5.0, 1.6 * len(labels) + 1.5), 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = range(len(labels))
    for offset, key, name, color in (
        (-width / 2, "exact_match", "exact match", "#4c72b0"),
        (width / 2, "type_accuracy", "type accuracy", "#dd8452"),
    ):
        values = [100 * rows[t][key] for t in types] or [0.0]
        bars = ax.bar([x + offset for x in xs], values, width, label=name, color=color)
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(f"{value:.0f}", (bar.get_x() + bar.get_width() / 2, value),
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(list(xs), labels)
    ax.set_ylim(0, 125)  # room for the legend above the 100% line
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("% of cases of the true type")
    unread = (metrics.get("unparsed") or 0) + (metrics.get("failed") or 0)
    n = metrics.get("n_cases") or 0
    ax.set_title(f"{title}\n{unread} of {n} answers unparsed or failed (counted wrong)"
                 if n else title, fontsize=10)  # fmt: skip
    ax.legend(loc="upper center", ncol=2, fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(Path(path), format="png")


__all__ = [
    "EVAL_FILE",
    "STATUSES",
    "TYPE_CHART_FILE",
    "case_key",
    "case_set_digest",
    "judge",
    "score",
    "score_predictions",
    "summary_lines",
    "to_case",
    "write_type_chart",
]
