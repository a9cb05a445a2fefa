"""Shared fixtures. Every test keeps its state in a temporary RATIONALE_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# litellm would fetch its price map from the network at import time without this.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(autouse=True)
def rationale_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    home = tmp_path_factory.mktemp("rationale_home")
    monkeypatch.setenv("RATIONALE_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def one_endpoint_per_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local test servers started one after another in a test share one URL (see
    `openai_server.DEFAULT_PORT`): a rerun or resume asks the same endpoint."""
    import socket

    import openai_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(openai_server, "DEFAULT_PORT", port)


@pytest.fixture
def openai_server():
    """A started local OpenAI chat-completions server (tests/openai_server.py), stopped after."""
    from openai_server import ScriptedServer

    with ScriptedServer() as server:
        yield server
