"""`rationale merge`: the shard runs of one job (``--shard K/N``) joined into one folder.

Synth and filter run folders, or eval folders: each must be finished, and all must be one job
(`rationale.merge_checks`): every shard 1..N once, the same settings but the operational ones,
the input they were cut from unchanged, and together every step of it (an eval: every case).
Anything else is refused with a message that names the shard that is missing or given twice,
the setting that differs, or the steps that are missing. The merged folder reads as an
unsharded run's: `rationale report`, `distill`, `export-sft` and `compare` take it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rationale.errors import RationaleError
from rationale.merge_checks import check_coverage, check_input, check_shards, eval_cases, run_steps
from rationale.rundir import STATES, read_lines, read_run_json, read_synth_records, write_json

__all__ = ["MergeResult", "merge"]


@dataclass(frozen=True)
class MergeResult:
    """What `merge` wrote: the folder, its kind (run or eval), how many shards and records."""

    output: Path
    kind: str
    shards: int
    records: int


def merge(folders: list[str | Path], output: str | Path) -> MergeResult:
    """Join the shard folders into ``output`` (a new folder); see the module docstring."""
    paths = [Path(f) for f in folders]
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise RationaleError(f"{output}: not empty; merge writes a new folder, use a new -o")
    if all((p / "eval.json").is_file() for p in paths):
        return _merge_evals(paths, output)
    if all((p / "run.json").is_file() for p in paths):
        return _merge_runs(paths, output)
    odd = next(
        p for p in paths if not (p / "run.json").is_file() and not (p / "eval.json").is_file()
    )
    raise RationaleError(
        f"{odd}: neither a run folder (run.json) nor an eval folder (eval.json); merge takes the "
        "shard folders of one synth, filter or eval job"
    )


def _merge_runs(paths: list[Path], output: Path) -> MergeResult:
    """Synth or filter shard runs: the three record files, the ledgers, run.json, the report."""
    from rationale.report import build_report, write_chart
    from rationale.rundir import ledger_totals

    infos = [read_run_json(p) or {} for p in paths]
    n = check_shards(paths, infos, infos[0].get("command", "run"))
    records_file = Path(infos[0].get("records_file") or infos[0]["config"]["input"])
    check_input(paths, infos, records_file, [i.get("records_file_sha256") for i in infos])
    seen: dict[tuple[str, int], Path] = {}
    lines: dict[str, list[str]] = {state: [] for state in STATES}
    for path in paths:
        for state in STATES:
            for _, rec in read_synth_records(path / f"{state}.jsonl"):
                if rec.key in seen:
                    raise RationaleError(
                        f"session {rec.key[0]!r} step {rec.key[1]} is in {seen[rec.key]} and "
                        f"{path}: the shards overlap"
                    )
                seen[rec.key] = path
                lines[state].append(rec.model_dump_json())
    limits = [i.get("config", {}).get("limit") for i in infos]
    check_coverage(seen, run_steps(infos[0], records_file), "steps", str(records_file), limits)
    output.mkdir(parents=True, exist_ok=True)
    try:
        for state in STATES:
            (output / f"{state}.jsonl").write_text("".join(x + "\n" for x in lines[state]))
        ledger = "".join(
            line + "\n" for p in paths for _, line in read_lines(p / "ledger.jsonl")
        )  # fmt: skip
        (output / "ledger.jsonl").write_text(ledger)
        spent = ledger_totals(output / "ledger.jsonl")
        report = build_report(output)
        write_chart(report, output / "acceptance.png")
        base = infos[0]
        counts = {state: len(lines[state]) for state in STATES}
        data = {
            **base,
            # the whole input (checked above), whatever --limit each shard stayed within
            "config": {
                **base.get("config", {}),
                "output": str(output.resolve()),
                "shard": None,
                "limit": None,
            },
            "identity": {**base["identity"], "shard": None},
            "records": sum(counts.values()),
            "counts": counts,
            "pending": 0,
            "cost_usd": {
                **base.get("cost_usd", {}),
                "total": round(float(spent["cost_usd"]), 8),
                "this_invocation": 0.0,
            },
            "requests": {**base.get("requests", {}), "total": spent["requests"]},
            "wall_s": round(sum(i.get("wall_s") or 0 for i in infos), 3),
            "stopped": None,
            "report": report,
            "merged_from": [str(p.resolve()) for p in paths],
        }
        data.pop("batch", None)
        write_json(output / "run.json", data)
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)  # never half a merge
        raise
    return MergeResult(output, "run", n, sum(counts.values()))


def _merge_evals(paths: list[Path], output: Path) -> MergeResult:
    """Eval shard folders: the cases, scored again as one set, and the ledgers."""
    from rationale.rundir import ledger_totals
    from rationale.schema import ActionSpace
    from rationale.scoring import case_set_digest, score, write_type_chart

    infos = [json.loads((p / "eval.json").read_text(encoding="utf-8")) for p in paths]
    n = check_shards(paths, infos, "eval")
    data_file = Path(infos[0]["config"]["data"])
    check_input(paths, infos, data_file, [i["identity"].get("data_digest") for i in infos])
    seen: dict[tuple[str, int], Path] = {}
    cases: list[dict[str, Any]] = []
    for path, info in zip(paths, infos, strict=True):
        for case in info.get("cases") or []:
            key = (case["session_id"], case["step"])
            if key in seen:
                raise RationaleError(
                    f"session {key[0]!r} step {key[1]} is in {seen[key]} and {path}: the shards "
                    "overlap"
                )
            seen[key] = path
            cases.append(case)
    base = infos[0]
    config = base.get("config", {})
    where = f"{data_file} (--cases {config.get('cases', 'from-second')})"
    limits = [i.get("config", {}).get("limit") for i in infos]
    check_coverage(seen, eval_cases(config), "cases", where, limits)
    config = {**config, "limit": None}  # the whole case set (checked above)
    space = ActionSpace.from_declaration(base["action_space"]) if base.get("action_space") else None
    metrics = score(cases, space, seed=config.get("seed", 0), n_boot=config.get("bootstrap", 1000))
    output.mkdir(parents=True, exist_ok=True)
    try:
        (output / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
        ledger = "".join(line + "\n" for p in paths for _, line in read_lines(p / "ledger.jsonl"))
        (output / "ledger.jsonl").write_text(ledger)
        spent = ledger_totals(output / "ledger.jsonl")
        usage = {**base.get("usage", {}),
                 "prompt_tokens": sum(c.get("prompt_tokens") or 0 for c in cases),
                 "completion_tokens": sum(c.get("completion_tokens") or 0 for c in cases),
                 "cost_usd": round(float(spent["cost_usd"]), 8),
                 "requests": int(spent["requests"])}  # fmt: skip
        data = {
            **base,
            "config": {**config, "output": str(output.resolve()), "shard": None},
            "identity": {**base["identity"], "shard": None},
            "data": {**base.get("data", {}), "limit": None},
            "case_set": case_set_digest(cases),
            "n_cases": len(cases),
            "pending": 0,
            "failed": sum(i.get("failed") or 0 for i in infos),
            "metrics": metrics,
            "usage": usage,
            "stopped": None,
            "cases": cases,
            "merged_from": [str(p.resolve()) for p in paths],
        }
        data.pop("batch", None)
        write_json(output / "eval.json", data, ensure_ascii=False)
        write_type_chart(metrics, output / "per_type.png", str(base.get("model", {}).get("label")
                                                                 or "merged"))  # fmt: skip
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise
    return MergeResult(output, "eval", n, len(cases))
