"""The public surface and the installed layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import ROOT

import distill
import rationale
from rationale import RationaleError, prompts_dir, state_dir


def test_rationale_exports_are_pinned() -> None:
    assert rationale.__all__ == [
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
    assert rationale.__all__ == sorted(rationale.__all__, key=lambda n: (not n.isupper(), n))
    for name in rationale.__all__:
        assert getattr(rationale, name) is not None
    with pytest.raises(AttributeError):
        rationale.NoSuchThing  # noqa: B018


def test_distill_exports_are_pinned() -> None:
    assert distill.__all__ == ["DistillConfig", "DistillError", "SFTData", "run_distill"]
    for name in distill.__all__:
        assert getattr(distill, name) is not None
    assert issubclass(distill.DistillError, RationaleError)


def test_every_package_error_shares_one_base() -> None:
    for name in ("ConfigError", "DuplicateStepError", "RecordError", "SourceError"):
        assert issubclass(getattr(rationale, name), RationaleError)


def test_state_dir_follows_the_environment(rationale_home: Path) -> None:
    assert state_dir() == rationale_home


def test_prompts_are_found() -> None:
    folder = prompts_dir()
    assert (folder / "README.md").is_file()


@pytest.mark.skipif(
    os.environ.get("RATIONALE_TEST_INSTALLED") != "1",
    reason="only under `make test` (a wheel install)",
)
def test_tests_run_against_the_installed_wheel() -> None:
    package = Path(rationale.__file__).resolve().parent
    assert package != ROOT / "rationale", f"tests imported the source tree at {package}"
    assert "site-packages" in package.parts
    assert prompts_dir() == package / "prompts"  # shipped inside the wheel
