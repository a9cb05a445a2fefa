"""``rationale run``: a workspace file's whole chain, raw logs to the comparison table.

The stages run in order: import, split, synth (with the filter), distill (one student per
trained arm), eval (one per arm) and compare. The arms are declared in ``[compare] arms``:
``base`` (the student's base model, prompt-only), ``actions`` (a student trained on the actions
alone, ``--no-rationale``, on the same steps), ``rationale`` (a student trained on the accepted
rationale + action) and ``teacher`` (the teacher, prompt-only; an API teacher only).

Each stage has a fingerprint: its resolved settings and its inputs' fingerprints (the import's
are the source files' bytes), so a change anywhere reaches every stage after it. A finished stage
leaves a stamp in ``runs/.stamps/``; a rerun skips a stage whose stamp matches and whose outputs
are there. A stage that did not finish is run again and the stage's own resume does the work:
synth and eval continue their run folders (and the response cache answers repeated prompts),
distill continues from its last checkpoint. Nothing is deleted: a folder made with other settings
is refused by its stage, with the fix in the message.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rationale.errors import ConfigError, RationaleError
from rationale.workspace import STAGES, Workspace, flag, show

STAMPS = ".stamps"


@dataclass
class Stage:
    """One step of the chain: what runs, with which settings, writing what."""

    name: str  # "synth", "distill:actions", "eval:base", ...
    kind: str  # the workspace table: one of STAGES
    config: Any  # the resolved job model
    outputs: list[Path]
    fingerprint: str = ""
    note: str = ""  # why an arm is left out
    reads: list[Path] = field(default_factory=list)  # compare: the eval folders

    @property
    def arm(self) -> str | None:
        return self.name.split(":", 1)[1] if ":" in self.name else None


@dataclass
class StageReport:
    name: str
    status: str  # "ran", "up to date", "planned"
    wall_s: float = 0.0
    detail: str = ""


@dataclass
class RunReport:
    """What `run_workspace` did, stage by stage (the compare table is in ``table``)."""

    workspace: Path | None
    stages: list[StageReport] = field(default_factory=list)
    table: str | None = None
    estimate: dict[str, Any] | None = None

    def summary_lines(self) -> list[str]:
        total = sum(s.wall_s for s in self.stages)
        width = max((len(s.name) for s in self.stages), default=5)
        lines = [f"run: {len(self.stages)} stages, {total:.1f}s"]
        for s in self.stages:
            detail = f"  {s.detail}" if s.detail else ""
            lines.append(f"  {s.name:<{width}}  {s.wall_s:8.1f}s  {s.status}{detail}")
        return lines


def plan(workspace: Workspace) -> list[Stage]:
    """The stages of ``workspace``, resolved, in order (nothing is read but the settings)."""
    if workspace.path is None:
        raise ConfigError(
            "no workspace file: write one with `rationale init`, or name it (rationale run FILE)"
        )
    stages: list[Stage] = []
    tables = workspace.tables
    for kind in ("eval", "distill"):
        if tables.get(kind, {}).get("output"):
            raise ConfigError(
                f"{workspace.path}: [{kind}] output: rationale run writes one {kind} per arm, to "
                f"runs/{kind}/...; remove output from [{kind}]"
            )
    if "import" in tables:
        stages.append(_stage(workspace, "import", "import", {}, [workspace.import_output()]))
    if "split" in tables:
        split = _stage(workspace, "split", "split", {}, [])
        out = Path(split.config.output)
        split.outputs = [out / "train.jsonl", out / "test.jsonl"]
        stages.append(split)
    compare = tables.get("compare")
    arms = _stage_config(workspace, "compare", {})[0].arms if compare is not None else []
    synth = None
    if "synth" in tables:
        synth = _stage(workspace, "synth", "synth", {}, [])
        synth.outputs = [Path(synth.config.output) / "run.json"]
        stages.append(synth)
    students = [a for a in ("rationale", "actions") if a in arms] or (
        ["rationale"] if "distill" in tables and not arms else []
    )
    distill = {}
    if students and "distill" not in tables:
        raise ConfigError(
            f"{workspace.path}: the arms {', '.join(students)} need a [distill] table"
        )
    for arm in students:
        given = {"no_rationale": arm == "actions"}
        if synth is not None:
            given["data"] = synth.config.output
        stage = _stage(workspace, f"distill:{arm}", "distill", given, [])
        stage.config = stage.config.model_copy(
            update={
                "output": str(
                    workspace.distill_output(stage.config.base, no_rationale=arm == "actions")
                )
            }
        )
        stage.outputs = [Path(stage.config.output) / "README.md"]
        distill[arm] = stage
        stages.append(stage)
    models = {a: str(Path(s.config.output)) for a, s in distill.items()}
    if "base" in arms:
        base = tables.get("distill", {}).get("base")
        if not base:
            raise ConfigError(f"{workspace.path}: the arm base needs base in [distill]")
        models["base"] = base
    teacher_note = ""
    if "teacher" in arms:
        teacher = synth.config.teacher if synth is not None else ""
        if teacher and not teacher.startswith("local"):
            models["teacher"] = teacher
        else:
            teacher_note = "teacher arm left out: it needs an API teacher (this one is local)"
    evals = []
    for arm in [a for a in arms if a in models]:
        given = {"model": models[arm], "output": str(workspace.default("eval", arm))}
        if arm == "teacher" and synth is not None:  # the teacher's endpoint, unless [eval] has one
            for key in ("api_base", "client"):
                if getattr(synth.config, key) != "auto" and key not in tables.get("eval", {}):
                    given[key] = getattr(synth.config, key)
        stage = _stage(workspace, f"eval:{arm}", "eval", given, [])
        stage.outputs = [Path(stage.config.output) / "eval.json"]
        evals.append(stage)
        stages.append(stage)
    if compare is not None:
        reference = compare.get("reference") or ("rationale" if "rationale" in models else None)
        ref_dir = str(workspace.default("eval", reference)) if reference in models else reference
        stage = _stage(workspace, "compare", "compare", {"reference": ref_dir}, [])
        stage.outputs = [Path(stage.config.output) / "compare.md"]
        stage.reads = [Path(e.config.output) for e in evals]
        stage.note = teacher_note
        stages.append(stage)
    _fingerprint(stages)
    return stages


def _stage_config(workspace: Workspace, kind: str, given: dict[str, Any]) -> tuple[Any, list[str]]:
    from pydantic import ValidationError

    from rationale.workspace import stage_model

    resolved = workspace.resolve(kind, given)
    try:
        return stage_model(kind)(**resolved.values), resolved.notes
    except ValidationError as exc:
        problems = "; ".join(
            f"{flag('.'.join(map(str, e['loc'])))}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ConfigError(f"{workspace.path} [{kind}]: {problems}") from None


def _stage(workspace: Workspace, name: str, kind: str, given: dict[str, Any],
           outputs: list[Path]) -> Stage:  # fmt: skip
    config, _ = _stage_config(workspace, kind, given)
    return Stage(name, kind, config, outputs)


def _fingerprint(stages: list[Stage]) -> None:
    """Each stage's fingerprint: its settings, its sources' bytes, and the stages before it that
    it reads (for simplicity: all earlier stages of an earlier kind)."""
    done: list[Stage] = []
    for stage in stages:
        h = hashlib.sha256(stage.name.encode())
        h.update(stage.config.model_dump_json().encode())
        if stage.kind == "import":
            from rationale.importers import chosen_sources

            for source in chosen_sources(stage.config):
                for path in _files(Path(source)):
                    h.update(str(path).encode() + _file_digest(path).encode())
        elif stage.kind in ("split", "synth") and not _produced(stage.config.input, done):
            h.update(_file_digest(Path(stage.config.input)).encode())
        for before in done:
            if STAGES.index(before.kind) < STAGES.index(stage.kind) and _feeds(before, stage):
                h.update(before.fingerprint.encode())
        stage.fingerprint = h.hexdigest()
        done.append(stage)


def _produced(path: str, done: list[Stage]) -> bool:
    """Whether an earlier stage writes ``path`` (then its fingerprint stands for the bytes)."""
    target = Path(path).resolve()
    return any(target == p.resolve() for s in done for p in s.outputs)


def _feeds(before: Stage, stage: Stage) -> bool:
    """Whether ``before``'s output is read by ``stage`` (a student feeds only its own eval)."""
    if before.kind == "distill" and stage.kind == "eval":
        return before.arm == stage.arm
    return True


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _file_digest(path: Path) -> str:
    if not path.is_file():
        return "missing"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stamp_path(workspace: Workspace, stage: Stage) -> Path:
    return workspace.default(STAMPS, stage.name.replace(":", "-") + ".json")


def _stamp(workspace: Workspace, stage: Stage) -> dict[str, Any]:
    try:
        stamp = json.loads(_stamp_path(workspace, stage).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def up_to_date(workspace: Workspace, stage: Stage) -> bool:
    """Whether the stage finished with these settings and inputs, and its outputs are there."""
    stamp = _stamp(workspace, stage)
    return stamp.get("fingerprint") == stage.fingerprint and all(p.exists() for p in stage.outputs)


def command(stage: Stage) -> str:
    """The ``rationale`` command line that runs this stage alone."""
    config = stage.config
    words = ["rationale"]
    positional: list[str] = []
    if stage.kind == "import":
        words += ["import", config.format]
        positional = [show(s) for s in config.source]
        skip = {"format", "source"}
    elif stage.kind in ("split", "synth"):
        words.append(stage.kind)
        positional = [show(config.input)]
        skip = {"input"}
    else:
        words.append(stage.kind)
        skip = {"arms"}
    fields = type(config).model_fields
    for name, info in fields.items():
        value = getattr(config, name)
        if name in skip or name == "rules":
            continue
        always = (stage.kind, name) in {("synth", "teacher")}  # the command requires it
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if (value == default and not always) or value is None:
            continue
        key = "-o" if name == "output" else f"--{flag(name)}"
        if isinstance(value, bool):
            words.append(key)
        elif isinstance(value, list):
            for item in value:
                words += [key, show(item)]
        else:
            words += [key, show(value) if isinstance(value, str) else str(value)]
    if stage.kind == "compare":
        positional = [show(p) for p in stage.reads]
    return shlex.join(words + positional)


Echo = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_workspace(
    workspace: Workspace | str | Path | None = None,
    *,
    start: str | None = None,
    until: str | None = None,
    dry_run: bool = False,
    echo: Echo = _stderr,
) -> RunReport:
    """Run (or resume) a workspace's chain; ``start``/``until`` name the first and last stage
    kinds to run. With ``dry_run``: the stages, their commands and the synth cost estimate."""
    if not isinstance(workspace, Workspace):
        workspace = Workspace.find(str(workspace) if workspace else None)
    for name, value in (("--from", start), ("--until", until)):
        if value is not None and value not in STAGES:
            raise ConfigError(f"{name} {value}: not a stage; the stages are {', '.join(STAGES)}")
    first = STAGES.index(start) if start else 0
    last = STAGES.index(until) if until else len(STAGES) - 1
    if first > last:
        raise ConfigError(f"--from {start} comes after --until {until}")
    stages = plan(workspace)
    chosen = [s for s in stages if first <= STAGES.index(s.kind) <= last]
    report = RunReport(workspace.path)
    if dry_run:
        return _walk(workspace, stages, chosen, report, dry_run, echo)
    from rationale.rundir import take_lock

    stamps = workspace.default(STAMPS)
    stamps.mkdir(parents=True, exist_ok=True)
    lock = take_lock(stamps, "run")  # one `rationale run` per workspace at a time
    try:
        return _walk(workspace, stages, chosen, report, dry_run, echo)
    finally:
        lock.close()


def _walk(workspace: Workspace, stages: list[Stage], chosen: list[Stage], report: RunReport,
          dry_run: bool, echo: Echo) -> RunReport:  # fmt: skip
    from rationale.stage_runners import estimate_synth, run_stage

    n = len(chosen)
    for i, stage in enumerate(chosen, 1):
        fresh = up_to_date(workspace, stage)
        head = f"[{i}/{n}] {stage.name}"
        if dry_run:
            state = "up to date" if fresh else "to run"
            echo(f"{head}: {state}\n    {command(stage)}")
            report.stages.append(StageReport(stage.name, "planned" if not fresh else state))
            continue
        if fresh:
            echo(f"{head}: up to date (finished before with the same settings and inputs)")
            took = _stamp(workspace, stage).get("wall_s")
            report.stages.append(
                StageReport(stage.name, "up to date", detail=f"(took {took}s when it ran)")
            )
            if stage.kind == "compare":
                report.table = stage.outputs[0].read_text(encoding="utf-8")
            continue
        _check_inputs(stage, stages, workspace)
        retired = _retire(workspace, stage)
        if retired is not None:
            echo(f"{head}: settings or inputs changed; the earlier output moved to {show(retired)}")
        echo(f"{head}: {command(stage)}")
        t0 = time.monotonic()
        detail, table = run_stage(stage, echo)
        wall = time.monotonic() - t0
        _stamp_path(workspace, stage).parent.mkdir(parents=True, exist_ok=True)
        from rationale.rundir import write_json

        write_json(
            _stamp_path(workspace, stage),
            {"stage": stage.name, "fingerprint": stage.fingerprint, "wall_s": round(wall, 1),
             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        )  # fmt: skip
        echo(f"{head}: done in {wall:.1f}s{f' ({detail})' if detail else ''}")
        report.stages.append(StageReport(stage.name, "ran", wall, detail))
        if table is not None:
            report.table = table
    if dry_run:
        synth = next((s for s in chosen if s.kind == "synth"), None)
        if synth is not None and not up_to_date(workspace, synth):
            report.estimate = estimate_synth(synth, stages)
    for stage in stages:
        if stage.note:
            echo(f"note: {stage.note}")
    return report


def _retire(workspace: Workspace, stage: Stage) -> Path | None:
    """Move aside the output of a distill or eval this workflow finished with other settings or
    inputs (its stamp says so), so the stage can run afresh; nothing is deleted. A synth run is
    never moved: its own resume keeps what was paid for, and it refuses a different teacher."""
    stamp = _stamp_path(workspace, stage)
    if stage.kind not in ("distill", "eval") or not stamp.exists():
        return None
    folder = Path(stage.config.output)
    stamp.unlink()  # a run stopped after this resumes instead of moving its own work aside
    if not folder.exists():
        return None
    target = workspace.default(
        ".outdated", f"{stage.name.replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(target)
    return target


def _check_inputs(stage: Stage, stages: list[Stage], workspace: Workspace) -> None:
    """A stage whose producer was not run (``--from``) needs that producer's output there."""
    for before in stages:
        if before is stage:
            return
        if _feeds(before, stage) and STAGES.index(before.kind) < STAGES.index(stage.kind):
            missing = [p for p in before.outputs if not p.exists()]
            if missing:
                raise RationaleError(
                    f"{stage.name} needs {show(missing[0])}, which {before.name} writes: run "
                    f"from {before.kind} (rationale run --from {before.kind})"
                )
