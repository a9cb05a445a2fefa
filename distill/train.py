"""Fine-tune the student: load it, train a LoRA adapter on tokenized examples, save the run.

The data module needs the student's tokenizer to tokenize, so training is three calls::

    student = prepare(config)                      # backend, base model + LoRA, tokenizer
    rows, stats = SFTData(...).tokenize(student.tokenizer, config.max_seq_length)
    result = fit(student, Dataset.from_list(rows), config)   # trl SFTTrainer, checkpoints, log
    save(student, config, result, extra_files={"prompt_format.json": ...})

`fit` lives here; the other steps have a module each and are re-exported: `distill.student`
(`prepare`, `Student`), `distill.trainer` (`check_dataset`, `build_trainer`: the checked,
labelled dataset and trl's SFTTrainer), `distill.checkpoints` (checkpoints, the training log,
resuming, `TrainResult`) and `distill.artifacts` (`save`: adapter, config.json, loss.png, the
model card, merged weights). `distill.pipeline.run_distill` chains them for the CLI.

torch, transformers, peft and trl are imported inside the functions, never at import time.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.artifacts import save
from distill.checkpoints import (
    CHECKPOINTS_DIR,
    TRAINING_LOG,
    TrainResult,
    checkpoint_step,
    read_log,
    resume_point,
    step_progress_callback,
    training_log_callback,
    trim_log,
)
from distill.distributed import current, global_batch
from distill.resume_record import RECORD, write_record
from distill.student import Student, log, prepare
from distill.trainer import build_trainer, check_dataset, make_trainer

if TYPE_CHECKING:
    from datasets import Dataset

    from distill.config import DistillConfig

__all__ = [
    "CHECKPOINTS_DIR",
    "TRAINING_LOG",
    "Student",
    "TrainResult",
    "build_trainer",
    "check_dataset",
    "fit",
    "prepare",
    "save",
]

# `fit` builds its trainer through this module-level name, so a benchmark can wrap it
# (benchmarks/gpu_train.py inspects the trainer's own data loader).
_make_trainer = make_trainer


def fit(
    student: Student,
    dataset: Dataset,
    config: DistillConfig,
    *,
    callbacks: Iterable[Any] = (),
    plain_progress: bool = False,
) -> TrainResult:
    """Train ``student.model`` on ``dataset``; checkpoints and the training log go to the output.

    Under accelerate launch or torchrun every process calls it with the same dataset (the
    Trainer gives each its share of every global batch); only the main process writes the log.

    With ``config.resume`` training continues from the newest checkpoint (an error if there is
    none, or if it was trained with other settings, data or base: `distill.resume_record`) and
    the log keeps its lines up to that checkpoint's step. Without it, an output folder that
    already holds checkpoints is an error, so an earlier run is never mixed into this one; a
    fresh run records its settings in ``checkpoints/resume.json`` before it trains.
    ``callbacks`` are extra transformers ``TrainerCallback`` objects. With ``plain_progress``
    the steps are shown as `rationale`'s own progress (`step_progress_callback`) instead of
    transformers' bar and the log dict it prints at every logging step.
    """
    trained_tokens, total_tokens = check_dataset(dataset, config)  # before touching the output
    launch = current()
    out = Path(config.output)
    log_path = out / TRAINING_LOG
    last = resume_point(config)
    resumed_from: int | None = None
    if last is not None:
        resumed_from = checkpoint_step(last)
        if launch.is_main:
            trim_log(log_path, resumed_from)
        note = ""
        if not (out / CHECKPOINTS_DIR / RECORD).is_file():  # from before runs had a record
            note = (
                f"; note: {CHECKPOINTS_DIR}/ has no {RECORD} (written before runs recorded their "
                "settings), so its settings and data are not checked against these"
            )
        log(f"resuming from {last.name} (step {resumed_from}){note}")
    elif launch.is_main:
        out.mkdir(parents=True, exist_ok=True)
        log_path.write_text("", encoding="utf-8")
        # What these checkpoints are trained with, before the first one is written.
        write_record(config, out / CHECKPOINTS_DIR)
    batch = global_batch(config.batch_size, config.grad_accum, launch)
    log(
        f"global batch {batch} examples per step ({config.batch_size} per device x "
        f"{config.grad_accum} accumulation x {launch.describe()})"
    )

    training_log = training_log_callback(log_path)
    trainer = _make_trainer(student, dataset, config, [training_log, *callbacks])
    if plain_progress:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(step_progress_callback())
    student.trainer = trainer
    # transformers prints its log dicts on stdout; stdout is for data.
    with contextlib.redirect_stdout(sys.stderr):
        output = trainer.train(resume_from_checkpoint=str(last) if last is not None else None)

    steps, losses = read_log(log_path) if launch.is_main else ([], [])
    final = losses[-1] if losses else None
    result = TrainResult(
        steps=int(trainer.state.global_step),
        final_loss=final,
        losses=losses,
        loss_steps=steps,
        train_runtime_s=float(output.metrics.get("train_runtime", 0.0)),
        samples=len(dataset),
        trained_tokens=trained_tokens,
        total_tokens=total_tokens,
        backend=student.backend,
        resumed_from_step=resumed_from,
        processes=launch.world_size,
        global_batch=batch,
        epochs_done=float(trainer.state.epoch) if trainer.state.epoch is not None else None,
    )
    final_text = f"{final:.4f}" if final is not None else "not logged"
    epochs = f" ({result.epochs_done:.2f} epochs)" if result.epochs_done is not None else ""
    log(
        f"trained {result.steps} steps of {batch} examples{epochs} in "
        f"{result.train_runtime_s:.1f}s on {result.samples} examples; final loss {final_text}"
    )
    return result
