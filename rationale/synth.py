"""`rationale synth`: render each step, ask the teacher why, and sort the answers into a run folder.

A run folder (``-o RUN_DIR``) holds:

- ``accepted.jsonl``, ``rejected.jsonl``, ``failed.jsonl``: one `SynthRecord` line per input record,
  in exactly one of the three files, appended and flushed as results arrive;
- ``run.json``: the resolved config, counts per state, tokens, cost (this invocation and all of
  them), wall time;
- ``ledger.jsonl``: one line per paid request group (tokens, cost), so the cumulative cost
  survives a killed process.

Resuming is the default: rerunning the same command skips every record already in one of the
three files, and answers already paid for come from the response cache (`rationale.cache`), so a
rerun makes no call for them. A line torn by a kill is cut off before anything is read.
``--retry-failed`` moves the failed records back to the queue (with their original history).

``--max-cost`` is the budget of one invocation: before each request the worst case it could cost
(its prompt plus ``max_tokens`` of completion) is reserved, and no request starts that could take
spent + reserved over the budget. The run then stops cleanly; a rerun continues.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rationale.errors import FatalTeacherError, RationaleError, TeacherError, redact
from rationale.filter import RulesConfig
from rationale.schema import (
    SCHEMA_VERSION,
    Candidate,
    Provenance,
    SynthError,
    SynthRecord,
    Verification,
)

STATES = ("accepted", "rejected", "failed")
TPM_WINDOW_S = 60.0  # the --tpm bucket's period (tests shorten it)


class SynthConfig(BaseModel):
    """Everything that decides a synthesis run; saved resolved in run.json."""

    model_config = ConfigDict(extra="forbid")

    input: str
    output: str
    teacher: str = "local"
    api_base: str | None = None
    client: Literal["auto", "litellm", "fast"] = "auto"
    concurrency: int = Field(16, ge=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    template: str | None = None
    max_context_tokens: int | None = Field(6000, ge=16)
    limit: int | None = Field(None, ge=1)
    seed: int = 0
    temperature: float = Field(0.0, ge=0.0)
    max_tokens: int = Field(200, ge=1)
    timeout: float = Field(60.0, gt=0)
    request_attempts: int = Field(6, ge=1)
    backoff: float = Field(1.0, ge=0)
    dry_run: bool = False
    max_cost: float | None = Field(None, ge=0)
    retry_failed: bool = False
    on_error: Literal["fail", "skip"] = "fail"
    history_rationales: bool = False
    action_space: str | None = None
    # the consistency filter
    verifier: str = "auto"  # auto: the teacher (none for a local teacher); none: off
    verifier_template: str | None = None
    verify_max_tokens: int = Field(150, ge=1)
    samples: int = Field(1, ge=1)
    keep: Literal["first", "all"] = "first"
    max_attempts: int = Field(1, ge=1)
    rules: RulesConfig = Field(default_factory=RulesConfig)


# -- the run folder ---------------------------------------------------------------------------


class RunDir:
    """The three output files, the ledger and run.json of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise RationaleError(f"{self.path}: -o must be a folder (the run folder)")
        self.files = {state: self.path / f"{state}.jsonl" for state in STATES}
        self.ledger = self.path / "ledger.jsonl"
        self.run_json = self.path / "run.json"
        self._handles: dict[str, Any] = {}
        self._pending: dict[str, list[str]] = {}

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[tuple[str, int], str]:
        """Every record already done -> its state. Repairs a line torn by a kill first."""
        done: dict[tuple[str, int], str] = {}
        for state, file in self.files.items():
            for line_no, rec in read_synth_records(file, repair=True):
                if rec.key in done:
                    raise RationaleError(
                        f"{file} line {line_no}: session {rec.key[0]!r} step {rec.key[1]} is "
                        f"already in {done[rec.key]}.jsonl; remove one of them"
                    )
                done[rec.key] = state
        return done

    def drop_failed(self, keys: set[tuple[str, int]]) -> None:
        """Rewrite failed.jsonl without ``keys`` (atomically), so they can be retried."""
        file = self.files["failed"]
        kept = [rec for _, rec in read_synth_records(file, repair=True) if rec.key not in keys]
        tmp = file.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(rec.model_dump_json() + "\n" for rec in kept), encoding="utf-8")
        os.replace(tmp, file)

    def append(self, rec: SynthRecord, *, now: bool = True) -> None:
        """Add a record's line; with ``now=False`` it waits for the next `flush` (the engine
        flushes every few milliseconds, off the requests' critical path: a kill in between costs
        nothing, since the answer is already in the response cache)."""
        self._pending.setdefault(rec.state, []).append(rec.model_dump_json())
        if now:
            self.flush()

    def flush(self) -> None:
        for state, lines in self._pending.items():
            if lines:
                self._write(state, self.files[state], "".join(line + "\n" for line in lines))
                lines.clear()

    def _write(self, name: str, file: Path, text: str) -> None:
        handle = self._handles.get(name)
        if handle is None:
            # kept open for the whole run (closed in `close`): one open per file, not per line
            handle = open(file, "a", encoding="utf-8")  # noqa: SIM115
            self._handles[name] = handle
        handle.write(text)
        handle.flush()  # whole lines only: a kill can tear at most the last one

    def charge(self, entry: dict[str, Any]) -> None:
        # At once, not batched: the cost of an answer must survive a kill (it will not be paid
        # again, so it would otherwise be missing from the cumulative total).
        self._write("ledger", self.ledger, json.dumps(entry) + "\n")

    def spent(self) -> dict[str, float | int]:
        """Totals over every invocation, from the ledger."""
        total: dict[str, float | int] = {
            "requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
        }
        for _, line in _read_lines(self.ledger):
            entry = json.loads(line)
            for k in total:
                total[k] += entry.get(k) or 0
        return total

    def close(self) -> None:
        self.flush()
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


def _read_lines(file: Path, *, repair: bool = True) -> Iterator[tuple[int, str]]:
    """Complete lines of a JSONL file. A torn last line (no newline) is skipped, and with
    ``repair`` (only for the run's own files, before it writes) cut off the file."""
    if not file.exists():
        return
    with open(file, "rb+" if repair else "rb") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            if repair:
                f.truncate(data.rfind(b"\n") + 1)
            data = data[: data.rfind(b"\n") + 1]
    for n, raw in enumerate(data.decode("utf-8").splitlines(), start=1):
        if raw.strip():
            yield n, raw


def read_synth_records(file: Path, *, repair: bool = False) -> Iterator[tuple[int, SynthRecord]]:
    """(line number, record) of a run's accepted/rejected/failed file; a torn last line is
    skipped (and cut off with ``repair``); any other bad line is an error naming it."""
    for line_no, line in _read_lines(file, repair=repair):
        try:
            yield line_no, SynthRecord.model_validate_json(line)
        except ValueError:
            raise RationaleError(
                f"{file} line {line_no}: not a synthesis record (rationale synth output); "
                "move that line out, or use a new -o"
            ) from None


# -- accounting ---------------------------------------------------------------------------------


@dataclass
class Budget:
    """Money this invocation may spend, with reservations for requests in flight."""

    limit: float | None
    spent: float = 0.0
    reserved: float = 0.0
    exhausted: bool = False

    def reserve(self, worst: float) -> bool:
        if self.limit is not None and self.spent + self.reserved + worst > self.limit:
            self.exhausted = True
            return False
        self.reserved += worst
        return True

    def settle(self, worst: float, actual: float) -> None:
        self.reserved -= worst
        self.spent += actual


@dataclass
class Tally:
    """What this invocation did."""

    states: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cost_unknown: int = 0
    context_cut_records: int = 0
    context_cut_tokens: int = 0
    # the verifier's share of the above
    verify_requests: int = 0
    verify_prompt_tokens: int = 0
    verify_completion_tokens: int = 0
    verify_cost_usd: float = 0.0
    rule_rejections: Counter[str] = field(default_factory=Counter)
    confusion: Counter[tuple[str, str, bool]] = field(default_factory=Counter)

    def add(self, kind: str, requests: int, completion: Any) -> None:
        """Count a paid call (``completion`` None when it failed after ``requests`` requests)."""
        p = (completion.prompt_tokens or 0) if completion else 0
        c = (completion.completion_tokens or 0) if completion else 0
        cost = (completion.cost_usd or 0.0) if completion else 0.0
        self.requests += requests
        self.prompt_tokens += p
        self.completion_tokens += c
        self.cost_usd += cost
        if completion is not None and completion.cost_usd is None:
            self.cost_unknown += 1
        if kind == "verifier":
            self.verify_requests += requests
            self.verify_prompt_tokens += p
            self.verify_completion_tokens += c
            self.verify_cost_usd += cost


@dataclass(frozen=True)
class _Prepared:
    """A step made ready for its requests: rendered prompt, context cut, first-round keys."""

    step: Any
    prompt: Any
    cut: Any
    keys: dict[int, tuple[str, str]]


class _Pending(Exception):
    """A record left for a rerun: the budget or a fatal fault stopped the run."""


def _type_of(action: Any) -> str:
    return str(action.get("type")) if isinstance(action, dict) else "invalid"


# -- progress ------------------------------------------------------------------------------------


class Progress:
    """A bar on a terminal, plain lines every few seconds otherwise; always on stderr."""

    def __init__(self, total: int, *, every: float = 10.0, label: str = "synth") -> None:
        self.total, self.done, self.every, self.label = total, 0, every, label
        self.start = self.last = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, unit="rec", file=sys.stderr, dynamic_ncols=True, desc=label
            )

    def update(self, tally: Tally) -> None:
        self.done += 1
        cost = f"${tally.cost_usd:.4f}"
        if self.bar is not None:
            self.bar.set_postfix_str(f"cost {cost}", refresh=False)
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            print(
                f"{self.label}: {self.done}/{self.total} records, {rate:.1f}/s, "
                f"ETA {eta:.0f}s, cost {cost}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- the engine -----------------------------------------------------------------------------------


class _Limited:
    """A model client whose every attempt (retries included) passes the run's rate limits.

    ``--rpm`` and ``--tpm`` are the provider's limits, shared by the teacher and the verifier.
    """

    def __init__(self, client: Any, synth: _Synth) -> None:
        self.client, self.synth = client, synth
        self.model_id = client.model_id

    async def attempt(self, messages: list[dict[str, str]], **kwargs: Any) -> Any:
        synth = self.synth
        if synth._rpm is not None:
            await synth._rpm.acquire()
        if synth._tpm is not None:
            need = synth._prompt_tokens(messages) + kwargs.get("max_tokens", 0)
            await synth._tpm.acquire(min(need, synth.config.tpm or need))
        return await self.client.attempt(messages, **kwargs)

    def price(self, p: int, c: int) -> float | None:
        return self.client.price(p, c)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self.client.aclose()


@dataclass(frozen=True)
class SynthSummary:
    """What `run_synth` returns (and prints): counts, spend and why it stopped, if early."""

    run_dir: Path
    counts: dict[str, int]
    pending: int
    tally: Tally
    wall_s: float
    stopped: str | None


def run_synth(config: SynthConfig, *, teacher: Any = None, retry_policy: Any = None) -> Any:
    """Run (or resume) a synthesis; returns a `SynthSummary`, or the estimate for a dry run.

    ``teacher`` may be injected (any `rationale.teacher.Teacher`); by default it is built from
    ``config.teacher``.
    """
    return asyncio.run(_Synth(config, teacher, retry_policy).run())


class _Synth:
    label = "synth"

    def __init__(self, config: SynthConfig, teacher: Any, retry_policy: Any) -> None:
        from rationale.prompts import load_template
        from rationale.records import RecordFile
        from rationale.schema import ActionSpace
        from rationale.teacher import RetryPolicy

        self.config = config
        self.space = (
            ActionSpace.from_file(config.action_space)
            if config.action_space
            else ActionSpace.default()
        )
        self.records = RecordFile(config.input, space=self.space, on_error=config.on_error)
        self.template = load_template(config.template)
        self.policy = retry_policy or RetryPolicy(
            max_attempts=config.request_attempts, backoff=config.backoff
        )
        self._teacher = teacher
        self.run_dir = RunDir(config.output)
        self.tally = Tally()
        self.budget = Budget(config.max_cost)
        self.fatal: FatalTeacherError | None = None
        from rationale.filter import template_rules

        self.rules = template_rules(self.template)
        from rationale.prompts import count_tokens

        count_tokens("")  # load the tokenizer now (~0.3 s), not inside the timed loop
        self.verifier_template = load_template(config.verifier_template or "verifier")
        if config.samples > 1 and config.temperature == 0:
            raise RationaleError(
                "--samples above 1 needs --temperature above 0, or every sample is the same"
            )
        self._verifier: Any = None

    @property
    def verifier_name(self) -> str | None:
        """The verifier model, or None when the consistency check is off."""
        name = self.config.verifier
        if name == "none":
            return None
        if name == "auto":
            return None if self.config.teacher.startswith("local") else self.config.teacher
        return name

    @property
    def verifier(self) -> Any:
        if self._verifier is None and self.verifier_name is not None:
            from rationale.teacher import make_teacher

            if self.verifier_name == self.config.teacher:
                self._verifier = self.teacher
            else:
                same_provider = (
                    self.verifier_name.split("/")[0] == self.config.teacher.split("/")[0]
                )
                self._verifier = make_teacher(
                    self.verifier_name,
                    api_base=self.config.api_base if same_provider else None,
                    timeout=self.config.timeout,
                    client=self.config.client,
                )
        return self._verifier

    @property
    def teacher(self) -> Any:
        if self._teacher is None:
            from rationale.teacher import make_teacher

            self._teacher = make_teacher(
                self.config.teacher,
                api_base=self.config.api_base,
                timeout=self.config.timeout,
                client=self.config.client,
            )
        return self._teacher

    def steps(self) -> Iterator[Any]:
        """The steps of this run in session order; ``--limit`` applies before skipping done ones."""
        steps = self.records.steps(with_rationales=self.config.history_rationales)
        return itertools.islice(steps, self.config.limit)

    def prepare(self, step: Any) -> _Prepared:
        """Render a step's teacher prompt and the keys of its first-round samples.

        Done ahead of time by a producer task, in the loop's idle moments, so a worker whose
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

    def _teacher_key(
        self, messages: list[dict[str, str]], prefix: str | None, sample: int
    ) -> tuple[str, str]:
        """(cache key, prompt hash) of one teacher request."""
        from rationale.cache import cache_key

        params = {
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "seed": self.config.seed + sample,
            "assistant_prefix": prefix,
        }
        key = cache_key(
            model=self.teacher.model_id,
            messages=messages,
            params=params,
            sample=sample,
            template_version=self.template.version,
        )
        return key, hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:16]

    def keys(self) -> list[tuple[str, int]]:
        """The (session_id, step) of this run's steps, in order, without reading records."""
        return list(itertools.islice(self.records.step_keys(), self.config.limit))

    # -- run ------------------------------------------------------------------------------------

    async def run(self) -> Any:
        if self.config.dry_run:
            return self.estimate()
        if self.config.max_cost is not None and self.teacher.price(1, 1) is None:
            raise RationaleError(
                f"the price of {self.config.teacher!r} is not in litellm's price map, so "
                "--max-cost cannot be enforced; drop --max-cost or use a priced model"
            )
        self.run_dir.create()
        self._check_same_run()
        if self.config.verifier == "auto" and self.config.teacher.startswith("local"):
            print(
                "warning: a 135M local model cannot verify rationales, so the blind "
                "consistency check is off (--verifier MODEL to turn it on)",
                file=sys.stderr,
            )
        done = self.run_dir.load()
        if self.config.retry_failed:
            failed = {k for k, s in done.items() if s == "failed"}
            self.run_dir.drop_failed(failed)
            done = {k: s for k, s in done.items() if s != "failed"}
        todo = sum(1 for k in self.keys() if k not in done)
        total = len(done) + todo
        started, t0 = time.time(), time.monotonic()
        self._write_run_json(started, 0.0, None, total)
        from rationale.cache import ResponseCache

        self.cache = ResponseCache()
        progress = Progress(todo, label=self.label)
        self._limiters()
        workers = min(self.config.concurrency, todo) or 1
        # Steps stream from the file through a bounded queue: a big run never holds its records.
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * workers)

        def stopping() -> bool:
            return self.budget.exhausted or self.fatal is not None

        async def producer() -> None:
            try:
                for step in self.steps():
                    if stopping():
                        break
                    if (step.record.session_id, step.record.step) in done:
                        continue
                    await queue.put(self.prepare(step))
                    await asyncio.sleep(0)  # let answers in between two renders
            finally:
                for _ in range(workers):
                    await queue.put(None)

        async def worker() -> None:
            while (item := await queue.get()) is not None:
                if not stopping() and await self.process(item):
                    progress.update(self.tally)

        done_flag = asyncio.Event()

        async def filer() -> None:
            # Writes the finished records' lines every few ms, between waves of answers.
            while not done_flag.is_set():
                self.run_dir.flush()
                await asyncio.sleep(0.005)
            self.run_dir.flush()

        async def work() -> None:
            try:
                await asyncio.gather(producer(), *(worker() for _ in range(workers)))
            finally:
                done_flag.set()

        try:
            await asyncio.gather(work(), filer())
        finally:
            progress.close()
            self.run_dir.close()
            self.cache.close()
            await self.teacher.aclose()
            if self._verifier is not None and self._verifier is not self._teacher:
                await self._verifier.aclose()
        stopped = None
        if self.fatal is not None:
            stopped = f"fatal: {self.fatal}"
        elif self.budget.exhausted:
            stopped = (
                "budget: the next request could take this run over "
                f"--max-cost ${self.config.max_cost}"
            )
        wall = time.monotonic() - t0
        from rationale.report import build_report, write_chart

        report = build_report(self.run_dir.path)
        write_chart(report, self.run_dir.path / "acceptance.png")
        counts = self._write_run_json(started, wall, stopped, total, report)
        summary = SynthSummary(
            self.run_dir.path, counts, total - sum(counts.values()), self.tally, wall, stopped
        )
        if self.fatal is not None:
            raise RationaleError(
                f"{self.fatal}; the run stopped with {summary.pending} records pending: fix the "
                "cause and rerun the same command to continue"
            )
        return summary

    async def process(self, item: _Prepared) -> bool:
        """One record to its final state. False if it was left pending (budget or fatal stop).

        Round 0 draws ``--samples`` candidates; while none is accepted, each further round (up
        to ``--max-attempts`` rounds) regenerates one with feedback on the last rejection. Each
        candidate passes the template's rules, then the blind verifier. ``--keep first`` stops at
        the first accepted candidate, ``--keep all`` keeps every accepted one of the round.
        """
        from rationale.filter import feedback_message

        step, prompt, cut = item.step, item.prompt, item.cut
        record = step.record
        if cut.cut_tokens:
            self.tally.context_cut_records += 1
            self.tally.context_cut_tokens += cut.cut_tokens
        candidates: list[Candidate] = []
        messages = list(prompt.messages)
        try:
            for round_ in range(self.config.max_attempts):
                samples = range(self.config.samples) if round_ == 0 else range(1)
                for sample in samples:
                    key = item.keys[sample] if round_ == 0 else None
                    candidate = await self.candidate(step, messages, prompt, sample, round_, key)
                    candidates.append(candidate)
                    if candidate.state == "failed" or (
                        candidate.state == "accepted" and self.config.keep == "first"
                    ):
                        break
                last = candidates[-1]
                if last.state == "failed" or any(c.state == "accepted" for c in candidates):
                    break
                # Regenerate: the teacher sees its answer and why it was rejected.
                prediction = last.verification.prediction if last.verification else None
                messages = [
                    *messages,
                    {"role": "assistant", "content": json.dumps({"rationale": last.rationale})},
                    {"role": "user", "content": feedback_message(
                        last.rationale, last.reasons, prediction, record.action.model_dump()
                    )},
                ]  # fmt: skip
        except _Pending:
            return False
        self._finish(self._outcome(record, candidates, cut.cut_tokens))
        return True

    def _outcome(self, record: Any, candidates: list[Candidate], cut_tokens: int) -> SynthRecord:
        """A record's line from its candidates: accepted if any is, failed if the last failed."""
        accepted = [c for c in candidates if c.state == "accepted"]
        last = candidates[-1]
        verified = [c for c in candidates if c.verification is not None]
        chosen = accepted[0] if accepted else last
        if accepted:
            state: str = "accepted"
        elif last.state == "failed":
            state = "failed"
        else:
            state = "rejected"
        reasons: list[str] = []
        for c in candidates:
            reasons += [r for r in c.reasons if r not in reasons]
        return SynthRecord(
            state=state,  # type: ignore[arg-type]
            record=record.dump(),
            rationale=chosen.rationale if accepted else None,
            reasons=[] if accepted else reasons,
            error=last.error if state == "failed" else None,
            provenance=chosen.provenance,
            prediction=verified[-1].verification.prediction if verified else None,  # type: ignore[union-attr]
            candidates=candidates,
            context_cut_tokens=cut_tokens,
        )

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
            completion, cached = await self.call(
                "teacher", self._limited, messages, key=cache_key,
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
        return await self.judge(step, completion.text, sample, round_, prov)

    async def judge(
        self, step: Any, rationale: str | None, sample: int, round_: int, prov: Any
    ) -> Candidate:
        """The rules, then (if they pass and a verifier is set) the blind verifier."""
        from rationale.filter import check_rules
        from rationale.teacher import describe_error

        truth = step.record.action.model_dump()
        reasons = check_rules(rationale, truth, self.rules, self.config.rules)
        base = {"rationale": rationale or None, "sample": sample, "round": round_,
                "provenance": prov}  # fmt: skip
        if reasons:
            self.tally.rule_rejections.update(r.split(":")[0] for r in reasons)
            return Candidate(state="rejected", reasons=reasons, **base)
        if self.verifier is None:
            return Candidate(state="accepted", **base)
        try:
            verification = await self.verify(step, rationale or "")
        except TeacherError as exc:
            return Candidate(state="failed", error=SynthError(**describe_error(exc)), **base)
        if verification.match:
            return Candidate(state="accepted", verification=verification, **base)
        self.tally.rule_rejections["verifier"] += 1
        return Candidate(
            state="rejected", reasons=["verifier: predicted another action"],
            verification=verification, **base,
        )  # fmt: skip

    async def verify(self, step: Any, rationale: str) -> Verification:
        """Ask the verifier, which never sees the action, to predict it from the rationale."""
        from rationale.cache import cache_key
        from rationale.prompts import render_step

        prompt, _ = render_step(
            self.verifier_template, step,
            max_context_tokens=self.config.max_context_tokens, with_action=False,
            action_space=self.space, extra={"rationale": rationale},
        )  # fmt: skip
        params = {"temperature": 0.0, "max_tokens": self.config.verify_max_tokens,
                  "seed": self.config.seed, "response": "action"}  # fmt: skip
        key = cache_key(
            model=self.verifier.model_id,
            messages=prompt.messages,
            params=params,
            sample=0,
            template_version=self.verifier_template.version,
        )
        completion, cached = await self.call(
            "verifier", self._verifier_limited, prompt.messages, key=key, assistant_prefix=None,
            temperature=0.0, max_tokens=self.config.verify_max_tokens, seed=self.config.seed,
            response_model=self.space.action_only_model,
        )  # fmt: skip
        prediction = completion.data.get("action")
        match = self.space.equal(prediction, step.record.action)
        self.tally.confusion[(step.record.action.type, _type_of(prediction), match)] += 1
        return Verification(
            model=self.verifier.model_id,
            prediction=prediction,
            match=match,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_usd=completion.cost_usd,
            attempts=completion.attempts,
            cached=cached,
        )

    async def call(
        self, kind: str, client: Any, messages: list[dict[str, str]], *, key: str, **kwargs: Any
    ) -> tuple[Any, bool]:
        """One model answer, from the cache or paid for: (completion, cached).

        Raises `_Pending` when the budget or a fatal fault stops the run (the record stays
        pending, and whatever was paid for is in the cache), `TeacherError` after retries.
        """
        from rationale.teacher import Completion, call_with_retries

        cached = self.cache.get(key)
        if cached is not None:
            self.tally.cache_hits += 1
            return Completion(**cached, attempts=0), True
        if self.fatal is not None:
            raise _Pending
        max_tokens = kwargs["max_tokens"]
        worst = (
            self._worst_case(client, messages, max_tokens) if self.budget.limit is not None else 0.0
        )
        if not self.budget.reserve(worst):
            raise _Pending
        actual = 0.0
        try:
            completion = await call_with_retries(client, messages, self.policy, **kwargs)
            actual = completion.cost_usd or 0.0
        except FatalTeacherError as exc:
            self.fatal = self.fatal or exc
            raise _Pending from None
        except TeacherError as exc:
            self.tally.add(kind, exc.attempts, None)
            self.run_dir.charge({"kind": kind, "requests": exc.attempts, "failed": True})
            raise
        finally:
            self.budget.settle(worst, actual)
        self.cache.put(key, completion.to_cache())
        self.tally.add(kind, completion.attempts, completion)
        self.run_dir.charge(
            {
                "kind": kind,
                "requests": completion.attempts,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "cost_usd": completion.cost_usd,
            }
        )
        return completion, False

    def _finish(self, rec: SynthRecord) -> None:
        self.run_dir.append(rec, now=False)  # the filer task writes it within milliseconds
        self.tally.states[rec.state] += 1

    # -- limits -------------------------------------------------------------------------------

    def _limiters(self) -> None:
        from aiolimiter import AsyncLimiter

        # Requests are spread over the minute (a burst of at most rpm/60, or 1, at a time), since
        # many providers enforce their limit per second; tokens use the whole minute as bucket,
        # since one request may need more than a second's share.
        rpm = self.config.rpm
        self._rpm = AsyncLimiter(max(1.0, rpm / 60), max(1.0, rpm / 60) * 60 / rpm) if rpm else None
        tpm = self.config.tpm
        self._tpm = AsyncLimiter(tpm, TPM_WINDOW_S) if tpm else None
        self._limited = _Limited(self.teacher, self)
        self._verifier_limited = _Limited(self.verifier, self) if self.verifier else None

    def _prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        from rationale.prompts import count_tokens

        # 4 tokens of chat framing per message, a common provider overhead.
        return sum(count_tokens(m["content"]) + 4 for m in messages)

    def _worst_case(self, client: Any, messages: list[dict[str, str]], max_tokens: int) -> float:
        price = client.price(self._prompt_tokens(messages), max_tokens)
        return price or 0.0

    # -- reporting ----------------------------------------------------------------------------

    def _check_same_run(self) -> None:
        """A run folder belongs to one input, teacher and template: refuse to mix them."""
        if not self.run_dir.run_json.exists():
            return
        try:
            before = json.loads(self.run_dir.run_json.read_text(encoding="utf-8"))
        except ValueError:
            return
        mine = self._identity()
        theirs = before.get("identity", {})
        changed = [k for k in mine if k in theirs and theirs[k] != mine[k]]
        if changed:
            raise RationaleError(
                f"{self.run_dir.path} holds a run with a different "
                f"{', '.join(changed)} ({', '.join(f'{k}={theirs[k]!r}' for k in changed)}); "
                "use a new -o, or the same flags to resume"
            )

    def _identity(self) -> dict[str, Any]:
        return {
            "input": str(Path(self.config.input).resolve()),
            "teacher": self.teacher.model_id,
            "template_version": self.template.version,
            "seed": self.config.seed,
            "verifier": self.verifier.model_id if self.verifier else None,
            "verifier_template_version": self.verifier_template.version if self.verifier else None,
        }

    def _write_run_json(
        self,
        started: float,
        wall: float,
        stopped: str | None,
        total: int,
        report: dict[str, Any] | None = None,
    ) -> dict[str, int]:
        counts = {state: 0 for state in STATES}
        for state, file in self.run_dir.files.items():
            counts[state] = sum(1 for _ in _read_lines(file))
        spent = self.run_dir.spent()
        data = {
            "schema_version": SCHEMA_VERSION,
            "config": json.loads(redact(self.config.model_dump_json())),
            "identity": self._identity(),
            "template": {
                "name": self.template.name,
                "version": self.template.version,
                "path": str(self.template.path),
            },
            "records": total,
            "counts": counts,
            "pending": total - sum(counts.values()),
            "tokens": {
                "prompt": spent["prompt_tokens"],
                "completion": spent["completion_tokens"],
            },
            "cost_usd": {
                "total": round(float(spent["cost_usd"]), 8),
                "this_invocation": round(self.tally.cost_usd, 8),
                "unknown_for_records": self.tally.cost_unknown,
                "price_known": self.teacher.price(1, 1) is not None,
            },
            "requests": {
                "total": spent["requests"],
                "this_invocation": self.tally.requests,
                "cache_hits": self.tally.cache_hits,
            },
            "context_cut": {
                "records": self.tally.context_cut_records,
                "tokens": self.tally.context_cut_tokens,
            },
            "started": started,
            "wall_s": round(wall, 3),
            "stopped": stopped,
            "verification": {
                "verifier": self.verifier.model_id if self.verifier else None,
                "rules": list(self.rules),
                "requests_this_invocation": self.tally.verify_requests,
                "cost_usd_this_invocation": round(self.tally.verify_cost_usd, 8),
            },
            "report": report,
        }
        tmp = self.run_dir.run_json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.run_dir.run_json)
        return counts

    def estimate(self) -> dict[str, Any]:
        """``--dry-run``: render every prompt, count tokens, price the worst case; call nothing."""
        from rationale.cache import ResponseCache

        done = self.run_dir.load() if self.run_dir.path.is_dir() else {}
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
                prompt, cut, key = item.prompt, item.cut, item.keys[0][0]
                if cut.cut_tokens:
                    out["context_cut_records"] += 1
                    out["context_cut_tokens"] += cut.cut_tokens
                if cache.get(key) is not None:
                    out["cached"] += 1
                    continue
                out["to_call"] += 1
                out["prompt_tokens"] += self._prompt_tokens(prompt.messages)
                out["max_completion_tokens"] += self.config.max_tokens
        finally:
            cache.close()
        price = self.teacher.price(out["prompt_tokens"], out["max_completion_tokens"])
        out["max_cost_usd"] = None if price is None else round(price, 6)
        out["teacher"] = self.teacher.model_id
        return out


# -- the standalone filter ------------------------------------------------------------------------


def run_filter(config: SynthConfig, *, retry_policy: Any = None) -> Any:
    """`rationale filter`: judge the rationales of an earlier run (a run folder or a synth JSONL)
    with the rules and the blind verifier, into a new run folder. No teacher is called; records
    that were rejected or failed before are carried over unchanged."""
    return asyncio.run(_Filter(config, retry_policy).run())


class _Filter(_Synth):
    """The synthesis engine with generation replaced by the candidates of an earlier run."""

    label = "filter"

    def __init__(self, config: SynthConfig, retry_policy: Any) -> None:
        from rationale.paths import state_dir
        from rationale.records import write_records
        from rationale.schema import ActionSpace

        source = Path(config.input)
        files = [source / f"{s}.jsonl" for s in STATES] if source.is_dir() else [source]
        self.source: dict[tuple[str, int], SynthRecord] = {}
        for file in files:  # another run's files: read only, never repaired
            for _, rec in read_synth_records(file):
                self.source[rec.key] = rec
        if not self.source:
            raise RationaleError(f"{source}: no synthesis records to filter")
        before: dict[str, Any] = {}
        if source.is_dir() and (source / "run.json").exists():
            before = json.loads((source / "run.json").read_text(encoding="utf-8"))["config"]
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
        # The engine's one model client is the verifier; no teacher is called.
        updates.update(teacher=verifier, verifier=verifier, samples=1, max_attempts=1)
        config = config.model_copy(update=updates)
        # History comes from the run's own input when it is still there (so earlier steps that
        # were not synthesized count), else from the records carried in the lines.
        history_source = before.get("input")
        if not history_source or not Path(history_source).is_file():
            space = ActionSpace.from_file(config.action_space) if config.action_space else None
            history_source = str(state_dir() / "filter-inputs" / f"{_digest_of(files)}.jsonl")
            model = (space or ActionSpace.default()).record_model
            write_records(
                history_source, (model.model_validate(r.record) for r in self.source.values())
            )
        self.source_path = str(source.resolve())
        super().__init__(config.model_copy(update={"input": history_source}), None, retry_policy)
        self.config = self.config.model_copy(update={"input": config.input})

    def steps(self) -> Iterator[Any]:
        steps = self.records.steps(with_rationales=self.config.history_rationales)
        return (s for s in steps if (s.record.session_id, s.record.step) in self.source)

    def keys(self) -> list[tuple[str, int]]:
        return [k for k in self.records.step_keys() if k in self.source]

    def prepare(self, step: Any) -> _Prepared:
        return _Prepared(step, None, None, {})  # nothing to render: no teacher is called

    def _identity(self) -> dict[str, Any]:
        return {
            "input": self.source_path,
            "verifier": self.verifier.model_id,
            "verifier_template_version": self.verifier_template.version,
            "seed": self.config.seed,
        }

    async def process(self, item: _Prepared) -> bool:
        """Judge the source's accepted candidates in order; carry anything else over."""
        step = item.step
        src = self.source[(step.record.session_id, step.record.step)]
        if src.state != "accepted":
            self._finish(src)
            return True
        tried = [c for c in src.candidates if c.state == "accepted"] or [
            Candidate(rationale=src.rationale, state="accepted", provenance=src.provenance)
        ]
        candidates: list[Candidate] = []
        try:
            for old in tried:
                judged = await self.judge(
                    step, old.rationale, old.sample, old.round, old.provenance
                )
                candidates.append(judged)
                if judged.state == "failed" or (
                    judged.state == "accepted" and self.config.keep == "first"
                ):
                    break
        except _Pending:
            return False
        self._finish(self._outcome(step.record, candidates, src.context_cut_tokens))
        return True

    def estimate(self) -> dict[str, Any]:
        raise RationaleError("rationale filter has no --dry-run")


def _digest_of(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        if f.exists():
            st = f.stat()
            digest.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]
