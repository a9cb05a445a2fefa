"""What a training run keeps in its output folder while it trains, and how a killed run resumes.

``checkpoints/`` holds the trainer's checkpoints (adapter, optimiser, scheduler, RNG) and
``training_log.jsonl`` one line per logging step (step, loss, learning_rate, epoch, grad_norm),
appended and flushed as training goes, so a killed run leaves a readable log. `resume_point`
decides, before anything is loaded or written, whether a run starts fresh or continues the
newest checkpoint, which only the training it was started with may continue (``resume.json``,
`distill.resume_record`); a resumed run's log keeps its lines up to that checkpoint's step
(`trim_log`). `TrainResult` is what a run did, its losses read back from the log.

transformers is imported inside `training_log_callback`, never at import time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.errors import DistillError
from distill.resume_record import changes, check_resume, read_record

if TYPE_CHECKING:
    from distill.config import DistillConfig

__all__ = [
    "CHECKPOINTS_DIR",
    "TRAINING_LOG",
    "TrainResult",
    "checkpoint_changes",
    "checkpoint_step",
    "last_checkpoint",
    "read_log",
    "resume_point",
    "step_progress_callback",
    "training_log_callback",
    "trim_log",
]

CHECKPOINTS_DIR = "checkpoints"
TRAINING_LOG = "training_log.jsonl"


@dataclass(frozen=True)
class TrainResult:
    """What a `fit` did. ``losses[i]`` was logged at step ``loss_steps[i]``.

    ``trained_tokens`` / ``total_tokens`` count one pass over the data: completion tokens (the
    loss is computed on them) and all tokens. ``resumed_from_step`` is the checkpoint's step
    when the run was resumed, else None; the losses cover the whole run either way. ``steps``
    are optimiser steps of ``global_batch`` examples each (per-device batch x accumulation x
    ``processes``): the same count whatever the number of processes.
    """

    steps: int
    final_loss: float | None
    losses: list[float]
    loss_steps: list[int]
    train_runtime_s: float
    samples: int
    trained_tokens: int
    total_tokens: int
    backend: str
    resumed_from_step: int | None = None
    processes: int = 1  # training processes (accelerate launch / torchrun)
    global_batch: int | None = None  # examples per optimiser step, over all processes
    epochs_done: float | None = None  # passes over the data that the steps made


def resume_point(config: DistillConfig) -> Path | None:
    """The checkpoint that ``config`` continues from (with ``resume``), else None.

    Raises `DistillError` for ``resume`` without a checkpoint, for a fresh run into an output
    folder that already holds checkpoints, and for a resume whose settings, data or base differ
    from what the checkpoints were trained with (`distill.resume_record`), so an earlier run is
    never mixed into this one. Reads only: it is safe to call before loading the model.
    """
    out = Path(config.output)
    checkpoints = out / CHECKPOINTS_DIR
    last = last_checkpoint(checkpoints)
    if config.resume and last is None:
        raise DistillError(
            f"--resume: no checkpoint in {checkpoints} to resume from; run without --resume "
            "to start training"
        )
    if not config.resume and last is not None:
        raise DistillError(
            f"{out} already holds checkpoints of an earlier run ({last.name}): pass --resume "
            "to continue it, or choose another --output"
        )
    if last is not None:
        check_resume(config, checkpoints, last)
    return last


def checkpoint_changes(config: DistillConfig) -> list[str]:
    """What differs between ``config`` and the training that wrote the checkpoints in its output
    folder (`distill.resume_record.changes`); empty when there is no checkpoint, no record (a
    folder from before records), or no difference. For `rationale run`, which moves such a
    folder aside rather than refusing it."""
    checkpoints = Path(config.output) / CHECKPOINTS_DIR
    record = read_record(checkpoints)
    if record is None or last_checkpoint(checkpoints) is None:
        return []
    return changes(record, config)


def last_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` folder that has its trainer state, or None."""
    if not folder.is_dir():
        return None
    found = [
        (checkpoint_step(p), p)
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith("checkpoint-") and (p / "trainer_state.json").is_file()
    ]
    found = [(s, p) for s, p in found if s >= 0]
    return max(found)[1] if found else None


def checkpoint_step(path: Path) -> int:
    """The N of a ``checkpoint-N`` folder, or -1 for another name."""
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def trim_log(path: Path, step: int) -> None:
    """Keep the training log's lines up to ``step`` (the resumed checkpoint); drop the rest."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    path.write_text("".join(kept), encoding="utf-8")


def read_log(path: Path) -> tuple[list[int], list[float]]:
    """(steps, losses) of the training log's lines that have a loss."""
    steps: list[int] = []
    losses: list[float] = []
    if not path.is_file():
        return steps, losses
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("loss") is not None:
            steps.append(int(row["step"]))
            losses.append(float(row["loss"]))
    return steps, losses


def training_log_callback(path: Path) -> Any:
    """A TrainerCallback appending one JSON line per logging step to ``path``, flushed."""
    from transformers import TrainerCallback

    def number(value: Any) -> float | None:
        if value is None:
            return None
        value = float(value)
        return value if math.isfinite(value) else None  # keep the file strict JSON

    class TrainingLog(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return  # the final summary has train_loss, not loss
            row = {
                "step": int(state.global_step),
                "loss": number(logs["loss"]),
                "learning_rate": number(logs.get("learning_rate")),
                "epoch": number(logs.get("epoch", state.epoch)),
                "grad_norm": number(logs.get("grad_norm")),
            }
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()

    return TrainingLog()


def step_progress_callback(label: str = "distill") -> Any:
    """A TrainerCallback that shows the optimizer steps as `rationale.progress.Progress` does
    (a bar on a terminal, a plain line every few seconds otherwise): `rationale run` trains
    with it in place of transformers' bar and its per-step log dicts."""
    from transformers import TrainerCallback

    from rationale.progress import Progress

    class StepProgress(TrainerCallback):  # type: ignore[misc]
        bar: Progress | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                left = max(int(state.max_steps) - int(state.global_step), 0)
                self.bar = Progress(left, label=label, unit="steps", every=30.0, priced=False)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.update()

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return StepProgress()
