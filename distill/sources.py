"""The training data's source: the accepted rationales of a run folder or a JSONL file.

`read_accepted` finds, for `distill.data.SFTData`, each accepted rationale by (session, step),
the record file the steps' history is read from, the action space the run declared, and what
is known of where the rationales came from (a local teacher, or no blind verifier), which
`SFTData.caveats` reports.

A run folder gives its ``accepted.jsonl`` and its own record file. A JSONL file may hold
synthesis lines (the accepted ones are used) or plain records that carry a human-written
rationale; its records are copied under the state folder, and the history comes from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import DistillError


@dataclass
class Accepted:
    """What a source holds for training, and what is known of where its rationales came from."""

    rationales: dict[tuple[str, int], str]  # (session_id, step) -> accepted rationale
    history_source: str  # the record file the steps and their history are read from
    action_space: str | None = None  # the action-space file the run declared, if any
    input_on_error: str = "fail"  # "skip" when the run left out its input's bad sessions
    local_teachers: set[str] = field(default_factory=set)  # local teachers' names
    unverified: set[tuple[str, int]] = field(default_factory=set)  # keys no verifier checked


def read_accepted(
    data: Path, *, on_error: str, skipped: list[str], action_space: str | None = None
) -> Accepted:
    """The accepted rationales of a run folder or a JSONL file.

    With ``on_error="skip"`` a bad line is left out and described in ``skipped``; otherwise it
    raises `DistillError`, as does a missing source.
    """
    if data.is_dir():
        return _from_run(data, on_error=on_error, skipped=skipped)
    if not data.is_file():
        raise DistillError(f"{data}: no such file or run folder")
    return _from_file(data, on_error=on_error, skipped=skipped, action_space=action_space)


def _from_run(data: Path, *, on_error: str, skipped: list[str]) -> Accepted:
    from rationale.rundir import read_run_json, read_synth_records, run_records_file

    accepted = data / "accepted.jsonl"
    if not accepted.exists():
        raise DistillError(f"{data}: no accepted.jsonl (run rationale synth first)")
    run = read_run_json(data) or {}
    config = run.get("config", {})
    out = Accepted(
        rationales={},
        history_source=str(run_records_file(data)),  # synth or filter run: its record file
        action_space=config.get("action_space"),
        # the run left out its input's bad sessions: so does the training data
        input_on_error="skip"
        if "skip" in (config.get("on_error"), run.get("records_file_on_error"))
        else on_error,
    )
    for _, rec in read_synth_records(accepted, on_error=on_error, skipped=skipped):
        if rec.state == "accepted" and rec.rationale:
            out.rationales[rec.key] = rec.rationale
            _note_origin(out, rec)
    teacher = str(config.get("teacher") or "")
    if teacher == "local" or teacher.startswith("local:"):
        out.local_teachers.add(teacher)
    if "verification" in run and not (run["verification"] or {}).get("verifier"):
        out.unverified.update(out.rationales)  # the run had no verifier
    return out


def _from_file(
    data: Path, *, on_error: str, skipped: list[str], action_space: str | None = None
) -> Accepted:
    """Synthesis lines (accepted ones are used) or plain records with a human rationale.

    Each line is checked here, so an error names the user's file and line (not the copy that
    histories are indexed from): bad JSON or UTF-8, a record that is not valid, a step twice.
    """
    import hashlib

    from rationale.errors import RationaleError
    from rationale.paths import state_dir
    from rationale.records import parse_record
    from rationale.schema import ActionSpace, SynthRecord

    space = ActionSpace.from_file(action_space) if action_space else ActionSpace.default()
    rationales: dict[tuple[str, int], str] = {}
    out = Accepted(rationales=rationales, history_source="", input_on_error=on_error)
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for n, raw in enumerate(data.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            is_synth = b'"state"' in raw and b'"record"' in raw
            rec = SynthRecord.model_validate_json(raw) if is_synth else None
            body = json.dumps(rec.record).encode() if rec is not None else raw
            record = parse_record(body, path=str(data), line=n, space=space)
            key = (record.session_id, record.step)
            if key in records:
                raise ValueError(f"session {key[0]!r} step {key[1]} is there twice")
            records[key] = record.dump()
            text = rec.rationale if rec is not None and rec.state == "accepted" else None
            if rec is None:
                text = record.rationale  # a human-written one
            elif text:
                _note_origin(out, rec)
            if text:
                rationales[key] = text
        except (RationaleError, ValueError, TypeError, RecursionError) as exc:
            first = (str(exc).splitlines() or [""])[0][:300]
            problem = first if first.startswith(str(data)) else f"{data} line {n}: {first}"
            if on_error != "skip":
                raise DistillError(f"{problem} (use --on-error skip to leave it out)") from None
            skipped.append(problem)
    # History comes from the records in the file itself, copied where RecordFile can index them.
    digest = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:24]
    source = state_dir() / "distill-inputs" / f"{digest}.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "w", encoding="utf-8") as f:
        for r in records.values():
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    out.history_source = str(source)
    out.action_space = action_space
    return out


def _note_origin(out: Accepted, rec: Any) -> None:
    """Note a local teacher, or a missing verification, on an accepted synthesis record."""
    chosen = next((c for c in rec.candidates if c.state == "accepted"
                   and c.rationale == rec.rationale), None)  # fmt: skip
    provenance = rec.provenance or (chosen.provenance if chosen else None)
    if provenance is not None and provenance.teacher.startswith("local/"):
        out.local_teachers.add(provenance.teacher.split("@")[0])  # drop the fingerprint
    if chosen is not None and chosen.verification is None:
        out.unverified.add(rec.key)
