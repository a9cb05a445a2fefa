"""rationale: synthesize the reasons behind recorded human actions and distil them into students.

The public names below are imported lazily, so ``import rationale`` (and the CLI's start-up)
stays fast; heavy dependencies load only in the step that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "ActionRecord",
    "ActionSpace",
    "ConfigError",
    "DuplicateStepError",
    "EvalConfig",
    "HistoryEntry",
    "ImportConfig",
    "Prediction",
    "Predictor",
    "RationaleError",
    "RecordError",
    "RecordFile",
    "SourceError",
    "SplitConfig",
    "Step",
    "SynthConfig",
    "Workspace",
    "__version__",
    "build_history",
    "compare",
    "parse_record",
    "prompts_dir",
    "read_mind2web",
    "read_opera",
    "run_eval",
    "run_import",
    "run_synth",
    "run_workspace",
    "score_predictions",
    "score_test_file",
    "session_outcome",
    "split_records",
    "state_dir",
    "write_records",
]

_WHERE = {
    "SCHEMA_VERSION": "rationale.schema",
    "ActionRecord": "rationale.schema",
    "ActionSpace": "rationale.schema",
    "HistoryEntry": "rationale.schema",
    "ConfigError": "rationale.errors",
    "DuplicateStepError": "rationale.errors",
    "RationaleError": "rationale.errors",
    "RecordError": "rationale.errors",
    "SourceError": "rationale.errors",
    "RecordFile": "rationale.records",
    "parse_record": "rationale.records",
    "write_records": "rationale.records",
    "Step": "rationale.sessions",
    "build_history": "rationale.sessions",
    "session_outcome": "rationale.sessions",
    "prompts_dir": "rationale.paths",
    "state_dir": "rationale.paths",
    "read_mind2web": "rationale.importers.mind2web",
    "read_opera": "rationale.importers.opera",
    "split_records": "rationale.split",
    "EvalConfig": "rationale.evaluate",
    "run_eval": "rationale.evaluate",
    "Predictor": "rationale.predictor",
    "Prediction": "rationale.predictor",
    "score_predictions": "rationale.scoring",
    "score_test_file": "rationale.eval_cases",
    "compare": "rationale.compare",
    "ImportConfig": "rationale.importers",
    "run_import": "rationale.importers",
    "SplitConfig": "rationale.split",
    "SynthConfig": "rationale.rundir",
    "run_synth": "rationale.synth",
    "Workspace": "rationale.workspace",
    "run_workspace": "rationale.workflow",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rationale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from rationale.compare import compare
    from rationale.errors import (
        ConfigError,
        DuplicateStepError,
        RationaleError,
        RecordError,
        SourceError,
    )
    from rationale.eval_cases import score_test_file
    from rationale.evaluate import EvalConfig, run_eval
    from rationale.importers.mind2web import read_mind2web
    from rationale.importers.opera import read_opera
    from rationale.paths import prompts_dir, state_dir
    from rationale.predictor import Prediction, Predictor
    from rationale.records import RecordFile, parse_record, write_records
    from rationale.schema import SCHEMA_VERSION, ActionRecord, ActionSpace, HistoryEntry
    from rationale.scoring import score_predictions
    from rationale.sessions import Step, build_history, session_outcome
    from rationale.split import split_records
