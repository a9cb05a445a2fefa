"""`rationale.progress.Progress`: the plain lines a job prints when stderr is not a terminal."""

from __future__ import annotations

import pytest

from rationale import progress


def test_plain_lines_give_a_slow_pace_as_seconds_each(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import types

    clock = iter([0.0, 38.0, 76.0, 76.5, 77.0])  # progress's own clock only, not time's
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    bar = progress.Progress(2, every=1.0, label="distill", unit="steps", priced=False)
    bar.update()
    bar.update()
    slow = capsys.readouterr().err.splitlines()
    # a training step of 38 s: "0.0/s" said nothing
    assert slow == [
        "distill: 1/2 steps, 38.0s each, ETA 38s",
        "distill: 2/2 steps, 38.0s each, ETA 0s",
    ]

    fast = progress.Progress(2, every=0.0, label="eval", unit="cases")
    fast.update()
    assert capsys.readouterr().err.strip() == "eval: 1/2 cases, 2.0/s, ETA 0s, cost $0.0000"
