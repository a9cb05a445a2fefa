"""One library call per stage of `rationale.workflow`: the same calls the commands make.

Each runner takes a resolved `rationale.workflow.Stage`, runs it (its own resume included) and
returns a one-line detail for the run's summary, and the compare table for the compare stage.
A stage that stops early (a budget, SIGTERM) raises, so the workflow writes no stamp and a rerun
continues it. Heavy imports happen inside the runner that needs them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
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
    from rationale.records import RecordFile
    from rationale.schema import ActionSpace
    from rationale.split import split_records

    space = ActionSpace.from_file(config.action_space) if config.action_space else None
    with RecordFile(config.input, space=space, on_error=config.on_error) as records:
        for line in records.skip_report():  # what --on-error skip left out, as `split` says
            echo(line)
        result = split_records(
            records, config.output, test_frac=config.test_frac, by=config.by, seed=config.seed
        )
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
            "`rationale run` again continues it"
            + (
                "; max-cost caps the run folder over every invocation: raise it to spend more"
                if config.max_cost is not None
                else ""
            )
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

    if last_checkpoint(stage.folder / CHECKPOINTS_DIR) is not None:
        echo(f"{stage.name}: continuing from the last checkpoint in {show(stage.folder)}")
        config = config.model_copy(update={"resume": True})
    run = run_distill(config, plain_progress=True)  # our progress lines, not trainer log dicts
    r, s = run.result, run.stats
    loss = "no loss logged" if r.final_loss is None else f"final loss {r.final_loss:.4f}"
    return f"{s.examples} examples, {r.steps} steps, {loss}", None


def prepare(stage: Any, earlier: dict[str, Any], producers: dict[str, str],
            outdated: Path) -> str:  # fmt: skip
    """Before a stage that is not up to date runs: what to do with what its folder holds.

    ``earlier`` is the stage's stamp from a finished run with other settings or inputs ({}
    when there is none), ``producers`` the ids of the stamps it reads now. Returns "run",
    "adopted" (a student trained with these very settings, whose stamp was lost to a kill), or
    "moved to PATH" (an eval or a student of other settings or inputs, or a student's
    interrupted training of other settings or data, kept under ``outdated``). A student folder
    that this workflow did not make and that holds other settings is refused.
    """
    from rationale import stamps

    folder = stage.folder
    if stage.kind == "distill" and (folder / "README.md").exists():
        if earlier:
            return _move(stage, outdated)
        recorded = stamps.read(folder / "config.json").get("config") or {}
        mine = stamps.settings("distill", stage.config)
        theirs = {k: v for k, v in recorded.items() if k in mine}
        if theirs == mine:
            return "adopted"
        diff = ", ".join(f"{k} {theirs.get(k)!r} -> {v!r}" for k, v in mine.items()
                         if theirs.get(k) != v)  # fmt: skip
        raise RationaleError(
            f"{show(folder)} holds a student trained with other settings ({diff}) that rationale "
            "run did not make: move or delete it to train here"
        )
    if stage.kind == "distill":
        from distill.checkpoints import checkpoint_changes

        changed = checkpoint_changes(stage.config)
        if changed:  # an interrupted training of other settings or data: resuming would mix two
            return (f"{_move(stage, outdated)} (its interrupted training differs: "
                    f"{'; '.join(changed)}); training starts from scratch")  # fmt: skip
    if stage.kind == "eval" and (folder / "eval.json").exists():
        # an interrupted eval (no stamp) is checked too: its model may have been retrained
        same_inputs = not earlier or earlier.get("producers") == producers
        identity = stamps.read(folder / "eval.json").get("identity")
        if not (same_inputs and identity == stage.config.identity()):
            return _move(stage, outdated)  # a limit, budget or speed change resumes instead
    return "run"


def _move(stage: Any, outdated: Path) -> str:
    import time

    target = outdated / f"{stage.name.replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    stage.folder.rename(target)
    return f"moved to {show(target)}"


def _eval(config: Any, stage: Any, echo: Echo) -> tuple[str, None]:
    from rationale.evaluate import run_eval

    data = run_eval(config).data
    if data.get("pending"):
        raise RationaleError(
            f"{stage.name}: {data['pending']} cases pending ({data.get('stopped') or 'stopped'}); "
            "`rationale run` again continues it"
            + (
                "; max-cost caps the run folder over every invocation: raise it to spend more"
                if config.max_cost is not None
                else ""
            )
        )
    exact = ((data.get("metrics") or {}).get("session_exact_match") or {}).get("value")
    shown = f", exact match (session average) {exact:.1%}" if exact is not None else ""
    return f"{data['n_cases']} cases{shown}", None


def _compare(config: Any, stage: Any, echo: Echo) -> tuple[str, str]:
    from rationale.compare import compare

    names = [p.name for p in stage.inputs]  # the eval folders are named for their arms
    result = compare(stage.inputs, reference=config.reference, names=names)
    table, _chart = result.write(config.output)
    return f"{len(result.rows)} arms on {result.n_cases} cases -> {show(table)}", result.markdown()


def estimate_synth(synth: Any, stages: list[Any]) -> dict[str, Any]:
    """The synth dry-run estimate; the import and split it needs are made in a temp folder."""
    from rationale.synth import run_synth

    config = synth.config
    if Path(config.input).is_file():
        return run_synth(config.model_copy(update={"dry_run": True}))  # type: ignore[no-any-return]
    from rationale.importers import action_space_path

    with tempfile.TemporaryDirectory(prefix="rationale-dry-") as tmp:
        last = None
        spaces: dict[str, str] = {}  # the import's action-space file -> its copy in tmp

        def moved(space: str | None) -> str | None:
            return spaces.get(str(space), space) if space else space

        for stage in stages:
            if stage.kind not in ("import", "split"):
                continue
            update = {"output": str(Path(tmp) / stage.kind)}
            if stage.kind == "import":
                spaces[str(action_space_path(stage.config.output))] = str(
                    action_space_path(update["output"])
                )
            if stage.kind == "split":
                update["action_space"] = moved(stage.config.action_space)
                if last is not None:
                    update["input"] = last
            copy = stage.config.model_copy(update=update)
            run_stage(replace(stage, config=copy), lambda _: None)
            last = str(Path(tmp) / stage.kind)
        if last is None:
            raise RationaleError(f"dry run: {show(config.input)} does not exist yet")
        source = Path(last) / "train.jsonl" if Path(last).is_dir() else Path(last)
        dry_update = {"dry_run": True, "input": str(source), "output": str(Path(tmp) / "synth")}
        dry = config.model_copy(update={**dry_update, "action_space": moved(config.action_space)})
        return run_synth(dry)  # type: ignore[no-any-return]
