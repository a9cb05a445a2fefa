"""One library call per stage of `rationale.workflow`: the same calls the commands make.

Each runner takes a resolved `rationale.workflow.Stage`, runs it (its own resume included) and
returns a one-line detail for the run's summary, and the compare table for the compare stage.
A stage that stops early (a budget, SIGTERM) raises, so the workflow writes no stamp and a rerun
continues it. Heavy imports happen inside the runner that needs them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rationale.errors import RationaleError
from rationale.workspace import show

Echo = Callable[[str], None]


def run_stage(stage: Any, echo: Echo) -> tuple[str, str | None]:
    """Run one stage; returns (detail, compare table or None)."""
    runner = {
        "import": _import,
        "split": _split,
        "synth": _synth,
        "distill": _distill,
        "eval": _eval,
        "compare": _compare,
    }[stage.kind]
    return runner(stage.config, stage, echo)  # type: ignore[operator, no-any-return]


def _import(config: Any, stage: Any, echo: Echo) -> tuple[str, None]:
    from rationale.importers import run_import

    result = run_import(config)
    return (
        f"{result.steps} steps of {result.sessions} sessions from {show(result.sources[0])}",
        None,
    )


def _split(config: Any, stage: Any, echo: Echo) -> tuple[str, None]:
    from rationale.schema import ActionSpace
    from rationale.split import split_records

    space = ActionSpace.from_file(config.action_space) if config.action_space else None
    result = split_records(
        config.input, config.output, test_frac=config.test_frac, by=config.by, seed=config.seed,
        on_error=config.on_error, action_space=space,
    )  # fmt: skip
    tr, te = result.train, result.test
    return (
        f"train {tr.sessions} sessions, {tr.steps} steps; test {te.sessions} sessions, "
        f"{te.steps} steps",
        None,
    )


def _synth(config: Any, stage: Any, echo: Echo) -> tuple[str, None]:
    from rationale.runner import summary_lines
    from rationale.synth import run_synth

    result = run_synth(config)
    for line in summary_lines("synth", result):
        echo(line)
    if result.stopped or result.pending:
        raise RationaleError(
            f"synth stopped with {result.pending} records pending ({result.stopped or 'unknown'}); "
            "rerun `rationale run` to continue it"
        )
    c = result.counts
    if c["failed"]:
        echo(
            f"synth: {c['failed']} records failed (no answer after the retries); "
            f"`rationale synth {show(config.input)} -o {show(config.output)} --retry-failed` "
            "asks them again"
        )
    cost = f", ${result.tally.cost_usd:.4f}" if result.tally.cost_usd else ""
    return f"accepted {c['accepted']}, rejected {c['rejected']}, failed {c['failed']}{cost}", None


def _distill(config: Any, stage: Any, echo: Echo) -> tuple[str, None]:
    from distill.checkpoints import CHECKPOINTS_DIR, last_checkpoint
    from distill.pipeline import run_distill

    out = Path(config.output)
    if (out / "README.md").exists():
        raise RationaleError(
            f"{show(out)} holds a student trained with other settings or data than the workspace "
            "now says: move or delete it to train again"
        )
    if last_checkpoint(out / CHECKPOINTS_DIR) is not None:
        echo(f"{stage.name}: continuing from the last checkpoint in {show(out)}")
        config = config.model_copy(update={"resume": True})
    run = run_distill(config)
    r, s = run.result, run.stats
    loss = "no loss logged" if r.final_loss is None else f"final loss {r.final_loss:.4f}"
    return f"{s.examples} examples, {r.steps} steps, {loss}", None


def _eval(config: Any, stage: Any, echo: Echo) -> tuple[str, None]:
    from rationale.evaluate import run_eval

    data = run_eval(config).data
    if data.get("pending"):
        raise RationaleError(
            f"{stage.name}: {data['pending']} cases pending ({data.get('stopped') or 'stopped'}); "
            "rerun `rationale run` to continue it"
        )
    exact = ((data.get("metrics") or {}).get("session_exact_match") or {}).get("value")
    shown = f", exact match (session average) {exact:.1%}" if exact is not None else ""
    return f"{data['n_cases']} cases{shown}", None


def _compare(config: Any, stage: Any, echo: Echo) -> tuple[str, str]:
    from rationale.compare import compare

    names = [p.name for p in stage.reads]  # the eval folders are named for their arms
    result = compare(stage.reads, reference=config.reference, names=names)
    table, _chart = result.write(config.output)
    return f"{len(result.rows)} arms on {result.n_cases} cases -> {show(table)}", result.markdown()


def estimate_synth(synth: Any, stages: list[Any]) -> dict[str, Any]:
    """The synth dry-run estimate; the import and split it needs are made in a temp folder."""
    from rationale.synth import run_synth

    config = synth.config
    if Path(config.input).is_file():
        return run_synth(config.model_copy(update={"dry_run": True}))  # type: ignore[no-any-return]
    with tempfile.TemporaryDirectory(prefix="rationale-dry-") as tmp:
        last = None
        for stage in stages:
            if stage.kind not in ("import", "split"):
                continue
            update = {"output": str(Path(tmp) / stage.kind)}
            if stage.kind == "split" and last is not None:
                update["input"] = last
            copy = stage.config.model_copy(update=update)
            run_stage(type(stage)(stage.name, stage.kind, copy, []), lambda _: None)
            last = str(Path(tmp) / stage.kind)
        if last is None:
            raise RationaleError(f"dry run: {show(config.input)} does not exist yet")
        source = Path(last) / "train.jsonl" if Path(last).is_dir() else Path(last)
        dry = config.model_copy(
            update={"dry_run": True, "input": str(source), "output": str(Path(tmp) / "synth")}
        )
        return run_synth(dry)  # type: ignore[no-any-return]
