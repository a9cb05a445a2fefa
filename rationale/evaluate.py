"""`rationale eval`: predict every test case with one model, score it, write the eval folder.

The eval folder (``-o EVAL_DIR``) holds ``cases.jsonl`` (one line per finished case, appended
as cases finish: the resume log), ``ledger.jsonl`` (one line per API request), ``eval.json``
(config, model, metrics and every case; written at the start, then when the run ends or stops)
and ``per_type.png``. Rerunning the same command reuses the finished cases: a killed eval
resumes, a failed API case is asked again, and a folder made by another model, test file or
setting is refused. Local models generate in batches (`rationale.predictor`); API models go
through the engine that synth and filter drive (`rationale.engine`): retries, cache, rate
limits, ``--max-cost``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rationale.errors import RationaleError, redact
from rationale.rundir import ledger_totals, read_lines, take_lock

__all__ = ["EvalConfig", "EvalResult", "run_eval"]

SCHEMA_VERSION = 1


class EvalConfig(BaseModel):
    """Everything that decides an evaluation; saved resolved in eval.json."""

    model_config = ConfigDict(extra="forbid")

    model: str
    data: str
    output: str
    cases: Literal["all", "from-second"] = "all"
    limit: int | None = Field(None, ge=1)
    history_rationales: bool = False
    template: str | None = None  # prompt-only models; a student keeps its own
    max_context_tokens: int | None = Field(6000, ge=16)
    action_space: str | None = None
    on_error: Literal["fail", "skip"] = "fail"
    engine: Literal["auto", "hf", "vllm"] = "auto"
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    # API models
    api_base: str | None = None
    client: Literal["auto", "litellm", "fast"] = "auto"
    concurrency: int = Field(16, ge=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    timeout: float = Field(60.0, gt=0)
    request_attempts: int = Field(6, ge=1)
    backoff: float = Field(1.0, ge=0)
    max_cost: float | None = Field(None, ge=0)
    # scoring
    bootstrap: int = Field(1000, ge=1)

    def resolved(self) -> dict[str, Any]:
        data = json.loads(redact(self.model_dump_json()))
        for name in ("data", "output", "action_space"):
            if data.get(name):
                data[name] = str(Path(data[name]).resolve())
        if Path(self.model).expanduser().exists():
            data["model"] = str(Path(self.model).expanduser().resolve())
        return data  # type: ignore[no-any-return]

    def identity(self) -> dict[str, Any]:
        """What a rerun on the same folder must share (``--limit`` may grow; limits, budget
        and concurrency may change)."""
        data = self.resolved()
        keys = ("model", "data", "cases", "history_rationales", "template", "max_context_tokens",
                "action_space", "max_new_tokens", "temperature", "seed")  # fmt: skip
        return {k: data[k] for k in keys}


class EvalResult(BaseModel):
    """What `run_eval` returns: the folder, the eval.json data, and how it ended."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    folder: Path
    data: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any] | None:
        return self.data.get("metrics")  # type: ignore[no-any-return]


class EvalDir:
    """The files of one eval folder, its lock, and the ledger the engine charges."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise RationaleError(f"{self.path}: -o must be a folder (the eval folder)")
        self.cases = self.path / "cases.jsonl"
        self.ledger = self.path / "ledger.jsonl"
        self.eval_json = self.path / "eval.json"
        self._lock: Any = None
        self._handles: dict[Path, Any] = {}

    def open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = take_lock(self.path, "eval")

    def previous(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.eval_json.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None
        except ValueError:
            raise RationaleError(f"{self.eval_json} is not JSON; use a new -o") from None

    def done(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The finished case records (a torn last line repaired; a later line for the same case
        wins; failed cases are left out, to be asked again)."""
        for _ in read_lines(self.ledger, repair=True):
            pass
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for n, line in read_lines(self.cases, repair=True):
            try:
                rec = json.loads(line)
                key = (str(rec["session_id"]), int(rec["step"]))
            except (ValueError, KeyError, TypeError):
                raise RationaleError(f"{self.cases} line {n}: not a case record; remove the "
                                     "line or use a new -o") from None  # fmt: skip
            out[key] = rec
        return {k: r for k, r in out.items() if r.get("status") != "failed"}

    def _write(self, file: Path, text: str) -> None:
        handle = self._handles.get(file)
        if handle is None:
            handle = self._handles[file] = open(file, "a", encoding="utf-8")  # noqa: SIM115
        handle.write(text)
        handle.flush()

    def append(self, records: list[dict[str, Any]]) -> None:
        """Case lines, written at once (whole lines: a kill tears at most the last)."""
        if records:
            self._write(self.cases, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                            for r in records))  # fmt: skip

    def charge(self, entry: dict[str, Any]) -> None:
        self._write(self.ledger, json.dumps(entry) + "\n")

    def flush(self) -> None:
        return None  # every line is written when it is added

    def write_json(self, data: dict[str, Any]) -> None:
        tmp = self.eval_json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.eval_json)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def case_record(case: Any, pred: Any, space: Any) -> dict[str, Any]:
    """The stored form of one predicted case (see the eval.json contract in the README)."""
    truth = case.truth
    ok = pred.status == "ok" and pred.action is not None
    correct = bool(ok and space.equal(pred.action, truth))
    type_correct = bool(ok and pred.action.get("type") == truth.get("type"))
    return {
        "session_id": case.key[0], "step": case.key[1], "last": case.last, "truth": truth,
        "status": pred.status, "prediction": pred.action, "rationale": pred.rationale,
        "raw": pred.raw, "problem": pred.problem, "correct": correct,
        "type_correct": type_correct, "prompt_tokens": pred.prompt_tokens,
        "completion_tokens": pred.completion_tokens, "cost_usd": pred.cost_usd,
        "cached": pred.cached,
    }  # fmt: skip


def run_eval(config: EvalConfig, *, predictor: Any = None) -> EvalResult:
    """Run (or resume) an evaluation; returns the eval.json data. ``predictor`` may be injected
    (a `rationale.predictor.Predictor`); by default it is loaded from ``config.model``."""
    from rationale.eval_cases import eval_cases
    from rationale.records import RecordFile
    from rationale.schema import ActionSpace

    folder = EvalDir(config.output)
    space = ActionSpace.from_file(config.action_space) if config.action_space else None
    records = RecordFile(config.data, space=space, on_error=config.on_error)
    folder.open()
    try:
        before = folder.previous()
        if before is not None and before.get("identity") != config.identity():
            theirs = before.get("identity") or {}
            changed = [k for k, v in config.identity().items() if theirs.get(k) != v]
            raise RationaleError(
                f"{folder.path} holds an eval with a different "
                f"{', '.join(changed) or 'setting'} "
                f"({', '.join(f'{k}={theirs.get(k)!r}' for k in changed)}); use a new -o, or "
                "the same flags to resume"
            )
        predictor = predictor or _load(config)  # the weights load on first use, below
        # a student trained with history rationales sees the log's own where it has them
        chained = config.history_rationales or predictor.prompt.history_rationales
        with records:
            for line in records.skip_report():
                print(line, file=sys.stderr)
            cases = list(eval_cases(records, cases=config.cases, limit=config.limit,
                                    history_rationales=chained))  # fmt: skip
        if not cases:
            raise RationaleError(f"{config.data}: no test cases (with --cases {config.cases})")
        return _run(config, folder, cases, predictor, before)
    finally:
        folder.close()


def _load(config: EvalConfig) -> Any:
    from rationale.predictor import Predictor

    options = {k: getattr(config, k) for k in (
        "engine", "batch_size", "max_new_tokens", "temperature", "seed", "api_base", "timeout",
        "threads", "concurrency", "request_attempts", "client")}  # fmt: skip
    return Predictor.load(
        config.model, template=config.template, max_context_tokens=config.max_context_tokens,
        history_rationales=config.history_rationales, action_space=config.action_space,
        eager=False, **options,
    )  # fmt: skip


def _run(
    config: EvalConfig, folder: EvalDir, cases: list[Any], predictor: Any,
    before: dict[str, Any] | None,
) -> EvalResult:  # fmt: skip
    started, t0 = time.time(), time.monotonic()
    done = folder.done()
    todo = [c for c in cases if c.key not in done]
    how = f"engine {predictor.engine}: {predictor.engine_reason}"
    print(f"eval: {predictor.spec.label} on {len(cases)} cases ({len(cases) - len(todo)} done "
          f"before; {how})", file=sys.stderr)  # fmt: skip
    state: dict[str, Any] = {"stopped": None, "requests": 0, "cache_hits": 0}
    header = _header(config, predictor, started)
    if before and not predictor.model_id:  # nothing left to generate: the weights never loaded
        predictor.model_id = (before.get("model") or {}).get("id", "")
    folder.write_json({**header, "stopped": f"running (pid {os.getpid()})", "cases": []})
    try:
        if todo and predictor.spec.kind == "api":
            asyncio.run(_api(config, folder, todo, predictor, done, state))
        elif todo:

            def save(indices: list[int], preds: list[Any]) -> None:
                pairs = zip(indices, preds, strict=True)
                recs = [case_record(todo[i], p, predictor.space) for i, p in pairs]
                folder.append(recs)
                done.update({(r["session_id"], r["step"]): r for r in recs})

            predictor.predict_batch(todo, on_batch=save)
    except BaseException as exc:
        state["stopped"] = f"interrupted: {type(exc).__name__}"
        _finish(config, folder, cases, done, predictor, header, state, time.monotonic() - t0,
                todo)  # fmt: skip
        raise
    return _finish(config, folder, cases, done, predictor, header, state,
                   time.monotonic() - t0, todo)  # fmt: skip


async def _api(
    config: EvalConfig, folder: EvalDir, todo: list[Any], predictor: Any,
    done: dict[tuple[str, int], dict[str, Any]], state: dict[str, Any],
) -> None:  # fmt: skip
    from rationale.engine import Engine

    client = predictor.client
    if config.max_cost is not None and client.price(1, 1) is None:
        raise RationaleError(f"the price of {client.model_id!r} is not in litellm's price map, "
                             "so --max-cost cannot be enforced; drop --max-cost or use a priced "
                             "model")  # fmt: skip
    engine = Engine(config, folder)
    limited = engine.limited(client, "predict")

    async def process(case: Any) -> bool:
        pred = await predictor.ask(engine, limited, predictor.messages(case))
        rec = case_record(case, pred, predictor.space)
        folder.append([rec])
        done[case.key] = rec
        return True

    try:
        await engine.drive(iter(todo), process, todo=len(todo), label="eval", unit="cases")
    finally:
        await client.aclose()
    state["stopped"] = engine.stopped_reason()
    state["requests"] = engine.tally.requests
    state["cache_hits"] = engine.tally.cache_hits
    if engine.error is not None:
        (folder.path / "error.txt").write_text(redact(engine.error_traceback), encoding="utf-8")
        raise RationaleError(f"eval stopped ({redact(str(state['stopped']))}) (traceback in "
                             "error.txt); rerun the same command to continue")  # fmt: skip
    if engine.fatal is not None:
        raise RationaleError(f"eval stopped ({redact(str(state['stopped']))}); fix the cause "
                             "and rerun the same command to continue")  # fmt: skip


def _header(config: EvalConfig, predictor: Any, started: float) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "eval",
        "model": predictor.identity(),
        "identity": config.identity(),
        "config": config.resolved(),
        "data": {
            "file": str(Path(config.data).resolve()),
            "cases": config.cases,
            "limit": config.limit,
        },
        "action_space": predictor.space.declaration(),
        "started": started,
    }


def _finish(
    config: EvalConfig, folder: EvalDir, cases: list[Any],
    done: dict[tuple[str, int], dict[str, Any]], predictor: Any, header: dict[str, Any],
    state: dict[str, Any], wall: float, asked: list[Any],
) -> EvalResult:  # fmt: skip
    from rationale.scoring import case_set_digest, score, summary_lines, write_type_chart

    records = [r for r in (done.get(c.key) for c in cases) if r is not None]
    failed = [r for r in records if r.get("status") == "failed"]
    pending = len(cases) - len(records)
    spent = ledger_totals(folder.ledger)
    metrics = (score(records, predictor.space, seed=config.seed, n_boot=config.bootstrap)
               if records else None)  # fmt: skip
    finished_now = sum(1 for c in asked if c.key in done)
    data = {
        **header,
        "model": predictor.identity(),  # the model id is known once the weights are loaded
        "case_set": case_set_digest(
            [{"session_id": c.key[0], "step": c.key[1], "truth": c.truth} for c in cases]
        ),
        "n_cases": len(cases),
        "pending": pending,
        "failed": len(failed),
        "metrics": metrics,
        "usage": {
            "prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in records),
            "completion_tokens": sum(r.get("completion_tokens") or 0 for r in records),
            "cost_usd": round(float(spent["cost_usd"]), 8),
            "requests": int(spent["requests"]),
            "cache_hits": state["cache_hits"],
            "wall_s": round(wall, 3),
            "cases_per_s": round(finished_now / wall, 3) if wall > 0 else None,
        },
        "stopped": redact(state["stopped"]) if state["stopped"] else None,
        "cases": records,
    }
    folder.write_json(data)
    if metrics is not None:
        write_type_chart(metrics, folder.path / "per_type.png", f"{predictor.spec.label}")
    for line in summary_lines(data, folder=folder.path):
        print(line, file=sys.stderr)
    if pending:
        print(f"eval: {pending} of {len(cases)} cases pending ({data['stopped'] or 'stopped'}); "
              "rerun the same command to continue", file=sys.stderr)  # fmt: skip
    return EvalResult(folder=folder.path, data=data)
