"""`--ray [ADDRESS] --shards N`: the N shards of one job as Ray tasks, then merged.

Each task runs one shard (`rationale.shards`) of the synth, filter or eval job, exactly as
``--shard K/N`` would, into ``OUTPUT/shards/K-of-N`` (OUTPUT must be a path every node of the
cluster reaches: a shared file system). A task that fails or whose worker is killed is retried by
Ray and resumes from its shard folder through the job's own resume, so no record is redone and
no answer already cached is paid again. When every shard has finished, they are merged
(`rationale.merge`) into OUTPUT itself, which then reads as the unsharded run's folder.

Ray is imported only here, only with ``--ray``: ``auto`` joins the running cluster (``ray start``,
``RAY_ADDRESS``) and starts a local one when none runs; ``local`` always starts a local one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from rationale.errors import ConfigError, RationaleError, redact

__all__ = ["BudgetStop", "run_on_ray"]


class BudgetStop(RationaleError):
    """``--max-cost`` stopped the shards (a normal end, as for one process: the CLI exits 0);
    the shards keep what they did, a rerun with a higher cap continues and merges."""


RETRIES = 3  # a shard task is retried this many times (a worker killed, a node lost)


def _run_shard(kind: str, config: dict[str, Any], limits: Any = None) -> dict[str, Any]:
    """One shard, in a Ray worker: the job's own run (and resume) on its shard folder, under the
    invocation's one budget and rate limits (``limits``, the `Limits` actor) when it has them."""
    from rationale import engine
    from rationale.shared_limits import SharedLimits

    engine.shared_limits = None if limits is None else SharedLimits(limits)
    try:
        return _run(kind, config)
    finally:
        engine.shared_limits = None


def _run(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    if kind == "eval":
        from rationale.evaluate import EvalConfig, run_eval

        try:
            data = run_eval(EvalConfig(**config)).data
        except RationaleError as exc:  # cases failed: they are in the folder, counted wrong
            return {"error": str(exc)}
        return {"pending": data["pending"], "stopped": data.get("stopped")}
    from rationale.synth import SynthConfig

    if kind == "filter":
        from rationale.filter import run_filter as run
    else:
        from rationale.synth import run_synth as run
    summary = run(SynthConfig(**config))
    return {"pending": summary.pending, "counts": summary.counts, "stopped": summary.stopped}


def run_on_ray(kind: str, config: Any, *, shards: int, address: str = "auto") -> Any:
    """Run ``config`` (a `SynthConfig` for synth and filter, an `EvalConfig` for eval) as
    ``shards`` Ray tasks, then merge them into ``config.output``; returns the `MergeResult`."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'rationale-distill[ray]'") from None
    from rationale.merge import merge

    if shards < 1:
        raise ConfigError("--shards must be at least 1")
    if config.shard is not None:
        raise ConfigError("--ray runs every shard itself: drop --shard")
    if getattr(config, "limit", None) is not None:  # found using it: it failed only at the merge
        raise ConfigError(
            f"--limit {config.limit} with --ray would take the first {config.limit} records of "
            "each shard, which do not merge into one job: drop --limit, or run without --ray"
        )
    output = Path(config.output).resolve()  # the workers' own folder may be another
    folders = [output / "shards" / f"{k}-of-{shards}" for k in range(1, shards + 1)]
    configs = [
        config.model_copy(update={"shard": f"{k}/{shards}", "output": str(folder)})
        for k, folder in zip(range(1, shards + 1), folders, strict=True)
    ]
    if not ray.is_initialized():
        _init(ray, address)
    task = ray.remote(max_retries=RETRIES)(_run_shard)
    if os.environ.get("RATIONALE_HOME"):  # the state folder (cache, indexes) the driver uses
        task = task.options(
            runtime_env={"env_vars": {"RATIONALE_HOME": os.environ["RATIONALE_HOME"]}}
        )
    limits = _limits(ray, config, folders)
    try:
        refs = [task.remote(kind, c.model_dump(), limits) for c in configs]
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=5.0)
            print(_progress(kind, folders), file=sys.stderr)
        try:
            results = ray.get(refs)  # a task that failed (after its retries) raises here
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
            raise RationaleError(
                f"a shard stopped ({redact(first)}); fix the cause and rerun the same command: "
                "every shard resumes from its folder"
            ) from None
    finally:
        if limits is not None:
            ray.kill(limits)
    # a fault first (a bad key would stop a rerun with a higher cap too), then the budget
    stops = [
        (k, r.get("error") or r["stopped"])
        for k, r in enumerate(results, start=1)
        if r.get("error") or str(r.get("stopped") or "").startswith(("error", "fatal"))
    ]
    if stops:
        k, why = stops[0]
        raise RationaleError(
            f"shard {k}/{shards} stopped ({redact(str(why))}); fix the cause and rerun the same "
            "command: every shard resumes from its folder"
        )
    if any(str(r.get("stopped") or "").startswith("budget") for r in results):
        from rationale.rundir import ledger_billed

        billed = sum(ledger_billed(folder / "ledger.jsonl") for folder in folders)
        pending = sum(r.get("pending") or 0 for r in results)
        raise BudgetStop(
            f"stopped early (budget: ${billed:.6f} billed to this run folder over every "
            f"invocation and shard; the next request could pass --max-cost ${config.max_cost}): "
            f"{pending} {'cases' if kind == 'eval' else 'records'} pending over {shards} shards, "
            "not merged; rerun with a higher --max-cost to continue"
        )
    left = [(k, r) for k, r in enumerate(results, start=1) if r.get("pending")]
    if left:
        k, why = left[0]
        raise RationaleError(
            f"shard {k}/{shards} did not finish ({why['pending']} pending); rerun the same "
            "command: every shard resumes from its folder"
        )
    return _merge_into(merge, folders, output)


def _limits(ray: Any, config: Any, folders: list[Path]) -> Any:
    """The `Limits` actor of this invocation: one ``--max-cost``, ``--rpm`` and ``--tpm`` for
    all its shards (`rationale.shared_limits`), holding from the start what each shard folder
    was billed before; None when none is set."""
    from rationale.batch_engine import held_by_jobs
    from rationale.engine import TPM_WINDOW_S
    from rationale.rundir import ledger_billed
    from rationale.shared_limits import Limits, shard_scope

    rpm, tpm = getattr(config, "rpm", None), getattr(config, "tpm", None)
    if config.max_cost is None and not rpm and not tpm:
        return None
    # a live engine settles each request within its --timeout: holds quiet for much longer
    # are a dead worker's
    stale_after = 2 * float(getattr(config, "timeout", 60.0)) + 60.0
    # an async actor runs 1,000 calls at once by default; every worker of every shard may wait
    actor = ray.remote(num_cpus=0, max_concurrency=4096)(Limits).remote(
        config.max_cost, rpm, tpm, TPM_WINDOW_S, stale_after
    )
    ray.get([actor.preload.remote(shard_scope(f), ledger_billed(f / "ledger.jsonl"),
                                  held_by_jobs(f)) for f in folders])  # fmt: skip
    return actor


def _init(ray: Any, address: str) -> None:
    """Join the cluster at ``address`` (``auto``: the running one, else a local one)."""
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address == "local":
        ray.init(**quiet)
        return
    try:
        ray.init(address=address, **quiet)
    except ConnectionError:
        if address != "auto":
            raise RationaleError(f"--ray {address}: no Ray cluster answers there") from None
        print("ray: no running cluster; starting a local one", file=sys.stderr)
        ray.init(**quiet)


def _progress(kind: str, folders: list[Path]) -> str:
    """One line over every shard, from their run.json / eval.json (written as they go)."""
    done = total = 0
    for folder in folders:
        for name in ("run.json", "eval.json"):
            file = folder / name
            if file.is_file():
                try:
                    data = json.loads(file.read_text(encoding="utf-8"))
                except ValueError:  # being replaced this very moment
                    continue
                n = data.get("records", data.get("n_cases")) or 0
                total += n
                done += n - (data.get("pending") or 0)
    return f"ray: {kind}: {done}/{total} across {len(folders)} shards"


def _merge_into(merge: Any, folders: list[Path], output: Path) -> Any:
    """Merge the shards next to them, then move the merged files into ``output``."""
    staging = output / ".merging"
    shutil.rmtree(staging, ignore_errors=True)
    result = merge(folders, staging)
    for item in staging.iterdir():
        os.replace(item, output / item.name)
    staging.rmdir()
    from rationale.rundir import write_json

    for name in ("run.json", "eval.json"):  # where the merged folder is, now
        if (file := output / name).is_file():
            data = json.loads(file.read_text(encoding="utf-8"))
            data["config"]["output"] = str(output.resolve())
            write_json(file, data, ensure_ascii=False)
    return type(result)(output, result.kind, result.shards, result.records)
