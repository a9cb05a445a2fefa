"""rationale.compare and `rationale compare`: evals of the same cases side by side (the table's
numbers against hand-computed ones and metrics.mcnemar_exact), refusals of different case sets
and of unfinished evals, --json and the files written with -o."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from rationale.cli import main
from rationale.compare import compare, load_eval
from rationale.errors import RationaleError
from rationale.metrics import mcnemar_exact
from rationale.scoring import case_set_digest, score

PNG = b"\x89PNG\r\n\x1a\n"
# 4 sessions of unequal length (1, 2, 3 and 6 steps; cases 0 | 1-2 | 3-5 | 6-11), so the session
# average and the step average differ.
LENGTHS = {"s0": 1, "s1": 2, "s2": 3, "s3": 6}
KEYS = [(sid, step) for sid, n in LENGTHS.items() for step in range(n)]


def run(*args: str) -> Result:
    """`rationale ARGS`, in-process through the command group (its error handling included)."""
    return CliRunner().invoke(main, list(args))


def truth(sid: str, step: int) -> dict:
    return {"type": "click", "name": f"{sid}.button_{step}"}


def records(correct: set[int], keys: list[tuple[str, int]] = KEYS, truths=truth) -> list[dict]:
    """Case records of a model that is right on the cases numbered in ``correct``."""
    out = []
    for i, (sid, step) in enumerate(keys):
        t = truths(sid, step)
        pred = t if i in correct else {"type": "click", "name": "somewhere.else"}
        out.append({
            "session_id": sid, "step": step, "last": step == LENGTHS[sid] - 1, "truth": t,
            "status": "ok",
            "prediction": pred, "correct": i in correct, "type_correct": True,
        })  # fmt: skip
    return out


def write_eval(
    folder: Path, label: str, recs: list[dict], pending: int = 0, mode: str = "from-second"
) -> Path:
    """An eval folder as `rationale eval` leaves it (the fields compare reads)."""
    folder.mkdir(parents=True)
    data = {
        "schema_version": 1, "command": "eval",
        "data": {"file": "test.jsonl", "cases": mode, "limit": None},
        "model": {"name": f"models/{label}", "label": label, "kind": "local"},
        "case_set": case_set_digest(recs), "n_cases": len(recs), "pending": pending,
        "failed": 0, "metrics": score(recs, seed=0, n_boot=200), "stopped": None, "cases": recs,
    }  # fmt: skip
    (folder / "eval.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


@pytest.fixture
def evals(tmp_path: Path) -> dict[str, Path]:
    """Per step: base right on cases 0-2 (25%), student on 0-8 (75%), other on 3-5 (25%).
    Per session (s0, s1, s2, s3): base 1, 1, 0, 0 (50%); student 1, 1, 1, 1/2 (87.5%); other
    0, 0, 1, 0 (25%)."""
    return {
        "base": write_eval(tmp_path / "base", "base", records({0, 1, 2})),
        "student": write_eval(tmp_path / "student", "student", records(set(range(9)))),
        "other": write_eval(tmp_path / "other", "other", records({3, 4, 5})),
    }


def cells(table: str, label: str) -> list[str]:
    row = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def test_table_numbers_by_hand(evals: dict[str, Path]) -> None:
    result = compare([evals["student"], evals["other"]], reference=evals["base"])
    assert [r.label for r in result.rows] == ["student", "other", "base"]  # reference added last
    table = result.markdown()
    student, other, base = (cells(table, x) for x in ("student", "other", "base"))
    assert student[1].startswith("87.5% [") and student[2] == "75.0%"
    assert base[1].startswith("50.0% [") and base[2] == "25.0%"
    assert base[6:] == ["reference", "reference"]
    # Δ is of the session average (the headline), not the step average (+50 pts, +200%):
    # 87.5% - 50% = +37.5 points, +75% relative. Discordant: 6 cases only the student gets,
    # none the other way, so p = 2 / 2**6.
    assert student[6] == "+37.5 pts (+75.0%)"
    assert student[7] == "0.031"
    assert mcnemar_exact([i < 3 for i in range(12)], [i < 9 for i in range(12)]).p_value == 2 / 64
    # The same step accuracy on other cases, but half the session average: 25% - 50%; 3
    # discordant cases each way, p = min(1, 2 * 42/64) = 1.
    assert other[6] == "-25.0 pts (-50.0%)" and other[7] == "1.000"
    assert result.rows[0].delta_points == pytest.approx(37.5)
    assert result.rows[1].delta_points == pytest.approx(-25.0)
    assert result.rows[0].mcnemar == (2 / 64, 6, 0)
    assert "12 cases in 4 sessions" in table and "200 resamples, seed 0" in table
    assert table.splitlines()[0] == (
        "Cases: 12 in 4 sessions, second and later actions (--cases from-second)."
    )
    # The outcome is a click at every last step here: no outcome, shown as a dash.
    assert student[4] == "—" and student[5] == "0 / 0"


def test_without_reference_no_difference_columns(evals: dict[str, Path]) -> None:
    result = compare([evals["base"], evals["student"]])
    assert result.reference is None
    assert "McNemar" not in result.markdown()
    assert all(row["mcnemar"] is None for row in result.to_json()["rows"])


def test_refuses_a_different_case_set(evals: dict[str, Path], tmp_path: Path) -> None:
    fewer = write_eval(tmp_path / "fewer", "fewer", records({0}, keys=KEYS[:6]))
    with pytest.raises(RationaleError) as err:
        compare([evals["base"], fewer])
    message = str(err.value)
    assert str(evals["base"]) in message and str(fewer) in message
    assert "12 cases in 4 sessions vs 6 in 3" in message
    assert "6 cases only in" in message and "'s3' step 0" in message
    assert "different --cases" not in message  # both from-second: the files differ
    every = write_eval(tmp_path / "every", "every", records({0}, keys=KEYS[:6]), mode="all")
    with pytest.raises(RationaleError, match=r"with different --cases: .*base from-second "
                       r"\(second and later actions\), .*every all \(every action\)"):  # fmt: skip
        compare([evals["base"], every])

    def other_truth(sid: str, step: int) -> dict:
        return {
            "type": "click",
            "name": f"{sid}.link_{step}" if sid == "s2" else f"{sid}.button_{step}",
        }

    moved = write_eval(tmp_path / "moved", "moved", records({0}, truths=other_truth))
    with pytest.raises(RationaleError, match="same keys but different true actions"):
        compare([evals["base"], moved])


def test_same_cases_made_with_different_modes_are_named(
    evals: dict[str, Path], tmp_path: Path
) -> None:
    """A test file without first steps, evaluated with --cases all, gives the same case set as
    --cases from-second on the full file: compared, but the table's first line says so."""
    cut = write_eval(tmp_path / "cut", "cut", records({0, 1}), mode="all")
    result = compare([evals["base"], cut])
    first = result.markdown().splitlines()[0]
    assert first == (
        "Cases: 12 in 4 sessions, the same in every eval but made with different --cases "
        "(base from-second, cut all)."
    )
    assert result.to_json()["cases"] == ["from-second", "all"]
    assert compare([evals["base"], evals["student"]]).to_json()["cases"] == "from-second"


def test_refuses_an_unfinished_or_missing_eval(evals: dict[str, Path], tmp_path: Path) -> None:
    half = write_eval(tmp_path / "half", "half", records({0}), pending=5)
    with pytest.raises(RationaleError, match=r"5 cases pending.*rerun the same `rationale eval`"):
        compare([evals["base"], half])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RationaleError, match=r"empty: no eval\.json"):
        load_eval(tmp_path / "empty")


def test_same_label_twice_gets_the_folder_name(evals: dict[str, Path], tmp_path: Path) -> None:
    again = write_eval(tmp_path / "base_rerun", "base", records({0, 1, 2}))
    labels = [r.label for r in compare([evals["base"], again]).rows]
    assert labels == ["base (base)", "base (base_rerun)"]


def test_compare_cli_writes_table_and_chart(evals: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = run(
        "compare", str(evals["student"]), str(evals["other"]), "--reference", str(evals["base"]),
        "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert cells(result.stdout, "student")[6] == "+37.5 pts (+75.0%)"
    assert (out / "compare.md").read_text(encoding="utf-8").strip() == result.stdout.strip()
    assert (out / "compare.png").read_bytes().startswith(PNG)
    assert "compare.png" in result.stderr and "compare.png" not in result.stdout

    as_json = run("compare", str(evals["base"]), str(evals["student"]), "--json")
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert [row["label"] for row in data["rows"]] == ["base", "student"]
    assert data["rows"][1]["session_exact_match"]["value"] == pytest.approx(0.875)
    assert data["n_cases"] == 12 and data["reference"] is None

    fewer = write_eval(tmp_path / "fewer", "fewer", records({0}, keys=KEYS[:6]))
    refused = run("compare", str(evals["base"]), str(fewer))
    assert refused.exit_code == 1 and "different test cases" in refused.stderr
    assert "Traceback" not in refused.output
