"""`rationale synth`: render each step, ask the teacher why, judge the answer, file it.

The run folder, resuming and ``--retry-failed`` are `rationale.rundir` and `rationale.runner`;
queue, limits, retries, cache and budget are `rationale.engine`; the rules and the blind verifier
are `rationale.judging`. This module is the job: which steps, the teacher's prompt, the rounds of
candidates per record (``--samples``, then regeneration with feedback up to ``--max-attempts``),
and ``--dry-run``'s estimate.

With ``--history-rationales`` each step's history carries the earlier steps' rationales: the
human-written one where the log has it, else the one this run accepted. A step then waits for
the earlier steps of its session, so its prompt is the same whatever the concurrency.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rationale.batch_engine import make_engine
from rationale.errors import RationaleError, TeacherError
from rationale.identity import endpoint
from rationale.judging import Judge, outcome, regeneration
from rationale.rundir import RunDir, SynthConfig
from rationale.runner import RunSummary, count_context_cut, run_job
from rationale.schema import Candidate, Provenance, SynthError
from rationale.shards import parse_shard

__all__ = ["SynthConfig", "SynthSummary", "run_synth"]

SynthSummary = RunSummary  # the name the library has exported since the first release


@dataclass(frozen=True)
class _Prepared:
    """A step made ready for its requests: rendered prompt, context cut, first-round keys.
    ``prompt`` is None while the step waits for its history (``--history-rationales``)."""

    step: Any
    prompt: Any = None
    cut: Any = None
    keys: dict[int, tuple[str, str]] | None = None


def run_synth(config: SynthConfig, *, teacher: Any = None, retry_policy: Any = None) -> Any:
    """Run (or resume) a synthesis; returns a `SynthSummary`, or the estimate for a dry run.

    ``teacher`` may be injected (any `rationale.teacher.Teacher`); by default it is built from
    ``config.teacher``.
    """
    job = SynthJob(config, teacher, retry_policy)
    if config.dry_run:
        return job.estimate()
    return asyncio.run(run_job(job))


def make_client(name: str, config: SynthConfig, *, api_base: str | None) -> Any:
    from rationale.teacher import make_teacher

    return make_teacher(name, api_base=api_base, timeout=config.timeout, client=config.client)


def verifier_name(config: SynthConfig) -> str | None:
    """The verifier model, or None when the consistency check is off."""
    if config.verifier == "none":
        return None
    if config.verifier == "auto":
        return None if config.teacher.startswith("local") else config.teacher
    return config.verifier


class SynthJob:
    """The synth job on the shared engine (see the module docstring)."""

    label = "synth"

    def __init__(self, config: SynthConfig, teacher: Any, retry_policy: Any) -> None:
        from rationale.prompts import count_tokens, load_template
        from rationale.records import RecordFile
        from rationale.schema import ActionSpace

        if config.samples > 1 and config.temperature == 0:
            raise RationaleError(
                "--samples above 1 needs --temperature above 0, or every sample is the same"
            )
        self.config = config
        self.space = (
            ActionSpace.from_file(config.action_space)
            if config.action_space
            else ActionSpace.default()
        )
        self.records_file = config.input
        self.input_on_error = config.on_error
        self.records = RecordFile(config.input, space=self.space, on_error=config.on_error,
                                  shard=parse_shard(config.shard))  # fmt: skip
        self.template = load_template(config.template)
        self.verifier_template = load_template(config.verifier_template or "verifier")
        count_tokens("")  # load the tokenizer now (~0.3 s), not inside the timed loop
        self.run_dir = RunDir(config.output)
        self.engine = make_engine(config, self.run_dir, retry_policy=retry_policy)
        self.teacher = teacher or make_client(config.teacher, config, api_base=config.api_base)
        name = verifier_name(config)
        if name is None:
            self.verifier_client = None
        elif name == config.teacher:
            self.verifier_client = self.teacher
        else:
            same_provider = name.split("/")[0] == config.teacher.split("/")[0]
            api_base = config.api_base if same_provider else None
            self.verifier_client = make_client(name, config, api_base=api_base)
        self.limited = self.engine.limited(self.teacher, "teacher")
        verifier = self.engine.limited(self.verifier_client, "verifier") if name else None
        self.judge = Judge(
            config, self.engine, space=self.space, teacher_template=self.template,
            verifier=verifier, verifier_template=self.verifier_template,
        )  # fmt: skip
        self.rationales: dict[tuple[str, int], str] = {}
        self.finished: dict[tuple[str, int], asyncio.Event] = {}
        self.settled: set[tuple[str, int]] = set()  # of `finished`: the ones filed

    # -- what the runner needs ----------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        return {
            "input": str(Path(self.config.input).resolve()),
            "teacher": self.teacher.model_id,
            "teacher_endpoint": endpoint(getattr(self.teacher, "endpoint_url", None)),
            "template_version": self.template.version,
            "seed": self.config.seed,
            "history_rationales": self.config.history_rationales,
            "shard": self.config.shard,
            **self.judge.identity(),
            "verifier": self.verifier_client.model_id if self.verifier_client else None,
            "verifier_endpoint": endpoint(getattr(self.verifier_client, "endpoint_url", None)),
            "verifier_template_version": (
                self.verifier_template.version if self.verifier_client else None
            ),
        }

    def describe(self) -> dict[str, Any]:
        t = self.template
        return {"name": t.name, "version": t.version, "path": str(t.path)}

    def price_known(self) -> bool:
        clients = [self.teacher] + ([self.verifier_client] if self.verifier_client else [])
        return all(c.price(1, 1) is not None for c in clients)

    def check(self) -> None:
        """Before the run folder is touched: ``--max-cost`` needs a price for every model the
        run pays for (never count an unknown price as zero); say when nothing verifies."""
        if self.config.verifier == "auto" and self.config.teacher.startswith("local"):
            print(
                "warning: a 135M local model cannot verify rationales, so the blind "
                "consistency check is off (--verifier MODEL to turn it on)",
                file=sys.stderr,
            )
        if self.config.max_cost is None:
            return
        for role, client in (("teacher", self.teacher), ("verifier", self.verifier_client)):
            if client is not None and client.price(1, 1) is None:
                raise RationaleError(
                    f"the price of the {role} {client.model_id!r} is not in litellm's price "
                    "map, so --max-cost cannot be enforced; drop --max-cost or use a priced "
                    "model"
                )

    def steps(self) -> Iterator[Any]:
        """The steps of this run in session order; ``--limit`` applies before skipping done ones."""
        steps = self.records.steps(with_rationales=self.config.history_rationales)
        return itertools.islice(steps, self.config.limit)

    def keys(self) -> list[tuple[str, int]]:
        """The (session_id, step) of this run's steps, in order, without reading records."""
        return list(itertools.islice(self.records.step_keys(), self.config.limit))

    def items(self, done: dict[tuple[str, int], str]) -> Iterator[_Prepared]:
        chained = self.config.history_rationales
        if chained:
            self.rationales = self.run_dir.accepted_rationales()
        for step in self.steps():
            key = (step.record.session_id, step.record.step)
            if key in done:
                continue
            if chained:  # rendered when its history is known (in `process`)
                self.finished[key] = asyncio.Event()
                yield _Prepared(step)
            else:
                yield self.prepare(step)

    async def aclose(self) -> None:
        await self.teacher.aclose()
        if self.verifier_client is not None and self.verifier_client is not self.teacher:
            await self.verifier_client.aclose()

    # -- one record -----------------------------------------------------------------------------

    def prepare(self, step: Any) -> _Prepared:
        """Render a step's teacher prompt and the keys of its first-round samples.

        Done ahead of time by the producer, in the loop's idle moments, so a worker whose
        answer arrives only has to file it and send the next request.
        """
        from rationale.prompts import render_step

        prompt, cut = render_step(
            self.template,
            step,
            max_context_tokens=self.config.max_context_tokens,
            with_action=True,
            action_space=self.space,
        )
        keys = {
            sample: self._teacher_key(prompt.messages, prompt.assistant_prefix, sample)
            for sample in range(self.config.samples)
        }
        return _Prepared(step, prompt, cut, keys)

    async def _with_history(self, item: _Prepared) -> _Prepared:
        """Wait for the earlier steps of the session, then render with their rationales."""
        from rationale.engine import Pending
        from rationale.sessions import fill_rationales

        session_id = item.step.record.session_id
        for entry in item.step.history:
            event = self.finished.get((session_id, entry.step))
            if event is not None:
                await event.wait()
                if (session_id, entry.step) not in self.settled:
                    raise Pending  # left pending (a stop, a batch round): so is this step
        return self.prepare(fill_rationales(item.step, self.rationales))

    def _teacher_key(
        self, messages: list[dict[str, str]], prefix: str | None, sample: int
    ) -> tuple[str, str]:
        """(cache key, prompt hash) of one teacher request."""
        from rationale.cache import cache_key
        from rationale.identity import answered_by

        params = {
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "seed": self.config.seed + sample,
            "assistant_prefix": prefix,
        }
        key = cache_key(
            model=answered_by(self.teacher),
            messages=messages,
            params=params,
            sample=sample,
            template_version=self.template.version,
        )
        return key, hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:16]

    async def process(self, item: _Prepared) -> bool:
        """One record to its final state. False if it was left pending (the run is stopping).

        Round 0 draws ``--samples`` candidates; while none is accepted, each further round (up
        to ``--max-attempts`` rounds) regenerates one with feedback on the last rejection. Each
        candidate passes the template's rules, then the blind verifier. ``--keep first`` stops at
        the first accepted candidate, ``--keep all`` keeps every accepted one of the round.
        """
        key = (item.step.record.session_id, item.step.record.step)
        try:
            if item.prompt is None:
                item = await self._with_history(item)
            filed = await self._process(item)
            if filed:
                self.settled.add(key)
            return filed
        finally:
            if key in self.finished:
                self.finished[key].set()

    async def _process(self, item: _Prepared) -> bool:
        step, prompt, cut = item.step, item.prompt, item.cut
        record = step.record
        tally = self.engine.tally
        count_context_cut(tally, record, cut, self.config.max_context_tokens)
        candidates: list[Candidate] = []
        messages = list(prompt.messages)
        for round_ in range(self.config.max_attempts):
            samples = range(self.config.samples) if round_ == 0 else range(1)
            for sample in samples:
                key = item.keys[sample] if round_ == 0 and item.keys else None
                candidate = await self.candidate(step, messages, prompt, sample, round_, key)
                candidates.append(candidate)
                if candidate.state == "failed" or (
                    candidate.state == "accepted" and self.config.keep == "first"
                ):
                    break
            last = candidates[-1]
            if last.state == "failed" or any(c.state == "accepted" for c in candidates):
                break
            messages = regeneration(messages, last, record)
        rec = outcome(record, candidates, cut.cut_tokens)
        if rec.state == "accepted" and rec.rationale:
            self.rationales[rec.key] = rec.rationale
        self.run_dir.append(rec, now=False)  # the engine's filer writes it within milliseconds
        tally.states[rec.state] += 1
        return True

    async def candidate(
        self,
        step: Any,
        messages: list[dict[str, str]],
        prompt: Any,
        sample: int,
        round_: int,
        key: tuple[str, str] | None = None,
    ) -> Candidate:
        """Generate one rationale, then judge it (rules, verifier)."""
        from rationale.teacher import describe_error

        cache_key, prompt_hash = key or self._teacher_key(messages, prompt.assistant_prefix, sample)
        provenance = {
            "teacher": self.teacher.model_id,
            "template": self.template.name,
            "template_version": self.template.version,
            "prompt_hash": prompt_hash,
            "seed": self.config.seed + sample,
            "sample": sample,
        }
        try:
            completion, cached = await self.engine.call(
                self.limited, messages, key=cache_key,
                assistant_prefix=prompt.assistant_prefix, temperature=self.config.temperature,
                max_tokens=self.config.max_tokens, seed=self.config.seed + sample,
            )  # fmt: skip
        except TeacherError as exc:
            return Candidate(
                sample=sample, round=round_, state="failed",
                error=SynthError(**describe_error(exc)),
                provenance=Provenance(**provenance, attempts=exc.attempts),
            )  # fmt: skip
        prov = Provenance(
            **provenance,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_usd=completion.cost_usd,
            attempts=completion.attempts,
            cached=cached,
        )
        return await self.judge.judge(step, completion.text, sample, round_, prov)

    # -- --dry-run ------------------------------------------------------------------------------

    def estimate(self) -> dict[str, Any]:
        """Render every prompt, count tokens, price the worst case; call nothing, write nothing."""
        from rationale.cache import ResponseCache
        from rationale.runner import check_same_run

        done: dict[tuple[str, int], str] = {}
        if self.run_dir.path.is_dir():
            check_same_run(self.run_dir, self.identity())  # the same refusals as a real run
            done = self.run_dir.load(repair=False)
        if self.config.retry_failed:  # as the run will: failed records within --limit go again
            keys = set(self.keys())
            done = {k: s for k, s in done.items() if s != "failed" or k not in keys}
        cache = ResponseCache()
        out = {
            "records": 0,
            "already_done": 0,
            "cached": 0,
            "to_call": 0,
            "prompt_tokens": 0,
            "max_completion_tokens": 0,
            "context_cut_records": 0,
            "context_cut_tokens": 0,
        }
        try:
            for step in self.steps():
                out["records"] += 1
                if (step.record.session_id, step.record.step) in done:
                    out["already_done"] += 1
                    continue
                item = self.prepare(step)
                assert item.keys is not None
                if item.cut.cut_tokens:
                    out["context_cut_records"] += 1
                    out["context_cut_tokens"] += item.cut.cut_tokens
                if cache.get(item.keys[0][0]) is not None:
                    out["cached"] += 1
                    continue
                out["to_call"] += 1
                out["prompt_tokens"] += self.engine.prompt_tokens(item.prompt.messages)
                out["max_completion_tokens"] += self.config.max_tokens
        finally:
            cache.close()
        from rationale.pricing import batch_price

        price = self.teacher.price(out["prompt_tokens"], out["max_completion_tokens"])
        out["max_cost_usd"] = None if price is None else round(price, 6)
        per_token = batch_price(self.teacher.model_id)  # through the provider's batch API
        out["max_cost_usd_batch"] = (
            None
            if per_token is None or self.teacher.model_id.startswith("local")
            else round(out["prompt_tokens"] * per_token[0]
                       + out["max_completion_tokens"] * per_token[1], 6)
        )  # fmt: skip
        out["teacher"] = self.teacher.model_id
        return out
