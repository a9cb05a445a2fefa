"""Several evals of the same test cases side by side, in a table laid out like the paper's.

`load_eval` reads a finished eval folder (``rationale eval -o EVAL_DIR``); `compare` checks that
every eval scored the same test cases (`rationale.case_set.case_set_digest`: same sessions, steps
and true actions) and refuses otherwise, since accuracies on different cases cannot be compared.
The `Comparison` it returns renders the markdown table (a first line naming the case set, e.g.
the second and later actions of each session, and saying so when evals of the same cases were
made with different ``--cases``; headline exact match with its interval,
step exact match, type macro-F1, outcome F1 and, against a reference, the difference in points
and per cent and McNemar's exact p over per-case correctness), its JSON and a bar chart.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rationale.case_set import case_key, case_mode, case_set_digest, describe_mode, difference
from rationale.errors import RationaleError
from rationale.metrics import McNemar, mcnemar_exact
from rationale.scoring import EVAL_FILE

#: The files `Comparison.write` puts in its folder.
TABLE_FILE = "compare.md"
CHART_FILE = "compare.png"


def load_eval(folder: str | Path) -> dict[str, Any]:
    """The content of ``folder/eval.json`` (or of an eval.json given itself), if finished.

    Raises RationaleError naming the folder when there is no eval.json, when it is not an eval
    result, or when some of its cases are still pending (the eval was stopped or killed).
    """
    path = Path(folder)
    file = path if path.is_file() else path / EVAL_FILE
    if not file.is_file():
        raise RationaleError(
            f"{folder}: no {EVAL_FILE}: give the -o folder of a finished `rationale eval`"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RationaleError(
            f"{file}: not valid JSON ({exc}); rerun the eval to write it again"
        ) from None
    pending = data.get("pending") or 0 if isinstance(data, dict) else 0
    if pending:
        why = f" (stopped: {data['stopped']})" if data.get("stopped") else ""
        raise RationaleError(
            f"{folder}: the eval is unfinished, {pending} cases pending{why}; rerun the same "
            "`rationale eval` command to finish it (finished cases are reused)"
        )
    if not (
        isinstance(data, dict)
        and isinstance(data.get("cases"), list)
        and isinstance(data.get("metrics"), dict)
    ):
        raise RationaleError(f"{file}: not an eval result (it has no cases or no metrics)")
    return data


#: The arms `rationale run` can compare (see `rationale.workflow`).
ARMS: tuple[str, ...] = ("base", "actions", "rationale", "teacher")


class CompareConfig(BaseModel):
    """The compare job (the ``[compare]`` table of a workspace file)."""

    model_config = ConfigDict(extra="forbid")

    output: str | None = None
    reference: str | None = Field(
        None, description="The eval (or, in a workspace, the arm) the others are measured against."
    )
    arms: list[Literal["base", "actions", "rationale", "teacher"]] = Field(
        default_factory=lambda: list(ARMS),
        description="base: the student's base prompt-only; actions: trained on actions only; "
        "rationale: trained on rationale + action; teacher: the teacher prompt-only (API only).",
    )


@dataclass(frozen=True)
class Row:
    """One eval in a comparison, with its differences from the reference (None without one)."""

    label: str
    folder: str
    model: dict[str, Any]
    metrics: dict[str, Any]
    correct: dict[tuple[str, int], bool]
    is_reference: bool = False
    delta_points: float | None = None
    delta_relative: float | None = None
    mcnemar: McNemar | None = None

    @property
    def headline(self) -> dict[str, Any]:
        """Session-averaged exact match, the paper's headline, with its interval."""
        return self.metrics["session_exact_match"]

    def outcome_f1(self) -> float | None:
        outcome = self.metrics.get("outcome")
        return outcome["macro_f1"] if outcome else None


@dataclass
class Comparison:
    """Evals of one case set, in the order given (a reference not listed comes last)."""

    rows: list[Row]
    case_set: str
    n_cases: int
    n_sessions: int
    reference: str | None = None  # the reference row's label
    bootstrap: list[dict[str, Any]] = field(default_factory=list)
    modes: list[str | None] = field(default_factory=list)  # each row's --cases mode

    def cases_line(self) -> str:
        """The line above the table: which cases, e.g. the second and later actions."""
        modes = list(dict.fromkeys(self.modes)) or [None]
        if len(modes) == 1:
            flag = f" (--cases {modes[0]})" if modes[0] else ""
            where = f"Cases: {self.n_cases} in {self.n_sessions} sessions"
            return f"{where}, {describe_mode(modes[0])}{flag}."
        made = ", ".join(f"{_cell(r.label)} {m or '(not recorded)'}"
                         for r, m in zip(self.rows, self.modes, strict=True))  # fmt: skip
        return (
            f"Cases: {self.n_cases} in {self.n_sessions} sessions, the same in every eval but made "
            f"with different --cases ({made})."
        )

    def markdown(self) -> str:
        """The table, laid out like the paper's, between a line naming the cases and a footer
        line on the cases and intervals."""
        level = self.bootstrap[0]["level"] if len(self.bootstrap) == 1 else 0.95
        head = [
            "model",
            f"exact match, session avg [{level:.0%} CI]",
            "step exact match",
            "type macro-F1",
            "outcome F1",
            "unparsed / failed",
        ]
        if self.reference is not None:
            head += [f"Δ vs {_cell(self.reference)}", "McNemar p"]
        lines = [self.cases_line(), ""]
        lines += ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
        for row in self.rows:
            h = row.headline
            cells = [
                _cell(row.label),
                f"{_pct(h['value'])} [{_num(h['ci_low'])}, {_num(h['ci_high'])}]",
                _pct(row.metrics["exact_match"]["value"]),
                _pct(row.metrics["type_macro_f1"]),
                _pct(row.outcome_f1()),
                f"{row.metrics.get('unparsed', 0)} / {row.metrics.get('failed', 0)}",
            ]
            if self.reference is not None:
                cells += (
                    ["reference", "reference"]
                    if row.is_reference
                    else [_delta(row.delta_points, row.delta_relative), _p(row.mcnemar)]
                )
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", self._footer()]
        return "\n".join(lines)

    def _footer(self) -> str:
        boot = "; ".join(
            f"{b['level']:.0%} percentile bootstrap over {b['unit']}s, {b['n']} resamples, "
            f"seed {b['seed']}"
            for b in self.bootstrap
        )
        text = (
            f"{self.n_cases} cases in {self.n_sessions} sessions, the same in every eval "
            f"(case set {self.case_set[:12]}). Intervals: {boot or 'none'}."
        )
        if self.reference is not None:
            text += (
                f" Δ: session exact match minus {self.reference}'s, in points (relative change "
                "in %). McNemar: exact two-sided test on per-case exact match."
            )
        return text

    def to_json(self) -> dict[str, Any]:
        """The comparison as plain data (what ``--json`` prints)."""
        return {
            "case_set": self.case_set,
            "cases": self.modes[0] if len(set(self.modes)) == 1 else self.modes,
            "n_cases": self.n_cases,
            "n_sessions": self.n_sessions,
            "reference": self.reference,
            "bootstrap": self.bootstrap,
            "rows": [
                {
                    "label": row.label,
                    "folder": row.folder,
                    "model": row.model,
                    "reference": row.is_reference,
                    "session_exact_match": row.headline,
                    "exact_match": row.metrics["exact_match"],
                    "type_macro_f1": row.metrics["type_macro_f1"],
                    "outcome_f1": row.outcome_f1(),
                    "delta_points": row.delta_points,
                    "delta_relative": row.delta_relative,
                    "mcnemar": row.mcnemar._asdict() if row.mcnemar else None,
                }
                for row in self.rows
            ],
        }

    def write_chart(self, path: str | Path) -> Path:
        """A PNG bar chart of session exact match per model, the intervals as error bars."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        points = [
            [100 * (row.headline[key] or 0.0) for row in self.rows]
            for key in ("value", "ci_low", "ci_high")
        ]
        values = points[0]
        errors = [
            [v - low for v, low in zip(values, points[1], strict=True)],
            [high - v for v, high in zip(values, points[2], strict=True)],
        ]
        fig = Figure(figsize=(max(5.0, 1.4 * len(self.rows) + 1.5), 4.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        colors = ["#8c8c8c" if row.is_reference else "#4c72b0" for row in self.rows]
        bars = ax.bar(range(len(self.rows)), values, yerr=errors, capsize=4, color=colors)
        for bar, value, high in zip(bars, values, errors[1], strict=True):
            ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value + high),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=8)  # fmt: skip
        names = [f"{r.label}\n(reference)" if r.is_reference else r.label for r in self.rows]
        ax.set_xticks(range(len(self.rows)), names, fontsize=8)
        ax.set_ylabel("exact match, session average (%)")
        top = max((100 * (row.headline["ci_high"] or 0.0) for row in self.rows), default=0.0)
        ax.set_ylim(0, min(108.0, top * 1.15 + 3))
        level = self.bootstrap[0]["level"] if len(self.bootstrap) == 1 else 0.95
        ax.set_title(
            f"Next-action exact match ({level:.0%} intervals), {self.n_cases} cases", fontsize=10
        )
        ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, format="png")
        return path

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write compare.md and compare.png into ``out_dir`` (made if missing)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table = out / TABLE_FILE
        table.write_text(self.markdown() + "\n", encoding="utf-8")
        return table, self.write_chart(out / CHART_FILE)


def compare(
    folders: Sequence[str | Path],
    *,
    reference: str | Path | None = None,
    names: Sequence[str] | None = None,
) -> Comparison:
    """Compare the evals in ``folders`` (and ``reference``, added as a row if not listed).

    ``names`` (one per folder) go before each row's model label: `rationale run` names its arms.

    Raises RationaleError when they were not all run on the same test cases, saying how the
    case sets differ, or when one is missing or unfinished (see `load_eval`).
    """
    paths = [Path(f) for f in folders]
    if reference is not None and not any(_same(p, Path(reference)) for p in paths):
        paths.append(Path(reference))
    unique: list[Path] = []
    for p in paths:
        if not any(_same(p, q) for q in unique):
            unique.append(p)
    if not unique:
        raise RationaleError("no eval folders to compare: give at least one EVAL_DIR")
    evals = [(p, load_eval(p)) for p in unique]
    first_path, first = evals[0]
    digest = case_set_digest(first["cases"])
    for path, data in evals[1:]:
        if case_set_digest(data["cases"]) != digest:
            raise RationaleError(difference(first_path, first, path, data))
    labels = _labels(evals)
    if names is not None:
        if len(names) != len(folders):
            raise RationaleError(f"compare: {len(names)} names for {len(folders)} evals")
        named = {Path(f): n for f, n in zip(folders, names, strict=True)}
        plain = _model_names(evals)  # the arm's name tells two evals of one model apart
        labels = [f"{named[p]}: {name}" if p in named else label
                  for p, name, label in zip(unique, plain, labels, strict=True)]  # fmt: skip
    rows = [
        Row(
            label=label,
            folder=str(path),
            model=data.get("model") or {},
            metrics=data["metrics"],
            correct={case_key(r): bool(r.get("correct")) for r in data["cases"]},
            is_reference=reference is not None and _same(path, Path(reference)),
        )
        for label, (path, data) in zip(labels, evals, strict=True)
    ]
    ref = next((row for row in rows if row.is_reference), None)
    if ref is not None:
        rows = [row if row.is_reference else _against(row, ref) for row in rows]
    bootstrap: list[dict[str, Any]] = []
    for row in rows:
        b = row.metrics.get("bootstrap")
        if b and b not in bootstrap:
            bootstrap.append(b)
    return Comparison(
        rows=rows,
        case_set=digest,
        n_cases=len(first["cases"]),
        n_sessions=len({str(r["session_id"]) for r in first["cases"]}),
        reference=ref.label if ref else None,
        bootstrap=bootstrap,
        modes=[case_mode(data) for _, data in evals],
    )


def _against(row: Row, ref: Row) -> Row:
    """``row`` with its difference from the reference and McNemar's test against it."""
    value, base = row.headline["value"], ref.headline["value"]
    points = relative = None
    if value is not None and base is not None:
        points = 100 * (value - base)
        relative = 100 * (value - base) / base if base else None
    keys = sorted(ref.correct)
    test = mcnemar_exact([ref.correct[k] for k in keys], [row.correct[k] for k in keys])
    return dataclasses.replace(row, delta_points=points, delta_relative=relative, mcnemar=test)


def _model_names(evals: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    return [
        str((data.get("model") or {}).get("label") or (data.get("model") or {}).get("name") or p)
        for p, data in evals
    ]


def _labels(evals: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """Each eval's model label; a label two evals share gets its folder's name added."""
    names = _model_names(evals)
    return [
        f"{name} ({p.name or p})" if names.count(name) > 1 else name
        for name, (p, _) in zip(names, evals, strict=True)
    ]


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name the same eval (a folder and its eval.json are the same)."""

    def file(p: Path) -> Path:
        return (p if p.is_file() else p / EVAL_FILE).resolve()

    return file(a) == file(b)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _delta(points: float | None, relative: float | None) -> str:
    if points is None:
        return "—"
    rel = f" ({relative:+.1f}%)" if relative is not None else ""
    return f"{points:+.1f} pts{rel}"


def _p(test: McNemar | None) -> str:
    if test is None:
        return "—"
    return "<0.001" if test.p_value < 0.001 else f"{test.p_value:.3f}"


__all__ = ["CHART_FILE", "TABLE_FILE", "Comparison", "Row", "compare", "load_eval"]
