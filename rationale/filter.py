"""`rationale filter`: judge the rationales of an earlier run with the rules and the blind
verifier, into a new run folder. No teacher is called.

The source is a run folder or a synth JSONL. Its accepted candidates are judged again, in order
(``--keep first`` stops at the first that passes); records that were rejected or failed are
carried over unchanged; every candidate the source had stays on the line. The new run.json names
the record file the source run read, so ``synth -> filter -> distill`` builds the same histories.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rationale.batch_engine import make_engine
from rationale.errors import RationaleError
from rationale.judging import Judge, outcome
from rationale.rundir import STATES, RunDir, SynthConfig, read_run_json, read_synth_records
from rationale.runner import RunSummary, count_context_cut, run_job
from rationale.schema import Candidate, SynthRecord
from rationale.shards import parse_shard, shard_of


def run_filter(config: SynthConfig, *, retry_policy: Any = None) -> RunSummary:
    """Judge an earlier run's rationales (see the module docstring); returns a `RunSummary`."""
    if config.dry_run:
        raise RationaleError("rationale filter has no --dry-run")
    return asyncio.run(run_job(FilterJob(config, retry_policy)))


class FilterJob:
    """The filter job on the shared engine: candidates come from the source, not a teacher."""

    label = "filter"

    def __init__(self, config: SynthConfig, retry_policy: Any) -> None:
        from rationale.prompts import load_template
        from rationale.records import RecordFile
        from rationale.schema import ActionSpace
        from rationale.synth import make_client

        source = Path(config.input)
        files = [source / f"{s}.jsonl" for s in STATES] if source.is_dir() else [source]
        self.source: dict[tuple[str, int], SynthRecord] = {}
        self.skipped_lines: list[str] = []
        where: dict[tuple[str, int], str] = {}
        for file in files:  # another run's files: read only, never repaired
            for line_no, rec in read_synth_records(
                file, on_error=config.on_error, skipped=self.skipped_lines
            ):
                if rec.key in self.source:  # which one to judge? never keep the last silently
                    problem = (
                        f"{file} line {line_no}: session {rec.key[0]!r} step {rec.key[1]} is "
                        f"already at {where[rec.key]}"
                    )
                    if config.on_error != "skip":
                        raise RationaleError(f"{problem}; remove one of them")
                    self.skipped_lines.append(problem)
                    continue
                self.source[rec.key] = rec
                where[rec.key] = f"{file} line {line_no}"
        if not self.source:
            raise RationaleError(f"{source}: no synthesis records to filter")
        before_run = read_run_json(source) if source.is_dir() else None
        before: dict[str, Any] = (before_run or {}).get("config", {})
        updates: dict[str, Any] = {}
        if config.template is None and before.get("template"):
            updates["template"] = before["template"]
        if config.action_space is None and before.get("action_space"):
            updates["action_space"] = before["action_space"]
        verifier = config.verifier
        if verifier == "auto":
            verifier = before.get("teacher") or "none"
        if verifier in ("none", "local") or verifier.startswith("local:"):
            raise RationaleError(
                "rationale filter needs a verifier model: give --verifier MODEL "
                "(a local 135M model cannot verify)"
            )
        updates.update(teacher=verifier, verifier=verifier, samples=1, max_attempts=1)
        self.config = config = config.model_copy(update=updates)
        self.space = (
            ActionSpace.from_file(config.action_space)
            if config.action_space
            else ActionSpace.default()
        )
        self.records_file = self._history_source(before_run, files)
        # a source run made with --on-error skip left its input's bad sessions out: so do we
        self.input_on_error = "skip" if before.get("on_error") == "skip" else config.on_error
        shard = parse_shard(config.shard)
        if shard is not None:  # the source's records of this shard only
            self.source = {
                k: r for k, r in self.source.items() if shard_of(k[0], shard[1]) == shard[0]
            }
        self.records = RecordFile(self.records_file, space=self.space, on_error=self.input_on_error,
                                  shard=shard)  # fmt: skip
        self.template = load_template(config.template)
        self.verifier_template = load_template(config.verifier_template or "verifier")
        self.source_path = str(source.resolve())
        self.run_dir = RunDir(config.output)
        self.engine = make_engine(config, self.run_dir, retry_policy=retry_policy)
        self.verifier_client = make_client(verifier, config, api_base=config.api_base)
        self.judge = Judge(
            config, self.engine, space=self.space, teacher_template=self.template,
            verifier=self.engine.limited(self.verifier_client, "verifier"),
            verifier_template=self.verifier_template,
        )  # fmt: skip
        self.rationales = {k: r.rationale for k, r in self.source.items() if r.rationale}

    def _history_source(self, before_run: dict[str, Any] | None, files: list[Path]) -> str:
        """The record file histories come from: the source run's own input when it is still
        there (so earlier steps that were not synthesized count), else the records carried in
        the source's lines, written once to the state folder."""
        from rationale.paths import state_dir
        from rationale.records import write_records

        if before_run is not None:
            named = before_run.get("records_file") or before_run.get("config", {}).get("input")
            if named and Path(named).is_file():
                return str(Path(named).resolve())
        path = state_dir() / "filter-inputs" / f"{_digest_of(files)}.jsonl"
        if not path.is_file():
            model = self.space.record_model
            write_records(path, (model.model_validate(r.record) for r in self.source.values()))
        return str(path)

    # -- what the runner needs ----------------------------------------------------------------

    def check(self) -> None:
        """Every source record must be a step of the input its history comes from, or it
        would vanish from the output; ``--max-cost`` needs the verifier's price."""
        steps = set(self.records.step_keys())
        missing = [k for k in self.source if k not in steps]
        if missing:
            shown = ", ".join(f"{s!r} step {n}" for s, n in missing[:3])
            problem = (
                f"{len(missing)} records of {self.source_path} are not steps of "
                f"{self.records_file} (changed since the run?), e.g. {shown}"
            )
            if self.config.on_error != "skip":
                raise RationaleError(
                    f"{problem}; restore the input, or --on-error skip to leave them out"
                )
            self.skipped_lines += [f"{problem}: left out"]
            for key in missing:
                del self.source[key]
        if self.config.max_cost is not None and self.verifier_client.price(1, 1) is None:
            raise RationaleError(
                f"the price of the verifier {self.verifier_client.model_id!r} is not in "
                "litellm's price map, so --max-cost cannot be enforced; drop --max-cost or use "
                "a priced model"
            )

    def identity(self) -> dict[str, Any]:
        from rationale.identity import endpoint

        return {
            "input": self.source_path,
            "verifier": self.verifier_client.model_id,
            "verifier_endpoint": endpoint(getattr(self.verifier_client, "endpoint_url", None)),
            "verifier_template_version": self.verifier_template.version,
            "seed": self.config.seed,
            "history_rationales": self.config.history_rationales,
            "shard": self.config.shard,
            **self.judge.identity(),
        }

    def describe(self) -> dict[str, Any]:
        t = self.template
        return {"name": t.name, "version": t.version, "path": str(t.path)}

    def price_known(self) -> bool:
        return self.verifier_client.price(1, 1) is not None

    def keys(self) -> list[tuple[str, int]]:
        return [k for k in self.records.step_keys() if k in self.source]

    def items(self, done: dict[tuple[str, int], str]) -> Iterator[Any]:
        from rationale.sessions import fill_rationales

        steps = self.records.steps(with_rationales=self.config.history_rationales)
        for step in steps:
            key = (step.record.session_id, step.record.step)
            if key in self.source and key not in done:
                if self.config.history_rationales:
                    step = fill_rationales(step, self.rationales)
                yield step

    async def aclose(self) -> None:
        await self.verifier_client.aclose()

    # -- one record -----------------------------------------------------------------------------

    async def process(self, step: Any) -> bool:
        """Judge the source's accepted candidates in order; carry anything else over."""
        src = self.source[(step.record.session_id, step.record.step)]
        if src.state != "accepted":
            self._file(src)
            return True
        from rationale.context import cut_context

        # the verifier's prompts are blind: their cut is the one counted
        blind = cut_context(step.record.context, self.config.max_context_tokens)
        count_context_cut(self.engine.tally, step.record, blind, self.config.max_context_tokens)
        given = src.candidates or [
            Candidate(rationale=src.rationale, state="accepted", provenance=src.provenance)
        ]
        judged: list[Candidate] = []
        untried: list[Candidate] = []
        for old in given:
            if old.state != "accepted":
                continue
            if judged and (
                judged[-1].state == "failed"
                or (judged[-1].state == "accepted" and self.config.keep == "first")
            ):
                untried.append(old.model_copy(update={
                    "state": "rejected", "verification": None,
                    "reasons": ["filter: not judged (an earlier candidate settled the record)"],
                }))  # fmt: skip
                continue
            judged.append(
                await self.judge.judge(step, old.rationale, old.sample, old.round, old.provenance)
            )
        rec = outcome(step.record, judged, src.context_cut_tokens)
        # every candidate the source had stays: its rejected and failed ones as they were
        carried = [c for c in given if c.state != "accepted"]
        self._file(rec.model_copy(update={"candidates": carried + judged + untried}))
        return True

    def _file(self, rec: SynthRecord) -> None:
        self.run_dir.append(rec, now=False)
        self.engine.tally.states[rec.state] += 1


def _digest_of(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        if f.exists():
            st = f.stat()
            digest.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]
