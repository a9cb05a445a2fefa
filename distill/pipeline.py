"""`rationale distill` end to end: data -> student -> training -> a saved student.

Each step is a library call of its own (`distill.data.SFTData`, `distill.train.prepare`,
`fit`, `save`); this module only chains them the way the command does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill import DistillError


@dataclass(frozen=True)
class DistillRun:
    """What `run_distill` produced."""

    output: Path
    result: Any  # distill.train.TrainResult
    stats: Any  # distill.data.SFTStats
    backend: str
    reason: str


def run_distill(config: Any) -> DistillRun:
    """Build the SFT data for the student's tokenizer, train, and save into ``config.output``."""
    from distill.data import SFTData, prompt_format
    from distill.train import fit, prepare, save

    data = SFTData(
        config.data,
        no_rationale=config.no_rationale,
        session_mode=config.session_mode,
        max_context_tokens=config.max_context_tokens,
        history_rationales=config.history_rationales,
    )
    student = prepare(config)
    rows, stats = data.tokenize(student.tokenizer, config.max_seq_length)
    if not rows:
        raise DistillError(
            f"{config.data}: no step with an accepted rationale to train on "
            "(run rationale synth, or check the run's accepted.jsonl)"
        )
    from datasets import Dataset

    dataset = Dataset.from_list(rows)
    result = fit(student, dataset, config)
    output = save(
        student,
        config,
        result,
        extra_files={
            "prompt_format.json": json.dumps(prompt_format(data, student.tokenizer), indent=2),
            "data_stats.json": json.dumps(stats.as_dict(), indent=2),
        },
    )
    return DistillRun(Path(output), result, stats, student.backend, student.reason)
