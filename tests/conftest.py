"""Shared fixtures. Every test keeps its state in a temporary RATIONALE_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def rationale_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    home = tmp_path_factory.mktemp("rationale_home")
    monkeypatch.setenv("RATIONALE_HOME", str(home))
    return home
