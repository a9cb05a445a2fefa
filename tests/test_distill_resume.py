"""`distill.resume_record`: what decides a checkpoint's weights, and how a change is named.

No model is loaded: a resume's refusal through `fit` and `run_distill` is tested in
test_distill_train.py and test_distill_data.py, the workflow's move in test_run_stages.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.config import DistillConfig
from distill.resume_record import (
    OPERATIONAL,
    changes,
    read_record,
    weight_settings,
    write_record,
)
from rationale.stamps import OPERATIONAL as STAGE_OPERATIONAL


def config(tmp_path: Path, **overrides: object) -> DistillConfig:
    values = {"base": "qwen2.5-7b", "data": str(tmp_path / "accepted.jsonl"),
              "output": str(tmp_path / "out"), **overrides}  # fmt: skip
    return DistillConfig(**values)  # type: ignore[arg-type]


def test_the_settings_that_decide_the_weights(tmp_path: Path) -> None:
    settings = weight_settings(config(tmp_path))
    for name in ("learning_rate", "max_steps", "epochs", "seed", "lora_r", "no_rationale"):
        assert name in settings
    # what only decides how the run goes, and data/base (compared by what they hold)
    assert STAGE_OPERATIONAL["distill"] <= OPERATIONAL
    assert not settings.keys() & (OPERATIONAL | {"data", "base"})


def test_data_and_base_are_compared_by_content_not_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "accepted.jsonl").write_text('{"a": 1}\n')
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    old = config(tmp_path, base=str(base))
    write_record(old, tmp_path / "checkpoints")
    record = read_record(tmp_path / "checkpoints")
    assert record is not None and changes(record, old) == []

    copy = tmp_path / "copy.jsonl"
    copy.write_bytes((tmp_path / "accepted.jsonl").read_bytes())
    monkeypatch.chdir(tmp_path)  # the base spelled relative to the working directory
    assert changes(record, config(tmp_path, base="base", data=str(copy))) == []

    (tmp_path / "accepted.jsonl").write_text('{"a": 2}\n')
    (base / "model.safetensors").write_bytes(b"weights")
    assert changes(record, config(tmp_path, base=str(base), learning_rate=1e-3)) == [
        "learning_rate 0.0002 -> 0.001",
        f"base: {base} changed (its files)",
        f"data: {tmp_path / 'accepted.jsonl'} changed (its content)",
    ]
    assert changes(record, config(tmp_path, base="llama-3.1-8b"))[0] == (
        f"base {str(base)!r} -> 'llama-3.1-8b'"
    )


def test_a_setting_the_record_does_not_know_is_not_a_change(tmp_path: Path) -> None:
    """A field added to DistillConfig after the checkpoints were written does not refuse them."""
    write_record(config(tmp_path), tmp_path / "checkpoints")
    record = read_record(tmp_path / "checkpoints")
    assert record is not None
    del record["settings"]["history_rationales"]
    assert changes(record, config(tmp_path, history_rationales=True)) == []
    assert read_record(tmp_path / "nowhere") is None
