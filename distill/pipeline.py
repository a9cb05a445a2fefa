"""`rationale distill` end to end: data -> student -> training -> a saved student.

Each step is a library call of its own (`distill.data.SFTData`, `distill.train.prepare`,
`fit`, `save`); this module only chains them the way the command does. Everything that can be
checked without the model is checked before it is loaded (minutes for a large base): that the
data has examples to train, that the output folder can be started or resumed, and (in
`prepare`) that the base is not too big for a CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DistillRun:
    """What `run_distill` produced."""

    output: Path
    result: Any  # distill.checkpoints.TrainResult
    stats: Any  # distill.data.SFTStats
    backend: str
    reason: str
    caveats: tuple[str, ...] = ()  # on the training data: see `distill.data.SFTData.caveats`
    skipped: tuple[str, ...] = ()  # bad data lines left out (``on_error="skip"``)


def run_distill(config: Any, *, plain_progress: bool = False) -> DistillRun:
    """Build the SFT data for the student's tokenizer, train, and save into ``config.output``.

    The data is read and its examples counted, and the output folder checked, before the model
    is loaded; data from a local teacher or without the blind verifier is trained with a
    warning on stderr that the model card repeats. ``plain_progress``: see `distill.train.fit`.
    """
    from distill.checkpoints import resume_point
    from distill.data import SFTData, prompt_format
    from distill.distributed import current
    from distill.errors import DistillError
    from distill.student import log

    # fit, prepare and save are looked up at call time: the benchmarks wrap distill.train.fit.
    from distill.train import fit, prepare, save

    data = SFTData(
        config.data,
        no_rationale=config.no_rationale,
        session_mode=config.session_mode,
        max_context_tokens=config.max_context_tokens,
        history_rationales=config.history_rationales,
        action_space=config.action_space,
        on_error=config.on_error,
    )
    data.check()
    resume_point(config)
    caveats = tuple(data.caveats())
    if config.merge and current().strategy == "deepspeed":
        # Loading the fresh base to merge into is a collective step under ZeRO-3.
        raise DistillError(
            "--merge is not available under DeepSpeed: launch with DDP or FSDP to merge, or "
            "merge adapter/ afterwards in one process with peft "
            "(PeftModel.from_pretrained(base, 'adapter').merge_and_unload())"
        )
    for caveat in caveats:
        log(f"warning: {caveat}")
    student = prepare(config)
    rows, stats = data.tokenize(student.tokenizer, config.max_seq_length)
    from datasets import Dataset

    dataset = Dataset.from_list(rows)
    result = fit(student, dataset, config, plain_progress=plain_progress)
    output = save(
        student,
        config,
        result,
        extra_files={
            "prompt_format.json": json.dumps(prompt_format(data, student.tokenizer), indent=2),
            "data_stats.json": json.dumps(stats.as_dict(), indent=2),
        },
        caveats=caveats,
    )
    return DistillRun(
        Path(output), result, stats, student.backend, student.reason, caveats,
        tuple(data.skipped),
    )  # fmt: skip
