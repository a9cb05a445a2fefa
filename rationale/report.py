"""The report of a run folder: what was accepted, why the rest was rejected, what it cost.

Computed from the run's files alone (accepted/rejected/failed.jsonl and ledger.jsonl), so it is
the same whether the run finished, was killed, or was resumed several times. `rationale report
RUN_DIR` prints it; every synth or filter run also stores it in run.json and draws
``acceptance.png`` (acceptance per action type) in the run folder.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from rationale.rundir import STATES, ledger_entries
from rationale.schema import SynthRecord


def _lines(file: Path) -> list[SynthRecord]:
    from rationale.rundir import read_synth_records

    return [rec for _, rec in read_synth_records(file)]  # read only: a run may be writing


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """Acceptance overall and per action type, rejections per rule, the verifier's confusion
    (true action type x predicted type, with exact matches), and spend per kind of call."""
    run_dir = Path(run_dir)
    records = {state: _lines(run_dir / f"{state}.jsonl") for state in STATES}
    per_type: dict[str, Counter[str]] = defaultdict(Counter)
    rules_candidates: Counter[str] = Counter()
    rules_records: Counter[str] = Counter()
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    exact: Counter[str] = Counter()
    candidates: Counter[str] = Counter()
    regenerated_then_accepted = 0
    for state, recs in records.items():
        for rec in recs:
            truth = str(rec.record.get("action", {}).get("type"))
            per_type[truth][state] += 1
            for rule in {r.split(":")[0] for r in rec.reasons}:
                rules_records[rule] += 1
            if state == "accepted" and any(
                c.state == "accepted" and c.round > 0 for c in rec.candidates
            ):
                regenerated_then_accepted += 1
            for c in rec.candidates:
                candidates[c.state] += 1
                for rule in {r.split(":")[0] for r in c.reasons}:
                    rules_candidates[rule] += 1
                if c.verification is not None:
                    predicted = c.verification.prediction
                    ptype = str(predicted.get("type")) if isinstance(predicted, dict) else "invalid"
                    confusion[truth][ptype] += 1
                    exact[truth] += c.verification.match
    total = sum(len(r) for r in records.values())
    accepted = len(records["accepted"])
    spend: dict[str, dict[str, float]] = defaultdict(
        lambda: {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
    )
    for entry in ledger_entries(run_dir / "ledger.jsonl"):
        # a batch job is one line, split by the kind of its requests (teacher, verifier)
        parts = (
            {f"{k} (batch)": v for k, v in entry["by_kind"].items()}
            if entry.get("kind") == "batch" and "by_kind" in entry
            else {entry.get("kind", "teacher"): entry}
        )
        for kind, values in parts.items():
            bucket = spend[kind]
            for key in bucket:
                bucket[key] += values.get(key) or 0
    batch = None
    if (run_dir / "batches" / "jobs.jsonl").exists():
        from rationale.batch_store import BatchStore

        batch = BatchStore(run_dir / "batches").summary()
    return {
        "records": total,
        "counts": {state: len(records[state]) for state in STATES},
        "acceptance": accepted / total if total else None,
        "per_action_type": {
            t: {
                **{s: c[s] for s in STATES},
                "acceptance": c["accepted"] / sum(c.values()) if sum(c.values()) else None,
            }
            for t, c in sorted(per_type.items())
        },
        "candidates": {s: candidates[s] for s in STATES},
        "regenerated_then_accepted": regenerated_then_accepted,
        "rejections_per_rule": {
            "candidates": dict(rules_candidates.most_common()),
            "records": dict(rules_records.most_common()),
        },
        "verifier_confusion": {
            t: {"predicted": dict(sorted(confusion[t].items())), "exact_match": exact[t]}
            for t in sorted(confusion)
        },
        "spend": {kind: dict(values) for kind, values in sorted(spend.items())},
        "batch": batch,
    }


def render_text(report: dict[str, Any]) -> str:
    """The report as a few plain tables."""
    out = []
    counts = report["counts"]
    acc = report["acceptance"]
    out.append(
        f"records: {report['records']}  accepted {counts['accepted']}, rejected "
        f"{counts['rejected']}, failed {counts['failed']}"
        + (f"  (acceptance {acc:.1%})" if acc is not None else "")
    )
    out.append("")
    out.append(f"{'action type':<18}{'records':>8}{'accepted':>10}{'rejected':>10}{'failed':>8}"
               f"{'acceptance':>12}")  # fmt: skip
    for t, row in report["per_action_type"].items():
        n = row["accepted"] + row["rejected"] + row["failed"]
        rate = f"{row['acceptance']:.1%}" if row["acceptance"] is not None else "-"
        out.append(f"{t:<18}{n:>8}{row['accepted']:>10}{row['rejected']:>10}{row['failed']:>8}"
                   f"{rate:>12}")  # fmt: skip
    rules = report["rejections_per_rule"]
    out.append("")
    out.append("rejections per rule (candidates / records):")
    if not rules["candidates"]:
        out.append("  none")
    for rule, n in rules["candidates"].items():
        out.append(f"  {rule:<16}{n:>6} / {rules['records'].get(rule, 0)}")
    if report["regenerated_then_accepted"]:
        out.append(f"  accepted after regeneration: {report['regenerated_then_accepted']} records")
    confusion = report["verifier_confusion"]
    out.append("")
    if confusion:
        predicted_types = sorted({p for row in confusion.values() for p in row["predicted"]})
        out.append("verifier: true action type (rows) x predicted type (columns), exact matches")
        out.append(f"{'':<18}" + "".join(f"{p:>17}" for p in predicted_types) + f"{'exact':>8}")
        for t, row in confusion.items():
            cells = "".join(f"{row['predicted'].get(p, 0):>17}" for p in predicted_types)
            out.append(f"{t:<18}{cells}{row['exact_match']:>8}")
    else:
        out.append("verifier: not used")
    out.append("")
    for kind, s in report["spend"].items():
        out.append(
            f"{kind}: {int(s['requests'])} requests, {int(s['prompt_tokens'])} prompt + "
            f"{int(s['completion_tokens'])} completion tokens, ${s['cost_usd']:.4f}"
        )
    if b := report.get("batch"):
        out.append(
            f"batch: {b['jobs']} jobs in {b['rounds']} rounds, {b['requests_submitted']} requests "
            f"submitted, {b['answered']} answered, {b['in_flight_jobs']} jobs in flight, "
            f"${b['cost_usd']:.4f} at the batch price"
        )
    return "\n".join(out)


def write_chart(report: dict[str, Any], path: str | Path) -> Path:
    """A bar chart of acceptance per action type (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["per_action_type"]
    types = list(rows) or ["(no records)"]
    rates = [100 * (rows[t]["acceptance"] or 0) for t in rows] or [0]
    counts = [rows[t]["accepted"] + rows[t]["rejected"] + rows[t]["failed"] for t in rows] or [0]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 * len(types)), 3.8), dpi=100)
    bars = ax.bar(types, rates, color="#4c72b0")
    for bar, rate, n in zip(bars, rates, counts, strict=True):
        ax.annotate(f"{rate:.0f}% of {n}", (bar.get_x() + bar.get_width() / 2, rate),
                    ha="center", va="bottom", fontsize=9)  # fmt: skip
    ax.set_ylim(0, 110)
    ax.set_ylabel("accepted (%)")
    overall = report["acceptance"]
    ax.set_title(
        "Acceptance per action type"
        + (f" (overall {100 * overall:.0f}%)" if overall is not None else "")
    )
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
