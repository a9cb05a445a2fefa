"""``rationale run``: a workspace file's whole chain, raw logs to the comparison table.

The stages run in order: import, split, synth (with the filter), distill (one student per
trained arm), eval (one per arm) and compare. The arms are declared in ``[compare] arms``:
``base`` (the student's base model, prompt-only), ``actions`` (a student trained on the actions
alone, ``--no-rationale``, on the same steps), ``rationale`` (a student trained on the accepted
rationale + action) and ``teacher`` (the teacher, prompt-only; an API teacher only).

A finished stage leaves a stamp (`rationale.stamps`); a rerun skips a stage whose fingerprint
matches its stamp and whose outputs are there. A stage that did not finish runs again and its
own resume does the work: synth and eval continue their folders (the response cache answers
repeated prompts), distill continues from its last checkpoint. An eval or a student made with
other settings is moved to ``runs/.outdated/``, never deleted; a synth run is never moved (its
resume keeps what was paid for, and it refuses another teacher with the fix in the message).
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rationale import stamps
from rationale.errors import ConfigError, RationaleError, redact
from rationale.workspace import STAGES, Workspace, flag, show

STAMPS = ".stamps"
Echo = Callable[[str], None]
#: The settings each stage's command gets as flags; the rest come from the workspace file.
_PATH_KEYS = {"input", "output", "data", "model", "reference"}


@dataclass
class Stage:
    """One step of the chain: what runs, with which settings, reading and writing what."""

    name: str  # "synth", "distill:actions", "eval:base", ...
    kind: str  # the workspace table: one of STAGES
    config: Any  # the resolved job model
    given: dict[str, Any]  # what the workflow sets over the table (the command's flags)
    inputs: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    producers: list[Stage] = field(default_factory=list)
    note: str = ""  # why an arm is left out

    @property
    def folder(self) -> Path:
        return Path(self.config.output)


@dataclass
class StageReport:
    name: str
    status: str  # "ran", "up to date", "to run", "adopted"
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
    """The stages of ``workspace``, resolved, in order; nothing is read but the settings."""
    if workspace.path is None:
        raise ConfigError(
            "no workspace file: write one with `rationale init`, or name it (rationale run FILE)"
        )
    tables = workspace.tables
    for kind in ("eval", "distill"):
        if tables.get(kind, {}).get("output"):
            raise ConfigError(
                f"{workspace.path}: [{kind}] output: rationale run writes one {kind} per arm, to "
                f"runs/{kind}/<arm>; remove output from [{kind}]"
            )
    stages: list[Stage] = []

    def add(name: str, kind: str, given: dict[str, Any]) -> Stage:
        stage = Stage(name, kind, _config(workspace, kind, given), given)
        _wire(stage, stages)
        stages.append(stage)
        return stage

    if "import" in tables:
        space = workspace.import_action_space()  # miniwob, browser-log: every later stage reads it
        add("import", "import", {}).outputs.extend([space] if space else [])
    if "split" in tables:
        add("split", "split", {})
    synth = add("synth", "synth", {}) if "synth" in tables else None
    compare = _config(workspace, "compare", {}) if "compare" in tables else None
    from rationale.compare import CompareConfig

    arms = (compare or CompareConfig()).arms if {"compare", "eval"} & set(tables) else []
    models: dict[str, str] = {}
    notes = []
    students = [a for a in ("rationale", "actions") if a in arms]
    if students and synth is None and not tables.get("distill", {}).get("data"):
        notes.append(f"{', '.join(students)} arms left out: no [synth] and no [distill] data")
        students = []
    for arm in students:
        if "distill" not in tables:
            raise ConfigError(f"{workspace.path}: the arm {arm} needs a [distill] table")
        given: dict[str, Any] = {"no_rationale": arm == "actions"}
        if synth is not None:
            given["data"] = str(synth.folder)
        # its output: runs/distill/<base>[-actions], the default `resolve` fills in
        models[arm] = add(f"distill:{arm}", "distill", given).config.output
    if "base" in arms:
        if not tables.get("distill", {}).get("base"):
            raise ConfigError(f"{workspace.path}: the arm base needs base in [distill]")
        models["base"] = tables["distill"]["base"]
    if "teacher" in arms:
        teacher = synth.config.teacher if synth is not None else ""
        if teacher and not teacher.startswith("local"):
            models["teacher"] = teacher
        else:
            notes.append("teacher arm left out: it needs an API teacher (this one is local)")
    evals = []
    for arm in (a for a in arms if a in models):
        given = {"model": models[arm], "output": str(workspace.default("eval", arm))}
        if arm in ("rationale", "actions"):  # [eval] template is for prompt-only arms: a
            given["template"] = None  # student is prompted as it was trained
        if arm == "teacher" and synth is not None:  # the teacher's endpoint and cap by default
            for key in ("api_base", "client", "max_cost"):
                value = getattr(synth.config, key)
                if value not in (None, "auto") and key not in tables.get("eval", {}):
                    given[key] = value
        evals.append(add(f"eval:{arm}", "eval", given))
    if compare is not None:
        reference = compare.reference or ("rationale" if "rationale" in models else None)
        where = f"{workspace.where('compare')} reference"  # an arm's name, or an eval folder
        reference = workspace.reference_eval(reference, compare.arms, list(models), where,
                                             "it is left out of this run")  # fmt: skip
        stage = add("compare", "compare", {"reference": reference})
        stage.inputs = [e.folder for e in evals]
        stage.producers = evals
        stage.outputs = [stage.folder / "compare.md"]
    if notes and stages:
        stages[-1].note = "; ".join(notes)
    return stages


def _config(workspace: Workspace, kind: str, given: dict[str, Any]) -> Any:
    return workspace.build(kind, given)[0]


def _wire(stage: Stage, before: list[Stage]) -> None:
    """A stage's input and output paths, and the earlier stages that write its inputs."""
    c = stage.config
    if stage.kind == "import":
        stage.outputs = [Path(c.output)]
    elif stage.kind == "split":
        stage.inputs, stage.outputs = (
            [Path(c.input)],
            [stage.folder / n for n in ("train.jsonl", "test.jsonl")],
        )
    elif stage.kind == "synth":
        stage.inputs, stage.outputs = [Path(c.input)], [stage.folder / "run.json"]
    elif stage.kind == "distill":
        stage.inputs, stage.outputs = [Path(c.data)], [stage.folder / "README.md"]
    elif stage.kind == "eval":
        stage.inputs, stage.outputs = [Path(c.data), Path(c.model)], [stage.folder / "eval.json"]
    for path in stage.inputs:
        for producer in before:
            writes = (
                [producer.folder] if producer.kind in ("synth", "distill") else producer.outputs
            )
            if any(_same(path, w) for w in writes) and producer not in stage.producers:
                stage.producers.append(producer)


def _same(a: Path, b: Path) -> bool:
    return a.expanduser().resolve() == b.expanduser().resolve()


def external_inputs(stage: Stage) -> list[Path]:
    """The inputs no earlier stage writes: their bytes go into the fingerprint."""
    if stage.kind == "import":
        from rationale.importers import chosen_sources

        return [Path(s) for s in chosen_sources(stage.config)]
    written = [w for p in stage.producers for w in (p.folder, *p.outputs)]
    # an eval's model is its producer's (a student) or a name; a base model's bytes are not read
    inputs = stage.inputs[:1] if stage.kind == "eval" else stage.inputs
    return [p for p in inputs if p.exists() and not any(_same(p, w) for w in written)]


def command(stage: Stage, workspace: Workspace) -> str:
    """The ``rationale`` command that runs this stage alone (its other settings come from the
    workspace file it names); secrets redacted."""
    c = stage.config
    words = ["rationale"] + (["import", c.format] if stage.kind == "import" else [stage.kind])
    positional: list[str] = []
    if stage.kind == "import":
        positional = [show(s) for s in c.source]
    elif stage.kind in ("split", "synth"):
        positional = [show(c.input)]
    elif stage.kind == "compare":
        positional = [show(p) for p in stage.inputs]
    given = dict(stage.given)
    if stage.kind in ("split", "synth", "distill", "eval", "compare") and "output" not in given:
        given["output"] = c.output
    for key, value in given.items():
        if value is None or value is False:
            continue
        option = "-o" if key == "output" else f"--{flag(key)}"
        if value is True:
            words.append(option)
        else:
            path = key in _PATH_KEYS and Path(str(value)).is_absolute()
            words += [option, show(value) if path else str(value)]
    words += ["--config", show(workspace.path)]
    return redact(shlex.join(words + positional))


def _missing_input(stage: Stage) -> tuple[Path, Stage] | None:
    """The earliest stage output missing on the way to ``stage`` (with ``--from``), if any."""
    for producer in stage.producers:
        writes = (producer.folder, *producer.outputs)
        needed = [p for p in stage.inputs if any(_same(p, w) for w in writes)]
        missing = [p for p in (*needed, *producer.outputs) if not p.exists()]
        if missing:
            return _missing_input(producer) or (missing[0], producer)
    return None


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
    from rationale.rundir import take_lock

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
    folder = workspace.default(STAMPS)
    folder.mkdir(parents=True, exist_ok=True)
    lock = take_lock(folder, "run")  # one `rationale run` per workspace at a time
    try:
        return _walk(workspace, stages, chosen, report, dry_run, echo)
    except BaseException:
        for line in report.summary_lines()[1:]:  # what finished before the failure
            echo(line)
        raise
    finally:
        lock.close()


def _quiet_libraries() -> None:
    """Silence the per-sub-step bars of the libraries a model stage loads (the weights loaded,
    a GGUF file's tensors de-quantized, each `datasets` map of the trainer's data) and peft's
    warning that a GGUF base has no config file beside it (nothing a user can do; the
    vocabulary is not changed): `rationale run` says one line per stage, and its own progress
    lines stay (a distill stage's steps among them: `distill.train.fit`'s plain_progress)."""
    import functools
    import warnings

    warnings.filterwarnings("ignore", message="Could not find a config file in", module="peft")
    try:
        import datasets
        import transformers
    except ImportError:  # an API-only install: nothing of theirs will print
        return
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    try:  # its bar is tqdm's own, which transformers' switch above does not reach
        from transformers import modeling_gguf_pytorch_utils as gguf_loading
    except ImportError:  # no gguf package: no GGUF base can load, so no bar either
        return
    if not isinstance(gguf_loading.tqdm, functools.partial):
        gguf_loading.tqdm = functools.partial(gguf_loading.tqdm, disable=True)


def _stamp_path(workspace: Workspace, stage: Stage) -> Path:
    return workspace.default(STAMPS, stage.name.replace(":", "-") + ".json")


def _walk(workspace: Workspace, stages: list[Stage], chosen: list[Stage], report: RunReport,
          dry_run: bool, echo: Echo) -> RunReport:  # fmt: skip
    from rationale.stage_runners import estimate_synth, prepare, run_stage

    planned: set[str] = set()  # dry run: the stages that would run
    for i, stage in enumerate(chosen, 1):
        head = f"[{i}/{len(chosen)}] {stage.name}"
        producers = [stamps.read(_stamp_path(workspace, p)) for p in stage.producers]
        fp = stamps.fingerprint(
            stage.name, stage.kind, stage.config, external_inputs(stage), producers
        )
        stamp = stamps.read(_stamp_path(workspace, stage))
        fresh = (stamp.get("fingerprint") == fp and all(p.exists() for p in stage.outputs)
                 and not any(p.name in planned for p in stage.producers))  # fmt: skip
        if dry_run:
            if not fresh:
                planned.add(stage.name)
            echo(f"{head}: {'up to date' if fresh else 'to run'}\n    {command(stage, workspace)}")
            report.stages.append(StageReport(stage.name, "up to date" if fresh else "to run"))
            continue
        if fresh:
            echo(f"{head}: up to date (finished before with the same settings and inputs)")
            took = f"(took {stamp.get('wall_s')}s when it ran)"
            report.stages.append(StageReport(stage.name, "up to date", detail=took))
            if stage.kind == "compare":
                report.table = stage.outputs[0].read_text(encoding="utf-8").rstrip("\n")
            continue
        gap = _missing_input(stage)
        if gap is not None:
            path, producer = gap
            raise RationaleError(
                f"{stage.name} needs {show(path)}, which {producer.name} writes: run from "
                f"{producer.kind} (rationale run --from {producer.kind})"
            )
        t0 = time.monotonic()
        ids = {
            p.name: stamps.read(_stamp_path(workspace, p)).get("id", "-") for p in stage.producers
        }
        action = prepare(stage, stamp, ids, workspace.default(".outdated"))
        if action.startswith("moved"):
            echo(f"{head}: settings or inputs changed; the earlier output {action}")
        if action == "adopted":
            detail, table, status = "trained before with these settings; adopted", None, "adopted"
            echo(f"{head}: {show(stage.folder)} holds a student trained with these settings")
        else:
            echo(f"{head}: {command(stage, workspace)}")
            local = stage.kind != "synth" or str(stage.config.teacher).startswith("local")
            if stage.kind in ("synth", "distill", "eval") and local:
                _quiet_libraries()
            detail, table = run_stage(stage, echo)
            status = "ran"
        wall = time.monotonic() - t0
        stamps.write(_stamp_path(workspace, stage), stage.name, fp, stage.config, wall, ids)
        echo(f"{head}: done in {wall:.1f}s{f' ({detail})' if detail else ''}")
        report.stages.append(StageReport(stage.name, status, wall, detail))
        if table is not None:
            report.table = table
    if dry_run:
        synth = next((s for s in chosen if s.kind == "synth" and s.name in planned), None)
        if synth is not None:
            try:
                report.estimate = estimate_synth(synth, stages)
            except RationaleError as exc:
                # a dry run only plans: a missing optional package (its error says what to pip
                # install) leaves the estimate out; any other error is the plan's to show
                if "pip install" not in str(exc):
                    raise
                echo(f"note: no synth estimate: {exc}; `rationale run` needs it")
    for stage in stages:
        if stage.note:
            echo(f"note: {stage.note}")
    return report
