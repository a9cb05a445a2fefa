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
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from rationale.errors import FatalTeacherError, RationaleError, redact
from rationale.eval_config import EvalConfig, check_same
from rationale.eval_dir import EvalDir, case_record
from rationale.eval_sigterm import SigtermGuard, Terminated
from rationale.rundir import ledger_totals
from rationale.shards import parse_shard

__all__ = ["EvalConfig", "EvalResult", "run_eval"]

SCHEMA_VERSION = 1


class EvalResult(BaseModel):
    """What `run_eval` returns: the folder, the eval.json data, and how it ended."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    folder: Path
    data: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any] | None:
        return self.data.get("metrics")  # type: ignore[no-any-return]


#: An API eval whose first this-many cases all fail stops: the model, key or endpoint is wrong.
FAIL_FAST = 5


def run_eval(config: EvalConfig, *, predictor: Any = None) -> EvalResult:
    """Run (or resume) an evaluation; returns the eval.json data. ``predictor`` may be injected
    (a `rationale.predictor.Predictor`); by default it is resolved from ``config.model`` (its
    weights load when the first case is generated).

    Raises `RationaleError` after eval.json is written when cases failed (no answer after the
    retries: they count as wrong until a rerun asks them again), when SIGTERM stopped it, or when
    the model, key or endpoint is wrong. A ``--max-cost`` stop returns with cases pending.
    """
    from rationale.eval_cases import eval_cases
    from rationale.records import RecordFile
    from rationale.runner import skipped_input
    from rationale.schema import ActionSpace

    space = ActionSpace.from_file(config.action_space) if config.action_space else None
    records = RecordFile(config.data, space=space, on_error=config.on_error,
                         shard=parse_shard(config.shard))  # fmt: skip
    predictor = predictor or _load(config)  # a bad --model fails here, before -o is touched
    if config.batch and predictor.spec.kind != "api":
        raise RationaleError(
            f"--batch is for API models (a provider's batch API); {config.model!r} runs here"
        )
    if config.batch:  # a model without a batch API is refused before -o is touched
        from rationale.batch_providers import check_batchable

        check_batchable(predictor.client, timeout=config.timeout)
    # a student trained with history rationales sees the log's own where it has them
    chained = config.history_rationales or predictor.prompt.history_rationales
    with records:
        skipped = skipped_input(records)
        cases = list(eval_cases(records, cases=config.cases, limit=config.limit,
                                history_rationales=chained))  # fmt: skip
    if not cases:
        raise RationaleError(f"{config.data}: no test cases (with --cases {config.cases})")
    if note := predictor.prompt.history_note(cases):  # once, not per case
        print(note, file=sys.stderr)
    folder = EvalDir(config.output)
    folder.open()
    try:
        before = folder.previous()
        check_same(folder, before, config)
        data = _run(config, folder, cases, predictor, before, skipped)
    finally:
        folder.close()
    if data["failed"]:
        first = next(c for c in data["cases"] if c["status"] == "failed")
        raise RationaleError(
            f"{data['failed']} of {data['n_cases']} cases failed after their retries (first: "
            f"{first['problem']}); eval.json counts them wrong: fix the cause and rerun the same "
            "command to ask them again"
        )
    return EvalResult(folder=folder.path, data=data)


def _load(config: EvalConfig) -> Any:
    from rationale.predictor import Predictor

    options = {k: getattr(config, k) for k in (
        "engine", "batch_size", "temperature", "seed", "api_base", "timeout",
        "threads", "concurrency", "request_attempts", "client")}  # fmt: skip
    options["max_new_tokens"] = config.max_tokens
    return Predictor.load(
        config.model, template=config.template, max_context_tokens=config.max_context_tokens,
        history_rationales=config.history_rationales, action_space=config.action_space,
        eager=False, **options,
    )  # fmt: skip


def _run(
    config: EvalConfig, folder: EvalDir, cases: list[Any], predictor: Any,
    before: dict[str, Any] | None, skipped: Any,
) -> dict[str, Any]:  # fmt: skip
    started, t0 = time.time(), time.monotonic()
    done = folder.done()
    for case in cases:  # a stored answer counts only for the question the file asks now
        if case.key in done and done[case.key].get("truth") != case.truth:
            del done[case.key]
    todo = [c for c in cases if c.key not in done]
    how = f"engine {predictor.engine}: {predictor.engine_reason}"
    print(f"eval: {predictor.spec.label} on {len(cases)} cases ({len(cases) - len(todo)} done "
          f"before; {how})", file=sys.stderr)  # fmt: skip
    if todo and predictor.spec.kind != "api":
        predictor.generator  # noqa: B018  (load the weights now: a bad model fails before writing)
    elif before and not predictor.model_id:  # nothing to generate: the weights are not loaded
        predictor.model_id = (before.get("model") or {}).get("id", "")
    state: dict[str, Any] = {"stopped": None, "cache_hits": 0, "requests": 0, "skipped": skipped}
    header = _header(config, predictor, started)
    folder.write_json({**header, "n_cases": len(cases), "pending": len(todo),
                       "stopped": f"running (pid {os.getpid()})", "metrics": None,
                       "cases": []})  # fmt: skip
    sigterm = state["sigterm"] = SigtermGuard().install()  # until eval.json is final
    try:
        if todo and predictor.spec.kind == "api":
            asyncio.run(_api(config, folder, todo, predictor, done, state))
        elif todo:
            from rationale.progress import Progress

            bar = Progress(len(todo), label="eval", unit="cases")

            def save(indices: list[int], preds: list[Any]) -> None:
                pairs = zip(indices, preds, strict=True)
                recs = [case_record(todo[i], p, predictor.space) for i, p in pairs]
                folder.append(recs)
                done.update({(r["session_id"], r["step"]): r for r in recs})
                for _ in recs:
                    bar.update()

            try:
                predictor.predict_batch(todo, on_batch=save)
            finally:
                bar.close()
    except BaseException as exc:
        # the API path cancels its task on SIGTERM (a CancelledError arrives here)
        kind = Terminated if sigterm.came else type(exc)
        why = {Terminated: "SIGTERM", KeyboardInterrupt: "Ctrl-C"}.get(kind, kind.__name__)
        state["stopped"] = state["stopped"] or f"interrupted: {why}"
        sigterm.hold()  # another SIGTERM waits until eval.json is written
        data = _finish(config, folder, cases, done, predictor, header, state,
                       time.monotonic() - t0, todo)  # fmt: skip
        if kind is Terminated:
            raise RationaleError(f"eval stopped by SIGTERM with {data['pending']} cases pending; "
                                 "rerun the same command to continue") from None  # fmt: skip
        raise
    else:
        sigterm.hold()
        data = _finish(config, folder, cases, done, predictor, header, state,
                       time.monotonic() - t0, todo)  # fmt: skip
    finally:
        sigterm.restore()
    if sigterm.came:  # it came while eval.json was written, and waited for that
        raise RationaleError(
            f"eval stopped by SIGTERM once eval.json was written "
            f"({data['pending']} of {data['n_cases']} cases pending)"
            + ("; rerun the same command to continue" if data["pending"] else "")
        )
    return data


async def _api(
    config: EvalConfig, folder: EvalDir, todo: list[Any], predictor: Any,
    done: dict[tuple[str, int], dict[str, Any]], state: dict[str, Any],
) -> None:  # fmt: skip
    from rationale.batch_engine import make_engine

    client = predictor.client
    if config.max_cost is not None and client.price(1, 1) is None:
        raise RationaleError(f"the price of {client.model_id!r} is not in litellm's price map, "
                             "so --max-cost cannot be enforced; drop --max-cost or use a priced "
                             "model")  # fmt: skip
    engine = make_engine(config, folder)
    limited = engine.limited(client, "predict")
    engine.check()  # --batch: a model without a batch API stops here
    answered = failed = 0
    # in the event loop SIGTERM cancels this task (as in synth) instead of raising wherever the
    # loop happens to be: requests in flight are dropped, every finished case is on disk
    state["sigterm"].cancel_this_task()

    async def process(case: Any) -> bool:
        nonlocal answered, failed
        pred = await predictor.ask(engine, limited, predictor.messages(case))
        rec = case_record(case, pred, predictor.space)
        folder.append([rec])
        done[case.key] = rec
        if pred.status != "failed":
            answered += 1
        elif (failed := failed + 1) >= FAIL_FAST and not answered and engine.fatal is None:
            engine.fatal = FatalTeacherError(
                f"the first {failed} cases all failed, the last with {pred.problem}; check "
                "--model, its key and --api-base", category="failing",
            )  # fmt: skip
        return True

    try:

        def again() -> tuple[Any, int]:  # a further pass (--batch --wait)
            left = [c for c in todo if c.key not in done]
            return iter(left), len(left)

        await engine.drive(
            iter(todo), process, todo=len(todo), label="eval", unit="cases", again=again
        )
    finally:
        state["sigterm"].hold()  # what is left is writing the results
        await client.aclose()
        state["stopped"] = engine.stopped_reason()
        state["batch"] = engine.summary() if hasattr(engine, "store") else None
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


def _context_cut(cases: list[Any], predictor: Any, config: EvalConfig) -> dict[str, Any]:
    """How many cases' contexts the prompts cut, and in how many the true target survived.

    The cut is the blind one every eval prompt makes (`rationale.context.cut_context` with the
    model's budget), made again here: it depends on the context and the budget alone.
    """
    from rationale.context import cut_context, target_of

    prompt = getattr(predictor, "prompt", None)
    budget = getattr(prompt, "max_context_tokens", config.max_context_tokens)
    out = {"max_context_tokens": budget, "records": 0, "tokens": 0, "targets": 0,
           "target_survived": 0}  # fmt: skip
    for case in cases:
        cut = cut_context(case.step.record.context, budget)
        if not cut.cut_tokens:
            continue
        out["records"] += 1
        out["tokens"] += cut.cut_tokens
        if (target := target_of(case.truth)) is not None:
            out["targets"] += 1
            out["target_survived"] += cut.survived(target)
    return out


def _finish(
    config: EvalConfig, folder: EvalDir, cases: list[Any],
    done: dict[tuple[str, int], dict[str, Any]], predictor: Any, header: dict[str, Any],
    state: dict[str, Any], wall: float, asked: list[Any],
) -> dict[str, Any]:  # fmt: skip
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
        "skipped_input": state["skipped"],
        "metrics": metrics,
        "usage": {
            # of the cases in this file (an answer from the cache counts its original tokens)
            "prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in records),
            "completion_tokens": sum(r.get("completion_tokens") or 0 for r in records),
            # billed, over every invocation on this folder (the ledger)
            "cost_usd": round(float(spent["cost_usd"]), 8),
            "requests": int(spent["requests"]),
            "this_invocation": {
                "cases": finished_now,
                "requests": state["requests"],
                "cache_hits": state["cache_hits"],
                "wall_s": round(wall, 3),
                "cases_per_s": round(finished_now / wall, 3) if wall > 0 else None,
            },
        },
        "stopped": redact(state["stopped"]) if state["stopped"] else None,
        "batch": state.get("batch"),
        "context_cut": _context_cut(cases, predictor, config),
        "cases": records,
    }
    folder.write_json(data)
    if metrics is not None:
        write_type_chart(metrics, folder.path / "per_type.png", f"{predictor.spec.label}")
    for line in summary_lines(data, folder=folder.path):
        print(line, file=sys.stderr)
    if (cut := data["context_cut"])["records"]:
        from rationale.context import survival_note

        note = survival_note(cut["targets"], cut["target_survived"])
        print(f"eval: context cut in {cut['records']} of {len(cases)} cases to "
              f"{cut['max_context_tokens']} tokens{note}", file=sys.stderr)  # fmt: skip
    if pending:
        print(f"eval: {pending} of {len(cases)} cases pending ({data['stopped'] or 'stopped'}); "
              "rerun the same command to continue", file=sys.stderr)  # fmt: skip
    return data
